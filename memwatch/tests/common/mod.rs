//! Helpers for the integration tests: start the real agent on a loopback port, scrape
//! it, parse the exposition format, and skip (with a printed reason) without root.
#![allow(dead_code)]

pub mod workload;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The memwatch binary: `MEMWATCH_BIN` when set (the VM harness copies binaries to
/// other paths), else the one cargo built for this test.
pub fn bin() -> String {
    std::env::var("MEMWATCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_memwatch").to_string())
}

/// The probe mode every agent a test starts is forced to (`MEMWATCH_TEST_PROBE_MODE`:
/// auto, fentry, kprobe, tracepoint), so one suite runs once per rung.
pub fn probe_mode() -> Option<String> {
    std::env::var("MEMWATCH_TEST_PROBE_MODE")
        .ok()
        .filter(|m| !m.is_empty())
}

/// True when running as root; otherwise prints why `test` is skipped.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        println!("SKIP {test}: needs root (loads eBPF programs); run the tests as root");
    }
    root
}

/// Runs a command, prints its stdout and returns it; fails the test (showing stderr)
/// if the command fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A free loopback port (the agent binds it right after; the race is harmless here).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary file removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// A new file, named after `name` and unique in this process (tests of one binary
    /// run in parallel threads and may ask for the same name).
    pub fn new(name: &str, contents: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("memwatch-test-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A memory cgroup (v1 memory hierarchy or v2 memory controller) with a memory limit,
/// removed on drop.
pub struct Memcg {
    pub dir: PathBuf,
    /// The path as /proc/PID/cgroup shows it.
    pub path: String,
}

impl Memcg {
    /// `memwatch-test-<tag>-<our pid>` limited to `limit` bytes; None where the kernel
    /// has no memory controller mounted where memwatch looks, or it can't be made.
    pub fn create(tag: &str, limit: u64) -> Option<Self> {
        let name = format!("memwatch-test-{tag}-{}", std::process::id());
        let (root, limit_file) =
            if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
                ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
            } else if std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
            {
                ("/sys/fs/cgroup", "memory.max")
            } else {
                return None;
            };
        let dir = PathBuf::from(root).join(&name);
        std::fs::create_dir(&dir).ok()?;
        let cg = Self {
            dir,
            path: format!("/{name}"),
        };
        std::fs::write(cg.dir.join(limit_file), limit.to_string()).ok()?;
        Some(cg)
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A running agent, stopped (SIGTERM, by PID) when dropped.
pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

impl Agent {
    /// Starts `memwatch run` on a free loopback port and waits until /healthz answers.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(&[], extra, &[], true)
    }

    /// Starts `memwatch run` on a free loopback port through `wrapper` (a command that
    /// execs the rest, e.g. setpriv; empty: none), with `env` added, and waits until
    /// /healthz answers when `wait` is set.
    pub fn start_with(
        wrapper: &[String],
        extra: &[&str],
        env: &[(&str, String)],
        wait: bool,
    ) -> Self {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("memwatch-test-{}-{port}.log", std::process::id()));
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin()),
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(bin());
                c
            }
        };
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.arg("run")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra);
        if let Some(mode) = probe_mode() {
            if !extra.iter().any(|a| a.starts_with("--probe-mode")) {
                cmd.arg(format!("--probe-mode={mode}"));
            }
        }
        // If the test process dies without dropping the agent (killed by a harness's
        // time limit), the agent goes too and detaches its programs.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn memwatch");
        let mut agent = Self {
            child: Some(child),
            port,
            log,
        };
        if !wait {
            return agent;
        }
        // Generous: attaching every hook takes seconds on a quiet machine under TCG.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(body) = http_get(port, "/healthz") {
                assert_eq!(body, "ok\n");
                break;
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("memwatch exited early ({status}):\n{}", agent.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "memwatch did not come up:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// The agent's pid (the wrapper's, which exec'd it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// None while running, else its exit status.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Scrapes /metrics.
    pub fn scrape(&self) -> Metrics {
        let body = http_get(self.port, "/metrics").expect("scrape /metrics");
        Metrics::parse(&body)
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.stop_inner().expect("agent already stopped")
    }

    fn stop_inner(&mut self) -> Option<ExitStatus> {
        terminate(&mut self.child.take()?)
    }
}

