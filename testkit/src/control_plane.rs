//! A real Kubernetes control plane for tests: etcd and kube-apiserver (built from the Go
//! module proxy by `scripts/install-control-plane`) on loopback, with freshly generated
//! service-account keys and a token-authenticated administrator. Stopped in Drop, which
//! prints both logs when the test failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require_tool};

/// A running etcd + kube-apiserver.
#[derive(Debug)]
pub struct ControlPlane {
    dir: tempfile::TempDir,
    bin: PathBuf,
    apiserver_args: Vec<String>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    /// kube-scheduler and kube-controller-manager, when started.
    others: Vec<Child>,
    in_cluster: bool,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Bearer token of a `system:masters` user.
    pub token: String,
    /// A kubeconfig for that user.
    pub kubeconfig: PathBuf,
}

/// The `kubernetes` Service's ClusterIP (first address of the service range).
pub const SERVICE_IP: &str = "10.96.0.1";

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("log file")
}

impl ControlPlane {
    /// Builds (or reuses) the binaries and starts etcd and kube-apiserver; returns once
    /// `/readyz` answers.
    pub fn start() -> ControlPlane {
        ControlPlane::start_with(false)
    }

    /// Like [`start`](Self::start), but reachable from pods the way in-cluster clients
    /// expect without kube-proxy: kube-apiserver listens on port 443 of every address,
    /// and the `kubernetes` Service's address (10.96.0.1) is added to `lo`, so a pod's
    /// `KUBERNETES_SERVICE_HOST:443` reaches it through its CNI gateway. One such
    /// control plane at a time; Drop removes the address.
    pub fn start_in_cluster() -> ControlPlane {
        ControlPlane::start_with(true)
    }

