//! Who holds each object of a link: the processes that have it open (a file descriptor,
//! read or written as the mode of its `/proc/PID/fd` link says) or mapped
//! (`/proc/PID/maps`; shm users often close the descriptor after `mmap`), matched to the
//! link's objects by device and inode. Sockets are matched through their inodes
//! (`socket:[INO]`) and the network namespaces' socket tables. Only the processes the
//! caller names are read: the processes of the pods or containers that mount the link,
//! never the whole host unless the caller says so (local mode).
//!
//! A FIFO's depth is read through a duplicate of a holder's descriptor (`pidfd_getfd`),
//! never by opening it (opening a FIFO changes who is a reader or writer). Holders that
//! have closed it since the scan (or exited) are told apart from holders whose
//! descriptor cannot be duplicated here: when every holder has let go, nobody holds the
//! FIFO and it is empty.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, fcntl};
use nix::sys::stat::{Mode, fstatat};

mod pidfd;
mod processes;
pub use pidfd::duplicate;
pub(crate) use pidfd::queued_bytes;
use pidfd::{pidfd_getfd, pidfd_open, runs};
pub use processes::{
    AllProcesses, ContainerNames, ContainerProcesses, Members, command, containers_mounting,
};

/// What a holder does with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads it (a FIFO's read end; a socket a server listens on or was accepted from;
    /// an shm region opened read-only).
    Reader,
    /// Writes it (a FIFO's write end; a socket connected to the channel's server; an
    /// shm region opened for writing).
    Writer,
    /// Has it mapped into memory.
    Mapper,
}

impl Role {
    /// The `role` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Mapper => "mapper",
        }
    }
}

/// Who a process is, as far as the caller knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// Kubernetes pod (`namespace/name`), or "" outside Kubernetes.
    pub pod: String,
    /// Container (Kubernetes or Compose container name), or "".
    pub container: String,
    /// The process's command (`/proc/PID/comm`).
    pub command: String,
}

/// A process to look at, and who it is.
#[derive(Debug, Clone)]
pub struct Process {
    /// Its pid, as this process sees it.
    pub pid: i32,
    /// Who it is.
    pub owner: Arc<Owner>,
    /// The devices of the links it may hold (its pod's), when the caller knows them: a
    /// process past the scan's bounds then leaves only those links' holders unknown;
    /// `None`: every link's.
    pub scope: Option<Arc<HashSet<u64>>>,
}

/// Descriptors read of one process at most; past it, what it holds is unknown.
pub const MAX_FDS_PER_PROCESS: usize = 8192;
/// Entries (processes, descriptors, mapping lines) read of one scope (one pod) at
/// most; past it, the holders of that pod's links are unknown and its other processes
/// are not read.
pub const MAX_FDS_PER_SCOPE: usize = 32_768;
/// Entries read in one scan at most. Pods share it: each gets an equal part (at most
/// [`MAX_FDS_PER_SCOPE`]), so no pod's count takes another's share; processes without
/// a scope share what is left, and past it every holder is unknown.
pub const MAX_FDS_PER_SCAN: usize = 131_072;
/// Processes of one pod read at most (a caller lists one more to say there are more);
/// past it, the holders of that pod's links are unknown.
pub const MAX_PROCESSES_PER_POD: usize = 4096;
/// Lines of one process's `maps` read at most; past it, what it maps is unknown.
pub const MAX_MAPS_PER_PROCESS: usize = 16_384;
/// Processes without a scope one scan reads at most; past it, every holder is unknown.
pub const MAX_PROCESSES_PER_SCAN: usize = 16_384;
/// Network namespaces whose sockets one scan dumps at most; past it, sockets bound in
/// the others are unknown.
pub const MAX_NETNS_PER_SCAN: usize = 64;

/// One process holding one object in one role (however many descriptors it uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The process.
    pub pid: i32,
    /// Its first descriptor of the object (`None` for a mapping).
    pub fd: Option<i32>,
    /// How many of its descriptors hold the object in this role.
    pub fds: u32,
    /// What it does with it.
    pub role: Role,
    /// Who the process is.
    pub owner: Arc<Owner>,
}

/// What a pipe holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeDepth {
    /// Bytes queued (`FIONREAD`).
    pub queued: u64,
    /// Its buffer's size (`F_GETPIPE_SZ`).
    pub capacity: u64,
}

