//! `cargo xtask bench soak --minutes N`: memwatch under hours of the churn a busy host
//! makes, watched from outside.
//!
//! memwatch (release build, root, a loopback port, the default configuration plus the
//! soak's cgroup as an episode and process source) runs while, for N minutes:
//! - a process churner forks short-lived children at a steady rate: some rename
//!   themselves `redis-server` and fork a `redis-rdb-bgsav`/`redis-aof-*` child (fork
//!   episodes), some take one of thousands of distinct watched (`redis-rdb-N`,
//!   `redis-aof-N`) or unwatched (`soak-N`) names, some exec `sleep` through a symlink
//!   with a watched or distinct name; each touches a little memory. So every table keyed
//!   by pid, comm or cgroup, in the kernel and in userspace, keeps seeing new keys;
//! - a cgroup churner creates memory cgroups under `memwatch-soak-<pid>` and removes
//!   them once empty; the churn processes are moved into the live ones;
//! - a scrape of /metrics every second, timed; a status other than 200, a transport
//!   error or a body that does not parse (a duplicate series included) is an error.
//!
//! Every few seconds it samples memwatch's VmRSS, VmHWM, CPU and open descriptors, and
//! the series of memwatch's own table metrics (names containing `entries`, `capacity`,
//! `evictions`, `lost`, whichever exist). The report (RSS over time, whether RSS stayed
//! flat after warm-up, scrape latency percentiles and errors, the tables at the end,
//! the churn totals) replaces the `soak` section of docs/BENCHMARKS.md.
//!
//! Clean-up, on success, failure and Ctrl-C alike: the churn children are killed by
//! their PIDs (each leads a process group with its own child) and reaped, any process
//! left in the soak's cgroups (our descendants only) is killed by PID, the cgroups are
//! removed, memwatch is stopped with SIGTERM by its PID. Children die with their parent
//! thread (PR_SET_PDEATHSIG), and memwatch with xtask, should xtask be killed outright.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{bench, workspace_root};

/// `cargo xtask bench soak` options.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// How long the churn and the scrapes run, in minutes (fractions allowed).
    #[arg(long, default_value_t = 60.0)]
    pub minutes: f64,
    /// Churn processes forked per second (each may fork one more).
    #[arg(long, default_value_t = 20.0)]
    pub forks_per_second: f64,
    /// Churn processes alive at once at most; a fork due beyond it is skipped (and
    /// counted).
    #[arg(long, default_value_t = 64)]
    pub max_children: usize,
    /// Shortest life of a churn process, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub life_ms_min: u64,
    /// Longest life of a churn process, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub life_ms_max: u64,
    /// Memory each churn process touches, in KiB.
    #[arg(long, default_value_t = 1024)]
    pub touch_kib: usize,
    /// Memory cgroups created per minute (each removed once it is retired and empty).
    #[arg(long, default_value_t = 30.0)]
    pub cgroups_per_minute: f64,
    /// Churn cgroups that take new processes at once; the oldest is retired when a new
    /// one is made.
    #[arg(long, default_value_t = 4)]
    pub cgroups_live: usize,
    /// Seconds between scrapes.
    #[arg(long, default_value_t = 1.0)]
    pub scrape_seconds: f64,
    /// Seconds between samples of memwatch's RSS, CPU, descriptors and tables.
    #[arg(long, default_value_t = 10.0)]
    pub sample_seconds: f64,
    /// Print the result without writing docs/BENCHMARKS.md.
    #[arg(long)]
    pub no_write: bool,
}

