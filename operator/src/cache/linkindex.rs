//! Links by the labels their members select and the pods their status lists: a pod
//! event wakes only the links it may concern, not every link of its namespace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use ipclink_core::IpcLink;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

type Label = (String, String);

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

    fn link(ns: &str, name: &str, selectors: &str, pods: &[&str]) -> IpcLink {
        let mut l = ipclink_core::parse_links(
            ns,
            &format!(
                "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  members: {selectors}\n  channels: [{{name: f, kind: fifo}}]\n"
            ),
        )
        .expect("link")
        .remove(0);
        l.status = Some(ipclink_core::model::spec::IpcLinkStatus {
            members: pods
                .iter()
                .map(|p| ipclink_core::model::spec::MemberStatus {
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
