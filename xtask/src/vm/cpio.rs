//! A writer for the "newc" cpio format, which is what the kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst): for each
//! entry a 110-byte ASCII header (`070701` and 13 eight-digit hex fields), the NUL-ended
//! name padded to 4 bytes, then the data padded to 4 bytes; a `TRAILER!!!` entry ends
//! the archive.

use std::{collections::BTreeSet, io::Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Builds a newc archive in memory. Parent directories are added on demand, each once.
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Default for Cpio {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpio {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 0,
            dirs: BTreeSet::new(),
        }
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, 2, 0, &[]);
    }

    /// A regular file with these contents and permission bits.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        let path = self.parent_of(path);
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, 0, data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = self.parent_of(path);
        self.entry(&path, S_IFLNK | 0o777, 1, 0, target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let path = self.parent_of(path);
        let rdev = (major << 16) | minor;
        self.entry(&path, S_IFCHR | (perm & 0o7777), 1, rdev, &[]);
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, 0, &[]);
        // The kernel does not need it, but a multiple of 512 is what cpio(1) writes.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }

    /// Adds the parent directories of `path`; returns `path` without leading slashes.
    fn parent_of(&mut self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        path.to_string()
    }

    /// `rdev` packs the device's major (high 16 bits) and minor.
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            u32::try_from(data.len()).expect("initramfs file under 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev >> 16,
            rdev & 0xffff,
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check (only for the 070702 format)
        ];
        let out = &mut self.out;
        out.extend_from_slice(b"070701");
        for f in fields {
            write!(out, "{f:08x}").expect("writing to a Vec");
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back into (name, mode, rdev major, rdev minor, data).
    fn parse(mut b: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, maj, min, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = 110 + namesize as usize;
            let name = std::str::from_utf8(&b[110..name_end - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[name_end - 1], 0);
            let data_start = name_end.next_multiple_of(4);
            let data = b[data_start..data_start + size as usize].to_vec();
            let next = (data_start + size as usize).next_multiple_of(4);
            // Every header starts 4-aligned relative to the archive start.
            assert_eq!((total - b.len()) % 4, 0);
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.iter().all(|&x| x == 0));
                return out;
            }
            out.push((name, mode, maj, min, data));
        }
    }

    #[test]
    fn round_trips_files_dirs_links_and_devices() {
        let mut c = Cpio::new();
        c.file("/bin/sh-script", 0o755, b"#!/bin/sh\necho hi\n");
        c.symlink("/bin/ls", "busybox");
        c.char_dev("/dev/console", 0o600, 5, 1);
        c.file("/a/b/c/odd", 0o644, b"12345");
        c.dir("/a/b");
        let bytes = c.finish();
        assert_eq!(bytes.len() % 512, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh-script",
                "bin/ls",
                "dev",
                "dev/console",
                "a",
                "a/b",
                "a/b/c",
                "a/b/c/odd"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("bin/sh-script").1, 0o100_755);
        assert_eq!(get("bin/sh-script").4, b"#!/bin/sh\necho hi\n");
        assert_eq!(get("bin/ls").1, 0o120_777);
        assert_eq!(get("bin/ls").4, b"busybox");
        assert_eq!((get("dev/console").2, get("dev/console").3), (5, 1));
        assert_eq!(get("dev/console").1, 0o020_600);
        assert_eq!(get("a/b").1, 0o040_755);
        assert_eq!(get("a/b/c/odd").4, b"12345");
    }
}
