//! Objects members created in a link (`allowCreate`, or a member running as root): found
//! by one walk of the link's tree per sample and probed by their type like declared
//! ones.
//!
//! Members choose what is there, so everything the walk does is bounded: it descends at
//! most [`MAX_DEPTH`] directories (with an explicit stack, never recursion) and looks at
//! most at [`MAX_ENTRIES`] entries; names are cut to [`MAX_NAME_BYTES`] plus a hash;
//! the objects reported take at most [`METRICS_BUDGET`] bytes of `/metrics` and
//! [`LINKS_BUDGET`] of `/v1/links` per link, and at most [`MAX_REPORTED`] of them; the
//! rest are counted. It enters only directories that group or others may list and
//! search (what a member closed to the others stays closed to the report), opens only
//! directories (`O_DIRECTORY|O_NOFOLLOW`) and 32-byte regular files (to recognize
//! semaphores, through an `O_PATH` descriptor checked first), and never follows a
//! symlink.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use super::{Observation, fifo, file_holders, read_semaphore, sockets_at};
use crate::fs::{PRIVATE_DIR, list_names_whole, open_dir_at};
use crate::metrics::{ObjectRef, object_bytes};
use crate::model::names::fnv1a64;
use crate::model::spec::SemaphoreAbi;
use crate::model::validate::SEM_BYTES;
use crate::sample::{ChannelSample, ObjectInfo, SemaphoreSample};

/// Most objects members created that one sample reports per link.
pub const MAX_REPORTED: usize = 1000;
/// Directories deeper than this below the link's root are not entered.
const MAX_DEPTH: usize = 8;
/// Entries one walk looks at, at most (a tmpfs link has fewer inodes; a plain directory
/// has no such limit).
pub const MAX_ENTRIES: usize = 16_384;
/// The longest name of a created object as reported; a longer one is cut to this many
/// bytes (on a character boundary), followed by `~` and 16 hex digits of its hash.
pub const MAX_NAME_BYTES: usize = 128;
/// Bytes of `/metrics` the created objects of one link take at most.
pub const METRICS_BUDGET: usize = 96 << 10;
/// Bytes of `/v1/links` the created objects of one link take at most.
pub const LINKS_BUDGET: usize = 40 << 10;

/// What one walk found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub channels: Vec<ChannelSample>,
    pub semaphores: Vec<SemaphoreSample>,
    /// Objects found but not reported (past a count or a byte budget).
    pub unreported: u64,
    /// Whether every entry was looked at (false past [`MAX_ENTRIES`]: the count of
    /// unreported objects and the bytes found are then unknown).
    pub complete: bool,
    /// Bytes the regular files found hold.
    pub bytes: u64,
}

/// The labels every series of a link carries, which a reported object's bytes count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkLabels<'a> {
    pub namespace: &'a str,
    pub link: &'a str,
    /// Bytes of extra labels on every series (e.g. `,node="n1"`).
    pub extra_label_bytes: usize,
}

/// A name as reported: itself when it is at most [`MAX_NAME_BYTES`] long, else its
/// first bytes, `~` and 16 hex digits of the FNV-1a hash of all of it (which no
/// shorter name ends with, and which tells two long names apart).
pub fn shortened(name: &str) -> Cow<'_, str> {
    if name.len() <= MAX_NAME_BYTES {
        return Cow::Borrowed(name);
    }
    let keep = (0..=MAX_NAME_BYTES)
        .rev()
        .find(|&i| name.is_char_boundary(i))
        .unwrap_or(0);
    Cow::Owned(format!(
        "{}~{:016x}",
        &name[..keep],
        fnv1a64(name.as_bytes())
    ))
}

/// The names in each directory of a link's tree as last read (without the declared
/// objects and the materializer's private directory), by the directory's inode, reused
/// while its change time says no entry was added, removed or renamed since (the change
/// time, not the modification time, which a member can set back with `utimensat`). A
/// listing is kept only when that time was at least [`SETTLED`] old when it was read:
/// the kernel stamps directories with a coarse clock, so a change in the same tick
/// would not move it, while any later change does.
#[derive(Debug, Default)]
pub(crate) struct Listings {
    by_dir: HashMap<u64, Listing>,
}

/// A directory's change time (seconds, nanoseconds) when read, its names, and whether
/// those are all its names ([`crate::fs::list_names_whole`]).
type Listing = ((i64, i64), Arc<[String]>, bool);

/// How old a directory's modification time must be for its listing to be reused: more
/// than a clock tick (10 ms at HZ=100).
const SETTLED: Duration = Duration::from_millis(50);

