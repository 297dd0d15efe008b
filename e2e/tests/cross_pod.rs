//! Two "pods" (processes with their own mount, IPC and network namespaces), each with the
//! link bind-mounted at /dev/shm, exchange data through unchanged POSIX calls.

use std::time::Duration;

use ipclink_core::{StorageMode, Store};
use ipclink_testkit::{Libc, compile_peer, describe, require_root, spawn_pod, wait_with_timeout};

fn link_yaml(abi: &str) -> String {
    format!(
        r#"
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: {{ name: frames, namespace: vision }}
spec:
  sizeLimit: 8Mi
  members: [{{ name: camera }}, {{ name: detector }}]
  channels:
    - {{ name: frames,  kind: shm,    size: 4Mi }}
    - {{ name: events,  kind: fifo,   writers: [camera], readers: [detector] }}
    - {{ name: control, kind: socket }}
  semaphores:
    - {{ name: frame-ready, initial: 0, abi: {abi} }}
    - {{ name: slots,       initial: 8, abi: {abi} }}
"#
    )
}

fn exchange(libc: Libc, abi: &str) {
    require_root();
    let peer = compile_peer("posix_peer", libc);
    let base = tempfile::tempdir().expect("temp dir");
    let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");
    let (_plan, _guard) = ipclink_testkit::materialize(&store, &link_yaml(abi));
    let dir = store.link_path("vision", "frames");

    let consumer = spawn_pod(&dir, &peer, &["consumer"]);
    let producer = spawn_pod(&dir, &peer, &["producer"]);
    let p = wait_with_timeout(producer, Duration::from_secs(20));
    let c = wait_with_timeout(consumer, Duration::from_secs(20));
    assert!(p.status.success(), "producer failed: {}", describe(&p));
    assert!(c.status.success(), "consumer failed: {}", describe(&c));
    assert!(
        String::from_utf8_lossy(&p.stdout).contains("producer ok"),
        "{}",
        describe(&p)
    );
    assert!(
        String::from_utf8_lossy(&c.stdout).contains("consumer ok"),
        "{}",
        describe(&c)
    );
}

#[test]
fn glibc_pods_share_shm_semaphores_fifo_and_socket() {
    exchange(Libc::Glibc, "glibc");
}

#[test]
fn musl_pods_share_shm_semaphores_fifo_and_socket() {
    exchange(Libc::Musl, "musl");
}

/// A pod that declares nothing can still not create objects at the link's top level:
/// the root belongs to ipclink and is 0755 (members bind sockets in socket channels).
#[test]
fn a_pod_cannot_add_or_remove_top_level_objects() {
    require_root();
    let base = tempfile::tempdir().expect("temp dir");
    let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");
    let (_plan, _guard) = ipclink_testkit::materialize(&store, &link_yaml("glibc"));
    let dir = store.link_path("vision", "frames");
    let sh = ipclink_testkit::require_tool("setpriv");
    let out = std::process::Command::new(sh)
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c"])
        .arg(r#"touch "$1/new" 2>&1; rm -f "$1/sem.slots" 2>&1; echo done"#)
        .arg("x")
        .arg(&dir)
        .output()
        .expect("setpriv");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Permission denied"), "{text}");
    assert!(dir.join("sem.slots").exists());
    assert!(!dir.join("new").exists());
    store.teardown("vision", "frames").expect("teardown");
}

/// The layouts differ: a musl program does not find a glibc-layout semaphore.
#[test]
fn a_musl_program_fails_on_a_glibc_layout_link() {
    require_root();
    let peer = compile_peer("posix_peer", Libc::Musl);
    let base = tempfile::tempdir().expect("temp dir");
    let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");
    let (_plan, _guard) = ipclink_testkit::materialize(&store, &link_yaml("glibc"));
    let dir = store.link_path("vision", "frames");
    let out = wait_with_timeout(
        spawn_pod(&dir, &peer, &["producer"]),
        Duration::from_secs(10),
    );
    store.teardown("vision", "frames").expect("teardown");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sem_open /slots"),
        "{}",
        describe(&out)
    );
}

