//! The agent on this host, against what the kernel itself says.

mod common;

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
};

use common::{
    bin, confirm_in_rounds, probe_mode, read_meminfo, root_or_skip, Agent, Bound, Reading, TempFile,
};

/// Every /proc/meminfo field is exported, in bytes (counts for HugePages_*), and agrees
/// with /proc/meminfo read around a scrape: sizes fixed at boot exactly, the rest in a
/// round where the field stood still or moved one way (see `confirm_in_rounds`).
#[test]
fn meminfo_matches_proc() {
    if !root_or_skip("meminfo_matches_proc") {
        return;
    }
    // Sizes fixed at boot: equal to both reads, in the first round.
    const FIXED: &[&str] = &[
        "MemTotal",
        "SwapTotal",
        "VmallocTotal",
        "Hugepagesize",
        "HugePages_Total",
    ];
    let agent = Agent::start(&[]);
    // Field -> the family that names it, from the first scrape.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    confirm_in_rounds("meminfo", |round| {
        let before = read_meminfo();
        let m = agent.scrape();
        let after = read_meminfo();
        if round == 0 {
            assert!(
                before.len() > 40,
                "too few meminfo fields: {}",
                before.len()
            );
            let helps = m.helps();
            for field in before.keys() {
                // The family that names this field in its help ("/proc/meminfo field X,
                // in bytes." or "/proc/meminfo field X." for the HugePages_* counts).
                let name = helps
                    .iter()
                    .find(|(_, h)| {
                        h.strip_prefix("/proc/meminfo field ")
                            .and_then(|r| r.strip_prefix(field.as_str()))
                            .is_some_and(|r| r.starts_with(',') || r.starts_with('.'))
                    })
                    .map(|(n, _)| n.clone())
                    .unwrap_or_else(|| panic!("no family for meminfo field {field}"));
                assert!(
                    name.starts_with("memwatch_meminfo_")
                        && name.ends_with(if field.starts_with("HugePages_") {
                            "_pages"
                        } else {
                            "_bytes"
                        }),
                    "{field} -> {name}"
                );
                names.insert(field.clone(), name);
            }
            assert_eq!(
                m.get(
                    "memwatch_scrape_collector_success",
                    &[("collector", "meminfo")]
                ),
                Some(1.0)
            );
        }
        let mut readings = BTreeMap::new();
        for (field, name) in &names {
            let v = m
                .get(name, &[])
                .unwrap_or_else(|| panic!("{name} missing from the scrape"));
            let (b, a) = (before[field] as f64, after[field] as f64);
            if FIXED.contains(&field.as_str()) {
                if round == 0 {
                    let r = Reading::new(Bound::Exact, v, b, a);
                    assert!(r.holds(), "{name} = {v}, /proc/meminfo said {b} then {a}");
                }
                continue;
            }
            readings.insert(field.clone(), Reading::new(Bound::Between, v, b, a));
        }
        readings
    });
    assert!(agent.stop().success());
}

