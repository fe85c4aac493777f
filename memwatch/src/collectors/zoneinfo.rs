//! /proc/zoneinfo: per node and zone, the free pages, watermarks, sizes, protection
//! array and statistics; per node, the node statistics block; and a derived headroom
//! (free minus the high watermark) per zone. Everything is in pages, named `_pages`
//! where the kernel's name does not already say so (docs/METRICS.md lists them).
//!
//! The per-CPU `pagesets` blocks are read past and not exported: their size grows with
//! the CPU count, which would make the label set unbounded.

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{
    procfs::{self, ReadBuf},
    Collector, ParseErrors,
};
use crate::{
    metrics::{Kind, Text},
    parse::{
        zoneinfo::{parse, NodeStats, Parsed, Zone},
        Field,
    },
};

/// The watermarks, exported as one family with a `watermark` label.
const WATERMARKS: &[&str] = &["min", "low", "high", "promo"];

/// The kinds of generic fields, each named its own way.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    Header,
    ZoneStat,
    Scalar,
    NodeStat,
}

/// Names and header lines, built once per field.
#[derive(Default)]
struct Names {
    /// group -> field -> (name, `# HELP`/`# TYPE` lines)
    map: HashMap<Group, HashMap<String, (String, String)>>,
}

impl Names {
    fn get(&mut self, group: Group, field: &str) -> &(String, String) {
        let m = self.map.entry(group).or_default();
        // Lookups borrow; only a field seen for the first time allocates.
        if !m.contains_key(field) {
            m.insert(field.to_string(), name_for(group, field));
        }
        &m[field]
    }
}

/// The exported name and header lines of a field of a group.
fn name_for(group: Group, field: &str) -> (String, String) {
    let mut name = String::from("memwatch_zoneinfo_");
    let counter =
        matches!(group, Group::ZoneStat | Group::NodeStat) && procfs::is_event_counter(field);
    if group == Group::NodeStat {
        name.push_str("node_");
    }
    procfs::push_sanitized(&mut name, field);
    let help = match group {
        Group::Header => {
            name.push_str("_pages");
            format!("/proc/zoneinfo zone field {field}, in pages.")
        }
        Group::ZoneStat => format!("/proc/zoneinfo per-zone statistic {field}."),
        Group::NodeStat => format!("/proc/zoneinfo per-node statistic {field}."),
        Group::Scalar => format!("/proc/zoneinfo zone field {field}."),
    };
    procfs::lint_fix(&mut name, counter);
    let kind = if counter {
        name.push_str("_total");
        Kind::Counter
    } else {
        Kind::Gauge
    };
    let header = Text::header(&name, &help, kind);
    (name, header)
}

/// The names of `lists`' fields, each once, in first-seen order.
fn union<'a>(lists: impl Iterator<Item = &'a [Field<'a>]>) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for list in lists {
        for (i, f) in list.iter().enumerate() {
            // Zones list the same fields in the same order: check the position first.
            if names.get(i) != Some(&f.name) && !names.contains(&f.name) {
                names.push(f.name);
            }
        }
    }
    names
}

/// Picks one list of generic fields out of a zone.
type FieldsOf<'a> = fn(&'a Zone<'a>) -> &'a [Field<'a>];

const FREE: &str = "memwatch_zoneinfo_free_pages";
const WATERMARK: &str = "memwatch_zoneinfo_watermark_pages";
const PROTECTION: &str = "memwatch_zoneinfo_protection_pages";
const HEADROOM: &str = "memwatch_zoneinfo_headroom_pages";

/// Writes a parsed zoneinfo, family by family. `names` keeps the names of generic
/// fields between scrapes. Returns how many families were refused because their name
/// was already taken (only a strange file does that); their samples are dropped.
fn write<'a>(zi: &'a Parsed<'a>, names: &mut Names, out: &mut Text) -> u64 {
    let zones = &zi.zones;
    let labels: Vec<String> = zones
        .iter()
        .map(|z| {
            let mut s = String::with_capacity(32);
            Text::push_labels(&mut s, &[("node", z.node), ("zone", z.zone)]);
            s
        })
        .collect();
    let mut refused = 0;
    let free = (FREE, "/proc/zoneinfo `pages free`: free pages in the zone.");
    write_per_zone(zones, &labels, free, |z| z.free, out, &mut refused);
    write_watermarks(zones, out, &mut refused);
    write_protection(zones, out, &mut refused);
    let headroom = (
        HEADROOM,
        "Free pages above the zone's high watermark (pages free - high); negative when the \
         zone is below it. Absent for zones without managed pages.",
    );
    write_per_zone(
        zones,
        &labels,
        headroom,
        |z| z.headroom(),
        out,
        &mut refused,
    );
    write_generic(zones, &labels, names, out, &mut refused);
    write_node_stats(&zi.nodes, names, out, &mut refused);
    refused
}

