//! `cargo xtask test --under-load`: a CPU and memory hog (Debian's stress-ng) beside the
//! whole run, stopped when the run ends, fails or is interrupted.
//!
//! stress-ng starts in a process group of its own (its PID is the group's ID), so its
//! workers are signalled with it, by that ID; the terminal's Ctrl-C reaches only
//! xtask's group. The group is stopped by a Drop guard (the run ended, failed or
//! panicked) and, while the guard lives, by a handler for SIGINT, SIGTERM and SIGHUP
//! (the run was interrupted), which signals the group and then lets the signal end
//! xtask as before. Should xtask be killed outright, stress-ng gets SIGTERM from the
//! kernel (PR_SET_PDEATHSIG, tied to the thread that started it: xtask's main thread)
//! and stops its workers itself.

use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// The hog `--under-load` starts when `--load-args` does not say otherwise: two CPU
/// workers (this project's machines have two cores) and one worker that keeps 1 GiB
/// of anonymous memory busy.
pub const DEFAULT_ARGS: &str = "--cpu 2 --vm 1 --vm-bytes 1G";

/// How long stress-ng gets to stop its workers after SIGTERM before the group is killed.
const GRACE: Duration = Duration::from_secs(10);

/// The running hog's process group, for the signal handler (0: none).
static PGID: AtomicI32 = AtomicI32::new(0);

