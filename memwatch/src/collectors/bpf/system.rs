//! What the bpf collector asks the running system, in one place: a process's current
//! name and cgroup, whether it is alive, the NUMA nodes, the page size.

use memwatch_common::node;

use crate::collectors::attribution::Hierarchy;

/// A live process's current name (the kernel keeps the comm of a row's first event,
/// which for a forked child that then execs is the parent's).
pub fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
}

/// Whether a process exists (anything but ESRCH counts as alive).
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The memory controller's hierarchy, to name a process's cgroup.
pub fn hierarchy() -> Hierarchy {
    Hierarchy::detect()
}

/// The cgroup path of `pid` in `hierarchy`, if the process is alive.
pub fn cgroup_of(hierarchy: &Hierarchy, pid: u32) -> Option<String> {
    hierarchy.cgroup_of(pid)
}

/// The page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64
}

/// NUMA nodes that have memory (node 0 when sysfs can't say).
pub fn online_nodes() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/node/online").unwrap_or_default();
    let mut v = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            v.extend((a..=b).filter(|&n| n < node::MAX_NODES));
        }
    }
    if v.is_empty() {
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_list() {
        assert!(!online_nodes().is_empty());
    }
}
