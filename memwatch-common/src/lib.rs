//! Types shared by the eBPF programs (`memwatch-ebpf`) and the agent (`memwatch`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree on the
//! layout byte for byte. Flags are `u32`, never `bool`.
#![no_std]

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Page-fault classification, decoded from the x86 page-fault error code that the
/// `exceptions:page_fault_user` / `page_fault_kernel` tracepoints carry.
pub mod fault {
    /// Error-code bit 0: the page was present (a protection fault, not a missing page).
    pub const PF_PROT: u64 = 1 << 0;
    /// Error-code bit 1: the access was a write.
    pub const PF_WRITE: u64 = 1 << 1;
    /// Error-code bit 2: the access came from user mode.
    pub const PF_USER: u64 = 1 << 2;
    /// Error-code bit 4: the access was an instruction fetch.
    pub const PF_INSTR: u64 = 1 << 4;

    /// Write to a present page: the write-protect fault behind every copy-on-write.
    pub const KIND_WRITE_PROTECT: u32 = 0;
    /// Write to a page that was not present (first touch of anonymous or file memory).
    pub const KIND_WRITE_NOT_PRESENT: u32 = 1;
    /// Read of a page that was not present.
    pub const KIND_READ_NOT_PRESENT: u32 = 2;
    /// Read of a present page that the PTE forbade (PROT_NONE, NUMA hinting).
    pub const KIND_READ_PROTECT: u32 = 3;
    /// Instruction fetch.
    pub const KIND_EXEC: u32 = 4;
    /// Number of kinds.
    pub const KINDS: u32 = 5;

    /// The fault was taken in user mode.
    pub const MODE_USER: u32 = 0;
    /// The fault was taken in kernel mode (e.g. `copy_to_user` touching a user page).
    pub const MODE_KERNEL: u32 = 1;
    /// Number of modes.
    pub const MODES: u32 = 2;

    /// Number of (kind, mode) slots.
    pub const SLOTS: usize = (KINDS * MODES) as usize;

    /// The kind of a fault from its error code.
    #[inline(always)]
    pub const fn kind(error_code: u64) -> u32 {
        if error_code & PF_INSTR != 0 {
            KIND_EXEC
        } else if error_code & PF_WRITE != 0 {
            if error_code & PF_PROT != 0 {
                KIND_WRITE_PROTECT
            } else {
                KIND_WRITE_NOT_PRESENT
            }
        } else if error_code & PF_PROT != 0 {
            KIND_READ_PROTECT
        } else {
            KIND_READ_NOT_PRESENT
        }
    }

    /// The mode of a fault from its error code.
    #[inline(always)]
    pub const fn mode(error_code: u64) -> u32 {
        if error_code & PF_USER != 0 {
            MODE_USER
        } else {
            MODE_KERNEL
        }
    }

    /// The counter slot of a (kind, mode) pair.
    #[inline(always)]
    pub const fn slot(kind: u32, mode: u32) -> u32 {
        mode * KINDS + kind
    }

    /// Label value of a kind, as exported.
    pub const fn kind_name(kind: u32) -> &'static str {
        match kind {
            KIND_WRITE_PROTECT => "write_protect",
            KIND_WRITE_NOT_PRESENT => "write_not_present",
            KIND_READ_NOT_PRESENT => "read_not_present",
            KIND_READ_PROTECT => "read_protect",
            KIND_EXEC => "exec",
            _ => "unknown",
        }
    }

    /// Label value of a mode, as exported.
    pub const fn mode_name(mode: u32) -> &'static str {
        match mode {
            MODE_USER => "user",
            _ => "kernel",
        }
    }
}

