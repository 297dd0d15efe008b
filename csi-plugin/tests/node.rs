//! The node plugin as a real process: pods sharing a link through two publications,
//! refusals, hostile requests, concurrency, crashes and full filesystems.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Plugin, connect, ephemeral, require_root, rt};
use ipclink_csi::csi::node_client::NodeClient;
use ipclink_csi::csi::{
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
};
use ipclink_testkit::mounts::{mount_options, mount_points, mount_points_under, snapshot};
use ipclink_testkit::{Libc, compile_peer, describe, spawn_pod, wait_with_timeout};
use tonic::Code;

fn links_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node-links")
}

// Dropped in this order: the plugin, then every mount, then the directory.
struct Fixture {
    node: Plugin,
    _unmount: common::Unmounter,
    dir: tempfile::TempDir,
    pods: PathBuf,
}

fn fixture() -> Fixture {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Plugin::start("node", dir.path(), &links_dir(), &[]);
    let pods = dir.path().join("pods");
    std::fs::create_dir(&pods).expect("pods dir");
    Fixture {
        node,
        _unmount: common::Unmounter(dir.path().to_path_buf()),
        dir,
        pods,
    }
}

async fn publish(
    c: &mut NodeClient<tonic::transport::Channel>,
    req: NodePublishVolumeRequest,
) -> Code {
    match c.node_publish_volume(req).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

async fn unpublish(c: &mut NodeClient<tonic::transport::Channel>, id: &str, target: &Path) -> Code {
    let req = NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    };
    match c.node_unpublish_volume(req).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[test]
fn two_pods_share_a_link_through_two_publications_and_strangers_are_refused() {
    let f = fixture();
    let peer = compile_peer("posix_peer", Libc::Glibc);
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&f.node.socket).await);
        let (a, b) = (f.pods.join("detector"), f.pods.join("camera"));
        assert_eq!(
            publish(
                &mut c,
                ephemeral("csi-a", &a, "vision", "detector-0", "frames")
            )
            .await,
            Code::Ok
        );
        assert_eq!(
            publish(
                &mut c,
                ephemeral("csi-b", &b, "vision", "camera-0", "frames")
            )
            .await,
            Code::Ok
        );

        // What a pod gets: the link's tmpfs with its safety flags, read-write.
        let options = mount_options(&a).expect("the target is a mount");
        for flag in ["rw", "nosuid", "nodev", "noexec"] {
            assert!(options.iter().any(|x| x == flag), "{flag}: {options:?}");
        }
        let consumer = spawn_pod(&a, &peer, &["consumer"]);
        let producer = spawn_pod(&b, &peer, &["producer"]);
        let p = wait_with_timeout(producer, Duration::from_secs(20));
        let co = wait_with_timeout(consumer, Duration::from_secs(20));
        assert!(p.status.success(), "producer: {}", describe(&p));
        assert!(co.status.success(), "consumer: {}", describe(&co));

        // Refusals: nothing is created or mounted for them.
        let before = mount_points_under(&[f.dir.path()]);
        let stranger = f.pods.join("intruder");
        let e = publish(
            &mut c,
            ephemeral("csi-c", &stranger, "vision", "intruder", "frames"),
        )
        .await;
        assert_eq!(e, Code::PermissionDenied);
        let other_ns = publish(
            &mut c,
            ephemeral("csi-d", &stranger, "elsewhere", "camera-0", "frames"),
        )
        .await;
        assert_eq!(
            other_ns,
            Code::NotFound,
            "a pod of another namespace sees no link of that name"
        );
        let mut forged = ephemeral(
            "vision.frames.abc",
            &stranger,
            "elsewhere",
            "camera-0",
            "frames",
        );
        forged.volume_context.remove("csi.storage.k8s.io/ephemeral");
        forged.volume_context.remove("link");
        assert_eq!(
            publish(&mut c, forged).await,
            Code::PermissionDenied,
            "persistent volume of another namespace"
        );
        let mut anonymous = ephemeral("csi-e", &stranger, "vision", "camera-0", "frames");
        anonymous
            .volume_context
            .remove("csi.storage.k8s.io/pod.name");
        assert_eq!(
            publish(&mut c, anonymous).await,
            Code::PermissionDenied,
            "no pod identity"
        );
        assert_eq!(mount_points_under(&[f.dir.path()]), before);
        assert!(!stranger.exists());

        assert_eq!(unpublish(&mut c, "csi-a", &a).await, Code::Ok);
        assert_eq!(unpublish(&mut c, "csi-b", &b).await, Code::Ok);
        assert!(!a.exists() && !b.exists(), "targets removed");
        assert_eq!(
            unpublish(&mut c, "csi-b", &b).await,
            Code::Ok,
            "unpublish is idempotent"
        );
    });
    drop(f);
}

