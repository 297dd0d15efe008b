//! Where link specs and pod labels come from: in a cluster, the Kubernetes API (IpcLink
//! and Pod, read-only); standalone, a directory of YAML holding IpcLink documents and, for
//! membership checks without an API server, Pod documents (name, namespace, labels),
//! read again whenever a file changes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ipclink_core::model::names::link_lease_name;
use ipclink_core::{IpcLink, LinkKey, LinkPlan, parse_link_value, validate, yaml_documents};

use crate::error::CsiError;

/// A directory of `*.yaml` / `*.yml` files.
#[derive(Debug, Clone)]
pub struct DirSource {
    dir: PathBuf,
    /// The last snapshot and the (name, mtime, size) of the files it was read from: a
    /// call re-reads the files only when one of them changed.
    cache: Arc<Mutex<Option<Cached>>>,
    /// Whether a link none of whose members has a podSelector admits any requester
    /// (`--open-selectorless-links`, for csi-sanity, which names no pod).
    open_selectorless: bool,
}

/// A snapshot with the fingerprint of the files it was read from.
type Cached = (Fingerprint, Arc<Snapshot>);

/// (path, mtime, size) of every file a snapshot was read from.
type Fingerprint = Vec<(PathBuf, SystemTime, u64)>;

/// What the directory holds now.
#[derive(Debug, Default)]
pub struct Snapshot {
    links: BTreeMap<LinkKey, Result<(IpcLink, LinkPlan), String>>,
    /// Pod labels by (namespace, pod name).
    pods: BTreeMap<(String, String), BTreeMap<String, String>>,
}

impl DirSource {
    /// A source over `dir`.
    pub fn new(dir: PathBuf) -> Self {
        DirSource {
            dir,
            cache: Arc::default(),
            open_selectorless: false,
        }
    }

    /// The same source, where a link without any member podSelector admits every
    /// requester (`open`) or none (the default, as in a cluster).
    pub fn open_selectorless(mut self, open: bool) -> Self {
        self.open_selectorless = open;
        self
    }

    /// What the directory holds now (read again only if a file changed). Broken files
    /// are logged and skipped; a broken link document is kept as an error so that a
    /// publish of it says why.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, CsiError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| CsiError::Internal(format!("links dir {}: {e}", self.dir.display())))?;
        let mut files: Fingerprint = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.modified().ok()?, m.len()))
            })
            .collect();
        files.sort();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, snap)) = cache.as_ref()
            && *seen == files
        {
            return Ok(snap.clone());
        }
        let snap = Arc::new(read_files(files.iter().map(|(p, _, _)| p.clone())));
        *cache = Some((files, snap.clone()));
        Ok(snap)
    }
}

fn read_files(files: impl Iterator<Item = PathBuf>) -> Snapshot {
    let mut snap = Snapshot::default();
    {
        for file in files {
            let name = file.display().to_string();
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let docs = match yaml_documents(&name, &text) {
                Ok(d) => d,
                Err(p) => {
                    tracing::warn!(file = %name, problems = %p, "links dir file skipped");
                    continue;
                }
            };
            for doc in docs {
                let kind = doc
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let meta = doc.get("metadata");
                let field = |k: &str| {
                    meta.and_then(|m| m.get(k))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                };
                let ns = field("namespace").unwrap_or_else(|| "default".into());
                let Some(obj) = field("name") else { continue };
                if kind == "Pod" {
                    let labels = meta
                        .and_then(|m| m.get("labels"))
                        .and_then(|l| {
                            serde_json::from_value::<BTreeMap<String, String>>(l.clone()).ok()
                        })
                        .unwrap_or_default();
                    snap.pods.insert((ns, obj), labels);
                    continue;
                }
                let parsed = parse_link_value(&name, doc)
                    .and_then(|link| validate(&link).map(|plan| (link, plan)))
                    .map_err(|p| p.to_string());
                snap.links.insert(LinkKey::new(ns, obj), parsed);
            }
        }
    }
    snap
}

impl Snapshot {
    /// The link `namespace/name`, validated.
    pub fn link(&self, namespace: &str, name: &str) -> Result<&(IpcLink, LinkPlan), CsiError> {
        match self.links.get(&LinkKey::new(namespace, name)) {
            None => Err(CsiError::NotFound(format!(
                "link {namespace}/{name} does not exist"
            ))),
            Some(Err(problems)) => Err(CsiError::Precondition(format!(
                "link {namespace}/{name} is invalid:\n{problems}"
            ))),
            Some(Ok(found)) => Ok(found),
        }
    }

