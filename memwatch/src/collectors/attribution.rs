//! Turning the in-kernel per-process table into bounded series: the top N processes
//! per metric plus an aggregate row (so rows plus the aggregate equal the global
//! counter), and per-cgroup sums, capped (`tables.cgroup_max_entries`), that stay
//! monotonic when rows are evicted or processes exit.
//!
//! The aggregate row's label values are ones no real value can take, so no process
//! can pose as it: `pid="other"` (pids are numbers), `cgroup="other"` (cgroup paths
//! start with '/'), and `comm="(other processes)"`: a comm is at most 15 bytes, shown
//! as at most 15 characters (invalid UTF-8 bytes become U+FFFD each), and this is 17.

use std::{collections::HashMap, sync::Arc};

use memwatch_common::{proc, ProcRow};

use crate::{metrics::TableGauge, parse::comm_str};

/// The aggregate row's `pid`.
pub const OTHER_PID: &str = "other";
/// The aggregate row's `comm`: longer than any comm can be shown.
pub const OTHER_COMM: &str = "(other processes)";
/// The aggregate row's `cgroup`.
pub const OTHER_CGROUP: &str = "other";
/// The cgroup of a process whose cgroup could not be read when it was first seen.
pub const UNKNOWN_CGROUP: &str = "unknown";

const _: () = assert!(OTHER_COMM.len() > memwatch_common::COMM_LEN);

/// A process row as read from the kernel.
#[derive(Debug, Clone)]
pub struct Row {
    pub tgid: u32,
    pub comm: String,
    pub counts: [u64; proc::COUNTERS],
}

impl Row {
    pub fn from_kernel(tgid: u32, r: &ProcRow) -> Self {
        Self {
            tgid,
            comm: comm_str(&r.comm),
            counts: r.counts,
        }
    }

    pub fn sum(&self, cols: &[usize]) -> u64 {
        cols.iter().filter_map(|&c| self.counts.get(c)).sum()
    }
}

/// Indices of the `n` items with the largest `score`, largest first, ties in `tie`'s
/// order (processes by tgid, cgroups by path); items scoring zero are left out unless
/// `keep_zero`. What the rest add up to goes in an `other` row.
pub fn top_n<T>(
    items: &[T],
    n: usize,
    score: impl Fn(&T) -> u64,
    tie: impl Fn(&T, &T) -> std::cmp::Ordering,
    keep_zero: bool,
) -> Vec<usize> {
    let mut ranked: Vec<(u64, usize, &T)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (score(item), i, item))
        .filter(|&(s, _, _)| keep_zero || s > 0)
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| tie(a.2, b.2)));
    ranked.truncate(n);
    ranked.into_iter().map(|(_, i, _)| i).collect()
}

/// A cgroup's running totals, and the update that last grew them.
#[derive(Debug, Clone)]
struct Total {
    counts: [u64; proc::COUNTERS],
    grown: u64,
}

/// Per-cgroup counters accumulated from per-process deltas, so they only grow; at most
/// `cap` cgroups (`tables.cgroup_max_entries`): beyond it the cgroup that grew least
/// recently is evicted (its counts then show in `cgroup="other"`, which is the global
/// less the cgroups shown; should it grow again, its series starts over, a counter
/// reset to Prometheus).
pub struct CgroupAccounts {
    /// Last counts seen per tgid, and its cgroup (one per row of the last read: the
    /// pid-keyed state is as bounded as the in-kernel table).
    last: HashMap<u32, (Arc<str>, [u64; proc::COUNTERS])>,
    /// Running totals per cgroup path.
    totals: HashMap<Arc<str>, Total>,
    /// Updates so far.
    updates: u64,
    pub table: Arc<TableGauge>,
}

impl Default for CgroupAccounts {
    fn default() -> Self {
        Self::new(crate::config::Tables::default().cgroup_max_entries)
    }
}

impl CgroupAccounts {
    pub fn new(cap: usize) -> Self {
        Self {
            last: HashMap::new(),
            totals: HashMap::new(),
            updates: 0,
            table: Arc::new(TableGauge::new(cap.max(1))),
        }
    }

    fn cap(&self) -> usize {
        (self.table.get().1 as usize).max(1)
    }

