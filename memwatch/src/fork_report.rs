//! `memwatch fork-report`: fork episodes from the running daemon's `/api/episodes`,
//! or, when no daemon answers, from probes of its own.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use clap::Args;

use crate::{
    collectors::Registry,
    config::LogLevel,
    daemon::{self, init_logging, Fatal},
    episodes, server,
};

/// The options of `memwatch fork-report`.
#[derive(Args)]
pub struct ForkReportArgs {
    /// Only episodes of processes with this command name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only episodes of this parent pid.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Keep printing episodes as they finish.
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per episode (the daemon's log format) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The daemon to ask.
    #[arg(long, default_value = "http://127.0.0.1:9847")]
    pub url: String,
    /// Config for probes of its own (watch list) when no daemon answers.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn fork_report(args: ForkReportArgs) -> Result<(), Fatal> {
    let mut query = Vec::new();
    if let Some(c) = &args.comm {
        query.push(format!("comm={c}"));
    }
    if let Some(p) = args.pid {
        query.push(format!("pid={p}"));
    }
    let base = args.url.trim_end_matches('/');
    let scheme = if base.contains("://") { "" } else { "http://" };
    let url = format!("{scheme}{base}/api/episodes?{}", query.join("&"));
    match get(&url) {
        Ok(body) => {
            let resp = serde_json::from_str(&body)
                .with_context(|| format!("{} did not answer like memwatch", args.url))?;
            from_daemon(&args, &url, resp)
        }
        // Something answered, but not with episodes: say what, instead of attaching
        // probes beside a daemon that runs.
        Err(e) if !nobody_listens(&e) => Err(Fatal::Runtime(anyhow::anyhow!(
            "the daemon at {} answered, but not with episodes: {e}{}",
            args.url,
            match e {
                ureq::Error::StatusCode(401) =>
                    " (its web config asks for credentials: fork-report sends none; use \
                     curl -u USER https://HOST:9847/api/episodes)",
                ureq::Error::StatusCode(_) => "",
                _ =>
                    " (fork-report speaks plain HTTP; against a TLS port use curl --cacert \
                       CA https://HOST:9847/api/episodes)",
            }
        ))),
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
            with_own_probes(&args)
        }
    }
}

/// Whether a request failed because no daemon is there (nothing listens, no such host)
/// rather than because one answered with something else.
fn nobody_listens(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound
    )
}

/// The body of a GET that answered 200.
fn get(url: &str) -> Result<String, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent.get(url).call()?.body_mut().read_to_string()
}

fn print_episode(e: &episodes::Episode, json: bool) {
    if json {
        println!("{}", serde_json::to_string(e).unwrap_or_default());
    } else {
        println!("{}", episodes::report::render(e));
    }
}

/// Prints what the daemon answered; with `--follow`, polls for episodes that finish.
fn from_daemon(
    args: &ForkReportArgs,
    url: &str,
    resp: server::EpisodesResponse,
) -> Result<(), Fatal> {
    if !resp.tracking {
        return Err(Fatal::Runtime(anyhow::anyhow!(
            "the daemon at {} tracks no fork episodes (its fork hooks did not attach; see \
             `memwatch probes`)",
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
        std::thread::sleep(Duration::from_secs(1));
        let body = get(url).context("polling the daemon")?;
        let resp: server::EpisodesResponse =
            serde_json::from_str(&body).context("parsing the daemon's answer")?;
        let last = seen;
        for e in resp.finished.iter().filter(|e| e.id > last) {
            print_episode(e, args.json);
            seen = e.id;
        }
    }
}

/// Attaches probes of its own (the config's watch list plus `--comm`/`--pid`) and
/// prints episodes as they finish: the next one, or all with `--follow`.
fn with_own_probes(args: &ForkReportArgs) -> Result<(), Fatal> {
    let mut cfg = daemon::load_file(args.config.as_deref())?;
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
    let filter = server::EpisodeFilter {
        comm: args.comm.clone(),
        pid: args.pid,
    };
    init_logging(LogLevel::Warn);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut signals = crate::lifecycle::Signals::install()
            .map_err(|e| Fatal::Runtime(anyhow::anyhow!("installing signal handlers: {e}")))?;
        let mut registry = Registry::default();
        let host = std::sync::Arc::new(crate::host::Host::local());
        let health = crate::lifecycle::Health::default();
        let running = daemon::start_probes(&cfg, &host, &mut registry, &health)
            .await?
            .ok_or_else(|| Fatal::Runtime(anyhow::anyhow!("no eBPF: cannot track forks")))?;
        let tracker = running.tracker.clone().ok_or_else(|| {
            Fatal::Runtime(anyhow::anyhow!(
                "the fork hooks did not attach (see `memwatch probes`)"
            ))
        })?;
        let mut seen = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut stop = Box::pin(signals.stopped());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return Ok(()),
            }
            let new: Vec<episodes::Episode> = tracker
                .lock()
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
