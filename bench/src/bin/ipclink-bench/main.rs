//! ipclink-bench: side-by-side figures, in one run, of
//! 1. throughput and round trip between two processes through each ipclink-provisioned
//!    channel kind vs the same primitive created raw in a temporary directory;
//! 2. depth probes over 10,000 channels of each kind vs the cheapest raw syscall sequence
//!    that does not disturb the channel, and one mixed 10,000-channel scrape;
//! 3. iceoryx2 and Fast-DDS between two "pods" through a link vs the same pairs on the
//!    host's /dev/shm (and, for Fast-DDS, network); Zenoh between two pods through a link
//!    vs TCP between them; an unchanged `mq_*` program on queue channels (shim) vs the
//!    kernel's POSIX queues.
//!
//! `ipclink-bench [--quick] [--only PART,...]` (parts: channels, probes, hostile,
//! iceoryx2, fastdds, zenoh, queue). Run as root (the links then get their own tmpfs). Prints a
//! Markdown table. The figures are not asserted anywhere: these machines are noisy, so
//! compare the ratios, which come from runs interleaved in the same process.

#![allow(unsafe_code)] // mmap and process-shared semaphores for the shm hand-off

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod fastdds;
mod hostile;
mod iceoryx2;
mod probes;
mod queue;
mod two_process;
mod zenoh;

use fastdds::fastdds;
use hostile::hostile;
use iceoryx2::iceoryx2;
use probes::probes;
use queue::queue;
use two_process::{child, two_process};
use zenoh::zenoh;

use ipclink_core::probe::holders::{Members, Owner, Process};
use ipclink_core::{LinkPlan, StorageMode, Store, parse_links, validate};
use nix::libc;

const CHUNK: usize = 64 * 1024;
/// One part of the run: adds its rows.
type Part<'a> = &'a dyn Fn(&mut Vec<String>);
/// What `--only` can name, in the order they run.
const PARTS: [&str; 7] = [
    "channels", "probes", "hostile", "iceoryx2", "fastdds", "zenoh", "queue",
];

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
    // `--only fastdds,zenoh`: those parts alone (see PARTS).
    let only: Option<Vec<&str>> = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).map_or(vec![], |v| v.split(',').collect()));
    if let Some(bad) = only.iter().flatten().find(|n| !PARTS.contains(n)) {
        eprintln!(
            "ipclink-bench: --only: {bad:?} is not a part; the parts are {}",
            PARTS.join(", ")
        );
        std::process::exit(2);
    }
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
    let parts: [Part; PARTS.len()] = [
        &|rows| two_process(&store, raw.path(), &cfg, rows),
        &|rows| probes(&store, &cfg, rows),
        &|rows| hostile(&store, &cfg, rows),
        &|rows| iceoryx2(&store, &cfg, rows),
        &|rows| fastdds(&store, &cfg, rows),
        &|rows| zenoh(&store, &cfg, rows),
        &|rows| queue(&store, &cfg, rows),
    ];
    for (name, part) in PARTS.into_iter().zip(parts) {
        if only.as_ref().is_none_or(|o| o.contains(&name)) {
            part(&mut rows);
        }
    }
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

/// Runs `ipclink` and `raw` one right after the other `reps` times, alternating which
/// goes first, and returns their medians and the median of the turn-by-turn ratios: for
/// figures that drift more between runs than the two sides differ.
fn in_turns(
    reps: usize,
    mut ipclink: impl FnMut() -> f64,
    mut raw: impl FnMut() -> f64,
) -> (f64, f64, f64) {
    let [r] = in_turns_each(reps, || [ipclink()], || [raw()]);
    r
}

/// [`in_turns`] for runs that each give `N` figures (a p50 and a p99): the medians and
/// the turn-by-turn ratio of each figure.
fn in_turns_each<const N: usize>(
    reps: usize,
    mut ipclink: impl FnMut() -> [f64; N],
    mut raw: impl FnMut() -> [f64; N],
) -> [(f64, f64, f64); N] {
    let mut turns = Vec::new();
    for i in 0..reps {
        turns.push(if i % 2 == 0 {
            let x = ipclink();
            (x, raw())
        } else {
            let y = raw();
            (ipclink(), y)
        });
    }
    std::array::from_fn(|k| {
        let a = turns.iter().map(|(x, _)| x[k]).collect();
        let b = turns.iter().map(|(_, y)| y[k]).collect();
        let ratios = turns.iter().map(|(x, y)| x[k] / y[k]).collect();
        (median(a), median(b), median(ratios))
    })
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

/// Runs `f` with this process free to use every CPU, then pins it to CPU 0 again: the
/// programs `f` starts inherit its affinity, and `taskset` places each one.
fn unpinned<T>(f: impl FnOnce() -> T) -> T {
    let mut all = nix::sched::CpuSet::new();
    for cpu in 0..nproc() {
        let _ = all.set(cpu);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all);
    let r = f();
    pin(0);
    r
}

fn row(rows: &mut Vec<String>, what: &str, unit: &str, (a, b): (f64, f64), target: &str) {
    rows.push(format!(
        "| {what} ({unit}) | {a:.2} | {b:.2} | {:.3} | {target} |",
        a / b
    ));
}

/// A row of [`in_turns`] figures: medians, and the median of the turn-by-turn ratios.
fn row_in_turns(
    rows: &mut Vec<String>,
    what: &str,
    unit: &str,
    (a, b, ratio): (f64, f64, f64),
    target: &str,
) {
    rows.push(format!(
        "| {what} ({unit}) | {a:.2} | {b:.2} | {ratio:.3} (turn by turn) | {target} |"
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

fn list(dir: &str) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

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

/// The number in `out`'s standard output between `before` and the next `after`.
/// A program or library the bench runs: `$variable`, or `file` beside this binary;
/// panics with how to build it when it is not there.
fn beside_me(variable: &str, file: &str, build: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .expect("own path")
                .with_file_name(file)
        });
    assert!(
        path.is_file(),
        "{}: no {file}; build it first ({build}) or set {variable}",
        path.display()
    );
    path
}

fn figure(out: &std::process::Output, before: &str, after: &str) -> f64 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.rsplit_once(before)
        .and_then(|(_, r)| r.split(after).next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no figure after {before:?} in {text}"))
}
