//! The operator as a real process against a real control plane.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ipclink_e2e::control_plane::ControlPlane;

/// Path of the operator binary under test.
pub const OPERATOR: &str = env!("CARGO_BIN_EXE_ipclink-operator");

/// A running `ipclink-operator run`; killed in Drop, its log printed when a test fails.
#[derive(Debug)]
pub struct Operator {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    log: PathBuf,
    /// Port of its /metrics.
    pub port: u16,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

impl Operator {
    /// Starts the operator with the control plane's kubeconfig and waits for /healthz.
    pub fn start(cp: &ControlPlane, args: &[&str], env: &[(&str, &str)]) -> Operator {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("operator.log");
        let port = free_port();
        let child = Command::new(OPERATOR)
            .args(["run", "--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(["--resync-seconds", "30"])
            .args(args)
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("IPCLINK_LOG", "info,kube=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            )
            .spawn()
            .expect("start ipclink-operator");
        let op = Operator {
            child: Some(child),
            _dir: dir,
            log,
            port,
        };
        let start = std::time::Instant::now();
        while http_get(port, "/healthz").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "operator did not serve /healthz:\n{}",
                op.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        op
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its /metrics text.
    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics").unwrap_or_default()
    }

    /// Waits for the process to exit by itself (e.g. after a fault), returning its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("operator did not exit within {limit:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_ref().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        self.wait_exit(Duration::from_secs(20))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- ipclink-operator ---\n{}", self.logs());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One plain-HTTP GET on loopback; the body when the answer is 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the first series of `text` whose line starts with `series`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A condition of a link's JSON.
pub fn condition<'a>(link: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    link["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&serde_json::Value::Null)
}

/// An IpcLink as JSON.
pub fn link(namespace: &str, name: &str, spec: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "ipclink.dev/v1alpha1",
        "kind": "IpcLink",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
    .to_string()
}

/// A pod of `app` that mounts the link `link` inline, optionally bound to `node`, with
/// `runAsUser` and `fsGroup`.
pub fn pod(
    name: &str,
    app: &str,
    link: &str,
    node: Option<&str>,
    uid: i64,
    fs_group: Option<i64>,
    claim: bool,
) -> String {
    let volume = if claim {
        serde_json::json!({"name": "ipc", "persistentVolumeClaim": {"claimName": link}})
    } else {
        serde_json::json!({"name": "ipc", "csi": {"driver": "csi.ipclink.dev", "volumeAttributes": {"link": link}}})
    };
    let mut security = serde_json::json!({"runAsUser": uid, "runAsNonRoot": true});
    if let Some(g) = fs_group {
        security["fsGroup"] = g.into();
    }
    let mut spec = serde_json::json!({
        "securityContext": security,
        "containers": [{
            "name": "main", "image": "ipclink-demo:local",
            "volumeMounts": [{"name": "ipc", "mountPath": "/dev/shm"}]
        }],
        "volumes": [volume],
    });
    if let Some(n) = node {
        spec["nodeName"] = n.into();
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": spec,
    })
    .to_string()
}

/// The link path of a namespace.
pub fn links_path(namespace: &str) -> String {
    format!("/apis/ipclink.dev/v1alpha1/namespaces/{namespace}/ipclinks")
}

/// Events about `name` in `namespace`, as (type, reason, note).
pub fn events(cp: &ControlPlane, namespace: &str, name: &str) -> Vec<(String, String, String)> {
    let (_, v) = cp.get_json(&format!(
        "/apis/events.k8s.io/v1/namespaces/{namespace}/events"
    ));
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Seconds to wait for the operator to converge.
pub const CONVERGE: Duration = Duration::from_secs(30);
