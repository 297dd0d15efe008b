//! Throughput and round trip between two processes through each channel kind an
//! ipclink link provisions, beside the same primitive created raw; and the child roles
//! the pairs run in.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipclink_core::probe::{LinkProbe, Observer};
use ipclink_core::{StorageMode, Store, parse_links, validate};
use ipclink_runtime::links::LinkSet;
use nix::libc;
use nix::sys::stat::Mode;

use super::*;

/// Paths one kind of setup uses: two fifos, a socket directory, a 1 MiB region and two
/// semaphore objects.
struct Pair {
    up: PathBuf,
    down: PathBuf,
    sock: PathBuf,
    buf: PathBuf,
    ping: PathBuf,
    pong: PathBuf,
}

pub(super) fn two_process(store: &Store, raw: &Path, cfg: &Config, rows: &mut Vec<String>) {
    let yaml = r#"
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: pair, namespace: bench }
spec:
  sizeLimit: 4Mi
  channels:
    - { name: up, kind: fifo }
    - { name: down, kind: fifo }
    - { name: sock, kind: socket }
    - { name: buf, kind: shm, size: 1Mi }
  semaphores:
    - { name: ping }
    - { name: pong }
"#;
    let plan = validate(&parse_links("bench", yaml).expect("parse")[0]).expect("valid");
    store.materialize(&plan).expect("materialize");
    let dir = store.link_path("bench", "pair");
    let ipc = Pair {
        up: dir.join("up"),
        down: dir.join("down"),
        sock: dir.join("sock/s"),
        buf: dir.join("buf"),
        ping: dir.join("sem.ping"),
        pong: dir.join("sem.pong"),
    };
    // The same primitives made the plain way.
    for f in ["up", "down"] {
        nix::unistd::mkfifo(&raw.join(f), Mode::from_bits_truncate(0o600)).expect("mkfifo");
    }
    std::fs::create_dir(raw.join("sock")).expect("mkdir");
    File::create(raw.join("buf"))
        .and_then(|f| f.set_len(1 << 20))
        .expect("buf");
    for s in ["ping", "pong"] {
        File::create(raw.join(s))
            .and_then(|f| f.set_len(32))
            .expect("sem file");
        let p = map(&raw.join(s), 32) as *mut libc::sem_t;
        // SAFETY: p maps 32 writable shared bytes, the size of sem_t on 64-bit Linux.
        assert_eq!(unsafe { libc::sem_init(p, 1, 0) }, 0);
    }
    let rawp = Pair {
        up: raw.join("up"),
        down: raw.join("down"),
        sock: raw.join("sock/s"),
        buf: raw.join("buf"),
        ping: raw.join("ping"),
        pong: raw.join("pong"),
    };
    let mb = |bytes: usize, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let us = |n: usize, d: Duration| d.as_secs_f64() * 1e6 / n as f64;

    let t = side_by_side(
        cfg.reps,
        || mb(cfg.stream_bytes, fifo_stream(&ipc, cfg.stream_bytes)),
        || mb(cfg.stream_bytes, fifo_stream(&rawp, cfg.stream_bytes)),
    );
    row(rows, "fifo throughput", "MB/s", t, "≥ 0.95");
    let t = side_by_side(
        cfg.reps,
        || us(cfg.round_trips, fifo_rtt(&ipc, cfg.round_trips)),
        || us(cfg.round_trips, fifo_rtt(&rawp, cfg.round_trips)),
    );
    row(rows, "fifo round trip", "µs", t, "≤ 1.05");
    let t = side_by_side(
        cfg.reps,
        || mb(cfg.stream_bytes, sock_stream(&ipc, cfg.stream_bytes)),
        || mb(cfg.stream_bytes, sock_stream(&rawp, cfg.stream_bytes)),
    );
    row(rows, "socket throughput", "MB/s", t, "≥ 0.95");
    let t = side_by_side(
        cfg.reps,
        || us(cfg.round_trips, sock_rtt(&ipc, cfg.round_trips)),
        || us(cfg.round_trips, sock_rtt(&rawp, cfg.round_trips)),
    );
    row(rows, "socket round trip", "µs", t, "≤ 1.05");
    let bytes = cfg.shm_rounds << 20;
    let t = side_by_side(
        cfg.reps,
        || mb(bytes, shm_handoff(&ipc, cfg.shm_rounds, 1 << 20)),
        || mb(bytes, shm_handoff(&rawp, cfg.shm_rounds, 1 << 20)),
    );
    row(
        rows,
        "shm + 2 semaphores throughput, 1 MiB hand-offs",
        "MB/s",
        t,
        "≥ 0.95",
    );
    let t = side_by_side(
        cfg.reps,
        || us(cfg.round_trips, shm_handoff(&ipc, cfg.round_trips, 0)),
        || us(cfg.round_trips, shm_handoff(&rawp, cfg.round_trips, 0)),
    );
    row(rows, "semaphore ping-pong round trip", "µs", t, "≤ 1.05");
    store.teardown("bench", "pair").expect("teardown");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn fifo_stream(p: &Pair, bytes: usize) -> Duration {
    let c = spawn(&["fifo-source", s(&p.up), &bytes.to_string()]);
    let d = drain(&mut File::open(&p.up).expect("open fifo"), bytes);
    finish(c);
    d
}

