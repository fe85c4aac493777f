//! memwatch as a systemd service: the unit verifies, `cargo xtask install` and `dist`
//! put the same files in the right places, the daemon runs as a non-root user with
//! exactly the unit's capabilities and drops them after attaching, and it speaks the
//! notify protocol (READY=1 once serving, watchdog pings).

mod common;

use std::{
    collections::BTreeSet,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{bin, eventually, http_get, root_or_skip, Agent, TempFile};

/// The unit, as compiled in: the VM tests have no source tree.
const UNIT: &str = include_str!("../../deploy/memwatch.service");

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capability number of a unit-file name; panics on one this test doesn't know, so a
/// capability added to the unit gets looked at here.
fn cap_number(name: &str) -> u32 {
    match name {
        "CAP_DAC_READ_SEARCH" => CAP_DAC_READ_SEARCH,
        "CAP_SYS_PTRACE" => CAP_SYS_PTRACE,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => CAP_PERFMON,
        "CAP_BPF" => CAP_BPF,
        other => panic!("unit grants {other}: teach this test its number"),
    }
}

/// The values of a `Key=` of the unit, split on whitespace (all lines with that key).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("memwatch-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Path of a program on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain([
            "/usr/sbin".into(),
            "/usr/bin".into(),
            "/sbin".into(),
            "/bin".into(),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn unit_verifies() {
    let Some(analyze) = which("systemd-analyze") else {
        println!("SKIP unit_verifies: no systemd-analyze here (`cargo xtask setup` installs it)");
        return;
    };
    // verify wants ExecStart's binary to exist: point it at the one under test.
    let dir = TempDir::new("unit");
    let unit = dir.0.join("memwatch.service");
    let text = UNIT.replace(
        "ExecStart=/usr/local/bin/memwatch ",
        &format!("ExecStart={} ", bin()),
    );
    assert_ne!(text, UNIT, "no ExecStart=/usr/local/bin/memwatch line");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("systemd-analyze verify: {} {stderr}", out.status);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");

    // systemd's own exposure score of the sandbox (0 = locked down, 10 = exposed).
    let out = Command::new(which("systemd-analyze").unwrap())
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for memwatch.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    println!("systemd-analyze security: exposure {score}");
    assert!(
        score <= 4.0,
        "exposure {score} (3.7 when written):\n{report}"
    );

    // What the unit promises.
    assert_eq!(unit_values(UNIT, "Type"), ["notify"]);
    // Any death (a signal included: on-failure counts SIGHUP and SIGTERM as clean)
    // restarts it, except a config error; SIGHUP reloads.
    assert_eq!(unit_values(UNIT, "Restart"), ["always"]);
    assert_eq!(unit_values(UNIT, "RestartPreventExitStatus"), ["2"]);
    assert_eq!(
        unit_values(UNIT, "ExecReload"),
        ["/bin/kill", "-HUP", "$MAINPID"]
    );
    assert_eq!(unit_values(UNIT, "NoNewPrivileges"), ["yes"]);
    // Room for the default connection limit and the ~90 BPF descriptors.
    let nofile: u64 = unit_values(UNIT, "LimitNOFILE")[0].parse().unwrap();
    let max_connections = memwatch::config::Config::default().web.max_connections as u64;
    assert!(nofile >= max_connections + 256, "LimitNOFILE={nofile}");
    assert_eq!(unit_values(UNIT, "DynamicUser"), ["yes"]);
    let ambient = unit_values(UNIT, "AmbientCapabilities");
    assert_eq!(ambient, unit_values(UNIT, "CapabilityBoundingSet"));
    for c in &ambient {
        cap_number(c);
    }
    assert!(
        UNIT.contains("ExecStart=/usr/local/bin/memwatch run --config /etc/memwatch/memwatch.toml")
    );
}

/// `cargo xtask ARGS` through the cargo running these tests; None (and a SKIP line)
/// where there is no cargo or no source tree (the VMs).
fn xtask(test: &str, args: &[&str]) -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(cargo) = std::env::var_os("CARGO") else {
        println!("SKIP {test}: not run by cargo (needs cargo and the source tree)");
        return None;
    };
    if !root.join("xtask/Cargo.toml").is_file() {
        println!("SKIP {test}: no source tree at {}", root.display());
        return None;
    }
    // A target dir of its own: the `cargo test` running this holds the main one's lock.
    let target = root.join("target/xtask-in-tests");
    let out = Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cargo xtask {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

/// `memwatch config --check FILE` passes.
fn config_checks(path: &Path) {
    let out = Command::new(bin())
        .args(["config", "--check"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn default_config() -> Vec<u8> {
    Command::new(bin())
        .args(["config", "--print-default"])
        .output()
        .unwrap()
        .stdout
}

#[test]
fn install_into_a_staging_root() {
    let dir = TempDir::new("install");
    let root = dir.0.join("root");
    let args = ["install", "--root", root.to_str().unwrap(), "--bin", &bin()];
    let Some(out) = xtask("install_into_a_staging_root", &args) else {
        return;
    };
    println!("{out}");
    let binary = root.join("usr/local/bin/memwatch");
    let unit = root.join("etc/systemd/system/memwatch.service");
    let config = root.join("etc/memwatch/memwatch.toml");
    assert_eq!(mode(&binary), 0o755);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&config), 0o644);
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        std::fs::read(bin()).unwrap()
    );
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), UNIT);
    assert_eq!(std::fs::read(&config).unwrap(), default_config());
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .starts_with("# memwatch configuration"));
    config_checks(&config);
    // Nothing else landed.
    let mut all = BTreeSet::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o755, "{}", p.display());
                stack.push(p);
            } else {
                all.insert(p.strip_prefix(&root).unwrap().to_path_buf());
            }
        }
    }
    let want: BTreeSet<PathBuf> = [
        "usr/local/bin/memwatch",
        "etc/systemd/system/memwatch.service",
        "etc/memwatch/memwatch.toml",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(all, want);

    // A second install keeps an edited config; another prefix moves ExecStart.
    std::fs::write(&config, "[web]\nlisten_address = \"127.0.0.1:9847\"\n").unwrap();
    let args = [
        "install",
        "--root",
        root.to_str().unwrap(),
        "--prefix",
        "/opt/memwatch",
        "--bin",
        &bin(),
    ];
    let out = xtask("install_into_a_staging_root", &args).unwrap();
    assert!(out.contains("kept "), "{out}");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("127.0.0.1:9847"));
    assert_eq!(mode(&root.join("opt/memwatch/bin/memwatch")), 0o755);
    let unit = std::fs::read_to_string(&unit).unwrap();
    assert!(
        unit.contains(
            "ExecStart=/opt/memwatch/bin/memwatch run --config /etc/memwatch/memwatch.toml\n"
        ),
        "{unit}"
    );
}

