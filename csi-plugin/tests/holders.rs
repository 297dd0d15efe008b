//! What the node plugin sees inside member pods, through a real kubelet (containerd,
//! runc, CNI: each pod has its own network and pid namespaces): Python's stdlib in two
//! restricted pods. A consumer started before its producer waits in the FIFO's open()
//! through 100 scrapes and then receives every byte; a listener bound in the consumer's
//! network namespace shows the 3 connections waiting in accept(); each object names its
//! holders by pod (the consumer maps the region and closes the descriptor); and the
//! consumer is gone from the holders at the first scrape after its pod is.

mod common;

use std::time::Duration;

use common::{Plugin, Unmounter, require_root};
use ipclink_testkit::free_port;
use ipclink_testkit::http::{get, metric, promtool_check};
use ipclink_testkit::node::cluster;
use serde_json::json;

const NS: &str = "holders";
const LONG: Duration = Duration::from_secs(120);
/// Bytes the producer sends: several times a pipe's 64 KiB.
const PAYLOAD: usize = 300_000;

/// The consumer: maps the region and closes its descriptor, listens on the socket
/// channel without accepting, then opens the FIFO (blocking until a writer comes) and
/// checks every byte.
const CONSUMER: &str = r#"
import ctypes, os, socket, sys, time
d = "/dev/shm"
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(d + "/frames", os.O_RDONLY)
addr = libc.mmap(None, 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
if addr in (None, ctypes.c_void_p(-1).value):
    sys.exit("mmap: errno %d" % ctypes.get_errno())
os.close(fd)
server = socket.socket(socket.AF_UNIX)
server.bind(d + "/rpc/server.sock")
server.listen(8)
print("listening, opening the fifo", flush=True)
with open(d + "/events", "rb") as f:
    print("opened", flush=True)
    got = f.read(int(sys.argv[2]))
want = bytes(i % 251 for i in range(int(sys.argv[2])))
print("got %d bytes, %s" % (len(got), "intact" if got == want else "CORRUPT"), flush=True)
reader = open(d + "/events", "rb")  # holds the read end again, for the holders
time.sleep(3600)
"#;

/// The producer: three connections to the consumer's socket that it never accepts, the
/// region mapped for writing, then every byte into the FIFO, whose write end it keeps.
const PRODUCER: &str = r#"
import mmap, os, socket, sys, time
d = "/dev/shm"
clients = []
for _ in range(3):
    c = socket.socket(socket.AF_UNIX)
    c.connect(d + "/rpc/server.sock")
    clients.append(c)
fd = os.open(d + "/frames", os.O_RDWR)
region = mmap.mmap(fd, 4096)
region[:5] = b"hello"
data = bytes(i % 251 for i in range(int(sys.argv[2])))
with open(d + "/events", "wb", buffering=0) as f:
    view = memoryview(data)
    while view:
        view = view[f.write(view):]
    print("wrote", len(data), flush=True)
    time.sleep(3600)
"#;

fn member(name: &str, script: &str) -> String {
    ipclink_testkit::pods::pod(name, name)
        .runs("localhost/ipclink/python:0.1.0", &[])
        .command(&[
            "/usr/bin/python3",
            "-c",
            script,
            &format!("ipclink-holders-{name}"),
            &PAYLOAD.to_string(),
        ])
        .run_as(1000, Some(1000))
        .restricted()
        .inline_link("obs")
        .json()
}

/// The pid of the process whose command line has `marker`, as the host sees it.
fn pid_of(marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.split('\0').any(|a| a == marker).then_some(pid)
    })
}

