//! Memory that matches Kubernetes, against the kernel's own memory cgroups: a link's
//! preallocated pages are charged to its first member pod's cgroup, never to the node
//! plugin; a region the pod's limit cannot hold is refused (`ResourceExhausted`) with
//! nothing made; the node budget and the per-link cap refuse what they cannot hold,
//! naming the numbers; NodeGetInfo reports the volume limit.

mod common;

use std::path::{Path, PathBuf};

use common::{Plugin, Unmounter, connect, mount_cap, require_root, rt};
use ipclink_csi::csi::node_client::NodeClient;
use ipclink_csi::csi::{NodeGetInfoRequest, NodePublishVolumeRequest};
use ipclink_testkit::mounts::{mount_points_under, snapshot};
use tonic::Code;

/// The links below have no member podSelector: opened to any requester explicitly.
const OPEN: &str = "--open-selectorless-links";

const LINKS: &str = r#"
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: small, namespace: mem }
spec:
  sizeLimit: 8Mi
  channels: [{ name: buf, kind: shm, size: 4Mi }]
---
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: other, namespace: mem }
spec:
  sizeLimit: 8Mi
  channels: [{ name: buf, kind: shm, size: 4Mi }]
---
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: huge, namespace: mem }
spec:
  sizeLimit: 64Mi
  channels: [{ name: buf, kind: shm, size: 60Mi }]
---
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: big, namespace: mem }
spec:
  sizeLimit: 40Mi
  channels: [{ name: frames, kind: shm, size: 32Mi }]
---
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: big-too, namespace: mem }
spec:
  sizeLimit: 40Mi
  channels: [{ name: frames, kind: shm, size: 32Mi }]
"#;

/// An inline publish of `link` for a pod with `uid` (what the kubelet sends).
fn publish_req(target: &Path, link: &str, pod_uid: &str) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: format!("csi-{link}-{}", &pod_uid[..8]),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap()),
        volume_context: [
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.name", "member"),
            ("csi.storage.k8s.io/pod.namespace", "mem"),
            ("csi.storage.k8s.io/pod.uid", pod_uid),
            ("link", link),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..Default::default()
    }
}

/// Memory cgroups laid out as the kubelet's cgroupfs driver lays out pods, under a
/// cgroup of this test's own in the real v1 memory hierarchy; removed in Drop.
struct PodCgroups {
    top: PathBuf,
    /// A directory whose `memory` is the test's cgroup: the plugin's `--cgroup-root`.
    root: tempfile::TempDir,
}

impl PodCgroups {
    fn new() -> PodCgroups {
        let memory = Path::new("/sys/fs/cgroup/memory");
        assert!(
            memory.join("memory.limit_in_bytes").exists(),
            "this test needs the cgroup v1 memory controller at {}",
            memory.display()
        );
        // One tree per test: the tests of this file run in parallel.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let top = memory.join(format!("ipclink-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(top.join("kubepods/burstable")).expect("make test cgroups");
        let root = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(&top, root.path().join("memory")).expect("symlink");
        PodCgroups { top, root }
    }

    /// A pod's cgroup, with a memory limit when given.
    fn pod(&self, uid: &str, limit: Option<u64>) -> PathBuf {
        let dir = self.top.join(format!("kubepods/burstable/pod{uid}"));
        std::fs::create_dir(&dir).expect("pod cgroup");
        if let Some(bytes) = limit {
            std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).expect("limit");
        }
        dir
    }
}

