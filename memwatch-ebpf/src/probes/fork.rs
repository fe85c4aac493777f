//! Fork: the clone/clone3/fork/vfork syscalls (tracepoints) from entry to the parent's
//! return, and the address-space copy where a function hook attaches: `dup_mmap`, or
//! where the kernel inlines it (Debian 5.10, 6.12) the sum of its per-VMA
//! `copy_page_range` calls. The programs below are loaded on whichever of the two the
//! agent picks; each call's time adds up until the fork returns.
//!
//! Fork and exit events are filtered here, not in the agent: a process fork is
//! streamed only if the parent is watched (`watched`: the pids and comm patterns of
//! `[episodes]`), and an exit only if the process is a child of such a fork
//! (`CHILDREN`). Every event that passes and finds the ring buffer full is counted
//! (`global::EVENTS_LOST`), as is every one filtered out.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{Array, HashMap},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use memwatch_common::{
    comm_words, global, hist, proc, watch, Child, CommPattern, Event, COMM_LEN, EVENT_EXIT,
    EVENT_FORK,
};

use crate::maps::{
    begin, count, count2, end, field, flush_if, inc, now, observe, observe_keyed, pending, stash,
    take, tgid, PendingKind, EVENTS, GLOBALS,
};

/// Watched pids (`[episodes] watch_pids`), filled by the agent before attaching.
#[map]
pub static WATCH_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(watch::MAX_PIDS, 0);

/// Watched comm patterns, the first `WATCH_COMM_COUNT` slots.
#[map]
pub static WATCH_COMMS: Array<CommPattern> = Array::with_max_entries(watch::MAX_COMMS, 0);

/// Children of watched forks whose exit is streamed (key: pid).
#[map]
pub static CHILDREN: HashMap<u32, Child> = HashMap::with_max_entries(watch::MAX_CHILDREN, 0);

/// Children whose fork event the parent has not streamed yet (key: pid). Exactly one
/// of the parent (streaming the fork) and the child (exiting) deletes the entry: the
/// one that does knows the other has not got there yet.
#[map]
pub static FORK_UNSENT: HashMap<u32, u32> = HashMap::with_max_entries(watch::MAX_CHILDREN, 0);

/// Offset of `exit_code` in `struct task_struct` (from kernel BTF; 0: unknown).
#[unsafe(no_mangle)]
static TASK_EXIT_CODE_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

crate::offsets! {
    OFF_CLONE_FLAGS = 16;
    OFF_CLONE3_UARGS = 16;
    OFF_SYS_EXIT_RET = 16;
    OFF_SCHED_FORK_CHILD_PID = 20;
    // 1: only watched processes' forks are streamed; 0: every process fork (the
    // agent could not express its config here).
    FORK_FILTER = 0;
    WATCH_COMM_COUNT = 0;
}

/// `PendingKind::ForkChild` aux bits: the fork is streamed; its child is tracked.
const FORK_WATCHED: u64 = 1;
const FORK_TRACKED: u64 = 2;

const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;

const KIND_FORK: u64 = 0;
const KIND_VFORK: u64 = 1;
const KIND_THREAD: u64 = 2;

#[inline(always)]
fn kind_of(flags: u64) -> u64 {
    if flags & CLONE_VFORK != 0 {
        KIND_VFORK
    } else if flags & CLONE_VM != 0 {
        KIND_THREAD
    } else {
        KIND_FORK
    }
}

/// A fork syscall begins: its address-space copy time starts from zero.
#[inline(always)]
fn fork_begins(kind: u64) {
    let _ = take(PendingKind::DupMmapDone);
    begin(PendingKind::Fork, kind);
}

#[tracepoint]
pub fn fork_enter_clone(ctx: TracePointContext) -> u32 {
    if let Ok(flags) = field::<u64>(&ctx, &OFF_CLONE_FLAGS) {
        fork_begins(kind_of(flags));
    }
    0
}

#[tracepoint]
pub fn fork_enter_clone3(ctx: TracePointContext) -> u32 {
    if let Ok(uargs) = field::<u64>(&ctx, &OFF_CLONE3_UARGS) {
        // struct clone_args starts with `__aligned_u64 flags`.
        // SAFETY: bpf_probe_read_user of the syscall's own argument.
        let flags = unsafe { bpf_probe_read_user(uargs as *const u64) }.unwrap_or(0);
        fork_begins(kind_of(flags));
    }
    0
}

#[tracepoint]
pub fn fork_enter_fork(_ctx: TracePointContext) -> u32 {
    fork_begins(KIND_FORK);
    0
}