impl SoakArgs {
    fn check(&self) -> Result<()> {
        let positive = [
            ("--minutes", self.minutes),
            ("--forks-per-second", self.forks_per_second),
            ("--cgroups-per-minute", self.cgroups_per_minute),
            ("--scrape-seconds", self.scrape_seconds),
            ("--sample-seconds", self.sample_seconds),
        ];
        for (flag, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                bail!("{flag} must be a positive number, not {v}");
            }
        }
        if self.forks_per_second > 500.0 {
            bail!(
                "--forks-per-second {} would starve the machine: at most 500",
                self.forks_per_second
            );
        }
        if self.life_ms_min == 0 || self.life_ms_min > self.life_ms_max {
            bail!("--life-ms-min must be at least 1 and at most --life-ms-max");
        }
        if self.max_children == 0 || self.cgroups_live == 0 {
            bail!("--max-children and --cgroups-live must be at least 1");
        }
        if self.sample_seconds < self.scrape_seconds {
            bail!("--sample-seconds must be at least --scrape-seconds (a sample is taken with a scrape)");
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ stopping

/// Set at the end of the run, or by SIGINT, SIGTERM or SIGHUP: everything winds down
/// and cleans up.
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by SIGINT, SIGTERM or SIGHUP.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only atomic stores: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

/// Signal handlers that set `STOP`, the old ones restored on drop.
struct StopOnSignal {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl StopOnSignal {
    fn install() -> Self {
        let mut old = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction is a valid value to fill in; the handler only
            // stores to an atomic.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut prev: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut prev) == 0 {
                    old.push((sig, prev));
                }
            }
        }
        Self { old }
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: restoring the action sigaction gave us.
            unsafe { libc::sigaction(*sig, prev, std::ptr::null_mut()) };
        }
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps until `when` or until stopping, in steps of at most 50 ms.
fn sleep_until(when: Instant) {
    loop {
        let now = Instant::now();
        if now >= when || stopping() {
            return;
        }
        std::thread::sleep((when - now).min(Duration::from_millis(50)));
    }
}

// ------------------------------------------------------------------ cgroups

/// The soak's parent memory cgroup, `memwatch-soak-<pid>`, and its churned children.
/// Dropping it kills what is left in them (our descendants) by PID and removes them.
struct SoakCgroups {
    /// The parent's directory.
    dir: PathBuf,
    /// The parent as /proc/PID/cgroup shows it for the memory controller.
    path: String,
    /// The file a cgroup's memory limit is written to.
    limit_file: &'static str,
    /// "cgroup v1 memory hierarchy" or "cgroup v2".
    kind: &'static str,
}

impl SoakCgroups {
    fn create() -> Result<Self> {
        let name = format!("memwatch-soak-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (root, limit_file, kind) = if v1.join("memory.limit_in_bytes").exists() {
            (
                v1.to_path_buf(),
                "memory.limit_in_bytes",
                "cgroup v1 memory hierarchy",
            )
        } else if std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        {
            (PathBuf::from("/sys/fs/cgroup"), "memory.max", "cgroup v2")
        } else {
            bail!(
                "no memory cgroup controller: neither /sys/fs/cgroup/memory (v1) nor memory \
                 in /sys/fs/cgroup/cgroup.subtree_control (v2); the cgroup churn needs one"
            );
        };
        let dir = root.join(&name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cg = Self {
            dir,
            path: format!("/{name}"),
            limit_file,
            kind,
        };
        if kind == "cgroup v2" {
            // Children get the memory controller; the parent itself holds no process.
            std::fs::write(cg.dir.join("cgroup.subtree_control"), "+memory")
                .context("enabling the memory controller below the soak's cgroup")?;
        }
        Ok(cg)
    }

    /// The child cgroups that exist now.
    fn children(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The PIDs in `cgroup`'s cgroup.procs.
fn procs_in(cgroup: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Drop for SoakCgroups {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut busy = false;
            for child in self.children() {
                for pid in procs_in(&child) {
                    // SAFETY: a PID in a cgroup only our churn children were moved into.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if std::fs::remove_dir(&child).is_err() {
                    busy = true;
                }
            }
            if !busy || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => eprintln!("soak: removed {}", self.dir.display()),
            Err(e) => eprintln!(
                "soak: could not remove {} ({e}): remove it by hand (rmdir its children first)",
                self.dir.display()
            ),
        }
    }
}

/// What the cgroup churner did.
#[derive(Debug, Default, Clone)]
struct CgroupTotals {
    created: u64,
    removed: u64,
    failed: u64,
}

/// The cgroup.procs files of the churn cgroups that take new processes.
type Live = Arc<Mutex<Vec<Arc<CString>>>>;

fn live_lock(live: &Live) -> std::sync::MutexGuard<'_, Vec<Arc<CString>>> {
    live.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates a cgroup every `interval`, keeps `keep` of them live, retires the oldest
/// beyond that and removes retired ones once they are empty, until stopping.
fn churn_cgroups(cg: &SoakCgroups, live: &Live, interval: Duration, keep: usize) -> CgroupTotals {
    let mut totals = CgroupTotals::default();
    let mut active: Vec<PathBuf> = Vec::new();
    let mut retired: Vec<PathBuf> = Vec::new();
    let start = Instant::now();
    let mut n: u64 = 0;
    while !stopping() {
        let dir = cg.dir.join(format!("c{n}"));
        let made = std::fs::create_dir(&dir).and_then(|()| {
            std::fs::write(dir.join(cg.limit_file), (256u64 << 20).to_string())?;
            CString::new(dir.join("cgroup.procs").to_string_lossy().into_owned())
                .map_err(std::io::Error::other)
        });
        match made {
            Ok(procs) => {
                totals.created += 1;
                live_lock(live).push(Arc::new(procs));
                active.push(dir);
            }
            Err(e) => {
                totals.failed += 1;
                eprintln!("soak: creating cgroup {}: {e}", dir.display());
                let _ = std::fs::remove_dir(&dir);
            }
        }
        while active.len() > keep {
            let old = active.remove(0);
            let procs = old.join("cgroup.procs").to_string_lossy().into_owned();
            live_lock(live).retain(|p| p.to_str().ok() != Some(procs.as_str()));
            retired.push(old);
        }
        retired.retain(|d| {
            if std::fs::remove_dir(d).is_ok() {
                totals.removed += 1;
                false
            } else {
                true
            }
        });
        n += 1;
        sleep_until(start + interval.mul_f64(n as f64));
    }
    // The churn processes are gone or going; SoakCgroups' drop removes what is left.
    live_lock(live).clear();
    totals
}

// ------------------------------------------------------------------ processes

/// What a churn process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Names itself `redis-server`, touches memory, forks a child that takes a Redis
    /// child's name (a fork episode for the default config), writes its memory again
    /// (copy-on-write) and waits for the child.
    Episode,
    /// One of thousands of distinct watched names (`redis-rdb-N`, `redis-aof-N`).
    Watched,
    /// One of thousands of distinct unwatched names (`soak-N`).
    Unwatched,
    /// Execs `sleep` through a symlink whose name becomes its comm.
    Exec,
}

impl Kind {
    /// The mix, by the fork's number: 25% episodes, 25% watched names, 35% unwatched
    /// names, 15% exec.
    fn of(n: u64) -> Self {
        match n % 20 {
            0..=4 => Self::Episode,
            5..=9 => Self::Watched,
            10..=16 => Self::Unwatched,
            _ => Self::Exec,
        }
    }
}

/// Distinct names per kind before they repeat.
const DISTINCT_NAMES: u64 = 4096;
/// The symlinks to `sleep` the exec kind goes through (their names become the comm).
const EXEC_NAMES: &[&str] = &[
    "redis-server",
    "redis-aof-exec",
    "soak-exec-0",
    "soak-exec-1",
    "soak-exec-2",
    "soak-exec-3",
];

/// A fixed pseudo-random number from `n` (splitmix64): the churn is the same every run.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Everything a churn child needs, made before the fork (the child of a threaded
/// process must not allocate).
struct Plan {
    kind: Kind,
    name: CString,
    child_name: CString,
    exec_path: CString,
    exec_argv: Vec<CString>,
    procs: Option<Arc<CString>>,
    life: Duration,
    bytes: usize,
}

impl Plan {
    fn new(n: u64, args: &SoakArgs, exec_dir: &Path, procs: Option<Arc<CString>>) -> Result<Self> {
        let kind = Kind::of(n);
        let k = mix(n) % DISTINCT_NAMES;
        let name = match kind {
            Kind::Episode => "redis-server".to_string(),
            Kind::Watched if n.is_multiple_of(2) => format!("redis-rdb-{k}"),
            Kind::Watched => format!("redis-aof-{k}"),
            Kind::Unwatched => format!("soak-{k}"),
            Kind::Exec => EXEC_NAMES
                .get((n / 20) as usize % EXEC_NAMES.len())
                .copied()
                .unwrap_or("soak-exec-0")
                .to_string(),
        };
        let child_name = if n % 40 < 20 {
            "redis-rdb-bgsav".to_string()
        } else {
            format!("redis-aof-{k}")
        };
        let span = args.life_ms_max - args.life_ms_min;
        let life = Duration::from_millis(args.life_ms_min + mix(n ^ 0x5a5a) % (span + 1));
        let exec_path = exec_dir.join(&name);
        Ok(Self {
            kind,
            exec_argv: vec![
                CString::new(name.clone())?,
                CString::new(format!("{:.3}", life.as_secs_f64()))?,
            ],
            name: CString::new(name)?,
            child_name: CString::new(child_name)?,
            exec_path: CString::new(exec_path.to_string_lossy().into_owned())?,
            procs,
            life,
            bytes: args.touch_kib * 1024,
        })
    }
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// Writes to every page of `bytes` of anonymous memory at `mem` (null: none).
///
/// # Safety
/// `mem` is null or a writable mapping of at least `bytes`.
unsafe fn touch(mem: *mut u8, bytes: usize, value: u8) {
    if mem.is_null() {
        return;
    }
    let mut off = 0;
    while off < bytes {
        // SAFETY: within the mapping (the caller's promise).
        unsafe { std::ptr::write_volatile(mem.add(off), value) };
        off += 4096;
    }
}

/// The body of a churn child, right after fork. Only async-signal-safe calls, no
/// allocation; never returns. Exits with the number of children it forked.
///
/// # Safety
/// Call only in the child of a fork, with `argv` and `envp` null-terminated arrays of
/// pointers into `plan`'s strings (or null).
unsafe fn child_main(
    plan: &Plan,
    parent: libc::pid_t,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY: plain syscalls on memory the plan owns; the caller's promise.
    unsafe {
        // Dies with the churner's thread; leads a process group with its own child, so
        // one kill(-pid) stops both.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        libc::setpgid(0, 0);
        if let Some(procs) = &plan.procs {
            // "0": the writing process itself (v1 and v2).
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        if plan.kind == Kind::Exec {
            libc::execve(plan.exec_path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
        libc::prctl(libc::PR_SET_NAME, plan.name.as_ptr());
        let mem = libc::mmap(
            std::ptr::null_mut(),
            plan.bytes.max(4096),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        let mem = if mem == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            mem.cast::<u8>()
        };
        touch(mem, plan.bytes, 1);
        let half = timespec(plan.life / 2);
        let mut forked = 0;
        if plan.kind == Kind::Episode {
            let child = libc::fork();
            if child == 0 {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::prctl(libc::PR_SET_NAME, plan.child_name.as_ptr());
                libc::nanosleep(&half, std::ptr::null_mut());
                libc::_exit(0);
            }
            if child > 0 {
                forked = 1;
                touch(mem, plan.bytes, 2); // copy-on-write while the child lives
                let mut status = 0;
                libc::waitpid(child, &mut status, 0);
            }
            libc::nanosleep(&half, std::ptr::null_mut());
        } else {
            let whole = timespec(plan.life);
            libc::nanosleep(&whole, std::ptr::null_mut());
        }
        libc::_exit(forked);
    }
}

/// What the process churner did.
#[derive(Debug, Default, Clone)]
struct ProcessTotals {
    /// Churn processes forked, by kind.
    forked: BTreeMap<&'static str, u64>,
    /// Their own children (the episode kind's `redis-rdb-bgsav`/`redis-aof-N`).
    grandchildren: u64,
    /// Exec children whose exec failed (exit 127).
    exec_failed: u64,
    /// Forks that failed.
    fork_failed: u64,
    /// Forks skipped because `max_children` were alive.
    skipped: u64,
    /// Children that ended on a signal before the clean-up (none expected).
    killed: u64,
    /// Children alive at the end, killed by the clean-up.
    killed_at_end: u64,
    /// Distinct comms the churn used.
    names: usize,
}

impl ProcessTotals {
    fn total(&self) -> u64 {
        self.forked.values().sum()
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Episode => "redis-server forking a child",
        Kind::Watched => "watched names",
        Kind::Unwatched => "unwatched names",
        Kind::Exec => "exec through a symlink",
    }
}

/// Reaps the children in `live` that ended (without blocking), counting their ends.
fn reap(live: &mut Vec<(libc::pid_t, Kind)>, totals: &mut ProcessTotals) {
    live.retain(|&(pid, kind)| {
        let mut status = 0;
        // SAFETY: waiting for a child of ours, by PID.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == 0 {
            return true;
        }
        if r == pid {
            if libc::WIFEXITED(status) {
                let code = libc::WEXITSTATUS(status);
                match kind {
                    Kind::Episode => totals.grandchildren += code as u64,
                    Kind::Exec if code == 127 => totals.exec_failed += 1,
                    _ => {}
                }
            } else if libc::WIFSIGNALED(status) {
                totals.killed += 1;
            }
        }
        false
    });
}

/// Forks churn children at `args.forks_per_second` until stopping, then kills (by PID
/// and process group) and reaps those still alive.
fn churn_processes(args: &SoakArgs, exec_dir: &Path, cgroups: &Live) -> ProcessTotals {
    let mut totals = ProcessTotals::default();
    let mut names = BTreeSet::new();
    let mut live: Vec<(libc::pid_t, Kind)> = Vec::new();
    let parent = std::process::id() as libc::pid_t;
    let interval = Duration::from_secs_f64(1.0 / args.forks_per_second);
    let start = Instant::now();
    let mut n: u64 = 0;
    while !stopping() {
        reap(&mut live, &mut totals);
        if live.len() >= args.max_children {
            totals.skipped += 1;
        } else {
            let procs = {
                let l = live_lock(cgroups);
                match l.len() {
                    0 => None,
                    len => l.get((mix(n ^ 0xc6) % len as u64) as usize).cloned(),
                }
            };
            match Plan::new(n, args, exec_dir, procs) {
                Ok(plan) => {
                    names.insert(plan.name.clone());
                    if plan.kind == Kind::Episode {
                        names.insert(plan.child_name.clone());
                    }
                    let argv: Vec<*const libc::c_char> = plan
                        .exec_argv
                        .iter()
                        .map(|a| a.as_ptr())
                        .chain([std::ptr::null()])
                        .collect();
                    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                    // SAFETY: the child runs only async-signal-safe code on the plan
                    // made above and never returns.
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        // SAFETY: in the child of the fork; argv and envp end in null.
                        unsafe { child_main(&plan, parent, &argv, &envp) };
                    }
                    if pid < 0 {
                        totals.fork_failed += 1;
                    } else {
                        *totals.forked.entry(kind_label(plan.kind)).or_default() += 1;
                        live.push((pid, plan.kind));
                    }
                }
                Err(e) => {
                    eprintln!("soak: churn process {n}: {e}");
                    totals.fork_failed += 1;
                }
            }
        }
        n += 1;
        sleep_until(start + interval.mul_f64(n as f64));
    }
    totals.killed_at_end = live.len() as u64;
    for &(pid, _) in &live {
        // SAFETY: our child, not yet reaped (so its PID and group are not reused): its
        // group (it and its own child) and, should it not lead one yet, itself.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    }
    for &(pid, _) in &live {
        let mut status = 0;
        // SAFETY: waiting for our child, by PID.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    totals.names = names.len();
    totals
}

// ------------------------------------------------------------------ memwatch

/// The memwatch under test, stopped (SIGTERM, then SIGKILL, by PID) on drop.
struct Memwatch {
    child: Child,
    port: u16,
    /// How it ended, once stopped.
    exit: Option<String>,
}

impl Memwatch {
    fn start(bin: &Path, config: &Path, log: &Path) -> Result<Self> {
        let port = bench::free_port()?;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--log.level=warn"])
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Not in the terminal's group: Ctrl-C reaches xtask, which stops it in turn
            // (the scrapes must not see it die first).
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut m = Self {
            child,
            port,
            exit: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = m.child.try_wait()? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "memwatch exited at start-up ({status}):\n{}",
                    text.trim_end()
                );
            }
            if matches!(get(&agent(), port, "/healthz"), Ok((200, _))) {
                return Ok(m);
            }
            if Instant::now() > deadline || stopping() {
                bail!("memwatch did not answer /healthz on port {port} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (SIGTERM, up to 10 s, then SIGKILL) and says how it ended.
    fn stop(&mut self) -> String {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let how = match self.child.try_wait() {
            Ok(Some(status)) => format!("had already exited ({status})"),
            _ => {
                let t0 = Instant::now();
                // SAFETY: signalling the child we started, by its PID (not yet reaped).
                unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
                let mut how = None;
                while t0.elapsed() < Duration::from_secs(10) {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        how = Some(format!(
                            "stopped by SIGTERM in {:.1} s ({status})",
                            t0.elapsed().as_secs_f64()
                        ));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                how.unwrap_or_else(|| {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    "did not stop within 10 s of SIGTERM: killed".to_string()
                })
            }
        };
        self.exit = Some(how.clone());
        how
    }
}

impl Drop for Memwatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The HTTP client: a status other than 2xx is an answer, not an error; connections
/// are kept alive between scrapes, as Prometheus does; Prometheus's default scrape
/// timeout.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET on loopback: the status and the body.
fn get(agent: &ureq::Agent, port: u16, path: &str) -> Result<(u16, String)> {
    let mut resp = agent.get(format!("http://127.0.0.1:{port}{path}")).call()?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_string()?;
    Ok((status, body))
}

// ------------------------------------------------------------------ the exposition

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    /// In the order written.
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    /// `name{a="x",b="y"}`, labels sorted, values escaped again.
    fn key(&self) -> String {
        let mut labels = self.labels.clone();
        labels.sort();
        if labels.is_empty() {
            return self.name.clone();
        }
        let inner: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        format!("{}{{{}}}", self.name, inner.join(","))
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Splits a metric or label name off the front of `s`.
fn take_name(s: &str, colons: bool) -> Option<(&str, &str)> {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, c)) if is_name_start(c) && (colons || c != ':') => {}
        _ => return None,
    }
    let end = chars
        .find(|&(_, c)| !(is_name_char(c) && (colons || c != ':')))
        .map_or(s.len(), |(i, _)| i);
    Some((s.get(..end)?, s.get(end..)?))
}

/// A sample's labels, in the order written.
type Labels = Vec<(String, String)>;

/// Parses `{...}` at the front of `s` (after the `{`): the labels and the rest.
fn take_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches(' ');
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (name, rest) = take_name(s, false).ok_or("a label name expected")?;
        let rest = rest
            .trim_start_matches(' ')
            .strip_prefix('=')
            .ok_or_else(|| format!("`=` expected after label {name}"))?;
        let rest = rest
            .trim_start_matches(' ')
            .strip_prefix('"')
            .ok_or_else(|| format!("a quoted value expected for label {name}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!(
                            "label {name}: invalid escape \\{}",
                            other.map_or(' ', |(_, c)| c)
                        ))
                    }
                },
                Some((_, '\n')) => return Err(format!("label {name}: raw newline")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("label {name} twice"));
        }
        labels.push((name.to_string(), value));
        s = rest
            .get(end + 1..)
            .unwrap_or_default()
            .trim_start_matches(' ');
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err(format!("`,` or `}}` expected after label {name}"));
        }
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// Parses a Prometheus text exposition (version 0.0.4) strictly enough to catch what a
/// scraper would reject or silently mangle: malformed lines, bad names, label escapes
/// and values, a TYPE given twice or after its samples, and duplicate series.
fn parse_exposition(body: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut seen = BTreeSet::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut sampled = BTreeSet::new();
    for (i, line) in body.lines().enumerate() {
        let at = |e: String| {
            let mut shown: String = line.chars().take(160).collect();
            if shown.len() < line.len() {
                shown.push_str("...");
            }
            format!("line {}: {e}: {shown:?}", i + 1)
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if take_name(name, true).is_none_or(|(_, rest)| !rest.is_empty()) {
                        return Err(at(format!("bad metric name {name:?} in TYPE")));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"]
                        .contains(&kind.trim())
                    {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if typed
                        .insert(name.to_string(), kind.trim().to_string())
                        .is_some()
                    {
                        return Err(at(format!("TYPE of {name} twice")));
                    }
                    if sampled.contains(name) {
                        return Err(at(format!("TYPE of {name} after its samples")));
                    }
                }
                (Some("TYPE"), ..) => return Err(at("TYPE without a name and type".into())),
                (Some("HELP"), None, _) => return Err(at("HELP without a name".into())),
                _ => {}
            }
            continue;
        }
        let (name, rest) =
            take_name(line, true).ok_or_else(|| at("a metric name expected".into()))?;
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(r) => take_labels(r).map_err(at)?,
            None => (Vec::new(), rest),
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| at("a value expected".into()))?;
        if let Some(ts) = fields.next() {
            if ts.parse::<i64>().is_err() {
                return Err(at(format!("bad timestamp {ts:?}")));
            }
        }
        if fields.next().is_some() || !rest.starts_with(' ') {
            return Err(at("junk after the value".into()));
        }
        let sample = Sample {
            name: name.to_string(),
            labels,
            value,
        };
        if !seen.insert(sample.key()) {
            return Err(at("duplicate series".into()));
        }
        // The family a histogram or summary's series belong to.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        sampled.insert(family.to_string());
        samples.push(sample);
    }
    Ok(samples)
}

/// Whether a series is one of memwatch's own table figures: occupancy, capacity,
/// evictions, losses (matched by name, so new families are picked up as they come).
fn is_table_series(name: &str) -> bool {
    name.starts_with("memwatch_table_")
        || (name.starts_with("memwatch_")
            && ["entries", "capacity", "evictions", "lost"]
                .iter()
                .any(|w| name.contains(w)))
}

/// Whether a series is a counter whose decrease can only be a bug: a `_total` without a
/// `pid`, `comm` or `cgroup` label (those come and go with their processes and cgroups,
/// and a new one may reuse the labels of an old one).
fn is_checked_counter(s: &Sample) -> bool {
    s.name.ends_with("_total")
        && !s
            .labels
            .iter()
            .any(|(k, _)| ["pid", "comm", "cgroup"].contains(&k.as_str()))
}

/// Counters seen going backwards between two scrapes (Prometheus reads that as a
/// reset: rate() and increase() jump).
#[derive(Debug, Default)]
struct Backwards {
    prev: BTreeMap<String, f64>,
    /// Decreases seen, and in how many series.
    times: u64,
    series: BTreeSet<String>,
    /// The first few, with their time and values.
    examples: Vec<String>,
}

impl Backwards {
    fn check(&mut self, t: f64, samples: &[Sample]) {
        for s in samples.iter().filter(|s| is_checked_counter(s)) {
            let key = s.key();
            if let Some(&before) = self.prev.get(&key) {
                if s.value < before {
                    self.times += 1;
                    // One example per series.
                    if self.examples.len() < 5 && !self.series.contains(&key) {
                        self.examples.push(format!(
                            "`{key}` {} to {} at {t:.0} s",
                            fmt_value(before),
                            fmt_value(s.value)
                        ));
                    }
                    self.series.insert(key.clone());
                }
            }
            self.prev.insert(key, s.value);
        }
    }
}

// ------------------------------------------------------------------ sampling

/// memwatch's process figures at one moment.
#[derive(Debug, Clone, Default)]
struct ProcSample {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_ticks: u64,
    fds: usize,
    threads: u64,
}

fn proc_sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok(ProcSample {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        threads: field("Threads:")?,
        cpu_ticks: bench::cpu_ticks(pid)?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
    })
}

/// One sample: seconds since the churn started, memwatch's figures, the scrape's size
/// and its table series.
#[derive(Debug, Clone)]
struct Point {
    t: f64,
    proc: ProcSample,
    series: usize,
    bytes: usize,
    tables: BTreeMap<String, f64>,
}

/// The scrapes: durations in seconds and errors.
#[derive(Debug, Default)]
struct Scrapes {
    durations: Vec<f64>,
    errors: u64,
    /// The first few errors, with their time.
    first_errors: Vec<String>,
    /// From the last good scrape.
    last: Vec<Sample>,
}

impl Scrapes {
    fn error(&mut self, t: f64, e: String) {
        self.errors += 1;
        eprintln!("soak: scrape error at {t:.0} s: {e}");
        if self.first_errors.len() < 5 {
            self.first_errors.push(format!("at {t:.0} s: {e}"));
        }
    }
}

/// Nearest-rank percentile `p` (0..=1) of `v`, sorted in place; 0 when empty.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v.get(rank - 1).copied().unwrap_or_default()
}

