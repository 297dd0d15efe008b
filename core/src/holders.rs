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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, fcntl};
use nix::sys::stat::{Mode, fstatat};

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

/// Where the processes that may hold a link's objects come from.
pub trait Members: Send {
    /// The processes to look at, or why they cannot be seen (said once in the log;
    /// the holder families are then absent).
    fn processes(&mut self) -> Result<Vec<Process>, String>;

    /// Tells which link devices are looked for now (before [`Members::processes`]).
    fn looking_for(&mut self, _devs: &HashSet<u64>) {}
}

/// Every process this one can see, named by its command: the local mode's members.
/// ipclink's own processes are not: their probes keep regions and semaphores open to
/// read them.
#[derive(Debug, Default)]
pub struct AllProcesses;

/// The commands of ipclink's own processes that probe links.
const PROBES: [&str; 2] = ["ipclink-sidecar", "ipclink-csi"];

impl Members for AllProcesses {
    fn processes(&mut self) -> Result<Vec<Process>, String> {
        let me = std::process::id() as i32;
        let dir = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
        Ok(dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .map(|pid| (pid, command(pid)))
            .filter(|(_, command)| !PROBES.contains(&command.as_str()))
            .map(|(pid, command)| Process {
                pid,
                owner: Arc::new(Owner {
                    command,
                    ..Owner::default()
                }),
                scope: None,
            })
            .collect())
    }
}

/// Names of the running member containers by full id, once known (`None`: not yet).
pub type ContainerNames = Arc<std::sync::Mutex<Option<HashMap<String, String>>>>;

/// The processes of containers this process can see (a host process, or a container
/// with the host's pid namespace), named by their container: the name `names` gives for
/// its id (from the cgroup path), else the id's first 12 digits. With `only_named`, only
/// the containers in `names` are members, and holders cannot be known until `names` is
/// (`None`: not discovered yet) or when none of their processes is visible (a sidecar
/// without the host's pid namespace); without, every container's processes are, and
/// processes outside containers are not.
#[derive(Debug, Default)]
pub struct ContainerProcesses {
    /// Names of the running member containers by full id, once known.
    pub names: ContainerNames,
    /// Only the containers in `names`.
    pub only_named: bool,
    /// Only the containers whose mount namespace holds one of the links' filesystems
    /// (a plugin with the host's pid namespace sees every container; it reads only
    /// those that mount one of its volumes).
    pub only_mounting: bool,
    /// The link devices looked for now.
    devs: HashSet<u64>,
}

/// Mount-table lines of one process read at most, looking for a link's filesystem.
const MAX_MOUNTS_PER_PROCESS: usize = 16_384;

/// Whether the mount table of process `pid` may have a mount of one of `devs`: true
/// when it has one, and when it cannot be read in full (the process is then scanned,
/// so that its holds are not taken for none).
fn mounts_one_of(pid: i32, devs: &HashSet<u64>) -> bool {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(format!("/proc/{pid}/mountinfo")) else {
        return true;
    };
    let want: HashSet<String> = devs
        .iter()
        .map(|&d| format!("{}:{}", nix::sys::stat::major(d), nix::sys::stat::minor(d)))
        .collect();
    // id parent major:minor root point ...
    let mut lines = std::io::BufReader::new(f).lines();
    for _ in 0..MAX_MOUNTS_PER_PROCESS {
        match lines.next() {
            None => return false,
            Some(Err(_)) => return true,
            Some(Ok(l)) if l.split(' ').nth(2).is_some_and(|d| want.contains(d)) => return true,
            Some(Ok(_)) => {}
        }
    }
    true
}

impl ContainerProcesses {
    /// Processes of the member containers named in `names` (`only_named`), or of every
    /// container.
    pub fn new(names: ContainerNames, only_named: bool) -> Self {
        ContainerProcesses {
            names,
            only_named,
            only_mounting: false,
            devs: HashSet::new(),
        }
    }

    /// Only the containers that mount one of the links looked for.
    pub fn mounting(mut self) -> Self {
        self.only_mounting = true;
        self
    }
}

impl Members for ContainerProcesses {
    fn looking_for(&mut self, devs: &HashSet<u64>) {
        self.devs = devs.clone();
    }

