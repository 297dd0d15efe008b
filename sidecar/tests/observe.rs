//! What `ipclink-sidecar up` observes without disturbing it: a reader blocked in a
//! FIFO's `open()` stays blocked however often the metrics are scraped, and each object's
//! holders are named by role (reader, writer, mapper).

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{LINK, Sidecar, get, metric, setup};
use ipclink_testkit::http::promtool_check;
use ipclink_testkit::{KillOnDrop, require_root};

/// The kernel function a process sleeps in (`/proc/PID/wchan`).
fn wchan(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

/// Polls `f` every 20 ms for up to 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    ipclink_testkit::wait_until(
        what,
        Duration::from_secs(10),
        Duration::from_millis(20),
        || f().then_some(()),
    )
}

#[test]
fn a_reader_blocked_in_open_stays_blocked_through_100_scrapes_then_gets_every_byte() {
    let s = setup(LINK);
    let sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let fifo = s.link.join("events");
    let received = s.root.with_extension("received");
    // cat opens the FIFO for reading first, as a consumer started before its producer
    // does: open() blocks until a writer comes.
    let mut reader = KillOnDrop(
        Command::new("cat")
            .arg(&fifo)
            .stdout(File::create(&received).expect("output file"))
            .spawn()
            .expect("cat"),
    );
    let pid = reader.0.id();
    eventually("cat waits in the FIFO's open()", || {
        wchan(pid) == "wait_for_partner"
    });
    let events = [("channel", "events"), ("kind", "fifo")];
    for i in 0..100 {
        let (code, body) = get(sidecar.port, "/metrics");
        assert_eq!(code, 200);
        // A process blocked in open() holds no descriptor yet: nobody holds either end,
        // so the pipe is empty, and the probe never opened it to find out.
        for (family, want) in [
            ("ipclink_fifo_reader_present", 0.0),
            ("ipclink_fifo_writer_present", 0.0),
            ("ipclink_channel_queue_bytes", 0.0),
            ("ipclink_channel_observed", 1.0),
        ] {
            assert_eq!(
                metric(&body, family, &events),
                Some(want),
                "{family} at scrape {i}\n{body}"
            );
        }
        assert!(
            reader.0.try_wait().expect("try_wait").is_none(),
            "scrape {i} let the reader's open() return (it read EOF)"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(wchan(pid), "wait_for_partner", "the reader left its open()");

    // The producer comes: 1 MiB, sixteen times the pipe, so the reader drains while the
    // writer writes; while both hold their ends the scrape names them.
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut writer = OpenOptions::new().write(true).open(&fifo).expect("writer");
    writer.write_all(&payload).expect("write");
    eventually("both ends seen with their holders", || {
        let (_, body) = get(sidecar.port, "/metrics");
        metric(&body, "ipclink_fifo_reader_present", &events) == Some(1.0)
            && metric(&body, "ipclink_fifo_writer_present", &events) == Some(1.0)
            && metric(
                &body,
                "ipclink_channel_holder_info",
                &[
                    ("channel", "events"),
                    ("role", "reader"),
                    ("command", "cat"),
                ],
            ) == Some(1.0)
    });
    drop(writer);
    let status = reader.0.wait().expect("cat exits at EOF");
    assert!(status.success(), "{status}");
    let got = std::fs::read(&received).expect("received");
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "the bytes differ");
}

#[test]
fn holders_are_named_by_role_for_a_fifo_a_socket_and_a_region_mapped_then_closed() {
    require_root();
    ipclink_testkit::require_tool("python3");
    let s = setup(LINK);
    let sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let fifo = s.link.join("events");
    // Shells that open one end of the FIFO each and then become `sleep` and `tail`,
    // keeping the descriptor.
    let hold = |script: &str| {
        KillOnDrop(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("sh")
                .arg(&fifo)
                .spawn()
                .expect("sh"),
        )
    };
    let mut consumer = hold(r#"exec 3<"$1"; exec sleep 600"#);
    let _producer = hold(r#"exec 3>"$1"; exec tail -f /dev/null"#);
    // A server (this process) with three clients (Python) waiting in accept().
    let sock = s.link.join("control/server.sock");
    let _listener = UnixListener::bind(&sock).expect("bind");
    let mut clients = KillOnDrop(
        Command::new("python3")
            .arg("-c")
            .arg(
                "import socket, sys, time\n\
                 cs = [socket.socket(socket.AF_UNIX) for _ in range(3)]\n\
                 for c in cs: c.connect(sys.argv[1])\n\
                 print('connected', flush=True)\n\
                 time.sleep(600)\n",
            )
            .arg(&sock)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut line = [0u8; 10];
    clients
        .0
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut line)
        .expect("the clients connect");
    // The region, mapped by this process, whose descriptor is then closed.
    let region = File::options()
        .read(true)
        .write(true)
        .open(s.link.join("frames"))
        .expect("region");
    #[allow(unsafe_code)]
    // SAFETY: a fresh shared mapping of a regular file of at least 4096 bytes, unmapped
    // at the end of the test and touched by nobody else in this process.
    let mapped = unsafe {
        nix::sys::mman::mmap(
            None,
            std::num::NonZeroUsize::new(4096).expect("size"),
            nix::sys::mman::ProtFlags::PROT_READ,
            nix::sys::mman::MapFlags::MAP_SHARED,
            &region,
            0,
        )
    }
    .expect("mmap");
    drop(region);
    let me = std::fs::read_to_string("/proc/self/comm").expect("comm");
    let me = me.trim_end();

    let who = |body: &str, channel: &str, role: &str, command: &str| {
        metric(
            body,
            "ipclink_channel_holder_info",
            &[("channel", channel), ("role", role), ("command", command)],
        )
    };
    let mut body = String::new();
    eventually("every holder seen", || {
        body = get(sidecar.port, "/metrics").1;
        who(&body, "events", "reader", "sleep").is_some()
            && who(&body, "events", "writer", "tail").is_some()
            && who(&body, "control", "writer", "python3").is_some()
    });
    let count = |role: &str, channel: &str| {
        metric(
            &body,
            "ipclink_channel_holders",
            &[("channel", channel), ("role", role)],
        )
    };
    assert_eq!(count("reader", "events"), Some(1.0), "{body}");
    assert_eq!(count("writer", "events"), Some(1.0), "{body}");
    assert_eq!(who(&body, "control", "reader", me), Some(1.0), "{body}");
    // Three sockets of one process: one holder.
    assert_eq!(count("writer", "control"), Some(1.0), "{body}");
    assert_eq!(
        metric(
            &body,
            "ipclink_socket_backlog_connections",
            &[("channel", "control")]
        ),
        Some(3.0),
        "{body}"
    );
    assert_eq!(who(&body, "frames", "mapper", me), Some(1.0), "{body}");
    assert_eq!(
        who(&body, "frames", "reader", me),
        None,
        "the region's descriptor was closed: {body}"
    );
    promtool_check(&body);

    // The consumer goes: its hold goes with it at the next scrape.
    consumer.0.kill().expect("kill");
    consumer.0.wait().expect("wait");
    std::thread::sleep(Duration::from_millis(1100)); // one observation serves a second
    let (_, body) = get(sidecar.port, "/metrics");
    let events = [("channel", "events")];
    assert_eq!(who(&body, "events", "reader", "sleep"), None, "{body}");
    assert_eq!(
        metric(&body, "ipclink_fifo_reader_present", &events),
        Some(0.0)
    );
    assert_eq!(
        metric(&body, "ipclink_fifo_writer_present", &events),
        Some(1.0)
    );
    #[allow(unsafe_code)]
    // SAFETY: the mapping made above, used by nothing since.
    unsafe { nix::sys::mman::munmap(mapped, 4096) }.expect("munmap");
}
