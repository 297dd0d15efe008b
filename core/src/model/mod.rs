//! The `IpcLink` resource and what is decided from it alone: the spec, its validation
//! into a plan, loading from YAML, quantities, members, access rules and names. No
//! syscalls.

pub mod access;
pub mod load;
pub mod members;
pub mod names;
pub mod quantity;
pub mod roles;
pub mod spec;
pub mod validate;
