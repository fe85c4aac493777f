//! The declarative table of hooks and their rungs. The loader (`loader.rs`) reads it;
//! nothing else decides what attaches where.
//!
//! Each hook lists its rungs best first. A rung is a set of programs that attach
//! together; `needs` is the kernel feature it stands on, `loses` what it can't see
//! compared with the hook's best rung.

use std::fmt;

/// A rung of the probe ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Fentry, Mode::Kprobe, Mode::Tracepoint];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fentry => "fentry",
            Mode::Kprobe => "kprobe",
            Mode::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One program and where it attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    /// A tracepoint. `events` lists (category, name) alternatives, newest first (e.g.
    /// `writeback_dirty_folio` on 5.17+, `writeback_dirty_page` before); the first that
    /// exists is used. `fields` maps program globals to the record fields whose offsets
    /// they receive (read from the event's tracefs `format` at start-up); `a|b` names
    /// alternatives (e.g. `folio|page`), the first present is used.
    Tracepoint {
        program: &'static str,
        events: &'static [(&'static str, &'static str)],
        fields: &'static [(&'static str, &'static str)],
    },
    /// A BTF trampoline at a kernel function's entry.
    Fentry {
        program: &'static str,
        function: &'static str,
    },
    /// A BTF trampoline at a kernel function's return.
    Fexit {
        program: &'static str,
        function: &'static str,
    },
    /// A kprobe at a kernel function's entry.
    Kprobe {
        program: &'static str,
        function: &'static str,
    },
    /// A kretprobe at a kernel function's return.
    Kretprobe {
        program: &'static str,
        function: &'static str,
    },
    /// A raw tracepoint: the event's `TP_PROTO` arguments, no record built or copied
    /// (cheaper than `Tracepoint` on the same event, but the arguments are the call
    /// site's, so only for events whose prototype is stable).
    RawTracepoint {
        program: &'static str,
        name: &'static str,
        /// The program works from values taken from kernel BTF (struct layouts, flag
        /// bits: `KernelSupport::raw_layouts`): not attached without them.
        btf: bool,
    },
    /// The first of these that attaches (e.g. a raw tracepoint, else the tracepoint).
    FirstOf(&'static [Attach]),
    /// No program of its own: this rung is fed by another hook's programs, which must
    /// be attached.
    Shared { hook: &'static str },
}

impl Attach {
    /// The program this attach point loads, if any.
    pub fn program(&self) -> Option<&'static str> {
        match *self {
            Attach::Tracepoint { program, .. }
            | Attach::RawTracepoint { program, .. }
            | Attach::Fentry { program, .. }
            | Attach::Fexit { program, .. }
            | Attach::Kprobe { program, .. }
            | Attach::Kretprobe { program, .. } => Some(program),
            Attach::FirstOf(_) | Attach::Shared { .. } => None,
        }
    }
}

impl Attach {
    /// What kind of attach point this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Attach::Tracepoint { .. } => "tracepoint",
            Attach::RawTracepoint { .. } => "raw tracepoint",
            Attach::Fentry { .. } => "fentry",
            Attach::Fexit { .. } => "fexit",
            Attach::Kprobe { .. } => "kprobe",
            Attach::Kretprobe { .. } => "kretprobe",
            Attach::FirstOf(_) => "first of",
            Attach::Shared { .. } => "shared",
        }
    }

    /// The kernel function(s) a function hook attaches to (`a|b`: alternatives, the
    /// first the kernel has is used).
    pub fn function(&self) -> Option<&'static str> {
        match *self {
            Attach::Fentry { function, .. }
            | Attach::Fexit { function, .. }
            | Attach::Kprobe { function, .. }
            | Attach::Kretprobe { function, .. } => Some(function),
            Attach::Tracepoint { .. }
            | Attach::RawTracepoint { .. }
            | Attach::FirstOf(_)
            | Attach::Shared { .. } => None,
        }
    }
}

/// One rung of a hook.
#[derive(Debug, Clone, Copy)]
pub struct Rung {
    pub mode: Mode,
    pub attach: &'static [Attach],
    /// The kernel feature this rung needs.
    pub needs: &'static str,
    /// What this rung can't see, compared with the hook's best rung ("" for the best).
    pub loses: &'static str,
}

/// A hook: one thing memwatch observes, with its rungs best first.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    pub family: &'static str,
    pub name: &'static str,
    pub rungs: &'static [Rung],
}

