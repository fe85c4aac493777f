//! `cargo xtask vm-test` and `cargo xtask vm-fixtures`: the integration suite on Debian
//! kernels in QEMU, on each probe rung, and fixture files captured from those kernels.
//!
//! One initramfs (busybox, /init, memwatch, the integration-test binaries, bpftool and
//! their libraries, and each kernel's disk and ext4 modules) boots every kernel; the
//! kernel command line tells /init which binaries to run on which rung (matrix.rs: on
//! every rung those whose results depend on it, once per kernel the others). A fresh
//! ext4 image on a virtio disk holds the tests' temporary files, so writeback and
//! page-cache reclaim are real. /init marks each test-binary run on the console with
//! `@@mw begin/end` lines, which this module reads as the console streams, turning
//! libtest's output into one line per kernel, rung and test.

mod cpio;
mod initramfs;
mod kernel;
mod matrix;
mod modules;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

pub use kernel::SERIES;
use kernel::{Kernel, Series};

/// The probe rungs, best first (memwatch's `--probe-mode` values).
pub const RUNGS: &[&str] = &["fentry", "kprobe", "tracepoint"];

/// A VM that prints nothing for this long is stopped (its /init prints a heartbeat
/// every 30 s while tests run, so only a guest whose kernel is stuck goes quiet).
const SILENCE: Duration = Duration::from_secs(240);
/// Inside the guest, one test binary may run this long before `timeout` stops it: a
/// backstop for a stuck test, not a speed limit (the slowest binary takes about a
/// minute on a quiet machine under TCG, and several times that beside other work).
const BINARY_TIMEOUT_SECS: u64 = 900;

/// How QEMU executes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation (PLATFORM.md: KVM guests hang on this project's machines).
    Tcg,
    /// KVM, no fallback.
    Kvm,
    /// KVM if a short probe boot under it reaches /init, else TCG.
    Auto,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// Kernel series to boot: 5.10, 6.1, 6.12 or all.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Run every selected test binary on each of these rungs (default: fentry, kprobe
    /// and tracepoint for the binaries whose results depend on the rung, the kernel's
    /// best rung only for the others).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(RUNGS))]
    pub rung: Vec<String>,
    /// Look for newer kernel packages even when some are cached.
    #[arg(long)]
    pub refresh: bool,
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: Accel,
    /// Don't stream the guests' consoles (result lines are still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// More kernel command-line arguments (debugging, e.g. `loglevel=7`).
    #[arg(long, default_value = "")]
    pub append: String,
    /// Only these test binaries (e.g. `--only cow_fork --only host`; default: all).
    #[arg(long)]
    pub only: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FixtureArgs {
    /// Kernel series to capture from: 5.10, 6.1, 6.12 or all.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    #[arg(long)]
    pub refresh: bool,
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: Accel,
}

/// Test results summed over everything that ran.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

