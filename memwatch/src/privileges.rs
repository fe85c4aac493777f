//! What memwatch needs from the kernel's permission checks, checked up front so the
//! answer is one clear line instead of an EPERM deep inside a load.

use std::io;

pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Effective capabilities of this process (bit n = capability n).
pub fn effective() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))
}

/// Ok if eBPF programs can be loaded and attached: CAP_BPF and CAP_PERFMON (5.8+), or
/// CAP_SYS_ADMIN. Otherwise the one-line error to print.
pub fn check() -> Result<(), String> {
    let caps = effective().map_err(|e| format!("cannot read capabilities: {e}"))?;
    check_caps(caps)
}

fn check_caps(caps: u64) -> Result<(), String> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect();
    Err(format!(
        "missing privileges: memwatch needs {} to load and attach eBPF programs (or \
         CAP_SYS_ADMIN on kernels before 5.8); run it as root, or grant the capabilities \
         (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_DAC_READ_SEARCH CAP_SYS_PTRACE, \
         as in deploy/memwatch.service)",
        missing.join(" and ")
    ))
}

/// Lifts RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps against.
pub fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not lift RLIMIT_MEMLOCK ({}); fine on 5.11+",
            io::Error::last_os_error()
        );
    }
}

/// Capability names as in capabilities(7), by number.
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A capability's name as in capabilities(7).
pub fn cap_name(c: u32) -> String {
    CAP_NAMES
        .get(c as usize)
        .map_or_else(|| format!("capability {c}"), |n| n.to_string())
}

/// Names of the capabilities in a set, or "none".
pub fn names(set: u64) -> String {
    let v: Vec<String> = (0..64)
        .filter(|c| set & (1u64 << c) != 0)
        .map(cap_name)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// _LINUX_CAPABILITY_VERSION_3: 64-bit sets as two 32-bit halves.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's (effective, permitted) sets.
fn capget() -> io::Result<(u64, u64)> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as the v3 ABI wants.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Sets the calling thread's effective, permitted and inheritable sets.
fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e, p, i) = (split(effective), split(permitted), split(inheritable));
    let data = [
        CapData {
            effective: e.0,
            permitted: p.0,
            inheritable: i.0,
        },
        CapData {
            effective: e.1,
            permitted: p.1,
            inheritable: i.1,
        },
    ];
    // SAFETY: header and a two-element data array, as the v3 ABI wants.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this kernel refuses every bpf() command, even on an fd already open, to a
/// caller without CAP_BPF (kernels before 6.5 with kernel.unprivileged_bpf_disabled
/// set check that before looking at the command). Asked of the kernel: a map lookup on
/// fd -1 fails with EPERM there and with EBADF where only loads are checked.
fn bpf_syscall_needs_cap() -> bool {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd (u32), pad, key, value, flags.
    let mut attr = [0u64; 4];
    attr[0] = u64::from(u32::MAX);
    // SAFETY: a valid, zeroed attribute block of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// What `drop_after_attach` did.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// The capabilities kept (effective and permitted), with the reason for each.
    pub kept: Vec<(u32, &'static str)>,
    /// Effective set before the drop.
    pub before: u64,
}

impl Dropped {
    pub fn kept_set(&self) -> u64 {
        self.kept.iter().fold(0, |s, (c, _)| s | (1u64 << c))
    }

    /// "CAP_SYS_PTRACE (why), ..." or "none".
    pub fn describe(&self) -> String {
        if self.kept.is_empty() {
            return "none".into();
        }
        self.kept
            .iter()
            .map(|(c, why)| format!("{} ({why})", cap_name(*c)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Once the programs are attached and every start-up file is read, drops every
/// capability the running daemon does not need, from the effective, permitted,
/// inheritable and ambient sets (as cloudflare/ebpf_exporter does). Kept:
/// - CAP_SYS_PTRACE when `watch_processes`: /proc/PID/smaps_rollup of processes of
///   other users, or with more capabilities than memwatch, is guarded by
///   ptrace_may_access.
/// - CAP_BPF only where the kernel checks it on every bpf() call (see
///   `bpf_syscall_needs_cap`); elsewhere map reads through open fds need nothing.
///
/// Capabilities are per thread: call this while the process has one thread; threads
/// started later inherit the reduced sets.
pub fn drop_after_attach(watch_processes: bool) -> io::Result<Dropped> {
    let (before, permitted) = capget()?;
    let has = |c: u32| permitted & (1u64 << c) != 0;
    let mut kept: Vec<(u32, &'static str)> = Vec::new();
    if watch_processes && has(CAP_SYS_PTRACE) {
        kept.push((
            CAP_SYS_PTRACE,
            "smaps_rollup of other users' watched processes",
        ));
    }
    let keep = |kept: &[(u32, &str)]| kept.iter().fold(0u64, |s, (c, _)| s | (1u64 << c));
    // Lower the effective set first, keeping the permitted one, so the bpf() probe runs
    // as the daemon will and CAP_BPF can still be taken back if it is needed.
    capset(keep(&kept), permitted, 0)?;
    if bpf_syscall_needs_cap() {
        let bpf = if has(CAP_BPF) {
            Some(CAP_BPF)
        } else if has(CAP_SYS_ADMIN) {
            Some(CAP_SYS_ADMIN)
        } else {
            None
        };
        if let Some(c) = bpf {
            kept.push((
                c,
                "this kernel checks it on every bpf() call, map reads included",
            ));
        }
    }
    let set = keep(&kept);
    capset(set, set, 0)?;
    // SAFETY: plain prctl; clearing the ambient set needs no privilege.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        let e = io::Error::last_os_error();
        // EINVAL: a kernel without ambient capabilities (before 4.3), nothing to clear.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    kept.sort_by_key(|(c, _)| *c);
    Ok(Dropped { kept, before })
}

/// How many threads this process has (capabilities are per thread).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        assert!(check_caps(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        let e = check_caps(0).unwrap_err();
        assert!(e.contains("CAP_BPF and CAP_PERFMON"), "{e}");
        let e = check_caps(1 << CAP_BPF).unwrap_err();
        assert!(e.contains("needs CAP_PERFMON to"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn capability_names() {
        assert_eq!(names(0), "none");
        assert_eq!(
            names((1 << CAP_BPF) | (1 << CAP_SYS_PTRACE)),
            "CAP_SYS_PTRACE CAP_BPF"
        );
    }

    /// On a thread of its own (capabilities are per thread, and the drop is for
    /// good): after the drop the sets hold at most what was kept.
    #[test]
    fn drop_keeps_only_what_it_says() {
        std::thread::spawn(|| {
            let d = drop_after_attach(true).unwrap();
            let (eff, perm) = capget().unwrap();
            assert_eq!(eff, d.kept_set());
            assert_eq!(perm, d.kept_set());
            assert_eq!(d.kept_set() & !d.before, 0, "kept more than it had");
        })
        .join()
        .unwrap();
    }
}
