//! Fork: the clone/fork syscalls (counts by kind, the parent's time), process exits
//! (for fork episodes), and the address-space copy (`dup_mmap`). The programs are in
//! `memwatch-ebpf/src/probes/fork.rs`.

use memwatch_common::{hist, proc};

use super::{
    catalogue::{series, Attached, Feeds, Hist, KeyedHist, Metric, When},
    table::{fentry, kprobe, tp, tracepoint, Area, Attach, Hook, HookId, KPROBE_LOSES},
};

/// The address-space copy of a fork: `dup_mmap` where the kernel has it out of line
/// (Debian 6.1), else the sum of its per-VMA page-table copies (5.10, 6.12 inline it).
const DUP_MMAP: &str = "dup_mmap|copy_page_range";

/// The hooks of this area (`HookId::Fork`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Id {
    ForkSyscalls,
    ProcessExit,
    DupMmap,
}

impl Id {
    /// The name exported in `memwatch_probe_info{hook}` and matched by `probes.hooks`.
    pub const fn name(self) -> &'static str {
        match self {
            Id::ForkSyscalls => "fork_syscalls",
            Id::ProcessExit => "process_exit",
            Id::DupMmap => "dup_mmap",
        }
    }
}

pub const HOOKS: &[Hook] = &[
    Hook {
        id: HookId::Fork(Id::ForkSyscalls),
        rungs: &[tracepoint(
            &[
                tp(
                    "fork_enter_clone",
                    &[("syscalls", "sys_enter_clone")],
                    &[("OFF_CLONE_FLAGS", "clone_flags")],
                ),
                tp(
                    "fork_enter_clone3",
                    &[("syscalls", "sys_enter_clone3")],
                    &[("OFF_CLONE3_UARGS", "uargs")],
                ),
                tp("fork_enter_fork", &[("syscalls", "sys_enter_fork")], &[]),
                tp("fork_enter_vfork", &[("syscalls", "sys_enter_vfork")], &[]),
                tp(
                    "fork_exit",
                    &[("syscalls", "sys_exit_clone")],
                    &[("OFF_SYS_EXIT_RET", "ret")],
                ),
                tp(
                    "fork_exit",
                    &[("syscalls", "sys_exit_clone3")],
                    &[("OFF_SYS_EXIT_RET", "ret")],
                ),
                tp(
                    "fork_exit",
                    &[("syscalls", "sys_exit_fork")],
                    &[("OFF_SYS_EXIT_RET", "ret")],
                ),
                tp(
                    "fork_exit",
                    &[("syscalls", "sys_exit_vfork")],
                    &[("OFF_SYS_EXIT_RET", "ret")],
                ),
            ],
            "syscalls:sys_enter/exit_clone, clone3, fork, vfork (CONFIG_FTRACE_SYSCALLS)",
            "",
        )],
    },
    Hook {
        id: HookId::Fork(Id::ProcessExit),
        rungs: &[tracepoint(
            &[tp(
                "fork_process_exit",
                &[("sched", "sched_process_exit")],
                &[],
            )],
            "sched:sched_process_exit",
            "",
        )],
    },
    Hook {
        id: HookId::Fork(Id::DupMmap),
        rungs: &[
            fentry(&[
                Attach::Fentry {
                    program: "fork_dup_mmap_fentry",
                    function: DUP_MMAP,
                },
                Attach::Fexit {
                    program: "fork_dup_mmap_fexit",
                    function: DUP_MMAP,
                },
            ]),
            kprobe(
                &[
                    Attach::Kprobe {
                        program: "fork_dup_mmap_kprobe",
                        function: DUP_MMAP,
                    },
                    Attach::Kretprobe {
                        program: "fork_dup_mmap_kretprobe",
                        function: DUP_MMAP,
                    },
                ],
                KPROBE_LOSES,
            ),
        ],
    },
];

pub const AREA: Area = Area {
    hooks: HOOKS,
    feeds: Feeds {
        procs: &[
            Metric {
                name: "forks_total",
                help: "Successful clone/clone3/fork/vfork calls by kind: fork (new address \
                       space), vfork, thread (CLONE_VM).",
                label: Some("kind"),
                series: &[
                    series("fork", &[proc::FORKS]),
                    series("vfork", &[proc::VFORKS]),
                    series("thread", &[proc::THREADS]),
                ],
                scale: 1.0,
                when: When::Attached(HookId::Fork(Id::ForkSyscalls)),
            },
            Metric {
                name: "fork_seconds_total",
                help: "Time the parent spent in fork syscalls (kind fork), entry to return.",
                label: None,
                series: &[series("", &[proc::FORK_NS])],
                scale: 1e-9,
                when: When::Attached(HookId::Fork(Id::ForkSyscalls)),
            },
            Metric {
                name: "dup_mmap_seconds_total",
                help: "Time spent copying the address space and page tables in fork (dup_mmap).",
                label: None,
                series: &[series("", &[proc::DUP_MMAP_NS])],
                scale: 1e-9,
                when: When::Attached(HookId::Fork(Id::DupMmap)),
            },
        ],
        keyed_hists: &[KeyedHist {
            hist: Hist {
                hist: hist::FORK,
                name: "memwatch_fork_duration_seconds",
                help: "Duration of fork syscalls (kind fork), entry to the parent's return, per \
                       command name; the rest in comm=\"(other processes)\".",
                sum_col: proc::FORK_NS,
                when: When::Attached(HookId::Fork(Id::ForkSyscalls)),
            },
            per_process: false,
        }],
        hists: &[Hist {
            hist: hist::DUP_MMAP,
            name: "memwatch_dup_mmap_duration_seconds",
            help: "Duration of the address-space and page-table copy in fork (dup_mmap).",
            sum_col: proc::DUP_MMAP_NS,
            when: When::Attached(HookId::Fork(Id::DupMmap)),
        }],
        ..Feeds::NONE
    },
};

/// Whether fork episodes can be tracked: forks and exits are both seen.
pub fn episodes_possible(attached: &Attached) -> bool {
    When::All(&[
        When::Attached(HookId::Fork(Id::ForkSyscalls)),
        When::Attached(HookId::Fork(Id::ProcessExit)),
    ])
    .holds(attached)
}
