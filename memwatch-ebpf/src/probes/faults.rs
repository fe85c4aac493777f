//! Page faults.
//! - `exceptions:page_fault_user` / `page_fault_kernel` (x86): every fault by kind,
//!   decoded from the error code; as raw tracepoints where the kernel allows (the
//!   arguments straight from the call site: no record is built and nothing is copied,
//!   which is most of the cost on this, the hottest hook), else as tracepoints (the
//!   error code read from the record at its tracefs offset).
//! - `handle_mm_fault` exit (fexit or kretprobe): major versus minor.

use aya_ebpf::{
    macros::{fexit, kretprobe, raw_tracepoint, tracepoint},
    programs::{FExitContext, RawTracePointContext, RetProbeContext, TracePointContext},
};
use memwatch_common::{fault, proc};

use crate::maps::{count, field};

crate::offsets! {
    OFF_PF_ERROR_CODE = 24;
}

/// TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code),
/// the same for both events since 4.15.
const RAW_ARG_ERROR_CODE: usize = 2;

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn page_fault_user_raw(ctx: RawTracePointContext) -> i32 {
    on_page_fault(ctx.arg(RAW_ARG_ERROR_CODE));
    0
}

#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn page_fault_kernel_raw(ctx: RawTracePointContext) -> i32 {
    on_page_fault(ctx.arg(RAW_ARG_ERROR_CODE));
    0
}

#[tracepoint]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    if let Ok(error_code) = field::<u64>(&ctx, &OFF_PF_ERROR_CODE) {
        on_page_fault(error_code);
    }
    0
}

#[tracepoint]
pub fn page_fault_kernel(ctx: TracePointContext) -> u32 {
    if let Ok(error_code) = field::<u64>(&ctx, &OFF_PF_ERROR_CODE) {
        on_page_fault(error_code);
    }
    0
}

#[inline(always)]
fn on_page_fault(error_code: u64) {
    let slot = fault::slot(fault::kind(error_code), fault::mode(error_code)) as usize;
    if slot < fault::SLOTS {
        count(slot, 1);
    }
}

const VM_FAULT_MAJOR: u32 = 0x4;
const VM_FAULT_RETRY: u32 = 0x400;
/// OOM | SIGBUS | HWPOISON | HWPOISON_LARGE | SIGSEGV | FALLBACK.
const VM_FAULT_ERROR: u32 = 0x873;
const FAULT_FLAG_TRIED: u32 = 1 << 5;

/// Counts a finished fault the way the kernel's own maj_flt/min_flt do
/// (mm_account_fault): retried faults count when they complete, failed ones not at all.
#[inline(always)]
fn on_fault_done(ret: u32, flags: u32) {
    if ret & (VM_FAULT_RETRY | VM_FAULT_ERROR) != 0 {
        return;
    }
    if ret & VM_FAULT_MAJOR != 0 || flags & FAULT_FLAG_TRIED != 0 {
        count(proc::MAJOR_FAULTS, 1);
    } else {
        count(proc::MINOR_FAULTS, 1);
    }
}

/// handle_mm_fault(vma, address, flags, regs) -> vm_fault_t
#[fexit(function = "handle_mm_fault")]
pub fn faults_handle_mm_fault_fexit(ctx: FExitContext) -> u32 {
    let flags: u64 = ctx.arg(2);
    let ret: u64 = ctx.arg(4);
    on_fault_done(ret as u32, flags as u32);
    0
}

/// The kretprobe can't see the flags: a fault completed on retry counts as minor
/// unless the handler itself said major.
#[kretprobe]
pub fn faults_handle_mm_fault_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    on_fault_done(ret as u32, 0);
    0
}
