//! Ground truth for write-protect faults: a process forks and then writes one byte to
//! each of N pages it shares with its (waiting) child, so it must take exactly one
//! write-protect fault per page. Alone in its own test binary so no other test's
//! threads run while it measures.

mod common;

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use common::{root_or_skip, workload::Ctl, workload::Workload, Agent, TempFile};

/// Pages written after the fork (64 MiB with 4 KiB pages).
const PAGES: usize = 16384;

/// Populate PAGES pages, fork a child that waits, report 'F'; on 'G' write one byte
/// per page and report 'W'; then release the child.
fn cow_body(ctl: &Ctl) -> i32 {
    // SAFETY: raw syscalls on memory this process maps itself.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let Some(p) = common::workload::map_populated(PAGES) else {
            return 10;
        };
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
    counter(m, "memwatch_process_wp_faults_total", pid)
}

fn counter(m: &common::Metrics, name: &str, pid: i32) -> f64 {
    m.get(name, &[("pid", &pid.to_string())]).unwrap_or(0.0)
}

fn has_family(m: &common::Metrics, name: &str) -> bool {
    !m.family(name).is_empty()
}

/// Populate PAGES pages, fork a child that exits at once and reap it, report 'F'; on
/// 'G' write one byte per page (the pages are no longer shared: reuses) and report 'W'.
fn reuse_body(ctl: &Ctl) -> i32 {
    // SAFETY: raw syscalls on memory this process maps itself.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let Some(p) = common::workload::map_populated(PAGES) else {
            return 10;
        };
        let child = libc::fork();
        if child < 0 {
            return 11;
        }
        if child == 0 {
            libc::_exit(0);
        }
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        ctl.report(b'F');
        if ctl.wait() != b'G' {
            return 12;
        }
        for i in 0..PAGES {
            std::ptr::write_volatile(p.add(i * page + 1), 2);
        }
        ctl.report(b'W');
        0
    }
}

/// After the child has exited, the parent's pages are its own again: its writes still
/// take write-protect faults (the PTEs stayed read-only), but reuse the pages instead
/// of copying them.
#[test]
fn writes_after_the_child_exited_are_reuses() {
    if !root_or_skip("writes_after_the_child_exited_are_reuses") {
        return;
    }
    let cfg = TempFile::new("reuse.toml", "[tables]\nprocess_top_n = 100000\n");
    let agent = Agent::start(&["--config", cfg.0.to_str().unwrap()]);
    let (before, after, pid) = scrapes_around_writes(&agent, reuse_body);
    let wp = wp_faults(&after, pid) - wp_faults(&before, pid);
    println!("workload pid {pid}: {wp} write-protect faults for {PAGES} pages written");
    assert!((PAGES as f64..=PAGES as f64 * 1.02).contains(&wp), "{wp}");
    if !has_family(&after, "memwatch_process_cow_copies_total") {
        println!("note: copies versus reuses not measured on this rung (tracepoint)");
        assert!(agent.stop().success());
        return;
    }
    let d = |name| counter(&after, name, pid) - counter(&before, name, pid);
    let (copies, reuses) = (
        d("memwatch_process_cow_copies_total"),
        d("memwatch_process_cow_reuses_total"),
    );
    println!("workload pid {pid}: {copies} copies, {reuses} reuses");
    // Within 1%, not exactly: 5.10 copies a sole-owner page that something else still
    // holds a reference to, e.g. the last few pages faulted in, still in a per-CPU LRU
    // add batch (measured: 3 of 16384 there, none on 6.1/6.12). Every write-protect
    // fault is one or the other.
    assert!(
        (PAGES as f64 * 0.99..=PAGES as f64 * 1.01).contains(&reuses),
        "reuses {reuses} not within 1% of {PAGES}"
    );
    assert!(
        copies <= PAGES as f64 * 0.01,
        "{copies} copies where none were due"
    );
    assert!(
        (PAGES as f64..=PAGES as f64 * 1.02).contains(&(copies + reuses)),
        "copies + reuses {} against {PAGES} pages written",
        copies + reuses
    );
    assert!(agent.stop().success());
}

#[test]
fn parent_write_protect_faults_match_pages_written() {
    if !root_or_skip("parent_write_protect_faults_match_pages_written") {
        return;
    }
    // Every process gets its own row, so the workload's row is there before and after.
    let cfg = TempFile::new("cow.toml", "[tables]\nprocess_top_n = 100000\n");
    let loaded_before = memwatch_programs();
    let agent = Agent::start(&["--config", cfg.0.to_str().unwrap()]);

    let (before, after, pid) = scrapes_around_writes(&agent, cow_body);
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
    // Where a function hook tells copies from reuses: every one of those writes copied.
    let copies = counter(&after, "memwatch_process_cow_copies_total", pid)
        - counter(&before, "memwatch_process_cow_copies_total", pid);
    if has_family(&after, "memwatch_process_cow_copies_total") {
        println!("workload pid {pid}: {copies} COW copies");
        assert!(
            (PAGES as f64..=PAGES as f64 * 1.01).contains(&copies),
            "COW copies {copies} not within 1% of {PAGES}"
        );
    } else {
        println!("note: copies versus reuses not measured on this rung (tracepoint)");
    }

    check_programs_loaded(&after);
    let status = agent.stop();
    assert!(status.success(), "memwatch exit status {status}");
    check_programs_unloaded(&loaded_before);
}

