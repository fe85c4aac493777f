//! The /proc and /sys collectors on this host, against the files themselves read around
//! the scrape, and a watched process that knows how much memory it wrote.
//!
//! These run the agent with the eBPF collector off, so they need no privileges; the
//! promtool test runs the full default agent when root.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{confirm_in_rounds, Agent, Bound, Metrics, Reading, TempFile};

/// A config with only the kernel-accounting collectors (no eBPF, so no privileges).
fn proc_only_config(extra: &str) -> TempFile {
    TempFile::new(
        &format!("proc-only-{}.toml", extra.len()),
        &format!("[collectors]\nbpf = false\n{extra}"),
    )
}

fn start_proc_only(extra_toml: &str, args: &[&str]) -> (Agent, TempFile) {
    let cfg = proc_only_config(extra_toml);
    let mut all = vec!["--config", cfg.0.to_str().unwrap()];
    all.extend(args);
    (Agent::start(&all), cfg)
}

/// `name value` lines of a /proc file.
fn read_kv(path: &str) -> BTreeMap<String, f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// The family whose help names `what` exactly (`"/proc/vmstat field pgfault "` style
/// prefixes), with its TYPE.
fn family_for(m: &Metrics, help_prefix: &str) -> Option<(String, String)> {
    let name = m.name_by_help(help_prefix)?;
    let ty = m
        .text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))?
        .to_string();
    Some((name, ty))
}

/// Checks a scraped counter against the file read before and after the scrape: it lies
/// between the two reads, with no slack (the kernel's event counts only grow, whoever
/// reads them).
fn assert_rising(what: &str, v: f64, before: f64, after: f64) {
    assert!(
        Reading::new(Bound::Rising, v, before, after).holds(),
        "{what} = {v}, the kernel said {before} then {after} (a counter)"
    );
}

/// The NUMA allocation counts (/proc/vmstat, and per zone in /proc/zoneinfo). The
/// kernel keeps them per CPU and folds them into the zone's total without a lock: since
/// 5.14 on every read (fold_vm_zone_numa_events takes each CPU's part with xchg into a
/// local sum, then adds the sum), so a reader that comes in between sees the total
/// short of what an earlier reader saw; on 5.10 the vmstat worker folds each CPU's part
/// the same way, and zoneinfo adds the parts not yet folded to the total, so a fold
/// under way shows there too. They grow, but only a round that no other reader's fold
/// overlapped bounds them: they are confirmed in rounds, as counters.
const NUMA_EVENTS: &[&str] = &[
    "numa_hit",
    "numa_miss",
    "numa_foreign",
    "numa_interleave",
    "numa_local",
    "numa_other",
];

/// Every /proc/vmstat field is exported, typed by the documented rule, and agrees with
/// /proc/vmstat read around a scrape: counters between the reads in every round, gauges
/// (and the NUMA counts) in a round where they stood still or moved one way.
#[test]
fn vmstat_matches_proc() {
    let (agent, _cfg) = start_proc_only("", &[]);
    // Field -> (family, counter), from the first scrape.
    let mut families: BTreeMap<String, (String, bool)> = BTreeMap::new();
    confirm_in_rounds("vmstat", |round| {
        let before = read_kv("/proc/vmstat");
        let m = agent.scrape();
        let after = read_kv("/proc/vmstat");
        if round == 0 {
            assert!(before.len() > 100, "{} vmstat fields", before.len());
            let helps = m.helps();
            let exported = helps
                .values()
                .filter(|h| h.starts_with("/proc/vmstat field "))
                .count();
            assert_eq!(exported, before.len(), "one family per vmstat field");
            for field in before.keys() {
                let (name, ty) = family_for(&m, &format!("/proc/vmstat field {field} "))
                    .unwrap_or_else(|| panic!("no family for vmstat field {field}"));
                let counter = ty == "counter";
                assert_eq!(counter, name.ends_with("_total"), "{name} is a {ty}");
                // The rule: nr_* amounts are gauges, events are counters.
                if field.starts_with("pg") || field.starts_with("thp_") || field == "oom_kill" {
                    assert!(counter, "{field} should be a counter");
                }
                if ["nr_free_pages", "nr_dirty", "nr_writeback", "nr_mapped"]
                    .contains(&field.as_str())
                {
                    assert!(!counter, "{field} should be a gauge");
                }
                families.insert(field.clone(), (name, counter));
            }
            assert_eq!(
                m.get(
                    "memwatch_scrape_collector_success",
                    &[("collector", "vmstat")]
                ),
                Some(1.0)
            );
            assert_eq!(
                m.get("memwatch_parse_errors_total", &[("source", "vmstat")]),
                Some(0.0)
            );
        }
        let mut readings = BTreeMap::new();
        for (field, (name, counter)) in &families {
            let v = m
                .get(name, &[])
                .unwrap_or_else(|| panic!("{name} missing from the scrape"));
            let (b, a) = (before[field], after[field]);
            if NUMA_EVENTS.contains(&field.as_str()) {
                readings.insert(field.clone(), Reading::new(Bound::Rising, v, b, a));
            } else if *counter {
                assert_rising(name, v, b, a);
            } else {
                readings.insert(field.clone(), Reading::new(Bound::Between, v, b, a));
            }
        }
        readings
    });
    assert!(agent.stop().success());
}

