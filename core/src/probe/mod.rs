//! Depth probes that never change who is a reader or writer of a channel.
//!
//! - fifo: never opened. The processes holding its ends are found first ([`Observer`]);
//!   the depth (`FIONREAD`) and capacity (`F_GETPIPE_SZ`) are read through a duplicate of
//!   one holder's descriptor (`pidfd_getfd`), and a FIFO nobody holds is empty. Where
//!   holders cannot be known the depth is left out, unless the old probe is allowed
//!   (`observe` module notes).
//! - semaphore, shm: read through a descriptor opened once (`pread`, `fstat`).
//! - socket directory: `NETLINK_SOCK_DIAG` dumps of the Unix sockets of the members'
//!   network namespaces, matched to the directory's socket files by device and inode.
//! - link: `fstatvfs` of the tmpfs root.
//! - holders of every object: the members' processes' descriptors and mappings.
//!
//! Objects members created are walked and probed the same way (`created` module).

mod closer;
pub mod created;
pub mod holders;
mod observe;
pub mod sockdiag;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::stat::fstat;
use nix::sys::statvfs::fstatvfs;

use crate::sample::{ChannelSample, LinkSample, ObjectInfo, SemaphoreSample};
pub use observe::{Observation, Observer};
pub(crate) use observe::{fifo, file_holders, sockets_at};

use crate::fs::{is_mount_point, open_dir_at};
use crate::model::spec::SemaphoreAbi;
use crate::model::validate::{LinkPlan, ObjectKind, ObjectPlan, Problem};
use crate::store::{Record, Store};
pub use sockdiag::SocketTable;

#[derive(Debug)]
struct ProbeObject {
    plan: ObjectPlan,
    /// Shared by every sample: one reference count instead of several strings.
    info: Arc<ObjectInfo>,
    /// Kept open for shm and semaphores, with its (device, inode); reopened when
    /// missing or no longer linked.
    fd: Option<(std::fs::File, (u64, u64))>,
}

/// Probes one materialized link; keeps descriptors to its regular files.
#[derive(Debug)]
pub struct LinkProbe {
    namespace: Arc<str>,
    name: Arc<str>,
    path: Arc<str>,
    link: OwnedFd,
    dev: u64,
    enforced: bool,
    size_limit: u64,
    preallocated: u64,
    objects: Vec<ProbeObject>,
    /// File names of the declared objects, which the walk for created ones skips.
    declared: HashSet<String>,
    /// Whether members may create objects (and so bind sockets anywhere in the link).
    allow_create: bool,
    /// Directory listings of the walk for created objects, reused while unchanged.
    listings: crate::probe::created::Listings,
    /// Each channel's last depth and since when it has been so, by file.
    /// The last depth (queued bytes, waiting connections) of each channel and since when.
    depths: HashMap<String, ((u64, u64), Instant)>,
    /// What of the link's spec waits for its members to leave (from its record).
    pending: Vec<Problem>,
    /// The digest of the spec last applied (from its record).
    spec: Option<String>,
    /// Bytes of extra labels the caller adds to every series (e.g. `,node="n1"`).
    extra_label_bytes: usize,
}

/// Bytes of `/v1/links` the holder lists of one link take at most; past it, the link's
/// holders are unknown (members decide how many processes hold its objects).
pub const HOLDERS_BUDGET: usize = 24 << 10;

impl LinkProbe {
    /// The probe of a link by its record: the plan it serves and what is pending.
    pub fn of_record(store: &Store, record: &Record) -> nix::Result<Self> {
        let mut probe = Self::open(store, &record.plan)?;
        probe.pending = record.pending.clone();
        probe.spec = (!record.spec.is_empty()).then(|| record.spec.clone());
        Ok(probe)
    }

