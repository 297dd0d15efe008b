//! ipclink-operator: reconciles IpcLinks — validation, co-scheduling of members,
//! permission checks, persistent-mode volumes, status, Events and metrics.

pub mod controller;
pub mod crd;
pub mod depth;
pub mod permissions;
pub mod plan;
pub mod provision;
