//! A tracefs `format` file: parse, print the fields back, parse them again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::tracefs::Format;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(format) = Format::parse(text) else {
        return;
    };
    let mut printed = format!("name: {}\nID: {}\nformat:\n", format.name, format.id);
    for f in &format.fields {
        assert!(
            !f.name.is_empty()
                && f.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{f:?}"
        );
        assert_eq!(format.field(&f.name).map(|g| &g.name), Some(&f.name));
        printed.push_str(&format!(
            "\tfield:{} {};\toffset:{};\tsize:{};\tsigned:{};\n",
            f.c_type,
            f.name,
            f.offset,
            f.size,
            u8::from(f.signed)
        ));
    }
    assert_eq!(Format::parse(&printed).as_ref(), Ok(&format), "{printed}");
});
