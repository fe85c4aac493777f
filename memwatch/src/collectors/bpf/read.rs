//! Reading the maps: the per-process table with the per-CPU caches the programs fill
//! before it (`ProcTable`), and the counter arrays and keyed tables (`Maps`).

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    Ebpf,
};
use memwatch_common::{global, hist, node, proc, stat, DevKey, HistKey, ProcCache, ProcRow};

use super::render::{KeyedCounts, KeyedId, Stats};
use crate::{
    collectors::attribution::Row,
    parse::comm_str,
    probes::{catalogue::Device, maps},
};

/// Takes a map out of the loaded object.
fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

/// The per-process counters of one process.
pub type Counts = [u64; proc::COUNTERS];

/// The per-process table and the per-CPU caches the programs fill before it.
pub struct ProcTable {
    procs: HashMap<MapData, u32, ProcRow>,
    cache: PerCpuArray<MapData, ProcCache>,
    /// `READING`: set while the table is read, so the programs move no cache.
    reading: Array<MapData, u32>,
    /// Reads after which some process's counts could not be read consistently (see
    /// `ProcTable::read`).
    inconsistent: u64,
}

/// How often a read of the processes whose cached counts moved during a read is
/// tried again before it gives up (each try takes a few syscalls; a move needs another
/// process to count on that CPU in between).
const REREADS: usize = 8;

/// The processes whose cached counts may have moved into `PROCS` between the cache
/// reads `before` and `after` (`mid`: the one in between, whose counts are used): on
/// every CPU whose move sequence changed or is odd (a move under way), the process
/// it held at each of the three reads.
fn moved(before: &[ProcCache], mid: &[ProcCache], after: &[ProcCache]) -> HashSet<u32> {
    let mut out = HashSet::new();
    for ((b, m), a) in before.iter().zip(mid).zip(after) {
        if b.seq != a.seq || b.seq % 2 == 1 {
            out.extend([b.tgid, m.tgid, a.tgid]);
        }
    }
    out
}

