//! Dirty pages and writeback: pages dirtied (per process and per backing device),
//! pages written back (per device and reason), ext4's own writeback, and dirty
//! throttling. The programs are in `memwatch-ebpf/src/probes/writeback.rs`.

use std::collections::BTreeMap;

use memwatch_common::{global, hist, proc, DEV_DIRTIED};
use prometheus::proto::MetricFamily;

use super::{
    catalogue::{series, Counters, Custom, Feeds, Hist, KeyedHist, Metric, When},
    table::{tp, tracepoint, Area, Attach, Hook, HookId, Mode, Rung, KPROBE_LOSES},
};
use crate::metrics::Family;

const WB_START: Attach = tp(
    "wb_start",
    &[("writeback", "writeback_start")],
    &[("OFF_WB_START_REASON", "reason")],
);
const WB_WRITTEN: Attach = tp("wb_written", &[("writeback", "writeback_written")], &[]);
const WB_SINGLE_INODE: &[(&str, &str)] = &[("writeback", "writeback_single_inode")];
const WB_SINGLE_INODE_FIELDS: &[(&str, &str)] =
    &[("OFF_WSI_NAME", "name"), ("OFF_WSI_WROTE", "wrote")];
/// On the function rungs, `do_writepages` counts the pages; this only adds the device.
const WB_SINGLE_INODE_DEVICE: Attach = tp(
    "wb_single_inode_device",
    WB_SINGLE_INODE,
    WB_SINGLE_INODE_FIELDS,
);

/// The hooks of this area (`HookId::Writeback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Id {
    WritebackDirty,
    WritebackWritten,
    Ext4Writepages,
    BalanceDirtyPages,
}

impl Id {
    /// The name exported in `memwatch_probe_info{hook}` and matched by `probes.hooks`.
    pub const fn name(self) -> &'static str {
        match self {
            Id::WritebackDirty => "writeback_dirty",
            Id::WritebackWritten => "writeback_written",
            Id::Ext4Writepages => "ext4_writepages",
            Id::BalanceDirtyPages => "balance_dirty_pages",
        }
    }
}

pub const HOOKS: &[Hook] = &[
    Hook {
        id: HookId::Writeback(Id::WritebackDirty),
        rungs: &[tracepoint(
            &[Attach::FirstOf(&[
                Attach::RawTracepoint {
                    program: "wb_dirty_raw",
                    name: "writeback_dirty_folio",
                    btf: true,
                },
                Attach::RawTracepoint {
                    program: "wb_dirty_raw",
                    name: "writeback_dirty_page",
                    btf: true,
                },
                tp(
                    "wb_dirty",
                    &[
                        ("writeback", "writeback_dirty_folio"),
                        ("writeback", "writeback_dirty_page"),
                    ],
                    &[("OFF_DIRTY_NAME", "name")],
                ),
            ])],
            "writeback:writeback_dirty_folio (5.17+) or writeback_dirty_page; raw with kernel \
             BTF (which counts a large folio's pages, not one per folio)",
            "",
        )],
    },
    Hook {
        id: HookId::Writeback(Id::WritebackWritten),
        rungs: &[
            Rung {
                mode: Mode::Fentry,
                attach: &[
                    Attach::Fentry {
                        program: "wb_writepages_fentry",
                        function: "do_writepages",
                    },
                    Attach::Fexit {
                        program: "wb_writepages_fexit",
                        function: "do_writepages",
                    },
                    WB_START,
                    WB_WRITTEN,
                    WB_SINGLE_INODE_DEVICE,
                ],
                needs: "BPF trampolines and kernel BTF, and the writeback tracepoints",
                loses: "",
            },
            Rung {
                mode: Mode::Kprobe,
                attach: &[
                    Attach::Kprobe {
                        program: "wb_writepages_kprobe",
                        function: "do_writepages",
                    },
                    Attach::Kretprobe {
                        program: "wb_writepages_kretprobe",
                        function: "do_writepages",
                    },
                    WB_START,
                    WB_WRITTEN,
                    WB_SINGLE_INODE_DEVICE,
                ],
                needs: "kprobes (CONFIG_KPROBE_EVENTS), and the writeback tracepoints",
                loses: KPROBE_LOSES,
            },
            tracepoint(
                &[
                    WB_START,
                    WB_WRITTEN,
                    tp("wb_single_inode", WB_SINGLE_INODE, WB_SINGLE_INODE_FIELDS),
                ],
                "writeback:writeback_start, writeback_written, writeback_single_inode",
                "writeback that fsync(), sync_file_range(), msync() or O_SYNC writes start in \
                 the calling task (only flusher and sync_inode writeback pass these \
                 tracepoints), except on ext4 (hook ext4_writepages)",
            ),
        ],
    },
    Hook {
        id: HookId::Writeback(Id::Ext4Writepages),
        rungs: &[tracepoint(
            &[
                tp(
                    "wb_single_inode_start",
                    &[("writeback", "writeback_single_inode_start")],
                    &[],
                ),
                tp("wb_single_inode_end", WB_SINGLE_INODE, &[]),
                tp(
                    "wb_ext4_written",
                    &[("ext4", "ext4_writepages_result")],
                    &[("OFF_EXT4_PAGES_WRITTEN", "pages_written")],
                ),
            ],
            "ext4:ext4_writepages_result (ext4 loaded), writeback_single_inode_start",
            "",
        )],
    },
    Hook {
        id: HookId::Writeback(Id::BalanceDirtyPages),
        rungs: &[tracepoint(
            &[tp(
                "wb_balance_dirty_pages",
                &[("writeback", "balance_dirty_pages")],
                &[("OFF_BDP_PAUSE", "pause")],
            )],
            "writeback:balance_dirty_pages",
            "",
        )],
    },
];

