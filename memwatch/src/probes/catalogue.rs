//! The metrics the hooks feed, as data. Each probe area (`faults.rs`, `cow.rs`, ...)
//! lists, next to its hooks, the metrics they feed and on which rungs they appear; the
//! bpf collector (`collectors::bpf::render`) renders them from what it read.

use std::collections::HashMap;

use prometheus::proto::MetricFamily;

use super::table::{HookId, Mode};

/// Which rung each hook ended up on (absent: not attached).
pub type Attached = HashMap<HookId, Mode>;

/// When a metric (or one of its series) appears, by the rungs the hooks attached on.
#[derive(Debug, Clone, Copy)]
pub enum When {
    Always,
    /// The hook attached, on any rung.
    Attached(HookId),
    /// The hook attached on a function rung (fentry or kprobe).
    FunctionRung(HookId),
    /// The hook attached on its tracepoint rung.
    TracepointRung(HookId),
    All(&'static [When]),
    Any(&'static [When]),
}

impl When {
    pub fn holds(&self, attached: &Attached) -> bool {
        match *self {
            When::Always => true,
            When::Attached(h) => attached.contains_key(&h),
            When::FunctionRung(h) => matches!(attached.get(&h), Some(Mode::Fentry | Mode::Kprobe)),
            When::TracepointRung(h) => attached.get(&h) == Some(&Mode::Tracepoint),
            When::All(all) => all.iter().all(|w| w.holds(attached)),
            When::Any(any) => any.iter().any(|w| w.holds(attached)),
        }
    }
}

/// One series of a metric: the value of its label (`""`: the metric has no label), the
/// counter columns summed into it, and when it appears.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    pub value: &'static str,
    pub cols: &'static [usize],
    pub when: When,
}

/// A series that appears whenever its metric does (`value` `""`: the metric's only,
/// unlabelled, series).
pub const fn series(value: &'static str, cols: &'static [usize]) -> Series {
    Series {
        value,
        cols,
        when: When::Always,
    }
}

/// A counter fed by columns of one of the eBPF counter arrays.
///
/// In `Feeds::procs`, the columns are `proc::*` and `name` lacks its prefix: it is
/// exported as `memwatch_process_<name>` (labels pid, comm and `label`, the top
/// processes plus `other`) and `memwatch_cgroup_<name>` (labels cgroup and `label`).
/// In `Feeds::counters` the columns are slots of `GLOBALS` and `name` is the family's.
/// In `Feeds::nodes` they are per-node counters (`node::*`), with a `node` label first.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    /// The label distinguishing `series`, or None for one unlabelled series.
    pub label: Option<&'static str>,
    pub series: &'static [Series],
    /// Multiplier from the kernel's unit (ns to seconds, say).
    pub scale: f64,
    pub when: When,
}

/// A log2 duration histogram (`HISTS`), ns, exported in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Hist {
    pub hist: u32,
    pub name: &'static str,
    pub help: &'static str,
    /// The `proc::*` column holding the sum of the observed values.
    pub sum_col: usize,
    pub when: When,
}

/// A histogram also kept per process (`per_process`: labels pid and comm) or per
/// command name (label comm) in `KEYED_HISTS`: the top ones, the rest in `other`.
#[derive(Debug, Clone, Copy)]
pub struct KeyedHist {
    pub hist: Hist,
    pub per_process: bool,
}

/// A metric of an odd shape, rendered by its own function from the counters.
#[derive(Clone, Copy)]
pub struct Custom {
    pub when: When,
    pub render: fn(&Counters, &mut Vec<MetricFamily>),
}

impl std::fmt::Debug for Custom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custom").field("when", &self.when).finish()
    }
}

/// What one probe area's hooks feed.
#[derive(Debug, Clone, Copy)]
pub struct Feeds {
    pub procs: &'static [Metric],
    pub keyed_hists: &'static [KeyedHist],
    pub hists: &'static [Hist],
    pub custom: &'static [Custom],
    pub counters: &'static [Metric],
    pub nodes: &'static [Metric],
}

impl Feeds {
    pub const NONE: Feeds = Feeds {
        procs: &[],
        keyed_hists: &[],
        hists: &[],
        custom: &[],
        counters: &[],
        nodes: &[],
    };
}

/// One row of `DEVICES`: pages dirtied (`what` `DEV_DIRTIED`) or written (by
/// `reason`) on a backing device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub what: u32,
    pub reason: u32,
    pub pages: u64,
}

/// The summed counters a `Custom` renders from.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// `GLOBALS`, with the global values of the `proc::*` counters filled in.
    pub globals: Vec<u64>,
    /// The NUMA nodes that have memory.
    pub nodes: Vec<usize>,
    /// `NODES`: `nid * node::COUNTERS + counter`.
    pub node_vals: Vec<u64>,
    pub devices: Vec<Device>,
    pub page_size: u64,
}

pub use crate::metrics::at;

impl Counters {
    /// One `GLOBALS` slot (0 for a slot the object does not have).
    pub fn global(&self, slot: usize) -> u64 {
        at(&self.globals, slot)
    }

    /// The sum of some `GLOBALS` slots.
    pub fn globals_sum(&self, slots: &[usize]) -> u64 {
        slots.iter().map(|&s| self.global(s)).sum()
    }

    /// One node's counter (0 when absent).
    pub fn node_val(&self, nid: usize, counter: usize) -> u64 {
        at(
            &self.node_vals,
            nid * memwatch_common::node::COUNTERS + counter,
        )
    }
}
