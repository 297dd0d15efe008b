//! Crash safety under load: three senders and three receivers (`ipclink-queue pump-send`
//! and `pump-recv`, separate processes) on a small queue while the test kills one of
//! them with SIGKILL at a random moment, 2,000 times, starting a new one each time.
//!
//! Each sender prints `I ID` before a send and `S ID` after it returned; each receiver
//! prints `R ID SEQ` before its receive commits. A receiver killed after printing but
//! before committing gives its message back (another receiver prints it again): its last
//! line counts only if the queue's record of its last commit says so. At the end every
//! message whose send returned was received exactly once, every message received was
//! one a sender began to send, nothing stays in the queue, and every process stopped
//! when asked (none stuck).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipclink_queue::{Params, Queue, create, layout, stats};

const BIN: &str = env!("CARGO_BIN_EXE_ipclink-queue");
const KILLS: usize = 2_000;
/// Messages each sender sends at most (a new one starts after each kill): enough to keep
/// the queue busy, few enough to keep every line in memory.
const PER_SENDER: &str = "300";

struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    sender: bool,
}

impl Peer {
    fn spawn(queue: &Path, sender: Option<String>) -> Peer {
        let mut cmd = Command::new(BIN);
        match &sender {
            Some(name) => cmd.arg("pump-send").arg(queue).arg(name).arg(PER_SENDER),
            None => cmd.arg("pump-recv").arg(queue),
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a peer");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(l);
            }
        });
        Peer {
            stdin: child.stdin.take(),
            child,
            lines,
            reader: Some(reader),
            sender: sender.is_some(),
        }
    }

    /// Waits (up to `limit`) for the process to end and for all it printed.
    fn finish(&mut self, limit: Duration) -> Vec<String> {
        let start = Instant::now();
        while self.child.try_wait().expect("wait").is_none() {
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("a peer is stuck: it did not stop within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(r) = self.reader.take() {
            r.join().expect("reader");
        }
        std::mem::take(&mut self.lines.lock().expect("lines"))
    }

    /// Waits until the peer has opened the queue (printed its member record).
    fn wait_member(&self) {
        let start = Instant::now();
        while self.member().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "stuck: a peer never opened the queue"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// The member record the peer took (its first line), once it printed it.
    fn member(&self) -> Option<u32> {
        self.lines
            .lock()
            .expect("lines")
            .first()
            .and_then(|l| l.strip_prefix("M ")?.parse().ok())
    }
}

/// A small xorshift: the kills' timing and targets, reproducible from the seed printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Ledger {
    begun: Vec<String>,
    sent: Vec<String>,
    /// Receipts that committed, by message.
    received: HashMap<String, usize>,
    given_back: usize,
}

impl Ledger {
    /// Adds what a finished peer printed; `committed` is the last commit its member
    /// record shows (receivers killed or not).
    fn add(&mut self, lines: &[String], committed: Option<u64>) {
        let mut last_receipt: Option<(String, u64)> = None;
        for l in lines {
            let mut words = l.split(' ');
            match (words.next(), words.next(), words.next()) {
                (Some("I"), Some(id), None) => self.begun.push(id.to_owned()),
                (Some("S"), Some(id), None) => self.sent.push(id.to_owned()),
                (Some("R"), Some(id), Some(seq)) => {
                    if let Some((id, _)) = last_receipt.take() {
                        *self.received.entry(id).or_default() += 1;
                    }
                    last_receipt = Some((id.to_owned(), seq.parse().expect("seq")));
                }
                (Some("M"), Some(_), None) => {}
                _ => panic!("a peer printed {l:?}"),
            }
        }
        if let Some((id, seq)) = last_receipt {
            if committed == Some(seq + 1) {
                *self.received.entry(id).or_default() += 1;
            } else {
                self.given_back += 1;
            }
        }
    }
}

