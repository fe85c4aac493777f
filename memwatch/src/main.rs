//! memwatch: where a Linux host's memory work goes, for Prometheus.
//!
//! `cli` parses the command line, `daemon` is `memwatch run` (the start-up sequence),
//! `fork_report` is `memwatch fork-report`. docs/ARCHITECTURE.md maps the rest.

mod btf;
mod cli;
mod collectors;
mod config;
mod daemon;
mod episodes;
mod fork_report;
mod host;
mod metrics;
mod notify;
mod parse;
mod privileges;
mod probes;
mod server;
mod tracefs;

use std::process::ExitCode;

use clap::Parser as _;

use crate::{
    cli::{Cli, Command},
    daemon::Fatal,
};

/// Exit code for "can't start": bad usage, bad config, missing privileges.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => cli::run(cli.run),
        Some(Command::Run(args)) => cli::run(args),
        Some(Command::Probes(args)) => cli::probes_cmd(args),
        Some(Command::Config(args)) => cli::config_cmd(args),
        Some(Command::ForkReport(args)) => fork_report::fork_report(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal::Usage(msg)) => {
            eprintln!("memwatch: error: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Fatal::Runtime(e)) => {
            eprintln!("memwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
