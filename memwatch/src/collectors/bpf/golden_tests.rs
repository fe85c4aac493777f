//! The exposition's names guarded: a render of a synthetic snapshot (every count
//! non-zero, a few processes, two cgroups, a device, keyed histograms) under four sets
//! of rungs, as (family, label names, help) lines against
//! `tests/fixtures/metric-names/bpf-<set>.golden` (`UPDATE_GOLDEN=1` rewrites them).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use memwatch_common::{global, hist, node, proc, DEV_DIRTIED, DEV_WRITTEN};

use super::render::{render, Snapshot, Stats};
use crate::{
    collectors::{attribution::Row, testutil::check_golden},
    probes::{
        catalogue::{Attached, Counters, Device},
        table::{Mode, HOOKS},
    },
};

fn row(tgid: u32, comm: &str, base: u64) -> Row {
    let mut counts = [0; proc::COUNTERS];
    for (i, c) in counts.iter_mut().enumerate() {
        *c = base + i as u64;
    }
    Row {
        tgid,
        comm: comm.into(),
        counts,
    }
}

fn snapshot() -> Snapshot {
    let rows = vec![
        row(10, "redis", 100),
        row(11, "postgres", 50),
        row(12, "java", 7),
    ];
    let mut cgroups = HashMap::new();
    cgroups.insert("/a".to_string(), rows[0].counts);
    cgroups.insert("/b".to_string(), rows[1].counts);
    let globals: Vec<u64> = (0..global::SLOTS as u64).map(|i| 1000 + i).collect();
    let device = |what, reason| Device {
        name: "254:0".into(),
        what,
        reason,
        pages: 9,
    };
    let buckets = [3u64; hist::BUCKETS];
    let hists: BTreeMap<_, _> = (0..hist::COUNT).map(|h| (h, buckets)).collect();
    let mut keyed = BTreeMap::new();
    keyed.insert(
        (hist::FORK, 0, "redis".to_string()),
        ([1; hist::BUCKETS], 500),
    );
    keyed.insert(
        (hist::THROTTLE, 10, "redis".to_string()),
        ([1; hist::BUCKETS], 700),
    );
    Snapshot {
        rows,
        cgroups,
        counters: Counters {
            globals,
            nodes: vec![0],
            node_vals: (0..(node::MAX_NODES * node::COUNTERS) as u64).collect(),
            devices: vec![device(DEV_DIRTIED, 0), device(DEV_WRITTEN, 1)],
            page_size: 4096,
        },
        hists,
        keyed,
        stats: Stats {
            proc_inserts: 20,
            proc_insert_errors: 1,
            keyed_insert_errors: 2,
            tp_read_errors: 3,
            missed_entries: 4,
        },
        deleted: 5,
        procs_evicted: 9,
        inconsistent: 6,
        max_entries: 10240,
        tables: vec![("cgroups", 2, 1024, 7), ("pids", 3, 10242, 8)],
    }
}

/// Each hook on the rung `pick` chooses for it (None: not attached).
fn attached(pick: impl Fn(&[Mode]) -> Option<Mode>) -> Attached {
    HOOKS
        .iter()
        .filter_map(|h| {
            let modes: Vec<Mode> = h.rungs.iter().map(|r| r.mode).collect();
            pick(&modes).map(|m| (h.id, m))
        })
        .collect()
}

/// What a scrape renders with every hook on its best rung (for the whole scrape's
/// golden, `collectors::scrape_names_tests`).
pub(in crate::collectors) fn families_on_best_rungs() -> Vec<prometheus::proto::MetricFamily> {
    render(&snapshot(), &attached(|m| m.first().copied()), 2)
}

/// The (family, label names, help) lines of a render, sorted.
fn names(att: &Attached) -> String {
    let mut lines = BTreeSet::new();
    for f in render(&snapshot(), att, 2) {
        for m in f.get_metric() {
            let mut labels: Vec<&str> = m.get_label().iter().map(|l| l.name()).collect();
            labels.sort();
            lines.insert(format!("{}\t{}\t{}", f.name(), labels.join(","), f.help()));
        }
    }
    lines.into_iter().map(|l| l + "\n").collect()
}

fn check(set: &str, att: &Attached) {
    check_golden(
        &format!("tests/fixtures/metric-names/bpf-{set}.golden"),
        &names(att),
    );
}

