//! Misconfigurations a Compose user makes that used to leave the sidecar healthy and
//! silent: each now makes `/readyz` answer 503 with what is wrong and how to fix it (so
//! the healthcheck holds the members back), logs it once, and changes nothing on disk;
//! and a declared object gone makes `/readyz` answer 503 too.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, LINK, free_port, setup, try_get};
use ipclink_testkit::mounts::snapshot;
use ipclink_testkit::process::Process;

/// `up` run by `sh -c script` in a mount namespace of its own (`unshare -m`), with `args`
/// after the script; returns the process and its port once `/readyz` answers at all.
fn up_in_own_mounts(script: &str, args: &[&Path], log: &Path) -> (Process, u16) {
    let port = free_port();
    let mut cmd = Command::new(ipclink_testkit::require_tool("unshare"));
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .args(args)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    let mut p = Process::spawn("ipclink-sidecar up", cmd, log);
    p.wait_until("/readyz answers", Duration::from_secs(20), || {
        try_get(port, "/readyz").is_some()
    });
    (p, port)
}

/// Waits until `/readyz` answers `status` with a body holding every one of `says`.
fn wait_readyz(p: &mut Process, port: u16, status: u16, says: &[&str]) -> String {
    let mut last = String::new();
    p.wait_until(
        &format!("/readyz {status} saying {says:?}"),
        Duration::from_secs(20),
        || {
            let Some((code, body)) = try_get(port, "/readyz") else {
                return false;
            };
            last = body;
            code == status && says.iter().all(|s| last.contains(s))
        },
    );
    last
}

#[test]
fn a_link_file_replaced_behind_a_single_file_bind_mount_is_reported() {
    let s = setup(LINK);
    let seen = s.file.with_file_name("seen.yaml");
    std::fs::write(&seen, "").expect("mount point");
    // The sidecar sees the file through a bind mount of the file itself, as Compose
    // mounts `./link.yaml:/etc/ipclink/link.yaml`.
    let script = r#"mount --bind "$1" "$2" && bin=$3 file=$2 root=$4 && shift 4 &&
        exec "$bin" up "$file" --root "$root" --storage dir "$@""#;
    let (mut p, port) = up_in_own_mounts(
        script,
        &[&s.file, &seen, Path::new(BIN), &s.root],
        &s.root.with_extension("log"),
    );
    wait_readyz(&mut p, port, 200, &["ready"]);
    let before = snapshot(&s.root);
    // What `sed -i` and most editors do: a new file renamed over the old one.
    let edited = s.file.with_extension("new");
    std::fs::write(&edited, LINK.replace("initial: 8", "initial: 9")).expect("edit");
    std::fs::rename(&edited, &s.file).expect("replace");
    let said = wait_readyz(
        &mut p,
        port,
        503,
        &[
            "was replaced outside this container",
            "single-file bind mount",
            "mount the file's directory instead",
        ],
    );
    assert!(said.contains(&seen.display().to_string()), "{said}");
    assert!(
        p.log().contains("not ready:") && p.log().contains("was replaced"),
        "{}",
        p.log()
    );
    assert_eq!(snapshot(&s.root), before, "nothing changed on disk");
}

