//! The types of the hook table, and the table: the concatenation of the probe areas'
//! lists (`faults.rs`, `cow.rs`, ...: each area's hooks and the metrics they feed). The
//! loader (`loader.rs`) reads it; nothing else decides what attaches where.
//!
//! Each hook lists its rungs best first. A rung is a set of programs that attach
//! together; `needs` is the kernel feature it stands on, `loses` what it can't see
//! compared with the hook's best rung.

use std::fmt;

use super::{catalogue::Feeds, cow, faults, fork, lru, reclaim, writeback};

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
    Shared { hook: HookId },
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

/// A hook, by area and name: each area's module lists its own (`cow::Id`, ...).
/// `as_str` is the name exported in `memwatch_probe_info{hook}` and matched by the
/// config's `probes.hooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookId {
    Faults(faults::Id),
    Cow(cow::Id),
    Fork(fork::Id),
    Writeback(writeback::Id),
    Reclaim(reclaim::Id),
    Lru(lru::Id),
}

impl HookId {
    /// The probe area: its module's name.
    pub const fn family(self) -> &'static str {
        match self {
            HookId::Faults(_) => "faults",
            HookId::Cow(_) => "cow",
            HookId::Fork(_) => "fork",
            HookId::Writeback(_) => "writeback",
            HookId::Reclaim(_) => "reclaim",
            HookId::Lru(_) => "lru",
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            HookId::Faults(id) => id.name(),
            HookId::Cow(id) => id.name(),
            HookId::Fork(id) => id.name(),
            HookId::Writeback(id) => id.name(),
            HookId::Reclaim(id) => id.name(),
            HookId::Lru(id) => id.name(),
        }
    }
}

impl fmt::Display for HookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hook: one thing memwatch observes, with its rungs best first.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    pub id: HookId,
    pub rungs: &'static [Rung],
}

impl Hook {
    /// The hook's name (`memwatch_probe_info{hook}`, `probes.hooks`).
    pub const fn name(&self) -> &'static str {
        self.id.as_str()
    }

    /// The probe area it belongs to (`memwatch_probe_info{family}`).
    pub const fn family(&self) -> &'static str {
        self.id.family()
    }
}

/// A probe area (`faults`, `cow`, ...): its hooks, and the metrics they feed.
pub struct Area {
    pub hooks: &'static [Hook],
    pub feeds: Feeds,
}

/// The probe areas, in attach order.
pub const AREAS: &[&Area] = &[
    &faults::AREA,
    &cow::AREA,
    &fork::AREA,
    &writeback::AREA,
    &reclaim::AREA,
    &lru::AREA,
];

const FENTRY_NEEDS: &str = "BPF trampolines (fentry/fexit) and kernel BTF";
const KPROBE_NEEDS: &str = "kprobes (CONFIG_KPROBE_EVENTS)";
pub const KPROBE_LOSES: &str = "nothing; about 100 ns more per event than fentry";

pub const fn fentry(attach: &'static [Attach]) -> Rung {
    Rung {
        mode: Mode::Fentry,
        attach,
        needs: FENTRY_NEEDS,
        loses: "",
    }
}

pub const fn kprobe(attach: &'static [Attach], loses: &'static str) -> Rung {
    Rung {
        mode: Mode::Kprobe,
        attach,
        needs: KPROBE_NEEDS,
        loses,
    }
}

pub const fn tracepoint(
    attach: &'static [Attach],
    needs: &'static str,
    loses: &'static str,
) -> Rung {
    Rung {
        mode: Mode::Tracepoint,
        attach,
        needs,
        loses,
    }
}

pub const fn tp(
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

/// Checks that every name in the config's `probes.hooks` is a hook or a family.
pub fn check_selection(probes: &crate::config::Probes) -> Result<(), String> {
    let known = |h: &String| HOOKS.iter().any(|k| k.name() == h || k.family() == h);
    match probes.hooks.iter().find(|h| !known(h)) {
        Some(bad) => Err(format!(
            "probes.hooks: no hook or family named {bad:?} (see `memwatch probes`)"
        )),
        None => Ok(()),
    }
}

/// Every hook memwatch knows, in attach order (a `Shared` rung names an earlier hook).
pub const HOOKS: &[Hook] = &concat::<{ count(AREAS) }>(AREAS);

#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an index out of range fails the build, not the daemon"
)]
const fn count(areas: &[&Area]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < areas.len() {
        n += areas[i].hooks.len();
        i += 1;
    }
    n
}

/// The areas' hooks in one array (a `const` can't collect into a `Vec`).
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an index out of range fails the build, not the daemon"
)]
const fn concat<const N: usize>(areas: &[&Area]) -> [Hook; N] {
    let mut out = [areas[0].hooks[0]; N];
    let (mut n, mut a) = (0, 0);
    while a < areas.len() {
        let mut h = 0;
        while h < areas[a].hooks.len() {
            out[n] = areas[a].hooks[h];
            n += 1;
            h += 1;
        }
        a += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_names_hooks_or_families() {
        let probes = |hooks: &[&str]| crate::config::Probes {
            hooks: hooks.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        };
        assert!(check_selection(&probes(&["cow", "page_fault"])).is_ok());
        let err = check_selection(&probes(&["cow", "nope"])).unwrap_err();
        assert!(err.contains("\"nope\""), "{err}");
    }

    #[test]
    fn table_is_consistent() {
        for (i, h) in HOOKS.iter().enumerate() {
            assert!(!h.rungs.is_empty(), "{}", h.name());
            // Rungs best first, each mode once.
            assert!(
                h.rungs.windows(2).all(|w| w[0].mode < w[1].mode),
                "{}",
                h.name()
            );
            assert!(
                h.rungs[0].loses.is_empty(),
                "{}: best rung loses nothing",
                h.name()
            );
            for r in h.rungs {
                assert!(!r.attach.is_empty());
                assert!(!r.needs.is_empty());
                for a in r.attach {
                    if let Attach::Shared { hook: other } = a {
                        let j = HOOKS.iter().position(|x| x.id == *other).unwrap();
                        assert!(j < i, "{} shares {other}, which must come first", h.name());
                    }
                }
            }
        }
        let mut names: Vec<_> = HOOKS.iter().map(|h| h.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), HOOKS.len());
        // An area lists only its own hooks.
        for area in AREAS {
            let family = area.hooks[0].family();
            assert!(area.hooks.iter().all(|h| h.family() == family), "{family}");
        }
    }
}
