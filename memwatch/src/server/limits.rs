//! The server's limits: how long a client may take to send its request's headers,
//! how long a kept-alive connection may idle, how many connections may be open, how
//! many scrapes may be in flight, and the one render that concurrent scrapes share.
//! What the limits turn away is counted (`Stats`, exported by `HttpCollector`).

use parking_lot::Mutex;
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{watch, Notify},
    time::Instant,
};

use crate::{collectors::Registry, config, metrics::Family};

/// The limits, from `[web]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// 0: no limit.
    pub max_requests: usize,
}

impl Limits {
    pub fn from_config(web: &config::Web) -> Result<Self, String> {
        Ok(Self {
            header_read_timeout: web.header_read_timeout()?,
            idle_timeout: web.idle_timeout()?,
            max_connections: web.max_connections.max(1),
            max_requests: web.max_requests,
        })
    }
}

/// Why the server turned something away; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// A new connection closed: every slot had a request in flight.
    Connections,
    /// An open connection without a request in flight closed to make room for a new one.
    Evicted,
    /// A scrape answered 503: `max_requests` in flight.
    Renders,
    /// A request answered 401.
    Auth,
    /// A TLS handshake that failed.
    Tls,
    /// A connection closed because its request's headers (or TLS handshake) did not
    /// arrive within `header_read_timeout`.
    Timeout,
}

impl Reject {
    const ALL: [Reject; 6] = [
        Reject::Connections,
        Reject::Evicted,
        Reject::Renders,
        Reject::Auth,
        Reject::Tls,
        Reject::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Reject::Connections => "connections",
            Reject::Evicted => "evicted",
            Reject::Renders => "renders",
            Reject::Auth => "auth",
            Reject::Tls => "tls",
            Reject::Timeout => "timeout",
        }
    }
}

/// What the server counts.
#[derive(Default)]
pub struct Stats {
    rejected: [AtomicU64; 6],
    open: AtomicUsize,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_ok: AtomicU64,
}

impl Stats {
    pub fn new() -> Arc<Self> {
        let s = Self::default();
        s.last_reload_ok.store(1, Ordering::Relaxed);
        Arc::new(s)
    }

    pub fn reject(&self, r: Reject) {
        if let Some(c) = self.rejected.get(r as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejected
            .get(r as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub(super) fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
        self.last_reload_ok.store(u64::from(ok), Ordering::Relaxed);
    }
}

/// Exports `Stats`: register it with the scrape's registry.
pub struct HttpCollector {
    stats: Arc<Stats>,
    limits: Limits,
}

impl HttpCollector {
    pub fn new(stats: Arc<Stats>, limits: Limits) -> Self {
        Self { stats, limits }
    }
}

impl crate::collectors::Collector for HttpCollector {
    fn name(&self) -> &'static str {
        "http"
    }

    fn collect(&self, out: &mut Vec<prometheus::proto::MetricFamily>) -> anyhow::Result<()> {
        let s = &self.stats;
        let mut f = Family::counter(
            "memwatch_http_rejected_total",
            "Connections and requests the HTTP server's limits turned away, by reason: \
             connections (closed at once, every slot busy), evicted (closed to make room), \
             renders (503, max_requests in flight), auth (401), tls (handshake failed), \
             timeout (no complete request headers within header_read_timeout).",
        );
        for r in Reject::ALL {
            f.sample(&[("reason", r.label())], s.rejected(r) as f64);
        }
        f.push_to(out);
        let mut f = Family::gauge(
            "memwatch_http_connections",
            "HTTP connections open now (this scrape's included).",
        );
        f.sample(&[], s.open.load(Ordering::Relaxed) as f64);
        f.push_to(out);
        let mut f = Family::gauge(
            "memwatch_http_connections_max",
            "The most HTTP connections open at once (web.max_connections).",
        );
        f.sample(&[], self.limits.max_connections as f64);
        f.push_to(out);
        let mut f = Family::counter(
            "memwatch_web_config_reloads_total",
            "Reloads of the web config file, by result.",
        );
        f.sample(
            &[("result", "success")],
            s.reloads_ok.load(Ordering::Relaxed) as f64,
        );
        f.sample(
            &[("result", "failure")],
            s.reloads_failed.load(Ordering::Relaxed) as f64,
        );
        f.push_to(out);
        let mut f = Family::gauge(
            "memwatch_web_config_last_reload_successful",
            "Whether the last reload of the web config file worked (1; also before any).",
        );
        f.sample(&[], s.last_reload_ok.load(Ordering::Relaxed) as f64);
        f.push_to(out);
        Ok(())
    }
}

/// Where a connection is in its life, for its deadline and for eviction.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's first byte: since `since`; `fresh`: no request yet on
    /// this connection (then the header timeout runs from the accept).
    Idle { since: Instant, fresh: bool },
    /// A request's bytes (or the TLS handshake's) are arriving; its header deadline.
    Reading { since: Instant },
    /// A request is being answered.
    Busy,
}

