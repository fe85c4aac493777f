//! /proc/PID/smaps_rollup: the `[rollup]` header is skipped, sizes come in bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::parse::pid::parse_smaps_rollup;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (fields, _errors) = parse_smaps_rollup(text);
    for f in &fields {
        assert!(!f.bytes || f.value % 1024 == 0, "{f:?}");
        assert_eq!(
            fields.iter().filter(|o| o.field == f.field).count(),
            1,
            "{f:?}"
        );
    }
});
