//! The `IpcLink` custom resource: one type for Kubernetes, Compose and local use.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// API group of every ipclink resource.
pub const GROUP: &str = "ipclink.dev";
/// Served version of the `IpcLink` kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "ipclink.dev/v1alpha1";
/// Kind name.
pub const KIND: &str = "IpcLink";

/// Desired state of a link: the IPC objects that member pods share on one node.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ipclink.dev",
    version = "v1alpha1",
    kind = "IpcLink",
    namespaced,
    shortname = "ipcl",
    status = "IpcLinkStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","priority":1,"jsonPath":".status.nodeCount"}"#,
    // Counts, not name lists: a JSONPath array column shows only its first element.
    printcolumn = r#"{"name":"Channels","type":"integer","jsonPath":".status.channelCount"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.memberCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.channels) || !has(self.semaphores) || !self.channels.exists(c, self.semaphores.exists(s, s.name == c.name))",
    "message": "channel and semaphore names share one namespace: a name may be used once",
    "fieldPath": ".semaphores",
    "reason": "FieldValueInvalid"
}, {
    "rule": "!has(self.scope) || self.scope != 'Node' || !has(self.claim)",
    "message": "a node-scoped link has an instance on every node where a member mounts it and no claim: remove claim, or use scope: Link",
    "fieldPath": ".claim",
    "reason": "FieldValueInvalid"
}, {
    "rule": "(has(self.scope) ? self.scope : 'Link') == (has(oldSelf.scope) ? oldSelf.scope : 'Link')",
    "message": "scope cannot change on a live link: delete the link and create it again with the new scope",
    "fieldPath": ".scope",
    "reason": "FieldValueForbidden"
}, {
    "rule": "!has(self.rootMode) || (has(self.allowCreate) && self.allowCreate)",
    "message": "rootMode applies only with allowCreate: true",
    "fieldPath": ".rootMode",
    "reason": "FieldValueInvalid"
}]))]
pub struct IpcLinkSpec {
    /// tmpfs size of the whole link (a hard limit: writers get ENOSPC). Default 64Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
    /// Default owner of every object; 0:0 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Who may mount the link (pods of the same namespace only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub members: Vec<Member>,
    /// Shared-memory regions, FIFOs and socket directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub channels: Vec<Channel>,
    /// POSIX named semaphores, laid out for `sem_open`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub semaphores: Vec<Semaphore>,
    /// Members may also create, and remove their own, files, FIFOs, sockets and
    /// directories in the link, as in `/dev/shm` (programs that `shm_open(O_CREAT)` or
    /// `sem_open(O_CREAT)` their own objects): the link's root becomes sticky and
    /// writable (see `rootMode`). Declared objects stay as declared and cannot be removed
    /// or replaced by members. Default false: only the declared objects exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_create: bool,
    /// Mode of the link's root with `allowCreate`: "1777" (any member may create, like
    /// `/dev/shm`; the default) or "1770" (only members in the group `owner.gid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(1777|1770)$"))]
    pub root_mode: Option<String>,
    /// Persistent mode: the operator keeps a PersistentVolumeClaim with the link's name
    /// on a `WaitForFirstConsumer` class, so the first member picks the node and the
    /// others follow. Without it, pods use inline `csi` volumes and are placed by you.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimSpec>,
    /// `Link` (the default): one instance on one node, which every member shares.
    /// `Node`: one independent instance on every node where a member mounts the link,
    /// for a node agent and its clients; no claim, no co-scheduling. Cannot change on a
    /// live link.
    #[serde(default, skip_serializing_if = "Scope::is_link")]
    pub scope: Scope,
}

/// Where a link has its instances.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Scope {
    /// One instance on one node; every member runs there.
    #[default]
    Link,
    /// One instance on each node where a member mounts the link.
    Node,
}

impl Scope {
    /// Whether this is the default, one instance for the link.
    pub fn is_link(&self) -> bool {
        *self == Scope::Link
    }
}

/// What a member may do in the link's tree.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The link's agent: mounted read-write, like a member without a role.
    Server,
    /// Mounted read-only: may connect to sockets, open FIFOs and map regions for
    /// reading, and cannot create, remove, rename or write any file (EROFS).
    Client,
}

impl Role {
    /// The lowercase name used in YAML and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// The PersistentVolumeClaim the operator keeps for a link in persistent mode.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimSpec {
    /// StorageClass of the claim (provisioner `csi.ipclink.dev`); default `ipclink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub storage_class_name: Option<String>,
}

