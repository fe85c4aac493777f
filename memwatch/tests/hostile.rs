//! Local users are hostile: they name their processes what they like (`prctl
//! PR_SET_NAME` takes any 1..15 bytes but NUL), fork as often as they like and make
//! cgroups. Processes named like memwatch's aggregate row or with characters the text
//! format must escape go through a real Prometheus scrape without a parse error or a
//! duplicate sample; a storm of watched-name children and of cgroups leaves every table
//! at or below its cap, with every eviction counted.

mod common;

use parking_lot::Mutex;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use common::{
    eventually, http_status, root_or_skip,
    workload::{read_byte, write_byte, Ctl, Workload},
    Agent, Metrics, TempFile,
};

/// The names the hostile processes give themselves, as raw bytes, and the `comm`
/// label memwatch must show for each (invalid UTF-8 becomes U+FFFD, per invalid
/// sequence; docs/METRICS.md).
const HOSTILE: &[(&[u8], &str)] = &[
    (b"other", "other"),
    (b"a\"b", "a\"b"),
    (b"back\\slash", "back\\slash"),
    (b"new\nline", "new\nline"),
    (b"{brace}", "{brace}"),
    (b"bad\xff\xfename", "bad\u{fffd}\u{fffd}name"),
];

/// The aggregate row's comm.
const OTHER_COMM: &str = "(other processes)";

/// Forks each hostile process makes (each shows in the per-comm fork histogram).
const FORKS: u64 = 3;

/// Which of `HOSTILE` the next spawned workload takes (read by the forked child, which
/// has a copy of the memory as it was at the fork).
static NAME: Mutex<usize> = Mutex::new(0);
static NAME_AT_FORK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets the name `HOSTILE[i]` with PR_SET_NAME (raw bytes, NUL-terminated).
fn set_name(raw: &[u8]) -> bool {
    let mut buf = [0u8; 16];
    let n = raw.len().min(15);
    buf[..n].copy_from_slice(&raw[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) == 0 }
}

/// Forks and reaps `n` children that exit at once.
fn fork_and_reap(n: u64) -> bool {
    for _ in 0..n {
        // SAFETY: the child only exits.
        let child = unsafe { libc::fork() };
        if child < 0 {
            return false;
        }
        if child == 0 {
            // SAFETY: leaving the forked child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(child, &mut status, 0) };
    }
    true
}

/// Takes its hostile name, forks FORKS times, touches 64 pages, reports 'R'.
fn hostile_body(ctl: &Ctl) -> i32 {
    let i = NAME_AT_FORK.load(std::sync::atomic::Ordering::Relaxed);
    let Some((raw, _)) = HOSTILE.get(i) else {
        return 20;
    };
    if !set_name(raw) {
        return 21;
    }
    if !fork_and_reap(FORKS) {
        return 22;
    }
    if common::workload::map_populated(64).is_none() {
        return 23;
    }
    ctl.report(b'R');
    0
}

/// Spawns the workload `body` with `NAME_AT_FORK` = `i`.
fn spawn_named(i: usize, body: fn(&Ctl) -> i32) -> Workload {
    let _g = NAME.lock();
    NAME_AT_FORK.store(i, std::sync::atomic::Ordering::Relaxed);
    Workload::spawn(body)
}

/// Every series of a scrape once: Prometheus drops empty label values, so series that
/// differ only in one are the same.
fn assert_no_duplicate_series(m: &Metrics) {
    let mut seen = BTreeSet::new();
    for (name, labels, _) in &m.samples {
        let labels: BTreeMap<&str, &str> = labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(
            seen.insert((name.clone(), format!("{labels:?}"))),
            "series twice in one scrape: {name}{labels:?}"
        );
    }
}

/// `promtool check metrics` on a scrape: nothing to say. False when there is no
/// promtool.
fn promtool_clean(text: &str) -> bool {
    let Some(promtool) = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("note: no promtool; `promtool check metrics` not run");
        return false;
    };
    let (clean, report) = common::promtool_check_metrics(Path::new(promtool), text);
    assert!(clean, "promtool check metrics: {report}");
    true
}

/// Debian's Prometheus scraping memwatch every second on loopback.
struct Prometheus(common::PrometheusServer);