#[test]
fn a_link_is_closed_unless_a_member_selects_the_pod() {
    let f = fixture();
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&f.node.socket).await);
        let before = mount_points_under(&[f.dir.path()]);
        // No member has a podSelector: nobody, named or not, known or not, mounts it.
        for (id, pod) in [("csi-1", "camera-0"), ("csi-2", "intruder")] {
            let target = f.pods.join(id);
            let e = c
                .node_publish_volume(ephemeral(id, &target, "vision", pod, "closed"))
                .await
                .expect_err("a closed link");
            assert_eq!(e.code(), Code::PermissionDenied, "{pod}");
            assert!(
                e.message().contains("link vision/closed admits no pod")
                    && e.message().contains("podSelector: {}"),
                "{}",
                e.message()
            );
            assert!(!target.exists(), "{pod}: no target made");
        }
        let mut anonymous = ephemeral("csi-3", &f.pods.join("a"), "vision", "x", "closed");
        anonymous
            .volume_context
            .remove("csi.storage.k8s.io/pod.name");
        assert_eq!(publish(&mut c, anonymous).await, Code::PermissionDenied);
        assert_eq!(mount_points_under(&[f.dir.path()]), before);
        let links = f.dir.path().join("node-state/links/vision");
        assert!(!links.join("closed").exists(), "nothing materialized");

        // `podSelector: {}` admits any pod of the namespace the source knows, and still
        // no request that names no pod.
        let guest = f.pods.join("guest");
        assert_eq!(
            publish(
                &mut c,
                ephemeral("csi-4", &guest, "vision", "intruder", "open")
            )
            .await,
            Code::Ok
        );
        assert!(guest.join("events").exists());
        let mut anonymous = ephemeral("csi-5", &f.pods.join("b"), "vision", "x", "open");
        anonymous
            .volume_context
            .remove("csi.storage.k8s.io/pod.name");
        assert_eq!(publish(&mut c, anonymous).await, Code::PermissionDenied);
        assert_eq!(unpublish(&mut c, "csi-4", &guest).await, Code::Ok);
    });
    drop(f);

    // Standalone, the old open behaviour is there behind its flag (csi-sanity).
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = common::Unmounter(dir.path().to_path_buf());
    let node = Plugin::start(
        "node",
        dir.path(),
        &links_dir(),
        &["--open-selectorless-links"],
    );
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        let target = dir.path().join("anon");
        let mut anonymous = ephemeral("csi-6", &target, "vision", "x", "closed");
        anonymous
            .volume_context
            .remove("csi.storage.k8s.io/pod.name");
        assert_eq!(publish(&mut c, anonymous).await, Code::Ok);
        assert_eq!(unpublish(&mut c, "csi-6", &target).await, Code::Ok);
    });
    drop(node);
}

/// Everything a hostile request could touch: the mounts, the plugin's state directory,
/// and the pods directory.
fn host_state(f: &Fixture) -> (Vec<String>, Vec<String>) {
    let mut files = snapshot(f.dir.path());
    files.retain(|l| !l.contains("node.log"));
    // Other tests, and the container engines of earlier CI steps, mount and unmount
    // elsewhere on the host while this runs (podman's storage overlay appeared in one
    // CI run). Every hostile target lies in our directory or resolves, through the
    // `link-to-etc` symlink, into /etc: those are the mounts a hostile request could
    // add, so those are the ones compared.
    let mounts = mount_points_under(&[f.dir.path(), Path::new("/etc")]);
    (mounts, files)
}

