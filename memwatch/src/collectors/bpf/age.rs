//! Liveness and aging of the process table's rows: counts that never go backwards,
//! rows of processes gone for longer than `EXITED_GRACE` removed, and the per-cgroup
//! accounts the rows feed.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use memwatch_common::proc;

use super::read::Counts;
use crate::{
    collectors::attribution::{CgroupAccounts, Row},
    metrics::TableGauge,
};

/// How long an exited process keeps its own rows before they are folded into `other`.
pub const EXITED_GRACE: Duration = Duration::from_secs(300);

/// What aging keeps between scrapes. The pid-keyed state (`exited_since`, `last`, and
/// the cgroup of each row in `cgroups`) holds the rows of the last read only, so the
/// in-kernel table's size (`tables.process_max_entries`, plus one cached process per
/// CPU) bounds it: a pid's state goes when its row leaves the table (table `pids`).
#[derive(Default)]
pub struct Liveness {
    /// When a table row's process was first seen gone.
    exited_since: HashMap<u32, Instant>,
    /// Rows this agent deleted from `PROCS` (aged out), for the eviction count.
    pub deleted: u64,
    /// The counts last exported per process: the floor of the next ones (see
    /// `ProcTable::read`).
    last: HashMap<u32, Counts>,
    pub cgroups: CgroupAccounts,
    pub pids: Arc<TableGauge>,
}

impl Liveness {
    pub fn new(cgroups: CgroupAccounts, pids: Arc<TableGauge>) -> Self {
        Self {
            cgroups,
            pids,
            ..Self::default()
        }
    }

    /// The rows to export from the ones just read: each count at least what was last
    /// exported (counters only grow: should a read give up on a process, see
    /// `ProcTable::read`, it shows the previous value, never a drop), without the rows
    /// of processes gone for longer than `EXITED_GRACE`, which `remove` deletes from
    /// the table (a row it could not delete stays).
    pub fn age(
        &mut self,
        mut rows: Vec<Row>,
        now: Instant,
        alive: impl Fn(u32) -> bool,
        mut remove: impl FnMut(u32) -> bool,
    ) -> Vec<Row> {
        for row in &mut rows {
            let last = self.last.entry(row.tgid).or_insert([0; proc::COUNTERS]);
            for (a, b) in row.counts.iter_mut().zip(last.iter_mut()) {
                *a = (*a).max(*b);
                *b = *a;
            }
        }
        let mut keep = Vec::with_capacity(rows.len());
        let mut seen = HashSet::with_capacity(rows.len());
        for row in rows {
            seen.insert(row.tgid);
            if alive(row.tgid) {
                self.exited_since.remove(&row.tgid);
            } else {
                let since = *self.exited_since.entry(row.tgid).or_insert(now);
                if now.duration_since(since) > EXITED_GRACE && remove(row.tgid) {
                    self.deleted += 1;
                    self.exited_since.remove(&row.tgid);
                    if self.last.remove(&row.tgid).is_some() {
                        self.pids.evicted(1);
                    }
                    continue;
                }
            }
            keep.push(row);
        }
        self.exited_since.retain(|t, _| seen.contains(t));
        let before = self.last.len();
        self.last.retain(|t, _| seen.contains(t));
        self.pids.evicted((before - self.last.len()) as u64);
        self.pids.set_entries(self.last.len());
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row counting `n` in every column.
    fn row(tgid: u32, n: u64) -> Row {
        Row {
            tgid,
            comm: String::new(),
            counts: [n; proc::COUNTERS],
        }
    }

    #[test]
    fn counts_never_drop_and_the_long_gone_are_removed() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let kept = l.age(vec![row(1, 5), row(2, 3)], t0, |_| true, |_| true);
        assert_eq!(kept.len(), 2);
        // A read that gave up shows less: the last count stays.
        let kept = l.age(vec![row(1, 4)], t0, |_| true, |_| true);
        assert_eq!(kept[0].counts[0], 5);
        // Process 1 gone: kept within the grace, removed after it.
        let gone = |t| t != 1;
        assert_eq!(l.age(vec![row(1, 5)], t0, gone, |_| true).len(), 1);
        let later = t0 + EXITED_GRACE + Duration::from_secs(1);
        let mut removed = Vec::new();
        let kept = l.age(vec![row(1, 5)], later, gone, |t| {
            removed.push(t);
            true
        });
        assert!(kept.is_empty());
        assert_eq!((removed, l.deleted), (vec![1], 1));
        // Process 2's row went in the second read, process 1's now: both states went.
        assert_eq!(l.pids.get(), (0, 0, 2));
    }
}
