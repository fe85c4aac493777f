//! Fork episodes: from a watched process's fork to its child's exit, what the fork
//! cost the parent (fork latency, COW copies, reclaim and dirty-throttle stalls) and
//! why. Fed by fork/exit events from the kernel (ring buffer) and the per-process
//! table, read at the fork, every 100 ms while the child lives, and at its exit.

pub mod context;
pub mod report;
pub mod verdict;

use std::{
    collections::{HashMap, VecDeque},
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use memwatch_common::{fault, proc, Event, EVENT_EXIT, EVENT_FORK};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Episodes as Config, Tables as Caps},
    host::Host,
    metrics::at,
    metrics::{TableGauge, Tables},
    parse::{comm_str, in_cgroup, CommPattern},
};
use context::HostContext;

/// A fork episode, as logged (one JSON object per line) and served.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Episode {
    pub id: u64,
    /// The parent: pid and comm.
    pub pid: u32,
    pub comm: String,
    /// The watch rule that matched (`comm:redis-server`, `pid:42`, `cgroup:/x`).
    pub watched: String,
    pub child_pid: u32,
    /// RFC 3339 UTC time of the fork.
    pub started_at: String,
    pub started_unix_seconds: f64,
    /// Still running (only in `active` lists).
    pub active: bool,
    pub child_lifetime_seconds: f64,
    /// Wait status of the child (exit code << 8 | signal), if known.
    pub child_exit_code: Option<u32>,
    pub fork_latency_seconds: f64,
    /// dup_mmap time (address space and page-table copy), 0 where no function hook
    /// attaches.
    pub page_table_copy_seconds: f64,
    pub parent_rss_bytes: u64,
    pub parent_anon_bytes: u64,
    /// Pages the parent copied on write during the child's life.
    pub parent_cow_pages: u64,
    pub parent_cow_bytes: u64,
    pub child_cow_pages: u64,
    pub child_cow_bytes: u64,
    /// Memory the child wrote that it did not share with the parent (first-touch
    /// writes: write faults on pages not present), bytes.
    pub child_new_bytes: u64,
    /// How COW pages were counted: `copies` (do_wp_page without reuse, exact) or
    /// `write_protect_faults` (tracepoint rung: every write-protect fault of the
    /// process counts as a copy while the child shares its memory).
    pub cow_source: String,
    /// Highest parent COW rate over a 100 ms sample, bytes per second.
    pub peak_cow_bytes_per_second: f64,
    /// Time in do_wp_page (function rungs only).
    pub cow_fault_seconds: f64,
    pub longest_cow_fault_seconds: f64,
    pub thp_cow_faults: u64,
    pub reclaim_stall_seconds: f64,
    pub dirty_throttle_seconds: f64,
    pub host: HostContext,
    pub verdict: String,
    pub findings: Vec<String>,
}

impl Episode {
    /// Everything copied on write in the episode, parent and child: what Redis reports
    /// as `rdb_last_cow_size` / `aof_last_cow_size` (the child's private dirty memory).
    pub fn cow_bytes(&self) -> u64 {
        self.parent_cow_bytes + self.child_cow_bytes
    }
}

/// Which processes' forks become episodes.
pub struct Watch {
    comms: Vec<CommPattern>,
    pids: Vec<u32>,
    cgroups: Vec<String>,
}

impl Watch {
    pub fn new(cfg: &Config) -> Self {
        Self {
            comms: cfg.watch_comms.iter().map(CommPattern::new).collect(),
            pids: cfg.watch_pids.clone(),
            cgroups: cfg.watch_cgroups.clone(),
        }
    }

    /// The rule that makes `pid` (named `comm`) watched, if any; its cgroups are read
    /// from the host's procfs.
    pub fn matches(&self, host: &Host, pid: u32, comm: &str) -> Option<String> {
        if let Some(p) = self.comms.iter().find(|p| p.matches(comm)) {
            return Some(format!("comm:{p}"));
        }
        if self.pids.contains(&pid) {
            return Some(format!("pid:{pid}"));
        }
        if !self.cgroups.is_empty() {
            let text = host.cgroup_file(pid).unwrap_or_default();
            if let Some(c) = self.cgroups.iter().find(|c| in_cgroup(&text, c)) {
                return Some(format!("cgroup:{c}"));
            }
        }
        None
    }
}

