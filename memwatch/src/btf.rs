//! A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets
//! and enum values. aya's Rust eBPF emits no CO-RE relocations, so the layouts a
//! program needs (e.g. where a folio keeps its order) are looked up here at start-up
//! and handed over as globals.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// How deep anonymous struct and union members are searched (the kernel's own types
/// nest a few levels).
const MAX_NESTING: u32 = 16;

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// Size (struct, union, int, enum) or referenced type id (typedef, const, ...).
    size_or_type: u32,
    /// Struct/union members (name, type, bit offset) or enum values (name, value).
    members: Vec<(u32, u32, u32)>,
    values: Vec<(u32, i64)>,
}

/// Parsed kernel BTF.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// The type section and the string section of BTF blob `b`, as its header places them.
fn sections(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let hdr_len = u32_at(b, 4)? as usize;
    let type_off = u32_at(b, 8)? as usize;
    let type_len = u32_at(b, 12)? as usize;
    let str_off = u32_at(b, 16)? as usize;
    let str_len = u32_at(b, 20)? as usize;
    let tstart = hdr_len.checked_add(type_off)?;
    let sstart = hdr_len.checked_add(str_off)?;
    let strings = b.get(sstart..sstart.checked_add(str_len)?)?;
    let tb = b.get(tstart..tstart.checked_add(type_len)?)?;
    Some((tb, strings))
}

/// The types of type section `tb`, indexed by type id (id 0 is void).
fn read_types(tb: &[u8]) -> Option<Vec<Type>> {
    let mut types = vec![Type {
        name: 0,
        kind: 0,
        kind_flag: false,
        size_or_type: 0,
        members: Vec::new(),
        values: Vec::new(),
    }];
    let mut o = 0usize;
    while o + 12 <= tb.len() {
        types.push(read_type(tb, &mut o)?);
    }
    Some(types)
}

/// The type at offset `*o` of `tb`: its 12-byte header and what follows it; moves `*o`
/// past both.
fn read_type(tb: &[u8], o: &mut usize) -> Option<Type> {
    let name = u32_at(tb, *o)?;
    let info = u32_at(tb, *o + 4)?;
    let size_or_type = u32_at(tb, *o + 8)?;
    *o += 12;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let kind_flag = info >> 31 != 0;
    let mut t = Type {
        name,
        kind,
        kind_flag,
        size_or_type,
        members: Vec::new(),
        values: Vec::new(),
    };
    match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => *o += 4,
        KIND_ARRAY => *o += 12,
        KIND_STRUCT | KIND_UNION => {
            for _ in 0..vlen {
                t.members
                    .push((u32_at(tb, *o)?, u32_at(tb, *o + 4)?, u32_at(tb, *o + 8)?));
                *o += 12;
            }
        }
        KIND_ENUM => {
            for _ in 0..vlen {
                let v = u32_at(tb, *o + 4)? as i32 as i64;
                t.values.push((u32_at(tb, *o)?, v));
                *o += 8;
            }
        }
        KIND_ENUM64 => {
            for _ in 0..vlen {
                let lo = u32_at(tb, *o + 4)? as u64;
                let hi = u32_at(tb, *o + 8)? as u64;
                t.values.push((u32_at(tb, *o)?, ((hi << 32) | lo) as i64));
                *o += 12;
            }
        }
        KIND_FUNC_PROTO => *o += 8 * vlen,
        KIND_DATASEC => *o += 12 * vlen,
        _ => {}
    }
    Some(t)
}

