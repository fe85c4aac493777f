//! `memwatch run`: the daemon's start-up sequence, from the config to serving, and
//! the tasks it leaves running (fork events, episode samples, the systemd watchdog).

use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::{
    collectors::{self, Registry},
    config::{self, Config},
    episodes,
    host::Host,
    notify, privileges,
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

pub fn init_logging(level: config::LogLevel) {
    env_logger::Builder::new()
        .filter_level(level.filter())
        .parse_default_env()
        .format_timestamp_millis()
        .init();
}

/// The start-up sequence, once the config is loaded and logging set up: the listener
/// (a port in use is reported before any probe attaches), the /proc collectors, the
/// probes, dropping the capabilities no longer needed, READY to systemd, then serving
/// until SIGTERM.
pub fn run(cfg: Config, host: Arc<Host>) -> Result<(), Fatal> {
    let addr = config::parse_listen_address(&cfg.web.listen_address).map_err(Fatal::Usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = server::bind(addr).await.map_err(|e| {
            Fatal::Usage(format!(
                "cannot listen on {addr} ({e}): pick another --web.listen-address"
            ))
        })?;
        let mut registry = Registry::default();
        registry.register(Box::new(collectors::build_info::BuildInfo::new(&host)));
        collectors::register_proc(&mut registry, &cfg, &host);
        let running = if cfg.collectors.bpf {
            start_probes(&cfg, &host, &mut registry).await?
        } else {
            None
        };
        // Everything that needed privileges is done: programs attached, tracefs and
        // /proc/timer_list read, the episode log opened.
        let kept = drop_capabilities(&cfg);
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        log::info!("serving {} on http://{local}", cfg.web.telemetry_path);
        let state = server::AppState {
            registry: Arc::new(registry),
            episodes: running.as_ref().and_then(|r| r.tracker.clone()),
        };
        // The listener is bound and answers as soon as `serve` below polls it.
        notify_ready(&service_status(&local, running.as_ref(), &kept));
        server::serve(listener, state, &cfg.web.telemetry_path, shutdown_signal())
            .await
            .context("serving HTTP")?;
        if let Some(n) = notify::Notifier::from_env() {
            n.notify("STOPPING=1");
        }
        if let Some(r) = running {
            detach(r.attached);
        }
        Ok(())
    })
}

/// Tells systemd (when it is watching) that the daemon is ready, with its status
/// line, and starts the watchdog pings it asked for.
fn notify_ready(status: &str) {
    let Some(n) = notify::Notifier::from_env() else {
        return;
    };
    n.notify(&format!("READY=1\nSTATUS={status}"));
    if let Some(every) = notify::watchdog_interval() {
        log::info!("systemd watchdog: pinging every {every:?}");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            // Held up (a busy machine, a stopped process), ping once and go on from
            // there: a burst of late pings tells systemd nothing.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                n.notify("WATCHDOG=1");
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
    drop(attached.ebpf);
    log::info!("detached {n} hooks; exiting");
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
                match start_episodes(&mut a.ebpf, cfg, host, cow, c.rows()) {
                    Ok(t) => {
                        t.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .bound(&cfg.tables, &c.tables());
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
    tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    log::error!("fork events stopped: {e}");
                    return;
                }
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<memwatch_common::Event>() {
                    // SAFETY: the programs write whole `Event`s; read unaligned.
                    let ev: memwatch_common::Event =
                        unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    t.lock().expect("tracker lock").on_event(&ev, &r);
                }
            }
            guard.clear_ready();
        }
    });
    let t = tracker.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(episodes::Tracker::SAMPLE_EVERY);
        loop {
            tick.tick().await;
            t.lock().expect("tracker lock").sample(&rows);
        }
    });
    Ok(tracker)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT received"),
        _ = term.recv() => log::info!("SIGTERM received"),
    }
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
