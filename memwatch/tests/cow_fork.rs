//! Ground truth for write-protect faults: a process forks and then writes one byte to
//! each of N pages it shares with its (waiting) child, so it must take exactly one
//! write-protect fault per page. Alone in its own test binary so no other test's
//! threads run while it measures.

mod common;

use std::time::Duration;

use common::{root_or_skip, Agent, TempFile};

/// Pages written after the fork (64 MiB with 4 KiB pages).
const PAGES: usize = 16384;

/// The workload runs in a process forked from the test (single-threaded, so nothing but
/// the workload faults in it). It talks to the test over two pipes and, after the fork,
/// only makes raw syscalls.
struct Workload {
    pid: i32,
    ctl: i32,
    rep: i32,
}

fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: valid out-array of two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

fn read_byte(fd: i32) -> u8 {
    let mut b = 0u8;
    // SAFETY: reading one byte into a valid buffer.
    let n = unsafe { libc::read(fd, (&raw mut b).cast(), 1) };
    if n == 1 {
        b
    } else {
        0
    }
}

fn write_byte(fd: i32, b: u8) {
    // SAFETY: writing one byte from a valid buffer.
    unsafe { libc::write(fd, (&raw const b).cast(), 1) };
}

impl Workload {
    /// Forks the workload; returns once it has populated its pages and forked its child.
    fn start(pages: usize) -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let (ctl_r, ctl_w) = pipe();
        let (rep_r, rep_w) = pipe();
        // SAFETY: the child only makes async-signal-safe calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: raw syscalls on memory this process maps itself.
            unsafe { workload_main(pages, page, ctl_r, rep_w) }
        }
        // SAFETY: closing our copies of the child's ends.
        unsafe {
            libc::close(ctl_r);
            libc::close(rep_w);
        }
        let w = Self {
            pid,
            ctl: ctl_w,
            rep: rep_r,
        };
        assert_eq!(read_byte(w.rep), b'F', "workload did not fork");
        w
    }

    /// Tells the workload to write its pages; returns when it has.
    fn write_pages(&self) {
        write_byte(self.ctl, b'G');
        assert_eq!(read_byte(self.rep), b'W', "workload did not write");
    }

    /// Lets the workload's child and then the workload exit, and reaps it.
    fn finish(self) {
        write_byte(self.ctl, b'X');
        let mut status = 0;
        // SAFETY: reaping the child we forked.
        unsafe {
            libc::waitpid(self.pid, &mut status, 0);
            libc::close(self.ctl);
            libc::close(self.rep);
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "workload failed: {status}"
        );
    }
}

/// The workload process: populate, fork a child that waits, write one byte per page on
/// command, then release the child and exit.
unsafe fn workload_main(pages: usize, page: usize, ctl: i32, rep: i32) -> ! {
    unsafe {
        let len = pages * page;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        ) as *mut u8;
        if p as *mut libc::c_void == libc::MAP_FAILED {
            libc::_exit(10);
        }
        // 4 KiB pages only: a THP would turn N faults into N/512.
        libc::madvise(p.cast(), len, libc::MADV_NOHUGEPAGE);
        for i in 0..pages {
            std::ptr::write_volatile(p.add(i * page), 1);
        }
        let (hold_r, hold_w) = pipe();
        let child = libc::fork();
        if child < 0 {
            libc::_exit(11);
        }
        if child == 0 {
            libc::close(hold_w);
            read_byte(hold_r); // EOF when the parent closes hold_w
            libc::_exit(0);
        }
        libc::close(hold_r);
        write_byte(rep, b'F');
        if read_byte(ctl) != b'G' {
            libc::_exit(12);
        }
        for i in 0..pages {
            std::ptr::write_volatile(p.add(i * page + 1), 2);
        }
        write_byte(rep, b'W');
        read_byte(ctl);
        libc::close(hold_w);
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        libc::_exit(0)
    }
}

fn wp_faults(m: &common::Metrics, pid: i32) -> f64 {
    m.get("memwatch_wp_faults_total", &[("pid", &pid.to_string())])
        .unwrap_or(0.0)
}

#[test]
fn parent_write_protect_faults_match_pages_written() {
    if !root_or_skip("parent_write_protect_faults_match_pages_written") {
        return;
    }
    // Every process gets its own row, so the workload's row is there before and after.
    let cfg = TempFile::new("cow.toml", "[tables]\nprocess_top_n = 100000\n");
    let agent = Agent::start(&["--config", cfg.0.to_str().unwrap()]);

    let w = Workload::start(PAGES);
    let before = agent.scrape();
    w.write_pages();
    let after = agent.scrape();
    let pid = w.pid;
    w.finish();

    let delta = wp_faults(&after, pid) - wp_faults(&before, pid);
    let (lo, hi) = (PAGES as f64, PAGES as f64 * 1.02);
    println!("workload pid {pid}: {delta} write-protect faults for {PAGES} pages written");
    assert!(
        (lo..=hi).contains(&delta),
        "write-protect faults {delta} not in [{lo}, {hi}]\n{}",
        after.text
    );
    let global = |m: &common::Metrics| {
        ["user", "kernel"]
            .iter()
            .map(|mode| {
                m.get(
                    "memwatch_page_faults_total",
                    &[("kind", "write_protect"), ("mode", mode)],
                )
                .unwrap()
            })
            .sum::<f64>()
    };
    assert!(global(&after) - global(&before) >= delta);

    // bpftool (not memwatch) confirms the programs are in the kernel, then gone.
    let loaded = bpftool_progs("page_fault_user");
    assert!(loaded.contains("tracepoint"), "bpftool prog show: {loaded}");
    // With a rung forced (the VM harness runs the suite once per rung), the figure
    // above came from that rung's COW program: memwatch says so, and bpftool shows a
    // program of that type.
    let cow_type = match common::probe_mode().as_deref() {
        Some("fentry") => Some(("fentry", "tracing")),
        Some("kprobe") => Some(("kprobe", "kprobe")),
        _ => None,
    };
    if let Some((mode, prog_type)) = cow_type {
        assert_eq!(
            after.get(
                "memwatch_probe_info",
                &[("hook", "do_wp_page"), ("mode", mode)]
            ),
            Some(1.0),
            "{}",
            after.text
        );
        let cow = cow_programs();
        assert!(
            cow.iter().any(|l| l.contains(&format!(": {prog_type} "))),
            "no {prog_type} program for do_wp_page in bpftool prog show: {cow:?}"
        );
    }
    let status = agent.stop();
    assert!(status.success(), "memwatch exit status {status}");
    std::thread::sleep(Duration::from_millis(200));
    let left = bpftool_progs("page_fault_user");
    assert!(left.trim().is_empty(), "still loaded after SIGTERM: {left}");
    let left = cow_programs();
    assert!(left.is_empty(), "still loaded after SIGTERM: {left:?}");
}

/// `bpftool prog show name NAME` (empty when none is loaded).
fn bpftool_progs(name: &str) -> String {
    bpftool(&["prog", "show", "name", name])
}

/// The header lines of `bpftool prog show` for memwatch's COW programs
/// (`cow_do_wp_page_*`; the kernel keeps 15 characters of a name).
fn cow_programs() -> Vec<String> {
    bpftool(&["prog", "show"])
        .lines()
        .filter(|l| l.contains("name cow_do_wp_page"))
        .map(str::to_string)
        .collect()
}

fn bpftool(args: &[&str]) -> String {
    let out = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
