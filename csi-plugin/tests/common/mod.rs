//! Running `ipclink-csi node` and `controller` as real processes for tests; stopped, their
//! mounts removed and (on failure) their logs printed in Drop.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipclink_testkit::process::Process;

pub use ipclink_testkit::mounts::Unmounter;
pub use ipclink_testkit::require_root;

pub const BIN: &str = env!("CARGO_BIN_EXE_ipclink-csi");

pub fn sanity_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sanity")
}

/// A plugin process and its directories.
pub struct Plugin {
    process: Process,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Plugin {
    /// Starts `ipclink-csi ROLE` with its socket and state under `dir`.
    pub fn start(role: &str, dir: &Path, links: &Path, extra: &[&str]) -> Plugin {
        let links = ["--links-dir", links.to_str().expect("utf-8")];
        Plugin::start_with(role, dir, &[&links[..], extra].concat(), &[])
    }

    /// Starts `ipclink-csi node` as the chart runs it next to `node`'s kubelet: the API
    /// server of `cp` as its link source, registered through the kubelet's registration
    /// directory; waits (up to `limit`) for the registration and returns the CSINode too.
    pub fn start_registered(
        dir: &Path,
        cp: &ipclink_testkit::control_plane::ControlPlane,
        node: &ipclink_testkit::node::Node,
        extra: &[&str],
        limit: Duration,
    ) -> (Plugin, serde_json::Value) {
        let reg = node.registration_dir();
        let args = ["--registration-dir", reg.to_str().expect("utf-8")];
        let plugin = Plugin::start_with(
            "node",
            dir,
            &[&args[..], extra].concat(),
            &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
        );
        let csinode = node.wait_for_driver(cp, "csi.ipclink.dev", limit);
        (plugin, csinode)
    }

    /// Starts `ipclink-csi ROLE` with any arguments and environment.
    pub fn start_with(
        role: &str,
        dir: &Path,
        extra: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Plugin {
        std::fs::create_dir_all(dir).expect("plugin dir");
        let socket = dir.join(format!("{role}.sock"));
        let mut cmd = Command::new(BIN);
        cmd.arg(role)
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--state-dir")
            .arg(dir.join(format!("{role}-state")))
            .args(extra)
            .envs(envs.iter().copied())
            .env("IPCLINK_LOG", "debug");
        if role == "node" && !extra.contains(&"--node-id") {
            cmd.args(["--node-id", "node-1"]);
        }
        let log = dir.join(format!("{role}.log"));
        let mut process = Process::spawn(&format!("ipclink-csi {role}"), cmd, &log);
        // The socket file of a killed plugin may still be there: wait for a live one.
        process.wait_until("serving its socket", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Plugin {
            process,
            socket,
            dir: dir.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Waits until it exits by itself (within `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.process.wait_exit(limit)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.process.stop()
    }
}

/// A gRPC channel to a plugin's Unix socket.
pub async fn connect(socket: &Path) -> tonic::transport::Channel {
    ipclink_csi::connect(socket)
        .await
        .expect("connect to the plugin socket")
}

/// A node plugin serving the links of one file (`yaml`, in `links/link.yaml`), with a
/// directory for publish targets (`pods`); its mounts are removed when it is dropped.
pub struct Fixture {
    pub node: Plugin,
    pub _unmount: Unmounter,
    pub dir: tempfile::TempDir,
    pub links: PathBuf,
    pub pods: PathBuf,
}

/// Starts `ipclink-csi node` (with `extra` flags) on a links directory holding `yaml`.
pub fn fixture(yaml: &str, extra: &[&str]) -> Fixture {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("links dir");
    std::fs::write(links.join("link.yaml"), yaml).expect("link file");
    let node = Plugin::start("node", &dir.path().join("plugin"), &links, extra);
    let pods = dir.path().join("pods");
    std::fs::create_dir(&pods).expect("pods dir");
    Fixture {
        node,
        _unmount: Unmounter(dir.path().to_path_buf()),
        dir,
        links,
        pods,
    }
}

/// A mount capability (single node writer).
pub fn mount_cap() -> ipclink_csi::csi::VolumeCapability {
    use ipclink_csi::csi::volume_capability::{
        AccessMode, AccessType, MountVolume, access_mode::Mode,
    };
    ipclink_csi::csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// A publish request for an inline ephemeral volume of `link`, for pod `ns/pod`.
pub fn ephemeral(
    id: &str,
    target: &Path,
    ns: &str,
    pod: &str,
    link: &str,
) -> ipclink_csi::csi::NodePublishVolumeRequest {
    ipclink_csi::csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap()),
        volume_context: [
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.name", pod),
            ("csi.storage.k8s.io/pod.namespace", ns),
            ("link", link),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..Default::default()
    }
}

/// A two-worker runtime for driving a client.
pub fn rt() -> tokio::runtime::Runtime {
    ipclink_runtime::tokio_runtime(Some(2)).expect("runtime")
}

/// How a test holds an example pair while it reads the node plugin's metrics: the
/// variable the example's programs wait on once done (for `/dev/shm/release`, which the
/// test then creates in the link), and what the metrics must show meanwhile.
pub struct Hold<'a> {
    pub variable: &'a str,
    pub ready: &'a dyn Fn(&str) -> bool,
}

/// Applies `examples/kubernetes/MANIFEST` as written on a real kubelet (`images`
/// imported, the node plugin registered) and waits for its two `pods` in namespace
/// `ns` to finish: each must succeed, with an address of its own on the pod network.
/// With `hold`, the one change to the manifest is the hold's variable in each
/// container's `env`, and the pair lets go only once the plugin's /metrics satisfied
/// `hold.ready`. The logs of their `main` containers.
#[allow(dead_code)]
pub fn run_example_pair(
    ns: &str,
    images: &[&str],
    manifest: &str,
    pods: [&str; 2],
    hold: Option<Hold>,
) -> [String; 2] {
    // A loaded node may start one pod of the pair minutes after the other.
    const LONG: Duration = Duration::from_secs(360);
    let (cp, node) = ipclink_testkit::node::cluster(ns, images);
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let port = ipclink_testkit::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let (_plugin, _) = Plugin::start_registered(
        dir.path(),
        &cp,
        &node,
        &["--metrics-listen", &metrics],
        LONG,
    );
    let mut text = std::fs::read_to_string(
        ipclink_testkit::repo_root()
            .join("examples/kubernetes")
            .join(manifest),
    )
    .expect("the manifest");
    if let Some(h) = &hold {
        let env = "\n      env:\n";
        assert_eq!(
            text.matches(env).count(),
            2,
            "one env list a pod in {manifest}"
        );
        text = text.replace(
            env,
            &format!(
                "{env}        - {{name: {}, value: /dev/shm/release}}\n",
                h.variable
            ),
        );
    }
    let applied = dir.path().join(manifest);
    std::fs::write(&applied, text).expect("the manifest");
    let out = Command::new(cp.bin_dir().join("kubectl"))
        .args(["apply", "-f"])
        .arg(&applied)
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        ipclink_testkit::output_text(&out)
    );
    if let Some(h) = &hold {
        let start = std::time::Instant::now();
        let mut body = String::new();
        while !(h.ready)(&body) {
            assert!(
                start.elapsed() < LONG,
                "the metrics never showed what the test waits for:\n{body}\n{}\n{}",
                node.container_log(ns, pods[0], "main"),
                node.container_log(ns, pods[1], "main")
            );
            std::thread::sleep(Duration::from_millis(200));
            body = ipclink_testkit::http::get_ok(port, "/metrics").unwrap_or_default();
        }
        // The namespace's one link on this node (beside it, the plugin's record of it).
        let links: Vec<_> = std::fs::read_dir(dir.path().join("node-state/links").join(ns))
            .expect("the node's links")
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert_eq!(links.len(), 1, "{links:?}");
        std::fs::write(links[0].path().join("release"), b"").expect("release");
    }
    let mut ips = Vec::new();
    for p in pods {
        let v = cp.wait_for(
            &format!("/api/v1/namespaces/{ns}/pods/{p}"),
            "pod finished",
            LONG,
            |v| matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed")),
        );
        assert_eq!(
            v["status"]["phase"],
            "Succeeded",
            "{p}: {v:#}\n{}",
            node.container_log(ns, p, "main")
        );
        ips.push(v["status"]["podIP"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        !ips[0].is_empty() && ips[0] != ips[1],
        "each pod has an address of its own: {ips:?}"
    );
    pods.map(|p| node.container_log(ns, p, "main"))
}
