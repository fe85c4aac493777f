//! Small builders for Prometheus metric families, so collectors read as lists of
//! samples instead of protobuf plumbing.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// One metric family under construction.
pub struct Family(MetricFamily);

impl Family {
    /// A counter family; `name` should end in `_total`.
    pub fn counter(name: impl Into<String>, help: impl Into<String>) -> Self {
        Self::new(name, help, MetricType::COUNTER)
    }

    /// A gauge family.
    pub fn gauge(name: impl Into<String>, help: impl Into<String>) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    /// A histogram family; samples go in with `histogram`.
    pub fn histogram(name: impl Into<String>, help: impl Into<String>) -> Self {
        Self::new(name, help, MetricType::HISTOGRAM)
    }

    fn new(name: impl Into<String>, help: impl Into<String>, kind: MetricType) -> Self {
        let mut mf = MetricFamily::default();
        mf.set_name(name.into());
        mf.set_help(help.into());
        mf.set_field_type(kind);
        Self(mf)
    }

    /// Adds one sample with the given labels.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let mut m = Metric::default();
        m.set_label(label_pairs(labels));
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.0.mut_metric().push(m);
        self
    }

    /// Adds one histogram: `buckets` are (upper bound, cumulative count), ascending;
    /// `count` is the +Inf bucket.
    pub fn histogram_sample(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) -> &mut Self {
        let mut h = Histogram::default();
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        h.set_bucket(
            buckets
                .iter()
                .map(|&(le, c)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(c);
                    b
                })
                .collect(),
        );
        let mut m = Metric::default();
        m.set_label(label_pairs(labels));
        m.set_histogram(h);
        self.0.mut_metric().push(m);
        self
    }

    /// Adds the family to `out` if it has samples.
    pub fn push_to(self, out: &mut Vec<MetricFamily>) {
        if !self.0.get_metric().is_empty() {
            out.push(self.0);
        }
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

/// Encodes families in the Prometheus text exposition format.
pub fn encode_text(families: &[MetricFamily]) -> String {
    let mut buf = String::with_capacity(64 * 1024);
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(families, &mut buf) {
        log::error!("encoding metrics failed: {e}");
    }
    buf
}