/// Starts a gauge family; counts it in `refused` if its name was taken.
fn family(out: &mut Text, name: &str, help: &str, refused: &mut u64) -> bool {
    let ok = out.family(name, help, Kind::Gauge);
    *refused += u64::from(!ok);
    ok
}

/// A family with one value per zone, for the zones that have it.
fn write_per_zone(
    zones: &[Zone],
    labels: &[String],
    (name, help): (&str, &str),
    value: impl Fn(&Zone) -> Option<f64>,
    out: &mut Text,
    refused: &mut u64,
) {
    if zones.iter().any(|z| value(z).is_some()) && family(out, name, help, refused) {
        for (z, l) in zones.iter().zip(labels) {
            if let Some(v) = value(z) {
                out.sample_labels(name, l, v);
            }
        }
    }
}

fn write_watermarks(zones: &[Zone], out: &mut Text, refused: &mut u64) {
    let has_watermark = |z: &Zone| z.header.iter().any(|h| WATERMARKS.contains(&h.name));
    if zones.iter().any(has_watermark)
        && family(
            out,
            WATERMARK,
            "/proc/zoneinfo zone watermarks (min, low, high, promo), in pages.",
            refused,
        )
    {
        for z in zones {
            for h in z.header.iter().filter(|h| WATERMARKS.contains(&h.name)) {
                let l = [("node", z.node), ("zone", z.zone), ("watermark", h.name)];
                out.sample(WATERMARK, &l, h.value);
            }
        }
    }
}

fn write_protection(zones: &[Zone], out: &mut Text, refused: &mut u64) {
    if !(zones.iter().any(|z| !z.protection.is_empty())
        && family(
            out,
            PROTECTION,
            "/proc/zoneinfo protection (lowmem_reserve): pages of this zone kept back from \
             allocations that could also use alloc_zone.",
            refused,
        ))
    {
        return;
    }
    let mut index = String::new();
    for z in zones {
        // The array is indexed by the node's zones, in the order zoneinfo lists them.
        let node_zones: Vec<&str> = zones
            .iter()
            .filter(|y| y.node == z.node)
            .map(|y| y.zone)
            .collect();
        for (i, v) in z.protection.iter().enumerate() {
            let alloc_zone = if let Some(&zone) = node_zones
                .get(i)
                .filter(|_| node_zones.len() == z.protection.len())
            {
                zone
            } else {
                index.clear();
                crate::metrics::push_int(&mut index, i as i64);
                &index
            };
            let l = [
                ("node", z.node),
                ("zone", z.zone),
                ("alloc_zone", alloc_zone),
            ];
            out.sample(PROTECTION, &l, *v);
        }
    }
}

