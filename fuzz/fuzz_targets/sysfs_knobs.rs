//! The sysctl and sysfs knob formats: one integer, a choice list
//! (`always [madvise] never`), a node list (`0-1,4`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::parse;
use memwatch_common::node::MAX_NODES;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(v) = parse::parse_sysctl(text) {
        assert!(v.is_finite());
    }
    if let Some(opts) = parse::parse_choice(text) {
        assert_eq!(opts.iter().filter(|o| o.1).count(), 1);
        let selected = parse::selected_choice(text);
        assert!(opts.iter().any(|o| o.1 && o.0 == selected));
        // Printed back as sysfs prints it, the list parses to itself.
        let printed: Vec<String> = opts
            .iter()
            .map(|(n, s)| if *s { format!("[{n}]") } else { n.to_string() })
            .collect();
        assert_eq!(parse::parse_choice(&printed.join(" ")), Some(opts));
    } else {
        assert_eq!(parse::selected_choice(text), "");
    }
    let nodes = parse::node_list(text, MAX_NODES);
    assert!(!nodes.is_empty());
    assert!(nodes.iter().all(|&n| n < MAX_NODES), "{nodes:?}");
});
