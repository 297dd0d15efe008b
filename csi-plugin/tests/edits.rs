//! Editing a live IpcLink under a real kubelet (containerd, runc, CNI) while two member
//! pods (Python's stdlib, restricted) stream numbered lines through its FIFO and stamp
//! its region: `sizeLimit` up and down, a channel's mode, a channel added and one
//! removed are applied on the node without the exchange missing a line; a new member
//! sees the new form and gets ENOSPC past the smaller limit; a node plugin killed with
//! SIGKILL half-way through a change has it finished by the next one. A smaller region
//! and a channel of another kind wait (reported in `/v1/links` and as a metric) while
//! members hold the link, and are live for the member that comes after they have left.

mod common;

use std::time::{Duration, Instant};

use common::{Plugin, Unmounter, require_root};
use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::free_port;
use ipclink_testkit::http::{get, metric};
use ipclink_testkit::node::{Node, cluster};
use serde_json::{Value, json};

const NS: &str = "edits";
const LONG: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;
const LINKS: &str = "/apis/ipclink.dev/v1alpha1/namespaces/edits/ipclinks";

/// Writes numbered lines into the FIFO every 10 ms and stamps the region.
const PRODUCER: &str = r#"
import mmap, os, time
d = "/dev/shm"
fd = os.open(d + "/frames", os.O_RDWR)
region = mmap.mmap(fd, 4096)
n = 0
with open(d + "/events", "wb", buffering=0) as f:
    while True:
        n += 1
        f.write(b"%d\n" % n)
        region[:8] = n.to_bytes(8, "little")
        time.sleep(0.01)
"#;

/// Reads the lines, checks none is lost or reordered, says how far it got.
const CONSUMER: &str = r#"
import sys
with open("/dev/shm/events", "rb") as f:
    want = 1
    for line in f:
        if int(line) != want:
            print("GAP: got %s, wanted %d" % (line, want), flush=True)
            sys.exit(1)
        if want % 50 == 0:
            print("got %d" % want, flush=True)
        want += 1
"#;

/// What a member sees: the tmpfs size and every entry, with the mode it was declared
/// with (in a link members may write to, a declared object is root's and its owner's
/// bits are in its ACL, where `stat` shows the ACL mask as the group's bits: the
/// group's own come from the ACL); with "fill N", whether N more bytes fit.
const LOOK: &str = r#"
import errno, os, stat, struct, sys
d = "/dev/shm"
v = os.statvfs(d)
print("size", v.f_blocks * v.f_frsize)
def declared(path, st):
    mode = st.st_mode & 0o7777
    try:
        acl = os.getxattr(path, "system.posix_acl_access", follow_symlinks=False)
    except OSError:
        return mode
    for i in range(4, len(acl), 8):
        tag, perm, _ = struct.unpack("<HHI", acl[i:i + 8])
        if tag == 0x04:  # ACL_GROUP_OBJ
            mode = (mode & ~0o070) | (perm << 3)
    return mode
for n in sorted(os.listdir(d)):
    st = os.lstat(d + "/" + n)
    kind = "fifo" if stat.S_ISFIFO(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "file"
    print("entry", n, kind, "%04o" % declared(d + "/" + n, st), st.st_size)
if sys.argv[2:3] == ["fill"]:
    try:
        with open(d + "/scratch", "wb") as f:
            f.write(b"x" * int(sys.argv[3]))
        print("fill fits")
    except OSError as e:
        print("fill", errno.errorcode[e.errno])
    finally:
        try:
            os.unlink(d + "/scratch")
        except OSError:
            pass
print("done", flush=True)
"#;

fn member(name: &str, script: &str, args: &[&str]) -> String {
    let mut command = vec!["/usr/bin/python3", "-c", script, name];
    command.extend_from_slice(args);
    ipclink_testkit::pods::pod(name, name)
        .runs("localhost/ipclink/python:0.1.0", &[])
        .command(&command)
        .run_as(1000, Some(1000))
        .restricted()
        .inline_link("live")
        .json()
}

fn channel(name: &str, kind: &str, extra: Value) -> Value {
    let mut c = json!({"name": name, "kind": kind, "mode": "0660"});
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

/// The link's spec with `size_limit` and `channels`.
fn spec(size_limit: &str, channels: Vec<Value>) -> Value {
    json!({
        "sizeLimit": size_limit,
        "owner": {"uid": 1000, "gid": 1000},
        "allowCreate": true,
        "members": [{"name": "all", "podSelector": {}}],
        "channels": channels,
    })
}

fn patch(cp: &ControlPlane, spec: &Value) {
    let (code, text) = cp
        .request(
            "PATCH",
            &format!("{LINKS}/live"),
            Some(&json!({ "spec": spec }).to_string()),
        )
        .expect("patch");
    assert_eq!(code, 200, "{text}");
}

/// The link as the node plugin reports it on `/v1/links`.
fn reported(port: u16) -> Value {
    let (code, body) = get(port, "/v1/links");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "live").cloned())
        .unwrap_or(Value::Null)
}

