//! `cargo xtask install` and `cargo xtask dist`: the binary, the systemd unit and a
//! commented default config, installed on this host (or into a staging root), or
//! packed into a Debian package.
//!
//! The package is built with `dpkg-deb --build` from a root staged by the same code as
//! `install`, so both carry exactly the same files.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// The unit file in the source tree.
const UNIT: &str = "deploy/memwatch.service";
/// Where the unit's ExecStart expects the binary.
const UNIT_BIN: &str = "/usr/local/bin/memwatch";
/// Config path, fixed: the unit passes it.
pub const CONFIG: &str = "etc/memwatch/memwatch.toml";

#[derive(clap::Args)]
pub struct InstallArgs {
    /// Installation prefix: the binary goes to PREFIX/bin.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Install below this directory instead of / (staging, packaging, tests).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Install this memwatch binary instead of building one (`cargo build --release`).
    #[arg(long, value_name = "FILE")]
    bin: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct DistArgs {
    /// Package this memwatch binary instead of building one (`cargo build --release`).
    #[arg(long, value_name = "FILE")]
    bin: Option<PathBuf>,
    /// Where the .deb goes.
    #[arg(long, value_name = "DIR", default_value = "target/dist")]
    out: PathBuf,
}

/// One installed file: its path below the root and its mode.
pub struct Installed {
    pub path: PathBuf,
    pub mode: u32,
    /// False when an existing file was left alone (the config).
    pub written: bool,
}

/// Where each file goes, relative to the root.
struct Layout {
    /// Absolute path of the binary on the target system.
    bin: PathBuf,
    /// Directory of the unit, relative to the root.
    unit_dir: &'static str,
}

fn release_bin(bin: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(b) = bin {
        return Ok(b);
    }
    crate::setup::run()?;
    crate::cargo(&["build", "--release", "-p", "memwatch"])?;
    Ok(crate::workspace_root().join("target/release/memwatch"))
}

/// `root` joined with an absolute or relative `path`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write beside and rename, so a running binary being replaced is never truncated.
    let tmp = path.with_extension("memwatch-new");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))?;
    Ok(())
}

/// The unit with ExecStart pointing at `bin`.
fn unit_text(bin: &Path) -> Result<String> {
    let src = crate::workspace_root().join(UNIT);
    let text =
        std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    if !text.contains(&format!("ExecStart={UNIT_BIN} ")) {
        bail!("{} has no `ExecStart={UNIT_BIN} ...` line", src.display());
    }
    Ok(text.replace(
        &format!("ExecStart={UNIT_BIN} "),
        &format!("ExecStart={} ", bin.display()),
    ))
}

/// The commented default config, from the binary itself.
fn default_config(bin: &Path) -> Result<Vec<u8>> {
    let out = Command::new(bin)
        .args(["config", "--print-default"])
        .output()
        .with_context(|| format!("running {} config --print-default", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} config --print-default failed ({})",
            bin.display(),
            out.status
        );
    }
    Ok(out.stdout)
}

/// Installs binary, unit and config below `root`.
fn stage(root: &Path, layout: &Layout, bin: &Path) -> Result<Vec<Installed>> {
    let data = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    let mut done = Vec::new();
    let dst = under(root, &layout.bin);
    write_file(&dst, &data, 0o755)?;
    done.push(Installed {
        path: layout.bin.clone(),
        mode: 0o755,
        written: true,
    });
    let unit = Path::new(layout.unit_dir).join("memwatch.service");
    write_file(
        &under(root, &unit),
        unit_text(&layout.bin)?.as_bytes(),
        0o644,
    )?;
    done.push(Installed {
        path: Path::new("/").join(unit),
        mode: 0o644,
        written: true,
    });
    let config = under(root, Path::new(CONFIG));
    let written = !config.exists();
    if written {
        write_file(&config, &default_config(bin)?, 0o644)?;
    }
    done.push(Installed {
        path: Path::new("/").join(CONFIG),
        mode: 0o644,
        written,
    });
    Ok(done)
}

