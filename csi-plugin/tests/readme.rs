//! The CSI section of docs/kubernetes.md, run as written (only /tmp/ipclink and the binary's path are
//! substituted; the cargo build line is left to the test harness, which built it).

mod common;

use common::{BIN, Unmounter, require_root};
use ipclink_testkit::{doc_script, run_script};

#[test]
fn the_readme_csi_section_works_as_written() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let script = doc_script(
        "docs/kubernetes.md",
        "csi",
        &["cargo build"],
        &[
            ("target/release/ipclink-csi", BIN),
            ("/tmp/ipclink", dir.path().to_str().expect("utf-8")),
        ],
    );
    let (stdout, _) = run_script("docs/kubernetes.md: the CSI driver", &script, &[]);
    assert!(stdout.contains("SUCCESS!"), "{stdout}");
}
