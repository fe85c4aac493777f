//! Dirty pages and writeback (tracepoints):
//! - `writeback_dirty_folio` (5.17+) or `writeback_dirty_page`: a folio dirtied, by the
//!   task that dirtied it, on a backing device. As a raw tracepoint where kernel BTF
//!   gives the layouts: the folio's pages counted (large folios: ext4 on 6.16+, XFS
//!   from 5.18), the device named by walking mapping → inode → super block → bdi as
//!   the tracepoint does; else as a tracepoint, one page per folio;
//! - `writeback_start`/`writeback_written`: the reason of the flusher work in progress;
//! - `writeback_single_inode`: pages written for one inode, by device and that reason;
//! - `do_writepages` (fentry/fexit or kprobe/kretprobe), where it attaches: every page
//!   written back, whoever started it (the flusher, or `fsync()`, `sync_file_range()`,
//!   `msync()`, O_SYNC writes in the calling task, which pass no writeback tracepoint),
//!   from the drop in `wbc->nr_to_write`; `writeback_single_inode` then only adds the
//!   device;
//! - `ext4:ext4_writepages_result`, on the tracepoint rung: what ext4 wrote back outside
//!   `__writeback_single_inode` (bracketed by `writeback_single_inode_start` and
//!   `writeback_single_inode`), i.e. for fsync() and the like, which no writeback
//!   tracepoint sees; idle inside a hooked `do_writepages`, which counts those pages;
//! - `balance_dirty_pages`: a task paused by dirty throttling.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{fentry, fexit, kprobe, kretprobe, raw_tracepoint, tracepoint},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
    Global,
};
use memwatch_common::{global, hist, proc, DevKey, DEV_DIRTIED, DEV_WRITTEN};

use aya_ebpf::{macros::map, maps::LruHashMap};

use crate::maps::{
    add, begin, count, count2, end, field, flags_of, folio_pages, keyed_add, observe,
    observe_keyed, pending, stash, take, PendingKind, GLOBALS,
};

crate::offsets! {
    OFF_EXT4_PAGES_WRITTEN = 28;
    OFF_DIRTY_NAME = 8;
    OFF_WB_START_REASON = 68;
    OFF_WSI_NAME = 8;
    OFF_WSI_WROTE = 80;
    OFF_BDP_PAUSE = 112;
}

/// Nanoseconds per jiffy (the agent sets it from the kernel's HZ).
#[unsafe(no_mangle)]
static NS_PER_JIFFY: Global<u64> = Global::new(4_000_000);

/// Offset of `nr_to_write` in `struct writeback_control` (from kernel BTF; `u32::MAX`:
/// unknown, and `do_writepages` counts nothing).
#[unsafe(no_mangle)]
static WBC_NR_TO_WRITE_OFFSET: Global<u32> = Global::new(u32::MAX);

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

// Byte offsets along mapping → host inode → super block → bdi → (dev, dev_name), from
// kernel BTF.
crate::offsets! {
    BDI_PATH_KNOWN = 0;
    OFF_MAPPING_HOST = 0;
    OFF_INODE_SB = 40;
    OFF_SB_BDI = 0;
    OFF_BDI_DEV = 0;
    OFF_BDI_DEV_NAME = 0;
}

#[inline(always)]
fn read_ptr(base: u64, off: &Global<u32>) -> u64 {
    if base == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel of a pointer field of a kernel object.
    unsafe { bpf_probe_read_kernel((base + off.load() as u64) as *const u64) }.unwrap_or(0)
}

/// The backing device's name of a mapping, as `bdi_dev_name(inode_to_bdi(host))` gives
/// it to the tracepoint (block-device inodes, whose bdi is their disk's, read as
/// "(unknown)" here).
#[inline(always)]
fn bdi_name(mapping: u64) -> [u8; 32] {
    let mut name = [0u8; 32];
    let bdi = read_ptr(
        read_ptr(read_ptr(mapping, &OFF_MAPPING_HOST), &OFF_INODE_SB),
        &OFF_SB_BDI,
    );
    if bdi == 0 || read_ptr(bdi, &OFF_BDI_DEV) == 0 {
        name[..9].copy_from_slice(b"(unknown)");
        return name;
    }
    let at = (bdi + OFF_BDI_DEV_NAME.load() as u64) as *const u8;
    // SAFETY: bpf_probe_read_kernel_str of the bdi's own name buffer (NUL-terminated,
    // truncated to fit like the tracepoint's strscpy).
    let _ = unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(at, &mut name) };
    name[31] = 0;
    name
}

/// TP_PROTO(struct folio *folio, struct address_space *mapping) (5.10:
/// `writeback_dirty_page`, struct page *page, same order).
#[raw_tracepoint(tracepoint = "writeback_dirty_folio")]
pub fn wb_dirty_raw(ctx: RawTracePointContext) -> i32 {
    let folio: u64 = ctx.arg(0);
    let mapping: u64 = ctx.arg(1);
    let pages = folio_pages(folio, flags_of(folio));
    count(proc::DIRTIED, pages);
    let key = DevKey {
        name: bdi_name(mapping),
        what: DEV_DIRTIED,
        reason: 0,
    };
    keyed_add(&DEVICES, &key, pages);
    0
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
        begin(PendingKind::WbWork, reason as u64);
    }
    0
}

