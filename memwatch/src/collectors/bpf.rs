//! The eBPF programs' counters, read from their maps at scrape time.
//!
//! Per-process metrics come from one in-kernel table (`PROCS`) and are declared once
//! in `proc_metrics`; each is exported per process (top N + `other`) and per cgroup.
//! Global-only metrics (devices, nodes, LRU lists, histograms) follow.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    Ebpf,
};
use memwatch_common::{fault, global, hist, node, proc, stat, DevKey, HistKey, ProcCache, ProcRow};
use prometheus::proto::MetricFamily;

use super::{
    attribution::{comm_str, top_n, CgroupAccounts, Hierarchy, Row},
    Collector,
};
use crate::{metrics::Family, probes::table::Mode};

/// Which rung each hook ended up on (absent: not attached).
pub type Attached = StdHashMap<&'static str, Mode>;

/// How long an exited process keeps its own rows before they are folded into `other`.
const EXITED_GRACE: Duration = Duration::from_secs(300);

/// One per-process metric: exported as `memwatch_process_<name>` (labels pid, comm and
/// `label`) and `memwatch_cgroup_<name>` (labels cgroup and `label`).
struct ProcMetric {
    name: &'static str,
    help: &'static str,
    /// Label distinguishing series, with (value, columns summed) per series; or one
    /// unlabelled series.
    label: Option<&'static str>,
    series: Vec<(&'static str, Vec<usize>)>,
    /// Multiplier from the kernel's unit (ns to seconds, say).
    scale: f64,
}

fn fault_cols(kind: u32) -> Vec<usize> {
    (0..fault::MODES)
        .map(|m| fault::slot(kind, m) as usize)
        .collect()
}

fn is_function_rung(m: Option<&Mode>) -> bool {
    matches!(m, Some(Mode::Fentry | Mode::Kprobe))
}

/// The per-process metrics this set of attached hooks can feed.
fn proc_metrics(att: &Attached) -> Vec<ProcMetric> {
    let mut v = Vec::new();
    let one = |name, help, cols: Vec<usize>, scale| ProcMetric {
        name,
        help,
        label: None,
        series: vec![("", cols)],
        scale,
    };
    if att.contains_key("page_fault") {
        v.push(ProcMetric {
            name: "page_faults_total",
            help: "Page faults by kind (decoded from the x86 error code), user and kernel mode.",
            label: Some("kind"),
            series: (0..fault::KINDS)
                .map(|k| (fault::kind_name(k), fault_cols(k)))
                .collect(),
            scale: 1.0,
        });
    }
    match att.get("do_wp_page") {
        Some(Mode::Tracepoint) => v.push(one(
            "wp_faults_total",
            "Write-protect faults (writes to present pages: every COW), from the page-fault \
             tracepoints' error code.",
            fault_cols(fault::KIND_WRITE_PROTECT),
            1.0,
        )),
        Some(_) => {
            v.push(one(
                "wp_faults_total",
                "Write-protect faults handled (do_wp_page calls): every COW copy or reuse.",
                vec![proc::WP_CALLS],
                1.0,
            ));
            v.push(one(
                "wp_fault_seconds_total",
                "Time spent in do_wp_page (write-protect fault handling, including copies).",
                vec![proc::WP_NS],
                1e-9,
            ));
            if att.contains_key("cow_copy") {
                v.push(one(
                    "cow_copies_total",
                    "Write-protect faults that copied the page (copy-on-write copies).",
                    vec![proc::COW_COPIES],
                    1.0,
                ));
                v.push(one(
                    "cow_reuses_total",
                    "Write-protect faults that reused the page (sole owner, or a shared \
                     mapping), no copy.",
                    vec![proc::COW_REUSES],
                    1.0,
                ));
            }
        }
        None => {}
    }
    if att.contains_key("do_huge_pmd_wp_page") {
        v.push(one(
            "thp_wp_faults_total",
            "Write-protect faults on transparent huge pages (do_huge_pmd_wp_page).",
            vec![proc::THP_WP_FAULTS],
            1.0,
        ));
    }
    if is_function_rung(att.get("handle_mm_fault")) {
        v.push(ProcMetric {
            name: "faults_handled_total",
            help: "Faults completed by handle_mm_fault, major (needed I/O) or minor, counted \
                   like the kernel's maj_flt/min_flt.",
            label: Some("type"),
            series: vec![
                ("major", vec![proc::MAJOR_FAULTS]),
                ("minor", vec![proc::MINOR_FAULTS]),
            ],
            scale: 1.0,
        });
    }
    if att.contains_key("fork_syscalls") {
        v.push(ProcMetric {
            name: "forks_total",
            help: "Successful clone/clone3/fork/vfork calls by kind: fork (new address \
                   space), vfork, thread (CLONE_VM).",
            label: Some("kind"),
            series: vec![
                ("fork", vec![proc::FORKS]),
                ("vfork", vec![proc::VFORKS]),
                ("thread", vec![proc::THREADS]),
            ],
            scale: 1.0,
        });
        v.push(one(
            "fork_seconds_total",
            "Time the parent spent in fork syscalls (kind fork), entry to return.",
            vec![proc::FORK_NS],
            1e-9,
        ));
    }
    if att.contains_key("dup_mmap") {
        v.push(one(
            "dup_mmap_seconds_total",
            "Time spent copying the address space and page tables in fork (dup_mmap).",
            vec![proc::DUP_MMAP_NS],
            1e-9,
        ));
    }
    if att.contains_key("writeback_dirty") {
        v.push(one(
            "dirtied_pages_total",
            "Page-cache pages dirtied (one per folio).",
            vec![proc::DIRTIED],
            1.0,
        ));
    }
    if att.contains_key("balance_dirty_pages") {
        v.push(one(
            "dirty_throttle_pauses_total",
            "Pauses imposed by dirty throttling (balance_dirty_pages).",
            vec![proc::THROTTLE_COUNT],
            1.0,
        ));
        v.push(one(
            "dirty_throttle_seconds_total",
            "Time paused by dirty throttling (balance_dirty_pages).",
            vec![proc::THROTTLE_NS],
            1e-9,
        ));
    }
    if att.contains_key("direct_reclaim") || att.contains_key("memcg_reclaim") {
        let mut kinds = Vec::new();
        if att.contains_key("direct_reclaim") {
            kinds.push((
                "direct",
                proc::DIRECT_RECLAIM_COUNT,
                proc::DIRECT_RECLAIM_NS,
                proc::DIRECT_RECLAIMED,
            ));
        }
        if att.contains_key("memcg_reclaim") {
            kinds.push((
                "memcg",
                proc::MEMCG_RECLAIM_COUNT,
                proc::MEMCG_RECLAIM_NS,
                proc::MEMCG_RECLAIMED,
            ));
        }
        let series = |f: fn(&(&'static str, usize, usize, usize)) -> usize| {
            kinds.iter().map(|k| (k.0, vec![f(k)])).collect::<Vec<_>>()
        };
        v.push(ProcMetric {
            name: "reclaims_total",
            help: "Reclaim episodes a process had to run itself: direct (the system was \
                   short of memory) or memcg (its cgroup hit its limit).",
            label: Some("type"),
            series: series(|k| k.1),
            scale: 1.0,
        });
        v.push(ProcMetric {
            name: "reclaim_seconds_total",
            help: "Time a process stalled in reclaim it ran itself, direct or memcg.",
            label: Some("type"),
            series: series(|k| k.2),
            scale: 1e-9,
        });
        v.push(ProcMetric {
            name: "reclaimed_pages_total",
            help: "Pages freed by reclaim a process ran itself, direct or memcg.",
            label: Some("type"),
            series: series(|k| k.3),
            scale: 1.0,
        });
    }
    v
}

/// `enum wb_reason` names (the last slot: writeback outside flusher work, started by
/// the calling task: fsync() and the like on the function rungs, only
/// sync_inode/write_inode_now on the tracepoint rung).
fn wb_reason(i: usize) -> String {
    const NAMES: [&str; 8] = [
        "background",
        "vmscan",
        "sync",
        "periodic",
        "laptop_timer",
        "fs_free_space",
        "forker_thread",
        "foreign_flush",
    ];
    if i == global::WB_REASONS - 1 {
        "caller".into()
    } else {
        NAMES
            .get(i)
            .map_or_else(|| format!("reason_{i}"), |s| s.to_string())
    }
}

const LRU_LISTS: [&str; global::LRU_LISTS] = [
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
];

const THROTTLE_REASONS: [&str; global::THROTTLE_REASONS] =
    ["writeback", "isolated", "noprogress", "congested"];

/// Per-node vmscan metrics: (name, help, counter).
const NODE_METRICS: &[(&str, &str, usize)] = &[
    (
        "memwatch_kswapd_wakeups_total",
        "kswapd wake-ups (mm_vmscan_kswapd_wake).",
        node::KSWAPD_WAKE,
    ),
    (
        "memwatch_vmscan_inactive_scanned_pages_total",
        "Pages scanned on inactive lists (mm_vmscan_lru_shrink_inactive).",
        node::INACTIVE_SCANNED,
    ),
    (
        "memwatch_vmscan_inactive_reclaimed_pages_total",
        "Pages reclaimed from inactive lists: every reclaimer, memcg included (pgsteal).",
        node::INACTIVE_RECLAIMED,
    ),
    (
        "memwatch_vmscan_inactive_dirty_pages_total",
        "Dirty pages met while scanning inactive lists.",
        node::INACTIVE_DIRTY,
    ),
    (
        "memwatch_vmscan_inactive_writeback_pages_total",
        "Pages under writeback met while scanning inactive lists.",
        node::INACTIVE_WRITEBACK,
    ),
    (
        "memwatch_vmscan_inactive_congested_pages_total",
        "Dirty pages on congested devices met while scanning inactive lists.",
        node::INACTIVE_CONGESTED,
    ),
    (
        "memwatch_vmscan_inactive_immediate_pages_total",
        "Pages marked for immediate reclaim met while scanning inactive lists.",
        node::INACTIVE_IMMEDIATE,
    ),
    (
        "memwatch_vmscan_inactive_ref_keep_pages_total",
        "Referenced pages kept on the inactive list.",
        node::INACTIVE_REF_KEEP,
    ),
    (
        "memwatch_vmscan_inactive_unmap_fail_pages_total",
        "Pages that could not be unmapped.",
        node::INACTIVE_UNMAP_FAIL,
    ),
    (
        "memwatch_vmscan_active_taken_pages_total",
        "Pages taken off active lists to age (mm_vmscan_lru_shrink_active).",
        node::ACTIVE_TAKEN,
    ),
    (
        "memwatch_vmscan_active_kept_pages_total",
        "Pages kept active after aging.",
        node::ACTIVE_ACTIVE,
    ),
    (
        "memwatch_vmscan_active_referenced_pages_total",
        "Referenced pages met while aging active lists.",
        node::ACTIVE_REFERENCED,
    ),
    (
        "memwatch_vmscan_deactivated_pages_total",
        "Pages moved from active to inactive lists (pgdeactivate).",
        node::ACTIVE_DEACTIVATED,
    ),
];

/// Histograms: (hist id, metric name, help, hook, sum column in GLOBALS).
const GLOBAL_HISTS: &[(u32, &str, &str, &str, usize)] = &[
    (
        hist::WP_FAULT,
        "memwatch_wp_fault_duration_seconds",
        "Duration of write-protect fault handling (do_wp_page), copies included.",
        "do_wp_page",
        proc::WP_NS,
    ),
    (
        hist::DUP_MMAP,
        "memwatch_dup_mmap_duration_seconds",
        "Duration of the address-space and page-table copy in fork (dup_mmap).",
        "dup_mmap",
        proc::DUP_MMAP_NS,
    ),
    (
        hist::DIRECT_RECLAIM,
        "memwatch_direct_reclaim_duration_seconds",
        "Duration of direct reclaim episodes.",
        "direct_reclaim",
        proc::DIRECT_RECLAIM_NS,
    ),
    (
        hist::MEMCG_RECLAIM,
        "memwatch_memcg_reclaim_duration_seconds",
        "Duration of memory-cgroup limit reclaim episodes.",
        "memcg_reclaim",
        proc::MEMCG_RECLAIM_NS,
    ),
];

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

/// A keyed histogram's identity: (hist, tgid or 0, comm).
type KeyedId = (u32, u32, String);
/// A keyed histogram: bucket counts and sum (ns).
type KeyedHist = ([u64; hist::BUCKETS], u64);

/// Mutable state kept between scrapes.
#[derive(Default)]
struct State {
    cgroups: CgroupAccounts,
    /// When a table row's process was first seen gone.
    exited_since: StdHashMap<u32, Instant>,
    /// Rows this agent deleted from `PROCS` (aged out), for the eviction count.
    deleted: u64,
    /// The counts last exported per process: the floor of the next ones (see
    /// `ProcTable::read`).
    last: StdHashMap<u32, Counts>,
    /// `ProcTable::inconsistent`, as of the last read.
    inconsistent: u64,
}

/// The per-process counters of one process.
type Counts = [u64; proc::COUNTERS];

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
    fn read(&mut self) -> anyhow::Result<(Vec<Row>, Counts)> {
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
            add_cache(&mut rows[i].counts, c);
        }
        if !moved.is_empty() {
            match self.reread(&moved)? {
                Some((fixed, later)) => {
                    for (tgid, comm, counts) in fixed {
                        match at.get(&tgid) {
                            Some(&i) => rows[i].counts = counts,
                            None => {
                                at.insert(tgid, rows.len());
                                rows.push(Row { tgid, comm, counts });
                            }
                        }
                    }
                    caches = later;
                }
                // The floor in `Bpf::read_rows` keeps them from going backwards; the
                // next read sees what moved.
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
    fn row(&mut self, tgid: u32) -> Option<Counts> {
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

/// The maps this collector reads, taken out of the loaded object.
pub struct Bpf {
    globals: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    hists: PerCpuArray<MapData, u64>,
    nodes: PerCpuArray<MapData, u64>,
    procs: Arc<Mutex<ProcTable>>,
    keyed: HashMap<MapData, HistKey, u64>,
    devices: HashMap<MapData, DevKey, u64>,
    attached: Attached,
    metrics: Vec<ProcMetric>,
    hierarchy: Hierarchy,
    top_n: usize,
    max_entries: u32,
    page_size: u64,
    state: Mutex<State>,
}

impl Bpf {
    pub fn new(
        ebpf: &mut Ebpf,
        attached: Attached,
        top_n: usize,
        max_entries: u32,
    ) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Ok(Self {
            globals: PerCpuArray::try_from(take("GLOBALS")?)?,
            stats: PerCpuArray::try_from(take("STATS")?)?,
            hists: PerCpuArray::try_from(take("HISTS")?)?,
            nodes: PerCpuArray::try_from(take("NODES")?)?,
            procs: Arc::new(Mutex::new(ProcTable {
                procs: HashMap::try_from(take("PROCS")?)?,
                cache: PerCpuArray::try_from(take("PROC_CACHE")?)?,
                reading: Array::try_from(take("READING")?)?,
                inconsistent: 0,
            })),
            keyed: HashMap::try_from(take("KEYED_HISTS")?)?,
            devices: HashMap::try_from(take("DEVICES")?)?,
            metrics: proc_metrics(&attached),
            attached,
            hierarchy: Hierarchy::detect(),
            top_n,
            max_entries,
            page_size,
            state: Mutex::new(State::default()),
        })
    }

    /// A reader of single process rows, for fork episodes.
    pub fn rows(&self) -> ProcRows {
        ProcRows(self.procs.clone())
    }

    fn sum(array: &PerCpuArray<MapData, u64>, index: usize) -> anyhow::Result<u64> {
        Ok(array.get(&(index as u32), 0)?.iter().sum())
    }

    fn sum_all(array: &PerCpuArray<MapData, u64>, n: usize) -> anyhow::Result<Vec<u64>> {
        (0..n).map(|i| Self::sum(array, i)).collect()
    }

    fn has(&self, hook: &str) -> bool {
        self.attached.contains_key(hook)
    }

    /// Reads the process table, ages out rows of processes gone for longer than
    /// `EXITED_GRACE`, and returns the rest with live comms.
    fn read_rows(&self, state: &mut State) -> anyhow::Result<(Vec<Row>, Counts)> {
        let mut table = self.procs.lock().expect("procs lock");
        let (mut rows, totals) = table.read()?;
        state.inconsistent = table.inconsistent;
        // Counters only grow: should a read give up on a process (see
        // `ProcTable::read`), it shows the previous value, never a drop.
        for row in &mut rows {
            let last = state.last.entry(row.tgid).or_insert([0; proc::COUNTERS]);
            for (a, b) in row.counts.iter_mut().zip(last.iter_mut()) {
                *a = (*a).max(*b);
                *b = *a;
            }
        }
        let now = Instant::now();
        let mut keep = Vec::with_capacity(rows.len());
        let mut seen = HashSet::with_capacity(rows.len());
        for row in rows {
            seen.insert(row.tgid);
            // SAFETY: signal 0 only checks that the process exists.
            let alive = unsafe { libc::kill(row.tgid as i32, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
            if alive {
                state.exited_since.remove(&row.tgid);
            } else {
                let since = *state.exited_since.entry(row.tgid).or_insert(now);
                if now.duration_since(since) > EXITED_GRACE && table.procs.remove(&row.tgid).is_ok()
                {
                    state.deleted += 1;
                    state.exited_since.remove(&row.tgid);
                    state.last.remove(&row.tgid);
                    continue;
                }
            }
            keep.push(row);
        }
        state.exited_since.retain(|t, _| seen.contains(t));
        state.last.retain(|t, _| seen.contains(t));
        Ok((keep, totals))
    }

    fn collect_procs(
        &self,
        out: &mut Vec<MetricFamily>,
        rows: &mut [Row],
        globals: &[u64],
        state: &mut State,
    ) {
        let hierarchy = &self.hierarchy;
        state.cgroups.update(rows, |pid| hierarchy.cgroup_of(pid));
        // The top processes of every metric; only their names are looked up.
        let tops: Vec<Vec<usize>> = self
            .metrics
            .iter()
            .map(|m| {
                let cols: Vec<usize> = m.series.iter().flat_map(|s| s.1.iter().copied()).collect();
                top_n(rows, self.top_n, |r| r.sum(&cols))
            })
            .collect();
        let shown: HashSet<usize> = tops.iter().flatten().copied().collect();
        for i in shown {
            // The kernel keeps the comm of the first event, which for a forked child
            // that then execs is the parent's; a live process's current name wins.
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{}/comm", rows[i].tgid)) {
                rows[i].comm = c.trim_end().to_string();
            }
        }
        let rows = &*rows;
        for (m, top) in self.metrics.iter().zip(tops) {
            let cols: Vec<usize> = m.series.iter().flat_map(|s| s.1.iter().copied()).collect();
            let mut f = Family::counter(
                format!("memwatch_process_{}", m.name),
                format!(
                    "{} Per process: the top processes, the rest in pid=\"other\".",
                    m.help
                ),
            );
            for (value, scols) in &m.series {
                let global: u64 = scols.iter().map(|&c| globals[c]).sum();
                let mut shown = 0u64;
                for &i in &top {
                    let r = &rows[i];
                    let n = r.sum(scols);
                    shown += n;
                    let pid = r.tgid.to_string();
                    let mut labels = vec![("pid", pid.as_str()), ("comm", r.comm.as_str())];
                    if let Some(l) = m.label {
                        labels.push((l, value));
                    }
                    f.sample(&labels, n as f64 * m.scale);
                }
                let mut labels = vec![("pid", "other"), ("comm", "other")];
                if let Some(l) = m.label {
                    labels.push((l, value));
                }
                f.sample(&labels, global.saturating_sub(shown) as f64 * m.scale);
            }
            f.push_to(out);

            // Per cgroup: the largest by this metric, the rest in cgroup="other".
            let totals = &state.cgroups.totals;
            let mut cgs: Vec<(&String, u64)> = totals
                .iter()
                .map(|(cg, t)| (cg, cols.iter().map(|&c| t[c]).sum::<u64>()))
                .filter(|(_, n)| *n > 0)
                .collect();
            cgs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            cgs.truncate(self.top_n);
            let mut f = Family::counter(
                format!("memwatch_cgroup_{}", m.name),
                format!(
                    "{} Per cgroup (memory controller's hierarchy), the rest in cgroup=\"other\".",
                    m.help
                ),
            );
            for (value, scols) in &m.series {
                let global: u64 = scols.iter().map(|&c| globals[c]).sum();
                let mut shown = 0u64;
                for (cg, _) in &cgs {
                    let n: u64 = scols.iter().map(|&c| totals[*cg][c]).sum();
                    shown += n;
                    let mut labels = vec![("cgroup", cg.as_str())];
                    if let Some(l) = m.label {
                        labels.push((l, value));
                    }
                    f.sample(&labels, n as f64 * m.scale);
                }
                let mut labels = vec![("cgroup", "other")];
                if let Some(l) = m.label {
                    labels.push((l, value));
                }
                f.sample(&labels, global.saturating_sub(shown) as f64 * m.scale);
            }
            f.push_to(out);
        }
    }

    fn collect_keyed_hists(
        &self,
        out: &mut Vec<MetricFamily>,
        globals: &[u64],
    ) -> anyhow::Result<()> {
        // (hist, tgid, comm) -> bucket counts and sum.
        let mut by: BTreeMap<KeyedId, KeyedHist> = BTreeMap::new();
        for item in self.keyed.iter() {
            let (k, v) = item.context("reading KEYED_HISTS")?;
            let e = by
                .entry((k.hist, k.tgid, comm_str(&k.comm)))
                .or_insert(([0; hist::BUCKETS], 0));
            if k.bucket == hist::SUM_BUCKET {
                e.1 += v;
            } else if (k.bucket as usize) < hist::BUCKETS {
                e.0[k.bucket as usize] += v;
            }
        }
        let global_hist = |h: u32| -> anyhow::Result<[u64; hist::BUCKETS]> {
            let mut a = [0u64; hist::BUCKETS];
            for (b, x) in a.iter_mut().enumerate() {
                *x = Self::sum(&self.hists, h as usize * hist::BUCKETS + b)?;
            }
            Ok(a)
        };
        let specs: [(u32, &str, &str, &str, usize, bool); 2] = [
            (hist::FORK, "memwatch_fork_duration_seconds", "Duration of fork syscalls (kind fork), entry to the parent's return, per command name; the rest in comm=\"other\".", "fork_syscalls", proc::FORK_NS, false),
            (hist::THROTTLE, "memwatch_dirty_throttle_pause_seconds", "Dirty-throttling pauses (balance_dirty_pages) per process; the rest in pid=\"other\".", "balance_dirty_pages", proc::THROTTLE_NS, true),
        ];
        for (h, name, help, hook, sum_col, per_process) in specs {
            if !self.has(hook) {
                continue;
            }
            let mut groups: Vec<(&KeyedId, &KeyedHist)> =
                by.iter().filter(|(k, _)| k.0 == h).collect();
            groups.sort_by_key(|(_, v)| std::cmp::Reverse(v.0.iter().sum::<u64>()));
            groups.truncate(self.top_n);
            let mut rest = global_hist(h)?;
            let mut rest_sum = globals[sum_col];
            let mut f = Family::histogram(name, help);
            for ((_, tgid, comm), (counts, sum)) in &groups {
                for (r, c) in rest.iter_mut().zip(counts.iter()) {
                    *r = r.saturating_sub(*c);
                }
                rest_sum = rest_sum.saturating_sub(*sum);
                let (buckets, count) = prom_buckets(counts);
                let pid = tgid.to_string();
                let labels: Vec<(&str, &str)> = if per_process {
                    vec![("pid", &pid), ("comm", comm)]
                } else {
                    vec![("comm", comm)]
                };
                f.histogram_sample(&labels, &buckets, count, *sum as f64 * 1e-9);
            }
            let (buckets, count) = prom_buckets(&rest);
            let labels: Vec<(&str, &str)> = if per_process {
                vec![("pid", "other"), ("comm", "other")]
            } else {
                vec![("comm", "other")]
            };
            f.histogram_sample(&labels, &buckets, count, rest_sum as f64 * 1e-9);
            f.push_to(out);
        }
        for &(h, name, help, hook, sum_col) in GLOBAL_HISTS {
            // do_wp_page on the tracepoint rung has no durations.
            if !self.has(hook)
                || (hook == "do_wp_page" && !is_function_rung(self.attached.get(hook)))
            {
                continue;
            }
            let (buckets, count) = prom_buckets(&global_hist(h)?);
            let mut f = Family::histogram(name, help);
            f.histogram_sample(&[], &buckets, count, globals[sum_col] as f64 * 1e-9);
            f.push_to(out);
        }
        Ok(())
    }

    fn collect_devices(&self, out: &mut Vec<MetricFamily>, globals: &[u64]) -> anyhow::Result<()> {
        let mut dirtied: BTreeMap<String, u64> = BTreeMap::new();
        let mut written: BTreeMap<(String, usize), u64> = BTreeMap::new();
        for item in self.devices.iter() {
            let (k, v) = item.context("reading DEVICES")?;
            let end = k.name.iter().position(|&b| b == 0).unwrap_or(k.name.len());
            let dev = String::from_utf8_lossy(&k.name[..end]).into_owned();
            match k.what {
                memwatch_common::DEV_DIRTIED => *dirtied.entry(dev).or_default() += v,
                _ => *written.entry((dev, k.reason as usize)).or_default() += v,
            }
        }
        if self.has("writeback_dirty") {
            let mut f = Family::counter(
                "memwatch_dirtied_pages_total",
                "Page-cache pages dirtied (one per folio), per backing device (bdi name, e.g. \
                 254:0); device=\"other\" holds what the device table could not.",
            );
            let shown: u64 = dirtied.values().sum();
            for (dev, n) in &dirtied {
                f.sample(&[("device", dev)], *n as f64);
            }
            f.sample(
                &[("device", "other")],
                globals[proc::DIRTIED].saturating_sub(shown) as f64,
            );
            f.push_to(out);
        }
        if self.has("writeback_written") {
            let mut f = Family::counter(
                "memwatch_writeback_written_pages_total",
                "Pages written back, per device and reason (the flusher work's wb_reason; \
                 caller: writeback the calling task started, e.g. fsync(), \
                 sync_file_range(), O_SYNC writes, sync_inode). On the tracepoint rung only \
                 flusher and sync_inode writeback, and ext4's own, is seen; \
                 device=\"other\" holds what no device was named for (there: fsync and \
                 the like).",
            );
            for r in 0..global::WB_REASONS {
                let reason = wb_reason(r);
                let mut shown = 0;
                for ((dev, rr), n) in &written {
                    if *rr == r {
                        shown += n;
                        f.sample(&[("device", dev), ("reason", &reason)], *n as f64);
                    }
                }
                let rest = globals[global::WRITTEN + r].saturating_sub(shown);
                if rest > 0 {
                    f.sample(&[("device", "other"), ("reason", &reason)], rest as f64);
                }
            }
            f.push_to(out);
        }
        Ok(())
    }

    fn collect_global(&self, out: &mut Vec<MetricFamily>, globals: &[u64]) -> anyhow::Result<()> {
        if self.has("page_fault") {
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
                        globals[fault::slot(kind, mode) as usize] as f64,
                    );
                }
            }
            f.push_to(out);
        }
        if is_function_rung(self.attached.get("do_wp_page")) && self.has("cow_copy") {
            let mut f = Family::counter(
                "memwatch_cow_copied_bytes_total",
                "Bytes copied by copy-on-write (copies times the page size).",
            );
            f.sample(&[], (globals[proc::COW_COPIES] * self.page_size) as f64);
            f.push_to(out);
        }
        if self.has("vmscan_write") {
            let mut f = Family::counter(
                "memwatch_vmscan_write_pages_total",
                "Pages reclaim wrote out itself (mm_vmscan_write_folio), one per folio.",
            );
            f.sample(
                &[("type", "anon")],
                globals[global::VMSCAN_WRITE_ANON] as f64,
            );
            f.sample(
                &[("type", "file")],
                globals[global::VMSCAN_WRITE_FILE] as f64,
            );
            f.push_to(out);
        }
        if self.has("vmscan_throttled") {
            let mut n = Family::counter(
                "memwatch_vmscan_throttled_total",
                "Times reclaim was throttled (mm_vmscan_throttled), by reason.",
            );
            let mut s = Family::counter(
                "memwatch_vmscan_throttled_seconds_total",
                "Time reclaim was throttled, by reason.",
            );
            for (i, r) in THROTTLE_REASONS.iter().enumerate() {
                n.sample(&[("reason", r)], globals[global::THROTTLED + i] as f64);
                s.sample(
                    &[("reason", r)],
                    globals[global::THROTTLED_US + i] as f64 * 1e-6,
                );
            }
            n.push_to(out);
            s.push_to(out);
        }
        if self.has("lru_insertion") {
            let mut f = Family::counter(
                "memwatch_lru_insertions_total",
                "Folios added to an LRU list (mm_lru_insertion), per list.",
            );
            for (i, l) in LRU_LISTS.iter().enumerate() {
                f.sample(&[("list", l)], globals[global::LRU_INSERT + i] as f64);
            }
            f.push_to(out);
        }
        if self.has("lru_activate") {
            let mut f = Family::counter(
                "memwatch_lru_activations_total",
                "Folios activated on access (mm_lru_activate: folio_activate).",
            );
            f.sample(&[], globals[global::LRU_ACTIVATE] as f64);
            f.push_to(out);
        }
        // Per-node vmscan counters, for the nodes that exist.
        let nodes = online_nodes();
        let node_vals = Self::sum_all(&self.nodes, node::MAX_NODES * node::COUNTERS)?;
        let hook_of = |c: usize| match c {
            node::KSWAPD_WAKE => "kswapd_wake",
            c if c <= node::INACTIVE_UNMAP_FAIL => "lru_shrink_inactive",
            _ => "lru_shrink_active",
        };
        for &(name, help, c) in NODE_METRICS {
            if !self.has(hook_of(c)) {
                continue;
            }
            let mut f = Family::counter(name, help);
            for &nid in &nodes {
                f.sample(
                    &[("node", &nid.to_string())],
                    node_vals[nid * node::COUNTERS + c] as f64,
                );
            }
            f.push_to(out);
        }
        if self.has("lru_shrink_inactive") {
            let mut f = Family::counter(
                "memwatch_vmscan_inactive_activated_pages_total",
                "Pages moved back to an active list while scanning inactive lists.",
            );
            for &nid in &nodes {
                let n = nid.to_string();
                let base = nid * node::COUNTERS;
                f.sample(
                    &[("node", &n), ("type", "anon")],
                    node_vals[base + node::INACTIVE_ACTIVATE_ANON] as f64,
                );
                f.sample(
                    &[("node", &n), ("type", "file")],
                    node_vals[base + node::INACTIVE_ACTIVATE_FILE] as f64,
                );
            }
            f.push_to(out);
        }
        Ok(())
    }

    fn collect_health(
        &self,
        out: &mut Vec<MetricFamily>,
        live: usize,
        state: &State,
    ) -> anyhow::Result<()> {
        let stat = |i| Self::sum(&self.stats, i as usize);
        let inserts = stat(stat::PROC_INSERTS)?;
        let mut f = Family::gauge("memwatch_table_entries", "Rows in an in-kernel table.");
        f.sample(&[("table", "procs")], live as f64);
        f.push_to(out);
        let mut f = Family::gauge(
            "memwatch_table_max_entries",
            "Capacity of an in-kernel table (procs: tables.process_max_entries).",
        );
        f.sample(&[("table", "procs")], self.max_entries as f64);
        f.push_to(out);
        let mut f = Family::counter(
            "memwatch_table_evictions_total",
            "Rows the kernel evicted from a full LRU table; their counts live on in the \
             \"other\" rows.",
        );
        f.sample(
            &[("table", "procs")],
            inserts.saturating_sub(live as u64 + state.deleted) as f64,
        );
        f.push_to(out);
        let mut f = Family::counter(
            "memwatch_table_aged_out_total",
            "Rows of processes gone for more than 5 minutes, removed by memwatch; their \
             counts live on in the \"other\" rows.",
        );
        f.sample(&[("table", "procs")], state.deleted as f64);
        f.push_to(out);
        let mut f = Family::counter(
            "memwatch_table_insert_errors_total",
            "Rows that could not be inserted into an in-kernel table; their events are in \
             the \"other\" rows.",
        );
        f.sample(
            &[("table", "procs")],
            stat(stat::PROC_INSERT_ERRORS)? as f64,
        );
        f.sample(
            &[("table", "keyed")],
            stat(stat::KEYED_INSERT_ERRORS)? as f64,
        );
        f.push_to(out);
        let mut f = Family::counter(
            "memwatch_tracepoint_read_errors_total",
            "Tracepoint records the programs could not read (the event is dropped).",
        );
        f.sample(&[], stat(stat::TP_READ_ERRORS)? as f64);
        f.push_to(out);
        let mut f = Family::counter(
            "memwatch_missed_entries_total",
            "Function or syscall exits whose entry was not seen (attached mid-call, or the \
             pending table was full); their durations are not counted.",
        );
        f.sample(&[], stat(stat::MISSED_ENTRIES)? as f64);
        f.push_to(out);
        let mut f = Family::counter(
            "memwatch_table_inconsistent_reads_total",
            "Reads of an in-kernel table during which a process's cached counts kept \
             moving into it, so that process showed its previous counts (the next read \
             has them).",
        );
        f.sample(&[("table", "procs")], state.inconsistent as f64);
        f.push_to(out);
        Ok(())
    }
}

/// Reads single rows of the per-process table.
#[derive(Clone)]
pub struct ProcRows(Arc<Mutex<ProcTable>>);

impl crate::episodes::RowSource for ProcRows {
    fn row(&self, tgid: u32) -> Option<crate::episodes::Counts> {
        self.0.lock().expect("procs lock").row(tgid)
    }
}

/// NUMA nodes that have memory (node 0 when sysfs can't say).
fn online_nodes() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/node/online").unwrap_or_default();
    let mut v = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            v.extend((a..=b).filter(|&n| n < node::MAX_NODES));
        }
    }
    if v.is_empty() {
        v.push(0);
    }
    v
}

