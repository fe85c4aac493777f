//! The HTTP endpoint: GET <telemetry path> (Prometheus text format), GET /healthz,
//! and a small landing page at /.

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use tokio::net::TcpListener;

use crate::{collectors::Registry, metrics};

/// Binds the listen address. ":PORT" (every address) is tried as [::] first, then as
/// 0.0.0.0 on hosts without IPv6.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            log::debug!("binding {addr}: {e}; trying 0.0.0.0");
            TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port()))).await
        }
        r => r,
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    telemetry_path: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let landing = format!(
        "<html><head><title>memwatch</title></head><body><h1>memwatch</h1>\
         <p><a href=\"{telemetry_path}\">Metrics</a> &middot; <a href=\"/healthz\">Health</a></p>\
         </body></html>"
    );
    let app = Router::new()
        .route(telemetry_path, get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(move || async move { Html(landing) }))
        .with_state(registry);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    // Collectors do blocking reads (procfs, map syscalls): keep them off the reactor.
    match tokio::task::spawn_blocking(move || metrics::encode_text(&registry.gather())).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            log::error!("scrape failed: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("scrape failed: {e}\n"),
            )
                .into_response()
        }
    }
}
