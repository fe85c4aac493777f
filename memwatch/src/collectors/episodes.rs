//! Fork-episode metrics: counts and distributions per watched command, the last
//! episode's figures, and live COW of running episodes.

use parking_lot::Mutex;
use std::sync::Arc;

use prometheus::proto::MetricFamily;

use super::Collector;
use crate::{
    episodes::{Episode, Hist, Tracker},
    metrics::Family,
};

pub struct Episodes {
    tracker: Arc<Mutex<Tracker>>,
}

impl Episodes {
    pub fn new(tracker: Arc<Mutex<Tracker>>) -> Self {
        Self { tracker }
    }
}

fn hist(f: &mut Family, labels: &[(&str, &str)], h: &Hist) {
    let buckets: Vec<(f64, u64)> = h
        .bounds
        .iter()
        .copied()
        .zip(h.counts.iter().copied())
        .collect();
    f.histogram_sample(labels, &buckets, h.count, h.sum);
}

impl Collector for Episodes {
    fn name(&self) -> &'static str {
        "episodes"
    }

    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
        let t = self.tracker.lock();
        let mut count = Family::counter(
            "memwatch_fork_episodes_total",
            "Finished fork episodes (a watched process's fork to its child's exit).",
        );
        let mut fork = Family::histogram(
            "memwatch_fork_episode_fork_seconds",
            "Fork syscall latency of each episode.",
        );
        let mut cow = Family::histogram(
            "memwatch_fork_episode_cow_bytes",
            "Bytes copied on write per episode, parent and child (what Redis reports as \
             rdb/aof_last_cow_size).",
        );
        let mut stall = Family::histogram(
            "memwatch_fork_episode_stall_seconds",
            "Parent stall per episode by cause: reclaim (direct and memcg) or dirty \
             throttling.",
        );
        let mut last = Family::gauge(
            "memwatch_fork_episode_last",
            "Figures of the last finished episode: fork_seconds, cow_bytes, \
             cow_ratio (of parent RSS at fork), child_lifetime_seconds, \
             reclaim_stall_seconds, dirty_throttle_seconds, parent_rss_bytes.",
        );
        let mut last_time = Family::gauge(
            "memwatch_fork_episode_last_timestamp_seconds",
            "Unix time the last finished episode started.",
        );
        for (comm, st) in &t.stats {
            let c = [("comm", comm.as_str())];
            count.sample(&c, st.fork_seconds.count as f64);
            hist(&mut fork, &c, &st.fork_seconds);
            hist(&mut cow, &c, &st.cow_bytes);
            hist(
                &mut stall,
                &[("comm", comm), ("cause", "reclaim")],
                &st.reclaim_seconds,
            );
            hist(
                &mut stall,
                &[("comm", comm), ("cause", "dirty_throttle")],
                &st.throttle_seconds,
            );
            for (what, v) in last_figures(&st.last) {
                last.sample(&[("comm", comm), ("figure", what)], v);
            }
            last_time.sample(&c, st.last.started_unix_seconds);
        }
        let active = active_cow(&t);
        for f in [count, fork, cow, stall, last, last_time, active] {
            f.push_to(out);
        }
        Ok(())
    }
}

/// The figures of `memwatch_fork_episode_last`.
fn last_figures(e: &Episode) -> [(&'static str, f64); 7] {
    let ratio = if e.parent_rss_bytes > 0 {
        e.cow_bytes() as f64 / e.parent_rss_bytes as f64
    } else {
        0.0
    };
    [
        ("fork_seconds", e.fork_latency_seconds),
        ("cow_bytes", e.cow_bytes() as f64),
        ("cow_ratio", ratio),
        ("child_lifetime_seconds", e.child_lifetime_seconds),
        ("reclaim_stall_seconds", e.reclaim_stall_seconds),
        ("dirty_throttle_seconds", e.dirty_throttle_seconds),
        ("parent_rss_bytes", e.parent_rss_bytes as f64),
    ]
}

/// `memwatch_fork_episode_active_cow_bytes`: the running episodes.
fn active_cow(t: &Tracker) -> Family {
    let mut active = Family::gauge(
        "memwatch_fork_episode_active_cow_bytes",
        "COW bytes the parent has copied so far in a running episode (sampled every 100 ms).",
    );
    for e in t.active() {
        active.sample(
            &[
                ("comm", &e.comm),
                ("pid", &e.pid.to_string()),
                ("child_pid", &e.child_pid.to_string()),
            ],
            e.parent_cow_bytes as f64,
        );
    }
    active
}
