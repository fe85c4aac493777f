//! The fork/exit event stream: no event is lost without being counted, and only what
//! `[episodes]` watches is streamed. A workload renamed to a watched comm forks
//! 20000 children that exit at once; the agent's counters must account for every
//! one of them exactly (streamed + lost), every streamed fork must become one fork
//! episode, and another, unwatched, process's forks and exits must not be streamed.

mod common;

use parking_lot::Mutex;

use common::{eventually, root_or_skip, workload::Ctl, workload::Workload, Agent, TempFile};

/// The tests run one at a time: two storms at once would reuse each other's pids
/// (pid_max can be 32768) while the agent still follows them.
static SERIAL: Mutex<()> = Mutex::new(());

/// Children each storm forks: 20000, or 2000 in a `cargo xtask vm-test` guest
/// (software-emulated CPUs fork about ten times slower; the accounting is exact at any
/// size).
fn forks() -> u64 {
    let guest = std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| {
        c.split_whitespace()
            .any(|a| a.starts_with("memwatch.timeout="))
    });
    if guest {
        2_000
    } else {
        20_000
    }
}
/// A ring buffer record: an 8-byte header and the 56-byte `Event`.
const RECORD_BYTES: u64 = 64;

/// Renames itself to `name` (prctl PR_SET_NAME), reports 'R', waits for 'G', then
/// forks `n` children that exit at once, reaping them as it goes; reports how many
/// forks succeeded. Raw syscalls only.
fn storm(ctl: &Ctl, name: &[u8], n: u64) -> i32 {
    let mut comm = [0u8; 16];
    comm[..name.len()].copy_from_slice(name);
    // SAFETY: prctl with a NUL-terminated 16-byte name; fork/waitpid/_exit only.
    unsafe {
        if libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) != 0 {
            return 20;
        }
        ctl.report(b'R');
        if ctl.wait() != b'G' {
            return 21;
        }
        let mut ok = 0;
        let mut status = 0;
        while ok < n {
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(0);
            }
            if pid > 0 {
                ok += 1;
            }
            while libc::waitpid(-1, &mut status, libc::WNOHANG) > 0 {}
        }
        while libc::waitpid(-1, &mut status, 0) > 0 {}
        ctl.report_u64(ok);
    }
    0
}

fn storm_a(ctl: &Ctl) -> i32 {
    storm(ctl, b"mwstorm-a", forks())
}

fn storm_b(ctl: &Ctl) -> i32 {
    storm(ctl, b"mwstorm-b", forks())
}

/// The unwatched process forks a tenth as many.
fn unwatched(ctl: &Ctl) -> i32 {
    storm(ctl, b"mwstorm-u", forks() / 10)
}

/// The event counters, by name and kind.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    sent_fork: u64,
    sent_exit: u64,
    lost_fork: u64,
    lost_exit: u64,
    filtered_fork: u64,
    filtered_exit: u64,
    untracked: u64,
    episodes: u64,
    /// Running episodes dropped because the table of running episodes was full
    /// (`tables.episode_active_max_entries`).
    evicted: u64,
}

impl Counts {
    fn read(agent: &Agent, comm: &str) -> Self {
        let m = agent.scrape();
        let get = |name: &str, kind: &str| {
            let labels: &[(&str, &str)] = if kind.is_empty() {
                &[]
            } else {
                &[("kind", kind)]
            };
            m.get(name, labels).unwrap_or(0.0) as u64
        };
        Self {
            sent_fork: get("memwatch_events_total", "fork"),
            sent_exit: get("memwatch_events_total", "exit"),
            lost_fork: get("memwatch_events_lost_total", "fork"),
            lost_exit: get("memwatch_events_lost_total", "exit"),
            filtered_fork: get("memwatch_events_filtered_total", "fork"),
            filtered_exit: get("memwatch_events_filtered_total", "exit"),
            untracked: get("memwatch_events_untracked_children_total", ""),
            episodes: m
                .get("memwatch_fork_episodes_total", &[("comm", comm)])
                .unwrap_or(0.0) as u64,
            evicted: m
                .get(
                    "memwatch_table_evictions_total",
                    &[("table", "episodes_active")],
                )
                .unwrap_or(0.0) as u64,
        }
    }

    fn since(self, b: Counts) -> Counts {
        Counts {
            sent_fork: self.sent_fork - b.sent_fork,
            sent_exit: self.sent_exit - b.sent_exit,
            lost_fork: self.lost_fork - b.lost_fork,
            lost_exit: self.lost_exit - b.lost_exit,
            filtered_fork: self.filtered_fork - b.filtered_fork,
            filtered_exit: self.filtered_exit - b.filtered_exit,
            untracked: self.untracked - b.untracked,
            episodes: self.episodes - b.episodes,
            evicted: self.evicted - b.evicted,
        }
    }
}

