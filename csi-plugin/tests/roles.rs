//! Member roles against the node plugin (a real process, links from a directory): a
//! client's publication is a read-only mount whatever the CO asks, through which a pod
//! connects to the server's socket, reads its region and opens a FIFO, while creating,
//! removing, renaming, binding and writing a region are refused with EROFS and leave the
//! link as it was; the server's publication is read-write. A server asks the node
//! plugin which pod is on the other end of a connection it accepted, and nobody else
//! may ask.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{connect, ephemeral, fixture, rt};
use ipclink_csi::csi::node_client::NodeClient;
use ipclink_csi::node::peer::MAX_CALLS;
use ipclink_testkit::{
    describe, require_tool, spawn_pod_as, spawn_pod_as_in_cgroup, wait_with_timeout,
};

const PYTHON: &str = "/usr/bin/python3";

const LINK: &str = r#"apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: agent, namespace: agents }
spec:
  scope: Node
  sizeLimit: 1Mi
  owner: { uid: 1000, gid: 1000 }
  members:
    - { name: agent, role: server, podSelector: { matchLabels: { app: agent } } }
    - { name: apps, role: client, podSelector: { matchLabels: { app: client } } }
  channels:
    # World-writable and sticky: only the read-only mount stops a client binding here.
    - { name: api, kind: socket, mode: "1777" }
    - { name: table, kind: shm, size: 64Ki, mode: "0666", writers: [agent], readers: [apps] }
    - { name: events, kind: fifo, mode: "0666", writers: [apps], readers: [agent] }
---
apiVersion: v1
kind: Pod
metadata: { name: agent-0, namespace: agents, labels: { app: agent } }
---
apiVersion: v1
kind: Pod
metadata: { name: client-0, namespace: agents, labels: { app: client } }
"#;

/// The agent: binds its socket (made connectable by every uid), writes its region,
/// answers one connection, then holds the FIFO's read end until the client wrote.
const AGENT: &str = r#"
import os, socket, mmap
with open("/dev/shm/table", "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
    m[:13] = b"agent's table"
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("/dev/shm/api/agent.sock")
os.chmod("/dev/shm/api/agent.sock", 0o666)
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.sendall(b"hello")
c.close()
fd = os.open("/dev/shm/events", os.O_RDONLY)
print("fifo:", os.read(fd, 64).decode(), flush=True)
"#;

/// The client: what its read-only mount allows and refuses, one line each.
const CLIENT: &str = r#"
import errno, os, socket, mmap, time
while not os.path.exists("/dev/shm/api/agent.sock"):
    time.sleep(0.05)
def attempt(what, action):
    try:
        print(what, "allowed", action(), flush=True)
    except OSError as e:
        print(what, "refused", errno.errorcode.get(e.errno, e.errno), flush=True)
def connect():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect("/dev/shm/api/agent.sock")
        return c.recv(16).decode()
def read_table():
    with open("/dev/shm/table", "rb") as f:
        return mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)[:13].decode()
def bind():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind("/dev/shm/api/fake.sock")
def fifo():
    fd = os.open("/dev/shm/events", os.O_WRONLY)
    os.write(fd, b"from the client")
    os.close(fd)
attempt("connect", connect)
attempt("read-table", read_table)
attempt("write-fifo", fifo)
attempt("create", lambda: open("/dev/shm/mine", "x").close())
attempt("create-in-channel", lambda: open("/dev/shm/api/mine", "x").close())
attempt("unlink", lambda: os.unlink("/dev/shm/api/agent.sock"))
attempt("rename", lambda: os.rename("/dev/shm/api/agent.sock", "/dev/shm/api/moved"))
attempt("bind", bind)
attempt("write-table", lambda: open("/dev/shm/table", "r+b").close())
attempt("mkdir", lambda: os.mkdir("/dev/shm/api/d"))
"#;

/// Every name under `dir`, one level into each directory.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for e in std::fs::read_dir(dir).expect("list").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            for inner in std::fs::read_dir(e.path()).expect("list").flatten() {
                names.insert(format!("{name}/{}", inner.file_name().to_string_lossy()));
            }
        }
        names.insert(name);
    }
    names
}

/// The mount options of the mount at `target`, from this process's mountinfo.
fn mount_options(target: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let target = target.to_str().expect("utf-8");
    info.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 5 && f[4] == target)
        .map(|f| f[5].to_owned())
        .next_back()
        .unwrap_or_else(|| panic!("{target} is not mounted"))
}

