//! Both Compose examples (`examples/compose/{sidecar,plugin}`) on a real engine: podman's
//! Docker API, driven by Debian's docker-compose, with our images and Debian's
//! Prometheus. The demo producer and consumer pass every frame through shm + semaphores,
//! a FIFO and a path socket; `/metrics` shows the FIFO depth while the consumer is
//! paused and the semaphores as declared; Prometheus scrapes the target `up`; the
//! sidecar names the services it found and a service that cannot use a channel. The
//! volume plugin survives `kill -9` while its volume is in use, and an engine restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ipclink_testkit::http::{get_ok, metric};
use ipclink_testkit::mounts::mounts_containing;
use ipclink_testkit::{compose_engine, output_text as text, repo_root, run_script, static_binary};

const ENGINE: &str = "unix:///run/podman/podman.sock";

/// The tests share one engine (and one restarts it): one at a time.
static ENGINE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ENGINE_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
const PLUGIN_SOCKET: &str = "/run/ipclink/plugin.sock";

fn compose(dir: &Path, project: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new("docker-compose")
        .current_dir(dir)
        .env("DOCKER_HOST", ENGINE)
        .envs(env.iter().copied())
        .arg("-p")
        .arg(project)
        .args(args)
        .output()
        .expect("run docker-compose")
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("run podman")
}

fn wait_until<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    ipclink_testkit::wait_until(what, limit, Duration::from_millis(250), f)
}

fn logs(container: &str) -> String {
    text(&podman(&["logs", container]))
}

/// Waits until the container has exited; its exit code.
fn exit_code(container: &str, limit: Duration) -> i64 {
    wait_until(&format!("{container} to exit"), limit, || {
        let out = podman(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            container,
        ]);
        let t = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        t.strip_prefix("exited ").and_then(|c| c.parse().ok())
    })
}

/// Waits for the container to exit and asserts it succeeded, showing its log if not.
fn exited_ok(container: &str, limit: Duration) {
    let code = exit_code(container, limit);
    assert_eq!(code, 0, "{container} exited {code}:\n{}", logs(container));
}

/// The `up` value Prometheus has for job ipclink, once it has one.
fn prometheus_up(port: u16) -> f64 {
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
    dir: &'a Path,
    project: &'a str,
}

impl Down<'_> {
    /// Removes every container, network and volume of the project, paused ones too.
    fn clean(&self) -> Output {
        let all = podman(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
        let prefix = format!("{}_", self.project);
        for line in String::from_utf8_lossy(&all.stdout).lines() {
            let Some((name, state)) = line.split_once(' ') else {
                continue;
            };
            if !name.starts_with(&prefix) {
                continue;
            }
            if state == "paused" {
                podman(&["unpause", name]);
            }
            podman(&["rm", "-f", "-t", "0", name]);
        }
        compose(
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
            eprintln!("--- docker-compose down ---\n{}", text(&out));
        }
    }
}