#[test]
fn deb_carries_the_same_files() {
    let Some(dpkg_deb) = which("dpkg-deb") else {
        println!("SKIP deb_carries_the_same_files: no dpkg-deb here");
        return;
    };
    let dir = TempDir::new("dist");
    let args = ["dist", "--out", dir.0.to_str().unwrap(), "--bin", &bin()];
    let Some(out) = xtask("deb_carries_the_same_files", &args) else {
        return;
    };
    let deb = PathBuf::from(out.lines().last().unwrap().trim());
    assert!(deb.extension().is_some_and(|e| e == "deb"), "{out}");

    check_deb_listing(&dpkg_deb, &deb);
    check_deb_contents(&dpkg_deb, &deb, &dir.0.join("x"));
    check_deb_control(&dpkg_deb, &deb, &dir.0.join("control"));
}

/// The package's files and directories: owned by root, with the expected modes.
fn check_deb_listing(dpkg_deb: &Path, deb: &Path) {
    let list = Command::new(dpkg_deb).arg("-c").arg(deb).output().unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    println!("{list}");
    let mut files = Vec::new();
    for line in list.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (perms, owner, path) = (w[0], w[1], *w.last().unwrap());
        assert_eq!(owner, "root/root", "{line}");
        if path.ends_with('/') {
            assert_eq!(perms, "drwxr-xr-x", "{line}");
        } else {
            files.push((path.to_string(), perms.to_string()));
        }
    }
    files.sort();
    assert_eq!(
        files,
        [
            (
                "./etc/memwatch/memwatch.toml".to_string(),
                "-rw-r--r--".to_string()
            ),
            (
                "./lib/systemd/system/memwatch.service".into(),
                "-rw-r--r--".into()
            ),
            ("./usr/bin/memwatch".into(), "-rwxr-xr-x".into()),
        ]
    );
}

