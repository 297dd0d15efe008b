//! ipclink-core: the `IpcLink` resource, its validation, safe materialization of its
//! objects in a directory, depth probes and the metric families. No network, no client.

pub mod access;
mod closer;
pub mod created;
pub mod fs;
pub mod holders;
pub(crate) mod live;
pub mod load;
pub mod materialize;
pub mod members;
pub mod metrics;
pub mod names;
pub(crate) mod ownership;
pub mod probe;
pub mod quantity;
mod record;
pub mod report;
mod resize;
pub mod sockdiag;
pub mod spec;
pub mod validate;

pub use kube::CustomResourceExt;
pub use load::{load_plans, parse_link_value, parse_links, yaml_documents};
pub use materialize::{
    InProcess, MaterializeError, Outcome, Preallocate, PreallocateError, Record, StorageMode, Store,
};
pub use spec::{
    Channel, ChannelKind, IpcLink, IpcLinkSpec, IpcLinkStatus, Semaphore, SemaphoreAbi,
};
pub use validate::{LinkPlan, ObjectKind, ObjectPlan, Problem, Problems, RootPlan, validate};