/// Whether RSS stayed flat after warm-up.
#[derive(Debug, Clone, PartialEq)]
struct Flat {
    /// RSS (MiB) at the end of the first quarter: the last sample at or before it.
    reference: f64,
    /// The highest RSS (MiB) in the second half.
    late_max: f64,
    /// How far above the reference the second half may go (MiB).
    tolerance: f64,
    /// Least-squares slope of RSS over the second half, MiB per hour.
    slope_per_hour: f64,
    flat: bool,
}

/// The tolerance: 10% of the reference, at least 2 MiB.
const FLAT_SHARE: f64 = 0.10;
const FLAT_MIN_MIB: f64 = 2.0;

/// From `(t seconds, RSS MiB)` samples over a run of `total` seconds; None with fewer
/// than one sample in the first quarter and two in the second half.
fn flat_after_warmup(samples: &[(f64, f64)], total: f64) -> Option<Flat> {
    let reference = samples
        .iter()
        .rfind(|(t, _)| *t <= total / 4.0)
        .map(|(_, r)| *r)?;
    let late: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= total / 2.0)
        .collect();
    if late.len() < 2 {
        return None;
    }
    let late_max = late.iter().map(|(_, r)| *r).fold(f64::MIN, f64::max);
    let n = late.len() as f64;
    let (mt, mr) = (
        late.iter().map(|(t, _)| t).sum::<f64>() / n,
        late.iter().map(|(_, r)| r).sum::<f64>() / n,
    );
    let cov: f64 = late.iter().map(|(t, r)| (t - mt) * (r - mr)).sum();
    let var: f64 = late.iter().map(|(t, _)| (t - mt).powi(2)).sum();
    let slope_per_hour = if var > 0.0 { cov / var * 3600.0 } else { 0.0 };
    let tolerance = (reference * FLAT_SHARE).max(FLAT_MIN_MIB);
    Some(Flat {
        reference,
        late_max,
        tolerance,
        slope_per_hour,
        flat: late_max <= reference + tolerance,
    })
}