    /// Whether the link exists (valid or not).
    pub fn has_link(&self, namespace: &str, name: &str) -> bool {
        self.links.contains_key(&LinkKey::new(namespace, name))
    }

    /// Labels of a pod, if the source knows it.
    pub fn pod_labels(&self, namespace: &str, name: &str) -> Option<&BTreeMap<String, String>> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }
}

/// The link source a plugin uses.
#[derive(Debug, Clone)]
pub enum LinkSource {
    /// A directory of YAML (standalone, tests, csi-sanity).
    Dir(DirSource),
    /// The Kubernetes API.
    Kube(KubeSource),
}

impl LinkSource {
    /// Whether a link none of whose members has a podSelector admits every requester.
    /// Never in a cluster: there a link is closed unless a member selects the pod.
    pub fn opens_selectorless_links(&self) -> bool {
        matches!(self, LinkSource::Dir(d) if d.open_selectorless)
    }

    /// What the source knows of link `namespace/link` and, if named, pod `namespace/pod`.
    pub async fn lookup(
        &self,
        namespace: &str,
        link: &str,
        pod: Option<&str>,
    ) -> Result<Arc<Snapshot>, CsiError> {
        match self {
            LinkSource::Dir(d) => {
                let d = d.clone();
                crate::blocking(move || d.snapshot()).await
            }
            LinkSource::Kube(k) => k.lookup(namespace, link, pod).await,
        }
    }
}

/// IpcLinks and Pods read from the API server, one GET each per call (read-only RBAC:
/// `get` on ipclinks and pods).
#[derive(Clone)]
pub struct KubeSource {
    client: kube::Client,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeSource")
    }
}

impl KubeSource {
    /// Connects with the in-cluster configuration, or `KUBECONFIG`.
    pub async fn connect() -> Result<Self, CsiError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| CsiError::Internal(format!("Kubernetes client: {e}")))?;
        Ok(KubeSource { client })
    }

    /// Its API client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    async fn lookup(
        &self,
        namespace: &str,
        link: &str,
        pod: Option<&str>,
    ) -> Result<Arc<Snapshot>, CsiError> {
        use k8s_openapi::api::core::v1::Pod;
        use kube::Api;
        let mut snap = Snapshot::default();
        let links: Api<ipclink_core::IpcLink> = Api::namespaced(self.client.clone(), namespace);
        if let Some(found) = links.get_opt(link).await.map_err(api_error)? {
            let checked = validate(&found)
                .map(|plan| (found, plan))
                .map_err(|p| p.to_string());
            snap.links.insert(LinkKey::new(namespace, link), checked);
        }
        if let Some(pod) = pod {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            if let Some(p) = pods.get_opt(pod).await.map_err(api_error)? {
                snap.pods.insert(
                    (namespace.to_owned(), pod.to_owned()),
                    p.metadata.labels.unwrap_or_default(),
                );
            }
        }
        Ok(Arc::new(snap))
    }
}

