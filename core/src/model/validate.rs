//! Validation: every problem of a link at once, each with its field path, and on success a
//! typed [`LinkPlan`] that the materializer and probes use (parse, don't re-check).

use crate::model::names::check_dns_label;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::quantity::{format_bytes, parse_bytes};
use crate::model::spec::{ChannelKind, IpcLink, Mode, Owner, SemaphoreAbi};

/// tmpfs size of a link whose spec gives no `sizeLimit`.
pub const DEFAULT_SIZE_LIMIT: u64 = 64 << 20;
/// Largest semaphore value (SEM_VALUE_MAX on Linux).
pub const SEM_VALUE_MAX: i64 = 2_147_483_647;
/// Largest uid/gid (`(uid_t)-1` means "no change" to chown, so it is refused).
pub const MAX_ID: i64 = 4_294_967_294;
/// Inodes a link's tmpfs counts per declared object: the object's own, and one more for
/// ipclink's mark on it: tmpfs (Linux 6.6 and later) takes extended attributes, by
/// their size, from the space of `nr_inodes` (1 KiB per inode), which members share.
pub const INODES_PER_OBJECT: u64 = 2;
/// Inodes a link's tmpfs gets beyond its declared objects, for files members make.
pub const SPARE_INODES: u64 = 1024;
/// Spare inodes of a link whose members may create objects (`allowCreate`).
pub const SPARE_INODES_CREATE: u64 = 4096;
/// Further inodes per socket channel, for the sockets members bind in it.
pub const INODES_PER_SOCKET_DIR: u64 = 16;
/// tmpfs accounts in pages.
pub const PAGE: u64 = 4096;
/// Bytes of a named semaphore object, glibc and musl alike on 64-bit Linux.
pub const SEM_BYTES: u64 = 32;

/// One thing wrong with a spec: where, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Field path such as `spec.channels[1].mode`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl Problem {
    /// A problem at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// What one declared object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ObjectKind {
    /// Regular file preallocated to `size` bytes.
    Shm {
        /// Bytes.
        size: u64,
    },
    /// Named pipe.
    Fifo,
    /// Directory for path sockets.
    Socket,
    /// Message queue file (ipclink-queue's layout), preallocated.
    Queue {
        /// Messages it holds.
        capacity: u32,
        /// Largest message, bytes.
        message_size: u32,
    },
    /// Named semaphore file.
    Semaphore {
        /// Initial value.
        initial: u32,
        /// Layout.
        abi: SemaphoreAbi,
    },
}

impl ObjectKind {
    /// The kind's name in metrics and tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            ObjectKind::Shm { .. } => ChannelKind::Shm.as_str(),
            ObjectKind::Fifo => ChannelKind::Fifo.as_str(),
            ObjectKind::Socket => ChannelKind::Socket.as_str(),
            ObjectKind::Queue { .. } => ChannelKind::Queue.as_str(),
            ObjectKind::Semaphore { .. } => "semaphore",
        }
    }

    /// A queue's sizes, as ipclink-queue takes them.
    pub fn queue_params(&self) -> Option<ipclink_queue::Params> {
        match *self {
            ObjectKind::Queue {
                capacity,
                message_size,
            } => Some(ipclink_queue::Params {
                capacity,
                message_size,
            }),
            _ => None,
        }
    }
}

/// One object to materialize, with everything resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectPlan {
    /// Channel or semaphore name (a validated DNS label).
    pub name: String,
    /// Where it came from in the spec, for error messages.
    pub field: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: ObjectKind,
    /// Permission bits (no setuid, setgid or sticky).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

impl ObjectPlan {
    /// File name inside the link directory; built only from a validated DNS label, so it
    /// never holds `/`, `.` or `..` (glibc keeps semaphore NAME as `sem.NAME`).
    pub fn file_name(&self) -> String {
        match self.kind {
            ObjectKind::Semaphore {
                abi: SemaphoreAbi::Glibc,
                ..
            } => format!("sem.{}", self.name),
            // Apart from `shm_open("/NAME")`'s file, as glibc keeps semaphores apart.
            ObjectKind::Queue { .. } => format!("mq.{}", self.name),
            _ => self.name.clone(),
        }
    }
}

