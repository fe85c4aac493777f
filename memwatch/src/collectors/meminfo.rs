//! /proc/meminfo: every field, in bytes (`HugePages_*` are counts of huge pages).
//!
//! Field names become snake_case (`promtool check metrics` rejects camelCase):
//! `MemTotal` → `memwatch_meminfo_mem_total_bytes`, `Active(anon)` →
//! `memwatch_meminfo_active_anon_bytes`, `HugePages_Free` →
//! `memwatch_meminfo_huge_pages_free_pages`. The HELP text keeps the kernel's spelling.

use std::path::Path;

use super::{
    procfs::{self, FieldFile, FieldLine},
    Collector, ParseErrors,
};
use crate::{
    metrics::{Kind, Rendered, Text},
    parse::meminfo::parse_line,
};

#[cfg(test)]
impl crate::parse::meminfo::Entry<'_> {
    /// The exported metric name.
    pub fn metric_name(&self) -> String {
        metric_name(self.field, self.unit.is_some())
    }
}

/// `memwatch_meminfo_<field in snake_case>` plus `_bytes` for sizes, `_pages` for the
/// unitless `HugePages_*` counts.
pub fn metric_name(field: &str, bytes: bool) -> String {
    let mut name = String::from("memwatch_meminfo_");
    procfs::push_snake(&mut name, field);
    if bytes {
        name.push_str("_bytes");
    } else if field.starts_with("HugePages_") {
        name.push_str("_pages");
    }
    procfs::lint_fix(&mut name, false);
    name
}

/// The meminfo collector.
pub struct Meminfo(FieldFile);

impl Meminfo {
    pub fn new(proc_root: impl AsRef<Path>, errors: ParseErrors) -> Self {
        Self(FieldFile::new(proc_root.as_ref().join("meminfo"), errors))
    }
}

impl Collector for Meminfo {
    fn name(&self) -> &'static str {
        "meminfo"
    }

    fn write_text(&self, out: &mut Text) -> anyhow::Result<()> {
        self.0.write_text(
            out,
            |line| {
                let e = parse_line(line)?;
                Some(FieldLine {
                    field: e.field,
                    variant: u8::from(e.unit.is_some()),
                    value: e.value as f64,
                })
            },
            |field, bytes| {
                let bytes = bytes == 1;
                let help = if bytes {
                    format!("/proc/meminfo field {field}, in bytes.")
                } else {
                    format!("/proc/meminfo field {field}.")
                };
                Rendered::new(metric_name(field, bytes), &help, Kind::Gauge)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collectors::testutil, parse::meminfo::parse};

    /// Every fixture parses completely and matches its golden file
    /// (`UPDATE_GOLDEN=1` rewrites them; review the diff).
    #[test]
    fn fixtures_match_golden() {
        for (path, text) in testutil::fixtures("meminfo") {
            let (entries, errors) = parse(&text);
            assert!(errors.is_empty(), "{path}: {errors:?}");
            assert_eq!(entries.len(), text.lines().count(), "{path}");
            let rendered: String = entries
                .iter()
                .map(|e| format!("{} {}\n", e.metric_name(), e.value))
                .collect();
            testutil::check_golden(&path, &rendered);
        }
    }

    #[test]
    fn host_fixture_values() {
        let text = testutil::fixture("meminfo/linux-6.18-host.txt");
        let (entries, _) = parse(&text);
        let get = |name: &str| entries.iter().find(|e| e.metric_name() == name).unwrap();
        assert_eq!(
            get("memwatch_meminfo_mem_total_bytes").value,
            24684096 * 1024
        );
        assert_eq!(get("memwatch_meminfo_active_anon_bytes").value, 1484 * 1024);
        assert_eq!(
            get("memwatch_meminfo_inactive_file_bytes").value,
            422640 * 1024
        );
        assert_eq!(get("memwatch_meminfo_huge_pages_total_pages").value, 0);
        assert_eq!(get("memwatch_meminfo_huge_pages_total_pages").unit, None);
        assert_eq!(
            get("memwatch_meminfo_vmalloc_total_bytes").value,
            34359738367 * 1024
        );
        assert_eq!(get("memwatch_meminfo_hugepagesize_bytes").value, 2 << 20);
        assert_eq!(get("memwatch_meminfo_sunreclaim_bytes").field, "SUnreclaim");
        assert_eq!(
            get("memwatch_meminfo_direct_map_2m_bytes").field,
            "DirectMap2M"
        );
    }

    #[test]
    fn malformed_lines_are_skipped_not_fatal() {
        let (entries, errors) = parse(
            "MemTotal: 10 kB\ngarbage\nMemFree: x kB\nCached: 5 MB\n: 3\nHugePages_Free: 7\nBuffers: 1 kB extra\nBig: 18446744073709551615 kB\nMemTotal: 11 kB\n",
        );
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].value, 10240);
        assert_eq!(entries[1].value, 7);
        assert_eq!(errors.len(), 7);
    }

    /// The collector counts skipped lines in the shared parse-error counter and still
    /// exports the good ones.
    #[test]
    fn collector_counts_errors() {
        let dir = testutil::TempDir::new("meminfo");
        dir.write("meminfo", "MemTotal: 10 kB\nbad line\nHugePages_Free: 2\n");
        let errors = ParseErrors::default();
        let c = Meminfo::new(dir.path(), errors.clone());
        let mut out = Text::default();
        c.write_text(&mut out).unwrap();
        c.write_text(&mut Text::default()).unwrap();
        assert_eq!(errors.get(), 2);
        testutil::check_exposition(out.as_str()).unwrap();
        assert_eq!(
            out.as_str(),
            "# HELP memwatch_meminfo_mem_total_bytes /proc/meminfo field MemTotal, in bytes.\n\
             # TYPE memwatch_meminfo_mem_total_bytes gauge\n\
             memwatch_meminfo_mem_total_bytes 10240\n\
             # HELP memwatch_meminfo_huge_pages_free_pages /proc/meminfo field HugePages_Free.\n\
             # TYPE memwatch_meminfo_huge_pages_free_pages gauge\n\
             memwatch_meminfo_huge_pages_free_pages 2\n"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in testutil::procish_text()) {
            let (entries, errors) = parse(&text);
            let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
            proptest::prop_assert_eq!(entries.len() + errors.len(), lines);
            for e in entries {
                let name = metric_name(e.field, e.unit.is_some());
                proptest::prop_assert!(testutil::valid_metric_name(&name), "{}", name);
            }
        }
    }
}
