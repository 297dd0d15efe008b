//! The plugins' other faces: kubelet registration, metrics, the controller's placement and
//! capacity rules, and a link's teardown once it is deleted and unpublished.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{Plugin, Unmounter, connect, ephemeral, mount_cap, require_root, rt};
use ipclink_csi::csi::controller_client::ControllerClient;
use ipclink_csi::csi::node_client::NodeClient;
use ipclink_csi::csi::{
    CapacityRange, CreateVolumeRequest, NodeUnpublishVolumeRequest, Topology, TopologyRequirement,
};
use ipclink_csi::registration::proto::registration_client::RegistrationClient;
use ipclink_testkit::free_port;
use ipclink_testkit::http::get;
use ipclink_testkit::mounts::mount_points;
use tonic::Code;

fn node_links() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node-links")
}

#[test]
fn the_node_plugin_registers_itself_with_the_kubelet() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = dir.path().join("plugins_registry");
    let reg = registry.join("csi.ipclink.dev-reg.sock");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let node = Plugin::start(
        "node",
        dir.path(),
        &node_links(),
        &["--registration-dir", registry.to_str().expect("utf-8")],
    );
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&reg).is_err() {
        assert!(
            start.elapsed().as_secs() < 10,
            "no registration socket:\n{}",
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::metadata(&reg)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&node.socket)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    rt().block_on(async {
        let mut c = RegistrationClient::new(connect(&reg).await);
        let info = c
            .get_info(ipclink_csi::registration::proto::InfoRequest {})
            .await
            .expect("GetInfo")
            .into_inner();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, "csi.ipclink.dev");
        assert_eq!(info.endpoint, node.socket.display().to_string());
        assert_eq!(info.supported_versions, vec!["1.0.0".to_owned()]);
        c.notify_registration_status(ipclink_csi::registration::proto::RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .expect("NotifyRegistrationStatus");
    });
    assert!(
        node.log().contains("registered with the kubelet"),
        "{}",
        node.log()
    );
}

/// GET `path` on loopback `port` with the kubelet's default probe timeout (1 s):
/// (status, how long it took), or `None` when no answer came in time.
fn probe(port: u16, path: &str) -> Option<(u16, Duration)> {
    probe_within(port, path, Duration::from_secs(1))
}

/// `probe` with an answer awaited up to `limit`.
fn probe_within(port: u16, path: &str, limit: Duration) -> Option<(u16, Duration)> {
    use std::io::{Read, Write};
    let start = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), limit).ok()?;
    s.set_read_timeout(Some(
        limit
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1)),
    ))
    .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, start.elapsed()))
}

#[test]
fn probes_answer_while_a_thousand_idle_connections_hold_the_metrics_port() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let (metrics, probes) = (free_port(), free_port());
    let node = Plugin::start(
        "node",
        dir.path(),
        &node_links(),
        &[
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
            "--probe-listen",
            &format!("127.0.0.1:{probes}"),
        ],
    );
    // Both listeners serve before anything else (a loaded machine starts slowly).
    for port in [metrics, probes] {
        let start = std::time::Instant::now();
        while probe(port, "/healthz").map(|p| p.0) != Some(200) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "port {port} never answered /healthz\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A client that opens 1,000 connections and sends nothing on them.
    let idle: Vec<_> = (0..1000)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics)).expect("connect"))
        .collect();
    // The metrics port is starved (it serves 64 connections at once) once it has
    // taken its 64 ...
    let start = std::time::Instant::now();
    while probe(metrics, "/healthz").is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "the metrics port still answers: the test no longer shows starvation"
        );
    }
    // ... and the probe listener answers every probe, for longer than the 5 s after
    // which the metrics port drops a silent connection (and takes 64 more).
    let mut slowest = Duration::ZERO;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        for path in ["/healthz", "/readyz"] {
            let (status, took) = probe_within(probes, path, Duration::from_secs(5))
                .unwrap_or_else(|| panic!("{path} did not answer within 5 s\n{}", node.log()));
            assert_eq!(status, 200, "{path}");
            slowest = slowest.max(took);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("slowest probe with 1,000 idle connections on the metrics port: {slowest:?}");
    assert_eq!(
        probe(probes, "/metrics").map(|p| p.0),
        Some(404),
        "probes only"
    );
    drop(idle);
}

