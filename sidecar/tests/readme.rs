//! The README's quick-start walk-through, run as written against `up` on the example link
//! (only the root directory, the port and the binary's path are substituted).

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Sidecar};

fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let start = readme
        .find("<!-- walkthrough")
        .expect("walkthrough start marker");
    let end = readme
        .find("<!-- /walkthrough -->")
        .expect("walkthrough end marker");
    let block = &readme[start..end];
    let body = block.split("```sh\n").nth(1).expect("a sh block");
    body.split("```").next().expect("closed block").to_owned()
}

#[test]
fn the_readme_walkthrough_works_as_written() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (tmpfs); run the README test command"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("run-ipclink");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local/frames.yaml");
    let sidecar = Sidecar::up(&root, &[&example], &[]);
    let script = walkthrough()
        .replace("target/release/ipclink-sidecar", BIN)
        .replace("/run/ipclink", root.to_str().expect("utf-8"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{}", sidecar.port));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("IPCLINK_ROOT", &root)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walk-through failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("vision/frames  events"),
        "status table missing:\n{stdout}"
    );
    assert!(
        stdout.contains(
            r#"ipclink_channel_queue_bytes{namespace="vision",link="frames",channel="events",kind="fifo"} 6"#
        ),
        "the README's promised line is missing:\n{stdout}"
    );
}
