//! The operator's pod cache: every pod of the cluster, trimmed to the fields
//! [`PodView`](crate::pods::PodView) reads, and looked up by namespace and labels through
//! an index, so a reconcile touches only the pods its members can select.
//!
//! [`PodWatch`] feeds it from one watch and wakes the links a pod event concerns,
//! found through [`LinkIndex`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ipclink_core::IpcLink;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::cache::linkindex::LinkIndex;
use crate::cache::watch::Reconnect;
use crate::pods::{PodView, SlimPod, WirePod};
use futures::StreamExt;
use kube::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};

/// One cached pod: the fields the operator reads.
pub type Cached = SlimPod;

impl SlimPod {
    /// Its labels.
    pub fn label_pairs(&self) -> Vec<(&str, &str)> {
        self.labels.iter().collect()
    }

    /// Whether `selector` selects it.
    pub fn selected_by(&self, selector: &LabelSelector) -> bool {
        ipclink_core::model::members::selects(selector, &self.labels)
    }

    /// Whether the operator still counts it: not being deleted, or still running.
    pub fn live(&self) -> bool {
        !self.deleting || self.running
    }

    /// What `link` sees of it, if one of its members selects it.
    pub fn view(&self, link: &IpcLink) -> Option<PodView> {
        PodView::of_slim(self, link)
    }
}

/// A pod as a watch yields it: [`Pod`] (the whole object) or [`WirePod`] (what the
/// operator decodes of the pods it watches).
pub trait Watched:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// What the index keeps of it.
    fn keep(&self) -> Cached;
}

impl Watched for Pod {
    fn keep(&self) -> Cached {
        SlimPod::of(self)
    }
}

impl Watched for WirePod {
    fn keep(&self) -> Cached {
        SlimPod::from(self.clone())
    }
}

type Label = (String, String);

#[derive(Default)]
struct Namespace {
    pods: BTreeMap<String, Arc<Cached>>,
    by_label: HashMap<Label, HashSet<String>>,
}

impl Namespace {
    fn insert(&mut self, pod: Arc<Cached>) {
        let name = pod.name.clone();
        self.remove(&name);
        for (k, v) in pod.label_pairs() {
            self.by_label
                .entry((k.to_owned(), v.to_owned()))
                .or_default()
                .insert(name.clone());
        }
        self.pods.insert(name, pod);
    }

    fn remove(&mut self, name: &str) {
        let Some(old) = self.pods.remove(name) else {
            return;
        };
        for (k, v) in old.label_pairs() {
            let key = (k.to_owned(), v.to_owned());
            if let Some(names) = self.by_label.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    self.by_label.remove(&key);
                }
            }
        }
    }

    /// Names of the pods `selector` may select: the smallest set among its
    /// `matchLabels` pairs and `In` expressions; `None` when it has neither (every pod
    /// of the namespace is a candidate).
    fn candidates(&self, selector: &LabelSelector) -> Option<HashSet<&str>> {
        let pairs = selector.match_labels.iter().flatten().map(|(k, v)| {
            self.by_label
                .get(&(k.clone(), v.clone()))
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect::<HashSet<&str>>()
        });
        let ins = selector
            .match_expressions
            .iter()
            .flatten()
            .filter(|e| e.operator == "In")
            .map(|e| {
                e.values
                    .iter()
                    .flatten()
                    .filter_map(|v| self.by_label.get(&(e.key.clone(), v.clone())))
                    .flatten()
                    .map(String::as_str)
                    .collect::<HashSet<&str>>()
            });
        pairs.chain(ins).min_by_key(HashSet::len)
    }
}

#[derive(Default)]
struct Inner {
    namespaces: HashMap<String, Namespace>,
    /// The pods of a relist in progress (between `Init` and `InitDone`).
    relist: Option<Vec<Cached>>,
    len: usize,
}

