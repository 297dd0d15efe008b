//! The persistence rule of docs/compose.md, each row on both engines and in both modes
//! (`e2e/tests/fixtures/persistence/`): a link keeps what members left in it while some
//! container of the project uses its volume (the sidecar counts), the first container
//! after none finds it as declared, and `ipclink-sidecar reset` brings it back to its
//! declared state, refused (exit 3, nothing changed) while a container uses it.
//!
//! "Used" is what members leave: the region `frames` grown from 4 KiB to 64 KiB and
//! written, the semaphore `slots` taken from 3 to 0, a file in the socket directory
//! `control`. The test reads and writes them from inside member `a`. It also shows, in
//! both modes, that a member holding a channel in a role it is not declared for, and a
//! container that is not a member at all (plugin mode), are flagged by `status` and the
//! metrics: membership is not enforced in Compose.

mod compose_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use compose_support::{Down, one_at_a_time, start_plugin, wait_until};
use ipclink_testkit::engine::Engine::{self, Docker, Podman};
use ipclink_testkit::engine::{Shared, hold};
use ipclink_testkit::{output_text as text, repo_root, static_binary};

/// What member `a` reads of the link: region size, its first 4 bytes, the semaphore's
/// value, whether the member's file is there.
const LOOK: &str = "import os; f = open('/ipc/frames', 'rb'); head = f.read(4).hex(); \
    v = int.from_bytes(open('/ipc/sem.slots', 'rb').read(4), 'little'); \
    print(os.path.getsize('/ipc/frames'), head, v, os.path.exists('/ipc/control/left'))";
const DECLARED: &str = "4096 00000000 3 False";
const USED: &str = "65536 4d41524b 0 True";
/// What members leave.
const USE: &str = "f = open('/ipc/frames', 'r+b'); f.write(b'MARK'); f.truncate(65536); f.close(); \
    open('/ipc/sem.slots', 'r+b').write((0).to_bytes(4, 'little')); \
    open('/ipc/control/left', 'w').close()";

struct Project<'a> {
    e: Engine,
    dir: &'a Path,
    name: &'a str,
}

impl Project<'_> {
    fn compose(&self, args: &[&str]) {
        let out = self.e.compose(self.dir, self.name, &[], args);
        assert!(out.status.success(), "compose {args:?}: {}", text(&out));
    }

    fn python(&self, code: &str) -> Option<String> {
        let a = self.e.container(self.name, "a");
        let out = self.e.cli(&["exec", &a, "/usr/bin/python3", "-c", code]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The link as member `a` sees it, once it can read it.
    fn look(&self) -> String {
        wait_until("member a to read the link", Duration::from_secs(60), || {
            self.python(LOOK)
        })
    }

    /// Member `b`, declared a reader of `frames`, opens it for writing and keeps it open;
    /// its container.
    fn b_writes_frames(&self) -> String {
        let b = self.e.container(self.name, "b");
        self.e.ok(&[
            "exec",
            "-d",
            &b,
            "/usr/bin/python3",
            "-c",
            "import time; f = open('/ipc/frames', 'r+b'); time.sleep(600)",
        ]);
        b
    }

    fn used(&self) {
        assert_eq!(self.look(), DECLARED, "a new link is as declared");
        assert!(self.python(USE).is_some(), "member a writes the link");
        assert_eq!(self.look(), USED);
    }
}

#[test]
fn persistence_in_sidecar_mode_on_podman() {
    sidecar_mode(Podman);
}

#[test]
fn persistence_in_sidecar_mode_on_docker() {
    sidecar_mode(Docker);
}

fn sidecar_mode(e: Engine) {
    let _one = one_at_a_time();
    e.prepare();
    let dir = repo_root().join("e2e/tests/fixtures/persistence/sidecar");
    let name = "ipclink-e2e-persist-sidecar";
    let _down = Down {
        engine: e,
        dir: &dir,
        project: name,
    };
    _down.clean();
    let p = Project { e, dir: &dir, name };
    let sidecar = e.container(name, "ipclink");
    let reset = || {
        e.cli(&[
            "exec",
            &sidecar,
            "/ipclink-sidecar",
            "reset",
            "--root=/run/ipclink",
            "--storage=dir",
            "/etc/ipclink/link.yaml",
        ])
    };
    p.compose(&["up", "-d"]);
    p.used();

    // Membership only reports in sidecar mode: `b`, declared a reader of `frames`,
    // opens it for writing; the sidecar flags it (`status`, and the metric).
    let b = p.b_writes_frames();
    let said = format!(
        "compose/frames: service b (container {b}) holds frames as writer, not as declared (declared: reader)"
    );
    let status = wait_until("the sidecar to flag b", Duration::from_secs(60), || {
        let out = e.cli(&[
            "exec",
            &sidecar,
            "/ipclink-sidecar",
            "status",
            "--endpoint=127.0.0.1:9464",
        ]);
        let t = text(&out);
        t.contains(&said).then_some(t)
    });
    assert!(!status.contains("service a "), "{status}");

    // A member restarts while other containers use the volume: kept.
    p.compose(&["restart", "-t", "1", "b"]);
    assert_eq!(p.look(), USED, "after a member's restart");
    // The sidecar restarts while members use it: kept (it sees them: `pid: host`).
    p.compose(&["restart", "-t", "1", "ipclink"]);
    wait_until(
        "the restarted sidecar's verdict",
        Duration::from_secs(30),
        || {
            e.logs(&sidecar)
                .contains("the volume is in use, the link is kept as it is: container(s) ")
                .then_some(())
        },
    );
    assert_eq!(p.look(), USED, "after the sidecar's restart");
    // Every member stops and starts again: the sidecar used the volume all along.
    p.compose(&["stop", "-t", "1", "a", "b"]);
    p.compose(&["start", "a", "b"]);
    assert_eq!(p.look(), USED, "after the members' stop and start");

    // `reset` while members use it: refused, exit 3, nothing changed.
    let out = reset();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("link compose/frames: container(s) ")
            && text(&out).contains(" have its volume mounted; stop them first")
            && text(&out).contains("nothing was changed"),
        "{}",
        text(&out)
    );
    assert_eq!(p.look(), USED, "after a refused reset");
    // Members stopped (the sidecar runs): reset; they start on the declared state.
    p.compose(&["stop", "-t", "1", "a", "b"]);
    let out = reset_once_unused(&reset);
    assert!(
        text(&out).contains("compose/frames: reset to its declared state"),
        "{}",
        text(&out)
    );
    p.compose(&["start", "a", "b"]);
    assert_eq!(p.look(), DECLARED, "after reset");

    // `down` without `-v`, then `up`: no container used the volume in between.
    assert!(p.python(USE).is_some());
    p.compose(&["down", "-t", "1"]);
    p.compose(&["up", "-d"]);
    assert_eq!(p.look(), DECLARED, "after down and up");
}