fn select(kernel: &str) -> Result<Vec<&'static Series>> {
    if kernel == "all" {
        return Ok(SERIES.iter().collect());
    }
    let mut out = Vec::new();
    for k in kernel.split(',') {
        match SERIES.iter().find(|s| s.name == k) {
            Some(s) => out.push(s),
            None => bail!(
                "unknown kernel {k:?}: one of {}, or all",
                SERIES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    Ok(out)
}

fn fetch(series: &[&'static Series], refresh: bool) -> Result<Vec<Kernel>> {
    let mut kernels = Vec::new();
    for s in series {
        let k = kernel::get(s, refresh)
            .with_context(|| format!("getting the {} kernel ({})", s.name, s.suite))?;
        eprintln!(
            "xtask: vm {}: {} {} ({}), cached in {}",
            k.series,
            k.package,
            k.version,
            k.release,
            k.vmlinuz.parent().unwrap_or(Path::new("")).display()
        );
        kernels.push(k);
    }
    Ok(kernels)
}

/// Where the initramfs and console logs go.
fn work_dir() -> Result<PathBuf> {
    let d = crate::workspace_root().join("target/vm");
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A test binary built by cargo and the tests it holds.
struct TestBinary {
    name: String,
    path: PathBuf,
    tests: Vec<String>,
}

/// Builds memwatch and its integration tests (the same build `cargo test` uses) and
/// returns the memwatch binary and the test binaries, with their test lists.
fn build_tests() -> Result<(PathBuf, Vec<TestBinary>)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("xtask: cargo test -p memwatch --no-run --message-format=json");
    let out = Command::new(&cargo)
        .args([
            "test",
            "-p",
            "memwatch",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(crate::workspace_root())
        .env("PATH", crate::setup::path_with_tools())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut memwatch = None;
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let kinds: Vec<&str> = v["target"]["kind"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
            .unwrap_or_default();
        let name = v["target"]["name"].as_str().unwrap_or_default().to_string();
        let test_profile = v["profile"]["test"].as_bool().unwrap_or(false);
        if kinds.contains(&"test") {
            binaries.push((name, PathBuf::from(exe)));
        } else if kinds.contains(&"bin") && name == "memwatch" && !test_profile {
            memwatch = Some(PathBuf::from(exe));
        }
    }
    let memwatch = memwatch.context("cargo built no memwatch binary")?;
    binaries.sort();
    let mut out = Vec::new();
    for (name, path) in binaries {
        let list = Command::new(&path)
            .args(["--list", "--format", "terse"])
            .output()
            .with_context(|| format!("listing the tests of {}", path.display()))?;
        let tests = String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_string)
            .collect();
        out.push(TestBinary { name, path, tests });
    }
    Ok((memwatch, out))
}

/// Why a kernel can't run a rung at all, judged from its own config (not
/// from whether memwatch manages to use it: that is what the tests check).
fn rung_unsupported(k: &Kernel, rung: &str) -> Result<Option<String>> {
    let cfg = k.config_options()?;
    let needs: &[&str] = match rung {
        "fentry" => &[
            "CONFIG_BPF_SYSCALL",
            "CONFIG_BPF_JIT",
            "CONFIG_DEBUG_INFO_BTF",
            "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
        ],
        "kprobe" => &[
            "CONFIG_BPF_SYSCALL",
            "CONFIG_BPF_EVENTS",
            "CONFIG_KPROBES",
            "CONFIG_KPROBE_EVENTS",
        ],
        _ => &[
            "CONFIG_BPF_SYSCALL",
            "CONFIG_BPF_EVENTS",
            "CONFIG_TRACEPOINTS",
        ],
    };
    let missing: Vec<&str> = needs
        .iter()
        .copied()
        .filter(|o| cfg.get(*o).map(String::as_str) != Some("y"))
        .collect();
    Ok((!missing.is_empty()).then(|| format!("kernel config lacks {}", missing.join(", "))))
}

/// Modules the scratch disk needs, with what they depend on added from the package
/// (where one is built in, as virtio_pci is on 6.12, it is left out).
const DISK_MODULES: &[&str] = &[
    // The PCI transport and the disk driver.
    "virtio_pci",
    "virtio_blk",
    // ext4 (metadata_csum) and jbd2 ask the crypto API for "crc32c" at mount time; only
    // a soft dependency ("softdep=pre: crc32c"), so it is named here.
    "crc32c_generic",
    "ext4",
];

/// The scratch disk's size.
const SCRATCH_BYTES: u64 = 1 << 30;

/// mke2fs settings for the scratch disk: the features every kernel of the matrix
/// mounts (newer e2fsprogs default to ones 5.10 lacks, such as orphan_file), whatever
/// the host's /etc/mke2fs.conf says.
const MKE2FS_CONF: &str = "[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
";

/// Writes a fresh, empty ext4 image (sparse; mkfs takes milliseconds, so every boot
/// starts from a clean file system) and returns the QEMU arguments that attach it as
/// the guest's first virtio disk, /dev/vda.
fn scratch_disk(path: &Path) -> Result<Vec<String>> {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)
        .and_then(|f| f.set_len(SCRATCH_BYTES))
        .with_context(|| format!("creating {}", path.display()))?;
    let conf = path.with_extension("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF)?;
    let mkfs =
        which("mkfs.ext4").context("no mkfs.ext4: `cargo xtask setup` installs e2fsprogs")?;
    let out = Command::new(mkfs)
        .env("MKE2FS_CONFIG", &conf)
        .args(["-F", "-q", "-t", "ext4", "-L", "scratch"])
        // Inode tables and journal zeroed now, not by a kernel thread during the tests.
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(path)
        .output()
        .context("running mkfs.ext4")?;
    let _ = std::fs::remove_file(&conf);
    if !out.status.success() {
        bail!(
            "mkfs.ext4 {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(vec![
        "-drive".into(),
        // cache=unsafe: the host may keep the guest's writes in its page cache (the
        // image is thrown away); the guest still writes back to its disk as usual.
        format!("file={},format=raw,if=virtio,cache=unsafe", path.display()),
    ])
}

/// The machine the tests run on: 1 GiB, two CPUs.
const TEST_MACHINE: &[&str] = &["-m", "1024", "-smp", "2"];

/// The machine fixtures come from: two NUMA nodes of 3 GiB, so /proc/zoneinfo shows
/// more than one node and a populated Normal zone (above 4 GiB) besides DMA and DMA32.
const FIXTURE_MACHINE: &[&str] = &[
    "-m",
    "6144",
    "-smp",
    "2",
    "-object",
    "memory-backend-ram,id=m0,size=3072M",
    "-object",
    "memory-backend-ram,id=m1,size=3072M",
    "-numa",
    "node,nodeid=0,cpus=0,memdev=m0",
    "-numa",
    "node,nodeid=1,cpus=1,memdev=m1",
];

/// What `qemu` puts before the caller's kernel arguments.
/// The guest's soft-lockup and RCU-stall detectors measure wall time, and a TCG vCPU
/// starved by the host loses wall time it never ran: their thresholds are raised
/// (60 s, 300 s) so that only a truly stuck guest trips them (and SILENCE stays the
/// backstop).
const CMDLINE_PREFIX: &str =
    "console=ttyS0 quiet panic=-1 watchdog_thresh=60 rcupdate.rcu_cpu_stall_timeout=300 ";
/// x86's COMMAND_LINE_SIZE, the terminating NUL included.
const CMDLINE_MAX: usize = 2048;

/// The QEMU command line for one boot.
fn qemu(
    k: &Kernel,
    initrd: &Path,
    accel: Accel,
    machine: &[&str],
    append: &str,
    extra: &[String],
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
        _ => c.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    c.args(machine)
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("{CMDLINE_PREFIX}{append}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// How a boot ended.
#[derive(Debug)]
struct Boot {
    /// Why the VM was stopped or died early, if it did.
    trouble: Option<String>,
    /// The guest kernel reported a soft lockup or an RCU stall: it was stopped at once
    /// instead of running into the deadline.
    stuck: bool,
    elapsed: Duration,
}

/// Runs QEMU, handing each console line (without `\r`) to `on_line`. Stops the VM
/// (SIGKILL to its PID) after `SILENCE` without output or past `deadline`.
fn boot(mut cmd: Command, deadline: Duration, on_line: impl FnMut(&str)) -> Result<Boot> {
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let (lines, reader) = read_lines(child.stdout.take().expect("piped"));
    let err_reader = read_all(child.stderr.take().expect("piped"));
    let mut watch = watch_console(&lines, &mut child, start, deadline, on_line);
    let status = child.wait()?;
    let _ = reader.join();
    let err = err_reader.join().unwrap_or_default();
    if watch.trouble.is_none() && !watch.saw_done {
        watch.trouble = Some(format!(
            "VM ended before /init finished ({status}){}",
            if err.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", err.trim())
            }
        ));
    }
    Ok(Boot {
        trouble: watch.trouble,
        stuck: watch.stuck,
        elapsed: start.elapsed(),
    })
}

/// Reads `stdout` on a thread and sends each line, `clean`ed, until it ends or the
/// receiver goes away.
fn read_lines(stdout: ChildStdout) -> (mpsc::Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = clean(&String::from_utf8_lossy(&buf));
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (rx, reader)
}

/// Reads all of `stderr` on a thread (so QEMU never blocks on a full pipe).
fn read_all(mut stderr: ChildStderr) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    })
}

/// What the console of one boot showed.
#[derive(Default)]
struct Watch {
    /// Why the VM was stopped or died, if it was or did.
    trouble: Option<String>,
    /// The guest kernel reported a soft lockup or an RCU stall.
    stuck: bool,
    /// /init printed `@@mw done`.
    saw_done: bool,
}

impl Watch {
    /// Notes a kernel panic (the first one) and /init's closing line. A panic counts
    /// as stuck too: the boot is tried once more (TCG's text-patching race has oopsed
    /// 6.12 during boot, before any test ran); a second one fails the kernel.
    fn note(&mut self, line: &str) {
        if let Some(i) = line.find("Kernel panic") {
            if self.trouble.is_none() {
                self.trouble = Some(line[i..].trim().to_string());
            }
            self.stuck = true;
        }
        if line.starts_with("@@mw done") {
            self.saw_done = true;
        }
    }

    /// Whether `line` says the guest kernel is stuck (soft lockup, RCU stall); if so,
    /// notes that as the trouble.
    fn stuck_on(&mut self, line: &str) -> bool {
        let Some(i) = line
            .find("BUG: soft lockup")
            .or_else(|| line.find("rcu_sched self-detected stall"))
        else {
            return false;
        };
        self.trouble = Some(format!("guest kernel stuck: {}", line[i..].trim()));
        self.stuck = true;
        true
    }
}

/// Hands each console line from `lines` to `on_line` until the console closes, and
/// kills `child` (our own, by PID) when its guest kernel is stuck, after `SILENCE`
/// without output or once `deadline` from `start` has passed.
fn watch_console(
    lines: &mpsc::Receiver<String>,
    child: &mut Child,
    start: Instant,
    deadline: Duration,
    mut on_line: impl FnMut(&str),
) -> Watch {
    let mut watch = Watch::default();
    let mut last = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let quiet_left = SILENCE.saturating_sub(last.elapsed());
        match lines.recv_timeout(left.min(quiet_left)) {
            Ok(line) => {
                last = Instant::now();
                watch.note(&line);
                on_line(&line);
                // A stuck guest kernel does not recover; waiting for the deadline would
                // take the whole budget.
                if watch.stuck_on(&line) {
                    let _ = child.kill();
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                watch.trouble = Some(if start.elapsed() >= deadline {
                    format!("stopped after the {}s time limit", deadline.as_secs())
                } else {
                    format!("stopped: no console output for {}s", SILENCE.as_secs())
                });
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    watch
}

/// A console line without its line end, carriage returns and terminal escape sequences
/// (SeaBIOS clears the screen before the kernel starts).
fn clean(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next_if_eq(&'[').is_some() {
                    // CSI: parameters, then one final byte in '@'..='~'.
                    for p in chars.by_ref() {
                        if ('@'..='~').contains(&p) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// libtest's output for one test binary run inside a VM.
#[derive(Default)]
struct BinaryRun {
    /// Test name -> "ok", "FAILED" or "ignored".
    results: BTreeMap<String, String>,
    /// Test name -> its captured output (`---- name stdout ----` blocks).
    output: BTreeMap<String, Vec<String>>,
    pending: Option<String>,
    block: Option<String>,
}

impl BinaryRun {
    fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, status)) = rest.split_once(" ... ") {
                let status = status.trim();
                if status.is_empty() {
                    self.pending = Some(name.to_string());
                } else {
                    self.results.insert(name.to_string(), first_word(status));
                }
                return;
            }
            if let Some(name) = rest.strip_suffix(" ...") {
                self.pending = Some(name.to_string());
                return;
            }
        }
        if let Some(name) = self.pending.clone() {
            let w = first_word(line.trim());
            if matches!(w.as_str(), "ok" | "FAILED" | "ignored") {
                self.results.insert(name, w);
                self.pending = None;
                return;
            }
        }
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            self.block = Some(name.to_string());
            return;
        }
        if matches!(line, "successes:" | "failures:") || line.starts_with("test result:") {
            self.block = None;
            return;
        }
        if let Some(b) = &self.block {
            self.output
                .entry(b.clone())
                .or_default()
                .push(line.to_string());
        }
    }

    fn skip_reason(&self, test: &str) -> Option<String> {
        self.output.get(test)?.iter().find_map(|l| {
            l.strip_prefix("SKIP ")
                .map(|r| r.split_once(": ").map_or(r, |(_, why)| why).to_string())
        })
    }
}

fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or("").to_string()
}

/// Prints result lines and keeps the count.
struct Reporter {
    counts: Counts,
}

impl Reporter {
    fn pass(&mut self, what: &str) {
        self.counts.passed += 1;
        println!("vm {what} ... ok");
    }
    fn fail(&mut self, what: &str, why: &str) {
        self.counts.failed += 1;
        println!("vm {what} ... FAILED{why}");
    }
    fn skip(&mut self, what: &str, why: &str) {
        self.counts.skipped += 1;
        println!("vm {what} ... skipped: {why}");
    }

    /// Reports one finished (or cut short) binary run.
    fn binary(
        &mut self,
        series: &str,
        rung: &str,
        bin: &TestBinary,
        run: &BinaryRun,
        exit: Result<i32, &str>,
    ) {
        let mut names: BTreeSet<&str> = bin.tests.iter().map(String::as_str).collect();
        names.extend(run.results.keys().map(String::as_str));
        let mut any_failed = false;
        for t in names {
            let what = format!("{series} {rung} {}::{t}", bin.name);
            match run.results.get(t).map(String::as_str) {
                Some("ok") => match run.skip_reason(t) {
                    Some(why) => self.skip(&what, &why),
                    None => self.pass(&what),
                },
                Some("ignored") => self.skip(&what, "#[ignore]"),
                Some(_) => {
                    any_failed = true;
                    self.fail(&what, "");
                    for l in run.output.get(t).into_iter().flatten() {
                        println!("    {l}");
                    }
                }
                None => {
                    any_failed = true;
                    let why = match exit {
                        Ok(143) => format!(" (no result: timed out after {BINARY_TIMEOUT_SECS}s)"),
                        Ok(rc) => format!(" (no result; the binary exited with {rc})"),
                        Err(why) => format!(" (no result: {why})"),
                    };
                    self.fail(&what, &why);
                }
            }
        }
        if let Ok(rc) = exit {
            if rc != 0 && !any_failed {
                let why = if rc == 143 {
                    format!(" (timed out after {BINARY_TIMEOUT_SECS}s)")
                } else {
                    format!(" (exit {rc} with every test passing)")
                };
                self.fail(&format!("{series} {rung} {}", bin.name), &why);
            }
        }
    }
}

/// `cargo xtask vm-test`.
pub fn test(args: &TestArgs) -> Result<Counts> {
    let started = Instant::now();
    let series = select(&args.kernel)?;
    let rungs = chosen_rungs(&args.rung);
    let kernels = fetch(&series, args.refresh)?;
    let (memwatch, mut binaries) = build_tests()?;
    keep_only(&mut binaries, &args.only)?;
    let initrd = write_test_initramfs(&memwatch, &binaries, &kernels)?;
    let accel = choose_accel(args.accel, &kernels[0], &initrd)?;

    let mut rep = Reporter {
        counts: Counts::default(),
    };
    let mut timings = Vec::new();
    // `--rung` named: every binary on each named rung. Otherwise matrix::BINARIES says
    // which binaries run on every rung and which once per kernel.
    let explicit = !args.rung.is_empty();
    let bin_names: Vec<&str> = binaries.iter().map(|b| b.name.as_str()).collect();
    let wanted = matrix::plan(&rungs, &bin_names, explicit);
    for k in &kernels {
        let plan = kernel_plan(
            k, &rungs, &binaries, &bin_names, &wanted, explicit, &mut rep,
        )?;
        if plan.is_empty() {
            continue;
        }
        let vm = KernelTests {
            k,
            initrd: &initrd,
            accel,
            plan: &plan,
            binaries: &binaries,
            args,
        };
        vm.run(&mut rep, &mut timings)?;
    }
    eprintln!(
        "xtask: vm: {} in {:.0}s ({}, {})",
        if rep.counts.failed == 0 {
            "all done"
        } else {
            "done with failures"
        },
        started.elapsed().as_secs_f64(),
        timings.join(", "),
        match accel {
            Accel::Kvm => "KVM",
            _ => "TCG",
        }
    );
    Ok(rep.counts)
}

/// The rungs `--rung` names, in `RUNGS` order; all of them when it names none.
fn chosen_rungs(named: &[String]) -> Vec<&'static str> {
    if named.is_empty() {
        RUNGS.to_vec()
    } else {
        RUNGS
            .iter()
            .copied()
            .filter(|r| named.iter().any(|a| a == r))
            .collect()
    }
}

/// Keeps the binaries `--only` names (all when it names none); a name that is no test
/// binary is an error.
fn keep_only(binaries: &mut Vec<TestBinary>, only: &[String]) -> Result<()> {
    if only.is_empty() {
        return Ok(());
    }
    if let Some(missing) = only
        .iter()
        .find(|o| !binaries.iter().any(|b| &&b.name == o))
    {
        bail!(
            "--only {missing}: no such test binary (there are: {})",
            binaries
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    binaries.retain(|b| only.contains(&b.name));
    Ok(())
}

/// Builds the tests' initramfs (memwatch, the test binaries, bpftool and each kernel's
/// disk modules), writes it to the work directory and returns its path.
fn write_test_initramfs(
    memwatch: &Path,
    binaries: &[TestBinary],
    kernels: &[Kernel],
) -> Result<PathBuf> {
    let mut contents = initramfs::Contents::default();
    contents
        .binaries
        .push(("/bin/memwatch".into(), memwatch.to_path_buf()));
    for b in binaries {
        contents
            .binaries
            .push((format!("/tests/{}", b.name), b.path.clone()));
    }
    match which("bpftool") {
        Some(p) => contents.binaries.push(("/usr/sbin/bpftool".into(), p)),
        None => eprintln!("xtask: vm: no bpftool on this host; tests that use it will fail"),
    }
    for k in kernels {
        add_disk_modules(&mut contents, k)?;
    }
    let t = Instant::now();
    let image = initramfs::build(&contents)?;
    let initrd = work_dir()?.join("initramfs.cpio");
    std::fs::write(&initrd, &image)?;
    eprintln!(
        "xtask: vm: initramfs {} ({:.1} MB) in {:.1}s",
        initrd.display(),
        image.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(initrd)
}

/// Adds the kernel's `DISK_MODULES` under /lib/modules/<release>/, with the order /init
/// loads them in (`modules.load`).
fn add_disk_modules(contents: &mut initramfs::Contents, k: &Kernel) -> Result<()> {
    let mods = modules::get(k, DISK_MODULES)
        .with_context(|| format!("modules of the {} kernel", k.series))?;
    let dir = format!("/lib/modules/{}", k.release);
    let mut load = String::new();
    for (name, path) in &mods {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        contents.files.push((format!("{dir}/{name}.ko"), data));
        load.push_str(name);
        load.push('\n');
    }
    contents
        .files
        .push((format!("{dir}/modules.load"), load.into_bytes()));
    Ok(())
}

/// What runs on kernel `k`: the plan for those of `rungs` its config supports. What
/// `wanted` would run on the others is reported as skipped, with the reason.
fn kernel_plan(
    k: &Kernel,
    rungs: &[&'static str],
    binaries: &[TestBinary],
    bin_names: &[&str],
    wanted: &matrix::Plan,
    explicit: bool,
    rep: &mut Reporter,
) -> Result<matrix::Plan> {
    let mut supported = Vec::new();
    let mut unsupported = Vec::new();
    for &r in rungs {
        match rung_unsupported(k, r)? {
            Some(why) => unsupported.push((r, why)),
            None => supported.push(r),
        }
    }
    let plan = matrix::plan(&supported, bin_names, explicit);
    for (r, why) in &unsupported {
        for name in matrix::lost_on(r, wanted, &plan, explicit) {
            let b = binaries.iter().find(|b| b.name == name).expect("planned");
            for t in &b.tests {
                rep.skip(&format!("{} {r} {}::{t}", k.series, b.name), why);
            }
        }
    }
    Ok(plan)
}

/// One kernel's share of `vm-test`: its plan, booted with the test initramfs.
struct KernelTests<'a> {
    k: &'a Kernel,
    initrd: &'a Path,
    accel: Accel,
    plan: &'a matrix::Plan,
    binaries: &'a [TestBinary],
    args: &'a TestArgs,
}

impl KernelTests<'_> {
    /// Boots the kernel and adds its results to `rep` and its boot time to `timings`.
    /// A guest kernel that gets stuck (soft lockup, RCU stall: seen once on 5.10 under
    /// TCG) is booted once more; the retry is announced, and a second stuck boot fails
    /// that kernel's tests.
    fn run(&self, rep: &mut Reporter, timings: &mut Vec<String>) -> Result<()> {
        let series = self.k.series;
        eprintln!(
            "xtask: vm {series}: {}",
            self.plan
                .iter()
                .map(|(r, b)| format!("{r}: {}", b.join(" ")))
                .collect::<Vec<_>>()
                .join("; ")
        );
        // Each binary run may take its full timeout inside the guest; boot and
        // power-off get the 120 s.
        let deadline =
            Duration::from_secs(120 + BINARY_TIMEOUT_SECS * matrix::runs(self.plan) as u64);
        for attempt in 1..=2 {
            let (krep, b) = self.boot_once(deadline)?;
            eprintln!(
                "xtask: vm {series}: {} binary run(s) on {} rung(s) in {:.0}s",
                matrix::runs(self.plan),
                self.plan.len(),
                b.elapsed.as_secs_f64()
            );
            timings.push(format!("{series} {:.0}s", b.elapsed.as_secs_f64()));
            if b.stuck && attempt == 1 {
                eprintln!(
                    "xtask: vm {series}: the guest kernel got stuck or panicked; discarding this boot's \
                     {} result(s) and booting it once more",
                    krep.counts.passed + krep.counts.failed + krep.counts.skipped
                );
                continue;
            }
            rep.counts.passed += krep.counts.passed;
            rep.counts.failed += krep.counts.failed;
            rep.counts.skipped += krep.counts.skipped;
            break;
        }
        Ok(())
    }

    /// One boot on a fresh scratch disk, its console saved in `console-<series>.log`:
    /// each binary run is reported as /init ends it, and if the boot went wrong,
    /// whatever did not finish fails with the reason.
    fn boot_once(&self, deadline: Duration) -> Result<(Reporter, Boot)> {
        let series = self.k.series;
        let disk = work_dir()?.join(format!("scratch-{series}.img"));
        let disk_args = scratch_disk(&disk)?;
        let append = self.cmdline()?;
        let log_path = work_dir()?.join(format!("console-{series}.log"));
        let mut log = std::io::BufWriter::new(
            std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?,
        );
        let mut console = Console {
            series,
            binaries: self.binaries,
            rep: Reporter {
                counts: Counts::default(),
            },
            current: None,
            finished: BTreeSet::new(),
        };
        let quiet = self.args.quiet;
        let b = boot(
            qemu(
                self.k,
                self.initrd,
                self.accel,
                TEST_MACHINE,
                &append,
                &disk_args,
            ),
            deadline,
            |line| {
                // The heartbeat may land in the middle of a test's line.
                let line = line.replace("@@mw alive", "");
                if line.trim().is_empty() {
                    return;
                }
                if !quiet {
                    eprintln!("  {series}| {line}");
                }
                let _ = writeln!(log, "{line}");
                console.line(&line);
            },
        )?;
        log.flush()?;
        let _ = std::fs::remove_file(&disk);
        if let Some(why) = &b.trouble {
            eprintln!(
                "xtask: vm {series}: {why} (console in {})",
                log_path.display()
            );
            console.fail_unfinished(self.plan, why);
        }
        Ok((console.rep, b))
    }

    /// The kernel arguments that tell /init what to run (after `CMDLINE_PREFIX`); an
    /// error when the whole line would not fit x86's limit.
    fn cmdline(&self) -> Result<String> {
        let append = format!(
            "{} memwatch.timeout={BINARY_TIMEOUT_SECS} memwatch.disk=vda {}",
            matrix::cmdline(self.plan),
            self.args.append
        );
        if append.len() + CMDLINE_PREFIX.len() >= CMDLINE_MAX {
            bail!(
                "vm {}: a kernel command line of {} bytes; x86 takes {CMDLINE_MAX}",
                self.k.series,
                append.len() + CMDLINE_PREFIX.len()
            );
        }
        Ok(append)
    }
}

/// Follows /init's `@@mw begin/end` markers on one boot's console and reports each
/// binary run as it ends.
struct Console<'a> {
    series: &'a str,
    binaries: &'a [TestBinary],
    rep: Reporter,
    /// The run under way: its rung, its binary and libtest's output so far.
    current: Option<(String, String, BinaryRun)>,
    /// The (rung, binary) runs /init has ended.
    finished: BTreeSet<(String, String)>,
}

impl Console<'_> {
    /// Takes one console line (heartbeat removed, not empty).
    fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("@@mw begin ") {
            let mut w = rest.split_whitespace();
            if let (Some(r), Some(n)) = (w.next(), w.next()) {
                self.current = Some((r.to_string(), n.to_string(), BinaryRun::default()));
            }
        } else if let Some(rest) = line.strip_prefix("@@mw end ") {
            let mut w = rest.split_whitespace();
            if let (Some(r), Some(n), Some(rc)) = (w.next(), w.next(), w.next()) {
                if let (Some((_, _, run)), Some(bin)) = (
                    self.current.take(),
                    self.binaries.iter().find(|b| b.name == n),
                ) {
                    self.rep
                        .binary(self.series, r, bin, &run, Ok(rc.parse().unwrap_or(-1)));
                    self.finished.insert((r.to_string(), n.to_string()));
                }
            }
        } else if let Some((_, _, run)) = self.current.as_mut() {
            run.line(line);
        }
    }

    /// Fails, with `why`, every run of `plan` that did not finish (with the output the
    /// one under way had printed).
    fn fail_unfinished(&mut self, plan: &matrix::Plan, why: &str) {
        for (r, names) in plan {
            for bin in self.binaries.iter().filter(|b| names.contains(&b.name)) {
                if self.finished.contains(&(r.to_string(), bin.name.clone())) {
                    continue;
                }
                let empty = BinaryRun::default();
                let run = match &self.current {
                    Some((cr, cn, run)) if cr == r && *cn == bin.name => run,
                    _ => &empty,
                };
                self.rep.binary(self.series, r, bin, run, Err(why));
            }
        }
    }
}