const FENTRY_NEEDS: &str = "BPF trampolines (fentry/fexit) and kernel BTF";
const KPROBE_NEEDS: &str = "kprobes (CONFIG_KPROBE_EVENTS)";
const KPROBE_LOSES: &str = "nothing; about 100 ns more per event than fentry";

/// Where a copy-on-write copy maps its new page (6.3+, then older kernels).
const NEW_ANON_RMAP: &str = "folio_add_new_anon_rmap|page_add_new_anon_rmap";
/// The address-space copy of a fork: `dup_mmap` where the kernel has it out of line
/// (Debian 6.1), else the sum of its per-VMA page-table copies (5.10, 6.12 inline it).
const DUP_MMAP: &str = "dup_mmap|copy_page_range";

const TP_NEEDS_PF: &str = "exceptions:page_fault_user tracepoint (x86)";

const fn fentry(attach: &'static [Attach]) -> Rung {
    Rung {
        mode: Mode::Fentry,
        attach,
        needs: FENTRY_NEEDS,
        loses: "",
    }
}

const fn kprobe(attach: &'static [Attach], loses: &'static str) -> Rung {
    Rung {
        mode: Mode::Kprobe,
        attach,
        needs: KPROBE_NEEDS,
        loses,
    }
}

const fn tracepoint(attach: &'static [Attach], needs: &'static str, loses: &'static str) -> Rung {
    Rung {
        mode: Mode::Tracepoint,
        attach,
        needs,
        loses,
    }
}

const fn tp(
    program: &'static str,
    events: &'static [(&'static str, &'static str)],
    fields: &'static [(&'static str, &'static str)],
) -> Attach {
    Attach::Tracepoint {
        program,
        events,
        fields,
    }
}

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

/// Every hook memwatch knows, in attach order (a `Shared` rung names an earlier hook).
pub const HOOKS: &[Hook] = &[
    // ---- page faults
    Hook {
        family: "faults",
        name: "page_fault",
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
        family: "faults",
        name: "handle_mm_fault",
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
                &[Attach::Shared { hook: "page_fault" }],
                TP_NEEDS_PF,
                "major versus minor faults",
            ),
        ],
    },
    // ---- copy-on-write
    Hook {
        family: "cow",
        name: "do_wp_page",
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
                &[Attach::Shared { hook: "page_fault" }],
                TP_NEEDS_PF,
                "copies versus reuses and the fault latency: counts write faults on present \
                 pages (error code bits 0+1) instead of do_wp_page calls",
            ),
        ],
    },
    Hook {
        family: "cow",
        name: "cow_copy",
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
        family: "cow",
        name: "do_huge_pmd_wp_page",
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
    // ---- fork
    Hook {
        family: "fork",
        name: "fork_syscalls",
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
        family: "fork",
        name: "process_exit",
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
        family: "fork",
        name: "dup_mmap",
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
    // ---- dirty pages and writeback
    Hook {
        family: "writeback",
        name: "writeback_dirty",
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
        family: "writeback",
        name: "writeback_written",
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
        family: "writeback",
        name: "ext4_writepages",
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
        family: "writeback",
        name: "balance_dirty_pages",
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
    // ---- reclaim
    Hook {
        family: "reclaim",
        name: "direct_reclaim",
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
        family: "reclaim",
        name: "memcg_reclaim",
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
        family: "reclaim",
        name: "kswapd_wake",
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
        family: "reclaim",
        name: "vmscan_write",
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
        family: "reclaim",
        name: "vmscan_throttled",
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
    // ---- LRU movement
    Hook {
        family: "lru",
        name: "lru_insertion",
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
        family: "lru",
        name: "lru_activate",
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
        family: "lru",
        name: "lru_shrink_inactive",
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
        family: "lru",
        name: "lru_shrink_active",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, h) in HOOKS.iter().enumerate() {
            assert!(!h.rungs.is_empty(), "{}", h.name);
            // Rungs best first, each mode once.
            assert!(
                h.rungs.windows(2).all(|w| w[0].mode < w[1].mode),
                "{}",
                h.name
            );
            assert!(
                h.rungs[0].loses.is_empty(),
                "{}: best rung loses nothing",
                h.name
            );
            for r in h.rungs {
                assert!(!r.attach.is_empty());
                assert!(!r.needs.is_empty());
                for a in r.attach {
                    if let Attach::Shared { hook: other } = a {
                        let j = HOOKS.iter().position(|x| x.name == *other).unwrap();
                        assert!(j < i, "{} shares {other}, which must come first", h.name);
                    }
                }
            }
        }
        let mut names: Vec<_> = HOOKS.iter().map(|h| h.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), HOOKS.len());
    }
}
