//! `CommPattern::matches` against a dynamic-programming reference.
//! Input: the pattern, a NUL, then the comm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::parse::CommPattern;
use memwatch_fuzz::{glob_reference, split_nul};

fuzz_target!(|data: &[u8]| {
    let (pattern, comm) = split_nul(data);
    let (Ok(pattern), Ok(comm)) = (std::str::from_utf8(pattern), std::str::from_utf8(comm)) else {
        return;
    };
    // Comms are at most 15 bytes, patterns are short; longer inputs only slow the run.
    if pattern.len() > 64 || comm.len() > 64 {
        return;
    }
    let got = CommPattern::new(pattern).matches(comm);
    let want = glob_reference(pattern.as_bytes(), comm.as_bytes());
    assert_eq!(got, want, "pattern {pattern:?} comm {comm:?}");
});