#[test]
fn thousands_of_kills_lose_nothing_duplicate_nothing_and_leave_nobody_stuck() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("mq.jobs");
    create(
        &path,
        Params {
            capacity: 16,
            message_size: 32,
        },
        0o600,
    )
    .expect("create");
    let q = Queue::open(&path).expect("open");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let mut names = 0;
    let sender = |names: &mut usize| {
        *names += 1;
        Some(format!("s{names}"))
    };
    let mut peers: Vec<Peer> = (0..6)
        .map(|i| Peer::spawn(&path, if i < 3 { sender(&mut names) } else { None }))
        .collect();
    let mut ledger = Ledger::default();
    let start = Instant::now();
    // Every peer has its member record before the next kill: so nobody is opening the
    // queue when one is killed, and its record's last commit is read before a new peer
    // can take the record.
    for p in &peers {
        p.wait_member();
    }
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_micros(rng.next(3_000)));
        let i = rng.next(peers.len() as u64) as usize;
        let was_sender = peers[i].sender;
        let member = peers[i].member();
        peers[i].child.kill().expect("SIGKILL");
        let lines = peers[i].finish(Duration::from_secs(30));
        ledger.add(&lines, member.map(|m| q.last_committed(m)));
        peers[i] = Peer::spawn(&path, if was_sender { sender(&mut names) } else { None });
        peers[i].wait_member();
    }
    let killing = start.elapsed();
    // Senders stop first; receivers drain the queue, then stop.
    for p in peers.iter_mut().filter(|p| p.sender) {
        p.stdin.take();
    }
    for p in peers.iter_mut().filter(|p| p.sender) {
        let lines = p.finish(Duration::from_secs(30));
        ledger.add(&lines, None);
    }
    let drained = Instant::now();
    while q.attrs().waiting > 0 {
        assert!(
            drained.elapsed() < Duration::from_secs(30),
            "stuck: the receivers do not drain the queue"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for p in peers.iter_mut().filter(|p| !p.sender) {
        p.stdin.take();
        let member = p.member();
        let lines = p.finish(Duration::from_secs(30));
        ledger.add(&lines, member.map(|m| q.last_committed(m)));
    }
    let mut buf = [0u8; 32];
    let mut left = 0;
    while q.try_recv(&mut buf).is_ok() {
        left += 1;
    }
    let s = stats::read(&std::fs::File::open(&path).expect("open")).expect("stats");
    let duplicated: Vec<_> = ledger.received.iter().filter(|(_, n)| **n > 1).collect();
    let lost: Vec<_> = ledger
        .sent
        .iter()
        .filter(|id| !ledger.received.contains_key(*id))
        .collect();
    let begun: std::collections::HashSet<_> = ledger.begun.iter().collect();
    let phantom: Vec<_> = ledger
        .received
        .keys()
        .filter(|id| !begun.contains(id))
        .collect();
    let unfinished = ledger.begun.len() - ledger.sent.len();
    eprintln!(
        "{KILLS} kills in {killing:.1?}: {} sends returned, {} received ({unfinished} sends killed before returning, {} of them delivered), {} given back by killed receivers; the queue recovered {} and aborted {}; lost {}, duplicated {}, stuck 0",
        ledger.sent.len(),
        ledger.received.len(),
        ledger.received.len().saturating_sub(ledger.sent.len()),
        ledger.given_back,
        s.recovered,
        s.aborted,
        lost.len(),
        duplicated.len()
    );
    assert_eq!(left, 0, "messages left in the queue");
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(phantom.is_empty(), "received but never sent: {phantom:?}");
    assert!(
        ledger.sent.len() > 1_000,
        "too little traffic to mean anything"
    );
    assert!(
        s.recovered + s.aborted > 0 && ledger.given_back > 0,
        "no kill hit a message in flight: {s:?}"
    );
}

/// A member killed asleep leaves its wait in the queue's count of waiters only until
/// another member looks: a send that wakes nobody looks for members that died asleep
/// and takes their waits out; a new member taking the dead one's record takes its waits
/// out at once.
#[test]
fn a_waiter_killed_asleep_stops_being_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("mq.jobs");
    create(
        &path,
        Params {
            capacity: 1,
            message_size: 8,
        },
        0o600,
    )
    .expect("create");
    let stat = || stats::read(&std::fs::File::open(&path).expect("open")).expect("stats");
    let wait_for = |done: &dyn Fn(&stats::Stats) -> bool| {
        let start = Instant::now();
        while !done(&stat()) {
            assert!(start.elapsed() < Duration::from_secs(20), "{:?}", stat());
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Record 1's share of the waits at `field`, read from the file.
    let share = |field: u64| {
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&path).expect("open"),
            &mut b,
            layout::Params::member(1) + field,
        )
        .expect("read");
        u32::from_le_bytes(b)
    };
    // Killed once counted in the total and in its record's share: asleep.
    let kill_asleep = |args: &[&str], field: u64, asleep: &dyn Fn(&stats::Stats) -> bool| {
        let mut child = Command::new(BIN)
            .args(args)
            .env("IPCLINK_QUEUE_SPIN", "0")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        wait_for(&|s| asleep(s) && share(field) == 1);
        child.kill().expect("kill");
        child.wait().expect("reap");
    };
    let q = Queue::open(&path).expect("open"); // record 0
    let p = path.to_str().expect("utf-8");
    // A receiver asleep on the empty queue (record 1), killed.
    kill_asleep(&["recv", p], layout::M_RECV_WAITERS, &|s| {
        s.receivers_waiting == 1
    });
    assert_eq!(stat().receivers_waiting, 1, "nobody has looked yet");
    q.send(b"x", 0, None).expect("send");
    assert_eq!(stat().receivers_waiting, 0, "the send looked");
    // A sender asleep on the full queue (record 1 again), killed; a new member takes
    // record 1.
    kill_asleep(&["send", p, "y"], layout::M_SEND_WAITERS, &|s| {
        s.senders_waiting == 1
    });
    assert_eq!(stat().senders_waiting, 1, "nobody has looked yet");
    let again = Queue::open(&path).expect("open");
    assert_eq!(again.member(), 1);
    assert_eq!(stat().senders_waiting, 0, "the new member took the record");
    let mut buf = [0u8; 8];
    assert_eq!(q.recv(&mut buf, None).expect("recv").len, 1);
    assert_eq!(
        &buf[..1],
        b"x",
        "the killed sender's message was never sent"
    );
    assert_eq!(stat().waiting, 0);
}
