//! The eBPF programs' counters, read from their maps at scrape time.

use std::collections::HashMap as StdHashMap;

use anyhow::Context as _;
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf,
};
use memwatch_common::{fault, stat, ProcCow, ProcFaults, COMM_LEN};
use prometheus::proto::MetricFamily;

use super::Collector;
use crate::{metrics::Family, probes::table::Mode};

/// The maps this collector reads, taken out of the loaded object.
pub struct Bpf {
    faults: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    proc_faults: HashMap<MapData, u32, ProcFaults>,
    proc_cow: HashMap<MapData, u32, ProcCow>,
    /// Whether the page-fault tracepoints are attached.
    faults_attached: bool,
    /// The rung the COW hook runs on, if any.
    cow_mode: Option<Mode>,
    top_n: usize,
    max_entries: u32,
}

impl Bpf {
    pub fn new(
        ebpf: &mut Ebpf,
        faults_attached: bool,
        cow_mode: Option<Mode>,
        top_n: usize,
        max_entries: u32,
    ) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        Ok(Self {
            faults: PerCpuArray::try_from(take("FAULTS")?)?,
            stats: PerCpuArray::try_from(take("STATS")?)?,
            proc_faults: HashMap::try_from(take("PROC_FAULTS")?)?,
            proc_cow: HashMap::try_from(take("PROC_COW")?)?,
            faults_attached,
            cow_mode,
            top_n,
            max_entries,
        })
    }

    fn per_cpu_sum(array: &PerCpuArray<MapData, u64>, index: u32) -> anyhow::Result<u64> {
        Ok(array.get(&index, 0)?.iter().sum())
    }
}

/// A process row: (tgid, comm, count).
type Row = (u32, String, u64);

