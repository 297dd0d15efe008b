use std::os::fd::AsRawFd;

use super::*;

#[test]
fn roles_follow_each_descriptors_access_mode_and_path_descriptors_hold_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut roles_of = Vec::new();
    for (name, flags) in [
        ("read", OFlag::O_RDONLY),
        ("write", OFlag::O_WRONLY),
        ("both", OFlag::O_RDWR),
        ("path", OFlag::O_PATH),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, b"x").expect("file");
        let fd = nix::fcntl::open(&path, flags | OFlag::O_CLOEXEC, Mode::empty()).expect("open");
        let m = std::fs::metadata(&path).expect("stat");
        roles_of.push((fd, m.dev(), m.ino()));
    }
    let me = Process {
        pid: std::process::id() as i32,
        owner: Arc::new(Owner::default()),
        scope: None,
    };
    let dev = roles_of[0].1;
    let h = Holders::scan(&[me], &HashSet::from([dev]));
    let roles: Vec<Vec<Role>> = roles_of
        .iter()
        .map(|(_, d, i)| h.of(*d, *i).iter().map(|h| h.role).collect())
        .collect();
    assert_eq!(
        roles,
        [
            vec![Role::Reader],
            vec![Role::Writer],
            vec![Role::Reader, Role::Writer],
            vec![],
        ]
    );
    assert!(h.unreadable().is_none());
}

#[test]
fn this_process_is_seen_holding_a_file_it_has_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("region");
    std::fs::write(&path, vec![0u8; 4096]).expect("file");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let m = file.metadata().expect("stat");
    let me = Process {
        pid: std::process::id() as i32,
        owner: Arc::new(Owner::default()),
        scope: None,
    };
    let h = Holders::scan(&[me], &HashSet::from([m.dev()]));
    let roles: Vec<Role> = h.of(m.dev(), m.ino()).iter().map(|h| h.role).collect();
    assert_eq!(roles, [Role::Reader, Role::Writer]);
    let held = h.of(m.dev(), m.ino())[0].fd.expect("a descriptor");
    let dup = duplicate(std::process::id() as i32, held).expect("pidfd_getfd");
    assert_eq!(nix::sys::stat::fstat(&dup).expect("fstat").st_ino, m.ino());
    assert!(h.netns().count() == 1);
}

#[test]
fn a_fifo_is_read_through_its_holder_and_empty_once_the_holder_let_go() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events");
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // A process we did not write holds both ends (O_RDWR does not block on a FIFO)
    // and leaves 5 bytes queued.
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3<>\"$1\"; printf hello >&3; echo ready; exec sleep 30")
        .arg("sh")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("ready");
    assert_eq!(ready, "ready\n");
    let m = std::fs::metadata(&path).expect("stat");
    let p = Process {
        pid: holder.id() as i32,
        owner: Arc::new(Owner::default()),
        scope: None,
    };
    let h = Holders::scan(&[p], &HashSet::from([m.dev()]));
    let roles: Vec<Role> = h.of(m.dev(), m.ino()).iter().map(|h| h.role).collect();
    assert_eq!(roles, [Role::Reader, Role::Writer]);
    assert!(h.holders_run());
    let depth = |h: &Holders| match h.pipe(m.dev(), m.ino()) {
        PipeNow::Depth(d) => Some(d.queued),
        PipeNow::LetGo => None,
        PipeNow::Unknown => panic!("a holder's descriptor could not be duplicated"),
    };
    assert_eq!(depth(&h), Some(5));
    // Read now, not as scanned: 3 more bytes are seen.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"abc"))
        .expect("write");
    assert_eq!(depth(&h), Some(8));
    // The holder exits: the scan still names it, but it let go (its pipe is freed).
    holder.kill().expect("kill");
    assert!(
        (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            !h.holders_run()
        }),
        "an exited holder (a zombie until reaped) no longer runs"
    );
    assert_eq!(depth(&h), None, "let go");
    holder.wait().expect("wait");
    assert!(!h.holders_run(), "a reaped holder no longer runs");
    assert_eq!(h.pipe(m.dev(), m.ino()), PipeNow::LetGo);
}

/// A child process killed and reaped when dropped (a failed assertion leaves none).
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A holder process running `script` (sh, with "$1" the path) that says "ready".
fn holder(script: &str, path: &std::path::Path) -> Kill {
    let mut c = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("ready");
    assert_eq!(ready, "ready\n");
    Kill(c)
}

