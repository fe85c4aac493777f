//! The config loader: `Config::from_toml`, and a loaded config written back as TOML
//! loads to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwatch::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text, "fuzz.toml") else {
        return;
    };
    let written = toml::to_string(&cfg).expect("a loaded config serializes");
    let again = Config::from_toml(&written, "written.toml")
        .unwrap_or_else(|e| panic!("{e}\n--- written:\n{written}"));
    assert_eq!(again, cfg, "{written}");
});