    /// Opens the link's directory in `store`.
    pub fn open(store: &Store, plan: &LinkPlan) -> nix::Result<Self> {
        let ns = store.open_namespace(&plan.namespace)?;
        let link = open_dir_at(ns.as_fd(), plan.name.as_str())?;
        let dev = fstat(link.as_fd())?.st_dev;
        // Enforced when the link is its own tmpfs, whatever mode the caller's store has
        // (`status` does not know how `up` made the link).
        let enforced = is_mount_point(ns.as_fd(), link.as_fd())?
            && nix::sys::statfs::fstatfs(link.as_fd())?.filesystem_type()
                == nix::sys::statfs::TMPFS_MAGIC;
        Ok(LinkProbe {
            namespace: plan.namespace.as_str().into(),
            name: plan.name.as_str().into(),
            path: store
                .link_path(&plan.namespace, &plan.name)
                .display()
                .to_string()
                .into(),
            link,
            dev,
            enforced,
            size_limit: plan.size_limit,
            preallocated: plan.preallocated_bytes(),
            objects: plan
                .objects
                .iter()
                .map(|o| ProbeObject {
                    info: Arc::new(ObjectInfo {
                        name: o.name.clone(),
                        kind: o.kind.as_str().into(),
                        abi: match o.kind {
                            ObjectKind::Semaphore { abi, .. } => Some(abi.as_str().into()),
                            _ => None,
                        },
                        file: o.file_name(),
                        mode: format!("{:04o}", o.mode),
                        uid: o.uid,
                        gid: o.gid,
                        discovered: false,
                    }),
                    plan: o.clone(),
                    fd: None,
                })
                .collect(),
            declared: plan.objects.iter().map(ObjectPlan::file_name).collect(),
            allow_create: plan.root.allows_create(),
            listings: crate::probe::created::Listings::default(),
            depths: HashMap::new(),
            pending: Vec::new(),
            spec: None,
            extra_label_bytes: 0,
        })
    }

    /// Says how many bytes of labels the caller adds to every series of this link
    /// (`,node="n1"`), so the budget for created objects counts them.
    pub fn with_extra_label_bytes(mut self, bytes: usize) -> Self {
        self.extra_label_bytes = bytes;
        self
    }

    /// Namespace and name.
    pub fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    /// Whether sockets may be bound in the link (a socket directory, or a root members
    /// may create in), so a [`SocketTable`] is worth dumping.
    pub fn has_sockets(&self) -> bool {
        self.allow_create
            || self
                .objects
                .iter()
                .any(|o| o.plan.kind == ObjectKind::Socket)
    }