/// Runs workload `body` (it reports 'F' once ready, writes on 'G', reports 'W') with a
/// scrape before and after its writes: (before, after, its pid).
fn scrapes_around_writes(
    agent: &Agent,
    body: fn(&Ctl) -> i32,
) -> (common::Metrics, common::Metrics, i32) {
    let w = Workload::spawn(body);
    w.expect(b'F');
    let before = agent.scrape();
    w.send(b'G');
    w.expect(b'W');
    let after = agent.scrape();
    let pid = w.pid;
    w.wait_done();
    w.finish();
    (before, after, pid)
}

/// bpftool (not memwatch) confirms the programs are in the kernel. With a rung forced
/// (the VM harness runs the suite once per rung), the figures in scrape `after` came
/// from that rung's COW program: memwatch says so, and bpftool shows a program of that
/// type.
fn check_programs_loaded(after: &common::Metrics) {
    let loaded = page_fault_programs();
    assert!(loaded.contains("tracepoint"), "bpftool prog show: {loaded}");
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
}

/// After memwatch stopped, bpftool shows its programs gone. Unloading can finish in a
/// worker after the last reference goes: waits for it.
/// Only programs that were not loaded before (`before`, from `memwatch_programs`)
/// count: another memwatch may run on the machine.
fn check_programs_unloaded(before: &BTreeSet<u32>) {
    let left = || -> Vec<u32> { memwatch_programs().difference(before).copied().collect() };
    let gone = common::eventually(120, || left().is_empty().then_some(()));
    assert!(
        gone.is_some(),
        "still loaded 120 s after SIGTERM: {:?}: {} {:?}",
        left(),
        page_fault_programs(),
        cow_programs()
    );
}

