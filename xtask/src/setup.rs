//! `cargo xtask setup`: everything building and testing need, installed only when
//! missing. A second run checks and returns in seconds.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The toolchain that builds the eBPF crate (aya-build runs `rustup run nightly`).
const NIGHTLY: &str = "nightly";
/// bpf-linker release that builds against LLVM 21-23 (PLATFORM.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests use.
const PACKAGES: &[&str] = &[
    // Cross-checks, in the tests, that memwatch's programs are loaded and detached.
    "bpftool",
    // The Redis fork-episode test: redis-server, redis-cli, redis-benchmark.
    "redis-server",
    // `cargo xtask vm-test`: boots Debian kernels under QEMU with a busybox initramfs.
    "qemu-system-x86",
    "busybox-static",
    // vm-test's scratch disk: mkfs.ext4 formats the image the guest's tests write to.
    "e2fsprogs",
    // vm-test: Debian's 6.12 kernel ships its modules as .ko.xz; busybox insmod needs
    // them decompressed.
    "xz-utils",
    // promtool: the test that lints a live scrape (`promtool check metrics`).
    "prometheus",
    // `cargo xtask bench scrape`: node_exporter 1.5, the CPU-per-scrape baseline.
    "prometheus-node-exporter",
    // `cargo xtask bench overhead`: the same-machine reference (a bare bpftrace count).
    "bpftrace",
    // `cargo xtask test --under-load`: the CPU and memory hog run beside the whole run.
    "stress-ng",
    // `systemd-analyze verify` of deploy/memwatch.service. Harmless where systemd is not
    // PID 1: its scripts start nothing there, and nothing here boots with it.
    "systemd",
    // setpriv (the capability-only run of the service test) and dpkg-deb (`cargo xtask
    // dist`): essential on Debian, listed so a trimmed image gets them back.
    "util-linux",
    "dpkg",
    // The venv that kubernetes-validate (PyPI) is installed into: the test that
    // validates deploy/kubernetes offline.
    "python3-venv",
];

/// kubernetes-validate from PyPI (bundles the Kubernetes JSON schemas, so it validates
/// offline), installed into a venv under target/tools.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// cargo-fuzz, which builds the fuzz targets (`cargo xtask fuzz`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Packages that install a service we don't want running (on systemd hosts apt starts
/// it: Prometheus on :9090, node_exporter on :9100); setup stops and disables it right
/// after installing, since only the binaries are needed.
const SERVICES: &[(&str, &str)] = &[
    ("prometheus", "prometheus.service"),
    (
        "prometheus-node-exporter",
        "prometheus-node-exporter.service",
    ),
];