#[test]
fn a_client_connects_and_reads_through_a_read_only_mount_and_changes_nothing() {
    require_tool(PYTHON);
    let f = fixture(LINK, &[]);
    let (node, dir) = (&f.node, &f.dir);
    let (agent, client) = (&f.pods.join("agent"), &f.pods.join("client"));
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        for (id, target, pod) in [("va", &agent, "agent-0"), ("vc", &client, "client-0")] {
            // The CO asks read-write for both.
            let req = ephemeral(id, target, "agents", pod, "agent");
            c.node_publish_volume(req.clone())
                .await
                .unwrap_or_else(|s| panic!("{pod}: {s:?}\n{}", node.log()));
            // Asked again as before: the same publication, not a conflict.
            c.node_publish_volume(req)
                .await
                .unwrap_or_else(|s| panic!("{pod} again: {s:?}"));
        }
    });
    let ro = |o: &str| o.split(',').any(|x| x == "ro");
    assert!(
        !ro(&mount_options(agent)),
        "the server's mount is read-only"
    );
    assert!(
        ro(&mount_options(client)),
        "the client's mount is read-write"
    );

    let server = spawn_pod_as(agent, 1000, 1000, Path::new(PYTHON), &["-c", AGENT]);
    let instance = dir.path().join("plugin/node-state/links/agents/agent");
    for _ in 0..600 {
        if instance.join("api/agent.sock").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = tree(&instance);
    assert!(before.contains("api/agent.sock"), "{before:?}");
    // Another uid than the agent's: only the mount stops it in the world-writable
    // channel.
    let out = wait_with_timeout(
        spawn_pod_as(client, 2000, 2000, Path::new(PYTHON), &["-c", CLIENT]),
        Duration::from_secs(60),
    );
    let said = describe(&out);
    for line in [
        "connect allowed hello",
        "read-table allowed agent's table",
        "write-fifo allowed",
        "create refused EROFS",
        "create-in-channel refused EROFS",
        "unlink refused EROFS",
        "rename refused EROFS",
        "bind refused EROFS",
        "write-table refused EROFS",
        "mkdir refused EROFS",
    ] {
        assert!(said.contains(line), "no {line:?} from the client:\n{said}");
    }
    let agent_out = describe(&wait_with_timeout(server, Duration::from_secs(30)));
    assert!(
        agent_out.contains("fifo: from the client"),
        "the agent did not read the client's FIFO write:\n{agent_out}"
    );
    assert_eq!(tree(&instance), before, "the client changed the link");
}

/// The agent asks who called, with the connection it accepted and with what it must
/// not pass (a pipe, two descriptors, its listening socket, nothing).
const ASKING_AGENT: &str = r#"
import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("/dev/shm/api/agent.sock")
os.chmod("/dev/shm/api/agent.sock", 0o666)
s.listen(1)
c, _ = s.accept()
def ask(fds):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as p:
        p.connect("/dev/shm/.ipclink-peer")
        if fds:
            socket.send_fds(p, [b"?"], fds)
        else:
            p.sendall(b"?")
        return p.makefile().readline().strip()
print("peer:", ask([c.fileno()]), flush=True)
r, w = os.pipe()
print("pipe:", ask([r]), flush=True)
print("two:", ask([c.fileno(), c.fileno()]), flush=True)
print("listener:", ask([s.fileno()]), flush=True)
print("none:", ask([]), flush=True)
# More descriptors than one (the kernel passes up to 253): refused, none kept.
for _ in range(50):
    many = ask([c.fileno()] * 3)
print("three:", many, flush=True)
print("many:", ask([c.fileno()] * 200), flush=True)
c.sendall(b"bye")
c.close()
"#;

