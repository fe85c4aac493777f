//! Reclaim: direct and memcg reclaim a process runs itself (episodes, time, pages),
//! kswapd wake-ups, pages reclaim writes out itself, and reclaim throttling. The
//! programs are in `memwatch-ebpf/src/probes/reclaim.rs`.

use memwatch_common::{global, hist, node, proc};

use super::{
    catalogue::{series, Feeds, Hist, Metric, Series, When},
    table::{tp, tracepoint, Area, Hook, HookId},
};

/// The hooks of this area (`HookId::Reclaim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Id {
    DirectReclaim,
    MemcgReclaim,
    KswapdWake,
    VmscanWrite,
    VmscanThrottled,
}

impl Id {
    /// The name exported in `memwatch_probe_info{hook}` and matched by `probes.hooks`.
    pub const fn name(self) -> &'static str {
        match self {
            Id::DirectReclaim => "direct_reclaim",
            Id::MemcgReclaim => "memcg_reclaim",
            Id::KswapdWake => "kswapd_wake",
            Id::VmscanWrite => "vmscan_write",
            Id::VmscanThrottled => "vmscan_throttled",
        }
    }
}

pub const HOOKS: &[Hook] = &[
    Hook {
        id: HookId::Reclaim(Id::DirectReclaim),
        rungs: &[tracepoint(
            &[
                tp(
                    "reclaim_direct_begin",
                    &[("vmscan", "mm_vmscan_direct_reclaim_begin")],
                    &[],
                ),
                tp(
                    "reclaim_direct_end",
                    &[("vmscan", "mm_vmscan_direct_reclaim_end")],
                    &[("OFF_RECLAIM_END_NR", "nr_reclaimed")],
                ),
            ],
            "vmscan:mm_vmscan_direct_reclaim_begin/end",
            "",
        )],
    },
    Hook {
        id: HookId::Reclaim(Id::MemcgReclaim),
        rungs: &[tracepoint(
            &[
                tp(
                    "reclaim_memcg_begin",
                    &[("vmscan", "mm_vmscan_memcg_reclaim_begin")],
                    &[],
                ),
                tp(
                    "reclaim_memcg_end",
                    &[("vmscan", "mm_vmscan_memcg_reclaim_end")],
                    &[("OFF_RECLAIM_END_NR", "nr_reclaimed")],
                ),
            ],
            "vmscan:mm_vmscan_memcg_reclaim_begin/end",
            "",
        )],
    },
    Hook {
        id: HookId::Reclaim(Id::KswapdWake),
        rungs: &[tracepoint(
            &[tp(
                "reclaim_kswapd_wake",
                &[("vmscan", "mm_vmscan_kswapd_wake")],
                &[("OFF_KSWAPD_WAKE_NID", "nid")],
            )],
            "vmscan:mm_vmscan_kswapd_wake",
            "",
        )],
    },
    Hook {
        id: HookId::Reclaim(Id::VmscanWrite),
        rungs: &[tracepoint(
            &[tp(
                "reclaim_write_folio",
                &[
                    ("vmscan", "mm_vmscan_write_folio"),
                    ("vmscan", "mm_vmscan_writepage"),
                ],
                &[("OFF_WRITE_FOLIO_FLAGS", "reclaim_flags")],
            )],
            "vmscan:mm_vmscan_write_folio (5.19+) or mm_vmscan_writepage",
            "",
        )],
    },
    Hook {
        id: HookId::Reclaim(Id::VmscanThrottled),
        rungs: &[tracepoint(
            &[tp(
                "reclaim_throttled",
                &[("vmscan", "mm_vmscan_throttled")],
                &[
                    ("OFF_THROTTLED_REASON", "reason"),
                    ("OFF_THROTTLED_DELAYED", "usec_delayed"),
                ],
            )],
            "vmscan:mm_vmscan_throttled (5.16+)",
            "",
        )],
    },
];

/// Reclaim a process ran itself: direct or memcg, as far as each hook attached.
const RAN_ITSELF: When = When::Any(&[
    When::Attached(HookId::Reclaim(Id::DirectReclaim)),
    When::Attached(HookId::Reclaim(Id::MemcgReclaim)),
]);

