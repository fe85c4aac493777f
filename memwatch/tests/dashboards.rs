//! The Prometheus, Grafana and Kubernetes files under deploy/ and grafana/:
//! - the dashboards' structure (no privileges needed);
//! - `promtool check rules` and `promtool test rules` (when promtool is installed);
//! - the Kubernetes manifests with kubernetes-validate (installed by `cargo xtask setup`);
//! - the real thing (root): Debian's Prometheus scrapes a running memwatch every 3 s
//!   while COW, dirty-page and reclaim workloads run, then every panel query and every
//!   rule expression is evaluated through Prometheus's HTTP API. Panels the running
//!   probe rung can't feed are listed with the reason.
//!
//! The dashboards and rules are compiled in, so the structural checks also run in the
//! VMs; the tools are not there, and those tests skip with the reason.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use common::{
    http_get, http_status as get, root_or_skip,
    workload::{map_populated, pipe, read_byte, Ctl, Workload},
    Agent, Memcg, TempFile,
};
use serde_json::Value;

const DASHBOARDS: &[(&str, &str)] = &[
    (
        "memwatch-host.json",
        include_str!("../../grafana/dashboards/memwatch-host.json"),
    ),
    (
        "memwatch-redis-fork.json",
        include_str!("../../grafana/dashboards/memwatch-redis-fork.json"),
    ),
];
const RULES: &str = include_str!("../../deploy/prometheus/memwatch.rules.yml");
const ALERTS: &str = include_str!("../../deploy/prometheus/memwatch.alerts.yml");
const ALERTS_DOC: &str = include_str!("../../docs/ALERTS.md");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels array") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn is_datasource_var(ds: &Value) -> bool {
    ds["uid"] == "${datasource}" || ds == "${datasource}"
}

#[test]
fn dashboards_are_well_formed() {
    for (name, text) in DASHBOARDS {
        let d: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: invalid JSON: {e}"));
        let schema = check_header(name, &d);
        check_variables(name, &d);
        let all = panels(&d);
        let mut ids = BTreeSet::new();
        let mut boxes: Vec<(&str, u64, u64, u64, u64)> = Vec::new();
        for p in &all {
            let title = p["title"].as_str().unwrap_or("?");
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: {title}: no id"));
            assert!(ids.insert(id), "{name}: panel id {id} ({title}) twice");
            check_grid_pos(name, title, p, &mut boxes);
            if p["type"] == "row" {
                continue;
            }
            check_queries(name, title, p);
        }
        println!("{name}: {} panels, schemaVersion {schema}", all.len());
    }
}

/// Checks dashboard `d`'s schemaVersion (30 or later, returned), uid and title.
fn check_header(name: &str, d: &Value) -> u64 {
    let schema = d["schemaVersion"].as_u64();
    assert!(
        schema.is_some_and(|v| v >= 30),
        "{name}: schemaVersion {schema:?}"
    );
    assert!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{name}: no uid"
    );
    assert!(d["title"].as_str().is_some(), "{name}: no title");
    schema.unwrap()
}

/// Variables: datasource, instance, comm, cgroup; the query ones use ${datasource}.
fn check_variables(name: &str, d: &Value) {
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    for want in ["datasource", "instance", "comm", "cgroup"] {
        assert!(vars.contains_key(want), "{name}: no ${want} variable");
    }
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    for (v, def) in &vars {
        if def["type"] == "query" {
            assert!(
                is_datasource_var(&def["datasource"]),
                "{name}: variable {v} does not use ${{datasource}}"
            );
        }
    }
}

/// Checks that panel `p`'s gridPos is complete, not empty, within the 24 columns and
/// clear of the panels in `boxes` (the earlier ones); then adds it to `boxes`.
fn check_grid_pos<'a>(
    name: &str,
    title: &'a str,
    p: &Value,
    boxes: &mut Vec<(&'a str, u64, u64, u64, u64)>,
) {
    let g = &p["gridPos"];
    let at = |k: &str| {
        g[k].as_u64()
            .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
    };
    let (x, y, w, h) = (at("x"), at("y"), at("w"), at("h"));
    assert!(w >= 1 && h >= 1, "{name}: {title}: empty gridPos");
    assert!(x + w <= 24, "{name}: {title}: x {x} + w {w} > 24 columns");
    for (other, ox, oy, ow, oh) in boxes.iter() {
        let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
        assert!(!overlap, "{name}: {title} overlaps {other}");
    }
    boxes.push((title, x, y, w, h));
}

