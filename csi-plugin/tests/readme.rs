//! The README's CSI section, run as written (only /tmp/ipclink and the binary's path are
//! substituted; the cargo build line is left to the test harness, which built it).

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Unmounter, require_root};

#[test]
fn the_readme_csi_section_works_as_written() {
    require_root();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let block = ipclink_e2e::readme_block("csi");
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("target/release/ipclink-csi", BIN)
        .replace("/tmp/ipclink", dir.path().to_str().expect("utf-8"));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&root)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README CSI section failed:\n{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SUCCESS!"), "{stdout}");
}
