//! Hostile specs through the binary: `up` and `validate` refuse them with exit code 2, an
//! error that names the field, and nothing created on disk (not even the root
//! directory). The validator's cases, one by one, are in `core/tests/validate.rs`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, free_port, write_file};
use ipclink_testkit::KillOnDrop;

fn doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: {name}, namespace: demo }}\nspec:\n{spec}\n"
    )
}

/// (case, the YAML of each file, text the error must contain): one of each layer (a
/// field, the YAML, the set of files), and a good file before a bad one (`up` makes
/// nothing of the good one either). Every case of the validator is in
/// `core/tests/validate.rs`.
fn cases() -> Vec<(&'static str, Vec<String>, &'static str)> {
    vec![
        (
            "traversal name",
            vec![doc(
                "ok",
                "  channels:\n    - { name: \"../x\", kind: fifo }\n",
            )],
            "spec.channels[0].name",
        ),
        (
            "missing spec",
            vec!["apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: { name: a }\n".into()],
            "missing field `spec`",
        ),
        (
            "same link twice",
            vec![
                [
                    "  sizeLimit: 1Mi",
                    "  channels: [{ name: events, kind: fifo }]",
                ]
                .map(|spec| doc("ok", spec))
                .join("---\n"),
            ],
            "also defined",
        ),
        (
            "a good file, then a bad one",
            vec![
                doc("good", "  channels: [{ name: events, kind: fifo }]"),
                doc(
                    "bad",
                    "  channels:\n    - { name: x, kind: fifo, mode: \"4777\" }\n",
                ),
            ],
            "spec.channels[0].mode",
        ),
    ]
}

#[test]
fn up_refuses_each_hostile_spec_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (case, yamls, expect) in cases() {
        let files: Vec<_> = yamls
            .iter()
            .enumerate()
            .map(|(i, yaml)| write_file(dir.path(), &format!("link{i}.yaml"), yaml))
            .collect();
        let root = dir.path().join("root");
        // A spec wrongly accepted would leave `up` serving: bounded, it fails instead.
        let up = Command::new(BIN)
            .args(["up", "--listen"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--root")
            .arg(&root)
            .args(&files)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run up");
        let out = KillOnDrop(up).output_within(Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{case}: exit code; stderr:\n{err}"
        );
        assert!(
            err.contains(expect),
            "{case}: error does not say {expect:?}:\n{err}"
        );
        assert!(err.contains("nothing was changed"), "{case}:\n{err}");
        assert!(!root.exists(), "{case}: up created {}", root.display());

        let v = Command::new(BIN)
            .arg("validate")
            .args(&files)
            .output()
            .expect("run validate");
        assert_eq!(v.status.code(), Some(2), "{case}: validate exit code");
        assert!(
            String::from_utf8_lossy(&v.stderr).contains(expect),
            "{case}: validate output"
        );
    }
}

#[test]
fn validate_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = doc(
        "Bad_Name",
        "  sizeLimit: 0\n  owner: { uid: -1, gid: 4294967295 }\n  channels:\n    - { name: A, kind: fifo, mode: \"4777\" }\n  semaphores:\n    - { name: s, initial: -5 }\n",
    );
    let file = write_file(dir.path(), "many.yaml", &yaml);
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    // Each field is checked in core/tests/validate.rs; here, that the binary prints them.
    for field in ["metadata.name", "spec.semaphores[0].initial"] {
        assert!(err.contains(field), "missing {field} in:\n{err}");
    }
    assert!(err.contains("7 problem(s)"), "{err}");
}

#[test]
fn validate_accepts_the_examples() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local");
    for entry in std::fs::read_dir(&examples).expect("examples/local") {
        let path = entry.expect("entry").path();
        let out = Command::new(BIN)
            .arg("validate")
            .arg(&path)
            .output()
            .expect("run validate");
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
