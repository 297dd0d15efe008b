//! ipclink-sidecar: materializes IpcLinks on this machine and serves their depths.
//!
//! `links` loads, materializes and probes the links of the files; `cmd` holds the
//! commands (`up`, `volume-plugin`, `status`, `ready`); `plugin` speaks the volume
//! plugin protocol, `discover` asks the engine which containers mount a link, `reload`
//! follows edits of the files.

pub mod cli;
pub mod cmd;
pub mod discover;
mod error;
pub mod links;
pub mod plugin;
mod reload;

pub use error::Error;
