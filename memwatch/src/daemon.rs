//! `memwatch run`: the daemon's start-up sequence, from the config to serving, and
//! the tasks it leaves running (fork events, episode samples, the systemd watchdog).

use parking_lot::Mutex;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    collectors::{self, Registry},
    config::{self, Config},
    episodes,
    host::Host,
    lifecycle, notify, privileges,
    probes::{self, HookOutcome, KernelSupport},
    server,
};

/// Everything the probes produced: the object (programs stay attached while it lives)
/// and what each hook ended up on.
pub struct Attached {
    pub ebpf: aya::Ebpf,
    pub outcomes: Vec<HookOutcome>,
}

/// Probes attached and what reads them.
pub struct Running {
    pub attached: Attached,
    /// Fork episodes, when the fork hooks attached.
    pub tracker: Option<Arc<Mutex<episodes::Tracker>>>,
}

/// Why memwatch stops.
pub enum Fatal {
    /// Can't start (exit 2): the message says what to change.
    Usage(String),
    /// Failed while running (exit 1).
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Fatal {
    fn from(e: anyhow::Error) -> Self {
        Fatal::Runtime(e)
    }
}

/// A config file (or the defaults, for None), checked: what parses but can't work,
/// and hook names the probe table does not know.
pub fn load_file(path: Option<&std::path::Path>) -> Result<Config, Fatal> {
    let cfg = match path {
        Some(path) => Config::load(path).map_err(|e| Fatal::Usage(e.to_string()))?,
        None => Config::default(),
    };
    probes::table::check_selection(&cfg.probes)
        .map_err(|e| Fatal::Usage(config::ConfigError::Invalid(e).to_string()))?;
    Ok(cfg)
}

/// Logs to stderr at `level`, or as RUST_LOG says when it is set (then the level
/// stays RUST_LOG's, also across reloads).
pub fn init_logging(level: config::LogLevel) {
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Trace)
        .parse_default_env()
        .format_timestamp_millis()
        .init();
    set_log_level(level);
}

/// The level of `[log] level`, unless RUST_LOG decides.
fn set_log_level(level: config::LogLevel) {
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(level.filter());
    }
}

/// Reads the configuration again (the file and the command line's overrides), for
/// SIGHUP.
pub type Reloader = Box<dyn Fn() -> Result<Config, Fatal>>;