/// A FIFO as its holders show it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeNow {
    /// Read through a holder that still holds it.
    Depth(PipeDepth),
    /// Every holder the scan saw has closed it since, or exited: nobody holds it (unless
    /// a process opened it after the scan), so it is empty.
    LetGo,
    /// A holder still holds it, but its descriptor cannot be duplicated here.
    Unknown,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Holders {
    /// Holds of the link objects, by (device, inode).
    by_object: HashMap<(u64, u64), Vec<Hold>>,
    /// Unix sockets the processes hold, by socket inode: (pid, fd, owner).
    sockets: HashMap<u64, (i32, i32, Arc<Owner>)>,
    /// A process inside each network namespace seen, by the namespace's inode.
    netns: HashMap<u64, i32>,
    /// Processes whose descriptors could be read.
    readable: usize,
    /// Why every holder is unknown (a bound of the scan was reached).
    incomplete: Option<String>,
    /// Link devices whose holders are unknown: those a process past its own bounds may
    /// hold.
    unknown_devs: HashSet<u64>,
    /// Entries read so far: processes, descriptors and mapping lines.
    fds_read: usize,
    /// Whether processes were passed over without their network namespace: sockets
    /// bound there are then not all seen.
    netns_partial: bool,
    /// The first process whose descriptors could not be read (other than by exiting).
    denied: Option<(i32, std::io::Error)>,
    /// Process descriptors to duplicate descriptors from, opened once per process.
    pidfds: std::sync::Mutex<HashMap<i32, Option<Arc<OwnedFd>>>>,
}

impl Holders {
    /// Reads the descriptors and mappings of `processes`, keeping those of objects on
    /// the devices `devs` (the links' filesystems), their Unix sockets and their network
    /// namespaces. Processes that are gone are passed over.
    ///
    /// Members set how much there is to read, so the scan is bounded
    /// ([`MAX_FDS_PER_PROCESS`], [`MAX_MAPS_PER_PROCESS`], [`MAX_FDS_PER_SCOPE`],
    /// [`MAX_FDS_PER_SCAN`], [`MAX_PROCESSES_PER_POD`], [`MAX_PROCESSES_PER_SCAN`]);
    /// past a bound, the holders it would have found are unknown
    /// ([`Holders::known_for`]), never a smaller number. A process with a scope (its
    /// pod's links) reads within its pod's share: past it, only that pod's links'
    /// holders are unknown and its other processes are not read.
    pub fn scan(processes: &[Process], devs: &HashSet<u64>) -> Holders {
        let mut h = Holders::default();
        // Pods by the address of their shared scope, and how many processes each has.
        let mut pods: HashMap<*const HashSet<u64>, usize> = HashMap::new();
        for p in processes {
            if let Some(scope) = &p.scope {
                *pods.entry(Arc::as_ptr(scope)).or_default() += 1;
            }
        }
        let unscoped = processes.len() - pods.values().sum::<usize>();
        if unscoped > MAX_PROCESSES_PER_SCAN {
            h.incomplete = Some(format!(
                "{unscoped} processes, more than the {MAX_PROCESSES_PER_SCAN} one scan reads"
            ));
            return h;
        }
        let share = (MAX_FDS_PER_SCAN / pods.len().max(1)).min(MAX_FDS_PER_SCOPE);
        // Pods past a bound: their other processes would tell nothing more.
        let mut blind: HashSet<*const HashSet<u64>> = pods
            .iter()
            .filter(|&(_, &n)| n > MAX_PROCESSES_PER_POD)
            .map(|(&k, _)| k)
            .collect();
        let mut spent: HashMap<*const HashSet<u64>, usize> = HashMap::new();
        for p in processes {
            let key = p.scope.as_ref().map(Arc::as_ptr);
            if let (Some(scope), Some(k)) = (&p.scope, key)
                && blind.contains(&k)
            {
                h.unknown_devs.extend(scope.iter());
                h.netns_partial = true;
                continue;
            }
            // What this process may read: its pod's share left, or the scan's.
            let left = match key {
                Some(k) => share.saturating_sub(spent.get(&k).copied().unwrap_or(0)),
                None => MAX_FDS_PER_SCAN.saturating_sub(h.fds_read),
            };
            let before = h.fds_read;
            let whole = left > 0 && h.scan_process(p, devs, left);
            if let Some(k) = key {
                *spent.entry(k).or_default() += h.fds_read - before;
            }
            if let Ok(m) = std::fs::metadata(format!("/proc/{}/ns/net", p.pid)) {
                h.netns.entry(m.ino()).or_insert(p.pid);
            }
            if whole {
                continue;
            }
            match (&p.scope, key) {
                (Some(scope), Some(k)) => {
                    h.unknown_devs.extend(scope.iter());
                    blind.insert(k);
                }
                _ => {
                    h.incomplete = Some(format!(
                        "process {} is past what one scan reads ({MAX_FDS_PER_PROCESS} descriptors or {MAX_MAPS_PER_PROCESS} mappings of a process, {MAX_FDS_PER_SCAN} entries in all)",
                        p.pid
                    ));
                    // Nothing more would be known: stop reading.
                    h.by_object.clear();
                    h.sockets.clear();
                    return h;
                }
            }
        }
        h
    }

