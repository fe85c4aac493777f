//! memwatch: where a Linux host's memory work goes, for Prometheus.

mod btf;
mod collectors;
mod config;
mod episodes;
mod host;
mod metrics;
mod notify;
mod parse;
mod privileges;
mod probes;
mod server;
mod tracefs;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::{
    collectors::Registry,
    config::{Config, LogLevel, ProbeMode},
    probes::{
        loader::{on_functions, Attempt},
        table::Mode,
        HookOutcome, KernelSupport,
    },
};

#[derive(Parser)]
#[command(
    name = "memwatch",
    version,
    about = "Linux memory observability: COW, page faults, fork, writeback and reclaim, \
             attributed to processes, exported for Prometheus",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options of `run`, for a bare `memwatch`.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the probes and serve /metrics (the default).
    Run(RunArgs),
    /// Show, for each hook, which rungs (fentry, kprobe, tracepoint) work on this
    /// kernel, which one `run` would pick, and why the others can't be used.
    Probes(ProbesArgs),
    /// Configuration helpers.
    Config(ConfigArgs),
    /// Report fork episodes (fork to child exit) of watched processes, with a
    /// verdict: from the running daemon, or with probes of its own when none runs.
    ForkReport(ForkReportArgs),
}

#[derive(Args)]
struct ForkReportArgs {
    /// Only episodes of processes with this command name.
    #[arg(long)]
    comm: Option<String>,
    /// Only episodes of this parent pid.
    #[arg(long)]
    pid: Option<u32>,
    /// Keep printing episodes as they finish.
    #[arg(long)]
    follow: bool,
    /// One JSON object per episode (the daemon's log format) instead of text.
    #[arg(long)]
    json: bool,
    /// The daemon to ask.
    #[arg(long, default_value = "http://127.0.0.1:9847")]
    url: String,
    /// Config for probes of its own (watch list) when no daemon answers.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// TOML config file (every key optional; see `memwatch config --print-default`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve on, e.g. ":9847" or "127.0.0.1:9847".
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    listen_address: Option<String>,
    /// Path of the metrics endpoint.
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    telemetry_path: Option<String>,
    /// Force a rung of the probe ladder.
    #[arg(long = "probe-mode", value_enum)]
    probe_mode: Option<ProbeMode>,
    /// Log level (RUST_LOG, when set, wins).
    #[arg(long = "log.level", value_enum)]
    log_level: Option<LogLevel>,
    /// Where procfs is mounted (e.g. the host's /proc seen from a container).
    #[arg(long = "path.procfs", value_name = "DIR", default_value = "/proc")]
    procfs: String,
    /// Where sysfs is mounted.
    #[arg(long = "path.sysfs", value_name = "DIR", default_value = "/sys")]
    sysfs: String,
}

#[derive(Args)]
struct ProbesArgs {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Force a rung of the probe ladder (shows what `run --probe-mode` would do).
    #[arg(long = "probe-mode", value_enum)]
    probe_mode: Option<ProbeMode>,
    /// Log level (RUST_LOG, when set, wins).
    #[arg(long = "log.level", value_enum, default_value = "error")]
    log_level: LogLevel,
}