/// Indices of the per-CPU `STATS` array: the programs' own bookkeeping.
pub mod stat {
    /// New rows inserted into the per-process table `PROCS`.
    pub const PROC_INSERTS: u32 = 0;
    /// Inserts into `PROCS` that failed (the event is still counted globally and so
    /// lands in the `other` row).
    pub const PROC_INSERT_ERRORS: u32 = 1;
    /// Tracepoint records that could not be read.
    pub const TP_READ_ERRORS: u32 = 2;
    /// Inserts into a keyed table (histograms per comm/process, devices) that failed.
    pub const KEYED_INSERT_ERRORS: u32 = 3;
    /// Function-exit events whose entry was not seen (attached mid-call, or table full).
    pub const MISSED_ENTRIES: u32 = 4;
    /// Number of slots.
    pub const SLOTS: u32 = 8;
}

/// Counters kept per process (columns of `ProcRow::counts`) and, at the same index,
/// globally (the per-CPU `GLOBALS` array), so per-process rows plus `other` sum to the
/// global value.
pub mod proc {
    use super::fault;
    // 0..fault::SLOTS: page faults by (kind, mode), from the page-fault tracepoints.
    /// Major faults (handle_mm_fault returned VM_FAULT_MAJOR).
    pub const MAJOR_FAULTS: usize = fault::SLOTS;
    /// Faults handled without I/O.
    pub const MINOR_FAULTS: usize = fault::SLOTS + 1;
    /// `do_wp_page` calls: write-protect faults handled.
    pub const WP_CALLS: usize = fault::SLOTS + 2;
    /// Write-protect faults that copied the page.
    pub const COW_COPIES: usize = fault::SLOTS + 3;
    /// Write-protect faults that reused the page (sole owner, or a shared mapping).
    pub const COW_REUSES: usize = fault::SLOTS + 4;
    /// Write-protect faults on a transparent huge page (`do_huge_pmd_wp_page`).
    pub const THP_WP_FAULTS: usize = fault::SLOTS + 5;
    /// Sum of `do_wp_page` durations, ns.
    pub const WP_NS: usize = fault::SLOTS + 6;
    /// Process forks (clone without CLONE_VM, fork).
    pub const FORKS: usize = fault::SLOTS + 7;
    /// vfork / clone with CLONE_VFORK.
    pub const VFORKS: usize = fault::SLOTS + 8;
    /// Threads created (clone with CLONE_VM, not vfork).
    pub const THREADS: usize = fault::SLOTS + 9;
    /// Sum of fork syscall durations (process forks), ns.
    pub const FORK_NS: usize = fault::SLOTS + 10;
    /// Sum of `dup_mmap` durations (address-space copy in fork), ns.
    pub const DUP_MMAP_NS: usize = fault::SLOTS + 11;
    /// Pages dirtied (writeback_dirty_folio/page: one per folio).
    pub const DIRTIED: usize = fault::SLOTS + 12;
    /// balance_dirty_pages pauses.
    pub const THROTTLE_COUNT: usize = fault::SLOTS + 13;
    /// balance_dirty_pages pause time, ns.
    pub const THROTTLE_NS: usize = fault::SLOTS + 14;
    /// Direct reclaim episodes.
    pub const DIRECT_RECLAIM_COUNT: usize = fault::SLOTS + 15;
    /// Direct reclaim time, ns.
    pub const DIRECT_RECLAIM_NS: usize = fault::SLOTS + 16;
    /// Pages reclaimed by direct reclaim.
    pub const DIRECT_RECLAIMED: usize = fault::SLOTS + 17;
    /// Memory-cgroup limit reclaim episodes.
    pub const MEMCG_RECLAIM_COUNT: usize = fault::SLOTS + 18;
    /// Memory-cgroup limit reclaim time, ns.
    pub const MEMCG_RECLAIM_NS: usize = fault::SLOTS + 19;
    /// Pages reclaimed by memory-cgroup limit reclaim.
    pub const MEMCG_RECLAIMED: usize = fault::SLOTS + 20;
    /// Longest single `do_wp_page`, ns (a maximum, not a sum: not in the globals).
    pub const WP_MAX_NS: usize = fault::SLOTS + 21;
    /// Number of per-process counters.
    pub const COUNTERS: usize = fault::SLOTS + 22;
}