#[test]
fn persistence_in_plugin_mode_on_podman() {
    plugin_mode(Podman);
}

#[test]
fn persistence_in_plugin_mode_on_docker() {
    plugin_mode(Docker);
}

/// A container of no Compose service that mounts the plugin-mode volume.
const STRANGER: &str = "ipclink-e2e-persist-stranger";

fn plugin_mode(e: Engine) {
    let _one = one_at_a_time();
    let images = e.prepare();
    let host = hold(Shared::Plugin);
    let dir = repo_root().join("e2e/tests/fixtures/persistence/plugin");
    let name = "ipclink-e2e-persist-plugin";
    // The volume's link file, in the plugin's default link directory.
    std::fs::create_dir_all("/etc/ipclink/links").expect("link dir");
    std::fs::copy(
        repo_root().join("e2e/tests/fixtures/persistence/sidecar/link.yaml"),
        "/etc/ipclink/links/ipclink-e2e-persist.yaml",
    )
    .expect("link file");
    let (_work, mut plugin) = start_plugin(e, &images, "ipclink-persist-plugin-", &host);
    let _down = Down {
        engine: e,
        dir: &dir,
        project: name,
    };
    // A stranger left by an earlier run would keep the volume mounted.
    let _ = e.cli(&["rm", "-f", STRANGER]);
    _down.clean();
    let p = Project { e, dir: &dir, name };
    let volume = format!("{name}_frames");
    let bin = static_binary(&images, "ipclink-sidecar");
    let reset = || {
        Command::new(&bin)
            .args(["reset", "--volume-plugin", e.plugin_socket(), &volume])
            .output()
            .expect("run reset")
    };
    p.compose(&["up", "-d"]);
    p.used();
    flagged_in_plugin_mode(e, &p, &volume, &bin, &plugin);

    // A member restarts while the other uses the volume: kept.
    p.compose(&["restart", "-t", "1", "b"]);
    assert_eq!(p.look(), USED, "after a member's restart");
    // The plugin restarts (kill -9) while members use it: kept.
    plugin.restart();
    assert_eq!(p.look(), USED, "after the plugin's restart");

    // `reset` while members use it: refused, exit 3, nothing changed.
    let out = reset();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("nothing was changed"), "{}", text(&out));
    // Docker's Mount callers say so; podman mounts once for all its containers (and may
    // unmount while they run), where the members' mount tables say so.
    let mut ids = [&e.container(name, "a"), &e.container(name, "b")].map(|c| e.short_id(c));
    ids.sort();
    let said = match e {
        Docker => vec!["is mounted by 2 caller(s)".to_owned()],
        Podman => vec![
            "is mounted by 1 caller(s)".to_owned(),
            format!(
                "is in use: container(s) {} have its volume mounted",
                ids.join(", ")
            ),
        ],
    };
    assert!(
        said.iter().any(|s| text(&out).contains(s)),
        "{said:?}: {}",
        text(&out)
    );
    assert_eq!(p.look(), USED, "after a refused reset");
    // Members stopped: reset.
    p.compose(&["stop", "-t", "1", "a", "b"]);
    reset_once_unused(&reset);
    p.compose(&["start", "a", "b"]);
    assert_eq!(p.look(), DECLARED, "after reset");

    // Every member stops and starts again: no container used it in between.
    assert!(p.python(USE).is_some());
    p.compose(&["stop", "-t", "1", "a", "b"]);
    p.compose(&["start", "a", "b"]);
    assert_eq!(p.look(), DECLARED, "after the members' stop and start");

    // `down` without `-v`, then `up`.
    assert!(p.python(USE).is_some());
    p.compose(&["down", "-t", "1"]);
    p.compose(&["up", "-d"]);
    assert_eq!(p.look(), DECLARED, "after down and up");
    assert!(
        plugin
            .log()
            .contains("no container used the volume: its link starts as declared"),
        "{}",
        plugin.log()
    );
}