impl Prometheus {
    fn start(bin: &Path, target: u16) -> Self {
        let dir =
            std::env::temp_dir().join(format!("memwatch-test-hostile-prom-{}", std::process::id()));
        Self(common::PrometheusServer::start(
            bin,
            dir,
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: memwatch\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target}']\n"
            ),
        ))
    }

    fn log(&self) -> String {
        self.0.log()
    }

    /// GET an API path: its `data`.
    fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_status(self.0.port, path).expect("prometheus answers");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert!(
            status == 200 && v["status"] == "success",
            "{path}: HTTP {status}: {body}"
        );
        v["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        self.api(&format!("/api/v1/query?query={}", common::urlencode(expr)))["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Prometheus's own metrics.
    fn own_metrics(&self) -> Metrics {
        let (_, body) = http_status(self.0.port, "/metrics").expect("prometheus /metrics");
        Metrics::parse(&body)
    }
}

/// The probe mode the agents here run on: the test's (`MEMWATCH_TEST_PROBE_MODE`), or
/// tracepoints (all this host allows).
fn mode_args() -> Vec<&'static str> {
    if common::probe_mode().is_some() {
        vec![]
    } else {
        vec!["--probe-mode=tracepoint"]
    }
}

/// Processes named `other`, `a"b`, `back\slash`, `new<LF>line`, `{brace}` and with
/// invalid UTF-8 fork and fault; a real Prometheus scrapes memwatch. The target is up
/// with no scrape error, none of Prometheus's sample-rejection counters moves (a
/// duplicate series shows in `..._sample_duplicate_timestamp_total`), each name comes
/// back through the query API exactly as expected, with its exact fork count, and the
/// aggregate row is one series of its own. Every sample Prometheus scraped is stored as
/// a series of its own (Prometheus 2.42 drops a duplicate series silently: this is how
/// it shows). Fails before the aggregate's comm changed: the process named `other`
/// duplicated `memwatch_fork_duration_seconds{comm="other"}` (30 samples of the scrape
/// were not stored).
#[test]
fn hostile_names_survive_a_real_prometheus_scrape() {
    let test = "hostile_names_survive_a_real_prometheus_scrape";
    if !root_or_skip(test) {
        return;
    }
    let prom_bin = Path::new("/usr/bin/prometheus");
    if !prom_bin.exists() {
        println!("SKIP {test}: no /usr/bin/prometheus; install Debian's `prometheus` package");
        return;
    }
    let cfg = TempFile::new(
        "hostile.toml",
        "[tables]\nprocess_top_n = 100000\n[episodes]\nlog = \"none\"\n",
    );
    let mut args = vec!["--config", cfg.0.to_str().unwrap()];
    args.extend(mode_args());
    let agent = Agent::start(&args);
    let workloads: Vec<Workload> = (0..HOSTILE.len())
        .map(|i| spawn_named(i, hostile_body))
        .collect();
    for w in &workloads {
        w.expect(b'R');
    }
    // memwatch shows each: its row (live name) and its command's fork histogram.
    let m = eventually(120, || {
        let m = agent.scrape();
        let all = workloads.iter().zip(HOSTILE).all(|(w, (_, comm))| {
            let pid = w.pid.to_string();
            m.get(
                "memwatch_process_forks_total",
                &[("pid", &pid), ("kind", "fork")],
            ) == Some(FORKS as f64)
                && m.get("memwatch_fork_duration_seconds_count", &[("comm", comm)])
                    == Some(FORKS as f64)
        });
        all.then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "the hostile processes never showed:\n{}",
            agent.scrape().text
        )
    });
    for (w, (_, comm)) in workloads.iter().zip(HOSTILE) {
        let pid = w.pid.to_string();
        let rows = m.family("memwatch_process_forks_total");
        let row = rows
            .iter()
            .find(|s| {
                s.1.get("pid") == Some(&pid) && s.1.get("kind").map(String::as_str) == Some("fork")
            })
            .unwrap();
        assert_eq!(
            row.1.get("comm").map(String::as_str),
            Some(*comm),
            "pid {pid}"
        );
    }

    let prom = Prometheus::start(prom_bin, agent.port);
    // Three scrapes in, to see rejections that only a second sample shows.
    let scrapes = "count_over_time(up{job=\"memwatch\"}[1h])";
    let got = eventually(180, || {
        let r = prom.query(scrapes);
        let n: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
        (n >= 3.0).then_some(())
    });
    assert!(
        got.is_some(),
        "Prometheus never scraped memwatch 3 times:\n{}",
        prom.log()
    );

    let targets = prom.api("/api/v1/targets");
    let active = targets["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["health"], "up", "{targets}");
    assert_eq!(active[0]["lastError"], "", "{targets}");
    let up = prom.query("min_over_time(up{job=\"memwatch\"}[1h])");
    assert_eq!(
        up.first().map(|r| r["value"][1].clone()),
        Some("1".into()),
        "{up:?}"
    );

    let own = prom.own_metrics();
    let rejections: Vec<_> = own
        .samples
        .iter()
        .filter(|(n, _, _)| n.starts_with("prometheus_target_scrapes_"))
        .collect();
    assert!(
        rejections
            .iter()
            .any(|(n, _, _)| n == "prometheus_target_scrapes_sample_duplicate_timestamp_total"),
        "Prometheus has no duplicate-sample counter: {rejections:?}"
    );
    for (name, labels, v) in &rejections {
        println!("{name}{labels:?} {v}");
        assert_eq!(*v, 0.0, "{name}{labels:?}: Prometheus rejected samples");
    }

    // Prometheus 2.42 drops a second sample of a series in one scrape without counting
    // it anywhere (measured: a target exporting `x_total{comm="other"}` twice moves
    // none of the counters above). What shows it is the target's own figures: the
    // samples it scraped against the series it stored from that scrape, both read at
    // one instant (a series gone from the latest scrape has a staleness marker).
    let lost = prom.query(
        "scrape_samples_scraped{job=\"memwatch\"} - on (instance, job) \
         count by (instance, job) ({job=\"memwatch\", __name__!~\"up|scrape_.+\"})",
    );
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(
        lost[0]["value"][1], "0",
        "samples of the last scrape that Prometheus did not store as a series of their own \
         (a series twice in the scrape): {lost:?}"
    );

    // Each name back through the API exactly: one fork-histogram series per hostile
    // comm (and one aggregate), each with the workload's fork count.
    let series = prom.api(&format!(
        "/api/v1/series?match[]={}",
        common::urlencode("memwatch_fork_duration_seconds_count{job=\"memwatch\"}")
    ));
    let mut comms: BTreeMap<String, usize> = BTreeMap::new();
    for s in series.as_array().cloned().unwrap_or_default() {
        *comms
            .entry(s["comm"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    for (_, comm) in HOSTILE {
        assert_eq!(comms.get(*comm), Some(&1), "{comm:?} in {comms:?}");
    }
    assert_eq!(comms.get(OTHER_COMM), Some(&1), "{comms:?}");
    let counts = prom.query("memwatch_fork_duration_seconds_count{job=\"memwatch\"}");
    for (_, comm) in HOSTILE {
        let v: Vec<_> = counts
            .iter()
            .filter(|r| r["metric"]["comm"] == *comm)
            .map(|r| r["value"][1].clone())
            .collect();
        assert_eq!(v, [serde_json::Value::from(FORKS.to_string())], "{comm:?}");
    }
    // And each process's own rows, under its pid, with its name.
    for (w, (_, comm)) in workloads.iter().zip(HOSTILE) {
        let r = prom.query(&format!(
            "memwatch_process_forks_total{{job=\"memwatch\",pid=\"{}\",kind=\"fork\"}}",
            w.pid
        ));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["metric"]["comm"], *comm, "{r:?}");
        assert_eq!(r[0]["value"][1], FORKS.to_string(), "{r:?}");
    }
    // The scrape itself, checked here (after Prometheus had its say).
    assert_no_duplicate_series(&m);
    let promtool = promtool_clean(&m.text);
    println!(
        "{test}: {} hostile names through Prometheus, no rejected sample{}",
        HOSTILE.len(),
        if promtool { ", promtool clean" } else { "" }
    );
    drop(prom);
    for w in workloads {
        w.wait_done();
        w.finish();
    }
    assert!(agent.stop().success());
}

/// Children in the storm (fork episodes of one watched parent).
const STORM: usize = 600;
/// Children forked between checks (well within the ring buffer).
const BATCH: usize = 50;
/// Cgroups in the cgroup storm.
const CGROUPS: usize = 40;
/// Comms with finished episodes.
const COMMS: usize = 10;

/// The caps the storm test sets.
const CAP_CGROUPS: u64 = 16;
const CAP_ACTIVE: u64 = 8;
const CAP_FINISHED: u64 = 4;
const CAP_COMMS: u64 = 3;
const TOP_N: usize = 5;
const MAX_PROCESSES: u64 = 5;

/// The storm's cgroup.procs files, set before the cgroup workload is spawned.
static CGROUP_PROCS: OnceLock<Vec<CString>> = OnceLock::new();

/// One name per finished episode: mwstorm-c0..9, each forking one child that exits.
fn comms_body(_ctl: &Ctl) -> i32 {
    for i in 0..COMMS as u8 {
        let name = [
            b'm',
            b'w',
            b's',
            b't',
            b'o',
            b'r',
            b'm',
            b'-',
            b'c',
            b'0' + i,
        ];
        if !set_name(&name) || !fork_and_reap(1) {
            return 30;
        }
    }
    0
}

/// Named mwstorm-s: on each 'B', forks BATCH children that wait (on a pipe) and reports
/// 'F'; on 'Q' releases and reaps them all and reports 'E'.
fn storm_body(ctl: &Ctl) -> i32 {
    if !set_name(b"mwstorm-s") {
        return 40;
    }
    let (hold_r, hold_w) = common::workload::pipe();
    loop {
        match ctl.wait() {
            b'B' => {
                for _ in 0..BATCH {
                    // SAFETY: the child only waits for EOF and exits.
                    let child = unsafe { libc::fork() };
                    if child < 0 {
                        return 41;
                    }
                    if child == 0 {
                        // SAFETY: closing our copy of the write end, then waiting.
                        unsafe { libc::close(hold_w) };
                        read_byte(hold_r);
                        // SAFETY: leaving the forked child.
                        unsafe { libc::_exit(0) };
                    }
                }
                ctl.report(b'F');
            }
            b'Q' => break,
            _ => return 42,
        }
    }
    // SAFETY: releasing the children (EOF) and reaping them.
    unsafe {
        libc::close(hold_w);
        let mut status = 0;
        while libc::waitpid(-1, &mut status, 0) > 0 {}
    }
    ctl.report(b'E');
    0
}

/// Named mwcg: forks one child per storm cgroup, which joins it, touches 16 pages and
/// waits; reports 'C' once all have; on 'Q' releases and reaps them.
fn cgroups_body(ctl: &Ctl) -> i32 {
    if !set_name(b"mwcg") {
        return 50;
    }
    let Some(procs) = CGROUP_PROCS.get() else {
        return 51;
    };
    let (hold_r, hold_w) = common::workload::pipe();
    let (ready_r, ready_w) = common::workload::pipe();
    for p in procs {
        // SAFETY: the child joins a cgroup, faults pages of its own and waits.
        let child = unsafe { libc::fork() };
        if child < 0 {
            return 52;
        }
        if child == 0 {
            // SAFETY: raw syscalls on our own fds and a path from before the fork.
            unsafe {
                libc::close(hold_w);
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(1);
                }
                libc::close(fd);
                if common::workload::map_populated(16).is_none() {
                    libc::_exit(2);
                }
                write_byte(ready_w, b'j');
                read_byte(hold_r);
                libc::_exit(0);
            }
        }
    }
    for _ in procs {
        if read_byte(ready_r) != b'j' {
            return 53;
        }
    }
    ctl.report(b'C');
    if ctl.wait() != b'Q' {
        return 54;
    }
    // SAFETY: releasing the children (EOF) and reaping them.
    unsafe {
        libc::close(hold_w);
        let mut status = 0;
        while libc::waitpid(-1, &mut status, 0) > 0 {}
    }
    0
}

/// A parent cgroup with CGROUPS children in the memory hierarchy, removed (children
/// first) on drop.
struct StormCgroups {
    parent: PathBuf,
    children: Vec<PathBuf>,
}

impl StormCgroups {
    fn create() -> Option<Self> {
        let root = Path::new("/sys/fs/cgroup/memory");
        let root = if root.join("cgroup.procs").exists() {
            root.to_path_buf()
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let parent = root.join(format!("memwatch-test-storm-{}", std::process::id()));
        std::fs::create_dir(&parent).ok()?;
        let mut cg = Self {
            parent,
            children: Vec::new(),
        };
        for i in 0..CGROUPS {
            let dir = cg.parent.join(format!("g{i:02}"));
            std::fs::create_dir(&dir).ok()?;
            cg.children.push(dir);
        }
        Some(cg)
    }
}

impl Drop for StormCgroups {
    fn drop(&mut self) {
        for c in &self.children {
            let _ = std::fs::remove_dir(c);
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// (entries, capacity, evictions) of a table.
fn table(m: &Metrics, name: &str) -> (u64, u64, u64) {
    let get = |family| {
        m.get(family, &[("table", name)])
            .unwrap_or_else(|| panic!("no {family}{{table={name:?}}}")) as u64
    };
    (
        get("memwatch_table_entries"),
        get("memwatch_table_max_entries"),
        get("memwatch_table_evictions_total"),
    )
}

/// Waits until `cond` holds of a scrape; that scrape.
fn scrape_until(agent: &Agent, what: &str, cond: impl Fn(&Metrics) -> bool) -> Metrics {
    eventually(180, || {
        let m = agent.scrape();
        cond(&m).then_some(m)
    })
    .unwrap_or_else(|| panic!("{what}; last scrape:\n{}", agent.scrape().text))
}

/// Distinct values of `label` over every family that has it.
fn distinct(m: &Metrics, family_prefix: &str, label: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, labels, _) in &m.samples {
        if let (true, Some(v)) = (name.starts_with(family_prefix), labels.get(label)) {
            out.entry(name.clone()).or_default().insert(v.clone());
        }
    }
    out
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A watched-name storm: ten command names each end an episode, one parent named like
/// a watched process forks 600 children that stay, and 40 processes each in a cgroup
/// of their own fault pages. Every table stays at its cap, the evictions are exactly
/// created − cap where the test made everything the table holds (episodes, comms),
/// at least that for cgroups (the host's own are in the table too), and no family
/// grows past its top N. Fails before the caps: there was no table but `procs`.
#[test]
fn a_watched_name_storm_stays_within_the_caps() {
    let test = "a_watched_name_storm_stays_within_the_caps";
    if !root_or_skip(test) {
        return;
    }
    let Some(cgroups) = StormCgroups::create() else {
        println!("SKIP {test}: cannot make cgroups under the memory hierarchy");
        return;
    };
    CGROUP_PROCS.get_or_init(|| {
        cgroups
            .children
            .iter()
            .map(|c| CString::new(c.join("cgroup.procs").to_str().unwrap()).unwrap())
            .collect()
    });
    let cfg = TempFile::new(
        "storm.toml",
        &format!(
            "[tables]\nprocess_max_entries = 4096\nprocess_top_n = {TOP_N}\n\
             cgroup_max_entries = {CAP_CGROUPS}\n\
             episode_active_max_entries = {CAP_ACTIVE}\n\
             episode_finished_max_entries = {CAP_FINISHED}\n\
             episode_comm_max_entries = {CAP_COMMS}\n\
             [episodes]\nwatch_comms = [\"mwstorm*\"]\nlog = \"none\"\n\
             [processes]\ncomm = [\"mwstorm*\"]\nmax_processes = {MAX_PROCESSES}\n"
        ),
    );
    let mut args = vec!["--config", cfg.0.to_str().unwrap()];
    args.extend(mode_args());
    let agent = Agent::start(&args);
    let rss0 = vm_rss_kib(agent.pid());

    // Ten comms, each with one finished episode, one after the other.
    let m = agent.scrape();
    assert_eq!(table(&m, "episodes_finished"), (0, CAP_FINISHED, 0));
    assert_eq!(table(&m, "episode_comms"), (0, CAP_COMMS, 0));
    let w = Workload::spawn(comms_body);
    w.wait_done();
    let m = scrape_until(&agent, "the ten episodes never all ended", |m| {
        let (e, _, x) = table(m, "episodes_finished");
        e + x == COMMS as u64
    });
    w.finish();
    assert_eq!(
        table(&m, "episodes_finished"),
        (CAP_FINISHED, CAP_FINISHED, COMMS as u64 - CAP_FINISHED)
    );
    assert_eq!(
        table(&m, "episode_comms"),
        (CAP_COMMS, CAP_COMMS, COMMS as u64 - CAP_COMMS)
    );
    let comms: BTreeSet<&str> = m
        .family("memwatch_fork_episodes_total")
        .iter()
        .filter_map(|s| s.1.get("comm").map(String::as_str))
        .collect();
    assert_eq!(
        comms,
        BTreeSet::from(["mwstorm-c7", "mwstorm-c8", "mwstorm-c9"])
    );

    // The fork storm, in batches: every fork is an episode, the running ones stay at
    // the cap.
    let storm = Workload::spawn(storm_body);
    let mut forked = 0u64;
    let mut m = agent.scrape();
    assert_eq!(table(&m, "episodes_active"), (0, CAP_ACTIVE, 0));
    while forked < STORM as u64 {
        storm.send(b'B');
        storm.expect(b'F');
        forked += BATCH as u64;
        m = scrape_until(&agent, &format!("memwatch never saw {forked} forks"), |m| {
            let (e, _, x) = table(m, "episodes_active");
            e + x >= forked
        });
        let (e, cap, _) = table(&m, "episodes_active");
        assert!(e <= cap, "{e} running episodes, cap {cap}");
    }
    assert_eq!(
        table(&m, "episodes_active"),
        (CAP_ACTIVE, CAP_ACTIVE, STORM as u64 - CAP_ACTIVE)
    );
    let active = m.family("memwatch_fork_episode_active_cow_bytes");
    assert_eq!(active.len() as u64, CAP_ACTIVE);
    // The watched set: the parent and its children match; five are exported.
    let m = scrape_until(&agent, "the watched set never counted the storm", |m| {
        m.get("memwatch_watched_processes_over_limit", &[])
            == Some((STORM as u64 + 1 - MAX_PROCESSES) as f64)
    });
    assert_eq!(
        m.get("memwatch_watched_processes", &[]),
        Some(MAX_PROCESSES as f64)
    );

    // The cgroup storm: 40 processes, each in its own cgroup, alive at one scrape.
    let before = table(&m, "cgroups");
    let cg = Workload::spawn(cgroups_body);
    cg.expect(b'C');
    let m = agent.scrape();
    let after = table(&m, "cgroups");
    println!("cgroups: before {before:?}, after {after:?}");
    assert_eq!(after.0, CAP_CGROUPS);
    assert!(
        after.2 - before.2 >= before.0 + CGROUPS as u64 - CAP_CGROUPS,
        "evictions {} for {} cgroups made and {} there before, cap {CAP_CGROUPS}",
        after.2 - before.2,
        CGROUPS,
        before.0
    );
    let (e, cap, _) = table(&m, "pids");
    assert!(e <= cap, "pids {e} > {cap}");
    // No family grows past its top N (plus the aggregate), or the watched set.
    for (family, pids) in distinct(&m, "memwatch_process_", "pid") {
        assert!(pids.len() <= TOP_N + 1, "{family}: {} pids", pids.len());
    }
    for (family, cgs) in distinct(&m, "memwatch_cgroup_", "cgroup") {
        assert!(cgs.len() <= TOP_N + 1, "{family}: {} cgroups", cgs.len());
    }
    assert_no_duplicate_series(&m);
    let rss1 = vm_rss_kib(agent.pid());
    println!(
        "{test}: memwatch VmRSS {rss0} KiB at start, {rss1} KiB with {STORM} watched \
         children and {CGROUPS} cgroups; {} series",
        m.samples.len()
    );

    // Release everything: the running episodes end, the finished table stays capped.
    cg.send(b'Q');
    cg.wait_done();
    cg.finish();
    storm.send(b'Q');
    storm.expect(b'E');
    storm.wait_done();
    storm.finish();
    let m = scrape_until(&agent, "the running episodes never ended", |m| {
        table(m, "episodes_active").0 == 0
    });
    assert_eq!(table(&m, "episodes_finished").0, CAP_FINISHED);
    assert!(table(&m, "episode_comms").0 <= CAP_COMMS);
    assert!(agent.stop().success());
    drop(cgroups);
}
