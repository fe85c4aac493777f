//! /proc/zoneinfo: per node and zone, the free pages, watermarks, sizes, protection
//! array and statistics; per node, the node statistics block. The per-CPU `pagesets`
//! blocks are read past.

use super::{parse_int, parse_kv, valid_name, Field};

/// One zone of one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Zone<'a> {
    pub node: &'a str,
    pub zone: &'a str,
    /// `pages free`.
    pub free: Option<f64>,
    /// The indented `key value` lines after `pages free`: `boost`, `min`, `low`,
    /// `high`, `promo`, `spanned`, `present`, `managed`, `cma` (kernels differ).
    pub header: Vec<Field<'a>>,
    /// `protection: (a, b, ...)`, one entry per zone of the node.
    pub protection: Vec<f64>,
    /// The per-zone statistics (`nr_*`, `numa_*`).
    pub stats: Vec<Field<'a>>,
    /// `key: value` lines outside the pagesets: `node_unreclaimable`, `start_pfn`.
    pub scalars: Vec<Field<'a>>,
}

/// The `per-node stats` block, printed inside the node's first populated zone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStats<'a> {
    pub node: &'a str,
    pub stats: Vec<Field<'a>>,
}

/// A parsed /proc/zoneinfo.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed<'a> {
    pub zones: Vec<Zone<'a>>,
    pub nodes: Vec<NodeStats<'a>>,
}

impl Zone<'_> {
    /// A header value (`min`, `low`, `high`, `managed`, ...).
    pub fn get(&self, key: &str) -> Option<f64> {
        self.header.iter().find(|f| f.name == key).map(|f| f.value)
    }

    /// Free pages above the high watermark; negative when kswapd has work to do.
    /// `None` for a zone without managed pages (an empty Movable or Device zone has a
    /// watermark but nothing to allocate).
    pub fn headroom(&self) -> Option<f64> {
        if self.get("managed") == Some(0.0) {
            return None;
        }
        Some(self.free? - self.get("high")?)
    }
}

/// `key:` names inside a `pagesets` block.
const PAGESET_KEYS: &[&str] = &[
    "cpu",
    "count",
    "high",
    "batch",
    "high_min",
    "high_max",
    "vm stats threshold",
];

#[derive(Clone, Copy, PartialEq)]
enum Section {
    /// Before any zone, or in a zone block that is skipped (repeated or malformed
    /// header): lines are ignored until the next `Node` line.
    Skip,
    /// Right after `Node N, zone Z`.
    ZoneStart,
    NodeStats,
    ZoneHeader,
    ZoneStats,
    Pagesets,
}

/// Parses /proc/zoneinfo; returns it and the lines that were skipped as malformed.
pub fn parse(text: &str) -> (Parsed<'_>, Vec<&str>) {
    let mut zi = Parsed::default();
    let mut errors = Vec::new();
    let mut section = Section::Skip;
    // Index of the current node in `zi.nodes` while in a per-node block.
    let mut node_idx = None;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Some(rest) = t.strip_prefix("Node ") {
            section = Section::Skip;
            match parse_zone_header(rest) {
                Some((node, zone))
                    if !zi.zones.iter().any(|z| z.node == node && z.zone == zone) =>
                {
                    zi.zones.push(Zone {
                        node,
                        zone,
                        ..Zone::default()
                    });
                    section = Section::ZoneStart;
                }
                _ => errors.push(line),
            }
            continue;
        }
        if section == Section::Skip {
            // Lines of a skipped zone block, or text before the first zone: only the
            // latter is malformed.
            if zi.zones.is_empty() {
                errors.push(line);
            }
            continue;
        }
        let Some(zone) = zi.zones.last_mut() else {
            // Past Skip there is always a zone; a line without one is malformed.
            errors.push(line);
            continue;
        };
        if t == "per-node stats" {
            if zi.nodes.iter().any(|n| n.node == zone.node) {
                errors.push(line);
                section = Section::Skip;
                continue;
            }
            zi.nodes.push(NodeStats {
                node: zone.node,
                stats: Vec::new(),
            });
            node_idx = Some(zi.nodes.len() - 1);
            section = Section::NodeStats;
            continue;
        }
        if let Some(rest) = t.strip_prefix("pages free") {
            match parse_int(rest.trim()) {
                Some(v) if zone.free.is_none() => zone.free = Some(v),
                _ => errors.push(line),
            }
            section = Section::ZoneHeader;
            continue;
        }
        if t == "pagesets" {
            section = Section::Pagesets;
            continue;
        }
        if let Some(rest) = t.strip_prefix("protection:") {
            match parse_protection(rest) {
                Some(p) if zone.protection.is_empty() => zone.protection = p,
                _ => errors.push(line),
            }
            section = Section::ZoneStats;
            continue;
        }
        if !zone_field(&mut zi, section, node_idx, t) {
            errors.push(line);
        }
    }
    (zi, errors)
}

