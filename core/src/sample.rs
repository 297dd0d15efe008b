//! What a probe observed of a link: the `/v1/links` format, rendered by `metrics` and
//! `report` and written by `probe`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::validate::Problem;

/// Everything observed of one link at one instant (the `/v1/links` format).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkSample {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Link name.
    pub name: Arc<str>,
    /// Directory members mount.
    pub path: Arc<str>,
    /// Whether `limitBytes` is enforced by a tmpfs (false in a plain directory).
    pub size_limit_enforced: bool,
    /// tmpfs size, or the declared limit when not enforced.
    pub limit_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Channels in spec order.
    pub channels: Vec<ChannelSample>,
    /// Semaphores in spec order.
    pub semaphores: Vec<SemaphoreSample>,
    /// Objects members created that are counted but not reported one by one: past the
    /// per-link cap ([`crate::probe::created::MAX_REPORTED`]) or the bytes a link's report may
    /// take ([`crate::probe::created::METRICS_BUDGET`], [`crate::probe::created::LINKS_BUDGET`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unreported_objects: u64,
    /// Bytes the declared objects take from the start (shm regions are preallocated):
    /// usage up to this is no sign of a filling link.
    #[serde(default)]
    pub preallocated_bytes: u64,
    /// Whether the objects' holders could be known (an empty `holders` then means
    /// nobody holds the object, not that nobody could tell).
    #[serde(default)]
    pub holders_known: bool,
    /// Whether the walk of objects members created stopped at its bound before seeing
    /// every entry: `unreportedObjects`, and in a plain directory `usedBytes`, are then
    /// unknown, and their series absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub walk_truncated: bool,
    /// Why the holders are unknown, when that is a bound of the report rather than the
    /// observer's rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders_unknown: Option<String>,
    /// Changes of the spec that wait until no member holds the link, each naming its
    /// field; empty when the link serves its spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Problem>,
    /// [`LinkPlan::digest`] of the spec the link was last given, when its record says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One channel's observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSample {
    /// Name, kind, mode and owner, shared by every sample of this object.
    #[serde(flatten)]
    pub info: Arc<ObjectInfo>,
    /// Whether the object exists.
    pub present: bool,
    /// fifo: bytes queued; socket: bytes queued on bound datagram/stream sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<u64>,
    /// fifo: pipe buffer size; shm: region size (its file's: a member may have grown it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// shm: the size the spec declares, when the region's differs from it (a member
    /// grew or shrank it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_bytes: Option<u64>,
    /// fifo: whether a reader has it open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_present: Option<bool>,
    /// socket: connections waiting in `accept` over all listening sockets in the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_connections: Option<u64>,
    /// socket: socket files in the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u64>,
    /// socket: sockets of the directory found in this network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets_visible: Option<u64>,
    /// shm: bytes of memory the region holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<u64>,
    /// fifo: whether a process holds its write end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_present: Option<bool>,
    /// Whether its depth could be observed (false: the depth values are left out, not 0).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub observed: bool,
    /// Seconds since `queue_bytes` (and for sockets the backlog) last changed, as long as
    /// this process has watched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_unchanged_seconds: Option<u64>,
    /// The processes that hold it, with what they do (when they can be known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<HolderSample>,
    /// queue: what its header and slots say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSample>,
}

/// A queue channel as read from outside (ipclink-queue's `stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueSample {
    /// Messages waiting to be received.
    pub messages: u32,
    /// Messages it holds at most.
    pub capacity: u32,
    /// Largest message, bytes.
    pub message_size: u32,
    /// When the oldest waiting message was sent (Unix seconds), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_sent_seconds: Option<u64>,
    /// Messages sent and received since the queue was made.
    pub sent: u64,
    pub received: u64,
    /// Messages given back to the queue after their receiver died mid-receive.
    #[serde(default)]
    pub recovered: u64,
    /// Processes sleeping until they can receive, or send.
    pub receivers_waiting: u32,
    pub senders_waiting: u32,
    /// Processes that hold it (have it open or mapped), when they can be known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u32>,
}

impl Default for ChannelSample {
    fn default() -> Self {
        ChannelSample::of(Arc::default())
    }
}

impl ChannelSample {
    /// A sample of the channel `info` with nothing observed yet (no allocation: a
    /// probe makes one per channel per scrape).
    pub fn of(info: Arc<ObjectInfo>) -> Self {
        ChannelSample {
            info,
            present: false,
            queue_bytes: None,
            capacity_bytes: None,
            declared_bytes: None,
            reader_present: None,
            backlog_connections: None,
            sockets: None,
            sockets_visible: None,
            resident_bytes: None,
            writer_present: None,
            observed: true,
            depth_unchanged_seconds: None,
            holders: Vec::new(),
            queue: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// One process holding an object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HolderSample {
    /// reader, writer or mapper.
    pub role: String,
    /// The process, as the observer sees it.
    pub pid: i32,
    /// Its pod (`namespace/name`) in Kubernetes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// Its container.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// Its command.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
}

impl SemaphoreSample {
    /// A sample of the semaphore `info` with nothing observed yet.
    pub fn of(info: Arc<ObjectInfo>) -> Self {
        SemaphoreSample {
            info,
            present: false,
            value: None,
            waiters: None,
            stale_waiters: None,
            holders: Vec::new(),
        }
    }
}

/// One semaphore's observation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SemaphoreSample {
    /// Name, kind ("semaphore"), abi, mode and owner, shared by every sample.
    #[serde(flatten)]
    pub info: Arc<ObjectInfo>,
    /// Whether the object exists.
    pub present: bool,
    /// Current value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// Threads blocked in `sem_wait`, as the libc records them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiters: Option<u32>,
    /// The waiter count the libc records although no process looked at maps the
    /// semaphore (holders known, every process read): likely left by waiters killed in
    /// `sem_wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_waiters: Option<u32>,
    /// The processes that have it mapped or open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<HolderSample>,
}

/// What a sample says of an object that does not change between samples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectInfo {
    /// Channel or semaphore name.
    pub name: String,
    /// shm, fifo, socket or semaphore.
    pub kind: String,
    /// Semaphore layout: glibc or musl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
    /// File name in the link directory.
    pub file: String,
    /// Permission bits as declared, octal.
    pub mode: String,
    /// Declared owner uid.
    pub uid: u32,
    /// Declared owner gid.
    pub gid: u32,
    /// A member created it (not declared); mode and owner are then as found.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovered: bool,
}

impl ObjectInfo {
    /// `declared` or `discovered`: the `origin` label of the metric families.
    pub fn origin(&self) -> &'static str {
        if self.discovered {
            "discovered"
        } else {
            "declared"
        }
    }
}