#[tracepoint]
pub fn fork_enter_vfork(_ctx: TracePointContext) -> u32 {
    fork_begins(KIND_VFORK);
    0
}

/// One program for the four sys_exit tracepoints (same layout).
#[tracepoint]
pub fn fork_exit(ctx: TracePointContext) -> u32 {
    let Ok(ret) = field::<i64>(&ctx, &OFF_SYS_EXIT_RET) else {
        return 0;
    };
    if ret == 0 {
        // The child's return: it never entered.
        return 0;
    }
    let child = take(PendingKind::ForkChild);
    let Some((ns, kind)) = end(PendingKind::Fork) else {
        if let Some((pid, flags)) = child {
            // Entry lost, yet sched_process_fork saw a watched fork: its event is
            // lost, and its child may be waiting for it.
            if flags & FORK_WATCHED != 0 {
                inc(
                    &GLOBALS,
                    (global::EVENTS_LOST + global::event_slot(EVENT_FORK)) as u32,
                );
            }
            if flags & FORK_TRACKED != 0 {
                fork_sent(pid as u32);
            }
        }
        return 0;
    };
    if ret < 0 {
        return 0;
    }
    let dup_mmap_ns = take(PendingKind::DupMmapDone).map_or(0, |(_, ns)| ns);
    if dup_mmap_ns > 0 {
        observe(hist::DUP_MMAP, dup_mmap_ns);
    }
    match kind {
        KIND_FORK => {
            count2(proc::FORKS, 1, proc::FORK_NS, ns);
            observe(hist::FORK, ns);
            observe_keyed(hist::FORK, ns, false);
            match child {
                Some((pid, flags)) if flags & FORK_WATCHED != 0 => {
                    emit(&Event {
                        kind: EVENT_FORK,
                        tgid: tgid(),
                        // The child's pid as the kernel knows it (`ret` is the one of
                        // the parent's pid namespace), as its exit will name it.
                        child: pid as u32,
                        exit_code: 0,
                        ts_ns: now(),
                        fork_ns: ns,
                        dup_mmap_ns,
                        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
                    });
                    if flags & FORK_TRACKED != 0 {
                        fork_sent(pid as u32);
                    }
                }
                _ => inc(
                    &GLOBALS,
                    (global::EVENTS_FILTERED + global::event_slot(EVENT_FORK)) as u32,
                ),
            }
        }
        KIND_VFORK => count(proc::VFORKS, 1),
        _ => count(proc::THREADS, 1),
    }
    0
}