/// The contents, extracted to `x`: the same binary, config and unit as `install`
/// (ExecStart in /usr).
fn check_deb_contents(dpkg_deb: &Path, deb: &Path, x: &Path) {
    let ok = Command::new(dpkg_deb)
        .arg("-x")
        .arg(deb)
        .arg(x)
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(
        std::fs::read(x.join("usr/bin/memwatch")).unwrap(),
        std::fs::read(bin()).unwrap()
    );
    assert_eq!(
        std::fs::read(x.join("etc/memwatch/memwatch.toml")).unwrap(),
        default_config()
    );
    config_checks(&x.join("etc/memwatch/memwatch.toml"));
    assert_eq!(
        std::fs::read_to_string(x.join("lib/systemd/system/memwatch.service")).unwrap(),
        UNIT.replace(
            "ExecStart=/usr/local/bin/memwatch ",
            "ExecStart=/usr/bin/memwatch "
        )
    );
}

/// Control files, extracted to `c`: the config is a conffile; the scripts only act
/// under systemd.
fn check_deb_control(dpkg_deb: &Path, deb: &Path, c: &Path) {
    let ok = Command::new(dpkg_deb)
        .arg("-e")
        .arg(deb)
        .arg(c)
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(
        std::fs::read_to_string(c.join("conffiles")).unwrap(),
        "/etc/memwatch/memwatch.toml\n"
    );
    let control = std::fs::read_to_string(c.join("control")).unwrap();
    assert!(control.starts_with("Package: memwatch\n"), "{control}");
    for script in ["postinst", "prerm", "postrm"] {
        check_maintainer_script(script, &c.join(script));
    }
}

/// Maintainer script `script` at `p`: executable, valid sh, calling systemctl only
/// under its systemd check; without systemd here, it succeeds and does nothing.
fn check_maintainer_script(script: &str, p: &Path) {
    assert_eq!(mode(p), 0o755, "{script}");
    let text = std::fs::read_to_string(p).unwrap();
    for line in text.lines().filter(|l| l.contains("systemctl")) {
        assert!(
            line.starts_with("    "),
            "{script}: systemctl outside the systemd check: {line}"
        );
    }
    assert!(text.contains("if [ -d /run/systemd/system ]"), "{script}");
    let ok = Command::new("sh").arg("-n").arg(p).status().unwrap();
    assert!(ok.success(), "{script}: sh -n");
    if !Path::new("/run/systemd/system").exists() {
        // No systemd here: the scripts must succeed and do nothing.
        let ok = Command::new("/bin/sh")
            .arg(p)
            .arg(if script == "postinst" {
                "configure"
            } else {
                "remove"
            })
            .env("PATH", "/nonexistent")
            .status()
            .unwrap();
        assert!(ok.success(), "{script} failed without systemd");
    }
}

/// /proc/PID/status fields CapInh, CapPrm, CapEff, CapAmb of every thread of `pid`.
fn thread_caps(pid: u32) -> Vec<[u64; 4]> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        // A thread that exited since the listing (tokio's idle blocking threads do)
        // has no caps to check.
        let Ok(status) = std::fs::read_to_string(t.unwrap().path().join("status")) else {
            continue;
        };
        let get = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        out.push([
            get("CapInh:"),
            get("CapPrm:"),
            get("CapEff:"),
            get("CapAmb:"),
        ]);
    }
    out
}

/// After attaching, every thread holds at most CAP_SYS_PTRACE (the [processes]
/// collector) and CAP_BPF (kernels that check it on each bpf() call); the rest of what
/// it started with is gone, inheritable and ambient sets included.
fn assert_dropped(agent: &Agent, started_with: u64) {
    let allowed = (1u64 << CAP_SYS_PTRACE) | (1u64 << CAP_BPF);
    for [inh, prm, eff, amb] in thread_caps(agent.pid()) {
        println!("daemon caps: inh {inh:x} prm {prm:x} eff {eff:x} amb {amb:x}");
        assert_eq!(eff & !allowed, 0, "kept more than it needs: {eff:x}");
        assert_eq!(prm, eff);
        assert_eq!(inh, 0);
        assert_eq!(amb, 0);
        if started_with & (1 << CAP_SYS_PTRACE) != 0 {
            assert_ne!(eff & (1 << CAP_SYS_PTRACE), 0, "dropped CAP_SYS_PTRACE");
        }
    }
    let log = agent.log_text();
    assert!(log.contains("dropped capabilities"), "{log}");
}

