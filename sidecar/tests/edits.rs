//! Editing a live link in local mode and through the Docker volume plugin: what can
//! change under running members is applied while they exchange data, what they would
//! notice waits until they have left, and a change killed half-way is finished by the
//! next run. Needs root (one tmpfs per link).

mod common;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::plugin::{Plugin, call, tmp};
use common::{BIN, LINK, Sidecar, get, metric, setup, write_file};
use ipclink_testkit::mounts::Unmounter;

/// A writer and a reader passing numbered lines through the link's `events` FIFO, and
/// a writer stamping the `frames` region, through descriptors opened before any edit.
struct Exchange {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Exchange {
    fn start(link: &Path) -> Exchange {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let fifo = link.join("events");
        let reader = {
            let (fifo, received) = (fifo.clone(), received.clone());
            std::thread::spawn(move || {
                let lines = BufReader::new(File::open(&fifo).expect("open read end")).lines();
                for (expected, line) in (1u64..).zip(lines) {
                    let n: u64 = line.expect("line").parse().expect("number");
                    assert_eq!(n, expected, "a line was lost or reordered");
                    received.store(n, Ordering::SeqCst);
                }
            })
        };
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut w = OpenOptions::new()
                    .write(true)
                    .open(&fifo)
                    .expect("write end");
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    writeln!(w, "{n}").expect("write a line");
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let region = OpenOptions::new()
            .read(true)
            .write(true)
            .open(link.join("frames"))
            .expect("open region");
        let stamper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    region.write_all_at(&n.to_le_bytes(), 4096).expect("stamp");
                    let mut back = [0u8; 8];
                    region.read_exact_at(&mut back, 4096).expect("read stamp");
                    assert_eq!(u64::from_le_bytes(back), n);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Exchange {
            received,
            stop,
            threads: vec![reader, writer, stamper],
        }
    }

    /// Asserts lines still arrive.
    fn flowing(&self, when: &str) {
        let before = self.received.load(Ordering::SeqCst);
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(20));
            if self.received.load(Ordering::SeqCst) > before + 5 {
                return;
            }
        }
        panic!("{when}: the exchange stopped at line {before}");
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("an exchange thread failed");
        }
        self.received.load(Ordering::SeqCst)
    }
}

