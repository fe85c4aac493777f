//! Fork: the clone/fork syscalls (counts by kind, the parent's time), process exits
//! (for fork episodes), and the address-space copy (`dup_mmap`). The programs are in
//! `memwatch-ebpf/src/probes/fork.rs`.

use memwatch_common::{global, hist, proc, watch, CommPattern, COMM_LEN};
use prometheus::proto::MetricFamily;

use super::{
    catalogue::{series, Attached, Counters, Custom, Feeds, Hist, KeyedHist, Metric, Series, When},
    table::{fentry, kprobe, tp, tracepoint, Area, Attach, Hook, HookId, KPROBE_LOSES},
};
use crate::{config, metrics::Family};

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
                tp(
                    "fork_sched_fork",
                    &[("sched", "sched_process_fork")],
                    &[("OFF_SCHED_FORK_CHILD_PID", "child_pid")],
                ),
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
            "syscalls:sys_enter/exit_clone, clone3, fork, vfork (CONFIG_FTRACE_SYSCALLS), \
             sched:sched_process_fork",
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
        counters: EVENT_COUNTERS,
        custom: &[Custom {
            when: EVENTS_WHEN,
            render: ring_buffer_bytes,
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

/// When fork/exit events stream: both hooks attached (as `episodes_possible`).
const EVENTS_WHEN: When = When::All(&[
    When::Attached(HookId::Fork(Id::ForkSyscalls)),
    When::Attached(HookId::Fork(Id::ProcessExit)),
]);

/// The fork and exit series of the event counters at `fork` (exit: the next slot).
macro_rules! by_kind {
    ($fork:expr) => {
        [series("fork", &[$fork]), series("exit", &[$fork + 1])]
    };
}

const SENT: [Series; 2] = by_kind!(global::EVENTS_SENT);
const LOST: [Series; 2] = by_kind!(global::EVENTS_LOST);
const FILTERED: [Series; 2] = by_kind!(global::EVENTS_FILTERED);

/// The fork/exit event stream's accounting: what was streamed, lost to a full ring
/// buffer, left out by the in-kernel filter, or could not be tracked.
const EVENT_COUNTERS: &[Metric] = &[
    Metric {
        name: "memwatch_events_total",
        help: "Fork and exit events written into the ring buffer for fork episodes, by kind.",
        label: Some("kind"),
        series: &SENT,
        scale: 1.0,
        when: EVENTS_WHEN,
    },
    Metric {
        name: "memwatch_events_lost_total",
        help: "Fork and exit events that passed the filter but found the ring buffer full \
               (episodes.ring_buffer_bytes), by kind.",
        label: Some("kind"),
        series: &LOST,
        scale: 1.0,
        when: EVENTS_WHEN,
    },
    Metric {
        name: "memwatch_events_filtered_total",
        help: "Fork and exit events the in-kernel filter left out, by kind: forks of \
               processes [episodes] does not watch, exits of processes that are not \
               children of a watched fork.",
        label: Some("kind"),
        series: &FILTERED,
        scale: 1.0,
        when: EVENTS_WHEN,
    },
    Metric {
        name: "memwatch_events_untracked_children_total",
        help: "Forks of watched processes whose child could not be tracked (table of \
               16384 children full): that child's exit is not streamed.",
        label: None,
        series: &[series("", &[global::CHILDREN_FULL])],
        scale: 1.0,
        when: EVENTS_WHEN,
    },
];

/// `memwatch_events_ring_buffer_bytes`.
fn ring_buffer_bytes(c: &Counters, out: &mut Vec<MetricFamily>) {
    let mut f = Family::gauge(
        "memwatch_events_ring_buffer_bytes",
        "Size of the fork/exit event ring buffer (episodes.ring_buffer_bytes).",
    );
    f.sample(
        &[],
        c.globals.get(global::RING_BYTES).copied().unwrap_or(0) as f64,
    );
    f.push_to(out);
}

/// What the in-kernel fork filter is set to from `[episodes]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelFilter {
    pub pids: Vec<u32>,
    pub comms: Vec<CommPattern>,
    /// Why the kernel cannot filter (then every process fork is streamed and the agent
    /// filters); None when it does.
    pub off: Option<String>,
}

impl KernelFilter {
    /// The filter for a config: pids and comm patterns in the kernel, where it can
    /// express them.
    pub fn new(cfg: &config::Episodes) -> Self {
        let off = |why: String| Self {
            off: Some(why),
            ..Self::default()
        };
        if !cfg.watch_cgroups.is_empty() {
            return off(
                "episodes.watch_cgroups matches a path in any cgroup hierarchy (v1 or v2), \
                 which the kernel side cannot see"
                    .into(),
            );
        }
        if cfg.watch_pids.len() > watch::MAX_PIDS as usize {
            return off(format!("more than {} episodes.watch_pids", watch::MAX_PIDS));
        }
        let mut comms = Vec::new();
        for p in &cfg.watch_comms {
            match compile_comm(p) {
                Ok(Some(c)) => comms.push(c),
                Ok(None) => log::debug!("episodes.watch_comms {p:?} can never match a comm"),
                Err(e) => return off(format!("episodes.watch_comms {p:?}: {e}")),
            }
        }
        if comms.len() > watch::MAX_COMMS as usize {
            return off(format!(
                "more than {} episodes.watch_comms",
                watch::MAX_COMMS
            ));
        }
        let mut pids = cfg.watch_pids.clone();
        pids.sort_unstable();
        pids.dedup();
        Self {
            pids,
            comms,
            off: None,
        }
    }
}

/// The most bytes a comm has (`TASK_COMM_LEN` less its NUL).
const COMM_MAX: usize = COMM_LEN - 1;

/// Two little-endian words of up to 16 bytes, placed from byte `at`.
fn words(bytes: &[u8], at: usize) -> [u64; 2] {
    let mut b = [0u8; 16];
    for (i, x) in bytes.iter().enumerate() {
        if let Some(slot) = b.get_mut(at + i) {
            *slot = *x;
        }
    }
    let (lo, hi) = b.split_at(8);
    let w = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
    [w(lo), w(hi)]
}

/// A comm glob (`*` any run, as `parse::CommPattern`) as the kernel matches it:
/// Ok(None) if it can never match a comm, Err if the kernel cannot express it (a `*`
/// between two literal parts, such as `*sql*` or `a*b*c`).
pub fn compile_comm(pattern: &str) -> Result<Option<CommPattern>, String> {
    if pattern.contains(char::REPLACEMENT_CHARACTER) {
        // The agent matches the comm's text with invalid UTF-8 replaced by U+FFFD;
        // the kernel sees the bytes.
        return Err("contains U+FFFD".into());
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return Ok(None);
    };
    if parts.len() == 1 {
        if pattern.len() > COMM_MAX {
            return Ok(None);
        }
        return Ok(Some(CommPattern {
            kind: watch::EXACT,
            prefix_len: pattern.len() as u32,
            prefix: words(pattern.as_bytes(), 0),
            prefix_mask: mask(pattern.len(), 0),
            ..CommPattern::default()
        }));
    }
    if parts
        .get(1..parts.len() - 1)
        .is_some_and(|mid| mid.iter().any(|p| !p.is_empty()))
    {
        return Err(
            "the kernel matches exact names, prefix*, *suffix, prefix*suffix and * \
                    only"
                .into(),
        );
    }
    if first.is_empty() && last.is_empty() {
        return Ok(Some(CommPattern {
            kind: watch::ANY,
            ..CommPattern::default()
        }));
    }
    if first.len() + last.len() > COMM_MAX {
        return Ok(None);
    }
    Ok(Some(CommPattern {
        kind: watch::AFFIX,
        prefix_len: first.len() as u32,
        suffix_len: last.len() as u32,
        _pad: 0,
        prefix: words(first.as_bytes(), 0),
        prefix_mask: mask(first.len(), 0),
        suffix: words(last.as_bytes(), 16usize.saturating_sub(last.len())),
        suffix_mask: mask(last.len(), 16usize.saturating_sub(last.len())),
    }))
}

/// `len` bytes of 0xff at `at` of a 16-byte comm, as `words` lays them out.
fn mask(len: usize, at: usize) -> [u64; 2] {
    let ones = [0xffu8; 16];
    words(ones.get(..len).unwrap_or(&ones), at)
}

/// Whether fork episodes can be tracked: forks and exits are both seen.
pub fn episodes_possible(attached: &Attached) -> bool {
    When::All(&[
        When::Attached(HookId::Fork(Id::ForkSyscalls)),
        When::Attached(HookId::Fork(Id::ProcessExit)),
    ])
    .holds(attached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{comm_str, CommPattern as Glob};

    fn comm(s: &[u8]) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..s.len()].copy_from_slice(s);
        c
    }

    /// The kernel's match of every expressible pattern agrees with the agent's glob on
    /// every comm tried (the agent matches the text, the kernel the bytes).
    #[test]
    fn kernel_comm_match_is_the_agents() {
        let patterns = [
            "redis-server",
            "redis*",
            "*server",
            "red*ver",
            "r*r",
            "*",
            "**",
            "a**b",
            "redis-rdb-bgsav",
            "redis-rdb-bgsave",
            "x",
            "",
            "*x",
            "x*",
            "é*",
            "*é",
            "abcdefgh*ijklmno",
            "abcdefghijklmno",
            "abcdefghi*",
            "*bcdefghijklmno",
        ];
        let comms: &[&[u8]] = &[
            b"redis-server",
            b"redis",
            b"redis-rdb-bgsav",
            b"server",
            b"rver",
            b"r",
            b"rr",
            b"",
            b"x",
            b"xx",
            b"ab",
            b"a",
            b"b",
            b"aXb",
            b"abcdefghijklmno",
            b"abcdefghXijklmno",
            b"abcdefghijklmn",
            b"\xc3\xa9t\xc3\xa9",
            b"\xffx",
            b"x\xff",
            b"red\xffver",
            b"abcdefghi",
            b"zbcdefghijklmno",
            b"redis-serve",
            b"edis-server",
        ];
        for p in patterns {
            let glob = Glob::new(p);
            let compiled = compile_comm(p).unwrap();
            for c in comms {
                let c = comm(&c[..c.len().min(COMM_MAX)]);
                let text = comm_str(&c);
                let (w, len) = memwatch_common::comm_words(&c);
                let kernel = compiled.is_some_and(|k| k.matches(w, len));
                assert_eq!(kernel, glob.matches(&text), "pattern {p:?}, comm {text:?}");
            }
        }
    }

    #[test]
    fn the_ring_buffer_size_is_a_power_of_two_of_pages() {
        let ring = |bytes: &str| {
            config::Config::from_toml(&format!("[episodes]\nring_buffer_bytes = {bytes}\n"), "t")
        };
        assert_eq!(ring("4096").unwrap().episodes.ring_buffer_bytes, 4096);
        assert_eq!(ring("1048576").unwrap().episodes.ring_buffer_bytes, 1 << 20);
        for bad in ["5000", "1024", "0"] {
            let e = ring(bad).unwrap_err().to_string();
            assert!(e.contains("episodes.ring_buffer_bytes"), "{e}");
        }
    }

    #[test]
    fn what_the_kernel_cannot_filter() {
        assert!(compile_comm("*sql*").is_err());
        assert!(compile_comm("a*b*c").is_err());
        assert!(compile_comm("a\u{fffd}").is_err());
        assert_eq!(compile_comm("sixteen-bytes-xx").unwrap(), None);
        let cfg = |comms: &[&str], pids: Vec<u32>, cgroups: &[&str]| config::Episodes {
            watch_comms: comms.iter().map(|s| s.to_string()).collect(),
            watch_pids: pids,
            watch_cgroups: cgroups.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let f = KernelFilter::new(&cfg(&["redis-server", "pg*"], vec![7, 7, 3], &[]));
        assert_eq!(f.off, None);
        assert_eq!(f.pids, vec![3, 7]);
        assert_eq!(f.comms.len(), 2);
        assert!(KernelFilter::new(&cfg(&["*sql*"], vec![], &[]))
            .off
            .is_some());
        assert!(KernelFilter::new(&cfg(&[], vec![], &["/redis"]))
            .off
            .is_some());
        let many: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        assert!(KernelFilter::new(&cfg(&many, vec![], &[])).off.is_some());
    }
}