impl Drop for PodCgroups {
    fn drop(&mut self) {
        for dir in ["kubepods/burstable", "kubepods", ""] {
            if let Ok(entries) = std::fs::read_dir(self.top.join(dir)) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("pod") {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(self.top.join(dir));
        }
    }
}

/// `shmem` of a cgroup's memory.stat, in bytes.
fn shmem(cgroup: &Path) -> u64 {
    std::fs::read_to_string(cgroup.join("memory.stat"))
        .expect("memory.stat")
        .lines()
        .find_map(|l| l.strip_prefix("shmem "))
        .and_then(|v| v.trim().parse().ok())
        .expect("shmem in memory.stat")
}

/// The link's record once it says an edit waits (it names `want`), within 30 s.
fn held_back(record: &Path, want: &str, node: &Plugin) -> String {
    let start = std::time::Instant::now();
    loop {
        let r = std::fs::read_to_string(record).unwrap_or_default();
        if r.contains(want) {
            return r;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the edit was not held back: {r}\n{}",
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn pages_are_charged_to_the_first_member_and_a_pod_limit_too_small_makes_nothing() {
    require_root();
    let cgroups = PodCgroups::new();
    let roomy = "0b7f6d1e-2f6a-4c39-9d55-3c1a7f0e4b21";
    let tight = "11111111-2222-3333-4444-555555555555";
    let roomy_cg = cgroups.pod(roomy, None);
    let tight_cg = cgroups.pod(tight, Some(16 << 20));
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("links dir");
    std::fs::write(links.join("mem.yaml"), LINKS).expect("links");
    let root = cgroups.root.path().to_str().expect("utf-8").to_owned();
    let node = Plugin::start("node", dir.path(), &links, &["--cgroup-root", &root, OPEN]);
    // A member already running in the pod whose limit is too small for the region,
    // likelier to be the OOM killer's victim than the plugin's processes (as a burstable
    // pod's are next to a system-node-critical plugin, which inherit its -997): it must
    // not pay for a region that does not fit.
    let member = ipclink_testkit::KillOnDrop(
        std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("sleep"),
    );
    std::fs::write(format!("/proc/{}/oom_score_adj", member.0.id()), "900").expect("adj");
    std::fs::write(tight_cg.join("cgroup.procs"), member.0.id().to_string()).expect("join");
    let pods = dir.path().join("pods");
    std::fs::create_dir(&pods).expect("pods dir");
    let mut member = member;
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        let before = shmem(&roomy_cg);
        c.node_publish_volume(publish_req(&pods.join("a"), "big", roomy))
            .await
            .expect("the first member's publish");
        let charged = shmem(&roomy_cg) - before;
        assert!(
            charged >= 32 << 20,
            "the pod's cgroup holds {charged} bytes of shmem; the region is 32 MiB"
        );

        // A pod whose limit cannot hold the region: refused, and nothing is left.
        let state = snapshot(dir.path());
        let mounts = mount_points_under(&[dir.path()]);
        let e = c
            .node_publish_volume(publish_req(&pods.join("b"), "big-too", tight))
            .await
            .expect_err("over the pod's limit");
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message()
                .contains(&format!("memory limit of pod {tight}"))
                && e.message().contains("32Mi"),
            "{}",
            e.message()
        );
        let mut now = snapshot(dir.path());
        now.retain(|l| !l.contains("node.log"));
        let mut was = state;
        was.retain(|l| !l.contains("node.log"));
        assert_eq!(now, was, "a refused publish left something behind");
        assert_eq!(
            mount_points_under(&[dir.path()]),
            mounts,
            "a refused publish left a mount"
        );
        assert_eq!(shmem(&tight_cg), 0, "the refused region stays uncharged");
        // The helper was the OOM killer's choice, not the member.
        assert!(
            member.0.try_wait().expect("wait").is_none(),
            "the member running in the pod was killed"
        );
    });
    drop(node);
}

#[test]
fn the_node_budget_and_the_link_cap_refuse_naming_the_numbers() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("links dir");
    std::fs::write(links.join("mem.yaml"), LINKS).expect("links");
    let node = Plugin::start(
        "node",
        dir.path(),
        &links,
        &[
            OPEN,
            "--max-node-bytes",
            &(12u64 << 20).to_string(),
            "--max-link-bytes",
            &(32u64 << 20).to_string(),
            "--max-volumes-per-node",
            "7",
            "--apply-interval-seconds",
            "1",
        ],
    );
    let pods = dir.path().join("pods");
    std::fs::create_dir(&pods).expect("pods dir");
    let uid = "0b7f6d1e-2f6a-4c39-9d55-3c1a7f0e4b21";
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        let info = c
            .node_get_info(NodeGetInfoRequest {})
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.max_volumes_per_node, 7);
        // No pod cgroups here: charge to the plugin (the standalone way) for this test.
        let mut small = publish_req(&pods.join("a"), "small", uid);
        small.volume_context.remove("csi.storage.k8s.io/pod.uid");
        c.node_publish_volume(small.clone()).await.expect("fits");

        let state = snapshot(dir.path());
        let mounts = mount_points_under(&[dir.path()]);
        let mut other = publish_req(&pods.join("b"), "other", uid);
        other.volume_context.remove("csi.storage.k8s.io/pod.uid");
        let e = c.node_publish_volume(other).await.expect_err("over budget");
        assert_eq!(e.code(), Code::ResourceExhausted);
        for said in [
            "mem/other",
            "8Mi",
            "12Mi",
            "1 links hold 8Mi",
            "--max-node-bytes",
        ] {
            assert!(e.message().contains(said), "{said}: {}", e.message());
        }
        let mut huge = publish_req(&pods.join("c"), "huge", uid);
        huge.volume_context.remove("csi.storage.k8s.io/pod.uid");
        let e = c.node_publish_volume(huge).await.expect_err("over the cap");
        assert_eq!(e.code(), Code::ResourceExhausted);
        for said in ["mem/huge", "64Mi", "32Mi", "--max-link-bytes"] {
            assert!(e.message().contains(said), "{said}: {}", e.message());
        }
        let strip = |mut v: Vec<String>| {
            v.retain(|l| !l.contains("node.log"));
            v
        };
        assert_eq!(
            strip(snapshot(dir.path())),
            strip(state),
            "a refusal changed files"
        );
        assert_eq!(
            mount_points_under(&[dir.path()]),
            mounts,
            "a refusal mounted something"
        );

        // A link already on the node is not counted twice.
        small.target_path = pods.join("d").display().to_string();
        small.volume_id = "csi-small-again".into();
        c.node_publish_volume(small)
            .await
            .expect("the same link again");
    });
    // A live edit is held to the same budget: small's sizeLimit 8Mi -> 16Mi does not
    // fit 12Mi. The link keeps its size, and its record says what waits and why.
    std::fs::write(
        links.join("mem.yaml"),
        LINKS.replacen("sizeLimit: 8Mi", "sizeLimit: 16Mi", 1),
    )
    .expect("edit");
    let link = dir.path().join("node-state/links/mem/small");
    let record = dir.path().join("node-state/links/mem/.small.json");
    let held = held_back(&record, "spec.sizeLimit", &node);
    assert!(held.contains("--max-node-bytes"), "{held}");
    let v = nix::sys::statvfs::statvfs(&link).expect("statvfs");
    assert_eq!(
        v.blocks() * v.fragment_size(),
        8 << 20,
        "the link grew past the budget"
    );
    drop(node);
}

