//! What a scrape knows beyond a link's own files, and the observations that need it:
//! who holds each object, the depth of a FIFO read through a holder's duplicated
//! descriptor (never an `open()`, which would change who is a reader or writer), and the
//! sockets of a socket channel in the network namespaces of the members that bound them.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, fcntl, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};

use super::LinkProbe;
use crate::probe::holders::{Hold, Holders, Members, PipeNow, Role};
use crate::probe::sockdiag::SocketTable;
use crate::sample::{ChannelSample, HolderSample};

/// What one scrape knows besides the links' files.
#[derive(Debug, Default)]
pub struct Observation {
    /// The Unix sockets of the network namespaces looked at.
    pub sockets: SocketTable,
    /// Whether `sockets` covers every network namespace members may bind a socket in: a
    /// socket file of a link that is not in it is then a leftover (nothing is queued on
    /// it), not a socket of an unseen namespace.
    pub sockets_complete: bool,
    /// Who holds what, when the members' processes could be read.
    pub holders: Option<Holders>,
    /// Open a FIFO's write end to read its depth when there are no holders to ask (the
    /// old probe: a reader still blocked in `open()` then sees EOF).
    pub fifo_open_probe: bool,
    /// Client sockets by the inode of the socket they are connected to.
    clients: HashMap<u64, Vec<u64>>,
}

impl Observation {
    /// Who holds what on the link with device `dev`, when that is known.
    pub fn holders_for(&self, dev: u64) -> Option<&Holders> {
        self.holders.as_ref().filter(|h| h.known_for(dev))
    }
}

impl Observation {
    /// An observation from parts; indexes the sockets' peers.
    pub fn new(
        sockets: SocketTable,
        sockets_complete: bool,
        holders: Option<Holders>,
        fifo_open_probe: bool,
    ) -> Self {
        let mut clients: HashMap<u64, Vec<u64>> = HashMap::new();
        for s in sockets.sockets() {
            if let Some(peer) = s.peer {
                clients.entry(peer).or_default().push(s.ino);
            }
        }
        Observation {
            sockets,
            sockets_complete,
            holders,
            fifo_open_probe,
            clients,
        }
    }

    /// The sockets connected to `server` (its peers).
    fn clients_of(&self, server: u64) -> &[u64] {
        self.clients.get(&server).map_or(&[], Vec::as_slice)
    }
}

/// Gathers [`Observation`]s for a set of links: scans the members' processes once per
/// scrape (reused for a second, unless a holder it saw has exited since), dumps the sockets of their network namespaces, and says
/// once in the log why holders cannot be known when they cannot.
pub struct Observer {
    members: Option<Box<dyn Members>>,
    member_netns: bool,
    fifo_open_probe: bool,
    said: Option<String>,
    last: Option<(Instant, Arc<Observation>)>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("members", &self.members.is_some())
            .field("member_netns", &self.member_netns)
            .field("fifo_open_probe", &self.fifo_open_probe)
            .finish_non_exhaustive()
    }
}

/// How long one observation serves (a /metrics and a /v1/links request of one scrape).
const REUSE: Duration = Duration::from_secs(1);

impl Default for Observer {
    /// No members: no holders; the sockets of this network namespace only.
    fn default() -> Self {
        Observer {
            members: None,
            member_netns: false,
            fifo_open_probe: false,
            said: None,
            last: None,
        }
    }
}

impl Observer {
    /// An observer of `members`' processes. With `member_netns`, the sockets of every
    /// network namespace they are in are dumped (pods, containers); without, only this
    /// namespace's (a local host). `fifo_open_probe` allows the old FIFO probe when no
    /// holders can be known.
    pub fn new(members: Box<dyn Members>, member_netns: bool, fifo_open_probe: bool) -> Self {
        Observer {
            members: Some(members),
            member_netns,
            fifo_open_probe,
            said: None,
            last: None,
        }
    }

    /// Says whether the old FIFO probe is allowed.
    pub fn with_fifo_open_probe(mut self, allowed: bool) -> Self {
        self.fifo_open_probe = allowed;
        self
    }

    /// Drops the observation kept for reuse (the members changed).
    pub fn forget(&mut self) {
        self.last = None;
    }