/// One zone of /proc/zoneinfo, read by the test itself.
#[derive(Debug, Default, Clone)]
struct Zone {
    free: f64,
    fields: BTreeMap<String, f64>,
    protection: Vec<f64>,
}

/// (node, zone) -> zone, and node -> per-node stats.
type ZoneMap = BTreeMap<(String, String), Zone>;
type NodeMap = BTreeMap<String, BTreeMap<String, f64>>;

/// The (node, zone) pairs in file order.
fn zone_order() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/zoneinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("Node "))
        .filter_map(|r| r.split_once(", zone"))
        .map(|(n, z)| (n.trim().to_string(), z.trim().to_string()))
        .collect()
}

fn read_zoneinfo() -> (ZoneMap, NodeMap) {
    let text = std::fs::read_to_string("/proc/zoneinfo").unwrap();
    let mut zones = ZoneMap::new();
    let mut nodes = NodeMap::new();
    let mut key = None;
    let mut in_node_stats = false;
    let mut in_pagesets = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Node ") {
            let (n, z) = rest.split_once(", zone").unwrap();
            key = Some((n.trim().to_string(), z.trim().to_string()));
            zones.insert(key.clone().unwrap(), Zone::default());
            in_node_stats = false;
            in_pagesets = false;
            continue;
        }
        let k = key.clone().unwrap();
        if t == "per-node stats" {
            in_node_stats = true;
            continue;
        }
        if t == "pagesets" {
            in_pagesets = true;
            continue;
        }
        if in_pagesets {
            continue;
        }
        let zone = zones.get_mut(&k).unwrap();
        if let Some(v) = t.strip_prefix("pages free") {
            zone.free = v.trim().parse().unwrap();
            in_node_stats = false;
        } else if let Some(p) = t.strip_prefix("protection:") {
            zone.protection = p
                .trim()
                .trim_matches(|c| c == '(' || c == ')')
                .split(',')
                .map(|v| v.trim().parse().unwrap())
                .collect();
        } else {
            let mut w = t.split_whitespace();
            let (Some(name), Some(v)) = (w.next(), w.next()) else {
                continue;
            };
            let Ok(v) = v.parse::<f64>() else { continue };
            if in_node_stats {
                nodes.entry(k.0.clone()).or_default().insert(name.into(), v);
            } else {
                zone.fields.insert(name.into(), v);
            }
        }
    }
    (zones, nodes)
}