/// The link's root directory: who may create objects in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootPlan {
    /// Permission bits, with the sticky bit when members may create (`allowCreate`).
    pub mode: u32,
    /// Owner uid (always root: the sticky bit then protects every member's objects).
    pub uid: u32,
    /// Owner gid (`owner.gid` for a group-only root, "1770").
    pub gid: u32,
}

impl Default for RootPlan {
    /// Members use the declared objects and cannot add or remove entries.
    fn default() -> Self {
        RootPlan {
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }
}

impl RootPlan {
    /// Whether members may create objects (the root is writable and sticky).
    pub fn allows_create(&self) -> bool {
        self.mode & 0o1000 != 0
    }
}

/// A validated link, ready to materialize.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkPlan {
    /// Namespace (DNS label; "default" when the document has none).
    pub namespace: String,
    /// Link name (DNS label).
    pub name: String,
    /// tmpfs `size=` in bytes, a multiple of the page size.
    pub size_limit: u64,
    /// tmpfs `nr_inodes=`.
    pub nr_inodes: u64,
    /// Channels, then semaphores, in spec order.
    pub objects: Vec<ObjectPlan>,
    /// The root directory (records written before `allowCreate` existed read as the
    /// default, a closed root).
    #[serde(default)]
    pub root: RootPlan,
}

impl LinkPlan {
    /// The link's namespace and name as one key.
    pub fn key(&self) -> crate::LinkKey {
        crate::LinkKey::new(&self.namespace, &self.name)
    }