/// An agent watching `comm` (exactly) with a ring buffer of `ring` bytes, or None
/// (skipped, with the reason printed) where fork events can't stream here.
fn agent(test: &str, comm: &str, ring: u64) -> Option<(Agent, TempFile)> {
    if !root_or_skip(test) {
        return None;
    }
    let cfg = TempFile::new(
        "events.toml",
        &format!(
            "[episodes]\nwatch_comms = [\"{comm}\"]\nlog = \"none\"\nring_buffer_bytes = {ring}\n"
        ),
    );
    let agent = Agent::start(&["--config", cfg.0.to_str().unwrap()]);
    let m = agent.scrape();
    if m.get("memwatch_events_ring_buffer_bytes", &[]).is_none() {
        let tracing = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
        let has = |e: &str| {
            tracing
                .iter()
                .any(|t| std::path::Path::new(t).join("events").join(e).exists())
        };
        // Where the tracepoints exist the hooks must attach (a verifier rejection
        // of the fork programs would otherwise pass as a skip).
        assert!(
            !(has("syscalls/sys_exit_clone") && has("sched/sched_process_fork")),
            "the fork hooks did not attach although their tracepoints exist:\n{}",
            agent.log_text()
        );
        println!("SKIP {test}: no fork syscall or sched_process_fork tracepoints here");
        return None;
    }
    assert_eq!(
        m.get("memwatch_events_ring_buffer_bytes", &[]),
        Some(ring as f64)
    );
    Some((agent, cfg))
}

/// Runs a storm workload until its forks are done: the workload (still alive, so the
/// agent can read its row and end the episodes whose exit was lost) and the number of
/// children it forked (all reaped, so every exit has happened).
fn run_storm(body: fn(&Ctl) -> i32, during: impl FnOnce()) -> (Workload, u64) {
    let w = Workload::spawn(body);
    w.expect(b'R');
    during();
    w.send(b'G');
    let n = w.read_u64();
    w.wait_done();
    (w, n)
}

/// Waits until every streamed fork of `comm` has become a finished episode (the
/// streamed ones whose exit was lost end when the agent sees the child gone) or was
/// evicted from the full table of running episodes.
fn settled(agent: &Agent, comm: &str, before: Counts) -> Counts {
    eventually(600, || {
        let d = Counts::read(agent, comm).since(before);
        (d.episodes + d.evicted >= d.sent_fork).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "episodes never caught up with the streamed forks: {:?}\n{}",
            Counts::read(agent, comm).since(before),
            agent.log_text()
        )
    })
}

/// A watched process's fork storm is recorded whole or its losses are counted exactly,
/// for forks and for exits; an unwatched process's forks and exits are not streamed.
#[test]
fn fork_storm_is_accounted_exactly_and_unwatched_exits_are_not_streamed() {
    const TEST: &str = "fork_storm_is_accounted_exactly_and_unwatched_exits_are_not_streamed";
    let _serial = SERIAL.lock();
    let comm = "mwstorm-a";
    let Some((agent, _cfg)) = agent(TEST, comm, 256 * 1024) else {
        return;
    };
    let before = Counts::read(&agent, comm);
    let (w, n) = run_storm(storm_a, || {});
    assert_eq!(n, forks());
    let d = settled(&agent, comm, before);
    w.finish();
    println!("storm of {n} forks, 256 KiB ring: {d:?}");
    // Every fork of the watched process: streamed (and then an episode, or evicted
    // from the capped table of running episodes) or lost.
    assert_eq!(d.sent_fork + d.lost_fork, n, "{d:?}");
    assert_eq!(d.episodes + d.evicted + d.lost_fork, n, "{d:?}");
    // Every child's exit: streamed, lost, or its child was not tracked (table full).
    assert_eq!(d.sent_exit + d.lost_exit + d.untracked, n, "{d:?}");

    // An unwatched process's storm: none of its forks or exits is streamed, and the
    // filter says it left them out.
    let before = Counts::read(&agent, comm);
    let (w, m) = run_storm(unwatched, || {});
    w.finish();
    assert_eq!(m, forks() / 10);
    let d = Counts::read(&agent, comm).since(before);
    println!("unwatched storm of {m} forks: {d:?}");
    assert_eq!((d.sent_fork, d.lost_fork), (0, 0), "{d:?}");
    assert_eq!((d.sent_exit, d.lost_exit), (0, 0), "{d:?}");
    assert!(d.filtered_fork >= m && d.filtered_exit >= m, "{d:?}");
}

/// With the consumer stopped (SIGSTOP) and a one-page ring, the ring holds at most
/// `page / 64` events: the rest of the storm's events are lost, and every one of them
/// is counted.
#[test]
fn a_full_ring_buffer_counts_every_lost_event() {
    const TEST: &str = "a_full_ring_buffer_counts_every_lost_event";
    let _serial = SERIAL.lock();
    let comm = "mwstorm-b";
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let Some((agent, _cfg)) = agent(TEST, comm, page) else {
        return;
    };
    let before = Counts::read(&agent, comm);
    let pid = agent.pid() as i32;
    // SAFETY: signalling the agent this test started, by its pid.
    let (w, n) = run_storm(storm_b, || {
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0)
    });
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(n, forks());
    let d = settled(&agent, comm, before);
    w.finish();
    println!("storm of {n} forks, {page}-byte ring, consumer stopped: {d:?}");
    assert!(
        d.sent_fork + d.sent_exit <= page / RECORD_BYTES,
        "more events streamed than the ring holds: {d:?}"
    );
    assert!(d.lost_fork > 0 && d.lost_exit > 0, "{d:?}");
    assert_eq!(d.sent_fork + d.lost_fork, n, "{d:?}");
    assert_eq!(d.episodes + d.evicted + d.lost_fork, n, "{d:?}");
    assert_eq!(d.sent_exit + d.lost_exit + d.untracked, n, "{d:?}");
}
