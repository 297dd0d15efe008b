//! The operator's pod cache: every pod of the cluster, trimmed to the fields
//! [`PodView`](crate::pods::PodView) reads, and looked up by namespace and labels through
//! an index, so a reconcile touches only the pods its members can select.
//!
//! [`LinkIndex`] is the same idea for links: a pod event wakes only the links whose
//! members may select it or whose status lists it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ipclink_core::IpcLink;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::pods::{PodView, SlimPod};
use kube::runtime::watcher::Event;

/// How pods are kept and found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodCache {
    /// Trimmed pods, found through the namespace and label index (the default).
    Slim,
    /// Whole pods, found by scanning every cached pod, as before the index: kept only
    /// so the scale benchmark can print both side by side.
    Full,
}

/// One cached pod.
// Every entry is slim but in the benchmark's `full` mode: that one is boxed instead.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Cached {
    /// The fields the operator reads.
    Slim(SlimPod),
    /// The whole object ([`PodCache::Full`]); boxed, so a slim entry is not as large.
    Full(Box<Pod>),
}

impl Cached {
    fn name(&self) -> &str {
        match self {
            Cached::Slim(p) => &p.name,
            Cached::Full(p) => p.metadata.name.as_deref().unwrap_or_default(),
        }
    }

    fn namespace(&self) -> &str {
        match self {
            Cached::Slim(p) => &p.namespace,
            Cached::Full(p) => p.metadata.namespace.as_deref().unwrap_or_default(),
        }
    }

