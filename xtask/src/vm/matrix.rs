//! Which integration-test binary runs on which probe rung in the VM matrix.
//!
//! A binary whose results depend on the rung (it starts agents with the rung forced,
//! `MEMWATCH_TEST_PROBE_MODE`, and checks what that rung's programs count or report)
//! runs on every rung the kernel supports. A binary whose results don't runs once per
//! kernel, on the kernel's best supported rung (the first of fentry, kprobe,
//! tracepoint), where an agent it starts exports the most metric families. With
//! `--rung` given, every selected binary runs on each rung named.

/// Where a binary runs when no `--rung` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rungs {
    /// On every rung the kernel supports.
    All,
    /// Once per kernel, on its best supported rung.
    Once,
}

use Rungs::{All, Once};

/// Every integration-test binary of memwatch (memwatch/tests/*.rs), with where it runs
/// and why. A binary missing here runs on every rung (and a unit test below fails
/// until it is added).
pub const BINARIES: &[(&str, Rungs)] = &[
    // Each rung's own counters against the kernel's: fsync's written pages come from
    // do_writepages on fentry/kprobe (which also names their device) and from ext4's
    // tracepoint on the tracepoint rung; a fork's address-space copy time (dup_mmap)
    // exists only on the function rungs; and the dirty, reclaim and LRU counts
    // (tracepoints on every rung) are compared with the rung's other programs loaded
    // beside them, as a user of that rung runs them.
    ("accuracy", All),
    // Exact write-protect fault counts from the rung's COW program; copies versus
    // reuses only where a function hook attaches; memwatch_probe_info and bpftool must
    // show the forced rung's program type for do_wp_page.
    ("cow_fork", All),
    // The dashboards, rules and alerts are checked as files (compiled in), without an
    // agent. promtool, kubernetes-validate and the live Prometheus test skip in the
    // guests (no such tools, no source tree). Were the live test to run there, the
    // best rung feeds the most panels (COW copies, fault latency and dup_mmap panels
    // need fentry or kprobe); the host, tracepoint-only, lists what that rung can't feed.
    ("dashboards", Once),
    // The fork/exit ring buffer's loss and filter counts: the fork hooks attach
    // differently on each rung (the address-space copy on fentry/kprobe only), and
    // the storm's exact sums must hold on each.
    ("events", All),
    // `memwatch probes --probe-mode=X` and `run` must both pick the forced rung, with a
    // reason for every rung above it; every_hook_on_its_best_rung runs on the fentry
    // pass only; the process-table sums are over what the rung's programs counted.
    ("host", All),
    // Hostile comms and the table caps: the names and the userspace tables are the
    // same whichever rung feeds them; once, on the best rung (the most families).
    ("hostile", Once),
    // The /proc and /sys collectors with the eBPF collector off (`bpf = false`): the
    // forced rung never reaches a probe. The files differ per kernel, so once per
    // kernel. The one test that turns eBPF on (promtool check metrics) skips in the
    // guests (no promtool); were it to run, the best rung's scrape has the most
    // families to lint.
    ("kernel_accounting", Once),
    // A stop at any moment must leave none of the rung's programs, links or maps
    // behind: each rung's program types (fentry links, perf-event tracepoints and
    // kprobes) detach differently.
    ("lifecycle", All),
    // Skips in the guests today (no redis-server in the initramfs), so a rung costs a
    // SKIP line. Where it runs, the episodes' COW bytes come from the rung's programs
    // (page copies on fentry/kprobe, write-protect faults on tracepoint).
    ("redis", All),
    // The notify test attaches on the forced rung, reports the rungs in STATUS=,
    // drops its capabilities, and must still scrape and then detach that rung's
    // programs and exit 0; the run as nobody with only the unit's capabilities (skipped
    // in the guests: busybox has no util-linux setpriv) checks they suffice for the
    // rung's attach path.
    ("service", All),
    // The HTTP boundary (TLS, auth, limits) with the eBPF collector off: no rung.
    ("web", Once),
];

/// Where `binary` runs; one not in the table runs on every rung.
pub fn rungs_of(binary: &str) -> Rungs {
    BINARIES
        .iter()
        .find(|(b, _)| *b == binary)
        .map_or(All, |(_, r)| *r)
}