/// Generic fields: one family per field name, one sample per zone that has it.
fn write_generic<'a>(
    zones: &'a [Zone<'a>],
    labels: &[String],
    names: &mut Names,
    out: &mut Text,
    refused: &mut u64,
) {
    let generic: [(Group, FieldsOf<'a>); 3] = [
        (Group::Header, |z| &z.header),
        (Group::ZoneStat, |z| &z.stats),
        (Group::Scalar, |z| &z.scalars),
    ];
    for (group, list) in generic {
        for field in union(zones.iter().map(list)) {
            if group == Group::Header && WATERMARKS.contains(&field) {
                continue;
            }
            let (name, header) = names.get(group, field);
            if !out.family_with_header(name, header) {
                *refused += 1;
                continue;
            }
            for (z, l) in zones.iter().zip(labels) {
                if let Some(f) = list(z).iter().find(|f| f.name == field) {
                    out.sample_labels(name, l, f.value);
                }
            }
        }
    }
}

/// The per-node statistics: one family per field, one sample per node.
fn write_node_stats(nodes: &[NodeStats], names: &mut Names, out: &mut Text, refused: &mut u64) {
    let node_labels: Vec<String> = nodes
        .iter()
        .map(|n| {
            let mut s = String::with_capacity(12);
            Text::push_labels(&mut s, &[("node", n.node)]);
            s
        })
        .collect();
    for field in union(nodes.iter().map(|n| &n.stats[..])) {
        let (name, header) = names.get(Group::NodeStat, field);
        if !out.family_with_header(name, header) {
            *refused += 1;
            continue;
        }
        for (n, l) in nodes.iter().zip(&node_labels) {
            if let Some(f) = n.stats.iter().find(|f| f.name == field) {
                out.sample_labels(name, l, f.value);
            }
        }
    }
}

/// The zoneinfo collector.
pub struct Zoneinfo {
    path: PathBuf,
    errors: ParseErrors,
    state: Mutex<(ReadBuf, Names)>,
}

impl Zoneinfo {
    pub fn new(proc_root: impl AsRef<Path>, errors: ParseErrors) -> Self {
        Self {
            path: proc_root.as_ref().join("zoneinfo"),
            errors,
            state: Mutex::default(),
        }
    }
}

impl Collector for Zoneinfo {
    fn name(&self) -> &'static str {
        "zoneinfo"
    }

    fn write_text(&self, out: &mut Text) -> anyhow::Result<()> {
        let mut state = self.state.lock();
        let (buf, names) = &mut *state;
        buf.read(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let text = buf.text();
        let (zi, errors) = parse(&text);
        for bad in &errors {
            log::debug!("{}: skipping malformed line {bad:?}", self.path.display());
        }
        let refused = write(&zi, names, out);
        self.errors.add(errors.len() as u64 + refused);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collectors::testutil, parse::zoneinfo::has};

    fn rendered(text: &str) -> String {
        let (zi, _) = parse(text);
        let mut out = Text::default();
        write(&zi, &mut Names::default(), &mut out);
        out.into_string()
    }

    /// Every fixture parses without a skipped line and renders (in the exposition
    /// format) as its golden file says (`UPDATE_GOLDEN=1` rewrites them).
    #[test]
    fn fixtures_match_golden() {
        for (path, text) in testutil::fixtures("zoneinfo") {
            let (_, errors) = parse(&text);
            assert!(errors.is_empty(), "{path}: {errors:?}");
            let out = rendered(&text);
            testutil::check_exposition(&out).unwrap();
            testutil::check_golden(&path, &out);
        }
    }

    #[test]
    fn host_fixture_values() {
        let text = testutil::fixture("zoneinfo/linux-6.18-host.txt");
        let (zi, errors) = parse(&text);
        assert!(errors.is_empty());
        let zones: Vec<_> = zi.zones.iter().map(|z| (z.node, z.zone)).collect();
        assert_eq!(
            zones,
            [
                ("0", "DMA"),
                ("0", "DMA32"),
                ("0", "Normal"),
                ("0", "Movable"),
                ("0", "Device")
            ]
        );
        let dma32 = &zi.zones[1];
        assert_eq!(dma32.free, Some(772918.0));
        assert_eq!(dma32.get("high"), Some(7791.0));
        assert_eq!(dma32.headroom(), Some(772918.0 - 7791.0));
        assert_eq!(dma32.protection, [0.0, 0.0, 6784.0, 6784.0, 6784.0]);
        assert_eq!(
            zi.zones[2]
                .stats
                .iter()
                .find(|f| f.name == "numa_hit")
                .unwrap()
                .value,
            56039869.0
        );
        assert_eq!(
            zi.zones[2].scalars,
            [
                Field {
                    name: "node_unreclaimable",
                    value: 0.0
                },
                Field {
                    name: "start_pfn",
                    value: 1048576.0
                }
            ]
        );
        // The per-node block, once for node 0.
        assert_eq!(zi.nodes.len(), 1);
        let dirtied = zi.nodes[0]
            .stats
            .iter()
            .find(|f| f.name == "nr_dirtied")
            .unwrap();
        assert_eq!(dirtied.value, 4322877.0);
        // Empty zones have no per-zone statistics, and no pagesets leak in.
        assert!(zi.zones[3].stats.is_empty() && zi.zones[3].scalars.is_empty());
        assert!(zi
            .zones
            .iter()
            .all(|z| !has(&z.stats, "batch") && !has(&z.header, "count")));

        let text = rendered(&text);
        for want in [
            "memwatch_zoneinfo_free_pages{node=\"0\",zone=\"DMA32\"} 772918\n",
            "memwatch_zoneinfo_watermark_pages{node=\"0\",zone=\"DMA32\",watermark=\"high\"} 7791\n",
            "memwatch_zoneinfo_headroom_pages{node=\"0\",zone=\"DMA32\"} 765127\n",
            "memwatch_zoneinfo_protection_pages{node=\"0\",zone=\"DMA\",alloc_zone=\"Normal\"} 9803\n",
            "memwatch_zoneinfo_managed_pages{node=\"0\",zone=\"Normal\"} ",
            "# TYPE memwatch_zoneinfo_numa_hit_total counter\n",
            "memwatch_zoneinfo_numa_hit_total{node=\"0\",zone=\"Normal\"} 56039869\n",
            "# TYPE memwatch_zoneinfo_nr_free_pages gauge\n",
            "memwatch_zoneinfo_node_nr_dirtied_total{node=\"0\"} 4322877\n",
            "memwatch_zoneinfo_node_nr_dirty{node=\"0\"} ",
            "memwatch_zoneinfo_start_pfn{node=\"0\",zone=\"Normal\"} 1048576\n",
        ] {
            assert!(text.contains(want), "missing {want:?}");
        }
    }

    /// The layout of older kernels (5.x: no promo watermark, no boost line, pagesets
    /// with `vm stats threshold` per CPU; 4.x: statistics before `protection:`), two
    /// NUMA nodes.
    #[test]
    fn older_layouts() {
        let text = "\
Node 0, zone   Normal
  per-node stats
      nr_inactive_anon 10
      nr_dirtied   7
  pages free     100
        min      5
        low      6
        high     7
        spanned  200
        present  200
        managed  150
        protection: (0, 0)
      nr_free_pages 100
      numa_hit     9
  pagesets
    cpu: 0
              count: 1
              high:  2
              batch: 3
  vm stats threshold: 4
  node_unreclaimable:  0
  start_pfn:           1
Node 1, zone   Normal
  per-node stats
      nr_inactive_anon 11
  pages free     50
        min      5
        low      6
        high     60
        scanned  0
        spanned  80
        present  80
        managed  70
      nr_free_pages 50
        protection: (0, 0)
";
        let (zi, errors) = parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(zi.nodes.len(), 2);
        assert_eq!(zi.zones[1].headroom(), Some(-10.0));
        assert_eq!(
            zi.zones[1].stats,
            [Field {
                name: "nr_free_pages",
                value: 50.0
            }]
        );
        assert!(has(&zi.zones[1].header, "scanned"));
        // Two entries in protection but one zone per node: the label is the index.
        let out = rendered(text);
        assert!(out.contains("alloc_zone=\"1\""), "{out}");
        assert!(out.contains("memwatch_zoneinfo_headroom_pages{node=\"1\",zone=\"Normal\"} -10\n"));
        assert!(out.contains("memwatch_zoneinfo_scanned_pages{node=\"1\",zone=\"Normal\"} 0\n"));
        assert!(out.contains("memwatch_zoneinfo_node_nr_inactive_anon{node=\"1\"} 11\n"));
        assert!(!out.contains("batch"), "{out}");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "\
stray line before any zone
Node 0, zone   Normal
  pages free     x
        min      5
        high     7
        protection: (0, y)
      nr_free_pages 100
      nr_free_pages 101
      what is this
  start_pfn: z
Node 0, zone   Normal
  pages free     1
Node x, zone   Bad
Node 1, zone   Ok
  pages free     3
        high     1
";
        let (zi, errors) = parse(text);
        assert_eq!(
            errors,
            [
                "stray line before any zone",
                "  pages free     x",
                "        protection: (0, y)",
                "      nr_free_pages 101",
                "      what is this",
                "  start_pfn: z",
                "Node 0, zone   Normal",
                "Node x, zone   Bad",
            ]
        );
        assert_eq!(zi.zones.len(), 2);
        assert_eq!(zi.zones[0].free, None);
        assert_eq!(zi.zones[0].headroom(), None);
        assert_eq!(zi.zones[1].headroom(), Some(2.0));
        testutil::check_exposition(&rendered(text)).unwrap();
    }

    proptest::proptest! {
        /// Never panics, and whatever the input, the output is a valid exposition.
        #[test]
        fn parse_never_panics(text in testutil::procish_text()) {
            if let Err(e) = testutil::check_exposition(&rendered(&text)) {
                proptest::prop_assert!(false, "{}", e);
            }
        }
    }
}
