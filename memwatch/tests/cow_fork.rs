//! Ground truth for write-protect faults: a process forks and then writes one byte to
//! each of N pages it shares with its (waiting) child, so it must take exactly one
//! write-protect fault per page. Alone in its own test binary so no other test's
//! threads run while it measures.

mod common;

use std::time::Duration;

use common::{root_or_skip, workload::Ctl, workload::Workload, Agent, TempFile};

/// Pages written after the fork (64 MiB with 4 KiB pages).
const PAGES: usize = 16384;

/// Populate PAGES pages, fork a child that waits, report 'F'; on 'G' write one byte
/// per page and report 'W'; then release the child.
fn cow_body(ctl: &Ctl) -> i32 {
    // SAFETY: raw syscalls on memory this process maps itself.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let len = PAGES * page;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        ) as *mut u8;
        if p as *mut libc::c_void == libc::MAP_FAILED {
            return 10;
        }
        // 4 KiB pages only: a THP would turn N faults into N/512.
        libc::madvise(p.cast(), len, libc::MADV_NOHUGEPAGE);
        for i in 0..PAGES {
            std::ptr::write_volatile(p.add(i * page), 1);
        }
        let (hold_r, hold_w) = common::workload::pipe();
        let child = libc::fork();
        if child < 0 {
            return 11;
        }
        if child == 0 {
            libc::close(hold_w);
            common::workload::read_byte(hold_r); // EOF when the parent closes hold_w
            libc::_exit(0);
        }
        libc::close(hold_r);
        ctl.report(b'F');
        if ctl.wait() != b'G' {
            return 12;
        }
        for i in 0..PAGES {
            std::ptr::write_volatile(p.add(i * page + 1), 2);
        }
        ctl.report(b'W');
        libc::close(hold_w);
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        0
    }
}

fn wp_faults(m: &common::Metrics, pid: i32) -> f64 {
    m.get(
        "memwatch_process_wp_faults_total",
        &[("pid", &pid.to_string())],
    )
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

    let w = Workload::spawn(cow_body);
    w.expect(b'F');
    let before = agent.scrape();
    w.send(b'G');
    w.expect(b'W');
    let after = agent.scrape();
    let pid = w.pid;
    w.wait_done();
    w.finish();

    let delta = wp_faults(&after, pid) - wp_faults(&before, pid);
    let (lo, hi) = (PAGES as f64, PAGES as f64 * 1.02);
    println!("workload pid {pid}: {delta} write-protect faults for {PAGES} pages written");
    assert!(
        (lo..=hi).contains(&delta),
        "write-protect faults {delta} not in [{lo}, {hi}]\n{}",
        after.text
    );
    let global =
        |m: &common::Metrics| m.sum("memwatch_page_faults_total", &[("kind", "write_protect")]);
    assert!(global(&after) - global(&before) >= delta);

    // bpftool (not memwatch) confirms the programs are in the kernel, then gone.
    let loaded = bpftool_progs("page_fault_user");
    assert!(loaded.contains("tracepoint"), "bpftool prog show: {loaded}");
    let status = agent.stop();
    assert!(status.success(), "memwatch exit status {status}");
    std::thread::sleep(Duration::from_millis(200));
    let left = bpftool_progs("page_fault_user");
    assert!(left.trim().is_empty(), "still loaded after SIGTERM: {left}");
}

/// `bpftool prog show name NAME` (empty when none is loaded).
fn bpftool_progs(name: &str) -> String {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "name", name])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
