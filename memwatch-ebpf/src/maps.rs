//! Maps shared by several probe areas, and small helpers around them.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use memwatch_common::stat;

/// The programs' own bookkeeping, indexed by `memwatch_common::stat::*`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::SLOTS, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn inc(array: &PerCpuArray<u64>, index: u32) {
    if let Some(p) = array.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

/// Adds one to a `u64` that other CPUs may update at the same time.
#[inline(always)]
pub fn atomic_inc(p: *mut u64) {
    // SAFETY: `p` points into a map value that lives as long as the map. The result is
    // unused, so LLVM emits a plain BPF atomic add (no BPF_FETCH, which needs 5.12).
    // The BPF target has no `AtomicU64::fetch_add`, hence the intrinsic.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, 1,
        )
    };
}
