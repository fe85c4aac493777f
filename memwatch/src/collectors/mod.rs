//! Collectors, one per source (node_exporter's pattern): each turns one source into
//! metric families at scrape time, and the registry reports how each one did in
//! `memwatch_scrape_collector_duration_seconds` and `memwatch_scrape_collector_success`.

pub mod attribution;
pub mod bpf;
pub mod build_info;
pub mod episodes;
#[cfg(test)]
mod fixture_tree;
pub mod knobs;
pub mod meminfo;
pub mod pressure;
pub mod probes;
pub mod processes;
pub mod procfs;
#[cfg(test)]
mod scrape_names_tests;
pub mod vmstat;
pub mod zoneinfo;

use parking_lot::Mutex;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use prometheus::proto::MetricFamily;

use crate::{
    host::Host,
    metrics::{Kind, Text},
};

/// One source of metrics. Implement `collect` (families built with `metrics::Family`:
/// simple, for a handful of series) or `write_text` (the text format written directly,
/// with names and headers kept between scrapes: for sources with hundreds of series).
pub trait Collector: Send + Sync {
    /// Short name, used as the `collector` label.
    fn name(&self) -> &'static str;
    /// Appends this source's families to `out`. An error fails this collector only.
    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
        let _ = out;
        Ok(())
    }
    /// Writes this source's families in the text format. The default writes what
    /// `collect` appended (also when it then failed).
    fn write_text(&self, out: &mut Text) -> anyhow::Result<()> {
        let mut families = Vec::new();
        let result = self.collect(&mut families);
        out.families(&families);
        result
    }
}

/// Registers the collectors of the kernel's own accounting (/proc and /sys) that the
/// config enables, reading under the host's procfs and sysfs (tests point them at
/// fixtures).
pub fn register_proc(registry: &mut Registry, cfg: &crate::config::Config, host: &Arc<Host>) {
    let c = &cfg.collectors;
    let proc_root = host.procfs();
    if c.meminfo {
        let e = registry.parse_errors("meminfo");
        registry.register(Box::new(meminfo::Meminfo::new(proc_root, e)));
    }
    if c.vmstat {
        let e = registry.parse_errors("vmstat");
        registry.register(Box::new(vmstat::Vmstat::new(proc_root, e)));
    }
    if c.zoneinfo {
        let e = registry.parse_errors("zoneinfo");
        registry.register(Box::new(zoneinfo::Zoneinfo::new(proc_root, e)));
    }
    if c.pressure {
        let e = registry.parse_errors("pressure");
        registry.register(Box::new(pressure::Pressure::new(proc_root, e)));
    }
    if c.knobs {
        let e = registry.parse_errors("knobs");
        registry.register(Box::new(knobs::Knobs::new(proc_root, host.sysfs(), e)));
    }
    if c.processes {
        let smaps = registry.parse_errors("smaps_rollup");
        let stat = registry.parse_errors("pid_stat");
        registry.register(Box::new(processes::Processes::new(
            host.clone(),
            cfg.processes.clone(),
            smaps,
            stat,
        )));
    }
}

/// Counts the malformed lines of one source that a parser skipped; every source's count
/// is exported once per scrape in `memwatch_parse_errors_total{source}` by the registry.
#[derive(Clone, Default)]
pub struct ParseErrors(Arc<AtomicU64>);