const OBJECT_LINKS: &str = r#"
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: few, namespace: mem }
spec:
  channels: [{ name: a, kind: fifo }, { name: b, kind: fifo }, { name: c, kind: fifo }]
---
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: many, namespace: mem }
spec:
  channels: [{ name: a, kind: fifo }, { name: b, kind: fifo }, { name: c, kind: fifo }]
"#;

#[test]
fn the_node_object_budget_refuses_a_link_and_holds_back_an_edit() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("links dir");
    std::fs::write(links.join("mem.yaml"), OBJECT_LINKS).expect("links");
    let node = Plugin::start(
        "node",
        dir.path(),
        &links,
        &[
            OPEN,
            "--max-node-objects",
            "5",
            "--apply-interval-seconds",
            "1",
        ],
    );
    let pods = dir.path().join("pods");
    std::fs::create_dir(&pods).expect("pods dir");
    let uid = "0b7f6d1e-2f6a-4c39-9d55-3c1a7f0e4b21";
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        let mut few = publish_req(&pods.join("a"), "few", uid);
        few.volume_context.remove("csi.storage.k8s.io/pod.uid");
        c.node_publish_volume(few).await.expect("fits");
        let state = snapshot(dir.path());
        let mounts = mount_points_under(&[dir.path()]);
        let mut many = publish_req(&pods.join("b"), "many", uid);
        many.volume_context.remove("csi.storage.k8s.io/pod.uid");
        let e = c.node_publish_volume(many).await.expect_err("over budget");
        assert_eq!(e.code(), Code::ResourceExhausted);
        for said in [
            "mem/many",
            "3 channels and semaphores",
            "1 links declare 3 of 5",
            "--max-node-objects",
        ] {
            assert!(e.message().contains(said), "{said}: {}", e.message());
        }
        let strip = |mut v: Vec<String>| {
            v.retain(|l| !l.contains("node.log"));
            v
        };
        assert_eq!(
            strip(snapshot(dir.path())),
            strip(state),
            "a refusal changed files"
        );
        assert_eq!(
            mount_points_under(&[dir.path()]),
            mounts,
            "a refusal mounted something"
        );
    });
    // A live edit is held to the same budget: three more channels do not fit.
    std::fs::write(
        links.join("mem.yaml"),
        OBJECT_LINKS.replacen(
            "{ name: c, kind: fifo }]",
            "{ name: c, kind: fifo }, { name: d, kind: fifo }, { name: e, kind: fifo }, { name: f, kind: fifo }]",
            1,
        ),
    )
    .expect("edit");
    let link = dir.path().join("node-state/links/mem/few");
    let record = dir.path().join("node-state/links/mem/.few.json");
    let held = held_back(&record, "--max-node-objects", &node);
    assert!(held.contains("\"field\": \"spec.channels\""), "{held}");
    for name in ["d", "e", "f"] {
        assert!(!link.join(name).exists(), "{name} was made past the budget");
    }
    assert!(link.join("c").exists(), "the link keeps its objects");
    drop(node);
}

