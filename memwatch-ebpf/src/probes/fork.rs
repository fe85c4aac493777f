//! Fork: the clone/clone3/fork/vfork syscalls (tracepoints) from entry to the parent's
//! return, and the address-space copy where a function hook attaches: `dup_mmap`, or
//! where the kernel inlines it (Debian 5.10, 6.12) the sum of its per-VMA
//! `copy_page_range` calls. The programs below are loaded on whichever of the two the
//! agent picks; each call's time adds up until the fork returns.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use memwatch_common::{hist, proc, Event, COMM_LEN, EVENT_EXIT, EVENT_FORK};

use crate::maps::{
    begin, count, count2, end, field, flush_if, now, observe, observe_keyed, pending, take, tgid,
    PendingKind, EVENTS,
};

/// Offset of `exit_code` in `struct task_struct` (from kernel BTF; 0: unknown).
#[unsafe(no_mangle)]
static TASK_EXIT_CODE_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

crate::offsets! {
    OFF_CLONE_FLAGS = 16;
    OFF_CLONE3_UARGS = 16;
    OFF_SYS_EXIT_RET = 16;
}

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
    let Some((ns, kind)) = end(PendingKind::Fork) else {
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
            emit(Event {
                kind: EVENT_FORK,
                tgid: tgid(),
                child: ret as u32,
                exit_code: 0,
                ts_ns: now(),
                fork_ns: ns,
                dup_mmap_ns,
                comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
            });
        }
        KIND_VFORK => count(proc::VFORKS, 1),
        _ => count(proc::THREADS, 1),
    }
    0
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

#[inline(always)]
fn emit(e: Event) {
    // A full ring buffer drops the event; the agent counts the gap it leaves.
    let _ = EVENTS.output::<Event>(&e, 0);
}

/// sched:sched_process_exit, for whole processes only (the thread-group leader).
#[tracepoint]
pub fn fork_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if id >> 32 != id & 0xffff_ffff {
        return 0;
    }
    flush_if((id >> 32) as u32);
    let off = TASK_EXIT_CODE_OFFSET.load() as u64;
    let exit_code = if off == 0 {
        u32::MAX
    } else {
        // SAFETY: reading the current task's exit_code at its BTF offset.
        unsafe { bpf_probe_read_kernel((bpf_get_current_task() + off) as *const i32) }
            .map_or(u32::MAX, |c| c as u32)
    };
    emit(Event {
        kind: EVENT_EXIT,
        tgid: (id >> 32) as u32,
        child: 0,
        exit_code,
        ts_ns: now(),
        fork_ns: 0,
        dup_mmap_ns: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    });
    0
}