fn wait_reported(port: u16, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = reported(port);
        if ok(&v) {
            return v;
        }
        assert!(start.elapsed() < LONG, "{what}: not reported; last:\n{v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn channel_of<'v>(link: &'v Value, name: &str) -> Option<&'v Value> {
    link["channels"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// The last line count the consumer reported.
fn received(node: &Node) -> u64 {
    let log = node.container_log(NS, "consumer", "main");
    assert!(!log.contains("GAP"), "{log}");
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("got ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Asserts the exchange goes on: 100 more lines within a minute.
fn flowing(node: &Node, when: &str) {
    let before = received(node);
    let start = Instant::now();
    while received(node) < before + 100 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{when}: the exchange stopped at line {before}\n{}",
            node.container_log(NS, "producer", "main")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs a pod that looks at the link and returns its output.
fn look(cp: &ControlPlane, node: &Node, name: &str, args: &[&str]) -> String {
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    cp.create(&pods, &member(name, LOOK, args));
    let v = cp.wait_for(&format!("{pods}/{name}"), "looked", LONG, |v| {
        matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    });
    let log = node.container_log(NS, name, "main");
    assert_eq!(v["status"]["phase"], "Succeeded", "{name}: {log}");
    log
}

#[test]
fn edits_apply_on_the_node_while_members_exchange_data() {
    require_root();
    let (cp, node) = cluster(NS, &["python"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let args = [
        "--metrics-listen",
        &metrics,
        "--apply-interval-seconds",
        "1",
    ];
    let (mut plugin, _) = Plugin::start_registered(dir.path(), &cp, &node, &args, LONG);

    let events = channel("events", "fifo", json!({}));
    let frames = channel("frames", "shm", json!({"size": "1Mi"}));
    let spare = channel("spare", "fifo", json!({}));
    cp.create(
        LINKS,
        &ipclink_testkit::pods::link(
            NS,
            "live",
            spec("4Mi", vec![events.clone(), frames.clone(), spare.clone()]),
        ),
    );
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    cp.create(&pods, &member("consumer", CONSUMER, &[]));
    cp.create(&pods, &member("producer", PRODUCER, &[]));
    flowing(&node, "at start");

    // sizeLimit up.
    patch(
        &cp,
        &spec("8Mi", vec![events.clone(), frames.clone(), spare.clone()]),
    );
    wait_reported(port, "8Mi", |l| l["limitBytes"] == 8 * MIB);
    flowing(&node, "after sizeLimit 4Mi -> 8Mi");
    // A channel's mode.
    let frames_0640 = channel("frames", "shm", json!({"size": "1Mi", "mode": "0640"}));
    patch(
        &cp,
        &spec(
            "8Mi",
            vec![events.clone(), frames_0640.clone(), spare.clone()],
        ),
    );
    wait_reported(port, "frames 0640", |l| {
        channel_of(l, "frames").is_some_and(|c| c["mode"] == "0640")
    });
    flowing(&node, "after a mode change");

    // A channel added and one removed, by a node plugin killed after the first of the
    // two steps: the next one finishes the change.
    plugin.kill9();
    let mut dying = Plugin::start_with(
        "node",
        dir.path(),
        &[
            &args[..],
            &[
                "--registration-dir",
                node.registration_dir().to_str().expect("utf-8"),
            ],
        ]
        .concat(),
        &[
            ("KUBECONFIG", cp.kubeconfig.as_os_str()),
            ("IPCLINK_FAULT", std::ffi::OsStr::new("kill-after-steps=1")),
        ],
    );
    let alerts = channel("alerts", "fifo", json!({"mode": "0620"}));
    let edited = vec![events.clone(), frames_0640.clone(), alerts.clone()];
    patch(&cp, &spec("8Mi", edited.clone()));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(dying.wait_exit(LONG).signal(), Some(9), "{}", dying.log());
    flowing(&node, "with the node plugin killed half-way");
    let (plugin, _) = Plugin::start_registered(dir.path(), &cp, &node, &args, LONG);
    let l = wait_reported(port, "alerts added, spare removed", |l| {
        channel_of(l, "alerts").is_some() && channel_of(l, "spare").is_none()
    });
    assert_eq!(channel_of(&l, "alerts").expect("alerts")["mode"], "0620");
    flowing(&node, "after adding and removing channels");

    // sizeLimit down, within what is used.
    patch(&cp, &spec("3Mi", edited.clone()));
    wait_reported(port, "3Mi", |l| l["limitBytes"] == 3 * MIB);
    flowing(&node, "after sizeLimit 8Mi -> 3Mi");

    // A new member sees the new form; 3 MiB more do not fit.
    let seen = look(&cp, &node, "newcomer", &["fill", &(3 * MIB).to_string()]);
    assert!(seen.contains(&format!("size {}", 3 * MIB)), "{seen}");
    assert!(seen.contains("entry alerts fifo 0620"), "{seen}");
    assert!(seen.contains("entry frames file 0640 1048576"), "{seen}");
    assert!(!seen.contains("entry spare"), "{seen}");
    assert!(seen.contains("fill ENOSPC"), "{seen}");
    flowing(&node, "after a member hit ENOSPC");

    // A smaller region and a FIFO become a socket directory: both wait.
    let waiting = vec![
        channel("events", "socket", json!({"mode": "0770"})),
        channel("frames", "shm", json!({"size": "512Ki", "mode": "0640"})),
        alerts.clone(),
    ];
    patch(&cp, &spec("3Mi", waiting));
    let l = wait_reported(port, "two pending changes", |l| {
        l["pending"].as_array().is_some_and(|p| p.len() == 2)
    });
    let fields: Vec<&str> = l["pending"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        ["spec.channels[0].kind", "spec.channels[1].size"],
        "{l:#}"
    );
    let (_, body) = get(port, "/metrics");
    assert_eq!(
        metric(&body, "ipclink_link_pending_changes", &[("link", "live")]),
        Some(2.0),
        "{body}"
    );
    let seen = look(&cp, &node, "second", &[]);
    assert!(seen.contains("entry events fifo"), "{seen}");
    assert!(seen.contains("entry frames file 0640 1048576"), "{seen}");
    flowing(&node, "with changes pending");
    assert!(received(&node) >= 500);

    // Every member leaves; the next member's publish makes the changes, charged to
    // it, before it sees the link (an idle link has no member pod to charge).
    for pod in ["producer", "consumer", "newcomer", "second"] {
        cp.delete_pod(NS, pod, LONG);
    }
    // The kubelet unmounts a deleted pod's volumes after the pod is gone from the API:
    // wait until no publication of the link is mounted on the node.
    let start = Instant::now();
    loop {
        let published: Vec<String> = node
            .mount_points()
            .into_iter()
            .filter(|m| m.contains("kubernetes.io~csi"))
            .collect();
        if published.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < LONG,
            "members still published: {published:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = look(&cp, &node, "returner", &[]);
    wait_reported(port, "nothing pending", |l| {
        l["pending"].is_null()
            && channel_of(l, "frames").is_some_and(|c| c["capacityBytes"] == 512 * 1024)
    });
    assert!(seen.contains("entry events dir 0770"), "{seen}");
    assert!(seen.contains("entry frames file 0640 524288"), "{seen}");
    let (_, body) = get(port, "/metrics");
    assert_eq!(
        metric(&body, "ipclink_link_pending_changes", &[("link", "live")]),
        Some(0.0),
        "{body}"
    );
    assert!(
        plugin.log().contains("live link changed"),
        "{}",
        plugin.log()
    );
}
