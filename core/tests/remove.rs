//! Removing a tree a member may have written: no recursion, no descriptor per level, no
//! symlink followed, the rest of the filesystem untouched.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use ipclink_core::fs::{open_dir_at, remove_tree_at};
use nix::sys::stat::{Mode, mkdirat};

/// Builds `depth` nested directories named `d` under `top`, with a file in every 100th.
fn chain(top: &Path, depth: usize) {
    let mut dir: OwnedFd = std::fs::File::open(top).expect("open top").into();
    for level in 0..depth {
        mkdirat(dir.as_fd(), "d", Mode::from_bits_truncate(0o755)).expect("mkdir");
        if level % 100 == 0 {
            let f = nix::fcntl::openat(
                dir.as_fd(),
                "f",
                nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
                Mode::from_bits_truncate(0o644),
            )
            .expect("file");
            drop(f);
        }
        dir = open_dir_at(dir.as_fd(), "d").expect("open d");
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("fds").count()
}

/// One test, so that no other test of this binary opens descriptors while this one
/// counts them.
#[test]
fn member_trees_are_removed_without_recursion_descriptors_per_level_or_following_links() {
    twenty_thousand_levels_are_removed_on_a_small_stack();
    symlinks_in_the_tree_are_removed_and_never_followed();
    a_wide_tree_with_many_directories_per_level_is_removed();
    a_member_adding_entries_during_removal_does_not_fail_it();
    a_directory_of_more_entries_than_one_listing_is_emptied();
}

/// More entries than one listing returns, at the top and in a subdirectory: emptied a
/// listing at a time, never read into memory whole.
fn a_directory_of_more_entries_than_one_listing_is_emptied() {
    let n = ipclink_core::fs::MAX_LISTING + 10;
    let top = tempfile::tempdir_in("/dev/shm").expect("dir");
    let sub = top.path().join("sub");
    std::fs::create_dir(&sub).expect("sub");
    for dir in [top.path(), sub.as_path()] {
        for i in 0..n {
            std::fs::File::create(dir.join(format!("f{i}"))).expect("file");
        }
    }
    let fd: OwnedFd = std::fs::File::open(top.path()).expect("open").into();
    ipclink_core::fs::empty_dir(fd.as_fd()).expect("empty");
    assert_eq!(std::fs::read_dir(top.path()).expect("list").count(), 0);
}

/// A member keeps making and unlinking a file in the directory being removed: the last
/// `rmdir` may find it there (ENOTEMPTY), which is a reason to list again, not a failure.
fn a_member_adding_entries_during_removal_does_not_fail_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let tmp = tempfile::tempdir().expect("tempdir");
    let base: OwnedFd = std::fs::File::open(tmp.path()).expect("open").into();
    for _ in 0..200 {
        let top = tmp.path().join("tree");
        std::fs::create_dir(&top).expect("mkdir");
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicUsize::new(0));
        let member = {
            let (stop, made, file) = (stop.clone(), made.clone(), top.join("x"));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if std::fs::write(&file, b"").is_ok() {
                        made.fetch_add(1, Ordering::Relaxed);
                        let _ = std::fs::remove_file(&file);
                    }
                }
            })
        };
        while made.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now(); // the member is at work
        }
        let removed = remove_tree_at(base.as_fd(), "tree");
        stop.store(true, Ordering::Relaxed);
        member.join().expect("member");
        match removed {
            Ok(()) => assert!(!top.exists(), "removed"),
            // A member that never lets go: set aside by the caller, never an error.
            Err(ipclink_core::fs::RemoveError::Budget(_)) => {
                std::fs::remove_dir_all(&top).expect("clean");
            }
            Err(e) => panic!("removal failed on a member's entry: {e}"),
        }
    }
}

fn twenty_thousand_levels_are_removed_on_a_small_stack() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let top = tmp.path().join("tree");
    std::fs::create_dir(&top).expect("mkdir");
    chain(&top, 20_000);
    let keep = tmp.path().join("keep");
    std::fs::write(&keep, "kept").expect("write");
    let base = tmp.path().to_owned();
    // 64 KiB of stack: a recursion of even a few hundred levels would overflow it.
    let fds = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || {
            let before = open_fds();
            let dir: OwnedFd = std::fs::File::open(&base).expect("open").into();
            remove_tree_at(dir.as_fd(), "tree").expect("removed");
            drop(dir);
            (before, open_fds())
        })
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert_eq!(fds.0, fds.1, "descriptors leaked");
    assert!(!top.exists(), "the tree is still there");
    assert_eq!(std::fs::read_to_string(&keep).expect("keep"), "kept");
}

fn symlinks_in_the_tree_are_removed_and_never_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).expect("mkdir");
    std::fs::write(outside.join("sub/secret"), "s").expect("write");
    let top = tmp.path().join("tree");
    std::fs::create_dir_all(top.join("a/b")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, top.join("a/b/link")).expect("symlink");
    std::os::unix::fs::symlink(&outside, top.join("toplink")).expect("symlink");
    let dir: OwnedFd = std::fs::File::open(tmp.path()).expect("open").into();
    remove_tree_at(dir.as_fd(), "tree").expect("removed");
    assert!(!top.exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("sub/secret")).expect("secret"),
        "s"
    );
    // A symlink as the name itself is removed, not followed.
    std::os::unix::fs::symlink(&outside, tmp.path().join("alias")).expect("symlink");
    remove_tree_at(dir.as_fd(), "alias").expect("removed");
    assert!(outside.join("sub/secret").exists());
    assert!(std::fs::symlink_metadata(tmp.path().join("alias")).is_err());
}

fn a_wide_tree_with_many_directories_per_level_is_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let top = tmp.path().join("tree");
    for a in 0..20 {
        for b in 0..20 {
            let d = top.join(format!("{a}/{b}/x/y"));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("f"), "x").expect("write");
        }
    }
    // Names that look like the remover's own lifted directories do not confuse it.
    std::fs::create_dir_all(top.join(".ipclink-tmp-lift-0/.ipclink-tmp-lift-1")).expect("mkdir");
    let dir: OwnedFd = std::fs::File::open(tmp.path()).expect("open").into();
    remove_tree_at(dir.as_fd(), "tree").expect("removed");
    assert!(!top.exists());
}