/// A series of the reclaim a process ran itself, by kind.
const fn by_kind(direct: &'static [usize], memcg: &'static [usize]) -> [Series; 2] {
    [
        Series {
            value: "direct",
            cols: direct,
            when: When::Attached(HookId::Reclaim(Id::DirectReclaim)),
        },
        Series {
            value: "memcg",
            cols: memcg,
            when: When::Attached(HookId::Reclaim(Id::MemcgReclaim)),
        },
    ]
}

// The four reasons below (`enum vmscan_throttle_state`).
const _: () = assert!(global::THROTTLE_REASONS == 4);

/// The series of a counter kept per throttling reason, from slot `$base` on.
macro_rules! throttle_reasons {
    ($base:expr) => {
        [
            series("writeback", &[$base]),
            series("isolated", &[$base + 1]),
            series("noprogress", &[$base + 2]),
            series("congested", &[$base + 3]),
        ]
    };
}

pub const AREA: Area = Area {
    hooks: HOOKS,
    feeds: Feeds {
        procs: &[
            Metric {
                name: "reclaims_total",
                help: "Reclaim episodes a process had to run itself: direct (the system was \
                       short of memory) or memcg (its cgroup hit its limit).",
                label: Some("type"),
                series: &by_kind(&[proc::DIRECT_RECLAIM_COUNT], &[proc::MEMCG_RECLAIM_COUNT]),
                scale: 1.0,
                when: RAN_ITSELF,
            },
            Metric {
                name: "reclaim_seconds_total",
                help: "Time a process stalled in reclaim it ran itself, direct or memcg.",
                label: Some("type"),
                series: &by_kind(&[proc::DIRECT_RECLAIM_NS], &[proc::MEMCG_RECLAIM_NS]),
                scale: 1e-9,
                when: RAN_ITSELF,
            },
            Metric {
                name: "reclaimed_pages_total",
                help: "Pages freed by reclaim a process ran itself, direct or memcg.",
                label: Some("type"),
                series: &by_kind(&[proc::DIRECT_RECLAIMED], &[proc::MEMCG_RECLAIMED]),
                scale: 1.0,
                when: RAN_ITSELF,
            },
        ],
        hists: &[
            Hist {
                hist: hist::DIRECT_RECLAIM,
                name: "memwatch_direct_reclaim_duration_seconds",
                help: "Duration of direct reclaim episodes.",
                sum_col: proc::DIRECT_RECLAIM_NS,
                when: When::Attached(HookId::Reclaim(Id::DirectReclaim)),
            },
            Hist {
                hist: hist::MEMCG_RECLAIM,
                name: "memwatch_memcg_reclaim_duration_seconds",
                help: "Duration of memory-cgroup limit reclaim episodes.",
                sum_col: proc::MEMCG_RECLAIM_NS,
                when: When::Attached(HookId::Reclaim(Id::MemcgReclaim)),
            },
        ],
        counters: &[
            Metric {
                name: "memwatch_vmscan_write_pages_total",
                help: "Pages reclaim wrote out itself (mm_vmscan_write_folio), one per folio.",
                label: Some("type"),
                series: &[
                    series("anon", &[global::VMSCAN_WRITE_ANON]),
                    series("file", &[global::VMSCAN_WRITE_FILE]),
                ],
                scale: 1.0,
                when: When::Attached(HookId::Reclaim(Id::VmscanWrite)),
            },
            Metric {
                name: "memwatch_vmscan_throttled_total",
                help: "Times reclaim was throttled (mm_vmscan_throttled), by reason.",
                label: Some("reason"),
                series: &throttle_reasons!(global::THROTTLED),
                scale: 1.0,
                when: When::Attached(HookId::Reclaim(Id::VmscanThrottled)),
            },
            Metric {
                name: "memwatch_vmscan_throttled_seconds_total",
                help: "Time reclaim was throttled, by reason.",
                label: Some("reason"),
                series: &throttle_reasons!(global::THROTTLED_US),
                scale: 1e-6,
                when: When::Attached(HookId::Reclaim(Id::VmscanThrottled)),
            },
        ],
        nodes: &[Metric {
            name: "memwatch_kswapd_wakeups_total",
            help: "kswapd wake-ups (mm_vmscan_kswapd_wake).",
            label: None,
            series: &[series("", &[node::KSWAPD_WAKE])],
            scale: 1.0,
            when: When::Attached(HookId::Reclaim(Id::KswapdWake)),
        }],
        ..Feeds::NONE
    },
};
