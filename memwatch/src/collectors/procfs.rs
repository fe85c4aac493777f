//! Helpers shared by the /proc and /sys collectors: whole-file reads into a reused
//! buffer, metric-name spelling, and the rule that says which kernel counters are
//! event counts.

use std::{fs::File, io, io::Read as _, path::Path};

/// A file buffer kept between scrapes: zeroed once, grown when a file is bigger, and
/// read into directly. A /proc file smaller than the buffer comes in one `read` call
/// (plus the one that sees the end), so the kernel renders it once.
#[derive(Default)]
pub struct ReadBuf {
    data: Vec<u8>,
    len: usize,
}

impl ReadBuf {
    /// Reads the whole file at `path`, replacing what the buffer held.
    pub fn read(&mut self, path: &Path) -> io::Result<()> {
        self.len = 0;
        let mut f = File::open(path)?;
        loop {
            if self.len == self.data.len() {
                let grow = self.data.len().max(16 * 1024);
                self.data.resize(self.data.len() + grow, 0);
            }
            let free = self.data.get_mut(self.len..).unwrap_or_default();
            match f.read(free) {
                Ok(0) => return Ok(()),
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.len = 0;
                    return Err(e);
                }
            }
        }
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.get(..self.len).unwrap_or_default()
    }

    /// The file as text (bytes that are not UTF-8 become U+FFFD; /proc text is ASCII,
    /// so this borrows).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.bytes())
    }
}

/// True for the errors that mean "this kernel does not have it": a missing file, or a
/// file that exists but refuses reads (PSI files with `psi=0` answer EOPNOTSUPP).
pub fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOENT) | Some(libc::ENODEV)
        )
}

/// Appends a kernel field name to a metric name as snake_case: `MemTotal` → `mem_total`,
/// `Active(anon)` → `active_anon`, `SUnreclaim` → `s_unreclaim`, `DirectMap2M` →
/// `direct_map_2m`, `NFS_Unstable` → `nfs_unstable`, `nr_dirty` → `nr_dirty`.
/// Characters outside `[A-Za-z0-9_]` become `_`; runs of `_` collapse and none trail.
pub fn push_snake(out: &mut String, field: &str) {
    let start = out.len();
    let b = field.as_bytes();
    let sep = |out: &mut String| {
        if out.len() > start && !out.ends_with('_') {
            out.push('_');
        }
    };
    for (i, &c) in b.iter().enumerate() {
        let at = |j: Option<usize>| j.and_then(|j| b.get(j)).copied().unwrap_or(0);
        let prev = at(i.checked_sub(1));
        let next = b.get(i + 1).copied().unwrap_or(0);
        if c.is_ascii_uppercase() {
            // A run of capitals ends a word before a capitalised word (`NFSUnstable`),
            // but a lone leading capital stays on its word (`SUnreclaim`, `KReclaimable`).
            let prev2 = at(i.checked_sub(2));
            let acronym_end = prev.is_ascii_uppercase()
                && prev2.is_ascii_uppercase()
                && next.is_ascii_lowercase();
            if prev.is_ascii_lowercase() || acronym_end {
                sep(out);
            }
            out.push(c.to_ascii_lowercase() as char);
        } else if c.is_ascii_digit() {
            if prev.is_ascii_alphabetic() {
                sep(out);
            }
            out.push(c as char);
        } else if c.is_ascii_lowercase() {
            out.push(c as char);
        } else {
            sep(out);
        }
    }
    while out.len() > start && out.ends_with('_') {
        out.pop();
    }
}

/// Name parts that `promtool check metrics` reads as abbreviated units.
pub const UNIT_ABBREVIATIONS: &[&str] = &[
    "b", "d", "gb", "h", "kb", "m", "mb", "ms", "ns", "pb", "s", "sec", "tb", "us",
];

/// Suffixes Prometheus reserves: `_total` for counters, the rest for histograms and
/// summaries.
pub const RESERVED_SUFFIXES: &[&str] = &["_total", "_count", "_sum", "_bucket"];

