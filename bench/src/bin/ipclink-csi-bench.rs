//! ipclink-csi-bench: NodePublishVolume + NodeUnpublishVolume latency over N volumes on
//! one node, through the real `ipclink-csi node` process, in the same run as
//! 1. the same bind/unbind done by exec'ing mount(8)/umount(8), through our Rust client;
//! 2. through a grpc-go client (`bench/grpc-go-publish`, the kubelet's gRPC stack):
//!    ipclink and the real csi-driver-host-path plugin side by side, inline volumes
//!    both (`csi.storage.k8s.io/ephemeral`), 1,000 each by default.
//!
//! `ipclink-csi-bench [--volumes N]` (root). The plugin is the `ipclink-csi` binary next
//! to this one (`cargo build --release -p ipclink-csi` first) or `$IPCLINK_CSI`. The
//! grpc-go client is built by `scripts/install-grpc-go-bench` (or `$IPCLINK_GRPC_GO_PUBLISH`).
//! The host-path plugin is `$IPCLINK_HOSTPATH_PLUGIN`, built from its repository (see
//! docs/benchmarks.md); without it its columns are left out. Prints Markdown tables; nothing is
//! asserted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipclink_csi::csi::node_client::NodeClient;
use ipclink_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
use ipclink_csi::csi::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};

const LINK: &str = "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: { name: bench, namespace: bench }\nspec:\n  sizeLimit: 1Mi\n  channels:\n    - { name: events, kind: fifo }\n    - { name: buf, kind: shm, size: 64Ki }\n";

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--volumes")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    anyhow::ensure!(
        nix::unistd::Uid::effective().is_root(),
        "run as root (bind mounts)"
    );
    // Targets on disk like the kubelet's pods directory; the node's state on tmpfs like
    // its default /run/ipclink-csi.
    let dir = tempfile::tempdir()?;
    let run = tempfile::tempdir_in("/dev/shm")?;
    let links = dir.path().join("links");
    std::fs::create_dir(&links)?;
    std::fs::write(links.join("bench.yaml"), LINK)?;
    let socket = dir.path().join("node.sock");
    let bin = match std::env::var_os("IPCLINK_CSI") {
        Some(b) => std::path::PathBuf::from(b),
        None => std::env::current_exe()?.with_file_name("ipclink-csi"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "{}: no ipclink-csi binary; build it first (cargo build --release -p ipclink-csi) or set IPCLINK_CSI",
        bin.display()
    );
    let mut node = Command::new(&bin)
        .args(["node", "--node-id", "bench", "--endpoint"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--state-dir")
        .arg(run.path().join("state"))
        .arg("--links-dir")
        .arg(&links)
        .arg("--open-selectorless-links")
        .env("IPCLINK_LOG", "warn")
        .stderr(Stdio::inherit())
        .spawn()?;
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "node plugin did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let targets: Vec<_> = (0..n)
        .map(|i| dir.path().join(format!("pods/{i}/mount")))
        .collect();
    for t in &targets {
        std::fs::create_dir_all(t.parent().unwrap_or(Path::new("/")))?;
    }
    let cap = VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut publish, mut unpublish) = (Vec::with_capacity(n), Vec::with_capacity(n));
    rt.block_on(async {
        let mut c = NodeClient::new(ipclink_csi::connect(&socket).await?);
        for (i, t) in targets.iter().enumerate() {
            let req = NodePublishVolumeRequest {
                volume_id: format!("csi-{i}"),
                target_path: t.display().to_string(),
                volume_capability: Some(cap.clone()),
                volume_context: [
                    ("csi.storage.k8s.io/ephemeral", "true"),
                    ("csi.storage.k8s.io/pod.namespace", "bench"),
                    ("csi.storage.k8s.io/pod.name", "p"),
                    ("link", "bench"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
                ..Default::default()
            };
            let s = Instant::now();
            c.node_publish_volume(req).await?;
            publish.push(s.elapsed());
        }
        for (i, t) in targets.iter().enumerate() {
            let s = Instant::now();
            c.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: format!("csi-{i}"),
                target_path: t.display().to_string(),
            })
            .await?;
            unpublish.push(s.elapsed());
        }
        anyhow::Ok(())
    })?;

    // The same bind and unbind, the way a driver that execs mount(8) does it.
    let source = run.path().join("state/links/bench/bench");
    let (mut exec_mount, mut exec_umount) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for t in &targets {
        let s = Instant::now();
        std::fs::create_dir_all(t)?;
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(&source)
            .arg(t)
            .status()?;
        exec_mount.push(s.elapsed());
        anyhow::ensure!(ok.success(), "mount --bind failed");
    }
    for t in &targets {
        let s = Instant::now();
        let ok = Command::new("umount").arg(t).status()?;
        std::fs::remove_dir(t)?;
        exec_umount.push(s.elapsed());
        anyhow::ensure!(ok.success(), "umount failed");
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = node.wait();
    let _ = nix::mount::umount2(&source, nix::mount::MntFlags::MNT_DETACH);

    let grpc_go = grpc_go_rows(&bin, n)?;

    println!(
        "ipclink-csi-bench — {n} volumes on one node, one client, calls in sequence; node state on tmpfs, targets on disk\n"
    );
    println!(
        "| call | ipclink p50 (ms) | ipclink p99 (ms) | exec'd mount(8) p50 (ms) | exec'd mount(8) p99 (ms) | p99 ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, ours, theirs) in [
        ("publish (bind)", &mut publish, &mut exec_mount),
        ("unpublish (unbind)", &mut unpublish, &mut exec_umount),
    ] {
        let (a50, a99, b50, b99) = (
            pct(ours, 0.5),
            pct(ours, 0.99),
            pct(theirs, 0.5),
            pct(theirs, 0.99),
        );
        println!(
            "| {name} | {a50:.3} | {a99:.3} | {b50:.3} | {b99:.3} | {:.1}× faster |",
            b99 / a99
        );
    }
    println!("\n{grpc_go}");
    Ok(())
}

/// Figures of one grpc-go client run, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct GoFigures {
    publish_p50: f64,
    publish_p99: f64,
    unpublish_p50: f64,
    unpublish_p99: f64,
}

/// Runs `bench/grpc-go-publish` against the plugin listening on `socket`.
fn grpc_go_client(socket: &Path, n: usize, attrs: &[(&str, &str)]) -> anyhow::Result<GoFigures> {
    let client = match std::env::var_os("IPCLINK_GRPC_GO_PUBLISH") {
        Some(c) => std::path::PathBuf::from(c),
        None => {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-grpc-go-bench");
            let out = Command::new(&script).stderr(Stdio::inherit()).output()?;
            anyhow::ensure!(out.status.success(), "{} failed", script.display());
            std::path::PathBuf::from(String::from_utf8(out.stdout)?.trim())
        }
    };
    let targets = tempfile::tempdir()?;
    let mut cmd = Command::new(&client);
    cmd.arg("-endpoint")
        .arg(socket)
        .arg("-dir")
        .arg(targets.path())
        .arg("-n")
        .arg(n.to_string());
    for (k, v) in attrs {
        cmd.arg("-attr").arg(format!("{k}={v}"));
    }
    let out = cmd.stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(out.status.success(), "{} failed", client.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let f = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| anyhow::anyhow!("no {k} in {v}"))
    };
    Ok(GoFigures {
        publish_p50: f("publish_p50_ms")?,
        publish_p99: f("publish_p99_ms")?,
        unpublish_p50: f("unpublish_p50_ms")?,
        unpublish_p99: f("unpublish_p99_ms")?,
    })
}

