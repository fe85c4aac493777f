//! /proc/PID/stat: parse, then print a stat line with the same comm and counts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::parse::pid::parse_stat;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(stat) = parse_stat(text) else {
        return;
    };
    let printed = format!(
        "42 ({}) S 1 42 42 0 -1 4194560 {} 0 {} 0 1 2 0 0 20 0 1 0",
        stat.comm, stat.minflt, stat.majflt
    );
    assert_eq!(parse_stat(&printed), Some(stat), "{printed:?}");
});
