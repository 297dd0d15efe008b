//! What the Compose tests share (compose.rs on both engines, compose_docker.rs on Docker
//! only): the engine lock, the project's teardown, the volume plugin as a process of the
//! test and the plugin example brought up. Each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ipclink_testkit::engine::Engine::{self, Docker, Podman};
use ipclink_testkit::engine::{Held, Shared};
use ipclink_testkit::http::{get_ok, metric};
use ipclink_testkit::{output_text as text, static_binary};
/// The tests of one process share the engines (and some restart them): one at a time.
/// In CI each engine's tests run in a process of their own, beside the other engine's
/// (ipclink-test-lanes), and take what both share on the host in turn
/// (`ipclink_testkit::engine::hold`).
static ENGINE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ENGINE_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn wait_until<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    ipclink_testkit::wait_until(what, limit, Duration::from_millis(250), f)
}

/// The `up` value Prometheus has for job ipclink, once it has one.
pub fn prometheus_up(port: &str) -> f64 {
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

pub struct Down<'a> {
    pub engine: Engine,
    pub dir: &'a Path,
    pub project: &'a str,
}

impl Down<'_> {
    /// Removes every container, network and volume of the project, paused ones too.
    pub fn clean(&self) -> Output {
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

pub struct PluginProcess {
    child: Option<Child>,
    /// Whether dropping this removes Docker's spec file (the process wrote it, serving
    /// Docker; a restarted plugin's new process writes it again and owns it).
    owns_spec: bool,
    engine: Engine,
    bin: PathBuf,
    root: PathBuf,
    log: PathBuf,
}

impl PluginProcess {
    /// Serves the plugin for `e` on [`Engine::plugin_socket`], asking `e` who mounts its
    /// volumes; only for Docker does it write Docker's spec file (a podman run's plugin
    /// is no driver of Docker's).
    pub fn start(e: Engine, bin: &Path, root: &Path, log: &Path) -> PluginProcess {
        let socket = e.plugin_socket();
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new(bin);
        cmd.args(["volume-plugin", "--socket", socket])
            .args(["--listen", "127.0.0.1:9465"])
            .args(["--engine", &format!("unix://{}", e.socket())]);
        if e == Docker {
            cmd.args(["--docker-spec", ipclink_testkit::engine::DOCKER_SPEC]);
        }
        let child = cmd
            .arg("--root")
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
            owns_spec: e == Docker,
            engine: e,
            bin: bin.to_owned(),
            root: root.to_owned(),
            log: log.to_owned(),
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        let next = PluginProcess::start(
            self.engine,
            &self.bin.clone(),
            &self.root.clone(),
            &self.log.clone(),
        );
        let mut old = std::mem::replace(self, next);
        old.owns_spec = false;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Callers that have volume `name` mounted, as the plugin keeps them on disk.
    pub fn mounts(&self, name: &str) -> Vec<String> {
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
    pub fn list(&self) -> serde_json::Value {
        let out = Command::new("curl")
            .args([
                "-fsS",
                "--unix-socket",
                self.engine.plugin_socket(),
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
        // What a clean stop removes: dockerd must not wait on a plugin that is gone. It
        // keeps a volume driver it has used until it restarts, and would wait 15 s on the
        // dead socket at every volume listing of the tests that follow (docs/compose.md
        // says to restart it): restarted.
        if self.owns_spec {
            let _ = std::fs::remove_file(ipclink_testkit::engine::DOCKER_SPEC);
            // A failed restart inside this drop must not abort a test already failing.
            if std::panic::catch_unwind(|| Docker.restart(false)).is_err() {
                eprintln!("--- dockerd did not restart after the plugin stopped ---");
            }
        }
        if std::thread::panicking() {
            eprintln!("--- plugin log ---\n{}", self.log());
        }
    }
}

/// A container's main process as the host sees it: pid, cgroup and descriptors.
pub fn member_processes(e: Engine, container: &str) -> String {
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

/// The plugin example's `project`, cleaned first and brought up with the demo sending
/// `frames` frames and Prometheus on `prom_port`: (the guard that takes it down,
/// consumer, producer), as [`plugin_example_up`] checks them.
pub fn plugin_example<'a>(
    e: Engine,
    dir: &'a Path,
    project: &'a str,
    root: &Path,
    frames: &str,
    prom_port: &str,
) -> (Down<'a>, String, String) {
    let env = [
        ("DEMO_FRAMES", frames),
        ("DEMO_INTERVAL_US", "200"),
        ("PROMETHEUS_PORT", prom_port),
    ];
    let down = Down {
        engine: e,
        dir,
        project,
    };
    down.clean();
    let (consumer, producer) = plugin_example_up(e, dir, project, root, &env);
    (down, consumer, producer)
}

/// The plugin example, up: the link is where the plugin keeps it, on one tmpfs; frames
/// flow; with the consumer paused the FIFO holds data and the ring is full, as the
/// plugin's `/metrics` shows, and the holders are the member containers by name (the
/// plugin asks the engine) and as members of their Compose services. Returns
/// (consumer, producer).
pub fn plugin_example_up(
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
    // The holders are the containers that mounted the volume, by name, once the
    // plugin's discovery has found them.
    wait_until("holders by name", Duration::from_secs(30), || {
        let m = get_ok(9465, "/metrics").unwrap_or_default();
        [("reader", &consumer), ("writer", &producer)]
            .iter()
            .all(|(role, container)| {
                metric(
                    &m,
                    "ipclink_channel_holder_info",
                    &[
                        ("channel", "events"),
                        ("role", role),
                        ("container", container),
                    ],
                ) == Some(1.0)
            })
            .then_some(())
    });
    let links: serde_json::Value =
        serde_json::from_str(&get_ok(9465, "/v1/links").unwrap_or_default()).expect("json");
    let mut services: Vec<(&str, &str)> = links["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["service"].as_str().unwrap_or(""),
                m["container"].as_str().unwrap_or(""),
            )
        })
        .collect();
    services.sort();
    assert_eq!(
        services,
        [
            ("consumer", consumer.as_str()),
            ("producer", producer.as_str())
        ],
        "{links}"
    );
    (consumer, producer)
}

/// The sidecar binary and a fresh plugin root, with the plugin serving it; the caller
/// holds the host's plugin resources while it runs.
pub fn start_plugin(
    e: Engine,
    images: &Path,
    prefix: &str,
    held: &Held,
) -> (tempfile::TempDir, PluginProcess) {
    assert_eq!(held.what, Shared::Plugin, "the plugin's resources are held");
    let bin = static_binary(images, "ipclink-sidecar");
    let work = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    let plugin = PluginProcess::start(
        e,
        &bin,
        &work.path().join("volumes"),
        &work.path().join("plugin.log"),
    );
    (work, plugin)
}
