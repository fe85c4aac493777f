//! Rendering: a pure function from what was read (`Snapshot`), the rungs the hooks
//! attached on and the probe areas' catalogue (`probes::table::AREAS`) to metric
//! families.

use std::collections::{BTreeMap, HashMap, HashSet};

use memwatch_common::hist;
use prometheus::proto::MetricFamily;

use super::read::Counts;
use crate::{
    collectors::attribution::{top_n, Row, OTHER_CGROUP, OTHER_COMM, OTHER_PID},
    metrics::Family,
    probes::{
        catalogue::{at, Attached, Counters, Feeds, Hist, KeyedHist, Metric, Series},
        table::AREAS,
    },
};

/// A keyed histogram's identity: (hist, tgid or 0, comm).
pub type KeyedId = (u32, u32, String);
/// A keyed histogram: bucket counts and sum (ns).
pub type KeyedCounts = ([u64; hist::BUCKETS], u64);

/// The programs' own bookkeeping (`STATS`).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub proc_inserts: u64,
    pub proc_insert_errors: u64,
    pub keyed_insert_errors: u64,
    pub tp_read_errors: u64,
    pub missed_entries: u64,
}

/// What one scrape read, aged and accounted.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The process rows to export, with current names for the ones shown (`shown`).
    pub rows: Vec<Row>,
    /// The per-cgroup totals.
    pub cgroups: HashMap<String, Counts>,
    pub counters: Counters,
    /// The global histograms read (`hists_wanted`), by hist id.
    pub hists: BTreeMap<u32, [u64; hist::BUCKETS]>,
    pub keyed: BTreeMap<KeyedId, KeyedCounts>,
    pub stats: Stats,
    /// Rows memwatch deleted from `PROCS` (aged out).
    pub deleted: u64,
    /// Rows the kernel evicted from `PROCS` (full), never less than reported before.
    pub procs_evicted: u64,
    /// `ProcTable::inconsistent`.
    pub inconsistent: u64,
    /// `tables.process_max_entries`.
    pub max_entries: u32,
    /// memwatch's own tables: (name, entries, capacity, evictions).
    pub tables: Vec<(&'static str, u64, u64, u64)>,
}

/// Every area's feeds.
fn feeds() -> impl Iterator<Item = &'static Feeds> {
    AREAS.iter().map(|a| &a.feeds)
}

/// The per-process metrics this set of attached hooks feeds, each with the series it
/// has.
fn proc_metrics(att: &Attached) -> Vec<(&'static Metric, Vec<&'static Series>)> {
    feeds()
        .flat_map(|f| f.procs)
        .filter(|m| m.when.holds(att))
        .map(|m| (m, m.series.iter().filter(|s| s.when.holds(att)).collect()))
        .collect()
}

/// The columns of a metric's series.
fn cols_of(series: &[&Series]) -> Vec<usize> {
    series.iter().flat_map(|s| s.cols.iter().copied()).collect()
}

fn sum(counts: &Counts, cols: &[usize]) -> u64 {
    cols.iter().filter_map(|&c| counts.get(c)).sum()
}

/// The top processes of a metric.
fn top_procs(rows: &[Row], series: &[&Series], n: usize) -> Vec<usize> {
    let cols = cols_of(series);
    top_n(rows, n, |r| r.sum(&cols), |a, b| a.tgid.cmp(&b.tgid), false)
}

/// The global histograms a render of these hooks needs.
pub fn hists_wanted(att: &Attached) -> Vec<u32> {
    let keyed = feeds().flat_map(|f| f.keyed_hists).map(|k| &k.hist);
    let global = feeds().flat_map(|f| f.hists);
    keyed
        .chain(global)
        .filter(|h| h.when.holds(att))
        .map(|h| h.hist)
        .collect()
}

/// The rows some metric shows (whose names are worth looking up).
pub fn shown(rows: &[Row], att: &Attached, n: usize) -> HashSet<usize> {
    proc_metrics(att)
        .iter()
        .flat_map(|(_, series)| top_procs(rows, series, n))
        .collect()
}

