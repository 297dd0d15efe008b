//! The CSI node service: materialize a link once per node on its own tmpfs (under the
//! state directory), bind-mount it into each pod's target, and keep a record of each
//! publication ([`records`]) so every call is idempotent across restarts.
//!
//! This module holds the rules of each RPC. The filesystem and mount work runs on Tokio's
//! blocking pool ([`crate::blocking`]), so a slow `fallocate` or mount never holds up the
//! gRPC workers; [`target`] does the mounts, [`mountinfo`] rebuilds lost state, [`gc`]
//! tears down links that are deleted or unused, [`stats`] answers NodeGetVolumeStats, and
//! [`peer`] tells a link's servers which pod calls.

mod budget;
pub mod charge;
mod edits;
mod gc;
pub mod members;
mod mountinfo;
pub mod peer;
mod records;
mod stats;
mod target;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ipclink_core::model::members::{has_pod_selectors, members_of};
use ipclink_core::model::names::check_dns_subdomain;
use ipclink_core::model::names::{TOPOLOGY_KEY, topology_value};
use ipclink_core::model::roles::mounts_read_only;
use ipclink_core::model::spec::Scope;
use ipclink_core::{InProcess, LinkKey, LinkPlan, Preallocate, StorageMode, Store};
use serde::{Deserialize, Serialize};

use crate::csi;
use crate::error::CsiError;
use crate::ids::{self, check_capability, check_context, check_id, check_target, resolve_link};
use crate::source::LinkSource;
use budget::Reserved;

/// One bind mount of a link into a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The CO's volume id.
    pub volume_id: String,
    /// Link namespace.
    pub namespace: String,
    /// Link name.
    pub link: String,
    /// Published read-only, as the CO asked.
    pub readonly: bool,
    /// Mounted read-only whatever the CO asked: the pod is a client of the link (every
    /// member that selects it has `role: client`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client: bool,
    /// The pod it was published to (`podInfoOnMount`), when the CO said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// That pod's UID (from the request, or the kubelet's target path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

