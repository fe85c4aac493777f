//! Pressure stall information (PSI): /proc/pressure/{memory,io}.

/// The resources read, as the file names under /proc/pressure.
pub const RESOURCES: &[&str] = &["memory", "io"];

/// One line of a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line<'a> {
    /// `some` or `full`.
    pub kind: &'a str,
    /// Percent of wall time stalled over the last 10, 60 and 300 seconds.
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time, microseconds.
    pub total_us: u64,
}

/// Parses a PSI file; returns the lines and the malformed ones.
pub fn parse(text: &str) -> (Vec<Line<'_>>, Vec<&str>) {
    let mut lines: Vec<Line> = Vec::with_capacity(2);
    let mut errors = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_line(l) {
            Some(p) if !lines.iter().any(|x| x.kind == p.kind) => lines.push(p),
            _ => errors.push(l),
        }
    }
    (lines, errors)
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    let mut words = line.split_ascii_whitespace();
    let kind = words.next()?;
    if kind != "some" && kind != "full" {
        return None;
    }
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for w in words {
        let (k, v) = w.split_once('=')?;
        let slot = match k {
            "avg10" => &mut avg10,
            "avg60" => &mut avg60,
            "avg300" => &mut avg300,
            "total" => {
                if total.replace(v.parse::<u64>().ok()?).is_some() {
                    return None;
                }
                continue;
            }
            // A key a future kernel adds is ignored, not an error.
            _ => continue,
        };
        let v: f64 = v.parse().ok()?;
        if !v.is_finite() || slot.replace(v).is_some() {
            return None;
        }
    }
    Some(Line {
        kind,
        avg10: avg10?,
        avg60: avg60?,
        avg300: avg300?,
        total_us: total?,
    })
}
