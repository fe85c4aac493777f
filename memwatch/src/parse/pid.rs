//! The per-process files under /proc/PID (stat, smaps_rollup, cgroup), and the two
//! rules that pick processes: a comm pattern and cgroup membership. Fork episodes'
//! watch list and the processes collector both use these, so a pattern or a cgroup
//! path means the same in `[episodes]` and `[processes]`.

/// A pattern over a process's comm (the kernel's name of at most 15 bytes): `*` matches
/// any run of bytes (including none) and every other byte matches itself, so
/// `redis-server` is that name, `redis-*` a prefix, `*sql*` a substring. There is no
/// other special character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommPattern(String);

impl CommPattern {
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }

    /// Whether `comm` matches the whole pattern.
    pub fn matches(&self, comm: &str) -> bool {
        let (p, t) = (self.0.as_bytes(), comm.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        // Where the last `*` was, and the text position it currently covers up to.
        let mut star: Option<(usize, usize)> = None;
        while let Some(&tc) = t.get(ti) {
            let pc = p.get(pi).copied();
            if pc == Some(b'*') {
                star = Some((pi, ti));
                pi += 1;
            } else if pc == Some(tc) {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p.get(pi..).unwrap_or(&[]).iter().all(|&c| c == b'*')
    }
}

impl std::fmt::Display for CommPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a process is in cgroup `want` or below it: some line of its /proc/PID/cgroup
/// (`id:controllers:path`, any hierarchy) has a path that is `want` or starts with
/// `want/`. A trailing `/` in `want` is ignored, so `/` (or "") is every cgroup.
pub fn in_cgroup(cgroup_file: &str, want: &str) -> bool {
    let want = want.trim_end_matches('/');
    cgroup_file.lines().any(|l| {
        let Some(path) = l.splitn(3, ':').nth(2) else {
            return false;
        };
        want.is_empty()
            || path == want
            || path
                .strip_prefix(want)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Which cgroup hierarchy names a process's memory cgroup.
#[derive(Debug, Clone, PartialEq)]
pub enum Hierarchy {
    /// cgroup v2 (`0::/path`).
    Unified,
    /// A v1 hierarchy with this id (the one carrying the `memory` controller).
    V1(String),
}

impl Hierarchy {
    /// The memory controller's hierarchy, judged from a process's cgroup file (memwatch
    /// reads its own, /proc/self/cgroup).
    pub fn detect(cgroup_file: &str) -> Self {
        for line in cgroup_file.lines() {
            let mut parts = line.splitn(3, ':');
            if let (Some(id), Some(ctrls)) = (parts.next(), parts.next()) {
                if ctrls.split(',').any(|c| c == "memory") {
                    return Hierarchy::V1(id.to_string());
                }
            }
        }
        Hierarchy::Unified
    }

    /// The path of this hierarchy's line in a /proc/PID/cgroup file.
    pub fn path_in(&self, cgroup_file: &str) -> Option<String> {
        cgroup_file.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = match self {
                Hierarchy::Unified => id == "0" && ctrls.is_empty(),
                Hierarchy::V1(want) => id == want,
            };
            ours.then(|| path.to_string())
        })
    }
}

/// One smaps_rollup field: the kernel's name and the value in bytes (or a count when
/// the kernel gives no unit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmapsField<'a> {
    pub field: &'a str,
    pub value: u64,
    pub bytes: bool,
}

/// Parses /proc/PID/smaps_rollup (the first line, the `[rollup]` address range, is
/// skipped); returns the fields and the malformed lines.
pub fn parse_smaps_rollup(text: &str) -> (Vec<SmapsField<'_>>, Vec<&str>) {
    let (entries, errors) = super::meminfo::parse(
        // The header line's `00:00` device would look like a field.
        text.split_once('\n')
            .filter(|(first, _)| first.trim_end().ends_with("[rollup]"))
            .map_or(text, |(_, rest)| rest),
    );
    let fields = entries
        .into_iter()
        .map(|e| SmapsField {
            field: e.field,
            value: e.value,
            bytes: e.unit.is_some(),
        })
        .collect();
    (fields, errors)
}

/// From /proc/PID/stat: the comm and the minor and major fault counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat<'a> {
    pub comm: &'a str,
    pub minflt: u64,
    pub majflt: u64,
}

/// Parses /proc/PID/stat. The comm sits in parentheses and may itself contain spaces
/// and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat<'_>> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    // `(` and `)` are one byte each, so both slices start on a character boundary.
    let comm = text.get(open + 1..close)?;
    // After ") ": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt ...
    let mut rest = text.get(close + 1..)?.split_ascii_whitespace();
    let minflt = rest.nth(7)?.parse().ok()?;
    let majflt = rest.nth(1)?.parse().ok()?;
    Some(Stat {
        comm,
        minflt,
        majflt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_patterns() {
        let m = |p: &str, t: &str| CommPattern::new(p).matches(t);
        assert!(m("redis-server", "redis-server"));
        assert!(!m("redis-server", "redis-server2"));
        assert!(!m("redis-server", "redis-serve"));
        // A trailing `*` is a prefix, as episodes.watch_comms always had it.
        assert!(m("postgres*", "postgres: wal"));
        assert!(m("postgres*", "postgres"));
        assert!(!m("postgres*", "xpostgres"));
        assert!(m("redis-rdb-*", "redis-rdb-bgsav"));
        assert!(!m("redis-rdb-*", "redis-aof-rewri"));
        assert!(m("*", ""));
        assert!(m("*sql*", "postgresql"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("**x", "yyx"));
        assert!(!m("", "x"));
        assert!(m("", ""));
        // `?` and `[` are ordinary bytes.
        assert!(m("a?[", "a?["));
        assert!(!m("a?", "ab"));
        assert_eq!(CommPattern::new("x*").to_string(), "x*");
    }

    #[test]
    fn cgroup_membership() {
        let file = "12:memory:/redis/a\n11:cpu:/\n0::/system.slice/redis.service\n";
        assert!(in_cgroup(file, "/redis"));
        assert!(in_cgroup(file, "/redis/"));
        assert!(in_cgroup(file, "/redis/a"));
        assert!(in_cgroup(file, "/system.slice/redis.service"));
        assert!(in_cgroup(file, "/system.slice"));
        assert!(!in_cgroup(file, "/red"));
        assert!(!in_cgroup(file, "/redis/a/b"));
        assert!(!in_cgroup(file, "/system.slice/redis"));
        assert!(in_cgroup(file, "/"));
        assert!(!in_cgroup("0::/a\n", "/b"));
        assert!(!in_cgroup("garbage\n", "/a"));
        assert!(!in_cgroup("", "/"));
    }

    #[test]
    fn cgroup_lines() {
        let v1 = "12:pids:/\n4:memory:/test/a\n0::/\n";
        assert_eq!(Hierarchy::detect(v1), Hierarchy::V1("4".into()));
        assert_eq!(Hierarchy::detect("0::/user.slice\n"), Hierarchy::Unified);
        assert_eq!(
            Hierarchy::V1("4".into()).path_in(v1).as_deref(),
            Some("/test/a")
        );
        assert_eq!(Hierarchy::Unified.path_in(v1).as_deref(), Some("/"));
        assert_eq!(
            Hierarchy::Unified
                .path_in("0::/system.slice/x\n")
                .as_deref(),
            Some("/system.slice/x")
        );
        assert_eq!(Hierarchy::Unified.path_in("garbage"), None);
    }
}
