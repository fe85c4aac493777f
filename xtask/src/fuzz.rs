//! `cargo xtask fuzz`: builds the cargo-fuzz targets in fuzz/ once (nightly, ASan,
//! libFuzzer), runs each for a time budget and reports per target how many inputs it
//! ran, how long, what it crashed on and how big its corpus is. Fails on any crash;
//! the crashing input stays in fuzz/artifacts/<target>/.
//!
//! The build goes to a cache outside the work tree (`build_dir`), so clones on one
//! machine share the compiled dependencies (a fresh clone's CI run builds only
//! memwatch and the targets when the cache is warm).
//!
//! Corpora: the committed seeds in fuzz/corpus/<target>/ are read, never written; what
//! a run discovers goes to fuzz/target/corpus/<target>/ (kept between runs, not in the
//! repository). `--merge` folds that back into fuzz/corpus/<target>/, minimized, for a
//! commit.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{setup, workspace_root};

/// The host triple cargo-fuzz builds for (it always passes `--target`).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Environment for the fuzz build: memwatch's build.rs embeds an empty placeholder
/// eBPF object instead of building the real one (memwatch/build.rs says why).
const PLACEHOLDER_ENV: &str = "MEMWATCH_FUZZ_PLACEHOLDER_EBPF";

#[derive(clap::Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Seconds each target runs (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Run only these targets (repeatable); default: every target in fuzz/fuzz_targets.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// Build without optimization and without AddressSanitizer (`cargo fuzz build
    /// --dev -s none`): about a third of the build time, several times fewer runs per
    /// second; panics, overflows and hangs are still caught. For short smoke runs.
    #[arg(long)]
    pub quick: bool,
    /// Afterwards, merge what the runs found into the committed corpus
    /// (fuzz/corpus/<target>/), keeping only inputs that add coverage.
    #[arg(long)]
    pub merge: bool,
}

impl FuzzArgs {
    /// The smoke run `cargo xtask test` does: every target for `seconds`, quick build.
    pub fn smoke(seconds: u64) -> Self {
        Self {
            seconds,
            targets: Vec::new(),
            quick: true,
            merge: false,
        }
    }
}

/// What one target's run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRun {
    pub target: String,
    /// Inputs executed (libFuzzer's `stat::number_of_executed_units`).
    pub runs: u64,
    pub seconds: f64,
    /// Crash, timeout, OOM or leak artifacts this run left.
    pub crashes: Vec<PathBuf>,
    /// Inputs in the working corpus after the run (the seeds not counted).
    pub corpus: usize,
    /// Inputs in the committed seed corpus.
    pub seeds: usize,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// Cargo's target directory for the fuzz build: `$MEMWATCH_FUZZ_TARGET_DIR`, else
/// `$XDG_CACHE_HOME/memwatch-fuzz`, else `/var/cache/memwatch-fuzz` for root and
/// `~/.cache/memwatch-fuzz` for others (as the VM kernels' cache).
pub fn build_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MEMWATCH_FUZZ_TARGET_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("memwatch-fuzz");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return "/var/cache/memwatch-fuzz".into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/memwatch-fuzz")
}

/// The target names: the file stems in fuzz/fuzz_targets, sorted.
pub fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    Ok(names)
}

/// `cargo fuzz` on the nightly, in fuzz/, with the placeholder eBPF object.
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz"])
        .args(args)
        .current_dir(fuzz_dir())
        .env("PATH", setup::path_with_tools())
        .env(PLACEHOLDER_ENV, "1")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("CARGO_TARGET_DIR");
    c
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .count()
    })
}

/// The artifact files (crash-, timeout-, oom-, leak-, slow-unit-) in `dir`.
fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            ["crash-", "timeout-", "oom-", "leak-"]
                .iter()
                .any(|k| n.starts_with(k))
        })
    });
    v.sort();
    v
}