/// Counters of one process read from the per-process table.
pub type Counts = [u64; proc::COUNTERS];

/// Reads a process's row of the per-process table.
pub trait RowSource: Send {
    fn row(&self, tgid: u32) -> Option<Counts>;
}

/// Rows by tgid, for tests.
#[cfg(test)]
impl RowSource for HashMap<u32, Counts> {
    fn row(&self, tgid: u32) -> Option<Counts> {
        self.get(&tgid).copied()
    }
}

/// How COW is counted on this kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CowSource {
    /// New anonymous pages mapped inside do_wp_page (function rungs with cow_copy).
    Copies,
    /// Write-protect faults (tracepoint rung).
    WriteProtectFaults,
}

impl CowSource {
    fn pages(self, c: &Counts) -> u64 {
        match self {
            CowSource::Copies => at(c, proc::COW_COPIES),
            CowSource::WriteProtectFaults => {
                at(
                    c,
                    fault::slot(fault::KIND_WRITE_PROTECT, fault::MODE_USER) as usize,
                ) + at(
                    c,
                    fault::slot(fault::KIND_WRITE_PROTECT, fault::MODE_KERNEL) as usize,
                )
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            CowSource::Copies => "copies",
            CowSource::WriteProtectFaults => "write_protect_faults",
        }
    }
}

struct Active {
    episode: Episode,
    start_mono_ns: u64,
    start: Counts,
    /// Last sample: (monotonic ns, parent COW pages).
    last: (u64, u64),
}

/// A fixed-bucket histogram (upper bounds ascending).
#[derive(Debug, Clone)]
pub struct Hist {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
pub const BYTES_BUCKETS: &[f64] = &[
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
    17179869184.0,
    68719476736.0,
];

/// Per watched command: finished episodes and their distributions.
#[derive(Debug, Clone)]
pub struct Stats {
    pub fork_seconds: Hist,
    pub cow_bytes: Hist,
    pub reclaim_seconds: Hist,
    pub throttle_seconds: Hist,
    pub last: Episode,
    /// When `last` ended, in episodes ended so far (the cap evicts the lowest).
    ended: u64,
}

/// The tracker's tables: each capped (`[tables]` `episode_*_max_entries`), with its
/// figures for `memwatch_table_*`. A comm pattern matches any process that names
/// itself so, and a watched process may fork as often as it likes: the caps keep a
/// local user from growing memwatch's memory or its series.
struct Bounds {
    /// Running episodes: when full, a new fork evicts the oldest running episode of
    /// the parent with the most running episodes (a parent with few, such as a Redis
    /// with its one child, keeps its episode against one that forks many).
    active: Arc<TableGauge>,
    /// Finished episodes: the oldest goes.
    finished: Arc<TableGauge>,
    /// Per-comm metrics: the comm whose last episode ended least recently goes (its
    /// series with it; should it come back, they start over).
    comms: Arc<TableGauge>,
}

impl Bounds {
    fn new(caps: &Caps) -> Self {
        Self {
            active: Arc::new(TableGauge::new(caps.episode_active_max_entries)),
            finished: Arc::new(TableGauge::new(caps.episode_finished_max_entries)),
            comms: Arc::new(TableGauge::new(caps.episode_comm_max_entries)),
        }
    }

    fn cap(t: &TableGauge) -> usize {
        (t.get().1 as usize).max(1)
    }
}

/// Tracks episodes; owned by the agent behind a mutex.
pub struct Tracker {
    host: Arc<Host>,
    watch: Watch,
    cow: CowSource,
    page_size: u64,
    active: HashMap<u32, Active>,
    pub finished: VecDeque<Episode>,
    next_id: u64,
    log: Option<Box<dyn Write + Send>>,
    /// Finished episodes per parent comm, for metrics.
    pub stats: std::collections::BTreeMap<String, Stats>,
    /// Episodes ended so far.
    ended: u64,
    bounds: Bounds,
    /// The start/end lines of the daemon's own log, rate-limited.
    lines: LogBudget,
}

/// At most `PER_MINUTE` start/end lines a minute in the daemon's log: a process that
/// takes a watched name and forks thousands of children would flood the journal. The
/// episode log (`episodes.log`) and the metrics still get every episode.
#[derive(Default)]
struct LogBudget {
    window_start_ns: u64,
    used: u32,
    held_back: u64,
}

impl LogBudget {
    const PER_MINUTE: u32 = 60;
    const WINDOW_NS: u64 = 60_000_000_000;

