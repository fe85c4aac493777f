//! `cargo xtask bench overhead`: what memwatch costs the workloads it watches.
//!
//! Each workload runs alternately without and with memwatch (release build, started
//! and stopped by the benchmark, on a loopback port), several rounds in one run; the
//! result is the ratio of median times, and the cost per kernel event is the extra
//! time divided by the events the kernel counted (/proc/vmstat). Results go to
//! docs/BENCHMARKS.md between markers, with the command that reproduces them.

use std::{
    io::{Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::workspace_root;

/// Bytes the COW workload writes after each fork.
const COW_BYTES: usize = 1 << 30;
/// Forks per COW measurement.
const COW_FORKS: usize = 3;
/// Bytes the streaming workload writes and reads back.
const STREAM_BYTES: usize = 512 << 20;
/// Runs of each side (without, with), in ABBA order.
const ROUNDS: usize = 9;
/// Idle time before every measured run, on both sides.
const SETTLE: Duration = Duration::from_secs(3);
/// The same-machine reference: the cheapest useful thing one can attach to page faults
/// with the tools SREs use today (a count in one per-CPU map slot, no attribution).
const BPFTRACE_REFERENCE: &str = "tracepoint:exceptions:page_fault_user { @faults = count(); }";

fn vmstat(keys: &[&str]) -> u64 {
    let text = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| keys.contains(k))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// The COW workload: a 1 GiB private mapping, populated once; then, COW_FORKS times,
/// fork a child that waits while the parent writes one byte per page, and reap it.
fn cow_workload(mem: &mut [u8]) -> Duration {
    let page = 4096;
    let start = Instant::now();
    for _ in 0..COW_FORKS {
        let mut fds = [0; 2];
        // SAFETY: plain syscalls; the child only reads a pipe and exits.
        unsafe {
            libc::pipe(fds.as_mut_ptr());
            let child = libc::fork();
            if child == 0 {
                libc::close(fds[1]);
                let mut b = 0u8;
                libc::read(fds[0], (&raw mut b).cast(), 1);
                libc::_exit(0);
            }
            libc::close(fds[0]);
            for i in (0..mem.len()).step_by(page) {
                std::ptr::write_volatile(mem.as_mut_ptr().add(i), 7);
            }
            libc::close(fds[1]);
            let mut status = 0;
            libc::waitpid(child, &mut status, 0);
        }
    }
    start.elapsed()
}

/// The streaming workload: write a file in 1 MiB chunks, fsync, drop it from the
/// cache, read it back.
fn stream_workload(path: &Path) -> Result<Duration> {
    use std::os::fd::AsRawFd;
    let chunk = vec![0x42u8; 1 << 20];
    let start = Instant::now();
    let mut f = std::fs::File::create(path)?;
    for _ in 0..STREAM_BYTES / chunk.len() {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    // SAFETY: a valid fd.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    drop(f);
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    let d = start.elapsed();
    std::fs::remove_file(path)?;
    Ok(d)
}

/// What runs beside the workload on the "with" side.
enum Observer<'a> {
    /// memwatch with this config file.
    Memwatch(&'a Path),
    /// A bpftrace script: the same-machine reference.
    Bpftrace(&'a str),
}

/// memwatch (or the reference) running for one measurement.
struct Agent {
    child: Child,
    /// The signal that stops it cleanly.
    stop_signal: i32,
}

impl Agent {
    fn start(bin: &Path, port: u16, observer: &Observer) -> Result<Self> {
        let config = match observer {
            Observer::Memwatch(config) => config,
            Observer::Bpftrace(script) => return Self::start_bpftrace(script),
        };
        let child = Command::new(bin)
            .args(["run", "--log.level=error"])
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(port, "/healthz").is_ok() {
                return Ok(Self {
                    child,
                    stop_signal: libc::SIGTERM,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("memwatch did not come up on port {port}");
    }

    /// Starts bpftrace and waits for its "Attaching" line.
    fn start_bpftrace(script: &str) -> Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new("bpftrace")
            .args(["-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let out = child.stdout.take().context("bpftrace stdout")?;
        let mut lines = std::io::BufReader::new(out).lines();
        match lines.next() {
            Some(Ok(l)) if l.starts_with("Attaching") => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("bpftrace did not attach: {other:?}");
            }
        }
        // Keep draining its output (the map it prints at exit) in the background.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self {
            child,
            stop_signal: libc::SIGINT,
        })
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, self.stop_signal) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the observer exited with {status}");
        }
        Ok(())
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One workload measured without and with memwatch, alternately.
struct Measured {
    /// Wall time, medians.
    without: f64,
    with: f64,
    /// CPU time of the thread that runs the workload (the faults, syscalls and the
    /// programs they run land there), medians: less exposed than wall time to what
    /// else the machine does.
    without_cpu: f64,
    with_cpu: f64,
    events: f64,
}

/// CPU time of the calling thread.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a timespec of our own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn measure(
    bin: &Path,
    observer: &Observer,
    mut run: impl FnMut() -> Result<Duration>,
    event_keys: &[&str],
) -> Result<Measured> {
    let port = 19847;
    run()?; // warm-up
    let mut timed = || -> Result<(f64, f64)> {
        // Both sides start from the same idle time: on this machine a workload that
        // allocates memory runs much slower a few seconds after the last one than
        // right after it (the hypervisor takes freed guest memory back; measured: the
        // streaming workload's CPU time 0.11 s right after a run, 0.27 s after 3 s
        // idle), and only the memwatch side would otherwise wait for memwatch to start.
        std::thread::sleep(SETTLE);
        let c0 = thread_cpu();
        let wall = run()?.as_secs_f64();
        Ok((wall, thread_cpu() - c0))
    };
    let (mut without, mut with, mut events) = (Vec::new(), Vec::new(), Vec::new());
    let (mut without_cpu, mut with_cpu) = (Vec::new(), Vec::new());
    // ABBA order, so a drift (page cache, disk, other load) does not favour a side.
    for round in 0..ROUNDS * 2 {
        if (round % 4 == 0) || (round % 4 == 3) {
            let e0 = vmstat(event_keys);
            let (wall, cpu) = timed()?;
            without.push(wall);
            without_cpu.push(cpu);
            events.push((vmstat(event_keys) - e0) as f64);
        } else {
            let agent = Agent::start(bin, port, observer)?;
            let (wall, cpu) = timed()?;
            with.push(wall);
            with_cpu.push(cpu);
            agent.stop()?;
        }
    }
    Ok(Measured {
        without: median(&mut without),
        with: median(&mut with),
        without_cpu: median(&mut without_cpu),
        with_cpu: median(&mut with_cpu),
        events: median(&mut events),
    })
}

fn report_line(name: &str, m: &Measured) -> String {
    let slowdown = |with: f64, without: f64| (with / without - 1.0) * 100.0;
    let per_event_ns = (m.with_cpu - m.without_cpu) / m.events * 1e9;
    format!(
        "| {name} | {:.3} s | {:.3} s | {:+.1}% | {:+.1}% | {:.0} | {per_event_ns:.0} ns |",
        m.without,
        m.with,
        slowdown(m.with, m.without),
        slowdown(m.with_cpu, m.without_cpu),
        m.events
    )
}

pub fn overhead() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench overhead loads eBPF programs: run it as root");
    }
    let root = workspace_root();
    let bin = root.join("target/release/memwatch");
    let dir = std::env::temp_dir().join(format!("memwatch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let all = dir.join("all.toml");
    std::fs::write(&all, "")?;
    let pf_only = dir.join("page_fault.toml");
    std::fs::write(&pf_only, "[probes]\nhooks = [\"page_fault\"]\n")?;
    let file = root.join("target/bench-stream.dat");
    let mem = cow_mapping()?;

    let kernel = kernel_release();
    let runs = Overhead::measure(&bin, &all, &pf_only, mem, &file)?;
    let _ = std::fs::remove_dir_all(&dir);

    let section = overhead_section(&kernel, &runs.rows());
    println!("{section}");
    write_section(&root.join("docs/BENCHMARKS.md"), "overhead", &section)?;
    Ok(())
}

/// The COW workload's memory: an anonymous private mapping of `COW_BYTES` without
/// transparent huge pages, every page populated. It is never unmapped (the benchmark
/// ends with the process).
fn cow_mapping() -> Result<&'static mut [u8]> {
    // SAFETY: an anonymous private mapping of our own.
    let mem = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            COW_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            bail!("mmap of {COW_BYTES} bytes failed");
        }
        libc::madvise(p, COW_BYTES, libc::MADV_NOHUGEPAGE);
        std::slice::from_raw_parts_mut(p as *mut u8, COW_BYTES)
    };
    mem.fill(1);
    Ok(mem)
}

/// The running kernel's release (`uname -r`), empty if unknown.
pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
}

