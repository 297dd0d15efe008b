//! Pod and IpcLink manifests for tests, built field by field (JSON for the API server).

use ipclink_core::model::names::DRIVER_NAME;
use serde_json::{Value, json};

/// A Pod manifest: `pod(name, app)` labels it `app: APP` and gives it one container
/// `main` running `ipclink-demo:local`; each method adds what a test needs.
#[derive(Debug, Clone)]
pub struct PodJson(Value);

/// A Pod `name` labelled `app: APP`.
pub fn pod(name: &str, app: &str) -> PodJson {
    PodJson(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "image": "ipclink-demo:local"}]},
    }))
}

impl PodJson {
    fn spec(&mut self) -> &mut Value {
        &mut self.0["spec"]
    }

    fn container(&mut self) -> &mut Value {
        &mut self.0["spec"]["containers"][0]
    }

    /// `metadata.namespace`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.0["metadata"]["namespace"] = namespace.into();
        self
    }

    /// Bound to `node` (`spec.nodeName`): no scheduler needed.
    pub fn on_node(mut self, node: &str) -> Self {
        self.spec()["nodeName"] = node.into();
        self
    }

    /// The container's name and image (pulled never: images are imported locally).
    pub fn container_image(mut self, name: &str, image: &str) -> Self {
        let c = self.container();
        c["name"] = name.into();
        c["image"] = image.into();
        self
    }

    /// Runs `image` with `args`, never pulled, once (`restartPolicy: Never`).
    pub fn runs(mut self, image: &str, args: &[&str]) -> Self {
        let c = self.container();
        c["image"] = image.into();
        c["imagePullPolicy"] = "Never".into();
        c["args"] = json!(args);
        self.spec()["restartPolicy"] = "Never".into();
        self
    }

    /// The container's `command` (the image's entrypoint replaced).
    pub fn command(mut self, command: &[&str]) -> Self {
        self.container()["command"] = json!(command);
        self
    }

    /// No service account token mounted.
    pub fn no_token(mut self) -> Self {
        self.spec()["automountServiceAccountToken"] = false.into();
        self
    }

    /// `runAsUser` (and `runAsGroup`) with `runAsNonRoot`.
    pub fn run_as(mut self, uid: i64, gid: Option<i64>) -> Self {
        let sc = &mut self.spec()["securityContext"];
        sc["runAsUser"] = uid.into();
        if let Some(g) = gid {
            sc["runAsGroup"] = g.into();
        }
        sc["runAsNonRoot"] = true.into();
        self
    }

    /// `fsGroup`.
    pub fn fs_group(mut self, gid: i64) -> Self {
        self.spec()["securityContext"]["fsGroup"] = gid.into();
        self
    }

    /// What the *restricted* Pod Security profile asks: seccomp `RuntimeDefault`, no
    /// privilege escalation, every capability dropped; and a short grace period.
    pub fn restricted(mut self) -> Self {
        self.spec()["securityContext"]["seccompProfile"] = json!({"type": "RuntimeDefault"});
        self.spec()["terminationGracePeriodSeconds"] = 5.into();
        self.container()["securityContext"] =
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        self
    }

    /// Mounts link `link` at `/dev/shm` as an inline `csi` volume named `ipc`.
    pub fn inline_link(self, link: &str) -> Self {
        self.volume(json!({"name": "ipc", "csi": {"driver": DRIVER_NAME, "volumeAttributes": {"link": link}}}))
    }

    /// Mounts claim `claim` at `/dev/shm` as a volume named `ipc`.
    pub fn claim(self, claim: &str) -> Self {
        self.volume(json!({"name": "ipc", "persistentVolumeClaim": {"claimName": claim}}))
    }

    fn volume(mut self, volume: Value) -> Self {
        self.container()["volumeMounts"] = json!([{"name": "ipc", "mountPath": "/dev/shm"}]);
        self.spec()["volumes"] = json!([volume]);
        self
    }

    /// The manifest as JSON text.
    pub fn json(&self) -> String {
        self.0.to_string()
    }
}

/// An IpcLink manifest as JSON text.
pub fn link(namespace: &str, name: &str, spec: Value) -> String {
    json!({
        "apiVersion": "ipclink.dev/v1alpha1",
        "kind": "IpcLink",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_member_pod_has_what_the_profile_asks() {
        let p: Value = serde_json::from_str(
            &pod("cam-0", "camera")
                .on_node("node-1")
                .runs("peer:local", &["producer"])
                .run_as(1000, Some(1000))
                .restricted()
                .inline_link("frames")
                .json(),
        )
        .expect("json");
        assert_eq!(p["metadata"]["labels"]["app"], "camera");
        assert_eq!(p["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_eq!(p["spec"]["containers"][0]["args"][0], "producer");
        assert_eq!(
            p["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"][0],
            "ALL"
        );
        assert_eq!(
            p["spec"]["volumes"][0]["csi"]["volumeAttributes"]["link"],
            "frames"
        );
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/dev/shm"
        );
    }
}