    /// Whether one more line may go to the log at info level now; says how many were
    /// held back when a new window opens.
    fn take(&mut self, now_ns: u64) -> bool {
        if now_ns.saturating_sub(self.window_start_ns) >= Self::WINDOW_NS {
            if self.held_back > 0 {
                log::info!(
                    "fork episodes: {} start/end lines were not logged in the last minute \
                     (over {} a minute: a fork storm by a watched name?); every episode is \
                     in memwatch_fork_episodes_total and the episode log",
                    self.held_back,
                    Self::PER_MINUTE
                );
            }
            *self = Self {
                window_start_ns: now_ns,
                ..Default::default()
            };
        }
        if self.used < Self::PER_MINUTE {
            self.used += 1;
            true
        } else {
            self.held_back += 1;
            false
        }
    }

    fn level(&mut self) -> log::Level {
        if self.take(mono_ns()) {
            log::Level::Info
        } else {
            log::Level::Debug
        }
    }
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// RFC 3339 UTC from a Unix time, without a date crate.
pub fn rfc3339(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let ms = ((unix - secs as f64) * 1000.0) as u32;
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// VmRSS and RssAnon of a process, bytes (0 when unknown).
fn rss(host: &Host, pid: u32) -> (u64, u64) {
    let text = host.status(pid).unwrap_or_default();
    let field = |name| crate::parse::meminfo::field_bytes(&text, name).unwrap_or(0);
    (field("VmRSS"), field("RssAnon"))
}

impl Tracker {
    pub fn new(cfg: &Config, cow: CowSource, host: Arc<Host>) -> std::io::Result<Self> {
        let log: Option<Box<dyn Write + Send>> = match cfg.log.as_str() {
            "none" | "" => None,
            "stdout" => Some(Box::new(std::io::stdout())),
            path => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        };
        Ok(Self {
            page_size: host.page_size(),
            host,
            watch: Watch::new(cfg),
            cow,
            active: HashMap::new(),
            finished: VecDeque::new(),
            next_id: 1,
            log,
            stats: Default::default(),
            ended: 0,
            bounds: Bounds::new(&Caps::default()),
            lines: LogBudget::default(),
        })
    }

    /// Applies the caps of `[tables]` (the defaults until then) and adds the tracker's
    /// tables to `tables`, for export.
    pub fn bound(&mut self, caps: &Caps, tables: &Tables) {
        let b = &self.bounds;
        b.active.set_capacity(caps.episode_active_max_entries);
        b.finished.set_capacity(caps.episode_finished_max_entries);
        b.comms.set_capacity(caps.episode_comm_max_entries);
        tables.add("episodes_active", b.active.clone());
        tables.add("episodes_finished", b.finished.clone());
        tables.add("episode_comms", b.comms.clone());
        while self.finished.len() > Bounds::cap(&b.finished) {
            self.finished.pop_front();
            b.finished.evicted(1);
        }
        self.evict_comms();
        self.update_entries();
    }

    fn update_entries(&self) {
        self.bounds.active.set_entries(self.active.len());
        self.bounds.finished.set_entries(self.finished.len());
        self.bounds.comms.set_entries(self.stats.len());
    }

    /// Makes room for one more running episode: evicts the oldest running episode of
    /// the parent with the most (ties: the parent whose oldest is older).
    fn make_room(&mut self) {
        let cap = Bounds::cap(&self.bounds.active);
        while self.active.len() >= cap {
            // parent -> (running episodes, oldest: (id, child)).
            let mut by_parent: HashMap<u32, (usize, (u64, u32))> = HashMap::new();
            for (&child, a) in &self.active {
                let e = by_parent
                    .entry(a.episode.pid)
                    .or_insert((0, (a.episode.id, child)));
                e.0 += 1;
                e.1 = e.1.min((a.episode.id, child));
            }
            let victim = by_parent
                .values()
                .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
                .map(|(_, (_, child))| *child);
            let Some(child) = victim else { return };
            if let Some(a) = self.active.remove(&child) {
                log::debug!(
                    "fork episode {} of {} ({:?}) evicted: tables.episode_active_max_entries = {cap} \
                     episodes are running",
                    a.episode.id,
                    a.episode.pid,
                    a.episode.comm
                );
                self.bounds.active.evicted(1);
            }
        }
    }

    /// Evicts per-comm metrics beyond the cap: the comm whose last episode ended least
    /// recently first.
    fn evict_comms(&mut self) {
        let cap = Bounds::cap(&self.bounds.comms);
        while self.stats.len() > cap {
            let oldest = self
                .stats
                .iter()
                .min_by_key(|(_, st)| st.ended)
                .map(|(c, _)| c.clone());
            let Some(comm) = oldest else { return };
            self.stats.remove(&comm);
            self.bounds.comms.evicted(1);
        }
    }

    /// Handles one event from the kernel.
    pub fn on_event(&mut self, ev: &Event, rows: &dyn RowSource) {
        match ev.kind {
            EVENT_FORK => self.on_fork(ev, rows),
            EVENT_EXIT => {
                if let Some(a) = self.active.remove(&ev.tgid) {
                    let code = (ev.exit_code != u32::MAX).then_some(ev.exit_code);
                    self.finish(a, ev.ts_ns, code, rows);
                }
            }
            _ => {}
        }
        self.update_entries();
    }

    fn on_fork(&mut self, ev: &Event, rows: &dyn RowSource) {
        let comm = comm_str(&ev.comm);
        let Some(watched) = self.watch.matches(&self.host, ev.tgid, &comm) else {
            return;
        };
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // The event's timestamp is the fork's return; back-date to its start.
        let lag = mono_ns().saturating_sub(ev.ts_ns) + ev.fork_ns;
        let started = now_unix - lag as f64 * 1e-9;
        let (rss_bytes, anon) = rss(&self.host, ev.tgid);
        let start = rows.row(ev.tgid).unwrap_or([0; proc::COUNTERS]);
        let episode = Episode {
            id: self.next_id,
            pid: ev.tgid,
            comm,
            watched,
            child_pid: ev.child,
            started_at: rfc3339(started),
            started_unix_seconds: started,
            active: true,
            fork_latency_seconds: ev.fork_ns as f64 * 1e-9,
            page_table_copy_seconds: ev.dup_mmap_ns as f64 * 1e-9,
            parent_rss_bytes: rss_bytes,
            parent_anon_bytes: anon,
            cow_source: self.cow.name().into(),
            host: HostContext::capture(&self.host),
            ..Default::default()
        };
        self.next_id += 1;
        log::log!(
            self.lines.level(),
            "fork episode {} started: {} ({:?}) forked {} in {:.1} ms",
            episode.id,
            episode.pid,
            episode.comm,
            episode.child_pid,
            episode.fork_latency_seconds * 1e3
        );
        let cow = self.cow.pages(&start);
        if let Some(old) = self.active.remove(&ev.child) {
            // The kernel streams a child's exit before any later fork that reuses its
            // pid: that earlier child is gone and its exit was lost.
            self.finish(old, ev.ts_ns, None, rows);
        }
        if !self.active.contains_key(&ev.child) {
            self.make_room();
        }
        self.active.insert(
            ev.child,
            Active {
                episode,
                start_mono_ns: ev.ts_ns,
                start,
                last: (ev.ts_ns, cow),
            },
        );
    }

    /// Samples active episodes (every 100 ms): COW so far and its peak rate; ends
    /// episodes whose child vanished without an exit event.
    pub fn sample(&mut self, rows: &dyn RowSource) {
        let now = mono_ns();
        let mut gone = Vec::new();
        // Each parent's row once, however many children it has running.
        let mut parents: HashMap<u32, Option<Counts>> = HashMap::new();
        for (child, a) in self.active.iter_mut() {
            let pid = a.episode.pid;
            let Some(row) = *parents.entry(pid).or_insert_with(|| rows.row(pid)) else {
                continue;
            };
            let cow = self.cow.pages(&row);
            let (t0, c0) = a.last;
            if now > t0 + 50_000_000 {
                let rate = cow.saturating_sub(c0) as f64 * self.page_size as f64
                    / ((now - t0) as f64 * 1e-9);
                a.episode.peak_cow_bytes_per_second = a.episode.peak_cow_bytes_per_second.max(rate);
                a.last = (now, cow);
            }
            a.episode.parent_cow_pages = cow.saturating_sub(self.cow.pages(&a.start));
            a.episode.parent_cow_bytes = a.episode.parent_cow_pages * self.page_size;
            a.episode.child_lifetime_seconds = (now - a.start_mono_ns) as f64 * 1e-9;
            if !self.host.is_alive(*child) {
                gone.push(*child);
            }
        }
        for child in gone {
            if let Some(a) = self.active.remove(&child) {
                log::debug!("child {child} gone without an exit event");
                self.finish(a, now, None, rows);
            }
        }
        self.update_entries();
    }

    fn finish(&mut self, a: Active, end_ns: u64, code: Option<u32>, rows: &dyn RowSource) {
        let Active {
            mut episode,
            start_mono_ns,
            start,
            ..
        } = a;
        let end = rows.row(episode.pid).unwrap_or(start);
        let d = |i: usize| at(&end, i).saturating_sub(at(&start, i));
        let child = rows.row(episode.child_pid).unwrap_or([0; proc::COUNTERS]);
        episode.active = false;
        episode.child_exit_code = code;
        episode.child_lifetime_seconds = end_ns.saturating_sub(start_mono_ns) as f64 * 1e-9;
        episode.parent_cow_pages = self.cow.pages(&end).saturating_sub(self.cow.pages(&start));
        episode.parent_cow_bytes = episode.parent_cow_pages * self.page_size;
        episode.child_cow_pages = self.cow.pages(&child);
        episode.child_cow_bytes = episode.child_cow_pages * self.page_size;
        episode.child_new_bytes = (at(
            &child,
            fault::slot(fault::KIND_WRITE_NOT_PRESENT, fault::MODE_USER) as usize,
        ) + at(
            &child,
            fault::slot(fault::KIND_WRITE_NOT_PRESENT, fault::MODE_KERNEL) as usize,
        )) * self.page_size;
        episode.cow_fault_seconds = d(proc::WP_NS) as f64 * 1e-9;
        episode.longest_cow_fault_seconds = at(&end, proc::WP_MAX_NS) as f64 * 1e-9;
        episode.thp_cow_faults = d(proc::THP_WP_FAULTS);
        episode.reclaim_stall_seconds =
            (d(proc::DIRECT_RECLAIM_NS) + d(proc::MEMCG_RECLAIM_NS)) as f64 * 1e-9;
        episode.dirty_throttle_seconds = d(proc::THROTTLE_NS) as f64 * 1e-9;
        let findings = verdict::findings(&episode);
        episode.verdict = verdict::verdict(&episode, &findings);
        episode.findings = findings.into_iter().map(|f| f.text).collect();
        log::log!(
            self.lines.level(),
            "fork episode {} ended: child {} lived {:.2} s, COW {:.1} MiB; {}",
            episode.id,
            episode.child_pid,
            episode.child_lifetime_seconds,
            episode.cow_bytes() as f64 / (1 << 20) as f64,
            episode.verdict
        );
        if let Some(log) = self.log.as_mut() {
            if let Ok(line) = serde_json::to_string(&episode) {
                let _ = writeln!(log, "{line}");
                let _ = log.flush();
            }
        }
        let st = self
            .stats
            .entry(episode.comm.clone())
            .or_insert_with(|| Stats {
                fork_seconds: Hist::new(SECONDS_BUCKETS),
                cow_bytes: Hist::new(BYTES_BUCKETS),
                reclaim_seconds: Hist::new(SECONDS_BUCKETS),
                throttle_seconds: Hist::new(SECONDS_BUCKETS),
                last: Episode::default(),
                ended: 0,
            });
        self.ended += 1;
        st.ended = self.ended;
        st.fork_seconds.observe(episode.fork_latency_seconds);
        st.cow_bytes.observe(episode.cow_bytes() as f64);
        st.reclaim_seconds.observe(episode.reclaim_stall_seconds);
        st.throttle_seconds.observe(episode.dirty_throttle_seconds);
        st.last = episode.clone();
        self.evict_comms();
        while self.finished.len() >= Bounds::cap(&self.bounds.finished) {
            self.finished.pop_front();
            self.bounds.finished.evicted(1);
        }
        self.finished.push_back(episode);
        self.update_entries();
    }

    /// Episodes still running, with their figures so far.
    pub fn active(&self) -> Vec<Episode> {
        let mut v: Vec<Episode> = self.active.values().map(|a| a.episode.clone()).collect();
        v.sort_by_key(|e| e.id);
        v
    }

    /// How often `sample` should run.
    pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_start_and_end_lines_are_rate_limited() {
        let mut b = LogBudget::default();
        let t0 = LogBudget::WINDOW_NS;
        let allowed = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(allowed, LogBudget::PER_MINUTE as usize);
        assert_eq!(b.held_back, 100 - u64::from(LogBudget::PER_MINUTE));
        // A minute later the budget is back.
        assert!(b.take(t0 + LogBudget::WINDOW_NS));
        assert_eq!(b.held_back, 0);
    }

    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_305_600.25), "2026-11-22T00:00:00.250Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn watch_rules() {
        let dir = crate::host::testing::TempDir::new("watch");
        dir.write(
            "5/cgroup",
            "4:memory:/redis/a\n0::/system.slice/x.service\n",
        );
        dir.write("6/cgroup", "0::/redis2\n");
        let host = Host::new(dir.path(), dir.path());
        let w = Watch::new(&Config {
            watch_comms: vec!["redis-server".into(), "postgres*".into(), "*-rdb-*".into()],
            watch_pids: vec![7],
            watch_cgroups: vec!["/redis".into(), "/system.slice/".into()],
            ..Default::default()
        });
        let m = |pid, comm| w.matches(&host, pid, comm);
        assert_eq!(m(1, "redis-server").as_deref(), Some("comm:redis-server"));
        assert_eq!(m(1, "postgres: wal").as_deref(), Some("comm:postgres*"));
        // The full glob of [processes] comm patterns.
        assert_eq!(m(1, "redis-rdb-bgsav").as_deref(), Some("comm:*-rdb-*"));
        assert_eq!(m(7, "x").as_deref(), Some("pid:7"));
        assert_eq!(m(8, "redis-aof-rewri"), None);
        // Cgroups: the path or below it, in any hierarchy's line; read under the host's
        // procfs (pid 5 and 6 exist only in the fixture).
        assert_eq!(m(5, "x").as_deref(), Some("cgroup:/redis"));
        assert_eq!(m(6, "x"), None);
        assert_eq!(m(9, "x"), None);
        let w = Watch::new(&Config {
            watch_comms: vec![],
            watch_cgroups: vec!["/system.slice/".into()],
            ..Default::default()
        });
        assert_eq!(
            w.matches(&host, 5, "x").as_deref(),
            Some("cgroup:/system.slice/")
        );
    }

