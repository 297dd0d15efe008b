//! Objects members created in a link (`allowCreate`, or a member running as root): found
//! by one walk of the link's tree per sample and probed by their type like declared
//! ones. At most [`MAX_REPORTED`] are reported per link, in path order; the rest are
//! counted. The walk opens only directories (`O_DIRECTORY|O_NOFOLLOW`) and 32-byte
//! regular files (to recognize semaphores); it never follows a symlink.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use crate::fs::{TMP_PREFIX, list_names, open_dir_at};
use crate::probe::{
    ChannelSample, ObjectInfo, Observation, SemaphoreSample, fifo, file_holders, read_semaphore,
    sockets_at,
};
use crate::spec::SemaphoreAbi;
use crate::validate::SEM_BYTES;

/// Most objects members created that one sample reports per link.
pub const MAX_REPORTED: usize = 1000;
/// Directories deeper than this below the link's root are not entered.
const MAX_DEPTH: usize = 8;

/// What one walk found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub channels: Vec<ChannelSample>,
    pub semaphores: Vec<SemaphoreSample>,
    /// Objects found beyond [`MAX_REPORTED`].
    pub unreported: u64,
    /// Bytes the regular files found hold.
    pub bytes: u64,
}

/// The names in each directory of a link's tree as last read (without the declared
/// objects and the materializer's temporaries), reused while the directory's
/// modification time says no entry was added, removed or renamed since. A listing is
/// kept only when that time was at least [`SETTLED`] old when it was read: the kernel
/// stamps directories with a coarse clock, so a change in the same tick would not move
/// it, while any later change does.
#[derive(Debug, Default)]
pub(crate) struct Listings {
    by_dir: HashMap<String, Listing>,
}

/// A directory's names and its modification time (seconds, nanoseconds) when read.
type Listing = ((i64, i64), Arc<[String]>);

/// How old a directory's modification time must be for its listing to be reused: more
/// than a clock tick (10 ms at HZ=100).
const SETTLED: Duration = Duration::from_millis(50);

impl Listings {
    /// The sorted names in `dir` (known as `prefix`) that are not `skip`ped.
    fn names(
        &mut self,
        dir: BorrowedFd<'_>,
        prefix: &str,
        skip: impl Fn(&str) -> bool,
    ) -> Arc<[String]> {
        let Ok(st) = fstat(dir) else {
            return Arc::from([]);
        };
        let mtime = (st.st_mtime, st.st_mtime_nsec);
        if let Some((seen, names)) = self.by_dir.get(prefix)
            && *seen == mtime
        {
            return names.clone();
        }
        let mut names = list_names(dir);
        names.retain(|n| !skip(n));
        names.sort();
        let names: Arc<[String]> = names.into();
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec.max(0) as u32);
        let settled = SystemTime::now()
            .duration_since(changed)
            .is_ok_and(|age| age >= SETTLED);
        if settled {
            self.by_dir
                .insert(prefix.to_owned(), (mtime, names.clone()));
        } else {
            self.by_dir.remove(prefix);
        }
        names
    }
}

/// One walk's context.
struct Walk<'a> {
    dev: u64,
    declared: &'a HashSet<String>,
    seen: &'a Observation,
    listings: &'a mut Listings,
    /// Directories visited by this walk (the listings of others are dropped).
    visited: HashSet<String>,
    found: Found,
}

/// Walks the link's tree below `link` (whose device is `dev`), skipping the entries of
/// the root named in `declared` and the materializer's temporaries.
pub(crate) fn walk(
    link: BorrowedFd<'_>,
    dev: u64,
    declared: &HashSet<String>,
    seen: &Observation,
    listings: &mut Listings,
) -> Found {
    let mut w = Walk {
        dev,
        declared,
        seen,
        listings,
        visited: HashSet::new(),
        found: Found::default(),
    };
    visit(&mut w, link, "", 0);
    let visited = w.visited;
    w.listings.by_dir.retain(|dir, _| visited.contains(dir));
    w.found
}

