//! The Compose examples (`examples/compose/*`) on both real engines: podman's Docker API
//! driven by Debian's docker-compose 1.29, and Docker Engine (Debian's docker.io) driven
//! by Compose v2, with our images and Debian's Prometheus. The demo producer and
//! consumer pass every frame through shm + semaphores, a FIFO and a path socket;
//! `/metrics` shows the FIFO depth while the consumer is paused and the semaphores as
//! declared; Prometheus scrapes the target `up`; the sidecar names the services it found
//! and a service that cannot use a channel. The volume plugin survives `kill -9` while
//! its volume is in use and engine restarts (Docker's with and without live-restore);
//! on Docker it also runs as a managed plugin.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ipclink_testkit::engine::Engine::{self, Docker, Podman};
use ipclink_testkit::http::{get_ok, metric};
use ipclink_testkit::mounts::mounts_containing;
use ipclink_testkit::{output_text as text, repo_root, run_script, static_binary};

/// The tests share the engines (and some restart them): one at a time.
static ENGINE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ENGINE_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn wait_until<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    ipclink_testkit::wait_until(what, limit, Duration::from_millis(250), f)
}

/// The `up` value Prometheus has for job ipclink, once it has one.
fn prometheus_up(port: &str) -> f64 {
    let port: u16 = port.parse().unwrap_or_default();
    wait_until(
        "Prometheus to scrape the target",
        Duration::from_secs(60),
        || {
            let body =
                get_ok(port, "/api/v1/query?query=up%7Bjob%3D%22ipclink%22%7D").unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
        },
    )
}

struct Down<'a> {
    engine: Engine,
    dir: &'a Path,
    project: &'a str,
}

impl Down<'_> {
    /// Removes every container, network and volume of the project, paused ones too.
    fn clean(&self) -> Output {
        let e = self.engine;
        let all = e.cli(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
        let prefix = match e {
            Podman => format!("{}_", self.project),
            Docker => format!("{}-", self.project),
        };
        for line in String::from_utf8_lossy(&all.stdout).lines() {
            let Some((name, state)) = line.split_once(' ') else {
                continue;
            };
            if !name.starts_with(&prefix) {
                continue;
            }
            if state == "paused" {
                e.cli(&["unpause", name]);
            }
            match e {
                Podman => e.cli(&["rm", "-f", "-t", "0", name]),
                Docker => e.cli(&["rm", "-f", name]),
            };
        }
        e.compose(
            self.dir,
            self.project,
            &[],
            &["down", "-v", "--timeout", "2"],
        )
    }
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let out = self.clean();
        if std::thread::panicking() {
            eprintln!("--- compose down ---\n{}", text(&out));
        }
    }
}

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
    let intruder = std::env::temp_dir().join("ipclink-e2e-intruder.yml");
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
    let _ = std::fs::remove_file(&intruder);
    // `down -v` removes the tmpfs volume with the link in it.
    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));
    let volumes = e.ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(!volumes.contains(project), "volumes left: {volumes}");
}

struct PluginProcess {
    child: Option<Child>,
    socket: &'static str,
    bin: PathBuf,
    root: PathBuf,
    log: PathBuf,
}

impl PluginProcess {
    fn start(socket: &'static str, bin: &Path, root: &Path, log: &Path) -> PluginProcess {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(bin)
            .args([
                "volume-plugin",
                "--socket",
                socket,
                "--listen",
                "127.0.0.1:9465",
                "--root",
            ])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("log"),
            )
            .spawn()
            .expect("start the volume plugin");
        wait_until("the plugin socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(socket).ok()
        });
        PluginProcess {
            child: Some(child),
            socket,
            bin: bin.to_owned(),
            root: root.to_owned(),
            log: log.to_owned(),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill9();
        *self = PluginProcess::start(
            self.socket,
            &self.bin.clone(),
            &self.root.clone(),
            &self.log.clone(),
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Callers that have volume `name` mounted, as the plugin keeps them on disk.
    fn mounts(&self, name: &str) -> Vec<String> {
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.root.join(".volumes.json")).unwrap_or_default(),
        )
        .unwrap_or_default();
        state["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["name"] == name)
            .flat_map(|v| v["mounts"].as_array().cloned().unwrap_or_default())
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect()
    }

    /// The volumes the plugin lists.
    fn list(&self) -> serde_json::Value {
        let out = Command::new("curl")
            .args([
                "-fsS",
                "--unix-socket",
                self.socket,
                "-XPOST",
                "http://p/VolumeDriver.List",
            ])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- plugin log ---\n{}", self.log());
        }
    }
}

/// A container's main process as the host sees it: pid, cgroup and descriptors.
fn member_processes(e: Engine, container: &str) -> String {
    let pid = e.ok(&["inspect", "--format", "{{.State.Pid}}", container]);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|e| e.to_string());
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    format!(
        "{container} pid {pid} fds [{fds}] cgroup {}",
        cgroup.lines().last().unwrap_or("")
    )
}

