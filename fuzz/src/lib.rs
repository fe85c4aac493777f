//! Helpers shared by the fuzz targets: the properties they check besides "no panic".

/// Whether `name` is a Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// A reference for `CommPattern::matches`: `*` is any run of bytes, every other byte
/// itself, matched by dynamic programming over (pattern prefix, text prefix).
pub fn glob_reference(pattern: &[u8], text: &[u8]) -> bool {
    // m[j]: pattern[..i] matches text[..j].
    let mut m = vec![false; text.len() + 1];
    m[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        if p == b'*' {
            let mut any = false;
            for j in 0..=text.len() {
                any |= m[j];
                next[j] = any;
            }
        } else {
            for j in 1..=text.len() {
                next[j] = m[j - 1] && text[j - 1] == p;
            }
        }
        m = next;
    }
    m[text.len()]
}

/// Splits fuzz input at the first NUL: (before, after); no NUL gives ("", all).
pub fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[], data),
    }
}