fn wchan(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

#[test]
fn the_node_plugin_sees_holders_fifo_depths_and_sockets_inside_pods() {
    require_root();
    let (cp, node) = cluster(NS, &["python"]);

    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let (plugin, _) = Plugin::start_registered(
        dir.path(),
        &cp,
        &node,
        &["--metrics-listen", &metrics],
        LONG,
    );

    cp.create(
        &format!("/apis/ipclink.dev/v1alpha1/namespaces/{NS}/ipclinks"),
        &ipclink_testkit::pods::link(
            NS,
            "obs",
            json!({
                "sizeLimit": "4Mi",
                "owner": {"uid": 1000, "gid": 1000},
                "members": [
                    {"name": "producer", "podSelector": {"matchLabels": {"app": "producer"}}},
                    {"name": "consumer", "podSelector": {"matchLabels": {"app": "consumer"}}}
                ],
                "channels": [
                    {"name": "events", "kind": "fifo", "mode": "0660", "writers": ["producer"], "readers": ["consumer"]},
                    {"name": "rpc", "kind": "socket", "mode": "0770"},
                    {"name": "frames", "kind": "shm", "size": "1Mi", "mode": "0660"}
                ]
            }),
        ),
    );
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    cp.create(&pods, &member("consumer", CONSUMER));
    node.wait_log(NS, "consumer", "listening, opening the fifo", LONG);
    let consumer = pid_of("ipclink-holders-consumer").expect("the consumer's python");
    let start = std::time::Instant::now();
    while wchan(consumer) != "wait_for_partner" {
        assert!(
            start.elapsed() < LONG,
            "the consumer never waited in open()"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 100 scrapes while the consumer waits for a writer: nobody holds either end, the
    // pipe is empty, and the consumer's open() does not return.
    let events = [("channel", "events"), ("kind", "fifo")];
    let rpc = [("channel", "rpc"), ("kind", "socket")];
    for i in 0..100 {
        let (code, body) = get(port, "/metrics");
        assert_eq!(code, 200, "{body}");
        for (family, want) in [
            ("ipclink_fifo_reader_present", 0.0),
            ("ipclink_fifo_writer_present", 0.0),
            ("ipclink_channel_queue_bytes", 0.0),
        ] {
            assert_eq!(
                metric(&body, family, &events),
                Some(want),
                "{family} at scrape {i}\n{body}"
            );
        }
        // The listener is bound in the consumer's network namespace: seen, idle.
        assert_eq!(
            metric(&body, "ipclink_socket_backlog_connections", &rpc),
            Some(0.0),
            "scrape {i}\n{body}"
        );
        assert_eq!(
            wchan(consumer),
            "wait_for_partner",
            "scrape {i} let the consumer's open() return\n{}",
            node.container_log(NS, "consumer", "main")
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(
        !node
            .container_log(NS, "consumer", "main")
            .contains("opened")
    );

    // The producer comes: every byte arrives.
    cp.create(&pods, &member("producer", PRODUCER));
    node.wait_log(NS, "producer", &format!("wrote {PAYLOAD}"), LONG);
    let log = node.wait_log(NS, "consumer", "got ", LONG);
    assert!(
        log.contains(&format!("got {PAYLOAD} bytes, intact")),
        "{log}"
    );

    // Who holds what, by pod; the socket's backlog from the consumer's namespace.
    let who = |body: &str, channel: &str, role: &str, pod: &str| {
        metric(
            body,
            "ipclink_channel_holder_info",
            &[
                ("channel", channel),
                ("role", role),
                ("pod", &format!("{NS}/{pod}")),
                ("container", "main"),
                ("command", "python3"),
            ],
        )
    };
    let mut body = String::new();
    let start = std::time::Instant::now();
    while !(who(&body, "events", "reader", "consumer").is_some()
        && who(&body, "events", "writer", "producer").is_some())
    {
        assert!(start.elapsed() < LONG, "holders never seen\n{body}");
        std::thread::sleep(Duration::from_millis(200));
        body = get(port, "/metrics").1;
    }
    for (channel, role, pod) in [
        ("rpc", "reader", "consumer"),
        ("rpc", "writer", "producer"),
        ("frames", "mapper", "consumer"),
        ("frames", "mapper", "producer"),
        ("frames", "writer", "producer"),
    ] {
        assert_eq!(
            who(&body, channel, role, pod),
            Some(1.0),
            "{channel} {role} {pod}\n{body}"
        );
    }
    assert_eq!(
        who(&body, "frames", "reader", "consumer"),
        None,
        "the consumer closed the region's descriptor after mapping it\n{body}"
    );
    assert_eq!(
        metric(&body, "ipclink_socket_backlog_connections", &rpc),
        Some(3.0),
        "{body}"
    );
    for (family, want) in [
        ("ipclink_fifo_reader_present", 1.0),
        ("ipclink_fifo_writer_present", 1.0),
        ("ipclink_channel_queue_bytes", 0.0),
        ("ipclink_channel_capacity_bytes", 65536.0),
    ] {
        assert_eq!(
            metric(&body, family, &events),
            Some(want),
            "{family}\n{body}"
        );
    }
    promtool_check(&body);

    // The consumer pod goes; so does its hold, at the first scrape after it.
    let out = std::process::Command::new(cp.bin_dir().join("kubectl"))
        .args([
            "delete",
            "pod",
            "consumer",
            "-n",
            NS,
            "--grace-period=0",
            "--force",
            "--wait=true",
        ])
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        ipclink_testkit::output_text(&out)
    );
    let start = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{consumer}")).exists() {
        assert!(
            start.elapsed() < LONG,
            "the consumer's process outlived its pod"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // One observation serves the requests of one scrape, for a second.
    std::thread::sleep(Duration::from_millis(1100));
    let (_, body) = get(port, "/metrics");
    assert!(
        !body.contains(&format!("pod=\"{NS}/consumer\"")),
        "the deleted consumer is still a holder\n{body}"
    );
    assert_eq!(
        metric(&body, "ipclink_fifo_reader_present", &events),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        who(&body, "events", "writer", "producer"),
        Some(1.0),
        "{body}"
    );
    drop(plugin);
}
