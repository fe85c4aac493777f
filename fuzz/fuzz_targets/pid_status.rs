//! /proc/PID/status as the fork episodes and the processes collector read it:
//! `field_bytes` of the fields they ask for, and of every field the text names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::parse::meminfo;

const ASKED: &[&str] = &[
    "VmRSS", "VmSwap", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Name",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for field in ASKED {
        let v = meminfo::field_bytes(text, field);
        // A value comes from a line naming that field that parses on its own.
        if let Some(v) = v {
            assert!(
                text.lines()
                    .any(|l| meminfo::parse_line(l)
                        .is_some_and(|e| e.field == *field && e.value == v))
            );
        }
    }
    for line in text.lines() {
        if let Some((field, _)) = line.split_once(':') {
            let _ = meminfo::field_bytes(text, field.trim());
        }
    }
});
