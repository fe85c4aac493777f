//! Kernel BTF: parse a blob and look up members and enum values in it.
//! Input: a struct or enum name, a NUL, a member or variant name, a NUL, the blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::btf::{BdiPath, Btf, FolioLayout, PageFlagBits};
use memwatch_fuzz::split_nul;

fuzz_target!(|data: &[u8]| {
    let (outer, rest) = split_nul(data);
    let (inner, blob) = split_nul(rest);
    let Ok(btf) = Btf::parse(blob) else {
        return;
    };
    let outer = String::from_utf8_lossy(outer);
    let inner = String::from_utf8_lossy(inner);
    let _ = btf.member(&outer, &inner);
    let _ = btf.enum_value(&outer, &inner);
    let _ = FolioLayout::from_btf(&btf);
    let _ = PageFlagBits::from_btf(&btf);
    let _ = BdiPath::from_btf(&btf);
});