/// `memwatch probes` names a working rung for each hook and a reason for each rung that
/// can't be used; `run` reports the same choice in memwatch_probe_info.
#[test]
fn probes_report_matches_run() {
    if !root_or_skip("probes_report_matches_run") {
        return;
    }
    let mut cmd = Command::new(bin());
    cmd.arg("probes");
    if let Some(mode) = probe_mode() {
        cmd.arg(format!("--probe-mode={mode}"));
    }
    let text = common::run_ok(&mut cmd);
    assert!(
        text.contains("faults/page_fault: run uses tracepoint"),
        "{text}"
    );
    let chosen = check_cow_rungs(&text);

    let agent = Agent::start(&[]);
    let m = agent.scrape();
    assert_eq!(
        m.get(
            "memwatch_probe_info",
            &[
                ("family", "faults"),
                ("hook", "page_fault"),
                ("mode", "tracepoint")
            ]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "memwatch_probe_info",
            &[("family", "cow"), ("hook", "do_wp_page"), ("mode", &chosen)]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert!(agent.stop().success());
}

/// The do_wp_page block of the `memwatch probes` report `text`: the rung run picks
/// (the forced one, if a mode is forced) is marked, and every rung above it says why it
/// can't be used. Returns the rung picked.
fn check_cow_rungs(text: &str) -> String {
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists();
    let cow: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("cow/do_wp_page"))
        .take(7)
        .collect();
    let line = |rung: &str| {
        cow.iter()
            .find(|l| l.trim_start().starts_with(rung))
            .unwrap_or_else(|| panic!("no {rung} line in {cow:?}"))
            .to_string()
    };
    // A forced mode (MEMWATCH_TEST_PROBE_MODE) is the one run must use: the VM
    // harness forces each rung on kernels that have it.
    let forced = probe_mode().filter(|m| m != "auto");
    if !kprobes && forced.is_none() {
        assert!(
            line("kprobe").contains("no: CONFIG_KPROBE_EVENTS not set"),
            "{cow:?}"
        );
    }
    // Whatever run picks, every rung above it says why it can't be used: what failed
    // ("no: ..."), or that --probe-mode ruled it out ("skipped (not tried: ...)").
    let chosen = cow[0].rsplit(' ').next().unwrap().to_string();
    if let Some(mode) = &forced {
        assert_eq!(&chosen, mode, "forced --probe-mode={mode}: {cow:?}");
    }
    for rung in ["fentry", "kprobe", "tracepoint"] {
        if rung == chosen {
            assert!(line(rung).contains('*'), "{cow:?}");
            break;
        }
        let l = line(rung);
        let reason = l
            .split_once("no: ")
            .or_else(|| l.split_once("skipped ("))
            .map_or("", |(_, why)| why);
        assert!(reason.len() > 5, "{rung} has no reason: {l}");
    }
    chosen
}

/// Forcing the tracepoint rung works and is reported.
#[test]
fn forced_tracepoint_mode() {
    if !root_or_skip("forced_tracepoint_mode") {
        return;
    }
    let agent = Agent::start(&["--probe-mode=tracepoint"]);
    let m = agent.scrape();
    assert_eq!(
        m.get(
            "memwatch_probe_info",
            &[("hook", "do_wp_page"), ("mode", "tracepoint")]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert!(m
        .get("memwatch_process_wp_faults_total", &[("pid", "other")])
        .is_some());
    assert!(agent.stop().success());
}

/// Without root or the capabilities: one error line naming them, exit code 2.
#[test]
fn without_privileges_one_line_and_exit_2() {
    for args in [&["run"][..], &["probes"][..]] {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .arg("--log.level=error")
            .stdout(Stdio::null());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::process::CommandExt;
            // nobody: no capabilities after the uid change.
            cmd.uid(65534).gid(65534);
        }
        if args == ["probes"] {
            cmd.arg("--probe-mode=auto");
        } else {
            cmd.arg("--web.listen-address=127.0.0.1:0");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(
            err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
            "{err}"
        );
        assert!(
            err.starts_with("memwatch: error: missing privileges"),
            "{err}"
        );
    }
}

/// A bad config file: the error names the key and the file, exit code 2.
#[test]
fn bad_config_names_the_key() {
    let cfg = TempFile::new("bad.toml", "[web]\nlisten_adress = \":1\"\n");
    let out = Command::new(bin())
        .args(["run", "--config", cfg.0.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("listen_adress"), "{err}");
    assert!(err.contains(cfg.0.to_str().unwrap()), "{err}");

    let out = Command::new(bin())
        .args(["config", "--check", cfg.0.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = Command::new(bin())
        .args(["config", "--print-default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let good = TempFile::new("default.toml", &String::from_utf8_lossy(&out.stdout));
    let out = Command::new(bin())
        .args(["config", "--check", good.0.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With the fentry rung asked for, every hook that attaches runs on its best rung on
/// the kernels the matrix promises it for (Debian 6.1 and 6.12), and the main hook of
/// each family attaches; hooks that attach nowhere are printed.
#[test]
fn every_hook_on_its_best_rung() {
    if !root_or_skip("every_hook_on_its_best_rung") {
        return;
    }
    if probe_mode().as_deref() != Some("fentry") {
        println!("SKIP every_hook_on_its_best_rung: runs on the fentry pass of the VM matrix (MEMWATCH_TEST_PROBE_MODE=fentry)");
        return;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if version < (6, 1) {
        println!(
            "SKIP every_hook_on_its_best_rung: promised for 6.1 and later, this is {}",
            release.trim()
        );
        return;
    }
    let agent = Agent::start(&[]);
    let m = agent.scrape();
    let mode_of = |hook: &str| {
        m.family("memwatch_probe_info")
            .iter()
            .find(|s| s.1.get("hook").map(String::as_str) == Some(hook))
            .and_then(|s| s.1.get("mode").cloned())
            .unwrap_or_default()
    };
    // Every hook, including those whose obvious function the kernel inlines (Debian
    // 6.1 and 6.12 inline wp_page_reuse, 6.12 wp_page_copy too, 5.10 and 6.12
    // dup_mmap): the table hooks functions called across files instead, or names
    // alternatives.
    let mut below = Vec::new();
    for s in m.family("memwatch_probe_degraded") {
        let hook = s.1.get("hook").cloned().unwrap_or_default();
        if s.2 != 0.0 {
            below.push(format!("{hook} ({})", mode_of(&hook)));
        }
    }
    assert!(
        below.is_empty(),
        "hooks below their best rung: {below:?}\n{}",
        m.text
    );
    for hook in [
        "page_fault",
        "handle_mm_fault",
        "do_wp_page",
        "cow_copy",
        "dup_mmap",
        "fork_syscalls",
    ] {
        let want = if hook == "page_fault" || hook == "fork_syscalls" {
            "tracepoint"
        } else {
            "fentry"
        };
        assert_eq!(mode_of(hook), want, "{hook}\n{}", m.text);
    }
    assert!(m.family("memwatch_probe_info").len() >= 20, "{}", m.text);
    assert!(agent.stop().success());
}

/// With a process table far smaller than the processes that fault, rows get evicted
/// (and are counted), and the shown rows plus `other` still add up to the global
/// counters: the per-CPU caches the agent adds to the rows count nothing twice.
#[test]
fn process_rows_and_other_sum_to_the_globals() {
    if !root_or_skip("process_rows_and_other_sum_to_the_globals") {
        return;
    }
    let cfg = TempFile::new(
        "small-table.toml",
        "[tables]\nprocess_max_entries = 8\nprocess_top_n = 3\n",
    );
    let agent = Agent::start(&["--config", cfg.0.to_str().unwrap()]);
    // 64 short-lived processes, each faulting in its own address space.
    let st = Command::new("/bin/sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 64 ]; do /bin/true; i=$((i+1)); done",
        ])
        .status()
        .expect("sh");
    assert!(st.success());
    let m = agent.scrape();
    let evictions = m
        .get("memwatch_table_evictions_total", &[("table", "procs")])
        .unwrap_or(0.0);
    println!("evictions: {evictions}");
    assert!(
        evictions > 0.0,
        "no evictions from an 8-row table\n{}",
        m.text
    );
    let mut kinds: Vec<String> = m
        .family("memwatch_process_page_faults_total")
        .iter()
        .filter_map(|s| s.1.get("kind").cloned())
        .collect();
    kinds.sort();
    kinds.dedup();
    assert!(!kinds.is_empty(), "{}", m.text);
    for kind in kinds {
        let global = m.sum("memwatch_page_faults_total", &[("kind", &kind)]);
        let rows: f64 = m
            .family("memwatch_process_page_faults_total")
            .iter()
            .filter(|s| s.1.get("kind") == Some(&kind))
            .filter(|s| s.1.get("pid").map(String::as_str) != Some("other"))
            .map(|s| s.2)
            .sum();
        let other = m
            .get(
                "memwatch_process_page_faults_total",
                &[("pid", "other"), ("kind", &kind)],
            )
            .unwrap_or(0.0);
        println!("{kind}: rows {rows} + other {other} = global {global}");
        assert!(rows <= global, "{kind}: rows {rows} > global {global}");
        assert_eq!(rows + other, global, "{kind}");
    }
    assert!(agent.stop().success());
}