    fn processes(&mut self) -> Result<Vec<Process>, String> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let names = match names {
            Some(n) => n,
            None if self.only_named => {
                return Err("the member containers are not discovered yet".into());
            }
            None => HashMap::new(),
        };
        let all = AllProcesses.processes()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        // Whether a process outside this one's cgroup is visible: the host's pid
        // namespace (without it, only this container's processes are).
        let mut others_visible = false;
        let mut owners: HashMap<String, Arc<Owner>> = HashMap::new();
        // Whether each container mounts a link (its first process's mount table says).
        let mut mounting: HashMap<String, bool> = HashMap::new();
        let mut out = Vec::new();
        for p in all {
            let cgroup =
                std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap_or_default();
            others_visible |= !cgroup.is_empty() && cgroup != own;
            let Some(id) = container_in(&cgroup) else {
                continue; // not in a container
            };
            let named = names.get(&id);
            if self.only_named && named.is_none() {
                continue;
            }
            if self.only_mounting
                && !*mounting
                    .entry(id.clone())
                    .or_insert_with(|| mounts_one_of(p.pid, &self.devs))
            {
                continue;
            }
            let owner = owners.entry(id).or_insert_with_key(|id| {
                Arc::new(Owner {
                    container: named
                        .cloned()
                        .unwrap_or_else(|| id.chars().take(12).collect()),
                    ..Owner::default()
                })
            });
            out.push(Process {
                pid: p.pid,
                owner: Arc::new(Owner {
                    command: p.owner.command.clone(),
                    ..(**owner).clone()
                }),
                scope: None,
            });
        }
        // Named members none of whose processes is visible: exited (discovery has not
        // seen it yet) when other processes are visible, else hidden from this one.
        if self.only_named && !names.is_empty() && out.is_empty() && !others_visible {
            return Err(
                "no process of the member containers is visible here; give this container the host's pid namespace (Compose: pid: host)"
                    .into(),
            );
        }
        Ok(out)
    }
}

/// The container a process runs in, from the text of its `/proc/PID/cgroup`: the
/// 64-hex-digit id in its cgroup path (`docker-ID.scope`, `libpod-ID`,
/// `cri-containerd-ID.scope`, `crio-ID`, `/docker/ID`).
fn container_in(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find_map(|segment| {
            let id = segment
                .trim_end_matches(".scope")
                .rsplit('-')
                .next()
                .unwrap_or(segment);
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
        })
}

/// A process's command (`/proc/PID/comm`), or "".
pub fn command(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default()
}

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
        let closer = crate::closer::Closer::shared();
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

/// Whether process `pid` exists and has not exited (a zombie has closed its files).
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // pid (comm) state ...: comm may hold spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X'))
    })
}

/// A descriptor referring to process `pid` (`pidfd_open`, Linux 5.3).
#[allow(unsafe_code)]
fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: pidfd is a descriptor just returned to us and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd as i32) })
}

/// A duplicate, in this process, of descriptor `fd` of the process `pidfd` refers to
/// (`pidfd_getfd`, Linux 5.6; needs ptrace rights on the process).
#[allow(unsafe_code)]
fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags, and returns a
    // new descriptor or -1; it reads no memory of ours.
    let dup = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(Errno::last());
    }
    // SAFETY: dup is a descriptor just returned to us and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

/// A duplicate, in this process, of descriptor `fd` of process `pid`
/// (`pidfd_open` + `pidfd_getfd`).
pub fn duplicate(pid: i32, fd: i32) -> nix::Result<OwnedFd> {
    pidfd_getfd(pidfd_open(pid)?.as_fd(), fd)
}

nix::ioctl_read_bad!(fionread, nix::libc::FIONREAD, nix::libc::c_int);

/// Bytes queued in a pipe, through one of its descriptors.
#[allow(unsafe_code)]
pub(crate) fn queued_bytes(fd: BorrowedFd<'_>) -> nix::Result<u64> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to `n`.
    unsafe { fionread(fd.as_raw_fd(), &mut n) }?;
    Ok(n.max(0) as u64)
}