/// Plugin mode reports as the sidecar does, naming containers through the engine: `b`,
/// declared a reader of `frames`, opens it for writing; a container of no Compose
/// service (so named by its container name) mounts the volume and reads `frames`. Both
/// are flagged by `status` and the metric, and the stranger's report says it is not a
/// member; it is removed before the persistence rows go on.
fn flagged_in_plugin_mode(
    e: Engine,
    p: &Project,
    volume: &str,
    bin: &Path,
    plugin: &compose_support::PluginProcess,
) {
    let link = "docker/ipclink-e2e-persist-plugin-frames";
    let b = p.b_writes_frames();
    let stranger = STRANGER;
    struct Gone(Engine);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = self.0.cli(&["rm", "-f", STRANGER]);
        }
    }
    let _gone = Gone(e);
    e.ok(&[
        "run",
        "-d",
        "--name",
        stranger,
        "--user",
        "1000:1000",
        "-v",
        &format!("{volume}:/ipc"),
        "--entrypoint",
        "/usr/bin/python3",
        "localhost/ipclink/python:0.1.0",
        "-c",
        "import time; f = open('/ipc/frames', 'rb'); time.sleep(600)",
    ]);
    let said = [
        format!(
            "{link}: service b (container {b}) holds frames as writer, not as declared (declared: reader)"
        ),
        format!(
            "{link}: service {stranger} (container {stranger}) holds frames as reader, not as declared (declared: none)"
        ),
    ];
    let status = wait_until(
        "the plugin to flag b and the stranger",
        Duration::from_secs(60),
        || {
            let out = Command::new(bin)
                .args(["status", "--endpoint=127.0.0.1:9465"])
                .output()
                .expect("run status");
            let t = text(&out);
            said.iter().all(|s| t.contains(s)).then_some(t)
        },
    );
    assert!(!status.contains("service a "), "{status}");
    let m = ipclink_testkit::http::get_ok(9465, "/metrics").unwrap_or_default();
    assert_eq!(
        ipclink_testkit::http::metric(
            &m,
            "ipclink_member_undeclared",
            &[
                ("service", stranger),
                ("channel", "frames"),
                ("role", "reader")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    let problem = format!(
        "service {stranger} (container {stranger}) mounts link {link} but is not one of its members"
    );
    let links = ipclink_testkit::http::get_ok(9465, "/v1/links").unwrap_or_default();
    assert!(links.contains(&problem), "{links}");
    assert!(plugin.log().contains(&problem), "logged\n{}", plugin.log());
    e.ok(&["rm", "-f", stranger]);
    // b's stray writer goes with a restart of b (the next row restarts it anyway).
}

/// `reset` right after the members were stopped: a stopped container's mounts may
/// linger a moment after `stop` returns (podman), and `reset` then refuses (exit 3,
/// nothing changed); it is asked again until it succeeds, within 30 s. Any other answer
/// fails at once.
fn reset_once_unused(reset: &dyn Fn() -> std::process::Output) -> std::process::Output {
    wait_until(
        "reset once the stopped members let go of the volume",
        Duration::from_secs(30),
        || {
            let out = reset();
            match out.status.code() {
                Some(0) => Some(out),
                Some(3) => None,
                _ => panic!("reset: {}", text(&out)),
            }
        },
    )
}