    /// Reads the descriptors and mappings of `p`, counting at most `left` entries (the
    /// process itself, its descriptors, its mapping lines); false when it has more than
    /// that or one scan reads of a process, or (with a scope) cannot be read.
    fn scan_process(&mut self, p: &Process, devs: &HashSet<u64>, left: usize) -> bool {
        self.fds_read += 1;
        let before = self.fds_read;
        if !self.scan_fds(p, devs, MAX_FDS_PER_PROCESS.min(left - 1)) {
            return false;
        }
        let spent = self.fds_read - before;
        self.scan_maps(p, devs, MAX_MAPS_PER_PROCESS.min(left - 1 - spent))
    }

    /// Whether processes were passed over without a look at their network namespace
    /// (sockets bound there were not all seen).
    pub fn netns_partial(&self) -> bool {
        self.netns_partial
    }

    /// Whether the holders of the objects on link device `dev` are known: the scan
    /// read every process that may hold them in full.
    pub fn known_for(&self, dev: u64) -> bool {
        self.incomplete.is_none() && !self.unknown_devs.contains(&dev)
    }

    /// Whether every process looked at could be read (none denied its descriptors).
    pub fn all_read(&self) -> bool {
        self.denied.is_none()
    }

    /// Why holders are unknown on every link, if they are.
    pub fn incomplete(&self) -> Option<&str> {
        self.incomplete.as_deref()
    }

