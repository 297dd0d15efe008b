//! The caches a reconcile reads: pods (with their index by link), links by the pods
//! they select, and the watch plumbing they share.

pub mod linkindex;
pub mod podcache;
pub mod watch;