fn visit(w: &mut Walk<'_>, dir: BorrowedFd<'_>, prefix: &str, depth: usize) {
    w.visited.insert(prefix.to_owned());
    let (dev, declared, seen) = (w.dev, w.declared, w.seen);
    let skip = |n: &str| depth == 0 && (declared.contains(n) || n.starts_with(TMP_PREFIX));
    for name in w.listings.names(dir, prefix, skip).iter() {
        let Ok(st) = fstatat(dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue; // removed since the listing
        };
        let path = format!("{prefix}{name}");
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFDIR {
            // A directory on another device is another mount (a member's own): not ours.
            if depth < MAX_DEPTH
                && st.st_dev == dev
                && let Ok(child) = open_dir_at(dir, name.as_str())
            {
                let prefix = format!("{path}/");
                visit(w, child.as_fd(), &prefix, depth + 1);
            }
            continue;
        }
        let reported = w.found.channels.len() + w.found.semaphores.len();
        if kind == SFlag::S_IFREG {
            w.found.bytes += st.st_blocks as u64 * 512;
        } else if kind != SFlag::S_IFIFO && kind != SFlag::S_IFSOCK {
            continue; // symlinks and device nodes are no IPC objects
        }
        if reported >= MAX_REPORTED {
            w.found.unreported += 1;
            continue;
        }
        let info = |name: String, kind: &str, abi: Option<SemaphoreAbi>| {
            Arc::new(ObjectInfo {
                file: path.clone(),
                name,
                kind: kind.into(),
                abi: abi.map(|a| a.as_str().into()),
                mode: format!("{:04o}", st.st_mode & 0o7777),
                uid: st.st_uid,
                gid: st.st_gid,
                discovered: true,
            })
        };
        if kind == SFlag::S_IFIFO {
            let mut c = ChannelSample {
                info: info(path.clone(), "fifo", None),
                ..ChannelSample::default()
            };
            fifo(dir, name, seen, &mut c);
            w.found.channels.push(c);
        } else if kind == SFlag::S_IFSOCK {
            let s = sockets_at(seen, dev, &[st.st_ino]);
            let known = seen.sockets_complete || s.visible == 1;
            w.found.channels.push(ChannelSample {
                info: info(path.clone(), "socket", None),
                present: true,
                sockets: Some(1),
                sockets_visible: Some(s.visible),
                backlog_connections: known.then_some(s.backlog),
                queue_bytes: known.then_some(s.queued),
                observed: known,
                holders: s.holders,
                ..ChannelSample::default()
            });
        } else if let Some((abi, value, waiters)) = semaphore(dir, name, &st) {
            // glibc names a semaphore's file sem.NAME; NAME is what sem_open takes.
            let shown = match (abi, name.strip_prefix("sem.")) {
                (SemaphoreAbi::Glibc, Some(bare)) => format!("{prefix}{bare}"),
                _ => path.clone(),
            };
            w.found.semaphores.push(SemaphoreSample {
                info: info(shown, "semaphore", Some(abi)),
                present: true,
                value: Some(value),
                waiters: Some(waiters),
                holders: file_holders(seen, st.st_dev, st.st_ino),
            });
        } else {
            w.found.channels.push(ChannelSample {
                info: info(path.clone(), "shm", None),
                present: true,
                capacity_bytes: Some(st.st_size as u64),
                resident_bytes: Some(st.st_blocks as u64 * 512),
                holders: file_holders(seen, st.st_dev, st.st_ino),
                ..ChannelSample::default()
            });
        }
    }
}

/// (abi, value, waiters) when the regular file `name` looks like a named semaphore: 32
/// bytes; glibc's `sem.NAME` with its process-shared flag (128) at bytes 8..12 and zeros
/// after, or musl's value and waiters followed by 24 zero bytes.
fn semaphore(dir: BorrowedFd<'_>, name: &str, st: &FileStat) -> Option<(SemaphoreAbi, u32, u32)> {
    if st.st_size as u64 != SEM_BYTES {
        return None;
    }
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let now = fstat(fd.as_fd()).ok()?;
    if now.st_ino != st.st_ino || now.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return None; // replaced since the walk saw it
    }
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