    /// Folds one scrape's rows in. `cgroup_of` is asked only for processes not seen
    /// before; an exited process keeps the cgroup it had when first seen.
    pub fn update(&mut self, rows: &[Row], cgroup_of: impl Fn(u32) -> Option<String>) {
        self.updates += 1;
        let now = self.updates;
        let mut next = HashMap::with_capacity(rows.len());
        for row in rows {
            let (cg, prev) = match self.last.remove(&row.tgid) {
                // A smaller count means the pid was reused (or the row re-created):
                // start from zero.
                Some((cg, prev)) if row.counts.iter().zip(prev.iter()).all(|(a, b)| a >= b) => {
                    (cg, prev)
                }
                _ => {
                    let path = cgroup_of(row.tgid).unwrap_or_else(|| UNKNOWN_CGROUP.into());
                    // One copy of each path, shared by its rows and its total.
                    let cg = match self.totals.get_key_value(path.as_str()) {
                        Some((k, _)) => k.clone(),
                        None => Arc::from(path),
                    };
                    (cg, [0; proc::COUNTERS])
                }
            };
            let grew = row.counts.iter().zip(prev.iter()).any(|(a, b)| a > b);
            if grew || self.totals.contains_key(&cg) {
                let total = self.totals.entry(cg.clone()).or_insert(Total {
                    counts: [0; proc::COUNTERS],
                    grown: now,
                });
                for (t, (a, b)) in total.counts.iter_mut().zip(row.counts.iter().zip(prev)) {
                    *t += a - b;
                }
                if grew {
                    total.grown = now;
                }
            }
            next.insert(row.tgid, (cg, row.counts));
        }
        self.last = next;
        self.evict();
    }

    /// Evicts the cgroups that grew least recently (ties: by path) down to the cap.
    fn evict(&mut self) {
        let cap = self.cap();
        if self.totals.len() > cap {
            let mut by_age: Vec<(u64, Arc<str>)> = self
                .totals
                .iter()
                .map(|(k, t)| (t.grown, k.clone()))
                .collect();
            by_age.sort();
            let over = self.totals.len() - cap;
            for (_, k) in by_age.into_iter().take(over) {
                self.totals.remove(&k);
            }
            self.table.evicted(over as u64);
        }
        self.table.set_entries(self.totals.len());
    }

    /// The running totals per cgroup path.
    pub fn totals(&self) -> HashMap<String, [u64; proc::COUNTERS]> {
        self.totals
            .iter()
            .map(|(k, t)| (k.to_string(), t.counts))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tgid: u32, c0: u64) -> Row {
        let mut counts = [0; proc::COUNTERS];
        counts[0] = c0;
        Row {
            tgid,
            comm: format!("p{tgid}"),
            counts,
        }
    }

    #[test]
    fn top_n_orders_and_skips_zero() {
        let rows = vec![row(1, 5), row(2, 50), row(3, 0), row(4, 7), row(0, 7)];
        let by_tgid = |a: &Row, b: &Row| a.tgid.cmp(&b.tgid);
        assert_eq!(
            top_n(&rows, 3, |r| r.counts[0], by_tgid, false),
            vec![1, 4, 3]
        );
        assert_eq!(top_n(&rows, 10, |r| r.counts[0], by_tgid, false).len(), 4);
        assert_eq!(top_n(&rows, 10, |r| r.counts[0], by_tgid, true)[4], 2);
    }

    #[test]
    fn cgroup_totals_survive_eviction_and_pid_reuse() {
        let mut acc = CgroupAccounts::default();
        let cg = |pid: u32| {
            Some(if pid == 1 {
                "/a".to_string()
            } else {
                "/b".to_string()
            })
        };
        acc.update(&[row(1, 10), row(2, 3)], cg);
        acc.update(&[row(1, 15), row(2, 3)], cg);
        assert_eq!(acc.totals()["/a"][0], 15);
        // Row 1 evicted: its total stays.
        acc.update(&[row(2, 4)], cg);
        assert_eq!(acc.totals()["/a"][0], 15);
        assert_eq!(acc.totals()["/b"][0], 4);
        // pid 2 reused by a new process with a smaller count.
        acc.update(&[row(2, 1)], cg);
        assert_eq!(acc.totals()["/b"][0], 5);
        assert_eq!(acc.table.get(), (2, 1024, 0));
    }

    /// A storm of cgroups (one process each, each counting once) leaves the cap's
    /// worth, the most recently grown, and counts every one evicted.
    #[test]
    fn cgroups_are_capped_least_recently_grown_first() {
        let mut acc = CgroupAccounts::new(4);
        let cg = |pid: u32| Some(format!("/storm/{pid:04}"));
        // pid 1 keeps growing; pids 2..=100 each grow once, one per update.
        for pid in 2..=100u32 {
            acc.update(&[row(1, pid as u64), row(pid, 1)], cg);
            assert!(acc.totals().len() <= 4);
        }
        let totals = acc.totals();
        let mut kept: Vec<&str> = totals.keys().map(String::as_str).collect();
        kept.sort();
        assert_eq!(
            kept,
            ["/storm/0001", "/storm/0098", "/storm/0099", "/storm/0100"]
        );
        // 100 cgroups made, 4 kept.
        assert_eq!(acc.table.get(), (4, 4, 96));
        assert_eq!(totals["/storm/0001"][0], 100);
        // Rows that do not grow make no total: an idle process's cgroup costs nothing.
        let mut acc = CgroupAccounts::new(4);
        acc.update(&[row(7, 0)], cg);
        assert!(acc.totals().is_empty());
        // The pid-keyed state holds the rows of the last read only.
        acc.update(&[], cg);
        assert!(acc.last.is_empty());
    }
}