/// Makes `name` pass `promtool check metrics`: a word that
/// reads as an abbreviated unit is spelled out where its meaning is known (`sec` →
/// `secondary`, as in `nr_sec_page_table_pages`) and otherwise joined to the next word
/// (`s_x` → `sx`; the last word joins the one before); a gauge whose name would end
/// in a reserved suffix (`_total`, `_count`, ...) gets `_value` appended. Counters are
/// fixed before their `_total` is added.
pub fn lint_fix(name: &mut String, counter: bool) {
    if name.split('_').any(|w| UNIT_ABBREVIATIONS.contains(&w)) {
        let words: Vec<String> = name.split('_').map(str::to_string).collect();
        let mut fixed = String::with_capacity(name.len() + 8);
        let mut glue = false;
        for (i, w) in words.iter().enumerate() {
            if i > 0 && !glue {
                fixed.push('_');
            }
            glue = false;
            if w == "sec" {
                fixed.push_str("secondary");
            } else if UNIT_ABBREVIATIONS.contains(&w.as_str()) {
                if i + 1 < words.len() {
                    glue = true;
                } else if fixed.ends_with('_') {
                    fixed.pop();
                }
                fixed.push_str(w);
            } else {
                fixed.push_str(w);
            }
        }
        *name = fixed;
    }
    if !counter && RESERVED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        name.push_str("_value");
    }
}

/// `push_snake` into a new string.
#[cfg(test)]
pub fn snake(field: &str) -> String {
    let mut s = String::with_capacity(field.len() + 4);
    push_snake(&mut s, field);
    s
}

/// Appends a field that is already lower-case snake (vmstat, zoneinfo) as it is,
/// mapping anything outside `[a-z0-9_]` to `_` so a strange name can't break the output.
pub fn push_sanitized(out: &mut String, field: &str) {
    for c in field.chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => out.push(c),
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            _ => out.push('_'),
        }
    }
}

/// `nr_*` fields that count events (they only grow), not current amounts.
const NR_EVENT_COUNTERS: &[&str] = &[
    "nr_dirtied",
    "nr_written",
    "nr_throttled_written",
    "nr_vmscan_write",
    "nr_vmscan_immediate_reclaim",
    "nr_foll_pin_acquired",
    "nr_foll_pin_released",
    // CONFIG_DEBUG_TLBFLUSH
    "nr_tlb_remote_flush",
    "nr_tlb_remote_flush_received",
    "nr_tlb_local_flush_all",
    "nr_tlb_local_flush_one",
];

/// Fields without the `nr_` prefix that are current amounts, not events.
const OTHER_GAUGES: &[&str] = &["workingset_nodes"];

/// Whether a /proc/vmstat (or /proc/zoneinfo statistics) field is an event count
/// (exported as a counter, `_total`) rather than a current value (a gauge).
///
/// The rule follows the kernel's own split: the `vm_event_item` part of vmstat and the
/// NUMA, workingset, promotion and demotion statistics count events, and the `NR_*`
/// items (printed `nr_...`) hold current amounts. So: a field is a gauge when it starts
/// with `nr_` (except the `nr_*` event counts in `NR_EVENT_COUNTERS`, e.g. `nr_dirtied`)
/// or is in `OTHER_GAUGES` (`workingset_nodes`); every other field is a counter. A field
/// a future kernel adds is exported by the same rule, never dropped.
pub fn is_event_counter(field: &str) -> bool {
    if field.starts_with("nr_") {
        NR_EVENT_COUNTERS.contains(&field)
    } else {
        !OTHER_GAUGES.contains(&field)
    }
}

/// A /proc file with one `field value` line per series (meminfo, vmstat): read into a
/// reused buffer, each line parsed and written through a cache of rendered series kept
/// by position. Malformed lines and repeated names are skipped and counted.
pub struct FieldFile {
    path: std::path::PathBuf,
    errors: super::ParseErrors,
    state: parking_lot::Mutex<(ReadBuf, crate::metrics::PositionalCache)>,
}

/// One parsed line: the field's name, a variant of its rendering (e.g. its unit), and
/// the sample value.
pub struct FieldLine<'a> {
    pub field: &'a str,
    pub variant: u8,
    pub value: f64,
}