impl ParseErrors {
    /// Adds `n` skipped lines.
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How long a collector may take during one scrape unless the config says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One registered collector and what the registry knows of its runs.
struct Slot {
    collector: Arc<dyn Collector>,
    /// Since when a run of it is in flight (ms on the registry's clock + 1; 0: none).
    /// A run that overran its budget keeps this set until it returns: later scrapes
    /// skip the collector instead of piling up threads stuck on the same read.
    busy_since: Arc<AtomicU64>,
    /// The run in flight overran its scrape's budget (cleared when it returns).
    overran: Arc<std::sync::atomic::AtomicBool>,
    timeouts: AtomicU64,
    panics: AtomicU64,
    /// The collector's worker thread, started on first use.
    worker: Mutex<Option<mpsc::Sender<Job>>>,
}

/// One run of a collector for its worker: where the result goes, and how big the
/// buffer should start.
struct Job {
    reply: mpsc::Sender<(Outcome, Text)>,
    hint: usize,
}

/// How one collector did during one scrape.
enum Outcome {
    Ok,
    Failed,
    /// Did not finish within the budget (its output is dropped).
    TimedOut,
    /// A run from an earlier scrape has not returned yet: not started again.
    StillRunning,
    Panicked,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// Every enabled collector. A scrape runs them one after another, each on a worker
/// thread of its own with its own buffer, and waits for each at most `timeout`: one
/// that overruns (a read of a file that blocks: a FIFO, a hung mount, a process whose
/// mmap lock is held) or panics fails alone, and the scrape returns what the others
/// produced. One after another, not side by side: a collector reading /proc/meminfo
/// while others allocate would see memwatch's own passing Committed_AS.
pub struct Registry {
    slots: Vec<Slot>,
    parse_errors: Vec<(&'static str, ParseErrors)>,
    /// The size of the last exposition, to size the next one's buffer.
    size_hint: std::sync::atomic::AtomicUsize,
    timeout: Duration,
    clock: Instant,
    /// One render at a time (the server also shares one render among concurrent
    /// scrapes); a second caller waits.
    rendering: parking_lot::Mutex<()>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(DEFAULT_TIMEOUT)
    }
}

/// A collector that stopped being run because an earlier run is stuck, as seen by
/// /healthz.
pub struct Stuck {
    pub collector: &'static str,
    pub for_secs: f64,
}

impl Registry {
    pub fn new(timeout: Duration) -> Self {
        Self {
            slots: Vec::new(),
            parse_errors: Vec::new(),
            size_hint: Default::default(),
            timeout,
            clock: Instant::now(),
            rendering: Default::default(),
        }
    }

    pub fn register(&mut self, c: Box<dyn Collector>) {
        self.slots.push(Slot {
            collector: Arc::from(c),
            busy_since: Default::default(),
            overran: Default::default(),
            timeouts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            worker: Mutex::new(None),
        });
    }

