//! The Compose examples (`examples/compose/*`) on both real engines: podman's Docker API
//! driven by Debian's docker-compose 1.29, and Docker Engine (Debian's docker.io) driven
//! by Compose v2, with our images and Debian's Prometheus. The demo producer and
//! consumer pass every frame through shm + semaphores, a FIFO and a path socket;
//! `/metrics` shows the FIFO depth while the consumer is paused and the semaphores as
//! declared; Prometheus scrapes the target `up`; the sidecar names the services it found
//! and a service that cannot use a channel. The volume plugin survives `kill -9` while
//! its volume is in use and engine restarts (Docker's with and without live-restore).
//! The tests on Docker only (the managed plugin, `ipc: service:`) are in
//! compose_docker.rs.

mod compose_support;

use std::path::Path;
use std::time::Duration;

use compose_support::{
    Down, PluginProcess, member_processes, one_at_a_time, plugin_example, prometheus_up,
    start_plugin, wait_until,
};
use ipclink_testkit::engine::Engine::{self, Docker, Podman};
use ipclink_testkit::engine::{Shared, hold};
use ipclink_testkit::http::{get_ok, metric};
use ipclink_testkit::mounts::mounts_containing;
use ipclink_testkit::{output_text as text, repo_root, run_script, static_binary};

#[test]
fn sidecar_example_on_podman() {
    sidecar_example(Podman);
}

#[test]
fn sidecar_example_on_docker() {
    sidecar_example(Docker);
}

