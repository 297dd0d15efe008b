//! The node plugin's members: the processes of the pods it published links to, found
//! through the pods' cgroups (each container is a cgroup below its pod's), and named by
//! pod and container (container names from the API server, by the ids in the pods'
//! status; the id itself when the names cannot be had). Seeing another pod's processes
//! needs the host's pid namespace (the chart's node plugin has `hostPID`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use ipclink_core::LinkKey;
use ipclink_core::probe::holders::{Members, Owner, Process, command};

use super::NodePlugin;
use super::charge::Cgroups;
use crate::source::LinkSource;

/// The processes of the pods this node published links to.
#[derive(Debug)]
pub struct PodMembers {
    plugin: Arc<NodePlugin>,
    cgroups: Cgroups,
    /// Container names by pod UID and container id.
    names: HashMap<String, HashMap<String, String>>,
}

impl PodMembers {
    /// The members of `plugin`'s publications, found under `cgroups`.
    pub fn new(plugin: Arc<NodePlugin>, cgroups: Cgroups) -> Self {
        PodMembers {
            plugin,
            cgroups,
            names: HashMap::new(),
        }
    }

    /// The name of container `id` of pod `namespace/pod`, asked of the API server once
    /// per pod and again when a new container appears.
    fn container_name(
        &mut self,
        uid: &str,
        namespace: &str,
        pod: Option<&str>,
        id: &str,
    ) -> String {
        let short = || id.chars().take(12).collect::<String>();
        if let Some(name) = self.names.get(uid).and_then(|n| n.get(id)) {
            return name.clone();
        }
        let (LinkSource::Kube(kube), Some(pod)) = (self.plugin.source(), pod) else {
            return short();
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return short();
        };
        match handle.block_on(kube.container_names(namespace, pod)) {
            Ok(found) => {
                let name = found.get(id).cloned().unwrap_or_else(short);
                self.names.insert(uid.to_owned(), found);
                name
            }
            Err(e) => {
                tracing::debug!(namespace, pod, error = %e, "cannot read the pod's container names");
                short()
            }
        }
    }
}

/// The container cgroups directly below a pod's and the pids in each, by container id.
fn containers(pod: &Path) -> Vec<(String, Vec<i32>)> {
    let Ok(entries) = std::fs::read_dir(pod) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // cgroupfs: the id; systemd: cri-containerd-ID.scope, crio-ID.scope.
            let id = name
                .trim_end_matches(".scope")
                .rsplit('-')
                .next()
                .unwrap_or(&name)
                .to_owned();
            let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).ok()?;
            let pids = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            Some((id, pids))
        })
        .collect()
}

impl Members for PodMembers {
    fn processes(&mut self) -> Result<Vec<Process>, String> {
        let mut pods: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
        // The devices of the links each pod mounts: a process past the scan's bounds
        // leaves the holders of those links unknown, not every tenant's.
        let mut scopes: BTreeMap<String, HashSet<u64>> = BTreeMap::new();
        let mut devs: HashMap<LinkKey, Option<u64>> = HashMap::new();
        for (target, p) in self.plugin.publications() {
            if let Some(uid) = p.pod_uid_at(&target) {
                pods.entry(uid.clone())
                    .or_insert((p.namespace.clone(), p.pod.clone()));
                let dev = *devs
                    .entry(LinkKey::new(&p.namespace, &p.link))
                    .or_insert_with(|| {
                        let link = self.plugin.store().open_link(&p.namespace, &p.link).ok()?;
                        nix::sys::stat::fstat(link.as_fd()).ok().map(|st| st.st_dev)
                    });
                scopes.entry(uid).or_default().extend(dev);
            }
        }
        let mut out = Vec::new();
        let mut containers_seen = 0usize;
        for (uid, (namespace, pod)) in pods {
            let scope = Some(Arc::new(scopes.remove(&uid).unwrap_or_default()));
            let Ok(dir) = self.cgroups.pod(&uid) else {
                continue; // gone, or never started
            };
            // One more than the scan reads of a pod says there are more.
            let mut listed = 0usize;
            for (id, mut pids) in containers(&dir) {
                pids.truncate(
                    (ipclink_core::probe::holders::MAX_PROCESSES_PER_POD + 1)
                        .saturating_sub(listed),
                );
                listed += pids.len();
                containers_seen += 1;
                if pids.is_empty() {
                    continue;
                }
                let container = self.container_name(&uid, &namespace, pod.as_deref(), &id);
                let pod_name = match &pod {
                    Some(p) => format!("{namespace}/{p}"),
                    None => format!("{namespace}/{uid}"),
                };
                for pid in pids {
                    out.push(Process {
                        pid,
                        owner: Arc::new(Owner {
                            pod: pod_name.clone(),
                            container: container.clone(),
                            command: command(pid),
                        }),
                        scope: scope.clone(),
                    });
                }
            }
        }
        // From another pid namespace every pod's cgroup.procs reads as empty (a pod
        // always has its sandbox's process).
        if containers_seen > 0 && out.is_empty() {
            return Err(
                "no process of the member pods is visible here; the node plugin needs the host's pid namespace (hostPID)"
                    .into(),
            );
        }
        Ok(out)
    }
}