impl Inner {
    fn insert(&mut self, pod: Cached) {
        let space = self.namespaces.entry(pod.namespace.clone()).or_default();
        let before = space.pods.len();
        space.insert(Arc::new(pod));
        self.len = self.len + space.pods.len() - before;
    }

    fn remove(&mut self, pod: &impl kube::Resource) {
        let ns = pod.namespace().unwrap_or_default();
        if let Some(space) = self.namespaces.get_mut(&ns) {
            let before = space.pods.len();
            space.remove(&pod.name_any());
            self.len -= before - space.pods.len();
            if space.pods.is_empty() {
                self.namespaces.remove(&ns);
            }
        }
    }
}

/// Every pod, by namespace and label; fed by a pod watch.
#[derive(Default)]
pub struct PodIndex {
    inner: RwLock<Inner>,
    listed: AtomicBool,
}

impl std::fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIndex")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl PodIndex {
    /// An empty index.
    pub fn new() -> PodIndex {
        PodIndex::default()
    }

    /// Folds one watch event in. A relist replaces the whole content at its end, so a
    /// pod deleted while the watch was down does not stay.
    pub fn apply<P: Watched>(&self, event: &Event<P>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Apply(p) => inner.insert(p.keep()),
            Event::Delete(p) => inner.remove(p),
            Event::Init => inner.relist = Some(Vec::new()),
            Event::InitApply(p) => {
                let kept = p.keep();
                inner.relist.get_or_insert_with(Vec::new).push(kept);
            }
            Event::InitDone => {
                let pods = inner.relist.take().unwrap_or_default();
                inner.namespaces.clear();
                inner.len = 0;
                for p in pods {
                    inner.insert(p);
                }
                drop(inner);
                self.listed.store(true, Ordering::Release);
            }
        }
    }

    /// Whether the first list is in (before it, every link would look memberless).
    pub fn listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    /// How many pods are cached.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len
    }

    /// Whether no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pods of `namespace` that at least one of `selectors` selects, by name.
    pub fn select(&self, namespace: &str, selectors: &[&LabelSelector]) -> Vec<Arc<Cached>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let selected = |p: &Cached| selectors.iter().any(|s| p.selected_by(s));
        let Some(space) = inner.namespaces.get(namespace) else {
            return Vec::new();
        };
        let mut names: Vec<&str> = Vec::new();
        for s in selectors {
            match space.candidates(s) {
                Some(c) => names.extend(c),
                None => names.extend(space.pods.keys().map(String::as_str)),
            }
        }
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| space.pods.get(n))
            .filter(|p| selected(p))
            .cloned()
            .collect()
    }
}

/// The pod watch: it feeds the pod index, then wakes the links a pod event concerns.
pub struct PodWatch {
    /// The pod index it feeds.
    pub index: Arc<PodIndex>,
    /// The links by what their members select.
    pub links: Arc<LinkIndex>,
    /// The link cache.
    pub store: Store<IpcLink>,
}

