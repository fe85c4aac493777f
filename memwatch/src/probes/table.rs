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
    /// A tracepoint.
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
    /// A BTF trampoline at a kernel function's entry.
    Fentry {
        program: &'static str,
        function: &'static str,
    },
    /// A kprobe at a kernel function's entry.
    Kprobe {
        program: &'static str,
        function: &'static str,
    },
    /// No program of its own: this rung is fed by another hook's programs, which must
    /// be attached.
    Shared { hook: &'static str },
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

/// A tracepoint field whose offset a program needs, and the global that receives it.
#[derive(Debug, Clone, Copy)]
pub struct FieldOffset {
    pub global: &'static str,
    pub category: &'static str,
    pub event: &'static str,
    pub field: &'static str,
}

/// Every hook memwatch knows, in attach order (a `Shared` rung names an earlier hook).
pub const HOOKS: &[Hook] = &[
    Hook {
        family: "faults",
        name: "page_fault",
        rungs: &[Rung {
            mode: Mode::Tracepoint,
            attach: &[
                Attach::Tracepoint {
                    program: "page_fault_user",
                    category: "exceptions",
                    name: "page_fault_user",
                },
                Attach::Tracepoint {
                    program: "page_fault_kernel",
                    category: "exceptions",
                    name: "page_fault_kernel",
                },
            ],
            needs: "exceptions:page_fault_user/page_fault_kernel tracepoints (x86)",
            loses: "",
        }],
    },
    Hook {
        family: "cow",
        name: "do_wp_page",
        rungs: &[
            Rung {
                mode: Mode::Fentry,
                attach: &[Attach::Fentry {
                    program: "cow_do_wp_page_fentry",
                    function: "do_wp_page",
                }],
                needs: "BPF trampolines (fentry) and kernel BTF",
                loses: "",
            },
            Rung {
                mode: Mode::Kprobe,
                attach: &[Attach::Kprobe {
                    program: "cow_do_wp_page_kprobe",
                    function: "do_wp_page",
                }],
                needs: "kprobes (CONFIG_KPROBE_EVENTS)",
                loses: "about 100 ns more per event than fentry",
            },
            Rung {
                mode: Mode::Tracepoint,
                attach: &[Attach::Shared { hook: "page_fault" }],
                needs: "exceptions:page_fault_user tracepoint (x86)",
                loses: "counts write faults on present pages (error code bits 0+1) instead of \
                        do_wp_page calls: includes the rare write-protect faults that do_wp_page \
                        does not handle, and (later) can't tell copies from reuses",
            },
        ],
    },
];

/// Tracepoint field offsets the programs read, set through `EbpfLoader::override_global`.
pub const FIELD_OFFSETS: &[FieldOffset] = &[FieldOffset {
    global: "PF_ERROR_CODE_OFFSET",
    category: "exceptions",
    event: "page_fault_user",
    field: "error_code",
}];

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