/// Stops a child we spawned: SIGTERM by its PID, then SIGKILL if it has not exited
/// within 120 s (detaching waits for RCU grace periods, slow on a busy TCG guest).
/// Its exit status.
pub fn terminate(child: &mut Child) -> Option<ExitStatus> {
    // SAFETY: signalling the PID of the child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(s) = child.try_wait().ok().flatten() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_inner();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An HTTP client for loopback servers (ureq, no connection reuse: every request is a
/// new connection, like a scraper without keep-alive). `status_as_error`: a non-2xx
/// answer is an error.
pub fn http_client(status_as_error: bool) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .max_idle_connections(0)
        .http_status_as_error(status_as_error)
        .build()
        .into()
}

/// GET `path` on loopback `port`; the body on 200.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut resp = http_client(true)
        .get(&url)
        .call()
        .map_err(std::io::Error::other)?;
    if resp.status() != 200 {
        return Err(std::io::Error::other(format!("status: {}", resp.status())));
    }
    resp.body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_string()
        .map_err(std::io::Error::other)
}

/// GET `path` on loopback `port`: (status, body), any status.
pub fn http_status(port: u16, path: &str) -> Option<(u16, String)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut resp = http_client(false).get(&url).call().ok()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// Samples of one scrape: (name, labels) -> value.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => (name.to_string(), parse_labels(rest.trim_end_matches('}'))),
            };
            samples.push((name, labels, value));
        }
        Self {
            samples,
            text: text.to_string(),
        }
    }

    /// The value of the sample with this name and these labels (a subset match).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    }

    /// The HELP text of each family, by name.
    pub fn helps(&self) -> BTreeMap<String, String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect()
    }

    /// The family whose HELP text starts with `prefix`, e.g. the one that says
    /// "/proc/meminfo field MemTotal,": memwatch names each kernel field in its help.
    pub fn name_by_help(&self, prefix: &str) -> Option<String> {
        self.helps()
            .into_iter()
            .find(|(_, h)| h.starts_with(prefix))
            .map(|(n, _)| n)
    }

    /// All samples of a family.
    pub fn family(&self, name: &str) -> Vec<&(String, BTreeMap<String, String>, f64)> {
        self.samples.iter().filter(|s| s.0 == name).collect()
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// /proc/vmstat as field -> value.
pub fn read_vmstat() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

impl Metrics {
    /// Sum of every sample of a family whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .sum()
    }
}

/// /proc/meminfo as (field, value in bytes or count).
pub fn read_meminfo() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut w = v.split_whitespace();
            let n: u64 = w.next()?.parse().ok()?;
            Some((
                k.to_string(),
                if w.next() == Some("kB") { n * 1024 } else { n },
            ))
        })
        .collect()
}

/// /proc/vmstat with every CPU's pending deltas folded into the totals first (writing
/// /proc/sys/vm/stat_refresh, root only): node and zone counters such as `nr_dirtied`
/// and `nr_written` otherwise lag the events by up to the per-CPU threshold on each
/// CPU (event counters such as `pgactivate` are summed over the CPUs on every read).
pub fn vmstat_now() -> BTreeMap<String, u64> {
    let _ = std::fs::write("/proc/sys/vm/stat_refresh", "1");
    read_vmstat()
}

/// A scrape with the kernel's counters read just before and just after it. Between two
/// of these, memwatch's interval (scrape to scrape) contains the kernel's inner one
/// (after the first to before the second) and lies within its outer one (before the
/// first to after the second), whatever else the machine does meanwhile.
pub struct Snapshot {
    pub m: Metrics,
    before: BTreeMap<String, u64>,
    after: BTreeMap<String, u64>,
}

impl Agent {
    /// A scrape bracketed by /proc/vmstat reads.
    pub fn snapshot(&self) -> Snapshot {
        let before = vmstat_now();
        let m = self.scrape();
        let after = vmstat_now();
        Snapshot { m, before, after }
    }
}

/// The kernel's change of the sum of `keys`: (inner, outer) between `s0` and `s1`.
pub fn kernel_delta(s0: &Snapshot, s1: &Snapshot, keys: &[&str]) -> (f64, f64) {
    let sum = |v: &BTreeMap<String, u64>| -> f64 {
        keys.iter()
            .map(|k| v.get(*k).copied().unwrap_or(0) as f64)
            .sum()
    };
    (
        sum(&s1.before) - sum(&s0.after),
        sum(&s1.after) - sum(&s0.before),
    )
}