impl Publication {
    /// The pod's UID: as published, or from a kubelet target path
    /// (`…/pods/UID/volumes/…`).
    pub fn pod_uid_at(&self, target: &str) -> Option<String> {
        self.pod_uid.clone().or_else(|| {
            let mut parts = target.split('/');
            parts.find(|p| *p == "pods")?;
            parts.next().filter(|u| !u.is_empty()).map(str::to_owned)
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Publications {
    by_target: BTreeMap<String, Publication>,
}

/// Where a link's preallocated pages are charged.
#[derive(Debug, Clone)]
pub enum Charge {
    /// To the memory cgroup of the pod whose publish materializes the link (under this
    /// cgroup root); in this process when a publish names no pod.
    FirstMember(charge::Cgroups),
    /// To the node plugin itself.
    Plugin,
}

/// What the node accepts, from its flags.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Where preallocated pages are charged.
    pub charge: Charge,
    /// Largest `sizeLimit` of one link (0: no cap).
    pub max_link_bytes: u64,
    /// Largest sum of the `sizeLimit`s of the links on this node (0: no cap).
    pub max_node_bytes: u64,
    /// Most declared objects (channels and semaphores) of all links on this node (0: no
    /// cap): each costs the node kernel memory, descriptors and scrape series.
    pub max_node_objects: usize,
    /// `max_volumes_per_node` reported by NodeGetInfo (0: no limit).
    pub max_volumes: i64,
    /// How long an inline link may stay here unmounted before it is torn down and its
    /// claim released (`None`: while the link exists).
    pub unused_grace: Option<std::time::Duration>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            charge: Charge::Plugin,
            max_link_bytes: 0,
            max_node_bytes: 0,
            max_node_objects: 0,
            max_volumes: 0,
            unused_grace: None,
        }
    }
}

/// Whether `link` has a server member, whose pods may ask who calls ([`peer`]).
fn has_server(link: &ipclink_core::IpcLink) -> bool {
    link.spec
        .members
        .iter()
        .any(|m| m.role == Some(ipclink_core::model::spec::Role::Server))
}

/// One link's lock: held while it is materialized, bound, unbound or torn down, with the
/// plan this process materialized it with (unchanged plan: no work).
type Slot = Arc<Mutex<Option<LinkPlan>>>;

/// The node plugin.
#[derive(Debug)]
pub struct NodePlugin {
    node_id: String,
    source: LinkSource,
    store: Store,
    settings: NodeSettings,
    records: records::Records,
    state: Mutex<Publications>,
    /// (volume id, target) pairs being worked on: a concurrent duplicate gets Aborted.
    busy: Mutex<HashSet<(String, String)>>,
    /// A lock per link, so a long preallocation of one link holds up no other.
    slots: Mutex<HashMap<LinkKey, Slot>>,
    /// `sizeLimit`s and declared objects of links being made now, counted against the
    /// node budgets.
    reserved: Mutex<Reserved>,
    /// When each materialized link was first seen with no publication.
    idle_since: Mutex<HashMap<LinkKey, std::time::Instant>>,
    /// Publications being made now, counted against `max_volumes`.
    in_flight: std::sync::atomic::AtomicUsize,
    /// The peer services of links with a server member ([`peer`]).
    peers: Mutex<peer::Services>,
    /// Held while a peer service starts or stops.
    peer_start: tokio::sync::Mutex<()>,
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

fn errno(what: &str, e: nix::errno::Errno) -> CsiError {
    CsiError::Internal(format!("{what}: {e}"))
}

impl NodePlugin {
    /// Opens the state directory (links live in `STATE/links`).
    pub fn new(
        node_id: String,
        state_dir: &Path,
        source: LinkSource,
        settings: NodeSettings,
    ) -> Result<Arc<Self>, CsiError> {
        // The Node's name (`spec.nodeName`): any Kubernetes object name, dots included.
        check_dns_subdomain(&node_id).map_err(|e| CsiError::invalid("--node-id", e))?;
        std::fs::create_dir_all(state_dir)
            .map_err(|e| CsiError::Internal(format!("state dir: {e}")))?;
        let store = Store::open(&state_dir.join("links"), StorageMode::Tmpfs)?;
        let (records, state) = records::Records::open(state_dir, &state_dir.join("links"))?;
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
            settings,
            records,
            state: Mutex::new(state),
            busy: Mutex::new(HashSet::new()),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            slots: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            idle_since: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            peer_start: tokio::sync::Mutex::new(()),
        }))
    }

    /// The store holding this node's links.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This node's name (`--node-id`).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Where links and pods come from.
    pub fn source(&self) -> &LinkSource {
        &self.source
    }

    /// Every publication, by target path.
    pub fn publications(&self) -> BTreeMap<String, Publication> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_target
            .clone()
    }

    /// The publication at `target` (without copying every other one).
    fn publication(&self, target: &str) -> Option<Publication> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_target
            .get(target)
            .cloned()
    }

    fn mark_busy(&self, volume_id: &str, target: &str) -> Result<BusyGuard<'_>, CsiError> {
        let key = (volume_id.to_owned(), target.to_owned());
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(key.clone()) {
            return Err(CsiError::Busy(format!(
                "volume {volume_id} at {target} is being published or unpublished by another call"
            )));
        }
        Ok(BusyGuard(&self.busy, key))
    }

    /// The lock of link `namespace/name`.
    fn slot(&self, namespace: &str, name: &str) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(LinkKey::new(namespace, name))
            .or_default()
            .clone()
    }

    /// Whether any publication uses link `namespace/name`.
    fn in_use(&self, namespace: &str, name: &str) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_target
            .values()
            .any(|p| p.namespace == namespace && p.link == name)
    }

    /// Runs `f` with this plugin on the blocking pool.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&NodePlugin) -> Result<T, CsiError> + Send + 'static,
    ) -> Result<T, CsiError> {
        let this = self.clone();
        crate::blocking(move || f(&this)).await
    }

    /// NodePublishVolume.
    pub async fn publish(
        self: &Arc<Self>,
        req: csi::NodePublishVolumeRequest,
    ) -> Result<(), CsiError> {
        check_id("volume_id", &req.volume_id)?;
        check_target("target_path", &req.target_path)?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| CsiError::invalid("volume_capability", "is required"))?;
        check_capability(cap)?;
        let ctx: BTreeMap<String, String> = req.volume_context.clone().into_iter().collect();
        check_context(&ctx)?;
        let LinkKey {
            namespace,
            name: link_name,
        } = resolve_link(&req.volume_id, &ctx)?;
        let _busy = self.mark_busy(&req.volume_id, &req.target_path)?;

        let mut publication = Publication {
            volume_id: req.volume_id.clone(),
            namespace: namespace.clone(),
            link: link_name.clone(),
            readonly: req.readonly,
            client: false,
            pod: ctx.get(ids::POD_NAME).cloned(),
            pod_uid: ctx.get(ids::POD_UID).cloned(),
        };
        // Most publishes are of a new target: that is known from memory, without a
        // trip to the blocking pool (which only a rebuilt record's write needs).
        if self.publication(&req.target_path).is_some() {
            let (target, asked) = (req.target_path.clone(), publication.clone());
            if self.blocking(move |p| p.republish(&target, &asked)).await? {
                return Ok(());
            }
        }

        let pod = ctx.get(ids::POD_NAME).map(String::as_str);
        let snapshot = self.source.lookup(&namespace, &link_name, pod).await?;
        let (link, plan) = snapshot.link(&namespace, &link_name)?;
        if !has_pod_selectors(link) && !self.source.opens_selectorless_links() {
            return Err(CsiError::Denied(format!(
                "link {namespace}/{link_name} admits no pod: none of its members has a podSelector (podSelector: {{}} on a member admits every pod of namespace {namespace})"
            )));
        }
        if has_pod_selectors(link) {
            let pod = pod.ok_or_else(|| {
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
            publication.client = mounts_read_only(link, labels);
        }
        // In a cluster, a link lives on one node at a time: claim it for this one
        // before anything is materialized here. A node-scoped link has an instance on
        // every node that mounts it, and no claim.
        if let LinkSource::Kube(k) = &self.source
            && link.spec.scope == Scope::Link
        {
            k.claim(link, &self.node_id).await?;
        }
        let serves = has_server(link);
        let (plan, target) = (plan.clone(), req.target_path.clone());
        let pod_uid = ctx.get(ids::POD_UID).cloned();
        let mounted = self
            .blocking(move |p| p.mount(&plan, &target, publication, pod_uid.as_deref()))
            .await;
        if mounted.is_ok() {
            self.idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&LinkKey::new(&namespace, &link_name));
            if serves {
                self.ensure_peer_service(&namespace, &link_name).await;
            }
        }
        if mounted.is_err()
            && let LinkSource::Kube(k) = &self.source
            && !self.materialized_here(&namespace, &link_name).await
            && let Err(e) = k.release(&namespace, &link_name, &self.node_id).await
        {
            tracing::warn!(namespace, link = link_name, error = %e, "cannot release the claim of a link this node does not hold");
        }
        mounted
    }

    /// Whether link `namespace/name` is materialized on this node.
    async fn materialized_here(self: &Arc<Self>, namespace: &str, name: &str) -> bool {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        self.blocking(move |p| {
            Ok(p.store
                .records()
                .0
                .iter()
                .any(|r| r.plan.namespace == namespace && r.plan.name == name))
        })
        .await
        .unwrap_or(true)
    }

    /// A publish of a target this node already has: `Ok(true)` when it is done (the same
    /// publication again, or one whose id is filled in now), an error when the target
    /// holds something else, `Ok(false)` when the target is not published.
    fn republish(&self, target: &str, asked: &Publication) -> Result<bool, CsiError> {
        let Some(p) = self.publication(target) else {
            return Ok(false);
        };
        if p.volume_id.is_empty() && p.namespace == asked.namespace && p.link == asked.link {
            // Rebuilt from mountinfo after a lost state file: the id comes back now.
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(q) = state.by_target.get_mut(target) {
                // Mountinfo shows a read-only mount, not why: one the CO did not ask
                // for is a client's.
                q.client = q.readonly && !asked.readonly;
                q.readonly = asked.readonly;
                q.volume_id = asked.volume_id.clone();
                q.pod = asked.pod.clone();
                q.pod_uid = asked.pod_uid.clone();
                self.records.put(target, q)?;
            }
            return Ok(true);
        }
        if p.volume_id != asked.volume_id {
            return Err(CsiError::AlreadyExists(format!(
                "target {target} already holds volume {}",
                p.volume_id
            )));
        }
        if p.readonly != asked.readonly {
            return Err(CsiError::AlreadyExists(format!(
                "volume {} is published at {target} with readonly={}; asked readonly={}",
                asked.volume_id, p.readonly, asked.readonly
            )));
        }
        Ok(true)
    }

    /// Materializes the link (once per plan) and binds it at `target`, then records the
    /// publication. A link made from nothing here that cannot be completed is removed
    /// again: a refused publish leaves nothing behind.
    fn mount(
        &self,
        plan: &LinkPlan,
        target: &str,
        publication: Publication,
        pod_uid: Option<&str>,
    ) -> Result<(), CsiError> {
        let _counted = self.count_publication()?;
        let slot = self.slot(&plan.namespace, &plan.name);
        let mut materialized = slot.lock().unwrap_or_else(|p| p.into_inner());
        // A target that cannot be used is refused before the link is materialized.
        let checked = target::check_target_dir(Path::new(target))?;
        if materialized.as_ref() != Some(plan) {
            let fresh = self.store.open_link(&plan.namespace, &plan.name).is_err();
            let _reservation = if fresh {
                Some(self.reserve(plan)?)
            } else {
                match self.reserve_edit(plan) {
                    Ok(r) => r,
                    // The link serves what it served; the pod gets that.
                    Err(held) => {
                        tracing::warn!(namespace = %plan.namespace, link = %plan.name, error = %held, "an edit of the link waits");
                        return self.bind_and_record(plan, target, checked, publication);
                    }
                }
            };
            let alloc = self.allocator(pod_uid)?;
            // With no publication left, what waits for the members to leave is done now.
            let exclusive = !self.in_use(&plan.namespace, &plan.name);
            match self.store.apply(plan, &*alloc, exclusive) {
                Err(e) => {
                    if fresh && let Err(t) = self.store.teardown(&plan.namespace, &plan.name) {
                        tracing::error!(namespace = %plan.namespace, link = %plan.name, error = %t, "cannot remove a link whose making failed");
                    }
                    return Err(e.into());
                }
                Ok(outcome) => {
                    outcome.log(plan);
                    // A link with pending changes is looked at again by the next publish.
                    *materialized = outcome.pending.is_empty().then(|| plan.clone());
                }
            }
        }
        self.bind_and_record(plan, target, checked, publication)
    }

    /// Binds the materialized link at `target` and records the publication.
    fn bind_and_record(
        &self,
        plan: &LinkPlan,
        target: &str,
        checked: target::Target,
        publication: Publication,
    ) -> Result<(), CsiError> {
        let link_fd = self
            .store
            .open_link(&plan.namespace, &plan.name)
            .map_err(|e| errno("open link", e))?;
        target::bind(
            &link_fd,
            checked,
            Path::new(target),
            publication.readonly || publication.client,
        )?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.records.put(target, &publication)?;
        state.by_target.insert(target.to_owned(), publication);
        Ok(())
    }

    /// Where the first publish of a link charges its preallocated pages.
    fn allocator(&self, pod_uid: Option<&str>) -> Result<Box<dyn Preallocate>, CsiError> {
        match (&self.settings.charge, pod_uid) {
            (Charge::FirstMember(cgroups), Some(uid)) => {
                Ok(Box::new(cgroups.charge(cgroups.pod(uid)?, uid)))
            }
            // No pod named (csi-sanity, standalone use): nobody else to charge.
            _ => Ok(Box::new(InProcess)),
        }
    }

    /// NodeUnpublishVolume.
    pub async fn unpublish(
        self: &Arc<Self>,
        req: csi::NodeUnpublishVolumeRequest,
    ) -> Result<(), CsiError> {
        check_id("volume_id", &req.volume_id)?;
        check_target("target_path", &req.target_path)?;
        let _busy = self.mark_busy(&req.volume_id, &req.target_path)?;
        let (volume_id, target) = (req.volume_id.clone(), req.target_path.clone());
        let released = self
            .blocking(move |p| p.unbind(&volume_id, &target))
            .await?;
        // The link goes with its last publication, once it no longer exists.
        if let Some((namespace, name)) = released {
            self.idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(LinkKey::new(&namespace, &name), std::time::Instant::now());
            self.teardown_if_deleted(&namespace, &name).await?;
        }
        Ok(())
    }

    /// Unmounts `target` and forgets its publication; the publication's link, when no
    /// other publication uses it any more.
    fn unbind(&self, volume_id: &str, target: &str) -> Result<Option<(String, String)>, CsiError> {
        let known = self.publication(target);
        if let Some(p) = &known
            && !p.volume_id.is_empty()
            && p.volume_id != volume_id
        {
            return Err(CsiError::NotFound(format!(
                "volume {volume_id} is not published at {target} (it holds {})",
                p.volume_id
            )));
        }
        // The link's lock, so a publish of the same link does not race this unbind.
        let slot = known.as_ref().map(|p| self.slot(&p.namespace, &p.link));
        let _link = slot
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()));
        target::unbind(Path::new(target), known.is_some())?;
        let Some(p) = known else { return Ok(None) };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.records.remove(target)?;
        state.by_target.remove(target);
        let still_used = state
            .by_target
            .values()
            .any(|q| q.namespace == p.namespace && q.link == p.link);
        Ok((!still_used).then_some((p.namespace, p.link)))
    }

    /// NodeGetInfo.
    pub fn info(&self) -> csi::NodeGetInfoResponse {
        csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: self.settings.max_volumes,
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), topology_value(&self.node_id))]),
            }),
        }
    }
}
