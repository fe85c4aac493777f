//! LRU movement: insertions per list and activations (pagemap tracepoints), and what
//! each pass of reclaim over the inactive and active lists did, per node (vmscan).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use memwatch_common::{global, node};

use crate::maps::{field, inc, node_add, GLOBALS};

crate::offsets! {
    OFF_LRU_INSERTION_LRU = 24;
    OFF_SI_NID = 8;
    OFF_SI_SCANNED = 16;
    OFF_SI_RECLAIMED = 24;
    OFF_SI_DIRTY = 32;
    OFF_SI_WRITEBACK = 40;
    OFF_SI_CONGESTED = 48;
    OFF_SI_IMMEDIATE = 56;
    OFF_SI_ACTIVATE0 = 64;
    OFF_SI_ACTIVATE1 = 68;
    OFF_SI_REF_KEEP = 72;
    OFF_SI_UNMAP_FAIL = 80;
    OFF_SA_NID = 8;
    OFF_SA_TAKEN = 16;
    OFF_SA_ACTIVE = 24;
    OFF_SA_DEACTIVATED = 32;
    OFF_SA_REFERENCED = 40;
}

#[tracepoint]
pub fn lru_insertion(ctx: TracePointContext) -> u32 {
    if let Ok(lru) = field::<u32>(&ctx, &OFF_LRU_INSERTION_LRU) {
        if (lru as usize) < global::LRU_LISTS {
            inc(&GLOBALS, (global::LRU_INSERT + lru as usize) as u32);
        }
    }
    0
}

#[tracepoint]
pub fn lru_activate(_ctx: TracePointContext) -> u32 {
    inc(&GLOBALS, global::LRU_ACTIVATE as u32);
    0
}

#[tracepoint]
pub fn lru_shrink_inactive(ctx: TracePointContext) -> u32 {
    let Ok(nid) = field::<i32>(&ctx, &OFF_SI_NID) else {
        return 0;
    };
    let longs = [
        (&OFF_SI_SCANNED, node::INACTIVE_SCANNED),
        (&OFF_SI_RECLAIMED, node::INACTIVE_RECLAIMED),
        (&OFF_SI_DIRTY, node::INACTIVE_DIRTY),
        (&OFF_SI_WRITEBACK, node::INACTIVE_WRITEBACK),
        (&OFF_SI_CONGESTED, node::INACTIVE_CONGESTED),
        (&OFF_SI_IMMEDIATE, node::INACTIVE_IMMEDIATE),
        (&OFF_SI_REF_KEEP, node::INACTIVE_REF_KEEP),
        (&OFF_SI_UNMAP_FAIL, node::INACTIVE_UNMAP_FAIL),
    ];
    for (off, counter) in longs {
        if let Ok(v) = field::<u64>(&ctx, off) {
            node_add(nid, counter, v);
        }
    }
    if let Ok(v) = field::<u32>(&ctx, &OFF_SI_ACTIVATE0) {
        node_add(nid, node::INACTIVE_ACTIVATE_ANON, v as u64);
    }
    if let Ok(v) = field::<u32>(&ctx, &OFF_SI_ACTIVATE1) {
        node_add(nid, node::INACTIVE_ACTIVATE_FILE, v as u64);
    }
    0
}

#[tracepoint]
pub fn lru_shrink_active(ctx: TracePointContext) -> u32 {
    let Ok(nid) = field::<i32>(&ctx, &OFF_SA_NID) else {
        return 0;
    };
    let longs = [
        (&OFF_SA_TAKEN, node::ACTIVE_TAKEN),
        (&OFF_SA_ACTIVE, node::ACTIVE_ACTIVE),
        (&OFF_SA_DEACTIVATED, node::ACTIVE_DEACTIVATED),
        (&OFF_SA_REFERENCED, node::ACTIVE_REFERENCED),
    ];
    for (off, counter) in longs {
        if let Ok(v) = field::<u64>(&ctx, off) {
            node_add(nid, counter, v);
        }
    }
    0
}
