//! docs/queue.md's shell block, as written (only the binary's and the queue's paths
//! substituted).

use ipclink_testkit::{doc_script, run_script};

#[test]
fn the_queue_page_block_runs_as_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let q = dir.path().join("demo-queue");
    let script = doc_script(
        "docs/queue.md",
        "queue-tool",
        &["cargo build"],
        &[
            (
                "target/debug/ipclink-queue",
                env!("CARGO_BIN_EXE_ipclink-queue"),
            ),
            ("/dev/shm/ipclink-demo-queue", q.to_str().expect("utf-8")),
        ],
    );
    let (stdout, _) = run_script("docs/queue.md", &script, &[]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "urgent (priority 7)", "{stdout}");
    assert!(
        lines[1].contains("waiting: 1") && lines[1].contains("sent: 2, received: 1"),
        "{stdout}"
    );
    assert!(!q.exists());
}