    /// Whether every declared object exists.
    pub fn all_present(&self) -> bool {
        self.objects.iter().all(|o| {
            nix::sys::stat::fstatat(
                self.link.as_fd(),
                o.info.file.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok()
        })
    }

    /// Observes every object once.
    pub fn sample(&mut self, seen: &Observation) -> LinkSample {
        let mut out = LinkSample {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            path: self.path.clone(),
            size_limit_enforced: self.enforced,
            limit_bytes: self.size_limit,
            preallocated_bytes: self.preallocated,
            holders_known: seen.holders_for(self.dev).is_some(),
            pending: self.pending.clone(),
            spec: self.spec.clone(),
            channels: Vec::with_capacity(self.objects.len()),
            ..LinkSample::default()
        };
        let link = self.link.as_fd();
        let dev = self.dev;
        let mut object_bytes = 0u64;
        for o in &mut self.objects {
            match o.plan.kind {
                ObjectKind::Semaphore { abi, .. } => {
                    let mut s = SemaphoreSample::of(o.info.clone());
                    let enforced = self.enforced;
                    if let Some((f, id)) = keep_open(link, o) {
                        let mut b = [0u8; 8];
                        if f.read_exact_at(&mut b, 0).is_ok() {
                            s.present = true;
                            let (value, waiters) = read_semaphore(&b, abi);
                            s.value = Some(value);
                            s.waiters = Some(waiters);
                        }
                        s.holders = file_holders(seen, id.0, id.1);
                        // On a tmpfs, one fstatvfs per link gives the usage instead.
                        if !enforced && let Ok(st) = fstat(f.as_fd()) {
                            object_bytes += st.st_blocks as u64 * 512;
                        }
                    }
                    out.semaphores.push(s);
                }
                kind => {
                    let mut c = ChannelSample::of(o.info.clone());
                    match kind {
                        ObjectKind::Shm { size } => {
                            if let Some((f, id)) = keep_open(link, o)
                                && let Ok(st) = fstat(f.as_fd())
                            {
                                c.present = true;
                                let actual = st.st_size as u64;
                                c.capacity_bytes = Some(actual);
                                c.declared_bytes = (actual != size).then_some(size);
                                let resident = st.st_blocks as u64 * 512;
                                c.resident_bytes = Some(resident);
                                c.holders = file_holders(seen, id.0, id.1);
                                object_bytes += resident;
                            }
                        }
                        ObjectKind::Fifo => fifo(link, &o.info.file, seen, &mut c),
                        ObjectKind::Queue { .. } => {
                            if let Some((f, id)) = keep_open(link, o) {
                                c.present = true;
                                queue(f, &mut c);
                                c.holders = file_holders(seen, id.0, id.1);
                                // Its members: the processes holding it, when they can
                                // be known (never the file's own lock records, which a
                                // member can make slow to ask).
                                if let Some(q) = &mut c.queue
                                    && seen.holders_for(dev).is_some()
                                {
                                    let mut pids: Vec<i32> =
                                        c.holders.iter().map(|h| h.pid).collect();
                                    pids.sort_unstable();
                                    pids.dedup();
                                    q.members = Some(pids.len() as u32);
                                }
                                if let Ok(st) = fstat(f.as_fd()) {
                                    object_bytes += st.st_blocks as u64 * 512;
                                }
                            }
                        }
                        _ => observe::socket_dir(link, &o.info.file, dev, seen, &mut c),
                    }
                    out.channels.push(c);
                }
            }
        }
        let labels = crate::probe::created::LinkLabels {
            namespace: &self.namespace,
            link: &self.name,
            extra_label_bytes: self.extra_label_bytes,
        };
        let found = crate::probe::created::walk(
            link,
            self.dev,
            &self.declared,
            seen,
            &mut self.listings,
            labels,
        );
        out.channels.extend(found.channels);
        out.semaphores.extend(found.semaphores);
        // Cut short, the count is unknown: left out rather than too small.
        out.walk_truncated = !found.complete;
        out.unreported_objects = if found.complete { found.unreported } else { 0 };
        object_bytes += found.bytes;
        match (self.enforced, fstatvfs(link)) {
            (true, Ok(v)) => {
                out.limit_bytes = v.blocks() * v.fragment_size();
                out.used_bytes = (v.blocks() - v.blocks_free()) * v.fragment_size();
            }
            _ => out.used_bytes = object_bytes,
        }
        self.track_depths(&mut out.channels);
        bound_holders(&mut out);
        let all_read = seen
            .holders
            .as_ref()
            .is_some_and(holders::Holders::all_read);
        stale_waiters(&mut out, all_read);
        out
    }

    /// Sets how long each channel's depth has stayed as it is (a stuck consumer is a
    /// depth that does not move; a busy one moves).
    fn track_depths(&mut self, channels: &mut [ChannelSample]) {
        let now = Instant::now();
        let mut next = HashMap::with_capacity(self.depths.len());
        for c in channels.iter_mut() {
            let Some(queued) = c.queue_bytes else {
                continue;
            };
            let depth = (queued, c.backlog_connections.unwrap_or(0));
            let since = match self.depths.remove(&c.info.file) {
                Some((was, since)) if was == depth => since,
                _ => now,
            };
            c.depth_unchanged_seconds = Some(now.duration_since(since).as_secs());
            next.insert(c.info.file.clone(), (depth, since));
        }
        self.depths = next;
    }
}

/// A waiter maps the semaphore it waits on, so it is one of its holders. With the
/// holders known, every process looked at read, and none holding it, the waiter count
/// the libc keeps is likely what waiters killed in `sem_wait` left behind: it is noted
/// (`stale_waiters`) for `status` to say so. `waiters` stays as the libc records it: a
/// process outside what was looked at (a container that is not a discovered member)
/// may still wait, and an alert on waiters must not go quiet because of it.
fn stale_waiters(sample: &mut LinkSample, all_read: bool) {
    if !sample.holders_known || !all_read {
        return;
    }
    for s in &mut sample.semaphores {
        if s.holders.is_empty() {
            s.stale_waiters = s.waiters.filter(|w| *w > 0);
        }
    }
}

/// Leaves the holders of `sample` unknown when their lists take more than
/// [`HOLDERS_BUDGET`]: absent, never cut to a smaller number.
fn bound_holders(sample: &mut LinkSample) {
    let lists = sample
        .channels
        .iter()
        .map(|c| &c.holders)
        .chain(sample.semaphores.iter().map(|m| &m.holders));
    let mut bytes = 0usize;
    for list in lists {
        for h in list {
            // Quotes, keys and separators of the JSON form, generously.
            bytes += 64 + h.role.len() + h.pod.len() + h.container.len() + h.command.len() * 6;
        }
    }
    if bytes <= HOLDERS_BUDGET {
        return;
    }
    sample.holders_known = false;
    sample.holders_unknown = Some(format!(
        "more processes hold its objects than one report names ({HOLDERS_BUDGET} bytes of holders per link)"
    ));
    for c in &mut sample.channels {
        c.holders.clear();
    }
    for m in &mut sample.semaphores {
        m.holders.clear();
    }
}

/// The object's descriptor, opened once and kept, with its (device, inode): regular
/// files only, opened through `O_PATH` first so that nothing else put at the name is
/// ever opened. One no longer linked (the link was reset, or the object replaced) is
/// opened again at its name.
fn keep_open<'a>(
    link: BorrowedFd<'_>,
    o: &'a mut ProbeObject,
) -> Option<(&'a std::fs::File, (u64, u64))> {
    if o.fd
        .as_ref()
        .is_some_and(|(f, _)| fstat(f.as_fd()).is_ok_and(|st| st.st_nlink == 0))
    {
        o.fd = None;
    }
    if o.fd.is_none() {
        let (fd, st) = crate::probe::created::open_regular(link, o.info.file.as_str())?;
        o.fd = Some((std::fs::File::from(fd), (st.st_dev, st.st_ino)));
    }
    o.fd.as_ref().map(|(f, id)| (f, *id))
}