#[derive(Args)]
struct ConfigArgs {
    /// Print the built-in default configuration, with comments.
    #[arg(long)]
    print_default: bool,
    /// Check a config file and exit.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

/// Exit code for "can't start": bad usage, bad config, missing privileges.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Probes(args)) => probes_cmd(args),
        Some(Command::Config(args)) => config_cmd(args),
        Some(Command::ForkReport(args)) => fork_report(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal::Usage(msg)) => {
            eprintln!("memwatch: error: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Fatal::Runtime(e)) => {
            eprintln!("memwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Why memwatch stops.
enum Fatal {
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

/// The config file (or the defaults) with command-line overrides applied.
fn load_config(args: &RunArgs) -> Result<Config, Fatal> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path).map_err(|e| Fatal::Usage(e.to_string()))?,
        None => Config::default(),
    };
    if let Some(a) = &args.listen_address {
        cfg.web.listen_address = a.clone();
    }
    if let Some(p) = &args.telemetry_path {
        cfg.web.telemetry_path = p.clone();
    }
    if let Some(m) = args.probe_mode {
        cfg.probes.mode = m;
    }
    if let Some(l) = args.log_level {
        cfg.log.level = l;
    }
    cfg.validate().map_err(|e| Fatal::Usage(e.to_string()))?;
    Ok(cfg)
}

fn init_logging(level: LogLevel) {
    env_logger::Builder::new()
        .filter_level(level.filter())
        .parse_default_env()
        .format_timestamp_millis()
        .init();
}

/// Everything the probes produced: the object (programs stay attached while it lives)
/// and what each hook ended up on.
struct Attached {
    ebpf: aya::Ebpf,
    outcomes: Vec<HookOutcome>,
}

/// Privilege check, tracefs, object load, ladder walk.
fn attach_probes(cfg: &Config, host: &host::Host, explore: bool) -> Result<Attached, Fatal> {
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

fn run(args: RunArgs) -> Result<(), Fatal> {
    let cfg = load_config(&args)?;
    init_logging(cfg.log.level);
    let addr = config::parse_listen_address(&cfg.web.listen_address).map_err(Fatal::Usage)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Bind first: a port in use is reported before any probe is attached.
        let listener = server::bind(addr).await.map_err(|e| {
            Fatal::Usage(format!(
                "cannot listen on {addr} ({e}): pick another --web.listen-address"
            ))
        })?;

        let host = Arc::new(host::Host::new(&args.procfs, &args.sysfs));
        let mut registry = Registry::default();
        registry.register(Box::new(collectors::build_info::BuildInfo::new(&host)));
        collectors::register_proc(&mut registry, &cfg, &host);
        let running = if cfg.collectors.bpf {
            start_probes(&cfg, &host, &mut registry).await?
        } else {
            None
        };
        let registry = Arc::new(registry);
        // Everything that needed privileges is done: programs attached, tracefs and
        // /proc/timer_list read, the episode log opened.
        let kept = drop_capabilities(&cfg);
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        log::info!("serving {} on http://{local}", cfg.web.telemetry_path);
        let state = server::AppState {
            registry,
            episodes: running.as_ref().and_then(|r| r.tracker.clone()),
        };
        if let Some(n) = notify::Notifier::from_env() {
            let status = service_status(&local, running.as_ref(), &kept);
            // The listener is bound and answers as soon as `serve` below polls it.
            n.notify(&format!("READY=1\nSTATUS={status}"));
            if let Some(every) = notify::watchdog_interval() {
                log::info!("systemd watchdog: pinging every {every:?}");
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    // Held up (a busy machine, a stopped process), ping once and go
                    // on from there: a burst of late pings tells systemd nothing.
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        n.notify("WATCHDOG=1");
                    }
                });
            }
        }
        server::serve(listener, state, &cfg.web.telemetry_path, shutdown_signal())
            .await
            .context("serving HTTP")?;
        if let Some(n) = notify::Notifier::from_env() {
            n.notify("STOPPING=1");
        }
        if let Some(r) = running {
            let n = r
                .attached
                .outcomes
                .iter()
                .filter(|o| o.chosen.is_some())
                .count();
            drop(r.attached.ebpf);
            log::info!("detached {n} hooks; exiting");
        }
        Ok(())
    })
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

/// Probes attached and what reads them.
struct Running {
    attached: Attached,
    /// Fork episodes, when the fork hooks attached.
    tracker: Option<Arc<Mutex<episodes::Tracker>>>,
}

