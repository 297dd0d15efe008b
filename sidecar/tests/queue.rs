//! A `queue` channel through `up`: made as `mq.NAME` with its owner and mode, preallocated
//! and laid out before the link is ready; a member sends and receives through it with
//! ipclink-queue (priorities kept); `/metrics` shows its depth in messages and bytes,
//! its capacity, its oldest message, its members and its counters, and who holds it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Sidecar, get, metric, setup};
use ipclink_queue::Queue;

const LINK: &str = r#"
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: frames, namespace: vision }
spec:
  sizeLimit: 1Mi
  owner: { uid: 1000, gid: 2000 }
  channels:
    - { name: jobs, kind: queue, capacity: 8, messageSize: 256, mode: "0660" }
"#;

#[test]
fn a_queue_channel_is_made_used_and_observed() {
    let s = setup(LINK);
    let sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let file = s.link.join("mq.jobs");
    let meta = std::fs::metadata(&file).expect("the queue's file");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
        (1000, 2000, 0o660)
    );
    let size = ipclink_queue::Params {
        capacity: 8,
        message_size: 256,
    }
    .file_size();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 >= size, "preallocated");

    let q = Queue::open(&file).expect("open the channel");
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for (text, prio) in [("low", 1), ("high", 7), ("later", 1)] {
        q.send(text.as_bytes(), prio, None).expect("send");
    }
    let (_, m) = get(sidecar.port, "/metrics");
    let jobs = [("channel", "jobs"), ("kind", "queue")];
    for (family, want) in [
        ("ipclink_channel_queue_messages", 3.0),
        ("ipclink_channel_capacity_messages", 8.0),
        ("ipclink_channel_queue_bytes", 12.0),
        ("ipclink_channel_capacity_bytes", 2048.0),
        ("ipclink_queue_members", 1.0),
        ("ipclink_queue_receivers_waiting", 0.0),
        ("ipclink_queue_sent_messages_total", 3.0),
        ("ipclink_queue_received_messages_total", 0.0),
        ("ipclink_queue_recovered_messages_total", 0.0),
        ("ipclink_channel_present", 1.0),
    ] {
        assert_eq!(metric(&m, family, &jobs), Some(want), "{family}\n{m}");
    }
    let oldest = metric(&m, "ipclink_queue_oldest_message_timestamp_seconds", &jobs)
        .unwrap_or_else(|| panic!("no oldest message\n{m}"));
    assert!(oldest >= before as f64, "{oldest} < {before}");
    // This process maps it: a holder.
    assert_eq!(
        metric(
            &m,
            "ipclink_channel_holders",
            &[("channel", "jobs"), ("role", "mapper")]
        ),
        Some(1.0),
        "{m}"
    );
    let mut buf = [0u8; 256];
    let got: Vec<String> = (0..3)
        .map(|_| {
            let r = q.recv(&mut buf, None).expect("recv");
            String::from_utf8_lossy(&buf[..r.len]).into_owned()
        })
        .collect();
    assert_eq!(got, ["high", "low", "later"]);
    let (_, m) = get(sidecar.port, "/metrics");
    assert!(
        m.contains("# TYPE ipclink_queue_received_messages_total counter\n"),
        "{m}"
    );
    assert_eq!(
        metric(&m, "ipclink_queue_received_messages_total", &jobs),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, "ipclink_channel_queue_messages", &jobs),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "ipclink_queue_oldest_message_timestamp_seconds", &jobs),
        None,
        "no message waits: no oldest\n{m}"
    );
}

/// A queue's capacity or message size fixes its layout: an edit waits while a member
/// holds the link (`pending`, the queue and its messages as they were) and replaces the
/// queue once none does.
#[test]
fn a_queue_edit_waits_for_its_members_then_replaces_it() {
    let s = setup(LINK);
    let mut up = Sidecar::up(&s.root, &[&s.file], &[]);
    let file = s.link.join("mq.jobs");
    let q = Queue::open(&file).expect("open");
    q.send(b"kept", 0, None).expect("send");
    std::fs::write(&s.file, LINK.replace("capacity: 8", "capacity: 16")).expect("edit");
    up.hup();
    up.wait_log("pending=1", 1);
    let (_, m) = get(up.port, "/metrics");
    assert_eq!(
        metric(&m, "ipclink_link_pending_changes", &[("link", "frames")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(q.attrs().capacity, 8);
    assert_eq!(q.attrs().waiting, 1, "the message is still there");
    drop(q);
    up.hup();
    up.wait_log("changed=1 removed=0 pending=0", 1);
    let q = Queue::open(&file).expect("open the new queue");
    assert_eq!((q.attrs().capacity, q.attrs().waiting), (16, 0));
    assert_eq!(up.stop(), 0);
}
