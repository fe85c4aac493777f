//! The command line: the subcommands and their options, the config they load, and the
//! small commands (`probes`, `config`) that need no daemon.

use std::{path::PathBuf, sync::Arc};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{self, Config, LogLevel, ProbeMode},
    daemon::{self, init_logging, Fatal},
    host::Host,
    probes::{
        loader::{on_functions, Attempt},
        table::Mode,
        HookOutcome,
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
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run`, for a bare `memwatch`.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load and attach the probes and serve /metrics (the default).
    Run(RunArgs),
    /// Show, for each hook, which rungs (fentry, kprobe, tracepoint) work on this
    /// kernel, which one `run` would pick, and why the others can't be used.
    Probes(ProbesArgs),
    /// Configuration helpers.
    Config(ConfigArgs),
    /// Report fork episodes (fork to child exit) of watched processes, with a
    /// verdict: from the running daemon, or with probes of its own when none runs.
    ForkReport(crate::fork_report::ForkReportArgs),
}

#[derive(Args, Clone, Default)]
pub struct RunArgs {
    /// TOML config file (every key optional; see `memwatch config --print-default`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to serve on, e.g. ":9847" or "127.0.0.1:9847".
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub listen_address: Option<String>,
    /// Path of the metrics endpoint.
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,
    /// Web config file (exporter-toolkit format: TLS, basic auth, response headers).
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<String>,
    /// Scrapes in flight at once (running or sharing a render); beyond it, 503.
    /// 0: no limit.
    #[arg(long = "web.max-requests", value_name = "N")]
    pub max_requests: Option<usize>,
    /// Force a rung of the probe ladder.
    #[arg(long = "probe-mode", value_enum)]
    pub probe_mode: Option<ProbeMode>,
    /// Log level (RUST_LOG, when set, wins).
    #[arg(long = "log.level", value_enum)]
    pub log_level: Option<LogLevel>,
    /// Where procfs is mounted (e.g. the host's /proc seen from a container).
    #[arg(long = "path.procfs", value_name = "DIR", default_value = "/proc")]
    pub procfs: String,
    /// Where sysfs is mounted.
    #[arg(long = "path.sysfs", value_name = "DIR", default_value = "/sys")]
    pub sysfs: String,
}

#[derive(Args)]
pub struct ProbesArgs {
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
pub struct ConfigArgs {
    /// Print the built-in default configuration, with comments.
    #[arg(long)]
    print_default: bool,
    /// Check a config file and exit.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

/// The config file (or the defaults) with command-line overrides applied.
pub fn load_config(args: &RunArgs) -> Result<Config, Fatal> {
    let mut cfg = daemon::load_file(args.config.as_deref())?;
    if let Some(a) = &args.listen_address {
        cfg.web.listen_address = a.clone();
    }
    if let Some(p) = &args.telemetry_path {
        cfg.web.telemetry_path = p.clone();
    }
    if let Some(f) = &args.web_config_file {
        cfg.web.config_file = f.clone();
    }
    if let Some(n) = args.max_requests {
        cfg.web.max_requests = n;
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

/// `memwatch run`: the config with the command line's overrides, then the daemon.
pub fn run(args: RunArgs) -> Result<(), Fatal> {
    crate::lifecycle::catch_stop_signals()
        .map_err(|e| Fatal::Runtime(anyhow::anyhow!("installing signal handlers: {e}")))?;
    let cfg = load_config(&args)?;
    init_logging(cfg.log.level);
    let host = Arc::new(Host::new(&args.procfs, &args.sysfs));
    daemon::run(cfg, host, Box::new(move || load_config(&args)))
}

/// `memwatch probes`: walk every rung of every hook and print what works here.
pub fn probes_cmd(args: ProbesArgs) -> Result<(), Fatal> {
    let cfg = load_config(&RunArgs {
        config: args.config,
        probe_mode: args.probe_mode,
        ..Default::default()
    })?;
    init_logging(args.log_level);
    let host = Host::local();
    let attached = daemon::attach_probes(&cfg, &host, true)?;
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
        let _ = writeln!(
            s,
            "\n{}/{}: run uses {picked}",
            o.hook.family(),
            o.hook.name()
        );
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

/// `memwatch config`: print the defaults or check a file.
pub fn config_cmd(args: ConfigArgs) -> Result<(), Fatal> {
    if let Some(path) = args.check {
        let cfg = daemon::load_file(Some(&path))?;
        // The web config file it names too (TLS files, users, headers).
        crate::server::Web::new(&cfg.web).map_err(Fatal::Usage)?;
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