pub const AREA: Area = Area {
    hooks: HOOKS,
    feeds: Feeds {
        procs: &[
            Metric {
                name: "dirtied_pages_total",
                help: "Page-cache pages dirtied (one per folio).",
                label: None,
                series: &[series("", &[proc::DIRTIED])],
                scale: 1.0,
                when: When::Attached(HookId::Writeback(Id::WritebackDirty)),
            },
            Metric {
                name: "dirty_throttle_pauses_total",
                help: "Pauses imposed by dirty throttling (balance_dirty_pages).",
                label: None,
                series: &[series("", &[proc::THROTTLE_COUNT])],
                scale: 1.0,
                when: When::Attached(HookId::Writeback(Id::BalanceDirtyPages)),
            },
            Metric {
                name: "dirty_throttle_seconds_total",
                help: "Time paused by dirty throttling (balance_dirty_pages).",
                label: None,
                series: &[series("", &[proc::THROTTLE_NS])],
                scale: 1e-9,
                when: When::Attached(HookId::Writeback(Id::BalanceDirtyPages)),
            },
        ],
        keyed_hists: &[KeyedHist {
            hist: Hist {
                hist: hist::THROTTLE,
                name: "memwatch_dirty_throttle_pause_seconds",
                help: "Dirty-throttling pauses (balance_dirty_pages) per process; the rest in \
                       pid=\"other\".",
                sum_col: proc::THROTTLE_NS,
                when: When::Attached(HookId::Writeback(Id::BalanceDirtyPages)),
            },
            per_process: true,
        }],
        custom: &[
            Custom {
                when: When::Attached(HookId::Writeback(Id::WritebackDirty)),
                render: dirtied_per_device,
            },
            Custom {
                when: When::Attached(HookId::Writeback(Id::WritebackWritten)),
                render: written_per_device,
            },
        ],
        ..Feeds::NONE
    },
};

/// `enum wb_reason` names (the last slot: writeback outside flusher work, started by
/// the calling task: fsync() and the like on the function rungs, only
/// sync_inode/write_inode_now on the tracepoint rung).
fn wb_reason(i: usize) -> String {
    const NAMES: [&str; 8] = [
        "background",
        "vmscan",
        "sync",
        "periodic",
        "laptop_timer",
        "fs_free_space",
        "forker_thread",
        "foreign_flush",
    ];
    if i == global::WB_REASONS - 1 {
        "caller".into()
    } else {
        NAMES
            .get(i)
            .map_or_else(|| format!("reason_{i}"), |s| s.to_string())
    }
}

/// `memwatch_dirtied_pages_total{device}`.
fn dirtied_per_device(c: &Counters, out: &mut Vec<MetricFamily>) {
    let mut dirtied: BTreeMap<&str, u64> = BTreeMap::new();
    for d in c.devices.iter().filter(|d| d.what == DEV_DIRTIED) {
        *dirtied.entry(&d.name).or_default() += d.pages;
    }
    let mut f = Family::counter(
        "memwatch_dirtied_pages_total",
        "Page-cache pages dirtied (one per folio), per backing device (bdi name, e.g. \
         254:0); device=\"other\" holds what the device table could not.",
    );
    let shown: u64 = dirtied.values().sum();
    for (dev, n) in &dirtied {
        f.sample(&[("device", dev)], *n as f64);
    }
    f.sample(
        &[("device", "other")],
        c.global(proc::DIRTIED).saturating_sub(shown) as f64,
    );
    f.push_to(out);
}

/// `memwatch_writeback_written_pages_total{device,reason}`.
fn written_per_device(c: &Counters, out: &mut Vec<MetricFamily>) {
    let mut written: BTreeMap<(&str, usize), u64> = BTreeMap::new();
    for d in c.devices.iter().filter(|d| d.what != DEV_DIRTIED) {
        *written.entry((&d.name, d.reason as usize)).or_default() += d.pages;
    }
    let mut f = Family::counter(
        "memwatch_writeback_written_pages_total",
        "Pages written back, per device and reason (the flusher work's wb_reason; \
         caller: writeback the calling task started, e.g. fsync(), \
         sync_file_range(), O_SYNC writes, sync_inode). On the tracepoint rung only \
         flusher and sync_inode writeback, and ext4's own, is seen; \
         device=\"other\" holds what no device was named for (there: fsync and \
         the like).",
    );
    for r in 0..global::WB_REASONS {
        let reason = wb_reason(r);
        let mut shown = 0;
        for ((dev, rr), n) in &written {
            if *rr == r {
                shown += n;
                f.sample(&[("device", dev), ("reason", &reason)], *n as f64);
            }
        }
        let rest = c.global(global::WRITTEN + r).saturating_sub(shown);
        if rest > 0 {
            f.sample(&[("device", "other"), ("reason", &reason)], rest as f64);
        }
    }
    f.push_to(out);
}