/// Checks that (non-row) panel `p` and each of its queries use ${datasource}, and that
/// it has queries, none empty, with distinct refIds.
fn check_queries(name: &str, title: &str, p: &Value) {
    assert!(
        is_datasource_var(&p["datasource"]),
        "{name}: {title}: datasource is not ${{datasource}}"
    );
    let targets = p["targets"].as_array().expect("targets");
    assert!(!targets.is_empty(), "{name}: {title}: no query");
    let mut refs = BTreeSet::new();
    for t in targets {
        assert!(
            is_datasource_var(&t["datasource"]),
            "{name}: {title}: a query's datasource is not ${{datasource}}"
        );
        assert!(
            t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
            "{name}: {title}: empty expr"
        );
        assert!(
            refs.insert(t["refId"].as_str().unwrap_or("")),
            "{name}: {title}: refId twice"
        );
    }
}

/// The rule and alert expressions (one per `expr:` line), with their rule's name.
fn rule_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for text in [RULES, ALERTS] {
        let mut name = String::new();
        for line in text.lines() {
            let l = line.trim_start().trim_start_matches("- ");
            if let Some(n) = l
                .strip_prefix("alert: ")
                .or_else(|| l.strip_prefix("record: "))
            {
                name = n.trim().to_string();
            } else if let Some(e) = l.strip_prefix("expr: ") {
                let e = e.trim();
                assert!(
                    !e.starts_with('|') && !e.starts_with('>'),
                    "{name}: keep the expr on one line (this test reads it line by line)"
                );
                out.push((name.clone(), e.to_string()));
            }
        }
    }
    let rules = RULES.matches("- record: ").count() + ALERTS.matches("- alert: ").count();
    assert_eq!(out.len(), rules, "one expr per rule");
    out
}

#[test]
fn every_alert_has_annotations_and_a_runbook_section() {
    let blocks: Vec<&str> = ALERTS.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 10, "{} alerts", blocks.len());
    for b in blocks {
        let name = b.lines().next().unwrap().trim();
        for key in ["summary:", "description:", "runbook_url:"] {
            assert!(b.contains(key), "{name}: no {key}");
        }
        let anchor = format!("ALERTS.md#{}", name.to_lowercase());
        assert!(b.contains(&anchor), "{name}: runbook_url is not {anchor}");
        assert!(
            ALERTS_DOC.contains(&format!("\n## {name}\n")),
            "{name}: no section in docs/ALERTS.md"
        );
        assert!(
            deploy_test_mentions(name),
            "{name}: not in deploy/prometheus/tests"
        );
    }
}

fn deploy_test_mentions(alert: &str) -> bool {
    include_str!("../../deploy/prometheus/tests/memwatch_alerts_test.yml")
        .contains(&format!("alertname: {alert}\n"))
}

/// The first of `candidates` that exists, or a skip line naming `what`.
fn tool(test: &str, what: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    if found.is_none() {
        println!(
            "SKIP {test}: {what} not found (looked at {candidates:?}): not installed on this system (the QEMU test VMs have none); on a development host `cargo xtask setup` installs it"
        );
    }
    found
}

fn run_checked(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    let test = "promtool_checks_and_tests_the_rules";
    let Some(promtool) = tool(test, "promtool", &[PathBuf::from("/usr/bin/promtool")]) else {
        return;
    };
    let dir = repo().join("deploy/prometheus");
    if !dir.is_dir() {
        println!("SKIP {test}: no source tree at {}", dir.display());
        return;
    }
    let out = run_checked(Command::new(&promtool).current_dir(&dir).args([
        "check",
        "rules",
        "memwatch.rules.yml",
        "memwatch.alerts.yml",
    ]));
    print!("{out}");
    let out = run_checked(Command::new(&promtool).current_dir(&dir).args([
        "check",
        "config",
        "prometheus.yml",
    ]));
    print!("{out}");
    let out = run_checked(Command::new(&promtool).current_dir(&dir).args([
        "test",
        "rules",
        "tests/memwatch_alerts_test.yml",
    ]));
    print!("{out}");
}