impl Listings {
    /// The sorted names in `dir` (its `st`) that are not `skip`ped, and whether the
    /// listing holds every name the directory has.
    fn names(
        &mut self,
        dir: BorrowedFd<'_>,
        st: &FileStat,
        skip: impl Fn(&str) -> bool,
    ) -> (Arc<[String]>, bool) {
        let ctime = (st.st_ctime, st.st_ctime_nsec);
        if let Some((seen, names, whole)) = self.by_dir.get(&st.st_ino)
            && *seen == ctime
        {
            return (names.clone(), *whole);
        }
        let (mut names, whole) = list_names_whole(dir);
        names.retain(|n| !skip(n));
        names.sort();
        let names: Arc<[String]> = names.into();
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(st.st_ctime.max(0) as u64, st.st_ctime_nsec.max(0) as u32);
        let settled = SystemTime::now()
            .duration_since(changed)
            .is_ok_and(|age| age >= SETTLED);
        if settled {
            self.by_dir.insert(st.st_ino, (ctime, names.clone(), whole));
        } else {
            self.by_dir.remove(&st.st_ino);
        }
        (names, whole)
    }
}

/// One directory on the walk's stack: its descriptor, its path below the root (with a
/// trailing `/`, empty for the root), its depth, its names and the next one to look at.
struct Level {
    dir: OwnedFd,
    prefix: String,
    depth: usize,
    names: Arc<[String]>,
    next: usize,
}

/// Whether a directory's mode lets group or others list and search it.
fn open_to_others(mode: u32) -> bool {
    mode & 0o050 == 0o050 || mode & 0o005 == 0o005
}

/// Walks the link's tree below `link` (whose device is `dev`), skipping the entries of
/// the root named in `declared` and the materializer's private directory.
pub(crate) fn walk(
    link: BorrowedFd<'_>,
    dev: u64,
    declared: &HashSet<String>,
    seen: &Observation,
    listings: &mut Listings,
    labels: LinkLabels<'_>,
) -> Found {
    let mut found = Found {
        complete: true,
        ..Found::default()
    };
    let mut spent = (0usize, 0usize);
    let mut visited = HashSet::new();
    let mut entries = 0usize;
    let Ok(root) = open_dir_at(link, ".") else {
        return found;
    };
    let Ok(st) = fstat(root.as_fd()) else {
        return found;
    };
    visited.insert(st.st_ino);
    let skip_root = |n: &str| declared.contains(n) || n == PRIVATE_DIR;
    let (names, whole) = listings.names(root.as_fd(), &st, skip_root);
    found.complete &= whole;
    let mut stack = vec![Level {
        dir: root,
        prefix: String::new(),
        depth: 0,
        names,
        next: 0,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.get(top.next).cloned() else {
            stack.pop();
            continue;
        };
        top.next += 1;
        entries += 1;
        if entries > MAX_ENTRIES {
            found.complete = false;
            break;
        }
        let dir = top.dir.as_fd();
        let Ok(st) = fstatat(dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue; // removed since the listing
        };
        let path = format!("{}{name}", top.prefix);
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFDIR {
            // A directory on another device is another mount (a member's own): not
            // ours. One closed to group and others is the member's own business.
            let depth = top.depth + 1;
            if st.st_dev != dev {
                continue;
            }
            if depth > MAX_DEPTH {
                // Not entered: what it holds is not counted, so the count is unknown.
                found.complete = false;
                continue;
            }
            let Ok(child) = open_dir_at(dir, name.as_str()) else {
                continue;
            };
            let Ok(cst) = fstat(child.as_fd()) else {
                continue;
            };
            if cst.st_dev != dev || !open_to_others(cst.st_mode) || !visited.insert(cst.st_ino) {
                continue;
            }
            let (names, whole) = listings.names(child.as_fd(), &cst, |_| false);
            found.complete &= whole;
            stack.push(Level {
                dir: child,
                prefix: format!("{path}/"),
                depth,
                names,
                next: 0,
            });
            continue;
        }
        if kind == SFlag::S_IFREG {
            found.bytes += st.st_blocks as u64 * 512;
        } else if kind != SFlag::S_IFIFO && kind != SFlag::S_IFSOCK {
            continue; // symlinks and device nodes are no IPC objects
        }
        if found.channels.len() + found.semaphores.len() >= MAX_REPORTED {
            found.unreported += 1;
            continue;
        }
        let object = probe(dir, &name, &path, &st, dev, seen);
        let (metrics, json) = cost(labels, &object);
        if spent.0 + metrics > METRICS_BUDGET || spent.1 + json > LINKS_BUDGET {
            found.unreported += 1;
            continue;
        }
        spent = (spent.0 + metrics, spent.1 + json);
        match object {
            Object::Channel(c) => found.channels.push(c),
            Object::Semaphore(m) => found.semaphores.push(m),
        }
    }
    listings.by_dir.retain(|ino, _| visited.contains(ino));
    found
}

/// A created object as probed.
enum Object {
    Channel(ChannelSample),
    Semaphore(SemaphoreSample),
}

/// What reporting `object` costs: bytes of `/metrics` and of `/v1/links`.
fn cost(labels: LinkLabels<'_>, object: &Object) -> (usize, usize) {
    let (r, json) = match object {
        Object::Channel(c) => (ObjectRef::Channel(c), json_len(c)),
        Object::Semaphore(m) => (ObjectRef::Semaphore(m), json_len(m)),
    };
    let metrics = object_bytes(labels.namespace, labels.link, labels.extra_label_bytes, r);
    (metrics, json)
}

/// Bytes of the JSON form of `value`.
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, value);
    n.0 + 1 // the comma between array items
}

