//! The CSI node service: materialize a link once per node on its own tmpfs (under the
//! state directory), bind-mount it into each pod's target, and keep a state file of the
//! publications (temp + fsync + rename) so every call is idempotent across restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipclink_core::materialize::{dir_is_empty, is_mount_point};
use ipclink_core::members::members_of;
use ipclink_core::validate::check_dns_label;
use ipclink_core::{StorageMode, Store};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, fstat, mkdirat};
use nix::sys::statvfs::statvfs;
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::{Deserialize, Serialize};

use crate::csi;
use crate::error::CsiError;
use crate::ids::{self, VolumeId, check_context, check_id, check_target};
use crate::source::LinkSource;
use crate::state::{load_json, save_json};

/// Topology key every node reports.
pub const TOPOLOGY_KEY: &str = "topology.ipclink.dev/node";

/// One bind mount of a link into a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The CO's volume id.
    pub volume_id: String,
    /// Link namespace.
    pub namespace: String,
    /// Link name.
    pub link: String,
    /// Published read-only.
    pub readonly: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Publications {
    by_target: BTreeMap<String, Publication>,
}

/// The node plugin.
#[derive(Debug)]
pub struct NodePlugin {
    node_id: String,
    source: LinkSource,
    store: Store,
    state_file: PathBuf,
    state: Mutex<Publications>,
    /// (volume id, target) pairs being worked on: a concurrent duplicate gets Aborted.
    busy: Mutex<HashSet<(String, String)>>,
    /// Serializes materialization and mounting, so one link is mounted once; holds the
    /// plan each link was materialized with by this process (unchanged plan: no work).
    mounting: Mutex<HashMap<(String, String), ipclink_core::LinkPlan>>,
}

/// Releases a busy slot when a call ends.
struct BusyGuard<'a>(&'a Mutex<HashSet<(String, String)>>, (String, String));

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

fn errno(what: &str, e: Errno) -> CsiError {
    CsiError::Internal(format!("{what}: {e}"))
}

