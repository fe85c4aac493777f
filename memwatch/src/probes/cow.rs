//! Copy-on-write: `do_wp_page` (every write-protect fault, its latency), the copies
//! seen through the new anonymous page's rmap, and the THP case; on the tracepoint
//! rung, the write-protect faults of the page-fault tracepoints. The programs are in
//! `memwatch-ebpf/src/probes/cow.rs`.

use memwatch_common::{fault, hist, proc};
use prometheus::proto::MetricFamily;

use super::{
    catalogue::{series, Attached, Counters, Custom, Feeds, Hist, Metric, When},
    faults,
    faults::{fault_cols, TP_NEEDS_PF},
    table::{fentry, kprobe, tracepoint, Area, Attach, Hook, HookId, KPROBE_LOSES},
};
use crate::{episodes::CowSource, metrics::Family};

/// Where a copy-on-write copy maps its new page (6.3+, then older kernels).
const NEW_ANON_RMAP: &str = "folio_add_new_anon_rmap|page_add_new_anon_rmap";

/// The hooks of this area (`HookId::Cow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Id {
    DoWpPage,
    CowCopy,
    DoHugePmdWpPage,
}

impl Id {
    /// The name exported in `memwatch_probe_info{hook}` and matched by `probes.hooks`.
    pub const fn name(self) -> &'static str {
        match self {
            Id::DoWpPage => "do_wp_page",
            Id::CowCopy => "cow_copy",
            Id::DoHugePmdWpPage => "do_huge_pmd_wp_page",
        }
    }
}

pub const HOOKS: &[Hook] = &[
    Hook {
        id: HookId::Cow(Id::DoWpPage),
        rungs: &[
            fentry(&[
                Attach::Fentry {
                    program: "cow_wp_fentry",
                    function: "do_wp_page",
                },
                Attach::Fexit {
                    program: "cow_wp_fexit",
                    function: "do_wp_page",
                },
            ]),
            kprobe(
                &[
                    Attach::Kprobe {
                        program: "cow_wp_kprobe",
                        function: "do_wp_page",
                    },
                    Attach::Kretprobe {
                        program: "cow_wp_kretprobe",
                        function: "do_wp_page",
                    },
                ],
                KPROBE_LOSES,
            ),
            tracepoint(
                &[Attach::Shared {
                    hook: HookId::Faults(faults::Id::PageFault),
                }],
                TP_NEEDS_PF,
                "copies versus reuses and the fault latency: counts write faults on present \
                 pages (error code bits 0+1) instead of do_wp_page calls",
            ),
        ],
    },
    Hook {
        id: HookId::Cow(Id::CowCopy),
        rungs: &[
            fentry(&[Attach::Fentry {
                program: "cow_copy_fentry",
                function: NEW_ANON_RMAP,
            }]),
            kprobe(
                &[Attach::Kprobe {
                    program: "cow_copy_kprobe",
                    function: NEW_ANON_RMAP,
                }],
                KPROBE_LOSES,
            ),
        ],
    },
    Hook {
        id: HookId::Cow(Id::DoHugePmdWpPage),
        rungs: &[
            fentry(&[Attach::Fentry {
                program: "cow_thp_fentry",
                function: "do_huge_pmd_wp_page",
            }]),
            kprobe(
                &[Attach::Kprobe {
                    program: "cow_thp_kprobe",
                    function: "do_huge_pmd_wp_page",
                }],
                KPROBE_LOSES,
            ),
        ],
    },
];

/// Copies and reuses are told apart: `do_wp_page` on a function rung, and the copies.
const COPIES: When = When::All(&[
    When::FunctionRung(HookId::Cow(Id::DoWpPage)),
    When::Attached(HookId::Cow(Id::CowCopy)),
]);

pub const AREA: Area = Area {
    hooks: HOOKS,
    feeds: Feeds {
        procs: &[
            Metric {
                name: "wp_faults_total",
                help: "Write-protect faults (writes to present pages: every COW), from the page-fault \
                       tracepoints' error code.",
                label: None,
                series: &[series("", &fault_cols(fault::KIND_WRITE_PROTECT))],
                scale: 1.0,
                when: When::TracepointRung(HookId::Cow(Id::DoWpPage)),
            },
            Metric {
                name: "wp_faults_total",
                help: "Write-protect faults handled (do_wp_page calls): every COW copy or reuse.",
                label: None,
                series: &[series("", &[proc::WP_CALLS])],
                scale: 1.0,
                when: When::FunctionRung(HookId::Cow(Id::DoWpPage)),
            },
            Metric {
                name: "wp_fault_seconds_total",
                help: "Time spent in do_wp_page (write-protect fault handling, including copies).",
                label: None,
                series: &[series("", &[proc::WP_NS])],
                scale: 1e-9,
                when: When::FunctionRung(HookId::Cow(Id::DoWpPage)),
            },
            Metric {
                name: "cow_copies_total",
                help: "Write-protect faults that copied the page (copy-on-write copies).",
                label: None,
                series: &[series("", &[proc::COW_COPIES])],
                scale: 1.0,
                when: COPIES,
            },
            Metric {
                name: "cow_reuses_total",
                help: "Write-protect faults that reused the page (sole owner, or a shared \
                       mapping), no copy.",
                label: None,
                series: &[series("", &[proc::COW_REUSES])],
                scale: 1.0,
                when: COPIES,
            },
            Metric {
                name: "thp_wp_faults_total",
                help: "Write-protect faults on transparent huge pages (do_huge_pmd_wp_page).",
                label: None,
                series: &[series("", &[proc::THP_WP_FAULTS])],
                scale: 1.0,
                when: When::Attached(HookId::Cow(Id::DoHugePmdWpPage)),
            },
        ],
        // On the tracepoint rung there are no durations.
        hists: &[Hist {
            hist: hist::WP_FAULT,
            name: "memwatch_wp_fault_duration_seconds",
            help: "Duration of write-protect fault handling (do_wp_page), copies included.",
            sum_col: proc::WP_NS,
            when: When::FunctionRung(HookId::Cow(Id::DoWpPage)),
        }],
        custom: &[Custom {
            when: COPIES,
            render: copied_bytes,
        }],
        ..Feeds::NONE
    },
};

/// What fork episodes count as COW: copies where they are told from reuses, else
/// every write-protect fault.
pub fn episode_source(attached: &Attached) -> CowSource {
    if COPIES.holds(attached) {
        CowSource::Copies
    } else {
        CowSource::WriteProtectFaults
    }
}

/// `memwatch_cow_copied_bytes_total`.
fn copied_bytes(c: &Counters, out: &mut Vec<MetricFamily>) {
    let mut f = Family::counter(
        "memwatch_cow_copied_bytes_total",
        "Bytes copied by copy-on-write (copies times the page size).",
    );
    f.sample(&[], (c.global(proc::COW_COPIES) * c.page_size) as f64);
    f.push_to(out);
}
