//! The configuration file (TOML). Every key has a built-in default; unknown keys are an
//! error that names the key. `memwatch config --print-default` prints `DEFAULT_TOML`.

use std::{fmt, net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

/// The built-in configuration, with comments. A unit test keeps it equal to
/// `Config::default()`.
pub const DEFAULT_TOML: &str = r#"# memwatch configuration. Every key is optional; these are the built-in defaults.

[web]
# Where /metrics and /healthz are served. ":9847" means every address, port 9847.
listen_address = ":9847"
# Path of the Prometheus endpoint: a clean path of its own (not /, /healthz or under
# /api/; letters, digits and -._~!$&'()+,;=@ only, ':' not at a segment's start).
telemetry_path = "/metrics"
# TLS, basic auth and response headers, in the web config format of Prometheus's
# exporter-toolkit (a YAML file; relative paths in it are relative to it). "": plain
# HTTP, no auth. SIGHUP re-reads it (and the files it names) for new connections.
config_file = ""
# From accepting a connection (or, on a kept-alive one, from a request's first byte)
# to the end of the request's headers, TLS handshake included; then it is closed.
header_read_timeout = "10s"
# How long a kept-alive connection may wait for its next request.
idle_timeout = "60s"
# Connections open at once. A new one beyond it replaces the connection that has
# waited longest without a request in flight (a stalled or idle one); when every one
# has a request in flight, the new connection is closed.
max_connections = 64
# Scrapes in flight, running or waiting for the one render that concurrent scrapes
# share; beyond it the answer is 503. 0: no limit (node_exporter's --web.max-requests).
max_requests = 40

[log]
# error, warn, info, debug or trace. RUST_LOG, when set, takes precedence.
level = "info"

[probes]
# Which rung of the probe ladder to use: "auto" (the best that loads and attaches),
# or force "fentry", "kprobe" or "tracepoint" for every hook that has that rung.
mode = "auto"
# Which hooks to attach, by hook or family name (see `memwatch probes`), e.g.
# ["cow", "page_fault"]. Empty: all of them.
hooks = []

[tables]
# Rows per in-kernel per-process table (LRU: the least recently active process is
# evicted when full, and evictions are counted).
process_max_entries = 10240
# Processes exported with their own pid/comm labels; the rest are summed in the
# aggregate row (pid="other", comm="(other processes)").
process_top_n = 50
# memwatch's own tables of things the host's users control, each with a cap; the
# evictions are counted in memwatch_table_evictions_total{table}.
# Per-cgroup totals (table "cgroups"): the cgroup that grew least recently is evicted
# (its counts then live on in cgroup="other"; should it grow again it starts over).
cgroup_max_entries = 1024
# Running fork episodes (table "episodes_active"): when full, a new fork evicts the
# oldest running episode of the parent with the most running episodes.
episode_active_max_entries = 256
# Finished episodes kept for /api/episodes and fork-report (table
# "episodes_finished"): the oldest is evicted.
episode_finished_max_entries = 256
# Watched command names with episode metrics (table "episode_comms"): the name whose
# last episode ended least recently is evicted, with its series.
episode_comm_max_entries = 64

[episodes]
# Forks of these processes become fork episodes (fork to child exit): by comm pattern
# ("*" matches any run of characters, anything else itself: "redis-*", "*sql*"; the
# same patterns as [processes] comm), by pid, or by cgroup path (a process is in it
# when a line of its /proc/PID/cgroup is that path or below it, as in [processes]).
watch_comms = ["redis-server"]
watch_pids = []
watch_cgroups = []
# Where each finished episode is written as one JSON line: "stdout", "none" or a path.
log = "stdout"
# The kernel filters forks by pid and by exact, prefix*, *suffix, prefix*suffix or "*"
# comm patterns; other patterns, or any watch_cgroups, stream every process fork and
# its child's exit for the agent to filter. Size of the fork/exit event ring buffer
# (a power of two, at least a page); events that find it full are counted in
# memwatch_events_lost_total.
ring_buffer_bytes = 262144

[collectors]
# /proc/meminfo, every field.
meminfo = true
# /proc/vmstat, every field (events as counters, current amounts as gauges).
vmstat = true
# /proc/zoneinfo: free pages, watermarks, protection and statistics per node and zone.
zoneinfo = true
# /proc/pressure/{memory,io} (PSI); absent where the kernel has no PSI.
pressure = true
# vm.dirty_*, swappiness, min_free_kbytes, watermark_scale_factor, overcommit_memory
# and the transparent huge page settings.
knobs = true
# smaps_rollup and fault counts of the processes chosen in [processes].
processes = true
# The eBPF programs' counters.
bpf = true
# How long each collector may take during a scrape (they run one after another, each
# on a thread of its own). One that overruns is left out of that scrape
# (memwatch_scrape_collector_success 0, counted in
# memwatch_scrape_collector_timeouts_total) and is not started again until its stuck
# read returns; the other collectors are served.
timeout_seconds = 5.0

[processes]
# Processes whose /proc/PID/smaps_rollup and fault counts are exported, labelled pid
# and comm. A process is watched when its comm (the kernel's 15-character name)
# matches one of these patterns ("*" matches any run of characters, including none;
# every other character matches itself)...
comm = ["redis-server", "redis-rdb-*", "redis-aof-*"]
# ...or its pid is listed...
pids = []
# ...or it is in one of these cgroups or below them (paths as in /proc/PID/cgroup,
# e.g. "/system.slice/redis.service").
cgroups = []
# At most this many processes (lowest pids first) are exported; the rest are counted
# in memwatch_watched_processes_over_limit.
max_processes = 64
"#;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub web: Web,
    pub log: Log,
    pub probes: Probes,
    pub tables: Tables,
    pub episodes: Episodes,
    pub collectors: Collectors,
    pub processes: Processes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    pub listen_address: String,
    pub telemetry_path: String,
    /// The exporter-toolkit web config file; empty: none.
    pub config_file: String,
    /// A duration such as "10s" or "500ms" (see `Web::header_read_timeout`).
    pub header_read_timeout: String,
    pub idle_timeout: String,
    pub max_connections: usize,
    /// 0: no limit.
    pub max_requests: usize,
}

