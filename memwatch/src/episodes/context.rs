//! Host context captured at the start of a fork episode: what the kernel is set to
//! do with memory, and how much room it had.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostContext {
    /// Kernel release, e.g. `6.1.0-26-amd64`.
    pub kernel: String,
    /// THP mode (`always`, `madvise`, `never`) and defrag setting.
    pub thp_enabled: String,
    pub thp_defrag: String,
    /// vm.overcommit_memory (0 heuristic, 1 always, 2 never).
    pub overcommit_memory: i64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
    pub mem_available_bytes: u64,
    /// Free pages over all zones, and the sum of their low and high watermarks.
    pub free_pages: u64,
    pub low_watermark_pages: u64,
    pub high_watermark_pages: u64,
}

/// The bracketed choice in a sysfs list such as `always [madvise] never`.
pub fn bracketed(s: &str) -> String {
    s.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or("")
        .to_string()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn meminfo_bytes(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Sums `pages free`, `low` and `high` over every zone of /proc/zoneinfo.
pub fn zone_totals(text: &str) -> (u64, u64, u64) {
    let (mut free, mut low, mut high) = (0, 0, 0);
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("pages"), Some("free"), Some(n)) => free += n.parse::<u64>().unwrap_or(0),
            (Some("low"), Some(n), None) => low += n.parse::<u64>().unwrap_or(0),
            (Some("high"), Some(n), None) => high += n.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    (free, low, high)
}

impl HostContext {
    pub fn capture() -> Self {
        let meminfo = read("/proc/meminfo");
        let (free_pages, low_watermark_pages, high_watermark_pages) =
            zone_totals(&read("/proc/zoneinfo"));
        Self {
            kernel: crate::kernel_release(),
            thp_enabled: bracketed(&read("/sys/kernel/mm/transparent_hugepage/enabled")),
            thp_defrag: bracketed(&read("/sys/kernel/mm/transparent_hugepage/defrag")),
            overcommit_memory: read("/proc/sys/vm/overcommit_memory")
                .trim()
                .parse()
                .unwrap_or(-1),
            swap_total_bytes: meminfo_bytes(&meminfo, "SwapTotal"),
            swap_free_bytes: meminfo_bytes(&meminfo, "SwapFree"),
            mem_available_bytes: meminfo_bytes(&meminfo, "MemAvailable"),
            free_pages,
            low_watermark_pages,
            high_watermark_pages,
        }
    }

    /// (major, minor) of the kernel release.
    pub fn kernel_version(&self) -> (u32, u32) {
        let mut it = self
            .kernel
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse().ok());
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(bracketed("always [madvise] never\n"), "madvise");
        assert_eq!(bracketed("[always] defer"), "always");
        assert_eq!(bracketed(""), "");
        let z = "Node 0, zone   Normal\n  pages free     1000\n        min      10\n        low      20\n        high     30\nNode 0, zone DMA\n  pages free 5\n        low 1\n        high 2\n";
        assert_eq!(zone_totals(z), (1005, 21, 32));
        let c = HostContext {
            kernel: "6.1.0-26-amd64".into(),
            ..Default::default()
        };
        assert_eq!(c.kernel_version(), (6, 1));
        assert_eq!(meminfo_bytes("SwapTotal:  4 kB\n", "SwapTotal"), 4096);
    }
}