#[test]
fn compose_mode_refuses_a_link_without_its_volume_and_says_when_the_engine_is_missing() {
    let s = setup(LINK);
    let engine = "--engine=unix:///nonexistent/engine.sock";
    // No volume at the link's path: refused before anything is made.
    let out = Command::new(BIN)
        .arg("up")
        .arg(&s.file)
        .arg("--root")
        .arg(&s.root)
        .args(["--storage", "dir", engine, "--container", "me"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let link = s.root.join("vision/frames");
    assert!(
        err.contains(&format!(
            "link vision/frames: no volume is mounted at {}",
            link.display()
        )) && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!s.root.exists(), "nothing made: {:?}", snapshot(&s.root));

    // The volume where the link says (a tmpfs there): it starts, and is not ready while
    // the engine cannot be reached, saying which socket to mount.
    let script = r#"bin=$1 file=$2 root=$3 engine=$4 && shift 4 &&
        mkdir -p "$root/vision/frames" &&
        mount -t tmpfs -o size=4m tmpfs "$root/vision/frames" &&
        exec "$bin" up "$file" --root "$root" --storage dir "$engine" --container me "$@""#;
    let (mut p, port) = up_in_own_mounts(
        script,
        &[Path::new(BIN), &s.file, &s.root, Path::new(engine)],
        &s.root.with_extension("log"),
    );
    let said = wait_readyz(
        &mut p,
        port,
        503,
        &[
            "cannot reach the engine at unix:///nonexistent/engine.sock",
            "ENGINE_SOCKET",
        ],
    );
    assert!(said.starts_with(r#"{"Err":"misconfigured: "#), "{said}");
}

/// `status` in a container without the host's pid namespace (a cgroup named for a
/// container id, and a pid namespace of its own) cannot see the members' processes:
/// their counts are unknown, never 0, and it says how to see them; on the host the same
/// holder is counted.
#[test]
fn status_in_a_container_that_sees_only_itself_shows_holders_as_unknown() {
    let s = setup(LINK);
    let mut up = common::Sidecar::up(&s.root, &[&s.file], &["--storage", "dir"]);
    let region = s.link.join("frames");
    let mut holder = common::hold_open(&region, &s.root.with_extension("holder.log"));
    let frames_row = |out: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some("frames"))
            .unwrap_or_else(|| panic!("no frames row:\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // On the host: one reader.
    let out = Command::new(BIN)
        .args(["status", "--root"])
        .arg(&s.root)
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(frames_row(&table)[6], "1", "{table}");

    // In a "container": the cgroup path names a container id; only its own processes.
    let cgroup = Path::new("/sys/fs/cgroup/pids").join(format!("docker-{}.scope", "ab".repeat(32)));
    std::fs::create_dir_all(&cgroup).expect("cgroup");
    let script = r#"echo $$ > "$1/cgroup.procs" && exec unshare --pid --fork --mount-proc "$2" status --root "$3""#;
    let out = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&cgroup)
        .arg(BIN)
        .arg(&s.root)
        .output()
        .expect("status in a container");
    let _ = std::fs::remove_dir(&cgroup);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{table}{log}");
    let row = frames_row(&table);
    assert_eq!(
        row[6..9],
        ["<unknown>", "<unknown>", "<unknown>"],
        "{table}"
    );
    assert!(
        log.contains("only this container's processes are visible here")
            && log.contains("pid: host"),
        "{log}"
    );
    holder.kill9();
    assert_eq!(up.stop(), 0);
}

/// A declared object gone behind the sidecar's back (removed here by root; members
/// cannot): `/readyz` answers 503 naming the link, so a healthcheck holds the members
/// back, and the object's `ipclink_channel_present` is 0. Before that, the link's
/// preallocated bytes are its region and a page per semaphore, and an idle FIFO's
/// `ipclink_channel_depth_unchanged_seconds` grows.
#[test]
fn a_declared_object_gone_makes_readyz_503_and_its_present_series_0() {
    use ipclink_testkit::http::metric;
    let s = setup(LINK);
    let mut sidecar = common::Sidecar::up(&s.root, &[&s.file], &[]);
    let port = sidecar.port;
    let scrape = || try_get(port, "/metrics").expect("/metrics").1;
    let m = scrape();
    assert_eq!(
        metric(&m, "ipclink_link_preallocated_bytes", &[("link", "frames")]),
        Some((1024 * 1024 + 2 * 4096) as f64),
        "{m}"
    );
    let unchanged = |m: &str| {
        metric(
            m,
            "ipclink_channel_depth_unchanged_seconds",
            &[("channel", "events")],
        )
        .unwrap_or_else(|| panic!("no depth_unchanged for events\n{m}"))
    };
    let first = unchanged(&m);
    sidecar.wait_for("the idle FIFO's unchanged time to grow", || {
        unchanged(&scrape()) >= first + 2.0
    });
    std::fs::remove_file(s.link.join("events")).expect("remove the FIFO");
    sidecar.wait_for("/readyz 503 naming the link", || {
        try_get(port, "/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("vision/frames"))
    });
    let m = scrape();
    for (channel, present) in [("events", 0.0), ("frames", 1.0)] {
        assert_eq!(
            metric(&m, "ipclink_channel_present", &[("channel", channel)]),
            Some(present),
            "{channel}\n{m}"
        );
    }
}