// ------------------------------------------------------------------ the run

/// The configuration memwatch runs with: the defaults, plus the soak's cgroup as a
/// source of fork episodes and watched processes, episodes logged to stdout (the log
/// file).
fn config_text(cgroup: &str) -> String {
    format!(
        "# cargo xtask bench soak: the defaults, plus the soak's cgroup.\n\
         [episodes]\nwatch_comms = [\"redis-server\"]\nwatch_cgroups = [\"{cgroup}\"]\n\
         [processes]\ncomm = [\"redis-server\", \"redis-rdb-*\", \"redis-aof-*\"]\n\
         cgroups = [\"{cgroup}\"]\n"
    )
}

/// Everything the run measured.
struct Run {
    args: SoakArgs,
    seconds: f64,
    points: Vec<Point>,
    scrapes: Scrapes,
    first_tables: BTreeMap<String, f64>,
    max_tables: BTreeMap<String, f64>,
    backwards: Backwards,
    processes: ProcessTotals,
    cgroups: CgroupTotals,
    cgroup_kind: &'static str,
    memwatch_exit: String,
    memwatch_died: Option<String>,
    load_before: String,
    load_after: String,
    rungs: String,
}

pub fn run(args: &SoakArgs) -> Result<()> {
    args.check()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench soak loads eBPF programs and makes cgroups: run it as root");
    }
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no sleep binary (coreutils) for the exec churn")?;
    if std::fs::canonicalize(sleep)?
        .file_name()
        .is_some_and(|n| n == "busybox")
    {
        bail!("{} is busybox, which picks its applet by argv[0]: the exec churn needs coreutils' sleep", sleep.display());
    }
    let root = workspace_root();
    let bin = root.join("target/release/memwatch");
    let dir = std::env::temp_dir().join(format!("memwatch-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let exec_dir = dir.join("exec");
    std::fs::create_dir_all(&exec_dir)?;
    for name in EXEC_NAMES {
        std::os::unix::fs::symlink(sleep, exec_dir.join(name))?;
    }
    STOP.store(false, Ordering::SeqCst);
    INTERRUPTED.store(false, Ordering::SeqCst);
    let signals = StopOnSignal::install();
    let result = soak(args, &bin, &dir, &exec_dir);
    drop(signals);
    let interrupted = INTERRUPTED.load(Ordering::SeqCst);
    let run = match result {
        Ok(run) => run,
        Err(e) => {
            eprintln!("soak: files kept in {}", dir.display());
            return Err(e);
        }
    };
    if interrupted && run.seconds < args.minutes * 60.0 - 2.0 {
        eprintln!("soak: files kept in {}", dir.display());
        bail!(
            "interrupted after {:.0} s: everything it started is stopped and its cgroups removed; \
             nothing written",
            run.seconds
        );
    }
    let section = section(&run, &root);
    println!("{section}");
    if !args.no_write {
        bench::write_section(&root.join("docs/BENCHMARKS.md"), "soak", &section)?;
        eprintln!("soak: wrote docs/BENCHMARKS.md");
    }
    let flat = verdict(&run);
    let mut failures = Vec::new();
    if run.scrapes.errors > 0 {
        failures.push(format!("{} scrape error(s)", run.scrapes.errors));
    }
    if let Some(d) = &run.memwatch_died {
        failures.push(format!("memwatch died: {d}"));
    }
    match flat {
        Some(f) if !f.flat => failures.push(format!(
            "RSS grew after warm-up ({:.1} MiB against {:.1} MiB + {:.1})",
            f.late_max, f.reference, f.tolerance
        )),
        None => failures.push("too few samples to judge RSS".into()),
        Some(_) => {}
    }
    if run.backwards.times > 0 {
        eprintln!(
            "soak: warning: counters went backwards {} times in {} series (see the report)",
            run.backwards.times,
            run.backwards.series.len()
        );
    }
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    } else {
        eprintln!(
            "soak: memwatch's log is in {}",
            dir.join("memwatch.log").display()
        );
        bail!("soak failed: {}", failures.join("; "))
    }
}

