//! LRU movement: insertions per list and activations (pagemap tracepoints), and what
//! each pass of reclaim over the inactive and active lists did, per node (vmscan).

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext, Global,
};
use memwatch_common::{global, node};

use crate::maps::{add, field, node_add, GLOBALS};

/// Where a folio keeps its order (from kernel BTF; `FOLIO_ORDER_KNOWN` 0: count one
/// page per folio).
#[unsafe(no_mangle)]
static FOLIO_ORDER_KNOWN: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static FOLIO_HEAD_BIT: Global<u32> = Global::new(6);
#[unsafe(no_mangle)]
static FOLIO_ORDER_OFFSET: Global<u32> = Global::new(64);

crate::offsets! {
    OFF_LRU_INSERTION_FOLIO = 8;
    OFF_LRU_ACTIVATE_FOLIO = 8;
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

/// Pages in the folio a tracepoint record points to (1 when its layout is unknown).
#[inline(always)]
fn folio_pages(ctx: &TracePointContext, off: &Global<u32>) -> u64 {
    if FOLIO_ORDER_KNOWN.load() == 0 {
        return 1;
    }
    let Ok(folio) = field::<u64>(ctx, off) else {
        return 1;
    };
    // SAFETY: bpf_probe_read_kernel of the folio the kernel is handling.
    let flags = unsafe { bpf_probe_read_kernel((folio) as *const u64) }.unwrap_or(0);
    if flags & (1u64 << (FOLIO_HEAD_BIT.load() & 63)) == 0 {
        return 1;
    }
    let at = folio + FOLIO_ORDER_OFFSET.load() as u64;
    // SAFETY: as above; the order is the low byte of `_flags_1` / `_folio_order`.
    let order = unsafe { bpf_probe_read_kernel(at as *const u8) }.unwrap_or(0);
    1u64 << (order & 31)
}

#[tracepoint]
pub fn lru_insertion(ctx: TracePointContext) -> u32 {
    if let Ok(lru) = field::<u32>(&ctx, &OFF_LRU_INSERTION_LRU) {
        if (lru as usize) < global::LRU_LISTS {
            let pages = folio_pages(&ctx, &OFF_LRU_INSERTION_FOLIO);
            add(&GLOBALS, (global::LRU_INSERT + lru as usize) as u32, pages);
        }
    }
    0
}

#[tracepoint]
pub fn lru_activate(ctx: TracePointContext) -> u32 {
    let pages = folio_pages(&ctx, &OFF_LRU_ACTIVATE_FOLIO);
    add(&GLOBALS, global::LRU_ACTIVATE as u32, pages);
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