/// KVM only when asked for, or when `auto` and a probe boot under KVM reaches /init
/// and powers off within 60 s.
fn choose_accel(want: Accel, k: &Kernel, initrd: &Path) -> Result<Accel> {
    if want != Accel::Auto {
        return Ok(want);
    }
    if !Path::new("/dev/kvm").exists() {
        return Ok(Accel::Tcg);
    }
    eprintln!("xtask: vm: probing KVM with a boot of {}", k.release);
    let b = boot(
        qemu(k, initrd, Accel::Kvm, TEST_MACHINE, "memwatch.tests=0", &[]),
        Duration::from_secs(60),
        |_| {},
    )?;
    Ok(match b.trouble {
        None => Accel::Kvm,
        Some(why) => {
            eprintln!("xtask: vm: KVM does not work here ({why}); using TCG");
            Accel::Tcg
        }
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = crate::setup::path_with_tools();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Tracefs events whose layout changed name between kernels: the newer name first.
const RENAMED_EVENTS: &[&[&str]] = &[
    &[
        "writeback/writeback_dirty_folio",
        "writeback/writeback_dirty_page",
    ],
    &["vmscan/mm_vmscan_write_folio", "vmscan/mm_vmscan_writepage"],
];

/// The events whose `format` files are captured: those of the host's fixture set.
fn fixture_events(fixtures: &Path) -> Result<Vec<String>> {
    let base = fixtures.join("tracefs/6.18");
    let mut events = Vec::new();
    for cat in std::fs::read_dir(&base).with_context(|| format!("reading {}", base.display()))? {
        let cat = cat?.path();
        for ev in std::fs::read_dir(&cat)? {
            let ev = ev?.path();
            if ev.join("format").is_file() {
                let rel = ev.strip_prefix(&base)?.to_string_lossy().into_owned();
                events.push(rel);
            }
        }
    }
    events.sort();
    Ok(events
        .into_iter()
        .map(|e| {
            RENAMED_EVENTS
                .iter()
                .find(|names| names[0] == e)
                .map_or(e, |names| names.join(" "))
        })
        .collect())
}

/// `cargo xtask vm-fixtures`: boots each kernel without tests and writes what /init
/// sends over the second serial port into `memwatch/tests/fixtures`.
pub fn fixtures(args: &FixtureArgs) -> Result<()> {
    let series = select(&args.kernel)?;
    let kernels = fetch(&series, args.refresh)?;
    let fixtures = crate::workspace_root().join("memwatch/tests/fixtures");
    let events = fixture_events(&fixtures)?;
    let mut contents = initramfs::Contents::default();
    contents.files.push((
        "/fixture-events".into(),
        (events.join("\n") + "\n").into_bytes(),
    ));
    let image = initramfs::build(&contents)?;
    let dir = work_dir()?;
    let initrd = dir.join("initramfs-fixtures.cpio");
    std::fs::write(&initrd, image)?;
    let accel = choose_accel(args.accel, &kernels[0], &initrd)?;
    let mut sources = String::from(
        "# Kernels the */linux-<series>-debian.txt and tracefs/<series>/ fixtures come from\n\
         # (written by `cargo xtask vm-fixtures`).\n",
    );
    for k in &kernels {
        let out = dir.join(format!("fixtures-{}.raw", k.series));
        let _ = std::fs::remove_file(&out);
        let serial = vec!["-serial".into(), format!("file:{}", out.display())];
        // -nographic puts the monitor and ttyS0 on stdio; the file is ttyS1.
        let mut extra = vec!["-serial".to_string(), "mon:stdio".to_string()];
        extra.extend(serial);
        let series = k.series;
        let b = boot(
            qemu(
                k,
                &initrd,
                accel,
                FIXTURE_MACHINE,
                "memwatch.tests=0 memwatch.fixtures=1",
                &extra,
            ),
            Duration::from_secs(300),
            |line| eprintln!("  {series}| {line}"),
        )?;
        if let Some(why) = b.trouble {
            bail!("vm {series}: {why}");
        }
        let raw = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
        let files = parse_frames(&raw).with_context(|| format!("parsing {}", out.display()))?;
        let tracefs_dir = fixtures.join("tracefs").join(series);
        let _ = std::fs::remove_dir_all(&tracefs_dir);
        for (name, data) in &files.files {
            let dest = match name.strip_prefix("tracefs/") {
                Some(rel) => tracefs_dir.join(rel),
                None => fixtures
                    .join(name)
                    .join(format!("linux-{series}-debian.txt")),
            };
            std::fs::create_dir_all(dest.parent().expect("a parent"))?;
            std::fs::write(&dest, data)?;
            println!(
                "vm {series}: wrote {}",
                dest.strip_prefix(crate::workspace_root())
                    .unwrap_or(&dest)
                    .display()
            );
        }
        for m in &files.missing {
            println!("vm {series}: no tracefs event {m}");
        }
        sources.push_str(&format!(
            "{series}: {} {} (uname -r {})\n",
            k.package, k.version, k.release
        ));
    }
    if args.kernel == "all" {
        std::fs::write(fixtures.join("VM-KERNELS.txt"), sources)?;
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Frames {
    files: Vec<(String, Vec<u8>)>,
    missing: Vec<String>,
}

/// Parses what init.sh sends: `@@file <name> <len>\n<len bytes>`, `@@missing <names>\n`,
/// `@@done\n`.
fn parse_frames(mut raw: &[u8]) -> Result<Frames> {
    let mut out = Frames::default();
    loop {
        let nl = raw
            .iter()
            .position(|&b| b == b'\n')
            .context("stream ended without @@done")?;
        let head = String::from_utf8_lossy(&raw[..nl]).into_owned();
        raw = &raw[nl + 1..];
        let mut w = head.split_whitespace();
        match w.next() {
            Some("@@file") => {
                let (Some(name), Some(len)) = (w.next(), w.next()) else {
                    bail!("bad frame header {head:?}");
                };
                let len: usize = len.parse().with_context(|| format!("length in {head:?}"))?;
                if raw.len() < len {
                    bail!("{name}: {len} bytes announced, {} left", raw.len());
                }
                out.files.push((name.to_string(), raw[..len].to_vec()));
                raw = &raw[len..];
            }
            Some("@@missing") => out.missing.push(w.collect::<Vec<_>>().join(" or ")),
            Some("@@done") => return Ok(out),
            _ => bail!("unexpected line {head:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_escapes() {
        assert_eq!(
            clean("Booting from ROM..\x1bc\x1b[?7l\x1b[2J@@mw boot 6.1\r\n"),
            "Booting from ROM..@@mw boot 6.1"
        );
        assert_eq!(clean("test a ... ok\n"), "test a ... ok");
    }

    #[test]
    fn frames_round_trip() {
        let raw =
            b"@@file meminfo 6\nab\ncd\n@@missing a/b c/d\n@@file tracefs/x/y/format 0\n@@done\n";
        let f = parse_frames(raw).unwrap();
        assert_eq!(f.files.len(), 2);
        assert_eq!(f.files[0], ("meminfo".to_string(), b"ab\ncd\n".to_vec()));
        assert_eq!(f.files[1].0, "tracefs/x/y/format");
        assert_eq!(f.missing, ["a/b or c/d"]);
        assert!(parse_frames(b"@@file a 10\nshort").is_err());
    }

    #[test]
    fn libtest_output_with_skips_and_split_lines() {
        let mut run = BinaryRun::default();
        for l in [
            "running 3 tests",
            "test a ... ok",
            "test b ... ",
            "[   12.3] some kernel line",
            "FAILED",
            "test c ... ok",
            "",
            "successes:",
            "",
            "---- c stdout ----",
            "SKIP c: needs root (loads eBPF programs); run the tests as root",
            "",
            "failures:",
            "",
            "---- b stdout ----",
            "assertion failed",
            "failures:",
            "    b",
            "test result: FAILED. 2 passed; 1 failed",
        ] {
            run.line(l);
        }
        assert_eq!(run.results["a"], "ok");
        assert_eq!(run.results["b"], "FAILED");
        assert_eq!(run.results["c"], "ok");
        assert_eq!(
            run.skip_reason("c").as_deref(),
            Some("needs root (loads eBPF programs); run the tests as root")
        );
        assert_eq!(run.skip_reason("a"), None);
        assert!(run.output["b"].iter().any(|l| l == "assertion failed"));
    }
}