/// ipclink's semaphore bytes equal those the C library writes for `sem_open(O_CREAT)`.
#[test]
fn semaphore_bytes_match_what_each_libc_creates() {
    require_root();
    for (libc, abi, file) in [
        (Libc::Glibc, ipclink_core::SemaphoreAbi::Glibc, "sem.probe"),
        (Libc::Musl, ipclink_core::SemaphoreAbi::Musl, "probe"),
    ] {
        let maker = compile_peer("sem_make", libc);
        let shm = tempfile::tempdir().expect("temp dir");
        let out = wait_with_timeout(
            spawn_pod(shm.path(), &maker, &["/probe", "5"]),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "{}", describe(&out));
        let made = std::fs::read(shm.path().join(file)).expect("the libc's semaphore file");
        assert_eq!(
            made,
            ipclink_core::store::semaphore_bytes(5, abi).to_vec(),
            "{abi:?} layout differs from what the libc wrote"
        );
    }
}

/// A member blocked in `sem_wait` shows as a waiter, with glibc and musl alike; a post by
/// another member wakes it, and the probe then reads value 0 and no waiter.
#[test]
fn semaphore_waiters_are_read_from_the_object() {
    use ipclink_core::probe::{LinkProbe, Observation};
    require_root();
    for (libc, abi) in [(Libc::Glibc, "glibc"), (Libc::Musl, "musl")] {
        let waiter = compile_peer("sem_waiter", libc);
        let poster = compile_peer("posix_peer", libc);
        let base = tempfile::tempdir().expect("temp dir");
        let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");
        let (plan, _guard) = ipclink_testkit::materialize(&store, &link_yaml(abi));
        let dir = store.link_path("vision", "frames");
        let mut probe = LinkProbe::open(&store, &plan).expect("probe");

        let w = spawn_pod(&dir, &waiter, &["/frame-ready"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let waiters = loop {
            let s = probe.sample(&Observation::default());
            let ready = &s.semaphores[0];
            if ready.waiters == Some(1) || std::time::Instant::now() > deadline {
                break (ready.value, ready.waiters);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if waiters != (Some(0), Some(1)) {
            let mut w = w;
            let _ = w.kill();
            let _ = w.wait();
            panic!("{abi}: value and waiters while one waits: {waiters:?}");
        }

        // The producer role posts frame-ready once (its other steps need a consumer, so it
        // is stopped once the waiter is woken).
        let p = spawn_pod(&dir, &poster, &["producer"]);
        let out = wait_with_timeout(w, Duration::from_secs(10));
        let mut p = p;
        let _ = p.kill();
        let _ = p.wait();
        assert!(out.status.success(), "{abi}: waiter: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("woken"),
            "{}",
            describe(&out)
        );
        let s = probe.sample(&Observation::default());
        assert_eq!(
            (s.semaphores[0].value, s.semaphores[0].waiters),
            (Some(0), Some(0)),
            "{abi} after the wake-up"
        );
        drop(probe);
        store.teardown("vision", "frames").expect("teardown");
    }
}

/// A waiter killed in `sem_wait` leaves its count in the semaphore (both libcs keep it
/// there); with the holders known and no process mapping the semaphore, the probe notes
/// that count as stale (the waiters figure stays the libc's), while a live waiter, which
/// holds it, is not.
#[test]
fn a_waiter_killed_in_sem_wait_is_noted_stale() {
    use ipclink_core::probe::holders::{Members, Process};
    use ipclink_core::probe::{LinkProbe, Observer};
    use std::os::unix::fs::MetadataExt;
    /// The "pod": the waiter's process alone, scoped to the link (on a busy host every
    /// process would pass the scan's bounds and leave the holders unknown).
    struct Pod(i32, u64);
    impl Members for Pod {
        fn processes(&mut self) -> Result<Vec<Process>, String> {
            Ok(vec![Process {
                pid: self.0,
                owner: Default::default(),
                scope: Some(std::sync::Arc::new([self.1].into())),
            }])
        }
    }
    require_root();
    for (libc, abi) in [(Libc::Glibc, "glibc"), (Libc::Musl, "musl")] {
        let waiter = compile_peer("sem_waiter", libc);
        let base = tempfile::tempdir().expect("temp dir");
        let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");
        let (plan, _guard) = ipclink_testkit::materialize(&store, &link_yaml(abi));
        let dir = store.link_path("vision", "frames");
        let mut probe = LinkProbe::open(&store, &plan).expect("probe");
        let dev = std::fs::metadata(&dir).expect("link").dev();
        let mut w = spawn_pod(&dir, &waiter, &["/frame-ready"]);
        let pid = w.id() as i32;
        // A fresh observer each time: it reuses an observation for a moment otherwise.
        let observed = |probe: &mut LinkProbe| {
            let mut observer = Observer::new(Box::new(Pod(pid, dev)), false, false);
            let seen = observer.observe(std::slice::from_ref(probe));
            let s = probe.sample(&seen);
            assert!(s.holders_known, "{abi}: the pod's holders are known");
            let m = &s.semaphores[0];
            (m.waiters, m.stale_waiters, m.holders.len())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Holders are scanned before the semaphore is read: an observation can see the
        // waiter counted and not yet its mapping. Wait for both.
        let live = loop {
            let seen = observed(&mut probe);
            if (seen.0 == Some(1) && seen.2 == 1) || std::time::Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = w.kill();
        let _ = w.wait();
        assert_eq!(
            live,
            (Some(1), None, 1),
            "{abi}: one live waiter, holding it"
        );
        assert_eq!(
            observed(&mut probe),
            (Some(1), Some(1), 0),
            "{abi}: killed in sem_wait: the libc's count, noted stale"
        );
        drop(probe);
        store.teardown("vision", "frames").expect("teardown");
    }
}

/// A region a member grew past its declared size is reported at its real size, with the
/// declared one beside it, in the sample, the metrics and the `status` table.
#[test]
fn a_region_grown_by_a_member_shows_its_real_and_its_declared_size() {
    use ipclink_core::probe::{LinkProbe, Observation};
    require_root();
    let base = tempfile::tempdir().expect("temp dir");
    let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");
    let (plan, _guard) = ipclink_testkit::materialize(&store, &link_yaml("glibc"));
    let dir = store.link_path("vision", "frames");
    let mut probe = LinkProbe::open(&store, &plan).expect("probe");
    let region = |s: &ipclink_core::sample::LinkSample| {
        let c = s
            .channels
            .iter()
            .find(|c| c.info.name == "frames")
            .expect("frames");
        (c.capacity_bytes, c.declared_bytes)
    };
    assert_eq!(
        region(&probe.sample(&Observation::default())),
        (Some(4 << 20), None),
        "as declared"
    );
    // What `ftruncate` by a member does (the link's 8Mi tmpfs still holds it).
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("frames"))
        .expect("open the region")
        .set_len(6 << 20)
        .expect("grow");
    let s = probe.sample(&Observation::default());
    assert_eq!(region(&s), (Some(6 << 20), Some(4 << 20)));
    let mut text = String::new();
    ipclink_core::metrics::render_channels(std::slice::from_ref(&s), &[], &mut text);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ipclink_shm_size_bytes{")
                && l.contains(r#"channel="frames""#)
                && l.ends_with(" 6291456")),
        "{text}"
    );
    let row = ipclink_core::report::object_rows(&s)
        .into_iter()
        .find(|r| r.channel == "frames")
        .expect("row");
    assert_eq!(row.capacity, "6MiB (declared 4MiB)");
    drop(probe);
    store.teardown("vision", "frames").expect("teardown");
}