#[test]
fn the_node_plugin_serves_request_and_channel_metrics() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let port = free_port();
    let node = Plugin::start(
        "node",
        dir.path(),
        &node_links(),
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    let target = dir.path().join("t");
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        c.node_publish_volume(ephemeral("csi-m", &target, "vision", "camera-0", "frames"))
            .await
            .expect("publish");
        let e = c
            .node_publish_volume(ephemeral(
                "csi-n",
                &dir.path().join("u"),
                "vision",
                "intruder",
                "frames",
            ))
            .await;
        assert_eq!(e.expect_err("intruder").code(), Code::PermissionDenied);
    });
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    // The operator gathers /v1/links, in the sidecar's format, from every node plugin.
    let (status, links) = get(port, "/v1/links");
    assert_eq!(status, 200, "{links}");
    let report: ipclink_core::report::LinksReport =
        serde_json::from_str(&links).unwrap_or_else(|e| panic!("{e}: {links}"));
    assert_eq!(report.links.len(), 1, "{links}");
    let frames = &report.links[0];
    assert_eq!((&*frames.namespace, &*frames.name), ("vision", "frames"));
    let slots = frames.semaphores.iter().find(|s| s.info.name == "slots");
    assert_eq!(slots.and_then(|s| s.value), Some(8), "{links}");
    for line in [
        r#"ipclink_csi_requests_total{code="Ok",method="NodePublishVolume"} 1"#,
        r#"ipclink_csi_requests_total{code="PermissionDenied",method="NodePublishVolume"} 1"#,
        // The node labels every channel series, as ipclink_link_info does.
        r#"ipclink_link_limit_bytes{namespace="vision",link="frames",node="node-1"} 8388608"#,
        r#"ipclink_semaphore_value{namespace="vision",link="frames",channel="slots",kind="semaphore",origin="declared",node="node-1"} 8"#,
        "ipclink_csi_request_duration_seconds_bucket",
    ] {
        assert!(body.contains(line), "missing {line}:\n{body}");
    }
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        c.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: "csi-m".into(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish");
    });
}

#[test]
fn the_controller_places_volumes_and_refuses_impossible_capacities() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let controller = Plugin::start("controller", dir.path(), &node_links(), &[]);
    let state = dir.path().join("controller-state/volumes.json");
    rt().block_on(async {
        let mut c = ControllerClient::new(connect(&controller.socket).await);
        let req = |name: &str, required: i64, limit: i64| CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: required,
                limit_bytes: limit,
            }),
            volume_capabilities: vec![mount_cap()],
            parameters: [("link", "frames"), ("namespace", "vision")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            accessibility_requirements: Some(TopologyRequirement {
                requisite: vec![],
                preferred: vec![Topology {
                    segments: [("topology.ipclink.dev/node".to_owned(), "node-7".to_owned())]
                        .into(),
                }],
            }),
            ..Default::default()
        };
        let v = c
            .create_volume(req("pvc-1", 1 << 20, 0))
            .await
            .expect("create")
            .into_inner()
            .volume
            .expect("volume");
        assert_eq!(v.capacity_bytes, 8 << 20, "a volume is as big as its link");
        assert!(v.volume_id.starts_with("vision.frames."), "{}", v.volume_id);
        assert_eq!(
            v.accessible_topology[0].segments["topology.ipclink.dev/node"],
            "node-7"
        );
        assert_eq!(v.volume_context["link"], "frames");

        let before = std::fs::read(&state).expect("state");
        let mut unknown = req("pvc-2", 0, 0);
        unknown.parameters.insert("fsType".into(), "ext4".into());
        let mut missing_link = req("pvc-3", 0, 0);
        missing_link.parameters.insert("link".into(), "nope".into());
        let mut other_namespace = req("pvc-10", 0, 0);
        other_namespace.parameters.insert(
            "csi.storage.k8s.io/pvc/namespace".into(),
            "elsewhere".into(),
        );
        let mut hostile_link = req("pvc-4", 0, 0);
        hostile_link
            .parameters
            .insert("link".into(), "../etc".into());
        for (case, r, want) in [
            (
                "required over the link's size",
                req("pvc-5", 9 << 20, 0),
                Code::OutOfRange,
            ),
            (
                "required i64::MAX",
                req("pvc-6", i64::MAX, 0),
                Code::OutOfRange,
            ),
            ("negative", req("pvc-7", -1, 0), Code::InvalidArgument),
            (
                "limit below the link's size",
                req("pvc-8", 0, 1 << 20),
                Code::OutOfRange,
            ),
            (
                "required over limit",
                req("pvc-9", 2 << 20, 1 << 20),
                Code::InvalidArgument,
            ),
            (
                "same name, other capacity",
                req("pvc-1", 2 << 20, 0),
                Code::AlreadyExists,
            ),
            ("unknown parameter", unknown, Code::InvalidArgument),
            ("unknown link", missing_link, Code::InvalidArgument),
            ("hostile link", hostile_link, Code::InvalidArgument),
            (
                "a class naming another namespace than the claim's",
                other_namespace,
                Code::InvalidArgument,
            ),
            ("empty name", req("", 0, 0), Code::InvalidArgument),
        ] {
            let got = c
                .create_volume(r)
                .await
                .map(|_| Code::Ok)
                .unwrap_or_else(|s| s.code());
            assert_eq!(got, want, "{case}");
            assert_eq!(
                std::fs::read(&state).expect("state"),
                before,
                "{case} changed the state"
            );
        }
        // The claim's namespace is the link's, with or without the class saying so.
        let mut from_claim = req("pvc-11", 0, 0);
        from_claim.parameters.remove("namespace");
        from_claim
            .parameters
            .insert("csi.storage.k8s.io/pvc/namespace".into(), "vision".into());
        let v = c
            .create_volume(from_claim)
            .await
            .expect("create")
            .into_inner();
        let id = v.volume.expect("volume").volume_id;
        assert!(id.starts_with("vision.frames."), "{id}");
    });
}

