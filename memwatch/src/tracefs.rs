//! tracefs: find or mount it, and read tracepoint record layouts from its `format`
//! files. aya's Rust eBPF has no CO-RE field relocations, so field offsets are read
//! here at start-up and handed to the programs as globals.

use std::{
    io,
    path::{Path, PathBuf},
};

/// Where tracefs is looked for, in order.
const CANDIDATES: &[&str] = &[MOUNT_POINT, "/sys/kernel/debug/tracing"];

/// Where tracefs is mounted when no candidate has it.
const MOUNT_POINT: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}): \
         run `mount -t tracefs nodev /sys/kernel/tracing` as root, or give memwatch CAP_SYS_ADMIN"
    )]
    MountFailed(io::Error),
    #[error("tracepoint {category}:{name} not found ({path}): {source}")]
    NoFormat {
        category: String,
        name: String,
        path: String,
        source: io::Error,
    },
    #[error("tracepoint {category}:{name}: cannot parse {path}: {why}")]
    BadFormat {
        category: String,
        name: String,
        path: String,
        why: String,
    },
}

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds a mounted tracefs, or mounts one at /sys/kernel/tracing.
    pub fn find_or_mount() -> Result<(Self, bool), TracefsError> {
        if let Some(t) = Self::find() {
            return Ok((t, false));
        }
        let (src, dst, fstype) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
        debug_assert_eq!(dst.to_str(), Ok(MOUNT_POINT));
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(TracefsError::MountFailed(io::Error::last_os_error()));
        }
        Self::find()
            .map(|t| (t, true))
            .ok_or_else(|| TracefsError::MountFailed(io::Error::other("mounted but no events/")))
    }

    /// Finds a mounted tracefs without mounting one.
    pub fn find() -> Option<Self> {
        CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
            .map(|p| Self { root: p.into() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `category:name` exists on this kernel.
    pub fn has_event(&self, category: &str, name: &str) -> bool {
        self.event_dir(category, name).join("id").is_file()
    }

    fn event_dir(&self, category: &str, name: &str) -> PathBuf {
        self.root.join("events").join(category).join(name)
    }

    /// Reads and parses the record layout of `category:name`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = self.event_dir(category, name).join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::NoFormat {
            category: category.into(),
            name: name.into(),
            path: path.display().to_string(),
            source,
        })?;
        Format::parse(&text).map_err(|why| TracefsError::BadFormat {
            category: category.into(),
            name: name.into(),
            path: path.display().to_string(),
            why,
        })
    }
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration without the name, e.g. `unsigned long`, `char[16]`.
    pub c_type: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// The parsed `format` file of a tracepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: u32,
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the text of a tracefs `format` file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("name:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("ID:") {
                id = Some(
                    v.trim()
                        .parse()
                        .map_err(|_| format!("bad ID line {line:?}"))?,
                );
            } else if line.starts_with("field:") {
                fields.push(parse_field(line)?);
            }
        }
        Ok(Self {
            name: name.ok_or("no name: line")?,
            id: id.ok_or("no ID: line")?,
            fields,
        })
    }

    /// A field by name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Parses `field:unsigned long address;\toffset:8;\tsize:8;\tsigned:0;`.
fn parse_field(line: &str) -> Result<Field, String> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("bad field part {part:?} in {line:?}"))?;
        let num = || {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("bad number {value:?} in {line:?}"))
        };
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = Some(num()?),
            "size" => size = Some(num()?),
            "signed" => signed = Some(num()? != 0),
            _ => {}
        }
    }
    let decl = decl.ok_or_else(|| format!("no declaration in {line:?}"))?;
    let (c_type, name) = split_decl(decl).ok_or_else(|| format!("bad declaration {decl:?}"))?;
    Ok(Field {
        name,
        c_type,
        offset: offset.ok_or_else(|| format!("no offset in {line:?}"))?,
        size: size.ok_or_else(|| format!("no size in {line:?}"))?,
        signed: signed.unwrap_or(false),
    })
}

/// Splits a C declaration into (type, name): `char comm[16]` -> (`char[16]`, `comm`),
/// `__data_loc char[] name` -> (`__data_loc char[]`, `name`).
fn split_decl(decl: &str) -> Option<(String, String)> {
    let (head, last) = decl.rsplit_once(char::is_whitespace)?;
    let (name, array) = match last.find('[') {
        Some(i) => last.split_at_checked(i)?,
        None => (last, ""),
    };
    let name = name.trim_start_matches('*');
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    // The leading `*`s (one byte each), as in `*ptr`.
    let stars = last.get(..last.len() - last.trim_start_matches('*').len())?;
    Some((format!("{}{stars}{array}", head.trim()), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tracefs")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn page_fault_user_6_18() {
        let f = Format::parse(&fixture("6.18/exceptions/page_fault_user/format")).unwrap();
        assert_eq!(f.name, "page_fault_user");
        let names: Vec<_> = f.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "common_type",
                "common_flags",
                "common_preempt_count",
                "common_pid",
                "address",
                "ip",
                "error_code"
            ]
        );
        let ec = f.field("error_code").unwrap();
        assert_eq!((ec.offset, ec.size, ec.signed), (24, 8, false));
        assert_eq!(ec.c_type, "unsigned long");
        assert_eq!(f.field("common_pid").unwrap().c_type, "int");
        assert!(f.field("common_pid").unwrap().signed);
    }

    #[test]
    fn arrays_and_data_loc() {
        let f = Format::parse(&fixture("6.18/writeback/writeback_dirty_folio/format")).unwrap();
        let name = f.field("name").unwrap();
        assert_eq!((name.c_type.as_str(), name.size), ("char[32]", 32));
        let f = Format::parse(&fixture("6.18/sched/sched_process_fork/format")).unwrap();
        assert!(f.field("parent_comm").is_some());
        assert!(f.field("child_pid").is_some());
        let f = Format::parse(&fixture("6.18/syscalls/sys_enter_openat/format")).unwrap();
        let filename = f.field("filename").unwrap();
        assert_eq!(filename.c_type, "const char *");
    }

    #[test]
    fn declarations() {
        assert_eq!(
            split_decl("__data_loc char[] name"),
            Some(("__data_loc char[]".into(), "name".into()))
        );
        assert_eq!(
            split_decl("const char * filename"),
            Some(("const char *".into(), "filename".into()))
        );
        assert_eq!(
            split_decl("void *ptr"),
            Some(("void*".into(), "ptr".into()))
        );
        assert_eq!(split_decl("nospace"), None);
    }

    #[test]
    fn malformed() {
        assert!(Format::parse("").is_err());
        assert!(Format::parse("name: x\nID: y\n").is_err());
        assert!(Format::parse("name: x\nID: 1\n\tfield:int a;\toffset:zz;\tsize:4;\n").is_err());
        let ok = Format::parse(
            "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n",
        )
        .unwrap();
        assert_eq!(ok.field("a").unwrap().offset, 8);
    }
}
