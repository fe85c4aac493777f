//! The HTTP endpoint: GET <telemetry path> (Prometheus text format), GET /healthz,
//! GET /api/episodes, and a small landing page at /.
//!
//! Each connection is served by hyper's HTTP/1.1 connection builder with axum's router
//! as the service, behind the limits of `limits` (header-read and idle timeouts, a
//! connection table with eviction, scrapes in flight sharing one render) and the web
//! config of `web_config` (TLS, basic auth on every path but /healthz, fixed headers).

pub mod auth;
pub mod limits;
pub mod web_config;

use parking_lot::Mutex;
use std::{
    convert::Infallible, future::Future, net::SocketAddr, path::Path, sync::Arc, time::Duration,
};

use axum::{
    body::Body,
    extract::{Query, State},
    http::{header, Request, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    collectors::Registry,
    config,
    episodes::{Episode, Tracker},
};
pub use limits::{HttpCollector, Limits, Stats};
pub use web_config::{Changed, WebConfigHandle};
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

/// How long shutdown waits for requests in flight before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// The server's settings and counters, made from `[web]` before anything binds: a
/// bad web config file is an error (exit 2) that names the file and the key.
#[derive(Clone)]
pub struct Web {
    pub telemetry_path: String,
    pub limits: Limits,
    pub stats: Arc<Stats>,
    /// The active web config; `reload()` on it for SIGHUP.
    pub config: WebConfigHandle,
}

impl Web {
    pub fn new(web: &config::Web) -> Result<Self, String> {
        config::check_telemetry_path(&web.telemetry_path)?;
        let limits = Limits::from_config(web)?;
        let stats = Stats::new();
        let file = (!web.config_file.is_empty()).then(|| Path::new(&web.config_file));
        let config = WebConfigHandle::load(file, stats.clone())?;
        Ok(Self {
            telemetry_path: web.telemetry_path.clone(),
            limits,
            stats,
            config,
        })
    }

    /// The collector of the server's counters, for the scrape's registry.
    pub fn collector(&self) -> HttpCollector {
        HttpCollector::new(self.stats.clone(), self.limits)
    }

    /// "https" with TLS configured, else "http" (for the log line).
    pub fn scheme(&self) -> &'static str {
        if self.config.current().tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// The routes.
fn router(state: AppState, telemetry_path: &str, renders: Arc<limits::Renders>) -> Router {
    let landing = format!(
        "<html><head><title>memwatch</title></head><body><h1>memwatch</h1>\
         <p><a href=\"{telemetry_path}\">Metrics</a> &middot; <a href=\"/api/episodes\">Fork \
         episodes</a> &middot; <a href=\"/healthz\">Health</a></p>\
         </body></html>"
    );
    Router::new()
        .route(
            telemetry_path,
            get(move || {
                let renders = renders.clone();
                async move { scrape(&renders).await }
            }),
        )
        .route("/healthz", get(healthz))
        .route("/api/episodes", get(episodes))
        .route("/", get(move || async move { Html(landing) }))
        .with_state(state)
}

/// Serves until `shutdown` completes: then stops accepting, closes idle connections,
/// lets requests in flight finish for up to `SHUTDOWN_GRACE`, and drops the rest.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    web: &Web,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    config::check_telemetry_path(&web.telemetry_path).map_err(std::io::Error::other)?;
    let renders = Arc::new(limits::Renders::new(
        state.registry.clone(),
        web.limits.max_requests,
        web.stats.clone(),
    ));
    let router = router(state, &web.telemetry_path, renders);
    let table = limits::Table::new(web.limits.max_connections, web.stats.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = table.admit() else {
                        log::debug!("{peer}: closed: every connection has a request in flight");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(
                        stream,
                        peer,
                        slot,
                        router.clone(),
                        web.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    log::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::info!(
            "dropping {} connections still open after {SHUTDOWN_GRACE:?}",
            conns.len()
        );
    }
    conns.abort_all();
    Ok(())
}

/// One connection: the TLS handshake (when configured) and HTTP/1.1, each raced against
/// the connection's deadline, eviction and shutdown.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: limits::Slot,
    router: Router,
    web: Web,
    mut stop: watch::Receiver<bool>,
) {
    let active = web.config.current();
    let conn = slot.conn.clone();
    let io = limits::Tracked::new(stream, conn.clone());
    let closed = |how: limits::Close| {
        if how == limits::Close::Timeout {
            web.stats.reject(limits::Reject::Timeout);
        }
        log::debug!("{peer}: closed ({how:?})");
    };
    match active.tls.clone() {
        None => {
            http(
                TokioIo::new(io),
                &web,
                &conn,
                router,
                active,
                &mut stop,
                closed,
            )
            .await
        }
        Some(tls) => {
            let accept = tokio_rustls::TlsAcceptor::from(tls).accept(io);
            let tls_stream = tokio::select! {
                r = accept => r,
                how = conn.watch(&web.limits, &mut stop) => return closed(how),
            };
            match tls_stream {
                Ok(s) => {
                    http(
                        TokioIo::new(s),
                        &web,
                        &conn,
                        router,
                        active,
                        &mut stop,
                        closed,
                    )
                    .await
                }
                Err(e) => {
                    web.stats.reject(limits::Reject::Tls);
                    log::debug!("{peer}: TLS handshake failed: {e}");
                }
            }
        }
    }
    drop(slot);
}

/// HTTP/1.1 on an open (maybe TLS) connection.
async fn http<I>(
    io: TokioIo<I>,
    web: &Web,
    conn: &Arc<limits::Conn>,
    router: Router,
    active: Arc<web_config::Active>,
    stop: &mut watch::Receiver<bool>,
    closed: impl Fn(limits::Close),
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (c, stats) = (conn.clone(), web.stats.clone());
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (c, stats, active) = (c.clone(), stats.clone(), active.clone());
        let mut router = router.clone();
        async move {
            c.begin_request();
            let mut resp = match &active.auth {
                Some(auth)
                    if req.uri().path() != "/healthz"
                        && !auth.check(req.headers().get(header::AUTHORIZATION)).await =>
                {
                    stats.reject(limits::Reject::Auth);
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Basic realm=\"memwatch\"")],
                        "Unauthorized\n",
                    )
                        .into_response()
                }
                _ => match tower_service::Service::call(&mut router, req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                },
            };
            for (k, v) in &active.headers {
                resp.headers_mut().insert(k.clone(), v.clone());
            }
            c.end_request();
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header-read and idle deadlines are the connection's own (`Conn::watch`): they
    // cover the TLS handshake too, and tell a stalled request from an idle keep-alive.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(64 << 10);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let how = tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                log::debug!("connection: {e}");
            }
            return;
        }
        how = conn.watch(&web.limits, stop) => how,
    };
    if how != limits::Close::Shutdown || !conn.busy() {
        // Idle, or half a request: closed at once, on shutdown too.
        return closed(how);
    }
    // Shutting down with a request in flight: hyper finishes it, then closes; the
    // caller drops what is left after the grace period.
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}

async fn episodes(
    State(state): State<AppState>,
    Query(filter): Query<EpisodeFilter>,
) -> Json<EpisodesResponse> {
    let Some(tracker) = state.episodes else {
        return Json(EpisodesResponse::default());
    };
    let t = tracker.lock();
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

/// 200 and "ok" (with a line per collector stuck on a read) while the daemon's loops
/// make progress; 503 naming the loops that stalled. Open without credentials, for
/// liveness probes: it says nothing of the host beyond collector names.
async fn healthz(State(state): State<AppState>) -> Response {
    let report = state.health.report();
    let status = if report.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report.text()).into_response()
}

async fn scrape(renders: &limits::Renders) -> Response {
    match renders.scrape().await {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many scrapes in flight (web.max_requests): try again later\n",
        )
            .into_response(),
        Some(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Some(Err(e)) => {
            log::error!("scrape failed: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("scrape failed: {e}\n"),
            )
                .into_response()
        }
    }
}