impl KubeSource {
    /// Claims link `link` for `node`: a Lease named [`claim_name`] in the link's
    /// namespace, held by the node where the link lives and owned by the IpcLink (it
    /// goes with the link). Creating it is atomic, so of two nodes publishing the same
    /// link at once one wins; the other gets `FailedPrecondition` naming the winner.
    /// A claim left by an earlier link of the same name, or held by a node that no
    /// longer exists, is replaced.
    pub async fn claim(&self, link: &IpcLink, node: &str) -> Result<(), CsiError> {
        use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            MicroTime, ObjectMeta, OwnerReference,
        };
        use kube::ResourceExt;
        use kube::api::{Api, PostParams};
        let namespace = link.namespace().unwrap_or_default();
        let name = link.name_any();
        let uid = link.uid().unwrap_or_default();
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &namespace);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(link_lease_name(&name)),
                namespace: Some(namespace.clone()),
                labels: Some(
                    [(
                        ipclink_core::model::names::LINK_LABEL.to_owned(),
                        name.clone(),
                    )]
                    .into(),
                ),
                owner_references: Some(vec![OwnerReference {
                    api_version: ipclink_core::model::spec::API_VERSION.to_owned(),
                    kind: ipclink_core::model::spec::KIND.to_owned(),
                    name: name.clone(),
                    uid: uid.clone(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.to_owned()),
                acquire_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        for _ in 0..3 {
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                // RBAC from before claims (an older chart with this image): serve the
                // link unclaimed rather than refuse every member, and say so.
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    tracing::warn!(
                        namespace, link = name, error = %s.message,
                        "cannot claim the link (this plugin's RBAC needs get, create and delete on leases.coordination.k8s.io); served unclaimed, so a member on another node would get a second copy"
                    );
                    return Ok(());
                }
                Err(e) => return Err(api_error(e)),
            }
            let Some(held) = api
                .get_opt(&link_lease_name(&name))
                .await
                .map_err(api_error)?
            else {
                continue;
            };
            let owner = held
                .owner_references()
                .iter()
                .find(|o| o.kind == ipclink_core::model::spec::KIND)
                .map(|o| o.uid.clone());
            if owner.as_deref() != Some(uid.as_str()) {
                // An earlier link's claim, not yet collected: replace it.
                delete_claim(&api, &held).await?;
                continue;
            }
            let holder = held
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            if holder == node {
                return Ok(());
            }
            // A node that no longer exists holds nothing: take the link over (its data
            // stayed there and did not move).
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
            if nodes.get_opt(&holder).await.map_err(api_error)?.is_none() {
                tracing::warn!(
                    namespace,
                    link = name,
                    gone = holder,
                    node,
                    "the link's node no longer exists; this node takes the link over, empty (its data did not move)"
                );
                delete_claim(&api, &held).await?;
                continue;
            }
            return Err(CsiError::Precondition(format!(
                "link {namespace}/{name} lives on node {holder}, and this is node {node}: the members of a link share one node; schedule this pod onto {holder} (e.g. a podAffinity to the link's other members)"
            )));
        }
        Err(CsiError::Unavailable(format!(
            "the claim of link {namespace}/{name} kept changing while it was read; retrying"
        )))
    }

    /// Gives up `node`'s claim of `namespace/link` (a publish that left nothing here).
    pub async fn release(&self, namespace: &str, link: &str, node: &str) -> Result<(), CsiError> {
        use k8s_openapi::api::coordination::v1::Lease;
        use kube::api::Api;
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let Some(held) = api
            .get_opt(&link_lease_name(link))
            .await
            .map_err(api_error)?
        else {
            return Ok(());
        };
        if held
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            != Some(node)
        {
            return Ok(());
        }
        delete_claim(&api, &held).await
    }

    /// The names of pod `namespace/pod`'s containers by container id (the id in the
    /// runtime, without its `containerd://` scheme).
    pub async fn container_names(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<std::collections::HashMap<String, String>, CsiError> {
        use k8s_openapi::api::core::v1::Pod;
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), namespace);
        let Some(p) = pods.get_opt(pod).await.map_err(api_error)? else {
            return Ok(Default::default());
        };
        let status = p.status.unwrap_or_default();
        Ok(status
            .container_statuses
            .into_iter()
            .flatten()
            .chain(status.init_container_statuses.into_iter().flatten())
            .filter_map(|c| {
                let id = c.container_id?;
                let id = id
                    .split_once("://")
                    .map_or(id.as_str(), |(_, i)| i)
                    .to_owned();
                Some((id, c.name))
            })
            .collect())
    }
}

/// Deletes `held` (a claim) unless it changed since it was read; gone or changed is fine.
async fn delete_claim(
    api: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    held: &k8s_openapi::api::coordination::v1::Lease,
) -> Result<(), CsiError> {
    use kube::ResourceExt;
    use kube::api::{DeleteParams, Preconditions};
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: held.uid(),
            resource_version: held.resource_version(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&held.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(api_error(e)),
    }
}

/// An API error as the CO should see it: `Unavailable` (retry) when the API server is
/// unreachable, overloaded or failing; `Internal` for what a retry will not fix.
fn api_error(e: kube::Error) -> CsiError {
    let transient = match &e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    };
    if transient {
        CsiError::Unavailable(format!("Kubernetes API: {e}"))
    } else {
        CsiError::Internal(format!("Kubernetes API: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("x", "y")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn transient_api_errors_are_unavailable_and_the_rest_internal() {
        for code in [429, 500, 503] {
            assert_eq!(api_error(status(code)).code(), Code::Unavailable, "{code}");
        }
        for code in [400, 401, 403, 422] {
            assert_eq!(api_error(status(code)).code(), Code::Internal, "{code}");
        }
        let parse = serde_json::from_str::<u8>("x").expect_err("not a number");
        assert_eq!(
            api_error(kube::Error::SerdeError(parse)).code(),
            Code::Internal
        );
    }
}