/// Starts `cmd` (a plugin serving `socket`), runs the grpc-go client, stops it.
fn with_plugin(
    mut cmd: Command,
    socket: &Path,
    n: usize,
    attrs: &[(&str, &str)],
) -> anyhow::Result<GoFigures> {
    let mut plugin = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "{cmd:?} did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let figures = grpc_go_client(socket, n, attrs);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(plugin.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = plugin.wait();
    figures
}

/// ipclink and csi-driver-host-path through grpc-go: the table, as Markdown.
fn grpc_go_rows(ipclink: &Path, n: usize) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let run = tempfile::tempdir_in("/dev/shm")?;
    let links = dir.path().join("links");
    std::fs::create_dir(&links)?;
    std::fs::write(links.join("bench.yaml"), LINK)?;
    let socket = dir.path().join("ipclink.sock");
    let mut cmd = Command::new(ipclink);
    cmd.args(["node", "--node-id", "bench", "--endpoint"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--state-dir")
        .arg(run.path().join("state"))
        .arg("--links-dir")
        .arg(&links)
        .arg("--open-selectorless-links")
        .env("IPCLINK_LOG", "warn");
    let ours = with_plugin(
        cmd,
        &socket,
        n,
        &[
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.namespace", "bench"),
            ("csi.storage.k8s.io/pod.name", "p"),
            ("link", "bench"),
        ],
    )?;
    let _ = nix::mount::umount2(
        &run.path().join("state/links/bench/bench"),
        nix::mount::MntFlags::MNT_DETACH,
    );
    let mut out = format!(
        "Through grpc-go (bench/grpc-go-publish), inline volumes, {n} calls of each after 20 untimed\n\n"
    );
    let Some(hostpath) = std::env::var_os("IPCLINK_HOSTPATH_PLUGIN") else {
        out.push_str("| call | ipclink p50 (ms) | ipclink p99 (ms) |\n|---|---:|---:|\n");
        out.push_str(&format!(
            "| publish | {:.3} | {:.3} |\n| unpublish | {:.3} | {:.3} |\n\ncsi-driver-host-path left out: set IPCLINK_HOSTPATH_PLUGIN to its hostpathplugin binary (docs/benchmarks.md).\n",
            ours.publish_p50, ours.publish_p99, ours.unpublish_p50, ours.unpublish_p99
        ));
        return Ok(out);
    };
    // Its state where its deployment keeps it: a directory on the node's disk.
    let state = tempfile::tempdir()?;
    let socket = dir.path().join("hostpath.sock");
    let mut cmd = Command::new(&hostpath);
    cmd.arg(format!("--endpoint=unix://{}", socket.display()))
        .arg("--nodeid=bench")
        .arg(format!("--statedir={}", state.path().display()));
    let theirs = with_plugin(
        cmd,
        &socket,
        n,
        &[
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.namespace", "bench"),
            ("csi.storage.k8s.io/pod.name", "p"),
        ],
    )?;
    out.push_str("| call | ipclink p50 (ms) | ipclink p99 (ms) | host-path p50 (ms) | host-path p99 (ms) | p50 ratio | p99 ratio |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (name, a50, a99, b50, b99) in [
        (
            "publish",
            ours.publish_p50,
            ours.publish_p99,
            theirs.publish_p50,
            theirs.publish_p99,
        ),
        (
            "unpublish",
            ours.unpublish_p50,
            ours.unpublish_p99,
            theirs.unpublish_p50,
            theirs.unpublish_p99,
        ),
    ] {
        out.push_str(&format!(
            "| {name} | {a50:.3} | {a99:.3} | {b50:.3} | {b99:.3} | {:.1}× faster | {:.1}× faster |\n",
            b50 / a50,
            b99 / a99
        ));
    }
    Ok(out)
}