/// The client connects to the agent and asks too, through its read-only mount.
const ASKING_CLIENT: &str = r#"
import os, socket, time
while not os.path.exists("/dev/shm/api/agent.sock"):
    time.sleep(0.05)
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
    c.connect("/dev/shm/api/agent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as p:
        p.connect("/dev/shm/.ipclink-peer")
        # Told at once, before it sends anything.
        print("client asks:", p.makefile().readline().strip(), flush=True)
    print("agent says:", c.recv(16).decode(), flush=True)
"#;

/// A cgroup named as the kubelet names a pod's (`pod<UID>`), removed when dropped.
struct PodCgroup(std::path::PathBuf);

impl PodCgroup {
    fn new(uid: &str) -> PodCgroup {
        // The cgroup v2 hierarchy: the root, or `unified` on a hybrid layout.
        let base = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("a cgroup v2 hierarchy");
        let dir = base
            .join(format!("ipclink-roles-{}", std::process::id()))
            .join(format!("pod{uid}"));
        std::fs::create_dir_all(&dir).expect("pod cgroup");
        PodCgroup(dir)
    }
    fn procs(&self) -> std::path::PathBuf {
        self.0.join("cgroup.procs")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[test]
fn a_server_learns_which_pod_calls_and_nobody_else_may_ask() {
    // The pods' cgroups here are only named as the kubelet names them: no memory
    // cgroup to charge.
    require_tool(PYTHON);
    let f = fixture(LINK, &["--charge-memory", "plugin"]);
    let (node, dir) = (&f.node, &f.dir);
    let (agent, client) = (&f.pods.join("agent"), &f.pods.join("client"));
    let (agent_uid, client_uid) = (
        "11111111-2222-4333-8444-555555555555",
        "66666666-7777-4888-8999-aaaaaaaaaaaa",
    );
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        for (id, target, pod, uid) in [
            ("va", &agent, "agent-0", agent_uid),
            ("vc", &client, "client-0", client_uid),
        ] {
            let mut req = ephemeral(id, target, "agents", pod, "agent");
            req.volume_context
                .insert("csi.storage.k8s.io/pod.uid".into(), uid.into());
            c.node_publish_volume(req)
                .await
                .unwrap_or_else(|s| panic!("{pod}: {s:?}\n{}", node.log()));
        }
    });
    let instance = dir.path().join("plugin/node-state/links/agents/agent");
    let peer = instance.join(".ipclink-peer");
    assert!(
        peer.exists(),
        "no peer socket in a link with a server member"
    );
    // Callers that connect and say nothing take the calls served at once (8); each is
    // hung up on at its deadline, and the agent's calls below are answered after them.
    let idle: Vec<std::os::unix::net::UnixStream> = (0..3 * MAX_CALLS)
        .map(|_| std::os::unix::net::UnixStream::connect(&peer).expect("idle caller"))
        .collect();
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the plugin's descriptors")
            .count()
    };
    let plugin_pid = node.pid().expect("the plugin runs");
    let fds_before = fds(plugin_pid);
    let (agent_cg, client_cg) = (PodCgroup::new(agent_uid), PodCgroup::new(client_uid));
    let server = spawn_pod_as_in_cgroup(
        &agent_cg.procs(),
        agent,
        1000,
        1000,
        Path::new(PYTHON),
        &["-c", ASKING_AGENT],
    );
    let caller = spawn_pod_as_in_cgroup(
        &client_cg.procs(),
        client,
        2000,
        2000,
        Path::new(PYTHON),
        &["-c", ASKING_CLIENT],
    );
    let said = describe(&wait_with_timeout(server, Duration::from_secs(60)));
    let client_said = describe(&wait_with_timeout(caller, Duration::from_secs(60)));
    let answer = |what: &str| -> serde_json::Value {
        let line = said
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{what}: ")))
            .unwrap_or_else(|| panic!("no {what:?} answer:\n{said}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
    };
    assert_eq!(
        answer("peer"),
        serde_json::json!({"namespace": "agents", "pod": "client-0", "podUID": client_uid, "client": true}),
        "{said}"
    );
    for (what, says) in [
        ("pipe", "not a socket"),
        ("two", "send exactly one descriptor"),
        ("listener", "not a connected socket"),
        ("none", "send exactly one descriptor"),
        ("three", "send exactly one descriptor"),
        ("many", "send exactly one descriptor"),
    ] {
        let e = answer(what)["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            e.contains(says),
            "{what}: {e:?} does not say {says:?}\n{said}"
        );
    }
    assert!(
        client_said.contains(
            "client asks: {\"error\":\"only a pod that a server member (role: server) of link agents/agent selects"
        ),
        "a client was told who calls, or not why not:\n{client_said}"
    );
    assert!(client_said.contains("agent says: bye"), "{client_said}");
    // A process in no pod (this test, root on the host) is refused too.
    let stranger = std::process::Command::new(PYTHON)
        .args(["-c", "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nprint(s.makefile().readline().strip())"])
        .arg(&peer)
        .output()
        .expect("stranger");
    let stranger = describe(&stranger);
    assert!(stranger.contains("not in a pod"), "{stranger}");
    // Each idle caller was hung up on, with why.
    for mut c in idle {
        let mut said = String::new();
        std::io::Read::read_to_string(&mut c, &mut said).expect("idle caller's answer");
        assert!(said.is_empty() || said.contains("error"), "{said}");
    }
    assert!(node.pid().is_some(), "the plugin exited:\n{}", node.log());
    // The 10,150 descriptors sent in refused calls were all closed (a few may be the
    // runtime's own).
    let fds_after = fds(plugin_pid);
    assert!(
        fds_after <= fds_before + 4,
        "the plugin kept descriptors: {fds_before} before, {fds_after} after"
    );
}