#[test]
fn kubernetes_manifests_validate() {
    let test = "kubernetes_manifests_validate";
    let mut candidates = vec![repo().join("target/tools/venv/bin/kubernetes-validate")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("kubernetes-validate")));
    }
    let Some(kv) = tool(test, "kubernetes-validate", &candidates) else {
        return;
    };
    let dir = repo().join("deploy/kubernetes");
    if !dir.is_dir() {
        println!("SKIP {test}: no source tree at {}", dir.display());
        return;
    }
    // Core resources strictly (unknown fields fail), against the schemas
    // kubernetes-validate bundles for 1.29: no network.
    let core = [
        "namespace.yaml",
        "daemonset.yaml",
        "service.yaml",
        "networkpolicy.yaml",
    ];
    let out = run_checked(
        Command::new(&kv)
            .current_dir(&dir)
            .args(["-k", "1.29", "--strict"])
            .args(core),
    );
    print!("{out}");
    for f in core {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("INFO {f} passed"))),
            "{f} was not validated:\n{out}"
        );
    }
    // The PodMonitor is a CRD that kubernetes-validate has no schema for (it only
    // warns): validate it against deploy/kubernetes/schemas/podmonitor.json with the
    // jsonschema that kubernetes-validate's venv brings.
    let python = kv.with_file_name("python");
    if !python.is_file() {
        println!(
            "SKIP {test} (PodMonitor): no venv python next to {}",
            kv.display()
        );
        return;
    }
    let out = run_checked(
        Command::new(&python)
            .current_dir(&dir)
            .args(["validate_crds.py", "podmonitor.yaml"]),
    );
    print!("{out}");
    assert!(out.contains("INFO podmonitor.yaml passed"), "{out}");
}

/// The venv python that kubernetes-validate brings (with PyYAML), or a skip line.
fn venv_python(test: &str) -> Option<PathBuf> {
    let python = repo().join("target/tools/venv/bin/python");
    tool(test, "the kubernetes-validate venv's python", &[python])
}

