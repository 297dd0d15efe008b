//! The queue's semantics in one process: priorities and order, the POSIX errors, blocking
//! and waking across threads, deadlines, what an observer reads, and files that are not
//! queues (refused, nothing changed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipclink_queue::{Params, Polling, Queue, create, stats};

fn queue(capacity: u32, message_size: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mq.jobs");
    create(
        &path,
        Params {
            capacity,
            message_size,
        },
        0o600,
    )
    .expect("create");
    (dir, path)
}

fn code(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or_else(|| panic!("no errno: {e}"))
}

#[test]
fn highest_priority_first_and_in_order_within_one() {
    let (_d, path) = queue(8, 16);
    let q = Queue::open(&path).expect("open");
    for (text, prio) in [
        ("a1", 1),
        ("b5", 5),
        ("a2", 1),
        ("c0", 0),
        ("b6", 5),
        ("d9", 9),
    ] {
        q.send(text.as_bytes(), prio, None).expect("send");
    }
    assert_eq!(q.attrs().waiting, 6);
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    while let Ok(r) = q.try_recv(&mut buf) {
        got.push((
            String::from_utf8_lossy(&buf[..r.len]).into_owned(),
            r.priority,
        ));
    }
    let want = [
        ("d9", 9),
        ("b5", 5),
        ("b6", 5),
        ("a1", 1),
        ("a2", 1),
        ("c0", 0),
    ];
    assert_eq!(
        got,
        want.map(|(t, p)| (t.to_owned(), p)).to_vec(),
        "priority, then the order sent"
    );
    assert_eq!(q.attrs().waiting, 0);
}

#[test]
fn posix_errors_and_nothing_changes() {
    let (_d, path) = queue(2, 8);
    let q = Queue::open(&path).expect("open");
    let mut buf = [0u8; 8];
    assert_eq!(code(q.try_recv(&mut buf).unwrap_err()), libc_eagain());
    assert_eq!(code(q.send(b"123456789", 0, None).unwrap_err()), 90); // EMSGSIZE
    assert_eq!(code(q.send(b"x", 32_768, None).unwrap_err()), 22); // EINVAL
    let mut small = [0u8; 7];
    q.send(b"one", 0, None).expect("send");
    assert_eq!(
        code(q.recv(&mut small, None).unwrap_err()),
        90,
        "a buffer under the message size"
    );
    q.send(b"two", 0, None).expect("send");
    assert_eq!(
        code(q.try_send(b"three", 0).unwrap_err()),
        libc_eagain(),
        "full"
    );
    let deadline = Some(Instant::now() + Duration::from_millis(100));
    assert_eq!(code(q.send(b"three", 0, deadline).unwrap_err()), 110); // ETIMEDOUT
    // Refused calls took nothing and added nothing.
    assert_eq!(q.attrs().waiting, 2);
    let s = stats::read(&std::fs::File::open(&path).expect("open")).expect("stats");
    assert_eq!((s.sent, s.received, s.waiting), (2, 0, 2));
    assert_eq!(s.full, 2, "two sends found it full");
    assert_eq!(q.recv(&mut buf, None).expect("recv").len, 3);
    assert_eq!(&buf[..3], b"one");
    let deadline = Some(Instant::now() + Duration::from_millis(100));
    q.recv(&mut buf, deadline).expect("two");
    let deadline = Some(Instant::now() + Duration::from_millis(100));
    assert_eq!(code(q.recv(&mut buf, deadline).unwrap_err()), 110);
}

fn libc_eagain() -> i32 {
    11
}

#[test]
fn a_blocked_receiver_and_a_blocked_sender_are_woken() {
    let (_d, path) = queue(1, 8);
    let q = Arc::new(Queue::open(&path).expect("open"));
    // A receiver waits on the empty queue; a send wakes it.
    let receiver = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            let r = q.recv(&mut buf, None).expect("recv");
            buf[..r.len].to_vec()
        })
    };
    wait_for(|| stats_of(&path).receivers_waiting == 1);
    q.send(b"wake", 0, None).expect("send");
    assert_eq!(receiver.join().expect("receiver"), b"wake");
    // A sender waits on the full queue; a receive wakes it.
    q.send(b"first", 0, None).expect("send");
    let sender = {
        let q = q.clone();
        std::thread::spawn(move || q.send(b"second", 0, None).expect("send"))
    };
    wait_for(|| stats_of(&path).senders_waiting == 1);
    let mut buf = [0u8; 8];
    q.recv(&mut buf, None).expect("recv");
    sender.join().expect("sender");
    let r = q.recv(&mut buf, None).expect("recv");
    assert_eq!(&buf[..r.len], b"second");
}

