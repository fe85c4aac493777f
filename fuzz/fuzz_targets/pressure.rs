//! /proc/pressure/{memory,io}: parse, then print the lines back and parse them again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::parse::pressure;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (lines, _errors) = pressure::parse(text);
    assert!(lines.len() <= 2, "{lines:?}");
    let mut printed = String::new();
    for l in &lines {
        assert!(l.avg10.is_finite() && l.avg60.is_finite() && l.avg300.is_finite());
        printed.push_str(&format!(
            "{} avg10={} avg60={} avg300={} total={}\n",
            l.kind, l.avg10, l.avg60, l.avg300, l.total_us
        ));
    }
    let (again, errors) = pressure::parse(&printed);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(again, lines);
});