/// Signals whose default action would end xtask without running the guard.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Stops the hog's group, then ends xtask the way the signal would have.
extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls: an atomic load, kill, signal, raise.
    let pg = PGID.load(Ordering::SeqCst);
    // SAFETY: signals the process group of the stress-ng we started (its leader is not
    // reaped while PGID holds it, so the ID can't have been reused), then restores the
    // default action and re-raises; the signal stays blocked until this returns.
    unsafe {
        if pg > 0 {
            libc::kill(-pg, libc::SIGTERM);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// A running stress-ng, stopped (its whole process group) when dropped.
pub struct Load {
    child: Child,
    pid: i32,
    /// The command line, for the messages.
    pub command: String,
    log: PathBuf,
    started: Instant,
    old_actions: Vec<(libc::c_int, libc::sigaction)>,
}

impl Load {
    /// Starts `stress-ng --timeout 0 ARGS` (`ARGS` split on whitespace; a `--timeout`
    /// among them wins over ours, which only says "until stopped"), its output going
    /// to target/stress-ng.log, and says what it started.
    pub fn start(args: &str) -> Result<Self> {
        let mut argv = vec!["--timeout".to_string(), "0".to_string()];
        argv.extend(args.split_whitespace().map(str::to_string));
        let dir = crate::workspace_root().join("target");
        std::fs::create_dir_all(&dir)?;
        let load = Self::spawn("stress-ng", &argv, dir.join("stress-ng.log"))?;
        eprintln!(
            "xtask: load: started {} (pid {}, its own process group); output in {}",
            load.command,
            load.pid,
            load.log.display()
        );
        Ok(load)
    }

    /// Starts `bin argv...` as the leader of a new process group, output to `log`,
    /// and fails if it is gone half a second later.
    fn spawn(bin: &str, argv: &[String], log: PathBuf) -> Result<Self> {
        let command = format!("{bin} {}", argv.join(" "));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A group of its own, led by stress-ng: its workers are signalled with it.
            .process_group(0);
        // Should xtask die without running its guard or handler (SIGKILL), stress-ng
        // gets SIGTERM from the kernel and stops its workers itself.
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other(
                        "xtask exited before stress-ng started",
                    ));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {command} (`cargo xtask setup` installs {bin})"))?;
        let pid = child.id() as i32;
        let mut load = Self {
            child,
            pid,
            command,
            log,
            started: Instant::now(),
            old_actions: Vec::new(),
        };
        PGID.store(pid, Ordering::SeqCst);
        load.install_handlers();
        // A bad argument ends stress-ng at once: say so instead of testing without load.
        std::thread::sleep(Duration::from_millis(500));
        if load.leader_exited() {
            let command = load.command.clone();
            let text = std::fs::read_to_string(&load.log).unwrap_or_default();
            // The guard reaps it and says how it ended.
            drop(load);
            bail!("{command} exited at once:\n{}", text.trim_end());
        }
        Ok(load)
    }

    fn install_handlers(&mut self) {
        for sig in SIGNALS {
            // SAFETY: a zeroed sigaction is a valid value to fill in; the handler only
            // makes async-signal-safe calls.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut old) == 0 {
                    self.old_actions.push((sig, old));
                }
            }
        }
    }

    /// Whether stress-ng itself has exited, without reaping it (so its PID, and the
    /// group ID, stay ours until `child.wait()`).
    fn leader_exited(&self) -> bool {
        // SAFETY: waitid on our own child with a zeroed siginfo to fill in.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            r == 0 && info.si_pid() != 0
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let ran = crate::format_duration(self.started.elapsed());
        let already = self.leader_exited();
        // SAFETY: the group of the stress-ng we started; its leader is not reaped yet,
        // so the group ID is still ours.
        unsafe { libc::kill(-self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + GRACE;
        while !self.leader_exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever of the group is left (a worker that did not stop, or stress-ng
        // itself after the grace period) is killed before the leader is reaped, and
        // waited for: a killed process still has to be scheduled to exit, which on a
        // busy machine takes a while.
        // SAFETY: as above.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let deadline = Instant::now() + GRACE;
        while group_members(self.pid).iter().any(|&p| p != self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        PGID.store(0, Ordering::SeqCst);
        for (sig, old) in self.old_actions.drain(..) {
            // SAFETY: restores the action saved when the guard installed its own.
            unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        }
        let status = self
            .child
            .wait()
            .map_or_else(|e| format!("wait failed: {e}"), |s| s.to_string());
        if already {
            eprintln!(
                "xtask: load: {} (pid {}) had already ended ({status}; see {}); its process \
                 group is stopped",
                self.command,
                self.pid,
                self.log.display()
            );
        } else {
            eprintln!(
                "xtask: load: stopped {} (pid {}, and its process group) after {ran} ({status})",
                self.command, self.pid
            );
        }
    }
}

/// The processes (not zombies) in process group `pg`, from /proc.
fn group_members(pg: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        if w.len() > 2 && w[0] != "Z" && w[2].parse::<i32>() == Ok(pg) {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard stops the leader and what it started (idle sleeps stand in for
    /// stress-ng and its workers).
    #[test]
    fn drop_stops_the_whole_group() {
        let log = std::env::temp_dir().join(format!("xtask-load-test-{}.log", std::process::id()));
        let argv = ["-c", "sleep 60 & sleep 60 & wait"].map(String::from);
        let load = Load::spawn("sh", &argv, log.clone()).unwrap();
        let pg = load.pid;
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_members(pg).len() < 3 {
            assert!(Instant::now() < deadline, "{:?}", group_members(pg));
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(load);
        assert_eq!(group_members(pg), Vec::<i32>::new());
        assert_eq!(PGID.load(Ordering::SeqCst), 0);
        let _ = std::fs::remove_file(log);
    }

    /// Interrupted (here SIGTERM), xtask still stops the group and then dies of the
    /// signal. The run is a child process: this test binary again, on this test, with
    /// XTASK_LOAD_SIGNAL_LOG set.
    #[test]
    fn a_signal_stops_the_group_and_still_ends_xtask() {
        let name = "load::tests::a_signal_stops_the_group_and_still_ends_xtask";
        if let Some(log) = std::env::var_os("XTASK_LOAD_SIGNAL_LOG") {
            let argv = ["-c", "sleep 60 & sleep 60 & wait"].map(String::from);
            let load = Load::spawn("sh", &argv, log.into()).unwrap();
            while group_members(load.pid).len() < 3 {
                std::thread::sleep(Duration::from_millis(20));
            }
            println!("PGID {}", load.pid);
            use std::io::Write as _;
            std::io::stdout().flush().unwrap();
            // SAFETY: raising a signal at ourselves.
            unsafe { libc::raise(libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(30));
            panic!("still alive after SIGTERM");
        }
        let log = std::env::temp_dir().join(format!("xtask-load-sig-{}.log", std::process::id()));
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env("XTASK_LOAD_SIGNAL_LOG", &log)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{stdout}");
        let pg: i32 = stdout
            .lines()
            .find_map(|l| l.trim().rsplit_once("PGID ").map(|(_, p)| p.to_string()))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no PGID line in {stdout}"));
        // The handler only sends SIGTERM: the sleeps go a moment later.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !group_members(pg).is_empty() {
            assert!(Instant::now() < deadline, "{:?}", group_members(pg));
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(log);
    }

    #[test]
    fn a_load_that_ends_at_once_is_an_error() {
        let log = std::env::temp_dir().join(format!("xtask-load-fail-{}.log", std::process::id()));
        let argv = ["-c", "echo bad option >&2; exit 1"].map(String::from);
        let err = Load::spawn("sh", &argv, log.clone())
            .err()
            .expect("an error");
        assert!(format!("{err:#}").contains("bad option"), "{err:#}");
        let _ = std::fs::remove_file(log);
    }
}
