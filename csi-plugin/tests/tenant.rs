//! A tenant against the node plugin (a real process, links from a directory): the mounts
//! a link adds grow with its publications, not with objects × publications, and stop at
//! the node's cap; declared objects stay the link's without a mount each; a member's
//! deep tree in a removed channel does not crash the plugin.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{connect, ephemeral, fixture, rt};
use ipclink_csi::csi::node_client::NodeClient;
use ipclink_testkit::mounts::{mount_points_under, snapshot};
use ipclink_testkit::{describe, require_tool, spawn_pod_as, wait_with_timeout};
use tonic::Code;

const PYTHON: &str = "/usr/bin/python3";

/// An `allowCreate` link `tenant/NAME` open to every pod of its namespace, owned by
/// uid 1000, with `channels` (YAML list items) and `semaphores`.
fn link(name: &str, channels: &str, semaphores: &str) -> String {
    format!(
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: {name}, namespace: tenant }}\nspec:\n  sizeLimit: 4Mi\n  allowCreate: true\n  owner: {{ uid: 1000, gid: 1000 }}\n  members: [{{ name: any, podSelector: {{}} }}]\n  channels:\n{channels}  semaphores:\n{semaphores}---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: p, namespace: tenant }}\n"
    )
}

fn many_objects() -> String {
    let fifos: String = (0..256)
        .map(|i| format!("    - {{ name: f{i}, kind: fifo, mode: \"0660\" }}\n"))
        .collect();
    let sems: String = (0..256)
        .map(|i| format!("    - {{ name: s{i}, initial: 1 }}\n"))
        .collect();
    link("many", &fifos, &sems)
}

async fn publish(
    c: &mut NodeClient<tonic::transport::Channel>,
    req: ipclink_csi::csi::NodePublishVolumeRequest,
) -> (Code, String) {
    match c.node_publish_volume(req).await {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[test]
fn two_hundred_publications_of_512_objects_add_a_mount_each_and_the_node_cap_holds() {
    let f = fixture(&many_objects(), &["--max-volumes-per-node", "200"]);
    let under = [f.dir.path()];
    let before = mount_points_under(&under).len();
    let targets: Vec<PathBuf> = (0..201).map(|i| f.pods.join(format!("t{i}"))).collect();
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&f.node.socket).await);
        for (i, t) in targets.iter().take(200).enumerate() {
            let (code, msg) = publish(
                &mut c,
                ephemeral(&format!("v{i}"), t, "tenant", "p", "many"),
            )
            .await;
            assert_eq!(code, Code::Ok, "publication {i}: {msg}\n{}", f.node.log());
        }
        // The 201st is refused, naming the limit, and nothing is mounted for it.
        let last = &targets[200];
        std::fs::create_dir_all(last).expect("target");
        let (code, msg) = publish(&mut c, ephemeral("v200", last, "tenant", "p", "many")).await;
        assert_eq!(code, Code::ResourceExhausted, "{msg}");
        assert!(
            msg.contains("takes at most 200 (--max-volumes-per-node)"),
            "{msg}"
        );
        assert!(mount_points_under(&[last.as_path()]).is_empty());
        assert_eq!(std::fs::read_dir(last).expect("list").count(), 0);
    });
    let added = mount_points_under(&under).len() - before;
    // The link's one tmpfs and one bind per publication, not one per object and
    // publication.
    assert!(added <= 201, "{added} mounts for 200 publications");
    eprintln!("200 publications of 512 objects added {added} mounts");

    // Through a publication alone (as a pod sees it), the spec's owner cannot remove
    // or replace a declared object, and uses it.
    require_tool("sh");
    let out = wait_with_timeout(
        spawn_pod_as(
            &targets[7],
            1000,
            1000,
            Path::new("/bin/sh"),
            &[
                "-c",
                "rm -f /dev/shm/f0 /dev/shm/sem.s0 2>&1; mv /dev/shm/f1 /dev/shm/x 2>&1; \
                 touch /dev/shm/mine && mv /dev/shm/mine /dev/shm/sem.s1 2>&1; \
                 test -r /dev/shm/sem.s2 && test -w /dev/shm/f3 && echo usable",
            ],
        ),
        Duration::from_secs(30),
    );
    let text = describe(&out);
    assert_eq!(
        text.matches("Operation not permitted").count(),
        4,
        "each removal and replacement is EPERM:\n{text}"
    );
    assert!(text.contains("usable"), "{text}");
    let link = f.dir.path().join("plugin/node-state/links/tenant/many");
    for o in ["f0", "f1", "sem.s0", "sem.s1"] {
        let st = std::fs::symlink_metadata(link.join(o)).expect(o);
        assert_eq!((st.uid(), st.gid()), (0, 1000), "{o}");
    }
}

#[test]
fn a_deep_tree_in_a_removed_socket_channel_does_not_crash_the_node_plugin() {
    let sockets: String = (0..200)
        .map(|i| format!("    - {{ name: c{i}, kind: socket, mode: \"1777\" }}\n"))
        .collect();
    let f = fixture(
        &link("deep", &sockets, "    - { name: ready, initial: 0 }\n"),
        &["--apply-interval-seconds", "1"],
    );
    let (a, b) = (f.pods.join("a"), f.pods.join("b"));
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&f.node.socket).await);
        let (code, msg) = publish(&mut c, ephemeral("va", &a, "tenant", "p", "deep")).await;
        assert_eq!(code, Code::Ok, "{msg}");
    });
    require_tool(PYTHON);
    let program = r#"
import os, errno
os.chdir("/dev/shm/c0")
depth = 0
while True:
    try:
        os.mkdir("d")
    except OSError as e:
        if e.errno != errno.ENOSPC: raise
        break
    os.chdir("d"); depth += 1
print(depth)
"#;
    let out = wait_with_timeout(
        spawn_pod_as(&a, 1000, 1000, Path::new(PYTHON), &["-c", program]),
        Duration::from_secs(120),
    );
    let depth: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}", describe(&out)));
    assert!(depth > 7000, "{depth}");
    // The edit removes every socket channel; the plugin applies it within a second.
    std::fs::write(
        f.links.join("link.yaml"),
        link(
            "deep",
            "    - { name: later, kind: fifo }\n",
            "    - { name: ready, initial: 0 }\n",
        ),
    )
    .expect("edit");
    let link = f.dir.path().join("plugin/node-state/links/tenant/deep");
    for _ in 0..600 {
        if link.join("later").exists() && !link.join("c0").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(link.join("later").exists(), "{}", f.node.log());
    assert!(!link.join("c0").exists());
    assert!(
        f.node.pid().is_some(),
        "the plugin exited:\n{}",
        f.node.log()
    );
    // The next publish works.
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&f.node.socket).await);
        let (code, msg) = publish(&mut c, ephemeral("vb", &b, "tenant", "p", "deep")).await;
        assert_eq!(code, Code::Ok, "{msg}\n{}", f.node.log());
    });
    assert!(b.join("later").exists());
    // Both publications show the same link.
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&b), names(&a));
    assert!(snapshot(&a).iter().all(|l| !l.contains("/c0")));
}
