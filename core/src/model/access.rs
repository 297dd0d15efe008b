//! Whether a process's identity can use a link's objects as the spec declares: the
//! kernel's permission check (owner, then group, then other bits) run ahead of time, so
//! a mismatch is reported before it is an EACCES. Shared by the operator (pods) and the
//! sidecar (Compose services).

use crate::model::spec::ChannelKind;
use crate::{IpcLink, LinkPlan, ObjectKind, ObjectPlan};

pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const SEARCH: u32 = 1;

/// The permission bits that apply to `who` for `object` (the kernel's order: owner,
/// then group, then other); root passes everything, as with CAP_DAC_OVERRIDE.
pub fn bits_for(object: &ObjectPlan, uid: u32, groups: &[u32]) -> u32 {
    if uid == 0 {
        7
    } else if uid == object.uid {
        (object.mode >> 6) & 7
    } else if groups.contains(&object.gid) {
        (object.mode >> 3) & 7
    } else {
        object.mode & 7
    }
}

pub fn verbs(bits: u32) -> String {
    let mut v = Vec::new();
    if bits & READ != 0 {
        v.push("read");
    }
    if bits & WRITE != 0 {
        v.push("write");
    }
    if bits & SEARCH != 0 {
        v.push("enter");
    }
    v.join(" and ")
}

/// What `member` needs on `object`: readers read, writers write (an shm writer maps the
/// region read-write), and everyone needs read and write when the channel names no
/// readers and no writers. Semaphores are opened read-write by every libc. A socket
/// channel's readers are its servers, as the holder probe sees them (they bind and
/// listen: write and search on the directory), its writers the clients that connect
/// (search). A client member (`role: client`) needs only what its read-only mount can
/// use.
pub fn needs(link: &IpcLink, object: &ObjectPlan, member: &str) -> u32 {
    let client = crate::model::roles::is_client(link, member);
    let Some(channel) = link.spec.channels.iter().find(|c| c.name == object.name) else {
        // A semaphore; a client's read-only mount cannot open one at all.
        return if client { 0 } else { READ | WRITE };
    };
    if client {
        // What a read-only mount can use: connect to sockets (search), read regions,
        // both ends of FIFOs; never a queue.
        return match channel.kind {
            ChannelKind::Queue => 0,
            ChannelKind::Socket => SEARCH,
            ChannelKind::Shm => READ,
            ChannelKind::Fifo => needs_declared(channel, member) & (READ | WRITE),
        };
    }
    needs_declared(channel, member)
}

/// What `member` needs on `channel` by its readers and writers lists.
fn needs_declared(channel: &crate::Channel, member: &str) -> u32 {
    let reads = channel.readers.iter().any(|r| r == member);
    let writes = channel.writers.iter().any(|w| w == member);
    let undeclared = channel.readers.is_empty() && channel.writers.is_empty();
    let (reads, writes) = if undeclared {
        (true, true)
    } else {
        (reads, writes)
    };
    match channel.kind {
        ChannelKind::Fifo => (if reads { READ } else { 0 }) | (if writes { WRITE } else { 0 }),
        ChannelKind::Shm => {
            (if reads || writes { READ } else { 0 }) | (if writes { WRITE } else { 0 })
        }
        // Receivers write the queue too (they take messages off it).
        ChannelKind::Queue => {
            if reads || writes {
                READ | WRITE
            } else {
                0
            }
        }
        // Connecting to a socket needs search on the directory; binding one needs write.
        ChannelKind::Socket => {
            (if reads || writes { SEARCH } else { 0 }) | (if reads { WRITE } else { 0 })
        }
    }
}

/// One object a member cannot use as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Object name.
    pub object: String,
    /// "channel" or "semaphore".
    pub what: &'static str,
    /// The verbs missing, e.g. "write" or "read and write".
    pub missing: String,
    /// The object's mode bits.
    pub mode: u32,
    /// The object's owner.
    pub uid: u32,
    /// The object's group.
    pub gid: u32,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot {} {} {} (mode {:04o}, owner {}:{})",
            self.missing, self.what, self.object, self.mode, self.uid, self.gid
        )
    }
}

/// Every object of `plan` that `member`, running as `uid` with `groups`, cannot use as
/// the spec declares.
pub fn denials(
    link: &IpcLink,
    plan: &LinkPlan,
    member: &str,
    uid: u32,
    groups: &[u32],
) -> Vec<Denial> {
    plan.objects
        .iter()
        .filter_map(|object| {
            let missing = needs(link, object, member) & !bits_for(object, uid, groups);
            (missing != 0).then(|| Denial {
                object: object.name.clone(),
                what: match object.kind {
                    ObjectKind::Semaphore { .. } => "semaphore",
                    _ => "channel",
                },
                missing: verbs(missing),
                mode: object.mode,
                uid: object.uid,
                gid: object.gid,
            })
        })
        .collect()
}