impl ProcTable {
    /// Takes the process table and the caches out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            procs: HashMap::try_from(take(ebpf, maps::PROCS)?)?,
            cache: PerCpuArray::try_from(take(ebpf, maps::PROC_CACHE)?)?,
            reading: Array::try_from(take(ebpf, maps::READING)?)?,
            inconsistent: 0,
        })
    }

    /// Reads after which some process's counts could not be read consistently.
    pub fn inconsistent(&self) -> u64 {
        self.inconsistent
    }

    /// Deletes a process's row; false if it could not.
    pub fn remove(&mut self, tgid: u32) -> bool {
        self.procs.remove(&tgid).is_ok()
    }

    /// Every CPU's cache.
    fn caches(&self) -> anyhow::Result<Vec<ProcCache>> {
        let all = self.cache.get(&0, 0).context("reading PROC_CACHE")?;
        Ok(all.iter().copied().collect())
    }

    /// Runs `body` (reads of `PROCS`) between reads of the caches: its result, the
    /// caches read right after it (consistent with it for every process not in the
    /// returned set), and the processes whose cached counts may have moved into
    /// `PROCS` while it ran (`moved`).
    fn bracketed<T>(
        &self,
        body: impl FnOnce(&Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Vec<ProcCache>, HashSet<u32>)> {
        let before = self.caches()?;
        let t = body(self)?;
        let mid = self.caches()?;
        let after = self.caches()?;
        let moved = moved(&before, &mid, &after);
        Ok((t, mid, moved))
    }

    /// The rows and caches of `tgids`, read again until no CPU moved counts of one of
    /// them meanwhile: (tgid, comm, counts) for those with any, and the caches read;
    /// None after `REREADS` tries.
    #[allow(clippy::type_complexity)]
    fn reread(
        &self,
        tgids: &HashSet<u32>,
    ) -> anyhow::Result<Option<(Vec<(u32, String, Counts)>, Vec<ProcCache>)>> {
        for _ in 0..REREADS {
            let (rows, caches, moved) = self.bracketed(|t| {
                Ok(tgids
                    .iter()
                    .map(|&tgid| (tgid, t.procs.get(&tgid, 0).ok()))
                    .collect::<Vec<_>>())
            })?;
            if !moved.is_disjoint(tgids) {
                continue;
            }
            let mut out = Vec::with_capacity(rows.len());
            for (tgid, row) in rows {
                let mut comm = row.as_ref().map(|r| comm_str(&r.comm));
                let mut counts = row.map(|r| r.counts);
                for c in caches.iter().filter(|c| c.live != 0 && c.tgid == tgid) {
                    comm.get_or_insert_with(|| comm_str(&c.comm));
                    add_cache(counts.get_or_insert([0; proc::COUNTERS]), c);
                }
                if let (Some(comm), Some(counts)) = (comm, counts) {
                    out.push((tgid, comm, counts));
                }
            }
            return Ok(Some((out, caches)));
        }
        Ok(None)
    }

    /// Every process's counts, and the global value of each `proc::*` counter: the rows
    /// of `PROCS` with the caches (one read, all CPUs) added in. Counts that moved from
    /// a cache into `PROCS` while the table is read would be in neither read, so the
    /// programs move none while `READING` is set; one that was under way when it was
    /// set shows in the caches' move sequences (`ProcCache::seq`), and the processes
    /// that CPU held are read again (`reread`). So a read includes every event counted
    /// before it began. The totals come from the last cache read, so the rows never
    /// exceed them.
    pub fn read(&mut self) -> anyhow::Result<(Vec<Row>, Counts)> {
        self.while_reading(Self::read_all)
    }

    /// Runs `f` with `READING` set: the programs move no cache into `PROCS` meanwhile
    /// (a move already under way is seen by its sequence number).
    fn while_reading<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if let Err(e) = self.reading.set(0, 1, 0) {
            log::debug!("setting READING: {e}");
        }
        let r = f(self);
        if let Err(e) = self.reading.set(0, 0, 0) {
            log::warn!("clearing READING: {e} (every cache switch now costs a table update)");
        }
        r
    }

    fn read_all(&mut self) -> anyhow::Result<(Vec<Row>, Counts)> {
        let (mut rows, mut caches, moved) = self.bracketed(|t| {
            let mut rows = Vec::new();
            for item in t.procs.iter() {
                let (tgid, v) = item.context("reading PROCS")?;
                rows.push(Row::from_kernel(tgid, &v));
            }
            Ok(rows)
        })?;
        let mut at: StdHashMap<u32, usize> =
            rows.iter().enumerate().map(|(i, r)| (r.tgid, i)).collect();
        for c in caches.iter().filter(|c| c.live != 0) {
            let i = *at.entry(c.tgid).or_insert_with(|| {
                rows.push(Row::from_kernel(
                    c.tgid,
                    &ProcRow {
                        counts: [0; proc::COUNTERS],
                        comm: c.comm,
                    },
                ));
                rows.len() - 1
            });
            if let Some(r) = rows.get_mut(i) {
                add_cache(&mut r.counts, c);
            }
        }
        if !moved.is_empty() {
            match self.reread(&moved)? {
                Some((fixed, later)) => {
                    for (tgid, comm, counts) in fixed {
                        match at.get(&tgid).and_then(|&i| rows.get_mut(i)) {
                            Some(r) => r.counts = counts,
                            None => {
                                at.insert(tgid, rows.len());
                                rows.push(Row { tgid, comm, counts });
                            }
                        }
                    }
                    caches = later;
                }
                // The floor in `age::Liveness::age` keeps them from going backwards;
                // the next read sees what moved.
                None => self.inconsistent += 1,
            }
        }
        let mut totals = [0; proc::COUNTERS];
        for c in &caches {
            for (t, v) in totals.iter_mut().zip(c.totals) {
                *t += v;
            }
        }
        Ok((rows, totals))
    }

    /// One process's counts (its row and the caches), if it has any.
    pub fn row(&mut self, tgid: u32) -> Option<Counts> {
        let one = HashSet::from([tgid]);
        match self.while_reading(|t| t.reread(&one)).ok()? {
            Some((rows, _)) => rows.into_iter().next().map(|r| r.2),
            None => {
                self.inconsistent += 1;
                None
            }
        }
    }
}

/// Adds a cache's counts to a row's: sums, and the maximum for `proc::WP_MAX_NS`.
fn add_cache(counts: &mut Counts, c: &ProcCache) {
    for (i, (a, b)) in counts.iter_mut().zip(c.counts).enumerate() {
        *a = if i == proc::WP_MAX_NS {
            (*a).max(b)
        } else {
            *a + b
        };
    }
}

/// The counter arrays and keyed tables besides the process table.
pub struct Maps {
    globals: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    hists: PerCpuArray<MapData, u64>,
    nodes: PerCpuArray<MapData, u64>,
    keyed: HashMap<MapData, HistKey, u64>,
    devices: HashMap<MapData, DevKey, u64>,
}