fn tmpfs_bytes(p: &Path) -> u64 {
    let v = nix::sys::statvfs::statvfs(p).expect("statvfs");
    v.blocks() * v.fragment_size()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

/// `up`'s table of the link under `root`.
fn status(root: &Path) -> String {
    let out = Command::new(BIN)
        .arg("status")
        .arg("--root")
        .arg(root)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SPARE: &str = "    - { name: spare,   kind: fifo }\n";

#[test]
fn live_edits_apply_while_members_exchange_data() {
    let base = LINK.replace(
        "    - { name: control, kind: socket }\n",
        &format!("    - {{ name: control, kind: socket }}\n{SPARE}"),
    );
    let s = setup(&base);
    let mut up = Sidecar::up(&s.root, &[&s.file], &[]);
    let ex = Exchange::start(&s.link);
    ex.flowing("before any edit");
    // A member holds the channel about to be removed.
    let spare = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.link.join("spare"))
        .expect("open spare");
    assert_eq!(tmpfs_bytes(&s.link), 2 << 20);

    let mut spec = base.clone();
    let mut applied = 0;
    let mut edit = |up: &mut Sidecar, from: &str, to: &str, hup: bool| {
        spec = spec.replace(from, to);
        std::fs::write(&s.file, &spec).expect("edit the file");
        if hup {
            up.hup();
        }
        applied += 1;
        up.wait_log("link applied", applied);
    };

    // sizeLimit up, noticed as a changed file.
    edit(&mut up, "sizeLimit: 2Mi", "sizeLimit: 4Mi", false);
    assert_eq!(tmpfs_bytes(&s.link), 4 << 20);
    ex.flowing("after sizeLimit 2Mi -> 4Mi");
    // A channel's mode, on SIGHUP.
    edit(&mut up, r#"mode: "0640""#, r#"mode: "0600""#, true);
    assert_eq!(mode(&s.link.join("frames")), 0o600);
    ex.flowing("after a mode change");
    // A larger region: grown in place, the stamper's data kept.
    edit(&mut up, "size: 1Mi", "size: 1536Ki", true);
    assert_eq!(
        std::fs::metadata(s.link.join("frames"))
            .expect("frames")
            .len(),
        1536 << 10
    );
    ex.flowing("after the region grew");
    // A new channel, and one removed.
    edit(
        &mut up,
        SPARE,
        "    - { name: alerts,  kind: fifo, mode: \"0620\" }\n",
        true,
    );
    assert_eq!(mode(&s.link.join("alerts")), 0o620);
    assert!(
        !s.link.join("spare").exists(),
        "a removed channel is unlinked"
    );
    // Its holder keeps it: a FIFO it holds both ends of still passes bytes.
    (&spare).write_all(b"kept").expect("write the removed fifo");
    let mut got = [0u8; 4];
    (&spare)
        .read_exact(&mut got)
        .expect("read the removed fifo");
    assert_eq!(&got, b"kept");
    ex.flowing("after adding and removing channels");
    // sizeLimit down within what is used.
    edit(&mut up, "sizeLimit: 4Mi", "sizeLimit: 3Mi", true);
    assert_eq!(tmpfs_bytes(&s.link), 3 << 20);
    ex.flowing("after sizeLimit 4Mi -> 3Mi");
    // A writer past the smaller limit gets ENOSPC.
    let scratch = s.link.join("scratch");
    let mut big = File::create(&scratch).expect("scratch");
    let err = big
        .write_all(&vec![7u8; 3 << 20])
        .expect_err("3Mi more cannot fit in a 3Mi link");
    assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
    drop(big);
    std::fs::remove_file(&scratch).expect("remove scratch");
    ex.flowing("after a writer hit ENOSPC");

    let table = status(&s.root);
    assert!(!table.contains("pending"), "{table}");
    let (_, body) = get(up.port, "/metrics");
    assert_eq!(
        metric(&body, "ipclink_link_pending_changes", &[("link", "frames")]),
        Some(0.0),
        "{body}"
    );
    let lines = ex.finish();
    assert!(lines > 100, "only {lines} lines passed");
    assert!(up.log().contains("live link changed"), "{}", up.log());
    assert_eq!(up.stop(), 0);
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

#[test]
fn a_change_members_would_notice_waits_until_they_leave() {
    let s = setup(LINK);
    let mut up = Sidecar::up(&s.root, &[&s.file], &[]);
    File::options()
        .write(true)
        .open(s.link.join("frames"))
        .and_then(|f| f.write_all_at(b"frame-1", 0))
        .expect("write a frame");
    // A member holds the region.
    let held = File::open(s.link.join("frames")).expect("hold the region");
    let edited = LINK
        .replace("size: 1Mi", "size: 512Ki")
        .replace("kind: fifo", "kind: socket");
    std::fs::write(&s.file, &edited).expect("edit");
    up.hup();
    // The sidecar follows the file too: the edit may be applied once or twice, each
    // time with both changes pending.
    up.wait_log("pending=2", 1);
    // The link keeps its live form: a new member sees the old region and the FIFO.
    let meta = std::fs::metadata(s.link.join("frames")).expect("frames");
    assert_eq!(meta.len(), 1 << 20);
    assert!(
        std::fs::symlink_metadata(s.link.join("events"))
            .expect("events")
            .file_type()
            .is_fifo()
    );
    let table = status(&s.root);
    for field in [
        "pending spec.channels[0].size",
        "pending spec.channels[1].kind",
    ] {
        assert!(table.contains(field), "{field}: {table}");
    }
    let (_, body) = get(up.port, "/metrics");
    assert_eq!(
        metric(&body, "ipclink_link_pending_changes", &[("link", "frames")]),
        Some(2.0),
        "{body}"
    );
    let (_, links) = get(up.port, "/v1/links");
    assert!(links.contains("\"pending\""), "{links}");
    // The member leaves; the next reload makes the change.
    drop(held);
    up.hup();
    up.wait_log("changed=2 removed=0 pending=0", 1);
    assert_eq!(
        std::fs::metadata(s.link.join("frames"))
            .expect("frames")
            .len(),
        512 << 10
    );
    assert!(
        s.link.join("events").is_dir(),
        "events became a socket directory"
    );
    let table = status(&s.root);
    assert!(!table.contains("pending"), "{table}");
    assert_eq!(up.stop(), 0);
}

#[test]
fn a_change_killed_half_way_is_finished_by_the_next_run() {
    let base = LINK.replace(
        "    - { name: control, kind: socket }\n",
        &format!("    - {{ name: control, kind: socket }}\n{SPARE}"),
    );
    let s = setup(&base);
    let mut first = Sidecar::up(&s.root, &[&s.file], &["--keep"]);
    File::options()
        .write(true)
        .open(s.link.join("frames"))
        .and_then(|f| f.write_all_at(b"frame-1", 0))
        .expect("write a frame");
    assert_eq!(first.stop(), 0);
    // Three steps: a removed channel (removals go first), a mode, a new channel;
    // killed after the first.
    let edited = base
        .replace(r#"mode: "0640""#, r#"mode: "0600""#)
        .replace(SPARE, "    - { name: alerts,  kind: fifo }\n");
    let file = write_file(s.file.parent().expect("dir"), "edited.yaml", &edited);
    let out = Command::new(BIN)
        .arg("up")
        .arg(&file)
        .arg("--root")
        .arg(&s.root)
        .args([
            "--keep",
            "--listen",
            &format!("127.0.0.1:{}", common::free_port()),
        ])
        .env("IPCLINK_FAULT", "kill-after-steps=1")
        .output()
        .expect("up");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.link.join("spare").exists(), "the first step was made");
    assert_eq!(
        mode(&s.link.join("frames")),
        0o640,
        "the kill came before the mode"
    );
    assert!(!s.link.join("alerts").exists());
    // The next run finishes the change, and keeps what members wrote.
    let mut again = Sidecar::up(&s.root, &[&file], &["--keep"]);
    assert!(s.link.join("alerts").exists());
    assert_eq!(mode(&s.link.join("frames")), 0o600);
    let mut head = [0u8; 7];
    File::open(s.link.join("frames"))
        .and_then(|f| f.read_exact_at(&mut head, 0))
        .expect("read");
    assert_eq!(&head, b"frame-1");
    assert_eq!(again.stop(), 0);
    // And one more run has nothing left to change.
    let mut last = Sidecar::up(&s.root, &[&file], &[]);
    assert!(!last.log().contains("live link changed"), "{}", last.log());
    assert_eq!(last.stop(), 0);
}

/// The volume plugin applies an edited link file to a volume containers have mounted,
/// and what would disturb them when none has it mounted any more.
#[test]
fn the_volume_plugin_applies_an_edited_link_file() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let dir = tmp();
    let _unmount = Unmounter(dir.path().to_owned());
    let file = dir.path().join("link.yaml");
    let link = |size_limit: &str, region: &str, mode: &str, extra: &str| {
        format!(
            "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: anything }}\nspec:\n  sizeLimit: {size_limit}\n  channels:\n    - {{ name: frames, kind: shm, size: {region} }}\n    - {{ name: events, kind: fifo, mode: \"{mode}\" }}\n{extra}"
        )
    };
    std::fs::write(
        &file,
        link("2Mi", "1Mi", "0600", "    - { name: spare, kind: fifo }\n"),
    )
    .expect("write link");
    let p = Plugin::start_with_args(dir.path(), &["--apply-interval-seconds", "1"]);
    let body = format!(r#"{{"Name":"vol","Opts":{{"link":"{}"}}}}"#, file.display());
    assert_eq!(p.call("/VolumeDriver.Create", &body).0, 200);
    let (status, got) = p.call("/VolumeDriver.Mount", r#"{"Name":"vol","ID":"c1"}"#);
    assert_eq!(status, 200, "{got}");
    let mp = std::path::PathBuf::from(got["Mountpoint"].as_str().expect("Mountpoint"));
    let ex = Exchange::start(&mp);
    ex.flowing("mounted");
    // Live edits while c1 has it mounted: applied by the next read of the file.
    std::fs::write(
        &file,
        link("4Mi", "1Mi", "0620", "    - { name: alerts, kind: fifo }\n"),
    )
    .expect("edit");
    wait_for("the edit applied", || {
        tmpfs_bytes(&mp) == 4 << 20 && mp.join("alerts").exists()
    });
    assert_eq!(mode(&mp.join("events")), 0o620);
    assert!(!mp.join("spare").exists());
    ex.flowing("after live edits");
    // A smaller region waits while c1 has the volume mounted ...
    std::fs::write(
        &file,
        link(
            "4Mi",
            "512Ki",
            "0620",
            "    - { name: alerts, kind: fifo }\n",
        ),
    )
    .expect("edit");
    wait_for("the edit seen", || p.log().contains("change pending"));
    assert_eq!(
        std::fs::metadata(mp.join("frames")).expect("frames").len(),
        1 << 20
    );
    ex.flowing("with a change pending");
    assert!(ex.finish() > 20);
    // ... and is made by the next Mount once c1 has unmounted.
    assert_eq!(
        p.call("/VolumeDriver.Unmount", r#"{"Name":"vol","ID":"c1"}"#)
            .0,
        200
    );
    assert_eq!(
        p.call("/VolumeDriver.Mount", r#"{"Name":"vol","ID":"c2"}"#)
            .0,
        200
    );
    assert_eq!(
        std::fs::metadata(mp.join("frames")).expect("frames").len(),
        512 << 10
    );
    // An invalid file changes nothing.
    let before = ipclink_testkit::mounts::snapshot(&mp);
    std::fs::write(&file, link("lots", "512Ki", "0620", "")).expect("edit");
    wait_for("the refusal logged", || {
        p.log().contains("the link file is refused")
    });
    assert_eq!(ipclink_testkit::mounts::snapshot(&mp), before);
    let _ = call(
        &p.socket,
        "/VolumeDriver.Unmount",
        r#"{"Name":"vol","ID":"c2"}"#,
    );
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within 10 s");
}
