//! Watched processes: for each process picked by the `[processes]` config (comm
//! patterns, pids, cgroups), every /proc/PID/smaps_rollup field in bytes and the
//! minor/major fault counts of /proc/PID/stat, labelled `pid` and `comm`.
//!
//! The label set is bounded by `processes.max_processes` (lowest pids first); matches
//! beyond it are counted in `memwatch_watched_processes_over_limit`. A process that
//! exits between the scan and the read is simply left out.
//!
//! Cost: smaps_rollup walks the process's page tables under its mmap lock, so it grows
//! with the process's resident size; the /proc scan reads one `comm` file per process.

use parking_lot::Mutex;
use std::{collections::HashMap, fs, sync::Arc};

use super::{
    procfs::{self, ReadBuf},
    Collector, ParseErrors,
};
use crate::{
    config,
    host::Host,
    metrics::{Kind, Text},
    parse::{
        in_cgroup,
        pid::{parse_smaps_rollup, parse_stat},
        CommPattern,
    },
};

/// The watched-processes collector.
pub struct Processes {
    host: Arc<Host>,
    cfg: config::Processes,
    comms: Vec<CommPattern>,
    smaps_errors: ParseErrors,
    stat_errors: ParseErrors,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    buf: ReadBuf,
    /// smaps field -> (name, `# HELP`/`# TYPE` lines), built once per field.
    names: HashMap<String, (String, String)>,
}

/// What one watched process gave this scrape.
struct Watched {
    /// `{pid="..",comm=".."}`
    labels: String,
    minflt: u64,
    majflt: u64,
    smaps: String,
}

impl Processes {
    pub fn new(
        host: Arc<Host>,
        cfg: config::Processes,
        smaps_errors: ParseErrors,
        stat_errors: ParseErrors,
    ) -> Self {
        Self {
            host,
            comms: cfg.comm.iter().map(CommPattern::new).collect(),
            cfg,
            smaps_errors,
            stat_errors,
            state: Mutex::default(),
        }
    }

