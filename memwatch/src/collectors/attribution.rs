//! Turning the in-kernel per-process table into bounded series: the top N processes
//! per metric plus an `other` row (so rows plus `other` equal the global counter), and
//! per-cgroup sums that stay monotonic when rows are evicted or processes exit.

use std::collections::HashMap;

use memwatch_common::{proc, ProcRow};

use crate::parse::comm_str;

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
        cols.iter().map(|&c| self.counts[c]).sum()
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
    let scores: Vec<u64> = items.iter().map(&score).collect();
    let mut idx: Vec<usize> = (0..items.len())
        .filter(|&i| keep_zero || scores[i] > 0)
        .collect();
    idx.sort_by(|&a, &b| {
        scores[b]
            .cmp(&scores[a])
            .then_with(|| tie(&items[a], &items[b]))
    });
    idx.truncate(n);
    idx
}

/// Per-cgroup counters accumulated from per-process deltas, so they only grow.
#[derive(Default)]
pub struct CgroupAccounts {
    /// Last counts seen per tgid, and its cgroup.
    last: HashMap<u32, (String, [u64; proc::COUNTERS])>,
    /// Running totals per cgroup path.
    pub totals: HashMap<String, [u64; proc::COUNTERS]>,
}

impl CgroupAccounts {
    /// Folds one scrape's rows in. `cgroup_of` is asked only for processes not seen
    /// before; an exited process keeps the cgroup it had when first seen.
    pub fn update(&mut self, rows: &[Row], cgroup_of: impl Fn(u32) -> Option<String>) {
        let mut next = HashMap::with_capacity(rows.len());
        for row in rows {
            let (cg, prev) = match self.last.remove(&row.tgid) {
                // A smaller count means the pid was reused (or the row re-created):
                // start from zero.
                Some((cg, prev)) if row.counts.iter().zip(prev.iter()).all(|(a, b)| a >= b) => {
                    (cg, prev)
                }
                _ => (
                    cgroup_of(row.tgid).unwrap_or_else(|| "unknown".into()),
                    [0; proc::COUNTERS],
                ),
            };
            let total = self.totals.entry(cg.clone()).or_insert([0; proc::COUNTERS]);
            for (i, t) in total.iter_mut().enumerate() {
                *t += row.counts[i] - prev[i];
            }
            next.insert(row.tgid, (cg, row.counts));
        }
        self.last = next;
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
        assert_eq!(acc.totals["/a"][0], 15);
        // Row 1 evicted: its total stays.
        acc.update(&[row(2, 4)], cg);
        assert_eq!(acc.totals["/a"][0], 15);
        assert_eq!(acc.totals["/b"][0], 4);
        // pid 2 reused by a new process with a smaller count.
        acc.update(&[row(2, 1)], cg);
        assert_eq!(acc.totals["/b"][0], 5);
    }
}
