//! The memory-management knobs that decide when dirty pages are written back, when
//! reclaim starts and how THP behaves: /proc/sys/vm/* and
//! /sys/kernel/mm/transparent_hugepage/{enabled,defrag}.
//!
//! Each sysctl is one gauge named after it in base units (`vm.dirty_expire_centisecs`
//! → `memwatch_sysctl_vm_dirty_expire_seconds`, `vm.min_free_kbytes` →
//! `memwatch_sysctl_vm_min_free_bytes`, the percent `*_ratio` knobs as 0-1 ratios). THP
//! settings are one-hot: `memwatch_thp_enabled{mode}` is 1 for the active mode and 0 for
//! every other mode the kernel offers. A knob this kernel lacks is absent.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};

use super::{
    procfs::{self, ReadBuf},
    Collector, ParseErrors,
};
use crate::{
    metrics::{Kind, Text},
    parse::{parse_choice, parse_sysctl},
};

/// A sysctl under /proc/sys/vm: file, metric name, factor to base units, help.
pub struct Sysctl {
    pub file: &'static str,
    pub name: &'static str,
    pub scale: f64,
    pub help: &'static str,
}

pub const SYSCTLS: &[Sysctl] = &[
    Sysctl {
        file: "dirty_ratio",
        name: "memwatch_sysctl_vm_dirty_ratio",
        scale: 0.01,
        help: "vm.dirty_ratio as a 0-1 ratio (the sysctl is in percent): dirty share of \
               available memory at which writers are throttled; 0 when vm.dirty_bytes is set.",
    },
    Sysctl {
        file: "dirty_background_ratio",
        name: "memwatch_sysctl_vm_dirty_background_ratio",
        scale: 0.01,
        help:
            "vm.dirty_background_ratio as a 0-1 ratio (the sysctl is in percent): dirty \
               share at which background writeback starts; 0 when vm.dirty_background_bytes is set.",
    },
    Sysctl {
        file: "dirty_bytes",
        name: "memwatch_sysctl_vm_dirty_bytes",
        scale: 1.0,
        help: "vm.dirty_bytes: dirty memory at which writers are throttled; 0 when \
               vm.dirty_ratio is used.",
    },
    Sysctl {
        file: "dirty_background_bytes",
        name: "memwatch_sysctl_vm_dirty_background_bytes",
        scale: 1.0,
        help: "vm.dirty_background_bytes: dirty memory at which background writeback \
               starts; 0 when vm.dirty_background_ratio is used.",
    },
    Sysctl {
        file: "dirty_expire_centisecs",
        name: "memwatch_sysctl_vm_dirty_expire_seconds",
        scale: 0.01,
        help: "vm.dirty_expire_centisecs in seconds: age at which dirty data is written \
               back.",
    },
    Sysctl {
        file: "dirty_writeback_centisecs",
        name: "memwatch_sysctl_vm_dirty_writeback_seconds",
        scale: 0.01,
        help: "vm.dirty_writeback_centisecs in seconds: interval of the flusher threads' \
               periodic wakeups (0: disabled).",
    },
    Sysctl {
        file: "swappiness",
        name: "memwatch_sysctl_vm_swappiness",
        scale: 1.0,
        help: "vm.swappiness (0-200): relative cost of swapping anon pages against \
               dropping file pages.",
    },
    Sysctl {
        file: "min_free_kbytes",
        name: "memwatch_sysctl_vm_min_free_bytes",
        scale: 1024.0,
        help: "vm.min_free_kbytes in bytes: memory kept free, which sets the zones' min \
               watermarks.",
    },
    Sysctl {
        file: "watermark_scale_factor",
        name: "memwatch_sysctl_vm_watermark_scale_factor",
        scale: 1.0,
        help: "vm.watermark_scale_factor, in units of 1/10000 of memory: gap between the \
               min, low and high watermarks.",
    },
    Sysctl {
        file: "overcommit_memory",
        name: "memwatch_sysctl_vm_overcommit_memory",
        scale: 1.0,
        help: "vm.overcommit_memory mode: 0 heuristic, 1 always overcommit, 2 never \
               (strict, CommitLimit).",
    },
];

/// The THP settings: file, metric name, help.
pub const THP: &[(&str, &str, &str)] = &[
    (
        "enabled",
        "memwatch_thp_enabled",
        "Transparent huge pages mode (/sys/kernel/mm/transparent_hugepage/enabled): 1 for \
         the active mode, 0 for the others offered.",
    ),
    (
        "defrag",
        "memwatch_thp_defrag",
        "THP defrag setting (/sys/kernel/mm/transparent_hugepage/defrag): 1 for the \
         active setting, 0 for the others offered.",
    ),
];

/// The knobs collector.
pub struct Knobs {
    vm_dir: PathBuf,
    thp_dir: PathBuf,
    errors: ParseErrors,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    buf: ReadBuf,
    /// Files already reported absent (logged once).
    absent: Vec<PathBuf>,
}

impl Knobs {
    pub fn new(
        proc_root: impl AsRef<Path>,
        sys_root: impl AsRef<Path>,
        errors: ParseErrors,
    ) -> Self {
        Self {
            vm_dir: proc_root.as_ref().join("sys/vm"),
            thp_dir: sys_root.as_ref().join("kernel/mm/transparent_hugepage"),
            errors,
            state: Mutex::default(),
        }
    }
}

