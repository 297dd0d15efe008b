//! The two container engines the Compose setups run on, driven as a user would: podman
//! (its Docker API, Debian's docker-compose 1.29) and Docker Engine (Debian's docker.io,
//! Compose v2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{compose_engine, docker_engine, output_text as text};

/// An engine with its CLI and its Compose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// podman's Docker API with Debian's docker-compose 1.29.
    Podman,
    /// Docker Engine with Compose v2 (`docker compose`).
    Docker,
}

use Engine::{Docker, Podman};

/// Docker's spec file for the socket plugin, which the plugin writes while it serves
/// (`volume-plugin --docker-spec`) and removes when it stops.
pub const DOCKER_SPEC: &str = "/etc/docker/plugins/ipclink.spec";

impl Engine {
    /// Installs and starts it with our images loaded; the images directory.
    pub fn prepare(self) -> PathBuf {
        match self {
            Podman => compose_engine(),
            Docker => {
                let images = docker_engine();
                // A managed plugin named ipclink would take `driver: ipclink` from the
                // socket plugin the tests serve, and dockerd keeps the driver it found
                // under a name until it restarts.
                if self.cli(&["plugin", "inspect", "ipclink"]).status.success() {
                    let _ = self.cli(&["plugin", "rm", "-f", "ipclink"]);
                    self.restart(false);
                }
                images
            }
        }
    }