fn sidecar_example(e: Engine) {
    let _one = one_at_a_time();
    let images = e.prepare();
    let dir = repo_root().join("examples/compose/sidecar");
    let project = "ipclink-e2e-sidecar";
    let (metrics_port, prom_port) = (e.port(19464), e.port(19090));
    let env = [
        ("DEMO_FRAMES", "30000"),
        ("DEMO_INTERVAL_US", "200"),
        ("METRICS_PORT", metrics_port.as_str()),
        ("PROMETHEUS_PORT", prom_port.as_str()),
        ("IPCLINK_LOG", "info,ipclink_core::probe=debug"),
    ];
    let down = Down {
        engine: e,
        dir: &dir,
        project,
    };
    down.clean();
    let out = e.compose(&dir, project, &env, &["up", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    let port: u16 = metrics_port.parse().unwrap_or_default();
    let consumer = e.container(project, "consumer");
    let producer = e.container(project, "producer");
    let sidecar = e.container(project, "ipclink");

    // Healthy means every object exists, so the members could start.
    let health = e.ok(&["inspect", "--format", "{{.State.Health.Status}}", &sidecar]);
    assert_eq!(health, "healthy");
    wait_until("1000 frames", Duration::from_secs(60), || {
        e.logs(&consumer)
            .contains("consume: 1000 frames")
            .then_some(())
    });

    // Discovery names both services, their user, and no problem.
    let report: serde_json::Value = wait_until(
        &format!("discovery; sidecar log:\n{}", e.logs(&sidecar)),
        Duration::from_secs(30),
        || {
            let v: serde_json::Value =
                serde_json::from_str(&get_ok(port, "/v1/links").unwrap_or_default()).ok()?;
            (v["members"].as_array()?.len() == 2).then_some(v)
        },
    );
    for (i, service) in ["consumer", "producer"].iter().enumerate() {
        let m = &report["members"][i];
        assert_eq!(m["service"], *service, "{report}");
        assert_eq!(m["user"], "1000:1000", "{report}");
        assert_eq!(m["checked"], true, "{report}");
        assert!(m.get("problems").is_none(), "{report}");
    }

    // Holders are known once discovery has seen the members run (every 5 s).
    wait_until("the holders", Duration::from_secs(30), || {
        let m = get_ok(port, "/metrics").unwrap_or_default();
        [&consumer, &producer]
            .iter()
            .all(|c| {
                metric(
                    &m,
                    "ipclink_channel_holder_info",
                    &[("channel", "events"), ("container", c.as_str())],
                ) == Some(1.0)
            })
            .then_some(())
    });
    // Paused consumer: the FIFO holds what the producer wrote since, the ring is full.
    e.ok(&["pause", &consumer]);
    let text_paused = wait_until(
        "the producer to fill the ring",
        Duration::from_secs(20),
        || {
            let m = get_ok(port, "/metrics").unwrap_or_default();
            (metric(&m, "ipclink_semaphore_value", &[("channel", "slots")]) == Some(0.0))
                .then_some(m)
        },
    );
    let queued = metric(
        &text_paused,
        "ipclink_channel_queue_bytes",
        &[("channel", "events")],
    )
    .expect("events depth");
    let ready = metric(
        &text_paused,
        "ipclink_semaphore_value",
        &[("channel", "frame-ready")],
    )
    .expect("frame-ready value");
    assert!(
        queued >= 8.0 && queued % 8.0 == 0.0,
        "FIFO depth {queued}:\n{text_paused}\n/v1/links: {}\nsidecar log:\n{}\nmembers:\n{}",
        get_ok(port, "/v1/links").unwrap_or_default(),
        e.logs(&sidecar),
        [&producer, &consumer]
            .map(|c| member_processes(e, c))
            .join("\n")
    );
    assert!((7.0..=8.0).contains(&ready), "frame-ready {ready}");
    assert_eq!(
        metric(
            &text_paused,
            "ipclink_shm_size_bytes",
            &[("channel", "frames")]
        ),
        Some(65536.0),
        "{text_paused}"
    );
    assert!(
        metric(
            &text_paused,
            "ipclink_member_info",
            &[("service", "producer")]
        ) == Some(1.0)
    );
    // Who holds each channel, by container name (the sidecar has the host's pid
    // namespace); the socket, bound in the consumer's network namespace, is seen there.
    for (channel, role, container) in [
        ("events", "reader", &consumer),
        ("events", "writer", &producer),
        ("control", "reader", &consumer),
        ("control", "writer", &producer),
        ("frames", "mapper", &consumer),
        ("frames", "mapper", &producer),
    ] {
        assert_eq!(
            metric(
                &text_paused,
                "ipclink_channel_holder_info",
                &[
                    ("channel", channel),
                    ("role", role),
                    ("container", container)
                ]
            ),
            Some(1.0),
            "{channel} {role} {container}\n{text_paused}"
        );
    }
    assert_eq!(
        metric(
            &text_paused,
            "ipclink_channel_observed",
            &[("channel", "control")]
        ),
        Some(1.0),
        "{text_paused}"
    );
    assert!(
        !text_paused.contains(&format!("container=\"{sidecar}\"")),
        "the sidecar's own descriptors are no member's\n{text_paused}"
    );
    assert!(
        !text_paused.contains("ipclink_member_undeclared{"),
        "the example's members hold every channel as declared\n{text_paused}"
    );
    // `status --endpoint` shows the same, by container.
    let out = std::process::Command::new(static_binary(&images, "ipclink-sidecar"))
        .args(["status", "--endpoint", &format!("127.0.0.1:{port}")])
        .output()
        .expect("status");
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    let events = table
        .lines()
        .find(|l| l.contains("   events   "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        events.contains(&format!("{consumer}(r)")) && events.contains(&format!("{producer}(w)")),
        "{table}"
    );
    e.ok(&["unpause", &consumer]);

    // A service that mounts the volume but is not a member, as a user that cannot read.
    // Its own file: the other engine's run of this test may be writing its own now.
    let scratch = tempfile::tempdir().expect("temp dir");
    let intruder = scratch.path().join("intruder.yml");
    std::fs::write(
        &intruder,
        "services:\n  auditor:\n    image: localhost/ipclink/demo:0.1.0\n    entrypoint: [\"/ipclink-demo\"]\n    command: [\"consume\"]\n    user: \"2000:2000\"\n    volumes: [\"frames:/dev/shm\"]\n",
    )
    .expect("write override");
    let files = [
        "-f",
        "docker-compose.yml",
        "-f",
        intruder.to_str().unwrap_or_default(),
    ];
    let mut args: Vec<&str> = files.to_vec();
    args.extend(["up", "-d", "--no-deps", "auditor"]);
    let out = e.compose(&dir, project, &env, &args);
    assert!(out.status.success(), "{}", text(&out));
    let auditor = e.container(project, "auditor");
    // The auditor fails at once (EACCES); stopped members are reported too.
    let log = wait_until(
        "the auditor to be reported",
        Duration::from_secs(30),
        || {
            let l = e.logs(&sidecar);
            l.contains("service auditor").then_some(l)
        },
    );
    assert!(
        log.contains(&format!("service auditor (container {auditor}, user 2000:2000) cannot read channel frames (mode 0660, owner 1000:1000)"))
            || log.contains("mounts link compose/frames but is not one of its members"),
        "{log}"
    );
    // The same in /metrics and under `members` in /v1/links.
    let start = std::time::Instant::now();
    loop {
        let m = get_ok(port, "/metrics").unwrap_or_default();
        let links = get_ok(port, "/v1/links").unwrap_or_default();
        // As a user in none of the link's groups, it can use none of its semaphores.
        let denied = metric(
            &m,
            "ipclink_member_denied",
            &[("service", "auditor"), ("channel", "slots")],
        );
        if denied == Some(1.0)
            && links
                .replace("\": ", "\":")
                .contains("\"service\":\"auditor\"")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the auditor's denied channel is not in the metrics and /v1/links:\n{}\n{links}",
            m.lines()
                .filter(|l| l.starts_with("ipclink_member_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(
        e.exit_code(&auditor, Duration::from_secs(30)),
        0,
        "the auditor must fail"
    );
    assert!(
        e.logs(&auditor).contains("Permission denied"),
        "{}",
        e.logs(&auditor)
    );

    // Every frame arrives, through all three channels.
    e.exited_ok(&consumer, Duration::from_secs(120));
    e.exited_ok(&producer, Duration::from_secs(10));
    let clog = e.logs(&consumer);
    assert!(
        clog.contains("fifo, socket") && clog.contains("consume: 30000 frames"),
        "{clog}"
    );
    assert!(clog.contains("consume: done"), "{clog}");
    // Both done: the semaphores are back to their declared values.
    let m = get_ok(port, "/metrics").unwrap_or_default();
    assert_eq!(
        metric(&m, "ipclink_semaphore_value", &[("channel", "slots")]),
        Some(8.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "ipclink_semaphore_value", &[("channel", "frame-ready")]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "ipclink_channel_queue_bytes", &[("channel", "events")]),
        Some(0.0),
        "{m}\n{}",
        e.logs(&sidecar)
    );

    assert_eq!(prometheus_up(&prom_port), 1.0);
    // `down -v` removes the tmpfs volume with the link in it.
    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));
    let volumes = e.ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(!volumes.contains(project), "volumes left: {volumes}");
}

#[test]
fn plugin_example_on_podman_with_faults() {
    plugin_example_with_faults(Podman);
}

#[test]
fn plugin_example_on_docker_with_faults() {
    plugin_example_with_faults(Docker);
}

fn plugin_example_with_faults(e: Engine) {
    let _one = one_at_a_time();
    let images = e.prepare();
    let host = hold(Shared::Plugin);
    let (work, mut plugin) = start_plugin(e, &images, "ipclink-compose-plugin-", &host);
    let root = work.path().join("volumes");
    let dir = repo_root().join("examples/compose/plugin");
    let project = "ipclink-e2e-plugin";
    let volume = format!("{project}_frames");
    let prom_port = e.port(19091);
    let (down, consumer, producer) = plugin_example(e, &dir, project, &root, "40000", &prom_port);

    // kill -9 while both containers have the volume mounted: they keep going.
    plugin.kill9();
    e.ok(&["unpause", &consumer]);
    std::thread::sleep(Duration::from_secs(1));
    plugin.restart();
    e.exited_ok(&consumer, Duration::from_secs(120));
    e.exited_ok(&producer, Duration::from_secs(10));
    assert!(e.logs(&consumer).contains("consume: done"));
    let m = get_ok(9465, "/metrics").unwrap_or_default();
    assert_eq!(
        metric(&m, "ipclink_semaphore_value", &[("channel", "slots")]),
        Some(8.0),
        "{m}"
    );
    assert_eq!(prometheus_up(&prom_port), 1.0);

    // The engine restarted while nothing runs: the volume is still its, and a second
    // run works.
    e.restart(false);
    assert_eq!(
        e.ok(&["volume", "inspect", "--format", "{{.Driver}}", &volume]),
        "ipclink"
    );
    let short = [("DEMO_FRAMES", "2000"), ("DEMO_INTERVAL_US", "100")];
    let out = e.compose(&dir, project, &short, &["up", "-d", "producer", "consumer"]);
    assert!(out.status.success(), "{}", text(&out));
    e.exited_ok(&consumer, Duration::from_secs(60));

    if e == Docker {
        docker_restarts_with_members(&dir, project, &plugin, &volume);
    }

    // `down -v` unmounts and removes through the restarted plugin.
    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));
    let list = plugin.list();
    assert_eq!(
        list["Volumes"],
        serde_json::json!([]),
        "volumes left: {list}"
    );
    assert!(
        mounts_containing(&root.display().to_string()).is_empty(),
        "no tmpfs is left"
    );
    drop(plugin);
}

/// dockerd restarted while the members run. Without live-restore it stops them, and
/// unmounts: the plugin's refcount goes back to none, and the members run again. With
/// live-restore they keep running through the restart and every frame arrives; once
/// they exit, the restarted dockerd unmounts what it restored.
fn docker_restarts_with_members(dir: &Path, project: &str, plugin: &PluginProcess, volume: &str) {
    let e = Docker;
    let consumer = e.container(project, "consumer");
    let forever = [("DEMO_FRAMES", "0"), ("DEMO_INTERVAL_US", "200")];
    let out = e.compose(
        dir,
        project,
        &forever,
        &["up", "-d", "producer", "consumer"],
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_until("both mounted", Duration::from_secs(30), || {
        (plugin.mounts(volume).len() == 2).then_some(())
    });
    e.restart(false);
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.Running}}", &consumer]),
        "false",
        "without live-restore dockerd stops its containers"
    );
    assert_eq!(
        plugin.mounts(volume),
        Vec::<String>::new(),
        "every mount was unmounted\n{}",
        plugin.log()
    );

    // The stopped run left its frames in the link (nothing a member wrote is lost):
    // start the next one on a fresh volume.
    let out = e.compose(dir, project, &[], &["down", "-v", "--timeout", "2"]);
    assert!(out.status.success(), "{}", text(&out));

    // live-restore: the members outlive the daemon, and nothing they pass is lost.
    e.restart(true);
    let frames = [("DEMO_FRAMES", "60000"), ("DEMO_INTERVAL_US", "200")];
    let out = e.compose(dir, project, &frames, &["up", "-d", "producer", "consumer"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("1000 frames", Duration::from_secs(60), || {
        e.logs(&consumer)
            .contains("consume: 1000 frames")
            .then_some(())
    });
    let before = plugin.mounts(volume);
    assert_eq!(before.len(), 2, "{}", plugin.log());
    e.restart(true);
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.Running}}", &consumer]),
        "true",
        "with live-restore the member runs on"
    );
    assert_eq!(
        plugin.mounts(volume),
        before,
        "the restored mounts are the same callers\n{}",
        plugin.log()
    );
    e.exited_ok(&consumer, Duration::from_secs(120));
    let clog = e.logs(&consumer);
    assert!(
        clog.contains("consume: 60000 frames") && clog.contains("consume: done"),
        "{clog}"
    );
    wait_until(
        "the restored mounts to be unmounted",
        Duration::from_secs(30),
        || plugin.mounts(volume).is_empty().then_some(()),
    );
    // Back to the default daemon for the tests that follow.
    e.restart(false);
}

