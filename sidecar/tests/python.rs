//! The Triton-style Python exchange of docs/link-resource.md, run as written with the
//! machine's `python3` (3.11 on the test machines) in a link mounted at `/dev/shm`: the client creates
//! a region and stays, the server attaches and exits, and the client's region is still
//! there. The same server without the docs' `unregister` takes the region with it
//! (python/cpython#82300, before 3.13), which is why the docs have it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Sidecar, setup};

const LINK: &str = r#"
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: frames, namespace: vision }
spec:
  allowCreate: true
  channels: [{ name: control, kind: socket }]
"#;

/// The two halves of the docs' Python block: (client, server).
fn docs_snippet() -> (String, String) {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/link-resource.md"),
    )
    .expect("docs/link-resource.md");
    let block = page
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a python block");
    let (client, server) = block
        .split_once("# server pod")
        .expect("the block has a server half");
    (client.to_owned(), format!("# server pod{server}"))
}

/// `python3 -c CODE` with `link` mounted at `/dev/shm` (a mount namespace of its own).
fn python_in_link(link: &Path, code: &str) -> Command {
    let mut cmd = Command::new(ipclink_testkit::require_tool("unshare"));
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /dev/shm && exec python3 -c "$1""#)
        .arg(link)
        .arg(code);
    cmd
}

/// Runs the client (kept alive until its stdin closes) and `server` to its end; whether
/// the client's region is still in the link after the server exited.
fn region_survives(link: &Path, client: &str, server: &str) -> bool {
    let keep = format!("{client}\nimport sys\nprint('made', flush=True)\nsys.stdin.read()\n");
    let mut c = python_in_link(link, &keep)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("client output");
    assert_eq!(line, "made\n", "the client made its region");
    let region = link.join("triton-input-0");
    assert!(region.exists());
    let out = python_in_link(link, server).output().expect("server");
    assert!(
        out.status.success(),
        "server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server's resource tracker acts when the server exits: it is gone by then.
    let survives = region.exists();
    drop(c.stdin.take().map(|mut i| i.write_all(b"")));
    let _ = c.wait(); // the client's tracker removes its region
    let _ = std::fs::remove_file(&region);
    survives
}

#[test]
fn the_docs_python_server_leaves_the_clients_region_in_place() {
    let s = setup(LINK);
    let mut up = Sidecar::up(&s.root, &[&s.file], &["--storage", "dir"]);
    let (client, server) = docs_snippet();
    assert!(server.contains("resource_tracker.unregister"), "{server}");
    assert!(
        region_survives(&s.link, &client, &server),
        "the docs' server took the client's region with it"
    );

    // The failure mode the docs avoid: attach and exit, as Python 3.11 does it.
    let version = Command::new("python3")
        .args(["-c", "import sys; print(sys.version_info >= (3, 13))"])
        .output()
        .expect("python3");
    let old_python = String::from_utf8_lossy(&version.stdout).trim() == "False";
    let naive = "from multiprocessing import shared_memory\nregion = shared_memory.SharedMemory(name=\"triton-input-0\")\nassert bytes(region.buf[:5]) == b\"hello\"\n";
    assert_eq!(
        region_survives(&s.link, &client, naive),
        !old_python,
        "an attaching process unlinks the region at exit before Python 3.13, and only then"
    );
    assert_eq!(up.stop(), 0);
}
