//! The commands of `ipclink-sidecar`, one module each; [`run`] runs the one the command
//! line names.

pub mod ready;
pub mod reset;
pub mod status;
pub mod up;
pub mod volume_plugin;

use std::net::SocketAddr;

use ipclink_core::{Problem, Problems};
use ipclink_runtime::Shutdown;

use crate::Error;
use crate::cli::{Cli, Command};
use crate::links::load_files;

/// Runs the command of `cli`.
pub fn run(cli: Cli) -> Result<(), Error> {
    let runtime = || {
        ipclink_runtime::tokio_runtime(Some(2)).map_err(|source| Error::Io {
            what: "start runtime".into(),
            source,
        })
    };
    match cli.command {
        Command::Up(args) => runtime().and_then(|rt| rt.block_on(up::up(args))),
        Command::VolumePlugin(args) => {
            runtime().and_then(|rt| rt.block_on(volume_plugin::volume_plugin(args)))
        }
        Command::Ready { listen } => ready::ready(listen),
        Command::Reset(args) => match args.volume_plugin.clone() {
            Some(socket) => {
                runtime().and_then(|rt| rt.block_on(reset::volumes(&socket, &args.targets)))
            }
            None => reset::links(&args),
        },
        Command::Validate { files } => load_files(&files).map(|plans| {
            for p in &plans {
                println!(
                    "{}/{}: valid ({} objects, sizeLimit {} bytes)",
                    p.namespace,
                    p.name,
                    p.objects.len(),
                    p.size_limit
                );
            }
        }),
        Command::Status {
            root,
            endpoint,
            json,
        } => status::run(root, endpoint, json, runtime),
    }
}

pub(crate) fn install_shutdown() -> Result<Shutdown, Error> {
    Shutdown::install().map_err(|source| Error::Io {
        what: "install signal handlers".into(),
        source,
    })
}

/// Refuses to serve unauthenticated metrics on `listen` off loopback unless `insecure`.
pub(crate) fn check_listen(listen: SocketAddr, insecure: bool) -> Result<(), Error> {
    if listen.ip().is_loopback() || insecure {
        return Ok(());
    }
    Err(Error::Invalid(Problems(vec![Problem::new(
        "--listen",
        format!(
            "{listen} is not a loopback address, and /metrics and /v1/links are served there without authentication; use 127.0.0.1, or add --insecure-listen to let anyone who can connect read them"
        ),
    )])))
}
