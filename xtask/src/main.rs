//! Developer tasks: `cargo xtask setup | run | test | install | dist | vm-test | vm-fixtures
//! | fuzz | bench`.

mod bench;
mod fuzz;
mod install;
mod load;
mod setup;
mod soak;
mod vm;

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "memwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need, if missing: the nightly's rust-src,
    /// bpf-linker built against the nightly's LLVM, Debian packages. Idempotent.
    Setup,
    /// Set up, build memwatch (release) and run it; arguments go to `memwatch run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, then check formatting and lints, run every test on this host, then the
    /// integration tests on Debian kernels in QEMU (`vm-test --kernel all`).
    Test(TestArgs),
    /// Build memwatch (release) and install the binary (PREFIX/bin), the systemd unit
    /// (/etc/systemd/system) and a commented default config (/etc/memwatch/memwatch.toml,
    /// kept if it exists); --root installs below a staging directory.
    Install(install::InstallArgs),
    /// Build a Debian package (target/dist/memwatch_VERSION_ARCH.deb) with the same
    /// files: /usr/bin/memwatch, /lib/systemd/system/memwatch.service, the config.
    Dist(install::DistArgs),
    /// Run the integration tests on Debian kernels (5.10, 6.1, 6.12) in QEMU: on each
    /// probe rung (fentry, kprobe, tracepoint) those whose results depend on it, the
    /// others once per kernel, on its best rung.
    VmTest(vm::TestArgs),
    /// Boot the Debian kernels and capture /proc and tracefs fixture files from them
    /// into memwatch/tests/fixtures.
    VmFixtures(vm::FixtureArgs),
    /// Build the cargo-fuzz targets in fuzz/ once and run each for --seconds (one after
    /// another); report runs, crashes and corpus size per target; fail on any crash
    /// (the input stays in fuzz/artifacts/TARGET/).
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks; results go to docs/BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: BenchKind,
    },
}

#[derive(clap::Args)]
struct TestArgs {
    /// Run everything beside a CPU and memory hog (Debian's stress-ng, started after
    /// setup, stopped at the end, also when the run fails or is interrupted).
    #[arg(long)]
    under_load: bool,
    /// The hog's stress-ng arguments, split on whitespace, instead of the default
    /// (a `--timeout` here wins over the one that keeps it running until stopped).
    #[arg(
        long,
        requires = "under_load",
        allow_hyphen_values = true,
        value_name = "ARGS",
        default_value = load::DEFAULT_ARGS
    )]
    load_args: String,
}

#[derive(Subcommand)]
enum BenchKind {
    /// Slowdown of a COW-heavy and a page-cache streaming workload with memwatch
    /// against without, and the cost per kernel event.
    Overhead,
    /// CPU per scrape of memwatch's /proc collectors against node_exporter's meminfo,
    /// vmstat, zoneinfo and pressure collectors (Debian's prometheus-node-exporter).
    Scrape {
        /// Scrapes of each exporter (at least 300).
        #[arg(long, default_value_t = 2000)]
        scrapes: usize,
        /// Print the result without writing docs/BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
    },
    /// memwatch for N minutes under process churn (watched and distinct names, fork
    /// episodes, exec), memory-cgroup churn and a scrape every second: RSS over time,
    /// scrape latency and errors, table occupancy and evictions (root).
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => setup::run(),
        Task::Run { args } => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "memwatch"])?;
            let bin = workspace_root().join("target/release/memwatch");
            eprintln!("xtask: running {} run {:?}", bin.display(), args);
            use std::os::unix::process::CommandExt;
            let err = Command::new(&bin)
                .arg("run")
                .args(&args)
                .env("PATH", setup::path_with_tools())
                .exec();
            Err(err).with_context(|| format!("exec {}", bin.display()))
        }
        Task::Bench { which } => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "memwatch"])?;
            match which {
                BenchKind::Overhead => bench::overhead(),
                BenchKind::Scrape { scrapes, no_write } => bench::scrape(scrapes, !no_write),
                BenchKind::Soak(args) => soak::run(&args),
            }
        }
        Task::Test(args) => test(&args),
        Task::Fuzz(args) => fuzz::run(&args).map(drop),
        Task::Install(args) => install::install(args),
        Task::Dist(args) => install::dist(args),
        Task::VmTest(args) => {
            setup::run()?;
            let counts = vm::test(&args)?;
            println!("{counts}");
            if counts.failed > 0 {
                bail!("{} VM test(s) failed", counts.failed);
            }
            Ok(())
        }
        Task::VmFixtures(args) => {
            setup::run()?;
            vm::fixtures(&args)
        }
    }
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SMOKE_SECONDS: u64 = 3;

/// `cargo xtask test`: setup, formatting, lints, the host's tests and the VM matrix;
/// with `--under-load`, all of it beside stress-ng. Ends with the wall time and, as
/// the last line, the total counts.
fn test(args: &TestArgs) -> Result<()> {
    let started = std::time::Instant::now();
    match test_run(args, started) {
        Ok(true) => Ok(()),
        // The summary, wall time included, is out.
        Ok(false) => bail!("tests failed"),
        Err(e) => {
            eprintln!(
                "xtask: test: wall time {} (ended early)",
                format_duration(started.elapsed())
            );
            Err(e)
        }
    }
}

