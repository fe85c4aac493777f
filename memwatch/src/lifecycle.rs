//! The daemon's lifecycle: the signals that stop it (SIGTERM, SIGINT) or reload its
//! configuration (SIGHUP), a stop flag that the start-up sequence checks between steps
//! (so a stop during attach is prompt), the progress of the daemon's loops that
//! /healthz and the systemd watchdog report, and what a reload changed.

use parking_lot::Mutex;
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::collectors::Registry;

/// Set by the SIGTERM/SIGINT handler itself, so that synchronous start-up steps (the
/// object load, the ladder walk) can see it between hooks without the async runtime.
fn stop_flag() -> &'static Arc<AtomicBool> {
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    STOP.get_or_init(Default::default)
}

/// From here on SIGTERM and SIGINT only set the stop flag (the daemon checks it
/// between start-up steps and stops in order). Call first thing; idempotent.
pub fn catch_stop_signals() -> std::io::Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register(sig, stop_flag().clone())?;
    }
    let _ = DONE.set(());
    Ok(())
}

/// Whether SIGTERM or SIGINT has arrived.
pub fn stopping() -> bool {
    stop_flag().load(Ordering::Relaxed)
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Stop(&'static str),
    Reload,
}

/// The signals the daemon handles. From `install` on, SIGTERM and SIGINT set the stop
/// flag and SIGHUP no longer kills the process (its default action).
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers; call first thing in the runtime, before anything that
    /// would have to be undone.
    pub fn install() -> std::io::Result<Self> {
        catch_stop_signals()?;
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next request. A stop that arrived before this call (during a synchronous
    /// step) is returned at once.
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.term.recv() => Request::Stop("SIGTERM"),
            _ = self.int.recv() => Request::Stop("SIGINT"),
            _ = self.hup.recv() => Request::Reload,
        }
    }

    /// Resolves on SIGTERM or SIGINT; SIGHUPs meanwhile are dropped (for the short
    /// commands that serve no reload).
    pub async fn stopped(&mut self) -> &'static str {
        loop {
            if let Request::Stop(s) = self.next().await {
                return s;
            }
        }
    }
}

/// A loop of the daemon whose progress is watched.
pub struct Beat {
    name: &'static str,
    /// Periodic loops: the period. Stalled when no tick came for several periods.
    every: Option<Duration>,
    clock: Instant,
    /// Last tick (ms on `clock`).
    last_ms: AtomicU64,
    /// Since when a piece of work is in flight (ms + 1; 0: idle), for loops that wait
    /// for events: stalled when one piece of work takes too long.
    busy_ms: AtomicU64,
}

impl Beat {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The loop went round once.
    pub fn tick(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A piece of work starts (an event-driven loop woke up).
    pub fn busy(&self) {
        self.busy_ms
            .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
    }

    /// The piece of work is done.
    pub fn idle(&self) {
        self.busy_ms.store(0, Ordering::Relaxed);
        self.tick();
    }

    /// Why this loop counts as stalled, if it does.
    fn stalled(&self, busy_limit: Duration) -> Option<String> {
        let now = self.now_ms();
        if let Some(since) = self.busy_ms.load(Ordering::Relaxed).checked_sub(1) {
            let busy = Duration::from_millis(now.saturating_sub(since));
            if busy > busy_limit {
                return Some(format!(
                    "{} busy for {:.1} s",
                    self.name,
                    busy.as_secs_f64()
                ));
            }
        }
        let every = self.every?;
        let quiet = Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)));
        (quiet > every * 5 + Duration::from_secs(10)).then(|| {
            format!(
                "{} has not run for {:.1} s (every {:.1} s)",
                self.name,
                quiet.as_secs_f64(),
                every.as_secs_f64()
            )
        })
    }
}

/// The daemon's loops and collectors, as /healthz and the watchdog see them.
pub struct Health {
    clock: Instant,
    beats: Mutex<Vec<Arc<Beat>>>,
    registry: OnceLock<Arc<Registry>>,
    /// How long one piece of an event-driven loop's work may take.
    busy_limit: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            clock: Instant::now(),
            beats: Default::default(),
            registry: Default::default(),
            busy_limit: Duration::from_secs(30),
        }
    }
}

