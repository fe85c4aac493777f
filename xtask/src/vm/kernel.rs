//! Debian kernel packages for the VM tests: resolved and downloaded with `apt-get`
//! through a private apt configuration (the host's sources, lists and caches are left
//! alone), cached outside the work tree, and unpacked to the files QEMU and the harness
//! need (vmlinuz and the config; modules.rs takes modules from the package).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// A kernel series the matrix covers and the Debian suite it comes from.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    pub name: &'static str,
    pub suite: &'static str,
}

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        suite: "bullseye",
    },
    Series {
        name: "6.1",
        suite: "bookworm",
    },
    Series {
        name: "6.12",
        suite: "bookworm-backports",
    },
];

/// A kernel in the cache, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: &'static str,
    /// The Debian package it came from and that package's version.
    pub package: String,
    pub version: String,
    /// `uname -r`, e.g. `6.1.0-41-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
    /// The package file in the cache (modules are taken from it on demand).
    pub deb: PathBuf,
}

impl Kernel {
    /// `CONFIG_*` options from the package's config file (`y`, `m`, a value).
    pub fn config_options(&self) -> Result<BTreeMap<String, String>> {
        let text = fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect())
    }
}

/// The cache: `$MEMWATCH_VM_CACHE`, else `$XDG_CACHE_HOME/memwatch-vm`, else
/// `/var/cache/memwatch-vm` for root and `~/.cache/memwatch-vm` for others. Outside the
/// work tree, so clones on the same machine share it.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("MEMWATCH_VM_CACHE") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("memwatch-vm");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return "/var/cache/memwatch-vm".into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/memwatch-vm")
}

/// An exclusive lock on the cache, held while it is changed (several work trees on one
/// machine may run the matrix at once). Released when dropped.
pub struct CacheLock {
    _file: fs::File,
}

impl CacheLock {
    pub fn take(root: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd as _;
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let path = root.join("lock");
        let f = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { _file: f })
    }
}

/// The kernel of `series` from the cache, fetched first if it is not there (or if
/// `refresh` asks to look for a newer one).
pub fn get(series: &Series, refresh: bool) -> Result<Kernel> {
    let root = cache_root();
    let _lock = CacheLock::take(&root)?;
    let dir = root.join("kernels").join(series.name);
    if !refresh {
        if let Ok(k) = read_cached(series, &dir) {
            return Ok(k);
        }
    }
    let (package, deb) = download(&root, series)?;
    if let Ok(k) = read_cached(series, &dir) {
        if k.package == package && k.version == deb_field(&deb, "Version")? {
            return Ok(k);
        }
    }
    unpack(series, &package, &deb, &dir)?;
    read_cached(series, &dir)
}

/// Reads a kernel unpacked earlier (its `kernel.txt` and boot files).
fn read_cached(series: &Series, dir: &Path) -> Result<Kernel> {
    let meta = fs::read_to_string(dir.join("kernel.txt"))?;
    let field = |k: &str| -> Result<String> {
        meta.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
            .with_context(|| format!("no {k} in {}/kernel.txt", dir.display()))
    };
    let k = Kernel {
        series: series.name,
        package: field("package")?,
        version: field("version")?,
        release: field("release")?,
        vmlinuz: dir.join("vmlinuz"),
        config: dir.join("config"),
        deb: field("deb")?.into(),
    };
    for f in [&k.vmlinuz, &k.config, &k.deb] {
        if !f.is_file() {
            bail!("{} missing", f.display());
        }
    }
    Ok(k)
}