/// Global-only counters, in `GLOBALS` after the per-process ones (whose global values
/// are `ProcCache::totals`; `GLOBALS` leaves their slots at zero).
pub mod global {
    use super::proc;
    /// Pages written back, by reason: `WRITTEN + reason` (the kernel's `enum
    /// wb_reason` below `WB_REASONS - 1`; the last slot, `WB_REASONS - 1`: writeback
    /// outside flusher work, started by the calling task).
    pub const WRITTEN: usize = proc::COUNTERS;
    /// Slots for writeback reasons (the kernel has 10; the last is "caller").
    pub const WB_REASONS: usize = 12;
    /// Pages reclaim wrote out itself (`mm_vmscan_write_folio`), anon and file.
    pub const VMSCAN_WRITE_ANON: usize = WRITTEN + WB_REASONS;
    pub const VMSCAN_WRITE_FILE: usize = VMSCAN_WRITE_ANON + 1;
    /// Reclaim throttling (`mm_vmscan_throttled`): count and delay (µs) by reason
    /// (0 writeback, 1 isolated, 2 noprogress, 3 congested).
    pub const THROTTLED: usize = VMSCAN_WRITE_FILE + 1;
    pub const THROTTLE_REASONS: usize = 4;
    pub const THROTTLED_US: usize = THROTTLED + THROTTLE_REASONS;
    /// LRU insertions per list (`enum lru_list`: inactive/active anon/file,
    /// unevictable), one per folio.
    pub const LRU_INSERT: usize = THROTTLED_US + THROTTLE_REASONS;
    pub const LRU_LISTS: usize = 5;
    /// Folio activations (`mm_lru_activate`).
    pub const LRU_ACTIVATE: usize = LRU_INSERT + LRU_LISTS;
    /// Fork/exit events written into the `EVENTS` ring buffer, by kind
    /// (`EVENTS_SENT + event_slot(kind)`).
    pub const EVENTS_SENT: usize = LRU_ACTIVATE + 1;
    /// Kinds of events (fork, exit).
    pub const EVENT_KINDS: usize = 2;
    /// Events that passed the filter but found the ring buffer full: lost, by kind.
    pub const EVENTS_LOST: usize = EVENTS_SENT + EVENT_KINDS;
    /// Events not streamed because the filter left them out: forks of processes that
    /// are not watched, exits of processes that are not tracked children.
    pub const EVENTS_FILTERED: usize = EVENTS_LOST + EVENT_KINDS;
    /// Forks of watched processes whose child could not be tracked (`CHILDREN` or
    /// `FORK_UNSENT` full): the child's exit is not streamed.
    pub const CHILDREN_FULL: usize = EVENTS_FILTERED + EVENT_KINDS;
    /// The ring buffer's size in bytes (written once by the agent, on CPU 0).
    pub const RING_BYTES: usize = CHILDREN_FULL + 1;
    /// Number of global slots.
    pub const SLOTS: usize = RING_BYTES + 1;

    /// The slot offset of an event kind (`EVENT_FORK` 0, `EVENT_EXIT` 1).
    #[inline(always)]
    pub const fn event_slot(kind: u32) -> usize {
        if kind == super::EVENT_EXIT {
            1
        } else {
            0
        }
    }
}

/// Per-NUMA-node counters (`NODES[nid * node::COUNTERS + i]`).
pub mod node {
    pub const MAX_NODES: usize = 64;
    pub const KSWAPD_WAKE: usize = 0;
    // mm_vmscan_lru_shrink_inactive
    pub const INACTIVE_SCANNED: usize = 1;
    pub const INACTIVE_RECLAIMED: usize = 2;
    pub const INACTIVE_DIRTY: usize = 3;
    pub const INACTIVE_WRITEBACK: usize = 4;
    pub const INACTIVE_CONGESTED: usize = 5;
    pub const INACTIVE_IMMEDIATE: usize = 6;
    pub const INACTIVE_ACTIVATE_ANON: usize = 7;
    pub const INACTIVE_ACTIVATE_FILE: usize = 8;
    pub const INACTIVE_REF_KEEP: usize = 9;
    pub const INACTIVE_UNMAP_FAIL: usize = 10;
    // mm_vmscan_lru_shrink_active
    pub const ACTIVE_TAKEN: usize = 11;
    pub const ACTIVE_ACTIVE: usize = 12;
    pub const ACTIVE_DEACTIVATED: usize = 13;
    pub const ACTIVE_REFERENCED: usize = 14;
    pub const COUNTERS: usize = 16;
}

