//! `cargo xtask bench overhead`: what memwatch costs the workloads it watches.
//!
//! Each workload runs alternately without and with memwatch (release build, started
//! and stopped by the benchmark, on a loopback port), several rounds in one run; the
//! result is the ratio of median times, and the cost per kernel event is the extra
//! time divided by the events the kernel counted (/proc/vmstat). Results go to
//! docs/BENCHMARKS.md between markers, with the command that reproduces them.

use std::{
    io::{Read, Write},
    net::TcpStream,
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
const ROUNDS: usize = 5;

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

/// memwatch running for one measurement.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(bin: &Path, port: u16, config: &Path) -> Result<Self> {
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
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = write!(s, "GET /healthz HTTP/1.0\r\n\r\n");
                let mut r = String::new();
                let _ = s.read_to_string(&mut r);
                if r.contains("200") {
                    return Ok(Self { child });
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("memwatch did not come up on port {port}");
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("memwatch exited with {status}");
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
    without: f64,
    with: f64,
    events: f64,
}

fn measure(
    bin: &Path,
    config: &Path,
    mut run: impl FnMut() -> Result<Duration>,
    event_keys: &[&str],
) -> Result<Measured> {
    let port = 19847;
    run()?; // warm-up
    let (mut without, mut with, mut events) = (Vec::new(), Vec::new(), Vec::new());
    // ABBA order, so a drift (page cache, disk, other load) does not favour a side.
    for round in 0..ROUNDS * 2 {
        if (round % 4 == 0) || (round % 4 == 3) {
            let e0 = vmstat(event_keys);
            without.push(run()?.as_secs_f64());
            events.push((vmstat(event_keys) - e0) as f64);
        } else {
            let agent = Agent::start(bin, port, config)?;
            with.push(run()?.as_secs_f64());
            agent.stop()?;
        }
    }
    Ok(Measured {
        without: median(&mut without),
        with: median(&mut with),
        events: median(&mut events),
    })
}

fn report_line(name: &str, m: &Measured) -> String {
    let ratio = m.with / m.without;
    let per_event_ns = (m.with - m.without) / m.events * 1e9;
    format!(
        "| {name} | {:.3} s | {:.3} s | {:+.1}% | {:.0} | {per_event_ns:.0} ns |",
        m.without,
        m.with,
        (ratio - 1.0) * 100.0,
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

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!("bench: COW workload, every hook");
    let cow_all = measure(&bin, &all, || Ok(cow_workload(mem)), &["pgfault"])?;
    eprintln!("bench: COW workload, page_fault tracepoints only");
    let cow_pf = measure(&bin, &pf_only, || Ok(cow_workload(mem)), &["pgfault"])?;
    eprintln!("bench: streaming workload, every hook");
    let stream = measure(
        &bin,
        &all,
        || stream_workload(&file),
        &["nr_dirtied", "pgfault"],
    )?;
    let _ = std::fs::remove_dir_all(&dir);

    let rows = [
        report_line(
            &format!(
                "COW: fork + write {} MiB, x{COW_FORKS} (every hook)",
                COW_BYTES >> 20
            ),
            &cow_all,
        ),
        report_line(
            "COW, only the page-fault tracepoints (per-CPU counter + per-process row)",
            &cow_pf,
        ),
        report_line(
            &format!(
                "page-cache streaming: write {} MiB, fsync, read back (every hook)",
                STREAM_BYTES >> 20
            ),
            &stream,
        ),
    ];
    let section = format!(
        "Measured {} on this project's machine (2 cores), kernel {}, tracepoint rung \
         (the only one this host allows), medians of {ROUNDS} runs each side, alternating ABBA.\n\
         Reproduce: `cargo build --release -p memwatch && sudo cargo xtask bench overhead`.\n\n\
         | workload | without | with memwatch | slowdown | kernel events per run | cost per event |\n\
         |---|---|---|---|---|---|\n{}\n",
        today(),
        kernel.trim(),
        rows.join("\n")
    );
    println!("{section}");
    write_section(&root.join("docs/BENCHMARKS.md"), "overhead", &section)?;
    Ok(())
}

/// Today's date (UTC) without a date crate.
fn today() -> String {
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