/// What /healthz answers.
#[derive(Debug, Default)]
pub struct Report {
    /// Loops that stopped making progress: the daemon is unhealthy (503, no watchdog
    /// ping, so systemd restarts it).
    pub stalled: Vec<String>,
    /// Collectors stuck on a read: their metrics are missing from scrapes, the rest
    /// are served (200).
    pub degraded: Vec<String>,
}

impl Report {
    pub fn healthy(&self) -> bool {
        self.stalled.is_empty()
    }

    /// The body: `ok` and the degraded parts, or what stalled.
    pub fn text(&self) -> String {
        let mut s = String::from(if self.healthy() { "ok\n" } else { "stalled\n" });
        for l in &self.stalled {
            s.push_str(&format!("stalled: {l}\n"));
        }
        for l in &self.degraded {
            s.push_str(&format!("degraded: {l}\n"));
        }
        s
    }
}

impl Health {
    fn beat(&self, name: &'static str, every: Option<Duration>) -> Arc<Beat> {
        let b = Arc::new(Beat {
            name,
            every,
            clock: self.clock,
            last_ms: AtomicU64::new(0),
            busy_ms: AtomicU64::new(0),
        });
        b.tick();
        self.beats.lock().push(b.clone());
        b
    }

    /// A loop that goes round every `every`.
    pub fn periodic(&self, name: &'static str, every: Duration) -> Arc<Beat> {
        self.beat(name, Some(every))
    }

    /// A loop that waits for events and works on each.
    pub fn on_events(&self, name: &'static str) -> Arc<Beat> {
        self.beat(name, None)
    }

    /// The collectors to report stuck ones of.
    pub fn watch_registry(&self, r: Arc<Registry>) {
        let _ = self.registry.set(r);
    }

    pub fn report(&self) -> Report {
        let stalled = self
            .beats
            .lock()
            .iter()
            .filter_map(|b| b.stalled(self.busy_limit))
            .collect();
        let degraded = self
            .registry
            .get()
            .map(|r| {
                r.stuck()
                    .into_iter()
                    .map(|s| {
                        format!(
                            "collector {} stuck on a read for {:.1} s",
                            s.collector, s.for_secs
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Report { stalled, degraded }
    }
}

/// One setting a reload changed: its dotted key, before and after.
#[derive(Debug, PartialEq)]
pub struct Change {
    pub key: String,
    pub before: String,
    pub after: String,
}

/// The settings that differ between two configurations, by dotted key (`web.listen_address`).
pub fn changes(before: &crate::config::Config, after: &crate::config::Config) -> Vec<Change> {
    let flat = |c: &crate::config::Config| {
        let mut out = BTreeMap::new();
        if let Ok(v) = toml::Value::try_from(c) {
            flatten("", &v, &mut out);
        }
        out
    };
    let (a, b) = (flat(before), flat(after));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k), b.get(k));
            (x != y).then(|| Change {
                key: k.clone(),
                before: x.cloned().unwrap_or_else(|| "(unset)".into()),
                after: y.cloned().unwrap_or_else(|| "(unset)".into()),
            })
        })
        .collect()
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn changes_name_the_keys() {
        let a = Config::default();
        let mut b = a.clone();
        assert!(changes(&a, &b).is_empty());
        b.web.listen_address = "127.0.0.1:1".into();
        b.processes.comm.push("x*".into());
        let c = changes(&a, &b);
        let keys: Vec<&str> = c.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["processes.comm", "web.listen_address"]);
        assert_eq!(c[1].before, "\":9847\"");
        assert_eq!(c[1].after, "\"127.0.0.1:1\"");
    }

    #[test]
    fn a_beat_stalls_when_busy_too_long_or_quiet() {
        let h = Health {
            busy_limit: Duration::from_millis(0),
            ..Default::default()
        };
        let b = h.on_events("events");
        assert!(h.report().healthy());
        b.busy();
        std::thread::sleep(Duration::from_millis(5));
        let r = h.report();
        assert!(!r.healthy());
        assert!(r.stalled[0].starts_with("events busy for"), "{r:?}");
        b.idle();
        assert!(h.report().healthy());
        assert_eq!(h.report().text(), "ok\n");
    }
}
