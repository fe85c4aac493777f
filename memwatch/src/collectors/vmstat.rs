//! /proc/vmstat: every field.
//!
//! A field that counts events becomes a counter `memwatch_vmstat_<field>_total`
//! (`pgfault` → `memwatch_vmstat_pgfault_total`); a current amount becomes a gauge
//! `memwatch_vmstat_<field>` (`nr_dirty` → `memwatch_vmstat_nr_dirty`). Which is which
//! is decided by one rule, `procfs::is_event_counter` (docs/METRICS.md states it), so a
//! field a future kernel adds is exported too. Values are the kernel's: pages for the
//! `nr_*` amounts and for most page events, plain counts for the rest.

use std::path::Path;

use super::{
    procfs::{self, FieldFile, FieldLine},
    Collector, ParseErrors,
};
use crate::{
    metrics::{Kind, Rendered, Text},
    parse::parse_kv,
};

/// Parses /proc/vmstat: the fields, and the malformed or repeated lines that were
/// skipped. (The collector parses line by line; this is for tests.)
#[cfg(test)]
pub fn parse(text: &str) -> (Vec<crate::parse::Field<'_>>, Vec<&str>) {
    let mut fields: Vec<crate::parse::Field> = Vec::with_capacity(256);
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(256);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_kv(line) {
            Some(f) if seen.insert(f.name) => fields.push(f),
            _ => errors.push(line),
        }
    }
    (fields, errors)
}

/// The exported name of a vmstat field, and whether it is a counter.
pub fn metric_name(field: &str) -> (String, bool) {
    let counter = procfs::is_event_counter(field);
    let mut name = String::with_capacity(16 + field.len() + 6);
    name.push_str("memwatch_vmstat_");
    procfs::push_sanitized(&mut name, field);
    procfs::lint_fix(&mut name, counter);
    if counter {
        name.push_str("_total");
    }
    (name, counter)
}

/// The rendered series of a vmstat field.
fn rendered(field: &str) -> Rendered {
    let (name, counter) = metric_name(field);
    if counter {
        let help = format!("/proc/vmstat field {field} (an event count).");
        Rendered::new(name, &help, Kind::Counter)
    } else {
        let help = format!("/proc/vmstat field {field} (a current value).");
        Rendered::new(name, &help, Kind::Gauge)
    }
}

/// The vmstat collector.
pub struct Vmstat(FieldFile);

impl Vmstat {
    pub fn new(proc_root: impl AsRef<Path>, errors: ParseErrors) -> Self {
        Self(FieldFile::new(proc_root.as_ref().join("vmstat"), errors))
    }
}

impl Collector for Vmstat {
    fn name(&self) -> &'static str {
        "vmstat"
    }

    fn write_text(&self, out: &mut Text) -> anyhow::Result<()> {
        self.0.write_text(
            out,
            |line| {
                let f = parse_kv(line)?;
                Some(FieldLine {
                    field: f.name,
                    variant: 0,
                    value: f.value,
                })
            },
            |field, _| rendered(field),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    /// Every fixture parses completely and renders as its golden file says
    /// (`UPDATE_GOLDEN=1` rewrites them; review the diff).
    #[test]
    fn fixtures_match_golden() {
        for (path, text) in testutil::fixtures("vmstat") {
            let (fields, errors) = parse(&text);
            assert!(errors.is_empty(), "{path}: {errors:?}");
            assert_eq!(fields.len(), text.lines().count(), "{path}");
            let rendered: String = fields
                .iter()
                .map(|f| {
                    let (name, counter) = metric_name(f.name);
                    let kind = if counter { "counter" } else { "gauge" };
                    format!("{name} {kind} {}\n", f.value)
                })
                .collect();
            testutil::check_golden(&path, &rendered);
        }
    }

    #[test]
    fn host_fixture_values() {
        let text = testutil::fixture("vmstat/linux-6.18-host.txt");
        let (fields, _) = parse(&text);
        let get = |n: &str| fields.iter().find(|f| f.name == n).unwrap().value;
        assert_eq!(get("nr_free_pages"), 1_418_486.0);
        assert_eq!(get("pgfault"), 61_137_212.0);
        assert_eq!(get("nr_unstable"), 0.0);
        assert_eq!(metric_name("pgfault").0, "memwatch_vmstat_pgfault_total");
        assert_eq!(metric_name("nr_dirty").0, "memwatch_vmstat_nr_dirty");
        assert_eq!(
            metric_name("nr_dirtied").0,
            "memwatch_vmstat_nr_dirtied_total"
        );
        assert_eq!(
            metric_name("workingset_nodes").0,
            "memwatch_vmstat_workingset_nodes"
        );
    }

    #[test]
    fn malformed_and_repeated_lines_are_skipped() {
        let (fields, errors) = parse(
            "nr_free_pages 10\ngarbage\npgfault x\npgfault 3\npgfault 4\na b c\n9lives 1\n\
             neg -2\nbig 18446744073709551615\nnon-ascii\u{e9} 1\n",
        );
        let names: Vec<_> = fields.iter().map(|f| (f.name, f.value)).collect();
        assert_eq!(
            names,
            [
                ("nr_free_pages", 10.0),
                ("pgfault", 3.0),
                ("neg", -2.0),
                ("big", u64::MAX as f64)
            ]
        );
        assert_eq!(errors.len(), 6, "{errors:?}");
    }

    /// The collector writes every field, and a repeated or broken line is counted.
    #[test]
    fn collector_writes_and_counts() {
        let dir = testutil::TempDir::new("vmstat");
        dir.write("vmstat", "nr_dirty 5\npgfault 7\nbroken\npgfault 8\n");
        let errors = ParseErrors::default();
        let c = Vmstat::new(dir.path(), errors.clone());
        for _ in 0..2 {
            let mut out = Text::default();
            c.write_text(&mut out).unwrap();
            testutil::check_exposition(out.as_str()).unwrap();
            assert!(out.as_str().contains("\nmemwatch_vmstat_nr_dirty 5\n"));
            assert!(out.as_str().contains("\nmemwatch_vmstat_pgfault_total 7\n"));
        }
        assert_eq!(errors.get(), 4);
    }

    proptest::proptest! {
        /// Whatever the file holds, the collector's output is a valid exposition.
        #[test]
        fn collector_output_always_valid(text in testutil::procish_text()) {
            let dir = testutil::TempDir::new("vmstat-fuzz");
            dir.write("vmstat", &text);
            let c = Vmstat::new(dir.path(), ParseErrors::default());
            let mut out = Text::default();
            c.write_text(&mut out).unwrap();
            if let Err(e) = testutil::check_exposition(out.as_str()) {
                proptest::prop_assert!(false, "{}", e);
            }
        }

        /// Never panics, and every line is either a field or an error.
        #[test]
        fn parse_never_panics(text in testutil::procish_text()) {
            let (fields, errors) = parse(&text);
            let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
            proptest::prop_assert_eq!(fields.len() + errors.len(), lines);
            for f in fields {
                let (name, _) = metric_name(f.name);
                proptest::prop_assert!(testutil::valid_metric_name(&name), "{}", name);
            }
        }
    }
}
