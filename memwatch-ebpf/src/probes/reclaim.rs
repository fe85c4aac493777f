//! Reclaim (vmscan tracepoints): direct and memcg-limit reclaim from begin to end,
//! kswapd wake-ups per node, pages reclaim wrote itself, and reclaim throttling.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use memwatch_common::{global, hist, node, proc};

use crate::maps::{
    add, begin, count, count2, end, field, inc, node_add, observe, PendingKind, GLOBALS,
};

crate::offsets! {
    OFF_RECLAIM_END_NR = 8;
    OFF_KSWAPD_WAKE_NID = 8;
    OFF_WRITE_FOLIO_FLAGS = 16;
    OFF_THROTTLED_DELAYED = 16;
    OFF_THROTTLED_REASON = 20;
}

#[tracepoint]
pub fn reclaim_direct_begin(_ctx: TracePointContext) -> u32 {
    begin(PendingKind::DirectReclaim, 0);
    0
}

#[tracepoint]
pub fn reclaim_direct_end(ctx: TracePointContext) -> u32 {
    reclaim_done(
        &ctx,
        PendingKind::DirectReclaim,
        hist::DIRECT_RECLAIM,
        [
            proc::DIRECT_RECLAIM_COUNT,
            proc::DIRECT_RECLAIM_NS,
            proc::DIRECT_RECLAIMED,
        ],
    );
    0
}

#[tracepoint]
pub fn reclaim_memcg_begin(_ctx: TracePointContext) -> u32 {
    begin(PendingKind::MemcgReclaim, 0);
    0
}

#[tracepoint]
pub fn reclaim_memcg_end(ctx: TracePointContext) -> u32 {
    reclaim_done(
        &ctx,
        PendingKind::MemcgReclaim,
        hist::MEMCG_RECLAIM,
        [
            proc::MEMCG_RECLAIM_COUNT,
            proc::MEMCG_RECLAIM_NS,
            proc::MEMCG_RECLAIMED,
        ],
    );
    0
}

/// Counts one finished reclaim: [episodes, ns, pages] counters.
#[inline(always)]
fn reclaim_done(ctx: &TracePointContext, what: PendingKind, h: u32, counters: [usize; 3]) {
    let Some((ns, _)) = end(what) else {
        return;
    };
    count2(counters[0], 1, counters[1], ns);
    observe(h, ns);
    if let Ok(n) = field::<u64>(ctx, &OFF_RECLAIM_END_NR) {
        count(counters[2], n);
    }
}

#[tracepoint]
pub fn reclaim_kswapd_wake(ctx: TracePointContext) -> u32 {
    if let Ok(nid) = field::<i32>(&ctx, &OFF_KSWAPD_WAKE_NID) {
        node_add(nid, node::KSWAPD_WAKE, 1);
    }
    0
}

const RECLAIM_WB_ANON: i32 = 0x1;

#[tracepoint]
pub fn reclaim_write_folio(ctx: TracePointContext) -> u32 {
    if let Ok(flags) = field::<i32>(&ctx, &OFF_WRITE_FOLIO_FLAGS) {
        let slot = if flags & RECLAIM_WB_ANON != 0 {
            global::VMSCAN_WRITE_ANON
        } else {
            global::VMSCAN_WRITE_FILE
        };
        inc(&GLOBALS, slot as u32);
    }
    0
}

#[tracepoint]
pub fn reclaim_throttled(ctx: TracePointContext) -> u32 {
    let (Ok(reason), Ok(delayed)) = (
        field::<i32>(&ctx, &OFF_THROTTLED_REASON),
        field::<i32>(&ctx, &OFF_THROTTLED_DELAYED),
    ) else {
        return 0;
    };
    if reason >= 0 && (reason as usize) < global::THROTTLE_REASONS {
        inc(&GLOBALS, (global::THROTTLED + reason as usize) as u32);
        add(
            &GLOBALS,
            (global::THROTTLED_US + reason as usize) as u32,
            delayed.max(0) as u64,
        );
    }
    0
}
