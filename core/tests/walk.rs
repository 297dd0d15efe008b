//! What the walk of objects members created reports, against a link a member filled:
//! what the member closed to others stays closed, long names are cut, and the link's
//! share of a scrape has a bound.

use std::os::unix::fs::PermissionsExt;

use ipclink_core::probe::{LinkProbe, Observation};
use ipclink_core::{StorageMode, Store, parse_links, validate};

fn open_link(store: &Store) -> ipclink_core::LinkPlan {
    let yaml = "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {name: l, namespace: t}\nspec:\n  sizeLimit: 16Mi\n  allowCreate: true\n  channels: [{name: declared, kind: fifo}]\n";
    let plan = validate(&parse_links("t", yaml).expect("parse")[0]).expect("valid");
    store.materialize(&plan).expect("materialize");
    plan
}

#[test]
fn closed_directories_stay_closed_long_names_are_cut_and_the_share_is_bounded() {
    let base = tempfile::tempdir().expect("dir");
    let store = Store::open(base.path(), StorageMode::PlainDir).expect("store");
    let plan = open_link(&store);
    let link = store.link_path("t", "l");
    // A directory its member closed to everyone else, with a secret that looks like a
    // semaphore, beside an open one.
    std::fs::create_dir(link.join("private")).expect("mkdir");
    let mut sem = [0u8; 32];
    sem[..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    std::fs::write(link.join("private/key"), sem).expect("key");
    std::fs::set_permissions(link.join("private"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    std::fs::create_dir(link.join("public")).expect("mkdir");
    nix::unistd::mkfifo(
        &link.join("public/p"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    // Three levels of 255-byte names.
    let long: String = "n".repeat(255);
    let deep = link.join(&long).join(&long);
    std::fs::create_dir_all(&deep).expect("mkdir");
    std::fs::write(deep.join(&long), b"region").expect("region");
    let mut probe = LinkProbe::open(&store, &plan).expect("probe");
    let sample = probe.sample(&Observation::default());
    let names: Vec<&str> = sample
        .channels
        .iter()
        .chain(std::iter::empty())
        .map(|c| c.info.name.as_str())
        .chain(sample.semaphores.iter().map(|s| s.info.name.as_str()))
        .collect();
    assert!(names.contains(&"public/p"), "{names:?}");
    assert!(
        names.iter().all(|n| !n.starts_with("private")),
        "the walk read a closed directory: {names:?}"
    );
    let cut: Vec<&&str> = names.iter().filter(|n| n.starts_with('n')).collect();
    assert_eq!(cut.len(), 1, "{names:?}");
    assert!(
        cut[0].len() <= 128 + 17 && cut[0].contains('~'),
        "{}",
        cut[0]
    );

    // A member makes 2,000 FIFOs with long names: the link's share of /metrics and
    // /v1/links stays bounded, the rest is counted.
    for i in 0..2000 {
        nix::unistd::mkfifo(
            &link.join(format!("{i:04}{}", "x".repeat(200))),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("mkfifo");
    }
    let sample = probe.sample(&Observation::default());
    let reported = sample.channels.len() + sample.semaphores.len() - 1;
    assert_eq!(reported as u64 + sample.unreported_objects, 2000 + 2);
    let mut text = String::new();
    ipclink_core::metrics::render_channels(std::slice::from_ref(&sample), &[], &mut text);
    let share: usize = text
        .lines()
        .filter(|l| l.contains("link=\"l\""))
        .map(|l| l.len() + 1)
        .sum();
    assert!(share <= 128 << 10, "{share} bytes of /metrics");
    let json = serde_json::to_string(&sample).expect("json");
    assert!(json.len() <= 64 << 10, "{} bytes of /v1/links", json.len());
    assert!(!sample.walk_truncated);
    assert!(text.contains("ipclink_link_unreported_objects{"), "{text}");

    // Past the entries one walk looks at (a plain directory has no inode limit), the
    // count of what was not reported is unknown: its series is absent, not too small.
    for i in 0..ipclink_core::probe::created::MAX_ENTRIES {
        std::fs::write(link.join(format!("z{i:05}")), b"").expect("file");
    }
    let sample = probe.sample(&Observation::default());
    assert!(sample.walk_truncated);
    let json = serde_json::to_string(&sample).expect("json");
    assert!(
        json.contains("\"walkTruncated\":true") && !json.contains("unreportedObjects"),
        "{json}"
    );
    let mut text = String::new();
    ipclink_core::metrics::render_channels(std::slice::from_ref(&sample), &[], &mut text);
    assert!(!text.contains("ipclink_link_unreported_objects{"), "{text}");
    assert!(
        !text.contains("ipclink_link_used_bytes{"),
        "in a plain directory"
    );
}

/// What the walk passes over makes its count unknown rather than small: a directory
/// past the depth it enters, a name that is not UTF-8. And a member cannot hide new
/// entries by setting a directory's modification time back.
#[test]
fn what_the_walk_passes_over_makes_its_count_unknown() {
    use std::os::unix::ffi::OsStrExt;
    let base = tempfile::tempdir().expect("dir");
    let store = Store::open(base.path(), StorageMode::PlainDir).expect("store");
    let plan = open_link(&store);
    let link = store.link_path("t", "l");
    let fifo = |p: &std::path::Path| {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo")
    };
    let mut probe = LinkProbe::open(&store, &plan).expect("probe");

    // Eight levels are entered; a FIFO in the eighth is seen.
    let eight = link.join("1/2/3/4/5/6/7/8");
    std::fs::create_dir_all(&eight).expect("mkdir");
    fifo(&eight.join("p"));
    let sample = probe.sample(&Observation::default());
    assert!(!sample.walk_truncated);
    assert!(
        sample
            .channels
            .iter()
            .any(|c| c.info.name == "1/2/3/4/5/6/7/8/p"),
        "{:?}",
        sample.channels
    );
    // A ninth is not entered: what it holds is unknown, so the count is too.
    std::fs::create_dir(eight.join("9")).expect("mkdir");
    fifo(&eight.join("9/p"));
    let sample = probe.sample(&Observation::default());
    assert!(sample.walk_truncated, "a level past the walk's depth");
    std::fs::remove_dir_all(link.join("1")).expect("rm");
    assert!(!probe.sample(&Observation::default()).walk_truncated);

    // A name that is not UTF-8 is never reported, and not silently left out either.
    let odd = link.join(std::ffi::OsStr::from_bytes(b"odd\xff"));
    fifo(&odd);
    assert!(probe.sample(&Observation::default()).walk_truncated);
    std::fs::remove_file(&odd).expect("rm");

    // New entries in a directory whose modification time the member set back.
    let dir = link.join("d");
    std::fs::create_dir(&dir).expect("mkdir");
    // As `touch -d`: the modification time set back to one long ago.
    let set_back = |d: &std::path::Path| {
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::open(d)
            .expect("open")
            .set_times(
                std::fs::FileTimes::new()
                    .set_modified(old)
                    .set_accessed(old),
            )
            .expect("set times")
    };
    set_back(&dir);
    // Seen (and its listing kept: its change time is settled) before the new entry.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let names = |s: &ipclink_core::sample::LinkSample| -> Vec<String> {
        s.channels.iter().map(|c| c.info.name.clone()).collect()
    };
    assert!(!names(&probe.sample(&Observation::default())).contains(&"d/new".to_owned()));
    std::thread::sleep(std::time::Duration::from_millis(100));
    fifo(&dir.join("new"));
    set_back(&dir);
    let sample = probe.sample(&Observation::default());
    assert!(
        names(&sample).contains(&"d/new".to_owned()),
        "{:?}",
        names(&sample)
    );
}

/// In a plain directory too (when `up` runs as root), a declared object of a link
/// members may write to is root's, with its owner's bits in its ACL.
#[test]
fn declared_objects_in_a_plain_directory_are_guarded_by_ownership() {
    use std::os::unix::fs::MetadataExt;
    let base = tempfile::tempdir().expect("dir");
    let store = Store::open(base.path(), StorageMode::PlainDir).expect("store");
    assert!(store.applies_owner(), "runs as root");
    let yaml = "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {name: g, namespace: t}\nspec:\n  allowCreate: true\n  owner: {uid: 1000, gid: 2000}\n  channels: [{name: events, kind: fifo, mode: \"0620\"}]\n";
    let plan = validate(&parse_links("t", yaml).expect("parse")[0]).expect("valid");
    store.materialize(&plan).expect("materialize");
    let st = std::fs::metadata(store.link_path("t", "g").join("events")).expect("stat");
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o7777), (0, 2000, 0o660));
    let mut acl = [0u8; 256];
    let n = rustix::fs::getxattr(
        store.link_path("t", "g").join("events"),
        "system.posix_acl_access",
        &mut acl[..],
    )
    .expect("an access ACL");
    // user:1000:rw- among its entries (tag 2, perms 6, id 1000).
    let user: [u8; 8] = [2, 0, 6, 0, 0xe8, 3, 0, 0];
    assert!(acl[4..n].chunks(8).any(|e| e == user), "{:02x?}", &acl[..n]);
}