/// The measurements of `bench overhead`.
struct Overhead {
    /// COW workload, every hook.
    cow_all: Measured,
    /// COW workload, the page_fault hook only.
    cow_pf: Measured,
    /// COW workload under the bpftrace reference, when bpftrace is installed.
    reference: Option<Measured>,
    /// Streaming workload, every hook.
    stream: Measured,
}

impl Overhead {
    /// Measures each workload with memwatch `bin` under config `all` (every hook) and
    /// `pf_only`, and the COW workload under the bpftrace reference; `mem` is the COW
    /// mapping, `file` the streaming workload's file.
    fn measure(
        bin: &Path,
        all: &Path,
        pf_only: &Path,
        mem: &mut [u8],
        file: &Path,
    ) -> Result<Self> {
        let mut cow =
            |observer: &Observer| measure(bin, observer, || Ok(cow_workload(mem)), &["pgfault"]);
        eprintln!("bench: COW workload, every hook");
        let cow_all = cow(&Observer::Memwatch(all))?;
        eprintln!("bench: COW workload, page_fault hook only");
        let cow_pf = cow(&Observer::Memwatch(pf_only))?;
        let reference = if which("bpftrace") {
            eprintln!("bench: COW workload, the bpftrace reference");
            Some(cow(&Observer::Bpftrace(BPFTRACE_REFERENCE))?)
        } else {
            eprintln!("bench: no bpftrace: the reference line is left out");
            None
        };
        eprintln!("bench: streaming workload, every hook");
        let stream = measure(
            bin,
            &Observer::Memwatch(all),
            || stream_workload(file),
            &["nr_dirtied", "pgfault"],
        )?;
        Ok(Self {
            cow_all,
            cow_pf,
            reference,
            stream,
        })
    }

