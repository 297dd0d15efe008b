//! The operator section of docs/kubernetes.md, run as written against a real control plane (only the
//! binary's path and the metrics port are substituted; the cargo build line is left to
//! the test harness, which built the binary).

mod common;

use common::{OPERATOR, free_port};
use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::{doc_script, path_with, run_script};

#[test]
fn the_readme_operator_section_works_as_written() {
    let cp = ControlPlane::start();
    let port = free_port().to_string();
    let script = doc_script(
        "docs/kubernetes.md",
        "operator",
        &["cargo build"],
        &[
            ("target/release/ipclink-operator", OPERATOR),
            ("127.0.0.1:9810", &format!("127.0.0.1:{port}")),
        ],
    );
    let (stdout, stderr) = run_script(
        "docs/kubernetes.md: the operator",
        &script,
        &[
            ("PATH", &path_with(&[cp.bin_dir()])),
            ("KUBECONFIG", cp.kubeconfig.as_os_str()),
        ],
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