#[test]
fn sidecar_example_on_podman() {
    let _one = one_at_a_time();
    let images = compose_engine();
    let dir = repo_root().join("examples/compose/sidecar");
    let project = "ipclink-e2e-sidecar";
    let (metrics_port, prom_port) = ("19464", "19090");
    let env = [
        ("DEMO_FRAMES", "30000"),
        ("DEMO_INTERVAL_US", "200"),
        ("METRICS_PORT", metrics_port),
        ("PROMETHEUS_PORT", prom_port),
        ("IPCLINK_LOG", "info,ipclink_core::probe=debug"),
    ];
    let down = Down { dir: &dir, project };
    down.clean();
    let out = compose(&dir, project, &env, &["up", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    let port: u16 = metrics_port.parse().unwrap_or_default();
    let consumer = format!("{project}_consumer_1");
    let producer = format!("{project}_producer_1");
    let sidecar = format!("{project}_ipclink_1");

    // Healthy means every object exists, so the members could start.
    let health = podman(&["inspect", "--format", "{{.State.Health.Status}}", &sidecar]);
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "healthy");
    wait_until("1000 frames", Duration::from_secs(60), || {
        logs(&consumer)
            .contains("consume: 1000 frames")
            .then_some(())
    });

    // Discovery names both services, their user, and no problem.
    let report: serde_json::Value = wait_until(
        &format!("discovery; sidecar log:\n{}", logs(&sidecar)),
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

    // Paused consumer: the FIFO holds what the producer wrote since, the ring is full.
    let out = podman(&["pause", &consumer]);
    assert!(out.status.success(), "{}", text(&out));
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
        logs(&sidecar),
        [&producer, &consumer]
            .map(|c| member_processes(c))
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
        !text_paused.contains("container=\"ipclink-e2e-sidecar_ipclink_1\""),
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
    let out = podman(&["unpause", &consumer]);
    assert!(out.status.success(), "{}", text(&out));

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
    let out = compose(&dir, project, &env, &args);
    assert!(out.status.success(), "{}", text(&out));
    let auditor = format!("{project}_auditor_1");
    // The auditor fails at once (EACCES); stopped members are reported too.
    let log = wait_until(
        "the auditor to be reported",
        Duration::from_secs(30),
        || {
            let l = logs(&sidecar);
            l.contains("service auditor").then_some(l)
        },
    );
    assert!(
        log.contains("service auditor (container ipclink-e2e-sidecar_auditor_1, user 2000:2000) cannot read channel frames (mode 0660, owner 1000:1000)")
            || log.contains("mounts link compose/frames but is not one of its members"),
        "{log}"
    );
    assert_ne!(
        exit_code(&auditor, Duration::from_secs(30)),
        0,
        "the auditor must fail"
    );
    assert!(
        logs(&auditor).contains("Permission denied"),
        "{}",
        logs(&auditor)
    );

    // Every frame arrives, through all three channels.
    exited_ok(&consumer, Duration::from_secs(120));
    exited_ok(&producer, Duration::from_secs(10));
    let clog = logs(&consumer);
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
        logs(&sidecar)
    );

    assert_eq!(prometheus_up(prom_port.parse().unwrap_or_default()), 1.0);
    let _ = std::fs::remove_file(&intruder);
}

struct PluginProcess {
    child: Option<Child>,
    bin: PathBuf,
    root: PathBuf,
    log: PathBuf,
}

impl PluginProcess {
    fn start(bin: &Path, root: &Path, log: &Path) -> PluginProcess {
        let child = Command::new(bin)
            .args([
                "volume-plugin",
                "--socket",
                PLUGIN_SOCKET,
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
            std::os::unix::net::UnixStream::connect(PLUGIN_SOCKET).ok()
        });
        PluginProcess {
            child: Some(child),
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
        *self = PluginProcess::start(&self.bin.clone(), &self.root.clone(), &self.log.clone());
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- plugin log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A container's main process as the host sees it: pid, cgroup and descriptors.
fn member_processes(container: &str) -> String {
    let out = podman(&["inspect", "--format", "{{.State.Pid}}", container]);
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
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

fn restart_engine() {
    let _ = Command::new("pkill")
        .args(["-f", "podman system service"])
        .status();
    wait_until("the engine to stop", Duration::from_secs(20), || {
        let up = Command::new("pgrep")
            .args(["-f", "podman system service"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        (!up).then_some(())
    });
    let out = Command::new(repo_root().join("scripts/install-compose"))
        .output()
        .expect("restart the engine");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn plugin_example_on_podman_with_faults() {
    let _one = one_at_a_time();
    let images = compose_engine();
    let bin = static_binary(&images, "ipclink-sidecar");
    let work = tempfile::Builder::new()
        .prefix("ipclink-compose-plugin-")
        .tempdir()
        .expect("temp dir");
    let root = work.path().join("volumes");
    let mut plugin = PluginProcess::start(&bin, &root, &work.path().join("plugin.log"));
    let dir = repo_root().join("examples/compose/plugin");
    let project = "ipclink-e2e-plugin";
    let prom_port = "19091";
    let env = [
        ("DEMO_FRAMES", "40000"),
        ("DEMO_INTERVAL_US", "200"),
        ("PROMETHEUS_PORT", prom_port),
    ];
    {
        let down = Down { dir: &dir, project };
        down.clean();
        let out = compose(&dir, project, &env, &["up", "-d"]);
        assert!(out.status.success(), "{}", text(&out));
        let consumer = format!("{project}_consumer_1");
        let producer = format!("{project}_producer_1");
        let volume_dir = root.join("docker").join("ipclink-e2e-plugin-frames");
        assert!(
            volume_dir.join("frames").is_file(),
            "the link is at {}",
            volume_dir.display()
        );
        assert_eq!(
            mounts_containing(&volume_dir.display().to_string()).len(),
            1,
            "one tmpfs"
        );

        wait_until("1000 frames", Duration::from_secs(60), || {
            logs(&consumer)
                .contains("consume: 1000 frames")
                .then_some(())
        });
        let out = podman(&["pause", &consumer]);
        assert!(out.status.success(), "{}", text(&out));
        let m = wait_until("the ring to fill", Duration::from_secs(20), || {
            let m = get_ok(9465, "/metrics").unwrap_or_default();
            (metric(&m, "ipclink_semaphore_value", &[("channel", "slots")]) == Some(0.0))
                .then_some(m)
        });
        let queued = metric(&m, "ipclink_channel_queue_bytes", &[("channel", "events")]);
        assert!(queued.is_some_and(|q| q >= 8.0), "{m}");
        assert_eq!(
            metric(
                &m,
                "ipclink_link_limit_bytes",
                &[("link", "ipclink-e2e-plugin-frames")]
            ),
            Some(16.0 * 1024.0 * 1024.0),
            "the plugin's tmpfs has the volume's size"
        );
        // The holders are the containers that mounted the volume (the engine's mount
        // callers), by id.
        let id = |c: &str| -> String {
            let out = podman(&["inspect", "--format", "{{.Id}}", c]);
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .chars()
                .take(12)
                .collect()
        };
        for (role, container) in [("reader", &consumer), ("writer", &producer)] {
            assert_eq!(
                metric(
                    &m,
                    "ipclink_channel_holder_info",
                    &[
                        ("channel", "events"),
                        ("role", role),
                        ("container", &id(container))
                    ]
                ),
                Some(1.0),
                "{role} {container}\n{m}"
            );
        }

        // kill -9 while both containers have the volume mounted: they keep going.
        plugin.kill9();
        let out = podman(&["unpause", &consumer]);
        assert!(out.status.success(), "{}", text(&out));
        std::thread::sleep(Duration::from_secs(1));
        plugin.restart();
        exited_ok(&consumer, Duration::from_secs(120));
        exited_ok(&producer, Duration::from_secs(10));
        assert!(logs(&consumer).contains("consume: done"));
        let m = get_ok(9465, "/metrics").unwrap_or_default();
        assert_eq!(
            metric(&m, "ipclink_semaphore_value", &[("channel", "slots")]),
            Some(8.0),
            "{m}"
        );
        assert_eq!(prometheus_up(prom_port.parse().unwrap_or_default()), 1.0);

        // The engine restarted: the volume is still its, and a second run works.
        restart_engine();
        let out = podman(&[
            "volume",
            "inspect",
            "--format",
            "{{.Driver}}",
            &format!("{project}_frames"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ipclink",
            "{}",
            text(&out)
        );
        let out = compose(
            &dir,
            project,
            &[("DEMO_FRAMES", "2000"), ("DEMO_INTERVAL_US", "100")],
            &["up", "-d", "producer", "consumer"],
        );
        assert!(out.status.success(), "{}", text(&out));
        exited_ok(&consumer, Duration::from_secs(60));
        // `down -v` below unmounts and removes through the restarted plugin.
    }
    let list: serde_json::Value = {
        let out = Command::new("curl")
            .args([
                "-fsS",
                "--unix-socket",
                PLUGIN_SOCKET,
                "-XPOST",
                "http://p/VolumeDriver.List",
            ])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
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

#[test]
fn readme_compose_section_runs_as_written() {
    let _one = one_at_a_time();
    compose_engine();
    let block = ipclink_testkit::readme_block("compose");
    let dir = repo_root().join("examples/compose/sidecar");
    let down = Down {
        dir: &dir,
        project: "sidecar",
    };
    down.clean();
    let (mut lines, stderr) = run_script("README Compose section", &block, &[]);
    let t = format!("{lines}{stderr}");
    lines.retain(|c| c != '\r');
    assert!(
        lines.lines().any(|l| l.trim() == "0"),
        "podman wait printed the exit code 0:\n{t}"
    );
    assert!(
        lines.contains("ipclink_semaphore_value{namespace=\"compose\",link=\"frames\",channel=\"slots\",kind=\"semaphore\",origin=\"declared\"} 8"),
        "{t}"
    );
    assert!(lines.contains("\"status\":\"success\""), "{t}");
}

/// Programs we did not write that make their own IPC objects (Python's
/// multiprocessing.shared_memory, iceoryx2) share a `driver: ipclink` volume between
/// containers only when it lets members create (`allowCreate=true`).
#[test]
fn workloads_example_on_podman_needs_allow_create() {
    let _one = one_at_a_time();
    let images = compose_engine();
    let bin = static_binary(&images, "ipclink-sidecar");
    let work = tempfile::Builder::new()
        .prefix("ipclink-compose-workloads-")
        .tempdir()
        .expect("temp dir");
    let root = work.path().join("volumes");
    let _plugin = PluginProcess::start(&bin, &root, &work.path().join("plugin.log"));
    let dir = repo_root().join("examples/compose/workloads");
    let project = "ipclink-e2e-workloads";
    let down = Down { dir: &dir, project };
    down.clean();
    let out = compose(&dir, project, &[], &["up", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    for c in ["py-producer", "py-consumer", "ice-ping", "ice-pong"] {
        exited_ok(&format!("{project}_{c}_1"), Duration::from_secs(120));
    }
    for (c, said) in [
        ("py-producer", "producer ok 200"),
        ("py-consumer", "consumer ok 200 frames checked"),
        ("ice-ping", "ping ok 1000 rtt_p50_ns"),
        ("ice-pong", "pong ok 1000"),
    ] {
        let log = logs(&format!("{project}_{c}_1"));
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
    let out = compose(
        &dir,
        project,
        &[],
        &[&files[..], &["up", "-d", "py-producer"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let producer = format!("{project}_py-producer_1");
    assert_eq!(
        exit_code(&producer, Duration::from_secs(60)),
        13,
        "{}",
        logs(&producer)
    );
    assert!(
        logs(&producer).contains("Permission denied"),
        "{}",
        logs(&producer)
    );
}