/// A preallocation that takes its time holds up no other call: another link's publish
/// and NodeGetInfo finish while it is still running.
#[test]
fn a_slow_preallocation_holds_up_no_other_call() {
    require_root();
    let cgroups = PodCgroups::new();
    let slow = "0b7f6d1e-2f6a-4c39-9d55-3c1a7f0e4b21";
    let quick = "11111111-2222-3333-4444-555555555555";
    cgroups.pod(slow, None);
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("links dir");
    std::fs::write(links.join("mem.yaml"), LINKS).expect("links");
    let root = cgroups.root.path().to_str().expect("utf-8").to_owned();
    let node = Plugin::start_with(
        "node",
        dir.path(),
        &[
            "--links-dir",
            links.to_str().expect("utf-8"),
            "--cgroup-root",
            &root,
            OPEN,
        ],
        &[("IPCLINK_FAULT", std::ffi::OsStr::new("slow-charge"))],
    );
    let pods = dir.path().join("pods");
    std::fs::create_dir(&pods).expect("pods dir");
    rt().block_on(async {
        let channel = connect(&node.socket).await;
        let mut a = NodeClient::new(channel.clone());
        let mut b = NodeClient::new(channel);
        let big = tokio::spawn(async move {
            a.node_publish_volume(publish_req(&pods.join("slow"), "big", slow))
                .await
                .map(|_| ())
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        b.node_get_info(NodeGetInfoRequest {}).await.expect("info");
        // Named with no pod: preallocated in the plugin, without the slow helper.
        let mut small = publish_req(&dir.path().join("pods/quick"), "small", quick);
        small.volume_id = "csi-quick".into();
        small.volume_context.remove("csi.storage.k8s.io/pod.uid");
        b.node_publish_volume(small).await.expect("another link");
        assert!(
            !big.is_finished(),
            "the slow preallocation finished first: nothing was shown"
        );
        big.await
            .expect("task")
            .expect("the slow publish succeeds too");
    });
    drop(node);
}
