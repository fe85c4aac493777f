//! Collectors, one per source (node_exporter's pattern): each turns one source into
//! metric families at scrape time, and the registry reports how each one did in
//! `memwatch_scrape_collector_duration_seconds` and `memwatch_scrape_collector_success`.

pub mod attribution;
pub mod bpf;
pub mod build_info;
pub mod episodes;
pub mod meminfo;
pub mod probes;

use std::time::Instant;

use prometheus::proto::MetricFamily;

use crate::metrics::Family;

/// One source of metrics.
pub trait Collector: Send + Sync {
    /// Short name, used as the `collector` label.
    fn name(&self) -> &'static str;
    /// Appends this source's families to `out`. An error fails this collector only.
    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()>;
}

/// Every enabled collector.
#[derive(Default)]
pub struct Registry {
    collectors: Vec<Box<dyn Collector>>,
}

impl Registry {
    pub fn register(&mut self, c: Box<dyn Collector>) {
        self.collectors.push(c);
    }

    /// Runs every collector; one that fails is logged and reported, the rest go on.
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut out = Vec::with_capacity(256);
        let mut duration = Family::gauge(
            "memwatch_scrape_collector_duration_seconds",
            "Time a collector took during this scrape.",
        );
        let mut success = Family::gauge(
            "memwatch_scrape_collector_success",
            "Whether a collector succeeded during this scrape (1) or failed (0).",
        );
        for c in &self.collectors {
            let start = Instant::now();
            let ok = match c.collect(&mut out) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("collector {} failed: {e:#}", c.name());
                    false
                }
            };
            duration.sample(&[("collector", c.name())], start.elapsed().as_secs_f64());
            success.sample(&[("collector", c.name())], if ok { 1.0 } else { 0.0 });
        }
        duration.push_to(&mut out);
        success.push_to(&mut out);
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }
}
