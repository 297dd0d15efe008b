//! ipclink-core: the `IpcLink` resource, its validation, safe materialization of its
//! objects in a directory, depth probes and the metric families. No network, no client.

pub mod fault;
pub mod fs;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod report;
pub mod sample;
pub mod store;

pub use kube::CustomResourceExt;
pub use model::load::{load_plans, parse_link_value, parse_links, yaml_documents};
pub use model::names::LinkKey;
pub use model::spec::{
    Channel, ChannelKind, IpcLink, IpcLinkSpec, IpcLinkStatus, Semaphore, SemaphoreAbi,
};
pub use model::validate::{
    LinkPlan, ObjectKind, ObjectPlan, Problem, Problems, RootPlan, validate,
};
pub use store::{
    InProcess, MaterializeError, Outcome, Preallocate, PreallocateError, Record, StorageMode, Store,
};
