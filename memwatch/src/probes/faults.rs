//! Page faults: the x86 page-fault tracepoints (by kind, decoded from the error code,
//! and the CPU mode) and `handle_mm_fault`'s exit (major versus minor). The programs
//! are in `memwatch-ebpf/src/probes/faults.rs`.

use memwatch_common::{fault, proc};
use prometheus::proto::MetricFamily;

use super::{
    catalogue::{series, Counters, Custom, Feeds, Metric, When},
    table::{fentry, kprobe, tp, tracepoint, Area, Attach, Hook, HookId},
};
use crate::metrics::Family;

/// What a rung fed by the page-fault tracepoints needs.
pub(super) const TP_NEEDS_PF: &str = "exceptions:page_fault_user tracepoint (x86)";

/// The hooks of this area (`HookId::Faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Id {
    PageFault,
    HandleMmFault,
}

impl Id {
    /// The name exported in `memwatch_probe_info{hook}` and matched by `probes.hooks`.
    pub const fn name(self) -> &'static str {
        match self {
            Id::PageFault => "page_fault",
            Id::HandleMmFault => "handle_mm_fault",
        }
    }
}

pub const HOOKS: &[Hook] = &[
    Hook {
        id: HookId::Faults(Id::PageFault),
        rungs: &[tracepoint(
            &[
                Attach::FirstOf(&[
                    Attach::RawTracepoint {
                        program: "page_fault_user_raw",
                        name: "page_fault_user",
                        btf: false,
                    },
                    tp(
                        "page_fault_user",
                        &[("exceptions", "page_fault_user")],
                        &[("OFF_PF_ERROR_CODE", "error_code")],
                    ),
                ]),
                Attach::FirstOf(&[
                    Attach::RawTracepoint {
                        program: "page_fault_kernel_raw",
                        name: "page_fault_kernel",
                        btf: false,
                    },
                    tp(
                        "page_fault_kernel",
                        &[("exceptions", "page_fault_kernel")],
                        &[("OFF_PF_ERROR_CODE", "error_code")],
                    ),
                ]),
            ],
            "exceptions:page_fault_user/page_fault_kernel tracepoints (x86), raw where the \
             kernel allows",
            "",
        )],
    },
    Hook {
        id: HookId::Faults(Id::HandleMmFault),
        rungs: &[
            fentry(&[Attach::Fexit {
                program: "faults_handle_mm_fault_fexit",
                function: "handle_mm_fault",
            }]),
            kprobe(
                &[Attach::Kretprobe {
                    program: "faults_handle_mm_fault_kretprobe",
                    function: "handle_mm_fault",
                }],
                "a fault completed on retry (FAULT_FLAG_TRIED) counts as minor unless the \
                 handler said major",
            ),
            tracepoint(
                &[Attach::Shared {
                    hook: HookId::Faults(Id::PageFault),
                }],
                TP_NEEDS_PF,
                "major versus minor faults",
            ),
        ],
    },
];

/// A kind's series of `page_faults_total`: its slots in every mode.
macro_rules! kind {
    ($k:expr) => {
        series(fault::kind_name($k), &fault_cols($k))
    };
}

pub const AREA: Area = Area {
    hooks: HOOKS,
    feeds: Feeds {
        procs: &[
            Metric {
                name: "page_faults_total",
                help:
                    "Page faults by kind (decoded from the x86 error code), user and kernel mode.",
                label: Some("kind"),
                series: &[
                    kind!(fault::KIND_WRITE_PROTECT),
                    kind!(fault::KIND_WRITE_NOT_PRESENT),
                    kind!(fault::KIND_READ_NOT_PRESENT),
                    kind!(fault::KIND_READ_PROTECT),
                    kind!(fault::KIND_EXEC),
                ],
                scale: 1.0,
                when: When::Attached(HookId::Faults(Id::PageFault)),
            },
            Metric {
                name: "faults_handled_total",
                help: "Faults completed by handle_mm_fault, major (needed I/O) or minor, counted \
                       like the kernel's maj_flt/min_flt.",
                label: Some("type"),
                series: &[
                    series("major", &[proc::MAJOR_FAULTS]),
                    series("minor", &[proc::MINOR_FAULTS]),
                ],
                scale: 1.0,
                when: When::FunctionRung(HookId::Faults(Id::HandleMmFault)),
            },
        ],
        custom: &[Custom {
            when: When::Attached(HookId::Faults(Id::PageFault)),
            render: page_faults,
        }],
        ..Feeds::NONE
    },
};

/// The columns of a fault kind: its slots in every mode.
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an index out of range fails the build, not the daemon"
)]
pub(super) const fn fault_cols(kind: u32) -> [usize; fault::MODES as usize] {
    let mut cols = [0; fault::MODES as usize];
    let mut m = 0;
    while m < fault::MODES {
        cols[m as usize] = fault::slot(kind, m) as usize;
        m += 1;
    }
    cols
}

/// `memwatch_page_faults_total{kind,mode}`.
fn page_faults(c: &Counters, out: &mut Vec<MetricFamily>) {
    let mut f = Family::counter(
        "memwatch_page_faults_total",
        "Page faults by kind (decoded from the x86 error code) and the CPU mode the \
         fault was taken in (kernel: e.g. copy_to_user touching a user page).",
    );
    for mode in 0..fault::MODES {
        for kind in 0..fault::KINDS {
            f.sample(
                &[
                    ("kind", fault::kind_name(kind)),
                    ("mode", fault::mode_name(mode)),
                ],
                c.global(fault::slot(kind, mode) as usize) as f64,
            );
        }
    }
    f.push_to(out);
}