#[test]
fn readme_compose_section_runs_as_written_on_podman() {
    readme_compose_section(Podman, "compose");
}

#[test]
fn readme_compose_section_runs_as_written_on_docker() {
    readme_compose_section(Docker, "compose-docker");
}

fn readme_compose_section(e: Engine, block: &str) {
    let _one = one_at_a_time();
    e.prepare();
    let _ports = hold(Shared::DocsPorts);
    let block = ipclink_testkit::doc_block("docs/compose.md", block);
    let dir = repo_root().join("examples/compose/sidecar");
    let down = Down {
        engine: e,
        dir: &dir,
        project: "sidecar",
    };
    down.clean();
    let (mut lines, stderr) = run_script("docs/compose.md", &block, &[]);
    let t = format!("{lines}{stderr}");
    lines.retain(|c| c != '\r');
    assert!(
        lines.lines().any(|l| l.trim() == "0"),
        "the engine's wait printed the exit code 0:\n{t}"
    );
    assert!(
        lines.contains("ipclink_semaphore_value{namespace=\"compose\",link=\"frames\",channel=\"slots\",kind=\"semaphore\",origin=\"declared\"} 8"),
        "{t}"
    );
    assert!(lines.contains("\"status\":\"success\""), "{t}");
}

#[test]
fn node_agent_example_on_docker_serves_a_read_only_client() {
    let e = Docker;
    let _one = one_at_a_time();
    let images = e.prepare();
    let host = hold(Shared::Plugin);
    let (work, _plugin) = start_plugin(e, &images, "ipclink-compose-agent-", &host);
    let dir = repo_root().join("examples/compose/node-agent");
    let project = "ipclink-e2e-agent";
    let down = Down {
        engine: e,
        dir: &dir,
        project,
    };
    down.clean();
    let out = e.compose(&dir, project, &[], &["up", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    let client = e.container(project, "client");
    e.exited_ok(&client, Duration::from_secs(120));
    let log = e.logs(&client);
    for op in ["create", "unlink", "rename", "bind"] {
        assert!(
            log.contains(&format!("refused {op}: EROFS")),
            "{op} not refused with EROFS:\n{log}"
        );
    }
    assert!(!log.contains("ALLOWED"), "{log}");
    assert!(
        log.contains("answered 5/") && log.contains("agent agent on compose answers unknown"),
        "{log}"
    );
    // The agent's socket is where it bound it, and nothing else is in the channel.
    let api = work
        .path()
        .join("volumes/docker")
        .join(format!("{project}-agent"))
        .join("api");
    let names: Vec<String> = std::fs::read_dir(&api)
        .expect("the api channel")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["agent.sock"], "{}", log);
    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn workloads_example_on_podman_needs_allow_create() {
    workloads_example(Podman);
}

#[test]
fn workloads_example_on_docker_needs_allow_create() {
    workloads_example(Docker);
}

/// Programs we did not write that make their own IPC objects (Python's
/// multiprocessing.shared_memory, in a Triton-style exchange too, and iceoryx2) share a `driver: ipclink` volume between
/// containers only when it lets members create (`allowCreate=true`).
fn workloads_example(e: Engine) {
    let _one = one_at_a_time();
    let images = e.prepare();
    let host = hold(Shared::Plugin);
    let (work, _plugin) = start_plugin(e, &images, "ipclink-compose-workloads-", &host);
    let root = work.path().join("volumes");
    let dir = repo_root().join("examples/compose/workloads");
    let project = "ipclink-e2e-workloads";
    let down = Down {
        engine: e,
        dir: &dir,
        project,
    };
    down.clean();
    let out = e.compose(&dir, project, &[], &["up", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    for c in [
        "py-producer",
        "py-consumer",
        "triton-client",
        "triton-server",
        "ice-ping",
        "ice-pong",
    ] {
        e.exited_ok(&e.container(project, c), Duration::from_secs(120));
    }
    for (c, said) in [
        ("py-producer", "producer ok 200"),
        ("py-consumer", "consumer ok 200 frames checked"),
        (
            "triton-server",
            "server: read hello from the client's region",
        ),
        (
            "triton-client",
            "client: region still there after the server read it and let go",
        ),
        ("ice-ping", "ping ok 1000 rtt_p50_ns"),
        ("ice-pong", "pong ok 1000"),
    ] {
        let log = e.logs(&e.container(project, c));
        assert!(log.contains(said), "{c}: {log}");
    }
    let link = root.join("docker").join(format!("{project}-shm"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&link)
            .expect("the volume's link")
            .permissions(),
    );
    assert_eq!(mode & 0o7777, 0o1777, "a sticky root members may create in");
    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));

    // The same producer on a volume that does not let members create: EACCES.
    let closed = work.path().join("closed.yml");
    std::fs::write(
        &closed,
        "volumes:\n  shm:\n    driver: ipclink\n    driver_opts:\n      allowCreate: \"false\"\n      shm: declared:4Ki\n",
    )
    .expect("override file");
    let base = dir.join("docker-compose.yml");
    let files = [
        "-f",
        base.to_str().expect("utf-8"),
        "-f",
        closed.to_str().expect("utf-8"),
    ];
    let out = e.compose(
        &dir,
        project,
        &[],
        &[&files[..], &["up", "-d", "py-producer"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let producer = e.container(project, "py-producer");
    assert_eq!(
        e.exit_code(&producer, Duration::from_secs(60)),
        13,
        "{}",
        e.logs(&producer)
    );
    assert!(
        e.logs(&producer).contains("Permission denied"),
        "{}",
        e.logs(&producer)
    );
}