/// Free pages, watermarks, sizes, protection, statistics and headroom per zone, and the
/// per-node block, agree with /proc/zoneinfo read around a scrape: sizes and protection
/// exactly, counters between the reads in every round, the rest (free pages, the
/// watermarks and their boost, the `nr_*` amounts, the NUMA counts) in a round where
/// each stood still or moved one way.
#[test]
fn zoneinfo_matches_proc() {
    let (agent, _cfg) = start_proc_only("", &[]);
    let order = zone_order();
    // Statistic -> (family, counter), per-zone and per-node, from the first scrape.
    let mut zone_families: Families = BTreeMap::new();
    let mut node_families: Families = BTreeMap::new();
    confirm_in_rounds("zoneinfo", |round| {
        let (zb, nb) = read_zoneinfo();
        let m = agent.scrape();
        let (za, na) = read_zoneinfo();
        if round == 0 {
            assert!(!zb.is_empty());
            assert_eq!(
                m.get("memwatch_parse_errors_total", &[("source", "zoneinfo")]),
                Some(0.0)
            );
        }
        let mut readings = BTreeMap::new();
        for ((node, zone), b) in &zb {
            let z = ZoneRead {
                m: &m,
                node,
                zone,
                b,
                a: &za[&(node.clone(), zone.clone())],
            };
            let free = z.free_and_watermarks(&mut readings);
            z.check_headroom(free);
            if round == 0 {
                z.check_sizes();
                z.check_protection(&order);
            }
            z.statistics(&mut zone_families, &mut readings);
        }
        // The per-node block.
        for (node, stats) in &nb {
            node_statistics(
                &m,
                node,
                stats,
                &na[node],
                &mut node_families,
                &mut readings,
            );
        }
        readings
    });
    assert!(agent.stop().success());
}

/// Statistic -> (family, counter), as the first scrape showed it.
type Families = BTreeMap<String, (String, bool)>;

/// One zone as the scrape `m` shows it, with the reads of /proc/zoneinfo before (`b`)
/// and after (`a`) it.
struct ZoneRead<'a> {
    m: &'a Metrics,
    node: &'a str,
    zone: &'a str,
    b: &'a Zone,
    a: &'a Zone,
}