    /// What is known now, for `probes`.
    pub fn observe(&mut self, probes: &[LinkProbe]) -> Arc<Observation> {
        if let Some((at, seen)) = &self.last
            && at.elapsed() < REUSE
            && seen.holders.as_ref().is_none_or(Holders::holders_run)
        {
            return seen.clone();
        }
        let devs: HashSet<u64> = probes.iter().map(|p| p.dev).collect();
        let scanned = self.members.as_mut().map(|m| {
            m.looking_for(&devs);
            m.processes().and_then(|processes| {
                let h = Holders::scan(&processes, &devs);
                tracing::debug!(
                    processes = processes.len(),
                    pids = ?processes.iter().take(8).map(|p| p.pid).collect::<Vec<_>>(),
                    objects = h.objects(),
                    "holders scanned"
                );
                match (h.unreadable(), h.incomplete()) {
                    (Some(why), _) => Err(why),
                    (None, Some(why)) => Err(why.to_owned()),
                    (None, None) => Ok(h),
                }
            })
        });
        let holders = match scanned {
            Some(Ok(h)) => {
                if self.said.take().is_some() {
                    tracing::info!("who holds each object can be known now");
                }
                Some(h)
            }
            Some(Err(why)) => {
                if self.said.as_deref() != Some(why.as_str()) {
                    tracing::warn!(
                        "who holds each object cannot be known ({why}): the holder families are left out and FIFO depths are {}",
                        if self.fifo_open_probe {
                            "read by opening the write end (--fifo-open-probe)"
                        } else {
                            "left out"
                        }
                    );
                    self.said = Some(why);
                }
                None
            }
            None => None,
        };
        let mut sockets = SocketTable::default();
        let mut complete = false;
        if probes.iter().any(LinkProbe::has_sockets) {
            match SocketTable::dump() {
                Ok(own) => {
                    sockets = own;
                    complete = !self.member_netns;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unix socket diagnostics unavailable; socket depths are left out")
                }
            }
            if self.member_netns
                && let Some(h) = &holders
            {
                // Processes passed over (a pod past its bounds) may bind sockets in
                // namespaces not looked at.
                complete = !h.netns_partial();
                let own = std::fs::metadata("/proc/self/ns/net")
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .ok();
                for (n, (ns, pid)) in h.netns().enumerate() {
                    if Some(ns) == own {
                        continue;
                    }
                    if n >= crate::probe::holders::MAX_NETNS_PER_SCAN {
                        // Members chose how many namespaces there are: past the bound,
                        // what is bound in the others is unknown.
                        complete = false;
                        break;
                    }
                    let dumped = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))
                        .and_then(|f| SocketTable::dump_in(f.into()));
                    match dumped {
                        Ok(table) => sockets.merge(table),
                        Err(e) => {
                            tracing::debug!(pid, error = %e, "cannot dump the sockets of a member's network namespace");
                            complete = false;
                        }
                    }
                }
            }
        }
        let seen = Arc::new(Observation::new(
            sockets,
            complete,
            holders,
            self.fifo_open_probe,
        ));
        self.last = Some((Instant::now(), seen.clone()));
        seen
    }
}

/// The holders of one object as a sample shows them: one per process and role.
pub(crate) fn holder_samples(
    holds: impl IntoIterator<Item = (i32, Role, Arc<crate::probe::holders::Owner>)>,
) -> Vec<HolderSample> {
    let mut seen = HashSet::new();
    let mut out: Vec<HolderSample> = holds
        .into_iter()
        .filter(|(pid, role, _)| seen.insert((*pid, *role)))
        .map(|(pid, role, owner)| HolderSample {
            role: role.as_str().into(),
            pid,
            pod: owner.pod.clone(),
            container: owner.container.clone(),
            command: owner.command.clone(),
        })
        .collect();
    out.sort_by(|a, b| (&a.role, a.pid).cmp(&(&b.role, b.pid)));
    out
}

fn of_holds(holds: &[Hold]) -> Vec<HolderSample> {
    holder_samples(holds.iter().map(|h| (h.pid, h.role, h.owner.clone())))
}

/// The holders of the regular file (region or semaphore) with this device and inode.
pub(crate) fn file_holders(seen: &Observation, dev: u64, ino: u64) -> Vec<HolderSample> {
    seen.holders_for(dev)
        .map(|h| of_holds(h.of(dev, ino)))
        .unwrap_or_default()
}

/// Observes the FIFO `file` under `link`. With holders known: readers and writers are
/// the processes holding its ends, and the depth (`FIONREAD`, `F_GETPIPE_SZ`) is read
/// now through a duplicate of a holder's descriptor; a pipe nobody holds, or whose
/// holders have all let go since the scan, is empty by definition. The FIFO is never
/// opened. Without holders, the depth is left out, unless the old probe (open the write
/// end without blocking) is allowed.
pub(crate) fn fifo(link: BorrowedFd<'_>, file: &str, seen: &Observation, c: &mut ChannelSample) {
    let Ok(st) = fstatat(link, file, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return;
    };
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFIFO.bits() {
        return;
    }
    c.present = true;
    let Some(h) = seen.holders_for(st.st_dev) else {
        if seen.fifo_open_probe {
            probe_by_opening(link, file, c);
        } else {
            c.observed = false;
        }
        return;
    };
    let holds = h.of(st.st_dev, st.st_ino);
    let now = h.pipe(st.st_dev, st.st_ino);
    if now == PipeNow::LetGo {
        // Nobody holds it (any more): a pipe nobody holds is empty.
        c.reader_present = Some(false);
        c.writer_present = Some(false);
        c.queue_bytes = Some(0);
        return;
    }
    c.holders = of_holds(holds);
    c.reader_present = Some(holds.iter().any(|h| h.role == Role::Reader));
    c.writer_present = Some(holds.iter().any(|h| h.role == Role::Writer));
    match now {
        PipeNow::Depth(depth) => {
            c.capacity_bytes = Some(depth.capacity);
            c.queue_bytes = Some(depth.queued);
        }
        _ => c.observed = false,
    }
}