/// Reads `bytes` in CHUNK-sized reads; the clock starts after the first read, so the
/// peer's start-up is not counted.
fn drain(r: &mut impl Read, bytes: usize) -> Duration {
    let mut buf = vec![0u8; CHUNK];
    let mut got = r.read(&mut buf).expect("read");
    let start = Instant::now();
    while got < bytes {
        let n = r.read(&mut buf).expect("read");
        assert!(n > 0, "early EOF");
        got += n;
    }
    start.elapsed()
}

fn fifo_rtt(p: &Pair, n: usize) -> Duration {
    let c = spawn(&["fifo-echo", s(&p.up), s(&p.down)]);
    let mut w = OpenOptions::new().write(true).open(&p.up).expect("up");
    let mut r = File::open(&p.down).expect("down");
    let d = ping_pong(&mut w, &mut r, n);
    drop(w);
    finish(c);
    d
}

fn ping_pong(w: &mut impl Write, r: &mut impl Read, n: usize) -> Duration {
    let mut b = [0u8; 1];
    // Warm up.
    for _ in 0..100 {
        w.write_all(&b).expect("write");
        r.read_exact(&mut b).expect("read");
    }
    let start = Instant::now();
    for _ in 0..n {
        w.write_all(&b).expect("write");
        r.read_exact(&mut b).expect("read");
    }
    start.elapsed()
}

fn listen(p: &Path) -> UnixListener {
    let _ = std::fs::remove_file(p);
    UnixListener::bind(p).expect("bind")
}

fn sock_stream(p: &Pair, bytes: usize) -> Duration {
    let l = listen(&p.sock);
    let c = spawn(&["sock-source", s(&p.sock), &bytes.to_string()]);
    let (mut conn, _) = l.accept().expect("accept");
    let d = drain(&mut conn, bytes);
    finish(c);
    d
}

fn sock_rtt(p: &Pair, n: usize) -> Duration {
    let l = listen(&p.sock);
    let c = spawn(&["sock-echo", s(&p.sock)]);
    let (conn, _) = l.accept().expect("accept");
    let mut r = conn.try_clone().expect("clone");
    let mut w = conn;
    let d = ping_pong(&mut w, &mut r, n);
    drop(w);
    drop(r);
    finish(c);
    d
}

fn map(path: &Path, len: usize) -> *mut u8 {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for mmap");
    // SAFETY: a fresh shared mapping of an open file; the result is checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap {}", path.display());
    p as *mut u8
}

/// Parent writes `chunk` bytes into the region and posts ping; the child waits, copies
/// them out and posts pong. With chunk 0 this is a semaphore ping-pong.
fn shm_handoff(p: &Pair, rounds: usize, chunk: usize) -> Duration {
    let buf = map(&p.buf, 1 << 20);
    let ping = map(&p.ping, 32) as *mut libc::sem_t;
    let pong = map(&p.pong, 32) as *mut libc::sem_t;
    let c = spawn(&[
        "shm-echo",
        s(&p.buf),
        s(&p.ping),
        s(&p.pong),
        &rounds.to_string(),
        &chunk.to_string(),
    ]);
    let local = vec![5u8; chunk.max(1)];
    let start = Instant::now();
    for _ in 0..rounds {
        // SAFETY: buf maps 1 MiB and chunk ≤ 1 MiB; ping/pong map initialized sem_t.
        unsafe {
            std::ptr::copy_nonoverlapping(local.as_ptr(), buf, chunk);
            libc::sem_post(ping);
            while libc::sem_wait(pong) != 0 {}
        }
    }
    let d = start.elapsed();
    finish(c);
    // SAFETY: unmapping the regions mapped above, no longer used.
    unsafe {
        libc::munmap(buf.cast(), 1 << 20);
        libc::munmap(ping.cast(), 32);
        libc::munmap(pong.cast(), 32);
    }
    d
}

