//! ipclink-bench: side-by-side figures, in one run, of
//! 1. throughput and round trip between two processes through each ipclink-provisioned
//!    channel kind vs the same primitive created raw in a temporary directory;
//! 2. depth probes over 10,000 channels of each kind vs the cheapest raw syscall sequence
//!    that does not disturb the channel, and one mixed 10,000-channel scrape.
//!
//! `ipclink-bench [--quick]`. Run as root (the links then get their own tmpfs). Prints a
//! Markdown table. The figures are not asserted anywhere: these machines are noisy, so
//! compare the ratios, which come from runs interleaved in the same process.

#![allow(unsafe_code)] // mmap and process-shared semaphores for the shm hand-off

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipclink_core::probe::holders::{Holders, Members, Owner, Process};
use ipclink_core::probe::{LinkProbe, Observation, Observer, SocketTable};
use ipclink_core::{LinkPlan, StorageMode, Store, parse_links, validate};
use ipclink_runtime::links::LinkSet;
use nix::dir::Dir;
use nix::fcntl::{OFlag, openat};
use nix::libc;
use nix::sys::stat::{Mode, fstat};

const CHUNK: usize = 64 * 1024;

struct Config {
    stream_bytes: usize,
    round_trips: usize,
    shm_rounds: usize,
    reps: usize,
    probe_channels: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        pin(1);
        child(&args[2..]);
        return;
    }
    let cores = nproc();
    pin(0);
    let quick = args.iter().any(|a| a == "--quick");
    let cfg = if quick {
        Config {
            stream_bytes: 32 << 20,
            round_trips: 2_000,
            shm_rounds: 64,
            reps: 1,
            probe_channels: 1_000,
        }
    } else {
        Config {
            stream_bytes: 512 << 20,
            round_trips: 20_000,
            shm_rounds: 512,
            reps: 7,
            probe_channels: 10_000,
        }
    };
    raise_nofile();
    let base = tempfile::tempdir().expect("temp dir");
    let mode = StorageMode::default_for_user();
    let store = Store::open(base.path(), mode).expect("store");
    let raw = tempfile::Builder::new()
        .prefix("ipclink-bench-raw")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .expect("raw temp dir");

    println!(
        "ipclink-bench{} — storage {:?}, {} cores",
        if quick { " --quick" } else { "" },
        mode,
        cores
    );
    println!();
    println!("| measure | ipclink | raw | ipclink/raw | target |");
    println!("|---|---:|---:|---:|---|");
    let mut rows = Vec::new();
    two_process(&store, raw.path(), &cfg, &mut rows);
    probes(&store, &cfg, &mut rows);
    iceoryx2(&store, &cfg, &mut rows);
    for r in &rows {
        println!("{r}");
    }
    for ns in ["bench", "probe"] {
        for name in ["pair", "fifos", "sems", "shms", "socks", "mixed"] {
            let _ = store.teardown(ns, name);
        }
    }
}

fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let want = 200_000;
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err()
        && let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `ipclink` and `raw` `reps` times each, alternating which goes first, and
/// returns the medians: drift of the machine then falls on both sides alike.
fn side_by_side(
    reps: usize,
    mut ipclink: impl FnMut() -> f64,
    mut raw: impl FnMut() -> f64,
) -> (f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..reps {
        if i % 2 == 0 {
            a.push(ipclink());
            b.push(raw());
        } else {
            b.push(raw());
            a.push(ipclink());
        }
    }
    (median(a), median(b))
}

