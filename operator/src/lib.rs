//! ipclink-operator: reconciles IpcLinks — validation, co-scheduling of members,
//! permission checks, persistent-mode volumes, status, Events and metrics.
//!
//! Modules depend one way: `pods` and `conditions` know nothing of the others;
//! `permissions` reads pods into a verdict; `plan` turns a link, its pods and what was
//! observed into a status; `controller` applies it, comparing through `status`,
//! caching through `watch`, `podcache` and `linkindex`, and keeping links' claims through `claims`;
//! `provision`, `depth` and `metrics`
//! run beside it; `leader` decides whether this replica runs them; `remove` is the
//! uninstall hook.

mod claims;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod depth;
pub mod leader;
pub mod linkindex;
pub mod metrics;
pub mod permissions;
pub mod plan;
pub mod podcache;
pub mod pods;
pub mod provision;
pub mod remove;
pub mod status;
pub mod watch;