/// One boot's test runs, in order: each rung with the binaries run on it.
pub type Plan = Vec<(&'static str, Vec<String>)>;

/// The runs on a kernel that supports `supported` (best first, a subset of `RUNGS` in
/// its order). `explicit`: the rungs were named with `--rung`, so every binary runs on
/// each of them.
pub fn plan(supported: &[&'static str], binaries: &[&str], explicit: bool) -> Plan {
    let best = supported.first().copied();
    supported
        .iter()
        .map(|&r| {
            let names = binaries
                .iter()
                .filter(|b| explicit || rungs_of(b) == All || Some(r) == best)
                .map(|b| b.to_string())
                .collect();
            (r, names)
        })
        .filter(|(_, names): &(_, Vec<String>)| !names.is_empty())
        .collect()
}

/// The number of binary runs in a plan.
pub fn runs(plan: &Plan) -> usize {
    plan.iter().map(|(_, b)| b.len()).sum()
}

/// The kernel command-line argument that hands the plan to /init:
/// `memwatch.plan=fentry:accuracy+cow_fork,kprobe:accuracy` (rungs in order, each with
/// its binaries in order).
pub fn cmdline(plan: &Plan) -> String {
    let steps: Vec<String> = plan
        .iter()
        .map(|(r, names)| format!("{r}:{}", names.join("+")))
        .collect();
    format!("memwatch.plan={}", steps.join(","))
}

/// The binaries a kernel doesn't run on `rung` because it lacks that rung: those the
/// plan for every requested rung (`wanted`) has on it, except, unless the rungs were
/// named (`explicit`), once-per-kernel binaries that still run on another rung of
/// `actual`.
pub fn lost_on(rung: &str, wanted: &Plan, actual: &Plan, explicit: bool) -> Vec<String> {
    let runs_somewhere = |b: &String| actual.iter().any(|(_, names)| names.contains(b));
    wanted
        .iter()
        .filter(|(r, _)| *r == rung)
        .flat_map(|(_, names)| names.iter())
        .filter(|b| explicit || rungs_of(b) == All || !runs_somewhere(b))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL3: &[&str] = &["fentry", "kprobe", "tracepoint"];

    fn names(p: &Plan) -> Vec<(&str, Vec<&str>)> {
        p.iter()
            .map(|(r, b)| (*r, b.iter().map(String::as_str).collect()))
            .collect()
    }

    /// Every test binary of memwatch has a row, and every row a binary: a new one gets
    /// a decision (and its reason) here.
    #[test]
    fn the_table_names_every_test_binary() {
        let dir = crate::workspace_root().join("memwatch/tests");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                (p.extension()? == "rs")
                    .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
            })
            .collect();
        on_disk.sort();
        let mut table: Vec<String> = BINARIES.iter().map(|(b, _)| b.to_string()).collect();
        table.sort();
        assert_eq!(on_disk, table, "memwatch/tests/*.rs against BINARIES");
    }

    #[test]
    fn once_binaries_run_on_the_best_supported_rung_only() {
        let bins = ["accuracy", "dashboards", "kernel_accounting", "host"];
        let p = plan(ALL3, &bins, false);
        assert_eq!(
            names(&p),
            [
                (
                    "fentry",
                    vec!["accuracy", "dashboards", "kernel_accounting", "host"]
                ),
                ("kprobe", vec!["accuracy", "host"]),
                ("tracepoint", vec!["accuracy", "host"]),
            ]
        );
        assert_eq!(runs(&p), 8);
        assert_eq!(
            cmdline(&p),
            "memwatch.plan=fentry:accuracy+dashboards+kernel_accounting+host,\
             kprobe:accuracy+host,tracepoint:accuracy+host"
        );
        // Without fentry, the best rung is kprobe.
        let p = plan(&["kprobe", "tracepoint"], &bins, false);
        assert_eq!(
            names(&p),
            [
                (
                    "kprobe",
                    vec!["accuracy", "dashboards", "kernel_accounting", "host"]
                ),
                ("tracepoint", vec!["accuracy", "host"]),
            ]
        );
    }

    #[test]
    fn named_rungs_run_every_binary() {
        let bins = ["cow_fork", "dashboards"];
        let p = plan(&["kprobe"], &bins, true);
        assert_eq!(names(&p), [("kprobe", vec!["cow_fork", "dashboards"])]);
        let p = plan(&["kprobe", "tracepoint"], &bins, true);
        assert_eq!(runs(&p), 4);
        // Only once-per-kernel binaries: one rung, nothing empty.
        let p = plan(ALL3, &["dashboards"], false);
        assert_eq!(names(&p), [("fentry", vec!["dashboards"])]);
        assert_eq!(cmdline(&p), "memwatch.plan=fentry:dashboards");
        assert!(plan(&[], &bins, false).is_empty());
    }

    #[test]
    fn a_missing_rung_loses_only_what_runs_nowhere_else() {
        let bins = ["cow_fork", "dashboards"];
        let wanted = plan(ALL3, &bins, false);
        let actual = plan(&["kprobe", "tracepoint"], &bins, false);
        // dashboards moves to kprobe; cow_fork's fentry run is lost.
        assert_eq!(lost_on("fentry", &wanted, &actual, false), ["cow_fork"]);
        // No rung at all: everything wanted is lost, dashboards on fentry only.
        let none = plan(&[], &bins, false);
        assert_eq!(
            lost_on("fentry", &wanted, &none, false),
            ["cow_fork", "dashboards"]
        );
        assert_eq!(lost_on("kprobe", &wanted, &none, false), ["cow_fork"]);
        // Named rungs: every binary on each.
        let wanted = plan(&["fentry", "kprobe"], &bins, true);
        let actual = plan(&["kprobe"], &bins, true);
        assert_eq!(
            lost_on("fentry", &wanted, &actual, true),
            ["cow_fork", "dashboards"]
        );
    }

    #[test]
    fn unknown_binaries_run_everywhere() {
        assert_eq!(rungs_of("a_new_test"), All);
        assert_eq!(rungs_of("dashboards"), Once);
    }
}