impl State {
    /// Reads `path` into the buffer; `Ok(false)` when this kernel has no such file.
    fn read(&mut self, path: &Path) -> anyhow::Result<bool> {
        match self.buf.read(path) {
            Ok(()) => Ok(true),
            Err(e) if procfs::is_absent(&e) => {
                if !self.absent.iter().any(|p| p == path) {
                    log::debug!("{}: {e}; not on this kernel, metric absent", path.display());
                    self.absent.push(path.to_path_buf());
                }
                Ok(false)
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        }
    }
}

impl Collector for Knobs {
    fn name(&self) -> &'static str {
        "knobs"
    }

    fn write_text(&self, out: &mut Text) -> anyhow::Result<()> {
        let mut state = self.state.lock();
        for s in SYSCTLS {
            let path = self.vm_dir.join(s.file);
            if !state.read(&path)? {
                continue;
            }
            match parse_sysctl(&state.buf.text()) {
                Some(v) => {
                    if out.family(s.name, s.help, Kind::Gauge) {
                        out.sample(s.name, &[], v * s.scale);
                    }
                }
                None => {
                    log::debug!("{}: not one integer", path.display());
                    self.errors.add(1);
                }
            }
        }
        for (file, name, help) in THP {
            let path = self.thp_dir.join(file);
            if !state.read(&path)? {
                continue;
            }
            let text = state.buf.text();
            match parse_choice(&text) {
                Some(opts) => {
                    if out.family(name, help, Kind::Gauge) {
                        for (mode, selected) in opts {
                            out.sample(name, &[("mode", mode)], if selected { 1.0 } else { 0.0 });
                        }
                    }
                }
                None => {
                    log::debug!("{}: not a choice list: {text:?}", path.display());
                    self.errors.add(1);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn parses_sysctls_and_choices() {
        assert_eq!(parse_sysctl("20\n"), Some(20.0));
        assert_eq!(parse_sysctl("0"), Some(0.0));
        assert_eq!(parse_sysctl("20 30\n"), None);
        assert_eq!(parse_sysctl(""), None);
        assert_eq!(parse_sysctl("x"), None);
        assert_eq!(
            parse_choice("always [madvise] never\n"),
            Some(vec![("always", false), ("madvise", true), ("never", false)])
        );
        assert_eq!(
            parse_choice("always defer defer+madvise [madvise] never\n").map(|v| v.len()),
            Some(5)
        );
        assert_eq!(parse_choice("always madvise never"), None);
        assert_eq!(parse_choice("[always] [never]"), None);
        assert_eq!(parse_choice("[always] always"), None);
        assert_eq!(parse_choice("[al\"ways]"), None);
        assert_eq!(parse_choice("[]"), None);
    }

    /// A fake /proc/sys/vm and THP folder, in base units; missing knobs are absent;
    /// a broken one is counted and the rest still export.
    #[test]
    fn collector_reads_and_converts() {
        let proc_dir = testutil::TempDir::new("knobs-proc");
        let sys_dir = testutil::TempDir::new("knobs-sys");
        for (f, v) in [
            ("dirty_ratio", "20\n"),
            ("dirty_background_ratio", "10\n"),
            ("dirty_bytes", "0\n"),
            ("dirty_expire_centisecs", "3000\n"),
            ("dirty_writeback_centisecs", "500\n"),
            ("swappiness", "60\n"),
            ("min_free_kbytes", "67584\n"),
            ("watermark_scale_factor", "oops\n"),
            ("overcommit_memory", "2\n"),
        ] {
            proc_dir.write(&format!("sys/vm/{f}"), v);
        }
        sys_dir.write(
            "kernel/mm/transparent_hugepage/enabled",
            "always [madvise] never\n",
        );
        let errors = ParseErrors::default();
        let c = Knobs::new(proc_dir.path(), sys_dir.path(), errors.clone());
        let mut out = Text::default();
        c.write_text(&mut out).unwrap();
        let text = out.into_string();
        testutil::check_exposition(&text).unwrap();
        for want in [
            "memwatch_sysctl_vm_dirty_ratio 0.2\n",
            "memwatch_sysctl_vm_dirty_background_ratio 0.1\n",
            "memwatch_sysctl_vm_dirty_bytes 0\n",
            "memwatch_sysctl_vm_dirty_expire_seconds 30\n",
            "memwatch_sysctl_vm_dirty_writeback_seconds 5\n",
            "memwatch_sysctl_vm_swappiness 60\n",
            "memwatch_sysctl_vm_min_free_bytes 69206016\n",
            "memwatch_sysctl_vm_overcommit_memory 2\n",
            "memwatch_thp_enabled{mode=\"always\"} 0\n",
            "memwatch_thp_enabled{mode=\"madvise\"} 1\n",
            "memwatch_thp_enabled{mode=\"never\"} 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("memwatch_sysctl_vm_dirty_background_bytes"),
            "{text}"
        );
        assert!(
            !text.contains("memwatch_sysctl_vm_watermark_scale_factor"),
            "{text}"
        );
        assert!(!text.contains("memwatch_thp_defrag"), "{text}");
        assert_eq!(errors.get(), 1);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in testutil::procish_text()) {
            let _ = parse_sysctl(&text);
            if let Some(opts) = parse_choice(&text) {
                proptest::prop_assert_eq!(opts.iter().filter(|o| o.1).count(), 1);
            }
        }
    }
}