impl Btf {
    /// Reads /sys/kernel/btf/vmlinux.
    pub fn from_sys_fs() -> Result<Self, String> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| format!("reading /sys/kernel/btf/vmlinux: {e}"))?;
        Self::parse(&data)
    }

    /// Parses a raw (little-endian) BTF blob.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        let bad = || "malformed BTF".to_string();
        if u16_at(b, 0).ok_or_else(bad)? != MAGIC {
            return Err("not little-endian BTF (bad magic)".into());
        }
        let (tb, strings) = sections(b).ok_or_else(bad)?;
        let types = read_types(tb).ok_or_else(bad)?;
        let mut btf = Self {
            types,
            strings: strings.to_vec(),
            by_name: HashMap::new(),
        };
        btf.index_names();
        Ok(btf)
    }

    /// Fills `by_name`: every named type's ids, by name.
    fn index_names(&mut self) {
        for (id, t) in self.types.iter().enumerate().skip(1) {
            if t.name != 0 {
                let n = self.str(t.name).to_string();
                self.by_name.entry(n).or_default().push(id as u32);
            }
        }
    }

    fn str(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let s = s.split(|&c| c == 0).next().unwrap_or(&[]);
        std::str::from_utf8(s).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset and size of `member` in struct `name`, looking through anonymous
    /// struct and union members.
    pub fn member(&self, name: &str, member: &str) -> Option<(u32, u32)> {
        self.by_name.get(name)?.iter().find_map(|&id| {
            let t = self.types.get(id as usize)?;
            (t.kind == KIND_STRUCT && !t.members.is_empty())
                .then(|| self.find_member(t, member, 0))
                .flatten()
                .map(|(bits, size)| (bits / 8, size))
        })
    }

    /// `member` in `t` or in its anonymous members, `depth` levels down already. A
    /// malformed blob can make an anonymous member contain its own struct, so the
    /// search stops at `MAX_NESTING` levels rather than recursing without end.
    fn find_member(&self, t: &Type, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > MAX_NESTING {
            return None;
        }
        for &(name, ty, off) in &t.members {
            let bits = if t.kind_flag { off & 0xff_ffff } else { off };
            if name != 0 && self.str(name) == member {
                let size = self.resolve(ty).map_or(0, |r| match r.kind {
                    KIND_STRUCT | KIND_UNION | KIND_INT | KIND_ENUM | KIND_ENUM64 => r.size_or_type,
                    _ => 8,
                });
                return Some((bits, size));
            }
            if name == 0 {
                if let Some(inner) = self.resolve(ty) {
                    if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                        if let Some((b, s)) = self.find_member(inner, member, depth + 1) {
                            return bits.checked_add(b).map(|bits| (bits, s));
                        }
                    }
                }
            }
        }
        None
    }

    /// The value of `variant` in enum `name`.
    pub fn enum_value(&self, name: &str, variant: &str) -> Option<i64> {
        self.by_name.get(name)?.iter().find_map(|&id| {
            let t = self.types.get(id as usize)?;
            matches!(t.kind, KIND_ENUM | KIND_ENUM64)
                .then(|| {
                    t.values
                        .iter()
                        .find(|(n, _)| self.str(*n) == variant)
                        .map(|v| v.1)
                })
                .flatten()
        })
    }
}

/// The `enum pageflags` bits the raw LRU insertion program reads a folio's list from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFlagBits {
    pub active: u32,
    pub unevictable: u32,
    pub swapbacked: u32,
}

impl PageFlagBits {
    pub fn from_btf(btf: &Btf) -> Result<Self, String> {
        let bit = |name: &str| {
            btf.enum_value("pageflags", name)
                .map(|v| v as u32)
                .ok_or(format!("no {name} in enum pageflags"))
        };
        Ok(Self {
            active: bit("PG_active")?,
            unevictable: bit("PG_unevictable")?,
            swapbacked: bit("PG_swapbacked")?,
        })
    }
}

/// Offsets along mapping → host inode → super block → bdi → (dev, dev_name): how the
/// raw dirty-page program names the backing device the way the tracepoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BdiPath {
    pub mapping_host: u32,
    pub inode_sb: u32,
    pub sb_bdi: u32,
    pub bdi_dev: u32,
    pub bdi_dev_name: u32,
}

impl BdiPath {
    pub fn from_btf(btf: &Btf) -> Result<Self, String> {
        let off = |s: &str, m: &str| {
            btf.member(s, m)
                .map(|(o, _)| o)
                .ok_or(format!("no {s}.{m} in kernel BTF"))
        };
        Ok(Self {
            mapping_host: off("address_space", "host")?,
            inode_sb: off("inode", "i_sb")?,
            sb_bdi: off("super_block", "s_bdi")?,
            bdi_dev: off("backing_dev_info", "dev")?,
            bdi_dev_name: off("backing_dev_info", "dev_name")?,
        })
    }
}

/// Where a folio keeps its order, so programs can count pages, not folios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolioLayout {
    /// Bit of `PG_head` in `folio->flags` (set on large folios).
    pub head_bit: u32,
    /// Byte offset of the order: `_flags_1` (6.6+, low byte) or `_folio_order` (older).
    pub order_offset: u32,
}

