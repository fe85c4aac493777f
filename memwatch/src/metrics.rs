//! Small builders for Prometheus metric families, so collectors read as lists of
//! samples instead of protobuf plumbing.

use parking_lot::Mutex;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

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
#[cfg(test)]
pub fn encode_text(families: &[MetricFamily]) -> String {
    let mut buf = String::with_capacity(64 * 1024);
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(families, &mut buf) {
        log::error!("encoding metrics failed: {e}");
    }
    buf
}

/// A metric type, for [`Text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

/// The text exposition format written directly into one buffer: the scrape path of the
/// collectors with hundreds of series, without a protobuf object (and its strings) per
/// sample. Collectors keep the constant parts (`# HELP`/`# TYPE` lines, `name ` or
/// `name{labels} ` prefixes) rendered between scrapes.
///
/// Each family name is written once per exposition: a second family of the same name is
/// refused and its samples are dropped, so the output stays valid whatever a collector
/// does.
pub struct Text {
    buf: String,
    /// FNV-1a hashes of the family names written so far.
    seen: std::collections::HashSet<u64, std::hash::BuildHasherDefault<IdentityHasher>>,
    /// The current family was refused: drop its samples.
    skipping: bool,
    /// Where each family starts in `buf`, with its name's hash, so that another
    /// exposition can be appended family by family ([`Text::append`]).
    starts: Vec<(u64, usize)>,
}

impl Default for Text {
    fn default() -> Self {
        Self::with_capacity(64 * 1024)
    }
}

