//! Redis fork stalls end to end: a real redis-server (Debian's), populated and under a
//! redis-benchmark write load, runs BGSAVE and BGREWRITEAOF while memwatch watches.
//! Each must give exactly one episode whose COW bytes agree with Redis's own
//! `rdb_last_cow_size` / `aof_last_cow_size`, and `fork-report` must explain it.

mod common;

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{bin, free_port, http_get, root_or_skip, Agent, TempFile};

/// A redis-server of our own on a loopback port, stopped (by PID) and cleaned up on
/// drop.
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("memwatch-test-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by cargo xtask setup)");
        let r = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while r.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// INFO fields.
    fn info(&self, section: &str) -> HashMap<String, String> {
        self.cli(&["INFO", section])
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn num(&self, section: &str, field: &str) -> f64 {
        self.info(section)
            .get(field)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("INFO {section} has no numeric {field}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SAFETY: signalling the redis-server we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-benchmark write load over 100 000 keys, stopped by PID on drop: SETRANGE of
/// a 300-byte value, which creates each key once and then overwrites its value in
/// place. In-place writes are pure copy-on-write; a load that frees memory (SET
/// replacing values, a growing dict) would also let pages the parent releases become
/// private to the child, which Redis counts and copies don't.
struct Load(Child);

impl Load {
    fn start(port: u16) -> Self {
        Self(
            Command::new("redis-benchmark")
                .args(["-p", &port.to_string()])
                .args([
                    "-t",
                    "set",
                    "-n",
                    "100000000",
                    "-r",
                    "100000",
                    "-d",
                    "300",
                    "-q",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-benchmark"),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // SAFETY: signalling the benchmark we started, by its PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Children of `ppid` (from /proc).
fn children_of(ppid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
            if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(ppid) {
                v.push(pid);
            }
        }
    }
    v
}

/// The episodes the daemon reports for `pid`, as JSON values.
fn episodes(agent: &Agent, pid: u32) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let body = http_get(agent.port, &format!("/api/episodes?pid={pid}")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tracking"], true, "{body}");
    (
        v["active"].as_array().cloned().unwrap_or_default(),
        v["finished"].as_array().cloned().unwrap_or_default(),
    )
}

struct Save {
    child_pid: u32,
    /// (Redis current_cow_size, memwatch live COW bytes) sampled during the save, at
    /// the same moment.
    live: Vec<(f64, f64)>,
}

/// Starts a save with `cmd`, follows it until Redis says it finished.
fn run_save(redis: &Redis, agent: &Agent, cmd: &str, in_progress: &str) -> Save {
    let before = children_of(redis.pid());
    assert!(redis.cli(&[cmd]).contains("started"), "{cmd} did not start");
    let mut child_pid = 0;
    let mut live = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child_pid == 0 {
            child_pid = children_of(redis.pid())
                .into_iter()
                .find(|c| !before.contains(c))
                .unwrap_or(0);
        }
        let p = redis.info("persistence");
        if p.get(in_progress).map(String::as_str) == Some("0") {
            break;
        }
        let redis_cow: f64 = p
            .get("current_cow_size")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let (active, _) = episodes(agent, redis.pid());
        if let Some(e) = active.first() {
            live.push((redis_cow, e["parent_cow_bytes"].as_f64().unwrap_or(0.0)));
        }
        assert!(Instant::now() < deadline, "{cmd} did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(child_pid != 0, "never saw the child Redis forked for {cmd}");
    Save { child_pid, live }
}

/// Waits for the episode of `child_pid` to finish and returns it.
fn finished_episode(agent: &Agent, pid: u32, child_pid: u32) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, finished) = episodes(agent, pid);
        let mine: Vec<_> = finished
            .iter()
            .filter(|e| e["child_pid"].as_u64() == Some(child_pid as u64))
            .collect();
        if let Some(e) = mine.first() {
            return (*e).clone();
        }
        assert!(
            Instant::now() < deadline,
            "no finished episode for child {child_pid}: {finished:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_episode(what: &str, e: &serde_json::Value, redis: &Redis, save: &Save, cow_field: &str) {
    let redis_cow = redis.num("persistence", cow_field);
    let ours = e["parent_cow_bytes"].as_f64().unwrap() + e["child_cow_bytes"].as_f64().unwrap();
    println!(
        "{what}: memwatch COW {ours} bytes ({}, child new {}), Redis {cow_field} {redis_cow}; fork {} s vs \
         latest_fork_usec {}; live samples (redis, memwatch): {:?}",
        e["cow_source"], e["child_new_bytes"],
        e["fork_latency_seconds"],
        redis.num("stats", "latest_fork_usec"),
        save.live
    );
    assert!(
        redis_cow > 16.0 * 1048576.0,
        "the write load made too little COW to compare: {redis_cow}"
    );
    assert!(
        (ours - redis_cow).abs() <= 0.10 * redis_cow,
        "{what}: memwatch {ours} vs Redis {cow_field} {redis_cow}: more than 10% apart"
    );
    // Fork latency: the same order of magnitude as Redis's own measurement around fork().
    let fork_us = e["fork_latency_seconds"].as_f64().unwrap() * 1e6;
    let redis_us = redis.num("stats", "latest_fork_usec");
    assert!(
        fork_us <= redis_us * 1.05 && fork_us >= redis_us / 10.0,
        "fork latency {fork_us} µs vs Redis latest_fork_usec {redis_us}"
    );
    assert_eq!(e["child_exit_code"], 0, "{e}");
    assert!(e["child_lifetime_seconds"].as_f64().unwrap() > 0.0);
    assert!(!e["verdict"].as_str().unwrap().is_empty());
    // While the save ran, memwatch's live figure kept up with Redis's (slow) samples.
    assert!(
        save.live.iter().any(|s| s.1 > 0.0),
        "no live COW seen during the save"
    );
    // Redis's current_cow_size is sampled about once a second and published late, so
    // at any moment memwatch's live figure should be at least Redis's (within the same
    // 10% as the final comparison).
    for (redis_live, ours_live) in &save.live {
        assert!(
            *ours_live >= 0.9 * redis_live,
            "live COW: memwatch {ours_live} fell behind Redis's current_cow_size {redis_live}"
        );
    }
}

#[test]
fn bgsave_and_aof_rewrite_episodes_match_redis() {
    if !root_or_skip("bgsave_and_aof_rewrite_episodes_match_redis") {
        return;
    }
    for tool in ["redis-server", "redis-cli", "redis-benchmark"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!(
                "SKIP bgsave_and_aof_rewrite_episodes_match_redis: {tool} not installed \
                 (`cargo xtask setup` installs Debian's redis-server)"
            );
            return;
        }
    }
    let log = TempFile(std::env::temp_dir().join(format!(
        "memwatch-test-{}-episodes.jsonl",
        std::process::id()
    )));
    let cfg = TempFile::new(
        "redis.toml",
        &format!(
            "[episodes]\nwatch_comms = [\"redis-server\"]\nlog = \"{}\"\n",
            log.0.display()
        ),
    );
    let agent = Agent::start(&["--config", cfg.0.to_str().unwrap()]);
    let redis = Redis::start();
    // 1.1 M keys: the main dict is sized for 2^21 entries from the start, so the
    // benchmark's 100 000 new keys never make it grow (and free its old table) during
    // a save.
    redis.cli(&["DEBUG", "POPULATE", "1100000", "key", "300"]);
    let rss = redis.num("memory", "used_memory_rss");
    assert!(rss >= 300.0 * 1048576.0, "populated only {rss} bytes");
    let load = Load::start(redis.port);
    std::thread::sleep(Duration::from_secs(3));

    let save = run_save(&redis, &agent, "BGSAVE", "rdb_bgsave_in_progress");
    assert_eq!(redis.info("persistence")["rdb_last_bgsave_status"], "ok");
    let e = finished_episode(&agent, redis.pid(), save.child_pid);
    check_episode("BGSAVE", &e, &redis, &save, "rdb_last_cow_size");

    let aof = run_save(&redis, &agent, "BGREWRITEAOF", "aof_rewrite_in_progress");
    let e2 = finished_episode(&agent, redis.pid(), aof.child_pid);
    check_episode("BGREWRITEAOF", &e2, &redis, &aof, "aof_last_cow_size");
    drop(load);

    // Exactly one episode per save, each for the child Redis forked.
    let (_, finished) = episodes(&agent, redis.pid());
    let children: Vec<u64> = finished
        .iter()
        .filter_map(|e| e["child_pid"].as_u64())
        .collect();
    assert_eq!(
        children,
        vec![save.child_pid as u64, aof.child_pid as u64],
        "{finished:?}"
    );

    // The JSON log has the same objects, with the documented fields.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log.0)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for field in [
        "pid",
        "comm",
        "child_pid",
        "started_at",
        "child_lifetime_seconds",
        "fork_latency_seconds",
        "parent_cow_pages",
        "parent_cow_bytes",
        "child_cow_bytes",
        "reclaim_stall_seconds",
        "dirty_throttle_seconds",
        "verdict",
    ] {
        assert!(
            lines[0].get(field).is_some(),
            "log line lacks {field}: {}",
            lines[0]
        );
    }
    assert_eq!(lines[0]["child_pid"], e["child_pid"]);

    // fork-report, text and JSON, from the daemon.
    let url = format!("http://127.0.0.1:{}", agent.port);
    let text = common::run_ok(Command::new(bin()).args([
        "fork-report",
        "--url",
        &url,
        "--pid",
        &redis.pid().to_string(),
    ]));
    assert!(
        text.contains(&format!("forked {}", save.child_pid)),
        "{text}"
    );
    assert!(text.contains("verdict:"), "{text}");
    let out = Command::new(bin())
        .args([
            "fork-report",
            "--json",
            "--url",
            &url,
            "--comm",
            "redis-server",
        ])
        .output()
        .unwrap();
    let objs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[0], lines[0]);

    // Metrics: two episodes for redis-server.
    let m = agent.scrape();
    assert_eq!(
        m.get("memwatch_fork_episodes_total", &[("comm", "redis-server")]),
        Some(2.0)
    );
    drop(redis);
    assert!(agent.stop().success());
}