/// The plugin example, up: the link is where the plugin keeps it, on one tmpfs; frames
/// flow; with the consumer paused the FIFO holds data and the ring is full, as the
/// plugin's `/metrics` shows, and the holders are the member containers by id. Returns
/// (consumer, producer).
fn plugin_example_up(
    e: Engine,
    dir: &Path,
    project: &str,
    root: &Path,
    env: &[(&str, &str)],
) -> (String, String) {
    let out = e.compose(dir, project, env, &["up", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    let consumer = e.container(project, "consumer");
    let producer = e.container(project, "producer");
    let volume_dir = root.join("docker").join(format!("{project}-frames"));
    assert!(
        volume_dir.join("frames").is_file(),
        "the link is at {}",
        volume_dir.display()
    );
    // One tmpfs, seen once per peer of the mount it is under (a managed plugin's
    // propagated mount shows it twice on the host).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let at: std::collections::BTreeSet<(&str, &str)> = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == volume_dir.to_str())
        .filter_map(|l| {
            let device = l.split(' ').nth(2)?;
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?;
            Some((device, fstype))
        })
        .collect();
    assert_eq!(at.len(), 1, "one mount at {}: {at:?}", volume_dir.display());
    assert!(at.iter().all(|(_, t)| *t == "tmpfs"), "{at:?}");
    wait_until("1000 frames", Duration::from_secs(60), || {
        e.logs(&consumer)
            .contains("consume: 1000 frames")
            .then_some(())
    });
    e.ok(&["pause", &consumer]);
    let m = wait_until("the ring to fill", Duration::from_secs(20), || {
        let m = get_ok(9465, "/metrics").unwrap_or_default();
        (metric(&m, "ipclink_semaphore_value", &[("channel", "slots")]) == Some(0.0)).then_some(m)
    });
    let queued = metric(&m, "ipclink_channel_queue_bytes", &[("channel", "events")]);
    assert!(queued.is_some_and(|q| q >= 8.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "ipclink_link_limit_bytes",
            &[("link", &format!("{project}-frames"))]
        ),
        Some(16.0 * 1024.0 * 1024.0),
        "the plugin's tmpfs has the volume's size"
    );
    // The holders are the containers that mounted the volume, by id.
    for (role, container) in [("reader", &consumer), ("writer", &producer)] {
        assert_eq!(
            metric(
                &m,
                "ipclink_channel_holder_info",
                &[
                    ("channel", "events"),
                    ("role", role),
                    ("container", &e.short_id(container))
                ]
            ),
            Some(1.0),
            "{role} {container}\n{m}"
        );
    }
    (consumer, producer)
}

/// The sidecar binary and a fresh plugin root, with the plugin serving it.
fn start_plugin(e: Engine, images: &Path, prefix: &str) -> (tempfile::TempDir, PluginProcess) {
    let bin = static_binary(images, "ipclink-sidecar");
    let work = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    let plugin = PluginProcess::start(
        e.plugin_socket(),
        &bin,
        &work.path().join("volumes"),
        &work.path().join("plugin.log"),
    );
    (work, plugin)
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
    let (work, mut plugin) = start_plugin(e, &images, "ipclink-compose-plugin-");
    let root = work.path().join("volumes");
    let dir = repo_root().join("examples/compose/plugin");
    let project = "ipclink-e2e-plugin";
    let volume = format!("{project}_frames");
    let prom_port = e.port(19091);
    let env = [
        ("DEMO_FRAMES", "40000"),
        ("DEMO_INTERVAL_US", "200"),
        ("PROMETHEUS_PORT", prom_port.as_str()),
    ];
    let down = Down {
        engine: e,
        dir: &dir,
        project,
    };
    down.clean();
    let (consumer, producer) = plugin_example_up(e, &dir, project, &root, &env);

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

/// The plugin packaged as a Docker managed plugin (`docker plugin create` from
/// build-images' directory, `docker plugin enable`) serves the plugin example: its
/// volumes are tmpfs mounts propagated to the host, its metrics are on the host network,
/// it sees the members' processes (pidhost), and `down -v` leaves no mount.
#[test]
fn plugin_example_on_docker_managed_plugin() {
    let _one = one_at_a_time();
    let e = Docker;
    let images = e.prepare();
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
    let env = [
        ("DEMO_FRAMES", "20000"),
        ("DEMO_INTERVAL_US", "200"),
        ("PROMETHEUS_PORT", prom_port.as_str()),
    ];
    {
        let down = Down {
            engine: e,
            dir: &dir,
            project,
        };
        down.clean();
        let (consumer, producer) = plugin_example_up(e, &dir, project, &root, &env);
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
    let block = ipclink_testkit::readme_block(block);
    let dir = repo_root().join("examples/compose/sidecar");
    let down = Down {
        engine: e,
        dir: &dir,
        project: "sidecar",
    };
    down.clean();
    let (mut lines, stderr) = run_script("README Compose section", &block, &[]);
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
fn workloads_example_on_podman_needs_allow_create() {
    workloads_example(Podman);
}

#[test]
fn workloads_example_on_docker_needs_allow_create() {
    workloads_example(Docker);
}

/// Programs we did not write that make their own IPC objects (Python's
/// multiprocessing.shared_memory, iceoryx2) share a `driver: ipclink` volume between
/// containers only when it lets members create (`allowCreate=true`).
fn workloads_example(e: Engine) {
    let _one = one_at_a_time();
    let images = e.prepare();
    let (work, _plugin) = start_plugin(e, &images, "ipclink-compose-workloads-");
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
    for c in ["py-producer", "py-consumer", "ice-ping", "ice-pong"] {
        e.exited_ok(&e.container(project, c), Duration::from_secs(120));
    }
    for (c, said) in [
        ("py-producer", "producer ok 200"),
        ("py-consumer", "consumer ok 200 frames checked"),
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

    // Restarted, the producer gets a new IPC namespace with an empty /dev/shm and makes
    // new objects there; the consumer is left in the old one: no frame passes any more.
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
