//! LRU movement: folios added to and activated on the LRU lists, and what reclaim's
//! shrinking of the inactive and active lists met, per node. The programs are in
//! `memwatch-ebpf/src/probes/lru.rs`.

use memwatch_common::{global, node};

use super::{
    catalogue::{series, Feeds, Metric, Series, When},
    table::{tp, tracepoint, Area, Attach, Hook, HookId},
};

/// The hooks of this area (`HookId::Lru`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Id {
    Insertion,
    Activate,
    ShrinkInactive,
    ShrinkActive,
}

impl Id {
    /// The name exported in `memwatch_probe_info{hook}` and matched by `probes.hooks`.
    pub const fn name(self) -> &'static str {
        match self {
            Id::Insertion => "lru_insertion",
            Id::Activate => "lru_activate",
            Id::ShrinkInactive => "lru_shrink_inactive",
            Id::ShrinkActive => "lru_shrink_active",
        }
    }
}

pub const HOOKS: &[Hook] = &[
    Hook {
        id: HookId::Lru(Id::Insertion),
        rungs: &[tracepoint(
            &[Attach::FirstOf(&[
                Attach::RawTracepoint {
                    program: "lru_insertion_raw",
                    name: "mm_lru_insertion",
                    btf: true,
                },
                tp(
                    "lru_insertion",
                    &[("pagemap", "mm_lru_insertion")],
                    &[
                        ("OFF_LRU_INSERTION_LRU", "lru"),
                        ("OFF_LRU_INSERTION_FOLIO", "folio|page"),
                    ],
                ),
            ])],
            "pagemap:mm_lru_insertion (raw with kernel BTF, for the page flag bits)",
            "",
        )],
    },
    Hook {
        id: HookId::Lru(Id::Activate),
        rungs: &[tracepoint(
            &[Attach::FirstOf(&[
                Attach::RawTracepoint {
                    program: "lru_activate_raw",
                    name: "mm_lru_activate",
                    btf: true,
                },
                tp(
                    "lru_activate",
                    &[("pagemap", "mm_lru_activate")],
                    &[("OFF_LRU_ACTIVATE_FOLIO", "folio|page")],
                ),
            ])],
            "pagemap:mm_lru_activate (raw with kernel BTF, for the folio layout)",
            "",
        )],
    },
    Hook {
        id: HookId::Lru(Id::ShrinkInactive),
        rungs: &[tracepoint(
            &[tp(
                "lru_shrink_inactive",
                &[("vmscan", "mm_vmscan_lru_shrink_inactive")],
                &[
                    ("OFF_SI_NID", "nid"),
                    ("OFF_SI_SCANNED", "nr_scanned"),
                    ("OFF_SI_RECLAIMED", "nr_reclaimed"),
                    ("OFF_SI_DIRTY", "nr_dirty"),
                    ("OFF_SI_WRITEBACK", "nr_writeback"),
                    ("OFF_SI_CONGESTED", "nr_congested"),
                    ("OFF_SI_IMMEDIATE", "nr_immediate"),
                    ("OFF_SI_ACTIVATE0", "nr_activate0"),
                    ("OFF_SI_ACTIVATE1", "nr_activate1"),
                    ("OFF_SI_REF_KEEP", "nr_ref_keep"),
                    ("OFF_SI_UNMAP_FAIL", "nr_unmap_fail"),
                ],
            )],
            "vmscan:mm_vmscan_lru_shrink_inactive",
            "",
        )],
    },
    Hook {
        id: HookId::Lru(Id::ShrinkActive),
        rungs: &[tracepoint(
            &[tp(
                "lru_shrink_active",
                &[("vmscan", "mm_vmscan_lru_shrink_active")],
                &[
                    ("OFF_SA_NID", "nid"),
                    ("OFF_SA_TAKEN", "nr_taken"),
                    ("OFF_SA_ACTIVE", "nr_active"),
                    ("OFF_SA_DEACTIVATED", "nr_deactivated"),
                    ("OFF_SA_REFERENCED", "nr_referenced"),
                ],
            )],
            "vmscan:mm_vmscan_lru_shrink_active",
            "",
        )],
    },
];

// The five lists below (`enum lru_list`).
const _: () = assert!(global::LRU_LISTS == 5);

/// A per-node counter of one shrink hook (label `node` only).
macro_rules! per_node {
    ($name:expr, $help:expr, $col:expr, $hook:ident) => {
        Metric {
            name: $name,
            help: $help,
            label: None,
            series: &[Series {
                value: "",
                cols: &[$col],
                when: When::Always,
            }],
            scale: 1.0,
            when: When::Attached(HookId::Lru(Id::$hook)),
        }
    };
}