    /// The engine's Docker API socket.
    pub fn socket(self) -> &'static str {
        match self {
            Podman => "/run/podman/podman.sock",
            Docker => "/var/run/docker.sock",
        }
    }

    /// Where the engine looks for the volume plugin's socket: podman through
    /// containers.conf (install-compose writes it), Docker through [`DOCKER_SPEC`] (the
    /// plugin writes it while it serves: `--docker-spec`).
    pub fn plugin_socket(self) -> &'static str {
        "/run/ipclink/plugin.sock"
    }

    /// Host ports of one engine's runs differ from the other's.
    pub fn port(self, base: u16) -> String {
        match self {
            Podman => base,
            Docker => base + 100,
        }
        .to_string()
    }

    /// Runs the engine's CLI (`podman`, or `docker` on [`Engine::socket`]).
    pub fn cli(self, args: &[&str]) -> Output {
        let (program, host) = match self {
            Podman => ("podman", None),
            Docker => ("docker", Some(format!("unix://{}", self.socket()))),
        };
        let mut cmd = Command::new(program);
        if let Some(h) = host {
            cmd.env("DOCKER_HOST", h);
        }
        cmd.args(args);
        bounded(&mut cmd)
    }

    /// Runs its Compose in `dir` for `project`, with ENGINE_SOCKET (the socket the
    /// sidecar example mounts) set to [`Engine::socket`].
    pub fn compose(self, dir: &Path, project: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = match self {
            Podman => Command::new("docker-compose"),
            Docker => {
                let mut c = Command::new("docker");
                c.arg("compose");
                c
            }
        };
        cmd.current_dir(dir)
            .env("DOCKER_HOST", format!("unix://{}", self.socket()))
            .env("ENGINE_SOCKET", self.socket())
            .envs(env.iter().copied())
            .arg("-p")
            .arg(project)
            .args(args);
        bounded(&mut cmd)
    }

    /// The name Compose gives the first container of `service`.
    pub fn container(self, project: &str, service: &str) -> String {
        match self {
            Podman => format!("{project}_{service}_1"),
            Docker => format!("{project}-{service}-1"),
        }
    }

    /// A container's log, stdout and stderr.
    pub fn logs(self, container: &str) -> String {
        text(&self.cli(&["logs", container]))
    }

    /// Waits until the container has exited; its exit code.
    pub fn exit_code(self, container: &str, limit: Duration) -> i64 {
        wait_until(&format!("{container} to exit"), limit, || {
            let out = self.cli(&[
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
    pub fn exited_ok(self, container: &str, limit: Duration) {
        let code = self.exit_code(container, limit);
        assert_eq!(
            code,
            0,
            "{container} exited {code}:\n{}",
            self.logs(container)
        );
    }

    /// Runs the CLI, asserts it succeeded; its trimmed stdout.
    pub fn ok(self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A container's id as the holder metrics name it (12 hex digits).
    pub fn short_id(self, container: &str) -> String {
        self.ok(&["inspect", "--format", "{{.Id}}", container])
            .chars()
            .take(12)
            .collect()
    }
    /// Stops the engine's daemon (SIGTERM) and starts it again: podman's service, or
    /// dockerd with live-restore as asked.
    pub fn restart(self, live_restore: bool) {
        let (pattern, script, args): (&str, &str, &[&str]) = match self {
            Podman => ("podman system service", "install-compose", &[]),
            Docker => (
                "^dockerd .*ipclink-dockerd.pid",
                "install-docker",
                if live_restore {
                    &["--live-restore"]
                } else {
                    &[]
                },
            ),
        };
        let _ = Command::new("pkill").args(["-f", pattern]).status();
        wait_until("the engine to stop", Duration::from_secs(60), || {
            let up = Command::new("pgrep")
                .args(["-f", pattern])
                .stdout(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            (!up).then_some(())
        });
        let out = Command::new(crate::repo_root().join("scripts").join(script))
            .args(args)
            .output()
            .expect("restart the engine");
        assert!(out.status.success(), "{}", text(&out));
    }
}

/// How long one engine or Compose command may take: longer than any of them takes on a
/// loaded machine, short of the lane's limit, so that a command that hangs (an engine
/// waiting on a volume plugin that does not answer) fails its test by name.
const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// Runs `cmd` to the end with its output collected, or, past [`COMMAND_LIMIT`], kills it
/// and what it started (its own process group) and panics naming it with what it had
/// printed. While the thread already unwinds (a guard cleaning up after a failure) it
/// returns instead, its status failed, so that a second panic does not abort the binary.
fn bounded(cmd: &mut Command) -> Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    // Read as it comes (a command that prints more than a pipe holds must not stall),
    // each stream's bytes shared so that a timeout can show what came so far.
    let drain = |mut r: Box<dyn Read + Send>| {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("output").extend_from_slice(&buf[..n]);
            }
            let _ = done.send(());
        });
        (got, finished)
    };
    let (out, out_done) = drain(Box::new(child.stdout.take().expect("stdout")));
    let (err, err_done) = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = std::time::Instant::now();
    let left = || COMMAND_LIMIT.saturating_sub(start.elapsed());
    let mut status = None;
    while status.is_none() && !left().is_zero() {
        status = child.try_wait().expect("wait for a command");
        if status.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The streams end when whatever holds them (a child it started too) lets go.
    let ended = status.is_some()
        && out_done.recv_timeout(left()).is_ok()
        && err_done.recv_timeout(left()).is_ok();
    let take = |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
        std::mem::take(&mut *b.lock().expect("output"))
    };
    if !ended {
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let status = child.wait().expect("wait for a killed command");
        let output = Output {
            status,
            stdout: take(&out),
            stderr: take(&err),
        };
        if std::thread::panicking() {
            return output;
        }
        panic!(
            "{what} still ran after {COMMAND_LIMIT:?}: killed\n{}",
            text(&output)
        );
    }
    Output {
        // Reaped by try_wait already: its status again.
        status: child.wait().expect("wait for a command"),
        stdout: take(&out),
        stderr: take(&err),
    }
}

/// What the two engines' tests share on this host. The engines' tests run in two
/// processes side by side (ipclink-test-lanes), so they take these in turn: [`hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// The volume plugin a test serves on the host: its socket
    /// ([`Engine::plugin_socket`], which podman's containers.conf names), its metrics
    /// port 127.0.0.1:9465 (the plugin example's Prometheus scrapes it),
    /// `/etc/ipclink/links`, and Docker's spec file [`DOCKER_SPEC`].
    Plugin,
    /// The host ports docs/compose.md's blocks publish as written (9464, 9090).
    DocsPorts,
}

/// A [`Shared`] resource held until dropped.
#[derive(Debug)]
pub struct Held {
    pub what: Shared,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Waits for `what` and holds it until the guard is dropped: an exclusive `flock` on a
/// file in `$IPCLINK_CACHE/locks` (root's, beside the installers' locks), so that tests
/// in any process take it in turn, and a process that dies lets it go.
pub fn hold(what: Shared) -> Held {
    let name = match what {
        Shared::Plugin => "plugin",
        Shared::DocsPorts => "docs-ports",
    };
    let dir = std::path::PathBuf::from(
        std::env::var_os("IPCLINK_CACHE").unwrap_or_else(|| "/var/cache/ipclink".into()),
    )
    .join("locks");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(format!("e2e-{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display()));
    Held { what, _lock: lock }
}

fn wait_until<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    crate::wait_until(what, limit, Duration::from_millis(250), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command's status and both streams come back whole, more than a pipe holds
    /// included.
    #[test]
    fn a_bounded_command_gives_its_status_and_all_it_printed() {
        let out = bounded(Command::new("sh").args([
            "-c",
            "head -c 300000 /dev/zero | tr '\\0' x; echo; echo err >&2; exit 3",
        ]));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout.len(), 300_001);
        assert_eq!(out.stderr, b"err\n");
    }
}
