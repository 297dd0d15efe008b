//! Depth probes over 10,000 channels of each kind, beside the cheapest raw system calls
//! that do not disturb the channel; mixed scrapes; holders scanned.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::process::Child;
use std::time::Instant;

use ipclink_core::probe::holders::{Holders, Members};
use ipclink_core::probe::{LinkProbe, Observation, Observer, SocketTable};
use ipclink_core::{LinkPlan, Store};
use ipclink_runtime::links::LinkSet;
use nix::dir::Dir;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat};

use super::*;

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

pub(super) fn probes(store: &Store, cfg: &Config, rows: &mut Vec<String>) {
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
}