/// The start-up sequence, once the config is loaded and logging set up: the signal
/// handlers (from here on a stop is orderly and SIGHUP reloads), the listener (a port
/// in use is reported before any probe attaches), the /proc collectors, the probes,
/// dropping the capabilities no longer needed, READY to systemd, then serving until
/// SIGTERM or SIGINT.
pub fn run(cfg: Config, host: Arc<Host>, reload: Reloader) -> Result<(), Fatal> {
    limit_malloc_arenas();
    let addr = config::parse_listen_address(&cfg.web.listen_address).map_err(Fatal::Usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("starting the async runtime")?;
    // A bad web config file (or [web] limit) stops the start here, before anything binds.
    let web = server::Web::new(&cfg.web).map_err(Fatal::Usage)?;
    let result = runtime.block_on(serve_until_stopped(cfg, host, addr, web, reload));
    // A collector stuck on a read runs on a thread of its own and is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// glibc gives each thread that allocates an arena of its own, which keeps its peak
/// allocation: with the collectors on threads of their own at every scrape, a daemon
/// under churn grew ten arenas of about 18 MiB (213 MiB RSS in the soak, against a
/// unit's MemoryMax=256M). Its threads mostly wait; two arenas serve them. Called
/// before any thread exists.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes a malloc parameter; no other thread is running yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn serve_until_stopped(
    mut cfg: Config,
    host: Arc<Host>,
    addr: std::net::SocketAddr,
    web: server::Web,
    reload: Reloader,
) -> Result<(), Fatal> {
    let mut signals = lifecycle::Signals::install().context("installing signal handlers")?;
    let listener = server::bind(addr).await.map_err(|e| {
        Fatal::Usage(format!(
            "cannot listen on {addr} ({e}): pick another --web.listen-address"
        ))
    })?;
    let health = Arc::new(lifecycle::Health::default());
    let mut registry = Registry::new(Duration::from_secs_f64(cfg.collectors.timeout_seconds));
    registry.register(Box::new(collectors::build_info::BuildInfo::new(&host)));
    collectors::register_proc(&mut registry, &cfg, &host);
    let running = if cfg.collectors.bpf && !lifecycle::stopping() {
        start_probes(&cfg, &host, &mut registry, &health).await?
    } else {
        None
    };
    if lifecycle::stopping() {
        log::info!("stop requested during start-up; not serving");
        stop(running, Instant::now());
        return Ok(());
    }
    // Everything that needed privileges is done: programs attached, tracefs and
    // /proc/timer_list read, the episode log opened.
    let kept = drop_capabilities(&cfg);
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    log::info!(
        "serving {} on {}://{local}",
        cfg.web.telemetry_path,
        web.scheme()
    );
    registry.register(Box::new(web.collector()));
    let registry = Arc::new(registry);
    health.watch_registry(registry.clone());
    let state = server::AppState {
        registry,
        episodes: running.as_ref().and_then(|r| r.tracker.clone()),
        health: health.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let web_config = web.config.clone();
    let mut server = tokio::spawn(async move {
        server::serve(listener, state, &web, async {
            let _ = stop_rx.await;
        })
        .await
    });
    // The listener is bound and answers as soon as the server task polls it.
    notify_ready(&service_status(&local, running.as_ref(), &kept), health);
    let why = loop {
        tokio::select! {
            request = signals.next() => match request {
                lifecycle::Request::Stop(why) => break why,
                lifecycle::Request::Reload => {
                    apply_reload(&mut cfg, &reload);
                    reload_web_config(&web_config).await;
                }
            },
            served = &mut server => {
                let e = match served {
                    Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped"),
                    Ok(Err(e)) => anyhow::Error::from(e).context("serving HTTP"),
                    Err(e) => anyhow::Error::from(e).context("the HTTP server task"),
                };
                stop(running, Instant::now());
                return Err(Fatal::Runtime(e));
            }
        }
    };
    let since = Instant::now();
    log::info!("{why} received; stopping");
    let _ = stop_tx.send(());
    // Responses in flight get a moment to finish; connections still open then are cut.
    if tokio::time::timeout(Duration::from_millis(500), &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    stop(running, since);
    Ok(())
}

/// Tells systemd, detaches, and says how long the stop took.
fn stop(running: Option<Running>, since: Instant) {
    if let Some(n) = notify::Notifier::from_env() {
        n.notify("STOPPING=1");
    }
    if let Some(r) = running {
        detach(r.attached);
    }
    log::info!("stopped in {} ms", since.elapsed().as_millis());
}

/// SIGHUP: reads the configuration again and checks it first; on an error keeps the
/// running one. Applies what can change while running (the log level) and names what
/// needs a restart.
fn apply_reload(running: &mut Config, reload: &Reloader) {
    let new = match reload() {
        Ok(c) => c,
        Err(Fatal::Usage(e)) => {
            return log::error!("SIGHUP: {e}; keeping the running configuration")
        }
        Err(Fatal::Runtime(e)) => {
            return log::error!("SIGHUP: {e:#}; keeping the running configuration")
        }
    };
    let changes = lifecycle::changes(running, &new);
    if changes.is_empty() {
        return log::info!("SIGHUP: configuration reloaded; nothing changed");
    }
    let (live, restart): (Vec<_>, Vec<_>) = changes.iter().partition(|c| c.key == "log.level");
    let show = |v: &[&lifecycle::Change]| {
        v.iter()
            .map(|c| format!("{} {} -> {}", c.key, c.before, c.after))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !live.is_empty() {
        running.log = new.log.clone();
        set_log_level(new.log.level);
        log::info!("SIGHUP: applied {}", show(&live));
    }
    if !restart.is_empty() {
        log::warn!(
            "SIGHUP: these changes need a restart to take effect (systemctl restart \
             memwatch): {}",
            show(&restart)
        );
    }
}

/// SIGHUP: reads the web config file again (TLS, users, headers) for new
/// connections; on an error the running one stays.
async fn reload_web_config(handle: &server::WebConfigHandle) {
    let h = handle.clone();
    // It reads files and hashes a dummy password: off the reactor.
    match tokio::task::spawn_blocking(move || h.reload()).await {
        Ok(Ok(changed)) if changed.0.is_empty() => log::debug!("SIGHUP: web config: {changed}"),
        Ok(Ok(changed)) => log::info!("SIGHUP: web config: {changed}"),
        Ok(Err(e)) => log::error!("SIGHUP: web config: {e}; keeping the running one"),
        Err(e) => log::error!("SIGHUP: web config reload failed: {e}"),
    }
}

/// Tells systemd (when it is watching) that the daemon is ready, with its status
/// line, and starts the watchdog pings it asked for: one per interval while every
/// watched loop makes progress, none (so systemd restarts the daemon) once one stalls.
fn notify_ready(status: &str, health: Arc<lifecycle::Health>) {
    let Some(n) = notify::Notifier::from_env() else {
        return;
    };
    n.notify(&format!("READY=1\nSTATUS={status}"));
    let status = status.to_string();
    if let Some(every) = notify::watchdog_interval() {
        log::info!(
            "systemd watchdog: pinging every {every:?} while the daemon's loops make progress"
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            // Held up (a busy machine, a stopped process), ping once and go on from
            // there: a burst of late pings tells systemd nothing.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut was_healthy = true;
            loop {
                tick.tick().await;
                let report = health.report();
                if report.healthy() {
                    if !was_healthy {
                        log::info!("watchdog: every loop makes progress again");
                        n.notify(&format!("STATUS={status}"));
                    }
                    n.notify("WATCHDOG=1");
                } else if was_healthy {
                    let why = report.stalled.join("; ");
                    log::error!("watchdog: not pinging systemd: {why}");
                    n.notify(&format!("STATUS=stalled: {why}"));
                }
                was_healthy = report.healthy();
            }
        });
    }
}

/// Detaches every program (dropping the object) and says how many hooks went.
fn detach(attached: Attached) {
    let n = attached
        .outcomes
        .iter()
        .filter(|o| o.chosen.is_some())
        .count();
    let mut ebpf = attached.ebpf;
    let mut programs: Vec<&mut aya::programs::Program> =
        ebpf.programs_mut().map(|(_, p)| p).collect();
    // Each detach waits for an RCU grace period (tens of ms, more on a busy machine):
    // side by side, the waits overlap instead of adding up.
    std::thread::scope(|scope| {
        for chunk in programs.chunks_mut(1) {
            scope.spawn(move || {
                for p in chunk.iter_mut() {
                    if let Err(e) = unload(p) {
                        log::debug!("unloading a program: {e}");
                    }
                }
            });
        }
    });
    drop(ebpf);
    log::info!("detached {n} hooks");
}

/// Detaches a program's links and unloads it (what dropping it does).
fn unload(p: &mut aya::programs::Program) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::Program as P;
    match p {
        P::TracePoint(p) => p.unload(),
        P::RawTracePoint(p) => p.unload(),
        P::KProbe(p) => p.unload(),
        P::FEntry(p) => p.unload(),
        P::FExit(p) => p.unload(),
        _ => Ok(()),
    }
}

/// Privilege check, tracefs, object load, ladder walk.
pub fn attach_probes(cfg: &Config, host: &Host, explore: bool) -> Result<Attached, Fatal> {
    privileges::check().map_err(Fatal::Usage)?;
    privileges::raise_memlock();
    let support = KernelSupport::probe(host);
    if let Err(e) = &support.tracefs {
        log::error!("{e}");
    }
    let mut ebpf = probes::load_object(&support, cfg, host)?;
    let outcomes = probes::attach_all(&mut ebpf, &support, &cfg.probes, explore);
    Ok(Attached { ebpf, outcomes })
}

/// Drops the capabilities the running daemon no longer needs and logs what it kept;
/// returns that description ("none" when nothing).
fn drop_capabilities(cfg: &Config) -> String {
    let threads = privileges::thread_count();
    if threads > 1 {
        log::warn!("{threads} threads before dropping capabilities: only this one loses them");
    }
    match privileges::drop_after_attach(cfg.collectors.processes) {
        Ok(d) => {
            let kept = d.describe();
            log::info!(
                "dropped capabilities {}; kept: {kept}",
                privileges::names(d.before & !d.kept_set())
            );
            kept
        }
        Err(e) => {
            log::warn!("could not drop capabilities: {e}; running with the ones given");
            "all given (drop failed)".into()
        }
    }
}

/// The one-line STATUS= for systemd: where it serves, which rungs the hooks run on,
/// the capabilities kept.
fn service_status(local: &str, running: Option<&Running>, kept: &str) -> String {
    let hooks = match running {
        None => "no eBPF (/proc metrics only)".to_string(),
        Some(r) => {
            let total = r.attached.outcomes.len();
            let mut by_mode: std::collections::BTreeMap<String, usize> = Default::default();
            for m in r.attached.outcomes.iter().filter_map(|o| o.chosen) {
                *by_mode.entry(m.to_string()).or_default() += 1;
            }
            let attached: usize = by_mode.values().sum();
            let modes: Vec<String> = by_mode.iter().map(|(m, n)| format!("{n} {m}")).collect();
            format!("{attached}/{total} hooks attached ({})", modes.join(", "))
        }
    };
    format!("serving on {local}; {hooks}; capabilities kept: {kept}")
}

/// Loads and attaches the probes, registers their collectors, and starts the fork
/// episode tasks. Without eBPF (a runtime failure) it says so and returns None: the
/// /proc collectors still serve.
pub async fn start_probes(
    cfg: &Config,
    host: &Arc<Host>,
    registry: &mut Registry,
    health: &lifecycle::Health,
) -> Result<Option<Running>, Fatal> {
    let mut a = match attach_probes(cfg, host, false) {
        Ok(a) => a,
        Err(Fatal::Runtime(e)) => {
            log::error!("{e:#}; serving /proc metrics only");
            return Ok(None);
        }
        Err(usage) => return Err(usage),
    };
    forward_ebpf_logs(&mut a.ebpf);
    let hooks: collectors::bpf::Attached = a
        .outcomes
        .iter()
        .filter_map(|o| o.chosen.map(|m| (o.hook.id, m)))
        .collect();
    let cow = probes::cow::episode_source(&hooks);
    let forks = probes::fork::episodes_possible(&hooks);
    let mut tracker = None;
    match collectors::bpf::Bpf::new(&mut a.ebpf, hooks, &cfg.tables, host.clone()) {
        Ok(c) => {
            if forks {
                match start_episodes(&mut a.ebpf, cfg, host, cow, c.rows(), health) {
                    Ok(t) => {
                        t.lock().bound(&cfg.tables, &c.tables());
                        registry.register(Box::new(collectors::episodes::Episodes::new(t.clone())));
                        tracker = Some(t);
                    }
                    Err(e) => log::error!("fork episodes unavailable: {e:#}"),
                }
            } else {
                log::warn!(
                    "fork episodes unavailable: the fork and process-exit hooks did not attach"
                );
            }
            registry.register(Box::new(c));
        }
        Err(e) => log::error!("eBPF counters unavailable: {e:#}"),
    }
    registry.register(Box::new(collectors::probes::ProbeInfo::new(
        a.outcomes.clone(),
    )));
    Ok(Some(Running {
        attached: a,
        tracker,
    }))
}

/// Starts reading fork/exit events into a tracker, and sampling running episodes.
fn start_episodes(
    ebpf: &mut aya::Ebpf,
    cfg: &Config,
    host: &Arc<Host>,
    cow: episodes::CowSource,
    rows: collectors::bpf::ProcRows,
    health: &lifecycle::Health,
) -> anyhow::Result<Arc<Mutex<episodes::Tracker>>> {
    use tokio::io::unix::AsyncFd;
    let ring =
        aya::maps::RingBuf::try_from(ebpf.take_map(probes::maps::EVENTS).with_context(|| {
            format!("map {} missing from the eBPF object", probes::maps::EVENTS)
        })?)?;
    let tracker = Arc::new(Mutex::new(
        episodes::Tracker::new(&cfg.episodes, cow, host.clone())
            .with_context(|| format!("opening episodes.log {:?}", cfg.episodes.log))?,
    ));
    // SAFETY: the ring buffer owns its fd and keeps it open while the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
    let (t, r) = (tracker.clone(), rows.clone());
    let beat = health.on_events("fork event reader");
    tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    log::error!("fork events stopped: {e}");
                    return;
                }
            };
            beat.busy();
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<memwatch_common::Event>() {
                    // SAFETY: the programs write whole `Event`s; read unaligned.
                    let ev: memwatch_common::Event =
                        unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    t.lock().on_event(&ev, &r);
                }
            }
            guard.clear_ready();
            beat.idle();
        }
    });
    let t = tracker.clone();
    let beat = health.periodic("episode sampler", episodes::Tracker::SAMPLE_EVERY);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(episodes::Tracker::SAMPLE_EVERY);
        loop {
            tick.tick().await;
            beat.tick();
            t.lock().sample(&rows);
        }
    });
    Ok(tracker)
}

/// Forwards the eBPF side's aya-log records to this process's logger.
fn forward_ebpf_logs(ebpf: &mut aya::Ebpf) {
    use tokio::io::unix::AsyncFd;
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => return log::debug!("eBPF log forwarding unavailable: {e}"),
    };
    // SAFETY: the logger owns its ring buffer fd and keeps it open, unchanged, for as
    // long as the AsyncFd (which owns the logger) lives.
    let mut fd =
        match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => return log::warn!("eBPF log forwarding unavailable: {e}"),
        };
    tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    log::warn!("eBPF log forwarding stopped: {e}");
                    return;
                }
            }
        }
    });
}
