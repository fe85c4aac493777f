//! Pressure stall information (PSI) for memory and io: /proc/pressure/{memory,io}.
//!
//! `memwatch_pressure_stall_seconds_total{resource,kind}` is the kernel's `total=`
//! (microseconds, exported in seconds) and `memwatch_pressure_stall_ratio{resource,kind,
//! window}` its `avg10/avg60/avg300` (percent, exported as a 0-1 ratio). `kind` is
//! `some` (at least one task stalled) or `full` (all non-idle tasks stalled).
//!
//! Where the kernel has no PSI (not built in, or booted with `psi=0`, where the files
//! exist but reads fail with EOPNOTSUPP) the metrics are absent and a debug line says
//! why; that is not a collector failure.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{
    procfs::{self, ReadBuf},
    Collector, ParseErrors,
};
use crate::{
    metrics::{Kind, Text},
    parse::pressure::{parse, RESOURCES},
};

/// The pressure collector.
pub struct Pressure {
    dir: PathBuf,
    errors: ParseErrors,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// One buffer per resource.
    bufs: [ReadBuf; RESOURCES.len()],
    /// Whether "no PSI here" was already logged (once per run, not per scrape).
    absent_logged: bool,
}

impl Pressure {
    pub fn new(proc_root: impl AsRef<Path>, errors: ParseErrors) -> Self {
        Self {
            dir: proc_root.as_ref().join("pressure"),
            errors,
            state: Mutex::default(),
        }
    }
}

const TOTAL: &str = "memwatch_pressure_stall_seconds_total";
const RATIO: &str = "memwatch_pressure_stall_ratio";