    /// The pids to watch, sorted, and how many matched beyond the limit.
    fn select(&self, buf: &mut ReadBuf) -> (Vec<u32>, usize) {
        let mut pids: Vec<u32> = Vec::new();
        if self.cfg.comm.is_empty() && self.cfg.cgroups.is_empty() {
            pids.extend(&self.cfg.pids);
        } else {
            let Ok(dir) = fs::read_dir(self.host.procfs()) else {
                return (Vec::new(), 0);
            };
            for entry in dir.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if self.matches(pid, buf) {
                    pids.push(pid);
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        let over = pids.len().saturating_sub(self.cfg.max_processes);
        pids.truncate(self.cfg.max_processes);
        (pids, over)
    }

    fn matches(&self, pid: u32, buf: &mut ReadBuf) -> bool {
        if self.cfg.pids.contains(&pid) {
            return true;
        }
        if !self.comms.is_empty() && buf.read(&self.host.pid_file(pid, "comm")).is_ok() {
            let text = buf.text();
            // The kernel adds one newline; a name may end in one of its own.
            let comm = text.strip_suffix('\n').unwrap_or(&text);
            if self.comms.iter().any(|p| p.matches(comm)) {
                return true;
            }
        }
        if !self.cfg.cgroups.is_empty() && buf.read(&self.host.pid_file(pid, "cgroup")).is_ok() {
            let text = buf.text();
            if self.cfg.cgroups.iter().any(|c| in_cgroup(&text, c)) {
                return true;
            }
        }
        false
    }

    /// Reads one process; `None` when it is gone or unreadable.
    fn read(&self, pid: u32, buf: &mut ReadBuf) -> Option<Watched> {
        let base = self.host.procfs().join(pid.to_string());
        // stat first: it names the process; a process gone by now is skipped.
        buf.read(&base.join("stat")).ok()?;
        let text = buf.text();
        let Some(stat) = parse_stat(&text) else {
            log::debug!("{}/stat: malformed: {text:?}", base.display());
            self.stat_errors.add(1);
            return None;
        };
        let mut labels = String::with_capacity(40);
        Text::push_labels(
            &mut labels,
            &[("pid", &pid.to_string()), ("comm", stat.comm)],
        );
        let (minflt, majflt) = (stat.minflt, stat.majflt);
        drop(text);
        if let Err(e) = buf.read(&base.join("smaps_rollup")) {
            log::debug!("{}/smaps_rollup: {e}; skipping the process", base.display());
            return None;
        }
        Some(Watched {
            labels,
            minflt,
            majflt,
            smaps: buf.text().into_owned(),
        })
    }
}

const MINFLT: &str = "memwatch_process_minor_faults_total";
const MAJFLT: &str = "memwatch_process_major_faults_total";
const WATCHED: &str = "memwatch_watched_processes";
const OVER: &str = "memwatch_watched_processes_over_limit";

/// The name and header lines of an smaps_rollup field.
fn smaps_name(field: &str, bytes: bool) -> (String, String) {
    let mut name = String::from("memwatch_process_smaps_");
    procfs::push_snake(&mut name, field);
    let help = if bytes {
        name.push_str("_bytes");
        format!("/proc/PID/smaps_rollup field {field} of a watched process, in bytes.")
    } else {
        format!("/proc/PID/smaps_rollup field {field} of a watched process.")
    };
    procfs::lint_fix(&mut name, false);
    let header = Text::header(&name, &help, Kind::Gauge);
    (name, header)
}

impl Collector for Processes {
    fn name(&self) -> &'static str {
        "processes"
    }

    fn write_text(&self, out: &mut Text) -> anyhow::Result<()> {
        let mut state = self.state.lock();
        let State { buf, names } = &mut *state;
        let (pids, over) = self.select(buf);
        let watched: Vec<Watched> = pids.into_iter().filter_map(|p| self.read(p, buf)).collect();

        if !watched.is_empty() {
            if out.family(
                MINFLT,
                "Minor page faults of a watched process (/proc/PID/stat minflt).",
                Kind::Counter,
            ) {
                for w in &watched {
                    out.sample_labels(MINFLT, &w.labels, w.minflt as f64);
                }
            }
            if out.family(
                MAJFLT,
                "Major page faults of a watched process (/proc/PID/stat majflt).",
                Kind::Counter,
            ) {
                for w in &watched {
                    out.sample_labels(MAJFLT, &w.labels, w.majflt as f64);
                }
            }
        }
        let mut parsed = Vec::with_capacity(watched.len());
        for w in &watched {
            let (fields, errors) = parse_smaps_rollup(&w.smaps);
            for bad in &errors {
                log::debug!("smaps_rollup of {}: skipping {bad:?}", w.labels);
            }
            self.smaps_errors.add(errors.len() as u64);
            parsed.push(fields);
        }
        // One family per field, in first-seen order.
        let mut fields: Vec<(&str, bool)> = Vec::new();
        for p in &parsed {
            for f in p {
                if !fields.iter().any(|(n, _)| *n == f.field) {
                    fields.push((f.field, f.bytes));
                }
            }
        }
        for (field, bytes) in fields {
            if !names.contains_key(field) {
                names.insert(field.to_string(), smaps_name(field, bytes));
            }
            let (name, header) = &names[field];
            if !out.family_with_header(name, header) {
                self.smaps_errors.add(1);
                continue;
            }
            for (w, p) in watched.iter().zip(&parsed) {
                if let Some(f) = p.iter().find(|f| f.field == field) {
                    out.sample_labels(name, &w.labels, f.value as f64);
                }
            }
        }
        if out.family(
            WATCHED,
            "Processes matched by the [processes] config and exported this scrape.",
            Kind::Gauge,
        ) {
            out.sample(WATCHED, &[], watched.len() as f64);
        }
        if out.family(
            OVER,
            "Processes that matched the [processes] config but were not exported because \
             processes.max_processes was reached.",
            Kind::Gauge,
        ) {
            out.sample(OVER, &[], over as f64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    fn run(c: &Processes) -> String {
        let mut out = Text::default();
        c.write_text(&mut out).unwrap();
        let text = out.into_string();
        testutil::check_exposition(&text).unwrap();
        text
    }

    #[test]
    fn fixtures_match_golden() {
        for (path, text) in testutil::fixtures("smaps_rollup") {
            let (fields, errors) = parse_smaps_rollup(&text);
            assert!(errors.is_empty(), "{path}: {errors:?}");
            assert_eq!(fields.len(), text.lines().count() - 1, "{path}");
            let rendered: String = fields
                .iter()
                .map(|f| format!("{} {} {}\n", f.field, f.value, f.bytes))
                .collect();
            testutil::check_golden(&path, &rendered);
        }
        for (path, text) in testutil::fixtures("stat") {
            let s = parse_stat(&text).unwrap_or_else(|| panic!("{path}"));
            testutil::check_golden(
                &path,
                &format!(
                    "comm={:?} minflt={} majflt={}\n",
                    s.comm, s.minflt, s.majflt
                ),
            );
        }
    }

    #[test]
    fn stat_with_odd_comm() {
        let text = testutil::fixture("stat/synthetic-odd-comm.txt");
        let s = parse_stat(&text).unwrap();
        assert_eq!(s.comm, "my (odd) comm");
        assert_eq!((s.minflt, s.majflt), (123456, 89));
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat(") ("), None);
    }

    /// A fake /proc with three processes: two match (comm pattern, pid), one does not;
    /// a limit of one exports the lowest pid and counts the other.
    #[test]
    fn collector_selects_and_exports() {
        let dir = testutil::TempDir::new("processes");
        let rollup = testutil::fixture("smaps_rollup/linux-6.18-host-sleep.txt");
        for (pid, comm) in [(10, "redis-server"), (20, "bash"), (30, "redis-rdb-bgsav")] {
            dir.write(&format!("{pid}/comm"), &format!("{comm}\n"));
            dir.write(
                &format!("{pid}/stat"),
                &format!(
                    "{pid} ({comm}) S 1 1 1 0 -1 0 {} 0 {} 0 0 0\n",
                    pid * 100,
                    pid
                ),
            );
            dir.write(&format!("{pid}/smaps_rollup"), &rollup);
            dir.write(&format!("{pid}/cgroup"), "0::/\n");
        }
        dir.write("self/comm", "memwatch\n");
        let host = Arc::new(Host::new(dir.path(), dir.path()));
        let cfg = config::Processes {
            comm: vec!["redis-server".into(), "redis-rdb-*".into()],
            ..config::Processes::default()
        };
        let c = Processes::new(
            host.clone(),
            cfg,
            ParseErrors::default(),
            ParseErrors::default(),
        );
        let text = run(&c);
        for want in [
            "memwatch_process_minor_faults_total{pid=\"10\",comm=\"redis-server\"} 1000\n",
            "memwatch_process_major_faults_total{pid=\"30\",comm=\"redis-rdb-bgsav\"} 30\n",
            "memwatch_process_smaps_rss_bytes{pid=\"10\",comm=\"redis-server\"} 1851392\n",
            "memwatch_process_smaps_pss_anon_bytes{pid=\"30\",comm=\"redis-rdb-bgsav\"} ",
            "memwatch_process_smaps_private_dirty_bytes{pid=\"10\",comm=\"redis-server\"} ",
            "memwatch_process_smaps_anon_huge_pages_bytes{pid=\"10\",comm=\"redis-server\"} 0\n",
            "memwatch_watched_processes 2\n",
            "memwatch_watched_processes_over_limit 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("bash"), "{text}");

        let cfg = config::Processes {
            comm: vec![],
            pids: vec![20, 30, 99],
            cgroups: vec![],
            max_processes: 1,
        };
        let c = Processes::new(
            host.clone(),
            cfg,
            ParseErrors::default(),
            ParseErrors::default(),
        );
        let text = run(&c);
        assert!(text.contains("comm=\"bash\""), "{text}");
        assert!(!text.contains("redis"), "{text}");
        assert!(
            text.contains("memwatch_watched_processes_over_limit 2\n"),
            "{text}"
        );

        let cfg = config::Processes {
            comm: vec![],
            pids: vec![],
            cgroups: vec!["/".into()],
            max_processes: 10,
        };
        let c = Processes::new(
            host.clone(),
            cfg,
            ParseErrors::default(),
            ParseErrors::default(),
        );
        assert!(run(&c).contains("memwatch_watched_processes 3\n"));
    }

    /// Watched processes with names the text format must escape (and one that ends in a
    /// newline of its own): a valid exposition, each under its own pid, as named.
    #[test]
    fn hostile_names_are_escaped() {
        let dir = testutil::TempDir::new("processes-hostile");
        let rollup = testutil::fixture("smaps_rollup/linux-6.18-host-sleep.txt");
        let names = [
            "redis-\"x",
            "redis-\\y",
            "redis-\nz",
            "redis-{}",
            "redis-a\n",
        ];
        for (i, comm) in names.iter().enumerate() {
            let pid = 10 + i;
            dir.write(&format!("{pid}/comm"), &format!("{comm}\n"));
            dir.write(
                &format!("{pid}/stat"),
                &format!("{pid} ({comm}) S 1 1 1 0 -1 0 7 0 3 0 0 0\n"),
            );
            dir.write(&format!("{pid}/smaps_rollup"), &rollup);
        }
        let host = Arc::new(Host::new(dir.path(), dir.path()));
        let cfg = config::Processes {
            comm: vec!["redis-*".into()],
            ..config::Processes::default()
        };
        let c = Processes::new(host, cfg, ParseErrors::default(), ParseErrors::default());
        let text = run(&c);
        for want in [
            "memwatch_process_minor_faults_total{pid=\"10\",comm=\"redis-\\\"x\"} 7\n",
            "memwatch_process_minor_faults_total{pid=\"11\",comm=\"redis-\\\\y\"} 7\n",
            "memwatch_process_minor_faults_total{pid=\"12\",comm=\"redis-\\nz\"} 7\n",
            "memwatch_process_minor_faults_total{pid=\"13\",comm=\"redis-{}\"} 7\n",
            "memwatch_process_minor_faults_total{pid=\"14\",comm=\"redis-a\\n\"} 7\n",
            "memwatch_watched_processes 5\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(text in testutil::procish_text(), pat in "[a-c*]{0,6}") {
            let (fields, errors) = parse_smaps_rollup(&text);
            proptest::prop_assert!(fields.len() + errors.len() <= text.lines().count());
            let _ = parse_stat(&text);
            let _ = in_cgroup(&text, "/a");
            let _ = CommPattern::new(pat).matches(&text);
        }
    }
}