/// A busy-polling receiver never sleeps: it is never counted among the receivers
/// waiting (so a sender never enters the kernel to wake it), it still gets a message sent
/// while it spins, and its deadline holds. A receiver that sleeps at once is counted (the
/// same check sees it).
#[test]
fn a_busy_polling_receiver_spins_instead_of_sleeping() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_d, path) = queue(1, 8);
    let sender = Queue::open(&path).expect("open");
    for polling in [Polling::Busy, Polling::Sleep] {
        let untimed = Arc::new(AtomicBool::new(false));
        let receiver = {
            let (path, untimed) = (path.clone(), untimed.clone());
            std::thread::spawn(move || {
                let mut q = Queue::open(&path).expect("open");
                q.set_polling(polling);
                assert_eq!(q.polling(), polling);
                let mut buf = [0u8; 8];
                let start = Instant::now();
                let e = q
                    .recv(&mut buf, Some(start + Duration::from_millis(100)))
                    .unwrap_err();
                assert_eq!(code(e), 110, "ETIMEDOUT");
                assert!(start.elapsed() >= Duration::from_millis(100));
                // Then for as long as it takes: until the message sent below.
                untimed.store(true, Ordering::SeqCst);
                let r = q.recv(&mut buf, None).expect("recv");
                buf[..r.len].to_vec()
            })
        };
        wait_for(|| untimed.load(Ordering::SeqCst));
        if polling == Polling::Busy {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(200) {
                assert_eq!(
                    stats_of(&path).receivers_waiting,
                    0,
                    "a busy receiver slept"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            wait_for(|| stats_of(&path).receivers_waiting == 1);
        }
        assert!(!receiver.is_finished(), "{polling:?}: nothing was sent yet");
        sender.send(b"ping", 0, None).expect("send");
        assert_eq!(receiver.join().expect("receiver"), b"ping");
    }
}

#[test]
fn two_members_of_one_queue_and_what_an_observer_reads() {
    let (_d, path) = queue(4, 32);
    let a = Queue::open(&path).expect("open");
    let b = Queue::open(&path).expect("open");
    assert_ne!(a.member(), b.member());
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    a.send(b"twelve bytes", 3, None).expect("send");
    a.send(b"x", 0, None).expect("send");
    let s = stats_of(&path);
    assert_eq!(
        stats::members(&std::fs::File::open(&path).expect("open")),
        2
    );
    assert_eq!((s.waiting, s.waiting_bytes), (2, Some(13)));
    assert!(s.oldest_sent_ns.expect("oldest") >= before, "{s:?}");
    let mut buf = [0u8; 32];
    let r = b.recv(&mut buf, None).expect("recv");
    assert_eq!(
        (&buf[..r.len], r.priority, r.seq),
        (&b"twelve bytes"[..], 3, 1)
    );
    drop(b);
    let s = stats_of(&path);
    let members = stats::members(&std::fs::File::open(&path).expect("open"));
    assert_eq!((members, s.sent, s.received, s.sent_bytes), (1, 2, 1, 13));
    assert_eq!(a.last_committed(1), 2, "member 1 committed message 1 (+1)");
}

#[test]
fn files_that_are_not_queues_are_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good");
    create(
        &good,
        Params {
            capacity: 2,
            message_size: 8,
        },
        0o600,
    )
    .expect("create");
    let image = std::fs::read(&good).expect("read");
    let patched = |offset: usize, bytes: &[u8]| {
        let mut v = image.clone();
        v[offset..offset + bytes.len()].copy_from_slice(bytes);
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), ""),
        ("no magic", patched(0, b"NOTAQUEU"), "no IPCLQUE magic"),
        (
            "another major version",
            patched(8, &2u16.to_le_bytes()),
            "layout version 2",
        ),
        ("capacity 0", patched(16, &0u32.to_le_bytes()), "capacity 0"),
        (
            "capacity past the file",
            patched(16, &1000u32.to_le_bytes()),
            "does not match",
        ),
        (
            "message size 2^32-1",
            patched(20, &u32::MAX.to_le_bytes()),
            "messageSize",
        ),
        ("not ready", patched(36, &0u32.to_le_bytes()), "not ready"),
        (
            "cut short",
            image[..image.len() - 64].to_vec(),
            "does not match",
        ),
    ];
    for (case, bytes, says) in cases {
        let path = dir.path().join("bad");
        std::fs::write(&path, &bytes).expect("write");
        let err = Queue::open(&path).expect_err(case);
        assert!(err.to_string().contains(says), "{case}: {err}");
        assert!(
            stats::read(&std::fs::File::open(&path).expect("open")).is_err(),
            "{case}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            bytes,
            "{case}: changed on disk"
        );
    }
    // Bad sizes are refused before a file is made.
    let err = create(
        &dir.path().join("none"),
        Params {
            capacity: 0,
            message_size: 8,
        },
        0o600,
    )
    .unwrap_err();
    assert!(err.to_string().contains("capacity 0"), "{err}");
    assert!(!dir.path().join("none").exists());
    // An existing file is never made over.
    assert_eq!(
        create(
            &good,
            Params {
                capacity: 2,
                message_size: 8
            },
            0o600
        )
        .unwrap_err()
        .kind(),
        std::io::ErrorKind::AlreadyExists
    );
}