impl Maps {
    /// Takes them out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            globals: PerCpuArray::try_from(take(ebpf, maps::GLOBALS)?)?,
            stats: PerCpuArray::try_from(take(ebpf, maps::STATS)?)?,
            hists: PerCpuArray::try_from(take(ebpf, maps::HISTS)?)?,
            nodes: PerCpuArray::try_from(take(ebpf, maps::NODES)?)?,
            keyed: HashMap::try_from(take(ebpf, maps::KEYED_HISTS)?)?,
            devices: HashMap::try_from(take(ebpf, maps::DEVICES)?)?,
        })
    }

    fn sum(array: &PerCpuArray<MapData, u64>, index: usize) -> anyhow::Result<u64> {
        Ok(array.get(&(index as u32), 0)?.iter().sum())
    }

    fn sum_all(array: &PerCpuArray<MapData, u64>, n: usize) -> anyhow::Result<Vec<u64>> {
        (0..n).map(|i| Self::sum(array, i)).collect()
    }

    /// `GLOBALS`, summed over the CPUs.
    pub fn globals(&self) -> anyhow::Result<Vec<u64>> {
        Self::sum_all(&self.globals, global::SLOTS)
    }

    /// `KEYED_HISTS`, by (hist, tgid, comm): bucket counts and sum.
    pub fn keyed(&self) -> anyhow::Result<BTreeMap<KeyedId, KeyedCounts>> {
        let mut by: BTreeMap<KeyedId, KeyedCounts> = BTreeMap::new();
        for item in self.keyed.iter() {
            let (k, v) = item.context("reading KEYED_HISTS")?;
            let e = by
                .entry((k.hist, k.tgid, comm_str(&k.comm)))
                .or_insert(([0; hist::BUCKETS], 0));
            if k.bucket == hist::SUM_BUCKET {
                e.1 += v;
            } else if let Some(b) = e.0.get_mut(k.bucket as usize) {
                *b += v;
            }
        }
        Ok(by)
    }

    /// The buckets of the global histograms `wanted`, summed over the CPUs.
    pub fn hists(
        &self,
        wanted: impl IntoIterator<Item = u32>,
    ) -> anyhow::Result<BTreeMap<u32, [u64; hist::BUCKETS]>> {
        let mut out = BTreeMap::new();
        for h in wanted {
            let mut a = [0u64; hist::BUCKETS];
            for (b, x) in a.iter_mut().enumerate() {
                *x = Self::sum(&self.hists, h as usize * hist::BUCKETS + b)?;
            }
            out.insert(h, a);
        }
        Ok(out)
    }

    /// The rows of `DEVICES`.
    pub fn devices(&self) -> anyhow::Result<Vec<Device>> {
        let mut out = Vec::new();
        for item in self.devices.iter() {
            let (k, v) = item.context("reading DEVICES")?;
            let name = k.name.split(|&b| b == 0).next().unwrap_or_default();
            out.push(Device {
                name: String::from_utf8_lossy(name).into_owned(),
                what: k.what,
                reason: k.reason,
                pages: v,
            });
        }
        Ok(out)
    }

    /// `NODES`, summed over the CPUs.
    pub fn node_vals(&self) -> anyhow::Result<Vec<u64>> {
        Self::sum_all(&self.nodes, node::MAX_NODES * node::COUNTERS)
    }

    /// The programs' own bookkeeping (`STATS`).
    pub fn stats(&self) -> anyhow::Result<Stats> {
        let stat = |i| Self::sum(&self.stats, i as usize);
        Ok(Stats {
            proc_inserts: stat(stat::PROC_INSERTS)?,
            proc_insert_errors: stat(stat::PROC_INSERT_ERRORS)?,
            keyed_insert_errors: stat(stat::KEYED_INSERT_ERRORS)?,
            tp_read_errors: stat(stat::TP_READ_ERRORS)?,
            missed_entries: stat(stat::MISSED_ENTRIES)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(tgid: u32, seq: u64) -> ProcCache {
        ProcCache {
            tgid,
            live: 1,
            comm: [0; memwatch_common::COMM_LEN],
            seq,
            counts: [0; proc::COUNTERS],
            totals: [0; proc::COUNTERS],
        }
    }

    #[test]
    fn moves_during_a_read_name_the_processes_to_read_again() {
        // CPU 0 quiet; CPU 1 moved process 7's counts and now holds 8.
        let before = [cache(5, 4), cache(7, 2)];
        let mid = [cache(5, 4), cache(8, 4)];
        let after = [cache(5, 4), cache(8, 4)];
        assert_eq!(moved(&before, &mid, &after), HashSet::from([7, 8]));
        // A move under way when the read began (odd), even if it ended by the end.
        let before = [cache(5, 3), cache(7, 2)];
        let rest = [cache(5, 4), cache(7, 2)];
        assert_eq!(moved(&before, &rest, &rest), HashSet::from([5]));
        // Nothing moved.
        let quiet = [cache(5, 4), cache(7, 2)];
        assert!(moved(&quiet, &quiet, &quiet).is_empty());
    }
}
