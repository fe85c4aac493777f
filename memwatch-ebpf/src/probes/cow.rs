//! Copy-on-write, function-hook rungs. `do_wp_page` is entered once for every
//! write-protect fault the kernel handles. A copy maps a new anonymous page, which goes
//! through `folio_add_new_anon_rmap` (6.3+) or `page_add_new_anon_rmap` (before): seen
//! inside a pending `do_wp_page`, that is a copy. A successful exit without one is a
//! reuse (sole owner, or a shared mapping). (`wp_page_copy` and `wp_page_reuse`, the
//! obvious hooks, are inlined by Debian's 6.12 and 6.1/6.12 builds; the rmap functions
//! are called across files and never are.) `do_huge_pmd_wp_page` is the THP case. The tracepoint rung of this family has
//! no program of its own: it is the write-protect slot of `faults.rs`.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use memwatch_common::{hist, proc};

use crate::maps::{begin, count, count2, end, observe, pending, raise, PendingKind};

/// Returns that mean no page was copied: OOM | SIGBUS | HWPOISON | HWPOISON_LARGE |
/// SIGSEGV | RETRY | FALLBACK | COMPLETED (stable values since 5.x).
const NOT_DONE: u32 = 0x1 | 0x2 | 0x10 | 0x20 | 0x40 | 0x400 | 0x800 | 0x4000;
/// `Pending::aux` bit: a new anonymous page was mapped inside this do_wp_page.
const COPIED: u64 = 1;

#[fentry(function = "do_wp_page")]
pub fn cow_wp_fentry(_ctx: FEntryContext) -> u32 {
    begin(PendingKind::Wp, 0);
    0
}

/// do_wp_page(struct vm_fault *vmf) -> vm_fault_t
#[fexit(function = "do_wp_page")]
pub fn cow_wp_fexit(ctx: FExitContext) -> u32 {
    let ret: u64 = ctx.arg(1);
    on_wp_done(ret as u32);
    0
}

#[kprobe]
pub fn cow_wp_kprobe(_ctx: ProbeContext) -> u32 {
    begin(PendingKind::Wp, 0);
    0
}

#[kretprobe]
pub fn cow_wp_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    on_wp_done(ret as u32);
    0
}

#[inline(always)]
fn on_wp_done(ret: u32) {
    let Some((ns, aux)) = end(PendingKind::Wp) else {
        return;
    };
    count2(proc::WP_CALLS, 1, proc::WP_NS, ns);
    raise(proc::WP_MAX_NS, ns);
    observe(hist::WP_FAULT, ns);
    if aux & COPIED != 0 {
        count(proc::COW_COPIES, 1);
    } else if ret & NOT_DONE == 0 {
        count(proc::COW_REUSES, 1);
    }
}

/// The attach target is chosen at load time (`folio_add_new_anon_rmap` or
/// `page_add_new_anon_rmap`); the arguments are not read.
#[fentry(function = "folio_add_new_anon_rmap")]
pub fn cow_copy_fentry(_ctx: FEntryContext) -> u32 {
    mark_copied();
    0
}

#[kprobe]
pub fn cow_copy_kprobe(_ctx: ProbeContext) -> u32 {
    mark_copied();
    0
}

/// Every new anonymous page passes here (first-touch faults too); only one mapped
/// while this thread is inside do_wp_page is a copy.
#[inline(always)]
fn mark_copied() {
    if let Some(p) = pending(PendingKind::Wp) {
        // SAFETY: a live map value of this thread's pending do_wp_page.
        unsafe { (*p).aux |= COPIED };
    }
}

#[fentry(function = "do_huge_pmd_wp_page")]
pub fn cow_thp_fentry(_ctx: FEntryContext) -> u32 {
    count(proc::THP_WP_FAULTS, 1);
    0
}

#[kprobe]
pub fn cow_thp_kprobe(_ctx: ProbeContext) -> u32 {
    count(proc::THP_WP_FAULTS, 1);
    0
}
