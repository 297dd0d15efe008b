//! ipclink-operator: reconciles IpcLinks — validation, co-scheduling of members,
//! permission checks, persistent-mode volumes, status, Events and metrics.
//!
//! Stages, each a module: `cache` holds what the watches list; `plan` turns a link, its
//! pods and what was observed into a status (pure: no client, no clock); `reconcile`
//! applies it (claims, status, Events, the finalizer); `gather` fetches depths from the
//! node plugins; `run` wires the process. `pods` reads what a pod says; `provision`,
//! `leader`, `metrics` and `remove` (the uninstall hook) run beside them.

pub mod cache;
pub mod cli;
pub mod crd;
pub mod gather;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod pods;
pub mod provision;
pub mod reconcile;
pub mod remove;
pub mod run;