/// The URI of the Debian archive the host's own apt uses (deb822 `.sources` files
/// first, then the one-line `sources.list`), else deb.debian.org.
fn mirror_uri() -> String {
    if let Ok(m) = std::env::var("MEMWATCH_VM_MIRROR") {
        return m;
    }
    let is_archive = |uri: &str| {
        let u = uri.trim_end_matches('/');
        u.ends_with("/debian") && !u.contains("security")
    };
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sources"))
    {
        let text = fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            if let Some(uris) = line.strip_prefix("URIs:") {
                if let Some(u) = uris.split_whitespace().find(|u| is_archive(u)) {
                    return u.to_string();
                }
            }
        }
    }
    for f in std::iter::once(PathBuf::from("/etc/apt/sources.list")).chain(
        files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "list"))
            .cloned(),
    ) {
        let text = fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            let mut w = line.split_whitespace().filter(|w| !w.starts_with('['));
            if w.next() == Some("deb") {
                // Options in brackets may span words: skip to the first URI-looking one.
                if let Some(u) = w.find(|u| u.contains("://")).filter(|u| is_archive(u)) {
                    return u.to_string();
                }
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// The options that point apt at a private sources list, lists folder and cache.
fn apt_options(apt_dir: &Path) -> Vec<String> {
    vec![
        format!(
            "-oDir::Etc::SourceList={}",
            apt_dir.join("sources.list").display()
        ),
        "-oDir::Etc::SourceParts=/dev/null".into(),
        format!("-oDir::State::Lists={}", apt_dir.join("lists").display()),
        format!("-oDir::Cache={}", apt_dir.join("cache").display()),
        // The cache belongs to root; apt's download sandbox user could not write it.
        "-oAPT::Sandbox::User=root".into(),
    ]
}

/// Resolves the newest `linux-image-<series>*-amd64` of the series' suite and downloads
/// it into the cache (apt skips a file that is already there and verified). Returns
/// the package name and the .deb.
fn download(root: &Path, series: &Series) -> Result<(String, PathBuf)> {
    let apt_dir = root.join("apt").join(series.suite);
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt_dir.join(d))?;
    }
    let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
    let signed_by = if keyring.exists() {
        format!("[signed-by={}] ", keyring.display())
    } else {
        String::new()
    };
    let uri = mirror_uri();
    fs::write(
        apt_dir.join("sources.list"),
        format!("deb {signed_by}{uri} {} main\n", series.suite),
    )?;
    let opts = apt_options(&apt_dir);
    eprintln!(
        "xtask: vm {}: apt-get update for {} from {uri} (private lists in {})",
        series.name,
        series.suite,
        apt_dir.display()
    );
    crate::output(Command::new("apt-get").args(&opts).args(["-qq", "update"]))
        .context("apt-get update (private sources list)")?;
    let names = crate::output(
        Command::new("apt-cache")
            .args(&opts)
            .args(["pkgnames", "linux-image-"]),
    )?;
    let package = newest_image(series.name, names.lines()).with_context(|| {
        format!(
            "no linux-image-{}*-amd64 package in {} {}",
            series.name, uri, series.suite
        )
    })?;
    let debs = root.join("debs");
    fs::create_dir_all(&debs)?;
    eprintln!("xtask: vm {}: apt-get download {package}", series.name);
    crate::output(
        Command::new("apt-get")
            .args(&opts)
            .args(["-qq", "download", &package])
            .current_dir(&debs),
    )
    .with_context(|| format!("apt-get download {package}"))?;
    // apt names it <package>_<version with ':' escaped>_amd64.deb; take the newest.
    let mut found: Vec<PathBuf> = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .collect();
    found.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    let deb = found
        .pop()
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    Ok((package, deb))
}

/// The newest generic amd64 image of a series among package names: `-amd64` or
/// `-amd64-unsigned`, not cloud, rt or debug variants.
fn newest_image<'a>(series: &str, names: impl Iterator<Item = &'a str>) -> Option<String> {
    let prefix = format!("linux-image-{series}.");
    names
        .filter_map(|n| {
            let n = n.trim();
            let rest = n.strip_prefix(&prefix)?;
            let ver = rest
                .strip_suffix("-amd64")
                .or_else(|| rest.strip_suffix("-amd64-unsigned"))?;
            if ver.ends_with("-cloud") || ver.ends_with("-rt") {
                return None;
            }
            let key: Vec<u64> = ver
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|p| p.parse().ok())
                .collect();
            // Same version signed and unsigned: prefer unsigned (the sort keeps the last).
            Some(((key, n.ends_with("-unsigned")), n.to_string()))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, n)| n)
}

fn deb_field(deb: &Path, field: &str) -> Result<String> {
    Ok(
        crate::output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))?
            .trim()
            .to_string(),
    )
}

/// Unpacks the boot files of `deb` into `dir` (replacing what was there).
fn unpack(series: &Series, package: &str, deb: &Path, dir: &Path) -> Result<()> {
    let parent = dir.parent().expect("kernels/<series>");
    fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".unpack-{}-{}", series.name, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    eprintln!("xtask: vm {}: unpacking {}", series.name, deb.display());
    crate::output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    let boot = tmp.join("boot");
    let find = |prefix: &str| -> Result<PathBuf> {
        fs::read_dir(&boot)
            .with_context(|| format!("{} has no /boot", deb.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("no /boot/{prefix}* in {}", deb.display()))
    };
    let vmlinuz = find("vmlinuz-")?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz name")?
        .to_string();
    let staged = tmp.join("staged");
    fs::create_dir_all(&staged)?;
    fs::rename(&vmlinuz, staged.join("vmlinuz"))?;
    fs::rename(find("config-")?, staged.join("config"))?;
    fs::write(
        staged.join("kernel.txt"),
        format!(
            "package={package}\nversion={}\nrelease={release}\ndeb={}\n",
            deb_field(deb, "Version")?,
            deb.display()
        ),
    )?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&staged, dir)?;
    fs::remove_dir_all(&tmp)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_generic_image_of_the_series() {
        let names = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-41-amd64",
            "linux-image-6.1.0-41-amd64-unsigned",
            "linux-image-6.1.0-42-cloud-amd64",
            "linux-image-6.1.0-42-rt-amd64",
            "linux-image-6.1.0-42-amd64-dbg",
            "linux-image-6.12.95+deb12-amd64",
            "linux-image-amd64",
        ];
        assert_eq!(
            newest_image("6.1", names.into_iter()).as_deref(),
            Some("linux-image-6.1.0-41-amd64-unsigned")
        );
        assert_eq!(
            newest_image("6.12", names.into_iter()).as_deref(),
            Some("linux-image-6.12.95+deb12-amd64")
        );
        let bpo = [
            "linux-image-6.12.9+bpo-amd64",
            "linux-image-6.12.43+deb12-amd64",
            "linux-image-6.12.38+deb12-amd64-unsigned",
        ];
        assert_eq!(
            newest_image("6.12", bpo.into_iter()).as_deref(),
            Some("linux-image-6.12.43+deb12-amd64")
        );
        assert_eq!(newest_image("5.10", names.into_iter()), None);
    }
}