/// The metric families of a snapshot.
pub fn render(s: &Snapshot, att: &Attached, top: usize) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    for (m, series) in proc_metrics(att) {
        render_proc_metric(&mut out, s, m, &series, top);
    }
    let holds = |h: &Hist| h.when.holds(att);
    for k in feeds().flat_map(|f| f.keyed_hists) {
        if holds(&k.hist) {
            render_keyed_hist(&mut out, s, k, top);
        }
    }
    for h in feeds().flat_map(|f| f.hists) {
        if holds(h) {
            render_hist(&mut out, s, h);
        }
    }
    for c in feeds().flat_map(|f| f.custom) {
        if c.when.holds(att) {
            (c.render)(&s.counters, &mut out);
        }
    }
    for m in feeds().flat_map(|f| f.counters) {
        if m.when.holds(att) {
            render_counter(&mut out, s, m);
        }
    }
    for m in feeds().flat_map(|f| f.nodes) {
        if m.when.holds(att) {
            render_node_metric(&mut out, s, m);
        }
    }
    render_health(&mut out, s);
    out
}

/// Labels naming a row of a top-N family (pid and comm, or cgroup).
type Ids<'a> = Vec<(&'static str, &'a str)>;

/// One family of "top N plus `other`": for each series, a sample per row of `top`
/// (its labels and counts), then one for the rest (`other`: the global value less
/// what the rows show).
fn top_plus_other(
    mut f: Family,
    m: &Metric,
    series: &[&Series],
    top: &[(Ids<'_>, &Counts)],
    other: Ids<'_>,
    globals: &[u64],
    out: &mut Vec<MetricFamily>,
) {
    for s in series {
        let global: u64 = s.cols.iter().map(|&c| at(globals, c)).sum();
        let mut shown = 0u64;
        for (ids, counts) in top {
            let n = sum(counts, s.cols);
            shown += n;
            let mut labels = ids.clone();
            if let Some(l) = m.label {
                labels.push((l, s.value));
            }
            f.sample(&labels, n as f64 * m.scale);
        }
        let mut labels = other.clone();
        if let Some(l) = m.label {
            labels.push((l, s.value));
        }
        f.sample(&labels, global.saturating_sub(shown) as f64 * m.scale);
    }
    f.push_to(out);
}

/// `memwatch_process_<name>` (the top processes) and `memwatch_cgroup_<name>` (the
/// largest cgroups by this metric), each with the rest in `other`.
fn render_proc_metric(
    out: &mut Vec<MetricFamily>,
    s: &Snapshot,
    m: &Metric,
    series: &[&Series],
    n: usize,
) {
    let globals = &s.counters.globals;
    let top = top_procs(&s.rows, series, n);
    let top: Vec<&Row> = top.iter().filter_map(|&i| s.rows.get(i)).collect();
    let pids: Vec<String> = top.iter().map(|r| r.tgid.to_string()).collect();
    let rows: Vec<(Ids, &Counts)> = top
        .iter()
        .zip(&pids)
        .map(|(r, pid)| {
            (
                vec![("pid", pid.as_str()), ("comm", r.comm.as_str())],
                &r.counts,
            )
        })
        .collect();
    let f = Family::counter(
        format!("memwatch_process_{}", m.name),
        format!(
            "{} Per process: the top processes, the rest in pid=\"other\" (comm=\"{OTHER_COMM}\").",
            m.help
        ),
    );
    let other = vec![("pid", OTHER_PID), ("comm", OTHER_COMM)];
    top_plus_other(f, m, series, &rows, other, globals, out);

    let cols = cols_of(series);
    let cgs: Vec<(&String, &Counts)> = s.cgroups.iter().collect();
    let top = top_n(&cgs, n, |c| sum(c.1, &cols), |a, b| a.0.cmp(b.0), false);
    let cgs: Vec<(Ids, &Counts)> = top
        .iter()
        .filter_map(|&i| cgs.get(i))
        .map(|(path, counts)| (vec![("cgroup", path.as_str())], *counts))
        .collect();
    let f = Family::counter(
        format!("memwatch_cgroup_{}", m.name),
        format!(
            "{} Per cgroup (memory controller's hierarchy), the rest in cgroup=\"other\".",
            m.help
        ),
    );
    top_plus_other(
        f,
        m,
        series,
        &cgs,
        vec![("cgroup", OTHER_CGROUP)],
        globals,
        out,
    );
}

/// Exported histogram buckets: bit lengths 10..=36, upper bounds 2^b ns (1 µs .. 69 s).
const HIST_BUCKETS: std::ops::RangeInclusive<usize> = 10..=36;

/// Cumulative Prometheus buckets from per-bit-length counts.
fn prom_buckets(counts: &[u64; hist::BUCKETS]) -> (Vec<(f64, u64)>, u64) {
    let mut cum = 0u64;
    let mut out = Vec::with_capacity(HIST_BUCKETS.clone().count());
    for (b, c) in counts.iter().enumerate() {
        cum += c;
        if HIST_BUCKETS.contains(&b) {
            out.push(((1u64 << b) as f64 * 1e-9, cum));
        }
    }
    (out, cum)
}

/// A global histogram's buckets, as read.
fn global_hist(s: &Snapshot, h: u32) -> [u64; hist::BUCKETS] {
    s.hists.get(&h).copied().unwrap_or([0; hist::BUCKETS])
}

/// A histogram kept per process or command name: the top ones by count, the rest
/// (the global histogram less them) in `other`.
fn render_keyed_hist(out: &mut Vec<MetricFamily>, s: &Snapshot, k: &KeyedHist, n: usize) {
    let h = &k.hist;
    let groups: Vec<(&KeyedId, &KeyedCounts)> =
        s.keyed.iter().filter(|(id, _)| id.0 == h.hist).collect();
    let top = top_n(
        &groups,
        n,
        |g| g.1 .0.iter().sum(),
        |a, b| a.0.cmp(b.0),
        true,
    );
    let mut rest = global_hist(s, h.hist);
    let mut rest_sum = s.counters.global(h.sum_col);
    let mut f = Family::histogram(h.name, h.help);
    for ((_, tgid, comm), (counts, sum)) in top.iter().filter_map(|&i| groups.get(i).copied()) {
        for (r, c) in rest.iter_mut().zip(counts.iter()) {
            *r = r.saturating_sub(*c);
        }
        rest_sum = rest_sum.saturating_sub(*sum);
        let (buckets, count) = prom_buckets(counts);
        let pid = tgid.to_string();
        let labels: Vec<(&str, &str)> = if k.per_process {
            vec![("pid", &pid), ("comm", comm)]
        } else {
            vec![("comm", comm)]
        };
        f.histogram_sample(&labels, &buckets, count, *sum as f64 * 1e-9);
    }
    let (buckets, count) = prom_buckets(&rest);
    let labels: Vec<(&str, &str)> = if k.per_process {
        vec![("pid", OTHER_PID), ("comm", OTHER_COMM)]
    } else {
        vec![("comm", OTHER_COMM)]
    };
    f.histogram_sample(&labels, &buckets, count, rest_sum as f64 * 1e-9);
    f.push_to(out);
}

fn render_hist(out: &mut Vec<MetricFamily>, s: &Snapshot, h: &Hist) {
    let (buckets, count) = prom_buckets(&global_hist(s, h.hist));
    let mut f = Family::histogram(h.name, h.help);
    f.histogram_sample(
        &[],
        &buckets,
        count,
        s.counters.global(h.sum_col) as f64 * 1e-9,
    );
    f.push_to(out);
}

/// A counter of `GLOBALS` slots.
fn render_counter(out: &mut Vec<MetricFamily>, s: &Snapshot, m: &Metric) {
    let mut f = Family::counter(m.name, m.help);
    for series in m.series {
        let v = s.counters.globals_sum(series.cols);
        let labels: Vec<(&str, &str)> = m.label.map(|l| (l, series.value)).into_iter().collect();
        f.sample(&labels, v as f64 * m.scale);
    }
    f.push_to(out);
}

/// A per-node counter, for the nodes that exist.
fn render_node_metric(out: &mut Vec<MetricFamily>, s: &Snapshot, m: &Metric) {
    let c = &s.counters;
    let mut f = Family::counter(m.name, m.help);
    for &nid in &c.nodes {
        let n = nid.to_string();
        for series in m.series {
            let v: u64 = series.cols.iter().map(|&i| c.node_val(nid, i)).sum();
            let mut labels = vec![("node", n.as_str())];
            if let Some(l) = m.label {
                labels.push((l, series.value));
            }
            f.sample(&labels, v as f64 * m.scale);
        }
    }
    f.push_to(out);
}

/// The in-kernel tables' and the programs' own health.
fn render_health(out: &mut Vec<MetricFamily>, s: &Snapshot) {
    let live = s.rows.len();
    let st = &s.stats;
    let mut f = Family::gauge(
        "memwatch_table_entries",
        "Rows in a table: the in-kernel process table (procs), or one of memwatch's own \
         (cgroups, pids, episode_comms, episodes_active, episodes_finished).",
    );
    f.sample(&[("table", "procs")], live as f64);
    for (name, entries, _, _) in &s.tables {
        f.sample(&[("table", name)], *entries as f64);
    }
    f.push_to(out);
    let mut f = Family::gauge(
        "memwatch_table_max_entries",
        "Capacity of a table (procs: tables.process_max_entries; memwatch's own: their \
         tables.*_max_entries).",
    );
    f.sample(&[("table", "procs")], s.max_entries as f64);
    for (name, _, cap, _) in &s.tables {
        f.sample(&[("table", name)], *cap as f64);
    }
    f.push_to(out);
    let mut f = Family::counter(
        "memwatch_table_evictions_total",
        "Rows evicted from a full table: by the kernel from an LRU table (procs), or by \
         memwatch from its own; their counts live on in the aggregate (\"other\") rows.",
    );
    f.sample(&[("table", "procs")], s.procs_evicted as f64);
    for (name, _, _, evictions) in &s.tables {
        f.sample(&[("table", name)], *evictions as f64);
    }
    f.push_to(out);
    let mut f = Family::counter(
        "memwatch_table_aged_out_total",
        "Rows of processes gone for more than 5 minutes, removed by memwatch; their \
         counts live on in the \"other\" rows.",
    );
    f.sample(&[("table", "procs")], s.deleted as f64);
    f.push_to(out);
    let mut f = Family::counter(
        "memwatch_table_insert_errors_total",
        "Rows that could not be inserted into an in-kernel table; their events are in \
         the \"other\" rows.",
    );
    f.sample(&[("table", "procs")], st.proc_insert_errors as f64);
    f.sample(&[("table", "keyed")], st.keyed_insert_errors as f64);
    f.push_to(out);
    let mut f = Family::counter(
        "memwatch_tracepoint_read_errors_total",
        "Tracepoint records the programs could not read (the event is dropped).",
    );
    f.sample(&[], st.tp_read_errors as f64);
    f.push_to(out);
    let mut f = Family::counter(
        "memwatch_missed_entries_total",
        "Function or syscall exits whose entry was not seen (attached mid-call, or the \
         pending table was full); their durations are not counted.",
    );
    f.sample(&[], st.missed_entries as f64);
    f.push_to(out);
    let mut f = Family::counter(
        "memwatch_table_inconsistent_reads_total",
        "Reads of an in-kernel table during which a process's cached counts kept \
         moving into it, so that process showed its previous counts (the next read \
         has them).",
    );
    f.sample(&[("table", "procs")], s.inconsistent as f64);
    f.push_to(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::{cow, faults};

    #[test]
    fn buckets_are_cumulative_in_seconds() {
        let mut counts = [0u64; hist::BUCKETS];
        counts[5] = 3; // < 1 µs: only in the first exported bucket and +Inf
        counts[11] = 2; // [1024, 2048) ns
        counts[39] = 1; // overflow
        let (b, total) = prom_buckets(&counts);
        assert_eq!(total, 6);
        assert_eq!(b[0], (1024e-9, 3));
        assert_eq!(b[1], (2048e-9, 5));
        assert_eq!(b.last().unwrap().1, 5);
    }

    #[test]
    fn metrics_follow_rungs() {
        use crate::probes::table::{HookId, Mode};
        let mut att = Attached::new();
        att.insert(HookId::Faults(faults::Id::PageFault), Mode::Tracepoint);
        att.insert(HookId::Cow(cow::Id::DoWpPage), Mode::Tracepoint);
        let names: Vec<_> = proc_metrics(&att).iter().map(|m| m.0.name).collect();
        assert_eq!(names, ["page_faults_total", "wp_faults_total"]);
        att.insert(HookId::Cow(cow::Id::DoWpPage), Mode::Fentry);
        att.insert(HookId::Cow(cow::Id::CowCopy), Mode::Fentry);
        let names: Vec<_> = proc_metrics(&att).iter().map(|m| m.0.name).collect();
        assert!(names.contains(&"cow_copies_total"), "{names:?}");
        assert!(names.contains(&"wp_fault_seconds_total"), "{names:?}");
    }
}
