//! memwatch: where a Linux host's memory work goes, for Prometheus.
//!
//! The agent as a library: `main.rs` is only the command line's dispatch, and the
//! fuzz targets (`fuzz/`) call the parsers from here. `cli` parses the command line,
//! `daemon` is `memwatch run` (the start-up sequence), `fork_report` is
//! `memwatch fork-report`. docs/ARCHITECTURE.md maps the rest.
//!
//! No panic is reachable from input: outside tests, `unwrap`, `expect` and indexing
//! that can go out of bounds are denied (allowed one by one, with the reason, where a
//! value can't be absent), and std's poisoning locks are disallowed in favour of
//! parking_lot's (memwatch/clippy.toml).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod btf;
pub mod cli;
pub mod collectors;
pub mod config;
pub mod daemon;
pub mod episodes;
pub mod fork_report;
pub mod host;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod parse;
pub mod privileges;
pub mod probes;
pub mod server;
pub mod tracefs;