impl Text {
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: String::with_capacity(bytes),
            seen: std::collections::HashSet::with_capacity_and_hasher(1024, Default::default()),
            skipping: false,
            starts: Vec::new(),
        }
    }

    /// The `# HELP` and `# TYPE` lines of a family, for a collector to keep.
    pub fn header(name: &str, help: &str, kind: Kind) -> String {
        let mut s = String::with_capacity(name.len() * 2 + help.len() + 24);
        s.push_str("# HELP ");
        s.push_str(name);
        s.push(' ');
        for c in help.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push_str("\n# TYPE ");
        s.push_str(name);
        s.push(' ');
        s.push_str(kind.as_str());
        s.push('\n');
        s
    }

    /// Appends `{k="v",...}` (values escaped) to `out`; nothing for no labels.
    pub fn push_labels(out: &mut String, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }

    /// Starts a family with its header lines made by [`Text::header`]. Returns false,
    /// and drops the samples that follow, when a family of that name was already written.
    pub fn family_with_header(&mut self, name: &str, header: &str) -> bool {
        let hash = fnv1a(name);
        self.skipping = !self.seen.insert(hash);
        if self.skipping {
            log::warn!("dropping a second metric family named {name}");
        } else {
            self.starts.push((hash, self.buf.len()));
            self.buf.push_str(header);
        }
        !self.skipping
    }

    /// Appends another exposition (one collector's, written on its own), family by
    /// family: a family whose name this one already has is dropped, as
    /// [`Text::family_with_header`] would.
    pub fn append(&mut self, other: &Text) {
        self.skipping = false;
        let ends = other
            .starts
            .iter()
            .skip(1)
            .map(|&(_, start)| start)
            .chain([other.buf.len()]);
        for (&(hash, start), end) in other.starts.iter().zip(ends) {
            let Some(family) = other.buf.get(start..end) else {
                continue;
            };
            if self.seen.insert(hash) {
                self.starts.push((hash, self.buf.len()));
                self.buf.push_str(family);
            } else {
                let name = family
                    .strip_prefix("# HELP ")
                    .and_then(|r| r.split(' ').next())
                    .unwrap_or("?");
                log::warn!("dropping a second metric family named {name}");
            }
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Starts a family.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> bool {
        self.family_with_header(name, &Self::header(name, help, kind))
    }

    /// A sample of the current family whose `name{labels} ` prefix (with the space) the
    /// caller rendered.
    pub fn sample_raw(&mut self, prefix: &str, value: f64) {
        if self.skipping {
            return;
        }
        self.buf.push_str(prefix);
        push_value(&mut self.buf, value);
        self.buf.push('\n');
    }

    /// A sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        if self.skipping {
            return;
        }
        self.buf.push_str(name);
        Self::push_labels(&mut self.buf, labels);
        self.buf.push(' ');
        push_value(&mut self.buf, value);
        self.buf.push('\n');
    }

    /// A sample whose labels are already rendered (`{k="v"}`, escaped), between name
    /// and value.
    pub fn sample_labels(&mut self, name: &str, labels: &str, value: f64) {
        if self.skipping {
            return;
        }
        self.buf.push_str(name);
        self.buf.push_str(labels);
        self.buf.push(' ');
        push_value(&mut self.buf, value);
        self.buf.push('\n');
    }

    /// Writes families built with [`Family`] (or any protobuf families), as the
    /// prometheus crate's encoder would, except that infinities are spelled `+Inf`.
    pub fn families(&mut self, families: &[MetricFamily]) {
        let mut labels: Vec<(&str, &str)> = Vec::new();
        for f in families {
            let kind = match f.get_field_type() {
                MetricType::COUNTER => Kind::Counter,
                MetricType::GAUGE => Kind::Gauge,
                MetricType::HISTOGRAM => Kind::Histogram,
                MetricType::SUMMARY => Kind::Summary,
                MetricType::UNTYPED => {
                    log::warn!("skipping untyped family {}", f.name());
                    continue;
                }
            };
            if !self.family(f.name(), f.help(), kind) {
                continue;
            }
            let name = f.name();
            for m in f.get_metric() {
                labels.clear();
                labels.extend(m.get_label().iter().map(|l| (l.name(), l.value())));
                match kind {
                    Kind::Counter => self.sample(name, &labels, m.get_counter().get_value()),
                    Kind::Gauge => self.sample(name, &labels, m.get_gauge().get_value()),
                    Kind::Histogram => {
                        let h = m.get_histogram();
                        let bucket = format!("{name}_bucket");
                        let mut inf_seen = false;
                        for b in h.get_bucket() {
                            let le = b.upper_bound();
                            inf_seen |= le.is_infinite() && le > 0.0;
                            let bound = if le.is_infinite() {
                                (if le > 0.0 { "+Inf" } else { "-Inf" }).to_string()
                            } else {
                                le.to_string()
                            };
                            let mut l = labels.clone();
                            l.push(("le", &bound));
                            self.sample(&bucket, &l, b.cumulative_count() as f64);
                        }
                        if !inf_seen {
                            labels.push(("le", "+Inf"));
                            self.sample(&bucket, &labels, h.get_sample_count() as f64);
                            labels.pop();
                        }
                        self.sample(&format!("{name}_sum"), &labels, h.get_sample_sum());
                        self.sample(
                            &format!("{name}_count"),
                            &labels,
                            h.get_sample_count() as f64,
                        );
                    }
                    Kind::Summary => {
                        let q = m.get_summary();
                        for quantile in q.get_quantile() {
                            let bound = quantile.quantile().to_string();
                            let mut l = labels.clone();
                            l.push(("quantile", &bound));
                            self.sample(name, &l, quantile.value());
                        }
                        self.sample(&format!("{name}_sum"), &labels, q.sample_sum());
                        self.sample(&format!("{name}_count"), &labels, q.sample_count() as f64);
                    }
                }
            }
        }
    }

    /// The exposition so far.
    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    pub fn into_string(self) -> String {
        self.buf
    }
}

/// What a collector keeps between scrapes for one unlabelled series: the family name,
/// its `# HELP`/`# TYPE` lines and the `name ` prefix of its sample.
pub struct Rendered {
    key: String,
    variant: u8,
    pub name: String,
    pub header: String,
    pub prefix: String,
}

impl Rendered {
    pub fn new(name: String, help: &str, kind: Kind) -> Self {
        let header = Text::header(&name, help, kind);
        let prefix = format!("{name} ");
        Self {
            key: String::new(),
            variant: 0,
            name,
            header,
            prefix,
        }
    }

    /// Writes the family with its one sample.
    pub fn write(&self, out: &mut Text, value: f64) -> bool {
        let ok = out.family_with_header(&self.name, &self.header);
        out.sample_raw(&self.prefix, value);
        ok
    }
}