    #[test]
    fn an_episode_from_events() {
        let cfg = Config {
            watch_comms: vec!["redis-server".into()],
            log: "none".into(),
            ..Default::default()
        };
        let mut t = Tracker::new(&cfg, CowSource::Copies, Arc::new(Host::local())).unwrap();
        let mut comm = [0u8; 16];
        comm[..12].copy_from_slice(b"redis-server");
        let mut rows = HashMap::new();
        let mut start = [0u64; proc::COUNTERS];
        start[proc::COW_COPIES] = 10;
        rows.insert(100, start);
        let now = mono_ns();
        t.on_event(
            &Event {
                kind: EVENT_FORK,
                tgid: 100,
                child: 200,
                exit_code: 0,
                ts_ns: now,
                fork_ns: 2_000_000,
                dup_mmap_ns: 0,
                comm,
            },
            &rows,
        );
        assert_eq!(t.active().len(), 1);
        let mut end = start;
        end[proc::COW_COPIES] = 1010;
        end[proc::DIRECT_RECLAIM_NS] = 300_000_000;
        rows.insert(100, end);
        let mut child = [0u64; proc::COUNTERS];
        child[proc::COW_COPIES] = 5;
        rows.insert(200, child);
        t.on_event(
            &Event {
                kind: EVENT_EXIT,
                tgid: 200,
                child: 0,
                exit_code: 0,
                ts_ns: now + 1_500_000_000,
                fork_ns: 0,
                dup_mmap_ns: 0,
                comm: [0; 16],
            },
            &rows,
        );
        let e = t.finished.back().unwrap();
        assert_eq!(e.parent_cow_pages, 1000);
        assert_eq!(e.child_cow_pages, 5);
        assert!((e.child_lifetime_seconds - 1.5).abs() < 1e-9);
        assert!((e.fork_latency_seconds - 0.002).abs() < 1e-12);
        assert!(e.verdict.starts_with("direct_reclaim"), "{}", e.verdict);
        assert_eq!(e.child_exit_code, Some(0));
        // Forks of unwatched processes are ignored.
        comm[..12].copy_from_slice(b"postgres\0\0\0\0");
        t.on_event(
            &Event {
                kind: EVENT_FORK,
                tgid: 300,
                child: 301,
                exit_code: 0,
                ts_ns: now,
                fork_ns: 1,
                dup_mmap_ns: 0,
                comm,
            },
            &rows,
        );
        assert!(t.active().is_empty());
    }