/// Whether the kernel has every counter of `keys` (older kernels lack some).
pub fn kernel_has(s: &Snapshot, keys: &[&str]) -> bool {
    keys.iter().all(|k| s.before.contains_key(*k))
}

/// Asserts that memwatch's change `got` over an interval lies within the kernel's
/// (inner, outer) change over the same interval, give or take `slack`: events counted
/// by memwatch and by the kernel at slightly different points of the same code path
/// (say, at a page's submission and at its completion).
pub fn assert_within(what: &str, got: f64, (inner, outer): (f64, f64), slack: f64) {
    println!("{what}: memwatch {got}, kernel {inner}..{outer} (slack {slack})");
    assert!(
        got >= inner - slack && got <= outer + slack,
        "{what}: memwatch {got}, outside the kernel's {inner}..{outer} over the same \
         interval (slack {slack})"
    );
}

/// A tracefs instance of the test's own with some events enabled (each with a filter),
/// removed on drop: the kernel's own record of what happened, independent of memwatch.
pub struct Trace {
    dir: PathBuf,
    events: Vec<String>,
}

impl Trace {
    /// `events`: ("category/event", filter or ""). None where tracefs has no
    /// instances or an event is missing.
    pub fn new(name: &str, events: &[(&str, &str)]) -> Option<Self> {
        let root = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("instances").is_dir())?;
        let dir = root
            .join("instances")
            .join(format!("memwatch-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let mut t = Self {
            dir,
            events: Vec::new(),
        };
        for (event, filter) in events {
            let e = t.dir.join("events").join(event);
            if !filter.is_empty() {
                std::fs::write(e.join("filter"), filter).ok()?;
            }
            std::fs::write(e.join("enable"), "1").ok()?;
            t.events.push(event.to_string());
        }
        Some(t)
    }

    /// The lines recorded so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(self.dir.join("trace")).unwrap_or_default()
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        for e in &self.events {
            let _ = std::fs::write(self.dir.join("events").join(e).join("enable"), "0");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The value of `key=` in a trace line (`... key=123 ...`).
pub fn trace_field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// How a value memwatch exported is checked against the kernel's own file read just
/// before and just after the scrape (one round).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Equal to both reads: a value that only stays still or moves by the kernel's own
    /// work (reclaim, migration) on a process that does nothing.
    Exact,
    /// Between the two reads, whichever is lower: a gauge that stood still or moved one
    /// way while the scrape read it.
    Between,
    /// From the first read up to the second: a count that grows.
    Rising,
}

/// One value memwatch exported in a round, and the kernel's reads around the scrape.
#[derive(Clone, Debug)]
pub struct Reading {
    pub bound: Bound,
    pub value: f64,
    pub before: f64,
    pub after: f64,
}

impl Reading {
    pub fn new(bound: Bound, value: f64, before: f64, after: f64) -> Self {
        Self {
            bound,
            value,
            before,
            after,
        }
    }