/// The ids of the loaded page-fault and COW programs (bpftool's `ID: type name ...`
/// header lines).
fn memwatch_programs() -> BTreeSet<u32> {
    page_fault_programs()
        .lines()
        .chain(cow_programs().iter().map(String::as_str))
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

/// The page-fault programs loaded: the raw tracepoint ones, or the tracepoint ones
/// where the kernel refused raw.
fn page_fault_programs() -> String {
    bpftool_progs("page_fault_user_raw") + &bpftool_progs("page_fault_user")
}

/// `bpftool prog show name NAME` (empty when none is loaded).
fn bpftool_progs(name: &str) -> String {
    bpftool(&["prog", "show", "name", name])
}

/// The header lines of `bpftool prog show` for memwatch's COW programs
/// (`cow_wp_*`; the kernel keeps 15 characters of a name).
fn cow_programs() -> Vec<String> {
    bpftool(&["prog", "show"])
        .lines()
        .filter(|l| l.contains("name cow_wp_"))
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

// ------------------------------------------------ a scrape sees everything before it

/// Short-lived processes that each leave a row in the process table, so reading the
/// table takes a while.
const FILLERS: usize = 1000;
/// Fresh pages a counter touches per mapping before it maps the next one.
const CHUNK: usize = 4096;
/// Scrapes taken while the counters run.
const ROUNDS: usize = 50;
/// Faults a counter may take besides its touches: its stack and the shared page after
/// the fork (copy-on-write), code pages. A few dozen in practice.
const OTHER_FAULTS: f64 = 256.0;

/// A shared anonymous page: per counter the pages it touched (slots 0 and 1); slot 2
/// non-zero tells both to stop. Mapped before the counters are forked.
static SHARED: AtomicUsize = AtomicUsize::new(0);
/// The slot of the counter forked next (read by the child right after the fork).
static SLOT: AtomicUsize = AtomicUsize::new(0);
/// The CPU both counters run on.
static CPU: AtomicUsize = AtomicUsize::new(0);
/// A page the fillers write to (a write-protect fault after the fork: each counts one
/// event, so each gets a row).
static mut FILLER_PAGE: [u8; 4096] = [0; 4096];

fn shared(slot: usize) -> &'static AtomicU64 {
    // SAFETY: SHARED is a page-sized MAP_SHARED mapping that lives as long as the test
    // process (and is inherited by the counters); slots 0..3 are in it.
    unsafe { &*(SHARED.load(Ordering::Relaxed) as *const AtomicU64).add(slot) }
}

/// Touch fresh pages, one fault each, counting each touch after its fault, on the same
/// CPU as the other counter and taking turns with it a chunk at a time (so this CPU's
/// cache holds up to a chunk of counts and moves them into the table at every turn),
/// until told to stop.
fn counter_body(ctl: &Ctl) -> i32 {
    let slot = SLOT.load(Ordering::Relaxed);
    // SAFETY: raw syscalls on memory this process maps itself.
    unsafe {
        let mut set = std::mem::zeroed::<libc::cpu_set_t>();
        libc::CPU_SET(CPU.load(Ordering::Relaxed), &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            return 40;
        }
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let (done, stop) = (shared(slot), shared(2));
        ctl.report(b'R');
        while stop.load(Ordering::Relaxed) == 0 {
            let Some(p) = common::workload::map_fresh(CHUNK) else {
                return 41;
            };
            for i in 0..CHUNK {
                std::ptr::write_volatile(p.add(i * page), 1);
                done.fetch_add(1, Ordering::SeqCst);
            }
            libc::munmap(p.cast(), CHUNK * page);
            // Let the other counter run: its next fault moves this chunk's counts.
            libc::sched_yield();
        }
        0
    }
}

/// The first CPU this process may run on.
fn first_cpu() -> usize {
    // SAFETY: sched_getaffinity into a zeroed set of our own.
    unsafe {
        let mut set = std::mem::zeroed::<libc::cpu_set_t>();
        libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set);
        (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .unwrap_or(0)
    }
}

/// Two processes take page faults without pause on one CPU, so the counts that CPU
/// caches for one of them move into the process table whenever the other runs, while
/// the table (made large by FILLERS rows) is read. Every scrape must still include
/// every fault a process took before the scrape began (each counter counts its
/// touches after their faults, so it knows a lower bound), and no more than it took
/// by the scrape's end (plus its few other faults).
#[test]
fn a_scrape_includes_every_fault_before_it() {
    if !root_or_skip("a_scrape_includes_every_fault_before_it") {
        return;
    }
    let cfg = TempFile::new("moves.toml", "[tables]\nprocess_top_n = 10\n");
    let agent = Agent::start(&["--config", cfg.0.to_str().unwrap()]);
    // SAFETY: a shared anonymous page of our own, never unmapped (the counters hold it).
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    SHARED.store(page as usize, Ordering::Relaxed);
    CPU.store(first_cpu(), Ordering::Relaxed);
    fill_process_table(&agent);

    SLOT.store(0, Ordering::Relaxed);
    let a = Workload::spawn(counter_body);
    SLOT.store(1, Ordering::Relaxed);
    let b = Workload::spawn(counter_body);
    a.expect(b'R');
    b.expect(b'R');
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        check_scrape(&agent, round, [&a, &b], &mut failures);
    }
    shared(2).store(1, Ordering::SeqCst);
    let m = agent.scrape();
    println!(
        "inconsistent reads: {:?}",
        m.get("memwatch_table_inconsistent_reads_total", &[])
    );
    for w in [a, b] {
        w.wait_done();
        w.finish();
    }
    assert!(agent.stop().success());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Forks FILLERS short-lived processes that each take a fault, and waits until the
/// process table has their rows (they reach it as their counts move there: at exit,
/// or when the next process counts on that CPU).
fn fill_process_table(agent: &Agent) {
    for _ in 0..FILLERS {
        // SAFETY: the child writes one byte of a static and leaves with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid == 0 {
                std::ptr::write_volatile(&raw mut FILLER_PAGE[7], 1);
                libc::_exit(0);
            }
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    let mut rows = None;
    let filled = common::eventually(300, || {
        rows = agent
            .scrape()
            .get("memwatch_table_entries", &[("table", "procs")]);
        (rows.unwrap_or(0.0) >= FILLERS as f64).then_some(())
    });
    assert!(filled.is_some(), "table rows: {rows:?}");
    println!("{rows:?} rows in the process table");
}

/// One scrape in `round`: each counter workload's faults must lie between its touches
/// before the scrape began and those by its end (plus OTHER_FAULTS); what does not goes
/// to `failures`.
fn check_scrape(agent: &Agent, round: usize, counters: [&Workload; 2], failures: &mut Vec<String>) {
    let before = [
        shared(0).load(Ordering::SeqCst),
        shared(1).load(Ordering::SeqCst),
    ];
    let m = agent.scrape();
    let after = [
        shared(0).load(Ordering::SeqCst),
        shared(1).load(Ordering::SeqCst),
    ];
    for (i, w) in counters.into_iter().enumerate() {
        let got = m.sum(
            "memwatch_process_page_faults_total",
            &[("pid", &w.pid.to_string())],
        );
        let (lo, hi) = (before[i] as f64, after[i] as f64 + OTHER_FAULTS);
        println!(
            "round {round}, counter {i}: {got} faults, touched {lo}..{}",
            after[i]
        );
        if !(lo..=hi).contains(&got) {
            failures.push(format!(
                "round {round}: counter {i} (pid {}): {got} faults shown, {lo} touched \
                 before the scrape began, {} by its end",
                w.pid, after[i]
            ));
        }
    }
}
