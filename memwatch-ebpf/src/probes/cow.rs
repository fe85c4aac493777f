//! Copy-on-write, function-hook rungs: `do_wp_page` is entered once for every
//! write-protect fault the kernel handles (copy or reuse). The tracepoint rung of this
//! family needs no program of its own: it is the write-protect slot of `faults.rs`.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{fentry, kprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, ProbeContext},
};
use memwatch_common::{stat, ProcCow};

use crate::maps::{atomic_inc, inc, STATS};

/// COW work per process (key: tgid).
#[map]
static PROC_COW: LruHashMap<u32, ProcCow> = LruHashMap::with_max_entries(10240, 0);

#[fentry(function = "do_wp_page")]
pub fn cow_do_wp_page_fentry(_ctx: FEntryContext) -> u32 {
    on_wp_fault();
    0
}

#[kprobe]
pub fn cow_do_wp_page_kprobe(_ctx: ProbeContext) -> u32 {
    on_wp_fault();
    0
}

#[inline(always)]
fn on_wp_fault() {
    inc(&STATS, stat::COW_WP_CALLS);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let row = match PROC_COW.get_ptr_mut(tgid) {
        Some(row) => row,
        None => {
            let fresh = ProcCow {
                wp_faults: 0,
                comm: bpf_get_current_comm().unwrap_or([0; 16]),
            };
            if PROC_COW.insert(tgid, fresh, 1).is_ok() {
                inc(&STATS, stat::PROC_COW_INSERTS);
            }
            match PROC_COW.get_ptr_mut(tgid) {
                Some(row) => row,
                None => {
                    inc(&STATS, stat::PROC_COW_INSERT_ERRORS);
                    return;
                }
            }
        }
    };
    // SAFETY: `row` points at a live map value.
    atomic_inc(unsafe { &raw mut (*row).wp_faults });
}