    /// Whether the value lies where its bound says, with no slack.
    pub fn holds(&self) -> bool {
        let (v, b, a) = (self.value, self.before, self.after);
        match self.bound {
            Bound::Exact => v == b && v == a,
            Bound::Between => b.min(a) <= v && v <= b.max(a),
            Bound::Rising => b <= v && v <= a,
        }
    }
}

/// Confirms values that move while a scrape reads them (gauges; counts the kernel
/// folds in from per-CPU parts): no single read of the kernel's file before and after
/// a scrape bounds such a value, since it can go down and up again in between, but a
/// round in which it stood still or moved one way does, with no slack. `round(n)` does
/// round `n` (read the file, scrape, read it again; the structural checks once, in
/// round 0) and returns every value's reading by name. Rounds go on, each checking the
/// values not yet confirmed, until each has held its bound once, or until 120 s and at
/// least 20 rounds have passed: a wrong field, unit or scale never holds, and the
/// failure names each such value with its last reading. Returns the reading that
/// confirmed each value.
pub fn confirm_in_rounds(
    what: &str,
    mut round: impl FnMut(usize) -> BTreeMap<String, Reading>,
) -> BTreeMap<String, Reading> {
    const DEADLINE: Duration = Duration::from_secs(120);
    const MIN_ROUNDS: usize = 20;
    let start = Instant::now();
    let mut confirmed: BTreeMap<String, Reading> = BTreeMap::new();
    let mut took: Vec<(String, usize)> = Vec::new();
    let mut pending: Option<Vec<String>> = None;
    let mut last: BTreeMap<String, Reading> = BTreeMap::new();
    let mut n = 0;
    loop {
        let readings = round(n);
        let pending = pending.get_or_insert_with(|| readings.keys().cloned().collect());
        pending.retain(|key| {
            let r = readings
                .get(key)
                .unwrap_or_else(|| panic!("{what}: {key} is missing in round {n}"));
            if r.holds() {
                if n > 0 {
                    took.push((key.clone(), n + 1));
                }
                confirmed.insert(key.clone(), r.clone());
                false
            } else {
                last.insert(key.clone(), r.clone());
                true
            }
        });
        n += 1;
        if pending.is_empty() {
            break;
        }
        if n >= MIN_ROUNDS && start.elapsed() > DEADLINE {
            let never: Vec<String> = pending
                .iter()
                .map(|k| {
                    let r = &last[k];
                    format!(
                        "{k} = {} ({:?}: the kernel said {} then {})",
                        r.value, r.bound, r.before, r.after
                    )
                })
                .collect();
            panic!(
                "{what}: {} of {} values never held their bound in {n} rounds ({:.1?}); \
                 the last reading of each:\n{}",
                never.len(),
                confirmed.len() + never.len(),
                start.elapsed(),
                never.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "{what}: {} values confirmed in {n} round(s) ({:.1?}); those that took more \
         than one (value, rounds): {took:?}",
        confirmed.len(),
        start.elapsed()
    );
    confirmed
}

/// Waits for `f` to give a value, trying every 100 ms for up to `secs` (a deadline
/// that only something stuck misses); None after that.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The timestamp (seconds) of a trace line: `comm-pid [cpu] flags 1234.567890: event: ...`.
pub fn trace_ts(line: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_suffix(':')?.parse().ok())
}

/// A trace instance of process `pid`'s clone entries and forks; None without tracefs.
/// Its probes are registered after the agent's on the same tracepoints, so on the
/// clone entry they run after memwatch's clock read; sched_process_fork fires inside
/// the syscall, before its return. So the traced fork lies within memwatch's fork
/// latency.
pub fn fork_trace(name: &str, pid: u32) -> Option<Trace> {
    let filter = format!("common_pid == {pid}");
    Trace::new(
        name,
        &[
            ("syscalls/sys_enter_clone", &filter),
            ("syscalls/sys_enter_clone3", &filter),
            ("sched/sched_process_fork", &filter),
        ],
    )
}

/// Seconds from the clone entry to the sched_process_fork of `child_pid` (None: the
/// last fork traced) in `trace`.
pub fn traced_fork(trace: &Trace, child_pid: Option<u32>) -> f64 {
    let text = trace.text();
    let lines: Vec<&str> = text.lines().collect();
    let k = lines
        .iter()
        .rposition(|l| {
            l.contains("sched_process_fork:")
                && child_pid.is_none_or(|c| trace_field(l, "child_pid") == Some(c as u64))
        })
        .unwrap_or_else(|| panic!("no sched_process_fork of {child_pid:?} traced:\n{text}"));
    let enter = lines[..k]
        .iter()
        .rev()
        .find(|l| l.contains("sys_clone"))
        .unwrap_or_else(|| panic!("no clone entry before the fork of {child_pid:?}:\n{text}"));
    trace_ts(lines[k]).unwrap() - trace_ts(enter).unwrap()
}

/// `promtool check metrics` on an exposition: (whether it passed with nothing to say,
/// what it said).
pub fn promtool_check_metrics(promtool: &std::path::Path, text: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && report.trim().is_empty(), report)
}

/// Debian's Prometheus (`bin`) on a free loopback port with `config` as its
/// prometheus.yml and a temporary TSDB in `dir` (made afresh); ready when returned.
/// Stopped by PID and `dir` removed on drop.
pub struct PrometheusServer {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl PrometheusServer {
    pub fn start(bin: &std::path::Path, dir: PathBuf, config: &str) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("spawn prometheus");
        let mut p = Self { child, port, dir };
        let ready = eventually(120, || {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            (http_status(p.port, "/-/ready")?.0 == 200).then_some(())
        });
        assert!(ready.is_some(), "prometheus not ready:\n{}", p.log());
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = terminate(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter (every byte but the unreserved ones).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