/// Probes the FIFO, socket or regular file `name` of `dir` (its `st`, its `path` below
/// the link's root).
fn probe(
    dir: BorrowedFd<'_>,
    name: &str,
    path: &str,
    st: &FileStat,
    dev: u64,
    seen: &Observation,
) -> Object {
    let shown = shortened(path).into_owned();
    let info = |name: String, kind: &str, abi: Option<SemaphoreAbi>| {
        Arc::new(ObjectInfo {
            file: shown.clone(),
            name,
            kind: kind.into(),
            abi: abi.map(|a| a.as_str().into()),
            mode: format!("{:04o}", st.st_mode & 0o7777),
            uid: st.st_uid,
            gid: st.st_gid,
            discovered: true,
        })
    };
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind == SFlag::S_IFIFO {
        let mut c = ChannelSample::of(info(shown.clone(), "fifo", None));
        fifo(dir, name, seen, &mut c);
        return Object::Channel(c);
    }
    if kind == SFlag::S_IFSOCK {
        let s = sockets_at(seen, dev, &[st.st_ino]);
        let known = seen.sockets_complete || s.visible == 1;
        return Object::Channel(ChannelSample {
            info: info(shown.clone(), "socket", None),
            present: true,
            sockets: Some(1),
            sockets_visible: Some(s.visible),
            backlog_connections: known.then_some(s.backlog),
            queue_bytes: known.then_some(s.queued),
            observed: known,
            holders: s.holders,
            ..ChannelSample::default()
        });
    }
    if let Some((abi, value, waiters)) = semaphore(dir, name, st) {
        // glibc names a semaphore's file sem.NAME; NAME is what sem_open takes.
        let bare = match (abi, name.strip_prefix("sem.")) {
            (SemaphoreAbi::Glibc, Some(bare)) => {
                shortened(&format!("{}{bare}", &path[..path.len() - name.len()])).into_owned()
            }
            _ => shown.clone(),
        };
        return Object::Semaphore(SemaphoreSample {
            info: info(bare, "semaphore", Some(abi)),
            present: true,
            value: Some(value),
            waiters: Some(waiters),
            stale_waiters: None,
            holders: file_holders(seen, st.st_dev, st.st_ino),
        });
    }
    Object::Channel(ChannelSample {
        info: info(shown.clone(), "shm", None),
        present: true,
        capacity_bytes: Some(st.st_size as u64),
        resident_bytes: Some(st.st_blocks as u64 * 512),
        holders: file_holders(seen, st.st_dev, st.st_ino),
        ..ChannelSample::default()
    })
}

