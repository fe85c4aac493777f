//! The initramfs every VM boots: busybox, `/init` (init.sh), the memwatch binary, the
//! integration-test binaries, bpftool, and the shared libraries all of them load (the
//! paths `ldd` prints, with the loader), written as a newc cpio.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::cpio::Cpio;

const INIT: &str = include_str!("init.sh");
const BUSYBOX: &str = "/bin/busybox";

/// What goes into the initramfs besides busybox and /init.
#[derive(Debug, Default)]
pub struct Contents {
    /// Executables: path in the guest, path on the host.
    pub binaries: Vec<(String, PathBuf)>,
    /// Plain files: path in the guest, contents.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Builds the archive. Executables lose their debug info on the way in when `objcopy`
/// is there (the debug memwatch is ~85 MB, ~10 MB without), which keeps the image
/// small enough to load and unpack quickly under emulation.
pub fn build(contents: &Contents) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    for d in [
        "dev", "proc", "sys", "tmp", "root", "bin", "sbin", "usr/bin", "usr/sbin",
    ] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    c.char_dev("/dev/console", 0o600, 5, 1);
    c.file("/init", 0o755, INIT.as_bytes());
    let busybox = Path::new(BUSYBOX);
    if !busybox.exists() {
        bail!("{BUSYBOX} missing: `cargo xtask setup` installs busybox-static");
    }
    let mut libs: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut add_binary = |c: &mut Cpio, guest: &str, host: &Path| -> Result<()> {
        c.file(guest, 0o755, &stripped(host)?);
        for (g, h) in shared_libraries(host)? {
            libs.insert(g, h);
        }
        Ok(())
    };
    add_binary(&mut c, BUSYBOX, busybox)?;
    // /init installs the other applets; `sh` is there for scripts from the start.
    c.symlink("/bin/sh", "busybox");
    for (guest, host) in &contents.binaries {
        add_binary(&mut c, guest, host)?;
    }
    for (guest, host) in &libs {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        c.file(guest, 0o755, &data);
    }
    for (guest, data) in &contents.files {
        c.file(guest, 0o644, data);
    }
    Ok(c.finish())
}

/// The file's bytes, without debug sections if objcopy can remove them.
fn stripped(path: &Path) -> Result<Vec<u8>> {
    let tmp = std::env::temp_dir().join(format!(
        "memwatch-vm-strip-{}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("bin")
    ));
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(path)
        .arg(&tmp)
        .status()
        .is_ok_and(|s| s.success());
    let data = if ok {
        std::fs::read(&tmp)
    } else {
        std::fs::read(path)
    };
    let _ = std::fs::remove_file(&tmp);
    data.with_context(|| format!("reading {}", path.display()))
}

/// The shared libraries `ldd` says a binary loads: (path the loader looks for, the file
/// behind it). Static binaries have none.
fn shared_libraries(bin: &Path) -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("running ldd {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable"
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd {}: {line}", bin.display());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let real =
                std::fs::canonicalize(p).with_context(|| format!("resolving {p} (from ldd)"))?;
            libs.push((p.to_string(), real));
        }
    }
    Ok(libs)
}
