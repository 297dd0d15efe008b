//! The CSI controller service: one persistent volume per claim of a link, placed on the
//! node the first consumer picked (WaitForFirstConsumer passes it as a topology).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipclink_core::model::names::TOPOLOGY_KEY;
use ipclink_core::model::names::check_dns_label;
use serde::{Deserialize, Serialize};

use crate::csi;
use crate::error::CsiError;
use crate::ids::check_capability;
use crate::ids::{self, MAX_ID, VolumeId};
use crate::source::LinkSource;
use crate::state::{load_json, save_json};

/// Parameters a StorageClass may pass (external-provisioner adds the pvc/pv ones).
const PARAMETERS: &[&str] = &[
    ids::LINK,
    ids::NAMESPACE,
    "csi.storage.k8s.io/pvc/name",
    CLAIM_NAMESPACE,
    "csi.storage.k8s.io/pv/name",
];

/// The claim's namespace, as external-provisioner passes it.
const CLAIM_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Created {
    volume_id: String,
    required_bytes: i64,
    limit_bytes: i64,
    parameters: BTreeMap<String, String>,
    capacity_bytes: i64,
    node: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Volumes {
    by_name: BTreeMap<String, Created>,
}

/// The controller plugin.
#[derive(Debug)]
pub struct ControllerPlugin {
    source: LinkSource,
    state_file: PathBuf,
    state: Mutex<Volumes>,
}

impl ControllerPlugin {
    /// Opens (or starts) the controller state in `state_dir`.
    pub fn new(state_dir: &Path, source: LinkSource) -> Result<Self, CsiError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| CsiError::Internal(format!("state dir: {e}")))?;
        let state_file = state_dir.join("volumes.json");
        let state = load_json::<Volumes>(&state_file)
            .map_err(|e| CsiError::Internal(e.to_string()))?
            .unwrap_or_default();
        Ok(ControllerPlugin {
            source,
            state_file,
            state: Mutex::new(state),
        })
    }

    fn volume(&self, c: &Created) -> csi::Volume {
        let id = VolumeId::parse(&c.volume_id);
        csi::Volume {
            capacity_bytes: c.capacity_bytes,
            volume_id: c.volume_id.clone(),
            volume_context: id
                .map(|id| {
                    HashMap::from([
                        (ids::LINK.to_owned(), id.link),
                        (ids::NAMESPACE.to_owned(), id.namespace),
                    ])
                })
                .unwrap_or_default(),
            content_source: None,
            accessible_topology: c
                .node
                .iter()
                .map(|n| csi::Topology {
                    segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), n.clone())]),
                })
                .collect(),
        }
    }

    /// The volume named `name` if it exists: the same request again is the same volume,
    /// anything else is a conflict, whatever the link looks like now.
    fn existing(
        &self,
        state: &Volumes,
        name: &str,
        required: i64,
        limit: i64,
        parameters: &BTreeMap<String, String>,
    ) -> Result<Option<csi::Volume>, CsiError> {
        let Some(c) = state.by_name.get(name) else {
            return Ok(None);
        };
        if c.required_bytes == required && c.limit_bytes == limit && c.parameters == *parameters {
            return Ok(Some(self.volume(c)));
        }
        Err(CsiError::AlreadyExists(format!(
            "volume {name:?} exists with other capacity or parameters"
        )))
    }

    /// CreateVolume.
    pub async fn create(
        self: &Arc<Self>,
        req: csi::CreateVolumeRequest,
    ) -> Result<csi::Volume, CsiError> {
        if req.name.is_empty() {
            return Err(CsiError::invalid("name", "is required"));
        }
        if req.name.chars().any(char::is_control) {
            return Err(CsiError::invalid("name", "holds a control character"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(CsiError::invalid(
                "volume_capabilities",
                "at least one is required",
            ));
        }
        for cap in &req.volume_capabilities {
            check_capability(cap)?;
        }
        if req.volume_content_source.is_some() {
            return Err(CsiError::invalid(
                "volume_content_source",
                "ipclink volumes cannot be made from a snapshot or clone",
            ));
        }
        let parameters: BTreeMap<String, String> = req.parameters.clone().into_iter().collect();
        for k in parameters.keys() {
            if !PARAMETERS.contains(&k.as_str()) {
                return Err(CsiError::invalid(
                    "parameters",
                    format!("unknown key {k:?}; allowed: {}", PARAMETERS.join(", ")),
                ));
            }
        }
        let get = |k: &str| {
            parameters.get(k).ok_or_else(|| {
                CsiError::invalid(
                    "parameters",
                    format!("{k} is required (the IpcLink this volume serves)"),
                )
            })
        };
        // The claim's namespace (external-provisioner's --extra-create-metadata) decides:
        // a StorageClass cannot point a claim at a link of another namespace.
        let namespace = match (
            parameters.get(CLAIM_NAMESPACE),
            parameters.get(ids::NAMESPACE),
        ) {
            (Some(claim), Some(asked)) if claim != asked => {
                return Err(CsiError::invalid(
                    "parameters",
                    format!(
                        "namespace {asked:?} is not the claim's namespace {claim:?}: a volume serves only a link of its claim's own namespace"
                    ),
                ));
            }
            (Some(claim), _) => claim,
            (None, _) => get(ids::NAMESPACE)?,
        };
        let link = get(ids::LINK)?;
        check_dns_label(link).map_err(|e| CsiError::invalid("parameters", format!("link: {e}")))?;
        check_dns_label(namespace)
            .map_err(|e| CsiError::invalid("parameters", format!("namespace: {e}")))?;
        let (required, limit) = req
            .capacity_range
            .as_ref()
            .map(|c| (c.required_bytes, c.limit_bytes))
            .unwrap_or((0, 0));
        if required < 0 || limit < 0 {
            return Err(CsiError::invalid(
                "capacity_range",
                "bytes must not be negative",
            ));
        }
        if limit > 0 && required > limit {
            return Err(CsiError::invalid(
                "capacity_range",
                "required_bytes exceeds limit_bytes",
            ));
        }
        // A name that exists answers first.
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = self.existing(&state, &req.name, required, limit, &parameters)? {
                return Ok(v);
            }
        }
        let snapshot = self.source.lookup(namespace, link, None).await?;
        let (_, plan) = snapshot.link(namespace, link).map_err(|e| match e {
            CsiError::NotFound(m) => CsiError::invalid("parameters", m),
            other => other,
        })?;
        let size = plan.size_limit as i64;
        if required > size {
            return Err(CsiError::OutOfRange(format!(
                "required_bytes {required} exceeds the sizeLimit of link {namespace}/{link} ({size} bytes)"
            )));
        }
        if limit > 0 && limit < size {
            return Err(CsiError::OutOfRange(format!(
                "limit_bytes {limit} is below the sizeLimit of link {namespace}/{link} ({size} bytes)"
            )));
        }
        let node = req.accessibility_requirements.as_ref().and_then(|t| {
            t.preferred
                .iter()
                .chain(&t.requisite)
                .find_map(|topo| topo.segments.get(TOPOLOGY_KEY).cloned())
        });

        let mut h = std::collections::hash_map::DefaultHasher::new();
        req.name.hash(&mut h);
        let id = VolumeId {
            namespace: namespace.clone(),
            link: link.clone(),
            uid: format!("{:016x}", h.finish()),
        }
        .render();
        if id.len() > MAX_ID {
            return Err(CsiError::invalid(
                "parameters",
                format!("namespace and link make an id over {MAX_ID} bytes"),
            ));
        }
        let created = Created {
            volume_id: id,
            required_bytes: required,
            limit_bytes: limit,
            parameters,
            capacity_bytes: size,
            node,
        };
        let (this, name) = (self.clone(), req.name);
        crate::blocking(move || {
            let mut state = this.state.lock().unwrap_or_else(|p| p.into_inner());
            // A create of the same name may have finished while the link was looked up.
            let c = &created;
            if let Some(v) = this.existing(
                &state,
                &name,
                c.required_bytes,
                c.limit_bytes,
                &c.parameters,
            )? {
                return Ok(v);
            }
            state.by_name.insert(name, created.clone());
            this.save(&state)?;
            Ok(this.volume(&created))
        })
        .await
    }

    fn save(&self, state: &Volumes) -> Result<(), CsiError> {
        save_json(&self.state_file, state)
            .map_err(|e| CsiError::Internal(format!("state file: {e}")))
    }

    /// DeleteVolume: idempotent; an id that is not ours was never created, so it is gone.
    pub async fn delete(self: &Arc<Self>, volume_id: String) -> Result<(), CsiError> {
        if volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id", "is required"));
        }
        let this = self.clone();
        crate::blocking(move || {
            let mut state = this.state.lock().unwrap_or_else(|p| p.into_inner());
            let before = state.by_name.len();
            state.by_name.retain(|_, c| c.volume_id != volume_id);
            if state.by_name.len() != before {
                this.save(&state)?;
            }
            Ok(())
        })
        .await
    }

    /// ValidateVolumeCapabilities.
    pub fn validate(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, CsiError> {
        if req.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id", "is required"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(CsiError::invalid(
                "volume_capabilities",
                "at least one is required",
            ));
        }
        let known = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .values()
            .any(|c| c.volume_id == req.volume_id);
        if !known {
            return Err(CsiError::NotFound(format!(
                "volume {:?} does not exist",
                req.volume_id
            )));
        }
        if let Err(e) = req
            .volume_capabilities
            .iter()
            .try_for_each(check_capability)
        {
            return Ok(csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.to_string(),
            });
        }
        Ok(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
            }),
            message: String::new(),
        })
    }
}
