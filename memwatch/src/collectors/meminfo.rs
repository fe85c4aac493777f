//! /proc/meminfo: every field, in bytes (`HugePages_*` are page counts).
//!
//! Names follow node_exporter's habit so dashboards carry over:
//! `Active(anon)` becomes `memwatch_meminfo_Active_anon_bytes`.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use prometheus::proto::MetricFamily;

use super::Collector;
use crate::metrics::Family;

/// One parsed line of /proc/meminfo.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The field as the kernel spells it, e.g. `Active(anon)`.
    pub field: String,
    /// The value in bytes, or a plain count when `unit` is `None`.
    pub value: u64,
    /// `Some("kB")` for sizes; `None` for counts such as `HugePages_Total`.
    pub unit: Option<String>,
}

impl Entry {
    /// The exported metric name.
    pub fn metric_name(&self) -> String {
        let mut name = String::from("memwatch_meminfo_");
        for c in self.field.chars() {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => name.push(c),
                ')' => {}
                _ => name.push('_'),
            }
        }
        if self.unit.is_some() {
            name.push_str("_bytes");
        }
        name
    }
}

/// Parses /proc/meminfo. Malformed lines are skipped and returned as errors beside the
/// entries, so one bad line never costs the rest.
pub fn parse(text: &str) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::with_capacity(64);
    let mut errors = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_line(line) {
            Some(e) => entries.push(e),
            None => errors.push(line.to_string()),
        }
    }
    (entries, errors)
}

fn parse_line(line: &str) -> Option<Entry> {
    let (field, rest) = line.split_once(':')?;
    let field = field.trim();
    if field.is_empty() {
        return None;
    }
    let mut words = rest.split_whitespace();
    let number: u64 = words.next()?.parse().ok()?;
    let (value, unit) = match words.next() {
        None => (number, None),
        Some("kB") => (number.checked_mul(1024)?, Some("kB".to_string())),
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some(Entry {
        field: field.to_string(),
        value,
        unit,
    })
}

/// The meminfo collector.
pub struct Meminfo {
    path: PathBuf,
    parse_errors: AtomicU64,
}

impl Meminfo {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            path: proc_root.into().join("meminfo"),
            parse_errors: AtomicU64::new(0),
        }
    }
}

impl Collector for Meminfo {
    fn name(&self) -> &'static str {
        "meminfo"
    }

    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let (entries, errors) = parse(&text);
        for bad in &errors {
            log::debug!("{}: skipping malformed line {bad:?}", self.path.display());
        }
        let total = self
            .parse_errors
            .fetch_add(errors.len() as u64, Ordering::Relaxed)
            + errors.len() as u64;
        for e in entries {
            let help = match e.unit {
                Some(_) => format!("/proc/meminfo field {}, in bytes.", e.field),
                None => format!("/proc/meminfo field {}.", e.field),
            };
            let mut f = Family::gauge(e.metric_name(), help);
            f.sample(&[], e.value as f64);
            f.push_to(out);
        }
        let mut f = Family::counter(
            "memwatch_parse_errors_total",
            "Lines of a kernel file that could not be parsed and were skipped.",
        );
        f.sample(&[("source", "meminfo")], total as f64);
        f.push_to(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixtures() -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/meminfo");
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .map(|p| {
                (
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        assert!(!v.is_empty());
        v
    }

    /// Every fixture parses completely and matches its golden file
    /// (`UPDATE_GOLDEN=1` rewrites them; review the diff).
    #[test]
    fn fixtures_match_golden() {
        for (path, text) in fixtures() {
            let (entries, errors) = parse(&text);
            assert!(errors.is_empty(), "{path}: {errors:?}");
            assert_eq!(entries.len(), text.lines().count(), "{path}");
            let rendered: String = entries
                .iter()
                .map(|e| format!("{} {}\n", e.metric_name(), e.value))
                .collect();
            let golden = path.replace(".txt", ".golden");
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&golden, &rendered).unwrap();
            }
            let want = std::fs::read_to_string(&golden).unwrap_or_default();
            assert_eq!(rendered, want, "{path} differs from {golden}");
        }
    }

    #[test]
    fn host_fixture_values() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/meminfo/linux-6.18-host.txt"),
        )
        .unwrap();
        let (entries, _) = parse(&text);
        let get = |name: &str| entries.iter().find(|e| e.metric_name() == name).unwrap();
        assert_eq!(
            get("memwatch_meminfo_MemTotal_bytes").value,
            24684096 * 1024
        );
        assert_eq!(get("memwatch_meminfo_Active_anon_bytes").value, 1484 * 1024);
        assert_eq!(
            get("memwatch_meminfo_Inactive_file_bytes").value,
            422640 * 1024
        );
        assert_eq!(get("memwatch_meminfo_HugePages_Total").value, 0);
        assert_eq!(get("memwatch_meminfo_HugePages_Total").unit, None);
        assert_eq!(
            get("memwatch_meminfo_VmallocTotal_bytes").value,
            34359738367 * 1024
        );
        assert_eq!(get("memwatch_meminfo_Hugepagesize_bytes").value, 2 << 20);
    }

    #[test]
    fn malformed_lines_are_skipped_not_fatal() {
        let (entries, errors) = parse(
            "MemTotal: 10 kB\ngarbage\nMemFree: x kB\nCached: 5 MB\n: 3\nHugePages_Free: 7\nBuffers: 1 kB extra\nBig: 18446744073709551615 kB\n",
        );
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].value, 10240);
        assert_eq!(entries[1].value, 7);
        assert_eq!(errors.len(), 6);
    }
}
