//! Kernel modules for the VM, taken from the kernel's own Debian package: the modules
//! asked for and everything they depend on (the `depends=` entries of each module's
//! `.modinfo` section; the package ships no `modules.dep`, depmod writes that when the
//! package is installed), decompressed (busybox `insmod` loads plain ELF only) and
//! cached next to the unpacked kernel as `modules/<name>.ko` with a `modules.load` list
//! in load order.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::kernel::{cache_root, CacheLock, Kernel};

/// The modules for `want` (and their dependencies) in load order, as (module name,
/// decompressed .ko in the cache). Modules built into the kernel are left out.
pub fn get(k: &Kernel, want: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let dir = k
        .vmlinuz
        .parent()
        .expect("kernels/<series>")
        .join("modules");
    let stamp = format!("{}\n{}\n", k.version, want.join(" "));
    if let Ok(list) = read_cached(&dir, &stamp) {
        return Ok(list);
    }
    let _lock = CacheLock::take(&cache_root())?;
    if let Ok(list) = read_cached(&dir, &stamp) {
        return Ok(list);
    }
    let t = std::time::Instant::now();
    let parent = dir.parent().expect("kernels/<series>");
    let tmp = parent.join(format!(".modules-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let out = extract(k, want, &tmp);
    if out.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let order = out?;
    let staged = tmp.join("staged");
    fs::write(staged.join("modules.load"), order.join("\n") + "\n")?;
    fs::write(staged.join("stamp"), &stamp)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staged, &dir)?;
    fs::remove_dir_all(&tmp)?;
    eprintln!(
        "xtask: vm {}: modules {} from {} in {:.1}s",
        k.series,
        order.join(", "),
        k.deb.display(),
        t.elapsed().as_secs_f64()
    );
    read_cached(&dir, &stamp)
}

fn read_cached(dir: &Path, stamp: &str) -> Result<Vec<(String, PathBuf)>> {
    if fs::read_to_string(dir.join("stamp"))? != stamp {
        bail!("stale");
    }
    let load = fs::read_to_string(dir.join("modules.load"))?;
    let mut out = Vec::new();
    for name in load.lines().filter(|l| !l.is_empty()) {
        let p = dir.join(format!("{name}.ko"));
        if !p.is_file() {
            bail!("{} missing", p.display());
        }
        out.push((name.to_string(), p));
    }
    Ok(out)
}

/// Unpacks the package into `tmp`, writes the needed modules to `tmp/staged` and
/// returns their names in load order.
fn extract(k: &Kernel, want: &[&str], tmp: &Path) -> Result<Vec<String>> {
    let root = tmp.join("deb");
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&k.deb)
        .arg(&root)
        .output()
        .context("running dpkg-deb -x")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -x {} failed: {}",
            k.deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mods = root.join("lib/modules").join(&k.release);
    let builtin: BTreeSet<String> = fs::read_to_string(mods.join("modules.builtin"))
        .with_context(|| format!("no modules.builtin in {}", k.deb.display()))?
        .lines()
        .filter_map(module_name)
        .collect();
    let mut files = BTreeMap::new();
    index(&mods.join("kernel"), &mut files)?;
    let staged = tmp.join("staged");
    fs::create_dir_all(&staged)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for m in want {
        visit(
            m,
            &builtin,
            &files,
            &staged,
            &mut seen,
            &mut order,
            &mut Vec::new(),
        )?;
    }
    Ok(order)
}

/// Depth first: dependencies land in `order` before the modules that need them.
fn visit(
    name: &str,
    builtin: &BTreeSet<String>,
    files: &BTreeMap<String, PathBuf>,
    staged: &Path,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
    path: &mut Vec<String>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if builtin.contains(&name) || !seen.insert(name.clone()) {
        return Ok(());
    }
    let file = files.get(&name).with_context(|| {
        format!(
            "module {name} (needed by {}) is neither a module of the package nor built in",
            path.last().map_or("the VM", String::as_str)
        )
    })?;
    let elf = decompress(file)?;
    let info = modinfo(&elf).with_context(|| format!("reading {}", file.display()))?;
    path.push(name.clone());
    for (key, value) in &info {
        if key == "depends" {
            for dep in value.split(',').filter(|d| !d.is_empty()) {
                visit(dep, builtin, files, staged, seen, order, path)?;
            }
        }
    }
    path.pop();
    fs::write(staged.join(format!("{name}.ko")), &elf)?;
    order.push(name);
    Ok(())
}