/// Log2 histograms of durations in ns: bucket b counts values in [2^(b-1), 2^b).
pub mod hist {
    pub const BUCKETS: usize = 40;
    /// In `HistKey::bucket`: the slot holding the sum of the observed values (ns).
    pub const SUM_BUCKET: u32 = BUCKETS as u32;
    /// `do_wp_page` duration.
    pub const WP_FAULT: u32 = 0;
    /// Fork syscall duration (process forks).
    pub const FORK: u32 = 1;
    /// `dup_mmap` duration.
    pub const DUP_MMAP: u32 = 2;
    /// Direct reclaim duration.
    pub const DIRECT_RECLAIM: u32 = 3;
    /// Memory-cgroup reclaim duration.
    pub const MEMCG_RECLAIM: u32 = 4;
    /// balance_dirty_pages pause.
    pub const THROTTLE: u32 = 5;
    pub const COUNT: u32 = 6;

    /// The bucket of a value: the number of significant bits, capped.
    #[inline(always)]
    pub const fn bucket(v: u64) -> u32 {
        let b = 64 - v.leading_zeros();
        if b as usize >= BUCKETS {
            BUCKETS as u32 - 1
        } else {
            b
        }
    }
}

/// A row of the per-process table `PROCS` (key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcRow {
    /// Counters by `proc::*` (the first `fault::SLOTS` by fault slot).
    pub counts: [u64; proc::COUNTERS],
    /// `comm` of the thread that created the row.
    pub comm: [u8; COMM_LEN],
}

/// The per-CPU cache of the counts of the process that last counted on that CPU
/// (`PROC_CACHE`): the common case costs no table lookup and no atomic. The programs
/// move it into `PROCS` when another process counts on the CPU (and when the process
/// exits); the agent adds the caches to the rows it reads.
///
/// A move changes `seq` twice, before and after (odd while it is under way), so the
/// agent can tell whether counts moved from a CPU's cache into `PROCS` while it read
/// the table, and read those processes again instead of missing what moved.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcCache {
    pub tgid: u32,
    /// Non-zero when `counts` holds counts not yet in `PROCS`.
    pub live: u32,
    /// `comm` of the thread that started this cache.
    pub comm: [u8; COMM_LEN],
    /// Moves into `PROCS` begun and ended on this CPU (odd: one under way).
    pub seq: u64,
    /// As `ProcRow::counts`, not yet in `PROCS`.
    pub counts: [u64; proc::COUNTERS],
    /// This CPU's share of the global value of each `proc::*` counter (never moved;
    /// kept here rather than in `GLOBALS` so an event costs one map lookup).
    pub totals: [u64; proc::COUNTERS],
}

/// Key of `KEYED_HISTS`: one histogram bucket of one process (`tgid` != 0) or one
/// command name (`tgid` == 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HistKey {
    pub hist: u32,
    pub bucket: u32,
    pub tgid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// Key of `DEVICES`: pages dirtied (`what` 0) or written (`what` 1, by `reason`) per
/// backing device (the bdi name, e.g. `254:0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevKey {
    pub name: [u8; 32],
    pub what: u32,
    pub reason: u32,
}

pub const DEV_DIRTIED: u32 = 0;
pub const DEV_WRITTEN: u32 = 1;