/// Rendered series by position: a /proc file lists its fields in the same order every
/// time, so the k-th field is found by position and checked by name, without hashing or
/// allocating; a field that moved is rendered again.
#[derive(Default)]
pub struct PositionalCache(Vec<Rendered>);

impl PositionalCache {
    /// The series of the `k`-th field, `key` (with a `variant`, e.g. a unit), made by
    /// `make` when not cached at that position.
    pub fn get(
        &mut self,
        k: usize,
        key: &str,
        variant: u8,
        make: impl FnOnce() -> Rendered,
    ) -> &Rendered {
        let hit = self
            .0
            .get(k)
            .is_some_and(|r| r.variant == variant && r.key == key);
        if !hit {
            let mut r = make();
            r.key = key.to_string();
            r.variant = variant;
            match self.0.get_mut(k) {
                Some(slot) => *slot = r,
                None => self.0.push(r),
            }
        }
        // `k` is in range, or the push above made the last slot its entry.
        let k = k.min(self.0.len().saturating_sub(1));
        #[allow(clippy::indexing_slicing, reason = "not empty: filled above")]
        &self.0[k]
    }
}

/// `v[i]`, or 0 past its end: counter slots come from the shared layout, so a slot
/// past the end is a build mismatch, which shows as zeros rather than a panic.
pub fn at(v: &[u64], i: usize) -> u64 {
    v.get(i).copied().unwrap_or(0)
}

/// Appends a sample value as the text format spells it: integers without a fraction,
/// `+Inf`, `-Inf`, `NaN`, and other floats in Rust's shortest round-trip form.
pub fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        push_int(out, v as i64);
    } else {
        use std::fmt::Write as _;
        let _ = write!(out, "{v:?}");
    }
}

/// Appends an integer in decimal.
pub fn push_int(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    let mut buf = itoa_buf::Buf::default();
    out.push_str(buf.format(v.unsigned_abs()));
}

/// Decimal digits of a u64 without a heap allocation.
mod itoa_buf {
    #[derive(Default)]
    pub struct Buf([u8; 20]);

    impl Buf {
        pub fn format(&mut self, mut n: u64) -> &str {
            let mut start = self.0.len();
            for slot in self.0.iter_mut().rev() {
                *slot = b'0' + (n % 10) as u8;
                start -= 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            // ASCII digits.
            self.0
                .get(start..)
                .and_then(|d| std::str::from_utf8(d).ok())
                .unwrap_or("0")
        }
    }
}

/// The figures of one bounded table of memwatch's own (userspace state keyed by
/// something the host's users control: cgroups, comms, pids, episodes), set by the
/// table's owner and exported in `memwatch_table_entries`, `memwatch_table_max_entries`
/// and `memwatch_table_evictions_total`.
#[derive(Debug, Default)]
pub struct TableGauge {
    entries: AtomicU64,
    capacity: AtomicU64,
    evictions: AtomicU64,
}

impl TableGauge {
    /// A table that holds at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        let t = Self::default();
        t.set_capacity(capacity);
        t
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity as u64, Ordering::Relaxed);
    }

    /// The entries the table holds now.
    pub fn set_entries(&self, n: usize) {
        self.entries.store(n as u64, Ordering::Relaxed);
    }

    /// Counts `n` entries evicted to stay within the capacity.
    pub fn evicted(&self, n: u64) {
        if n > 0 {
            self.evictions.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// (entries, capacity, evictions).
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.entries.load(Ordering::Relaxed),
            self.capacity.load(Ordering::Relaxed),
            self.evictions.load(Ordering::Relaxed),
        )
    }
}

/// memwatch's own bounded tables, by name, shared between their owners and the
/// collector that exports them (one family per figure, whoever owns the table).
#[derive(Clone, Default)]
pub struct Tables(Arc<Mutex<Vec<NamedTable>>>);

/// A table and its name (the `table` label).
type NamedTable = (&'static str, Arc<TableGauge>);

impl Tables {
    /// Adds a table (a second one of the same name replaces the first).
    pub fn add(&self, name: &'static str, table: Arc<TableGauge>) {
        let mut v = self.0.lock();
        v.retain(|(n, _)| *n != name);
        v.push((name, table));
        v.sort_by_key(|(n, _)| *n);
    }

    /// Every table's (name, entries, capacity, evictions), by name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64, u64)> {
        let v = self.0.lock();
        v.iter()
            .map(|(n, t)| {
                let (e, c, x) = t.get();
                (*n, e, c, x)
            })
            .collect()
    }
}