/// Starts memwatch and the churn, scrapes and samples for the run's length (or until
/// stopping), then stops and cleans up everything, and returns what it measured.
fn soak(args: &SoakArgs, bin: &Path, dir: &Path, exec_dir: &Path) -> Result<Run> {
    let cgroups = SoakCgroups::create()?;
    let config = dir.join("memwatch.toml");
    std::fs::write(&config, config_text(&cgroups.path))?;
    eprintln!(
        "soak: cgroup {} ({}); starting memwatch ({})",
        cgroups.dir.display(),
        cgroups.kind,
        bin.display()
    );
    let mut memwatch = Memwatch::start(bin, &config, &dir.join("memwatch.log"))?;
    let load_before = loadavg();
    let live: Live = Arc::new(Mutex::new(Vec::new()));
    let seconds = args.minutes * 60.0;
    eprintln!(
        "soak: {:.1} min of churn ({} forks/s, {} cgroups/min) and a scrape every {} s; memwatch pid {}",
        args.minutes,
        args.forks_per_second,
        args.cgroups_per_minute,
        args.scrape_seconds,
        memwatch.pid()
    );
    let (processes, cgroup_totals, watched) = std::thread::scope(|s| {
        let cg_thread = s.spawn(|| {
            churn_cgroups(
                &cgroups,
                &live,
                Duration::from_secs_f64(60.0 / args.cgroups_per_minute),
                args.cgroups_live,
            )
        });
        let proc_thread = s.spawn(|| churn_processes(args, exec_dir, &live));
        let watched = watch(args, &mut memwatch, seconds);
        // Whatever ended the watch (time, Ctrl-C, an error), the churn stops now.
        STOP.store(true, Ordering::SeqCst);
        let processes = proc_thread.join();
        let cg = cg_thread.join();
        (processes, cg, watched)
    });
    let memwatch_exit = memwatch.stop();
    let cgroup_kind = cgroups.kind;
    drop(cgroups);
    let processes = processes.map_err(|_| anyhow::anyhow!("the process churner panicked"))?;
    let cgroup_totals =
        cgroup_totals.map_err(|_| anyhow::anyhow!("the cgroup churner panicked"))?;
    let w = watched?;
    let rungs = rung_summary(&w.scrapes.last);
    Ok(Run {
        args: args.clone(),
        seconds: w.seconds,
        points: w.points,
        scrapes: w.scrapes,
        first_tables: w.first_tables,
        max_tables: w.max_tables,
        backwards: w.backwards,
        processes,
        cgroups: cgroup_totals,
        cgroup_kind,
        memwatch_exit,
        memwatch_died: w.died,
        load_before,
        load_after: loadavg(),
        rungs,
    })
}

