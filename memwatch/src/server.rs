//! The HTTP endpoint: GET <telemetry path> (Prometheus text format), GET /healthz,
//! and a small landing page at /.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{
    collectors::Registry,
    episodes::{Episode, Tracker},
};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub episodes: Option<Arc<Mutex<Tracker>>>,
    pub health: Arc<crate::lifecycle::Health>,
}

/// The body of GET /api/episodes.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EpisodesResponse {
    /// False when this agent tracks no episodes (no eBPF, or the fork hooks failed).
    pub tracking: bool,
    pub active: Vec<Episode>,
    pub finished: Vec<Episode>,
}

/// Filters for GET /api/episodes.
#[derive(Debug, Default, Deserialize)]
pub struct EpisodeFilter {
    pub comm: Option<String>,
    pub pid: Option<u32>,
}

impl EpisodeFilter {
    pub fn keeps(&self, e: &Episode) -> bool {
        self.comm.as_ref().is_none_or(|c| &e.comm == c) && self.pid.is_none_or(|p| e.pid == p)
    }
}

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
    state: AppState,
    telemetry_path: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let landing = format!(
        "<html><head><title>memwatch</title></head><body><h1>memwatch</h1>\
         <p><a href=\"{telemetry_path}\">Metrics</a> &middot; <a href=\"/api/episodes\">Fork \
         episodes</a> &middot; <a href=\"/healthz\">Health</a></p>\
         </body></html>"
    );
    let app = Router::new()
        .route(telemetry_path, get(scrape))
        .route("/healthz", get(healthz))
        .route("/api/episodes", get(episodes))
        .route("/", get(move || async move { Html(landing) }))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// 200 and "ok" (with any collector stuck on a read) while the daemon's loops make
/// progress; 503 naming the loops that stalled.
async fn healthz(State(state): State<AppState>) -> Response {
    let report = state.health.report();
    let status = if report.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report.text()).into_response()
}

async fn episodes(
    State(state): State<AppState>,
    Query(filter): Query<EpisodeFilter>,
) -> Json<EpisodesResponse> {
    let Some(tracker) = state.episodes else {
        return Json(EpisodesResponse::default());
    };
    let t = tracker.lock().expect("tracker lock");
    Json(EpisodesResponse {
        tracking: true,
        active: t.active().into_iter().filter(|e| filter.keeps(e)).collect(),
        finished: t
            .finished
            .iter()
            .filter(|e| filter.keeps(e))
            .cloned()
            .collect(),
    })
}

async fn scrape(State(state): State<AppState>) -> Response {
    let registry = state.registry;
    // Collectors do blocking reads (procfs, map syscalls): keep them off the reactor.
    match tokio::task::spawn_blocking(move || registry.render()).await {
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
