//! A whole scrape's names guarded: every collector the daemon registers (build info,
//! the /proc and /sys collectors on the fixture tree, the eBPF counters with every hook
//! on its best rung, fork episodes, probe info, the registry's own families), as
//! (family, label names) lines against `tests/fixtures/metric-names/scrape.golden`
//! (`UPDATE_GOLDEN=1` rewrites it; review the diff). A metric or label renamed,
//! dropped or added anywhere shows here.

use parking_lot::Mutex;
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use memwatch_common::{proc, Event, EVENT_EXIT, EVENT_FORK};
use prometheus::proto::MetricFamily;

use super::{
    bpf::golden_tests::families_on_best_rungs,
    episodes::Episodes,
    fixture_tree::{registry, tree},
    probes::ProbeInfo,
    testutil, Collector,
};
use crate::{
    config,
    episodes::{Counts, CowSource, Tracker},
    host::Host,
    probes::{table::HOOKS, HookOutcome},
};

/// Families rendered elsewhere, served as a collector.
struct Rendered(&'static str, Vec<MetricFamily>);

impl Collector for Rendered {
    fn name(&self) -> &'static str {
        self.0
    }

    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
        out.extend(self.1.iter().cloned());
        Ok(())
    }
}

/// A tracker with one finished episode of `fixture-srv` (pid 4242 of the tree).
fn tracker(host: &Arc<Host>) -> Tracker {
    let episodes = config::Episodes {
        watch_comms: vec!["fixture-*".into()],
        log: "none".into(),
        ..Default::default()
    };
    let mut t = Tracker::new(&episodes, CowSource::Copies, host.clone()).unwrap();
    let rows: HashMap<u32, Counts> = HashMap::from([(4242, [1; proc::COUNTERS])]);
    let mut comm = [0u8; 16];
    comm[..11].copy_from_slice(b"fixture-srv");
    let event = |kind, tgid, child, ts_ns| Event {
        kind,
        tgid,
        child,
        exit_code: 0,
        ts_ns,
        fork_ns: 1_000_000,
        dup_mmap_ns: 0,
        comm,
    };
    t.on_event(&event(EVENT_FORK, 4242, 4243, 1_000), &rows);
    t.on_event(&event(EVENT_EXIT, 4243, 0, 2_000_000_000), &rows);
    assert_eq!(t.finished.len(), 1, "the episode finished");
    t
}

#[test]
fn a_scrape_has_the_golden_names() {
    let (p, s) = tree();
    // Every knob (the tree has two), so each family shows.
    for (knob, v) in [
        ("dirty_ratio", "20"),
        ("dirty_background_ratio", "10"),
        ("dirty_bytes", "4096"),
        ("dirty_background_bytes", "4096"),
        ("dirty_expire_centisecs", "3000"),
        ("dirty_writeback_centisecs", "500"),
        ("min_free_kbytes", "67584"),
        ("watermark_scale_factor", "10"),
    ] {
        p.write(&format!("sys/vm/{knob}"), &format!("{v}\n"));
    }
    let host = Arc::new(Host::new(p.path(), s.path()));
    let mut registry = registry(&host);
    let outcomes: Vec<HookOutcome> = HOOKS
        .iter()
        .map(|hook| HookOutcome {
            hook,
            attempts: Vec::new(),
            chosen: Some(hook.rungs[0].mode),
        })
        .collect();
    registry.register(Box::new(Episodes::new(Arc::new(Mutex::new(tracker(
        &host,
    ))))));
    registry.register(Box::new(Rendered("bpf", families_on_best_rungs())));
    registry.register(Box::new(ProbeInfo::new(outcomes)));
    let text = registry.render();
    testutil::check_exposition(&text).unwrap();
    let mut lines = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.rsplit_once(' ').expect("a sample line").0;
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let labels = testutil::parse_labels(labels.strip_suffix('}').unwrap()).unwrap();
        let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        lines.insert(format!("{name} {}", names.join(",")));
    }
    let golden: String = lines.into_iter().map(|l| l + "\n").collect();
    testutil::check_golden("tests/fixtures/metric-names/scrape.golden", &golden);
}