    /// A short fingerprint of the plan (FNV-1a of its JSON form): the same spec gives
    /// the same digest in every ipclink process of one release, so the operator can tell
    /// whether a node serves the spec it sees.
    pub fn digest(&self) -> String {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in body {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Parses an octal mode string; refuses setuid, setgid and sticky bits.
pub fn parse_mode(mode: &Mode) -> Result<u32, String> {
    parse_mode_with(mode, false)
}

/// Parses the mode of a socket directory: permission bits, and the sticky bit, with
/// which a member can unlink only its own sockets.
pub fn parse_socket_mode(mode: &Mode) -> Result<u32, String> {
    parse_mode_with(mode, true)
}

fn parse_mode_with(mode: &Mode, sticky: bool) -> Result<u32, String> {
    let s = mode.0.as_str();
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let allowed = if sticky {
        "an octal string of permission bits from \"0000\" to \"0777\", with the sticky bit (\"1000\") allowed, e.g. \"1770\""
    } else {
        "an octal string of permission bits from \"0000\" to \"0777\", e.g. \"0660\""
    };
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("{s:?} is not {allowed}"));
    }
    let bits = u32::from_str_radix(digits, 8).map_err(|_| format!("{s:?} is not {allowed}"))?;
    let refused = if sticky { 0o6000 } else { 0o7000 };
    if bits & refused != 0 {
        let which: Vec<&str> = [(0o4000, "setuid"), (0o2000, "setgid"), (0o1000, "sticky")]
            .iter()
            .filter(|(bit, _)| bits & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        let only = if sticky {
            "only permission bits \"0000\" to \"0777\" and the sticky bit (socket channels) are allowed"
        } else {
            "only permission bits \"0000\" to \"0777\" are allowed (the sticky bit only on socket channels)"
        };
        return Err(format!(
            "{s:?} sets the {} bit; {only}",
            which.join(" and ")
        ));
    }
    Ok(bits)
}

fn check_owner(owner: &Owner, field: &str, problems: &mut Vec<Problem>) -> (u32, u32) {
    let mut one = |value: i64, name: &str| -> u32 {
        if (0..=MAX_ID).contains(&value) {
            value as u32
        } else {
            problems.push(Problem::new(
                format!("{field}.{name}"),
                format!("{value} is out of range; allowed 0 to {MAX_ID}"),
            ));
            0
        }
    };
    (one(owner.uid, "uid"), one(owner.gid, "gid"))
}

/// A queue channel's capacity and message size, each refused naming its field and
/// what is allowed (Linux's own bounds for message queues).
fn queue_kind(c: &crate::Channel, field: &str, problems: &mut Vec<Problem>) -> ObjectKind {
    use ipclink_queue::layout::{MAX_CAPACITY, MAX_MESSAGE_SIZE};
    let capacity = match c.capacity {
        Some(n) if (1..=i64::from(MAX_CAPACITY)).contains(&n) => n as u32,
        Some(n) => {
            problems.push(Problem::new(
                format!("{field}.capacity"),
                format!("{n} is out of range; allowed 1 to {MAX_CAPACITY} messages"),
            ));
            1
        }
        None => {
            problems.push(Problem::new(
                format!("{field}.capacity"),
                "is required for a queue channel (messages it holds, e.g. 64)",
            ));
            1
        }
    };
    let message_size = match &c.message_size {
        Some(q) => match parse_bytes(&q.0) {
            Ok(n) if n <= u64::from(MAX_MESSAGE_SIZE) => n as u32,
            Ok(n) => {
                problems.push(Problem::new(
                    format!("{field}.messageSize"),
                    format!("{n} bytes is too large; allowed 1 byte to 16Mi"),
                ));
                1
            }
            Err(e) => {
                problems.push(Problem::new(format!("{field}.messageSize"), e.to_string()));
                1
            }
        },
        None => {
            problems.push(Problem::new(
                format!("{field}.messageSize"),
                "is required for a queue channel (bytes, e.g. \"8Ki\")",
            ));
            1
        }
    };
    ObjectKind::Queue {
        capacity,
        message_size,
    }
}

fn round_up_page(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE) * PAGE
}

/// Validates a link and resolves it into a [`LinkPlan`], or returns every problem.
pub fn validate(link: &IpcLink) -> Result<LinkPlan, Problems> {
    let mut problems = Vec::new();
    let name = link.metadata.name.clone().unwrap_or_default();
    if let Err(e) = check_dns_label(&name) {
        problems.push(Problem::new("metadata.name", e));
    }
    let namespace = link
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if let Err(e) = check_dns_label(&namespace) {
        problems.push(Problem::new("metadata.namespace", e));
    }
    let spec = &link.spec;

    let size_limit = match &spec.size_limit {
        None => DEFAULT_SIZE_LIMIT,
        Some(q) => match parse_bytes(&q.0) {
            Ok(v) => round_up_page(v),
            Err(e) => {
                problems.push(Problem::new("spec.sizeLimit", e.to_string()));
                DEFAULT_SIZE_LIMIT
            }
        },
    };
    if let Some(class) = spec
        .claim
        .as_ref()
        .and_then(|c| c.storage_class_name.as_ref())
    {
        let ok = !class.is_empty()
            && class.len() <= 253
            && class.split('.').all(|part| check_dns_label(part).is_ok());
        if !ok {
            problems.push(Problem::new(
                "spec.claim.storageClassName",
                format!(
                    "{:?} is not a StorageClass name: DNS labels joined by '.', at most 253 characters",
                    class.escape_debug().to_string()
                ),
            ));
        }
    }
    let default_owner = match &spec.owner {
        Some(o) => check_owner(o, "spec.owner", &mut problems),
        None => (0, 0),
    };
    let root = check_root(spec, default_owner.1, &mut problems);
    problems.extend(
        crate::model::roles::problems(spec)
            .into_iter()
            .map(|(field, message)| Problem::new(field, message)),
    );

    let mut members = BTreeSet::new();
    for (i, m) in spec.members.iter().enumerate() {
        let field = format!("spec.members[{i}].name");
        if let Err(e) = check_dns_label(&m.name) {
            problems.push(Problem::new(field, e));
        } else if !members.insert(m.name.as_str()) {
            problems.push(Problem::new(
                field,
                format!(
                    "member {:?} is declared twice; member names must be unique",
                    m.name
                ),
            ));
        }
    }

    // Channel and semaphore names share one namespace: a musl semaphore `x` and a channel
    // `x` would be the same file.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut claim = |name: &str, field: &str, problems: &mut Vec<Problem>| {
        if let Err(e) = check_dns_label(name) {
            problems.push(Problem::new(format!("{field}.name"), e));
        } else if let Some(first) = names.get(name) {
            problems.push(Problem::new(
                format!("{field}.name"),
                format!("{name:?} is already used by {first}; channel and semaphore names must be unique together"),
            ));
        } else {
            names.insert(name.to_owned(), field.to_owned());
        }
    };

