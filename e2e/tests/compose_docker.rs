//! Docker Engine only: the volume plugin as a Docker managed plugin, and Compose v2's
//! built-in alternative `ipc: service:` beside a `driver: ipclink` volume. The tests on
//! both engines are in compose.rs.

mod compose_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use compose_support::{Down, one_at_a_time, plugin_example, prometheus_up, wait_until};
use ipclink_testkit::engine::Engine::Docker;
use ipclink_testkit::engine::{Shared, hold};
use ipclink_testkit::mounts::mounts_containing;
use ipclink_testkit::{output_text as text, repo_root};

/// With ipclink installed and no plugin running, Docker is not held up: no spec file
/// names a socket nobody serves (install-docker removes a stale one), so volumes of
/// other drivers are made and listed as without ipclink, and an ipclink volume is refused
/// by dockerd at once as an unknown driver instead of after 45 s of retries on a dead
/// socket ("dial unix …").
#[test]
fn with_no_plugin_running_docker_is_not_held_up_and_an_ipclink_volume_is_refused() {
    let _one = one_at_a_time();
    let e = Docker;
    e.prepare();
    let _plugin_host = hold(Shared::Plugin);
    // The state an earlier installer left, or a plugin killed with -9: a spec whose
    // socket nobody serves. install-docker removes it; the restart clears what dockerd
    // remembers of a plugin it used before.
    let _ = std::fs::remove_file(e.plugin_socket());
    std::fs::create_dir_all("/etc/docker/plugins").expect("plugins dir");
    std::fs::write(
        ipclink_testkit::engine::DOCKER_SPEC,
        format!("unix://{}\n", e.plugin_socket()),
    )
    .expect("stale spec");
    e.restart(false);
    assert!(
        !Path::new(ipclink_testkit::engine::DOCKER_SPEC).exists(),
        "install-docker leaves no spec naming a dead socket"
    );
    let local = e.cli(&["volume", "create", "ipclink-test-local"]);
    assert!(local.status.success(), "{}", text(&local));
    assert!(
        e.ok(&["volume", "ls", "-q"])
            .lines()
            .any(|v| v == "ipclink-test-local")
    );
    e.ok(&["volume", "rm", "ipclink-test-local"]);
    let out = e.cli(&["volume", "create", "--driver", "ipclink", "ipclink-test-x"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(r#"plugin "ipclink" not found"#),
        "refused as an unknown driver, not after retries on a dead socket: {}",
        text(&out)
    );
}

/// A sidecar that asks an engine which does not run it (podman's sidecar given Docker's
/// socket, or the reverse) is not ready, and says which socket to mount, instead of
/// logging a 404 every 5 s while reporting healthy.
#[test]
fn a_sidecar_asking_an_engine_that_does_not_run_it_says_so() {
    let _one = one_at_a_time();
    let e = Docker;
    let images = e.prepare();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("link.yaml");
    std::fs::write(
        &file,
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: { name: l, namespace: compose }\nspec:\n  channels: [{ name: events, kind: fifo }]\n",
    )
    .expect("link file");
    let port = ipclink_testkit::free_port();
    // As in a container: the link's volume (a tmpfs) at its path, in a mount namespace
    // of its own.
    let script = r#"mkdir -p "$3/compose/l" && mount -t tmpfs tmpfs "$3/compose/l" &&
        exec "$1" up "$2" --root "$3" --storage dir --container ipclink-no-such-container \
          "--engine=$4" "--listen=$5""#;
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(ipclink_testkit::static_binary(&images, "ipclink-sidecar"))
        .arg(&file)
        .arg(dir.path().join("root"))
        .arg(format!("unix://{}", e.socket()))
        .arg(format!("127.0.0.1:{port}"));
    let mut p = ipclink_testkit::process::Process::spawn("sidecar", cmd, &dir.path().join("log"));
    let mut said = String::new();
    p.wait_until(
        "/readyz to name the engine",
        Duration::from_secs(30),
        || {
            let Some((code, body)) = ipclink_testkit::http::try_get(port, "/readyz") else {
                return false;
            };
            said = body;
            code == 503 && said.contains("does not know container")
        },
    );
    assert!(
        said.contains(&format!("the engine at unix://{}", e.socket()))
            && said.contains(r#"\"ipclink-no-such-container\""#)
            && said.contains("ENGINE_SOCKET")
            && said.contains("--container"),
        "{said}"
    );
}

/// The plugin packaged as a Docker managed plugin (`docker plugin create` from
/// build-images' directory, `docker plugin enable`) serves the plugin example: its
/// volumes are tmpfs mounts propagated to the host, its metrics are on the host network,
/// it sees the members' processes (pidhost), and `down -v` leaves no mount.
#[test]
fn plugin_example_on_docker_managed_plugin() {
    let _one = one_at_a_time();
    let e = Docker;
    let images = e.prepare();
    let _plugin_host = hold(Shared::Plugin);
    let plugin_dir = images.join("docker/plugin");
    std::fs::create_dir_all("/etc/ipclink/links").expect("link dir");
    let _ = std::fs::remove_file(e.plugin_socket());
    struct Managed;
    impl Drop for Managed {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!(
                    "--- dockerd log ---\n{}",
                    ipclink_testkit::log_tail(Path::new("/var/log/ipclink/dockerd.log"), 60)
                );
            }
            let _ = Docker.cli(&["plugin", "rm", "-f", "ipclink"]);
            Docker.restart(false);
        }
    }
    let managed = Managed;
    e.ok(&[
        "plugin",
        "create",
        "ipclink",
        plugin_dir.to_str().expect("utf-8"),
    ]);
    e.ok(&["plugin", "enable", "ipclink"]);
    // dockerd keeps the first driver it found under a name until it restarts.
    e.restart(false);
    let id = e.ok(&["plugin", "inspect", "--format", "{{.Id}}", "ipclink"]);
    let root = PathBuf::from(format!("/var/lib/docker/plugins/{id}/propagated-mount"));
    let dir = repo_root().join("examples/compose/plugin");
    let project = "ipclink-e2e-managed";
    let prom_port = e.port(19092);
    {
        let (down, consumer, producer) =
            plugin_example(e, &dir, project, &root, "20000", &prom_port);
        e.ok(&["unpause", &consumer]);
        e.exited_ok(&consumer, Duration::from_secs(120));
        e.exited_ok(&producer, Duration::from_secs(10));
        assert!(e.logs(&consumer).contains("consume: done"));
        assert_eq!(prometheus_up(&prom_port), 1.0);
        let out = down.clean();
        assert!(out.status.success(), "{}", text(&out));
    }
    let volumes = root.join("docker");
    assert!(
        mounts_containing(&volumes.display().to_string()).is_empty(),
        "no tmpfs is left under {}",
        volumes.display()
    );
    drop(managed);
}

/// Compose's built-in alternative, `ipc: service:producer` (examples/compose/ipc-service):
/// the same frames pass, but only because the producer made the objects itself (mode
/// 0600, its own uid, sizes of its choosing) and the consumer polled until they were
/// there; nothing declares, limits or exports them, and they live and die with the
/// producer's IPC namespace: a restarted producer cuts the consumer off.
#[test]
fn ipc_service_comparison_on_docker() {
    let _one = one_at_a_time();
    let e = Docker;
    e.prepare();
    let dir = repo_root().join("examples/compose/ipc-service");
    let project = "ipclink-e2e-ipc";
    let down = Down {
        engine: e,
        dir: &dir,
        project,
    };
    down.clean();
    let env = [("DEMO_FRAMES", "0"), ("DEMO_INTERVAL_US", "200")];
    let out = e.compose(&dir, project, &env, &["up", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    let consumer = e.container(project, "consumer");
    let producer = e.container(project, "producer");
    wait_until("1000 frames", Duration::from_secs(60), || {
        e.logs(&consumer)
            .contains("consume: 1000 frames")
            .then_some(())
    });
    // The objects are in the producer's /dev/shm, which the engine keeps for its IPC
    // namespace, as the producer made them.
    let id = e.ok(&["inspect", "--format", "{{.Id}}", &producer]);
    let shm = PathBuf::from(format!("/var/lib/docker/containers/{id}/mounts/shm"));
    for (name, size) in [
        ("frames", Some(65536)),
        ("slots", None),
        ("frame-ready", None),
    ] {
        let meta = std::fs::metadata(shm.join(name))
            .unwrap_or_else(|err| panic!("{name} in {}: {err}", shm.display()));
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o600, 1000), "{name}");
        if let Some(size) = size {
            assert_eq!(meta.size(), size, "{name}");
        }
    }

    // Restarted, the producer starts over and makes its objects again; the consumer,
    // mid-protocol, gets no frame any more.
    let out = e.compose(&dir, project, &env, &["restart", "producer"]);
    assert!(out.status.success(), "{}", text(&out));
    let last_line = || e.logs(&consumer).lines().last().unwrap_or("").to_owned();
    let stalled = last_line();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        last_line(),
        stalled,
        "the consumer gets no frame after the restart"
    );
    let plog = e.logs(&producer);
    assert_eq!(
        plog.matches("8192-byte slots").count(),
        2,
        "the producer started again: {plog}"
    );
    assert!(
        !plog
            .rsplit("8192-byte slots")
            .next()
            .unwrap_or("")
            .contains("produce: 1000 frames"),
        "the restarted producer has nobody to produce for: {plog}"
    );
    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));
}