/// FNV-1a, 64 bits: a fast hash for the short family names.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A hasher for keys that are already hashes.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let f = |v: f64| {
            let mut s = String::new();
            push_value(&mut s, v);
            s
        };
        assert_eq!(f(0.0), "0");
        assert_eq!(f(-0.0), "0");
        assert_eq!(f(42.0), "42");
        assert_eq!(f(-7.0), "-7");
        assert_eq!(f(0.25), "0.25");
        assert_eq!(f(0.0061), "0.0061");
        assert_eq!(f(u64::MAX as f64), "1.8446744073709552e19");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(f(1e-7), "1e-7");
        assert_eq!(f(i64::MIN as f64), "-9.223372036854776e18");
    }

    #[test]
    fn text_escapes_and_refuses_duplicates() {
        let mut t = Text::default();
        assert!(t.family("a_total", "line\nback\\slash", Kind::Counter));
        t.sample("a_total", &[("l", "q\"x\\\n")], 1.0);
        assert!(t.family("b", "h", Kind::Gauge));
        t.sample_labels("b", "{x=\"1\"}", 2.5);
        assert!(!t.family("a_total", "again", Kind::Counter));
        t.sample("a_total", &[], 9.0);
        assert_eq!(
            t.as_str(),
            "# HELP a_total line\\nback\\\\slash\n# TYPE a_total counter\n\
             a_total{l=\"q\\\"x\\\\\\n\"} 1\n\
             # HELP b h\n# TYPE b gauge\nb{x=\"1\"} 2.5\n"
        );
    }

    #[test]
    fn tables_by_name_with_their_figures() {
        let t = Tables::default();
        let a = Arc::new(TableGauge::new(4));
        t.add("zeta", Arc::new(TableGauge::new(1)));
        t.add("alpha", a.clone());
        a.set_entries(3);
        a.evicted(2);
        a.evicted(0);
        assert_eq!(t.snapshot(), [("alpha", 3, 4, 2), ("zeta", 0, 1, 0)]);
        // A second table of a name replaces the first.
        t.add("alpha", Arc::new(TableGauge::new(9)));
        assert_eq!(t.snapshot()[0], ("alpha", 0, 9, 0));
    }

    /// Label values with every character the text format escapes, and the ones it
    /// does not need to.
    #[test]
    fn hostile_label_values_are_escaped() {
        let mut t = Text::default();
        assert!(t.family("x_total", "X.", Kind::Counter));
        t.sample("x_total", &[("comm", "a\"b"), ("k", "back\\slash")], 1.0);
        t.sample(
            "x_total",
            &[("comm", "new\nline"), ("k", "{brace}=,\u{fffd}")],
            2.0,
        );
        assert_eq!(
            t.as_str(),
            "# HELP x_total X.\n# TYPE x_total counter\n\
             x_total{comm=\"a\\\"b\",k=\"back\\\\slash\"} 1\n\
             x_total{comm=\"new\\nline\",k=\"{brace}=,\u{fffd}\"} 2\n"
        );
    }

    /// Protobuf families come out as the prometheus crate's encoder writes them.
    #[test]
    fn families_match_the_crate_encoder() {
        let mut fams = Vec::new();
        let mut f = Family::counter("x_total", "X.");
        f.sample(&[("a", "1"), ("b", "two")], 3.0);
        f.sample(&[("a", "2"), ("b", "q\"")], 4.5);
        f.push_to(&mut fams);
        let mut g = Family::gauge("y", "Y \\ z.");
        g.sample(&[], 1.0);
        g.push_to(&mut fams);
        let mut h = Family::histogram("z_seconds", "Z.");
        h.histogram_sample(&[("k", "v")], &[(0.001, 1), (0.5, 3), (2.0, 4)], 5, 7.25);
        h.histogram_sample(&[("k", "w")], &[], 0, 0.0);
        h.push_to(&mut fams);
        let mut t = Text::default();
        t.families(&fams);
        assert_eq!(t.as_str(), encode_text(&fams));
    }
}