    /// Reads the descriptors of `p`; false when it holds more than `limit` (what it holds
    /// is then unknown), or cannot be read while it has a scope.
    fn scan_fds(&mut self, p: &Process, devs: &HashSet<u64>, limit: usize) -> bool {
        // Descriptors are looked up relative to the open directory: one path component
        // per descriptor, not a fresh walk of /proc/PID/fd/N.
        let opened = nix::fcntl::open(
            format!("/proc/{}/fd", p.pid).as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .and_then(|at| {
            let listing = at
                .try_clone()
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
            Ok((at, nix::dir::Dir::from_fd(listing)?))
        });
        let (at, mut dir) = match opened {
            Ok(opened) => opened,
            Err(Errno::ENOENT | Errno::ESRCH) => return true, // gone
            Err(e) => {
                if self.denied.is_none() {
                    self.denied = Some((p.pid, std::io::Error::from(e)));
                }
                // A member's process that cannot be read holds what it holds: its pod's
                // links are unknown. (Without a scope, the local mode reads what this
                // user may; `unreadable` says when that is nothing.)
                return p.scope.is_none();
            }
        };
        self.readable += 1;
        // The last hold pushed for each (object, role) of this process: duplicates of a
        // descriptor count there instead of adding holds.
        let mut mine: HashMap<((u64, u64), Role), usize> = HashMap::new();
        // The numbers first (a listing is cheap; two lookups per descriptor are not):
        // a process past the bound is known to be so before any of them is looked up.
        let mut names = Vec::new();
        for e in dir.iter() {
            if names.len() >= limit {
                self.fds_read += limit;
                return false;
            }
            match e {
                Ok(e) => names.push(e.file_name().to_owned()),
                Err(Errno::ENOENT | Errno::ESRCH) => return true, // gone meanwhile
                // Read in part: with a scope, what it holds is unknown.
                Err(_) => return p.scope.is_none(),
            }
        }
        self.fds_read += names.len();
        for name in &names {
            let Some(fd) = name.to_str().ok().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            // The magic link leads to the object itself (for a socket, its sockfs inode).
            // Cached attributes only: a member's FUSE file must not make the scan wait
            // for its server.
            let Some((dev, ino, kind)) = stat_cached(at.as_fd(), name) else {
                continue;
            };
            if kind == nix::libc::S_IFSOCK {
                self.sockets.insert(ino, (p.pid, fd, p.owner.clone()));
                continue;
            }
            if !devs.contains(&dev) {
                continue;
            }
            let object = (dev, ino);
            let counted = |role| mine.get(&(object, role)).copied();
            if let (Some(r), Some(w)) = (counted(Role::Reader), counted(Role::Writer)) {
                // Both roles are known: a duplicate counts, whatever its access mode.
                let holds = self.by_object.entry(object).or_default();
                holds[r].fds += 1;
                holds[w].fds += 1;
                continue;
            }
            // The link itself carries the descriptor's access mode (owner read for
            // FMODE_READ, owner write for FMODE_WRITE): one lstat, no fdinfo to read.
            let Ok(link) = fstatat(&at, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            let roles: &[Role] = match (
                link.st_mode & nix::libc::S_IRUSR != 0,
                link.st_mode & nix::libc::S_IWUSR != 0,
            ) {
                (true, false) => &[Role::Reader],
                (false, true) => &[Role::Writer],
                (true, true) => &[Role::Reader, Role::Writer],
                (false, false) => continue,
            };
            let holds = self.by_object.entry(object).or_default();
            for &role in roles {
                match mine.get(&(object, role)) {
                    Some(&i) => holds[i].fds += 1,
                    None => {
                        mine.insert((object, role), holds.len());
                        holds.push(Hold {
                            pid: p.pid,
                            fd: Some(fd),
                            fds: 1,
                            role,
                            owner: p.owner.clone(),
                        });
                    }
                }
            }
        }
        true
    }

    /// Reads the mappings of `p`, each line counted; false when it has more than `limit`.
    fn scan_maps(&mut self, p: &Process, devs: &HashSet<u64>, limit: usize) -> bool {
        use std::io::BufRead;
        let maps = match std::fs::File::open(format!("/proc/{}/maps", p.pid)) {
            Ok(maps) => maps,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(nix::libc::ESRCH) =>
            {
                return true;
            }
            Err(_) => return p.scope.is_none(),
        };
        let mut seen = HashSet::new();
        // address perms offset major:minor inode path
        for (n, line) in std::io::BufReader::new(maps).lines().enumerate() {
            if n >= limit {
                return false;
            }
            self.fds_read += 1;
            // A read that fails part-way leaves what the process maps unknown.
            let Ok(line) = line else {
                return false;
            };
            let mut f = line.split_whitespace();
            let (Some(_), Some(_), Some(_), Some(dev), Some(ino)) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let Some((major, minor)) = dev.split_once(':') else {
                continue;
            };
            let (Ok(major), Ok(minor), Ok(ino)) = (
                u64::from_str_radix(major, 16),
                u64::from_str_radix(minor, 16),
                ino.parse::<u64>(),
            ) else {
                continue;
            };
            let dev = nix::sys::stat::makedev(major, minor);
            if ino == 0 || !devs.contains(&dev) || !seen.insert((dev, ino)) {
                continue;
            }
            self.by_object.entry((dev, ino)).or_default().push(Hold {
                pid: p.pid,
                fd: None,
                fds: 0,
                role: Role::Mapper,
                owner: p.owner.clone(),
            });
        }
        true
    }

    /// Why nothing could be learned from the scanned processes: none of their
    /// descriptors could be read (missing rights, e.g. `CAP_SYS_PTRACE`).
    pub fn unreadable(&self) -> Option<String> {
        let (pid, e) = self.denied.as_ref()?;
        (self.readable == 0)
            .then(|| format!("cannot read /proc/{pid}/fd: {e}; this process needs CAP_SYS_PTRACE"))
    }

    /// The FIFO with this device and inode as its holders show it now: its depth through
    /// the first holder that still holds it.
    pub fn pipe(&self, dev: u64, ino: u64) -> PipeNow {
        let mut now = PipeNow::LetGo;
        for (pid, fd, fds) in self
            .of(dev, ino)
            .iter()
            .filter_map(|h| Some((h.pid, h.fd?, h.fds)))
        {
            match self.pipe_depth(pid, fd, (dev, ino)) {
                Ok(Some(depth)) => return PipeNow::Depth(depth),
                // Closed (its number may have been reused), or the process exited: it
                // let go, unless another of its descriptors still holds the FIFO.
                Ok(None) | Err(Errno::EBADF) if fds > 1 => now = PipeNow::Unknown,
                Ok(None) | Err(Errno::EBADF | Errno::ESRCH) => {}
                Err(_) => now = PipeNow::Unknown,
            }
        }
        now
    }

    /// The depth of the pipe `object` (device, inode) through a duplicate of descriptor
    /// `fd` of process `pid`; `None` when that descriptor now refers to something else
    /// (its number was reused).
    fn pipe_depth(&self, pid: i32, fd: i32, object: (u64, u64)) -> nix::Result<Option<PipeDepth>> {
        let pidfd = self
            .pidfds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pid)
            .or_insert_with(|| pidfd_open(pid).ok().map(Arc::new))
            .clone()
            .ok_or(Errno::ESRCH)?;
        // The number may now hold a member's FUSE file: cached attributes only, and a
        // duplicate that is not the FIFO is closed off this thread (its close may wait
        // on the member's server); while the closer is full, nothing is taken.
        let closer = crate::probe::closer::Closer::shared();
        if !closer.admits() {
            return Err(Errno::EAGAIN);
        }
        let dup = pidfd_getfd(pidfd.as_fd(), fd)?;
        match stat_cached(dup.as_fd(), c"") {
            Some((dev, ino, _)) if (dev, ino) == object => {}
            _ => {
                closer.let_go(Box::new(dup));
                return Ok(None);
            }
        }
        Ok(Some(PipeDepth {
            capacity: fcntl(dup.as_fd(), FcntlArg::F_GETPIPE_SZ)? as u64,
            queued: queued_bytes(dup.as_fd())?,
        }))
    }

    /// Whether every process seen holding a link object still runs. A scan reused after
    /// one exited would still name it, and miss that its FIFO ends were closed.
    pub fn holders_run(&self) -> bool {
        let pids: HashSet<i32> = self.by_object.values().flatten().map(|h| h.pid).collect();
        pids.into_iter().all(runs)
    }

    /// How many link objects are held by someone.
    pub fn objects(&self) -> usize {
        self.by_object.len()
    }

    /// Who holds the object with this device and inode.
    pub fn of(&self, dev: u64, ino: u64) -> &[Hold] {
        self.by_object.get(&(dev, ino)).map_or(&[], Vec::as_slice)
    }

    /// The process holding the socket with this inode: (pid, fd, owner).
    pub fn socket(&self, ino: u64) -> Option<&(i32, i32, Arc<Owner>)> {
        self.sockets.get(&ino)
    }

    /// The network namespaces of the processes scanned: (namespace inode, a pid in it).
    pub fn netns(&self) -> impl Iterator<Item = (u64, i32)> + '_ {
        self.netns.iter().map(|(&ns, &pid)| (ns, pid))
    }
}

