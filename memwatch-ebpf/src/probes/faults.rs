//! Page faults: `exceptions:page_fault_user` and `exceptions:page_fault_kernel`.
//!
//! Both tracepoints share one layout (event class `x86_exceptions`); the agent reads the
//! `error_code` offset from tracefs at start-up and sets `PF_ERROR_CODE_OFFSET`.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
    Global,
};
use memwatch_common::{fault, stat, ProcFaults};

use crate::maps::{atomic_inc, inc, STATS};

/// Offset of `error_code` in the tracepoint record (6.x: 24).
#[unsafe(no_mangle)]
static PF_ERROR_CODE_OFFSET: Global<u32> = Global::new(24);

/// Faults by `fault::slot(kind, mode)`, per CPU.
#[map]
static FAULTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(fault::SLOTS as u32, 0);

/// Faults per process (key: tgid). The agent sets `max_entries` from the config.
#[map]
static PROC_FAULTS: LruHashMap<u32, ProcFaults> = LruHashMap::with_max_entries(10240, 0);

#[tracepoint]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    match try_page_fault(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[tracepoint]
pub fn page_fault_kernel(ctx: TracePointContext) -> u32 {
    match try_page_fault(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_page_fault(ctx: &TracePointContext) -> Result<(), ()> {
    let offset = PF_ERROR_CODE_OFFSET.load() as usize;
    // SAFETY: bpf_probe_read_kernel of the record the kernel handed us.
    let error_code: u64 = match unsafe { ctx.read_at(offset) } {
        Ok(v) => v,
        Err(_) => {
            inc(&STATS, stat::TP_READ_ERRORS);
            return Err(());
        }
    };
    let slot = fault::slot(fault::kind(error_code), fault::mode(error_code));
    inc(&FAULTS, slot);

    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let row = match PROC_FAULTS.get_ptr_mut(tgid) {
        Some(row) => row,
        None => {
            let fresh = ProcFaults {
                counts: [0; fault::SLOTS],
                comm: bpf_get_current_comm().unwrap_or([0; 16]),
            };
            // BPF_NOEXIST: if another CPU raced us, keep its row and count into it.
            if PROC_FAULTS.insert(tgid, fresh, 1).is_ok() {
                inc(&STATS, stat::PROC_FAULT_INSERTS);
            }
            match PROC_FAULTS.get_ptr_mut(tgid) {
                Some(row) => row,
                None => {
                    inc(&STATS, stat::PROC_FAULT_INSERT_ERRORS);
                    return Err(());
                }
            }
        }
    };
    if (slot as usize) < fault::SLOTS {
        // SAFETY: `row` points at a live map value; the index is bounds-checked.
        atomic_inc(unsafe { &raw mut (*row).counts[slot as usize] });
    }
    Ok(())
}
