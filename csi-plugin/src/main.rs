//! `ipclink-csi node|controller`: parses flags and starts the runtime; the work is in the
//! library (`serve::run`).

use clap::Parser;
use ipclink_csi::cli::{Cli, Role};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Role::Charge(helper) = &cli.role {
        // The short-lived helper the node plugin starts: no runtime, no logging.
        std::process::exit(ipclink_csi::node::charge::run_helper(
            &helper.procs,
            &helper.file,
            helper.size,
        ));
    }
    ipclink_runtime::init_logging();
    ipclink_runtime::raise_open_files_limit();
    ipclink_runtime::tokio_runtime(Some(2))?.block_on(ipclink_csi::serve::run(cli))
}