impl ZoneRead<'_> {
    fn labels(&self) -> [(&str, &str); 2] {
        [("node", self.node), ("zone", self.zone)]
    }

    fn key(&self, f: &str) -> String {
        format!("{}/{} {f}", self.node, self.zone)
    }

    /// Adds the readings of free pages, the boost and the watermarks; returns memwatch's
    /// free pages.
    fn free_and_watermarks(&self, readings: &mut BTreeMap<String, Reading>) -> f64 {
        let (m, node, zone, b, a) = (self.m, self.node, self.zone, self.b, self.a);
        let l = self.labels();
        let free = m
            .get("memwatch_zoneinfo_free_pages", &l)
            .unwrap_or_else(|| panic!("no free pages for {node}/{zone}"));
        readings.insert(
            self.key("pages free"),
            Reading::new(Bound::Between, free, b.free, a.free),
        );
        // zoneinfo prints each watermark as the zone's own mark plus its
        // watermark_boost, which an allocation raises when it steals a pageblock of
        // another migratetype and kswapd sets back to 0: gauges. Where the boost is
        // printed too (memwatch exports it on its own), mark minus boost is the mark
        // computed from min_free_kbytes and watermark_scale_factor, which stays put:
        // equal to both reads (in a round: the kernel reads the boost once per line).
        let boost = b.fields.get("boost").map(|bb| {
            let v = m
                .get("memwatch_zoneinfo_boost_pages", &l)
                .unwrap_or_else(|| panic!("no boost for {node}/{zone}"));
            (v, *bb, a.fields["boost"])
        });
        if let Some((v, bb, ab)) = boost {
            readings.insert(self.key("boost"), Reading::new(Bound::Between, v, bb, ab));
        }
        for wm in ["min", "low", "high", "promo"] {
            let Some(bv) = b.fields.get(wm) else { continue };
            let lw = [("node", node), ("zone", zone), ("watermark", wm)];
            let v = m
                .get("memwatch_zoneinfo_watermark_pages", &lw)
                .unwrap_or_else(|| panic!("no {wm} watermark for {node}/{zone}"));
            let av = a.fields[wm];
            readings.insert(self.key(wm), Reading::new(Bound::Between, v, *bv, av));
            if let Some((vb, bb, ab)) = boost {
                readings.insert(
                    self.key(&format!("{wm} - boost")),
                    Reading::new(Bound::Exact, v - vb, bv - bb, av - ab),
                );
            }
        }
        free
    }

    /// Headroom is free minus high, from the same read of the file (none without
    /// managed pages).
    fn check_headroom(&self, free: f64) {
        let (node, zone) = (self.node, self.zone);
        let managed = self.b.fields.get("managed").copied().unwrap_or(1.0);
        let headroom = self
            .m
            .get("memwatch_zoneinfo_headroom_pages", &self.labels());
        if managed > 0.0 {
            let high = self
                .m
                .get(
                    "memwatch_zoneinfo_watermark_pages",
                    &[("node", node), ("zone", zone), ("watermark", "high")],
                )
                .unwrap();
            assert_eq!(headroom, Some(free - high), "{node}/{zone}");
        } else {
            assert_eq!(headroom, None, "{node}/{zone} has no managed pages");
        }
    }

    /// Sizes fixed at boot (no memory hotplug or balloon here): exactly.
    fn check_sizes(&self) {
        let (node, zone) = (self.node, self.zone);
        for f in ["spanned", "present", "managed", "cma"] {
            let Some(bv) = self.b.fields.get(f) else {
                continue;
            };
            let v = self
                .m
                .get(&format!("memwatch_zoneinfo_{f}_pages"), &self.labels())
                .unwrap_or_else(|| panic!("no {f} for {node}/{zone}"));
            let av = self.a.fields[f];
            assert!(
                Reading::new(Bound::Exact, v, *bv, av).holds(),
                "{node}/{zone} {f} = {v}, the kernel said {bv} then {av}"
            );
        }
    }

    /// The protection array (lowmem_reserve, set from the zone sizes and
    /// lowmem_reserve_ratio), labelled by the zone each entry is for (the node's zones
    /// in file `order`): exactly.
    fn check_protection(&self, order: &[(String, String)]) {
        let (node, zone) = (self.node, self.zone);
        let node_zones: Vec<&str> = order
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, z)| z.as_str())
            .collect();
        for (i, p) in self.b.protection.iter().enumerate() {
            let lp = [
                ("node", node),
                ("zone", zone),
                ("alloc_zone", node_zones[i]),
            ];
            let v = self
                .m
                .get("memwatch_zoneinfo_protection_pages", &lp)
                .unwrap();
            let av = self.a.protection[i];
            assert!(
                Reading::new(Bound::Exact, v, *p, av).holds(),
                "{node}/{zone} protection {lp:?} = {v}, the kernel said {p} then {av}"
            );
        }
    }

    /// Per-zone statistics: every one; counters between the reads.
    fn statistics(&self, families: &mut Families, readings: &mut BTreeMap<String, Reading>) {
        let (node, zone) = (self.node, self.zone);
        let l = self.labels();
        for (f, bv) in &self.b.fields {
            if !(f.starts_with("nr_") || f.starts_with("numa_")) {
                continue;
            }
            let (name, counter) = families.entry(f.clone()).or_insert_with(|| {
                let (name, ty) =
                    family_for(self.m, &format!("/proc/zoneinfo per-zone statistic {f}."))
                        .unwrap_or_else(|| panic!("no family for zone stat {f}"));
                assert_eq!(ty == "counter", f.starts_with("numa_"), "{name} is a {ty}");
                (name, ty == "counter")
            });
            let v = self
                .m
                .get(name, &l)
                .unwrap_or_else(|| panic!("no {name} for {node}/{zone}"));
            let av = self.a.fields[f];
            let s = Statistic {
                stat: f,
                counter: *counter,
                what: format!("{name} {l:?}"),
            };
            s.check(readings, self.key(f), v, *bv, av);
        }
    }
}