#[test]
fn hostile_requests_get_the_right_code_and_change_nothing() {
    let f = fixture();
    let pods = &f.pods;
    // Targets that are not a fresh or empty directory.
    std::fs::write(pods.join("file"), b"x").expect("file");
    nix::unistd::mkfifo(
        &pods.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("fifo");
    std::os::unix::fs::symlink("/etc", pods.join("link-to-etc")).expect("symlink");
    std::fs::create_dir(pods.join("full")).expect("dir");
    std::fs::write(pods.join("full/keep"), b"x").expect("file");
    let ok_target = pods.join("t");
    let long = "a".repeat(129);
    let big = "v".repeat(5 * 1024);
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&f.node.socket).await);
        let good = || ephemeral("csi-x", &ok_target, "vision", "camera-0", "frames");
        let with_id = |id: &str| {
            let mut r = good();
            r.volume_id = id.into();
            r.volume_context.remove("csi.storage.k8s.io/ephemeral");
            r.volume_context.remove("link");
            r
        };
        let with_link = |link: &str| {
            let mut r = good();
            r.volume_context.insert("link".into(), link.into());
            r
        };
        let with_target = |t: &str| {
            let mut r = good();
            r.target_path = t.into();
            r
        };
        let p = |name: &str| pods.join(name).display().to_string();
        let mut cases: Vec<(&str, NodePublishVolumeRequest, Code)> = vec![
            ("empty id", with_id(""), Code::InvalidArgument),
            ("id ..", with_id(".."), Code::NotFound),
            ("id ../x", with_id("../x"), Code::InvalidArgument),
            ("id a/..", with_id("a/.."), Code::InvalidArgument),
            ("id /etc", with_id("/etc"), Code::InvalidArgument),
            ("id .", with_id("."), Code::NotFound),
            ("id a//b", with_id("a//b"), Code::InvalidArgument),
            (
                "id NUL",
                with_id("vision.fr\0ames.x"),
                Code::InvalidArgument,
            ),
            (
                "id newline",
                with_id("vision.frames.x\n"),
                Code::InvalidArgument,
            ),
            ("id 129 bytes", with_id(&long), Code::InvalidArgument),
            ("link ..", with_link(".."), Code::InvalidArgument),
            ("link ../x", with_link("../x"), Code::InvalidArgument),
            ("link /etc", with_link("/etc"), Code::InvalidArgument),
            ("link NUL", with_link("fr\0ames"), Code::InvalidArgument),
            ("link newline", with_link("frames\n"), Code::InvalidArgument),
            ("link 129 bytes", with_link(&long), Code::InvalidArgument),
            ("link uppercase", with_link("Frames"), Code::InvalidArgument),
            (
                "relative target",
                with_target("pods/t"),
                Code::InvalidArgument,
            ),
            (
                "dotted target",
                with_target(&format!("{}/../t", p("x"))),
                Code::InvalidArgument,
            ),
            (
                "target through a symlink",
                with_target(&format!("{}/t", p("link-to-etc"))),
                Code::InvalidArgument,
            ),
            (
                "symlink target",
                with_target(&p("link-to-etc")),
                Code::InvalidArgument,
            ),
            (
                "fifo target",
                with_target(&p("fifo")),
                Code::InvalidArgument,
            ),
            (
                "file target",
                with_target(&p("file")),
                Code::InvalidArgument,
            ),
            (
                "non-empty target",
                with_target(&p("full")),
                Code::FailedPrecondition,
            ),
            (
                "no capability",
                NodePublishVolumeRequest {
                    volume_capability: None,
                    ..good()
                },
                Code::InvalidArgument,
            ),
        ];
        let mut r = good();
        r.volume_context
            .insert("unknown.example/key".into(), "x".into());
        cases.push(("unknown context key", r, Code::InvalidArgument));
        let mut r = good();
        r.volume_context.insert("link".into(), big.clone());
        cases.push(("5 KiB context", r, Code::InvalidArgument));
        let mut r = with_id("vision.frames.abc");
        r.volume_context.insert(
            "csi.storage.k8s.io/pod.namespace".into(),
            "elsewhere".into(),
        );
        cases.push(("forged pod namespace", r, Code::PermissionDenied));
        let mut r = good();
        r.volume_context.insert(
            "csi.storage.k8s.io/pod.namespace".into(),
            "../vision".into(),
        );
        cases.push(("hostile pod namespace", r, Code::InvalidArgument));

        let before = host_state(&f);
        for (case, req, want) in cases {
            let got = publish(&mut c, req).await;
            assert_eq!(got, want, "{case}");
            assert_eq!(host_state(&f), before, "{case} changed the host");
        }
        assert_eq!(
            std::fs::read_link(pods.join("link-to-etc")).expect("link"),
            Path::new("/etc")
        );
        assert!(!Path::new("/etc/t").exists());

        // The same target with a different read-only flag.
        assert_eq!(publish(&mut c, good()).await, Code::Ok);
        assert_eq!(publish(&mut c, good()).await, Code::Ok, "idempotent");
        let after = host_state(&f);
        let ro = NodePublishVolumeRequest {
            readonly: true,
            ..good()
        };
        assert_eq!(publish(&mut c, ro).await, Code::AlreadyExists);
        assert_eq!(host_state(&f), after);
        assert_eq!(unpublish(&mut c, "csi-x", &ok_target).await, Code::Ok);

        // A read-only publication is read-only (and keeps the safety flags).
        let ro_target = pods.join("ro");
        let ro = NodePublishVolumeRequest {
            readonly: true,
            ..ephemeral("csi-ro", &ro_target, "vision", "camera-0", "frames")
        };
        assert_eq!(publish(&mut c, ro).await, Code::Ok);
        let err = std::fs::File::create(ro_target.join("control/x")).expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
        let options = mount_options(&ro_target).expect("mount");
        for flag in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(options.iter().any(|x| x == flag), "{flag}: {options:?}");
        }
        assert_eq!(unpublish(&mut c, "csi-ro", &ro_target).await, Code::Ok);
    });
}