impl std::fmt::Debug for PodWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWatch")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl PodWatch {
    /// `controller`, woken by the pods of `api`: whole pods, or only what the slim cache
    /// decodes ([`WirePod`]).
    pub fn wakes<P: Watched>(
        self,
        controller: Controller<IpcLink>,
        api: Api<P>,
    ) -> Controller<IpcLink> {
        let PodWatch {
            index,
            links,
            store,
        } = self;
        // The index keeps what the operator reads of each pod, and is fed before the
        // event wakes a link.
        let stream = watcher(api, watcher::Config::default())
            .backoff(Reconnect::default())
            .inspect(move |e| {
                if let Ok(e) = e {
                    index.apply(e);
                }
            })
            .touched_objects();
        // A pod event wakes every link of its namespace that selects it now or listed
        // it before (labels can change).
        controller.watches_stream(stream, move |pod: P| {
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let labels = pod.labels();
            let candidates: Vec<_> = links
                .candidates(&ns, &name, labels)
                .into_iter()
                .filter_map(|l| store.get(&ObjectRef::new(&l).within(&ns)))
                .collect();
            candidates
                .into_iter()
                .filter(|l| {
                    !ipclink_core::model::members::members_of(l, labels).is_empty()
                        || l.status
                            .as_ref()
                            .is_some_and(|s| s.members.iter().any(|m| m.pod == name))
                })
                .map(|l| ObjectRef::from_obj(&*l))
                .collect::<Vec<_>>()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": ns,
                "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                "annotations": {"big": "x".repeat(4096)},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {
                "nodeName": "node-a.example.com",
                "securityContext": {"runAsUser": 1000, "fsGroup": 2000, "runAsNonRoot": true},
                "containers": [{
                    "name": "app", "image": "registry.example/app:1",
                    "env": [{"name": "A", "value": "x".repeat(1024)}],
                    "securityContext": {"runAsGroup": 3000, "readOnlyRootFilesystem": true},
                    "volumeMounts": [
                        {"name": "link", "mountPath": "/dev/shm"},
                        {"name": "cache", "mountPath": "/cache"},
                    ],
                }],
                "volumes": [
                    {"name": "link", "csi": {"driver": ipclink_core::model::names::DRIVER_NAME, "volumeAttributes": {"link": "frames"}}},
                    {"name": "other", "csi": {"driver": "other.csi.example", "volumeAttributes": {"link": "frames"}}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "frames"}},
                    {"name": "cache", "emptyDir": {}},
                ],
            },
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .expect("pod")
    }

    #[test]
    fn a_slim_pod_keeps_what_the_operator_reads_and_nothing_else() {
        let full = pod("vision", "cam-0", &[("app", "camera")]);
        let small = SlimPod::of(&full);
        let names: Vec<(&str, Option<&str>, Option<&str>)> = small
            .volumes
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.inline_link.as_deref(),
                    v.claim.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("link", Some("frames"), None),
                ("data", None, Some("frames"))
            ]
        );
        assert_eq!(small.containers[0].mounts, ["link"]);
        assert_eq!(
            (
                small.run_as_user,
                small.fs_group,
                small.containers[0].run_as_group
            ),
            (Some(1000), Some(2000), Some(3000))
        );
        assert!(small.running && !small.deleting);
        assert_eq!(small.node.as_deref(), Some("node-a.example.com"));
        let link: ipclink_core::IpcLink = ipclink_core::parse_links(
            "vision",
            "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {name: frames, namespace: vision}\nspec:\n  claim: {}\n  members: [{name: cam, podSelector: {matchLabels: {app: camera}}}]\n  channels: [{name: f, kind: fifo}]\n",
        )
        .expect("link")
        .remove(0);
        let view = PodView::of_slim(&small, &link).expect("selected");
        assert!(view.mounted && view.uses_link);
        assert_eq!(view.identities.len(), 1);
        assert_eq!(view.identities[0].uid, Some(1000));
        assert_eq!(view.identities[0].groups, [2000, 3000]);
        // Whole, the same pod is many times larger in memory.
        let heap = |p: &SlimPod| {
            std::mem::size_of::<SlimPod>()
                + p.volumes.len() * std::mem::size_of::<crate::pods::SlimVolume>()
                + p.containers.len() * std::mem::size_of::<crate::pods::SlimContainer>()
        };
        assert!(
            heap(&small) * 8
                < std::mem::size_of::<Pod>()
                    + std::mem::size_of::<k8s_openapi::api::core::v1::Container>(),
            "{}",
            heap(&small)
        );
    }

    #[test]
    fn a_pod_decoded_off_the_wire_keeps_the_same_as_a_whole_pod() {
        let decode =
            |v: serde_json::Value| -> WirePod { serde_json::from_value(v).expect("a wire pod") };
        let mut full = pod("vision", "cam-0", &[("app", "camera")]);
        full.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let wire = decode(serde_json::to_value(&full).expect("json"));
        assert_eq!(wire.metadata.annotations, None, "annotations are skipped");
        assert_eq!(
            wire.metadata.managed_fields, None,
            "managed fields are skipped"
        );
        assert_eq!(SlimPod::from(wire.clone()), SlimPod::of(&full));
        assert_eq!(wire.keep(), SlimPod::of(&full));
        // Fields left out or null decode as absent, as they do for a whole pod.
        let bare = serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": null},
            "spec": {"containers": [{"name": "c", "volumeMounts": null}], "volumes": null, "securityContext": null},
            "status": null,
        });
        let whole: Pod = serde_json::from_value(bare.clone()).expect("pod");
        assert_eq!(SlimPod::from(decode(bare)), SlimPod::of(&whole));
        let empty = serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}});
        let whole: Pod = serde_json::from_value(empty.clone()).expect("pod");
        assert_eq!(SlimPod::from(decode(empty)), SlimPod::of(&whole));
    }

    fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        }
    }

    fn names(pods: Vec<Arc<Cached>>) -> Vec<String> {
        pods.iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn the_index_selects_by_namespace_and_label() {
        {
            let index = PodIndex::new();
            index.apply(&Event::<Pod>::Init);
            for (ns, name, labels) in [
                ("a", "p1", vec![("app", "cam"), ("tier", "prod")]),
                ("a", "p2", vec![("app", "cam"), ("tier", "test")]),
                ("a", "p3", vec![("app", "det")]),
                ("b", "p1", vec![("app", "cam")]),
            ] {
                index.apply(&Event::InitApply(pod(ns, name, &labels)));
            }
            assert!(
                !index.listed() && index.is_empty(),
                "nothing before InitDone"
            );
            index.apply(&Event::<Pod>::InitDone);
            assert!(index.listed());
            assert_eq!(index.len(), 4);
            assert_eq!(
                names(index.select("a", &[&selector(&[("app", "cam")])])),
                ["p1", "p2"]
            );
            let prod = selector(&[("app", "cam"), ("tier", "prod")]);
            assert_eq!(names(index.select("a", &[&prod])), ["p1"]);
            let expr = LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "In".into(),
                    values: Some(vec!["det".into(), "none".into()]),
                }]),
            };
            assert_eq!(names(index.select("a", &[&expr, &prod])), ["p1", "p3"]);
            let not_in = LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["test".into()]),
                }]),
            };
            assert_eq!(names(index.select("a", &[&not_in])), ["p1", "p3"]);
            assert_eq!(
                names(index.select("a", &[&LabelSelector::default()])),
                ["p1", "p2", "p3"]
            );
            assert!(index.select("c", &[&LabelSelector::default()]).is_empty());

            // A relabel moves the pod between label sets; a delete drops it.
            index.apply(&Event::Apply(pod("a", "p2", &[("app", "det")])));
            assert_eq!(
                names(index.select("a", &[&selector(&[("app", "cam")])])),
                ["p1"]
            );
            assert_eq!(
                names(index.select("a", &[&selector(&[("app", "det")])])),
                ["p2", "p3"]
            );
            index.apply(&Event::Delete(pod("a", "p3", &[])));
            assert_eq!(
                names(index.select("a", &[&selector(&[("app", "det")])])),
                ["p2"]
            );
            assert_eq!(index.len(), 3);

            // A relist replaces everything: a pod missed while the watch was down goes.
            index.apply(&Event::<Pod>::Init);
            index.apply(&Event::InitApply(pod("b", "p9", &[("app", "cam")])));
            assert_eq!(index.len(), 3, "the old content serves until InitDone");
            index.apply(&Event::<Pod>::InitDone);
            assert_eq!(index.len(), 1);
            assert!(index.select("a", &[&LabelSelector::default()]).is_empty());
            assert_eq!(
                names(index.select("b", &[&selector(&[("app", "cam")])])),
                ["p9"]
            );
        }
    }
}