impl Default for Web {
    fn default() -> Self {
        Self {
            listen_address: ":9847".into(),
            telemetry_path: "/metrics".into(),
            config_file: String::new(),
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            max_connections: 64,
            max_requests: 40,
        }
    }
}

impl Web {
    /// `header_read_timeout` as a duration (checked by `validate`).
    pub fn header_read_timeout(&self) -> Result<Duration, String> {
        parse_duration("web.header_read_timeout", &self.header_read_timeout)
    }

    /// `idle_timeout` as a duration (checked by `validate`).
    pub fn idle_timeout(&self) -> Result<Duration, String> {
        parse_duration("web.idle_timeout", &self.idle_timeout)
    }

    fn validate(&self) -> Result<(), String> {
        parse_listen_address(&self.listen_address)?;
        check_telemetry_path(&self.telemetry_path)?;
        self.header_read_timeout()?;
        self.idle_timeout()?;
        if self.max_connections == 0 {
            return Err("web.max_connections must be at least 1".into());
        }
        Ok(())
    }
}

/// A positive duration in humantime's syntax ("10s", "1m30s", "250ms"); `key` names
/// the setting in the error.
fn parse_duration(key: &str, s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{key} {s:?} must be more than 0")),
        Err(e) => Err(format!(
            "{key} {s:?} is not a duration ({e}): write it as, e.g., \"10s\" or \"500ms\""
        )),
    }
}

/// Paths the server answers besides the telemetry path: "/" (the landing page),
/// "/healthz", and everything under "/api/".
const RESERVED_PATHS: [&str; 2] = ["/", "/healthz"];

