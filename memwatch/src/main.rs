//! memwatch: where a Linux host's memory work goes, for Prometheus.

mod btf;
mod collectors;
mod config;
mod metrics;
mod privileges;
mod probes;
mod server;
mod tracefs;

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::{
    collectors::Registry,
    config::{Config, LogLevel, ProbeMode},
    probes::{loader::Attempt, table::Mode, HookOutcome, KernelSupport},
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

/// The kernel release, e.g. `6.1.0-26-amd64`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Everything the probes produced: the object (programs stay attached while it lives)
/// and what each hook ended up on.
struct Attached {
    ebpf: aya::Ebpf,
    outcomes: Vec<HookOutcome>,
}

/// Privilege check, tracefs, object load, ladder walk.
fn attach_probes(cfg: &Config, explore: bool) -> Result<Attached, Fatal> {
    privileges::check().map_err(Fatal::Usage)?;
    privileges::raise_memlock();
    let support = KernelSupport::probe();
    if let Err(e) = &support.tracefs {
        log::error!("{e}");
    }
    let mut ebpf = probes::load_object(&support, cfg)?;
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

        let mut registry = Registry::default();
        registry.register(Box::new(collectors::build_info::BuildInfo::new()));
        if cfg.collectors.meminfo {
            registry.register(Box::new(collectors::meminfo::Meminfo::new("/proc")));
        }
        let mut attached = None;
        if cfg.collectors.bpf {
            match attach_probes(&cfg, false) {
                Ok(mut a) => {
                    forward_ebpf_logs(&mut a.ebpf);
                    let attached_hooks = a
                        .outcomes
                        .iter()
                        .filter_map(|o| o.chosen.map(|m| (o.hook.name, m)))
                        .collect();
                    match collectors::bpf::Bpf::new(
                        &mut a.ebpf,
                        attached_hooks,
                        cfg.tables.process_top_n,
                        cfg.tables.process_max_entries,
                    ) {
                        Ok(c) => registry.register(Box::new(c)),
                        Err(e) => log::error!("eBPF counters unavailable: {e:#}"),
                    }
                    registry.register(Box::new(collectors::probes::ProbeInfo::new(
                        a.outcomes.clone(),
                    )));
                    attached = Some(a);
                }
                Err(Fatal::Runtime(e)) => {
                    log::error!("{e:#}; serving /proc metrics only");
                }
                Err(usage) => return Err(usage),
            }
        }
        let registry = Arc::new(registry);
        log::info!(
            "serving {} on http://{}",
            cfg.web.telemetry_path,
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        server::serve(
            listener,
            registry,
            &cfg.web.telemetry_path,
            shutdown_signal(),
        )
        .await
        .context("serving HTTP")?;
        if let Some(a) = attached {
            let n = a.outcomes.iter().filter(|o| o.chosen.is_some()).count();
            drop(a.ebpf);
            log::info!("detached {n} hooks; exiting");
        }
        Ok(())
    })
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
    let attached = attach_probes(&cfg, true)?;
    print!(
        "{}",
        render_probes(&attached.outcomes, &kernel_release(), cfg.probes.mode)
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
                Some(Attempt { result: Ok(()), .. }) if def.loses.is_empty() => "ok".to_string(),
                Some(Attempt { result: Ok(()), .. }) => format!("ok, but loses: {}", def.loses),
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