/// A `key: value` scalar or a `key value` field of the current zone (or of the node's
/// statistics block, in that section) put in its place; `false` when the line is
/// malformed or repeats a name.
fn zone_field<'a>(
    zi: &mut Parsed<'a>,
    section: Section,
    node_idx: Option<usize>,
    t: &'a str,
) -> bool {
    let Some(zone) = zi.zones.last_mut() else {
        return false;
    };
    if let Some((key, value)) = t.split_once(':') {
        let key = key.trim();
        if section == Section::Pagesets && PAGESET_KEYS.contains(&key) {
            return true;
        }
        return match parse_int(value.trim()) {
            Some(value) if valid_name(key) && !has(&zone.scalars, key) => {
                zone.scalars.push(Field { name: key, value });
                true
            }
            _ => false,
        };
    }
    let Some(field) = parse_kv(t) else {
        return false;
    };
    let list = match section {
        Section::NodeStats => match node_idx.and_then(|i| zi.nodes.get_mut(i)) {
            Some(node) => &mut node.stats,
            None => return false,
        },
        // Header keys are bare words; a statistic (older kernels print them before
        // `protection:`) has an underscore.
        Section::ZoneHeader if !field.name.contains('_') => &mut zone.header,
        Section::ZoneStart => return false,
        _ => &mut zone.stats,
    };
    if has(list, field.name) {
        return false;
    }
    list.push(field);
    true
}

/// Whether `list` has a field `name`.
pub fn has(list: &[Field], name: &str) -> bool {
    list.iter().any(|f| f.name == name)
}

/// `0, zone      DMA` → ("0", "DMA").
fn parse_zone_header(rest: &str) -> Option<(&str, &str)> {
    let (node, zone) = rest.split_once(',')?;
    let node = node.trim();
    let zone = zone.trim().strip_prefix("zone")?.trim();
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) || !valid_name(zone) {
        return None;
    }
    Some((node, zone))
}

/// ` (0, 3019, 8267)` → [0, 3019, 8267].
fn parse_protection(rest: &str) -> Option<Vec<f64>> {
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(|v| parse_int(v.trim()))
        .collect::<Option<Vec<_>>>()
        .filter(|v| v.len() <= 16)
}

impl Parsed<'_> {
    /// Free pages, and the sums of the low and high watermarks, over every zone.
    pub fn totals(&self) -> (u64, u64, u64) {
        let sum = |f: &dyn Fn(&Zone) -> Option<f64>| -> u64 {
            // Saturating: a hostile file's huge counts must not overflow the sum.
            self.zones
                .iter()
                .filter_map(f)
                .fold(0u64, |acc, v| acc.saturating_add(v as u64))
        };
        (
            sum(&|z| z.free),
            sum(&|z| z.get("low")),
            sum(&|z| z.get("high")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found in review for the `zoneinfo` fuzz target: free page counts near
    /// u64::MAX in two zones overflowed the sum (a panic with overflow checks on).
    #[test]
    fn totals_saturate() {
        let text = "Node 0, zone DMA\n  pages free 18446744073709551615\n        high 1\n\
                    Node 0, zone Normal\n  pages free 18446744073709551615\n        high 2\n";
        let (zi, errors) = parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(zi.zones.len(), 2);
        assert_eq!(zi.totals(), (u64::MAX, 0, 3));
    }
}
