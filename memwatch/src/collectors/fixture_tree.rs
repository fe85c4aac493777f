//! `--path.procfs` and `--path.sysfs` reach everything: the collectors, the build info,
//! a fork episode's host context and its watch run on a fake /proc and /sys whose
//! values no real machine has, and every value they report is the fake's.

use std::{collections::HashMap, sync::Arc};

use memwatch_common::{proc, Event, EVENT_FORK};

use super::{build_info::BuildInfo, register_proc, testutil, Registry};
use crate::{
    config::{self, Config},
    episodes::{context::HostContext, Counts, CowSource, Tracker, Watch},
    host::Host,
};

/// The fake machine: pid 4242 is `fixture-srv` in cgroup /fixture/a.
pub(super) fn tree() -> (testutil::TempDir, testutil::TempDir) {
    let p = testutil::TempDir::new("tree-proc");
    let s = testutil::TempDir::new("tree-sys");
    p.write("sys/kernel/osrelease", "9.9.9-fixture\n");
    p.write(
        "meminfo",
        "MemTotal: 4242 kB\nMemAvailable: 99 kB\nSwapTotal: 7 kB\nSwapFree: 3 kB\n",
    );
    p.write("vmstat", "pgfault 987654321\nnr_dirty 17\n");
    p.write(
        "zoneinfo",
        "Node 0, zone   Normal\n  pages free     1000\n        min      10\n        \
         low      20\n        high     30\nNode 0, zone DMA\n  pages free 5\n        \
         low 1\n        high 2\n",
    );
    p.write(
        "pressure/memory",
        "some avg10=1.50 avg60=0.00 avg300=0.00 total=4242000\n\
         full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    );
    p.write("sys/vm/overcommit_memory", "2\n");
    p.write("sys/vm/swappiness", "42\n");
    p.write("self/cgroup", "0::/memwatch\n");
    p.write("4242/comm", "fixture-srv\n");
    p.write(
        "4242/stat",
        "4242 (fixture-srv) S 1 1 1 0 -1 0 777 0 3 0 0 0\n",
    );
    p.write(
        "4242/smaps_rollup",
        &testutil::fixture("smaps_rollup/linux-6.18-host-sleep.txt"),
    );
    p.write(
        "4242/status",
        "Name:\tfixture-srv\nVmRSS:\t 12 kB\nRssAnon:\t 8 kB\n",
    );
    p.write("4242/cgroup", "0::/fixture/a\n");
    s.write(
        "kernel/mm/transparent_hugepage/enabled",
        "always madvise [never]\n",
    );
    s.write(
        "kernel/mm/transparent_hugepage/defrag",
        "always [defer] madvise never\n",
    );
    s.write("devices/system/node/online", "0\n");
    (p, s)
}

/// What the daemon registers before the probes: build info and the /proc and /sys
/// collectors, watching `fixture-*` processes.
pub(super) fn registry(host: &Arc<Host>) -> Registry {
    let cfg = Config {
        processes: config::Processes {
            comm: vec!["fixture-*".into()],
            ..config::Processes::default()
        },
        ..Config::default()
    };
    let mut registry = Registry::default();
    registry.register(Box::new(BuildInfo::new(host)));
    register_proc(&mut registry, &cfg, host);
    registry
}

#[test]
fn collectors_read_only_the_fixture_tree() {
    let (p, s) = tree();
    let host = Arc::new(Host::new(p.path(), s.path()));
    let text = registry(&host).render();
    testutil::check_exposition(&text).unwrap();
    for want in [
        "kernel=\"9.9.9-fixture\"} 1\n",
        "memwatch_meminfo_mem_total_bytes 4343808\n",
        "memwatch_vmstat_pgfault_total 987654321\n",
        "memwatch_vmstat_nr_dirty 17\n",
        "memwatch_zoneinfo_free_pages{node=\"0\",zone=\"DMA\"} 5\n",
        "memwatch_pressure_stall_seconds_total{resource=\"memory\",kind=\"some\"} 4.242\n",
        "memwatch_sysctl_vm_swappiness 42\n",
        "memwatch_sysctl_vm_overcommit_memory 2\n",
        "memwatch_thp_enabled{mode=\"never\"} 1\n",
        "memwatch_thp_defrag{mode=\"defer\"} 1\n",
        "memwatch_process_minor_faults_total{pid=\"4242\",comm=\"fixture-srv\"} 777\n",
        "memwatch_watched_processes 1\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // Only the fixture's lines: four meminfo fields, two vmstat fields, no io pressure,
    // the two sysctls written, no failed collector.
    let count = |prefix: &str| text.matches(&format!("# TYPE {prefix}")).count();
    assert_eq!(count("memwatch_meminfo_"), 4, "{text}");
    assert_eq!(count("memwatch_vmstat_"), 2, "{text}");
    assert_eq!(count("memwatch_sysctl_"), 2, "{text}");
    assert!(!text.contains("resource=\"io\""), "{text}");
    let success: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("memwatch_scrape_collector_success{"))
        .collect();
    assert_eq!(success.len(), 7, "{text}");
    assert!(success.iter().all(|l| l.ends_with(" 1")), "{text}");
}

#[test]
fn episodes_read_only_the_fixture_tree() {
    let (p, s) = tree();
    let host = Arc::new(Host::new(p.path(), s.path()));
    let ctx = HostContext::capture(&host);
    assert_eq!(
        ctx,
        HostContext {
            kernel: "9.9.9-fixture".into(),
            thp_enabled: "never".into(),
            thp_defrag: "defer".into(),
            overcommit_memory: 2,
            swap_total_bytes: 7 * 1024,
            swap_free_bytes: 3 * 1024,
            mem_available_bytes: 99 * 1024,
            free_pages: 1005,
            low_watermark_pages: 21,
            high_watermark_pages: 32,
        }
    );

    // The watch's cgroup rule reads the fixture's /proc: pid 4242 is in /fixture (and
    // so below "/"); pid 1, which every real /proc has, is not in the fixture at all.
    let episodes = config::Episodes {
        watch_comms: vec![],
        watch_cgroups: vec!["/fixture".into()],
        log: "none".into(),
        ..Default::default()
    };
    let watch = Watch::new(&episodes);
    assert_eq!(
        watch.matches(&host, 4242, "x").as_deref(),
        Some("cgroup:/fixture")
    );
    let everything = Watch::new(&config::Episodes {
        watch_comms: vec![],
        watch_cgroups: vec!["/".into()],
        ..Default::default()
    });
    assert_eq!(everything.matches(&host, 1, "x"), None);

    // A fork of pid 4242: the episode's RSS and host context are the fixture's.
    let mut t = Tracker::new(&episodes, CowSource::Copies, host.clone()).unwrap();
    let rows: HashMap<u32, Counts> = HashMap::from([(4242, [0; proc::COUNTERS])]);
    let mut comm = [0u8; 16];
    comm[..11].copy_from_slice(b"fixture-srv");
    let fork = Event {
        kind: EVENT_FORK,
        tgid: 4242,
        child: 4243,
        exit_code: 0,
        ts_ns: 0,
        fork_ns: 1_000_000,
        dup_mmap_ns: 0,
        comm,
    };
    t.on_event(&fork, &rows);
    let active = t.active();
    assert_eq!(active.len(), 1);
    let e = &active[0];
    assert_eq!(
        (e.parent_rss_bytes, e.parent_anon_bytes),
        (12 * 1024, 8 * 1024)
    );
    assert_eq!(e.host, ctx);
    // Child 4243 has no directory in the fixture: the sample ends the episode.
    t.sample(&rows);
    assert!(t.active().is_empty());
    assert_eq!(t.finished.len(), 1);
}
