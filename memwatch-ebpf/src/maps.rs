//! Maps shared by the probe areas, and the helpers every program uses to count.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use memwatch_common::{global, hist, node, proc, stat, HistKey, ProcCache, ProcRow, COMM_LEN};

/// The programs' own bookkeeping, indexed by `memwatch_common::stat::*`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::SLOTS, 0);

/// Global counters `global::*` (the `proc::*` slots before them stay zero: those
/// totals are in `PROC_CACHE`).
#[map]
pub static GLOBALS: PerCpuArray<u64> = PerCpuArray::with_max_entries(global::SLOTS as u32, 0);

/// Per-process counters (key: tgid). The agent sets `max_entries` from the config.
#[map]
pub static PROCS: LruHashMap<u32, ProcRow> = LruHashMap::with_max_entries(10240, 0);

/// Per CPU, the counts of the process that last counted there, not yet in `PROCS`.
#[map]
pub static PROC_CACHE: PerCpuArray<ProcCache> = PerCpuArray::with_max_entries(1, 0);

/// Non-zero while the agent reads `PROCS` and the caches. No cache is moved into
/// `PROCS` meanwhile (the read would miss what moved): a process that counts on a CPU
/// whose cache holds another one counts into its own row instead.
#[map]
pub static READING: Array<u32> = Array::with_max_entries(1, 0);

/// Global log2 histograms: `hist * BUCKETS + bucket`.
#[map]
pub static HISTS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(hist::COUNT * hist::BUCKETS as u32, 0);

/// Histograms per process or per comm.
#[map]
pub static KEYED_HISTS: LruHashMap<HistKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Per-node counters: `nid * node::COUNTERS + counter`.
#[map]
pub static NODES: PerCpuArray<u64> =
    PerCpuArray::with_max_entries((node::MAX_NODES * node::COUNTERS) as u32, 0);

/// What a task is in the middle of, for entry/exit pairs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub start_ns: u64,
    pub aux: u64,
}

/// What a thread is in the middle of: the low byte of its `PENDING` keys, numbered in
/// declaration order.
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum PendingKind {
    /// Inside `do_wp_page` (aux: `COPIED` once a new anonymous page was mapped).
    Wp,
    /// Inside a fork syscall (aux: the fork kind).
    Fork,
    /// Inside `dup_mmap` (or a `copy_page_range` of it).
    DupMmap,
    DirectReclaim,
    MemcgReclaim,
    /// Inside flusher work (aux: its `wb_reason`).
    WbWork,
    /// The duration of the last `dup_mmap` of this thread, for the fork event.
    DupMmapDone,
    /// A `do_writepages` call: (`nr_to_write` at entry, the `writeback_control`).
    Writepages,
    /// Inside `__writeback_single_inode` (writeback_single_inode_start seen, not yet the end).
    SingleInode,
    /// The mapping of that `do_writepages` call, for the device written to.
    WritepagesMapping,
    /// A process fork's child seen by sched_process_fork (start_ns: its pid; aux:
    /// whether the fork is streamed and the child tracked), for the fork's return.
    ForkChild,
}

/// Fork and exit events for the agent's fork episodes.
#[map]
pub static EVENTS: aya_ebpf::maps::RingBuf = aya_ebpf::maps::RingBuf::with_byte_size(256 * 1024, 0);

/// Key: (thread id << 8) | what.
#[map]
pub static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn pending_key(what: PendingKind) -> u64 {
    ((bpf_get_current_pid_tgid() & 0xffff_ffff) << 8) | what as u64
}

/// Records that the current thread entered `what`.
#[inline(always)]
pub fn begin(what: PendingKind, aux: u64) {
    stash(what, now(), aux);
}

/// Records two values for the current thread's `what` (taken back with `take`).
#[inline(always)]
pub fn stash(what: PendingKind, a: u64, b: u64) {
    let p = Pending {
        start_ns: a,
        aux: b,
    };
    let _ = PENDING.insert(pending_key(what), p, 0);
}

/// The pending entry of the current thread for `what`, if any (not removed).
#[inline(always)]
pub fn pending(what: PendingKind) -> Option<*mut Pending> {
    PENDING.get_ptr_mut(pending_key(what))
}