pub fn run() -> Result<()> {
    let start = std::time::Instant::now();
    rust_src()?;
    bpf_linker()?;
    packages()?;
    kubernetes_validate()?;
    cargo_fuzz()?;
    eprintln!("xtask: setup done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Cargo's bin folder, where bpf-linker is installed.
fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// PATH with cargo's bin folder in front, so bpf-linker is found without anyone
/// exporting anything.
pub fn path_with_tools() -> OsString {
    let mut dirs = vec![cargo_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).expect("PATH entries")
}

/// `crate::output`, with the command's standard error shown as it runs.
fn output(cmd: &mut Command) -> Result<String> {
    crate::output(cmd.stderr(Stdio::inherit()))
}

fn rustup(args: &[&str]) -> Command {
    let mut c = Command::new("rustup");
    c.args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    c
}

/// `rust-src` for the nightly (needed by `-Z build-std=core`).
fn rust_src() -> Result<()> {
    let toolchains = output(&mut rustup(&["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        bail!(
            "no nightly toolchain: the eBPF programs need one (`rustup toolchain install nightly`; \
             PLATFORM.md lists the one that works here, 1.97.0 2026-05-19)"
        );
    }
    let installed = output(&mut rustup(&[
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: rust-src for {NIGHTLY}: present");
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for {NIGHTLY}");
    output(&mut rustup(&[
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))?;
    Ok(())
}

/// The nightly's sysroot and its LLVM major version.
fn nightly_llvm() -> Result<(PathBuf, String)> {
    let sysroot = output(&mut rustup(&[
        "run", NIGHTLY, "rustc", "--print", "sysroot",
    ]))?;
    let vv = output(&mut rustup(&["run", NIGHTLY, "rustc", "-vV"]))?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in `rustc +nightly -vV`")?
        .to_string();
    Ok((PathBuf::from(sysroot.trim()), major))
}

/// The stamp that says which nightly LLVM the installed bpf-linker was built against.
fn stamp_path() -> PathBuf {
    cargo_bin().join(".memwatch-bpf-linker.stamp")
}

/// bpf-linker built against the nightly's own libLLVM, with an rpath to it.
fn bpf_linker() -> Result<()> {
    let (sysroot, major) = nightly_llvm()?;
    let lib = sysroot.join("lib");
    let want_stamp = format!("{BPF_LINKER_VERSION} {}\n", lib.display());
    let linker = cargo_bin().join("bpf-linker");
    let runs = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let stamp = std::fs::read_to_string(stamp_path()).unwrap_or_default();
    if runs && stamp == want_stamp {
        eprintln!("xtask: bpf-linker {BPF_LINKER_VERSION} (LLVM {major}): present");
        return Ok(());
    }

    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| format!("no libLLVM in {}: is the nightly complete?", lib.display()))?;
    let prefix = std::env::temp_dir().join(format!("memwatch-llvm-prefix-{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("symlinking {}", link.display()))?;

    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major}); about a minute",
        libllvm.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
        )
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    let out = output(Command::new(&linker).arg("--version"))
        .context("the freshly built bpf-linker does not run")?;
    std::fs::write(stamp_path(), want_stamp)?;
    eprintln!("xtask: installed {}", out.trim());
    Ok(())
}

/// cargo-fuzz in cargo's bin folder, installed (with its lock file) unless
/// `cargo fuzz --version` already runs.
pub fn cargo_fuzz() -> Result<()> {
    let runs = Command::new(cargo_bin().join("cargo-fuzz"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        eprintln!("xtask: cargo-fuzz: present");
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    let status = Command::new("cargo")
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .env("PATH", path_with_tools())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Debian packages, installed with apt when missing.
fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("xtask: Debian packages: present ({})", PACKAGES.join(", "));
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing packages {missing:?} and no apt-get: install them by hand");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages {missing:?}: run `sudo apt-get install {}` or run this as root",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            // Wait for another apt (another worktree's setup) instead of failing.
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("running apt-get {}", args.join(" ")))?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    stop_services(&missing);
    Ok(())
}

/// Stops and disables the services the packages just installed started (systemd
/// hosts only; elsewhere apt starts nothing).
fn stop_services(installed_now: &[&str]) {
    if !Path::new("/run/systemd/system").exists() {
        return;
    }
    for (pkg, unit) in SERVICES {
        if !installed_now.contains(pkg) {
            continue;
        }
        eprintln!(
            "xtask: {pkg} started {unit}; stopping and disabling it (only the binaries are used)"
        );
        let ok = Command::new("systemctl")
            .args(["disable", "--now", unit])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("xtask: warning: could not stop {unit}; stop it with `systemctl disable --now {unit}`");
        }
    }
}

/// The venv holding kubernetes-validate (memwatch/tests/dashboards.rs looks here).
pub fn tools_venv() -> PathBuf {
    crate::workspace_root().join("target/tools/venv")
}

/// kubernetes-validate in its own venv (Debian's python3 refuses system-wide pip
/// installs), installed when missing or at another version.
fn kubernetes_validate() -> Result<()> {
    let venv = tools_venv();
    let kv = venv.join("bin/kubernetes-validate");
    let version = Command::new(&kv)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if version.as_deref() == Some(KUBERNETES_VALIDATE_VERSION) {
        eprintln!("xtask: kubernetes-validate {KUBERNETES_VALIDATE_VERSION}: present");
        return Ok(());
    }
    if !venv.join("bin/pip").exists() {
        eprintln!("xtask: creating {}", venv.display());
        output(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv),
        )
        .context("creating the tools venv: is python3-venv installed?")?;
    }
    eprintln!("xtask: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} from PyPI");
    output(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
    ]))?;
    output(Command::new(&kv).arg("--version"))
        .context("the freshly installed kubernetes-validate does not run")?;
    Ok(())
}
