//! The validator, case by case: every hostile spec is refused with an error that names
//! the field (and `load_plans`, which `up`, the volume plugin and the CSI node plugin
//! call, refuses it before anything is made), and the rules for names, modes and the
//! link's root. `sidecar/tests/hostile.rs` runs a few through `up` and `validate` to
//! prove the binary refuses them and creates nothing.

use ipclink_core::model::names::{check_dns_label, check_dns_subdomain};
use ipclink_core::model::spec::Mode;
use ipclink_core::model::validate::{
    RootPlan, SPARE_INODES, SPARE_INODES_CREATE, parse_mode, parse_socket_mode,
};
use ipclink_core::{LinkPlan, Problems, load_plans, validate};

const GOOD_CHANNELS: &str = r#"
  channels:
    - { name: frames, kind: shm, size: 1Mi }
    - { name: events, kind: fifo }
"#;

pub fn doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: {name}, namespace: demo }}\nspec:\n{spec}\n"
    )
}

/// (case, YAML, text the error must contain)
pub fn cases() -> Vec<(&'static str, String, &'static str)> {
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
            ch("{ name: x, kind: pipe }"),
            "unknown variant `pipe`",
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
            "queue without capacity",
            ch("{ name: jobs, kind: queue, messageSize: 64 }"),
            "spec.channels[0].capacity: is required for a queue channel",
        ),
        (
            "queue without messageSize",
            ch("{ name: jobs, kind: queue, capacity: 8 }"),
            "spec.channels[0].messageSize: is required for a queue channel",
        ),
        (
            "queue capacity 0",
            ch("{ name: jobs, kind: queue, capacity: 0, messageSize: 64 }"),
            "spec.channels[0].capacity: 0 is out of range; allowed 1 to 65536",
        ),
        (
            "queue capacity past Linux's",
            ch("{ name: jobs, kind: queue, capacity: 65537, messageSize: 64 }"),
            "spec.channels[0].capacity: 65537 is out of range",
        ),
        (
            "queue capacity negative",
            ch("{ name: jobs, kind: queue, capacity: -1, messageSize: 64 }"),
            "spec.channels[0].capacity: -1 is out of range",
        ),
        (
            "queue messageSize 0",
            ch("{ name: jobs, kind: queue, capacity: 8, messageSize: 0 }"),
            "spec.channels[0].messageSize",
        ),
        (
            "queue messageSize past 16Mi",
            ch(r#"{ name: jobs, kind: queue, capacity: 1, messageSize: "17Mi" }"#),
            "spec.channels[0].messageSize: 17825792 bytes is too large",
        ),
        (
            "queue messageSize not a size",
            ch(r#"{ name: jobs, kind: queue, capacity: 1, messageSize: lots }"#),
            "spec.channels[0].messageSize",
        ),
        (
            "queue with a size",
            ch(r#"{ name: jobs, kind: queue, capacity: 1, messageSize: 8, size: 1Mi }"#),
            "spec.channels[0].size: is allowed only for shm channels, not queue",
        ),
        (
            "capacity on a fifo",
            ch("{ name: jobs, kind: fifo, capacity: 8 }"),
            "spec.channels[0].capacity: is allowed only for queue channels, not fifo",
        ),
        (
            "messageSize on an shm channel",
            ch("{ name: jobs, kind: shm, size: 1Mi, messageSize: 8 }"),
            "spec.channels[0].messageSize: is allowed only for queue channels, not shm",
        ),
        (
            "queue past the sizeLimit",
            doc(
                "ok",
                "  sizeLimit: 1Mi\n  channels:\n    - { name: jobs, kind: queue, capacity: 1024, messageSize: 1Ki }\n",
            ),
            "spec.sizeLimit",
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

/// Each case is refused by `load_plans`, with an error that says what it must.
fn assert_refused(cases: Vec<(&'static str, String, &'static str)>) {
    for (case, yaml, expect) in cases {
        let problems = load_plans(&[("link.yaml".to_string(), yaml.clone())])
            .map(|_| ())
            .expect_err(case);
        let text = problems.to_string();
        assert!(
            text.contains(expect),
            "{case}: the error does not say {expect:?}:\n{text}"
        );
    }
}

#[test]
fn each_hostile_spec_is_refused_naming_its_field() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    assert_refused(cases);
}

/// (case, YAML, text the error must contain): the node scope and member roles.
pub fn scope_and_role_cases() -> Vec<(&'static str, String, &'static str)> {
    let members = |roles: &str| {
        format!(
            "  members:\n    - {{ name: agent, podSelector: {{ matchLabels: {{ app: agent }} }}{roles} }}\n    - {{ name: app, role: client, podSelector: {{ matchLabels: {{ app: app }} }} }}\n"
        )
    };
    let with = |extra: &str| doc("ok", &format!("{}{extra}", members("")));
    vec![
        (
            "unknown scope",
            doc("ok", "  scope: Cluster\n"),
            "unknown variant `Cluster`, expected `Link` or `Node`",
        ),
        (
            "lowercase scope",
            doc("ok", "  scope: node\n"),
            "unknown variant `node`",
        ),
        ("numeric scope", doc("ok", "  scope: 1\n"), "spec.scope"),
        ("list scope", doc("ok", "  scope: [Node]\n"), "spec.scope"),
        (
            "node scope with a claim",
            doc("ok", "  scope: Node\n  claim: {}\n"),
            "spec.claim: a node-scoped link",
        ),
        (
            "node scope with a named claim",
            doc("ok", "  scope: Node\n  claim: { storageClassName: fast }\n"),
            "spec.claim: a node-scoped link",
        ),
        (
            "unknown role",
            doc("ok", "  members:\n    - { name: a, role: admin }\n"),
            "unknown variant `admin`, expected `server` or `client`",
        ),
        (
            "capital role",
            doc("ok", "  members:\n    - { name: a, role: Server }\n"),
            "unknown variant `Server`",
        ),
        (
            "empty role",
            doc("ok", "  members:\n    - { name: a, role: \"\" }\n"),
            "unknown variant ``",
        ),
        (
            "list role",
            doc("ok", "  members:\n    - { name: a, role: [server] }\n"),
            "spec.members[0].role",
        ),
        (
            "role on a wrong field",
            doc("ok", "  members:\n    - { name: a, roles: server }\n"),
            "unknown field `roles`",
        ),
        (
            "client writes shm",
            with(
                "  channels:\n    - { name: frames, kind: shm, size: 1Mi, writers: [agent, app] }\n",
            ),
            "spec.channels[0].writers[1]: member \"app\" is a client",
        ),
        (
            "client writes a queue",
            with(
                "  channels:\n    - { name: jobs, kind: queue, capacity: 8, messageSize: 64, writers: [app] }\n",
            ),
            "spec.channels[0].writers[0]: member \"app\" is a client",
        ),
        (
            "client reads a queue",
            with(
                "  channels:\n    - { name: jobs, kind: queue, capacity: 8, messageSize: 64, readers: [app] }\n",
            ),
            "spec.channels[0].readers[0]: member \"app\" is a client",
        ),
        (
            "client binds in a socket channel",
            with(
                "  channels:\n    - { name: api, kind: socket, readers: [app], writers: [agent] }\n",
            ),
            "spec.channels[0].readers[0]: member \"app\" is a client (role: client), mounted read-only, so it cannot bind a socket in",
        ),
        (
            "only clients may create",
            doc(
                "ok",
                "  allowCreate: true\n  members:\n    - { name: app, role: client, podSelector: {} }\n",
            ),
            "spec.allowCreate: every member that selects pods is a client",
        ),
    ]
}

#[test]
fn each_hostile_scope_or_role_is_refused_naming_its_field() {
    let cases = scope_and_role_cases();
    assert!(cases.len() >= 15, "{} cases", cases.len());
    assert_refused(cases);
}

#[test]
fn roles_allow_what_a_read_only_mount_can_do() {
    use ipclink_core::model::roles::mounts_read_only;
    use std::collections::BTreeMap;
    let yaml = doc(
        "agent",
        "  scope: Node\n  allowCreate: true\n  members:\n    - { name: agent, role: server, podSelector: { matchLabels: { app: agent } } }\n    - { name: app, role: client, podSelector: { matchLabels: { tier: app } } }\n    - { name: tools, podSelector: { matchLabels: { app: tools } } }\n  channels:\n    - { name: api, kind: socket }\n    - { name: events, kind: fifo, writers: [app], readers: [agent] }\n    - { name: table, kind: shm, size: 1Mi, writers: [agent], readers: [app] }\n",
    );
    let links = ipclink_core::parse_links("link.yaml", &yaml).expect("parse");
    validate(&links[0]).expect("a client may read shm, write a FIFO and use sockets");
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(mounts_read_only(&links[0], &labels(&[("tier", "app")])));
    assert!(!mounts_read_only(&links[0], &labels(&[("app", "agent")])));
    assert!(!mounts_read_only(&links[0], &labels(&[("app", "tools")])));
    // A client that another member also selects gets that member's rights.
    assert!(!mounts_read_only(
        &links[0],
        &labels(&[("app", "agent"), ("tier", "app")])
    ));
    // No member selects it: not a member at all (the caller refuses it), not "read-only".
    assert!(!mounts_read_only(&links[0], &labels(&[("app", "other")])));
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = doc(
        "Bad_Name",
        "  sizeLimit: 0\n  owner: { uid: -1, gid: 4294967295 }\n  channels:\n    - { name: A, kind: fifo, mode: \"4777\" }\n  semaphores:\n    - { name: s, initial: -5 }\n",
    );
    let problems = load_plans(&[("many.yaml".to_string(), yaml)])
        .map(|_| ())
        .expect_err("invalid");
    let fields: Vec<&str> = problems.0.iter().map(|p| p.field.as_str()).collect();
    for field in [
        "metadata.name",
        "spec.sizeLimit",
        "spec.owner.uid",
        "spec.owner.gid",
        "spec.channels[0].name",
        "spec.channels[0].mode",
        "spec.semaphores[0].initial",
    ] {
        assert!(
            fields.iter().any(|f| f.ends_with(field)),
            "missing {field} in {fields:?}"
        );
    }
    assert_eq!(problems.0.len(), 7, "{problems}");
}

#[test]
fn dns_labels() {
    for ok in ["a", "frames", "a-1", &"a".repeat(63)] {
        assert!(check_dns_label(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "../x",
        "A",
        "a_b",
        "-a",
        "a-",
        "a.b",
        "a\0b",
        "é",
        &"a".repeat(64),
    ] {
        assert!(check_dns_label(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn dns_subdomains() {
    let fqdn = format!("{}.example.com", vec!["a".repeat(63); 3].join("."));
    assert_eq!(fqdn.len(), 203);
    let longest = format!("{}.{}", "b".repeat(49), fqdn);
    assert_eq!(longest.len(), 253);
    for ok in [
        "a",
        "node-1",
        "ip-10-0-1-23.us-west-2.compute.internal",
        &fqdn,
        &longest,
    ] {
        assert!(check_dns_subdomain(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "a..b",
        ".a",
        "a.",
        "a/b",
        "A.b",
        "a_b",
        "-a.b",
        "a.b-",
        "a.-b",
        "a\0b",
        &format!("c{longest}"),
    ] {
        let e = check_dns_subdomain(bad).expect_err(bad);
        assert!(e.contains("DNS subdomain"), "{e}");
    }
}

#[test]
fn modes() {
    assert_eq!(parse_mode(&Mode("0660".into())), Ok(0o660));
    assert_eq!(parse_mode(&Mode("660".into())), Ok(0o660));
    assert_eq!(parse_mode(&Mode("0o600".into())), Ok(0o600));
    for bad in ["4777", "2770", "1777", "0888", "rw-", "", "07777", "99999"] {
        assert!(parse_mode(&Mode(bad.into())).is_err(), "{bad}");
    }
    assert!(
        parse_mode(&Mode("4777".into()))
            .unwrap_err()
            .contains("setuid")
    );
    assert!(
        parse_mode(&Mode("1777".into()))
            .unwrap_err()
            .contains("sticky")
    );
    // Socket directories may be sticky, and nothing more.
    assert_eq!(parse_socket_mode(&Mode("1770".into())), Ok(0o1770));
    assert_eq!(parse_socket_mode(&Mode("0770".into())), Ok(0o770));
    for bad in ["3770", "5770", "4770", "2770"] {
        let e = parse_socket_mode(&Mode(bad.into())).unwrap_err();
        assert!(e.contains("setuid") || e.contains("setgid"), "{bad}: {e}");
    }
}

fn plan_of(spec: &str) -> Result<LinkPlan, Problems> {
    let yaml = format!(
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: link, namespace: test }}\nspec:\n{spec}"
    );
    let links = ipclink_core::parse_links("t", &yaml).expect("parse");
    validate(&links[0])
}

#[test]
fn allow_create_opens_the_root_and_root_mode_needs_it() {
    let closed = plan_of("  sizeLimit: 1Mi\n").expect("valid");
    assert_eq!(closed.root, RootPlan::default());
    assert!(!closed.root.allows_create());
    assert_eq!(closed.nr_inodes, SPARE_INODES);
    let open = plan_of("  allowCreate: true\n").expect("valid");
    assert_eq!((open.root.mode, open.root.gid), (0o1777, 0));
    assert!(open.root.allows_create());
    assert_eq!(open.nr_inodes, SPARE_INODES_CREATE);
    let group =
        plan_of("  allowCreate: true\n  rootMode: \"1770\"\n  owner: { uid: 1000, gid: 2000 }\n")
            .expect("valid");
    assert_eq!(
        (group.root.mode, group.root.uid, group.root.gid),
        (0o1770, 0, 2000)
    );
    for (spec, field, says) in [
        (
            "  rootMode: \"1777\"\n",
            "spec.rootMode",
            "only with allowCreate",
        ),
        (
            "  allowCreate: true\n  rootMode: \"0777\"\n",
            "spec.rootMode",
            "\"1777\"",
        ),
        (
            "  allowCreate: true\n  rootMode: \"1770\"\n",
            "spec.rootMode",
            "set spec.owner",
        ),
    ] {
        let problems = plan_of(spec).expect_err(spec).0;
        assert!(
            problems
                .iter()
                .any(|p| p.field == field && p.message.contains(says)),
            "{spec}: {problems:?}"
        );
    }
}

#[test]
fn a_queue_channel_plans_its_file_and_counts_against_the_size_limit() {
    let plan = plan_of(
        "  sizeLimit: 1Mi\n  channels:\n    - { name: jobs, kind: queue, capacity: 64, messageSize: 1Ki, mode: \"0660\" }\n",
    )
    .expect("valid");
    let o = &plan.objects[0];
    assert_eq!(o.file_name(), "mq.jobs");
    assert_eq!(o.kind.as_str(), "queue");
    let p = o.kind.queue_params().expect("a queue");
    assert_eq!((p.capacity, p.message_size), (64, 1024));
    // Header, member records and 64 slots of 40 + 1024 bytes in 64-byte lines.
    assert_eq!(p.file_size(), 12_288 + 64 * 1088);
    assert_eq!(
        plan.preallocated_bytes(),
        (12_288u64 + 64 * 1088).div_ceil(4096) * 4096
    );
}