impl FieldFile {
    pub fn new(path: std::path::PathBuf, errors: super::ParseErrors) -> Self {
        Self {
            path,
            errors,
            state: Default::default(),
        }
    }

    /// Reads the file and writes every line `parse` accepts, rendered once by `render`.
    pub fn write_text(
        &self,
        out: &mut crate::metrics::Text,
        parse: impl for<'a> Fn(&'a str) -> Option<FieldLine<'a>>,
        render: impl Fn(&str, u8) -> crate::metrics::Rendered,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let mut state = self.state.lock();
        let (buf, cache) = &mut *state;
        buf.read(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut errors = 0;
        let mut k = 0;
        for line in buf.text().lines().filter(|l| !l.trim().is_empty()) {
            let Some(f) = parse(line) else {
                log::debug!("{}: skipping malformed line {line:?}", self.path.display());
                errors += 1;
                continue;
            };
            let r = cache.get(k, f.field, f.variant, || render(f.field, f.variant));
            k += 1;
            // A field twice (or two spelling the same name): the first one stays.
            if !r.write(out, f.value) {
                errors += 1;
            }
        }
        self.errors.add(errors);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_names() {
        for (field, want) in [
            ("MemTotal", "mem_total"),
            ("Active(anon)", "active_anon"),
            ("Inactive(file)", "inactive_file"),
            ("SUnreclaim", "sunreclaim"),
            ("KReclaimable", "kreclaimable"),
            ("NFSUnstable", "nfs_unstable"),
            ("DirectMap4k", "direct_map_4k"),
            ("DirectMap2M", "direct_map_2m"),
            ("DirectMap1G", "direct_map_1g"),
            ("NFS_Unstable", "nfs_unstable"),
            ("HugePages_Total", "huge_pages_total"),
            ("Hugepagesize", "hugepagesize"),
            ("Committed_AS", "committed_as"),
            ("ShmemPmdMapped", "shmem_pmd_mapped"),
            ("Pss_Anon", "pss_anon"),
            ("Private_Dirty", "private_dirty"),
            ("nr_dirty", "nr_dirty"),
            ("a  b", "a_b"),
            ("(x)", "x"),
            ("", ""),
        ] {
            assert_eq!(snake(field), want, "{field}");
        }
    }

    #[test]
    fn lint_fixes() {
        let fix = |n: &str, counter: bool| {
            let mut s = format!("memwatch_x_{n}");
            lint_fix(&mut s, counter);
            s
        };
        assert_eq!(
            fix("nr_sec_page_table_pages", false),
            "memwatch_x_nr_secondary_page_table_pages"
        );
        assert_eq!(
            fix("s_reclaimable_bytes", false),
            "memwatch_x_sreclaimable_bytes"
        );
        assert_eq!(fix("a_b", false), "memwatch_x_ab");
        assert_eq!(fix("ms", false), "memwatch_xms");
        assert_eq!(
            fix("huge_pages_total", false),
            "memwatch_x_huge_pages_total_value"
        );
        assert_eq!(fix("x_count", false), "memwatch_x_x_count_value");
        assert_eq!(fix("pgfault_total", true), "memwatch_x_pgfault_total");
        assert_eq!(fix("nr_dirty", false), "memwatch_x_nr_dirty");
    }

    #[test]
    fn counter_rule() {
        for f in [
            "pgfault",
            "pgmajfault",
            "workingset_refault_file",
            "thp_fault_alloc",
            "compact_stall",
            "oom_kill",
            "numa_hit",
            "pswpin",
            "allocstall_normal",
            "pgpromote_success",
            "nr_dirtied",
            "nr_written",
            "drop_pagecache",
            "some_future_event",
        ] {
            assert!(is_event_counter(f), "{f} should be a counter");
        }
        for f in [
            "nr_free_pages",
            "nr_dirty",
            "nr_dirty_threshold",
            "workingset_nodes",
            "nr_some_future_amount",
        ] {
            assert!(!is_event_counter(f), "{f} should be a gauge");
        }
    }
}
