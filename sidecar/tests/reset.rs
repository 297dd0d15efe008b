//! Bringing a used link back to its declared state: `ipclink-sidecar reset FILE` is
//! refused while a process holds one of the link's objects (exit 3, nothing changed on
//! disk) and resets it once none does, under a running `up` whose metrics then show the
//! declared values; and `up` in Compose mode starts a volume that no other container
//! uses as declared, whatever was left in it.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, LINK, Sidecar, free_port, setup, try_get};
use ipclink_testkit::http::metric;
use ipclink_testkit::mounts::{Unmounter, snapshot};
use ipclink_testkit::process::Process;

fn reset(file: &Path, root: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("reset")
        .arg(file)
        .arg("--root")
        .arg(root)
        .args(["--storage", "dir"])
        .output()
        .expect("run reset");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn semaphore(port: u16) -> Option<f64> {
    let text = try_get(port, "/metrics")?.1;
    metric(
        &text,
        "ipclink_semaphore_value",
        &[("channel", "frame-ready")],
    )
}

#[test]
fn reset_waits_for_the_last_holder_and_the_running_sidecar_shows_the_declared_values() {
    let s = setup(LINK);
    // The root on a tmpfs of its own, as /run is: containers other tests run on this
    // machine mount directories of the disk the temporary directory is on, and a mount
    // of a parent of a link rightly counts as using it.
    std::fs::create_dir_all(&s.root).expect("root");
    let _unmount = Unmounter(s.root.clone());
    nix::mount::mount(
        Some("tmpfs"),
        &s.root,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=8m"),
    )
    .expect("tmpfs at the root");
    let mut up = Sidecar::up(&s.root, &[&s.file], &["--storage", "dir"]);
    // What members leave: a region written, a semaphore taken to 0, a file in `control`.
    let region = s.link.join("frames");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&region)
        .expect("region")
        .write_all_at(b"MARK", 0)
        .expect("write");
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.link.join("sem.frame-ready"))
        .expect("semaphore")
        .write_all_at(&0u32.to_ne_bytes(), 0)
        .expect("take");
    std::fs::write(s.link.join("control/stale.sock"), b"").expect("leftover");
    let port = up.port;
    up.wait_for("the semaphore at 0", || semaphore(port) == Some(0.0));

    // A process holding the region: refused, exit 3, nothing changed.
    let mut holder = common::hold_open(&region, &s.root.with_extension("holder.log"));
    let before = snapshot(&s.root);
    let (code, _, stderr) = reset(&s.file, &s.root);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("link vision/frames: a process holds one of its objects; stop it first")
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(snapshot(&s.root), before);

    // None holds it: reset; the running sidecar reads the new objects.
    holder.kill9();
    let (code, stdout, stderr) = reset(&s.file, &s.root);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "vision/frames: reset to its declared state (5 objects made afresh)\n"
    );
    let bytes = std::fs::read(&region).expect("region");
    assert!(bytes.len() == 1 << 20 && bytes.iter().all(|&b| b == 0));
    assert!(!s.link.join("control/stale.sock").exists());
    up.wait_for("the semaphore back at 3", || semaphore(port) == Some(3.0));

    // A file whose link was never made: refused naming it.
    let other = common::write_file(
        s.file.parent().expect("dir"),
        "other.yaml",
        &LINK.replace("name: frames", "name: other"),
    );
    let (code, _, stderr) = reset(&other, &s.root);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("link vision/other:") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert_eq!(up.stop(), 0);
}

#[test]
fn compose_mode_starts_an_unused_volume_as_declared() {
    let s = setup(LINK);
    // A volume at the link's path (a tmpfs in a mount namespace of its own) that the last
    // run left used: a region with other bytes and size, and a file of a member's.
    let script = r#"bin=$1 file=$2 root=$3 && shift 3 &&
        mkdir -p "$root/vision/frames" &&
        mount -t tmpfs -o size=4m tmpfs "$root/vision/frames" &&
        printf MARK > "$root/vision/frames/frames" &&
        printf x > "$root/vision/frames/left-behind" &&
        exec "$bin" up "$file" --root "$root" --storage dir --engine unix:///nonexistent/engine.sock --container me "$@""#;
    let port = free_port();
    let mut cmd = Command::new(ipclink_testkit::require_tool("unshare"));
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(BIN)
        .arg(&s.file)
        .arg(&s.root)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    let mut p = Process::spawn("ipclink-sidecar up", cmd, &s.root.with_extension("log"));
    p.wait_until("/readyz answers", Duration::from_secs(20), || {
        try_get(port, "/readyz").is_some()
    });
    assert!(
        p.log()
            .contains("no other container uses the volume: the link starts as declared"),
        "{}",
        p.log()
    );
    // Seen through the sidecar's own mount namespace.
    let link = Path::new("/proc")
        .join(p.pid().expect("running").to_string())
        .join("root")
        .join(s.link.strip_prefix("/").expect("absolute"));
    let bytes = std::fs::read(link.join("frames")).expect("region");
    assert!(bytes.len() == 1 << 20 && bytes.iter().all(|&b| b == 0));
    assert!(!link.join("left-behind").exists());
    assert!(link.join("sem.frame-ready").exists());
}