/// Takes the pending entry `what` of the current thread, if any, without counting a
/// miss: (start ns, aux).
#[inline(always)]
pub fn take(what: PendingKind) -> Option<(u64, u64)> {
    let key = pending_key(what);
    let p = PENDING.get_ptr(key)?;
    // SAFETY: a live map value.
    let v = unsafe { ((*p).start_ns, (*p).aux) };
    let _ = PENDING.remove(key);
    Some(v)
}

/// Ends `what` for the current thread: (elapsed ns, aux), if its start was seen.
#[inline(always)]
pub fn end(what: PendingKind) -> Option<(u64, u64)> {
    let key = pending_key(what);
    let p = match PENDING.get_ptr(key) {
        Some(p) => p,
        None => {
            inc(&STATS, stat::MISSED_ENTRIES);
            return None;
        }
    };
    // SAFETY: a live map value.
    let (start, aux) = unsafe { ((*p).start_ns, (*p).aux) };
    let _ = PENDING.remove(key);
    Some((now().saturating_sub(start), aux))
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Adds `n` to a per-CPU counter.
#[inline(always)]
pub fn add(array: &PerCpuArray<u64>, index: u32, n: u64) {
    if let Some(p) = array.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += n };
    }
}

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn inc(array: &PerCpuArray<u64>, index: u32) {
    add(array, index, 1);
}

/// Adds `n` to a `u64` that other CPUs may update at the same time.
#[inline(always)]
pub fn atomic_add(p: *mut u64, n: u64) {
    // SAFETY: `p` points into a map value that lives as long as the map. The result is
    // unused, so LLVM emits a plain BPF atomic add (no BPF_FETCH, which needs 5.12).
    // The BPF target has no `AtomicU64::fetch_add`, hence the intrinsic.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, n,
        )
    };
}

/// The row of `tgid`, created (with `comm`) if missing.
#[inline(always)]
fn proc_row(tgid: u32, comm: &[u8; COMM_LEN]) -> Option<*mut ProcRow> {
    if let Some(row) = PROCS.get_ptr_mut(tgid) {
        return Some(row);
    }
    let fresh = ProcRow {
        counts: [0; proc::COUNTERS],
        comm: *comm,
    };
    // BPF_NOEXIST: if another CPU raced us, keep its row and count into it.
    if PROCS.insert(tgid, fresh, 1).is_ok() {
        inc(&STATS, stat::PROC_INSERTS);
    }
    let row = PROCS.get_ptr_mut(tgid);
    if row.is_none() {
        inc(&STATS, stat::PROC_INSERT_ERRORS);
    }
    row
}

/// Moves a CPU's cached counts into `PROCS`. The maxima (`proc::WP_MAX_NS`) are
/// raised, the rest added.
#[inline(always)]
fn flush(c: *mut ProcCache) {
    // SAFETY: this CPU's slot of PROC_CACHE, only written by programs on this CPU.
    // Tracepoint and kprobe programs don't nest on a CPU (bpf_prog_active); an fentry
    // program preempted mid-update on a fully preemptible kernel could lose an update,
    // as with any per-CPU counter.
    unsafe {
        if (*c).live == 0 {
            return;
        }
        // Odd while counts move: the agent reads the processes cached here again
        // (`ProcTable::read` in the agent). Plain stores: only this CPU writes them,
        // and x86 keeps stores in order (the row's atomic adds are full barriers).
        (*c).seq += 1;
        (*c).live = 0;
        let Some(row) = proc_row((*c).tgid, &(*c).comm) else {
            // Table full and no row could be made: the counts stay in the globals and
            // the insert error is counted.
            (*c).counts = [0; proc::COUNTERS];
            (*c).seq += 1;
            return;
        };
        let mut i = 0;
        while i < proc::COUNTERS {
            let v = (*c).counts[i];
            if v != 0 {
                let p = &raw mut (*row).counts[i];
                if i == proc::WP_MAX_NS {
                    if *p < v {
                        *p = v;
                    }
                } else {
                    atomic_add(p, v);
                }
                (*c).counts[i] = 0;
            }
            i += 1;
        }
        (*c).seq += 1;
    }
}