/// Device, inode and file type of `name` under `dir` (the object itself when `name`
/// is a `/proc/PID/fd` magic link; `dir` itself when `name` is empty), from attributes
/// the kernel has cached: `AT_STATX_DONT_SYNC` asks no network or FUSE server.
fn stat_cached(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Option<(u64, u64, u32)> {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    let mut flags = AtFlags::STATX_DONT_SYNC;
    if name.is_empty() {
        flags |= AtFlags::EMPTY_PATH;
    }
    let st = statx(dir, name, flags, StatxFlags::TYPE | StatxFlags::INO).ok()?;
    let dev = nix::sys::stat::makedev(u64::from(st.stx_dev_major), u64::from(st.stx_dev_minor));
    Some((dev, st.stx_ino, u32::from(st.stx_mode) & nix::libc::S_IFMT))
}

/// Whether a process among `members` holds one of the declared objects of `plan`'s link
/// in `store` (a descriptor or a mapping): `None` when that cannot be known. A link
/// nobody holds may have what waits for its members to leave done to it.
pub fn link_held(
    store: &crate::store::Store,
    plan: &crate::model::validate::LinkPlan,
    members: &mut dyn Members,
) -> Option<bool> {
    let link = store.open_link(&plan.namespace, &plan.name).ok()?;
    let dev = nix::sys::stat::fstat(link.as_fd()).ok()?.st_dev;
    let processes = members.processes().ok()?;
    let holders = Holders::scan(&processes, &HashSet::from([dev]));
    if holders.unreadable().is_some() {
        return None;
    }
    Some(plan.objects.iter().any(|o| {
        nix::sys::stat::fstatat(
            link.as_fd(),
            o.file_name().as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| !holders.of(dev, st.st_ino).is_empty())
    }))
}

#[cfg(test)]
mod tests;