/// Whether a process among `members` holds one of the declared objects of `plan`'s link
/// in `store` (a descriptor or a mapping): `None` when that cannot be known. A link
/// nobody holds may have what waits for its members to leave done to it.
pub fn link_held(
    store: &crate::materialize::Store,
    plan: &crate::validate::LinkPlan,
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
mod tests {
    use super::*;

    #[test]
    fn roles_follow_each_descriptors_access_mode_and_path_descriptors_hold_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut roles_of = Vec::new();
        for (name, flags) in [
            ("read", OFlag::O_RDONLY),
            ("write", OFlag::O_WRONLY),
            ("both", OFlag::O_RDWR),
            ("path", OFlag::O_PATH),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").expect("file");
            let fd =
                nix::fcntl::open(&path, flags | OFlag::O_CLOEXEC, Mode::empty()).expect("open");
            let m = std::fs::metadata(&path).expect("stat");
            roles_of.push((fd, m.dev(), m.ino()));
        }
        let me = Process {
            pid: std::process::id() as i32,
            owner: Arc::new(Owner::default()),
            scope: None,
        };
        let dev = roles_of[0].1;
        let h = Holders::scan(&[me], &HashSet::from([dev]));
        let roles: Vec<Vec<Role>> = roles_of
            .iter()
            .map(|(_, d, i)| h.of(*d, *i).iter().map(|h| h.role).collect())
            .collect();
        assert_eq!(
            roles,
            [
                vec![Role::Reader],
                vec![Role::Writer],
                vec![Role::Reader, Role::Writer],
                vec![],
            ]
        );
        assert!(h.unreadable().is_none());
    }

    #[test]
    fn this_process_is_seen_holding_a_file_it_has_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("region");
        std::fs::write(&path, vec![0u8; 4096]).expect("file");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let m = file.metadata().expect("stat");
        let me = Process {
            pid: std::process::id() as i32,
            owner: Arc::new(Owner::default()),
            scope: None,
        };
        let h = Holders::scan(&[me], &HashSet::from([m.dev()]));
        let roles: Vec<Role> = h.of(m.dev(), m.ino()).iter().map(|h| h.role).collect();
        assert_eq!(roles, [Role::Reader, Role::Writer]);
        let held = h.of(m.dev(), m.ino())[0].fd.expect("a descriptor");
        let dup = duplicate(std::process::id() as i32, held).expect("pidfd_getfd");
        assert_eq!(nix::sys::stat::fstat(&dup).expect("fstat").st_ino, m.ino());
        assert!(h.netns().count() == 1);
    }

    #[test]
    fn a_fifo_is_read_through_its_holder_and_empty_once_the_holder_let_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events");
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        // A process we did not write holds both ends (O_RDWR does not block on a FIFO)
        // and leaves 5 bytes queued.
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3<>\"$1\"; printf hello >&3; echo ready; exec sleep 30")
            .arg("sh")
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
            &mut ready,
        )
        .expect("ready");
        assert_eq!(ready, "ready\n");
        let m = std::fs::metadata(&path).expect("stat");
        let p = Process {
            pid: holder.id() as i32,
            owner: Arc::new(Owner::default()),
            scope: None,
        };
        let h = Holders::scan(&[p], &HashSet::from([m.dev()]));
        let roles: Vec<Role> = h.of(m.dev(), m.ino()).iter().map(|h| h.role).collect();
        assert_eq!(roles, [Role::Reader, Role::Writer]);
        assert!(h.holders_run());
        let depth = |h: &Holders| match h.pipe(m.dev(), m.ino()) {
            PipeNow::Depth(d) => Some(d.queued),
            PipeNow::LetGo => None,
            PipeNow::Unknown => panic!("a holder's descriptor could not be duplicated"),
        };
        assert_eq!(depth(&h), Some(5));
        // Read now, not as scanned: 3 more bytes are seen.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"abc"))
            .expect("write");
        assert_eq!(depth(&h), Some(8));
        // The holder exits: the scan still names it, but it let go (its pipe is freed).
        holder.kill().expect("kill");
        assert!(
            (0..200).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                !h.holders_run()
            }),
            "an exited holder (a zombie until reaped) no longer runs"
        );
        assert_eq!(depth(&h), None, "let go");
        holder.wait().expect("wait");
        assert!(!h.holders_run(), "a reaped holder no longer runs");
        assert_eq!(h.pipe(m.dev(), m.ino()), PipeNow::LetGo);
    }

    /// A child process killed and reaped when dropped (a failed assertion leaves none).
    struct Kill(std::process::Child);

    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A holder process running `script` (sh, with "$1" the path) that says "ready".
    fn holder(script: &str, path: &std::path::Path) -> Kill {
        let mut c = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(c.stdout.take().expect("stdout")),
            &mut ready,
        )
        .expect("ready");
        assert_eq!(ready, "ready\n");
        Kill(c)
    }

    #[test]
    fn duplicated_descriptors_are_one_hold_each_and_a_fifo_with_more_is_not_let_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events");
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        // fd 3 holds both ends; 4..=9 are duplicates of it.
        let h1 = holder(
            "exec 3<>\"$1\" 4<&3 5<&3 6<&3 7<&3 8<&3 9<&3; echo ready; exec sleep 30",
            &path,
        );
        let m = std::fs::metadata(&path).expect("stat");
        let p = Process {
            pid: h1.0.id() as i32,
            owner: Arc::new(Owner::default()),
            scope: None,
        };
        let h = Holders::scan(std::slice::from_ref(&p), &HashSet::from([m.dev()]));
        let holds = h.of(m.dev(), m.ino());
        assert_eq!(holds.len(), 2, "one hold per role: {holds:?}");
        assert!(holds.iter().all(|h| h.fds == 7), "{holds:?}");
        drop(h1);
        // This process holds the FIFO twice; the descriptor the scan kept closes, the
        // other still holds it: its depth is unknown, not "empty, nobody holds it".
        let first = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let second = first.try_clone().expect("dup");
        let me = Process {
            pid: std::process::id() as i32,
            owner: Arc::new(Owner::default()),
            scope: None,
        };
        let h = Holders::scan(&[me], &HashSet::from([m.dev()]));
        let kept = h.of(m.dev(), m.ino())[0].fd.expect("a descriptor");
        let closing = if kept == first.as_raw_fd() {
            first
        } else {
            second
        };
        drop(closing);
        assert_eq!(h.pipe(m.dev(), m.ino()), PipeNow::Unknown);
    }

    #[test]
    fn a_process_past_the_descriptor_bound_leaves_its_links_holders_unknown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("region");
        std::fs::write(&path, b"x").expect("file");
        let m = std::fs::metadata(&path).expect("stat");
        // A process with more descriptors than one scan reads of it.
        let many = holding(&path, MAX_FDS_PER_PROCESS + 10);
        let scoped = Process {
            pid: many.0.id() as i32,
            owner: Arc::new(Owner::default()),
            scope: Some(Arc::new(HashSet::from([m.dev()]))),
        };
        let other_dev = m.dev() + 1;
        let devs = HashSet::from([m.dev(), other_dev]);
        // Scoped to its pod's links: those are unknown, the others known.
        let h = Holders::scan(std::slice::from_ref(&scoped), &devs);
        assert!(
            !h.known_for(m.dev()),
            "its own link's holders are not known"
        );
        assert!(h.known_for(other_dev), "another tenant's link stays known");
        assert!(h.incomplete().is_none());
        // Without a scope, nothing is known (never a smaller number).
        let unscoped = Process {
            scope: None,
            ..scoped
        };
        let h = Holders::scan(&[unscoped], &devs);
        assert!(!h.known_for(m.dev()) && !h.known_for(other_dev));
        assert!(
            h.incomplete().is_some_and(|w| w.contains("descriptors")),
            "{:?}",
            h.incomplete()
        );
        assert!(
            h.of(m.dev(), m.ino()).is_empty(),
            "nothing half-read is kept"
        );
        drop(many);
    }

    /// A process holding `n` descriptors of `path`, once it holds them all.
    fn holding(path: &std::path::Path, n: usize) -> Kill {
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import os, resource, sys, time\n\
                 resource.setrlimit(resource.RLIMIT_NOFILE, ({0}, {0}))\n\
                 f = os.open(sys.argv[1], os.O_RDONLY)\n\
                 held = [os.dup(f) for _ in range({1})]\n\
                 print('ready', flush=True)\n\
                 time.sleep(60)",
                n + 100,
                n - 1
            ))
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().expect("stdout");
        let child = Kill(child);
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready)
            .expect("ready");
        assert_eq!(ready, "ready\n");
        child
    }

    /// A file in its own directory, and its device and inode.
    fn object(dir: &tempfile::TempDir, name: &str) -> (std::path::PathBuf, u64, u64) {
        let path = dir.path().join(name);
        std::fs::write(&path, b"x").expect("file");
        let m = std::fs::metadata(&path).expect("stat");
        (path, m.dev(), m.ino())
    }

    #[test]
    fn a_pod_past_its_budget_is_not_read_further_and_blinds_only_itself() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, dev, ino) = object(&dir, "region");
        // Six processes of one pod, each under the per-process bound, together past
        // the pod's; then a process of another pod.
        // (Each process also counts itself and its mapping lines: a few hundred.)
        let per = MAX_FDS_PER_SCOPE / 4 - 1000;
        let crowd: Vec<Kill> = (0..6).map(|_| holding(&path, per)).collect();
        let other_dev = dev + 1;
        let evil = Arc::new(HashSet::from([dev]));
        let mut processes: Vec<Process> = crowd
            .iter()
            .map(|k| Process {
                pid: k.0.id() as i32,
                owner: Arc::new(Owner::default()),
                scope: Some(evil.clone()),
            })
            .collect();
        let calm = holding(&path, 3);
        processes.push(Process {
            pid: calm.0.id() as i32,
            owner: Arc::new(Owner::default()),
            scope: Some(Arc::new(HashSet::from([other_dev]))),
        });
        let h = Holders::scan(&processes, &HashSet::from([dev, other_dev]));
        assert!(!h.known_for(dev), "the crowded pod's link is unknown");
        assert!(h.known_for(other_dev), "the other pod's link stays known");
        assert!(h.incomplete().is_none(), "{:?}", h.incomplete());
        // Four processes fill the budget, the fifth passes it; the sixth is not read.
        assert_eq!(
            h.readable, 6,
            "five of the pod's processes and the other pod's"
        );
        assert!(
            h.fds_read <= MAX_FDS_PER_SCOPE + 1000,
            "{} entries read",
            h.fds_read
        );
        // The other pod's process was still read: its three holds of the object.
        let calm_pid = calm.0.id() as i32;
        let of_calm: u32 = h
            .of(dev, ino)
            .iter()
            .filter(|hold| hold.pid == calm_pid)
            .map(|hold| hold.fds)
            .sum();
        assert_eq!(of_calm, 3, "{:?}", h.of(dev, ino));
        drop(crowd);
    }

    #[test]
    fn heavy_pods_do_not_take_a_light_pods_share_of_the_scan() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, dev, ino) = object(&dir, "region");
        // Pods of one process each, every one under the per-process and per-pod bounds,
        // together past the scan's; then a light pod, read last.
        let per = MAX_FDS_PER_PROCESS - 100;
        let heavy = MAX_FDS_PER_SCAN / per + 2;
        let mut crowd: Vec<Kill> = (0..heavy).map(|_| holding(&path, per)).collect();
        crowd.push(holding(&path, 3));
        let light_dev = dev + heavy as u64;
        let processes: Vec<Process> = crowd
            .iter()
            .enumerate()
            .map(|(i, k)| Process {
                pid: k.0.id() as i32,
                owner: Arc::new(Owner::default()),
                scope: Some(Arc::new(HashSet::from([dev + i as u64]))),
            })
            .collect();
        let devs: HashSet<u64> = (0..=heavy as u64).map(|i| dev + i).collect();
        let h = Holders::scan(&processes, &devs);
        assert!(h.incomplete().is_none(), "{:?}", h.incomplete());
        assert!(
            (0..heavy as u64).all(|i| !h.known_for(dev + i)),
            "a heavy pod past its share is unknown"
        );
        assert!(h.known_for(light_dev), "the light pod keeps its share");
        let light_pid = crowd[heavy].0.id() as i32;
        assert!(h.of(dev, ino).iter().any(|hold| hold.pid == light_pid));
        assert!(
            h.fds_read <= MAX_FDS_PER_SCAN,
            "{} entries read",
            h.fds_read
        );
        drop(crowd);
    }

    #[test]
    fn a_pod_with_more_processes_than_one_scan_reads_is_unknown_unread() {
        let me = std::process::id() as i32;
        let crowded = Arc::new(HashSet::from([1u64]));
        let mut processes: Vec<Process> = (0..=MAX_PROCESSES_PER_POD)
            .map(|_| Process {
                pid: me,
                owner: Arc::new(Owner::default()),
                scope: Some(crowded.clone()),
            })
            .collect();
        processes.push(Process {
            pid: me,
            owner: Arc::new(Owner::default()),
            scope: Some(Arc::new(HashSet::from([2u64]))),
        });
        let h = Holders::scan(&processes, &HashSet::from([1, 2]));
        assert!(!h.known_for(1) && h.known_for(2));
        assert_eq!(h.readable, 1, "only the other pod's process was read");
        assert!(h.netns_partial(), "its namespaces were not all looked at");
    }
}