/// Numeric owner of an object.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// User id, 0..=4294967294.
    #[schemars(range(min = 0, max = 4_294_967_294_i64))]
    pub uid: i64,
    /// Group id, 0..=4294967294.
    #[schemars(range(min = 0, max = 4_294_967_294_i64))]
    pub gid: i64,
}

/// A named set of pods allowed to mount the link.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    /// Member name, referenced by channels' `readers` and `writers`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Pods of the link's namespace that are this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// `server` or `client` (read-only mount); unset: read-write, like a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// What a channel is on disk.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// A regular file preallocated to `size`, for `shm_open`.
    Shm,
    /// A named pipe.
    Fifo,
    /// A directory in which members bind path Unix sockets.
    Socket,
    /// A message queue (`mq.NAME`, ipclink-queue's layout): `capacity` messages of up to
    /// `messageSize` bytes, preallocated.
    Queue,
}

impl ChannelKind {
    /// The lowercase name used in YAML, metrics and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Shm => "shm",
            ChannelKind::Fifo => "fifo",
            ChannelKind::Socket => "socket",
            ChannelKind::Queue => "queue",
        }
    }
}

/// One channel of a link.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.kind == 'shm' ? has(self.size) : !has(self.size)",
    "message": "size is required for an shm channel and not allowed for other kinds",
    "fieldPath": ".size",
    "reason": "FieldValueInvalid"
}, {
    "rule": "self.kind == 'queue' ? has(self.capacity) : !has(self.capacity)",
    "message": "capacity is required for a queue channel and not allowed for other kinds",
    "fieldPath": ".capacity",
    "reason": "FieldValueInvalid"
}, {
    "rule": "self.kind == 'queue' ? has(self.messageSize) : !has(self.messageSize)",
    "message": "messageSize is required for a queue channel and not allowed for other kinds",
    "fieldPath": ".messageSize",
    "reason": "FieldValueInvalid"
}, {
    "rule": "!has(self.mode) || self.kind == 'socket' || size(self.mode) < 4 || self.mode.startsWith('0')",
    "message": "the sticky bit (mode \"1xxx\") is allowed only on socket channels",
    "fieldPath": ".mode",
    "reason": "FieldValueInvalid"
}]))]
pub struct Channel {
    /// DNS label; the object's file name in the link directory.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// shm, fifo, socket or queue.
    pub kind: ChannelKind,
    /// Size of an shm region (required for shm, not allowed otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Messages a queue holds, 1..=65536 (required for queue, not allowed otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65_536))]
    pub capacity: Option<i64>,
    /// Largest message of a queue, 1 byte to 16Mi (required for queue, not allowed
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_size: Option<Quantity>,
    /// Octal permission bits, e.g. "0660".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Owner of this object; defaults to the link's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Members that write to this channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub writers: Vec<String>,
    /// Members that read from this channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub readers: Vec<String>,
}

/// Memory layout of a named semaphore: which libc's `sem_open` will open it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SemaphoreAbi {
    /// glibc: file `sem.NAME`, 64-bit value+waiters word, then the private flag.
    #[default]
    Glibc,
    /// musl: file `NAME`, value in the first int.
    Musl,
}

impl SemaphoreAbi {
    /// The lowercase name used in YAML and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            SemaphoreAbi::Glibc => "glibc",
            SemaphoreAbi::Musl => "musl",
        }
    }
}