fn stats_of(path: &std::path::Path) -> stats::Stats {
    stats::read(&std::fs::File::open(path).expect("open")).expect("stats")
}

fn wait_for(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "never happened");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A queue whose slots take more than the observer reads (256 KiB): the waiting count
/// from the header, the bytes and the oldest message left out rather than guessed.
#[test]
fn an_observer_reads_the_slots_of_small_queues_only() {
    let (_d, path) = queue(64, 8192);
    let q = Queue::open(&path).expect("open");
    q.send(b"big queue", 0, None).expect("send");
    let s = stats_of(&path);
    assert_eq!(
        (s.waiting, s.waiting_bytes, s.oldest_sent_ns),
        (1, None, None)
    );
}

/// A member that holds the lock and stops (frozen, or hostile: here the lock word names
/// another live member) holds nobody's non-blocking or timed call: EAGAIN and ETIMEDOUT.
#[test]
fn a_held_lock_does_not_hold_non_blocking_or_timed_calls() {
    use std::os::unix::fs::FileExt;
    let (_d, path) = queue(4, 8);
    let a = Queue::open(&path).expect("open");
    let b = Queue::open(&path).expect("open");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.write_all_at(&(b.member() + 1).to_le_bytes(), 64)
        .expect("take the lock for b");
    let mut buf = [0u8; 8];
    assert_eq!(code(a.try_recv(&mut buf).unwrap_err()), libc_eagain());
    assert_eq!(code(a.try_send(b"x", 0).unwrap_err()), libc_eagain());
    let start = Instant::now();
    let deadline = Some(start + Duration::from_millis(200));
    assert_eq!(code(a.recv(&mut buf, deadline).unwrap_err()), 110);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // b lets go (its process would, by finishing its call): both work again.
    file.write_all_at(&0u32.to_le_bytes(), 64).expect("release");
    a.send(b"x", 0, None).expect("send");
    assert_eq!(b.recv(&mut buf, None).expect("recv").len, 1);
}

/// A queue a member made sparse (its header claiming more slots than the file holds
/// pages for) is refused: using it would fill the link's memory page by page, or fault.
#[test]
fn a_sparse_queue_is_refused() {
    use std::os::unix::fs::FileExt;
    let (_d, path) = queue(2, 8);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.write_all_at(&1000u32.to_le_bytes(), 16)
        .expect("capacity");
    let bigger = Params {
        capacity: 1000,
        message_size: 8,
    };
    file.set_len(bigger.file_size()).expect("extend, sparse");
    let before = std::fs::read(&path).expect("read");
    let err = Queue::open(&path).expect_err("sparse");
    assert!(err.to_string().contains("sparse"), "{err}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "changed on disk"
    );
}

/// A child made by fork cannot use its parent's open queue (it would share the parent's
/// member record): EBADF; a queue it opens itself works.
#[test]
#[allow(unsafe_code)]
fn a_forked_child_opens_the_queue_again() {
    let (_d, path) = queue(4, 8);
    let q = Queue::open(&path).expect("open");
    // SAFETY: the child only calls into the queue and exits with _exit.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let inherited = q.try_send(b"child", 0).map_err(code);
            let own = Queue::open(&path).and_then(|own| own.try_send(b"own", 0));
            let status = if inherited == Err(9) && own.is_ok() {
                0
            } else {
                1
            };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { nix::libc::_exit(status) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).expect("wait");
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            let mut buf = [0u8; 8];
            let r = q.try_recv(&mut buf).expect("the child's own send");
            assert_eq!(&buf[..r.len], b"own");
        }
    }
}