/// One open connection, as the table and its task see it.
pub struct Conn {
    phase: Mutex<Phase>,
    /// Told to close (evicted).
    evict: Notify,
    /// The phase changed (a request ended): its deadline moved.
    changed: Notify,
}

/// Why a connection's watch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Close {
    /// Header (or handshake) timeout: counted.
    Timeout,
    /// Idle timeout on a kept-alive connection: normal.
    Idle,
    Evicted,
    Shutdown,
}

impl Conn {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Idle {
                since: Instant::now(),
                fresh: true,
            }),
            evict: Notify::new(),
            changed: Notify::new(),
        }
    }

    /// Bytes arrived.
    fn on_read(&self) {
        let mut p = self.phase.lock();
        if let Phase::Idle { since, fresh } = *p {
            *p = Phase::Reading {
                since: if fresh { since } else { Instant::now() },
            };
        }
    }

    /// The request's headers are in: the service runs.
    pub fn begin_request(&self) {
        *self.phase.lock() = Phase::Busy;
    }

    /// The response is out: wait for the next request.
    pub fn end_request(&self) {
        *self.phase.lock() = Phase::Idle {
            since: Instant::now(),
            fresh: false,
        };
        self.changed.notify_one();
    }

    /// When this connection may be closed unless it moves on, and how.
    fn deadline(&self, l: &Limits) -> Option<(Instant, Close)> {
        match *self.phase.lock() {
            Phase::Idle { since, fresh: true } | Phase::Reading { since } => {
                Some((since + l.header_read_timeout, Close::Timeout))
            }
            Phase::Idle {
                since,
                fresh: false,
            } => Some((since + l.idle_timeout, Close::Idle)),
            Phase::Busy => None,
        }
    }

    /// Whether a request is being answered.
    pub fn busy(&self) -> bool {
        matches!(*self.phase.lock(), Phase::Busy)
    }

    /// When it started waiting, if it is not busy (the eviction order: oldest first).
    fn waiting_since(&self) -> Option<Instant> {
        match *self.phase.lock() {
            Phase::Idle { since, .. } | Phase::Reading { since } => Some(since),
            Phase::Busy => None,
        }
    }

    /// Resolves when the connection should close: a deadline passed, it was evicted,
    /// or the server shuts down.
    pub async fn watch(&self, limits: &Limits, shutdown: &mut watch::Receiver<bool>) -> Close {
        loop {
            let deadline = self.deadline(limits);
            let wake = deadline.as_ref().map_or_else(
                || Instant::now() + limits.header_read_timeout,
                |(at, _)| *at,
            );
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    if let Some((at, how)) = self.deadline(limits) {
                        if at <= Instant::now() {
                            return how;
                        }
                    }
                }
                _ = self.evict.notified() => return Close::Evicted,
                _ = self.changed.notified() => {}
                r = shutdown.wait_for(|s| *s) => {
                    let _ = r;
                    return Close::Shutdown;
                }
            }
        }
    }
}

/// The open connections, up to `max_connections`.
pub struct Table {
    max: usize,
    conns: Mutex<Vec<Arc<Conn>>>,
    stats: Arc<Stats>,
}

/// A connection's place in the table, given up on drop.
pub struct Slot {
    table: Arc<Table>,
    pub conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.remove(&self.conn);
    }
}

impl Table {
    pub fn new(max: usize, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            max,
            conns: Mutex::new(Vec::new()),
            stats,
        })
    }

    /// A slot for a new connection: a free one, or the one of the connection that has
    /// waited longest without a request in flight (told to close); None when every
    /// connection has a request in flight (counted).
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut conns = self.conns.lock();
        if conns.len() >= self.max {
            let victim = conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((c.waiting_since()?, i)))
                .min()
                .map(|(_, i)| i);
            let Some(i) = victim else {
                self.stats.reject(Reject::Connections);
                return None;
            };
            let old = conns.swap_remove(i);
            old.evict.notify_one();
            self.stats.reject(Reject::Evicted);
        }
        let conn = Arc::new(Conn::new());
        conns.push(conn.clone());
        self.stats.open.store(conns.len(), Ordering::Relaxed);
        Some(Slot {
            table: self.clone(),
            conn,
        })
    }

    fn remove(&self, conn: &Arc<Conn>) {
        let mut conns = self.conns.lock();
        conns.retain(|c| !Arc::ptr_eq(c, conn));
        self.stats.open.store(conns.len(), Ordering::Relaxed);
    }
}

