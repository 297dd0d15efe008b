//! A tenant abusing the node through a real kubelet (containerd, runc, CNI), while
//! another tenant uses the same node: one namespace's member pods build a tree as deep
//! as their link's inodes allow under a socket channel, 1,000 FIFOs eight directories
//! deep with 255-byte names and names full of terminal escapes, hold a million
//! duplicated descriptors of a FIFO, and a plain pod floods the node plugin's metrics
//! port with 400 KB tokens; then the link is edited so the deep tree goes. Meanwhile the
//! other namespace's pods are published one after the other and its metrics keep
//! flowing. The node plugin never restarts, its memory stays within 64 MiB, every
//! publish of the innocent tenant succeeds, its holders stay known, and the abuser's
//! are unknown, never wrong.

mod common;

use std::time::{Duration, Instant};

use common::{Plugin, Unmounter, require_root};
use ipclink_testkit::free_port;
use ipclink_testkit::http::{curl, peak_rss_bytes, rss_bytes};
use ipclink_testkit::node::cluster;
use serde_json::{Value, json};

const EVIL: &str = "evil";
const GOOD: &str = "good";
const LONG: Duration = Duration::from_secs(240);
const SOCKETS: usize = 100;

/// Builds, in this order: 1,000 FIFOs eight levels deep with 255-byte names, FIFOs whose
/// names carry escapes and newlines, then a chain of directories under socket channel
/// c0 as deep as the link's inodes go.
const TREES: &str = r#"
import errno, os, sys, time
d = "/dev/shm"
made = 0
for i in range(1000):
    path = d
    for level in range(8):
        path = os.path.join(path, (str(level) + chr(ord("a") + i % 26) * 255)[:255])
        os.makedirs(path, exist_ok=True)
    os.mkfifo(os.path.join(path, ("%04d" % i + "f" * 255)[:255]))
    made += 1
for evil in ["evil\n\"x\" \x1b[2J\x1b]0;pwned\x07\x1b[31mRED", "fake\nevil   hostile   frames   shm   -   16.0MiB", "rlo\u202egnp.exe"]:
    os.mkfifo(os.path.join(d, evil))
os.chdir(d + "/c0")
depth = 0
while True:
    try:
        os.mkdir("d")
    except OSError as e:
        if e.errno != errno.ENOSPC: raise
        break
    os.chdir("d"); depth += 1
print("built %d fifos, depth %d" % (made, depth), flush=True)
time.sleep(3600)
"#;

/// A million duplicates of the read end of `events`, in as many processes as the
/// descriptor limit needs (each as many as its limit allows).
const DUPS: &str = r#"
import os, resource, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
per = max(hard - 64, 1)
workers = (1000000 + per - 1) // per
r, w = os.pipe()
for _ in range(workers):
    if os.fork() == 0:
        fd = os.open("/dev/shm/events", os.O_RDONLY | os.O_NONBLOCK)
        held = []
        try:
            while len(held) < per:
                held.append(os.dup(fd))
        except OSError:
            pass
        os.write(w, b"%d\n" % len(held))
        time.sleep(3600)
        os._exit(0)
total = 0
with os.fdopen(r) as f:
    for _ in range(workers):
        total += int(f.readline())
print("holding %d descriptors in %d processes" % (total, workers), flush=True)
time.sleep(3600)
"#;

/// From a plain pod: 2,000 requests, each with a new 400 KB bearer token, to the node
/// plugin's metrics port on the node (the pod's default gateway), 16 at a time.
const FLOOD: &str = r#"
import socket, ssl, struct, sys, threading
port = int(sys.argv[2])
with open("/proc/net/route") as f:
    for line in f.readlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            gateway = socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
counts, lock, left = {}, threading.Lock(), [2000]
def work():
    while True:
        with lock:
            if left[0] == 0: return
            left[0] -= 1
            n = left[0]
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + (b"%08d" % n) + b"A" * 399992 + b"\r\n\r\n"
        code = "0"
        try:
            with socket.create_connection((gateway, port), timeout=30) as raw, ctx.wrap_socket(raw) as s:
                try: s.sendall(head)
                except OSError: pass
                answer = s.recv(64)
                if answer.startswith(b"HTTP/1.1 "): code = answer.split(b" ")[1].decode()
        except OSError:
            pass
        with lock: counts[code] = counts.get(code, 0) + 1
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print("flooded", sorted(counts.items()), flush=True)
"#;