/// `stat::number_of_executed_units: N` from libFuzzer's final statistics.
pub fn executed_units(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Builds every target once, runs the chosen ones one after another and prints the
/// table. Errors when a target crashed (or could not run).
pub fn run(args: &FuzzArgs) -> Result<Vec<TargetRun>> {
    setup::cargo_fuzz()?;
    let dir = fuzz_dir();
    let all = targets(&dir)?;
    let chosen: Vec<String> = if args.targets.is_empty() {
        all.clone()
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are: {}", all.join(", "));
            }
        }
        args.targets.clone()
    };

    let started = Instant::now();
    let target_dir = build_dir();
    let target_dir_arg = target_dir.display().to_string();
    let mut build = vec!["build", "--target-dir", &target_dir_arg];
    if args.quick {
        build.extend(["--dev", "-s", "none"]);
    } else {
        build.push("-O");
    }
    eprintln!("xtask: cargo fuzz {}", build.join(" "));
    let status = cargo_fuzz(&build)
        .status()
        .context("running cargo fuzz build (is the nightly installed? `cargo xtask setup`)")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    eprintln!(
        "xtask: fuzz targets built in {}",
        crate::format_duration(started.elapsed())
    );

    let profile = if args.quick { "debug" } else { "release" };
    let bin_dir = target_dir.join(TRIPLE).join(profile);
    let mut results = Vec::new();
    for t in &chosen {
        let r = run_one(&dir, &bin_dir, t, args.seconds)?;
        eprintln!(
            "xtask: fuzz {t}: {} runs in {:.0}s, {} crash(es), corpus {} (+{} seeds)",
            r.runs,
            r.seconds,
            r.crashes.len(),
            r.corpus,
            r.seeds
        );
        results.push(r);
    }
    if args.merge {
        for t in &chosen {
            merge(&dir, &bin_dir, t)?;
        }
    }
    print_table(&results);
    let crashed: Vec<&TargetRun> = results.iter().filter(|r| !r.crashes.is_empty()).collect();
    if !crashed.is_empty() {
        for r in &crashed {
            for a in &r.crashes {
                eprintln!(
                    "xtask: fuzz {}: {} (replay: {} {})",
                    r.target,
                    a.display(),
                    bin_dir.join(&r.target).display(),
                    a.display()
                );
            }
        }
        bail!(
            "fuzzing crashed in {}",
            crashed
                .iter()
                .map(|r| r.target.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(results)
}

/// Runs target `t` for `seconds`; its libFuzzer log goes to fuzz/target/logs/<t>.log.
fn run_one(dir: &Path, bin_dir: &Path, t: &str, seconds: u64) -> Result<TargetRun> {
    let seeds = dir.join("corpus").join(t);
    let work = dir.join("target/corpus").join(t);
    let artifact_dir = dir.join("artifacts").join(t);
    let logs = dir.join("target/logs");
    for d in [&seeds, &work, &artifact_dir, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let before = artifacts(&artifact_dir);
    let log_path = logs.join(format!("{t}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let bin = bin_dir.join(t);
    let started = Instant::now();
    let status = Command::new(&bin)
        .arg(format!("-artifact_prefix={}/", artifact_dir.display()))
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes 10 s is a hang (a parser loop), not a slow machine.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        // New inputs are written to the first directory only.
        .arg(&work)
        .arg(&seeds)
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let crashes: Vec<PathBuf> = artifacts(&artifact_dir)
        .into_iter()
        .filter(|a| !before.contains(a))
        .collect();
    if !status.success() && crashes.is_empty() {
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        bail!(
            "fuzz target {t} exited {status} without leaving an artifact; the end of {}:\n{}",
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    if !crashes.is_empty() {
        // The panic message and the input, as libFuzzer printed them.
        let from = text
            .find("panicked at")
            .or_else(|| text.find("==ERROR"))
            .unwrap_or(0);
        eprintln!("{}", text.get(from..).unwrap_or("").trim_end());
    }
    Ok(TargetRun {
        target: t.to_string(),
        runs: executed_units(&text).unwrap_or(0),
        seconds,
        crashes,
        corpus: count_files(&work),
        seeds: count_files(&seeds),
    })
}

/// Merges fuzz/target/corpus/<t> into fuzz/corpus/<t>: only inputs that add coverage.
fn merge(dir: &Path, bin_dir: &Path, t: &str) -> Result<()> {
    let seeds = dir.join("corpus").join(t);
    let work = dir.join("target/corpus").join(t);
    let before = count_files(&seeds);
    let status = Command::new(bin_dir.join(t))
        .arg("-merge=1")
        .arg(&seeds)
        .arg(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("merging the corpus of {t}"))?;
    if !status.success() {
        bail!("merging the corpus of {t} failed ({status})");
    }
    eprintln!(
        "xtask: fuzz {t}: committed corpus {before} -> {} inputs",
        count_files(&seeds)
    );
    Ok(())
}

fn print_table(results: &[TargetRun]) {
    println!(
        "{:<16} {:>12} {:>8} {:>8} {:>8} {:>6}",
        "target", "runs", "seconds", "crashes", "corpus", "seeds"
    );
    for r in results {
        println!(
            "{:<16} {:>12} {:>8.0} {:>8} {:>8} {:>6}",
            r.target,
            r.runs,
            r.seconds,
            r.crashes.len(),
            r.corpus,
            r.seeds
        );
    }
    let total: Duration = results
        .iter()
        .map(|r| Duration::from_secs_f64(r.seconds))
        .sum();
    println!(
        "fuzz: {} target(s), {} crash(es), {} of fuzzing",
        results.len(),
        results.iter().map(|r| r.crashes.len()).sum::<usize>(),
        crate::format_duration(total)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read() {
        let log = "#1024 pulse cov: 10\nDone 2048 runs in 1 second(s)\n\
                   stat::number_of_executed_units: 2048\nstat::average_exec_per_sec:     2048\n";
        assert_eq!(executed_units(log), Some(2048));
        assert_eq!(
            executed_units("==1== ERROR: libFuzzer: deadly signal\n"),
            None
        );
    }

    /// Every target file is listed in fuzz/Cargo.toml and the other way round, and has
    /// a seed corpus: a target added without one would build or start empty.
    #[test]
    fn targets_are_declared_and_seeded() {
        let dir = fuzz_dir();
        let names = targets(&dir).unwrap();
        assert!(names.len() >= 10, "{names:?}");
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let declared = manifest.matches("[[bin]]").count();
        assert_eq!(
            declared,
            names.len(),
            "fuzz/Cargo.toml [[bin]]s vs {names:?}"
        );
        for t in &names {
            assert!(
                manifest.contains(&format!("path = \"fuzz_targets/{t}.rs\"")),
                "{t} is not in fuzz/Cargo.toml"
            );
            assert!(
                count_files(&dir.join("corpus").join(t)) > 0,
                "fuzz/corpus/{t} has no seed"
            );
        }
    }
}
