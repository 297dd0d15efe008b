//! The README's quick-start walk-through, run as written against `up` on the example link
//! (only the root directory, the port and the binary's path are substituted).

mod common;

use std::path::Path;

use common::{BIN, Sidecar};
use ipclink_testkit::{readme_script, require_root, run_script};

#[test]
fn the_readme_walkthrough_works_as_written() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("run-ipclink");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local/frames.yaml");
    let sidecar = Sidecar::up(&root, &[&example], &[]);
    let script = readme_script(
        "walkthrough",
        &[],
        &[
            ("target/release/ipclink-sidecar", BIN),
            ("/run/ipclink", root.to_str().expect("utf-8")),
            ("127.0.0.1:9464", &format!("127.0.0.1:{}", sidecar.port)),
        ],
    );
    let (stdout, _) = run_script(
        "README walk-through",
        &script,
        &[("IPCLINK_ROOT", root.as_os_str())],
    );
    assert!(
        stdout.contains("vision/frames   events"),
        "status table missing:\n{stdout}"
    );
    // The second table names the reader (`sleep`, pid varies) and the 6 bytes.
    let row = stdout
        .lines()
        .filter(|l| l.contains("   events   "))
        .nth(1)
        .unwrap_or_else(|| panic!("no second status of events:\n{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[4..7], ["6B", "64KiB", "1"], "{row}");
    assert!(
        cells[8].starts_with("sleep[") && cells[8].ends_with("](r)"),
        "{row}"
    );
    assert!(
        stdout.contains(
            r#"ipclink_channel_queue_bytes{namespace="vision",link="frames",channel="events",kind="fifo",origin="declared"} 6"#
        ),
        "the README's promised line is missing:\n{stdout}"
    );
}
