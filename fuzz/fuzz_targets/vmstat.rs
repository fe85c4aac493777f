//! /proc/vmstat: the `name value` line parser and the exported metric names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::{collectors::vmstat::metric_name, parse};
use memwatch_fuzz::is_metric_name;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let Some(f) = parse::parse_kv(line) else {
            continue;
        };
        assert!(parse::valid_name(f.name), "{f:?}");
        let (name, _counter) = metric_name(f.name);
        assert!(is_metric_name(&name), "{f:?} -> {name:?}");
        // Printed as the kernel prints it (an integer), the line parses to itself.
        let printed = if f.value < 0.0 {
            format!("{} {}", f.name, f.value as i64)
        } else {
            format!("{} {}", f.name, f.value as u64)
        };
        assert_eq!(parse::parse_kv(&printed), Some(f), "{printed:?}");
    }
});