/// Everything `test` does; true when every test passed.
fn test_run(args: &TestArgs, started: std::time::Instant) -> Result<bool> {
    setup::run()?;
    // Started after setup (which installs stress-ng); the guard stops it on every way
    // out of this function, and a signal handler while it lives.
    let load = if args.under_load {
        Some(load::Load::start(&args.load_args)?)
    } else {
        None
    };
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    ebpf_clippy()?;
    // Every fuzz target for a few seconds, from its committed corpus: a parser change
    // that panics on a known input fails here (about 1 min with the build cache warm,
    // 2m40s empty, on two busy cores: README).
    fuzz::run(&fuzz::FuzzArgs::smoke(FUZZ_SMOKE_SECONDS))?;
    // One test binary at a time, one test thread each: the root tests load
    // probes and run workloads whose counts must not mix.
    let host = test_summary(&["test", "--no-fail-fast", "--", "--test-threads=1"]);
    // The VM matrix runs even when a host test failed, so one run shows both.
    let vm = vm::test(&vm::TestArgs {
        kernel: "all".into(),
        rung: Vec::new(),
        refresh: false,
        accel: vm::Accel::Tcg,
        quiet: false,
        append: String::new(),
        only: Vec::new(),
    });
    // Stopped (and said so) before the summary, so the counts stay the last line.
    let under = load.as_ref().map(|l| l.command.clone());
    drop(load);
    let (host, vm) = (host?, vm?);
    println!("host: {}", host.counts);
    println!("vm: {vm}");
    let wall = format_duration(started.elapsed());
    match under {
        Some(cmd) => println!("wall time: {wall} (under load: {cmd})"),
        None => println!("wall time: {wall}"),
    }
    let total = vm::Counts {
        passed: host.counts.passed + vm.passed,
        failed: host.counts.failed + vm.failed,
        skipped: host.counts.skipped + vm.skipped,
    };
    println!("{total}");
    Ok(host.success && vm.failed == 0)
}

/// A duration as `15m20s`, or `42s` under a minute (whole seconds).
pub fn format_duration(d: std::time::Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// What `cargo test` on the host reported.
struct HostTests {
    counts: vm::Counts,
    success: bool,
}

/// Runs `cargo test`, passing its output through, and sums every test binary's result.
fn test_summary(args: &[&str]) -> Result<HostTests> {
    use std::io::{BufRead as _, BufReader};
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .env("PATH", setup::path_with_tools())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut skipped) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with("SKIP ") {
            skipped += 1;
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut w = part.split_whitespace();
                if let (Some(n), Some(what)) = (w.next(), w.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        eprintln!("xtask: cargo test failed ({status})");
    }
    Ok(HostTests {
        counts: vm::Counts {
            passed,
            failed,
            skipped,
        },
        success: status.success(),
    })
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Runs cargo (the stable one that runs xtask) in the workspace root.
/// Runs `cmd` and returns its standard output; fails, with its standard error when
/// that was captured, if it can't start or exits non-zero.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.trim().is_empty() {
            bail!("{cmd:?} failed ({})", out.status);
        }
        bail!("{cmd:?} failed ({}):\n{stderr}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .env("PATH", setup::path_with_tools())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Clippy for the eBPF crate, on its own target with the nightly toolchain.
fn ebpf_clippy() -> Result<()> {
    eprintln!("xtask: clippy memwatch-ebpf (nightly, bpfel-unknown-none)");
    let status = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "memwatch-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--bins",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(workspace_root())
        .env("PATH", setup::path_with_tools())
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .status()
        .context("running clippy on memwatch-ebpf")?;
    if !status.success() {
        bail!("clippy on memwatch-ebpf failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_readme() {
        use std::time::Duration;
        assert_eq!(format_duration(Duration::from_millis(41_600)), "42s");
        assert_eq!(format_duration(Duration::from_secs(59)), "59s");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m00s");
        assert_eq!(format_duration(Duration::from_secs(920)), "15m20s");
        assert_eq!(format_duration(Duration::from_secs(3725)), "62m05s");
    }

    #[test]
    fn fuzz_flags() {
        let cli = Cli::try_parse_from(["xtask", "fuzz"]).unwrap();
        let Task::Fuzz(a) = cli.command else { panic!() };
        assert_eq!(
            (a.seconds, a.targets.len(), a.quick, a.merge),
            (30, 0, false, false)
        );
        let cli = Cli::try_parse_from([
            "xtask",
            "fuzz",
            "--seconds",
            "600",
            "--target",
            "btf",
            "--target",
            "config",
        ])
        .unwrap();
        let Task::Fuzz(a) = cli.command else { panic!() };
        assert_eq!(a.seconds, 600);
        assert_eq!(a.targets, ["btf", "config"]);
    }

    #[test]
    fn test_flags() {
        let cli = Cli::try_parse_from(["xtask", "test"]).unwrap();
        let Task::Test(a) = cli.command else { panic!() };
        assert!(!a.under_load);
        let cli = Cli::try_parse_from(["xtask", "test", "--under-load"]).unwrap();
        let Task::Test(a) = cli.command else { panic!() };
        assert!(a.under_load);
        assert_eq!(a.load_args, load::DEFAULT_ARGS);
        let cli = Cli::try_parse_from([
            "xtask",
            "test",
            "--under-load",
            "--load-args",
            "--cpu 1 --vm 2 --vm-bytes 512M",
        ])
        .unwrap();
        let Task::Test(a) = cli.command else { panic!() };
        assert_eq!(a.load_args, "--cpu 1 --vm 2 --vm-bytes 512M");
        // Load arguments without the load are a mistake, not ignored.
        assert!(Cli::try_parse_from(["xtask", "test", "--load-args", "--cpu 1"]).is_err());
    }
}
