//! `memwatch_probe_info`: which rung each hook runs on.

use prometheus::proto::MetricFamily;

use super::Collector;
use crate::{metrics::Family, probes::HookOutcome};

pub struct ProbeInfo {
    outcomes: Vec<HookOutcome>,
}

impl ProbeInfo {
    pub fn new(outcomes: Vec<HookOutcome>) -> Self {
        Self { outcomes }
    }
}

impl Collector for ProbeInfo {
    fn name(&self) -> &'static str {
        "probes"
    }

    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
        let mut info = Family::gauge(
            "memwatch_probe_info",
            "The rung each hook runs on (mode=\"none\": nothing attached); always 1.",
        );
        let mut degraded = Family::gauge(
            "memwatch_probe_degraded",
            "1 when a hook runs on a lower rung than its best (or on none), else 0.",
        );
        for o in &self.outcomes {
            let labels = |mode| {
                [
                    ("family", o.hook.family()),
                    ("hook", o.hook.name()),
                    ("mode", mode),
                ]
            };
            info.sample(&labels(o.chosen.map_or("none", |m| m.as_str())), 1.0);
            let worse = o.chosen != Some(o.best_mode());
            degraded.sample(
                &[("family", o.hook.family()), ("hook", o.hook.name())],
                if worse { 1.0 } else { 0.0 },
            );
        }
        info.push_to(out);
        degraded.push_to(out);
        Ok(())
    }
}
