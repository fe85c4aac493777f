//! The machine memwatch watches, as files: where procfs and sysfs are mounted
//! (`--path.procfs`, `--path.sysfs`; a container sees the host's at, say, /host/proc),
//! what is read from them once (kernel release, NUMA nodes with memory, the memory
//! cgroup hierarchy) and what is read per process (comm, status, cgroup). Every
//! collector and the episode tracker reads through one `Host`, so the roots apply
//! everywhere and a test can point them at a fixture tree.
use std::{
    io,
    path::{Path, PathBuf},
};

use crate::parse;
pub use crate::parse::pid::Hierarchy;

/// The procfs and sysfs of the watched machine, and what they say about it.
#[derive(Debug, Clone)]
pub struct Host {
    procfs: PathBuf,
    sysfs: PathBuf,
    kernel_release: String,
    page_size: u64,
    nodes: Vec<usize>,
    hierarchy: Hierarchy,
}

impl Host {
    /// Reads the kernel release (`<procfs>/sys/kernel/osrelease`, "unknown" when
    /// unreadable), the nodes with memory (`<sysfs>/devices/system/node/online`, node 0
    /// when sysfs can't say) and the memory controller's hierarchy (from
    /// `<procfs>/self/cgroup`, cgroup v2 when unreadable).
    pub fn new(procfs: impl Into<PathBuf>, sysfs: impl Into<PathBuf>) -> Self {
        let (procfs, sysfs) = (procfs.into(), sysfs.into());
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let kernel_release = std::fs::read_to_string(procfs.join("sys/kernel/osrelease"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let nodes = parse::node_list(
            &read(sysfs.join("devices/system/node/online")),
            memwatch_common::node::MAX_NODES,
        );
        let hierarchy = Hierarchy::detect(&read(procfs.join("self/cgroup")));
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Self {
            procfs,
            sysfs,
            kernel_release,
            page_size,
            nodes,
            hierarchy,
        }
    }

    /// This machine as it mounts them, at /proc and /sys (commands without
    /// `--path.*` flags).
    pub fn local() -> Self {
        Self::new("/proc", "/sys")
    }

    pub fn procfs(&self) -> &Path {
        &self.procfs
    }

    pub fn sysfs(&self) -> &Path {
        &self.sysfs
    }

    /// A path under procfs: `proc("meminfo")`.
    pub fn proc(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.procfs.join(rel)
    }

    /// A path under sysfs: `sys("kernel/mm/transparent_hugepage/enabled")`.
    pub fn sys(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.sysfs.join(rel)
    }

    /// A file under procfs, whole.
    pub fn read_proc(&self, rel: impl AsRef<Path>) -> io::Result<String> {
        std::fs::read_to_string(self.proc(rel))
    }

    /// A file under sysfs, whole.
    pub fn read_sys(&self, rel: impl AsRef<Path>) -> io::Result<String> {
        std::fs::read_to_string(self.sys(rel))
    }

    /// The kernel release, e.g. `6.1.0-26-amd64`.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// The page size, bytes.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The NUMA nodes that have memory, ascending.
    pub fn nodes(&self) -> &[usize] {
        &self.nodes
    }

    /// The cgroup hierarchy of the memory controller.
    #[cfg(test)]
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// A file of process `pid`: `pid_file(42, "stat")` is `<procfs>/42/stat`.
    pub fn pid_file(&self, pid: u32, file: &str) -> PathBuf {
        self.procfs.join(pid.to_string()).join(file)
    }

    /// Whether process `pid` exists (its procfs directory does).
    pub fn is_alive(&self, pid: u32) -> bool {
        self.procfs.join(pid.to_string()).exists()
    }

    /// The comm of `pid` (its /proc/PID/comm without the one newline the kernel adds;
    /// bytes that are not UTF-8 become U+FFFD, as in the kernel's own rows), if it is
    /// alive.
    pub fn comm(&self, pid: u32) -> Option<String> {
        let bytes = std::fs::read(self.pid_file(pid, "comm")).ok()?;
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    /// The /proc/PID/status of `pid`, if it is alive.
    pub fn status(&self, pid: u32) -> Option<String> {
        std::fs::read_to_string(self.pid_file(pid, "status")).ok()
    }

    /// The /proc/PID/cgroup of `pid`, if it is alive.
    pub fn cgroup_file(&self, pid: u32) -> Option<String> {
        let bytes = std::fs::read(self.pid_file(pid, "cgroup")).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The memory cgroup of `pid` (its path in the memory controller's hierarchy).
    pub fn cgroup_of(&self, pid: u32) -> Option<String> {
        self.hierarchy.path_in(&self.cgroup_file(pid)?)
    }
}

/// A fake procfs or sysfs for tests.
#[cfg(test)]
pub mod testing {
    use std::path::{Path, PathBuf};

    /// A temporary directory standing in for /proc or /sys, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "memwatch-unit-{}-{name}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        /// Writes `rel` (creating its folders).
        pub fn write(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::TempDir, *};

    #[test]
    fn reads_everything_under_its_roots() {
        let proc_dir = TempDir::new("host-proc");
        let sys_dir = TempDir::new("host-sys");
        proc_dir.write("sys/kernel/osrelease", "9.9.9-fixture\n");
        proc_dir.write("self/cgroup", "5:memory:/memwatch\n0::/\n");
        proc_dir.write("42/comm", "redis-server\n");
        proc_dir.write("42/status", "Name:\tredis-server\nVmRSS:\t 8 kB\n");
        proc_dir.write("42/cgroup", "5:memory:/redis/a\n0::/other\n");
        sys_dir.write("devices/system/node/online", "0-1,3\n");
        let host = Host::new(proc_dir.path(), sys_dir.path());
        assert_eq!(host.kernel_release(), "9.9.9-fixture");
        assert_eq!(host.nodes(), &[0, 1, 3]);
        assert_eq!(host.hierarchy(), &Hierarchy::V1("5".into()));
        assert_eq!(host.comm(42).as_deref(), Some("redis-server"));
        assert!(host.status(42).unwrap().contains("VmRSS"));
        assert_eq!(host.cgroup_of(42).as_deref(), Some("/redis/a"));
        assert!(host.is_alive(42) && !host.is_alive(1));
        assert_eq!(host.comm(1), None);
        assert_eq!(host.cgroup_of(1), None);
        assert!(host.page_size() >= 4096);

        // An empty tree: the documented fallbacks, nothing from the real /proc.
        let empty = TempDir::new("host-empty");
        let host = Host::new(empty.path(), empty.path());
        assert_eq!(host.kernel_release(), "unknown");
        assert_eq!(host.nodes(), &[0]);
        assert_eq!(host.hierarchy(), &Hierarchy::Unified);
    }
}