    fn start_with(in_cluster: bool) -> ControlPlane {
        crate::require_root();
        let bin = crate::script_path("install-control-plane");
        let openssl = require_tool("openssl");
        require_tool("curl");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let (client, peer) = (free_port(), free_port());
        let secure = if in_cluster { 443 } else { free_port() };
        if in_cluster {
            let ip = require_tool("ip");
            let _ = Command::new(&ip)
                .args(["addr", "add", &format!("{SERVICE_IP}/32"), "dev", "lo"])
                .status();
        }

        let etcd = Command::new(bin.join("etcd"))
            .arg("--name=test")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=test=http://127.0.0.1:{peer}"))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log_file(d, "etcd.log"))
            .stderr(log_file(d, "etcd.err"))
            .spawn()
            .expect("start etcd");

        let key = d.join("sa.key");
        let public = d.join("sa.pub");
        let run = |args: &[&str]| {
            let s = Command::new(&openssl)
                .args(args)
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(s.success(), "openssl {args:?}");
        };
        run(&["genrsa", "-out", key.to_str().expect("utf-8"), "2048"]);
        run(&[
            "rsa",
            "-in",
            key.to_str().expect("utf-8"),
            "-pubout",
            "-out",
            public.to_str().expect("utf-8"),
        ]);
        let token = format!("ipclink-test-{}", std::process::id());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},admin,admin,system:masters\n"),
        )
        .expect("tokens");

        let apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            format!(
                "--bind-address={}",
                if in_cluster { "0.0.0.0" } else { "127.0.0.1" }
            ),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={secure}"),
            format!("--cert-dir={}", d.join("pki").display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".to_owned(),
            "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
            format!("--service-account-key-file={}", public.display()),
            format!("--service-account-signing-key-file={}", key.display()),
            "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
            "--enable-priority-and-fairness=false".to_owned(),
            // As in every real cluster: CSI node plugins are privileged.
            "--allow-privileged=true".to_owned(),
        ];
        let apiserver = spawn_apiserver(&bin, &apiserver_args, d);

        let url = format!("https://127.0.0.1:{secure}");
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{url}\", insecure-skip-tls-verify: true}}\nusers:\n- name: admin\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n"
            ),
        )
        .expect("kubeconfig");
        let cp = ControlPlane {
            dir,
            bin,
            apiserver_args,
            in_cluster,
            etcd: Some(etcd),
            apiserver: Some(apiserver),
            others: Vec::new(),
            url,
            token,
            kubeconfig,
        };
        let mut cp = cp;
        cp.wait_ready();
        cp
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = self.request("GET", "/readyz", None) {
                return;
            }
            if let Some(Ok(Some(status))) = self.apiserver.as_mut().map(Child::try_wait) {
                panic!("kube-apiserver exited ({status}):\n{}", self.logs());
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "kube-apiserver not ready:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Kills kube-apiserver (SIGKILL) and starts it again with the same flags and port;
    /// returns once it is ready. etcd keeps the data.
    pub fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    /// Kills kube-apiserver (SIGKILL): clients get connection refused until
    /// [`ControlPlane::start_apiserver`].
    pub fn stop_apiserver(&mut self) {
        if let Some(mut old) = self.apiserver.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// Starts kube-apiserver again with the same flags and port; returns once it is
    /// ready.
    pub fn start_apiserver(&mut self) {
        self.apiserver = Some(spawn_apiserver(
            &self.bin,
            &self.apiserver_args,
            self.dir.path(),
        ));
        self.wait_ready();
    }

    /// Starts kube-scheduler and kube-controller-manager (the persistent-volume binder,
    /// garbage collector and the controllers volumes need), with the administrator's
    /// kubeconfig and no serving port.
    pub fn start_scheduling(&mut self) {
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig.display());
        let d = self.dir.path();
        let scheduler = Command::new(self.bin.join("kube-scheduler"))
            .arg(&kubeconfig)
            .args(["--leader-elect=false", "--secure-port=0", "-v=2"])
            .stdin(Stdio::null())
            .stdout(log_file(d, "scheduler.log"))
            .stderr(log_file(d, "scheduler.err"))
            .spawn()
            .expect("start kube-scheduler");
        let manager = Command::new(self.bin.join("kube-controller-manager"))
            .arg(&kubeconfig)
            .args([
                "--leader-elect=false",
                "--secure-port=0",
                "--use-service-account-credentials=false",
                &format!("--root-ca-file={}", d.join("pki/apiserver.crt").display()),
                "--controllers=persistentvolume-binder-controller,garbage-collector-controller,persistentvolume-protection-controller,persistentvolumeclaim-protection-controller,namespace-controller,deployment-controller,replicaset-controller,serviceaccount-controller,daemonset-controller,job-controller,disruption-controller,root-ca-certificate-publisher-controller",
                "-v=2",
            ])
            .stdin(Stdio::null())
            .stdout(log_file(d, "controller-manager.log"))
            .stderr(log_file(d, "controller-manager.err"))
            .spawn()
            .expect("start kube-controller-manager");
        self.others.push(scheduler);
        self.others.push(manager);
    }

    /// Creates a Ready, schedulable Node object (no kubelet behind it) with the CSI
    /// topology label, so that the scheduler can place pods on it.
    pub fn add_node(&self, name: &str) {
        // As a kubelet and our node plugin label it: the hostname label holds the first
        // part of the name (label values stop at 63 characters), ours its short form.
        let hostname = name.split('.').next().unwrap_or(name);
        let topology = ipclink_core::model::names::topology_value(name);
        self.create(
            "/api/v1/nodes",
            &format!(
                r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{hostname}","topology.ipclink.dev/node":"{topology}"}}}}}}"#
            ),
        );
        let status = r#"{"status":{"capacity":{"cpu":"8","memory":"16Gi","pods":"110"},"allocatable":{"cpu":"8","memory":"16Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"test node"}]}}"#;
        let (code, text) = self
            .request(
                "PATCH",
                &format!("/api/v1/nodes/{name}/status"),
                Some(status),
            )
            .expect("request");
        assert_eq!(code, 200, "node status: {text}");
        self.untaint_node(name);
    }

    /// Lifts the not-ready taint admission puts on a new node: the node lifecycle
    /// controller would, on a heartbeat, and it does not run here.
    pub fn untaint_node(&self, name: &str) {
        let (code, text) = self
            .request(
                "PATCH",
                &format!("/api/v1/nodes/{name}"),
                Some(r#"{"spec":{"taints":null}}"#),
            )
            .expect("request");
        assert_eq!(code, 200, "node taints: {text}");
    }

    /// One HTTPS request as the administrator; returns (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg("-H")
            .arg(format!("Content-Type: {content_type}"))
            .arg(format!("{}{path}", self.url));
        if let Some(b) = body {
            cmd.arg("--data-binary").arg(b);
        }
        let out = cmd.output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
    }

    /// A one-hour token of ServiceAccount `ns/name` (made if missing) for the API server,
    /// from a TokenRequest, as a pod of it would hold.
    pub fn service_account_token(&self, ns: &str, name: &str) -> String {
        self.service_account_token_for(ns, name, &[])
    }

    /// A one-hour token of ServiceAccount `ns/name` (made if missing) for the metrics
    /// audience of the node plugins and the operator (`ipclink.dev/metrics`), as the
    /// chart's projected tokens and `kubectl ipclink` have it.
    pub fn metrics_token(&self, ns: &str, name: &str) -> String {
        self.service_account_token_for(ns, name, &[ipclink_core::model::names::METRICS_AUDIENCE])
    }

    /// Makes `ns/name` a metrics reader as the chart's `metrics.readers` does (the
    /// ClusterRole `ipclink-metrics-reader`, bound to it) and returns a metrics token
    /// of it.
    pub fn metrics_reader(&self, ns: &str, name: &str) -> String {
        let role = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole", "metadata": {"name": "ipclink-metrics-reader"},
            "rules": [{"nonResourceURLs": ["/metrics", "/v1/links"], "verbs": ["get"]}]});
        let (code, text) = self
            .request(
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                Some(&role.to_string()),
            )
            .expect("request");
        assert!(code == 201 || code == 409, "ClusterRole: {text}");
        let binding = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("ipclink-metrics-reader-{ns}-{name}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": "ipclink-metrics-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]});
        self.create(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            &binding.to_string(),
        );
        self.metrics_token(ns, name)
    }

    /// A one-hour token of ServiceAccount `ns/name` (made if missing) for `audiences`
    /// (none: the API server's).
    pub fn service_account_token_for(&self, ns: &str, name: &str, audiences: &[&str]) -> String {
        let (code, text) = self
            .request(
                "POST",
                &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
                Some(&format!(
                    r#"{{"apiVersion":"v1","kind":"ServiceAccount","metadata":{{"name":"{name}"}}}}"#
                )),
            )
            .expect("request");
        assert!(
            code == 201 || code == 409,
            "ServiceAccount {ns}/{name}: {text}"
        );
        let (code, text) = self
            .request(
                "POST",
                &format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"),
                Some(&{
                    let mut spec = serde_json::json!({"expirationSeconds": 3600});
                    if !audiences.is_empty() {
                        spec["audiences"] = serde_json::json!(audiences);
                    }
                    serde_json::json!({"apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenRequest", "spec": spec})
                    .to_string()
                }),
            )
            .expect("request");
        assert_eq!(code, 201, "TokenRequest {ns}/{name}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["status"]["token"].as_str().expect("token").to_owned()
    }

    /// POSTs `body` to `path` and insists on 201 Created.
    pub fn create(&self, path: &str, body: &str) {
        let (code, text) = self.request("POST", path, Some(body)).expect("request");
        assert_eq!(code, 201, "POST {path}: {text}");
    }

    /// Installs the IpcLink CRD generated from the Rust type and waits until it is served.
    pub fn install_ipclink_crd(&self) {
        use ipclink_core::CustomResourceExt;
        let crd = serde_json::to_string(&ipclink_core::IpcLink::crd()).expect("crd json");
        self.create(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd,
        );
        let start = Instant::now();
        while self
            .request("GET", "/apis/ipclink.dev/v1alpha1/ipclinks", None)
            .map(|r| r.0)
            .unwrap_or(0)
            != 200
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the IpcLink CRD is not served:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Directory of the control-plane binaries (and `kubectl`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// GET `path` as JSON: (status, body).
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (code, body) = self.request("GET", path, None).expect("request");
        (
            code,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Polls `path` until `done` holds for its JSON (a 404 reads as `null`); panics
    /// after `limit` with the last body and the logs.
    pub fn wait_for(
        &self,
        path: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let (_, v) = self.get_json(path);
            if done(&v) {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; last {path}:\n{v:#}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Deletes pod `name` of `namespace` at once (no grace) and waits until it is gone.
    pub fn delete_pod(&self, namespace: &str, name: &str, limit: Duration) {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        self.request("DELETE", &format!("{path}?gracePeriodSeconds=0"), None)
            .expect("delete pod");
        self.wait_for(&path, "pod gone", limit, |v| v["kind"] == "Status");
    }

    /// Creates the `CSIDriver` object of csi.ipclink.dev as the chart does (no attach,
    /// pod info on mount, inline and persistent volumes).
    pub fn install_csi_driver(&self) {
        self.create(
            "/apis/storage.k8s.io/v1/csidrivers",
            &serde_json::json!({
                "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                "metadata": {"name": ipclink_core::model::names::DRIVER_NAME},
                "spec": {"attachRequired": false, "podInfoOnMount": true, "fsGroupPolicy": "None",
                         "volumeLifecycleModes": ["Persistent", "Ephemeral"]}
            })
            .to_string(),
        );
    }

    /// Creates a namespace and its `default` ServiceAccount (no controller-manager
    /// makes one here, and pod admission needs it).
    pub fn namespace(&self, name: &str) {
        self.create(
            "/api/v1/namespaces",
            &format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}"}}}}"#),
        );
        // The serviceaccount controller, when running, may have made it first.
        let (code, text) = self
            .request(
                "POST",
                &format!("/api/v1/namespaces/{name}/serviceaccounts"),
                Some(
                    r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}"#,
                ),
            )
            .expect("request");
        assert!(code == 201 || code == 409, "default ServiceAccount: {text}");
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |n: &str| self.dir.path().join(n);
        let tail = |p: PathBuf| crate::log_tail(&p, 40);
        let mut out = format!(
            "--- etcd ---\n{}\n--- kube-apiserver ---\n{}",
            tail(read("etcd.err")),
            tail(read("apiserver.err"))
        );
        if !self.others.is_empty() {
            out.push_str(&format!(
                "\n--- kube-scheduler ---\n{}\n--- kube-controller-manager ---\n{}",
                tail(read("scheduler.err")),
                tail(read("controller-manager.err"))
            ));
        }
        out
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if self.in_cluster {
            let _ = Command::new("ip")
                .args(["addr", "del", &format!("{SERVICE_IP}/32"), "dev", "lo"])
                .status();
        }
        let others = std::mem::take(&mut self.others);
        for child in others.into_iter().chain(
            [self.apiserver.take(), self.etcd.take()]
                .into_iter()
                .flatten(),
        ) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_apiserver(bin: &Path, args: &[String], dir: &Path) -> Child {
    let log = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .expect("log file")
    };
    Command::new(bin.join("kube-apiserver"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log("apiserver.log"))
        .stderr(log("apiserver.err"))
        .spawn()
        .expect("start kube-apiserver")
}