/// A queue's depth and counters, read through `f` (read-only, `pread`: see
/// ipclink-queue's `stats`). A file that is not a readable queue any more (a member
/// wrote over its header) leaves the depth unobserved.
fn queue(f: &std::fs::File, c: &mut ChannelSample) {
    match ipclink_queue::stats::read(f) {
        Ok(s) => {
            c.queue_bytes = s.waiting_bytes;
            c.capacity_bytes =
                Some(u64::from(s.params.capacity) * u64::from(s.params.message_size));
            c.queue = Some(crate::sample::QueueSample {
                messages: s.waiting,
                capacity: s.params.capacity,
                message_size: s.params.message_size,
                oldest_sent_seconds: s.oldest_sent_ns.map(|ns| ns / 1_000_000_000),
                sent: s.sent,
                received: s.received,
                recovered: s.recovered,
                receivers_waiting: s.receivers_waiting,
                senders_waiting: s.senders_waiting,
                members: None,
            });
        }
        Err(_) => c.observed = false,
    }
}

/// (value, waiters) from the first 8 bytes of a semaphore object.
pub fn read_semaphore(b: &[u8; 8], abi: SemaphoreAbi) -> (u32, u32) {
    let lo = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let hi = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    match abi {
        // glibc (64-bit atomics): value in the low half, waiter count in the high half.
        SemaphoreAbi::Glibc => (lo, hi),
        // musl: the second int counts waiters. "Zero with waiters" is -1 up to musl 1.2.3
        // (its sem_getvalue reports negatives as 0); later musl sets the top bit instead.
        SemaphoreAbi::Musl if lo == u32::MAX => (0, hi),
        SemaphoreAbi::Musl => (lo & 0x7fff_ffff, hi),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::HolderSample;

    #[test]
    fn holders_past_the_links_share_are_unknown_not_cut() {
        let holder = |pid: i32| HolderSample {
            role: "reader".into(),
            pid,
            pod: "ns/pod-with-a-name".into(),
            container: "main".into(),
            command: "python3".into(),
        };
        let mut sample = LinkSample {
            holders_known: true,
            channels: vec![ChannelSample {
                holders: (0..100).map(holder).collect(),
                ..ChannelSample::default()
            }],
            ..LinkSample::default()
        };
        bound_holders(&mut sample);
        assert!(sample.holders_known, "100 holders fit");
        assert_eq!(sample.channels[0].holders.len(), 100);
        sample.channels[0].holders = (0..1000).map(holder).collect();
        bound_holders(&mut sample);
        assert!(!sample.holders_known);
        assert!(
            sample.channels[0].holders.is_empty(),
            "absent, never a smaller list"
        );
        assert!(
            sample
                .holders_unknown
                .as_deref()
                .is_some_and(|w| w.contains("holders per link")),
            "{:?}",
            sample.holders_unknown
        );
    }

    #[test]
    fn semaphore_words_decode_for_each_libc() {
        let word = |v: u32, w: u32| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&v.to_ne_bytes());
            b[4..].copy_from_slice(&w.to_ne_bytes());
            b
        };
        assert_eq!(read_semaphore(&word(5, 0), SemaphoreAbi::Glibc), (5, 0));
        assert_eq!(read_semaphore(&word(0, 2), SemaphoreAbi::Glibc), (0, 2));
        assert_eq!(read_semaphore(&word(7, 0), SemaphoreAbi::Musl), (7, 0));
        assert_eq!(
            read_semaphore(&word(u32::MAX, 1), SemaphoreAbi::Musl),
            (0, 1)
        ); // musl <= 1.2.3
        assert_eq!(
            read_semaphore(&word(0x8000_0000, 1), SemaphoreAbi::Musl),
            (0, 1)
        ); // later musl
    }
}