impl Collector for Bpf {
    fn name(&self) -> &'static str {
        "bpf"
    }

    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
        let mut state = self.state.lock().expect("state lock");
        // Tables first, then the global counters: the globals only grow, so they are
        // never behind the rows read before them (the per-process counters' globals
        // come with the caches, read after the table).
        let (mut rows, totals) = self.read_rows(&mut state)?;
        let mut globals = Self::sum_all(&self.globals, global::SLOTS)?;
        for (g, t) in globals.iter_mut().zip(totals) {
            *g += t;
        }
        self.collect_procs(out, &mut rows, &globals, &mut state);
        self.collect_keyed_hists(out, &globals)?;
        self.collect_devices(out, &globals)?;
        self.collect_global(out, &globals)?;
        self.collect_health(out, rows.len(), &state)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut att = Attached::new();
        att.insert("page_fault", Mode::Tracepoint);
        att.insert("do_wp_page", Mode::Tracepoint);
        let names: Vec<_> = proc_metrics(&att).iter().map(|m| m.name).collect();
        assert_eq!(names, ["page_faults_total", "wp_faults_total"]);
        att.insert("do_wp_page", Mode::Fentry);
        att.insert("cow_copy", Mode::Fentry);
        let names: Vec<_> = proc_metrics(&att).iter().map(|m| m.name).collect();
        assert!(names.contains(&"cow_copies_total"), "{names:?}");
        assert!(names.contains(&"wp_fault_seconds_total"), "{names:?}");
    }

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

    #[test]
    fn node_list() {
        assert!(!online_nodes().is_empty());
    }
}