#[test]
fn fifty_concurrent_publishes_of_one_target_give_one_mount() {
    let f = fixture();
    let target = f.pods.join("t");
    rt().block_on(async {
        let channel = connect(&f.node.socket).await;
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let mut c = NodeClient::new(channel.clone());
                let req = ephemeral("csi-c", &target, "vision", "camera-0", "frames");
                tokio::spawn(async move { publish(&mut c, req).await })
            })
            .collect();
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.expect("task"));
        }
        assert!(
            codes.iter().all(|c| matches!(c, Code::Ok | Code::Aborted)),
            "{codes:?}"
        );
        assert!(codes.contains(&Code::Ok));
        let t = target.display().to_string();
        assert_eq!(
            mount_points().iter().filter(|m| **m == t).count(),
            1,
            "codes {codes:?}"
        );
        let mut c = NodeClient::new(channel);
        assert_eq!(unpublish(&mut c, "csi-c", &target).await, Code::Ok);
        assert!(!mount_points().contains(&t));
    });
}

#[test]
fn a_node_plugin_killed_after_the_mount_recovers_and_keeps_the_data() {
    let mut f = fixture();
    let target = f.pods.join("t");
    let req = || ephemeral("csi-k", &target, "vision", "camera-0", "frames");
    let frames = target.join("frames");
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&f.node.socket).await);
        assert_eq!(publish(&mut c, req()).await, Code::Ok);
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&frames)
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"written-by-a-pod"))
        .expect("a pod writes");
    // One record per target under node-state/publications (one here).
    let records = f.dir.path().join("node-state/publications");
    let record = || {
        let names: Vec<_> = std::fs::read_dir(&records)
            .expect("records")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        names[0].clone()
    };
    let legacy = f.dir.path().join("node-state/publications.json");

    for (round, damage) in ["none", "corrupt", "missing", "unrecorded", "legacy"]
        .into_iter()
        .enumerate()
    {
        f.node.kill9();
        match damage {
            // A write torn by the crash: a half record left under the temporary name,
            // and a record that does not parse.
            "corrupt" => {
                let r = record();
                let name = r.file_name().expect("name").to_string_lossy().into_owned();
                std::fs::write(records.join(format!(".ipclink-tmp-{name}")), b"{\"tar")
                    .expect("tmp");
                std::fs::write(&r, b"{\"target\": \"/x").expect("corrupt");
            }
            "missing" => std::fs::remove_dir_all(&records).expect("rm records"),
            // Killed after the mount, before the record was written.
            "unrecorded" => std::fs::remove_file(record()).expect("rm record"),
            // The single state file of versions before per-target records.
            "legacy" => {
                std::fs::remove_dir_all(&records).expect("rm records");
                std::fs::write(
                    &legacy,
                    serde_json::json!({"by_target": {target.display().to_string(): {
                        "volume_id": "csi-k", "namespace": "vision", "link": "frames",
                        "readonly": false, "pod": "camera-0"}}})
                    .to_string(),
                )
                .expect("legacy state");
            }
            _ => {}
        }
        f.node = Plugin::start("node", f.dir.path(), &links_dir(), &[]);
        rt().block_on(async {
            let mut c = NodeClient::new(connect(&f.node.socket).await);
            assert_eq!(
                publish(&mut c, req()).await,
                Code::Ok,
                "round {round} ({damage}): repeated publish"
            );
            let stats = c
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: "csi-k".into(),
                    volume_path: target.display().to_string(),
                    staging_target_path: String::new(),
                })
                .await
                .expect("stats after restart");
            assert_eq!(stats.into_inner().usage.len(), 2);
        });
        let t = target.display().to_string();
        assert_eq!(
            mount_points().iter().filter(|m| **m == t).count(),
            1,
            "round {round}: one mount"
        );
        let mut head = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open(&frames).expect("open"), &mut head)
            .expect("read");
        assert_eq!(&head, b"written-by-a-pod", "round {round}: data survived");
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(record()).expect("record")).expect("json");
        assert_eq!(r["target"], target.display().to_string(), "round {round}");
        assert_eq!(r["volume_id"], "csi-k", "round {round}");
        assert!(
            !legacy.exists(),
            "round {round}: the old state file is replaced"
        );
    }
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&f.node.socket).await);
        assert_eq!(unpublish(&mut c, "csi-k", &target).await, Code::Ok);
    });
    assert!(
        !mount_points().contains(&target.display().to_string()),
        "no mount left behind"
    );
    assert!(!target.exists());
}