/// Checks that the telemetry path is a clean path the router can take as a route of
/// its own: it starts with '/', has no empty, "." or ".." segment and no trailing '/',
/// uses only letters, digits and `-._~!$&'()+,;=@:` (':' not at a segment's start:
/// route syntax), and is not "/", "/healthz", "/api" or under "/api/".
pub fn check_telemetry_path(p: &str) -> Result<(), String> {
    let fix = "use a path such as \"/metrics\"";
    if RESERVED_PATHS.contains(&p) || p == "/api" || p.starts_with("/api/") {
        return Err(format!(
            "web.telemetry_path {p:?} collides with a route memwatch serves itself (/, \
             /healthz, /api/...): {fix}"
        ));
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!(
            "web.telemetry_path {p:?} must start with '/': {fix}"
        ));
    };
    for seg in rest.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!(
                "web.telemetry_path {p:?} is not a clean path (an empty, \".\" or \"..\" \
                 segment, or a trailing '/'): {fix}"
            ));
        }
        if seg.starts_with(':') {
            return Err(format!(
                "web.telemetry_path {p:?}: a segment starting with ':' is route syntax: {fix}"
            ));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._~!$&'()+,;=@:".contains(*c)))
        {
            return Err(format!(
                "web.telemetry_path {p:?} has {c:?}, which a path here can't have (route \
                 syntax such as {{ }} *, or a character that needs escaping): {fix}"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: LogLevel,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Self::Error => log::LevelFilter::Error,
            Self::Warn => log::LevelFilter::Warn,
            Self::Info => log::LevelFilter::Info,
            Self::Debug => log::LevelFilter::Debug,
            Self::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Probes {
    pub mode: ProbeMode,
    /// Hooks or families to attach; empty: all.
    pub hooks: Vec<String>,
}

impl Probes {
    /// Whether a hook is selected by `hooks`.
    pub fn wants(&self, family: &str, hook: &str) -> bool {
        self.hooks.is_empty() || self.hooks.iter().any(|h| h == family || h == hook)
    }
}

/// Which rung of the probe ladder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    /// The best rung that loads and attaches, per hook.
    #[default]
    Auto,
    /// fentry/fexit (BTF trampolines) wherever a hook has them.
    Fentry,
    /// kprobe/kretprobe wherever a hook has them.
    Kprobe,
    /// Tracepoints only.
    Tracepoint,
}

impl fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tables {
    pub process_max_entries: u32,
    pub process_top_n: usize,
    pub cgroup_max_entries: usize,
    pub episode_active_max_entries: usize,
    pub episode_finished_max_entries: usize,
    pub episode_comm_max_entries: usize,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            process_max_entries: 10240,
            process_top_n: 50,
            cgroup_max_entries: 1024,
            episode_active_max_entries: 256,
            episode_finished_max_entries: 256,
            episode_comm_max_entries: 64,
        }
    }
}

/// The largest cap a userspace table takes: more is a typo, not a plan (each entry
/// costs memory and, for cgroups and comms, series).
const TABLE_CAP_MAX: usize = 1 << 20;

impl Tables {
    /// The caps of memwatch's own tables, by key.
    fn caps(&self) -> [(&'static str, usize); 4] {
        [
            ("cgroup_max_entries", self.cgroup_max_entries),
            (
                "episode_active_max_entries",
                self.episode_active_max_entries,
            ),
            (
                "episode_finished_max_entries",
                self.episode_finished_max_entries,
            ),
            ("episode_comm_max_entries", self.episode_comm_max_entries),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Episodes {
    pub watch_comms: Vec<String>,
    pub watch_pids: Vec<u32>,
    pub watch_cgroups: Vec<String>,
    pub log: String,
    /// Size of the fork/exit event ring buffer, bytes: a power of two, at least a page.
    pub ring_buffer_bytes: u32,
}

impl Default for Episodes {
    fn default() -> Self {
        Self {
            watch_comms: vec!["redis-server".into()],
            watch_pids: Vec::new(),
            watch_cgroups: Vec::new(),
            log: "stdout".into(),
            ring_buffer_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Collectors {
    pub meminfo: bool,
    pub vmstat: bool,
    pub zoneinfo: bool,
    pub pressure: bool,
    pub knobs: bool,
    pub processes: bool,
    pub bpf: bool,
    pub timeout_seconds: f64,
}

impl Default for Collectors {
    fn default() -> Self {
        Self {
            meminfo: true,
            vmstat: true,
            zoneinfo: true,
            pressure: true,
            knobs: true,
            processes: true,
            bpf: true,
            timeout_seconds: crate::collectors::DEFAULT_TIMEOUT.as_secs_f64(),
        }
    }
}

/// Which processes the `processes` collector watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Processes {
    /// comm patterns; `*` matches any run of characters.
    pub comm: Vec<String>,
    pub pids: Vec<u32>,
    /// cgroup paths as /proc/PID/cgroup prints them.
    pub cgroups: Vec<String>,
    pub max_processes: usize,
}

impl Default for Processes {
    fn default() -> Self {
        Self {
            comm: vec![
                "redis-server".into(),
                "redis-rdb-*".into(),
                "redis-aof-*".into(),
            ],
            pids: Vec::new(),
            cgroups: Vec::new(),
            max_processes: 64,
        }
    }
}

/// The kernel keeps 15 bytes of a process name (TASK_COMM_LEN - 1).
const COMM_MAX: usize = 15;

/// A configuration that can't be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks values that parse but can't work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.web.validate().map_err(ConfigError::Invalid)?;
        let t = self.collectors.timeout_seconds;
        if !(0.001..=600.0).contains(&t) {
            return Err(ConfigError::Invalid(format!(
                "collectors.timeout_seconds {t} must be between 0.001 and 600 (seconds); \
                 keep it below Prometheus's scrape_timeout"
            )));
        }
        if self.tables.process_max_entries == 0 {
            return Err(ConfigError::Invalid(
                "tables.process_max_entries must be at least 1".into(),
            ));
        }
        for (key, cap) in self.tables.caps() {
            if cap == 0 || cap > TABLE_CAP_MAX {
                return Err(ConfigError::Invalid(format!(
                    "tables.{key} = {cap}: a cap must be between 1 and {TABLE_CAP_MAX} \
                     (the default is {})",
                    Tables::default()
                        .caps()
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map_or(0, |(_, d)| *d)
                )));
            }
        }
        let ring = self.episodes.ring_buffer_bytes;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
        if !ring.is_power_of_two() || ring < page {
            return Err(ConfigError::Invalid(format!(
                "episodes.ring_buffer_bytes = {ring} must be a power of two of at least the \
                 page size ({page}), e.g. 262144"
            )));
        }
        if self.processes.max_processes == 0 {
            return Err(ConfigError::Invalid(
                "processes.max_processes must be at least 1 (turn the collector off with \
                 collectors.processes = false)"
                    .into(),
            ));
        }
        let p = &self.processes;
        if self.collectors.processes
            && p.comm.is_empty()
            && p.pids.is_empty()
            && p.cgroups.is_empty()
        {
            return Err(ConfigError::Invalid(
                "processes.comm, processes.pids and processes.cgroups are all empty: the \
                 processes collector would watch nothing; list what to watch or turn it off \
                 with collectors.processes = false"
                    .into(),
            ));
        }
        check_comms("processes.comm", &p.comm)?;
        check_comms("episodes.watch_comms", &self.episodes.watch_comms)?;
        check_cgroups("processes.cgroups", &p.cgroups)?;
        check_cgroups("episodes.watch_cgroups", &self.episodes.watch_cgroups)?;
        if p.pids.contains(&0) || self.episodes.watch_pids.contains(&0) {
            return Err(ConfigError::Invalid(
                "processes.pids and episodes.watch_pids take process ids, and 0 is none".into(),
            ));
        }
        if self.episodes.log.is_empty() {
            return Err(ConfigError::Invalid(
                "episodes.log is empty: say \"stdout\", \"none\" or a file path".into(),
            ));
        }
        Ok(())
    }
}

/// Comm patterns that can match: 1 to 15 bytes besides the `*`s.
fn check_comms(key: &str, patterns: &[String]) -> Result<(), ConfigError> {
    for p in patterns {
        if p.is_empty() || p.replace('*', "").len() > COMM_MAX || p.contains('\0') {
            return Err(ConfigError::Invalid(format!(
                "{key} pattern {p:?} can never match: a comm is 1 to {COMM_MAX} bytes without \
                 NUL (the kernel truncates longer names), e.g. \"redis-rdb-bgsav\""
            )));
        }
    }
    Ok(())
}

/// Cgroup paths as /proc/PID/cgroup prints them.
fn check_cgroups(key: &str, paths: &[String]) -> Result<(), ConfigError> {
    for c in paths {
        if !c.starts_with('/') || c.contains('\0') || c.contains('\n') {
            return Err(ConfigError::Invalid(format!(
                "{key} entry {c:?} must be a path starting with '/', as in /proc/PID/cgroup \
                 (e.g. \"/system.slice/redis.service\")"
            )));
        }
    }
    Ok(())
}

/// Parses a listen address the way Prometheus exporters do: ":9847" is every address.
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("[::]{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!("web.listen_address {s:?} is not HOST:PORT (e.g. \":9847\" or \"127.0.0.1:9847\")")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_the_default() {
        assert_eq!(
            Config::from_toml(DEFAULT_TOML, "default").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::from_toml("", "empty").unwrap(), Config::default());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let cfg = Config::from_toml(
            "[web]\nlisten_address = \"127.0.0.1:1234\"\n[probes]\nmode = \"tracepoint\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(cfg.web.listen_address, "127.0.0.1:1234");
        assert_eq!(cfg.web.telemetry_path, "/metrics");
        assert_eq!(cfg.probes.mode, ProbeMode::Tracepoint);
        assert_eq!(cfg.tables, Tables::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[web]\nlisten_adress = \":1\"\n", "x.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listen_adress"), "{msg}");
        assert!(msg.contains("x.toml"), "{msg}");
        let err = Config::from_toml("[nosuchsection]\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("nosuchsection"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        let err = Config::from_toml("[probes]\nmode = \"uprobe\"\n", "x").unwrap_err();
        assert!(err.to_string().contains("uprobe"), "{err}");
        let err = Config::from_toml("[web]\nlisten_address = \"nope\"\n", "x").unwrap_err();
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
        let ok = Config::from_toml("[probes]\nhooks = [\"cow\", \"page_fault\"]\n", "x").unwrap();
        assert!(ok.probes.wants("cow", "do_wp_page") && !ok.probes.wants("lru", "lru_activate"));
        let err = Config::from_toml("[tables]\nprocess_max_entries = 0\n", "x").unwrap_err();
        assert!(err.to_string().contains("process_max_entries"), "{err}");
        let err = Config::from_toml("[tables]\nprocess_top_n = -1\n", "x").unwrap_err();
        assert!(err.to_string().contains("process_top_n"), "{err}");
        for key in [
            "cgroup_max_entries",
            "episode_active_max_entries",
            "episode_finished_max_entries",
            "episode_comm_max_entries",
        ] {
            for bad in ["0", "2000000"] {
                let err = Config::from_toml(&format!("[tables]\n{key} = {bad}\n"), "x")
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key) && err.contains("between 1 and"), "{err}");
            }
            let err = Config::from_toml(&format!("[tables]\n{key} = -1\n"), "x").unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
            let ok = Config::from_toml(&format!("[tables]\n{key} = 3\n"), "x").unwrap();
            assert!(ok.tables.caps().contains(&(key, 3)), "{key}");
        }
        let err = Config::from_toml("[processes]\nmax_processes = 0\n", "x").unwrap_err();
        assert!(err.to_string().contains("max_processes"), "{err}");
        let err = Config::from_toml("[processes]\ncomm = [\"redis-server-sentinel\"]\n", "x")
            .unwrap_err();
        assert!(err.to_string().contains("can never match"), "{err}");
        let err = Config::from_toml("[processes]\ncgroups = [\"redis\"]\n", "x").unwrap_err();
        assert!(err.to_string().contains("cgroups"), "{err}");
        for (bad, named) in [
            ("[episodes]\nwatch_comms = [\"\"]\n", "episodes.watch_comms"),
            (
                "[episodes]\nwatch_cgroups = [\"redis\"]\n",
                "episodes.watch_cgroups",
            ),
            ("[episodes]\nwatch_pids = [0]\n", "watch_pids"),
            ("[episodes]\nlog = \"\"\n", "episodes.log"),
            ("[processes]\ncomm = []\n", "would watch nothing"),
            ("[collectors]\ntimeout_seconds = nan\n", "timeout_seconds"),
            ("[collectors]\ntimeout_seconds = 0.0\n", "timeout_seconds"),
        ] {
            let err = Config::from_toml(bad, "x").unwrap_err().to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
        Config::from_toml("[processes]\ncomm = []\npids = [1]\n", "x").unwrap();
        Config::from_toml(
            "[processes]\ncomm = []\n[collectors]\nprocesses = false\n",
            "x",
        )
        .unwrap();
        let err = Config::from_toml("[collectors]\nvmstats = true\n", "x").unwrap_err();
        assert!(err.to_string().contains("vmstats"), "{err}");
    }

    #[test]
    fn telemetry_paths() {
        for ok in [
            "/metrics",
            "/a/b",
            "/metrics.txt",
            "/x:y",
            "/api2",
            "/~u/m-1_2",
        ] {
            check_telemetry_path(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("/", "collides"),
            ("/healthz", "collides"),
            ("/api", "collides"),
            ("/api/episodes", "collides"),
            ("/api/x", "collides"),
            ("metrics", "start with '/'"),
            ("", "start with '/'"),
            ("//metrics", "clean"),
            ("/metrics/", "clean"),
            ("/a/../b", "clean"),
            ("/./m", "clean"),
            ("/{x}", "'{'"),
            ("/m}", "'}'"),
            ("/*rest", "'*'"),
            ("/a/*", "'*'"),
            ("/:id", "':'"),
            ("/m?x=1", "'?'"),
            ("/m#x", "'#'"),
            ("/m etrics", "' '"),
            ("/m%20", "'%'"),
            ("/m\n", "'\\n'"),
            ("/mé", "'é'"),
        ] {
            let e = check_telemetry_path(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let e = Config::from_toml("[web]\ntelemetry_path = \"/\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("telemetry_path"), "{e}");
    }

    #[test]
    fn web_limits() {
        let cfg = Config::default();
        assert_eq!(
            cfg.web.header_read_timeout().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(cfg.web.idle_timeout().unwrap(), Duration::from_secs(60));
        let cfg = Config::from_toml("[web]\nheader_read_timeout = \"250ms\"\n", "x").unwrap();
        assert_eq!(
            cfg.web.header_read_timeout().unwrap(),
            Duration::from_millis(250)
        );
        for (toml, key) in [
            ("header_read_timeout = \"10\"", "header_read_timeout"),
            ("header_read_timeout = \"0s\"", "more than 0"),
            ("idle_timeout = \"soon\"", "idle_timeout"),
            ("max_connections = 0", "max_connections"),
            ("max_requests = -1", "max_requests"),
            ("config_flie = \"x\"", "config_flie"),
        ] {
            let e = Config::from_toml(&format!("[web]\n{toml}\n"), "x").unwrap_err();
            assert!(e.to_string().contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_address(":9847").unwrap().port(), 9847);
        assert!(parse_listen_address(":9847").unwrap().ip().is_unspecified());
        assert_eq!(
            parse_listen_address("127.0.0.1:80").unwrap().to_string(),
            "127.0.0.1:80"
        );
        assert!(parse_listen_address("localhost").is_err());
    }
}
