//! Host context captured at the start of a fork episode: what the kernel is set to
//! do with memory, and how much room it had.

use serde::{Deserialize, Serialize};

use crate::{host::Host, parse};

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

impl HostContext {
    /// Reads the context from the host's procfs and sysfs; a file that can't be read
    /// leaves its fields empty (0, or -1 for overcommit).
    pub fn capture(host: &Host) -> Self {
        let proc = |rel: &str| host.read_proc(rel).unwrap_or_default();
        let thp = |file: &str| {
            let text = host
                .read_sys(format!("kernel/mm/transparent_hugepage/{file}"))
                .unwrap_or_default();
            parse::selected_choice(&text).to_string()
        };
        let meminfo = proc("meminfo");
        let bytes = |field| parse::meminfo::field_bytes(&meminfo, field).unwrap_or(0);
        let zoneinfo = proc("zoneinfo");
        let (free_pages, low_watermark_pages, high_watermark_pages) =
            parse::zoneinfo::parse(&zoneinfo).0.totals();
        Self {
            kernel: host.kernel_release().to_string(),
            thp_enabled: thp("enabled"),
            thp_defrag: thp("defrag"),
            overcommit_memory: parse::parse_sysctl(&proc("sys/vm/overcommit_memory"))
                .map_or(-1, |v| v as i64),
            swap_total_bytes: bytes("SwapTotal"),
            swap_free_bytes: bytes("SwapFree"),
            mem_available_bytes: bytes("MemAvailable"),
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
    fn kernel_versions() {
        let c = HostContext {
            kernel: "6.1.0-26-amd64".into(),
            ..Default::default()
        };
        assert_eq!(c.kernel_version(), (6, 1));
    }

    #[test]
    fn zone_totals() {
        let z = "Node 0, zone   Normal\n  pages free     1000\n        min      10\n        low      20\n        high     30\nNode 0, zone DMA\n  pages free 5\n        low 1\n        high 2\n";
        assert_eq!(crate::parse::zoneinfo::parse(z).0.totals(), (1005, 21, 32));
        assert_eq!(
            crate::parse::meminfo::field_bytes("SwapTotal:  4 kB\n", "SwapTotal"),
            Some(4096)
        );
    }
}