fn magic(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

impl NodePlugin {
    /// Opens the state directory (links live in `STATE/links`).
    pub fn new(
        node_id: String,
        state_dir: &Path,
        source: LinkSource,
    ) -> Result<Arc<Self>, CsiError> {
        check_dns_label(&node_id).map_err(|e| CsiError::invalid("--node-id", e))?;
        std::fs::create_dir_all(state_dir)
            .map_err(|e| CsiError::Internal(format!("state dir: {e}")))?;
        let store = Store::open(&state_dir.join("links"), StorageMode::Tmpfs)?;
        let state_file = state_dir.join("publications.json");
        let state = match load_json::<Publications>(&state_file) {
            Ok(Some(s)) => s,
            Ok(None) => rebuild_from_mountinfo(&state_dir.join("links")),
            Err(e) => {
                tracing::warn!(error = %e, "state file unreadable; rebuilding it from /proc/self/mountinfo");
                rebuild_from_mountinfo(&state_dir.join("links"))
            }
        };
        if !state.by_target.is_empty() {
            tracing::info!(
                publications = state.by_target.len(),
                "publications restored"
            );
        }
        Ok(Arc::new(NodePlugin {
            node_id,
            source,
            store,
            state_file,
            state: Mutex::new(state),
            busy: Mutex::new(HashSet::new()),
            mounting: Mutex::new(HashMap::new()),
        }))
    }

    /// The store holding this node's links.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every publication, by target path.
    pub fn publications(&self) -> BTreeMap<String, Publication> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_target
            .clone()
    }

    fn save(&self, state: &Publications) -> Result<(), CsiError> {
        save_json(&self.state_file, state)
            .map_err(|e| CsiError::Internal(format!("state file: {e}")))
    }

    fn claim(&self, volume_id: &str, target: &str) -> Result<BusyGuard<'_>, CsiError> {
        let key = (volume_id.to_owned(), target.to_owned());
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(key.clone()) {
            return Err(CsiError::Busy(format!(
                "volume {volume_id} at {target} is being published or unpublished by another call"
            )));
        }
        Ok(BusyGuard(&self.busy, key))
    }

    /// NodePublishVolume.
    pub fn publish(&self, req: csi::NodePublishVolumeRequest) -> Result<(), CsiError> {
        check_id("volume_id", &req.volume_id)?;
        check_target("target_path", &req.target_path)?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| CsiError::invalid("volume_capability", "is required"))?;
        check_capability(cap)?;
        let ctx: BTreeMap<String, String> = req.volume_context.clone().into_iter().collect();
        check_context(&ctx)?;
        let (namespace, link_name) = resolve_link(&req.volume_id, &ctx)?;
        let _busy = self.claim(&req.volume_id, &req.target_path)?;

        if let Some(p) = self.publications().get(&req.target_path) {
            if p.volume_id.is_empty() && p.namespace == namespace && p.link == link_name {
                // Rebuilt from mountinfo after a lost state file: the id comes back now.
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(q) = state.by_target.get_mut(&req.target_path) {
                    q.volume_id = req.volume_id.clone();
                }
                return self.save(&state);
            }
            if p.volume_id != req.volume_id {
                return Err(CsiError::AlreadyExists(format!(
                    "target {} already holds volume {}",
                    req.target_path, p.volume_id
                )));
            }
            if p.readonly != req.readonly {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {} is published at {} with readonly={}; asked readonly={}",
                    req.volume_id, req.target_path, p.readonly, req.readonly
                )));
            }
            return Ok(());
        }

        let snapshot = self.source.lookup(
            &namespace,
            &link_name,
            ctx.get(ids::POD_NAME).map(String::as_str),
        )?;
        let (link, plan) = snapshot.link(&namespace, &link_name)?;
        if link.spec.members.iter().any(|m| m.pod_selector.is_some()) {
            let pod = ctx.get(ids::POD_NAME).ok_or_else(|| {
                CsiError::Denied(format!(
                    "link {namespace}/{link_name} admits only its members and the request names no pod (the CSIDriver needs podInfoOnMount: true)"
                ))
            })?;
            let labels = snapshot
                .pod_labels(&namespace, pod)
                .ok_or_else(|| CsiError::Denied(format!("pod {namespace}/{pod} is unknown; it may not mount link {namespace}/{link_name}")))?;
            if members_of(link, labels).is_empty() {
                return Err(CsiError::Denied(format!(
                    "pod {namespace}/{pod} is not selected by any member of link {namespace}/{link_name}"
                )));
            }
        }

        let mut materialized = self.mounting.lock().unwrap_or_else(|p| p.into_inner());
        // A target that cannot be used is refused before the link is materialized.
        let target = check_target_dir(Path::new(&req.target_path))?;
        let key = (namespace.clone(), link_name.clone());
        if materialized.get(&key) != Some(plan) {
            self.store.materialize(plan)?;
            self.store.write_record(plan)?;
            materialized.insert(key, plan.clone());
        }
        let link_fd = self
            .store
            .open_link(&namespace, &link_name)
            .map_err(|e| errno("open link", e))?;
        bind(&link_fd, target, Path::new(&req.target_path), req.readonly)?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.by_target.insert(
            req.target_path.clone(),
            Publication {
                volume_id: req.volume_id.clone(),
                namespace,
                link: link_name,
                readonly: req.readonly,
            },
        );
        self.save(&state)
    }

    /// NodeUnpublishVolume.
    pub fn unpublish(&self, req: csi::NodeUnpublishVolumeRequest) -> Result<(), CsiError> {
        check_id("volume_id", &req.volume_id)?;
        check_target("target_path", &req.target_path)?;
        let _busy = self.claim(&req.volume_id, &req.target_path)?;
        let known = self.publications().get(&req.target_path).cloned();
        if let Some(p) = &known
            && !p.volume_id.is_empty()
            && p.volume_id != req.volume_id
        {
            return Err(CsiError::NotFound(format!(
                "volume {} is not published at {} (it holds {})",
                req.volume_id, req.target_path, p.volume_id
            )));
        }
        let mut materialized = self.mounting.lock().unwrap_or_else(|p| p.into_inner());
        unbind(Path::new(&req.target_path), known.is_some())?;
        if let Some(p) = known {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.by_target.remove(&req.target_path);
            self.save(&state)?;
            let still_used = state
                .by_target
                .values()
                .any(|q| q.namespace == p.namespace && q.link == p.link);
            drop(state);
            // The link goes with its last publication, once it no longer exists.
            if !still_used
                && !self
                    .source
                    .lookup(&p.namespace, &p.link, None)?
                    .has_link(&p.namespace, &p.link)
            {
                self.store.teardown(&p.namespace, &p.link)?;
                materialized.remove(&(p.namespace.clone(), p.link.clone()));
            }
        }
        Ok(())
    }

    /// Tears down the links that no publication uses and that no longer exist: a link
    /// deleted after its last member left (its last unpublish kept it, as it still
    /// existed then). Returns the links removed.
    pub fn collect_garbage(&self) -> Vec<(String, String)> {
        let in_use = |ns: &str, name: &str| {
            self.publications()
                .values()
                .any(|p| p.namespace == ns && p.link == name)
        };
        let mut removed = Vec::new();
        for plan in self.store.records().0 {
            let (ns, name) = (plan.namespace.as_str(), plan.name.as_str());
            if in_use(ns, name) {
                continue;
            }
            match self.source.lookup(ns, name, None) {
                Ok(snapshot) if !snapshot.has_link(ns, name) => {
                    // Publishes hold this lock from materializing to recording.
                    let mut materialized = self.mounting.lock().unwrap_or_else(|p| p.into_inner());
                    if in_use(ns, name) {
                        continue;
                    }
                    match self.store.teardown(ns, name) {
                        Ok(()) => {
                            materialized.remove(&(ns.to_owned(), name.to_owned()));
                            tracing::info!(namespace = ns, link = name, "deleted link torn down");
                            removed.push((ns.to_owned(), name.to_owned()));
                        }
                        Err(e) => {
                            tracing::warn!(namespace = ns, link = name, error = %e, "cannot tear down a deleted link")
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(namespace = ns, link = name, error = %e, "cannot look up an unused link")
                }
            }
        }
        removed
    }

    /// NodeGetVolumeStats: bytes and inodes of the link's tmpfs.
    pub fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<Vec<csi::VolumeUsage>, CsiError> {
        check_id("volume_id", &req.volume_id)?;
        if req.volume_path.is_empty() {
            return Err(CsiError::invalid("volume_path", "is required"));
        }
        let pubs = self.publications();
        if !pubs.values().any(|p| p.volume_id == req.volume_id) {
            return Err(CsiError::NotFound(format!(
                "volume {} is not published on this node",
                req.volume_id
            )));
        }
        match pubs.get(&req.volume_path) {
            Some(p) if p.volume_id == req.volume_id => {}
            _ => {
                return Err(CsiError::NotFound(format!(
                    "volume {} is not published at {}",
                    req.volume_id, req.volume_path
                )));
            }
        }
        let v = statvfs(req.volume_path.as_str()).map_err(|e| errno("statvfs", e))?;
        let f = v.fragment_size();
        let usage =
            |unit: csi::volume_usage::Unit, total: u64, free: u64, avail: u64| csi::VolumeUsage {
                total: total as i64,
                available: avail as i64,
                used: total.saturating_sub(free) as i64,
                unit: unit as i32,
            };
        Ok(vec![
            usage(
                csi::volume_usage::Unit::Bytes,
                v.blocks() * f,
                v.blocks_free() * f,
                v.blocks_available() * f,
            ),
            usage(
                csi::volume_usage::Unit::Inodes,
                v.files(),
                v.files_free(),
                v.files_available(),
            ),
        ])
    }

    /// NodeGetInfo.
    pub fn info(&self) -> csi::NodeGetInfoResponse {
        csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), self.node_id.clone())]),
            }),
        }
    }
}

