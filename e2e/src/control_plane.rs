//! A real Kubernetes control plane for tests: etcd and kube-apiserver (built from the Go
//! module proxy by `scripts/install-control-plane`) on loopback, with freshly generated
//! service-account keys and a token-authenticated administrator. Stopped in Drop, which
//! prints both logs when the test failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_tool;

/// A running etcd + kube-apiserver.
#[derive(Debug)]
pub struct ControlPlane {
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Bearer token of a `system:masters` user.
    pub token: String,
    /// A kubeconfig for that user.
    pub kubeconfig: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("log file")
}

impl ControlPlane {
    /// Builds (or reuses) the binaries and starts etcd and kube-apiserver; returns once
    /// `/readyz` answers.
    pub fn start() -> ControlPlane {
        crate::require_root();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-control-plane");
        let out = Command::new(&script)
            .output()
            .expect("run scripts/install-control-plane");
        assert!(
            out.status.success(),
            "building the control plane failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let openssl = require_tool("openssl");
        require_tool("curl");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let (client, peer, secure) = (free_port(), free_port(), free_port());

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

        let apiserver = Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={secure}"))
            .arg(format!("--cert-dir={}", d.join("pki").display()))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", public.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                key.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--enable-priority-and-fairness=false")
            .stdin(Stdio::null())
            .stdout(log_file(d, "apiserver.log"))
            .stderr(log_file(d, "apiserver.err"))
            .spawn()
            .expect("start kube-apiserver");

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
            etcd: Some(etcd),
            apiserver: Some(apiserver),
            url,
            token,
            kubeconfig,
        };
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = cp.request("GET", "/readyz", None) {
                return cp;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "kube-apiserver not ready:\n{}",
                cp.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
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

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        let tail = |s: String| {
            s.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "--- etcd ---\n{}\n--- kube-apiserver ---\n{}",
            tail(read("etcd.err")),
            tail(read("apiserver.err"))
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