/// Whether the agent is reading the process table (`READING`).
#[inline(always)]
fn agent_reading() -> bool {
    READING.get(0).is_some_and(|r| *r != 0)
}

/// Where the current process's counts go.
enum Sink {
    /// This CPU's cache, which holds the current process.
    Cache(*mut ProcCache),
    /// Its row in `PROCS` (atomic adds), while the agent reads and this CPU's cache
    /// holds another process; the global totals still go to the cache.
    Row(*mut ProcCache, *mut ProcRow),
    /// Only the global totals (no row could be made; the insert error is counted).
    Totals(*mut ProcCache),
}

/// The current process's sink: this CPU's cache, switched to it (the previous
/// process's counts moved into `PROCS` first), unless the agent is reading the table
/// and the cache holds counts of another process.
#[inline(always)]
fn sink() -> Option<Sink> {
    let c = PROC_CACHE.get_ptr_mut(0)?;
    let tgid = tgid();
    // SAFETY: as in `flush`.
    unsafe {
        if (*c).tgid == tgid && (*c).live != 0 {
            return Some(Sink::Cache(c));
        }
        if (*c).live != 0 && agent_reading() {
            let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
            return Some(match proc_row(tgid, &comm) {
                Some(row) => Sink::Row(c, row),
                None => Sink::Totals(c),
            });
        }
        flush(c);
        (*c).tgid = tgid;
        (*c).comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        (*c).live = 1;
    }
    Some(Sink::Cache(c))
}

/// Adds `n` to counter `idx` (checked by the callers) of a sink and to its total.
#[inline(always)]
fn add_to(sink: &Sink, idx: usize, n: u64) {
    // SAFETY: as in `flush`; the row is a live map value; `idx < proc::COUNTERS`.
    unsafe {
        match *sink {
            Sink::Cache(c) => {
                (*c).totals[idx] += n;
                (*c).counts[idx] += n;
            }
            Sink::Row(c, row) => {
                (*c).totals[idx] += n;
                atomic_add(&raw mut (*row).counts[idx], n);
            }
            Sink::Totals(c) => (*c).totals[idx] += n,
        }
    }
}

/// Moves this CPU's cached counts into `PROCS` if they are `tgid`'s (at its exit, so
/// an exited process's row is complete when the agent ages it out). Not while the
/// agent reads: the cache keeps them until another process counts here.
#[inline(always)]
pub fn flush_if(tgid: u32) {
    if let Some(c) = PROC_CACHE.get_ptr_mut(0) {
        // SAFETY: as in `flush`.
        if unsafe { (*c).tgid } == tgid && !agent_reading() {
            flush(c);
        }
    }
}

/// Adds `n` to counter `idx` (a `proc::*` index) globally and for the current process:
/// both in this CPU's cache, one map lookup (see `sink` for the exceptions).
#[inline(always)]
pub fn count(idx: usize, n: u64) {
    if idx < proc::COUNTERS {
        if let Some(s) = sink() {
            add_to(&s, idx, n);
        }
    }
}

/// Adds two counters at once.
#[inline(always)]
pub fn count2(a: usize, na: u64, b: usize, nb: u64) {
    if a < proc::COUNTERS && b < proc::COUNTERS {
        if let Some(s) = sink() {
            add_to(&s, a, na);
            add_to(&s, b, nb);
        }
    }
}

/// Raises the current process's counter `idx` to `v` if larger (a maximum).
#[inline(always)]
pub fn raise(idx: usize, v: u64) {
    if idx < proc::COUNTERS {
        // SAFETY: as in `add_to`. A row's maximum is raised without an atomic, as in
        // `flush`.
        unsafe {
            let p = match sink() {
                Some(Sink::Cache(c)) => &raw mut (*c).counts[idx],
                Some(Sink::Row(_, row)) => &raw mut (*row).counts[idx],
                _ => return,
            };
            if *p < v {
                *p = v;
            }
        }
    }
}

