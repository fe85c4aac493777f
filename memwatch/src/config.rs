//! The configuration file (TOML). Every key has a built-in default; unknown keys are an
//! error that names the key. `memwatch config --print-default` prints `DEFAULT_TOML`.

use std::{fmt, net::SocketAddr, path::Path};

use serde::{Deserialize, Serialize};

/// The built-in configuration, with comments. A unit test keeps it equal to
/// `Config::default()`.
pub const DEFAULT_TOML: &str = r#"# memwatch configuration. Every key is optional; these are the built-in defaults.

[web]
# Where /metrics and /healthz are served. ":9847" means every address, port 9847.
listen_address = ":9847"
# Path of the Prometheus endpoint.
telemetry_path = "/metrics"

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
# Processes exported with their own pid/comm labels; the rest are summed in "other".
process_top_n = 50

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
}

impl Default for Web {
    fn default() -> Self {
        Self {
            listen_address: ":9847".into(),
            telemetry_path: "/metrics".into(),
        }
    }
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
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            process_max_entries: 10240,
            process_top_n: 50,
        }
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
        parse_listen_address(&self.web.listen_address).map_err(ConfigError::Invalid)?;
        if !self.web.telemetry_path.starts_with('/') || self.web.telemetry_path == "/healthz" {
            return Err(ConfigError::Invalid(format!(
                "web.telemetry_path {:?} must start with '/' and must not be /healthz",
                self.web.telemetry_path
            )));
        }
        if self.tables.process_max_entries == 0 {
            return Err(ConfigError::Invalid(
                "tables.process_max_entries must be at least 1".into(),
            ));
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
        for p in &self.processes.comm {
            if p.is_empty() || p.replace('*', "").len() > COMM_MAX {
                return Err(ConfigError::Invalid(format!(
                    "processes.comm pattern {p:?} can never match: a comm is 1 to {COMM_MAX} \
                     bytes (the kernel truncates longer names), e.g. \"redis-rdb-bgsav\""
                )));
            }
        }
        for c in &self.processes.cgroups {
            if !c.starts_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "processes.cgroups entry {c:?} must be a path starting with '/', as in \
                     /proc/PID/cgroup"
                )));
            }
        }
        Ok(())
    }
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
        let err = Config::from_toml("[processes]\nmax_processes = 0\n", "x").unwrap_err();
        assert!(err.to_string().contains("max_processes"), "{err}");
        let err = Config::from_toml("[processes]\ncomm = [\"redis-server-sentinel\"]\n", "x")
            .unwrap_err();
        assert!(err.to_string().contains("can never match"), "{err}");
        let err = Config::from_toml("[processes]\ncgroups = [\"redis\"]\n", "x").unwrap_err();
        assert!(err.to_string().contains("cgroups"), "{err}");
        let err = Config::from_toml("[collectors]\nvmstats = true\n", "x").unwrap_err();
        assert!(err.to_string().contains("vmstats"), "{err}");
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