/// Events the programs stream to the agent (ring buffer `EVENTS`): only what needs
/// correlating in time (a fork and the child's exit), never per-fault traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `EVENT_FORK` or `EVENT_EXIT`.
    pub kind: u32,
    /// Fork: the parent's tgid. Exit: the exiting process's tgid.
    pub tgid: u32,
    /// Fork: the child's pid. Exit: 0.
    pub child: u32,
    /// Exit: the wait status (`task_struct.exit_code`), or `u32::MAX` if unknown.
    pub exit_code: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the event.
    pub ts_ns: u64,
    /// Fork: syscall duration, ns.
    pub fork_ns: u64,
    /// Fork: `dup_mmap` duration, ns (0 where no function hook attaches).
    pub dup_mmap_ns: u64,
    pub comm: [u8; COMM_LEN],
}

pub const EVENT_FORK: u32 = 1;
pub const EVENT_EXIT: u32 = 2;

/// The in-kernel fork filter: which processes' forks are streamed (`watch` in the
/// eBPF side's `probes/fork.rs`). The agent fills `WATCH_PIDS` and `WATCH_COMMS` from
/// `[episodes]`; a config the kernel cannot express turns the filter off
/// (`FORK_FILTER` 0: every process fork is streamed, the agent filters).
pub mod watch {
    /// Most comm patterns the kernel matches (`WATCH_COMMS` entries).
    pub const MAX_COMMS: u32 = 16;
    /// Most watched pids (`WATCH_PIDS` entries).
    pub const MAX_PIDS: u32 = 1024;
    /// Most children tracked at once (`CHILDREN`, `FORK_UNSENT` entries).
    pub const MAX_CHILDREN: u32 = 16384;
    /// `CommPattern::kind`: the whole comm equals `prefix`.
    pub const EXACT: u32 = 1;
    /// The comm starts with `prefix` (`prefix_len` bytes) and ends with `suffix`
    /// (`suffix_len` bytes, right-aligned), the two not overlapping: `a*`, `*b`, `a*b`.
    pub const AFFIX: u32 = 2;
    /// Every comm (`*`).
    pub const ANY: u32 = 3;
}

/// One comm pattern of the in-kernel filter (`WATCH_COMMS`). The comm is read as two
/// little-endian `u64` words (bytes 0-7, 8-15; zero-padded after its NUL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommPattern {
    /// `watch::EXACT`, `AFFIX`, `ANY`; 0: unused slot.
    pub kind: u32,
    pub prefix_len: u32,
    pub suffix_len: u32,
    pub _pad: u32,
    /// The prefix (or the whole comm, for `EXACT`), zero-padded.
    pub prefix: [u64; 2],
    /// Mask of the prefix's bytes.
    pub prefix_mask: [u64; 2],
    /// The suffix right-aligned in 16 bytes (its last byte is byte 15).
    pub suffix: [u64; 2],
    /// Mask of the suffix's bytes, right-aligned.
    pub suffix_mask: [u64; 2],
}

impl CommPattern {
    /// Whether a comm (as two little-endian words, zero-padded after its `len` bytes)
    /// matches. Shared by the eBPF side and the agent's tests.
    #[inline(always)]
    pub fn matches(&self, w: [u64; 2], len: u32) -> bool {
        match self.kind {
            watch::ANY => true,
            watch::EXACT => w[0] == self.prefix[0] && w[1] == self.prefix[1],
            watch::AFFIX => {
                if len < self.prefix_len + self.suffix_len
                    || w[0] & self.prefix_mask[0] != self.prefix[0]
                    || w[1] & self.prefix_mask[1] != self.prefix[1]
                {
                    return false;
                }
                // Right-align the comm: its last byte becomes byte 15.
                let a = shl_bytes(w, 16u32.saturating_sub(len));
                a[0] & self.suffix_mask[0] == self.suffix[0]
                    && a[1] & self.suffix_mask[1] == self.suffix[1]
            }
            _ => false,
        }
    }
}

