//! Page faults.
//! - `exceptions:page_fault_user` / `page_fault_kernel` (x86): every fault by kind,
//!   decoded from the error code.
//! - `handle_mm_fault` exit (fexit or kretprobe): major versus minor.

use aya_ebpf::{
    macros::{fexit, kretprobe, tracepoint},
    programs::{FExitContext, RetProbeContext, TracePointContext},
};
use memwatch_common::{fault, proc};

use crate::maps::{count, field};

crate::offsets! {
    OFF_PF_ERROR_CODE = 24;
}

#[tracepoint]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    on_page_fault(&ctx);
    0
}

#[tracepoint]
pub fn page_fault_kernel(ctx: TracePointContext) -> u32 {
    on_page_fault(&ctx);
    0
}

#[inline(always)]
fn on_page_fault(ctx: &TracePointContext) {
    if let Ok(error_code) = field::<u64>(ctx, &OFF_PF_ERROR_CODE) {
        let slot = fault::slot(fault::kind(error_code), fault::mode(error_code)) as usize;
        if slot < fault::SLOTS {
            count(slot, 1);
        }
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