pub(super) fn child(args: &[String]) {
    let arg = |i: usize| args[i].as_str();
    match arg(0) {
        "fifo-source" => {
            let mut w = OpenOptions::new().write(true).open(arg(1)).expect("fifo");
            write_n(&mut w, arg(2).parse().expect("bytes"));
        }
        "fifo-echo" => {
            let mut r = File::open(arg(1)).expect("up");
            let mut w = OpenOptions::new().write(true).open(arg(2)).expect("down");
            echo(&mut r, &mut w);
        }
        "sock-source" => {
            let mut c = UnixStream::connect(arg(1)).expect("connect");
            write_n(&mut c, arg(2).parse().expect("bytes"));
        }
        "sock-echo" => {
            let c = UnixStream::connect(arg(1)).expect("connect");
            let mut r = c.try_clone().expect("clone");
            let mut w = c;
            echo(&mut r, &mut w);
        }
        "shm-echo" => {
            let buf = map(Path::new(arg(1)), 1 << 20);
            let ping = map(Path::new(arg(2)), 32) as *mut libc::sem_t;
            let pong = map(Path::new(arg(3)), 32) as *mut libc::sem_t;
            let rounds: usize = arg(4).parse().expect("rounds");
            let chunk: usize = arg(5).parse().expect("chunk");
            let mut local = vec![0u8; chunk.max(1)];
            for _ in 0..rounds {
                // SAFETY: as in the parent: valid mappings, chunk ≤ 1 MiB.
                unsafe {
                    while libc::sem_wait(ping) != 0 {}
                    std::ptr::copy_nonoverlapping(buf, local.as_mut_ptr(), chunk);
                    libc::sem_post(pong);
                }
            }
            std::hint::black_box(&local);
        }
        "hold" => {
            // 32 FIFO read ends and 32 regions of the mixed link, until stdin closes.
            let dir = Path::new(arg(1));
            let q: usize = arg(2).parse().expect("q");
            let start: usize = arg(3).parse().expect("start");
            let mut held = Vec::new();
            for k in 0..32 {
                let i = (start + k) % q.max(1);
                held.push(fifo_reader(&dir.join(format!("f{i}"))));
                held.push(File::open(dir.join(format!("m{i}"))).expect("region"));
            }
            println!("ready");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(held);
        }
        "readers" => {
            // COUNT FIFO read ends of the fifos link from START on, until stdin closes.
            let dir = Path::new(arg(1));
            let start: usize = arg(2).parse().expect("start");
            let count: usize = arg(3).parse().expect("count");
            let held: Vec<File> = (start..start + count)
                .map(|i| fifo_reader(&dir.join(format!("f{i}"))))
                .collect();
            println!("ready");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(held);
        }
        "dups" => {
            // N duplicates of one FIFO read end of the link, until stdin closes.
            let fifo = fifo_reader(Path::new(arg(1)));
            let n: usize = arg(2).parse().expect("n");
            let dups: Vec<OwnedFd> = (0..n)
                .map_while(|_| fifo.as_fd().try_clone_to_owned().ok())
                .collect();
            println!("ready {}", dups.len());
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(dups);
        }
        "hostile-scrape" => {
            // A process of its own (its RSS is the scraper's alone): scrapes the links
            // under ROOT as `up` does (every process, their network namespaces), SCRAPES
            // times; prints the p99 and the largest scrape in ms, the peak RSS in KiB,
            // the /metrics bytes and the median scrape in ms.
            let root = Path::new(arg(1));
            let scrapes: usize = arg(2).parse().expect("scrapes");
            let store = Store::open(root, StorageMode::Tmpfs).expect("store");
            let (records, _) = store.records();
            let probes = records
                .iter()
                .map(|r| LinkProbe::of_record(&store, r).expect("probe"))
                .collect();
            let observer = || {
                Observer::new(
                    Box::new(ipclink_core::probe::holders::AllProcesses),
                    true,
                    false,
                )
            };
            let mut set = LinkSet::new(probes);
            let mut times = Vec::new();
            let mut bytes = 0;
            for _ in 0..scrapes {
                // A fresh observer: every scrape scans the processes again, as scrapes
                // more than a second apart do (one observation serves a second).
                set = set.observed_by(observer());
                let start = Instant::now();
                let mut text = String::new();
                set.render_metrics(&mut text);
                times.push(start.elapsed().as_secs_f64() * 1e3);
                bytes = text.len();
            }
            times.sort_by(f64::total_cmp);
            // Nearest rank: of 100 scrapes, the 99th (the first, with nothing cached
            // yet, is among them).
            let rank = |q: usize| times[(times.len() * q).div_ceil(100).max(1) - 1];
            let (p50, p99) = (rank(50), rank(99));
            let hwm = std::fs::read_to_string("/proc/self/status")
                .expect("status")
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .expect("VmHWM");
            println!(
                "{p99:.2} {:.2} {hwm} {bytes} {p50:.2}",
                times[times.len() - 1]
            );
        }
        other => panic!("unknown child role {other}"),
    }
}

fn write_n(w: &mut impl Write, mut bytes: usize) {
    let buf = vec![1u8; CHUNK];
    while bytes > 0 {
        let n = bytes.min(CHUNK);
        w.write_all(&buf[..n]).expect("write");
        bytes -= n;
    }
}

fn echo(r: &mut impl Read, w: &mut impl Write) {
    let mut b = [0u8; 1];
    while r.read_exact(&mut b).is_ok() {
        if w.write_all(&b).is_err() {
            break;
        }
    }
}