/// The statistics of the per-node block of `node`: `stats` before the scrape `m`,
/// `after` it.
fn node_statistics(
    m: &Metrics,
    node: &str,
    stats: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    families: &mut Families,
    readings: &mut BTreeMap<String, Reading>,
) {
    for (f, bv) in stats {
        let (name, counter) = families.entry(f.clone()).or_insert_with(|| {
            let (name, ty) = family_for(m, &format!("/proc/zoneinfo per-node statistic {f}."))
                .unwrap_or_else(|| panic!("no family for node stat {f}"));
            (name, ty == "counter")
        });
        let v = m
            .get(name, &[("node", node)])
            .unwrap_or_else(|| panic!("no {name} for node {node}"));
        let av = after[f];
        let s = Statistic {
            stat: f,
            counter: *counter,
            what: format!("{name} node {node}"),
        };
        s.check(readings, format!("node {node} {f}"), v, *bv, av);
    }
}

/// A zoneinfo statistic (per zone or per node) and the family memwatch exports it as.
struct Statistic<'a> {
    /// Its name in /proc/zoneinfo.
    stat: &'a str,
    /// The family is a counter.
    counter: bool,
    /// The series, for a failed check.
    what: String,
}

impl Statistic<'_> {
    /// memwatch's `v` against the reads `bv` and `av`: NUMA events as a reading that
    /// rises, other counters checked to rise at once, amounts as a reading between the
    /// reads; readings go to `readings` under `key`.
    fn check(
        &self,
        readings: &mut BTreeMap<String, Reading>,
        key: String,
        v: f64,
        bv: f64,
        av: f64,
    ) {
        if NUMA_EVENTS.contains(&self.stat) {
            readings.insert(key, Reading::new(Bound::Rising, v, bv, av));
        } else if self.counter {
            assert_rising(&self.what, v, bv, av);
        } else {
            readings.insert(key, Reading::new(Bound::Between, v, bv, av));
        }
    }
}

/// The knobs, converted to base units, equal /proc/sys/vm and the THP settings.
#[test]
fn knobs_match_proc_sys() {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let before: Vec<Option<String>> = KNOBS
        .iter()
        .map(|(f, _, _)| read(&format!("/proc/sys/vm/{f}")))
        .collect();
    let (agent, _cfg) = start_proc_only("", &[]);
    let m = agent.scrape();
    for ((file, name, scale), b) in KNOBS.iter().zip(&before) {
        match b {
            Some(text) => {
                let raw: f64 = text.trim().parse().unwrap();
                assert_eq!(m.get(name, &[]), Some(raw * scale), "{file}");
            }
            None => assert_eq!(m.get(name, &[]), None, "{file} is absent"),
        }
    }
    for (file, name) in [
        ("enabled", "memwatch_thp_enabled"),
        ("defrag", "memwatch_thp_defrag"),
    ] {
        let Some(text) = read(&format!("/sys/kernel/mm/transparent_hugepage/{file}")) else {
            assert!(m.family(name).is_empty());
            continue;
        };
        let samples = m.family(name);
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(samples.len(), words.len(), "{name}: one sample per mode");
        for w in words {
            let (mode, on) = match w.strip_prefix('[') {
                Some(r) => (r.trim_end_matches(']'), 1.0),
                None => (w, 0.0),
            };
            assert_eq!(m.get(name, &[("mode", mode)]), Some(on), "{name} {mode}");
        }
    }
    assert!(agent.stop().success());
}

const KNOBS: &[(&str, &str, f64)] = &[
    ("dirty_ratio", "memwatch_sysctl_vm_dirty_ratio", 0.01),
    (
        "dirty_background_ratio",
        "memwatch_sysctl_vm_dirty_background_ratio",
        0.01,
    ),
    ("dirty_bytes", "memwatch_sysctl_vm_dirty_bytes", 1.0),
    (
        "dirty_background_bytes",
        "memwatch_sysctl_vm_dirty_background_bytes",
        1.0,
    ),
    (
        "dirty_expire_centisecs",
        "memwatch_sysctl_vm_dirty_expire_seconds",
        0.01,
    ),
    (
        "dirty_writeback_centisecs",
        "memwatch_sysctl_vm_dirty_writeback_seconds",
        0.01,
    ),
    ("swappiness", "memwatch_sysctl_vm_swappiness", 1.0),
    (
        "min_free_kbytes",
        "memwatch_sysctl_vm_min_free_bytes",
        1024.0,
    ),
    (
        "watermark_scale_factor",
        "memwatch_sysctl_vm_watermark_scale_factor",
        1.0,
    ),
    (
        "overcommit_memory",
        "memwatch_sysctl_vm_overcommit_memory",
        1.0,
    ),
];