#[test]
fn duplicated_descriptors_are_one_hold_each_and_a_fifo_with_more_is_not_let_go() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events");
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // fd 3 holds both ends; 4..=9 are duplicates of it.
    let h1 = holder(
        "exec 3<>\"$1\" 4<&3 5<&3 6<&3 7<&3 8<&3 9<&3; echo ready; exec sleep 30",
        &path,
    );
    let m = std::fs::metadata(&path).expect("stat");
    let p = Process {
        pid: h1.0.id() as i32,
        owner: Arc::new(Owner::default()),
        scope: None,
    };
    let h = Holders::scan(std::slice::from_ref(&p), &HashSet::from([m.dev()]));
    let holds = h.of(m.dev(), m.ino());
    assert_eq!(holds.len(), 2, "one hold per role: {holds:?}");
    assert!(holds.iter().all(|h| h.fds == 7), "{holds:?}");
    drop(h1);
    // This process holds the FIFO twice; the descriptor the scan kept closes, the
    // other still holds it: its depth is unknown, not "empty, nobody holds it".
    let first = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let second = first.try_clone().expect("dup");
    let me = Process {
        pid: std::process::id() as i32,
        owner: Arc::new(Owner::default()),
        scope: None,
    };
    let h = Holders::scan(&[me], &HashSet::from([m.dev()]));
    let kept = h.of(m.dev(), m.ino())[0].fd.expect("a descriptor");
    let closing = if kept == first.as_raw_fd() {
        first
    } else {
        second
    };
    drop(closing);
    assert_eq!(h.pipe(m.dev(), m.ino()), PipeNow::Unknown);
}

#[test]
fn a_process_past_the_descriptor_bound_leaves_its_links_holders_unknown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("region");
    std::fs::write(&path, b"x").expect("file");
    let m = std::fs::metadata(&path).expect("stat");
    // A process with more descriptors than one scan reads of it.
    let many = holding(&path, MAX_FDS_PER_PROCESS + 10);
    let scoped = Process {
        pid: many.0.id() as i32,
        owner: Arc::new(Owner::default()),
        scope: Some(Arc::new(HashSet::from([m.dev()]))),
    };
    let other_dev = m.dev() + 1;
    let devs = HashSet::from([m.dev(), other_dev]);
    // Scoped to its pod's links: those are unknown, the others known.
    let h = Holders::scan(std::slice::from_ref(&scoped), &devs);
    assert!(
        !h.known_for(m.dev()),
        "its own link's holders are not known"
    );
    assert!(h.known_for(other_dev), "another tenant's link stays known");
    assert!(h.incomplete().is_none());
    // Without a scope, nothing is known (never a smaller number).
    let unscoped = Process {
        scope: None,
        ..scoped
    };
    let h = Holders::scan(&[unscoped], &devs);
    assert!(!h.known_for(m.dev()) && !h.known_for(other_dev));
    assert!(
        h.incomplete().is_some_and(|w| w.contains("descriptors")),
        "{:?}",
        h.incomplete()
    );
    assert!(
        h.of(m.dev(), m.ino()).is_empty(),
        "nothing half-read is kept"
    );
    drop(many);
}

/// A process holding `n` descriptors of `path`, once it holds them all.
fn holding(path: &std::path::Path, n: usize) -> Kill {
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os, resource, sys, time\n\
             resource.setrlimit(resource.RLIMIT_NOFILE, ({0}, {0}))\n\
             f = os.open(sys.argv[1], os.O_RDONLY)\n\
             held = [os.dup(f) for _ in range({1})]\n\
             print('ready', flush=True)\n\
             time.sleep(60)",
            n + 100,
            n - 1
        ))
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let stdout = child.stdout.take().expect("stdout");
    let child = Kill(child);
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).expect("ready");
    assert_eq!(ready, "ready\n");
    child
}

/// A file in its own directory, and its device and inode.
fn object(dir: &tempfile::TempDir, name: &str) -> (std::path::PathBuf, u64, u64) {
    let path = dir.path().join(name);
    std::fs::write(&path, b"x").expect("file");
    let m = std::fs::metadata(&path).expect("stat");
    (path, m.dev(), m.ino())
}