fn comm_str(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Top `n` rows by count, and the sum of everything else (`global` minus the top rows;
/// rows evicted from the table live on in `global`).
fn top_n_and_other(mut rows: Vec<Row>, n: usize, global: u64) -> (Vec<Row>, u64) {
    rows.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    rows.truncate(n);
    let shown: u64 = rows.iter().map(|r| r.2).sum();
    (rows, global.saturating_sub(shown))
}

impl Collector for Bpf {
    fn name(&self) -> &'static str {
        "bpf"
    }

    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
        // Tables first, then the global counters: the globals only grow, so they are
        // never behind the rows read before them.
        let mut fault_rows: StdHashMap<u32, ProcFaults> = StdHashMap::new();
        for item in self.proc_faults.iter() {
            let (tgid, v) = item.context("reading PROC_FAULTS")?;
            fault_rows.insert(tgid, v);
        }
        let mut cow_rows = Vec::new();
        for item in self.proc_cow.iter() {
            let (tgid, v) = item.context("reading PROC_COW")?;
            cow_rows.push((tgid, comm_str(&v.comm), v.wp_faults));
        }
        let mut faults = [0u64; fault::SLOTS];
        for (i, f) in faults.iter_mut().enumerate() {
            *f = Self::per_cpu_sum(&self.faults, i as u32)?;
        }
        let stat = |i| Self::per_cpu_sum(&self.stats, i);

        if self.faults_attached {
            let mut f = Family::counter(
                "memwatch_page_faults_total",
                "Page faults by kind (decoded from the x86 error code) and the CPU mode the \
                 fault was taken in (kernel: e.g. copy_to_user touching a user page).",
            );
            for mode in 0..fault::MODES {
                for kind in 0..fault::KINDS {
                    f.sample(
                        &[
                            ("kind", fault::kind_name(kind)),
                            ("mode", fault::mode_name(mode)),
                        ],
                        faults[fault::slot(kind, mode) as usize] as f64,
                    );
                }
            }
            f.push_to(out);
        }

        // Write-protect faults per process, from the COW hook's rung.
        let wp = match self.cow_mode {
            Some(Mode::Fentry | Mode::Kprobe) => Some((cow_rows, stat(stat::COW_WP_CALLS)?)),
            Some(Mode::Tracepoint) => {
                let slots = [
                    fault::slot(fault::KIND_WRITE_PROTECT, fault::MODE_USER) as usize,
                    fault::slot(fault::KIND_WRITE_PROTECT, fault::MODE_KERNEL) as usize,
                ];
                let rows = fault_rows
                    .iter()
                    .map(|(&tgid, v)| {
                        (
                            tgid,
                            comm_str(&v.comm),
                            slots.iter().map(|&s| v.counts[s]).sum(),
                        )
                    })
                    .filter(|r: &Row| r.2 > 0)
                    .collect();
                Some((rows, slots.iter().map(|&s| faults[s]).sum()))
            }
            None => None,
        };
        if let Some((rows, global)) = wp {
            let (mut rows, other) = top_n_and_other(rows, self.top_n, global);
            // The kernel side keeps the comm of the first fault, which for a forked
            // child that then execs is the parent's; a live process's current comm wins.
            for row in &mut rows {
                if let Ok(c) = std::fs::read_to_string(format!("/proc/{}/comm", row.0)) {
                    row.1 = c.trim_end().to_string();
                }
            }
            let mut f = Family::counter(
                "memwatch_wp_faults_total",
                "Write-protect faults (writes to present, write-protected pages: every COW) \
                 per process; the top processes by count, the rest under pid=\"other\".",
            );
            for (tgid, comm, n) in &rows {
                f.sample(&[("pid", &tgid.to_string()), ("comm", comm)], *n as f64);
            }
            f.sample(&[("pid", "other"), ("comm", "other")], other as f64);
            f.push_to(out);
        }

        // Table health.
        let tables = [
            (
                "proc_faults",
                fault_rows.len() as u64,
                stat(stat::PROC_FAULT_INSERTS)?,
                stat(stat::PROC_FAULT_INSERT_ERRORS)?,
            ),
            (
                "proc_cow",
                self.proc_cow.keys().count() as u64,
                stat(stat::PROC_COW_INSERTS)?,
                stat(stat::PROC_COW_INSERT_ERRORS)?,
            ),
        ];
        let mut entries = Family::gauge(
            "memwatch_table_entries",
            "Rows in an in-kernel per-process table.",
        );
        let mut max = Family::gauge(
            "memwatch_table_max_entries",
            "Capacity of an in-kernel per-process table (tables.process_max_entries).",
        );
        let mut evictions = Family::counter(
            "memwatch_table_evictions_total",
            "Rows evicted from a full in-kernel table (LRU); their counts live on in the \
             \"other\" rows.",
        );
        let mut errors = Family::counter(
            "memwatch_table_insert_errors_total",
            "Rows that could not be inserted into an in-kernel table; their events are \
             counted in the \"other\" rows.",
        );
        for (name, live, inserts, errs) in tables {
            entries.sample(&[("table", name)], live as f64);
            max.sample(&[("table", name)], self.max_entries as f64);
            evictions.sample(&[("table", name)], inserts.saturating_sub(live) as f64);
            errors.sample(&[("table", name)], errs as f64);
        }
        entries.push_to(out);
        max.push_to(out);
        evictions.push_to(out);
        errors.push_to(out);

        let mut f = Family::counter(
            "memwatch_tracepoint_read_errors_total",
            "Tracepoint records the programs could not read (the event is dropped).",
        );
        f.sample(&[], stat(stat::TP_READ_ERRORS)? as f64);
        f.push_to(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_n_sums_to_global() {
        let rows = vec![
            (1, "a".into(), 5),
            (2, "b".into(), 50),
            (3, "c".into(), 7),
            (4, "d".into(), 7),
        ];
        let (top, other) = top_n_and_other(rows, 2, 100);
        assert_eq!(top.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(other, 100 - 57);
        let (top, other) = top_n_and_other(vec![(1, "a".into(), 5)], 0, 4);
        assert!(top.is_empty());
        assert_eq!(other, 4);
    }

    #[test]
    fn comm_is_cut_at_nul() {
        let mut c = [0u8; COMM_LEN];
        c[..5].copy_from_slice(b"redis");
        assert_eq!(comm_str(&c), "redis");
        assert_eq!(comm_str(b"redis-rdb-bgsave"), "redis-rdb-bgsave");
    }
}
