//! systemd's notify protocol (sd_notify(3)), for `Type=notify` units: datagrams like
//! `READY=1`, `STATUS=...` and `WATCHDOG=1` sent to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`).
//! Without `$NOTIFY_SOCKET` every call does nothing.

use std::{io, os::unix::net::UnixDatagram, time::Duration};

/// Where notifications go, from the environment.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: String,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or None when memwatch was not started by
    /// systemd as a notify service.
    pub fn from_env() -> Option<Self> {
        let socket = std::env::var("NOTIFY_SOCKET").ok()?;
        (!socket.is_empty()).then_some(Self { socket })
    }

    /// Sends one datagram (`KEY=VALUE` lines).
    pub fn send(&self, msg: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        if let Some(name) = self.socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(msg.as_bytes(), &addr)?;
        } else {
            sock.send_to(msg.as_bytes(), &self.socket)?;
        }
        Ok(())
    }

    /// Sends and logs (at debug) a failure instead of returning it: systemd that can't
    /// be told is not a reason to stop serving.
    pub fn notify(&self, msg: &str) {
        if let Err(e) = self.send(msg) {
            log::warn!(
                "sd_notify {:?} to {}: {e}",
                msg.lines().next().unwrap_or(""),
                self.socket
            );
        }
    }
}

/// The watchdog ping interval: half of `$WATCHDOG_USEC` (set when the unit has
/// `WatchdogSec=`), if `$WATCHDOG_PID` is unset or names this process.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half() {
        assert_eq!(
            watchdog_interval_from(Some("2000000"), None, 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval_from(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval_from(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
    }

    #[test]
    fn path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("memwatch-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: path.to_string_lossy().into_owned(),
        };
        n.send("READY=1\nSTATUS=hi").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=hi");
        std::fs::remove_dir_all(&dir).unwrap();

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("memwatch-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            socket: format!("@{name}"),
        };
        n.send("WATCHDOG=1").unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