    /// Its labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        match self {
            Cached::Slim(p) => &p.labels,
            Cached::Full(p) => p.metadata.labels.as_ref().unwrap_or(&NONE),
        }
    }

    /// Whether the operator still counts it: not being deleted, or still running.
    pub fn live(&self) -> bool {
        match self {
            Cached::Slim(p) => !p.deleting || p.running,
            Cached::Full(p) => {
                p.metadata.deletion_timestamp.is_none()
                    || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            }
        }
    }

    /// What `link` sees of it, if one of its members selects it.
    pub fn view(&self, link: &IpcLink) -> Option<PodView> {
        match self {
            Cached::Slim(p) => PodView::of_slim(p, link),
            Cached::Full(p) => PodView::of(p, link),
        }
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
        let name = pod.name().to_owned();
        self.remove(&name);
        for (k, v) in pod.labels() {
            self.by_label
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(name.clone());
        }
        self.pods.insert(name, pod);
    }

    fn remove(&mut self, name: &str) {
        let Some(old) = self.pods.remove(name) else {
            return;
        };
        for (k, v) in old.labels() {
            let key = (k.clone(), v.clone());
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
        let space = self
            .namespaces
            .entry(pod.namespace().to_owned())
            .or_default();
        let before = space.pods.len();
        space.insert(Arc::new(pod));
        self.len = self.len + space.pods.len() - before;
    }

    fn remove(&mut self, pod: &Pod) {
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
pub struct PodIndex {
    inner: RwLock<Inner>,
    listed: AtomicBool,
    mode: PodCache,
}

impl std::fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIndex")
            .field("mode", &self.mode)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl PodIndex {
    /// An empty index; `mode` says whether pods are trimmed and looked up by index.
    pub fn new(mode: PodCache) -> PodIndex {
        PodIndex {
            inner: RwLock::default(),
            listed: AtomicBool::new(false),
            mode,
        }
    }

    /// What this index keeps of a pod.
    pub fn keep(&self, pod: &Pod) -> Cached {
        match self.mode {
            PodCache::Slim => Cached::Slim(SlimPod::of(pod)),
            PodCache::Full => Cached::Full(Box::new(pod.clone())),
        }
    }

    /// Folds one watch event in. A relist replaces the whole content at its end, so a
    /// pod deleted while the watch was down does not stay.
    pub fn apply(&self, event: &Event<Pod>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Apply(p) => inner.insert(self.keep(p)),
            Event::Delete(p) => inner.remove(p),
            Event::Init => inner.relist = Some(Vec::new()),
            Event::InitApply(p) => {
                let kept = self.keep(p);
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
        let selected = |p: &Cached| {
            selectors
                .iter()
                .any(|s| ipclink_core::members::selects(s, p.labels()))
        };
        if self.mode == PodCache::Full {
            let mut all: Vec<Arc<Cached>> = inner
                .namespaces
                .values()
                .flat_map(|n| n.pods.values())
                .filter(|p| p.namespace() == namespace && selected(p))
                .cloned()
                .collect();
            all.sort_by(|a, b| a.name().cmp(b.name()));
            return all;
        }
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

/// Where one link is filed in a namespace's [`LinkIndex`].
#[derive(Default)]
struct Filed {
    pairs: Vec<Label>,
    any: bool,
    pods: Vec<String>,
}

/// The links of one namespace, by the labels their members select and the pods their
/// status lists.
#[derive(Default)]
struct LinkSpace {
    filed: HashMap<String, Filed>,
    by_label: HashMap<Label, HashSet<String>>,
    any: HashSet<String>,
    by_pod: HashMap<String, HashSet<String>>,
}

impl LinkSpace {
    fn insert(&mut self, link: &IpcLink) {
        let name = link.name_any();
        self.remove(&name);
        let mut filed = Filed::default();
        for selector in link
            .spec
            .members
            .iter()
            .filter_map(|m| m.pod_selector.as_ref())
        {
            // A pod must carry every matchLabels pair: one of them is enough to file by.
            if let Some((k, v)) = selector.match_labels.iter().flatten().next() {
                filed.pairs.push((k.clone(), v.clone()));
                continue;
            }
            let ins: Vec<Label> = selector
                .match_expressions
                .iter()
                .flatten()
                .find(|e| e.operator == "In")
                .map(|e| {
                    e.values
                        .iter()
                        .flatten()
                        .map(|v| (e.key.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            if ins.is_empty() {
                filed.any = true;
            }
            filed.pairs.extend(ins);
        }
        filed.pods = link
            .status
            .iter()
            .flat_map(|s| s.members.iter().map(|m| m.pod.clone()))
            .collect();
        for pair in &filed.pairs {
            self.by_label
                .entry(pair.clone())
                .or_default()
                .insert(name.clone());
        }
        if filed.any {
            self.any.insert(name.clone());
        }
        for pod in &filed.pods {
            self.by_pod
                .entry(pod.clone())
                .or_default()
                .insert(name.clone());
        }
        self.filed.insert(name, filed);
    }

    fn remove(&mut self, name: &str) {
        let Some(filed) = self.filed.remove(name) else {
            return;
        };
        for pair in filed.pairs {
            drop_name(&mut self.by_label, pair, name);
        }
        for pod in filed.pods {
            drop_name(&mut self.by_pod, pod, name);
        }
        self.any.remove(name);
    }
}

fn drop_name<K: std::hash::Hash + Eq>(map: &mut HashMap<K, HashSet<String>>, key: K, name: &str) {
    if let Some(names) = map.get_mut(&key) {
        names.remove(name);
        if names.is_empty() {
            map.remove(&key);
        }
    }
}

/// Every namespace's links, and the links of a relist in progress.
type LinkSpaces = (HashMap<String, LinkSpace>, Option<Vec<IpcLink>>);

/// The links of each namespace, filed by the pod labels their members select and the
/// pods their status lists, so a pod event finds the links it may concern without
/// looking at the others; fed by the link watch.
#[derive(Default)]
pub struct LinkIndex {
    inner: RwLock<LinkSpaces>,
}

impl std::fmt::Debug for LinkIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkIndex").finish_non_exhaustive()
    }
}

impl LinkIndex {
    /// Folds one watch event in.
    pub fn apply(&self, event: &Event<IpcLink>) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let (spaces, relist) = &mut *guard;
        match event {
            Event::Apply(l) => spaces
                .entry(l.namespace().unwrap_or_default())
                .or_default()
                .insert(l),
            Event::Delete(l) => {
                let ns = l.namespace().unwrap_or_default();
                if let Some(space) = spaces.get_mut(&ns) {
                    space.remove(&l.name_any());
                    if space.filed.is_empty() {
                        spaces.remove(&ns);
                    }
                }
            }
            Event::Init => *relist = Some(Vec::new()),
            Event::InitApply(l) => relist.get_or_insert_with(Vec::new).push(l.clone()),
            Event::InitDone => {
                spaces.clear();
                for l in relist.take().unwrap_or_default() {
                    spaces
                        .entry(l.namespace().unwrap_or_default())
                        .or_default()
                        .insert(&l);
                }
            }
        }
    }

    /// The names of the links of `namespace` that may select a pod `pod` with `labels`
    /// or list it in their status (a superset: the caller checks each).
    pub fn candidates(
        &self,
        namespace: &str,
        pod: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<String> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let Some(space) = guard.0.get(namespace) else {
            return Vec::new();
        };
        let mut names: HashSet<&String> = space.any.iter().collect();
        for (k, v) in labels {
            if let Some(n) = space.by_label.get(&(k.clone(), v.clone())) {
                names.extend(n);
            }
        }
        if let Some(n) = space.by_pod.get(pod) {
            names.extend(n);
        }
        names.into_iter().cloned().collect()
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
                    {"name": "link", "csi": {"driver": ipclink_core::names::DRIVER_NAME, "volumeAttributes": {"link": "frames"}}},
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
        pods.iter().map(|p| p.name().to_owned()).collect()
    }

    #[test]
    fn both_modes_select_the_same_pods() {
        for mode in [PodCache::Slim, PodCache::Full] {
            let index = PodIndex::new(mode);
            index.apply(&Event::Init);
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
                "{mode:?}: nothing before InitDone"
            );
            index.apply(&Event::InitDone);
            assert!(index.listed());
            assert_eq!(index.len(), 4);
            assert_eq!(
                names(index.select("a", &[&selector(&[("app", "cam")])])),
                ["p1", "p2"]
            );
            let prod = selector(&[("app", "cam"), ("tier", "prod")]);
            assert_eq!(names(index.select("a", &[&prod])), ["p1"], "{mode:?}");
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
            index.apply(&Event::Init);
            index.apply(&Event::InitApply(pod("b", "p9", &[("app", "cam")])));
            assert_eq!(index.len(), 3, "the old content serves until InitDone");
            index.apply(&Event::InitDone);
            assert_eq!(index.len(), 1);
            assert!(index.select("a", &[&LabelSelector::default()]).is_empty());
            assert_eq!(
                names(index.select("b", &[&selector(&[("app", "cam")])])),
                ["p9"]
            );
        }
    }

    fn link(ns: &str, name: &str, selectors: &str, pods: &[&str]) -> IpcLink {
        let mut l = ipclink_core::parse_links(
            ns,
            &format!(
                "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  members: {selectors}\n  channels: [{{name: f, kind: fifo}}]\n"
            ),
        )
        .expect("link")
        .remove(0);
        l.status = Some(ipclink_core::spec::IpcLinkStatus {
            members: pods
                .iter()
                .map(|p| ipclink_core::spec::MemberStatus {
                    member: "m".into(),
                    pod: p.to_string(),
                    node: None,
                    mounted: false,
                })
                .collect(),
            ..Default::default()
        });
        l
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn a_pod_finds_the_links_that_may_concern_it() {
        let index = LinkIndex::default();
        let cam = "[{name: m, podSelector: {matchLabels: {app: cam, tier: prod}}}]";
        let det = "[{name: m, podSelector: {matchExpressions: [{key: app, operator: In, values: [det, seg]}]}}]";
        let all = "[{name: m, podSelector: {}}]";
        let none = "[{name: m}]";
        index.apply(&Event::Apply(link("a", "cam", cam, &[])));
        index.apply(&Event::Apply(link("a", "det", det, &[])));
        index.apply(&Event::Apply(link("a", "all", all, &[])));
        index.apply(&Event::Apply(link("a", "none", none, &["old-pod"])));
        index.apply(&Event::Apply(link("b", "cam", cam, &[])));
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            sorted(index.candidates("a", "p", &labels(&[("app", "cam"), ("tier", "prod")]))),
            ["all", "cam"]
        );
        assert_eq!(
            sorted(index.candidates("a", "p", &labels(&[("app", "seg")]))),
            ["all", "det"]
        );
        assert_eq!(
            sorted(index.candidates("a", "old-pod", &labels(&[]))),
            ["all", "none"]
        );
        assert!(
            index
                .candidates("c", "p", &labels(&[("app", "cam")]))
                .is_empty()
        );

        // A changed selector is filed again; a deleted link goes.
        index.apply(&Event::Apply(link("a", "cam", det, &[])));
        assert_eq!(
            sorted(index.candidates("a", "p", &labels(&[("app", "cam"), ("tier", "prod")]))),
            ["all"]
        );
        index.apply(&Event::Delete(link("a", "all", all, &[])));
        assert_eq!(
            sorted(index.candidates("a", "p", &labels(&[("app", "det")]))),
            ["cam", "det"]
        );
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(link("c", "x", all, &[])));
        index.apply(&Event::InitDone);
        assert!(
            index
                .candidates("a", "p", &labels(&[("app", "det")]))
                .is_empty()
        );
        assert_eq!(index.candidates("c", "p", &labels(&[])), ["x"]);
    }
}