/// One POSIX named semaphore.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.mode) || size(self.mode) < 4 || self.mode.startsWith('0')",
    "message": "the sticky bit (mode \"1xxx\") is allowed only on socket channels",
    "fieldPath": ".mode",
    "reason": "FieldValueInvalid"
}]))]
pub struct Semaphore {
    /// DNS label; `sem_open("/NAME")` opens it.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Initial value, 0..=2147483647.
    #[serde(default)]
    #[schemars(range(min = 0, max = 2_147_483_647))]
    pub initial: i64,
    /// glibc (default) or musl layout.
    #[serde(default)]
    pub abi: SemaphoreAbi,
    /// Octal permission bits, default "0660".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Owner; defaults to the link's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// Observed state, written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpcLinkStatus {
    /// Pending, Ready, Degraded, Invalid or Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Node on which the link lives (a link with `scope: Link`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The nodes where member pods run, with how many on each (a link with
    /// `scope: Node`: each of these nodes holds its own instance once a member mounts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeInstance>,
    /// How many nodes hold member pods (`nodes` lists at most 256; printed by
    /// `kubectl get ipcl -o wide`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i32>,
    /// Accepted, Scheduled, MembersReady, PermissionsConsistent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods matched by `members`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Last observed depth per channel: every declared one, then at most 64 of the
    /// objects members created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelStatus>,
    /// Objects members created (`allowCreate`), all of them, including those beyond
    /// `channels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_objects: Option<u64>,
    /// When the node plugin reported the figures in `channels` (a later report of the
    /// same figures does not rewrite it, so status is written only when they change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depths_observed_time: Option<Time>,
    /// The link's node plugin has not answered for several depth intervals: `channels`
    /// lists the objects without figures until it answers again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub depths_stale: bool,
    /// Channels and semaphores declared (printed by `kubectl get ipcl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_count: Option<i32>,
    /// Pods currently matched by `members` (printed by `kubectl get ipcl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_count: Option<i32>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Lifecycle phase of a link.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, not yet usable.
    Pending,
    /// Every member can use every channel.
    Ready,
    /// Usable, with a problem shown in the conditions.
    Degraded,
    /// The spec is wrong; see the Accepted condition.
    Invalid,
    /// Deletion waits for members to unmount.
    Terminating,
}

/// The member pods of a node-scoped link on one node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInstance {
    /// Node name.
    pub node: String,
    /// Member pods on that node.
    pub members: i32,
    /// Of those, pods with the link mounted.
    pub mounted: i32,
}

/// One pod matched by a member selector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member name from the spec.
    pub member: String,
    /// Pod name.
    pub pod: String,
    /// Node the pod runs on, if scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Whether the pod has the link mounted.
    #[serde(default)]
    pub mounted: bool,
}

/// Last observed depth of one channel or semaphore.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// Channel or semaphore name.
    pub name: String,
    /// shm, fifo, socket or semaphore.
    pub kind: String,
    /// Bytes queued (fifo, socket); absent for shm (a region has no depth) and while the
    /// depth cannot be observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<u64>,
    /// Semaphore value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// A member created it (`allowCreate`); not declared in the spec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovered: bool,
}

/// A Kubernetes quantity as written by the user ("64Mi", "1G", 4096).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantity(pub String);

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quantity such as \"64Mi\" or an integer number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            // Negative and fractional numbers are kept so that validation names them.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }
        d.deserialize_any(QuantityVisitor)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    /// No `anyOf`: kube's structural rewrite drops `type` from its branches, after
    /// which a string passed the integer branch (`minimum` checks only numbers) and a
    /// negative number the string branch. `pattern` and `maxLength` check strings only;
    /// the rule checks whole numbers (strings are the validator's: zero, fractions and
    /// sizes over the maximum are refused there, naming the field).
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "maxLength": 32,
            "pattern": "^\\+?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][0-9]+|[KMGTPE]i|[kMGTPE])?$",
            "x-kubernetes-validations": [{
                "rule": format!("type(self) != int || (self >= 1 && self <= {})", crate::model::quantity::MAX_BYTES),
                "message": "must be a whole number of bytes from 1 to 1Ti, or a quantity such as \"64Mi\"",
                "reason": "FieldValueInvalid"
            }]
        })
    }
}

/// Octal permission bits as a quoted string ("0660").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mode(pub String);

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quoted octal string such as \"0660\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mode, E> {
                Ok(Mode(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "mode must be a quoted octal string such as \"0660\"; YAML reads the unquoted {v} as a number"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Mode, E> {
                self.visit_u64(v.abs() as u64)
            }
        }
        d.deserialize_any(ModeVisitor)
    }
}

impl JsonSchema for Mode {
    fn schema_name() -> Cow<'static, str> {
        "Mode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The sticky bit ("1770") is for socket channels only: a rule on the channel and
        // the semaphore says so.
        json_schema!({"type": "string", "pattern": "^[01]?[0-7]{3}$"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_crd_has_the_names_users_type() {
        let crd = serde_json::to_value(IpcLink::crd()).expect("crd");
        let spec = &crd["spec"];
        assert_eq!(crd["metadata"]["name"], "ipclinks.ipclink.dev");
        assert_eq!(spec["group"], GROUP);
        assert_eq!(spec["scope"], "Namespaced");
        assert_eq!(spec["names"]["kind"], KIND);
        assert_eq!(spec["names"]["shortNames"][0], "ipcl");
        let version = &spec["versions"][0];
        assert_eq!(version["name"], VERSION);
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("printer columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            ["Phase", "Node", "Nodes", "Channels", "Members", "Age"]
        );
    }
}
