//! Programs we did not write, in restricted pods through a real kubelet (containerd +
//! runc + CNI), placed by the real scheduler: Python's multiprocessing.shared_memory and
//! iceoryx2 publish/subscribe meet in a link that lets members create their own objects
//! (`examples/kubernetes/workloads.yaml`, applied as written); the same Python producer
//! fails with EACCES on a link without `allowCreate`; and with the node plugin held to
//! 128 MiB of memory (as the chart limits it), a 512 MiB region is charged to its first
//! member pod, never to the plugin, while a pod whose limit cannot hold it gets
//! `ResourceExhausted` and nothing is made.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Plugin, Unmounter, require_root};
use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::mounts::mounts_containing;
use ipclink_testkit::node::{Node, PAUSE_IMAGE, cluster};
use ipclink_testkit::{output_text, repo_root};
use serde_json::json;

const NS: &str = "workloads";
const LONG: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// A memory cgroup (v1) with a limit, for a process of the test; removed in Drop once
/// the process is gone.
struct MemoryLimit(PathBuf);

impl MemoryLimit {
    fn new(bytes: u64) -> MemoryLimit {
        let dir = Path::new("/sys/fs/cgroup/memory")
            .join(format!("ipclink-plugin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("memory cgroup");
        std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).expect("limit");
        MemoryLimit(dir)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    }

    fn stat(&self, key: &str) -> u64 {
        memory_stat(&self.0, key)
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// One value of a cgroup's memory.stat.
fn memory_stat(cgroup: &Path, key: &str) -> u64 {
    std::fs::read_to_string(cgroup.join("memory.stat"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn link(name: &str, spec: serde_json::Value) -> String {
    ipclink_testkit::pods::link(NS, name, spec)
}

/// A restricted member pod of `app`, mounting link `link` at /dev/shm.
fn pod(
    name: &str,
    app: &str,
    image: &str,
    args: &[&str],
    link: &str,
    memory: Option<&str>,
) -> String {
    let mut p: serde_json::Value = serde_json::from_str(
        &ipclink_testkit::pods::pod(name, app)
            .runs(image, args)
            .run_as(1000, Some(1000))
            .restricted()
            .inline_link(link)
            .json(),
    )
    .expect("pod json");
    if let Some(m) = memory {
        p["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": m}});
    }
    p.to_string()
}

fn wait_done(cp: &ControlPlane, node: &Node, pod: &str) -> serde_json::Value {
    let v = cp.wait_for(
        &format!("/api/v1/namespaces/{NS}/pods/{pod}"),
        "pod finished",
        LONG,
        |v| matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed")),
    );
    if v["status"]["phase"] != "Succeeded" {
        eprintln!("{pod}: {}", node.container_log(NS, pod, "main"));
    }
    v
}

fn failed_mount(cp: &ControlPlane, pod: &str) -> Option<String> {
    let (_, v) = cp.get_json(&format!(
        "/api/v1/namespaces/{NS}/events?fieldSelector=involvedObject.name={pod}"
    ));
    v["items"]
        .as_array()?
        .iter()
        .find(|e| e["reason"] == "FailedMount")
        .and_then(|e| e["message"].as_str().map(str::to_owned))
}

#[test]
fn real_programs_share_links_and_pods_pay_for_their_links_memory() {
    require_root();
    let (cp, node) = cluster(NS, &["python", "iceoryx2"]);

    // The node plugin as the chart runs it: 128 MiB of memory at most.
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let limit = MemoryLimit::new(128 * MIB);
    let (plugin, _) = Plugin::start_registered(dir.path(), &cp, &node, &[], LONG);
    let plugin_pid = plugin.pid().expect("running");
    limit.add(plugin_pid);

    // The example, as written.
    let out = std::process::Command::new(cp.bin_dir().join("kubectl"))
        .args(["apply", "-f"])
        .arg(repo_root().join("examples/kubernetes/workloads.yaml"))
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
    for p in ["py-producer", "py-consumer", "ice-ping", "ice-pong"] {
        let v = wait_done(&cp, &node, p);
        assert_eq!(v["status"]["phase"], "Succeeded", "{p}: {v:#}");
    }
    let log = |p: &str| node.container_log(NS, p, "main");
    assert!(
        log("py-producer").contains("producer ok 200"),
        "{}",
        log("py-producer")
    );
    assert!(
        log("py-consumer").contains("consumer ok 200 frames checked"),
        "{}",
        log("py-consumer")
    );
    assert!(
        log("ice-ping").contains("ping ok 1000 rtt_p50_ns"),
        "{}",
        log("ice-ping")
    );
    assert!(
        log("ice-pong").contains("pong ok 1000"),
        "{}",
        log("ice-pong")
    );

    // The same producer on a link that holds only what it declares: EACCES.
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let links = format!("/apis/ipclink.dev/v1alpha1/namespaces/{NS}/ipclinks");
    cp.create(
        &links,
        &link(
            "closed",
            json!({"members": [{"name": "py", "podSelector": {"matchLabels": {"app": "closed"}}}]}),
        ),
    );
    cp.create(
        &pods,
        &pod(
            "closed-producer",
            "closed",
            "localhost/ipclink/python:0.1.0",
            &["producer"],
            "closed",
            None,
        ),
    );
    let v = wait_done(&cp, &node, "closed-producer");
    assert_eq!(v["status"]["phase"], "Failed", "{v:#}");
    assert_eq!(
        v["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 13,
        "{v:#}"
    );
    assert!(
        log("closed-producer").contains("Permission denied"),
        "{}",
        log("closed-producer")
    );

    // A 512 MiB region: charged to its first member pod (limit 1 GiB), not to the plugin.
    let big = |name: &str| {
        link(
            name,
            json!({
                "sizeLimit": "600Mi",
                "members": [{"name": "m", "podSelector": {"matchLabels": {"app": name}}}],
                "channels": [{"name": "frames", "kind": "shm", "size": "512Mi", "mode": "0666"}]
            }),
        )
    };
    cp.create(&links, &big("big"));
    cp.create(
        &pods,
        &pod("big-member", "big", PAUSE_IMAGE, &[], "big", Some("1Gi")),
    );
    let v = cp.wait_for(&format!("{pods}/big-member"), "member running", LONG, |v| {
        v["status"]["phase"] == "Running"
    });
    let uid = v["metadata"]["uid"].as_str().expect("uid");
    let pod_cgroup = ["", "burstable/", "besteffort/"]
        .iter()
        .map(|qos| Path::new("/sys/fs/cgroup/memory/kubepods").join(format!("{qos}pod{uid}")))
        .find(|p| p.is_dir())
        .expect("the member pod's memory cgroup");
    let charged = memory_stat(&pod_cgroup, "total_shmem");
    assert!(
        charged >= 512 * MIB,
        "the member pod's cgroup ({}) holds {charged} bytes of shmem",
        pod_cgroup.display()
    );
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(plugin_pid as i32), None).is_ok(),
        "the node plugin was killed:\n{}",
        plugin.log()
    );
    assert_eq!(plugin.pid(), Some(plugin_pid), "the node plugin restarted");
    assert!(
        limit.stat("total_shmem") < 16 * MIB,
        "the plugin's cgroup holds {} bytes of shmem",
        limit.stat("total_shmem")
    );

    // A pod whose limit cannot hold the region: FailedMount naming the limit, nothing made.
    cp.create(&links, &big("big2"));
    cp.create(
        &pods,
        &pod(
            "small-member",
            "big2",
            PAUSE_IMAGE,
            &[],
            "big2",
            Some("256Mi"),
        ),
    );
    let start = std::time::Instant::now();
    let event = loop {
        if let Some(m) = failed_mount(&cp, "small-member") {
            break m;
        }
        assert!(start.elapsed() < LONG, "no FailedMount\n{}", plugin.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        event.contains("ResourceExhausted") && event.contains("memory limit of pod"),
        "{event}"
    );
    assert!(
        mounts_containing("links/workloads/big2").is_empty(),
        "a refused link was left mounted"
    );
    assert!(!dir.path().join("node-state/links/workloads/big2").exists());

    for p in [
        "py-producer",
        "py-consumer",
        "ice-ping",
        "ice-pong",
        "closed-producer",
        "big-member",
        "small-member",
    ] {
        let _ = cp.request("DELETE", &format!("{pods}/{p}"), None);
    }
    cp.wait_for(&format!("{pods}/big-member"), "member gone", LONG, |v| {
        v["code"] == 404
    });
    drop(plugin);
    drop(node);
    drop(limit);
}
