//! The README's quick start and walk-through, and the endpoints of docs/metrics.md, run as
//! written against `up` on the example link (only the root directory, the port and the
//! binary's path are substituted); then Ctrl-C (SIGINT) tears the link down.

mod common;

use std::path::Path;

use common::{BIN, Sidecar};
use ipclink_testkit::{doc_block, doc_script, require_root, run_script};

#[test]
fn the_readme_walkthrough_works_as_written() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("run-ipclink");
    // The quick start's main job, with the binary it builds.
    let main_job = doc_block("README.md", "quickstart");
    let args = main_job
        .lines()
        .next()
        .and_then(|l| l.split('#').next())
        .and_then(|l| {
            l.trim()
                .strip_prefix("cargo run --release -p ipclink-sidecar -- ")
        })
        .unwrap_or_else(|| {
            panic!("the quick start's first line is not `cargo run … -- up`:\n{main_job}")
        });
    let [command, file] = args.split_whitespace().collect::<Vec<_>>()[..] else {
        panic!("the quick start runs more than `up FILE`: {args}");
    };
    assert_eq!(command, "up", "{args}");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let mut sidecar = Sidecar::up(&root, &[&example], &[]);
    let script = doc_script(
        "README.md",
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
    assert_eq!(cells[4..8], ["6B", "64KiB", "1", "0"], "{row}");
    assert!(
        cells[8].starts_with("sleep[") && cells[8].ends_with("](r)"),
        "{row}"
    );
    assert_eq!(cells[9..], ["0:0", "0660"], "{row}");
    // Under the table: the link's usage against its sizeLimit (16Mi).
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("vision/frames: ") && l.ends_with(" of 16MiB used")),
        "no usage line:\n{stdout}"
    );
    assert!(
        stdout.contains(
            r#"ipclink_channel_queue_bytes{namespace="vision",link="frames",channel="events",kind="fifo",origin="declared"} 6"#
        ),
        "the README's promised line is missing:\n{stdout}"
    );

    // docs/metrics.md: the link report, as JSON from the endpoint and from `status`.
    let script = doc_script(
        "docs/metrics.md",
        "endpoints",
        &[],
        &[
            ("target/release/ipclink-sidecar", BIN),
            (
                "status --json",
                &format!("status --json --root {}", root.display()),
            ),
            ("127.0.0.1:9464", &format!("127.0.0.1:{}", sidecar.port)),
        ],
    );
    // The root goes on the one line that reads the links here: with IPCLINK_ROOT set,
    // `status --endpoint` refuses to run (the two conflict).
    let (stdout, _) = run_script("docs/metrics.md endpoints", &script, &[]);
    assert_eq!(
        stdout
            .replace("\": ", "\":")
            .matches(r#""namespace":"vision""#)
            .count(),
        2,
        "the endpoint and status --json each report the link once:\n{stdout}"
    );
    assert!(
        stdout.contains("vision/frames   events"),
        "status --endpoint prints the table:\n{stdout}"
    );

    // The quick start: Ctrl-C tears the link down.
    let link = root.join("vision/frames");
    assert!(link.join("events").exists());
    let status = sidecar.interrupt();
    assert!(status.success(), "{status:?}\n{}", sidecar.log());
    assert!(!link.exists(), "{} left after Ctrl-C", link.display());
}
