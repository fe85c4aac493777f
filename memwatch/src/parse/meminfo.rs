//! /proc/meminfo, and the `Field: value kB` lines it shares with /proc/PID/status and
//! /proc/PID/smaps_rollup.

/// One parsed line of /proc/meminfo.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<'a> {
    /// The field as the kernel spells it, e.g. `Active(anon)`.
    pub field: &'a str,
    /// The value in bytes, or a plain count when `unit` is `None`.
    pub value: u64,
    /// `Some("kB")` for sizes; `None` for counts such as `HugePages_Total`.
    pub unit: Option<&'a str>,
}

/// Parses /proc/meminfo. Malformed lines are skipped and returned beside the entries,
/// so one bad line never costs the rest.
pub fn parse(text: &str) -> (Vec<Entry<'_>>, Vec<&str>) {
    let mut entries = Vec::with_capacity(64);
    let mut errors = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_line(line) {
            Some(e) if entries.iter().any(|x: &Entry| x.field == e.field) => errors.push(line),
            Some(e) => entries.push(e),
            None => errors.push(line),
        }
    }
    (entries, errors)
}

pub fn parse_line(line: &str) -> Option<Entry<'_>> {
    let (field, rest) = line.split_once(':')?;
    let field = field.trim();
    if field.is_empty() {
        return None;
    }
    let mut words = rest.split_whitespace();
    let number: u64 = words.next()?.parse().ok()?;
    let (value, unit) = match words.next() {
        None => (number, None),
        Some("kB") => (number.checked_mul(1024)?, Some("kB")),
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some(Entry { field, value, unit })
}

/// The value of one field, in bytes where the kernel gives kB (`None` when the field is
/// absent or malformed): `field_bytes(status, "VmRSS")`.
pub fn field_bytes(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .filter(|l| l.split_once(':').is_some_and(|(f, _)| f.trim() == field))
        .find_map(parse_line)
        .map(|e| e.value)
}