#[test]
fn a_deleted_link_goes_with_its_last_publication() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("links");
    std::fs::copy(node_links().join("frames.yaml"), links.join("frames.yaml")).expect("copy");
    let node = Plugin::start("node", dir.path(), &links, &[]);
    let link_dir = dir
        .path()
        .join("node-state/links/vision/frames")
        .display()
        .to_string();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        c.node_publish_volume(ephemeral("csi-a", &a, "vision", "camera-0", "frames"))
            .await
            .expect("a");
        c.node_publish_volume(ephemeral("csi-b", &b, "vision", "detector-0", "frames"))
            .await
            .expect("b");
        assert!(mount_points().contains(&link_dir));
        std::fs::remove_file(links.join("frames.yaml")).expect("delete the link");
        let un = |id: &str, t: &Path| NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: t.display().to_string(),
        };
        c.node_unpublish_volume(un("csi-a", &a))
            .await
            .expect("unpublish a");
        assert!(mount_points().contains(&link_dir), "b still uses the link");
        c.node_unpublish_volume(un("csi-b", &b))
            .await
            .expect("unpublish b");
        assert!(
            !mount_points().contains(&link_dir),
            "the last publication took the link with it"
        );
    });
}

#[test]
fn sigterm_ends_the_plugin_even_while_a_client_stays_connected() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let mut node = Plugin::start("node", dir.path(), &node_links(), &[]);
    // A client that never hangs up: its runtime is not driven after the call, so it does
    // not even answer the server's GOAWAY (a busy or stuck kubelet looks the same).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let channel = rt.block_on(connect(&node.socket));
    let mut c = NodeClient::new(channel);
    rt.block_on(c.node_get_info(ipclink_csi::csi::NodeGetInfoRequest {}))
        .expect("a call on the connection");
    // Stopped within the drain time, or the harness fails the test naming it.
    let status = node.stop();
    assert!(status.success(), "exit {status}:\n{}", node.log());
    assert!(!node.socket.exists(), "the socket is removed on exit");
    drop(c);
}

#[test]
fn a_node_id_that_cannot_be_a_node_name_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let long = format!("{}.example.com", "a".repeat(242));
    assert_eq!(long.len(), 254);
    for bad in ["Node-1", "node_1", "node-1.", "a..b", long.as_str()] {
        let state = dir.path().join("state");
        let out = std::process::Command::new(common::BIN)
            .args(["node", "--endpoint"])
            .arg(format!("unix://{}", dir.path().join("node.sock").display()))
            .arg("--state-dir")
            .arg(&state)
            .args(["--links-dir", node_links().to_str().expect("utf-8")])
            .args(["--node-id", bad])
            .output()
            .expect("ipclink-csi");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("--node-id") && err.contains("DNS subdomain"),
            "{bad}: {err}"
        );
        assert!(!state.exists(), "{bad}: nothing is made");
        assert!(!dir.path().join("node.sock").exists(), "{bad}: no socket");
    }
}