/// On 'G': fork a child that exits at once, reap it, report 'F'.
fn fork_once(ctl: &common::workload::Ctl) -> i32 {
    if ctl.wait() != b'G' {
        return 1;
    }
    // SAFETY: raw syscalls only in a single-threaded forked workload.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            libc::_exit(0);
        }
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
    }
    ctl.report(b'F');
    0
}

#[test]
fn runs_as_nobody_with_the_units_capabilities() {
    let Some(setpriv) = nobody_prerequisites("runs_as_nobody_with_the_units_capabilities") else {
        return;
    };
    // The unit's ExecStartPre does this; memwatch can't mount without CAP_SYS_ADMIN.
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        let ok = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting tracefs");
    }
    let (wrapper, given) = unit_wrapper(&setpriv);

    // A watched process that forks once the daemon runs: fork episodes after the drop.
    let w = common::workload::Workload::spawn(fork_once);
    let cfg = TempFile::new(
        "nobody.toml",
        &format!("[episodes]\nwatch_pids = [{}]\nlog = \"none\"\n", w.pid),
    );
    std::fs::set_permissions(&cfg.0, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = Agent::start_with(&wrapper, &["--config", cfg.0.to_str().unwrap()], &[], true);
    let uid = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let uid = uid
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    println!("{uid}");
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid}"
    );
    assert_dropped(&agent, given);

    check_probes_after_drop(&agent);
    check_fork_episode_after_drop(&agent, w);
    let log = agent.log_text();
    println!(
        "{}",
        log.lines()
            .filter(|l| l.contains("capabilities"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Root and util-linux's setpriv (returned); a skip line otherwise.
fn nobody_prerequisites(test: &str) -> Option<PathBuf> {
    if !root_or_skip(test) {
        return None;
    }
    let Some(setpriv) = which("setpriv") else {
        println!("SKIP {test}: no setpriv (util-linux) here");
        return None;
    };
    let version = Command::new(&setpriv).arg("--version").output();
    if !version.is_ok_and(|v| String::from_utf8_lossy(&v.stdout).contains("util-linux")) {
        println!(
            "SKIP {test}: {} is not util-linux's setpriv",
            setpriv.display()
        );
        return None;
    }
    Some(setpriv)
}

/// The setpriv command line that runs a program as the unit does: as nobody, with the
/// unit's AmbientCapabilities only; and those capabilities as a mask.
fn unit_wrapper(setpriv: &Path) -> (Vec<String>, u64) {
    let caps = unit_values(UNIT, "AmbientCapabilities");
    let list = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let given = caps.iter().fold(0u64, |s, c| s | (1u64 << cap_number(c)));
    println!("unit capabilities: {caps:?} -> setpriv {list}");
    let wrapper: Vec<String> = [
        setpriv.to_str().unwrap(),
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--no-new-privs",
        &format!("--inh-caps=-all,{list}"),
        &format!("--ambient-caps=-all,{list}"),
        &format!("--bounding-set=-all,{list}"),
        "--",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    (wrapper, given)
}

/// Scrapes still read the maps through the fds opened before the drop: hooks are
/// attached and page faults (this test's own) keep being counted.
fn check_probes_after_drop(agent: &Agent) {
    let m0 = agent.scrape();
    let faults = |m: &common::Metrics| m.sum("memwatch_page_faults_total", &[]);
    assert!(
        !m0.family("memwatch_page_faults_total").is_empty(),
        "{}",
        m0.text
    );
    let attached: Vec<_> = m0
        .family("memwatch_probe_info")
        .into_iter()
        .filter(|s| s.1.get("mode").is_some_and(|m| m != "none"))
        .collect();
    assert!(
        !attached.is_empty(),
        "no hook attached:\n{}",
        agent.log_text()
    );
    let buf = vec![0u8; 16 << 20];
    // SAFETY: reading bytes of a live allocation, to fault its pages in.
    let touched: u64 = (0..buf.len())
        .step_by(4096)
        .map(|i| unsafe { std::ptr::read_volatile(&buf[i]) } as u64)
        .sum();
    assert_eq!(touched, 0);
    let grew = eventually(120, || {
        (faults(&agent.scrape()) > faults(&m0)).then_some(())
    });
    assert!(grew.is_some(), "memwatch_page_faults_total did not move");
}

/// Fork episodes: the ring buffer is read through its fd, /proc without privileges.
/// Lets the watched workload `w` fork and waits for its episode.
fn check_fork_episode_after_drop(agent: &Agent, w: common::workload::Workload) {
    w.send(b'G');
    w.expect(b'F');
    let path = format!("/api/episodes?pid={}", w.pid);
    let finished = eventually(120, || {
        let body = http_get(agent.port, &path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (!v["finished"].as_array()?.is_empty()).then_some(v)
    });
    w.wait_done();
    w.finish();
    let v = finished.unwrap_or_else(|| panic!("no fork episode:\n{}", agent.log_text()));
    println!("episode: {}", v["finished"][0]);
}

#[test]
fn notify_ready_after_serving_and_watchdog_pings() {
    if !root_or_skip("notify_ready_after_serving_and_watchdog_pings") {
        return;
    }
    let dir = TempDir::new("notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let env = [
        ("NOTIFY_SOCKET", sock_path.to_string_lossy().into_owned()),
        // Pings every 150 ms.
        ("WATCHDOG_USEC", "300000".to_string()),
    ];
    // No ping can be sent before this (the bound on their number below).
    let spawned = Instant::now();
    let mut agent = Agent::start_with(&[], &[], &env, false);
    let first = first_notification(&sock, &mut agent);
    check_ready(&first, &agent);
    check_watchdog_pings(&sock, &agent, spawned);
    assert!(agent.stop().success());
    // STOPPING=1 on the way out.
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf);
    let mut got = Vec::new();
    if let Ok(n) = n {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(got.iter().any(|m| m == "STOPPING=1"), "{got:?}");
}

/// The first notification the daemon sends on `sock` (failing if it exits first).
fn first_notification(sock: &UnixDatagram, agent: &mut Agent) -> String {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        if let Some(s) = agent.exited() {
            panic!("memwatch exited ({s}):\n{}", agent.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "no READY=1:\n{}",
            agent.log_text()
        );
    }
}

/// `first` is READY=1 with a status naming the hooks and the address; by then the
/// daemon answers, the probes feed /metrics and the capabilities are gone.
fn check_ready(first: &str, agent: &Agent) {
    println!("first notification: {first:?}");
    assert!(first.lines().any(|l| l == "READY=1"), "{first}");
    let status = first
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {first:?}"));
    assert!(status.contains("hooks attached"), "{status}");
    assert!(
        status.contains(&format!("127.0.0.1:{}", agent.port)),
        "{status}"
    );

    // At READY=1 the daemon already answers and the probes already feed /metrics.
    assert_eq!(http_get(agent.port, "/healthz").unwrap(), "ok\n");
    let m = agent.scrape();
    assert!(
        !m.family("memwatch_page_faults_total").is_empty(),
        "{}",
        m.text
    );
    assert!(
        m.family("memwatch_probe_info")
            .iter()
            .any(|s| s.1.get("mode").is_some_and(|m| m != "none")),
        "no hook attached at READY"
    );
    // As root too, the capabilities are gone once it serves.
    assert_dropped(agent, u64::MAX);
}

/// Watchdog pings keep coming, at most one per interval (half WATCHDOG_USEC): a daemon
/// that was held up sends the next one late, never a burst to catch up. So however
/// slow the machine, the pings received by now are at most one more than the intervals
/// since the daemon was `spawned` (before it could send any), and a few of them arrive
/// within a deadline that only a daemon that stopped pinging misses.
fn check_watchdog_pings(sock: &UnixDatagram, agent: &Agent, spawned: Instant) {
    const PINGS: u32 = 5;
    let mut buf = [0u8; 4096];
    let every = Duration::from_millis(150);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pings = 0;
    while pings < PINGS {
        assert!(
            Instant::now() < deadline,
            "{pings} watchdog pings in 120 s:\n{}",
            agent.log_text()
        );
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert_eq!(msg, "WATCHDOG=1");
            pings += 1;
            let most = (spawned.elapsed().as_nanos() / every.as_nanos()) as u32 + 1;
            assert!(
                pings <= most,
                "{pings} pings {:?} after the start at one per {every:?}: a burst",
                spawned.elapsed()
            );
        }
    }
    println!("{pings} watchdog pings, none early");
}