/// PSI some/full totals and averages agree with /proc/pressure where the kernel has
/// PSI; where it does not, the families are absent and the collector still succeeds.
#[test]
fn pressure_matches_proc_or_is_absent() {
    let read = |r: &str| std::fs::read_to_string(format!("/proc/pressure/{r}")).ok();
    let before: Vec<_> = ["memory", "io"].iter().map(|r| read(r)).collect();
    let (agent, _cfg) = start_proc_only("", &[]);
    let m = agent.scrape();
    let after: Vec<_> = ["memory", "io"].iter().map(|r| read(r)).collect();
    assert_eq!(
        m.get(
            "memwatch_scrape_collector_success",
            &[("collector", "pressure")]
        ),
        Some(1.0)
    );
    let total = |text: &str, kind: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(kind)).unwrap();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("total="))
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1e6
    };
    for (i, resource) in ["memory", "io"].iter().enumerate() {
        let (Some(b), Some(a)) = (&before[i], &after[i]) else {
            println!("no PSI for {resource} here: checking it is absent");
            assert!(m
                .get(
                    "memwatch_pressure_stall_seconds_total",
                    &[("resource", resource)]
                )
                .is_none());
            continue;
        };
        for kind in ["some", "full"] {
            let l = [("resource", *resource), ("kind", kind)];
            let v = m.get("memwatch_pressure_stall_seconds_total", &l).unwrap();
            assert_rising("total", v, total(b, kind), total(a, kind));
            for window in ["10s", "60s", "300s"] {
                let l = [("resource", *resource), ("kind", kind), ("window", window)];
                let r = m.get("memwatch_pressure_stall_ratio", &l).unwrap();
                assert!((0.0..=1.0).contains(&r), "{l:?} = {r}");
            }
        }
    }
    assert!(agent.stop().success());
}

