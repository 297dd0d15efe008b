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
        // In a container that sees only its own processes, the holders in other
        // containers are unknown, not none.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if container_in(&own).is_some()
            && !all.iter().any(|p| {
                std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid))
                    .is_ok_and(|c| !c.is_empty() && c != own)
            })
        {
            return Err(
                "only this container's processes are visible here; give it the host's pid namespace (Compose: pid: host), or ask the sidecar (status --endpoint)"
                    .into(),
            );
        }
        Ok(all)
    }
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

/// Which filesystem, and where in it, `path` is: its mount's device (`MAJOR:MINOR`) and
/// root when `path` is a mount point of this process, else its device alone (every
/// mount of that device then counts).
fn mount_of(path: &std::path::Path) -> Option<(String, Option<String>)> {
    use std::io::BufRead;
    let want = std::fs::canonicalize(path).ok()?;
    let f = std::fs::File::open("/proc/self/mountinfo").ok()?;
    // id parent major:minor root point ...: the last mount at the path is the one seen.
    let mut found = None;
    for line in std::io::BufReader::new(f)
        .lines()
        .take(MAX_OWN_MOUNTS)
        .map_while(Result::ok)
    {
        let fields: Vec<&str> = line.splitn(6, ' ').collect();
        if let [_, _, dev, root, point, _] = fields[..]
            && std::path::Path::new(&crate::fs::unescape_mountinfo(point)) == want
        {
            found = Some((dev.to_owned(), Some(crate::fs::unescape_mountinfo(root))));
        }
    }
    found.or_else(|| {
        let dev = nix::sys::stat::stat(&want).ok()?.st_dev;
        Some((
            format!(
                "{}:{}",
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            ),
            None,
        ))
    })
}

/// Whether the mount table of process `pid` mounts `dev` at or below `root`: `None`
/// when it cannot be read in full (the process may have exited).
fn process_mounts(pid: i32, dev: &str, root: Option<&str>) -> Option<bool> {
    use std::io::BufRead;
    let f = std::fs::File::open(format!("/proc/{pid}/mountinfo")).ok()?;
    let mut lines = std::io::BufReader::new(f).lines();
    for _ in 0..MAX_MOUNTS_PER_PROCESS {
        let line = match lines.next() {
            None => return Some(false),
            Some(l) => l.ok()?,
        };
        let mut fields = line.split(' ').skip(2);
        let (Some(d), Some(r)) = (fields.next(), fields.next()) else {
            continue;
        };
        if d != dev {
            continue;
        }
        let r = crate::fs::unescape_mountinfo(r);
        let below = |want: &str| {
            r == want
                || r.strip_prefix(want)
                    .is_some_and(|rest| rest.starts_with('/'))
                || want == "/"
        };
        if root.is_none_or(below) {
            return Some(true);
        }
    }
    None
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
    let own = container_in(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    let me = std::process::id() as i32;
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    let mut others_visible = false;
    let mut seen: HashMap<String, bool> = HashMap::new();
    for pid in dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
    {
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue; // exited
        };
        let id = container_in(&cgroup);
        if id == own {
            continue;
        }
        others_visible = true;
        let Some(id) = id else { continue };
        if seen.get(&id).copied().unwrap_or(false) {
            continue;
        }
        // A process that exited in between says nothing; one whose table is cut counts.
        let mounts = match process_mounts(pid, &dev, root.as_deref()) {
            Some(m) => m,
            None => std::path::Path::new(&format!("/proc/{pid}")).exists(),
        };
        *seen.entry(id).or_default() |= mounts;
    }
    if own.is_some() && !others_visible {
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