    let mut objects = Vec::new();
    let mut used = 0u64;
    for (i, c) in spec.channels.iter().enumerate() {
        let field = format!("spec.channels[{i}]");
        claim(&c.name, &field, &mut problems);
        let kind = match (c.kind, &c.size) {
            (ChannelKind::Shm, Some(q)) => match parse_bytes(&q.0) {
                Ok(size) => {
                    used = used.saturating_add(round_up_page(size));
                    ObjectKind::Shm { size }
                }
                Err(e) => {
                    problems.push(Problem::new(format!("{field}.size"), e.to_string()));
                    ObjectKind::Shm { size: 0 }
                }
            },
            (ChannelKind::Shm, None) => {
                problems.push(Problem::new(
                    format!("{field}.size"),
                    "is required for an shm channel (e.g. \"64Mi\")",
                ));
                ObjectKind::Shm { size: 0 }
            }
            (other, Some(_)) => {
                problems.push(Problem::new(
                    format!("{field}.size"),
                    format!("is allowed only for shm channels, not {}", other.as_str()),
                ));
                ObjectKind::Fifo
            }
            (ChannelKind::Fifo, None) => ObjectKind::Fifo,
            (ChannelKind::Socket, None) => ObjectKind::Socket,
            (ChannelKind::Queue, None) => {
                let kind = queue_kind(c, &field, &mut problems);
                if let Some(p) = kind.queue_params() {
                    used = used.saturating_add(round_up_page(p.file_size()));
                }
                kind
            }
        };
        if c.kind != ChannelKind::Queue {
            for (set, name) in [
                (c.capacity.is_some(), "capacity"),
                (c.message_size.is_some(), "messageSize"),
            ] {
                if set {
                    problems.push(Problem::new(
                        format!("{field}.{name}"),
                        format!(
                            "is allowed only for queue channels, not {}",
                            c.kind.as_str()
                        ),
                    ));
                }
            }
        }
        // A socket directory is sticky by default: a member can unlink only the sockets
        // it bound, not another member's.
        let socket = c.kind == ChannelKind::Socket;
        let default_mode = if socket { 0o1770 } else { 0o660 };
        let mode = match &c.mode {
            None => default_mode,
            Some(m) => parse_mode_with(m, socket).unwrap_or_else(|e| {
                problems.push(Problem::new(format!("{field}.mode"), e));
                default_mode
            }),
        };
        let (uid, gid) = match &c.owner {
            Some(o) => check_owner(o, &format!("{field}.owner"), &mut problems),
            None => default_owner,
        };
        for (list, role) in [(&c.writers, "writers"), (&c.readers, "readers")] {
            for (j, who) in list.iter().enumerate() {
                if !members.contains(who.as_str()) {
                    let declared: Vec<&str> = members.iter().copied().collect();
                    problems.push(Problem::new(
                        format!("{field}.{role}[{j}]"),
                        format!(
                            "{who:?} is not a member of this link; declared members: [{}]",
                            declared.join(", ")
                        ),
                    ));
                }
            }
        }
        objects.push(ObjectPlan {
            name: c.name.clone(),
            field,
            kind,
            mode,
            uid,
            gid,
        });
    }
    for (i, s) in spec.semaphores.iter().enumerate() {
        let field = format!("spec.semaphores[{i}]");
        claim(&s.name, &field, &mut problems);
        let initial = if (0..=SEM_VALUE_MAX).contains(&s.initial) {
            s.initial as u32
        } else {
            problems.push(Problem::new(
                format!("{field}.initial"),
                format!(
                    "{} is out of range; allowed 0 to {SEM_VALUE_MAX} (SEM_VALUE_MAX)",
                    s.initial
                ),
            ));
            0
        };
        let mode = match &s.mode {
            None => 0o660,
            Some(m) => parse_mode(m).unwrap_or_else(|e| {
                problems.push(Problem::new(format!("{field}.mode"), e));
                0o660
            }),
        };
        let (uid, gid) = match &s.owner {
            Some(o) => check_owner(o, &format!("{field}.owner"), &mut problems),
            None => default_owner,
        };
        used = used.saturating_add(PAGE);
        objects.push(ObjectPlan {
            name: s.name.clone(),
            field,
            kind: ObjectKind::Semaphore {
                initial,
                abi: s.abi,
            },
            mode,
            uid,
            gid,
        });
    }
    if used > size_limit {
        problems.push(Problem::new(
            "spec.sizeLimit",
            format!(
                "{} is smaller than what the channels and semaphores need ({}: shm sizes rounded up to 4Ki pages, plus 4Ki per semaphore); raise sizeLimit to at least {}",
                format_bytes(size_limit),
                format_bytes(used),
                format_bytes(used)
            ),
        ));
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    Ok(LinkPlan {
        nr_inodes: INODES_PER_OBJECT * objects.len() as u64
            + if root.allows_create() {
                SPARE_INODES_CREATE
            } else {
                SPARE_INODES
            }
            + INODES_PER_SOCKET_DIR
                * objects
                    .iter()
                    .filter(|o| o.kind == ObjectKind::Socket)
                    .count() as u64,
        namespace,
        name,
        size_limit,
        objects,
        root,
    })
}

impl LinkPlan {
    /// Bytes the declared objects take on the tmpfs from the start: shm regions
    /// and queues (preallocated, in whole pages) and a page per semaphore.
    pub fn preallocated_bytes(&self) -> u64 {
        self.objects
            .iter()
            .map(|o| match o.kind {
                ObjectKind::Shm { size } => round_up_page(size),
                ObjectKind::Queue { .. } => o
                    .kind
                    .queue_params()
                    .map_or(0, |p| round_up_page(p.file_size())),
                ObjectKind::Semaphore { .. } => PAGE,
                _ => 0,
            })
            .sum()
    }
}

/// The root directory `allowCreate` and `rootMode` ask for.
fn check_root(spec: &crate::IpcLinkSpec, owner_gid: u32, problems: &mut Vec<Problem>) -> RootPlan {
    let allowed = "\"1777\" (any member may create, like /dev/shm) or \"1770\" (members in the group owner.gid)";
    match (spec.allow_create, spec.root_mode.as_deref()) {
        (false, None) => RootPlan::default(),
        (false, Some(_)) => {
            problems.push(Problem::new(
                "spec.rootMode",
                "applies only with allowCreate: true (without it members cannot create objects and the root is 0755)",
            ));
            RootPlan::default()
        }
        (true, None | Some("1777")) => RootPlan {
            mode: 0o1777,
            uid: 0,
            gid: 0,
        },
        (true, Some("1770")) => {
            if spec.owner.is_none() {
                problems.push(Problem::new(
                    "spec.rootMode",
                    "\"1770\" lets the group owner.gid create objects; set spec.owner",
                ));
            }
            RootPlan {
                mode: 0o1770,
                uid: 0,
                gid: owner_gid,
            }
        }
        (true, Some(other)) => {
            problems.push(Problem::new(
                "spec.rootMode",
                format!(
                    "{:?} is not allowed; use {allowed}",
                    other.escape_debug().to_string()
                ),
            ));
            RootPlan::default()
        }
    }
}
