//! Where the processes that may hold a link's objects come from: every process (local
//! mode), or the processes of the containers that mount the link.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Owner, Process};

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
        let all = every_process()?;
        // In a pid namespace of its own (a container without the host's), processes
        // that share its mount namespace are its own container's: the holders in other
        // containers are unknown, not none.
        if !sees_the_host() {
            let mine = mount_namespace("self").ok();
            if !all
                .iter()
                .any(|p| mount_namespace(&p.pid.to_string()).ok() != mine)
            {
                return Err(
                    "only this container's processes are visible here; give it the host's pid namespace (Compose: pid: host), or ask the sidecar (status --endpoint)"
                        .into(),
                );
            }
        }
        Ok(all)
    }
}

/// Whether this process sees the host's processes: the kernel's thread creator
/// (`kthreadd`, pid 2, whose parent is 0) is visible only in the host's pid namespace.
fn sees_the_host() -> bool {
    std::fs::read_to_string("/proc/2/stat").is_ok_and(|stat| {
        stat.strip_prefix("2 (kthreadd) ")
            .and_then(|rest| rest.split(' ').nth(1))
            == Some("0")
    })
}

/// The mount namespace of process `pid` ("self" for this one), as its `/proc` link.
fn mount_namespace(pid: &str) -> std::io::Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
}

/// Every process this one can see but itself and ipclink's probes, named by command.
fn every_process() -> Result<Vec<Process>, String> {
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
        let all = every_process()?;
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

/// Mount-table lines of this process read at most, looking for a link's own mount.
const MAX_OWN_MOUNTS: usize = 65_536;

/// Which filesystem `path` is on, and where in it: the device (`MAJOR:MINOR`) of the mount
/// that holds it (the last one at the deepest mount point at or above it, as this
/// process sees it) and the path inside that filesystem.
fn mount_of(path: &std::path::Path) -> Option<(String, Option<String>)> {
    use std::io::BufRead;
    let want = std::fs::canonicalize(path).ok()?;
    let f = std::fs::File::open("/proc/self/mountinfo").ok()?;
    // id parent major:minor root point ...
    let mut best: Option<(usize, String, String)> = None;
    for line in std::io::BufReader::new(f)
        .lines()
        .take(MAX_OWN_MOUNTS)
        .map_while(Result::ok)
    {
        let fields: Vec<&str> = line.splitn(6, ' ').collect();
        let [_, _, dev, root, point, _] = fields[..] else {
            continue;
        };
        let point = std::path::PathBuf::from(crate::fs::unescape_mountinfo(point));
        let Ok(rest) = want.strip_prefix(&point) else {
            continue;
        };
        let depth = point.components().count();
        if best.as_ref().is_none_or(|(d, _, _)| depth >= *d) {
            let root = crate::fs::unescape_mountinfo(root);
            let inside = if rest.as_os_str().is_empty() {
                root
            } else {
                std::path::Path::new(&root).join(rest).display().to_string()
            };
            best = Some((depth, dev.to_owned(), inside));
        }
    }
    best.map(|(_, dev, root)| (dev, Some(root)))
}

/// Mount-table lines read at most by one [`containers_mounting`] (each mount namespace is
/// read once): past it, who uses a volume is not known.
const MAX_MOUNT_LINES: usize = 1 << 20;

/// Whether the mount table of process `pid` mounts `dev` at or below `root`, taking
/// the lines it reads from `budget`: `None` when it cannot be read in full (the process
/// may have exited, or the budget ran out).
fn process_mounts(pid: i32, dev: &str, root: Option<&str>, budget: &mut usize) -> Option<bool> {
    use std::io::BufRead;
    let f = std::fs::File::open(format!("/proc/{pid}/mountinfo")).ok()?;
    let mut lines = std::io::BufReader::new(f).lines();
    for _ in 0..MAX_MOUNTS_PER_PROCESS {
        *budget = budget.checked_sub(1)?;
        let line = match lines.next() {
            None => return Some(false),
            Some(l) => l.ok()?,
        };
        let mut fields = line.split(' ').skip(2);
        if let (Some(d), Some(r)) = (fields.next(), fields.next())
            && covers(d, r, dev, root)
        {
            return Some(true);
        }
    }
    None
}

/// Whether a mount-table line's device and root fields show `dev` at, below or above
/// `root` (a parent directory of the link mounted, the link inside it); any mount of
/// `dev` without a root.
fn covers(dev_field: &str, root_field: &str, dev: &str, root: Option<&str>) -> bool {
    if dev_field != dev {
        return false;
    }
    let Some(want) = root else {
        return true;
    };
    let r = crate::fs::unescape_mountinfo(root_field);
    let within = |inner: &str, outer: &str| {
        outer == "/"
            || inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    within(&r, want) || within(want, &r)
}

/// The containers, other than the one this process runs in, that have the filesystem at
/// `path` (a link's volume) mounted: who uses a link in Compose, whether or not its
/// processes hold an object now. Each is named by the first 12 digits of its id. An
/// error says why that cannot be known: `path` is not there, or no process of another
/// container is visible (a container without the host's pid namespace). A container
/// whose mount table cannot be read in full counts as using it.
pub fn containers_mounting(path: &std::path::Path) -> Result<Vec<String>, String> {
    let (dev, root) =
        mount_of(path).ok_or_else(|| format!("{} cannot be looked at", path.display()))?;
    let mine = mount_namespace("self").map_err(|e| format!("/proc/self/ns/mnt: {e}"))?;
    let sees_host = sees_the_host();
    // The host's mount namespace: container runtimes' helpers (podman's conmon, in the
    // container's cgroup) run there, and no container does.
    let host = sees_host.then(|| mount_namespace("1").ok()).flatten();
    let me = std::process::id() as i32;
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    let mut others_visible = false;
    let mut seen: HashMap<String, bool> = HashMap::new();
    // Processes of one mount namespace share a mount table: each is read once.
    let mut tables: HashMap<std::path::PathBuf, bool> = HashMap::new();
    let mut budget = MAX_MOUNT_LINES;
    for pid in dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
    {
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue; // exited
        };
        let ns = match mount_namespace(&pid.to_string()) {
            Ok(ns) => Some(ns),
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::ESRCH)) => {
                continue; // exited
            }
            Err(_) => None, // not readable: counts as mounting it
        };
        // This process's own container (or, on the host, the host's processes).
        if ns.as_ref() == Some(&mine) {
            continue;
        }
        others_visible = true;
        let Some(id) = container_in(&cgroup) else {
            continue; // not in a container
        };
        if ns.is_some() && ns == host {
            continue;
        }
        if seen.get(&id).copied().unwrap_or(false) {
            continue;
        }
        let mounts = match ns {
            None => true,
            Some(ns) => match tables.get(&ns) {
                Some(&m) => m,
                None => {
                    // A process that exited in between says nothing; a table cut
                    // short counts as mounting it.
                    let m = match process_mounts(pid, &dev, root.as_deref(), &mut budget) {
                        Some(m) => m,
                        None if budget == 0 => {
                            return Err(format!(
                                "the containers' mount tables are longer than the {MAX_MOUNT_LINES} lines read"
                            ));
                        }
                        None => std::path::Path::new(&format!("/proc/{pid}")).exists(),
                    };
                    tables.insert(ns, m);
                    m
                }
            },
        };
        *seen.entry(id).or_default() |= mounts;
    }
    if !sees_host && !others_visible {
        return Err(
            "no process of another container is visible here; give this container the host's pid namespace (Compose: pid: host)"
                .into(),
        );
    }
    let mut using: Vec<String> = seen
        .into_iter()
        .filter(|(_, m)| *m)
        .map(|(id, _)| id.chars().take(12).collect())
        .collect();
    using.sort();
    Ok(using)
}