/// What the scrape loop saw.
struct Watched {
    seconds: f64,
    points: Vec<Point>,
    scrapes: Scrapes,
    first_tables: BTreeMap<String, f64>,
    max_tables: BTreeMap<String, f64>,
    backwards: Backwards,
    died: Option<String>,
}

/// Scrapes every `scrape_seconds` and samples every `sample_seconds` for `seconds` or
/// until stopping or memwatch exits.
fn watch(args: &SoakArgs, memwatch: &mut Memwatch, seconds: f64) -> Result<Watched> {
    let client = agent();
    let start = Instant::now();
    let mut w = Watched {
        seconds: 0.0,
        points: Vec::new(),
        scrapes: Scrapes::default(),
        first_tables: BTreeMap::new(),
        max_tables: BTreeMap::new(),
        backwards: Backwards::default(),
        died: None,
    };
    let total = (seconds / args.scrape_seconds).floor() as u64;
    let mut next_report = 60.0;
    let mut next_sample = 0.0;
    let mut k: u64 = 0;
    loop {
        // A tick that a slow scrape ran past (by more than half an interval) is
        // skipped, as Prometheus does, instead of scraping twice in a row.
        let late = start.elapsed().as_secs_f64() / args.scrape_seconds;
        if late > k as f64 + 0.5 {
            k = late.floor() as u64 + 1;
        }
        if k > total {
            break;
        }
        sleep_until(start + Duration::from_secs_f64(k as f64 * args.scrape_seconds));
        if stopping() {
            break;
        }
        let last = k == total;
        k += 1;
        let t = start.elapsed().as_secs_f64();
        w.seconds = t;
        if let Some(status) = memwatch.child.try_wait()? {
            w.died = Some(format!("exited at {t:.0} s ({status})"));
            break;
        }
        let t0 = Instant::now();
        let scraped = get(&client, memwatch.port, "/metrics");
        let took = t0.elapsed().as_secs_f64();
        let (samples, bytes) = match scraped {
            Ok((200, body)) => match parse_exposition(&body) {
                Ok(samples) => {
                    w.scrapes.durations.push(took);
                    (samples, body.len())
                }
                Err(e) => {
                    w.scrapes.error(t, format!("unparsable body: {e}"));
                    continue;
                }
            },
            Ok((status, body)) => {
                let head: String = body.chars().take(200).collect();
                w.scrapes.error(t, format!("status {status}: {head}"));
                continue;
            }
            Err(e) => {
                w.scrapes.error(t, format!("{e:#}"));
                continue;
            }
        };
        let tables: BTreeMap<String, f64> = samples
            .iter()
            .filter(|s| is_table_series(&s.name))
            .map(|s| (s.key(), s.value))
            .collect();
        if w.first_tables.is_empty() {
            w.first_tables = tables.clone();
        }
        w.backwards.check(t, &samples);
        for (key, v) in &tables {
            let m = w.max_tables.entry(key.clone()).or_insert(*v);
            *m = m.max(*v);
        }
        if t + 0.5 * args.scrape_seconds >= next_sample || last {
            while next_sample <= t + 0.5 * args.scrape_seconds {
                next_sample += args.sample_seconds;
            }
            let proc = match proc_sample(memwatch.pid()) {
                Ok(p) => p,
                Err(e) => {
                    w.died = Some(format!("unreadable at {t:.0} s ({e:#})"));
                    break;
                }
            };
            if t >= next_report {
                eprintln!(
                    "soak: {:.0} min: RSS {:.1} MiB, {} scrapes, {} errors",
                    t / 60.0,
                    proc.rss_kib as f64 / 1024.0,
                    w.scrapes.durations.len(),
                    w.scrapes.errors
                );
                next_report += 60.0;
            }
            w.points.push(Point {
                t,
                proc,
                series: samples.len(),
                bytes,
                tables,
            });
        }
        w.scrapes.last = samples;
    }
    Ok(w)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// "N hooks on tracepoint, M on fentry" from memwatch_probe_info in `samples`.
fn rung_summary(samples: &[Sample]) -> String {
    let mut modes: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == "memwatch_probe_info" && s.value == 1.0)
    {
        if let Some((_, m)) = s.labels.iter().find(|(k, _)| k == "mode") {
            *modes.entry(m.clone()).or_default() += 1;
        }
    }
    if modes.is_empty() {
        return "no memwatch_probe_info".into();
    }
    modes
        .iter()
        .map(|(m, n)| match m.as_str() {
            "none" => format!("{n} not attached"),
            _ => format!("{n} on {m}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ------------------------------------------------------------------ the report

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(run: &Run) -> Option<Flat> {
    let rss: Vec<(f64, f64)> = run
        .points
        .iter()
        .map(|p| (p.t, mib(p.proc.rss_kib)))
        .collect();
    flat_after_warmup(&rss, run.seconds)
}

/// The RSS table: a row every minute (every few minutes on long runs, at most about
/// 15 rows), and the last sample.
fn rss_rows(points: &[Point]) -> String {
    let Some(last) = points.last() else {
        return String::new();
    };
    let step = (last.t / 60.0 / 15.0).ceil().max(1.0) * 60.0;
    // For each mark, the last point at or before it (the first point for 0).
    let mut chosen: Vec<&Point> = Vec::new();
    let mut mark = 0.0;
    while mark <= last.t + 0.5 {
        if let Some(p) = points
            .iter()
            .rev()
            .find(|p| p.t <= mark + 0.5)
            .or(points.first())
        {
            if !chosen.iter().any(|c| std::ptr::eq(*c, p)) {
                chosen.push(p);
            }
        }
        mark += step;
    }
    if !chosen.iter().any(|c| std::ptr::eq(*c, last)) {
        chosen.push(last);
    }
    let hz = bench::ticks_per_second();
    let mut rows = String::new();
    let mut prev: Option<&Point> = None;
    for p in chosen {
        let (max_rss, cpu) = match prev {
            Some(q) => {
                let max = points
                    .iter()
                    .filter(|x| x.t > q.t && x.t <= p.t)
                    .map(|x| x.proc.rss_kib)
                    .max()
                    .unwrap_or(p.proc.rss_kib);
                let cpu = p.proc.cpu_ticks.saturating_sub(q.proc.cpu_ticks) as f64
                    / hz
                    / (p.t - q.t).max(1e-9)
                    * 100.0;
                (format!("{:.1}", mib(max)), format!("{cpu:.1}%"))
            }
            None => (String::new(), String::new()),
        };
        rows.push_str(&format!(
            "| {:.1} | {:.1} | {max_rss} | {:.1} | {cpu} | {} | {} | {} |\n",
            p.t / 60.0,
            mib(p.proc.rss_kib),
            mib(p.proc.hwm_kib),
            p.proc.fds,
            p.proc.threads,
            p.series
        ));
        prev = Some(p);
    }
    rows
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn table_rows(run: &Run) -> String {
    let Some(last) = run.points.last() else {
        return String::new();
    };
    let mut rows = String::new();
    for (key, end) in &last.tables {
        let first = run
            .first_tables
            .get(key)
            .map_or("-".into(), |v| fmt_value(*v));
        let max = run
            .max_tables
            .get(key)
            .map_or("-".into(), |v| fmt_value(*v));
        rows.push_str(&format!(
            "| `{}` | {first} | {max} | {} |\n",
            key.replace('|', "\\|"),
            fmt_value(*end)
        ));
    }
    if rows.is_empty() {
        rows.push_str("| (none in the scrape) | | | |\n");
    }
    rows
}

/// The soak section of docs/BENCHMARKS.md.
fn section(run: &Run, root: &Path) -> String {
    let a = &run.args;
    let mut d = run.scrapes.durations.clone();
    let (p50, p99, max) = (
        percentile(&mut d, 0.50) * 1e3,
        percentile(&mut d, 0.99) * 1e3,
        percentile(&mut d, 1.0) * 1e3,
    );
    let flat = verdict(run);
    let verdict_line = match &flat {
        Some(f) => format!(
            "**RSS flat after warm-up: {}.** The highest RSS in the second half, {:.1} MiB, \
             against {:.1} MiB at the end of the first quarter (warm-up); allowed: {:.1} MiB \
             more ({:.0}% of it, at least {FLAT_MIN_MIB:.0} MiB). Slope over the second half: \
             {:+.2} MiB/hour.",
            if f.flat { "yes" } else { "NO" },
            f.late_max,
            f.reference,
            f.tolerance,
            FLAT_SHARE * 100.0,
            f.slope_per_hour
        ),
        None => "**RSS flat after warm-up: not judged** (too few samples).".into(),
    };
    let errors = if run.scrapes.errors == 0 {
        "0".to_string()
    } else {
        format!(
            "**{}**: {}",
            run.scrapes.errors,
            run.scrapes.first_errors.join("; ")
        )
    };
    let forked: Vec<String> = run
        .processes
        .forked
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let p = &run.processes;
    let revision = crate::output(
        Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .current_dir(root),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_default();
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("?".into(), |k| format!("{:.0} GiB", k / 1048576.0));
    let (first_bytes, last_bytes) = (
        run.points.first().map_or(0, |p| p.bytes),
        run.points.last().map_or(0, |p| p.bytes),
    );
    let b = &run.backwards;
    let backwards = if b.times == 0 {
        "none".to_string()
    } else {
        format!(
            "**{} times, in {} series**: {}",
            b.times,
            b.series.len(),
            b.examples.join("; ")
        )
    };
    let died = run
        .memwatch_died
        .as_ref()
        .map_or(String::new(), |d| format!(" **memwatch died: {d}.**"));
    format!(
        "### Soak: the {minutes}-minute run\n\n\
         Measured {date} on this project's machine ({cores} cores, {mem_total}, shared with \
         other work; load average {lb} before, {la} after), kernel {kernel}, memwatch \
         {revision} (release build; hooks: {rungs}), {cg}.\n\
         Reproduce: `cargo xtask bench soak --minutes {minutes}` as root (flags: \
         `--forks-per-second {fps}`, `--max-children {mc}`, `--life-ms-min {lmin}`, \
         `--life-ms-max {lmax}`, `--touch-kib {tk}`, `--cgroups-per-minute {cpm}`, \
         `--cgroups-live {cl}`, `--scrape-seconds {ss}`, `--sample-seconds {sam}`; \
         `--no-write` leaves this file alone).\n\n\
         {verdict_line}\n\n\
         **Scrapes: {n} in {secs:.0} s, errors: {errors}.** Duration p50 {p50:.1} ms, p99 \
         {p99:.1} ms, max {max:.1} ms; body {first_bytes} bytes at the start, {last_bytes} \
         at the end. Counters without pid, comm or cgroup labels that went backwards \
         between two scrapes (Prometheus would read a reset): {backwards}. memwatch \
         {exit}.{died}\n\n\
         **Churn:** {total} processes forked ({forked}), and {gc} children of theirs \
         (`redis-rdb-bgsav`, `redis-aof-N`), under {names} distinct names; {skipped} forks \
         skipped at the cap of {mc} alive, {ff} failed, {ef} execs failed, {killed} \
         killed by a signal during the run, {kae} still alive at the end and killed. \
         Cgroups: {cc} created, {cr} removed during the run (the rest at the end), {cf} \
         failed.\n\n\
         | minute | RSS MiB | max RSS since the last row | VmHWM MiB | memwatch CPU since the last row | open fds | threads | samples in the scrape |\n\
         |---|---|---|---|---|---|---|---|\n{rss}\n\
         memwatch's table figures (series whose names contain `entries`, `capacity`, \
         `evictions` or `lost`) at the first scrape, their highest, and at the end:\n\n\
         | series | first | max | end |\n|---|---|---|---|\n{tables}\n\
         Method: memwatch runs with the default configuration plus the soak's parent \
         cgroup in `episodes.watch_cgroups` and `processes.cgroups`, on a loopback port. A \
         thread forks churn processes at a steady rate, a quarter of them named \
         `redis-server` that fork a Redis-named child and write their memory while it \
         lives (a fork episode each), a quarter with watched names out of {dn} \
         (`redis-rdb-N`, `redis-aof-N`), a third with unwatched names out of {dn} \
         (`soak-N`), the rest exec `sleep` through symlinks whose names become their comm; \
         each joins one of the live churn cgroups, touches {tk} KiB and lives \
         {lmin}-{lmax} ms. Another thread creates a memory cgroup (limit 256 MiB) under \
         `memwatch-soak-<pid>` every {cg_every:.1} s, keeps {cl} taking processes and \
         removes retired ones once empty. The scraper GETs /metrics every {ss} s over a \
         kept-alive connection (10 s timeout); a status other than 200, a transport error \
         or a body that fails a strict parse of the text format (names, label escapes, \
         values, TYPE lines, duplicate series) is an error. Every {sam} s it reads \
         VmRSS, VmHWM and Threads from /proc/PID/status, utime+stime and the open \
         descriptors. \"Flat\" compares the highest RSS in the second half of the run with \
         the RSS at the end of the first quarter.\n",
        minutes = a.minutes,
        date = bench::today(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        lb = run.load_before,
        la = run.load_after,
        kernel = bench::kernel_release().trim(),
        rungs = run.rungs,
        cg = run.cgroup_kind,
        fps = fmt_value(a.forks_per_second),
        mc = a.max_children,
        lmin = a.life_ms_min,
        lmax = a.life_ms_max,
        tk = a.touch_kib,
        cpm = fmt_value(a.cgroups_per_minute),
        cl = a.cgroups_live,
        ss = fmt_value(a.scrape_seconds),
        sam = fmt_value(a.sample_seconds),
        n = run.scrapes.durations.len() as u64 + run.scrapes.errors,
        secs = run.seconds,
        exit = run.memwatch_exit,
        total = p.total(),
        forked = forked.join(", "),
        gc = p.grandchildren,
        names = p.names,
        skipped = p.skipped,
        ff = p.fork_failed,
        ef = p.exec_failed,
        killed = p.killed,
        kae = p.killed_at_end,
        cc = run.cgroups.created,
        cr = run.cgroups.removed,
        cf = run.cgroups.failed,
        rss = rss_rows(&run.points),
        tables = table_rows(run),
        dn = DISTINCT_NAMES,
        cg_every = 60.0 / a.cgroups_per_minute,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let body = "# HELP memwatch_table_entries Rows.\n# TYPE memwatch_table_entries gauge\n\
                    memwatch_table_entries{table=\"procs\"} 12\n\
                    memwatch_table_entries{table=\"a \\\"b\\\" \\\\ c\\n}{,\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 4\nh_sum 1.5e-3\nh_count 4\n\
                    x NaN 1700000000000\ny{} +Inf\n";
        let s = parse_exposition(body).unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(s[0].labels, vec![("table".into(), "procs".into())]);
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].labels[0].1, "a \"b\" \\ c\n}{,");
        assert_eq!(
            s[1].key(),
            "memwatch_table_entries{table=\"a \\\"b\\\" \\\\ c\\n}{,\"}"
        );
        assert_eq!(s[3].value, 1.5e-3);
        assert_eq!(s[4].value, 4.0);
        assert!(s[5].value.is_nan());
        assert_eq!(s[6].value, f64::INFINITY);
    }

    #[test]
    fn rejects_what_a_scraper_would() {
        for (body, why) in [
            ("a{x=\"1\"} 1\na{x=\"1\"} 2\n", "duplicate series"),
            (
                "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n",
                "duplicate series",
            ),
            ("a{x=\"1} 1\n", "unterminated"),
            ("a{x=\"\\t\"} 1\n", "invalid escape"),
            ("a{x=\"1\",x=\"2\"} 1\n", "twice"),
            ("a{x=1} 1\n", "quoted value"),
            ("a 1 2 3\n", "junk"),
            ("a one\n", "a value expected"),
            ("a 1 x\n", "bad timestamp"),
            ("1a 1\n", "a metric name expected"),
            ("# TYPE a gauge\n# TYPE a gauge\n", "TYPE of a twice"),
            ("a 1\n# TYPE a gauge\n", "after its samples"),
            ("# TYPE a meter\n", "unknown type"),
            ("a{x=\"1\"}1\n", "junk"),
        ] {
            let e = parse_exposition(body).unwrap_err();
            assert!(e.contains(why), "{body:?}: {e}");
        }
    }

    #[test]
    fn table_series_by_name() {
        for n in [
            "memwatch_table_entries",
            "memwatch_table_max_entries",
            "memwatch_table_capacity",
            "memwatch_table_evictions_total",
            "memwatch_events_lost_total",
        ] {
            assert!(is_table_series(n), "{n}");
        }
        for n in [
            "memwatch_vmstat_pgfault",
            "node_table_entries",
            "memwatch_rss_bytes",
        ] {
            assert!(!is_table_series(n), "{n}");
        }
    }

    #[test]
    fn counters_going_backwards() {
        let scrape = |evictions: f64, faults: f64| {
            parse_exposition(&format!(
                "memwatch_table_evictions_total{{table=\"procs\"}} {evictions}\n\
                 memwatch_process_faults_total{{pid=\"7\",comm=\"a\"}} {faults}\n\
                 memwatch_table_entries{{table=\"procs\"}} {faults}\n"
            ))
            .unwrap()
        };
        let mut b = Backwards::default();
        b.check(0.0, &scrape(1.0, 5.0));
        b.check(1.0, &scrape(2.0, 9.0));
        assert_eq!(b.times, 0);
        // A per-process counter and a gauge may drop; a plain counter may not.
        b.check(2.0, &scrape(1.0, 1.0));
        b.check(3.0, &scrape(0.0, 0.0));
        assert_eq!(b.times, 2);
        assert_eq!(
            b.series.iter().collect::<Vec<_>>(),
            ["memwatch_table_evictions_total{table=\"procs\"}"]
        );
        assert_eq!(
            b.examples,
            ["`memwatch_table_evictions_total{table=\"procs\"}` 2 to 1 at 2 s"]
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut v, 1.0), 100.0);
        assert_eq!(percentile(&mut [7.0], 0.99), 7.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn flat_judges_the_second_half_against_the_first_quarter() {
        // Warm-up climbs to 30 MiB by the end of the first quarter, then stays.
        let mut s: Vec<(f64, f64)> = (0..=100)
            .map(|i| (i as f64 * 36.0, if i < 20 { 10.0 + i as f64 } else { 30.0 }))
            .collect();
        let f = flat_after_warmup(&s, 3600.0).unwrap();
        assert_eq!(f.reference, 30.0);
        assert_eq!(f.late_max, 30.0);
        assert_eq!(f.tolerance, 3.0);
        assert!(f.flat);
        assert!(f.slope_per_hour.abs() < 1e-9);
        // A leak of 8 MiB over the second half.
        for (i, p) in s.iter_mut().enumerate().skip(50) {
            p.1 = 30.0 + (i - 50) as f64 * 0.16;
        }
        let f = flat_after_warmup(&s, 3600.0).unwrap();
        assert!(!f.flat, "{f:?}");
        assert!((f.slope_per_hour - 16.0).abs() < 0.01, "{f:?}");
        // The floor of 2 MiB for small processes.
        let s = [(0.0, 5.0), (900.0, 5.0), (1800.0, 6.9), (3600.0, 6.9)];
        let f = flat_after_warmup(&s, 3600.0).unwrap();
        assert_eq!(f.tolerance, 2.0);
        assert!(f.flat);
        // Too short to say.
        assert_eq!(
            flat_after_warmup(&[(0.0, 1.0), (3600.0, 1.0)], 3600.0),
            None
        );
    }

    #[test]
    fn the_churn_mix_and_names() {
        let kinds: Vec<Kind> = (0..20).map(Kind::of).collect();
        let count = |k: Kind| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(
            (
                count(Kind::Episode),
                count(Kind::Watched),
                count(Kind::Unwatched),
                count(Kind::Exec)
            ),
            (5, 5, 7, 3)
        );
        let args = SoakArgs {
            minutes: 1.0,
            forks_per_second: 1.0,
            max_children: 1,
            life_ms_min: 100,
            life_ms_max: 200,
            touch_kib: 4,
            cgroups_per_minute: 1.0,
            cgroups_live: 1,
            scrape_seconds: 1.0,
            sample_seconds: 1.0,
            no_write: true,
        };
        let dir = Path::new("/x");
        let names: Vec<String> = (0..20)
            .map(|n| {
                let p = Plan::new(n, &args, dir, None).unwrap();
                assert!((100..=200).contains(&(p.life.as_millis() as u64)));
                // The kernel keeps 15 bytes of a comm.
                assert!(p.name.as_bytes().len() <= 15, "{:?}", p.name);
                assert!(p.child_name.as_bytes().len() <= 15, "{:?}", p.child_name);
                p.name.into_string().unwrap()
            })
            .collect();
        assert_eq!(names[0], "redis-server");
        assert!(names[5].starts_with("redis-rdb-") || names[5].starts_with("redis-aof-"));
        assert!(names[10].starts_with("soak-"));
        assert!(EXEC_NAMES.contains(&names[17].as_str()));
        assert!(SoakArgs {
            life_ms_min: 300,
            ..args.clone()
        }
        .check()
        .is_err());
        assert!(SoakArgs {
            minutes: 0.0,
            ..args.clone()
        }
        .check()
        .is_err());
        assert!(args.check().is_ok());
    }
}