#[test]
fn a_full_link_gives_the_writer_enospc_and_the_plugin_stays_healthy() {
    let f = fixture();
    let target = f.pods.join("t");
    rt().block_on(async {
        let channel = connect(&f.node.socket).await;
        let mut c = NodeClient::new(channel.clone());
        assert_eq!(
            publish(
                &mut c,
                ephemeral("csi-f", &target, "vision", "camera-0", "frames")
            )
            .await,
            Code::Ok
        );
        let mut file = std::fs::File::create(target.join("control/fill")).expect("create");
        let chunk = vec![1u8; 256 * 1024];
        let err = (0..64)
            .find_map(|_| std::io::Write::write_all(&mut file, &chunk).err())
            .expect("ENOSPC by bytes");
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC));
        drop(file);
        std::fs::remove_file(target.join("control/fill")).expect("rm");
        let err = (0..4000)
            .find_map(|i| std::fs::File::create(target.join(format!("control/f{i}"))).err())
            .expect("ENOSPC by inodes");
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC));
        let mut id = ipclink_csi::csi::identity_client::IdentityClient::new(channel);
        let probe = id
            .probe(ipclink_csi::csi::ProbeRequest {})
            .await
            .expect("probe")
            .into_inner();
        assert_eq!(probe.ready.map(|r| r.value), Some(true));
        let stats = c
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: "csi-f".into(),
                volume_path: target.display().to_string(),
                staging_target_path: String::new(),
            })
            .await
            .expect("stats")
            .into_inner();
        let inodes = stats
            .usage
            .iter()
            .find(|u| u.unit == 2)
            .expect("inode usage");
        assert_eq!(inodes.available, 0, "{stats:?}");
        assert_eq!(unpublish(&mut c, "csi-f", &target).await, Code::Ok);
    });
}

#[test]
fn a_link_outlives_its_members_until_it_is_deleted_then_its_tmpfs_goes() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = common::Unmounter(dir.path().to_path_buf());
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("links dir");
    std::fs::copy(links_dir().join("frames.yaml"), links.join("frames.yaml")).expect("copy");
    let node = Plugin::start("node", dir.path(), &links, &["--gc-interval-seconds", "1"]);
    let pods = dir.path().join("pods");
    std::fs::create_dir(&pods).expect("pods dir");
    let target = pods.join("t");
    let link_mount = |m: &String| m.ends_with("/links/vision/frames");
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        let req = ephemeral("csi-g", &target, "vision", "camera-0", "frames");
        assert_eq!(publish(&mut c, req.clone()).await, Code::Ok);
        std::fs::write(target.join("control/note"), b"kept").expect("write into the link");
        assert_eq!(unpublish(&mut c, "csi-g", &target).await, Code::Ok);
        // The link still exists: its data waits for the next member.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(mount_points().iter().filter(|m| link_mount(m)).count(), 1);
        assert_eq!(publish(&mut c, req).await, Code::Ok);
        assert_eq!(
            std::fs::read(target.join("control/note")).expect("read"),
            b"kept"
        );
        assert_eq!(unpublish(&mut c, "csi-g", &target).await, Code::Ok);
    });
    // Deleted after its last member left: the next look removes its tmpfs.
    std::fs::remove_file(links.join("frames.yaml")).expect("delete the link");
    let start = std::time::Instant::now();
    // The log line comes after the unmount: both are waited for.
    while mount_points().iter().any(link_mount) || !node.log().contains("deleted link torn down") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "tmpfs kept, or its teardown not logged:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