/// deploy/kubernetes/check_networkpolicy.py on `policy` and `daemonset`: exit status
/// and output.
fn check_policy(python: &Path, policy: &Path, daemonset: &Path) -> (bool, String) {
    let out = Command::new(python)
        .arg(repo().join("deploy/kubernetes/check_networkpolicy.py"))
        .args([policy, daemonset])
        .output()
        .expect("running check_networkpolicy.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The NetworkPolicy selects the DaemonSet's pods, which are on the pod network (so
/// CNIs enforce it), and admits only the Prometheus peer (namespace AND pod selector)
/// on the metrics port, with no egress. The checker is shown to know the answer: each
/// classic mistake, made in a copy of the real files, fails it with its reason.
#[test]
fn network_policy_admits_only_prometheus() {
    let test = "network_policy_admits_only_prometheus";
    let dir = repo().join("deploy/kubernetes");
    if !dir.is_dir() {
        println!("SKIP {test}: no source tree at {}", dir.display());
        return;
    }
    let Some(python) = venv_python(test) else {
        return;
    };
    let policy_path = dir.join("networkpolicy.yaml");
    let ds_path = dir.join("daemonset.yaml");
    let (ok, out) = check_policy(&python, &policy_path, &ds_path);
    print!("{out}");
    assert!(ok && out.starts_with("INFO "), "{out}");

    let policy = std::fs::read_to_string(&policy_path).unwrap();
    let ds = std::fs::read_to_string(&ds_path).unwrap();
    let prometheus_peer = "          podSelector:\n            matchLabels:\n              app.kubernetes.io/name: prometheus\n";
    assert!(policy.contains(prometheus_peer), "{policy}");
    let broken_policies = [
        (
            "the peer's selectors as two items (either admits)",
            policy.replace(
                prometheus_peer,
                &prometheus_peer.replacen("          podSelector", "        - podSelector", 1),
            ),
            "needs both a non-empty namespaceSelector and podSelector",
        ),
        (
            "another port",
            policy.replace("port: 9847", "port: 9848"),
            "not only the metrics port",
        ),
        (
            "selecting other pods",
            policy.replacen(
                "      app.kubernetes.io/name: memwatch",
                "      app.kubernetes.io/name: memwatch-other",
                1,
            ),
            "does not select the DaemonSet's pods",
        ),
        (
            "egress allowed",
            policy.replace("egress: []", "egress:\n    - {}"),
            "egress rules allow traffic out",
        ),
    ];
    for (what, text, reason) in broken_policies {
        assert_ne!(text, policy, "{what}: the edit did not apply");
        let bad = TempFile::new("networkpolicy.yaml", &text);
        let (ok, out) = check_policy(&python, &bad.0, &ds_path);
        assert!(!ok && out.contains(reason), "{what}: {out}");
    }
    assert!(ds.contains("      hostPID: true\n"), "{ds}");
    let host_network = TempFile::new(
        "daemonset.yaml",
        &ds.replace(
            "      hostPID: true\n",
            "      hostPID: true\n      hostNetwork: true\n",
        ),
    );
    let (ok, out) = check_policy(&python, &policy_path, &host_network.0);
    assert!(
        !ok && out.contains("uses hostNetwork"),
        "hostNetwork: {out}"
    );
}

// ------------------------------------------------------------------ live Prometheus

/// The watched comm of the COW workload (memwatch is told to make episodes of it).
const COW_COMM: &str = "mw-promcow";
const COW_BYTES: usize = 64 << 20;

/// Name itself COW_COMM and touch COW_BYTES (4 KiB pages); then twice: fork a child
/// that blocks on a pipe, write every page while it lives (copies: the child still
/// shares them), report the child's pid, wait for the test's 'G', release the child
/// (close the pipe) and reap it. Report 'C' at the end.
fn cow_body(ctl: &Ctl) -> i32 {
    // SAFETY: raw syscalls on memory and pipes this process makes itself.
    unsafe {
        let name = b"mw-promcow\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let Some(p) = map_populated(COW_BYTES / 4096) else {
            return 40;
        };
        for _ in 0..2 {
            let (hold_r, hold_w) = pipe();
            let child = libc::fork();
            if child < 0 {
                return 41;
            }
            if child == 0 {
                libc::close(hold_w);
                read_byte(hold_r); // EOF when the parent closes hold_w (or dies)
                libc::_exit(0);
            }
            libc::close(hold_r);
            for i in (0..COW_BYTES).step_by(4096) {
                std::ptr::write_volatile(p.add(i), 2);
            }
            ctl.report_u64(child as u64);
            if ctl.wait() != b'G' {
                return 42;
            }
            libc::close(hold_w);
            let mut status = 0;
            libc::waitpid(child, &mut status, 0);
        }
        ctl.report(b'C');
    }
    0
}

const DIRTY_BYTES: usize = 64 << 20;
static DIRTY_PATH: OnceLock<CString> = OnceLock::new();

/// Write DIRTY_BYTES with 4 KiB writes, fsync, report 'W'.
fn dirty_body(ctl: &Ctl) -> i32 {
    // SAFETY: raw syscalls on a file and a stack buffer of our own.
    unsafe {
        let fd = libc::open(
            DIRTY_PATH.get().unwrap().as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            0o600,
        );
        if fd < 0 {
            return 50;
        }
        let buf = [0x5au8; 4096];
        for _ in 0..DIRTY_BYTES / 4096 {
            if libc::write(fd, buf.as_ptr().cast(), buf.len()) != buf.len() as isize {
                return 51;
            }
        }
        libc::fsync(fd);
        libc::close(fd);
        ctl.report(b'W');
    }
    0
}

const MEMCG_LIMIT: u64 = 64 << 20;
const READ_BYTES: u64 = 192 << 20;
static READ_PATH: OnceLock<CString> = OnceLock::new();
static CGROUP_PROCS: OnceLock<CString> = OnceLock::new();

/// Join the memory-limited cgroup, read a file three times its limit twice, report 'R'.
fn reader_body(ctl: &Ctl) -> i32 {
    // SAFETY: raw syscalls on files and a stack buffer of our own.
    unsafe {
        let procs = libc::open(CGROUP_PROCS.get().unwrap().as_ptr(), libc::O_WRONLY);
        if procs < 0 || libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
            return 60;
        }
        libc::close(procs);
        let mut buf = [0u8; 65536];
        for _ in 0..2 {
            let fd = libc::open(READ_PATH.get().unwrap().as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                return 61;
            }
            while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
            libc::close(fd);
        }
        ctl.report(b'R');
    }
    0
}