/// (abi, value, waiters) when the regular file `name` looks like a named semaphore: 32
/// bytes; glibc's `sem.NAME` with its process-shared flag (128) at bytes 8..12 and zeros
/// after, or musl's value and waiters followed by 24 zero bytes. It is opened by name
/// only as `O_PATH` (no side effect whatever is there now), checked to be the regular
/// file the walk saw, and then read through that descriptor.
fn semaphore(dir: BorrowedFd<'_>, name: &str, st: &FileStat) -> Option<(SemaphoreAbi, u32, u32)> {
    if st.st_size as u64 != SEM_BYTES {
        return None;
    }
    let fd = open_regular_at(dir, name, st)?;
    let mut b = [0u8; SEM_BYTES as usize];
    std::fs::File::from(fd).read_exact_at(&mut b, 0).ok()?;
    let word: [u8; 8] = b[..8].try_into().ok()?;
    let zero_tail = |from: usize| b[from..].iter().all(|&x| x == 0);
    if name.starts_with("sem.") && b[8..12] == 128u32.to_le_bytes() && zero_tail(12) {
        let (value, waiters) = read_semaphore(&word, SemaphoreAbi::Glibc);
        return Some((SemaphoreAbi::Glibc, value, waiters));
    }
    let lo = u32::from_le_bytes(b[..4].try_into().ok()?);
    // musl keeps the value in an int: at most SEM_VALUE_MAX, or a "zero with waiters"
    // form (-1, or the top bit set in later musl).
    let plausible = lo <= 0x7fff_ffff || lo == u32::MAX || lo & 0x7fff_ffff == 0;
    if zero_tail(8) && plausible {
        let (value, waiters) = read_semaphore(&word, SemaphoreAbi::Musl);
        return Some((SemaphoreAbi::Musl, value, waiters));
    }
    None
}

/// Opens `name` of `dir` for reading only if it is still the regular file `st`
/// describes: `O_PATH` first (a FIFO put there meanwhile is not opened), then a check,
/// then a reopen of that very file through its descriptor.
pub(crate) fn open_regular_at(dir: BorrowedFd<'_>, name: &str, st: &FileStat) -> Option<OwnedFd> {
    let (fd, now) = open_regular(dir, name)?;
    (now.st_ino == st.st_ino && now.st_dev == st.st_dev).then_some(fd)
}

/// Opens `name` of `dir` for reading if it is a regular file, with its `fstat`:
/// `O_PATH` first (nothing else at the name is ever opened), then a reopen of that
/// very file through its descriptor.
pub(crate) fn open_regular(dir: BorrowedFd<'_>, name: &str) -> Option<(OwnedFd, FileStat)> {
    let path = crate::fs::open_path_at(dir, name).ok()?;
    let st = fstat(path.as_fd()).ok()?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return None;
    }
    let fd = nix::fcntl::open(
        format!("/proc/self/fd/{}", path.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    Some((fd, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_with_a_hash_that_tells_them_apart() {
        assert_eq!(shortened("frames"), "frames");
        let exactly = "a".repeat(MAX_NAME_BYTES);
        assert_eq!(shortened(&exactly), exactly);
        let long = format!("{}/{}", "d".repeat(255), "x".repeat(255));
        let other = format!("{}/{}", "d".repeat(255), "y".repeat(255));
        let (a, b) = (shortened(&long), shortened(&other));
        assert_eq!(a.len(), MAX_NAME_BYTES + 17);
        assert_ne!(a, b);
        assert!(a.starts_with(&"d".repeat(MAX_NAME_BYTES)));
        // Cut on a character boundary.
        let wide = "é".repeat(100);
        let cut = shortened(&wide);
        assert!(cut.len() <= MAX_NAME_BYTES + 17, "{}", cut.len());
        assert!(cut.contains('~'));
    }

    #[test]
    fn only_directories_open_to_others_are_entered() {
        assert!(open_to_others(0o755));
        assert!(open_to_others(0o1777));
        assert!(open_to_others(0o750));
        assert!(!open_to_others(0o700));
        assert!(!open_to_others(0o711));
        assert!(!open_to_others(0o740));
    }

    #[test]
    fn a_name_swapped_for_a_fifo_is_never_opened() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sem.x");
        std::fs::write(&path, [0u8; 32]).expect("file");
        let d = crate::fs::open_dir_at(std::fs::File::open(dir.path()).expect("open").as_fd(), ".")
            .expect("dir");
        let seen = fstatat(d.as_fd(), "sem.x", AtFlags::AT_SYMLINK_NOFOLLOW).expect("stat");
        // Swapped for a FIFO a writer waits on (a member's trick to be let through).
        std::fs::remove_file(&path).expect("rm");
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o666)).expect("mkfifo");
        let mut writer = std::process::Command::new("sh")
            .arg("-c")
            .arg("echo x > \"$1\"")
            .arg("sh")
            .arg(&path)
            .spawn()
            .expect("writer");
        let wchan =
            || std::fs::read_to_string(format!("/proc/{}/wchan", writer.id())).unwrap_or_default();
        let blocked = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            wchan() == "wait_for_partner"
        });
        assert!(blocked, "the writer never blocked in open: {}", wchan());
        assert!(open_regular_at(d.as_fd(), "sem.x", &seen).is_none());
        assert_eq!(wchan(), "wait_for_partner", "the writer was let through");
        writer.kill().expect("kill");
        writer.wait().expect("wait");
    }
}