#[test]
fn a_pod_past_its_budget_is_not_read_further_and_blinds_only_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, dev, ino) = object(&dir, "region");
    // Six processes of one pod, each under the per-process bound, together past
    // the pod's; then a process of another pod.
    // (Each process also counts itself and its mapping lines: a few hundred.)
    let per = MAX_FDS_PER_SCOPE / 4 - 1000;
    let crowd: Vec<Kill> = (0..6).map(|_| holding(&path, per)).collect();
    let other_dev = dev + 1;
    let evil = Arc::new(HashSet::from([dev]));
    let mut processes: Vec<Process> = crowd
        .iter()
        .map(|k| Process {
            pid: k.0.id() as i32,
            owner: Arc::new(Owner::default()),
            scope: Some(evil.clone()),
        })
        .collect();
    let calm = holding(&path, 3);
    processes.push(Process {
        pid: calm.0.id() as i32,
        owner: Arc::new(Owner::default()),
        scope: Some(Arc::new(HashSet::from([other_dev]))),
    });
    let h = Holders::scan(&processes, &HashSet::from([dev, other_dev]));
    assert!(!h.known_for(dev), "the crowded pod's link is unknown");
    assert!(h.known_for(other_dev), "the other pod's link stays known");
    assert!(h.incomplete().is_none(), "{:?}", h.incomplete());
    // Four processes fill the budget, the fifth passes it; the sixth is not read.
    assert_eq!(
        h.readable, 6,
        "five of the pod's processes and the other pod's"
    );
    assert!(
        h.fds_read <= MAX_FDS_PER_SCOPE + 1000,
        "{} entries read",
        h.fds_read
    );
    // The other pod's process was still read: its three holds of the object.
    let calm_pid = calm.0.id() as i32;
    let of_calm: u32 = h
        .of(dev, ino)
        .iter()
        .filter(|hold| hold.pid == calm_pid)
        .map(|hold| hold.fds)
        .sum();
    assert_eq!(of_calm, 3, "{:?}", h.of(dev, ino));
    drop(crowd);
}

#[test]
fn heavy_pods_do_not_take_a_light_pods_share_of_the_scan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, dev, ino) = object(&dir, "region");
    // Pods of one process each, every one under the per-process and per-pod bounds,
    // together past the scan's; then a light pod, read last.
    let per = MAX_FDS_PER_PROCESS - 100;
    let heavy = MAX_FDS_PER_SCAN / per + 2;
    let mut crowd: Vec<Kill> = (0..heavy).map(|_| holding(&path, per)).collect();
    crowd.push(holding(&path, 3));
    let light_dev = dev + heavy as u64;
    let processes: Vec<Process> = crowd
        .iter()
        .enumerate()
        .map(|(i, k)| Process {
            pid: k.0.id() as i32,
            owner: Arc::new(Owner::default()),
            scope: Some(Arc::new(HashSet::from([dev + i as u64]))),
        })
        .collect();
    let devs: HashSet<u64> = (0..=heavy as u64).map(|i| dev + i).collect();
    let h = Holders::scan(&processes, &devs);
    assert!(h.incomplete().is_none(), "{:?}", h.incomplete());
    assert!(
        (0..heavy as u64).all(|i| !h.known_for(dev + i)),
        "a heavy pod past its share is unknown"
    );
    assert!(h.known_for(light_dev), "the light pod keeps its share");
    let light_pid = crowd[heavy].0.id() as i32;
    assert!(h.of(dev, ino).iter().any(|hold| hold.pid == light_pid));
    assert!(
        h.fds_read <= MAX_FDS_PER_SCAN,
        "{} entries read",
        h.fds_read
    );
    drop(crowd);
}

#[test]
fn a_pod_with_more_processes_than_one_scan_reads_is_unknown_unread() {
    let me = std::process::id() as i32;
    let crowded = Arc::new(HashSet::from([1u64]));
    let mut processes: Vec<Process> = (0..=MAX_PROCESSES_PER_POD)
        .map(|_| Process {
            pid: me,
            owner: Arc::new(Owner::default()),
            scope: Some(crowded.clone()),
        })
        .collect();
    processes.push(Process {
        pid: me,
        owner: Arc::new(Owner::default()),
        scope: Some(Arc::new(HashSet::from([2u64]))),
    });
    let h = Holders::scan(&processes, &HashSet::from([1, 2]));
    assert!(!h.known_for(1) && h.known_for(2));
    assert_eq!(h.readable, 1, "only the other pod's process was read");
    assert!(h.netns_partial(), "its namespaces were not all looked at");
}
