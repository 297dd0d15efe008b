//! A real Kubernetes node for tests: containerd and runc (Debian), CNI bridge plugins
//! (Debian), and a kubelet of the control plane's Kubernetes line (Go module proxy),
//! registered with a [`ControlPlane`]. No registry is reachable, so the pod sandbox
//! image and the test images are made here from static programs of `testkit/peers/`
//! (`scripts/oci-image`) and imported into containerd. Everything lives under one
//! temporary directory; Drop stops the kubelet, containerd and their containers and
//! unmounts what they left there.
//!
//! Several nodes on one machine ([`Node::start_isolated`]) each get their own CNI
//! bridge and subnet, their own kubelet `cgroupRoot` and a mount namespace of their own
//! in which their kubelet directory appears at one common path: a chart has one
//! `kubeletDir` for every node, as a real cluster has `/var/lib/kubelet` on each.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control_plane::ControlPlane;
use crate::{Libc, compile_peer, free_port, require_tool};

/// The pod sandbox image (a static `pause`).
pub const PAUSE_IMAGE: &str = "docker.io/ipclink/pause:local";
/// An image whose entrypoint is `testkit/peers/posix_peer.c` built static with musl.
pub const PEER_IMAGE: &str = "docker.io/ipclink/peer:local";

/// A running kubelet + containerd.
#[derive(Debug)]
pub struct Node {
    dir: tempfile::TempDir,
    containerd: Option<Child>,
    kubelet: Option<Child>,
    /// Network namespaces that existed before (containerd keeps pods' in /run/netns).
    netns_before: Vec<String>,
    /// Node name.
    pub name: String,
    /// An isolated node's mount namespace, held by a process that only sleeps.
    namespace: Option<Child>,
    /// The kubelet's root directory as the node sees it.
    kubelet_dir: PathBuf,
    /// An isolated node's kubelet `cgroupRoot` (below every hierarchy's mount point).
    cgroup_root: Option<String>,
}

/// What makes a node one of several on this machine.
#[derive(Debug, Clone, Copy)]
struct Isolation<'a> {
    /// 0..=255: the CNI bridge `ipcltN` and subnet `10.244.N.0/24`.
    index: u8,
    /// The common path at which this node's kubelet directory appears to it.
    kubelet_dir: &'a Path,
}

/// The mount points of the cgroup hierarchies (v1 controllers, named and unified).
fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup ") || t.starts_with("cgroup2 "))
        })
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

/// Makes cgroup `root` in every hierarchy, as the kubelet wants its `cgroupRoot`; a
/// new cpuset starts empty, so it gets its parent's CPUs and memory nodes.
fn make_cgroup_root(root: &str) {
    for m in cgroup_mounts() {
        let dir = m.join(root.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cgroup {}: {e}", dir.display()));
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(m.join(file)) {
                std::fs::write(dir.join(file), v.trim())
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
            }
        }
    }
}

/// Removes cgroup `root` and what the kubelet made below it, deepest first.
fn remove_cgroup_root(root: &str) {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for m in cgroup_mounts() {
        remove(&m.join(root.trim_start_matches('/')));
    }
}

fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
}

impl Node {
    /// The kubelet's root directory, as the test sees it (an isolated node's submounts
    /// there are seen through [`Node::path`]).
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    /// The kubelet's root directory as the node, its pods and a chart's `kubeletDir`
    /// see it: the common path of an isolated node.
    pub fn kubelet_dir(&self) -> &Path {
        &self.kubelet_dir
    }

    /// Where node plugins put their registration sockets.
    pub fn registration_dir(&self) -> PathBuf {
        self.root_dir().join("plugins_registry")
    }