    /// The parse-error counter of `source` (e.g. `vmstat`), shared by every collector
    /// that reads that kind of file. A source shows up, at 0, from the first scrape.
    pub fn parse_errors(&mut self, source: &'static str) -> ParseErrors {
        if let Some((_, c)) = self.parse_errors.iter().find(|(s, _)| *s == source) {
            return c.clone();
        }
        let c = ParseErrors::default();
        self.parse_errors.push((source, c.clone()));
        c
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Collectors whose run overran a scrape's budget and has not returned yet.
    pub fn stuck(&self) -> Vec<Stuck> {
        let now = self.now_ms();
        self.slots
            .iter()
            .filter(|s| s.overran.load(Ordering::Acquire))
            .filter_map(|s| {
                let since = s.busy_since.load(Ordering::Acquire).checked_sub(1)?;
                Some(Stuck {
                    collector: s.collector.name(),
                    for_secs: now.saturating_sub(since) as f64 / 1000.0,
                })
            })
            .collect()
    }

    /// Starts one collector's run on its worker thread (started on first use and kept:
    /// no thread is made during a scrape once the first is done); its result comes
    /// back on the returned channel. None with the outcome when it can't start.
    fn start(&self, slot: &Slot) -> Result<mpsc::Receiver<(Outcome, Text)>, Outcome> {
        let stamp = self.now_ms().saturating_add(1);
        if slot
            .busy_since
            .compare_exchange(0, stamp, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Err(Outcome::StillRunning);
        }
        let (reply, result) = mpsc::channel();
        let hint = self.size_hint.load(Ordering::Relaxed) / self.slots.len().max(1);
        let mut worker = slot.worker.lock();
        let mut job = Job { reply, hint };
        if let Some(w) = worker.as_ref() {
            match w.send(job) {
                Ok(()) => return Ok(result),
                // The worker is gone: start another with this job.
                Err(mpsc::SendError(j)) => job = j,
            }
        }
        let started = self
            .spawn_worker(slot)
            .map_err(|e| e.to_string())
            .and_then(|w| w.send(job).map(|()| w).map_err(|e| e.to_string()));
        match started {
            Ok(w) => {
                *worker = Some(w);
                Ok(result)
            }
            Err(e) => {
                log::warn!(
                    "collector {}: cannot start a thread: {e}",
                    slot.collector.name()
                );
                slot.busy_since.store(0, Ordering::Release);
                Err(Outcome::Failed)
            }
        }
    }

    /// A collector's worker: runs one job at a time, a panic caught and reported.
    fn spawn_worker(&self, slot: &Slot) -> std::io::Result<mpsc::Sender<Job>> {
        let (c, busy, overran) = (
            slot.collector.clone(),
            slot.busy_since.clone(),
            slot.overran.clone(),
        );
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("collect-{}", c.name()))
            .spawn(move || {
                for job in queue {
                    let mut text = Text::with_capacity(job.hint + 1024);
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        c.write_text(&mut text)
                    }));
                    let outcome = match run {
                        Ok(Ok(())) => Outcome::Ok,
                        Ok(Err(e)) => {
                            log::warn!("collector {} failed: {e:#}", c.name());
                            Outcome::Failed
                        }
                        Err(panic) => {
                            let msg = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            log::error!("collector {} panicked: {msg}", c.name());
                            Outcome::Panicked
                        }
                    };
                    overran.store(false, Ordering::Release);
                    busy.store(0, Ordering::Release);
                    // The scrape may have given up on this run: then nobody listens.
                    let _ = job.reply.send((outcome, text));
                }
            })?;
        Ok(jobs)
    }

    /// Runs every collector, one after another (so one's reading is not disturbed by
    /// another's work), each on its worker thread within the budget, and returns the
    /// exposition in the text format; one that fails, panics or overruns is logged and
    /// reported, the rest go on.
    pub fn render(&self) -> String {
        let _one = self.rendering.lock();
        let n = self.slots.len();
        let mut results: Vec<Option<(Outcome, f64, Option<Text>)>> = Vec::with_capacity(n);
        for slot in &self.slots {
            let start = Instant::now();
            results.push(match self.start(slot) {
                Err(outcome) => Some((outcome, 0.0, None)),
                Ok(result) => result
                    .recv_timeout(self.timeout)
                    .ok()
                    .map(|(outcome, text)| (outcome, start.elapsed().as_secs_f64(), Some(text))),
            });
        }
        let timeout_secs = self.timeout.as_secs_f64();
        let hint = self.size_hint.load(Ordering::Relaxed);
        let mut out = Text::with_capacity(hint + hint / 8 + 4096);
        let mut report = Vec::with_capacity(n);
        for (slot, r) in self.slots.iter().zip(results) {
            let name = slot.collector.name();
            let (outcome, secs) = match r {
                Some((outcome, secs, text)) => {
                    if let Some(text) = text {
                        out.append(&text);
                    }
                    (outcome, secs)
                }
                None => {
                    slot.overran.store(true, Ordering::Release);
                    log::warn!("collector {name} did not finish within {timeout_secs} s; its metrics are left out of this scrape");
                    (Outcome::TimedOut, timeout_secs)
                }
            };
            match outcome {
                Outcome::TimedOut | Outcome::StillRunning => {
                    slot.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Panicked => {
                    slot.panics.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Ok | Outcome::Failed => {}
            }
            report.push((name, secs, outcome.succeeded(), slot));
        }
        self.write_own(&mut out, &report);
        let out = out.into_string();
        self.size_hint.store(out.len(), Ordering::Relaxed);
        out
    }

    /// The registry's own families: how each collector did, and the parse errors.
    fn write_own(&self, text: &mut Text, report: &[(&'static str, f64, bool, &Slot)]) {
        const DURATION: &str = "memwatch_scrape_collector_duration_seconds";
        if text.family(
            DURATION,
            "Time a collector took during this scrape (its budget when it overran).",
            Kind::Gauge,
        ) {
            for (name, secs, _, _) in report {
                text.sample(DURATION, &[("collector", name)], *secs);
            }
        }
        const SUCCESS: &str = "memwatch_scrape_collector_success";
        if text.family(
            SUCCESS,
            "Whether a collector succeeded during this scrape (1) or failed, overran its \
             budget or panicked (0).",
            Kind::Gauge,
        ) {
            for (name, _, ok, _) in report {
                text.sample(SUCCESS, &[("collector", name)], if *ok { 1.0 } else { 0.0 });
            }
        }
        const TIMEOUTS: &str = "memwatch_scrape_collector_timeouts_total";
        if text.family(
            TIMEOUTS,
            "Scrapes in which a collector did not finish within collectors.timeout_seconds \
             (or was still stuck in an earlier scrape's run) and was left out.",
            Kind::Counter,
        ) {
            for (name, _, _, slot) in report {
                let v = slot.timeouts.load(Ordering::Relaxed);
                text.sample(TIMEOUTS, &[("collector", name)], v as f64);
            }
        }
        const PANICS: &str = "memwatch_scrape_collector_panics_total";
        if text.family(
            PANICS,
            "Scrapes in which a collector panicked (a bug: please report it with the log); \
             the other collectors were served.",
            Kind::Counter,
        ) {
            for (name, _, _, slot) in report {
                let v = slot.panics.load(Ordering::Relaxed);
                text.sample(PANICS, &[("collector", name)], v as f64);
            }
        }
        const ERRORS: &str = "memwatch_parse_errors_total";
        if !self.parse_errors.is_empty()
            && text.family(
                ERRORS,
                "Lines of a kernel file that could not be parsed and were skipped.",
                Kind::Counter,
            )
        {
            for (source, c) in &self.parse_errors {
                text.sample(ERRORS, &[("source", source)], c.get() as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, Vec<(&'static str, f64)>, ParseErrors, u64);

    impl Collector for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
            self.2.add(self.3);
            for (name, v) in &self.1 {
                let mut f = crate::metrics::Family::gauge(*name, "test");
                f.sample(&[], *v);
                f.push_to(out);
            }
            if self.0 == "failing" {
                anyhow::bail!("broken on purpose");
            }
            Ok(())
        }
    }

    /// Parse errors of every source come out as one family; two collectors that share a
    /// source share its count; a family name produced twice is kept once; a failing
    /// collector is reported and the others still are.
    #[test]
    fn gather_merges_parse_errors_and_dedups() {
        let mut r = Registry::default();
        let a = r.parse_errors("vmstat");
        let b = r.parse_errors("zoneinfo");
        let a2 = r.parse_errors("vmstat");
        r.register(Box::new(Fixed("one", vec![("memwatch_x", 1.0)], a, 2)));
        r.register(Box::new(Fixed("two", vec![("memwatch_x", 2.0)], a2, 3)));
        r.register(Box::new(Fixed("failing", vec![("memwatch_y", 3.0)], b, 0)));
        let text = r.render();
        testutil::check_exposition(&text).unwrap();
        assert_eq!(
            text.matches("# TYPE memwatch_parse_errors_total").count(),
            1
        );
        assert!(
            text.contains("memwatch_parse_errors_total{source=\"vmstat\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("memwatch_parse_errors_total{source=\"zoneinfo\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("memwatch_x 1\n") && !text.contains("memwatch_x 2\n"),
            "{text}"
        );
        assert!(text.contains("memwatch_scrape_collector_success{collector=\"failing\"} 0\n"));
        assert!(text.contains("memwatch_scrape_collector_success{collector=\"two\"} 1\n"));
    }
    /// Blocks in `collect` until released: a read that hangs.
    struct Blocking(Arc<parking_lot::Mutex<mpsc::Receiver<()>>>);

    impl Collector for Blocking {
        fn name(&self) -> &'static str {
            "blocking"
        }
        fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
            let rx = self.0.lock();
            let _ = rx.recv();
            let mut f = crate::metrics::Family::gauge("memwatch_blocked", "test");
            f.sample(&[], 1.0);
            f.push_to(out);
            Ok(())
        }
    }

    struct Panicking;

    impl Collector for Panicking {
        fn name(&self) -> &'static str {
            "panicking"
        }
        fn collect(&self, _: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
            panic!("on purpose");
        }
    }

    /// A collector stuck on a read fails that scrape alone, is not started again while
    /// stuck (later scrapes don't wait for it), and comes back once its read returns; a
    /// panicking one fails alone too.
    #[test]
    fn a_stuck_or_panicking_collector_fails_alone() {
        let mut r = Registry::new(Duration::from_millis(1500));
        let (release, rx) = mpsc::channel();
        let read = Arc::new(parking_lot::Mutex::new(rx));
        r.register(Box::new(Blocking(read.clone())));
        r.register(Box::new(Panicking));
        let e = r.parse_errors("vmstat");
        r.register(Box::new(Fixed("one", vec![("memwatch_x", 1.0)], e, 0)));
        let has = |t: &str, s: &str| t.lines().any(|l| l == s);
        let first = r.render();
        testutil::check_exposition(&first).unwrap();
        assert!(has(&first, "memwatch_x 1"), "{first}");
        assert!(!first.contains("memwatch_blocked"), "{first}");
        assert!(has(
            &first,
            "memwatch_scrape_collector_success{collector=\"blocking\"} 0"
        ));
        assert!(has(
            &first,
            "memwatch_scrape_collector_timeouts_total{collector=\"blocking\"} 1"
        ));
        assert!(has(
            &first,
            "memwatch_scrape_collector_success{collector=\"panicking\"} 0"
        ));
        assert!(has(
            &first,
            "memwatch_scrape_collector_panics_total{collector=\"panicking\"} 1"
        ));
        assert!(has(
            &first,
            "memwatch_scrape_collector_success{collector=\"one\"} 1"
        ));
        assert_eq!(r.stuck().len(), 1);
        // Still stuck: skipped at once, counted again.
        let second = r.render();
        assert!(has(
            &second,
            "memwatch_scrape_collector_timeouts_total{collector=\"blocking\"} 2"
        ));
        assert!(has(
            &second,
            "memwatch_scrape_collector_duration_seconds{collector=\"blocking\"} 0"
        ));
        assert!(has(
            &second,
            "memwatch_scrape_collector_panics_total{collector=\"panicking\"} 2"
        ));
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while r
            .slots
            .iter()
            .any(|s| s.busy_since.load(Ordering::Relaxed) != 0)
        {
            assert!(
                Instant::now() < deadline,
                "the released collector never returned"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The next read returns at once.
        let (again, rx) = mpsc::channel();
        again.send(()).unwrap();
        *read.lock() = rx;
        let third = r.render();
        assert!(has(&third, "memwatch_blocked 1"), "{third}");
        assert!(has(
            &third,
            "memwatch_scrape_collector_success{collector=\"blocking\"} 1"
        ));
        assert!(r.stuck().is_empty());
    }
}

/// Fixtures, golden files and fuzz inputs for the collectors' unit tests.
#[cfg(test)]
pub mod testutil {
    use std::{
        collections::HashSet,
        path::{Path, PathBuf},
    };

    use proptest::prelude::*;

    pub fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    /// One fixture's text, by path under tests/fixtures.
    pub fn fixture(rel: &str) -> String {
        std::fs::read_to_string(fixture_dir().join(rel)).unwrap()
    }

    /// Every `*.txt` fixture of a kind (a folder under tests/fixtures), sorted by path.
    pub fn fixtures(kind: &str) -> Vec<(String, String)> {
        let dir = fixture_dir().join(kind);
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p.display().to_string(), text)
            })
            .collect();
        v.sort();
        assert!(!v.is_empty(), "no fixtures in {}", dir.display());
        v
    }

    /// Compares `rendered` with the fixture's `.golden` file; `UPDATE_GOLDEN=1`
    /// rewrites it instead (review the diff).
    pub fn check_golden(fixture_path: &str, rendered: &str) {
        let golden = fixture_path.replace(".txt", ".golden");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, rendered).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(
            rendered, want,
            "{fixture_path} differs from {golden} (UPDATE_GOLDEN=1 rewrites it)"
        );
    }

    /// A valid Prometheus metric name.
    pub fn valid_metric_name(name: &str) -> bool {
        let b = name.as_bytes();
        !b.is_empty()
            && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
    }

    /// Checks a text exposition the way Prometheus reads it and `promtool check
    /// metrics` lints it: `# HELP` then `# TYPE` then the samples of each family, every
    /// family name once, samples named as their family, each label set once per family,
    /// parseable values; snake_case names without abbreviated units, counters ending in
    /// `_total` and gauges in no reserved suffix, a help text for each.
    pub fn check_exposition(text: &str) -> Result<(), String> {
        let mut names = HashSet::new();
        let mut current: Option<(String, String)> = None;
        let mut series = HashSet::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').ok_or(format!("bad HELP: {line}"))?;
                if help.is_empty() {
                    return Err(format!("{name}: no help"));
                }
                if !names.insert(name.to_string()) {
                    return Err(format!("family {name} twice"));
                }
                let ty = lines.next().ok_or(format!("{name}: no TYPE"))?;
                let kind = match ty.strip_prefix("# TYPE ").and_then(|t| t.split_once(' ')) {
                    Some((n, k)) if n == name => k.to_string(),
                    _ => return Err(format!("{name}: bad TYPE line {ty:?}")),
                };
                match kind.as_str() {
                    "counter" => lint_name(name, true)?,
                    "gauge" => lint_name(name, false)?,
                    "histogram" | "summary" => lint_name(&format!("{name}_x"), false)?,
                    _ => return Err(format!("{name}: unknown type {kind}")),
                }
                current = Some((name.to_string(), kind));
                series.clear();
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                return Err(format!("unexpected line {line:?}"));
            }
            let Some((family, kind)) = &current else {
                return Err(format!("sample before any family: {line}"));
            };
            let (series_part, value) = line.rsplit_once(' ').ok_or(format!("bad sample {line}"))?;
            if !(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value)) {
                return Err(format!("bad value in {line}"));
            }
            let (name, labels) = match series_part.split_once('{') {
                None => (series_part, ""),
                Some((n, l)) => (n, l.strip_suffix('}').ok_or(format!("bad labels {line}"))?),
            };
            let (family, kind) = (family.clone(), kind.clone());
            let ok = name == family
                || (kind == "histogram"
                    && [
                        &format!("{family}_bucket"),
                        &format!("{family}_sum"),
                        &format!("{family}_count"),
                    ]
                    .contains(&&name.to_string()))
                || (kind == "summary"
                    && [&format!("{family}_sum"), &format!("{family}_count")]
                        .contains(&&name.to_string()));
            if !ok {
                return Err(format!("sample {name} inside family {family}"));
            }
            let parsed = parse_labels(labels).ok_or(format!("bad labels in {line}"))?;
            if !series.insert((name.to_string(), parsed)) {
                return Err(format!("series twice: {line}"));
            }
        }
        Ok(())
    }

    fn lint_name(name: &str, counter: bool) -> Result<(), String> {
        if !valid_metric_name(name) || name.contains(':') {
            return Err(format!("invalid name {name:?}"));
        }
        if counter != name.ends_with("_total") {
            return Err(format!("{name}: type and _total suffix disagree"));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("{name}: not snake_case"));
        }
        if name
            .split('_')
            .any(|w| super::procfs::UNIT_ABBREVIATIONS.contains(&w))
        {
            return Err(format!("{name}: abbreviated unit"));
        }
        if !counter
            && super::procfs::RESERVED_SUFFIXES
                .iter()
                .any(|s| name.ends_with(s))
        {
            return Err(format!("{name}: reserved suffix on a gauge"));
        }
        Ok(())
    }

    /// `a="x",b="y\"z"` into sorted pairs; `None` when malformed or a name repeats.
    pub fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"")?;
            if !valid_metric_name(k) || k.contains(':') {
                return None;
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        _ => return None,
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\n' => return None,
                    c => value.push(c),
                }
            }
            rest = &after[end?..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
            out.push((k.to_string(), value));
        }
        out.sort();
        let n = out.len();
        out.dedup_by(|a, b| a.0 == b.0);
        (out.len() == n).then_some(out)
    }

    pub use crate::host::testing::TempDir;

    /// Every fixture of every kind: the seed corpus for mutations.
    fn corpus() -> Vec<String> {
        let mut v = Vec::new();
        for kind in std::fs::read_dir(fixture_dir()).unwrap().flatten() {
            if !kind.path().is_dir() || kind.file_name() == "tracefs" {
                continue;
            }
            for f in std::fs::read_dir(kind.path()).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == "txt") {
                    v.push(std::fs::read_to_string(f.path()).unwrap());
                }
            }
        }
        v.sort();
        v
    }

    /// One edit of a text: (where, what, inserted text).
    fn mutate(mut s: String, edits: &[(usize, u8, String)]) -> String {
        for (pos, kind, ins) in edits {
            if s.is_empty() {
                s.push_str(ins);
                continue;
            }
            let mut at = pos % (s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            match kind {
                // Insert.
                0 => s.insert_str(at, ins),
                // Delete up to 40 bytes.
                1 => {
                    let mut end = (at + ins.len() * 3 + 1).min(s.len());
                    while !s.is_char_boundary(end) {
                        end += 1;
                    }
                    s.replace_range(at..end, "");
                }
                // Repeat the line around `at`.
                2 => {
                    let start = s[..at].rfind('\n').map_or(0, |i| i + 1);
                    let end = s[at..].find('\n').map_or(s.len(), |i| at + i);
                    let line = format!("{}\n", &s[start..end]);
                    s.insert_str(start, &line);
                }
                // Truncate.
                3 => s.truncate(at),
                // Overwrite.
                _ => {
                    let mut end = (at + ins.len()).min(s.len());
                    while !s.is_char_boundary(end) {
                        end += 1;
                    }
                    s.replace_range(at..end, ins);
                }
            }
        }
        s
    }

    /// Words that mean something to one of the parsers.
    const VOCAB: &[&str] = &[
        "Node",
        "0,",
        "1,",
        "zone",
        "DMA",
        "Normal",
        "pages",
        "free",
        "min",
        "high",
        "protection:",
        "(0,",
        "5)",
        "(",
        ")",
        "per-node",
        "stats",
        "pagesets",
        "cpu:",
        "count:",
        "start_pfn:",
        "nr_free_pages",
        "numa_hit",
        "pgfault",
        "nr_dirty",
        "MemTotal:",
        "HugePages_Total:",
        "kB",
        "MB",
        "some",
        "full",
        "avg10=1.50",
        "avg60=x",
        "avg300=0.00",
        "total=12",
        "total=-1",
        "[madvise]",
        "always",
        "never",
        "[rollup]",
        "Rss:",
        "0",
        "1",
        "-1",
        "18446744073709551615",
        "18446744073709551616",
        "1e9",
        "NaN",
        "inf",
        ":",
        "=",
        ",",
        "\t",
        "é",
    ];

    /// Inputs for the parsers' fuzz tests: arbitrary text, lines made of words the
    /// parsers know, and real fixtures with random edits.
    pub fn procish_text() -> impl Strategy<Value = String> {
        let corpus = corpus();
        let n = corpus.len();
        let word = proptest::sample::select(VOCAB);
        let line = (
            "[ ]{0,8}",
            proptest::collection::vec((word, "[ \t]{1,3}"), 0..7),
        )
            .prop_map(|(indent, words)| {
                let mut l = indent;
                for (w, sep) in words {
                    l.push_str(w);
                    l.push_str(&sep);
                }
                l
            });
        let edits = proptest::collection::vec((any::<usize>(), 0u8..5, "[ -~\n]{0,14}"), 0..6);
        prop_oneof![
            ".{0,400}",
            proptest::collection::vec(line, 0..40).prop_map(|v| v.join("\n")),
            (0..n, edits).prop_map(move |(i, e)| mutate(corpus[i].clone(), &e)),
        ]
    }
}