/// Module name -> file, for every module under `dir`.
fn index(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index(&p, out)?;
        } else if let Some(name) = p.to_str().and_then(module_name) {
            out.insert(name, p);
        }
    }
    Ok(())
}

/// `kernel/fs/ext4/ext4.ko[.xz]` -> `ext4`; dashes become underscores, as the kernel
/// names modules.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let (stem, _) = file.split_once(".ko")?;
    Some(stem.replace('-', "_"))
}

/// The plain ELF of a module file, decompressed with the matching Debian tool when the
/// package compresses its modules (Debian's 6.12 uses xz).
fn decompress(file: &Path) -> Result<Vec<u8>> {
    let name = file.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        return fs::read(file).with_context(|| format!("reading {}", file.display()));
    } else if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        bail!("{}: unknown module compression", file.display());
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(file)
        .output()
        .with_context(|| format!("running {tool} -dc (to decompress {})", file.display()))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The `key=value` strings of an ELF64 little-endian module's `.modinfo` section.
fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>> {
    let u16_at = |o: usize| -> Result<usize> {
        Ok(u16::from_le_bytes(elf.get(o..o + 2).context("truncated ELF")?.try_into()?) as usize)
    };
    let u32_at = |o: usize| -> Result<usize> {
        Ok(u32::from_le_bytes(elf.get(o..o + 4).context("truncated ELF")?.try_into()?) as usize)
    };
    let u64_at = |o: usize| -> Result<usize> {
        Ok(u64::from_le_bytes(elf.get(o..o + 8).context("truncated ELF")?.try_into()?) as usize)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a little-endian ELF64 file");
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let section = |i: usize| -> Result<(usize, &[u8])> {
        let h = shoff + i * shentsize;
        let (name, off, size) = (u32_at(h)?, u64_at(h + 24)?, u64_at(h + 32)?);
        let data = elf
            .get(off..off.checked_add(size).context("section size")?)
            .context("section past the end of the file")?;
        Ok((name, data))
    };
    let (_, names) = section(shstrndx)?;
    for i in 0..shnum {
        let (name, data) = section(i)?;
        let name = names
            .get(name..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            return Ok(data
                .split(|&b| b == 0)
                .filter_map(|s| {
                    let s = std::str::from_utf8(s).ok()?;
                    let (k, v) = s.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect());
        }
    }
    bail!("no .modinfo section")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_from_paths() {
        assert_eq!(
            module_name("kernel/fs/ext4/ext4.ko").as_deref(),
            Some("ext4")
        );
        assert_eq!(
            module_name("/x/kernel/arch/x86/crypto/crc32c-intel.ko.xz").as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(module_name("modules.order"), None);
    }

    /// A minimal ELF64 with a section-name table and a .modinfo section.
    fn elf_with_modinfo(info: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shstr_off = f.len();
        f.extend_from_slice(shstr);
        let info_off = f.len();
        f.extend_from_slice(info);
        let shoff = f.len();
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        let header = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        f.extend(header(0, 0, 0));
        f.extend(header(1, shstr_off, shstr.len()));
        f.extend(header(11, info_off, info.len()));
        f
    }

    #[test]
    fn reads_depends_from_modinfo() {
        let elf =
            elf_with_modinfo(b"license=GPL\0depends=mbcache,jbd2,crc16\0softdep=pre: crc32c\0");
        let info = modinfo(&elf).unwrap();
        assert!(info.contains(&("depends".into(), "mbcache,jbd2,crc16".into())));
        assert!(info.contains(&("softdep".into(), "pre: crc32c".into())));
        assert!(modinfo(b"not an elf").is_err());
    }
}