/// A 16-byte little-endian value (two words, low first) shifted up by `n` bytes.
#[inline(always)]
pub fn shl_bytes(w: [u64; 2], n: u32) -> [u64; 2] {
    let bits = n.wrapping_mul(8);
    if bits == 0 {
        w
    } else if bits >= 128 {
        [0, 0]
    } else if bits >= 64 {
        [0, w[0].wrapping_shl(bits - 64)]
    } else {
        [
            w[0].wrapping_shl(bits),
            w[1].wrapping_shl(bits) | w[0].wrapping_shr(64 - bits),
        ]
    }
}

/// A comm as two little-endian words and its length (bytes before the first NUL).
#[inline(always)]
pub fn comm_words(comm: &[u8; COMM_LEN]) -> ([u64; 2], u32) {
    let mut len = COMM_LEN as u32;
    let mut i = 0;
    while i < COMM_LEN {
        if comm[i] == 0 {
            len = i as u32;
            break;
        }
        i += 1;
    }
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&comm[..8]);
    hi.copy_from_slice(&comm[8..]);
    let (lo, hi) = (u64::from_le_bytes(lo), u64::from_le_bytes(hi));
    // Whatever follows the NUL does not count (the kernel pads with zeros anyway).
    let keep = |bytes: u32| {
        if bytes >= 8 {
            u64::MAX
        } else {
            (1u64 << (bytes * 8)) - 1
        }
    };
    ([lo & keep(len), hi & keep(len.saturating_sub(8))], len)
}

/// A child the in-kernel filter tracks (`CHILDREN`, key: its pid): a fork by a watched
/// process inserts it; its exit is streamed and removes it. If it exits before its
/// parent has streamed the fork, it leaves its exit here and the parent streams both,
/// fork first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Child {
    /// The parent's tgid.
    pub parent: u32,
    /// Set by the child's exit when the parent streams it (with the fields below).
    pub exited: u32,
    pub exit_code: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    pub comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: as below.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: plain #[repr(C)] integers and byte arrays, no padding.
    unsafe impl aya::Pod for super::ProcRow {}
    // SAFETY: as above (u32, u32, a 16-byte array, then 8-aligned u64s).
    unsafe impl aya::Pod for super::ProcCache {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HistKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DevKey {}
    // SAFETY: as above (four u32, then u64 arrays).
    unsafe impl aya::Pod for super::CommPattern {}
    // SAFETY: as above (four u32, a u64, a 16-byte array).
    unsafe impl aya::Pod for super::Child {}
}

#[cfg(test)]
mod tests {
    use super::fault::*;

    #[test]
    fn classify_error_codes() {
        // present + write + user: the COW case.
        assert_eq!(kind(0b111), KIND_WRITE_PROTECT);
        assert_eq!(mode(0b111), MODE_USER);
        assert_eq!(kind(0b110), KIND_WRITE_NOT_PRESENT);
        assert_eq!(kind(0b100), KIND_READ_NOT_PRESENT);
        assert_eq!(kind(0b101), KIND_READ_PROTECT);
        assert_eq!(kind(0b10100), KIND_EXEC);
        assert_eq!(kind(0b10101), KIND_EXEC);
        assert_eq!(mode(0b011), MODE_KERNEL);
        assert_eq!(slot(KIND_EXEC, MODE_KERNEL) as usize, SLOTS - 1);
    }

    #[test]
    fn histogram_buckets() {
        use crate::hist::*;
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(1023), 10);
        assert_eq!(bucket(1024), 11);
        assert_eq!(bucket(u64::MAX), BUCKETS as u32 - 1);
    }

    #[test]
    fn layouts_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<crate::ProcRow>(), 8 * crate::proc::COUNTERS + 16);
        assert_eq!(size_of::<crate::HistKey>(), 32);
        assert_eq!(size_of::<crate::DevKey>(), 40);
        assert_eq!(size_of::<crate::Event>(), 56);
        assert_eq!(size_of::<crate::CommPattern>(), 16 + 64);
        assert_eq!(size_of::<crate::Child>(), 40);
    }
}