#[test]
fn names_on_the_best_rungs() {
    check("fentry", &attached(|m| m.first().copied()));
}

#[test]
fn names_on_the_kprobe_rungs() {
    check(
        "kprobe",
        &attached(|m| {
            if m.contains(&Mode::Kprobe) {
                Some(Mode::Kprobe)
            } else {
                m.first().copied()
            }
        }),
    );
}

#[test]
fn names_on_the_tracepoint_rungs() {
    check(
        "tracepoint",
        &attached(|m| m.contains(&Mode::Tracepoint).then_some(Mode::Tracepoint)),
    );
}

/// What `--probe-mode=tracepoint` attaches where every rung can: the hooks with a
/// tracepoint rung on it, the others on their own best (the VM runs' captures).
#[test]
fn names_with_the_tracepoint_mode_forced() {
    check(
        "tracepoint-forced",
        &attached(|m| {
            if m.contains(&Mode::Tracepoint) {
                Some(Mode::Tracepoint)
            } else {
                m.first().copied()
            }
        }),
    );
}

/// Processes that name themselves like memwatch's aggregate row, or with characters
/// the text format must escape, or with bytes that are not UTF-8: the exposition is
/// valid, no two series are the same (comms that read the same after the lossy
/// conversion are merged), and each name comes out as the kernel has it.
#[test]
fn hostile_comms_make_a_valid_exposition_without_duplicates() {
    use crate::{collectors::testutil::check_exposition, metrics::Text, parse::comm_str};
    let kernel_comm = |b: &[u8]| {
        let mut c = [0u8; memwatch_common::COMM_LEN];
        c[..b.len()].copy_from_slice(b);
        comm_str(&c)
    };
    let names: [&[u8]; 9] = [
        b"other",
        b"(other processes",
        b"a\"b",
        b"back\\slash",
        b"new\nline",
        b"{brace}",
        b"bad\xff\xfename",
        b"bad\xfe\xffname",
        b"",
    ];
    let mut s = snapshot();
    s.rows.clear();
    s.keyed.clear();
    for (i, n) in names.iter().enumerate() {
        let comm = kernel_comm(n);
        s.rows.push(row(100 + i as u32, &comm, 10 + i as u64));
        let e = s
            .keyed
            .entry((hist::FORK, 0, comm.clone()))
            .or_insert(([0; hist::BUCKETS], 0));
        e.0[12] += 1;
        e.1 += 3000;
        s.keyed.insert(
            (hist::THROTTLE, 100 + i as u32, comm),
            ([1; hist::BUCKETS], 7),
        );
    }
    let att = attached(|m| m.first().copied());
    let mut text = Text::default();
    text.families(&render(&s, &att, 100));
    let text = text.into_string();
    check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // Prometheus drops empty labels: series that differ only in one are the same.
    let mut seen = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.rsplit_once(' ').unwrap().0;
        let normal = series.replace(",comm=\"\"", "").replace("{comm=\"\",", "{");
        assert!(seen.insert(normal.clone()), "series twice: {normal}");
    }
    for want in [
        "memwatch_fork_duration_seconds_count{comm=\"other\"} 1\n",
        "memwatch_fork_duration_seconds_count{comm=\"(other processes)\"} ",
        "memwatch_fork_duration_seconds_count{comm=\"a\\\"b\"} 1\n",
        "memwatch_fork_duration_seconds_count{comm=\"back\\\\slash\"} 1\n",
        "memwatch_fork_duration_seconds_count{comm=\"new\\nline\"} 1\n",
        "memwatch_fork_duration_seconds_count{comm=\"{brace}\"} 1\n",
        // Two comms that differ only in their invalid bytes: one series, both counted.
        "memwatch_fork_duration_seconds_count{comm=\"bad\u{fffd}\u{fffd}name\"} 2\n",
        "memwatch_process_page_faults_total{pid=\"100\",comm=\"other\",",
        "memwatch_process_page_faults_total{pid=\"other\",comm=\"(other processes)\",",
        "memwatch_dirty_throttle_pause_seconds_count{pid=\"106\",comm=\"bad\u{fffd}\u{fffd}name\"} ",
        "memwatch_dirty_throttle_pause_seconds_count{pid=\"107\",comm=\"bad\u{fffd}\u{fffd}name\"} ",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}