/// A procfs without /proc/pressure (as on a kernel without PSI): the pressure metrics
/// are absent, the collector succeeds, nothing is counted as a parse error, and the
/// other collectors still report.
#[test]
fn pressure_absent_is_not_an_error() {
    let root = std::env::temp_dir().join(format!("memwatch-test-{}-procfs", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sys")).unwrap();
    for f in ["meminfo", "vmstat", "zoneinfo"] {
        std::os::unix::fs::symlink(Path::new("/proc").join(f), root.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("/proc/sys/vm", root.join("sys/vm")).unwrap();
    let (agent, _cfg) = start_proc_only(
        "",
        &["--path.procfs", root.to_str().unwrap(), "--log.level=debug"],
    );
    let m = agent.scrape();
    let log = agent.log_text();
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(&root);
    assert!(m.family("memwatch_pressure_stall_seconds_total").is_empty());
    assert!(m.family("memwatch_pressure_stall_ratio").is_empty());
    for c in ["pressure", "meminfo", "vmstat", "zoneinfo", "knobs"] {
        assert_eq!(
            m.get("memwatch_scrape_collector_success", &[("collector", c)]),
            Some(1.0),
            "{c}"
        );
    }
    assert_eq!(
        m.get("memwatch_parse_errors_total", &[("source", "pressure")]),
        Some(0.0)
    );
    assert!(m.get("memwatch_vmstat_pgfault_total", &[]).is_some());
    assert!(log.contains("no pressure stall information"), "{log}");
}

/// What the workload child prints once its memory is written.
const READY: &str = "MEMWATCH-WORKLOAD-READY";

/// A child that maps and writes `mib` MiB of anonymous memory, names itself `comm`,
/// says so and waits for its stdin to close. It is this test binary, re-run on
/// the `workload_child` test with MEMWATCH_TEST_WORKLOAD set.
struct Workload {
    child: Child,
}

impl Workload {
    fn start(comm: &str, mib: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "workload_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MEMWATCH_TEST_WORKLOAD", format!("{comm}:{mib}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A thread reads its stdout to the end (so the child never writes into a
        // closed pipe) and says when the ready line came.
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                // libtest may print "test workload_child ... " before it on the line.
                if line.trim_end().ends_with(READY) {
                    let _ = tx.send(());
                }
            }
        });
        let w = Self { child };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("workload {comm} did not get ready");
        }
        w
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Closing stdin ends it; kill by PID if it does not go.
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test on its own: the body of the workload child (see `Workload`).
#[test]
fn workload_child() {
    let Ok(spec) = std::env::var("MEMWATCH_TEST_WORKLOAD") else {
        return;
    };
    let (comm, mib) = spec.split_once(':').unwrap();
    let mib: usize = mib.parse().unwrap();
    // The process's name is its main thread's: /proc/self/comm names the leader
    // (prctl(PR_SET_NAME) here would rename only this test thread).
    std::fs::write("/proc/self/comm", comm).unwrap();
    let len = mib << 20;
    // SAFETY: a fresh private anonymous mapping, used only here.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // Small pages, so the fault count is one per page.
    // SAFETY: advice on the mapping made above.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    for off in (0..len).step_by(4096) {
        // SAFETY: inside the mapping; volatile so the writes are not optimised away.
        unsafe { std::ptr::write_volatile((p as *mut u8).add(off), 1) };
    }
    println!("{READY}");
    std::io::stdout().flush().unwrap();
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
}

/// /proc/PID/smaps_rollup as field -> bytes.
fn read_rollup(pid: u32) -> BTreeMap<String, f64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let n: f64 = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), n * 1024.0))
        })
        .collect()
}

/// (minflt, majflt) from /proc/PID/stat.
fn read_faults(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (rest[7].parse().unwrap(), rest[9].parse().unwrap())
}

/// smaps_rollup fields that the child's own page tables alone decide: it is idle, never
/// forks (so each of its anonymous pages is mapped once) and maps no shared memory, so
/// other processes mapping or unmapping the same file pages (libc, this test binary)
/// do not move them. They must equal both reads in a round; rounds, because the
/// kernel's own work on the child's pages (reclaim, migration for compaction, khugepaged)
/// can still move them. The rest (Pss, Pss_Dirty, Pss_File, Pss_Shmem, Shared_*,
/// Private_Clean, Referenced, Locked, which is a PSS, SwapPss, *_Hugetlb,
/// *PmdMapped) depend on how many processes map each page, or on others' accesses:
/// between the two reads in a round where they stood still or moved one way.
const CHILD_ONLY: &[&str] = &[
    "Rss",
    "Anonymous",
    "Private_Dirty",
    "Pss_Anon",
    "AnonHugePages",
    "LazyFree",
    "KSM",
    "Swap",
];