/// Whether the current process's forks are streamed: its pid or comm is watched (or
/// the filter is off).
#[inline(always)]
fn watched(tgid: u32, comm: &[u8; COMM_LEN]) -> bool {
    if FORK_FILTER.load() == 0 {
        return true;
    }
    // SAFETY: a lookup; the value is not kept.
    if unsafe { WATCH_PIDS.get(tgid) }.is_some() {
        return true;
    }
    let (w, len) = comm_words(comm);
    let n = WATCH_COMM_COUNT.load();
    let mut i = 0;
    while i < watch::MAX_COMMS {
        if i >= n {
            break;
        }
        if let Some(p) = WATCH_COMMS.get(i) {
            if p.matches(w, len) {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// sched:sched_process_fork, in the parent before the child first runs: a process
/// fork by a watched process marks its fork for streaming and tracks the child, so
/// the child's exit (which may come before the parent's return) is streamed too.
#[tracepoint]
pub fn fork_sched_fork(ctx: TracePointContext) -> u32 {
    let Some(p) = pending(PendingKind::Fork) else {
        return 0;
    };
    // SAFETY: a live map value of this thread's pending fork.
    if unsafe { (*p).aux } != KIND_FORK {
        return 0;
    }
    let Ok(child) = field::<i32>(&ctx, &OFF_SCHED_FORK_CHILD_PID) else {
        return 0;
    };
    let parent = tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    if !watched(parent, &comm) {
        return 0;
    }
    let pid = child as u32;
    let mut flags = FORK_WATCHED;
    let fresh = Child {
        parent,
        ..Child::default()
    };
    if CHILDREN.insert(pid, fresh, 0).is_ok() {
        if FORK_UNSENT.insert(pid, 1, 0).is_ok() {
            flags |= FORK_TRACKED;
        } else {
            let _ = CHILDREN.remove(pid);
            inc(&GLOBALS, global::CHILDREN_FULL as u32);
        }
    } else {
        inc(&GLOBALS, global::CHILDREN_FULL as u32);
    }
    stash(PendingKind::ForkChild, pid as u64, flags);
    0
}

/// The parent has streamed the fork of tracked child `pid`. If the child exited
/// first, it left its exit in `CHILDREN`: stream it now, after the fork.
#[inline(always)]
fn fork_sent(pid: u32) {
    if FORK_UNSENT.remove(pid).is_ok() {
        // Still running: its exit streams itself.
        return;
    }
    if let Some(c) = CHILDREN.get_ptr(pid) {
        // SAFETY: a live map value; the child wrote it before deleting its
        // `FORK_UNSENT` entry, which is what made the delete above fail.
        let c = unsafe { *c };
        if c.exited != 0 {
            emit(&Event {
                kind: EVENT_EXIT,
                tgid: pid,
                child: 0,
                exit_code: c.exit_code,
                ts_ns: c.ts_ns,
                fork_ns: 0,
                dup_mmap_ns: 0,
                comm: c.comm,
            });
        }
    }
    let _ = CHILDREN.remove(pid);
}

#[fentry(function = "dup_mmap")]
pub fn fork_dup_mmap_fentry(_ctx: FEntryContext) -> u32 {
    begin(PendingKind::DupMmap, 0);
    0
}

#[fexit(function = "dup_mmap")]
pub fn fork_dup_mmap_fexit(_ctx: FExitContext) -> u32 {
    dup_mmap_done();
    0
}

#[kprobe]
pub fn fork_dup_mmap_kprobe(_ctx: ProbeContext) -> u32 {
    begin(PendingKind::DupMmap, 0);
    0
}

#[kretprobe]
pub fn fork_dup_mmap_kretprobe(_ctx: RetProbeContext) -> u32 {
    dup_mmap_done();
    0
}

/// One address-space copy call returned: its time adds to the fork's (`Pending::aux`
/// of `PendingKind::DupMmapDone`), recorded in the histogram when the fork returns.
#[inline(always)]
fn dup_mmap_done() {
    if let Some((ns, _)) = end(PendingKind::DupMmap) {
        count(proc::DUP_MMAP_NS, ns);
        match pending(PendingKind::DupMmapDone) {
            // SAFETY: a live map value of this thread's pending fork.
            Some(p) => unsafe { (*p).aux += ns },
            None => begin(PendingKind::DupMmapDone, ns),
        }
    }
}

/// Streams an event; a full ring buffer loses it, counted by kind.
#[inline(always)]
fn emit(e: &Event) {
    let slot = global::event_slot(e.kind);
    let at = match EVENTS.output::<Event>(e, 0) {
        Ok(()) => global::EVENTS_SENT + slot,
        Err(_) => global::EVENTS_LOST + slot,
    };
    inc(&GLOBALS, at as u32);
}

/// sched:sched_process_exit, for whole processes only (the thread-group leader), and
/// of those only tracked children.
#[tracepoint]
pub fn fork_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if id >> 32 != id & 0xffff_ffff {
        return 0;
    }
    let pid = (id >> 32) as u32;
    flush_if(pid);
    let Some(c) = CHILDREN.get_ptr_mut(pid) else {
        inc(
            &GLOBALS,
            (global::EVENTS_FILTERED + global::event_slot(EVENT_EXIT)) as u32,
        );
        return 0;
    };
    let off = TASK_EXIT_CODE_OFFSET.load() as u64;
    let exit_code = if off == 0 {
        u32::MAX
    } else {
        // SAFETY: reading the current task's exit_code at its BTF offset.
        unsafe { bpf_probe_read_kernel((bpf_get_current_task() + off) as *const i32) }
            .map_or(u32::MAX, |c| c as u32)
    };
    let ts_ns = now();
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    // SAFETY: a live map value; only this exit and the parent's `fork_sent` touch it,
    // and the parent reads it only after the delete below.
    unsafe {
        (*c).exit_code = exit_code;
        (*c).ts_ns = ts_ns;
        (*c).comm = comm;
        (*c).exited = 1;
    }
    if FORK_UNSENT.remove(pid).is_ok() {
        // The parent has not streamed the fork yet: it streams this exit after it.
        return 0;
    }
    let _ = CHILDREN.remove(pid);
    emit(&Event {
        kind: EVENT_EXIT,
        tgid: pid,
        child: 0,
        exit_code,
        ts_ns,
        fork_ns: 0,
        dup_mmap_ns: 0,
        comm,
    });
    0
}
