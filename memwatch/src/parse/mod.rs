//! The text the kernel writes under /proc and /sys, parsed: one parser per file format,
//! shared by the collectors (which export it) and the fork episodes (which quote it),
//! and the rules that match processes by comm and cgroup. Nothing here reads a file or
//! knows a metric name; `host` reads, `collectors` name.

pub mod meminfo;
pub mod pid;
pub mod pressure;
pub mod zoneinfo;

pub use pid::{in_cgroup, CommPattern};

/// One `name value` line of /proc/vmstat (or of a block of /proc/zoneinfo).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field<'a> {
    pub name: &'a str,
    pub value: f64,
}

/// Parses `name value` where value is an integer (the kernel prints unsigned longs;
/// a signed value is accepted for a drifting per-CPU sum).
pub fn parse_kv(line: &str) -> Option<Field<'_>> {
    let mut words = line.split_ascii_whitespace();
    let name = words.next()?;
    let value = parse_int(words.next()?)?;
    if words.next().is_some() || !valid_name(name) {
        return None;
    }
    Some(Field { name, value })
}

/// An integer as f64: u64, or i64 when negative.
pub fn parse_int(s: &str) -> Option<f64> {
    if let Ok(v) = s.parse::<u64>() {
        return Some(v as f64);
    }
    s.parse::<i64>().ok().map(|v| v as f64)
}

/// A kernel field name we can turn into a metric name: ASCII, starts with a letter.
pub fn valid_name(name: &str) -> bool {
    name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses a sysctl holding one integer.
pub fn parse_sysctl(text: &str) -> Option<f64> {
    let mut words = text.split_ascii_whitespace();
    let v = parse_int(words.next()?)?;
    words.next().is_none().then_some(v)
}

/// Parses a sysfs choice list, `always [madvise] never`: every option and whether it is
/// the selected one. Exactly one option must be selected.
pub fn parse_choice(text: &str) -> Option<Vec<(&str, bool)>> {
    let mut opts = Vec::with_capacity(5);
    for w in text.split_ascii_whitespace() {
        let (name, selected) = match w.strip_prefix('[') {
            Some(rest) => (rest.strip_suffix(']')?, true),
            None => (w, false),
        };
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b));
        if !ok || opts.iter().any(|(n, _)| *n == name) || opts.len() >= 16 {
            return None;
        }
        opts.push((name, selected));
    }
    (opts.iter().filter(|o| o.1).count() == 1).then_some(opts)
}

/// The selected option of a sysfs choice list (`always [madvise] never` → `madvise`),
/// or "" when the text is not a choice list.
pub fn selected_choice(text: &str) -> &str {
    parse_choice(text)
        .and_then(|opts| opts.into_iter().find(|o| o.1))
        .map_or("", |o| o.0)
}

/// A sysfs node list such as `0-1,4` (/sys/devices/system/node/online): the nodes below
/// `max`, or node 0 when the list names none.
pub fn node_list(text: &str, max: usize) -> Vec<usize> {
    let mut v = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            // Clamped first: `0-18446744073709551615` must not walk 2^64 numbers.
            v.extend(a..b.saturating_add(1).min(max));
        }
    }
    if v.is_empty() {
        v.push(0);
    }
    v
}

/// A kernel comm buffer (NUL-padded) as a string.
pub fn comm_str(comm: &[u8; memwatch_common::COMM_LEN]) -> String {
    let name = comm.split(|&b| b == 0).next().unwrap_or(&[]);
    String::from_utf8_lossy(name).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_and_nodes() {
        assert_eq!(selected_choice("always [madvise] never\n"), "madvise");
        assert_eq!(selected_choice("[always] defer"), "always");
        assert_eq!(selected_choice(""), "");
        assert_eq!(node_list("0\n", 64), vec![0]);
        assert_eq!(node_list("0-2,5\n", 64), vec![0, 1, 2, 5]);
        assert_eq!(node_list("0-3", 2), vec![0, 1]);
        assert_eq!(node_list("", 64), vec![0]);
        assert_eq!(node_list("x-y", 64), vec![0]);
        // A range to the end of usize is clamped before it is walked (it took 2^64
        // steps), and a reversed one is empty.
        assert_eq!(node_list("0-18446744073709551615", 4), vec![0, 1, 2, 3]);
        assert_eq!(node_list("3-1", 64), vec![0]);
        let mut comm = [0u8; memwatch_common::COMM_LEN];
        comm[..5].copy_from_slice(b"redis");
        assert_eq!(comm_str(&comm), "redis");
        assert_eq!(comm_str(&[b'a'; memwatch_common::COMM_LEN]), "a".repeat(16));
    }
}