    fn event(kind: u32, tgid: u32, child: u32, comm: &[u8]) -> Event {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        Event {
            kind,
            tgid,
            child,
            exit_code: 0,
            ts_ns: mono_ns(),
            fork_ns: 1000,
            dup_mmap_ns: 0,
            comm: c,
        }
    }

    /// A watched name forking a storm of children that live on: the running episodes
    /// stay at the cap, the storm's own oldest go first (the one Redis episode, of a
    /// parent with a single child, stays), and every one evicted is counted; the
    /// finished and per-comm tables keep their caps the same way.
    #[test]
    fn a_fork_storm_stays_within_the_caps() {
        let cfg = Config {
            watch_comms: vec!["redis-*".into()],
            log: "none".into(),
            ..Default::default()
        };
        let mut t = Tracker::new(&cfg, CowSource::Copies, Arc::new(Host::local())).unwrap();
        let caps = Caps {
            episode_active_max_entries: 8,
            episode_finished_max_entries: 5,
            episode_comm_max_entries: 3,
            ..Caps::default()
        };
        let tables = Tables::default();
        t.bound(&caps, &tables);
        let rows: HashMap<u32, Counts> = HashMap::new();
        let figures = |name: &str| {
            let snap = tables.snapshot();
            let (_, e, c, x) = *snap.iter().find(|r| r.0 == name).unwrap();
            (e, c, x)
        };
        // The real Redis: one running episode.
        t.on_event(&event(EVENT_FORK, 10, 11, b"redis-server"), &rows);
        // The storm: 500 children of one parent that calls itself redis-x.
        const STORM: u64 = 500;
        for child in 0..STORM as u32 {
            t.on_event(&event(EVENT_FORK, 20, 1000 + child, b"redis-x"), &rows);
            assert!(t.active.len() <= 8);
        }
        assert_eq!(figures("episodes_active"), (8, 8, STORM + 1 - 8));
        let active = t.active();
        assert!(active.iter().any(|e| e.pid == 10), "{active:?}");
        // The storm's newest seven are the rest.
        let mut kids: Vec<u32> = active
            .iter()
            .filter(|e| e.pid == 20)
            .map(|e| e.child_pid)
            .collect();
        kids.sort();
        assert_eq!(kids, (1000 + 493..1000 + 500).collect::<Vec<u32>>());
        // Children of many parents named redis-0..redis-9 end: five finished kept,
        // three comms.
        let mut ended = 0u64;
        for i in 0..10u32 {
            let name = format!("redis-{i}");
            t.on_event(&event(EVENT_FORK, 100 + i, 200 + i, name.as_bytes()), &rows);
            t.on_event(&event(EVENT_EXIT, 200 + i, 0, b""), &rows);
            ended += 1;
        }
        assert_eq!(figures("episodes_finished"), (5, 5, ended - 5));
        assert_eq!(figures("episode_comms"), (3, 3, ended - 3));
        let comms: Vec<&str> = t.stats.keys().map(String::as_str).collect();
        assert_eq!(comms, ["redis-7", "redis-8", "redis-9"]);
        let ids: Vec<u32> = t.finished.iter().map(|e| e.pid).collect();
        assert_eq!(ids, [105, 106, 107, 108, 109]);
        // The first of those forks found the table full and evicted one of the storm's;
        // its child's exit made room for the next.
        assert_eq!(figures("episodes_active"), (7, 8, STORM + 1 - 8 + 1));
        assert!(t.active().iter().any(|e| e.pid == 10));
    }
}