/// `cargo xtask install`.
pub fn install(args: InstallArgs) -> Result<()> {
    let bin = release_bin(args.bin)?;
    let layout = Layout {
        bin: args.prefix.join("bin/memwatch"),
        unit_dir: "etc/systemd/system",
    };
    if !layout.bin.is_absolute() {
        bail!("--prefix must be absolute: {}", args.prefix.display());
    }
    let files = stage(&args.root, &layout, &bin)?;
    for f in &files {
        let to = under(&args.root, &f.path);
        if f.written {
            println!("installed {} ({:o})", to.display(), f.mode);
        } else {
            println!("kept {} (exists)", to.display());
        }
    }
    let systemd = Path::new("/run/systemd/system").is_dir();
    if args.root == Path::new("/") && systemd {
        let ok = Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("xtask: warning: `systemctl daemon-reload` failed");
        }
        println!("start it with: systemctl enable --now memwatch.service");
    } else if args.root == Path::new("/") {
        println!("systemd is not running here; start memwatch by hand: {}", {
            layout.bin.display()
        });
    }
    Ok(())
}

/// Maintainer scripts: act only where systemd is PID 1 (/run/systemd/system exists);
/// elsewhere (containers, chroots, this project's build machines) they start nothing.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    if [ "$1" = configure ]; then
        if [ -z "$2" ]; then
            systemctl enable memwatch.service >/dev/null || true
            systemctl start memwatch.service || true
        else
            systemctl try-restart memwatch.service || true
        fi
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop memwatch.service || true
    systemctl disable memwatch.service >/dev/null || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
exit 0
"#;

/// `cargo xtask dist`: target/dist/memwatch_VERSION_ARCH.deb.
pub fn dist(args: DistArgs) -> Result<()> {
    let bin = release_bin(args.bin)?;
    let out_dir = crate::workspace_root().join(&args.out);
    let root = out_dir.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let layout = Layout {
        bin: PathBuf::from("/usr/bin/memwatch"),
        unit_dir: "lib/systemd/system",
    };
    let files = stage(&root, &layout, &bin)?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = crate::output(Command::new("dpkg").arg("--print-architecture"))?;
    let arch = arch.trim();
    let size_kib: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(under(&root, &f.path)).ok())
        .map(|m| m.len().div_ceil(1024))
        .sum();
    let control = format!(
        "Package: memwatch\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: memwatch developers <memwatch@example.invalid>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6\n\
         Section: admin\n\
         Priority: optional\n\
         Homepage: https://example.invalid/memwatch\n\
         Description: Linux memory observability daemon for Prometheus\n \
         memwatch shows where a host's memory work goes: copy-on-write copies, page\n \
         faults, dirty pages, writeback, LRU moves and reclaim stalls, attributed to\n \
         processes and cgroups (eBPF), with the kernel's own accounting from /proc,\n \
         exported for Prometheus. Runs as a systemd service without root.\n"
    );
    let debian = root.join("DEBIAN");
    write_file(&debian.join("control"), control.as_bytes(), 0o644)?;
    write_file(
        &debian.join("conffiles"),
        format!("/{CONFIG}\n").as_bytes(),
        0o644,
    )?;
    write_file(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write_file(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write_file(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;
    // Directories the files sit in: 0755, whatever the umask was.
    for f in &files {
        let mut d = f.path.parent();
        while let Some(dir) = d.filter(|d| *d != Path::new("/")) {
            std::fs::set_permissions(under(&root, dir), std::fs::Permissions::from_mode(0o755))?;
            d = dir.parent();
        }
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let deb = out_dir.join(format!("memwatch_{version}_{arch}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .status()
        .context("running dpkg-deb (Debian's dpkg package)")?;
    if !status.success() {
        bail!("dpkg-deb --build failed ({status})");
    }
    println!("{}", deb.display());
    Ok(())
}