    /// The log of the `main` container of `pod` once it holds `want`, within `limit`.
    pub fn wait_log(&self, namespace: &str, pod: &str, want: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.container_log(namespace, pod, "main");
            if log.contains(want) {
                return log;
            }
            assert!(
                start.elapsed() < limit,
                "{namespace}/{pod}: no {want:?} in\n{log}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The log of a container: its lines without the CRI prefix.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        let logs = self.dir.path().join("pod-logs");
        let Ok(entries) = std::fs::read_dir(&logs) else {
            return String::new();
        };
        let prefix = format!("{namespace}_{pod}_");
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter_map(|e| {
                // One file per attempt (0.log, 1.log, ...): the latest.
                let dir = e.path().join(container);
                let last = std::fs::read_dir(&dir)
                    .ok()?
                    .flatten()
                    .filter_map(|f| {
                        let name = f.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".log")?.parse::<u32>().ok()
                    })
                    .max()?;
                std::fs::read_to_string(dir.join(format!("{last}.log"))).ok()
            })
            .flat_map(|text| {
                text.lines()
                    .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts containerd and a kubelet named `name` against `cp`; returns once the Node
    /// object is Ready.
    pub fn start(cp: &ControlPlane, name: &str) -> Node {
        Self::start_with(cp, name, None)
    }

    /// Starts node `name` as one of several on this machine: CNI bridge `ipcltINDEX`
    /// and subnet `10.244.INDEX.0/24`, a kubelet `cgroupRoot` of its own, and a mount
    /// namespace of its own in which its kubelet directory is bound at `kubelet_dir`
    /// (an empty directory every isolated node shares), so one chart `kubeletDir`
    /// serves every node. Its containerd, kubelet and containers live in that
    /// namespace; what they mount there is seen through [`Node::mount_points`].
    pub fn start_isolated(cp: &ControlPlane, name: &str, index: u8, kubelet_dir: &Path) -> Node {
        Self::start_with(cp, name, Some(Isolation { index, kubelet_dir }))
    }

    /// The mount points this node's containerd, kubelet and pods see.
    pub fn mount_points(&self) -> Vec<String> {
        let file = match &self.namespace {
            Some(holder) => format!("/proc/{}/mountinfo", holder.id()),
            None => "/proc/self/mountinfo".to_owned(),
        };
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .collect()
    }

    /// `path` as this node sees it, readable from the test (through the mount
    /// namespace of an isolated node).
    pub fn path(&self, path: &Path) -> PathBuf {
        match &self.namespace {
            Some(holder) => Path::new(&format!("/proc/{}/root", holder.id()))
                .join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_owned(),
        }
    }

    /// A command that runs in this node's mount namespace.
    fn command(&self, program: &Path) -> Command {
        match &self.namespace {
            Some(holder) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--mount=/proc/{}/ns/mnt", holder.id()))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn start_with(cp: &ControlPlane, name: &str, isolation: Option<Isolation<'_>>) -> Node {
        crate::require_root();
        for tool in ["containerd", "runc", "ctr", "musl-gcc", "tar", "sha256sum"] {
            require_tool(tool);
        }
        assert!(
            Path::new("/usr/lib/cni/bridge").exists(),
            "CNI plugins missing; run scripts/install-test-deps (containernetworking-plugins)"
        );
        let dir = tempfile::Builder::new()
            .prefix("ipclink-node-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().to_owned();
        let socket = d.join("containerd.sock");
        let index = isolation.map_or(0, |i| i.index);
        std::fs::create_dir_all(d.join("cni")).expect("cni dir");
        std::fs::write(
            d.join("cni/10-ipclink-test.conflist"),
            r#"{"cniVersion": "0.4.0", "name": "ipclink-test", "plugins": [
  {"type": "bridge", "bridge": "ipcltIDX", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.IDX.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "DIR/cni-ipam"}},
  {"type": "loopback"}]}"#
                .replace("DIR", &d.display().to_string())
                .replace("IDX", &index.to_string()),
        )
        .expect("cni config");
        let own_kubelet_dir = d.join("kubelet");
        std::fs::create_dir_all(&own_kubelet_dir).expect("kubelet dir");
        let mut node = Node {
            dir,
            containerd: None,
            kubelet: None,
            netns_before: netns(),
            name: name.to_owned(),
            namespace: None,
            kubelet_dir: own_kubelet_dir.clone(),
            cgroup_root: None,
        };
        if let Some(iso) = isolation {
            node.namespace = Some(mount_namespace(&own_kubelet_dir, iso.kubelet_dir));
            let root = format!(
                "/ipclink-test-{}",
                d.file_name().expect("name").to_string_lossy()
            );
            make_cgroup_root(&root);
            node.cgroup_root = Some(root);
            node.kubelet_dir = iso.kubelet_dir.to_owned();
        }
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#,
                d = d.display(),
                sock = socket.display()
            ),
        )
        .expect("containerd config");
        let containerd = node
            .command(Path::new("containerd"))
            .arg("--config")
            .arg(d.join("containerd.toml"))
            .stdin(Stdio::null())
            .stdout(log(&d, "containerd.log"))
            .stderr(log(&d, "containerd.log"))
            .spawn()
            .expect("start containerd");
        node.containerd = Some(containerd);
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not start:\n{}",
                node.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node.import(PAUSE_IMAGE, &compile_peer("pause", Libc::Musl), "pause");
        node.import(
            PEER_IMAGE,
            &compile_peer("posix_peer", Libc::Musl),
            "posix_peer",
        );

        let kport = free_port();
        let hport = free_port();
        std::fs::write(
            d.join("kubelet.yaml"),
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{sock}
failSwapOn: false
cgroupsPerQOS: true
enforceNodeAllocatable: []
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
address: 127.0.0.1
port: {kport}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {hport}
podLogsDir: {d}/pod-logs
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
localStorageCapacityIsolation: false
makeIPTablesUtilChains: false
podPidsLimit: -1
{cgroup_root}"#,
                sock = socket.display(),
                d = d.display(),
                cgroup_root = node
                    .cgroup_root
                    .as_ref()
                    .map(|r| format!("cgroupRoot: \"{r}\"\n"))
                    .unwrap_or_default(),
            ),
        )
        .expect("kubelet config");
        let kubelet = node
            .command(&cp.bin_dir().join("kubelet"))
            .arg(format!("--config={}", d.join("kubelet.yaml").display()))
            .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .arg(format!("--root-dir={}", node.kubelet_dir.display()))
            .arg(format!("--hostname-override={name}"))
            .arg("--v=2")
            .stdin(Stdio::null())
            .stdout(log(&d, "kubelet.log"))
            .stderr(log(&d, "kubelet.log"))
            .spawn()
            .expect("start kubelet");
        node.kubelet = Some(kubelet);
        cp.wait_for(
            &format!("/api/v1/nodes/{name}"),
            "the kubelet's node Ready",
            Duration::from_secs(90),
            |v| {
                v["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            },
        );
        cp.untaint_node(name);
        node
    }

    /// Waits until `driver` has registered with this node's kubelet; returns the CSINode.
    pub fn wait_for_driver(
        &self,
        cp: &ControlPlane,
        driver: &str,
        limit: Duration,
    ) -> serde_json::Value {
        cp.wait_for(
            &format!("/apis/storage.k8s.io/v1/csinodes/{}", self.name),
            &format!("{driver} registered with the kubelet"),
            limit,
            |v| {
                v["spec"]["drivers"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|d| d["name"] == driver))
            },
        )
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", "k8s.io"]);
        c
    }