pub const AREA: Area = Area {
    hooks: HOOKS,
    feeds: Feeds {
        counters: &[
            Metric {
                name: "memwatch_lru_insertions_total",
                help: "Folios added to an LRU list (mm_lru_insertion), per list.",
                label: Some("list"),
                series: &[
                    series("inactive_anon", &[global::LRU_INSERT]),
                    series("active_anon", &[global::LRU_INSERT + 1]),
                    series("inactive_file", &[global::LRU_INSERT + 2]),
                    series("active_file", &[global::LRU_INSERT + 3]),
                    series("unevictable", &[global::LRU_INSERT + 4]),
                ],
                scale: 1.0,
                when: When::Attached(HookId::Lru(Id::Insertion)),
            },
            Metric {
                name: "memwatch_lru_activations_total",
                help: "Folios activated on access (mm_lru_activate: folio_activate).",
                label: None,
                series: &[series("", &[global::LRU_ACTIVATE])],
                scale: 1.0,
                when: When::Attached(HookId::Lru(Id::Activate)),
            },
        ],
        nodes: &[
            per_node!(
                "memwatch_vmscan_inactive_scanned_pages_total",
                "Pages scanned on inactive lists (mm_vmscan_lru_shrink_inactive).",
                node::INACTIVE_SCANNED,
                ShrinkInactive
            ),
            per_node!(
                "memwatch_vmscan_inactive_reclaimed_pages_total",
                "Pages reclaimed from inactive lists: every reclaimer, memcg included (pgsteal).",
                node::INACTIVE_RECLAIMED,
                ShrinkInactive
            ),
            per_node!(
                "memwatch_vmscan_inactive_dirty_pages_total",
                "Dirty pages met while scanning inactive lists.",
                node::INACTIVE_DIRTY,
                ShrinkInactive
            ),
            per_node!(
                "memwatch_vmscan_inactive_writeback_pages_total",
                "Pages under writeback met while scanning inactive lists.",
                node::INACTIVE_WRITEBACK,
                ShrinkInactive
            ),
            per_node!(
                "memwatch_vmscan_inactive_congested_pages_total",
                "Dirty pages on congested devices met while scanning inactive lists.",
                node::INACTIVE_CONGESTED,
                ShrinkInactive
            ),
            per_node!(
                "memwatch_vmscan_inactive_immediate_pages_total",
                "Pages marked for immediate reclaim met while scanning inactive lists.",
                node::INACTIVE_IMMEDIATE,
                ShrinkInactive
            ),
            per_node!(
                "memwatch_vmscan_inactive_ref_keep_pages_total",
                "Referenced pages kept on the inactive list.",
                node::INACTIVE_REF_KEEP,
                ShrinkInactive
            ),
            per_node!(
                "memwatch_vmscan_inactive_unmap_fail_pages_total",
                "Pages that could not be unmapped.",
                node::INACTIVE_UNMAP_FAIL,
                ShrinkInactive
            ),
            per_node!(
                "memwatch_vmscan_active_taken_pages_total",
                "Pages taken off active lists to age (mm_vmscan_lru_shrink_active).",
                node::ACTIVE_TAKEN,
                ShrinkActive
            ),
            per_node!(
                "memwatch_vmscan_active_kept_pages_total",
                "Pages kept active after aging.",
                node::ACTIVE_ACTIVE,
                ShrinkActive
            ),
            per_node!(
                "memwatch_vmscan_active_referenced_pages_total",
                "Referenced pages met while aging active lists.",
                node::ACTIVE_REFERENCED,
                ShrinkActive
            ),
            per_node!(
                "memwatch_vmscan_deactivated_pages_total",
                "Pages moved from active to inactive lists (pgdeactivate).",
                node::ACTIVE_DEACTIVATED,
                ShrinkActive
            ),
            Metric {
                name: "memwatch_vmscan_inactive_activated_pages_total",
                help: "Pages moved back to an active list while scanning inactive lists.",
                label: Some("type"),
                series: &[
                    series("anon", &[node::INACTIVE_ACTIVATE_ANON]),
                    series("file", &[node::INACTIVE_ACTIVATE_FILE]),
                ],
                scale: 1.0,
                when: When::Attached(HookId::Lru(Id::ShrinkInactive)),
            },
        ],
        ..Feeds::NONE
    },
};