    /// The table rows, the reference (if measured) third.
    fn rows(&self) -> Vec<String> {
        let mut rows = vec![
            report_line(
                &format!(
                    "COW: fork + write {} MiB, x{COW_FORKS} (every hook)",
                    COW_BYTES >> 20
                ),
                &self.cow_all,
            ),
            report_line(
                "COW, only the page-fault hook (raw tracepoint: a per-CPU counter and the per-CPU process cache)",
                &self.cow_pf,
            ),
            report_line(
                &format!(
                    "page-cache streaming: write {} MiB, fsync, read back (every hook)",
                    STREAM_BYTES >> 20
                ),
                &self.stream,
            ),
        ];
        if let Some(r) = &self.reference {
            rows.insert(
                2,
                report_line(
                    &format!(
                        "COW, reference: bpftrace `{BPFTRACE_REFERENCE}` (a bare per-CPU count on \
                         the tracepoint)"
                    ),
                    r,
                ),
            );
        }
        rows
    }
}

/// The `overhead` section of docs/BENCHMARKS.md: how it was measured, then `rows`.
fn overhead_section(kernel: &str, rows: &[String]) -> String {
    format!(
        "Measured {} on this project's machine (2 cores), kernel {}, tracepoint rung \
         (the only one this host allows), medians of {ROUNDS} runs each side, alternating ABBA, each after {}s idle. \
         Slowdown in wall time, and in CPU time of the thread running the workload (where the \
         faults, syscalls and the programs they trigger are charged; steadier on a shared \
         machine); cost per event from the CPU time.\n\
         Reproduce: `cargo build --release -p memwatch && sudo cargo xtask bench overhead`.\n\n\
         | workload | without | with memwatch | slowdown (wall) | slowdown (thread CPU) | kernel events per run | cost per event |\n\
         |---|---|---|---|---|---|---|\n{}\n",
        today(),
        kernel.trim(),
        SETTLE.as_secs(),
        rows.join("\n")
    )
}

