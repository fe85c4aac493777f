//! memwatch's command line: parse it, run the subcommand, map the outcome to an exit
//! code. Everything else is the library (`lib.rs`).

use std::process::ExitCode;

use clap::Parser as _;

use memwatch::{
    cli::{self, Cli, Command},
    daemon::Fatal,
    fork_report,
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
