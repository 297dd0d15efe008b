//! The README's operator section, run as written against a real control plane (only the
//! binary's path and the metrics port are substituted; the cargo build line is left to
//! the test harness, which built the binary).

mod common;

use std::path::Path;
use std::process::Command;

use common::{OPERATOR, free_port};
use ipclink_e2e::control_plane::ControlPlane;

#[test]
fn the_readme_operator_section_works_as_written() {
    let cp = ControlPlane::start();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let block = ipclink_e2e::readme_block("operator");
    let port = free_port().to_string();
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("target/release/ipclink-operator", OPERATOR)
        .replace("127.0.0.1:9810", &format!("127.0.0.1:{port}"));
    let path = format!(
        "{}:{}",
        cp.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&root)
        .env("PATH", path)
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "README operator section failed:\n{script}\n{stdout}\n{stderr}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("frames "))
        .unwrap_or_else(|| panic!("no frames row in `kubectl get ipcl`:\n{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // NAME PHASE NODE CHANNELS MEMBERS AGE; no pods yet, so the node cell is empty.
    assert_eq!(cells.len(), 5, "{stdout}");
    assert_eq!(&cells[..4], ["frames", "Pending", "5", "0"], "{stdout}");
    assert!(
        stdout.contains(r#"ipclink_links{phase="Pending"} 1"#),
        "{stdout}"
    );
    assert!(stderr.contains("stopped"), "graceful stop:\n{stderr}");
}
