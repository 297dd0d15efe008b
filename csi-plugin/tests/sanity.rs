//! csi-sanity (kubernetes-csi/csi-test v5, built by scripts/install-csi-sanity) against the
//! real node and controller binaries. Skips are only those csi-sanity makes for
//! capabilities the driver does not advertise.

mod common;

use std::process::Command;

use common::{Plugin, require_root, sanity_dir};

#[test]
fn csi_sanity_passes() {
    require_root();
    let sanity = ipclink_testkit::script_path("install-csi-sanity");

    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = common::Unmounter(dir.path().to_path_buf());
    let links = sanity_dir().join("links");
    let node = Plugin::start("node", dir.path(), &links, &[]);
    let controller = Plugin::start("controller", dir.path(), &links, &[]);
    let out = Command::new(&sanity)
        .arg(format!("--csi.endpoint=unix://{}", node.socket.display()))
        .arg(format!(
            "--csi.controllerendpoint=unix://{}",
            controller.socket.display()
        ))
        .arg(format!(
            "--csi.testvolumeparameters={}",
            sanity_dir().join("params.yaml").display()
        ))
        .arg("--csi.testvolumesize=1048576")
        .arg(format!(
            "--csi.mountdir={}",
            dir.path().join("mnt").display()
        ))
        .arg(format!(
            "--csi.stagingdir={}",
            dir.path().join("stage").display()
        ))
        .arg("--ginkgo.no-color")
        .output()
        .expect("run csi-sanity");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "csi-sanity failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("| 0 Failed |"), "{text}");
    let passed: u32 = text
        .split(" Passed")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 32,
        "fewer csi-sanity specs ran than before ({passed}):\n{text}"
    );
}
