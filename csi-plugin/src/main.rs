//! `ipclink-csi node|controller`: parses flags and starts the runtime; the work is in the
//! library (`serve::run`).

use clap::Parser;
use ipclink_csi::cli::Cli;

fn main() -> anyhow::Result<()> {
    ipclink_runtime::init_logging();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(ipclink_csi::serve::run(cli))
}