/// Loads and attaches the probes, registers their collectors, and starts the fork
/// episode tasks. Without eBPF (a runtime failure) it says so and returns None: the
/// /proc collectors still serve.
async fn start_probes(
    cfg: &Config,
    host: &Arc<host::Host>,
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
        .filter_map(|o| o.chosen.map(|m| (o.hook.name, m)))
        .collect();
    let cow = if matches!(hooks.get("do_wp_page"), Some(Mode::Fentry | Mode::Kprobe))
        && hooks.contains_key("cow_copy")
    {
        episodes::CowSource::Copies
    } else {
        episodes::CowSource::WriteProtectFaults
    };
    let forks = hooks.contains_key("fork_syscalls") && hooks.contains_key("process_exit");
    let mut tracker = None;
    match collectors::bpf::Bpf::new(
        &mut a.ebpf,
        hooks,
        cfg.tables.process_top_n,
        cfg.tables.process_max_entries,
    ) {
        Ok(c) => {
            if forks {
                match start_episodes(&mut a.ebpf, cfg, host, cow, c.rows()) {
                    Ok(t) => {
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
    host: &Arc<host::Host>,
    cow: episodes::CowSource,
    rows: collectors::bpf::ProcRows,
) -> anyhow::Result<Arc<Mutex<episodes::Tracker>>> {
    use tokio::io::unix::AsyncFd;
    let ring = aya::maps::RingBuf::try_from(
        ebpf.take_map("EVENTS")
            .context("map EVENTS missing from the eBPF object")?,
    )?;
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
async fn shutdown_signal() {
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
    match aya_log::EbpfLogger::init(ebpf) {
        // SAFETY: the logger owns its ring buffer fd and keeps it open, unchanged, for as
        // long as the AsyncFd (which owns the logger) lives.
        Ok(logger) => {
            match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            {
                Ok(mut fd) => {
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
                Err(e) => log::warn!("eBPF log forwarding unavailable: {e}"),
            }
        }
        Err(e) => log::debug!("eBPF log forwarding unavailable: {e}"),
    }
}

fn probes_cmd(args: ProbesArgs) -> Result<(), Fatal> {
    let cfg = load_config(&RunArgs {
        config: args.config,
        probe_mode: args.probe_mode,
        ..Default::default()
    })?;
    init_logging(args.log_level);
    let host = host::Host::local();
    let attached = attach_probes(&cfg, &host, true)?;
    print!(
        "{}",
        render_probes(&attached.outcomes, host.kernel_release(), cfg.probes.mode)
    );
    Ok(())
}

/// The `memwatch probes` table.
fn render_probes(outcomes: &[HookOutcome], kernel: &str, mode: ProbeMode) -> String {
    use std::fmt::Write as _;
    let mut s = format!("memwatch probes: kernel {kernel}, --probe-mode={mode}\n");
    for o in outcomes {
        let picked = o.chosen.map_or("none".to_string(), |m| m.to_string());
        let _ = writeln!(s, "\n{}/{}: run uses {picked}", o.hook.family, o.hook.name);
        for rung in Mode::ALL {
            let Some(def) = o.hook.rungs.iter().find(|r| r.mode == rung) else {
                let _ = writeln!(s, "  {:<11} -   no such rung for this hook", rung.as_str());
                continue;
            };
            let a = o.attempts.iter().find(|a| a.mode == rung);
            let mark = if o.chosen == Some(rung) { "*" } else { " " };
            let status = match a {
                Some(a) if a.skipped => {
                    format!("skipped ({})", a.result.as_ref().err().map_or("", |e| e))
                }
                Some(Attempt { result: Ok(p), .. }) if def.loses.is_empty() => {
                    format!("ok{}", on_functions(p))
                }
                Some(Attempt { result: Ok(p), .. }) => {
                    format!("ok{}, but loses: {}", on_functions(p), def.loses)
                }
                Some(Attempt { result: Err(e), .. }) => format!("no: {e}"),
                None => "not tried".to_string(),
            };
            let _ = writeln!(s, "  {:<11} {mark}  {status}", rung.as_str());
            let _ = writeln!(s, "  {:<11}    needs: {}", "", def.needs);
        }
    }
    s.push_str("\n* = the rung `memwatch run` uses\n");
    s
}

/// GET `path` from an `http://host:port` base URL; the body on 200.
fn http_get(base: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let hostport = base
        .strip_prefix("http://")
        .unwrap_or(base)
        .trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    if !head.contains(" 200 ") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_string(),
        ));
    }
    Ok(body.to_string())
}

fn print_episode(e: &episodes::Episode, json: bool) {
    if json {
        println!("{}", serde_json::to_string(e).unwrap_or_default());
    } else {
        println!("{}", episodes::report::render(e));
    }
}

fn fork_report(args: ForkReportArgs) -> Result<(), Fatal> {
    let mut query = Vec::new();
    if let Some(c) = &args.comm {
        query.push(format!("comm={c}"));
    }
    if let Some(p) = args.pid {
        query.push(format!("pid={p}"));
    }
    let path = format!("/api/episodes?{}", query.join("&"));
    let filter = server::EpisodeFilter {
        comm: args.comm.clone(),
        pid: args.pid,
    };
    match http_get(&args.url, &path) {
        Ok(body) => {
            let resp: server::EpisodesResponse = serde_json::from_str(&body)
                .with_context(|| format!("{} did not answer like memwatch", args.url))?;
            if !resp.tracking {
                return Err(Fatal::Runtime(anyhow::anyhow!(
                    "the daemon at {} tracks no fork episodes (its fork hooks did not attach; \
                     see `memwatch probes`)",
                    args.url
                )));
            }
            let mut seen = 0;
            for e in &resp.finished {
                print_episode(e, args.json);
                seen = seen.max(e.id);
            }
            if !args.follow {
                for e in &resp.active {
                    print_episode(e, args.json);
                }
                if resp.finished.is_empty() && resp.active.is_empty() && !args.json {
                    println!("no fork episodes yet (watched: see episodes.watch_comms)");
                }
                return Ok(());
            }
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let body = http_get(&args.url, &path).context("polling the daemon")?;
                let resp: server::EpisodesResponse =
                    serde_json::from_str(&body).context("parsing the daemon's answer")?;
                let last = seen;
                for e in resp.finished.iter().filter(|e| e.id > last) {
                    print_episode(e, args.json);
                    seen = e.id;
                }
            }
        }
        Err(e) => {
            eprintln!(
                "memwatch: no daemon at {} ({e}); attaching probes of my own, waiting for {}",
                args.url,
                if args.follow {
                    "episodes (Ctrl-C to stop)"
                } else {
                    "the next episode"
                }
            );
            let mut cfg = match &args.config {
                Some(p) => Config::load(p).map_err(|e| Fatal::Usage(e.to_string()))?,
                None => Config::default(),
            };
            // The report goes to stdout; the episode log would repeat it.
            cfg.episodes.log = "none".into();
            if let Some(c) = &args.comm {
                if !cfg.episodes.watch_comms.contains(c) {
                    cfg.episodes.watch_comms.push(c.clone());
                }
            }
            if let Some(p) = args.pid {
                cfg.episodes.watch_pids.push(p);
            }
            init_logging(LogLevel::Warn);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async move {
                let mut registry = Registry::default();
                let host = Arc::new(host::Host::local());
                let running = start_probes(&cfg, &host, &mut registry)
                    .await?
                    .ok_or_else(|| {
                        Fatal::Runtime(anyhow::anyhow!("no eBPF: cannot track forks"))
                    })?;
                let tracker = running.tracker.clone().ok_or_else(|| {
                    Fatal::Runtime(anyhow::anyhow!(
                        "the fork hooks did not attach (see `memwatch probes`)"
                    ))
                })?;
                let mut seen = 0;
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
                let mut stop = Box::pin(shutdown_signal());
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = &mut stop => return Ok(()),
                    }
                    let new: Vec<episodes::Episode> = tracker
                        .lock()
                        .expect("tracker lock")
                        .finished
                        .iter()
                        .filter(|e| e.id > seen && filter.keeps(e))
                        .cloned()
                        .collect();
                    for e in new {
                        seen = e.id;
                        print_episode(&e, args.json);
                        if !args.follow {
                            return Ok(());
                        }
                    }
                }
            })
        }
    }
}

fn config_cmd(args: ConfigArgs) -> Result<(), Fatal> {
    if let Some(path) = args.check {
        Config::load(&path).map_err(|e| Fatal::Usage(e.to_string()))?;
        println!("{}: ok", path.display());
        return Ok(());
    }
    if args.print_default {
        print!("{}", config::DEFAULT_TOML);
        return Ok(());
    }
    Err(Fatal::Usage(
        "nothing to do: use `memwatch config --print-default` or `--check FILE`".into(),
    ))
}