/// The old FIFO probe: `open(O_WRONLY|O_NONBLOCK)` fails with ENXIO when no reader
/// exists (a writer blocked in `open()` stays blocked); with a reader, FIONREAD on the
/// brief write end. Known limit: a reader still blocked in `open()` counts as a reader,
/// so with no writer at all the probe's write end lets that `open()` return and the
/// reader then reads EOF. Used only where holders cannot be known, and only when allowed.
pub(crate) fn probe_by_opening(link: BorrowedFd<'_>, file: &str, c: &mut ChannelSample) {
    match openat(
        link,
        file,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Err(Errno::ENXIO) => {
            c.present = true;
            c.reader_present = Some(false);
            c.queue_bytes = Some(0);
        }
        Err(_) => c.observed = false,
        Ok(fd) => {
            // F_GETPIPE_SZ fails on anything but a pipe: it is the type check too.
            if let Ok(cap) = fcntl(fd.as_fd(), FcntlArg::F_GETPIPE_SZ) {
                c.present = true;
                c.reader_present = Some(true);
                c.capacity_bytes = Some(cap as u64);
                c.queue_bytes = crate::probe::holders::queued_bytes(fd.as_fd()).ok();
            }
        }
    }
}

/// What the sockets bound at the paths `socket_files` (device `dev`, inodes) show: the
/// listeners' backlog and the bytes queued, whether every one was seen, and who holds
/// them: the processes of the server side (listeners and the connections they accepted)
/// as readers, the processes connected to them (accepted or still waiting) as writers.
pub(crate) struct SocketsSeen {
    pub backlog: u64,
    pub queued: u64,
    pub visible: u64,
    pub holders: Vec<HolderSample>,
}

pub(crate) fn sockets_at(seen: &Observation, dev: u64, socket_files: &[u64]) -> SocketsSeen {
    let mut out = SocketsSeen {
        backlog: 0,
        queued: 0,
        visible: 0,
        holders: Vec::new(),
    };
    let mut holds = Vec::new();
    for &ino in socket_files {
        let Some(p) = seen.sockets.get(dev, ino) else {
            continue;
        };
        out.visible += 1;
        out.backlog += p.backlog;
        out.queued += p.queued;
        let Some(h) = seen.holders_for(dev) else {
            continue;
        };
        for server in seen.sockets.bound_at(dev, ino) {
            if let Some((pid, _, owner)) = h.socket(server.ino) {
                holds.push((*pid, Role::Reader, owner.clone()));
            }
            // Clients of accepted connections, then those still waiting in accept().
            for client in seen.clients_of(server.ino).iter().chain(&server.incoming) {
                if let Some((pid, _, owner)) = h.socket(*client) {
                    holds.push((*pid, Role::Writer, owner.clone()));
                }
            }
        }
    }
    out.holders = holder_samples(holds);
    out
}

/// Observes the socket directory `file` under `link` (the link's device `dev`).
pub(crate) fn socket_dir(
    link: BorrowedFd<'_>,
    file: &str,
    dev: u64,
    seen: &Observation,
    c: &mut ChannelSample,
) {
    let Ok(dir) = crate::fs::open_dir_at(link, file) else {
        return;
    };
    let Ok(mut d) = nix::dir::Dir::from_fd(dir) else {
        return;
    };
    c.present = true;
    let files: Vec<u64> = d
        .iter()
        .flatten()
        .filter(|e| e.file_type() == Some(nix::dir::Type::Socket))
        .map(|e| e.ino())
        .collect();
    let s = sockets_at(seen, dev, &files);
    c.sockets = Some(files.len() as u64);
    c.sockets_visible = Some(s.visible);
    c.holders = s.holders;
    if seen.sockets_complete || s.visible == files.len() as u64 {
        c.backlog_connections = Some(s.backlog);
        c.queue_bytes = Some(s.queued);
    } else {
        // Bound in a network namespace not looked at: unknown, not 0.
        c.observed = false;
    }
}