/// Pins this process to one CPU (the parent to 0, children to 1), so every round trip
/// crosses the same two cores on both sides of a comparison.
fn pin(cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    // A CPU that does not exist is refused by the kernel; the process then stays free.
    if set.set(cpu).is_ok() {
        let _ = sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn row(rows: &mut Vec<String>, what: &str, unit: &str, (a, b): (f64, f64), target: &str) {
    rows.push(format!(
        "| {what} ({unit}) | {a:.2} | {b:.2} | {:.3} | {target} |",
        a / b
    ));
}

fn spawn(args: &[&str]) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .arg("--child")
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// A child holding 64 objects of the link at `dir` (its `q` FIFOs and regions from
/// `start`), ready when this returns; it lets go when its stdin closes.
fn spawn_holder(dir: &Path, q: usize, start: usize) -> Child {
    spawn_child(&[
        "hold".as_ref(),
        dir.as_os_str(),
        q.to_string().as_ref(),
        start.to_string().as_ref(),
    ])
}

/// A child of this binary in the role and with the arguments `args`, once it said it is
/// ready; it ends when its stdin closes.
fn spawn_child(args: &[&std::ffi::OsStr]) -> Child {
    let mut c = Command::new(std::env::current_exe().expect("own path"))
        .arg("--child")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn holder");
    let mut line = [0u8; 6];
    c.stdout
        .take()
        .expect("stdout")
        .read_exact(&mut line)
        .expect("holder ready");
    c
}

/// A read end of the FIFO at `path`, opened without waiting for a writer.
fn fifo_reader(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Members that are these pids.
struct Pids(Vec<i32>);

impl Members for Pids {
    fn processes(&mut self) -> Result<Vec<Process>, String> {
        Ok(self
            .0
            .iter()
            .map(|&pid| Process {
                pid,
                owner: std::sync::Arc::new(Owner {
                    command: ipclink_core::probe::holders::command(pid),
                    ..Owner::default()
                }),
                scope: None,
            })
            .collect())
    }
}

fn finish(mut c: Child) {
    let s = c.wait().expect("child");
    assert!(s.success(), "bench child failed: {s}");
}

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

fn two_process(store: &Store, raw: &Path, cfg: &Config, rows: &mut Vec<String>) {
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

fn child(args: &[String]) {
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

// ---- probes ----

fn link_of(store: &Store, name: &str, body: String) -> LinkPlan {
    let yaml = format!(
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: {name}, namespace: probe }}\nspec:\n  sizeLimit: 256Mi\n{body}"
    );
    let plan = validate(&parse_links("bench", &yaml).expect("parse")[0]).expect("valid");
    store.materialize(&plan).expect("materialize");
    // Scrapes come seconds apart; a probe reuses a directory's listing once its
    // modification time is settled (50 ms old), which a link made a moment ago is not.
    std::thread::sleep(Duration::from_millis(100));
    plan
}

fn channels(kind: &str, prefix: &str, n: usize) -> String {
    let extra = if kind == "shm" { ", size: 4Ki" } else { "" };
    (0..n)
        .map(|i| format!("    - {{ name: {prefix}{i}, kind: {kind}{extra} }}\n"))
        .collect()
}

fn semaphores(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("    - {{ name: {prefix}{i}, initial: 1 }}\n"))
        .collect()
}

fn names(plan: &LinkPlan) -> Vec<CString> {
    plan.objects
        .iter()
        .map(|o| CString::new(o.file_name()).expect("no NUL"))
        .collect()
}

fn time_us_per(n: usize, f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// Medians of (probe, raw) per-object µs for objects read through kept descriptors.
fn kept_fd_probe(
    store: &Store,
    plan: &LinkPlan,
    reps: usize,
    raw_read: impl Fn(&File),
) -> (f64, f64) {
    let n = plan.objects.len();
    let link = store.open_link(&plan.namespace, &plan.name).expect("open");
    let none = Observation::default();
    side_by_side(
        reps,
        || {
            let mut probe = LinkProbe::open(store, plan).expect("probe");
            probe.sample(&none); // opens and keeps the descriptors
            time_us_per(n, || drop(probe.sample(&none)))
        },
        || {
            let files: Vec<File> = names(plan)
                .iter()
                .map(|nm| {
                    File::from(
                        openat(link.as_fd(), nm.as_c_str(), OFlag::O_RDONLY, Mode::empty())
                            .expect("open"),
                    )
                })
                .collect();
            time_us_per(n, || files.iter().for_each(&raw_read))
        },
    )
}

fn probes(store: &Store, cfg: &Config, rows: &mut Vec<String>) {
    let n = cfg.probe_channels;
    let reps = cfg.reps.max(3);
    let mut hold: Vec<OwnedFd> = Vec::new();

    // fifo: every fifo has a reader, so both sides take the full open+FIONREAD path.
    let plan = link_of(
        store,
        "fifos",
        format!("  channels:\n{}", channels("fifo", "f", n)),
    );
    let link = store.open_link("probe", "fifos").expect("open");
    // ipclink reads each depth through a duplicate of the holder's descriptor (reader
    // processes of 4,000 read ends each, within what a scan reads of one process); the
    // old probe opened each write end. The scan is timed in its own row below.
    let dir = store.link_path("probe", "fifos");
    let readers: Vec<Child> = (0..n)
        .step_by(4000)
        .map(|start| {
            spawn_child(&[
                "readers".as_ref(),
                dir.as_os_str(),
                start.to_string().as_ref(),
                (n - start).min(4000).to_string().as_ref(),
            ])
        })
        .collect();
    let probe = std::cell::RefCell::new(LinkProbe::open(store, &plan).expect("probe"));
    let procs = Pids(readers.iter().map(|c| c.id() as i32).collect())
        .processes()
        .expect("readers");
    let devs = std::collections::HashSet::from([fstat(link.as_fd()).expect("stat").st_dev]);
    let holders = Observation::new(
        SocketTable::default(),
        true,
        Some(Holders::scan(&procs, &devs)),
        false,
    );
    let opening = Observation::new(SocketTable::default(), true, None, true);
    let t = side_by_side(
        reps,
        || time_us_per(n, || drop(probe.borrow_mut().sample(&holders))),
        || time_us_per(n, || drop(probe.borrow_mut().sample(&opening))),
    );
    let depths = probe.borrow_mut().sample(&holders);
    assert!(
        depths
            .channels
            .iter()
            .all(|c| c.queue_bytes == Some(0) && c.reader_present == Some(true)),
        "every fifo read through its holder"
    );
    row(
        rows,
        &format!(
            "probe fifo through a holder's duplicated descriptor vs opening it, per channel over {n}"
        ),
        "µs",
        t,
        "≤ 1.5",
    );

    for mut c in readers {
        drop(c.stdin.take());
        let _ = c.wait();
    }

    // semaphore and shm: read through descriptors kept open. The two sides open their
    // descriptors in turn, so that 2 × n never have to be open at once.
    let plan = link_of(
        store,
        "sems",
        format!("  semaphores:\n{}", semaphores("s", n)),
    );
    let t = kept_fd_probe(store, &plan, reps, |f| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, 0).expect("pread");
        std::hint::black_box(&b);
    });
    row(
        rows,
        &format!("probe semaphore, per channel over {n}"),
        "µs",
        t,
        "≤ 1.2",
    );
    store.teardown("probe", "sems").expect("teardown");

    let plan = link_of(
        store,
        "shms",
        format!("  channels:\n{}", channels("shm", "m", n)),
    );
    let t = kept_fd_probe(store, &plan, reps, |f| {
        std::hint::black_box(fstat(f.as_fd()).expect("fstat"));
    });
    row(
        rows,
        &format!("probe shm, per channel over {n}"),
        "µs",
        t,
        "≤ 1.2",
    );
    store.teardown("probe", "shms").expect("teardown");

    // socket directory with one listening socket each: one netlink dump + a directory
    // listing per channel on both sides.
    let plan = link_of(
        store,
        "socks",
        format!("  channels:\n{}", channels("socket", "k", n)),
    );
    let dir = store.link_path("probe", "socks");
    let listeners: Vec<UnixListener> = (0..n)
        .map(|i| UnixListener::bind(dir.join(format!("k{i}/l"))).expect("bind"))
        .collect();
    let link = store.open_link("probe", "socks").expect("open");
    let sock_names = names(&plan);
    let mut probe = LinkProbe::open(store, &plan).expect("probe");
    let t = side_by_side(
        reps,
        || {
            time_us_per(n, || {
                let table = SocketTable::dump().expect("sock_diag");
                drop(probe.sample(&Observation::new(table, true, None, false)));
            })
        },
        || {
            time_us_per(n, || {
                std::hint::black_box(SocketTable::dump().expect("sock_diag").len());
                for name in &sock_names {
                    let fd = openat(
                        link.as_fd(),
                        name.as_c_str(),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                        Mode::empty(),
                    )
                    .expect("open dir");
                    let mut d = Dir::from_fd(fd).expect("dir");
                    std::hint::black_box(d.iter().count());
                }
            })
        },
    );
    row(
        rows,
        &format!("probe socket dir, per channel over {n}"),
        "µs",
        t,
        "≤ 1.2",
    );
    drop(listeners);
    drop(probe);
    store.teardown("probe", "socks").expect("teardown");
    store.teardown("probe", "fifos").expect("teardown");

    // One mixed scrape of n channels (a quarter of each kind), probes and full /metrics.
    let q = n / 4;
    let plan = link_of(
        store,
        "mixed",
        format!(
            "  channels:\n{}{}{}  semaphores:\n{}",
            channels("fifo", "f", q),
            channels("shm", "m", q),
            channels("socket", "k", q),
            semaphores("s", q)
        ),
    );
    let dir = store.link_path("probe", "mixed");
    let _listeners: Vec<UnixListener> = (0..q)
        .map(|i| UnixListener::bind(dir.join(format!("k{i}/l"))).expect("bind"))
        .collect();
    let link = store.open_link("probe", "mixed").expect("open");
    for i in 0..q {
        hold.push(
            openat(
                link.as_fd(),
                format!("f{i}").as_str(),
                OFlag::O_RDONLY | OFlag::O_NONBLOCK,
                Mode::empty(),
            )
            .expect("reader"),
        );
    }
    let me = std::process::id() as i32;
    let mut set = LinkSet::new(vec![LinkProbe::open(store, &plan).expect("probe")])
        .observed_by(Observer::new(Box::new(Pids(vec![me])), false, false));
    set.render_metrics(&mut String::new()); // first scrape opens descriptors
    let ms = |f: &mut dyn FnMut()| {
        median(
            (0..reps)
                .map(|_| {
                    let s = Instant::now();
                    f();
                    s.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        )
    };
    let probe_ms = ms(&mut || drop(set.sample()));
    let full_ms = ms(&mut || set.render_metrics(&mut String::new()));
    rows.push(format!(
        "| mixed scrape of {n} channels, probes only (ms) | {probe_ms:.2} | — | — | ≤ 50 ms at 10,000 |"
    ));
    rows.push(format!(
        "| mixed scrape of {n} channels, full /metrics text (ms) | {full_ms:.2} | — | — | ≤ 50 ms at 10,000 |"
    ));
    drop(hold);

    // The same link held by 200 member processes with 64 descriptors each (FIFO read
    // ends and regions): a scrape that scans them all, every time.
    let holders: Vec<Child> = (0..200).map(|k| spawn_holder(&dir, q, k * 32)).collect();
    let pids: Vec<i32> = holders.iter().map(|c| c.id() as i32).collect();
    // The probe stays open between scrapes, as a node plugin's does; each scrape gets a
    // fresh observer, so the 12,800 descriptors are scanned every time.
    let mut probe = LinkProbe::open(store, &plan).expect("probe");
    drop(probe.sample(&Observation::default()));
    let dev = fstat(link.as_fd()).expect("stat").st_dev;
    // Each holder holds 32 FIFOs and 32 regions from its own offset.
    let held = (2 * q).min(200 * 64);
    let holders_ms = ms(&mut || {
        let mut observer = Observer::new(Box::new(Pids(pids.clone())), false, false);
        let seen = observer.observe(std::slice::from_ref(&probe));
        let scanned = seen.holders_for(dev).expect("every holder read");
        assert_eq!(scanned.objects(), held, "objects held");
        let sample = probe.sample(&seen);
        // 12,800 holder entries are more than a link's report names: the sample says
        // so instead of naming some of them.
        assert!(
            sample.holders_known
                || sample
                    .holders_unknown
                    .as_deref()
                    .is_some_and(|why| why.contains("bytes of holders per link")),
            "holders named, or why not"
        );
        let mut text = String::new();
        ipclink_core::metrics::render_channels(&[sample], &[], &mut text);
        assert!(
            text.contains("ipclink_channel_present{"),
            "channels rendered"
        );
    });
    rows.push(format!(
        "| scrape of {n} channels held by 200 processes × 64 descriptors, holders scanned (ms) | {holders_ms:.2} | — | — | ≤ 100 ms at 10,000 |"
    ));
    for mut c in holders {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    // The hostile rows below scrape every link in the store: this one is gone by then.
    drop((probe, set, _listeners, link));
    store.teardown("probe", "mixed").expect("teardown");

    // A link members created 1,000 objects in (allowCreate): regions in nested
    // directories, glibc-layout semaphores, FIFOs with a reader, bound sockets.
    let plan = link_of(
        store,
        "created",
        "  allowCreate: true\n  channels:\n    - { name: declared, kind: fifo }\n".into(),
    );
    let dir = store.link_path("probe", "created");
    let per = 250;
    let mut hold = Vec::new();
    let mut listeners = Vec::new();
    for i in 0..per {
        let sub = dir.join(format!("seg/{}", i % 10));
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(sub.join(format!("r{i}")), vec![7u8; 4096]).expect("region");
        let mut sem = [0u8; 32];
        sem[..4].copy_from_slice(&1u32.to_le_bytes());
        sem[8..12].copy_from_slice(&128u32.to_le_bytes());
        std::fs::write(dir.join(format!("sem.s{i}")), sem).expect("semaphore");
        let fifo = dir.join(format!("p{i}"));
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        hold.push(fifo_reader(&fifo));
        listeners.push(UnixListener::bind(dir.join(format!("k{i}"))).expect("bind"));
    }
    let mut set = LinkSet::new(vec![LinkProbe::open(store, &plan).expect("probe")]);
    let mut text = String::new();
    set.render_metrics(&mut text);
    let found = text.matches("ipclink_channel_present{").count() - 1;
    let unreported: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("ipclink_link_unreported_objects{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("unreported objects");
    // What does not fit the link's share of a scrape is counted, not reported.
    assert_eq!(found + unreported, 4 * per, "objects found");
    assert!(found > 0);
    let created_ms = ms(&mut || set.render_metrics(&mut String::new()));
    rows.push(format!(
        "| scrape of a link with {} objects members created, full /metrics text (ms) | {created_ms:.2} | — | — | ≤ 20 ms |",
        4 * per
    ));
    drop((hold, listeners));
    store.teardown("probe", "created").expect("teardown");
    hostile(store, cfg, rows);
}

/// Members that set out to make scrapes expensive: 1,000 FIFOs eight directories deep
/// with 255-byte names in a link they may write to, and a million duplicates of one
/// FIFO descriptor across five processes (200,000 each; `--quick`: a tenth). The scraper
/// runs in a process of its own, as `up` does (every process, holders by descriptor).
fn hostile(store: &Store, cfg: &Config, rows: &mut Vec<String>) {
    let quick = cfg.probe_channels < 10_000;
    link_of(
        store,
        "hostile",
        "  allowCreate: true\n  channels:\n    - { name: declared, kind: fifo }\n".into(),
    );
    let dir = store.link_path("probe", "hostile");
    let link = store.open_link("probe", "hostile").expect("open");
    let long = |c: char| std::iter::repeat_n(c, 255).collect::<String>();
    let mut made = 0;
    for i in 0..1000usize {
        // Eight levels of 255-byte names, then the FIFO's own 255-byte name.
        let mut fd = link.try_clone().expect("dup");
        for level in 0..8 {
            let name =
                format!("{}{}", level, long((b'a' + (i % 26) as u8) as char))[..255].to_owned();
            let _ =
                nix::sys::stat::mkdirat(fd.as_fd(), name.as_str(), Mode::from_bits_truncate(0o755));
            fd = ipclink_core::fs::open_dir_at(fd.as_fd(), name.as_str()).expect("level");
        }
        let name = format!("{i:04}{}", long('f'))[..255].to_owned();
        if nix::sys::stat::mknodat(
            fd.as_fd(),
            name.as_str(),
            nix::sys::stat::SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o644),
            0,
        )
        .is_ok()
        {
            made += 1;
        }
    }
    assert_eq!(made, 1000, "FIFOs made");
    // A million (a tenth with --quick), in as many processes as the limit needs.
    let total: usize = if quick { 100_000 } else { 1_000_000 };
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard as usize)
        .unwrap_or(1024);
    let per = (limit.saturating_sub(64)).clamp(1, 200_000);
    let procs = total.div_ceil(per);
    let fifo = dir.join("declared");
    let dups: Vec<(Child, usize)> = (0..procs)
        .map(|_| {
            let mut c = Command::new(std::env::current_exe().expect("own path"))
                .args(["--child", "dups"])
                .arg(&fifo)
                .arg(per.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn dups");
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(c.stdout.take().expect("stdout")),
                &mut line,
            )
            .expect("ready");
            let held: usize = line
                .strip_prefix("ready ")
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("{line}"));
            (c, held)
        })
        .collect();
    let held: usize = dups.iter().map(|(_, n)| n).sum();
    let scrapes = if quick { 20 } else { 100 };
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args(["--child", "hostile-scrape"])
        .arg(
            dir.parent()
                .and_then(Path::parent)
                .expect("the store's root"),
        )
        .arg(scrapes.to_string())
        .output()
        .expect("scraper");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = said
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let (p99, max, hwm_kib, bytes, p50) = (v[0], v[1], v[2], v[3], v[4]);
    rows.push(format!(
        "| hostile link: 1,000 FIFOs 8 deep with 255-byte names, {held} duplicated descriptors in {procs} processes; {scrapes} scrapes, p50 / p99 / max (ms) | {p50:.2} / {p99:.2} / {max:.2} | — | — | p99 ≤ 100 ms |"
    ));
    rows.push(format!(
        "| hostile link: the scraper's peak RSS (MiB) and /metrics (KiB) | {:.1} / {:.0} | — | — | RSS ≤ 64 MiB |",
        hwm_kib / 1024.0,
        bytes / 1024.0
    ));
    for (mut c, _) in dups {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    drop(link);
    store.teardown("probe", "hostile").expect("teardown");
}

/// iceoryx2 (a program we did not write) round trips: `ping` and `pong` as two "pods"
/// (own mount, IPC and network namespaces, uid 1000) meeting in a link at /dev/shm that
/// lets members create, beside the same two processes meeting in the host's /dev/shm;
/// each pinned to one of two cores. The data path is iceoryx2's shared memory either way:
/// ipclink should add nothing.
fn iceoryx2(store: &Store, cfg: &Config, rows: &mut Vec<String>) {
    let bin = std::env::var_os("IPCLINK_ICEORYX2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .expect("own path")
                .with_file_name("ipclink-iceoryx2")
        });
    assert!(
        bin.is_file(),
        "{}: no ipclink-iceoryx2; build it first (cargo build --release -p ipclink-iceoryx2-example) or set IPCLINK_ICEORYX2",
        bin.display()
    );
    let taskset = ipclink_testkit::require_tool("taskset");
    let n = (cfg.round_trips * 10).to_string();
    let plan = link_of(store, "iceoryx2", "  allowCreate: true\n".into());
    let dir = store.link_path(&plan.namespace, &plan.name);
    let host_root = format!("/dev/shm/ipclink-bench-iox2-{}/", std::process::id());
    let before: std::collections::BTreeSet<_> = list("/dev/shm");
    let p50 = |out: &std::process::Output| -> f64 {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "iceoryx2: {}",
            ipclink_testkit::describe(out)
        );
        text.split("rtt_p50_ns ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no round trip in {text}"))
            / 1e3
    };
    let args = |cpu: &str, role: &str| -> Vec<String> {
        vec![
            "-c".into(),
            cpu.into(),
            bin.display().to_string(),
            role.into(),
            n.clone(),
        ]
    };
    let through_ipclink = || {
        let run = |cpu, role| {
            let a = args(cpu, role);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            ipclink_testkit::spawn_pod_as(&dir, 1000, 1000, &taskset, &a)
        };
        let pong = run("1", "pong");
        let ping = ipclink_testkit::wait_with_timeout(run("0", "ping"), Duration::from_secs(300));
        ipclink_testkit::wait_with_timeout(pong, Duration::from_secs(30));
        p50(&ping)
    };
    let on_the_host = || {
        let run = |cpu, role| {
            Command::new(&taskset)
                .args(args(cpu, role))
                .env("IOX2_ROOT_PATH", &host_root)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("iceoryx2")
        };
        let pong = run("1", "pong");
        let ping = ipclink_testkit::wait_with_timeout(run("0", "ping"), Duration::from_secs(300));
        ipclink_testkit::wait_with_timeout(pong, Duration::from_secs(30));
        p50(&ping)
    };
    // Children inherit this process's pinning to CPU 0; taskset places each one.
    let all = nix::sched::CpuSet::new();
    let mut all = all;
    for cpu in 0..nproc() {
        let _ = all.set(cpu);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all);
    let (a, b) = side_by_side(cfg.reps.max(3), through_ipclink, on_the_host);
    pin(0);
    row(
        rows,
        "iceoryx2 ping/pong round trip p50, two pods through ipclink vs two processes on the host's /dev/shm",
        "µs",
        (a, b),
        "≤ 1.05×",
    );
    // What this run made in the host's /dev/shm: its root path and iceoryx2's segments.
    let _ = std::fs::remove_dir_all(&host_root);
    for name in list("/dev/shm").difference(&before) {
        if name.starts_with("iox2_") {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
        }
    }
    store
        .teardown(&plan.namespace, &plan.name)
        .expect("teardown");
}

fn list(dir: &str) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