impl Collector for Pressure {
    fn name(&self) -> &'static str {
        "pressure"
    }

    fn write_text(&self, out: &mut Text) -> anyhow::Result<()> {
        let mut state = self.state.lock();
        let State {
            bufs,
            absent_logged,
        } = &mut *state;
        let mut present = [false; RESOURCES.len()];
        for ((resource, buf), present) in RESOURCES.iter().zip(bufs.iter_mut()).zip(&mut present) {
            let path = self.dir.join(resource);
            match buf.read(&path) {
                Ok(()) => *present = true,
                Err(e) if procfs::is_absent(&e) => {
                    if !*absent_logged {
                        log::debug!(
                            "{}: {e}: no pressure stall information on this kernel \
                             (CONFIG_PSI off or booted with psi=0); its metrics are absent",
                            path.display()
                        );
                        *absent_logged = true;
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", path.display()));
                }
            }
        }
        let texts: Vec<_> = bufs.iter().map(|b| b.text()).collect();
        let mut parsed = Vec::with_capacity(RESOURCES.len());
        for ((resource, text), present) in RESOURCES.iter().zip(&texts).zip(present) {
            if !present {
                continue;
            }
            let (lines, errors) = parse(text);
            for bad in &errors {
                log::debug!(
                    "{}/{resource}: skipping malformed line {bad:?}",
                    self.dir.display()
                );
            }
            self.errors.add(errors.len() as u64);
            parsed.push((*resource, lines));
        }
        if parsed.iter().all(|(_, lines)| lines.is_empty()) {
            return Ok(());
        }
        if out.family(
            TOTAL,
            "Time tasks were stalled on a resource (PSI total): kind=some, at least one \
             task; kind=full, all non-idle tasks.",
            Kind::Counter,
        ) {
            for (resource, lines) in &parsed {
                for l in lines {
                    let labels = [("resource", *resource), ("kind", l.kind)];
                    out.sample(TOTAL, &labels, l.total_us as f64 / 1e6);
                }
            }
        }
        if out.family(
            RATIO,
            "Share of wall time tasks were stalled on a resource (PSI avg10/avg60/avg300 \
             divided by 100), over the window.",
            Kind::Gauge,
        ) {
            for (resource, lines) in &parsed {
                for l in lines {
                    for (window, v) in [("10s", l.avg10), ("60s", l.avg60), ("300s", l.avg300)] {
                        let labels = [
                            ("resource", *resource),
                            ("kind", l.kind),
                            ("window", window),
                        ];
                        out.sample(RATIO, &labels, v / 100.0);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collectors::testutil, parse::pressure::Line};

    #[test]
    fn fixtures_match_golden() {
        for (path, text) in testutil::fixtures("pressure") {
            let (lines, errors) = parse(&text);
            assert!(errors.is_empty(), "{path}: {errors:?}");
            assert_eq!(lines.len(), 2, "{path}");
            let rendered: String = lines
                .iter()
                .map(|l| {
                    format!(
                        "{} avg10={} avg60={} avg300={} total_us={}\n",
                        l.kind, l.avg10, l.avg60, l.avg300, l.total_us
                    )
                })
                .collect();
            testutil::check_golden(&path, &rendered);
        }
    }

    #[test]
    fn parses_values() {
        let (lines, errors) = parse(
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=2500000\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=7 future=1\n",
        );
        assert!(errors.is_empty());
        assert_eq!(
            lines[0],
            Line {
                kind: "some",
                avg10: 1.5,
                avg60: 0.25,
                avg300: 0.0,
                total_us: 2_500_000
            }
        );
        assert_eq!(lines[1].total_us, 7);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let (lines, errors) = parse(
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=2500000\n\
             some avg10=1.50 avg60=0.25 avg300=0.00 total=1\n\
             full avg10=x avg60=0.00 avg300=0.00 total=7\n\
             full avg10=1 avg60=0.00 total=7\n\
             full avg10=1 avg10=1 avg60=0.00 avg300=0.00 total=7\n\
             full avg10=NaN avg60=0.00 avg300=0.00 total=7\n\
             half avg10=1 avg60=0.00 avg300=0.00 total=7\n\
             full avg10=1 avg60 avg300=0.00 total=7\n",
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(errors.len(), 7);
    }

    /// Both files, in seconds and ratios; a kernel without PSI gives no samples and no
    /// failure; a broken line is counted.
    #[test]
    fn collector_present_absent_and_malformed() {
        let dir = testutil::TempDir::new("pressure");
        dir.write(
            "pressure/memory",
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=2500000\n\
             full avg10=0.50 avg60=0.00 avg300=0.00 total=1000000\n",
        );
        dir.write(
            "pressure/io",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=3\nbroken\n",
        );
        let errors = ParseErrors::default();
        let c = Pressure::new(dir.path(), errors.clone());
        let mut out = Text::default();
        c.write_text(&mut out).unwrap();
        let text = out.into_string();
        testutil::check_exposition(&text).unwrap();
        for want in [
            "memwatch_pressure_stall_seconds_total{resource=\"memory\",kind=\"some\"} 2.5\n",
            "memwatch_pressure_stall_seconds_total{resource=\"memory\",kind=\"full\"} 1\n",
            "memwatch_pressure_stall_seconds_total{resource=\"io\",kind=\"some\"} 3e-6\n",
            "memwatch_pressure_stall_ratio{resource=\"memory\",kind=\"some\",window=\"10s\"} 0.015\n",
            "memwatch_pressure_stall_ratio{resource=\"memory\",kind=\"some\",window=\"60s\"} 0.0025\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(errors.get(), 1);

        let empty = testutil::TempDir::new("nopsi");
        let c = Pressure::new(empty.path(), ParseErrors::default());
        let mut out = Text::default();
        c.write_text(&mut out).unwrap();
        assert!(out.as_str().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in testutil::procish_text()) {
            let (lines, errors) = parse(&text);
            let n = text.lines().filter(|l| !l.trim().is_empty()).count();
            proptest::prop_assert_eq!(lines.len() + errors.len(), n);
            proptest::prop_assert!(lines.len() <= 2);
        }
    }
}