    /// Builds a one-program image and imports it into containerd's Kubernetes namespace.
    fn import(&self, image: &str, program: &Path, entry: &str) {
        let rootfs = self.dir.path().join(format!("rootfs-{entry}"));
        std::fs::create_dir_all(&rootfs).expect("rootfs");
        std::fs::copy(program, rootfs.join(entry)).expect("copy program");
        let archive = self.dir.path().join(format!("{entry}.tar"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/oci-image");
        let out = Command::new(script)
            .arg(image)
            .arg(&archive)
            .arg(&rootfs)
            .arg(format!("/{entry}"))
            .output()
            .expect("scripts/oci-image");
        assert!(
            out.status.success(),
            "oci-image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.import_archive(&archive);
    }

    /// Imports an image archive (OCI or docker) into containerd's Kubernetes namespace.
    pub fn import_archive(&self, archive: &Path) {
        let out = self
            .ctr()
            .args(["images", "import"])
            .arg(archive)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "ctr images import {}: {}\n{}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    /// The tails of the containerd and kubelet logs.
    pub fn logs(&self) -> String {
        let tail = |n: &str| crate::log_tail(&self.dir.path().join(n), 40);
        format!(
            "--- containerd ---\n{}\n--- kubelet ---\n{}",
            tail("containerd.log"),
            tail("kubelet.log")
        )
    }
}

/// A process holding a new mount namespace (a slave of this one) in which `own` is
/// bound, shared, at `common`, and `/run/netns` (where containerd pins its pods'
/// network namespaces) is a tmpfs of the node's own; returns once both are made.
fn mount_namespace(own: &Path, common: &Path) -> Child {
    use std::io::BufRead;
    let mut holder = Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && mount --make-rshared "$2" && mkdir -p /run/netns && mount -t tmpfs -o mode=0755 netns /run/netns && echo ready && exec sleep infinity"#)
        .arg("sh")
        .arg(own)
        .arg(common)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut line = String::new();
    let stdout = holder.stdout.take().expect("stdout");
    let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    assert_eq!(
        line.trim(),
        "ready",
        "the node's mount namespace: {:?}",
        holder.try_wait()
    );
    holder
}

/// Names in /run/netns.
fn netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Node {
    fn drop(&mut self) {
        let isolated = self.namespace.is_some();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Some(mut k) = self.kubelet.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        // Containers outlive containerd in their shims: kill those of this node.
        let _ = self.ctr().args(["tasks", "ls", "-q"]).output().map(|out| {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self
                    .ctr()
                    .args(["tasks", "kill", "-s", "SIGKILL", id])
                    .output();
            }
        });
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(format!("containerd-shim.*{}", self.dir.path().display()))
            .status();
        // The mount namespace goes with its last process; the cgroups once they are
        // empty (the shims' containers take a moment to die).
        if let Some(mut holder) = self.namespace.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        if let Some(root) = self.cgroup_root.take() {
            for _ in 0..20 {
                remove_cgroup_root(&root);
                if !cgroup_mounts()
                    .iter()
                    .any(|m| m.join(root.trim_start_matches('/')).exists())
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        // Pod network namespaces containerd had no time to remove (an isolated node's
        // went with its mount namespace).
        for name in netns().into_iter().filter(|_| !isolated) {
            if name.starts_with("cni-") && !self.netns_before.contains(&name) {
                let path = format!("/run/netns/{name}");
                let _ = nix::mount::umount2(path.as_str(), nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&path);
            }
        }
        // Bind mounts may stack: a few passes.
        for _ in 0..3 {
            crate::mounts::unmount_below(self.dir.path());
        }
    }
}

/// A cluster for the kubelet tests: a control plane that schedules, with the IpcLink CRD,
/// the `CSIDriver` and namespace `namespace`, and one kubelet `node-1` with the images
/// `images` of `scripts/build-images` (`python`, `iceoryx2`, ...) imported.
pub fn cluster(namespace: &str, images: &[&str]) -> (ControlPlane, Node) {
    let built = crate::script_path("build-images");
    let mut cp = ControlPlane::start();
    cp.start_scheduling();
    cp.install_ipclink_crd();
    cp.install_csi_driver();
    cp.namespace(namespace);
    let node = Node::start(&cp, "node-1");
    for image in images {
        node.import_archive(&built.join(format!("{image}.tar")));
    }
    (cp, node)
}
