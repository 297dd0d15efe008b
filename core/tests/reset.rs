//! `Store::reset` brings a used link back to its declared state: a region a member grew
//! and wrote, a semaphore left mid-protocol, a file a member made in a socket directory
//! and the link's record all return to what the spec says, in both storage modes, and
//! the link directory (a mount point in Compose) is the same directory afterwards.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use ipclink_core::{LinkPlan, StorageMode, Store, parse_links, validate};

fn plan() -> LinkPlan {
    let yaml = "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {name: l, namespace: t}\nspec:\n  sizeLimit: 16Mi\n  channels:\n    - {name: frames, kind: shm, size: 4Ki}\n    - {name: control, kind: socket, mode: \"0777\"}\n  semaphores: [{name: slots, initial: 3}]\n";
    validate(&parse_links("t", yaml).expect("parse")[0]).expect("valid")
}

fn used(link: &Path) {
    let region = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(link.join("frames"))
        .expect("open region");
    region.set_len(64 * 1024).expect("grow");
    region.write_all_at(b"MARK", 0).expect("write");
    std::fs::write(link.join("sem.slots"), [0u8; 32]).expect("semaphore mid-protocol");
    std::fs::write(link.join("control/left-behind"), b"x").expect("member's file");
}

fn declared(link: &Path) {
    let region = std::fs::read(link.join("frames")).expect("region");
    assert_eq!(
        region.len(),
        4096,
        "the region is back at its declared size"
    );
    assert!(region.iter().all(|&b| b == 0), "and holds zeros");
    let sem = std::fs::read(link.join("sem.slots")).expect("semaphore");
    assert_eq!(&sem[..4], &3u32.to_ne_bytes(), "the semaphore is back at 3");
    assert!(
        !link.join("control/left-behind").exists(),
        "what a member made is gone"
    );
    assert!(link.join("control").is_dir());
}

fn resets_in(mode: StorageMode) {
    let base = tempfile::tempdir().expect("dir");
    let store = Store::open(base.path(), mode).expect("store");
    let plan = plan();
    store.materialize(&plan).expect("materialize");
    let link = store.link_path("t", "l");
    let before = std::fs::metadata(&link).expect("link").ino();
    used(&link);
    // What a plain apply leaves: the grown region keeps its size and its bytes.
    store.materialize(&plan).expect("apply");
    assert_eq!(
        std::fs::metadata(link.join("frames"))
            .expect("region")
            .len(),
        65536
    );

    let outcome = store.reset(&plan).expect("reset");
    assert_eq!(outcome.created.len(), 3, "{outcome:?}");
    assert!(outcome.pending.is_empty(), "{outcome:?}");
    declared(&link);
    assert_eq!(
        std::fs::metadata(&link).expect("link").ino(),
        before,
        "the same directory"
    );
    let record = store.record("t", "l").expect("record");
    assert_eq!(record.plan, plan);
    if mode == StorageMode::Tmpfs {
        let _ = store.teardown("t", "l");
    }
}

#[test]
fn a_used_plain_directory_link_is_reset_to_its_declared_state() {
    resets_in(StorageMode::PlainDir);
}

#[test]
fn a_used_tmpfs_link_is_reset_to_its_declared_state() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test mounts a tmpfs: it needs root (the README's test command runs as root)"
    );
    resets_in(StorageMode::Tmpfs);
}

#[test]
fn a_link_that_does_not_exist_is_made() {
    let base = tempfile::tempdir().expect("dir");
    let store = Store::open(base.path(), StorageMode::PlainDir).expect("store");
    let plan = plan();
    store.reset(&plan).expect("reset");
    declared(&store.link_path("t", "l"));
}
