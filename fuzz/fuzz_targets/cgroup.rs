//! /proc/PID/cgroup: membership (`in_cgroup`) and the memory controller's path.
//! Input: the cgroup path wanted, a NUL, then the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::parse::pid::{in_cgroup, Hierarchy};
use memwatch_fuzz::split_nul;

fuzz_target!(|data: &[u8]| {
    let (want, file) = split_nul(data);
    let (Ok(want), Ok(file)) = (std::str::from_utf8(want), std::str::from_utf8(file)) else {
        return;
    };
    let member = in_cgroup(file, want);
    // Every cgroup is below the root.
    let has_line = file.lines().any(|l| l.splitn(3, ':').nth(2).is_some());
    assert_eq!(in_cgroup(file, "/"), has_line);
    // A process in `/a/b` is in `/a` too.
    if let Some((parent, _)) = want.trim_end_matches('/').rsplit_once('/') {
        if member {
            assert!(in_cgroup(file, parent), "{want:?} but not {parent:?}");
        }
    }
    let h = Hierarchy::detect(file);
    for h in [h, Hierarchy::Unified] {
        // The process is in the cgroup its memory controller's line names.
        if let Some(path) = h.path_in(file) {
            assert!(in_cgroup(file, &path), "{h:?} {path:?}");
        }
    }
});