/// Holds the innocent tenant's region open, until killed.
const CALM: &str = r#"
import os, time
fd = os.open("/dev/shm/frames", os.O_RDWR)
print("holding", flush=True)
time.sleep(3600)
"#;

fn python_pod(ns: &str, name: &str, script: &str, link: Option<&str>, args: &[&str]) -> String {
    let mut command = vec!["/usr/bin/python3", "-c", script, name];
    command.extend_from_slice(args);
    let pod = ipclink_testkit::pods::pod(name, name)
        .namespace(ns)
        .runs("localhost/ipclink/python:0.1.0", &[])
        .command(&command)
        .run_as(1000, Some(1000))
        .restricted();
    match link {
        Some(l) => pod.inline_link(l).json(),
        None => pod.json(),
    }
}

fn pods(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods")
}

fn hostile_spec(sockets: usize) -> Value {
    let mut channels = vec![json!({"name": "events", "kind": "fifo", "mode": "0666"})];
    channels.extend(
        (0..sockets).map(|i| json!({"name": format!("c{i}"), "kind": "socket", "mode": "1777"})),
    );
    json!({
        "sizeLimit": "16Mi",
        "owner": {"uid": 1000, "gid": 1000},
        "allowCreate": true,
        "members": [{"name": "all", "podSelector": {}}],
        "channels": channels,
    })
}

/// The innocent tenant's link as the node plugin reports it, and whether the whole
/// scrape answered.
fn scrape(port: u16, token: &str) -> (u16, String) {
    curl(
        &format!("https://127.0.0.1:{port}/metrics"),
        &[format!("Authorization: Bearer {token}")],
    )
}