impl FolioLayout {
    pub fn from_btf(btf: &Btf) -> Result<Self, String> {
        let head_bit = btf
            .enum_value("pageflags", "PG_head")
            .ok_or("no PG_head in enum pageflags")? as u32;
        let (order_offset, _) = btf
            .member("folio", "_flags_1")
            .or_else(|| btf.member("folio", "_folio_order"))
            .ok_or("struct folio has neither _flags_1 nor _folio_order")?;
        Ok(Self {
            head_bit,
            order_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: int, struct s { int a; union { int b; int c; }; },
    /// enum e { X = 5 }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0c\0e\0X\0";
        let off = |s: &str| -> u32 {
            let pat = format!("\0{s}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut put = |v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int
        put(off("int"));
        put(KIND_INT << 24);
        put(4);
        put(32);
        // 2: anonymous union { int b; int c; }
        put(0);
        put((KIND_UNION << 24) | 2);
        put(4);
        put(off("b"));
        put(1);
        put(0);
        put(off("c"));
        put(1);
        put(0);
        // 3: struct s { int a; union; }
        put(off("s"));
        put((KIND_STRUCT << 24) | 2);
        put(8);
        put(off("a"));
        put(1);
        put(0);
        put(0);
        put(2);
        put(32);
        // 4: enum e { X = 5 }
        put(off("e"));
        put((KIND_ENUM << 24) | 1);
        put(4);
        put(off("X"));
        put(5);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.push(1);
        b.push(0);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn members_and_enums() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member("s", "a"), Some((0, 4)));
        assert_eq!(btf.member("s", "c"), Some((4, 4)));
        assert_eq!(btf.member("s", "zz"), None);
        assert_eq!(btf.enum_value("e", "X"), Some(5));
        assert_eq!(btf.enum_value("e", "Y"), None);
    }

    /// A blob of the given type section (u32 words) and string section.
    fn raw_blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        let tlen = (types.len() * 4) as u32;
        for v in [24u32, 0, tlen, tlen, strings.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in types {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(strings);
        b
    }

    /// Found in review while writing the `btf` fuzz target: a struct whose anonymous
    /// member is the struct itself made `member` recurse until the stack overflowed.
    #[test]
    fn self_nesting_struct_is_not_followed_forever() {
        // 1: struct s (size 4) { <anonymous> : struct s at bit 0 }
        let types = [1, (KIND_STRUCT << 24) | 1, 4, 0, 1, 0];
        let btf = Btf::parse(&raw_blob(&types, b"\0s\0")).unwrap();
        assert_eq!(btf.member("s", "x"), None);
    }

    /// Bit offsets that add up past u32 are no member, not an overflow.
    #[test]
    fn nested_offsets_that_overflow_are_none() {
        // 1: int; 2: union { x: int at u32::MAX bits }; 3: struct s { <anon>: 2 at
        // u32::MAX bits }.
        let types = [
            1,
            KIND_INT << 24,
            4,
            32,
            0,
            (KIND_UNION << 24) | 1,
            4,
            7,
            1,
            u32::MAX,
            5,
            (KIND_STRUCT << 24) | 1,
            4,
            0,
            2,
            u32::MAX,
        ];
        let btf = Btf::parse(&raw_blob(&types, b"\0int\0s\0x\0")).unwrap();
        assert_eq!(btf.member("s", "x"), None);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0u8; 64]).is_err());
        let mut b = blob();
        b.truncate(30);
        assert!(Btf::parse(&b).is_err());
    }

    /// On a kernel with BTF, the folio layout resolves (checked against the running
    /// kernel's own BTF; skipped where there is none).
    #[test]
    fn running_kernel_folio_layout() {
        match Btf::from_sys_fs() {
            Ok(btf) => {
                let l = FolioLayout::from_btf(&btf).unwrap();
                // The order lives in the second struct page of the folio.
                assert!(l.order_offset >= 40 && l.order_offset < 128, "{l:?}");
                assert!(l.head_bit < 64);
                assert_eq!(btf.member("folio", "flags").map(|m| m.0), Some(0));
            }
            Err(e) => println!("SKIP running_kernel_folio_layout: {e}"),
        }
    }
}