/// A process picked by its comm pattern is exported with pid and comm labels, its
/// smaps_rollup fields agree with /proc/PID/smaps_rollup read around a scrape (see
/// `CHILD_ONLY`), its fault counts lie between the reads, and the 64 MiB it wrote show
/// up as private dirty anonymous memory and as minor faults.
#[test]
fn watched_process_matches_smaps_rollup() {
    const MIB: usize = 64;
    let comm = format!("mwwl{}", std::process::id() % 1_000_000);
    let w = Workload::start(&comm, MIB);
    let pid = w.pid();
    let pid_s = pid.to_string();
    // A pattern, to check the glob too.
    let (agent, _cfg) = start_proc_only(&format!("[processes]\ncomm = [\"{comm}*\"]\n"), &[]);
    let l = [("pid", pid_s.as_str()), ("comm", comm.as_str())];
    // Field -> family, from the first scrape.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let confirmed = confirm_in_rounds("smaps_rollup", |round| {
        let before = read_rollup(pid);
        let (minb, majb) = read_faults(pid);
        let m = agent.scrape();
        let after = read_rollup(pid);
        let (mina, maja) = read_faults(pid);
        if round == 0 {
            assert!(
                m.get("memwatch_watched_processes", &[]).unwrap() >= 1.0,
                "{}",
                m.text
            );
            for field in before.keys() {
                let (name, _) = family_for(
                    &m,
                    &format!("/proc/PID/smaps_rollup field {field} of a watched process"),
                )
                .unwrap_or_else(|| panic!("no family for smaps_rollup field {field}"));
                names.insert(field.clone(), name);
            }
        }
        // The child's own counts of its faults: between the reads, every round.
        let minflt = m.get("memwatch_process_minor_faults_total", &l).unwrap();
        let majflt = m.get("memwatch_process_major_faults_total", &l).unwrap();
        assert_rising("minflt", minflt, minb, mina);
        assert_rising("majflt", majflt, majb, maja);
        assert!(
            minflt >= (MIB << 20) as f64 / 4096.0,
            "{minflt} minor faults for {MIB} MiB of 4 KiB pages"
        );
        names
            .iter()
            .map(|(field, name)| {
                let v = m
                    .get(name, &l)
                    .unwrap_or_else(|| panic!("{name} missing for {l:?}"));
                let bound = if CHILD_ONLY.contains(&field.as_str()) {
                    Bound::Exact
                } else {
                    Bound::Between
                };
                (
                    field.clone(),
                    Reading::new(bound, v, before[field], after[field]),
                )
            })
            .collect()
    });
    // Memwatch's values in the rounds that confirmed them.
    let bytes = (MIB << 20) as f64;
    for field in ["Private_Dirty", "Pss_Anon", "Anonymous", "Rss"] {
        let v = confirmed[field].value;
        assert!(v >= bytes, "{field} {v} < {bytes}");
    }
    assert!(agent.stop().success());
    drop(w);
    // Gone: the process is no longer reported (unless its pid was taken again).
    let (agent, _cfg) = start_proc_only(&format!("[processes]\ncomm = []\npids = [{pid}]\n"), &[]);
    let m = agent.scrape();
    if Path::new(&format!("/proc/{pid}")).exists() {
        println!("pid {pid} was taken again by another process: not checking it is gone");
    } else {
        assert_eq!(m.get("memwatch_watched_processes", &[]), Some(0.0));
    }
    assert!(agent.stop().success());
}

/// `promtool check metrics` (Debian's prometheus package) finds nothing to complain
/// about in a live scrape: with every default collector as root, without eBPF otherwise.
#[test]
fn promtool_check_metrics_is_clean() {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(promtool) = promtool else {
        println!(
            "SKIP promtool_check_metrics_is_clean: no promtool; install Debian's \
             `prometheus` package (cargo xtask setup does)"
        );
        return;
    };
    // A watched process, so the per-process families are in the scrape too.
    let w = Workload::start(&format!("mwpt{}", std::process::id() % 1_000_000), 1);
    let pid = w.pid();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        println!("promtool_check_metrics_is_clean: not root, checking without the eBPF collector");
    }
    let cfg = TempFile::new(
        "promtool.toml",
        // Only this process: other processes on the machine may take the default
        // patterns' names (redis-*).
        &format!("[collectors]\nbpf = {root}\n[processes]\ncomm = []\npids = [{pid}]\n"),
    );
    let agent = Agent::start(&["--config", cfg.0.to_str().unwrap()]);
    let m = agent.scrape();
    assert!(agent.stop().success());
    assert!(
        m.get("memwatch_watched_processes", &[]) == Some(1.0),
        "{}",
        m.text
    );
    let (clean, report) = common::promtool_check_metrics(Path::new(promtool), &m.text);
    assert!(clean, "promtool: {report}");
}