#[test]
fn one_tenants_abuse_neither_crashes_the_node_plugin_nor_stops_another_tenant() {
    require_root();
    let (cp, node) = cluster(EVIL, &["python"]);
    cp.namespace(GOOD);
    let reader = cp.metrics_reader("default", "prometheus");

    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let port = free_port();
    // On every address: the flooding pod reaches it through its gateway, the node.
    let metrics = format!("0.0.0.0:{port}");
    let (plugin, _) = Plugin::start_registered(
        dir.path(),
        &cp,
        &node,
        &[
            "--metrics-listen",
            &metrics,
            "--metrics-auth",
            "kubernetes",
            "--apply-interval-seconds",
            "1",
        ],
        LONG,
    );
    let pid = plugin.pid().expect("running");
    let links = |ns: &str| format!("/apis/ipclink.dev/v1alpha1/namespaces/{ns}/ipclinks");
    cp.create(
        &links(EVIL),
        &ipclink_testkit::pods::link(EVIL, "hostile", hostile_spec(SOCKETS)),
    );
    cp.create(
        &links(GOOD),
        &ipclink_testkit::pods::link(
            GOOD,
            "calm",
            json!({
                "sizeLimit": "4Mi",
                "owner": {"uid": 1000, "gid": 1000},
                "members": [{"name": "all", "podSelector": {}}],
                "channels": [
                    {"name": "frames", "kind": "shm", "size": "1Mi", "mode": "0660"},
                    {"name": "events", "kind": "fifo", "mode": "0660"},
                ],
            }),
        ),
    );
    // The innocent tenant's first member, holding its region throughout.
    cp.create(
        &pods(GOOD),
        &python_pod(GOOD, "keeper", CALM, Some("calm"), &[]),
    );
    node.wait_log(GOOD, "keeper", "holding", LONG);

    // The abuse, all at once.
    cp.create(
        &pods(EVIL),
        &python_pod(EVIL, "trees", TREES, Some("hostile"), &[]),
    );
    cp.create(
        &pods(EVIL),
        &python_pod(EVIL, "dups", DUPS, Some("hostile"), &[]),
    );
    let port_arg = port.to_string();
    cp.create(
        &pods(EVIL),
        &python_pod(EVIL, "flooder", FLOOD, None, &[&port_arg]),
    );

    // Meanwhile: the innocent tenant's pods come and go, and its metrics are read.
    let mut scrapes = 0;
    let mut good_series = 0;
    for i in 0..5 {
        let name = format!("member-{i}");
        cp.create(
            &pods(GOOD),
            &python_pod(GOOD, &name, CALM, Some("calm"), &[]),
        );
        node.wait_log(GOOD, &name, "holding", LONG);
        let (code, body) = scrape(port, &reader);
        assert_eq!(code, 200, "scrape {i}: {body}");
        scrapes += 1;
        if body.contains(r#"ipclink_channel_present{namespace="good",link="calm",channel="frames""#)
        {
            good_series += 1;
        }
        cp.delete_pod(GOOD, &name, LONG);
    }
    assert_eq!(
        good_series, scrapes,
        "the innocent tenant's series went missing"
    );

    let built = node.wait_log(EVIL, "trees", "built", LONG);
    let held = node.wait_log(EVIL, "dups", "holding", LONG);
    let flooded = node.wait_log(EVIL, "flooder", "flooded", LONG);
    eprintln!("{}\n{}\n{}", built.trim(), held.trim(), flooded.trim());
    assert!(built.contains("built 1000 fifos"), "{built}");
    // The tokens reached the plugin (answered 431) and none was let through or
    // reviewed (401 follows a review).
    assert!(flooded.contains("('431', "), "{flooded}");
    assert!(
        !flooded.contains("'200'") && !flooded.contains("'401'"),
        "{flooded}"
    );
    let total: u64 = held
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(total >= 1_000_000, "{held}");

    // Who holds what: the abuser's holders are unknown (past a scan's bound), the
    // innocent tenant's known, with its keeper.
    let (code, body) = curl(
        &format!("https://127.0.0.1:{port}/v1/links"),
        &[format!("Authorization: Bearer {reader}")],
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let link = |ns: &str| {
        v["links"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["namespace"] == ns).cloned())
            .unwrap_or(Value::Null)
    };
    let (evil, good) = (link(EVIL), link(GOOD));
    assert_eq!(good["holdersKnown"], true, "{good:#}");
    let frames = good["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "frames"))
        .expect("frames");
    assert!(
        frames["holders"].as_array().is_some_and(|h| !h.is_empty()),
        "{frames:#}"
    );
    assert_eq!(
        evil["holdersKnown"], false,
        "a million descriptors were read: {evil:#}"
    );
    assert!(body.len() < 1 << 20, "/v1/links is {} bytes", body.len());
    // Names a member chose are data, escaped where they are shown.
    assert!(!body.contains('\u{1b}'), "an escape in the JSON text");

    // The edit that removes the socket channels, c0 and its deep tree with them.
    let (code, text) = cp
        .request(
            "PATCH",
            &format!("{}/hostile", links(EVIL)),
            Some(&json!({"spec": hostile_spec(0)}).to_string()),
        )
        .expect("patch");
    assert_eq!(code, 200, "{text}");
    let start = Instant::now();
    let link_dir = dir.path().join("node-state/links/evil/hostile");
    while link_dir.join("c0").exists() {
        assert!(
            start.elapsed() < LONG,
            "the edit was not applied:\n{}",
            plugin.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // One more innocent publish after all of it.
    cp.create(
        &pods(GOOD),
        &python_pod(GOOD, "after", CALM, Some("calm"), &[]),
    );
    node.wait_log(GOOD, "after", "holding", LONG);
    let (code, body) = scrape(port, &reader);
    assert_eq!(code, 200, "{body}");

    assert_eq!(
        plugin.pid(),
        Some(pid),
        "the node plugin restarted:\n{}",
        plugin.log()
    );
    let rss = rss_bytes(pid).expect("running");
    let peak = peak_rss_bytes(pid).expect("running");
    eprintln!("node plugin RSS {} KiB, peak {} KiB", rss >> 10, peak >> 10);
    assert!(
        peak <= 64 << 20,
        "the node plugin's memory peaked at {peak} bytes"
    );
}