/// Rebuilds the publications from one read of `/proc/self/mountinfo`: every mount of a
/// link's tmpfs (same device) outside the links directory is a publication. Volume ids are
/// not in mountinfo; they are filled in by the CO's next publish of the same target.
fn rebuild_from_mountinfo(links_dir: &Path) -> Publications {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let base = links_dir.to_string_lossy().into_owned();
    // mountinfo: id parent major:minor root mount-point options ... - fstype source super-options
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split(' ').collect())
        .filter(|f: &Vec<&str>| f.len() > 5)
        .collect();
    let mut links: HashMap<&str, (String, String)> = HashMap::new();
    for f in &rows {
        if let Some(rest) = f[4].strip_prefix(&base)
            && let Some((ns, name)) = rest.trim_start_matches('/').split_once('/')
            && check_dns_label(ns).is_ok()
            && check_dns_label(name).is_ok()
        {
            links.insert(f[2], (ns.to_owned(), name.to_owned()));
        }
    }
    let mut out = Publications::default();
    for f in &rows {
        if f[4].starts_with(&base) || f[3] != "/" {
            continue;
        }
        if let Some((ns, name)) = links.get(f[2]) {
            // Octal escapes (\040 for a space) are how mountinfo writes odd paths.
            let target = unescape_mountinfo(f[4]);
            out.by_target.insert(
                target,
                Publication {
                    volume_id: String::new(),
                    namespace: ns.clone(),
                    link: name.clone(),
                    readonly: f[5].split(',').any(|o| o == "ro"),
                },
            );
        }
    }
    out
}

fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Only mounted directories: block access makes no sense for a link.
pub fn check_capability(cap: &csi::VolumeCapability) -> Result<(), CsiError> {
    use csi::volume_capability::AccessType;
    match cap.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) => {
            return Err(CsiError::invalid(
                "volume_capability",
                "block access is not supported; an ipclink volume is a directory (use mount)",
            ));
        }
        None => {
            return Err(CsiError::invalid(
                "volume_capability",
                "access_type is required (mount)",
            ));
        }
    }
    match cap.access_mode.as_ref().map(|m| m.mode) {
        Some(m) if m != 0 => Ok(()),
        _ => Err(CsiError::invalid(
            "volume_capability",
            "access_mode is required",
        )),
    }
}

/// (namespace, link) of a publish request: from the id for a persistent volume, from the
/// context for an inline ephemeral one. A pod of another namespace is refused.
fn resolve_link(
    volume_id: &str,
    ctx: &BTreeMap<String, String>,
) -> Result<(String, String), CsiError> {
    let pod_ns = ctx.get(ids::POD_NAMESPACE);
    if ctx.get(ids::EPHEMERAL).map(String::as_str) == Some("true") {
        let link = ctx.get(ids::LINK).ok_or_else(|| {
            CsiError::invalid(
                "volume_context",
                "an inline volume needs volumeAttributes.link",
            )
        })?;
        check_dns_label(link)
            .map_err(|e| CsiError::invalid("volume_context", format!("link: {e}")))?;
        let ns = pod_ns.ok_or_else(|| {
            CsiError::invalid(
                "volume_context",
                "no pod namespace: the CSIDriver needs podInfoOnMount: true",
            )
        })?;
        check_dns_label(ns)
            .map_err(|e| CsiError::invalid("volume_context", format!("pod namespace: {e}")))?;
        return Ok((ns.clone(), link.clone()));
    }
    let id = VolumeId::parse(volume_id)
        .ok_or_else(|| CsiError::NotFound(format!("{volume_id:?} is not an ipclink volume id")))?;
    for (key, want) in [(ids::NAMESPACE, &id.namespace), (ids::LINK, &id.link)] {
        if let Some(v) = ctx.get(key)
            && v != want
        {
            return Err(CsiError::invalid(
                "volume_context",
                format!("{key} {v:?} does not match the volume id"),
            ));
        }
    }
    if let Some(ns) = pod_ns
        && ns != &id.namespace
    {
        return Err(CsiError::Denied(format!(
            "a pod of namespace {ns} may not mount link {}/{}",
            id.namespace, id.link
        )));
    }
    Ok((id.namespace, id.link))
}

/// Opens the parent of `target` without following any symlink on the way.
fn open_parent(target: &Path) -> Result<(OwnedFd, String), CsiError> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CsiError::invalid("target_path", "has no final name"))?
        .to_owned();
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(nix::fcntl::AT_FDCWD, parent, how) {
        Ok(fd) => Ok((fd, name)),
        Err(Errno::ELOOP) => Err(CsiError::invalid("target_path", "goes through a symlink")),
        Err(Errno::ENOENT) => Err(CsiError::NotFound(format!(
            "the parent of {} does not exist",
            target.display()
        ))),
        Err(Errno::ENOTDIR) => Err(CsiError::invalid(
            "target_path",
            "a parent is not a directory",
        )),
        Err(e) => Err(errno("open target parent", e)),
    }
}

/// Opens `name` under `parent` as a directory, never following a symlink; `None` when
/// it does not exist.
fn open_target(parent: &OwnedFd, name: &str) -> Result<Option<OwnedFd>, CsiError> {
    match openat(
        parent.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP) => Err(CsiError::invalid("target_path", "is a symlink")),
        Err(Errno::ENOTDIR) => Err(CsiError::invalid(
            "target_path",
            "exists and is not a directory",
        )),
        Err(e) => Err(errno("open target", e)),
    }
}

