//! /proc/meminfo: `parse`, `field_bytes` and the exported metric names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::{collectors::meminfo::metric_name, parse::meminfo};
use memwatch_fuzz::is_metric_name;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (entries, errors) = meminfo::parse(text);
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(
        entries.len() + errors.len(),
        lines,
        "every line is an entry or an error"
    );
    let mut rendered = String::new();
    for e in &entries {
        // `field_bytes` finds the same value as the whole-file parse (the first valid
        // line of a field wins in both).
        assert_eq!(meminfo::field_bytes(text, e.field), Some(e.value), "{e:?}");
        let name = metric_name(e.field, e.unit.is_some());
        assert!(is_metric_name(&name), "{e:?} -> {name:?}");
        match e.unit {
            Some(unit) => {
                assert_eq!(e.value % 1024, 0, "{e:?}");
                rendered.push_str(&format!("{}: {} {unit}\n", e.field, e.value / 1024));
            }
            None => rendered.push_str(&format!("{}: {}\n", e.field, e.value)),
        }
    }
    // Rendered back the way the kernel prints it, the entries parse to themselves.
    let (again, errors) = meminfo::parse(&rendered);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(again, entries);
});
