//! Hostile specs: each is refused by `up` and `validate` with exit code 2, an error that
//! names the field, and nothing created on disk (not even the root directory).

mod common;

use std::process::Command;

use common::{BIN, free_port, write_file};

const GOOD_CHANNELS: &str = r#"
  channels:
    - { name: frames, kind: shm, size: 1Mi }
    - { name: events, kind: fifo }
"#;

fn doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: {name}, namespace: demo }}\nspec:\n{spec}\n"
    )
}

/// (case, YAML, text the error must contain)
fn cases() -> Vec<(&'static str, String, &'static str)> {
    let ch = |line: &str| doc("ok", &format!("  channels:\n    - {line}\n"));
    let sem = |line: &str| doc("ok", &format!("  semaphores:\n    - {line}\n"));
    vec![
        (
            "traversal name",
            ch(r#"{ name: "../x", kind: fifo }"#),
            "spec.channels[0].name",
        ),
        (
            "dot-dot name",
            ch(r#"{ name: "..", kind: fifo }"#),
            "spec.channels[0].name",
        ),
        (
            "slash name",
            ch(r#"{ name: "a/b", kind: fifo }"#),
            "spec.channels[0].name",
        ),
        (
            "absolute name",
            ch(r#"{ name: "/etc", kind: fifo }"#),
            "spec.channels[0].name",
        ),
        (
            "NUL in name",
            ch(r#"{ name: "a\0b", kind: fifo }"#),
            "spec.channels[0].name",
        ),
        (
            "uppercase name",
            ch("{ name: Frames, kind: fifo }"),
            "spec.channels[0].name",
        ),
        (
            "64-char name",
            ch(&format!("{{ name: {}, kind: fifo }}", "a".repeat(64))),
            "64 characters",
        ),
        (
            "traversal link name",
            doc("../etc", GOOD_CHANNELS),
            "metadata.name",
        ),
        (
            "bad namespace",
            doc("ok", GOOD_CHANNELS).replace("namespace: demo", "namespace: Demo_1"),
            "metadata.namespace",
        ),
        (
            "channel and semaphore share a name",
            doc(
                "ok",
                "  channels:\n    - { name: x, kind: fifo }\n  semaphores:\n    - { name: x }\n",
            ),
            "spec.semaphores[0].name",
        ),
        (
            "duplicate channel",
            doc(
                "ok",
                "  channels:\n    - { name: x, kind: fifo }\n    - { name: x, kind: socket }\n",
            ),
            "spec.channels[1].name",
        ),
        (
            "duplicate member",
            doc("ok", "  members: [{ name: a }, { name: a }]\n"),
            "spec.members[1].name",
        ),
        (
            "setuid mode",
            ch(r#"{ name: x, kind: fifo, mode: "4777" }"#),
            "setuid",
        ),
        (
            "sticky fifo",
            ch(r#"{ name: x, kind: fifo, mode: "1777" }"#),
            "the sticky bit only on socket channels",
        ),
        (
            "setgid socket directory",
            ch(r#"{ name: x, kind: socket, mode: "3770" }"#),
            "setgid",
        ),
        (
            "sticky semaphore",
            sem(r#"{ name: s, mode: "1660" }"#),
            "spec.semaphores[0].mode",
        ),
        (
            "huge mode",
            ch(r#"{ name: x, kind: fifo, mode: "77777" }"#),
            "spec.channels[0].mode",
        ),
        (
            "non-octal mode",
            ch(r#"{ name: x, kind: fifo, mode: "0888" }"#),
            "spec.channels[0].mode",
        ),
        (
            "unquoted mode",
            ch("{ name: x, kind: fifo, mode: 0660 }"),
            "quoted octal string",
        ),
        (
            "zero size",
            ch("{ name: x, kind: shm, size: 0 }"),
            "spec.channels[0].size",
        ),
        (
            "negative size",
            ch(r#"{ name: x, kind: shm, size: "-1Mi" }"#),
            "greater than 0",
        ),
        (
            "9Ei size",
            ch("{ name: x, kind: shm, size: 9Ei }"),
            "too large",
        ),
        (
            "size on a fifo",
            ch("{ name: x, kind: fifo, size: 1Mi }"),
            "only for shm",
        ),
        (
            "shm without size",
            ch("{ name: x, kind: shm }"),
            "is required",
        ),
        (
            "sum over limit",
            doc(
                "ok",
                "  sizeLimit: 1Mi\n  channels:\n    - { name: a, kind: shm, size: 1Mi }\n    - { name: b, kind: shm, size: 4Ki }\n",
            ),
            "spec.sizeLimit",
        ),
        (
            "bad sizeLimit",
            doc("ok", "  sizeLimit: lots\n"),
            "spec.sizeLimit",
        ),
        (
            "unknown kind",
            ch("{ name: x, kind: queue }"),
            "unknown variant `queue`",
        ),
        (
            "negative semaphore",
            sem("{ name: s, initial: -1 }"),
            "spec.semaphores[0].initial",
        ),
        (
            "semaphore over SEM_VALUE_MAX",
            sem("{ name: s, initial: 2147483648 }"),
            "SEM_VALUE_MAX",
        ),
        (
            "unknown abi",
            sem("{ name: s, abi: bionic }"),
            "unknown variant `bionic`",
        ),
        (
            "uid -1",
            doc("ok", "  owner: { uid: -1, gid: 0 }\n"),
            "spec.owner.uid",
        ),
        (
            "uid 4294967295",
            doc("ok", "  owner: { uid: 4294967295, gid: 0 }\n"),
            "spec.owner.uid",
        ),
        (
            "gid out of range on a channel",
            ch("{ name: x, kind: fifo, owner: { uid: 0, gid: 4294967295 } }"),
            "spec.channels[0].owner.gid",
        ),
        (
            "unknown spec field",
            doc("ok", "  sizelimit: 1Mi\n"),
            "unknown field `sizelimit`",
        ),
        (
            "unknown channel field",
            ch("{ name: x, kind: fifo, sise: 1 }"),
            "channels[0]",
        ),
        (
            "unknown top-level field",
            format!("{}extra: 1\n", doc("ok", GOOD_CHANNELS)),
            "unknown field `extra`",
        ),
        (
            "unknown reader",
            doc(
                "ok",
                "  members: [{ name: a }]\n  channels:\n    - { name: x, kind: fifo, readers: [b] }\n",
            ),
            "spec.channels[0].readers[0]",
        ),
        (
            "wrong apiVersion",
            doc("ok", GOOD_CHANNELS).replace("ipclink.dev/v1alpha1", "v1"),
            "apiVersion",
        ),
        (
            "wrong kind",
            doc("ok", GOOD_CHANNELS).replace("kind: IpcLink", "kind: Pod"),
            "kind",
        ),
        (
            "malformed YAML",
            "apiVersion: [unclosed\n".into(),
            "malformed YAML",
        ),
        (
            "missing spec",
            "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: { name: a }\n".into(),
            "missing field `spec`",
        ),
        (
            "same link twice",
            format!(
                "{}---\n{}",
                doc("ok", GOOD_CHANNELS),
                doc("ok", GOOD_CHANNELS)
            ),
            "also defined",
        ),
    ]
}

#[test]
fn up_refuses_each_hostile_spec_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (case, yaml, expect) in cases() {
        let file = write_file(dir.path(), "link.yaml", &yaml);
        let root = dir.path().join("root");
        let out = Command::new(BIN)
            .args(["up", "--listen"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--root")
            .arg(&root)
            .arg(&file)
            .output()
            .expect("run up");
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
            .arg(&file)
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
    for field in [
        "metadata.name",
        "spec.sizeLimit",
        "spec.owner.uid",
        "spec.owner.gid",
        "spec.channels[0].name",
        "spec.channels[0].mode",
        "spec.semaphores[0].initial",
    ] {
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
