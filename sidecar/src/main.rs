//! `ipclink-sidecar`: parses flags and runs the command (`cmd::run`); prints the error
//! and exits with its code.

use clap::Parser;
use ipclink_sidecar::Error;
use ipclink_sidecar::cli::Cli;

fn main() {
    ipclink_runtime::init_logging();
    ipclink_runtime::raise_open_files_limit();
    if let Err(e) = ipclink_sidecar::cmd::run(Cli::parse()) {
        match &e {
            Error::Invalid(problems) => {
                for p in &problems.0 {
                    eprintln!("error: {p}");
                }
                eprintln!("{} problem(s); nothing was changed", problems.0.len());
            }
            other => eprintln!("error: {other}"),
        }
        std::process::exit(e.exit_code());
    }
}