#[cfg(test)]
mod tests {
    use super::{covers, mount_of};

    #[test]
    fn a_path_is_found_in_the_filesystem_of_the_deepest_mount_above_it() {
        let (dev, root) = mount_of(std::path::Path::new("/proc")).expect("/proc");
        assert_eq!(root.as_deref(), Some("/"));
        let (below, root) = mount_of(std::path::Path::new("/proc/1")).expect("/proc/1");
        assert_eq!((below, root.as_deref()), (dev, Some("/1")));
    }

    #[test]
    fn a_mount_covers_the_link_at_below_or_above_its_root_on_its_device_only() {
        let link = Some("/var/lib/docker/volumes/p_frames/_data");
        // The volume itself, a directory in it, the filesystem's root, a parent.
        for root in [
            "/var/lib/docker/volumes/p_frames/_data",
            "/var/lib/docker/volumes/p_frames/_data/control",
            "/",
            "/var/lib/docker/volumes",
        ] {
            assert!(covers("8:1", root, "8:1", link), "{root}");
        }
        // A sibling whose name starts the same, another device, another volume.
        assert!(!covers(
            "8:1",
            "/var/lib/docker/volumes/p_frames/_data2",
            "8:1",
            link
        ));
        assert!(!covers(
            "8:2",
            "/var/lib/docker/volumes/p_frames/_data",
            "8:1",
            link
        ));
        assert!(!covers(
            "8:1",
            "/var/lib/docker/volumes/q/_data",
            "8:1",
            link
        ));
        // Escaped names (a space is \040 in mountinfo) are compared unescaped.
        assert!(covers("0:5", "/a\\040b", "0:5", Some("/a b")));
        assert!(!covers("0:5", "/a\\040bc", "0:5", Some("/a b")));
        // A link's own tmpfs: every mount of the device is it.
        assert!(covers("0:48", "/x", "0:48", Some("/")));
        assert!(covers("0:48", "/x", "0:48", None));
    }
}
