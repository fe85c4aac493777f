//! `memwatch_build_info`: what is running, on which kernel.

use prometheus::proto::MetricFamily;

use super::Collector;
use crate::{host::Host, metrics::Family};

pub struct BuildInfo {
    kernel: String,
}

impl BuildInfo {
    pub fn new(host: &Host) -> Self {
        Self {
            kernel: host.kernel_release().to_string(),
        }
    }
}

impl Collector for BuildInfo {
    fn name(&self) -> &'static str {
        "build_info"
    }

    fn collect(&self, out: &mut Vec<MetricFamily>) -> anyhow::Result<()> {
        let mut f = Family::gauge(
            "memwatch_build_info",
            "memwatch's version and the kernel it runs on; always 1.",
        );
        f.sample(
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", env!("MEMWATCH_GIT_REVISION")),
                ("kernel", &self.kernel),
            ],
            1.0,
        );
        f.push_to(out);
        Ok(())
    }
}