/// A publish target, opened without following symlinks and checked before anything is
/// created; [`bind`] then uses these descriptors.
struct Target {
    parent: OwnedFd,
    name: String,
    /// The existing directory, if any (empty, or a mount point).
    dir: Option<OwnedFd>,
}

/// Refuses, changing nothing, a target that is not absent, an empty directory, or a mount
/// point (which [`bind`] then checks is this link's).
fn check_target_dir(target: &Path) -> Result<Target, CsiError> {
    let (parent, name) = open_parent(target)?;
    let dir = open_target(&parent, &name)?;
    if let Some(fd) = &dir
        && !is_mount_point(parent.as_fd(), fd.as_fd()).map_err(|e| errno("stat", e))?
        && !dir_is_empty(fd.as_fd()).map_err(|e| errno("read target", e))?
    {
        return Err(CsiError::Precondition(format!(
            "{} exists and is not empty",
            target.display()
        )));
    }
    Ok(Target { parent, name, dir })
}

fn bind(link: &OwnedFd, target: Target, path: &Path, readonly: bool) -> Result<(), CsiError> {
    let Target { parent, name, dir } = target;
    let tfd = match dir {
        Some(fd) => fd,
        None => {
            match mkdirat(
                parent.as_fd(),
                name.as_str(),
                Mode::from_bits_truncate(0o750),
            ) {
                Ok(()) => {}
                // Made by someone else since the check: it is checked like any other.
                Err(Errno::EEXIST) => return bind(link, check_target_dir(path)?, path, readonly),
                Err(e) => return Err(errno("create target", e)),
            }
            open_target(&parent, &name)?
                .ok_or_else(|| CsiError::Internal(format!("{} vanished", path.display())))?
        }
    };
    if is_mount_point(parent.as_fd(), tfd.as_fd()).map_err(|e| errno("stat", e))? {
        // Mounted already: ours if it is this link (a crash between the mount and the
        // state write), otherwise something else that is left alone.
        let here = fstat(tfd.as_fd()).map_err(|e| errno("stat", e))?.st_dev;
        if here == fstat(link.as_fd()).map_err(|e| errno("stat", e))?.st_dev {
            return Ok(());
        }
        return Err(CsiError::Precondition(format!(
            "{} is already a mount point",
            path.display()
        )));
    }
    mount(
        Some(magic(link).as_str()),
        magic(&tfd).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| errno("bind mount", e))?;
    // The bind copies the flags of the link's tmpfs mount (nosuid, nodev, noexec); only
    // read-only needs a remount, of the new mount, reached by opening the target again.
    if readonly {
        let mounted = open_target(&parent, &name)?
            .ok_or_else(|| CsiError::Internal(format!("{} vanished", path.display())))?;
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        if let Err(e) = mount(
            None::<&str>,
            magic(&mounted).as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        ) {
            let _ = umount2(magic(&mounted).as_str(), MntFlags::MNT_DETACH);
            return Err(errno("remount read-only", e));
        }
    }
    Ok(())
}

/// Unmounts `target` if it is a mount point and removes it if empty. A target that is
/// gone is fine (idempotent).
fn unbind(target: &Path, ours: bool) -> Result<(), CsiError> {
    let (parent, name) = match open_parent(target) {
        Ok(p) => p,
        Err(CsiError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(tfd) = open_target(&parent, &name)? else {
        return Ok(());
    };
    let is_mount = is_mount_point(parent.as_fd(), tfd.as_fd()).map_err(|e| errno("stat", e))?;
    if is_mount {
        if !ours {
            return Err(CsiError::NotFound(format!(
                "{} is a mount ipclink did not make",
                target.display()
            )));
        }
        umount2(magic(&tfd).as_str(), MntFlags::MNT_DETACH).map_err(|e| errno("unmount", e))?;
    }
    drop(tfd);
    match unlinkat(parent.as_fd(), name.as_str(), UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EEXIST) => Ok(()),
        Err(e) => Err(errno("remove target", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/var/lib/a\\040b"), "/var/lib/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/trailing\\04"), "/trailing\\04");
    }
}