/// Records `ns` in global histogram `h`.
#[inline(always)]
pub fn observe(h: u32, ns: u64) {
    inc(&HISTS, h * hist::BUCKETS as u32 + hist::bucket(ns));
}

/// Records `ns` in histogram `h` of the current process (`per_process`) or comm: one
/// slot for the bucket, one (`hist::SUM_BUCKET`) for the sum.
#[inline(always)]
pub fn observe_keyed(h: u32, ns: u64, per_process: bool) {
    let mut key = HistKey {
        hist: h,
        bucket: hist::bucket(ns),
        tgid: if per_process { tgid() } else { 0 },
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    keyed_add(&KEYED_HISTS, &key, 1);
    key.bucket = hist::SUM_BUCKET;
    keyed_add(&KEYED_HISTS, &key, ns);
}

/// Adds `n` to the value of `key` in an LRU hash of counters, creating it if missing.
#[inline(always)]
pub fn keyed_add<K>(map: &LruHashMap<K, u64>, key: &K, n: u64) {
    if let Some(p) = map.get_ptr_mut(key) {
        atomic_add(p, n);
    } else if map.insert(key, n, 1).is_err() {
        // Raced with another CPU: count into its slot.
        match map.get_ptr_mut(key) {
            Some(p) => atomic_add(p, n),
            None => inc(&STATS, stat::KEYED_INSERT_ERRORS),
        }
    }
}

/// Adds `n` to a per-node counter.
#[inline(always)]
pub fn node_add(nid: i32, counter: usize, n: u64) {
    if nid >= 0 && (nid as usize) < node::MAX_NODES {
        add(&NODES, (nid as usize * node::COUNTERS + counter) as u32, n);
    }
}

// Where a folio keeps its order (from kernel BTF; `FOLIO_ORDER_KNOWN` 0: count one
// page per folio).
crate::offsets! {
    FOLIO_ORDER_KNOWN = 0;
    FOLIO_HEAD_BIT = 6;
    FOLIO_ORDER_OFFSET = 64;
}

/// Whether the folio layout came from BTF (else every folio counts as one page).
#[inline(always)]
pub fn folio_layout_known() -> bool {
    FOLIO_ORDER_KNOWN.load() != 0
}

/// `folio->flags` (the first word of a folio or page).
#[inline(always)]
pub fn flags_of(folio: u64) -> u64 {
    // SAFETY: bpf_probe_read_kernel of the folio the kernel is handling.
    unsafe { bpf_probe_read_kernel(folio as *const u64) }.unwrap_or(0)
}

/// Pages in a folio (1 when the layout is unknown).
#[inline(always)]
pub fn folio_pages(folio: u64, flags: u64) -> u64 {
    if !folio_layout_known() || flags & (1u64 << (FOLIO_HEAD_BIT.load() & 63)) == 0 {
        return 1;
    }
    let at = folio + FOLIO_ORDER_OFFSET.load() as u64;
    // SAFETY: as above; the order is the low byte of `_flags_1` / `_folio_order`.
    let order = unsafe { bpf_probe_read_kernel(at as *const u8) }.unwrap_or(0);
    1u64 << (order & 31)
}

/// Declares `u32` globals the agent sets at load time: tracepoint field offsets (from
/// tracefs) and kernel layouts (from BTF). The defaults are this project's 6.x
/// layouts; the agent overrides them with what the running kernel says.
#[macro_export]
macro_rules! offsets {
    ($($name:ident = $default:expr;)*) => {
        $(
            #[unsafe(no_mangle)]
            static $name: aya_ebpf::Global<u32> = aya_ebpf::Global::new($default);
        )*
    };
}

/// Reads a field of a tracepoint record at the offset held by `off`.
#[inline(always)]
pub fn field<T>(
    ctx: &aya_ebpf::programs::TracePointContext,
    off: &aya_ebpf::Global<u32>,
) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel of the record the kernel handed us.
    match unsafe { ctx.read_at::<T>(off.load() as usize) } {
        Ok(v) => Ok(v),
        Err(_) => {
            inc(&STATS, stat::TP_READ_ERRORS);
            Err(())
        }
    }
}