/// A connection's socket, telling its `Conn` when bytes arrive.
pub struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, conn: Arc<Conn>) -> Self {
        Self { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A render's outcome: the exposition, or why it failed.
pub type Rendered = Result<Bytes, String>;

/// Scrapes share one render: a scrape that arrives while a render runs waits for that
/// render's result instead of starting another. At most `max` scrapes are in flight.
pub struct Renders {
    registry: Arc<Registry>,
    max: usize,
    in_flight: Arc<AtomicUsize>,
    current: Arc<Mutex<Option<watch::Receiver<Option<Rendered>>>>>,
    stats: Arc<Stats>,
}

/// A scrape's place among those in flight, given up on drop.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Renders {
    pub fn new(registry: Arc<Registry>, max: usize, stats: Arc<Stats>) -> Self {
        Self {
            registry,
            max,
            in_flight: Arc::new(AtomicUsize::new(0)),
            current: Arc::new(Mutex::new(None)),
            stats,
        }
    }

    /// The exposition of the render in flight, or of a new one; None beyond `max`
    /// scrapes in flight (counted).
    pub async fn scrape(&self) -> Option<Rendered> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let _place = InFlight(self.in_flight.clone());
        if self.max > 0 && n > self.max {
            self.stats.reject(Reject::Renders);
            return None;
        }
        let mut rx = {
            let mut cur = self.current.lock();
            match &*cur {
                Some(rx) => {
                    log::debug!("scrape joins the render in flight ({n} scrapes in flight)");
                    rx.clone()
                }
                None => {
                    log::debug!("scrape starts a render");
                    let (tx, rx) = watch::channel(None);
                    *cur = Some(rx.clone());
                    let (registry, current) = (self.registry.clone(), self.current.clone());
                    // Its own task: the render finishes (and is shared) even when the
                    // scrape that started it goes away.
                    tokio::spawn(async move {
                        let r = tokio::task::spawn_blocking(move || registry.render())
                            .await
                            .map(Bytes::from)
                            .map_err(|e| e.to_string());
                        *current.lock() = None;
                        let _ = tx.send(Some(r));
                    });
                    rx
                }
            }
        };
        let r = rx.wait_for(Option::is_some).await;
        Some(match r {
            Ok(v) => v.clone().unwrap_or_else(|| Err("no render".into())),
            Err(_) => Err("the render went away".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 2,
            max_requests: 0,
        }
    }

    #[test]
    fn the_table_evicts_the_longest_waiting_and_never_a_busy_one() {
        let stats = Stats::new();
        let t = Table::new(2, stats.clone());
        let a = t.admit().unwrap();
        let b = t.admit().unwrap();
        // Both wait (a longer): a third takes a's slot.
        let c = t.admit().unwrap();
        assert_eq!(stats.rejected(Reject::Evicted), 1);
        assert_eq!(stats.open.load(Ordering::Relaxed), 2);
        assert!(t.conns.lock().iter().all(|x| !Arc::ptr_eq(x, &a.conn)));
        // b and c busy: a fourth is turned away.
        b.conn.begin_request();
        c.conn.begin_request();
        assert!(t.admit().is_none());
        assert_eq!(stats.rejected(Reject::Connections), 1);
        c.conn.end_request();
        let d = t.admit().unwrap();
        assert!(t.conns.lock().iter().any(|x| Arc::ptr_eq(x, &d.conn)));
        assert!(t.conns.lock().iter().all(|x| !Arc::ptr_eq(x, &c.conn)));
        drop((a, b, c, d));
        assert_eq!(stats.open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let l = limits();
        let c = Conn::new();
        let (at, how) = c.deadline(&l).unwrap();
        assert_eq!(how, Close::Timeout);
        // The first byte of a fresh connection does not move its header deadline.
        c.on_read();
        assert_eq!(c.deadline(&l).unwrap().0, at);
        c.begin_request();
        assert!(c.deadline(&l).is_none());
        c.end_request();
        assert_eq!(c.deadline(&l).unwrap().1, Close::Idle);
        c.on_read();
        assert_eq!(c.deadline(&l).unwrap().1, Close::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_connection_times_out_and_an_evicted_one_closes() {
        let l = limits();
        let (_tx, mut rx) = watch::channel(false);
        let c = Conn::new();
        assert_eq!(c.watch(&l, &mut rx).await, Close::Timeout);
        let c = Conn::new();
        c.evict.notify_one();
        assert_eq!(c.watch(&l, &mut rx).await, Close::Evicted);
        let (tx, mut rx) = watch::channel(false);
        let c = Conn::new();
        c.begin_request();
        tx.send(true).unwrap();
        assert_eq!(c.watch(&l, &mut rx).await, Close::Shutdown);
    }
}
