//! Dirty pages and writeback (tracepoints):
//! - `writeback_dirty_folio` (5.17+) or `writeback_dirty_page`: a page dirtied, by the
//!   task that dirtied it, on a backing device;
//! - `writeback_start`/`writeback_written`: the reason of the flusher work in progress;
//! - `writeback_single_inode`: pages written for one inode, by device and that reason;
//! - `balance_dirty_pages`: a task paused by dirty throttling.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext, Global};
use memwatch_common::{global, hist, proc, DevKey, DEV_DIRTIED, DEV_WRITTEN};

use aya_ebpf::{macros::map, maps::LruHashMap};

use crate::maps::{
    add, begin, count, count2, end, field, keyed_add, observe, observe_keyed, pending, GLOBALS,
    PENDING_WB_WORK,
};

crate::offsets! {
    OFF_DIRTY_NAME = 8;
    OFF_WB_START_REASON = 68;
    OFF_WSI_NAME = 8;
    OFF_WSI_WROTE = 80;
    OFF_BDP_PAUSE = 112;
}

/// Nanoseconds per jiffy (the agent sets it from the kernel's HZ).
#[unsafe(no_mangle)]
static NS_PER_JIFFY: Global<u64> = Global::new(4_000_000);

/// Pages dirtied and written per backing device.
#[map]
static DEVICES: LruHashMap<DevKey, u64> = LruHashMap::with_max_entries(1024, 0);

#[inline(always)]
fn device_add(ctx: &TracePointContext, name_off: &Global<u32>, what: u32, reason: u32, n: u64) {
    let Ok(name) = field::<[u8; 32]>(ctx, name_off) else {
        return;
    };
    keyed_add(&DEVICES, &DevKey { name, what, reason }, n);
}

#[tracepoint]
pub fn wb_dirty(ctx: TracePointContext) -> u32 {
    count(proc::DIRTIED, 1);
    device_add(&ctx, &OFF_DIRTY_NAME, DEV_DIRTIED, 0, 1);
    0
}

#[tracepoint]
pub fn wb_start(ctx: TracePointContext) -> u32 {
    if let Ok(reason) = field::<i32>(&ctx, &OFF_WB_START_REASON) {
        begin(PENDING_WB_WORK, reason as u64);
    }
    0
}

#[tracepoint]
pub fn wb_written(_ctx: TracePointContext) -> u32 {
    let _ = end(PENDING_WB_WORK);
    0
}

#[tracepoint]
pub fn wb_single_inode(ctx: TracePointContext) -> u32 {
    let Ok(wrote) = field::<u64>(&ctx, &OFF_WSI_WROTE) else {
        return 0;
    };
    if wrote == 0 {
        return 0;
    }
    // Outside flusher work (sync_inode, write_inode_now): the last slot.
    let mut reason = (global::WB_REASONS - 1) as u32;
    if let Some(p) = pending(PENDING_WB_WORK) {
        // SAFETY: a live map value.
        let r = unsafe { (*p).aux } as u32;
        if (r as usize) < global::WB_REASONS - 1 {
            reason = r;
        }
    }
    add(&GLOBALS, (global::WRITTEN + reason as usize) as u32, wrote);
    device_add(&ctx, &OFF_WSI_NAME, DEV_WRITTEN, reason, wrote);
    0
}

#[tracepoint]
pub fn wb_balance_dirty_pages(ctx: TracePointContext) -> u32 {
    let Ok(pause) = field::<i64>(&ctx, &OFF_BDP_PAUSE) else {
        return 0;
    };
    if pause <= 0 {
        return 0;
    }
    let ns = pause as u64 * NS_PER_JIFFY.load();
    count2(proc::THROTTLE_COUNT, 1, proc::THROTTLE_NS, ns);
    observe(hist::THROTTLE, ns);
    observe_keyed(hist::THROTTLE, ns, true);
    0
}
