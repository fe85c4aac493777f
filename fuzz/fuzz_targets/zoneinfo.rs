//! /proc/zoneinfo: the block parser, the totals and the per-zone headroom.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::parse::zoneinfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (parsed, errors) = zoneinfo::parse(text);
    let _ = parsed.totals();
    for z in &parsed.zones {
        let _ = z.headroom();
        // No zone appears twice, and no field twice within a list.
        assert_eq!(
            parsed
                .zones
                .iter()
                .filter(|o| o.node == z.node && o.zone == z.zone)
                .count(),
            1
        );
        for list in [&z.header, &z.stats, &z.scalars] {
            for f in list.iter() {
                assert_eq!(list.iter().filter(|o| o.name == f.name).count(), 1, "{f:?}");
            }
        }
    }
    for n in &parsed.nodes {
        assert!(parsed.zones.iter().any(|z| z.node == n.node), "{n:?}");
    }
    assert!(errors.len() <= text.lines().count());
});
