//! LRU movement: insertions per list and activations (pagemap tracepoints), and what
//! each pass of reclaim over the inactive and active lists did, per node (vmscan).
//!
//! Insertions come once per new page, so on a COW-heavy workload once per fault: they
//! attach as raw tracepoints where the kernel allows (the folio pointer straight from
//! the call site; the list is worked out from the folio's flags the way the tracepoint
//! does, `folio_lru_list`/`page_lru`), else as tracepoints (the list from the record).

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    Global,
};
use memwatch_common::{global, node};

use crate::maps::{add, field, flags_of, folio_layout_known, folio_pages, node_add, GLOBALS};

// Bits of `enum pageflags` (from kernel BTF), for the raw insertion program.
crate::offsets! {
    PG_ACTIVE = 5;
    PG_UNEVICTABLE = 18;
    PG_SWAPBACKED = 19;
}

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

/// Pages in the folio a tracepoint record points to (1 when unreadable).
#[inline(always)]
fn record_folio_pages(ctx: &TracePointContext, off: &Global<u32>) -> u64 {
    if !folio_layout_known() {
        return 1;
    }
    let Ok(folio) = field::<u64>(ctx, off) else {
        return 1;
    };
    folio_pages(folio, flags_of(folio))
}

#[inline(always)]
fn inserted(lru: usize, pages: u64) {
    if lru < global::LRU_LISTS {
        add(&GLOBALS, (global::LRU_INSERT + lru) as u32, pages);
    }
}

#[tracepoint]
pub fn lru_insertion(ctx: TracePointContext) -> u32 {
    if let Ok(lru) = field::<u32>(&ctx, &OFF_LRU_INSERTION_LRU) {
        inserted(
            lru as usize,
            record_folio_pages(&ctx, &OFF_LRU_INSERTION_FOLIO),
        );
    }
    0
}

/// TP_PROTO(struct folio *folio) (5.10: struct page *page, then the list, which the
/// flags give as well).
#[raw_tracepoint(tracepoint = "mm_lru_insertion")]
pub fn lru_insertion_raw(ctx: RawTracePointContext) -> i32 {
    let folio: u64 = ctx.arg(0);
    let flags = flags_of(folio);
    let set = |bit: &Global<u32>| flags & (1u64 << (bit.load() & 63)) != 0;
    // enum lru_list: inactive anon, active anon, inactive file, active file, unevictable.
    let lru = if set(&PG_UNEVICTABLE) {
        4
    } else {
        (if set(&PG_SWAPBACKED) { 0 } else { 2 }) + usize::from(set(&PG_ACTIVE))
    };
    inserted(lru, folio_pages(folio, flags));
    0
}

#[tracepoint]
pub fn lru_activate(ctx: TracePointContext) -> u32 {
    let pages = record_folio_pages(&ctx, &OFF_LRU_ACTIVATE_FOLIO);
    add(&GLOBALS, global::LRU_ACTIVATE as u32, pages);
    0
}

/// TP_PROTO(struct folio *folio) (5.10: struct page *page).
#[raw_tracepoint(tracepoint = "mm_lru_activate")]
pub fn lru_activate_raw(ctx: RawTracePointContext) -> i32 {
    let folio: u64 = ctx.arg(0);
    add(
        &GLOBALS,
        global::LRU_ACTIVATE as u32,
        folio_pages(folio, flags_of(folio)),
    );
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