#[tracepoint]
pub fn wb_written(_ctx: TracePointContext) -> u32 {
    let _ = end(PendingKind::WbWork);
    0
}

/// The reason slot of writeback in progress on this thread: the flusher work's, else
/// the last slot (the calling task's own writeback).
#[inline(always)]
fn wb_reason() -> u32 {
    let mut reason = (global::WB_REASONS - 1) as u32;
    if let Some(p) = pending(PendingKind::WbWork) {
        // SAFETY: a live map value.
        let r = unsafe { (*p).aux } as u32;
        if (r as usize) < global::WB_REASONS - 1 {
            reason = r;
        }
    }
    reason
}

/// Pages written for one inode, from the tracepoint: `(reason, wrote)`, if any.
#[inline(always)]
fn single_inode(ctx: &TracePointContext) -> Option<(u32, u64)> {
    let wrote = field::<u64>(ctx, &OFF_WSI_WROTE).ok()?;
    (wrote != 0).then(|| (wb_reason(), wrote))
}

/// Tracepoint rung: the pages written, globally and per device.
#[tracepoint]
pub fn wb_single_inode(ctx: TracePointContext) -> u32 {
    if let Some((reason, wrote)) = single_inode(&ctx) {
        add(&GLOBALS, (global::WRITTEN + reason as usize) as u32, wrote);
        device_add(&ctx, &OFF_WSI_NAME, DEV_WRITTEN, reason, wrote);
    }
    0
}

/// Function rungs: `do_writepages` counts the pages, and names their device where the
/// path to it is known; else this adds the device (for flusher and sync_inode
/// writeback only).
#[tracepoint]
pub fn wb_single_inode_device(ctx: TracePointContext) -> u32 {
    if BDI_PATH_KNOWN.load() != 0 {
        return 0;
    }
    if let Some((reason, wrote)) = single_inode(&ctx) {
        device_add(&ctx, &OFF_WSI_NAME, DEV_WRITTEN, reason, wrote);
    }
    0
}

#[tracepoint]
pub fn wb_single_inode_start(_ctx: TracePointContext) -> u32 {
    stash(PendingKind::SingleInode, 0, 0);
    0
}

#[tracepoint]
pub fn wb_single_inode_end(_ctx: TracePointContext) -> u32 {
    let _ = take(PendingKind::SingleInode);
    0
}

/// ext4 wrote pages back: counted here only outside `__writeback_single_inode` (whose
/// own tracepoint counts the rest), as the calling task's writeback.
#[tracepoint]
pub fn wb_ext4_written(ctx: TracePointContext) -> u32 {
    // Inside a do_writepages that is hooked, that program counts these pages.
    if pending(PendingKind::Writepages).is_some() || pending(PendingKind::SingleInode).is_some() {
        return 0;
    }
    if let Ok(n) = field::<i32>(&ctx, &OFF_EXT4_PAGES_WRITTEN) {
        if n > 0 {
            add(
                &GLOBALS,
                (global::WRITTEN + wb_reason() as usize) as u32,
                n as u64,
            );
        }
    }
    0
}

#[inline(always)]
fn nr_to_write(wbc: u64) -> Option<i64> {
    let off = WBC_NR_TO_WRITE_OFFSET.load();
    if off == u32::MAX || wbc == 0 {
        return None;
    }
    // SAFETY: reading a field of the kernel's writeback_control argument.
    unsafe { bpf_probe_read_kernel((wbc + off as u64) as *const i64) }.ok()
}

#[inline(always)]
fn writepages_begin(mapping: u64, wbc: u64) {
    if let Some(n) = nr_to_write(wbc) {
        stash(PendingKind::Writepages, n as u64, wbc);
        stash(PendingKind::WritepagesMapping, mapping, 0);
    }
}

/// The pages written: how far `nr_to_write` dropped (filesystems take one off per page
/// or folio submitted; `writeback_single_inode`'s `wrote` is the same difference).
#[inline(always)]
fn writepages_done() {
    let mapping = take(PendingKind::WritepagesMapping).map_or(0, |(m, _)| m);
    let Some((before, wbc)) = take(PendingKind::Writepages) else {
        return;
    };
    let Some(after) = nr_to_write(wbc) else {
        return;
    };
    let wrote = (before as i64).saturating_sub(after);
    if wrote > 0 {
        let reason = wb_reason();
        add(
            &GLOBALS,
            (global::WRITTEN + reason as usize) as u32,
            wrote as u64,
        );
        if BDI_PATH_KNOWN.load() != 0 {
            let key = DevKey {
                name: bdi_name(mapping),
                what: DEV_WRITTEN,
                reason,
            };
            keyed_add(&DEVICES, &key, wrote as u64);
        }
    }
}

/// do_writepages(struct address_space *mapping, struct writeback_control *wbc)
#[fentry(function = "do_writepages")]
pub fn wb_writepages_fentry(ctx: FEntryContext) -> u32 {
    writepages_begin(ctx.arg(0), ctx.arg(1));
    0
}

#[fexit(function = "do_writepages")]
pub fn wb_writepages_fexit(_ctx: FExitContext) -> u32 {
    writepages_done();
    0
}

#[kprobe]
pub fn wb_writepages_kprobe(ctx: ProbeContext) -> u32 {
    writepages_begin(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    0
}

#[kretprobe]
pub fn wb_writepages_kretprobe(_ctx: RetProbeContext) -> u32 {
    writepages_done();
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
