//! What memwatch needs from the kernel's permission checks, checked up front so the
//! answer is one clear line instead of an EPERM deep inside a load.

use std::io;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

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
         (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_DAC_READ_SEARCH)",
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
}
