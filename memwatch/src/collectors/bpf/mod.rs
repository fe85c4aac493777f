//! The eBPF programs' counters, read from their maps at scrape time: read the maps
//! (`read`), age the process rows (`age`), render what the attached hooks feed
//! (`render`, from the probe areas' catalogue). What it asks the running system
//! (names, liveness, cgroups, nodes, the page size) goes through the `Host`.

mod age;
#[cfg(test)]
pub(super) mod golden_tests;
mod read;
mod render;

use parking_lot::Mutex;
use std::{sync::Arc, time::Instant};

use aya::Ebpf;
use prometheus::proto::MetricFamily;

use super::{attribution::CgroupAccounts, Collector};
pub use crate::probes::catalogue::Attached;
use crate::{
    config,
    host::Host,
    metrics::{TableGauge, Tables},
    probes::catalogue::Counters,
};
use age::Liveness;
use read::{Maps, ProcTable};
use render::Snapshot;

/// The maps this collector reads, taken out of the loaded object.
pub struct Bpf {
    maps: Maps,
    procs: Arc<Mutex<ProcTable>>,
    attached: Attached,
    host: Arc<Host>,
    top_n: usize,
    max_entries: u32,
    liveness: Mutex<Liveness>,
    /// memwatch's own bounded tables (these and the fork episodes'), exported here.
    tables: Tables,
    /// The highest count of rows the kernel evicted from `PROCS` reported so far.
    procs_evicted: std::sync::atomic::AtomicU64,
}

impl Bpf {
    pub fn new(
        ebpf: &mut Ebpf,
        attached: Attached,
        cfg: &config::Tables,
        host: Arc<Host>,
    ) -> anyhow::Result<Self> {
        let cgroups = CgroupAccounts::new(cfg.cgroup_max_entries);
        // One row per process in the table, plus one cached process per CPU.
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let pids = Arc::new(TableGauge::new(cfg.process_max_entries as usize + cpus));
        let tables = Tables::default();
        tables.add("cgroups", cgroups.table.clone());
        tables.add("pids", pids.clone());
        Ok(Self {
            maps: Maps::take(ebpf)?,
            procs: Arc::new(Mutex::new(ProcTable::take(ebpf)?)),
            attached,
            host,
            top_n: cfg.process_top_n,
            max_entries: cfg.process_max_entries,
            liveness: Mutex::new(Liveness::new(cgroups, pids)),
            tables,
            procs_evicted: Default::default(),
        })
    }

    /// memwatch's own bounded tables, exported with this collector's: the fork
    /// episodes add theirs.
    pub fn tables(&self) -> Tables {
        self.tables.clone()
    }

    /// A reader of single process rows, for fork episodes.
    pub fn rows(&self) -> ProcRows {
        ProcRows(self.procs.clone())
    }

    /// Reads the maps and ages the process rows: what one scrape renders.
    fn read(&self, live: &mut Liveness) -> anyhow::Result<Snapshot> {
        // Rows inserted so far, before the table: a row inserted during the read may
        // be seen in it, so evictions (inserted - live - deleted) can only come out low,
        // never high, and the floor below keeps them from going back.
        let inserted = self.maps.stats()?.proc_inserts;
        // Tables first, then the global counters: the globals only grow, so they are
        // never behind the rows read before them (the per-process counters' globals
        // come with the caches, read after the table).
        let (rows, totals, inconsistent) = {
            let mut table = self.procs.lock();
            let (rows, totals) = table.read()?;
            let rows = live.age(
                rows,
                Instant::now(),
                |t| self.host.is_alive(t),
                |t| table.remove(t),
            );
            (rows, totals, table.inconsistent())
        };
        let mut globals = self.maps.globals()?;
        for (g, t) in globals.iter_mut().zip(totals) {
            *g += t;
        }
        let keyed = self.maps.keyed()?;
        let hists = self.maps.hists(render::hists_wanted(&self.attached))?;
        let devices = self.maps.devices()?;
        let node_vals = self.maps.node_vals()?;
        let stats = self.maps.stats()?;
        live.cgroups.update(&rows, |pid| self.host.cgroup_of(pid));
        let evicted = inserted.saturating_sub(rows.len() as u64 + live.deleted);
        let procs_evicted = self
            .procs_evicted
            .fetch_max(evicted, std::sync::atomic::Ordering::Relaxed)
            .max(evicted);
        let mut s = Snapshot {
            rows,
            cgroups: live.cgroups.totals(),
            counters: Counters {
                globals,
                nodes: self.host.nodes().to_vec(),
                node_vals,
                devices,
                page_size: self.host.page_size(),
            },
            hists,
            keyed,
            stats,
            deleted: live.deleted,
            procs_evicted,
            inconsistent,
            max_entries: self.max_entries,
            tables: self.tables.snapshot(),
        };
        // Only the names of the processes shown are looked up; a live process's
        // current name wins over the one the kernel kept.
        for i in render::shown(&s.rows, &self.attached, self.top_n) {
            if let Some(row) = s.rows.get_mut(i) {
                if let Some(c) = self.host.comm(row.tgid) {
                    row.comm = c;
                }
            }
        }
        Ok(s)
    }
}

/// Reads single rows of the per-process table.
#[derive(Clone)]
pub struct ProcRows(Arc<Mutex<ProcTable>>);

impl crate::episodes::RowSource for ProcRows {
    fn row(&self, tgid: u32) -> Option<crate::episodes::Counts> {
        self.0.lock().row(tgid)
    }
}

impl Collector for Bpf {
    fn name(&self) -> &'static str {
        "bpf"
    }

    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
        let mut live = self.liveness.lock();
        let snapshot = self.read(&mut live)?;
        out.extend(render::render(&snapshot, &self.attached, self.top_n));
        Ok(())
    }
}