/// Whether `program` is on the PATH.
fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Today's date (UTC) without a date crate.
pub(crate) fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replaces the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`, or
/// appends the section.
pub fn write_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let new = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{start}\n{body}{}", &text[..a], &text[b..])
        }
        _ => format!("{}\n{start}\n{body}{end}\n", text.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------------
// `cargo xtask bench scrape`: CPU per scrape, memwatch against node_exporter.
// ---------------------------------------------------------------------------------

/// The node_exporter flags the comparison uses: only the collectors that read what
/// memwatch's kernel-accounting collectors read (node_exporter 1.5 has all four).
const NE_COLLECTORS: &[&str] = &[
    "--collector.disable-defaults",
    "--collector.meminfo",
    "--collector.vmstat",
    "--collector.zoneinfo",
    "--collector.pressure",
];

/// memwatch with the same four sources (and nothing else but build_info and the
/// registry's own scrape metrics).
const MW_COMPARED: &str = "[collectors]\nmeminfo = true\nvmstat = true\nzoneinfo = true\n\
                           pressure = true\nknobs = false\nprocesses = false\nbpf = false\n";

/// One exporter under measurement, stopped (SIGTERM, then SIGKILL, by PID) on drop.
struct Exporter {
    label: String,
    command: String,
    child: Child,
    port: u16,
    /// Totals over the measured scrapes.
    cpu_clock: Duration,
    cpu_ticks: u64,
    wall: Duration,
    /// From the last scrape.
    bytes: usize,
    samples: usize,
    vmstat_series: usize,
}

impl Exporter {
    fn start(label: &str, program: &Path, args: &[String]) -> Result<Self> {
        let port = free_port()?;
        let mut full = args.to_vec();
        full.push(format!("--web.listen-address=127.0.0.1:{port}"));
        let child = Command::new(program)
            .args(&full)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut e = Self {
            label: label.to_string(),
            command: format!(
                "{} {}",
                program.file_name().unwrap_or_default().to_string_lossy(),
                args.join(" ")
            ),
            child,
            port,
            cpu_clock: Duration::ZERO,
            cpu_ticks: 0,
            wall: Duration::ZERO,
            bytes: 0,
            samples: 0,
            vmstat_series: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/metrics").is_err() {
            if let Some(status) = e.child.try_wait()? {
                bail!("{label} exited at start-up ({status})");
            }
            if Instant::now() > deadline {
                bail!("{label} did not answer on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(e)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One scrape; returns the body.
    fn scrape(&mut self) -> Result<String> {
        let start = Instant::now();
        let body =
            http_get(self.port, "/metrics").with_context(|| format!("scraping {}", self.label))?;
        self.wall += start.elapsed();
        Ok(body)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET on loopback with a new connection per scrape (like a scraper without
/// keep-alive), with no Accept-Encoding (ureq without its gzip feature): both
/// exporters send identity-encoded text. The body on 200.
fn http_get(port: u16, path: &str) -> Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections(0)
        .build()
        .into();
    let body = agent
        .get(format!("http://127.0.0.1:{port}{path}"))
        .call()?
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_string()?;
    Ok(body)
}

/// CPU time of a whole process (every thread), in nanoseconds, from its CPU clock.
fn cpu_clock(pid: u32) -> Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain calls with valid out-pointers.
    unsafe {
        if libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) != 0 {
            bail!("clock_getcpuclockid({pid}) failed");
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if libc::clock_gettime(clock, &mut ts) != 0 {
            bail!("clock_gettime on the CPU clock of {pid} failed");
        }
        Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

/// utime + stime from /proc/PID/stat, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    // After the comm: state is field 3, utime 14, stime 15.
    Ok(rest[11].parse::<u64>()? + rest[12].parse::<u64>()?)
}

pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// Scrapes every exporter `n` times, round-robin with a rotating order (so a burst of
/// other load on the machine falls on all of them alike), and totals each one's CPU.
fn measure_scrapes(exporters: &mut [Exporter], n: usize) -> Result<()> {
    for e in exporters.iter_mut() {
        for _ in 0..20 {
            e.scrape()?; // warm-up: page cache, allocator, Go runtime
        }
        e.wall = Duration::ZERO;
    }
    let mut clock0 = Vec::new();
    let mut ticks0 = Vec::new();
    for e in exporters.iter() {
        clock0.push(cpu_clock(e.pid())?);
        ticks0.push(cpu_ticks(e.pid())?);
    }
    let k = exporters.len();
    for round in 0..n {
        for j in 0..k {
            let e = &mut exporters[(round + j) % k];
            let body = e.scrape()?;
            if round == n - 1 || round == 0 {
                e.bytes = body.len();
                e.samples = body
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.is_empty())
                    .count();
                e.vmstat_series = body
                    .lines()
                    .filter(|l| l.starts_with("memwatch_vmstat_") || l.starts_with("node_vmstat_"))
                    .count();
            }
        }
    }
    for (i, e) in exporters.iter_mut().enumerate() {
        e.cpu_clock = cpu_clock(e.pid())? - clock0[i];
        e.cpu_ticks = cpu_ticks(e.pid())? - ticks0[i];
    }
    Ok(())
}

fn per_scrape_ms(total: Duration, n: usize) -> f64 {
    total.as_secs_f64() * 1e3 / n as f64
}

fn ticks_ms(ticks: u64, n: usize) -> f64 {
    ticks as f64 / ticks_per_second() * 1e3 / n as f64
}

/// The memwatch/node_exporter target: at most this share of node_exporter's CPU.
const TARGET_RATIO: f64 = 0.5;

pub fn scrape(scrapes: usize, write: bool) -> Result<()> {
    if scrapes < 300 {
        bail!("--scrapes must be at least 300 (CPU time comes in 10 ms ticks)");
    }
    let root = workspace_root();
    let memwatch = root.join("target/release/memwatch");
    let node_exporter = find_node_exporter()?;
    let ne_version = version_line(node_exporter);
    let dir = std::env::temp_dir().join(format!("memwatch-bench-scrape-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("compared.toml");
    std::fs::write(&config, MW_COMPARED)?;

    eprintln!("bench: starting memwatch and three node_exporter configurations");
    let mut exporters = start_exporters(&memwatch, node_exporter, &config)?;
    eprintln!("bench: {scrapes} scrapes of each, round-robin, after 20 warm-up scrapes each");
    measure_scrapes(&mut exporters, scrapes)?;
    let _ = std::fs::remove_dir_all(&dir);
    let cmp = Comparison::of(&exporters, scrapes);
    drop(exporters);

    let kernel = kernel_release();
    let revision = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(&root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let section = scrape_section(&cmp, scrapes, &ne_version, &revision, &kernel);
    println!("{section}");
    if write {
        write_section(&root.join("docs/BENCHMARKS.md"), "scrape", &section)?;
        eprintln!("bench: wrote docs/BENCHMARKS.md");
    }
    Ok(())
}

/// Debian's node_exporter, or one installed under its upstream name.
fn find_node_exporter() -> Result<&'static Path> {
    [
        "/usr/bin/prometheus-node-exporter",
        "/usr/bin/node_exporter",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists())
    .context(
        "no node_exporter: install Debian's prometheus-node-exporter \
             (cargo xtask setup does)",
    )
}

/// The first line `program --version` prints (on stdout or stderr), empty if none.
fn version_line(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or_default().to_string()
        })
        .unwrap_or_default()
}

/// Starts the four exporters compared: memwatch with `config` first, then
/// node_exporter with its default exporter metrics, without them, and without them but
/// with every vmstat field.
fn start_exporters(memwatch: &Path, node_exporter: &Path, config: &Path) -> Result<Vec<Exporter>> {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let mut ne_default = s(NE_COLLECTORS);
    ne_default.push("--log.level=warn".into());
    let mut ne_lean = ne_default.clone();
    ne_lean.push("--web.disable-exporter-metrics".into());
    let mut ne_all = ne_lean.clone();
    ne_all.push("--collector.vmstat.fields=.*".into());
    let mw_args = vec![
        "run".to_string(),
        "--log.level=warn".into(),
        "--config".into(),
        config.display().to_string(),
    ];

    let mut exporters = vec![
        Exporter::start("memwatch", memwatch, &mw_args)?,
        Exporter::start("node_exporter", node_exporter, &ne_default)?,
        Exporter::start(
            "node_exporter, no exporter metrics",
            node_exporter,
            &ne_lean,
        )?,
        Exporter::start(
            "node_exporter, no exporter metrics, every vmstat field",
            node_exporter,
            &ne_all,
        )?,
    ];
    exporters[0].command = "memwatch run --config compared.toml (meminfo, vmstat, zoneinfo, \
                            pressure; knobs, processes and bpf off)"
        .into();
    Ok(exporters)
}

/// What the scrapes showed: memwatch's CPU against node_exporter's and one table row
/// per exporter.
struct Comparison {
    /// memwatch / node_exporter CPU per scrape, from the CPU clocks.
    ratio: f64,
    /// The same from utime+stime ticks.
    ratio_ticks: f64,
    rows: String,
}

impl Comparison {
    /// From `exporters` (memwatch first, node_exporter's defaults second) after
    /// `scrapes` measured scrapes each.
    fn of(exporters: &[Exporter], scrapes: usize) -> Self {
        let mw = per_scrape_ms(exporters[0].cpu_clock, scrapes);
        let ne = per_scrape_ms(exporters[1].cpu_clock, scrapes);
        let ratio = mw / ne;
        let ratio_ticks = exporters[0].cpu_ticks as f64 / exporters[1].cpu_ticks.max(1) as f64;
        let mut rows = String::new();
        for e in exporters {
            rows.push_str(&format!(
                "| {} | `{}` | {} | {} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.2} |\n",
                e.label,
                e.command,
                e.samples,
                e.vmstat_series,
                e.bytes,
                per_scrape_ms(e.cpu_clock, scrapes),
                ticks_ms(e.cpu_ticks, scrapes),
                per_scrape_ms(e.wall, scrapes),
                per_scrape_ms(e.cpu_clock, scrapes) / ne,
            ));
        }
        Self {
            ratio,
            ratio_ticks,
            rows,
        }
    }
}

/// The `scrape` section of docs/BENCHMARKS.md: the verdict against `TARGET_RATIO`, the
/// table and the method.
fn scrape_section(
    cmp: &Comparison,
    scrapes: usize,
    ne_version: &str,
    revision: &str,
    kernel: &str,
) -> String {
    let Comparison {
        ratio,
        ratio_ticks,
        rows,
    } = cmp;
    let verdict = if *ratio <= TARGET_RATIO {
        format!("meets the target (at most {TARGET_RATIO})")
    } else {
        format!("MISSES the target (at most {TARGET_RATIO})")
    };
    format!(
        "Measured {} on this project's machine ({} cores), kernel {}, memwatch {revision} \
         (release build), {ne_version}.\n\
         Reproduce: `cargo xtask bench scrape` (`--scrapes N`, default 2000; \
         `--no-write` leaves this file alone).\n\n\
         **memwatch / node_exporter CPU per scrape: {ratio:.2}** ({verdict}; \
         {ratio_ticks:.2} from utime+stime ticks), with memwatch exporting every vmstat \
         field and node_exporter its default 7.\n\n\
         | exporter | command | samples | vmstat series | bytes | CPU per scrape (process CPU clock) | CPU per scrape (utime+stime) | wall per scrape | CPU vs node_exporter |\n\
         |---|---|---|---|---|---|---|---|---|\n{rows}\n\
         Method: each exporter is started by the benchmark on a loopback port; after 20 \
         warm-up scrapes each, the benchmark scrapes all four {scrapes} times, round-robin \
         in a rotating order, one HTTP/1.0 connection per scrape and no Accept-Encoding \
         (so node_exporter does not gzip, which would cost it more: Prometheus asks for \
         gzip). A process's CPU is its CPU clock (every thread, ns) and, as a cross-check, \
         utime+stime from /proc/PID/stat (10 ms ticks), read before and after; it \
         includes the kernel time spent rendering the /proc files and serving the \
         connection. Other builds may run on the machine meanwhile; the round-robin \
         spreads that noise over all four.\n",
        today(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
    )
}
