//! The HTTP boundary's inputs: the web config file (exporter-toolkit YAML, parsed and
//! checked without reading the files it names) and the telemetry path (the input's
//! first line). A path the config check accepts must never make axum's router panic
//! (`--web.telemetry-path /` once did, at start), and a parsed config only sets the
//! headers exporter-toolkit allows.
#![no_main]

use axum::{routing::get, Router};
use libfuzzer_sys::fuzz_target;
use memwatch::{config::check_telemetry_path, server::web_config};

const ALLOWED_HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, yaml) = text.split_once('\n').unwrap_or((text, ""));
    if check_telemetry_path(path).is_ok() {
        // The routes of memwatch's router, in its order: a panic here is a crash.
        let _: Router = Router::new()
            .route(path, get(|| async { "" }))
            .route("/healthz", get(|| async { "" }))
            .route("/api/episodes", get(|| async { "" }))
            .route("/", get(|| async { "" }));
    }
    if let Ok(cfg) = web_config::parse(yaml, std::path::Path::new("/etc/memwatch")) {
        for (name, _) in &cfg.headers {
            assert!(
                ALLOWED_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)),
                "header {name:?} accepted"
            );
        }
    }
});