/// How often Prometheus scrapes memwatch, and how long a scrape may take (Prometheus
/// allows no more than the interval): seconds. Generous, so that a scrape of a starved
/// agent on a loaded machine still succeeds; every wait below counts scrapes, not time.
const SCRAPE_INTERVAL: u32 = 3;

/// Debian's Prometheus on a loopback port, with memwatch's rules and alerts.
struct Prometheus(common::PrometheusServer);

impl Prometheus {
    fn start(bin: &Path, memwatch_port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("memwatch-test-prom-{}", std::process::id()));
        let rules = repo().join("deploy/prometheus");
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n  - {}\n\
             scrape_configs:\n  - job_name: memwatch\n    scrape_interval: {SCRAPE_INTERVAL}s\n    \
             scrape_timeout: {SCRAPE_INTERVAL}s\n\
             \x20   static_configs:\n      - targets: ['127.0.0.1:{memwatch_port}']\n",
            rules.join("memwatch.rules.yml").display(),
            rules.join("memwatch.alerts.yml").display(),
        );
        Self(common::PrometheusServer::start(bin, dir, &config))
    }

    fn log(&self) -> String {
        self.0.log()
    }

    /// `/api/v1/query` (instant, now or at a time) or `/api/v1/query_range` at 1 s steps.
    fn query(&self, expr: &str, when: When) -> Result<Vec<Value>, String> {
        let path = match when {
            When::Now => format!("/api/v1/query?query={}", common::urlencode(expr)),
            When::At(t) => format!(
                "/api/v1/query?query={}&time={t:.3}",
                common::urlencode(expr)
            ),
            When::Range(start, end) => format!(
                "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1",
                common::urlencode(expr)
            ),
        };
        let (status, body) = get(self.0.port, &path).ok_or("no answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The times (Unix seconds, as Prometheus stamped them) of the scrapes of memwatch
    /// that succeeded, oldest first: the raw samples of `up` that are 1.
    fn good_scrapes(&self) -> Vec<f64> {
        let r = self
            .query("up{job=\"memwatch\"}[1h]", When::Now)
            .unwrap_or_default();
        r.first()
            .and_then(|s| s["values"].as_array())
            .map(|vs| {
                vs.iter()
                    .filter(|v| v[1] == "1")
                    .filter_map(|v| v[0].as_f64())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `cond` every 200 ms until it holds; fails after `secs` (a stuck test only).
    fn wait_for<T>(&self, secs: u64, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = cond() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what} (waited {secs} s); Prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// When a query is evaluated.
#[derive(Clone, Copy)]
enum When {
    Now,
    At(f64),
    Range(f64, f64),
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Grafana's variables as the test fills them in: every instance, process and cgroup.
/// `$__rate_interval` as Grafana would set it: at least four scrape intervals.
fn substitute(expr: &str) -> String {
    const _: () = assert!(4 * SCRAPE_INTERVAL <= 15);
    expr.replace("$__rate_interval", "15s")
        .replace("$instance", ".*")
        .replace("$comm", ".*")
        .replace("$cgroup", ".*")
}

/// Metrics that exist only when a hook runs on a function rung (fentry/fexit or
/// kprobe/kretprobe), or at all: (metric name prefix, family, hook, rungs that feed it).
const FED_BY: &[(&str, &str, &str, &[&str])] = &[
    (
        "memwatch_process_cow_",
        "cow",
        "do_wp_page",
        &["fentry", "kprobe"],
    ),
    (
        "memwatch_cgroup_cow_",
        "cow",
        "do_wp_page",
        &["fentry", "kprobe"],
    ),
    (
        "memwatch_cow_copied_bytes",
        "cow",
        "do_wp_page",
        &["fentry", "kprobe"],
    ),
    (
        "memwatch_wp_fault_duration",
        "cow",
        "do_wp_page",
        &["fentry", "kprobe"],
    ),
    (
        "memwatch_process_wp_fault_seconds",
        "cow",
        "do_wp_page",
        &["fentry", "kprobe"],
    ),
    (
        "memwatch_process_thp_wp_faults",
        "cow",
        "do_huge_pmd_wp_page",
        &["fentry", "kprobe"],
    ),
    (
        "memwatch_process_faults_handled",
        "faults",
        "handle_mm_fault",
        &["fentry", "kprobe"],
    ),
    (
        "memwatch_cgroup_faults_handled",
        "faults",
        "handle_mm_fault",
        &["fentry", "kprobe"],
    ),
    (
        "memwatch_dup_mmap",
        "fork",
        "dup_mmap",
        &["fentry", "kprobe"],
    ),
    (
        "memwatch_process_dup_mmap",
        "fork",
        "dup_mmap",
        &["fentry", "kprobe"],
    ),
];

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("memwatch_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Why the running agent can't feed `expr`, if it can't: every memwatch metric in it
/// comes from a hook on a rung that doesn't produce it, or from PSI on a host without.
fn unfed_reason(expr: &str, modes: &BTreeMap<(String, String), String>) -> Option<String> {
    let names = metric_names(expr);
    let mut reasons = Vec::new();
    for n in &names {
        if n.starts_with("memwatch_pressure_") {
            if std::fs::read_to_string("/proc/pressure/memory").is_err() {
                reasons.push("no PSI: /proc/pressure/memory is absent or off".to_string());
                continue;
            }
            return None;
        }
        // A metric every rung feeds: the panel should have had series.
        let (_, fam, hook, rungs) = FED_BY.iter().find(|(p, ..)| n.starts_with(p))?;
        let mode = modes
            .get(&(fam.to_string(), hook.to_string()))
            .map(String::as_str)
            .unwrap_or("absent");
        if rungs.contains(&mode) {
            return None;
        }
        reasons.push(format!(
            "{n}: hook {fam}/{hook} runs on `{mode}` (memwatch_probe_info), needs {}",
            rungs.join(" or ")
        ));
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

#[test]
fn prometheus_evaluates_every_panel_and_rule() {
    let test = "prometheus_evaluates_every_panel_and_rule";
    let Some(prom_bin) = live_prerequisites(test) else {
        return;
    };
    let cfg = TempFile::new(
        "dashboards.toml",
        &format!(
            "[episodes]\nwatch_comms = [\"{COW_COMM}\"]\n\n[processes]\ncomm = [\"{COW_COMM}\"]\n"
        ),
    );
    let agent = Agent::start(&["--config", cfg.0.to_str().unwrap()]);
    let prom = Prometheus::start(&prom_bin, agent.port);
    let start = now();

    // Prometheus's first scrape comes up to an interval after it is ready: the
    // workloads start once it has scraped memwatch.
    prom.wait_for(120, "no successful scrape of memwatch", || {
        (!prom.good_scrapes().is_empty()).then_some(())
    });

    // Workloads, one after the other, while Prometheus scrapes.
    let cow = run_cow_workload(&prom, &agent, start);

    let dirty = std::env::temp_dir().join(format!("memwatch-test-dash-{}", std::process::id()));
    let _dirty_cleanup = TempFile(dirty.clone());
    let w = run_dirty_workload(&dirty);

    let cg = Memcg::create("dash", MEMCG_LIMIT);
    let _read_cleanup;
    let reader = if let Some(cg) = &cg {
        let read =
            std::env::temp_dir().join(format!("memwatch-test-dash-{}-read", std::process::id()));
        _read_cleanup = TempFile(read.clone());
        Some(run_reclaim_workload(cg, &read))
    } else {
        println!("{test}: no writable memory cgroup: the reclaim workload does not run");
        None
    };

    let at = scrape_after_workloads(test, &prom);
    let live = Live {
        prom: &prom,
        range: When::Range(start, at),
        instant: When::At(at),
        modes: probe_modes(&prom, When::At(at)),
    };
    let mut eval = Evaluation::default();
    for (name, text) in DASHBOARDS {
        let d: Value = serde_json::from_str(text).unwrap();
        eval.variables(&live, name, &d);
        for p in panels(&d) {
            eval.panel(&live, name, p);
        }
    }
    eval.rules(&live);
    eval.rule_health(&prom);

    println!(
        "{test}: {} panels returned series, {} rule expressions evaluated",
        eval.fed, eval.rules
    );
    for u in &eval.unfed {
        println!("not fed on this rung: {u}");
    }
    if let Some(r) = reader {
        r.finish();
    }
    cow.finish();
    w.finish();
    drop(prom);
    drop(agent);
    let failures = eval.failures;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What the live test needs: root, Debian's Prometheus (returned) and the source tree's
/// rule files; a skip line otherwise.
fn live_prerequisites(test: &str) -> Option<PathBuf> {
    if !root_or_skip(test) {
        return None;
    }
    let prom_bin = tool(test, "Prometheus", &[PathBuf::from("/usr/bin/prometheus")])?;
    if !repo().join("deploy/prometheus").is_dir() {
        println!(
            "SKIP {test}: no source tree (the rule files) at {}",
            repo().display()
        );
        return None;
    }
    Some(prom_bin)
}

/// Runs the COW workload to its end and waits until the agent has ended both its
/// episodes (their figures are in memwatch_fork_episode_*). Its children live until
/// Prometheus has the running episode's live COW series, as the "Live COW of running
/// episodes" panel shows it: the same range query (same `start`, same steps) that the
/// panel check runs.
fn run_cow_workload(prom: &Prometheus, agent: &Agent, start: f64) -> Workload {
    let cow = Workload::spawn(cow_body);
    for _ in 0..2 {
        let child = cow.read_u64();
        let live = format!(
            "memwatch_fork_episode_active_cow_bytes{{comm=\"{COW_COMM}\", child_pid=\"{child}\"}}"
        );
        prom.wait_for(
            120,
            &format!("Prometheus never had {live} while the child lived"),
            || {
                let r = prom.query(&live, When::Range(start, now())).ok()?;
                (!r.is_empty()).then_some(())
            },
        );
        cow.send(b'G');
    }
    cow.expect(b'C');
    cow.wait_done();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body = http_get(agent.port, &format!("/api/episodes?pid={}", cow.pid)).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["finished"].as_array().map_or(0, Vec::len) >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not end the COW workload's two episodes: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cow
}

/// Runs the dirty-page workload, writing `path`, to its end.
fn run_dirty_workload(path: &Path) -> Workload {
    DIRTY_PATH.get_or_init(|| CString::new(path.to_str().unwrap()).unwrap());
    let w = Workload::spawn(dirty_body);
    w.expect(b'W');
    w.wait_done();
    w
}

/// Writes READ_BYTES to `read` (out of the page cache again) and runs the reclaim
/// workload, reading it in cgroup `cg`, to its end.
fn run_reclaim_workload(cg: &Memcg, read: &Path) -> Workload {
    {
        use std::os::fd::AsRawFd;
        let mut f = std::fs::File::create(read).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        for _ in 0..READ_BYTES >> 20 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        // SAFETY: a valid open fd.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    READ_PATH.get_or_init(|| CString::new(read.to_str().unwrap()).unwrap());
    let procs = cg.dir.join("cgroup.procs");
    CGROUP_PROCS.get_or_init(|| CString::new(procs.to_str().unwrap()).unwrap());
    let r = Workload::spawn(reader_body);
    r.expect(b'R');
    r.wait_done();
    r
}

/// Waits for the scrapes after the workloads, so the last counters are in, and returns
/// the time of the last: a successful scrape begun at least two intervals after they
/// finished, and at least two successful ones after they finished (a rate needs two
/// samples). Every query is evaluated at that scrape's time, so a later failed scrape
/// (which marks every series stale) changes nothing.
fn scrape_after_workloads(test: &str, prom: &Prometheus) -> f64 {
    let done = now();
    let two = 2.0 * SCRAPE_INTERVAL as f64;
    prom.wait_for(
        120,
        "no two successful scrapes of memwatch after the workloads",
        || {
            let good = prom.good_scrapes();
            let after: Vec<f64> = good.iter().copied().filter(|t| *t > done).collect();
            let last = *after.last()?;
            (after.len() >= 2 && last >= done + two).then(|| {
                println!(
                    "{test}: {} successful scrapes of memwatch, {} after the workloads",
                    good.len(),
                    after.len()
                );
                last
            })
        },
    )
}

/// What rung each hook runs on, as Prometheus has it: (family, hook) -> mode.
fn probe_modes(prom: &Prometheus, instant: When) -> BTreeMap<(String, String), String> {
    let modes: BTreeMap<(String, String), String> = prom
        .query("memwatch_probe_info", instant)
        .unwrap()
        .iter()
        .map(|s| {
            let m = &s["metric"];
            (
                (
                    m["family"].as_str().unwrap().to_string(),
                    m["hook"].as_str().unwrap().to_string(),
                ),
                m["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(!modes.is_empty(), "no memwatch_probe_info in Prometheus");
    modes
}

/// Prometheus after the workloads, and how the queries are evaluated there.
struct Live<'a> {
    prom: &'a Prometheus,
    /// From before the workloads to the last scrape after them (panel queries).
    range: When,
    /// At the last scrape after the workloads (instant queries, variables, rules).
    instant: When,
    /// What rung each hook runs on.
    modes: BTreeMap<(String, String), String>,
}

/// What evaluating the dashboards and rules in Prometheus found.
#[derive(Default)]
struct Evaluation {
    failures: Vec<String>,
    /// Panels the running rung can't feed, with the reason.
    unfed: Vec<String>,
    /// Panels every query of which returned series.
    fed: usize,
    /// Rule expressions evaluated.
    rules: usize,
}

impl Evaluation {
    /// Variable queries of dashboard `d`: label_values(selector, label) must find values.
    fn variables(&mut self, live: &Live, name: &str, d: &Value) {
        for v in d["templating"]["list"].as_array().unwrap() {
            let Some(q) = v["query"]["query"].as_str() else {
                continue;
            };
            let Some(inner) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
            else {
                continue;
            };
            let (sel, label) = inner.rsplit_once(',').unwrap();
            let sel = substitute(sel.trim());
            match live.prom.query(&sel, live.instant) {
                Ok(r) if r.iter().any(|s| s["metric"][label.trim()].is_string()) => {}
                Ok(_) => self.failures.push(format!(
                    "{name}: variable {}: no {} values from {sel}",
                    v["name"],
                    label.trim()
                )),
                Err(e) => self
                    .failures
                    .push(format!("{name}: variable {}: {sel}: {e}", v["name"])),
            }
        }
    }

    /// Every query of panel `p` must return series, or be one the running rung can't
    /// feed (then the panel is listed, with the reason).
    fn panel(&mut self, live: &Live, name: &str, p: &Value) {
        let Some(targets) = p["targets"].as_array() else {
            return;
        };
        let title = p["title"].as_str().unwrap();
        let mut reasons = Vec::new();
        let mut empty = 0;
        for t in targets {
            let expr = substitute(t["expr"].as_str().unwrap());
            let is_instant = t["instant"].as_bool().unwrap_or(false);
            let when = if is_instant { live.instant } else { live.range };
            match live.prom.query(&expr, when) {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => {
                    empty += 1;
                    match unfed_reason(&expr, &live.modes) {
                        Some(why) => reasons.push(why),
                        None => self
                            .failures
                            .push(format!("{name}: {title}: no series from {expr}")),
                    }
                }
                Err(e) => self.failures.push(format!("{name}: {title}: {expr}: {e}")),
            }
        }
        if empty == 0 {
            self.fed += 1;
        } else if !reasons.is_empty() {
            self.unfed
                .push(format!("{name}: {title}: {}", reasons.join("; ")));
        }
    }

    /// Every rule and alert expression must evaluate.
    fn rules(&mut self, live: &Live) {
        for (rule, expr) in rule_exprs() {
            match live.prom.query(&expr, live.instant) {
                Ok(_) => self.rules += 1,
                Err(e) => self.failures.push(format!("rule {rule}: {expr}: {e}")),
            }
        }
    }

    /// Prometheus loaded the rule files itself and evaluates them without errors.
    fn rule_health(&mut self, prom: &Prometheus) {
        let rule_health = get(prom.0.port, "/api/v1/rules").unwrap().1;
        let v: Value = serde_json::from_str(&rule_health).unwrap();
        for g in v["data"]["groups"].as_array().unwrap() {
            for r in g["rules"].as_array().unwrap() {
                if r["health"] == "err" {
                    self.failures
                        .push(format!("rule {} unhealthy: {}", r["name"], r["lastError"]));
                }
            }
        }
    }
}
