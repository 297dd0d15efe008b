//! Opening a queue, sending and receiving.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use rustix::thread::futex;

use crate::layout::*;
use crate::map::Map;

/// How long a waiter sleeps before it looks for members that died holding what it waits
/// for (the lock, a slot).
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Spins on the lock word before sleeping on it.
const LOCK_SPINS: u32 = 100;
/// Spins on a wake-up word before sleeping on it (some microseconds) in
/// [`Polling::SpinThenSleep`].
const SPINS: u32 = 4_000;
/// Spins between two looks at the clock in [`Polling::Busy`].
const BUSY_SPINS: u32 = 1_024;
/// How long a busy waiter spins between two `sched_yield`s (a system call, which costs
/// a microsecond or more in a virtual machine: not on every look at the clock).
const BUSY_YIELD_EVERY: Duration = Duration::from_millis(1);

/// How a member waits for a message or for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polling {
    /// Sleeps on the futex at once: the least CPU, a wake-up's latency (a pod with a
    /// small CPU quota may rather do this). `IPCLINK_QUEUE_SPIN=0`.
    Sleep,
    /// Spins some microseconds where more than one CPU is online (the other side may
    /// run on another, even when this process is pinned to one), then sleeps: the
    /// default.
    SpinThenSleep,
    /// Never sleeps: spins until the other side moves or the deadline passes, keeping
    /// a CPU busy the whole time; the other side never enters the kernel to wake it.
    /// For latency. `IPCLINK_QUEUE_SPIN=busy`.
    Busy,
}

impl Polling {
    /// From `IPCLINK_QUEUE_SPIN`: `0` [`Polling::Sleep`], `busy` [`Polling::Busy`],
    /// unset or anything else the default, which sleeps at once on a machine with one
    /// CPU online.
    pub fn from_env() -> Polling {
        match std::env::var_os("IPCLINK_QUEUE_SPIN") {
            Some(v) if v == "0" => Polling::Sleep,
            Some(v) if v == "busy" => Polling::Busy,
            _ if nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
                .is_ok_and(|n| n.is_some_and(|n| n > 1)) =>
            {
                Polling::SpinThenSleep
            }
            _ => Polling::Sleep,
        }
    }
}

/// [`Polling::from_env`], read once per process.
static POLLING: std::sync::LazyLock<Polling> = std::sync::LazyLock::new(Polling::from_env);

/// The member record's share of the header's count of waiters at `total`.
fn own_share(total: u64) -> u64 {
    if total == H_RECV_WAITERS {
        M_RECV_WAITERS
    } else {
        M_SEND_WAITERS
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// A queue a member may not trust any more (a field out of range): `EBADMSG`.
fn broken() -> io::Error {
    errno(libc::EBADMSG)
}

/// Makes the queue file at `path` (it must not exist), with mode `mode`, sized and laid
/// out for `params`, and marks it ready last. Whoever makes it owns it: the caller sets
/// the owner after.
///
/// The file is made unnamed in `path`'s directory (`O_TMPFILE`), laid out, and only then
/// linked at `path`: nobody opens a queue that is not ready, and a creator killed half
/// way leaves nothing behind. An existing `path` is never replaced (`AlreadyExists`).
pub fn create(path: &Path, params: Params, mode: u32) -> io::Result<File> {
    params
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)?;
    format(&file, params)?;
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)).as_str(),
        nix::fcntl::AT_FDCWD,
        path,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )?;
    Ok(file)
}

/// Lays out `params` in `file` (empty, already created): preallocated, so that no page
/// is missing later (a member would get SIGBUS), then the header, the free list, and the
/// state `READY` last.
pub fn format(file: &File, params: Params) -> io::Result<()> {
    params
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let size = params.file_size();
    nix::fcntl::fallocate(
        file.as_fd(),
        nix::fcntl::FallocateFlags::empty(),
        0,
        size as i64,
    )?;
    let map = Map::new(file, size)?;
    let w32 = |o: u64, v: u32| map.u32(o).map(|w| w.store(v, Relaxed)).ok_or_else(broken);
    let w64 = |o: u64, v: u64| map.u64(o).map(|w| w.store(v, Relaxed)).ok_or_else(broken);
    map.write(H_MAGIC, &MAGIC).ok_or_else(broken)?;
    let abi = (ABI_MAJOR as u32) | ((ABI_MINOR as u32) << 16);
    w32(H_ABI_MAJOR, abi)?;
    w32(H_HEADER_LEN, HEADER as u32)?;
    w32(H_CAPACITY, params.capacity)?;
    w32(H_MESSAGE_SIZE, params.message_size)?;
    w32(H_STRIDE, params.stride() as u32)?;
    w32(H_MAX_MEMBERS, MAX_MEMBERS)?;
    w32(H_PRIORITIES, PRIORITIES)?;
    w32(H_READY_HEAD, NIL)?;
    w32(H_READY_TAIL, NIL)?;
    w32(H_FREE_HEAD, 0)?;
    w64(H_NEXT_SEQ, 1)?;
    for i in 0..MAX_MEMBERS {
        w32(Params::member(i) + M_INFLIGHT, NIL)?;
    }
    for i in 0..params.capacity {
        let s = params.slot(i);
        w32(
            s + S_NEXT,
            if i + 1 < params.capacity { i + 1 } else { NIL },
        )?;
        w32(s + S_PREV, NIL)?;
    }
    map.u32(H_STATE).ok_or_else(broken)?.store(READY, Release);
    Ok(())
}

/// Reads and checks the header's identity and sizes through `file` (no mapping).
pub(crate) fn read_params(file: &File) -> io::Result<Params> {
    let mut h = [0u8; 40];
    file.read_exact_at(&mut h, 0)?;
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    if h[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an ipclink queue (no IPCLQUE magic)",
        ));
    }
    let major = u16::from_le_bytes([h[8], h[9]]);
    if major != ABI_MAJOR {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("queue layout version {major}; this library reads version {ABI_MAJOR}"),
        ));
    }
    let params = Params {
        capacity: u32_at(H_CAPACITY as usize),
        message_size: u32_at(H_MESSAGE_SIZE as usize),
    };
    params
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if u32_at(H_STATE as usize) != READY
        || u32_at(H_STRIDE as usize) as u64 != params.stride()
        || u32_at(H_MAX_MEMBERS as usize) != MAX_MEMBERS
        || file.metadata()?.len() < params.file_size()
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "queue header does not match its file (not ready, or resized)",
        ));
    }
    Ok(params)
}

/// A byte range lock of one byte on member record `i` (open file description locks:
/// they work across pid namespaces and stay with the open file, not the process).
fn record_lock(i: u32, kind: i32) -> libc::flock {
    libc::flock {
        l_type: kind as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: Params::member(i) as i64,
        l_len: 1,
        l_pid: 0,
    }
}

/// Whether the process that took member record `i` is alive (holds its lock), asked
/// through `file`.
pub(crate) fn member_alive(file: &File, i: u32) -> bool {
    let mut probe = record_lock(i, libc::F_WRLCK);
    match fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut probe)) {
        Ok(_) => probe.l_type != libc::F_UNLCK as i16,
        // Cannot tell: count it alive, so nothing it may hold is taken from it.
        Err(_) => true,
    }
}

/// An open queue: this process is one of its members until it is dropped (or dies).
/// Threads may share one; a process that opens a queue twice is two members. A child
/// made by `fork` cannot use its parent's (EBADF): it would share the parent's member
/// record, and one of them dying with the lock would look alive to the other; it opens
/// the queue again.
pub struct Queue {
    file: File,
    map: Map,
    params: Params,
    member: u32,
    me: u32,
    forks: u64,
    polling: Polling,
    /// When this handle was opened, and when (ms after that, + 1; 0: never) it last
    /// looked for members that died asleep.
    opened: Instant,
    looked: AtomicU64,
}

/// Forks this process has gone through (as the child): counted by a `pthread_atfork`
/// handler registered at the first open.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked() {
    FORKS.fetch_add(1, Relaxed);
}

#[allow(unsafe_code)]
fn count_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only bumps an atomic (async-signal-safe).
        unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
}

/// The lock word: the holder's record + 1 in the low 7 bits, the record's generation
/// (truncated) above.
const HOLDER_MASK: u32 = 0x7f;
const GENERATION_MASK: u32 = u32::MAX >> 7;

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("params", &self.params)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// A message's length and priority, as a receive returns them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub priority: u32,
    /// The queue's sequence number of the message (1, 2, ... in the order sent).
    pub seq: u64,
}

/// The queue's attributes now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub capacity: u32,
    pub message_size: u32,
    pub waiting: u32,
}

/// Holds the queue's lock; releases it on drop and wakes a waiter.
struct Locked<'a> {
    q: &'a Queue,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let lock = self.q.w32(H_LOCK);
        lock.store(0, SeqCst);
        if self.q.w32(H_LOCK_WAITERS).load(SeqCst) > 0 {
            let _ = futex::wake(lock, futex::Flags::empty(), 1);
        }
    }
}

impl Queue {
    /// Opens the queue file at `path` (read and write: senders and receivers both
    /// write the queue's words) and takes a member record.
    pub fn open(path: &Path) -> io::Result<Queue> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        if !file.metadata()?.file_type().is_file() {
            return Err(errno(libc::EINVAL));
        }
        let params = read_params(&file)?;
        // A sparse queue (a member's ftruncate over a small file) would fill the link's
        // memory, or fault, page by page as it is used: refused.
        let meta = file.metadata()?;
        if std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < params.file_size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "queue file is not preallocated (sparse)",
            ));
        }
        let map = Map::new(&file, params.file_size())?;
        let member = (0..MAX_MEMBERS)
            .find(|&i| {
                fcntl(
                    file.as_fd(),
                    FcntlArg::F_OFD_SETLK(&record_lock(i, libc::F_WRLCK)),
                )
                .is_ok()
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("the queue has {MAX_MEMBERS} members open already"),
                )
            })?;
        let rec = Params::member(member);
        let generation = map
            .u64(rec + M_GENERATION)
            .ok_or_else(broken)?
            .fetch_add(1, Relaxed)
            .wrapping_add(1);
        count_forks();
        let q = Queue {
            forks: FORKS.load(Relaxed),
            polling: *POLLING,
            opened: Instant::now(),
            looked: AtomicU64::new(0),
            file,
            map,
            params,
            member,
            // The lock word this process writes: its record and that record's
            // generation, so that a lock its record's dead predecessor held is told
            // apart from one this process holds.
            me: (member + 1) | (((generation as u32) & GENERATION_MASK) << 7),
        };
        {
            // Whatever the record's last holder left in flight (it is dead: its lock
            // was free) goes back, before the record is this process's; and if it died
            // holding the queue's lock, that lock is taken over here (nobody else sees
            // it as dead now that the record is held again).
            let lock = q.w32(H_LOCK);
            let held = lock.load(Acquire);
            let g = if held != 0
                && held & HOLDER_MASK == member + 1
                && lock.compare_exchange(held, q.me, Acquire, Relaxed).is_ok()
            {
                Locked { q: &q }
            } else {
                q.lock()?
            };
            q.rebuild(&g, Some(member))?;
            q.forget_waits(member);
            q.w32(rec + M_INFLIGHT).store(NIL, Relaxed);
            q.w64(rec + M_LAST_COMMITTED).store(0, Relaxed);
            q.w32(rec + M_PID).store(std::process::id(), Relaxed);
            q.w32(rec + M_IN_USE).store(1, Relaxed);
        }
        Ok(q)
    }

    /// EBADF in a child of the process that opened the queue (see [`Queue`]).
    fn check_fork(&self) -> io::Result<()> {
        if FORKS.load(Relaxed) == self.forks {
            Ok(())
        } else {
            // Opened before a fork: the child opens it again.
            Err(errno(libc::EBADF))
        }
    }

    /// This process's member record (0..64).
    pub fn member(&self) -> u32 {
        self.member
    }

    pub fn params(&self) -> Params {
        self.params
    }

    /// How this handle waits (from `IPCLINK_QUEUE_SPIN` at first, see [`Polling`]).
    pub fn polling(&self) -> Polling {
        self.polling
    }

    pub fn set_polling(&mut self, polling: Polling) {
        self.polling = polling;
    }

    /// A header or record word. Offsets below the slots are constants within the
    /// mapping, so this cannot fail.
    fn w32(&self, offset: u64) -> &AtomicU32 {
        self.map
            .u32(offset)
            .expect("a fixed offset inside the header")
    }

    fn w64(&self, offset: u64) -> &AtomicU64 {
        self.map
            .u64(offset)
            .expect("a fixed offset inside the header")
    }

    /// Slot `i`'s word at `field`, or EBADMSG when `i` (read from the queue) is out of
    /// range.
    fn s32(&self, i: u32, field: u64) -> io::Result<&AtomicU32> {
        if i >= self.params.capacity {
            return Err(broken());
        }
        self.map.u32(self.params.slot(i) + field).ok_or_else(broken)
    }

    fn s64(&self, i: u32, field: u64) -> io::Result<&AtomicU64> {
        if i >= self.params.capacity {
            return Err(broken());
        }
        self.map.u64(self.params.slot(i) + field).ok_or_else(broken)
    }

    /// Takes the lock, waiting as long as it takes. A holder that died is found (its
    /// record's lock is free) after [`CHECK_EVERY`]; the lock is then taken from it and
    /// the lists rebuilt.
    fn lock(&self) -> io::Result<Locked<'_>> {
        self.lock_until(Wait::Until(None))
    }

    /// Takes the lock, giving up with EAGAIN (`Wait::No`, once a live holder keeps it
    /// past the spins) or ETIMEDOUT (past the deadline): a member that holds it and
    /// stops (frozen, or hostile) cannot hold other members' timed and non-blocking
    /// calls.
    fn lock_until(&self, wait: Wait) -> io::Result<Locked<'_>> {
        self.check_fork()?;
        let lock = self.w32(H_LOCK);
        let me = self.me;
        let mut spins = 0;
        loop {
            match lock.compare_exchange(0, me, Acquire, Relaxed) {
                Ok(_) => return Ok(Locked { q: self }),
                Err(holder) if spins < LOCK_SPINS => {
                    let _ = holder;
                    spins += 1;
                    std::hint::spin_loop();
                }
                Err(holder) => {
                    let mut slice = CHECK_EVERY;
                    match wait {
                        Wait::No => return Err(errno(libc::EAGAIN)),
                        Wait::Until(Some(d)) => {
                            let left = d.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Err(errno(libc::ETIMEDOUT));
                            }
                            slice = slice.min(left);
                        }
                        Wait::Until(None) => {}
                    }
                    if self.polling == Polling::Busy {
                        // Spin while the holder keeps it, yielding now and then.
                        let mut yielded = Instant::now();
                        let end = yielded + slice;
                        let mut n = 0u32;
                        while lock.load(Relaxed) == holder {
                            std::hint::spin_loop();
                            n = n.wrapping_add(1);
                            if n.is_multiple_of(BUSY_SPINS) {
                                let now = Instant::now();
                                if now >= end {
                                    break;
                                }
                                if now - yielded >= BUSY_YIELD_EVERY {
                                    std::thread::yield_now();
                                    yielded = Instant::now();
                                }
                            }
                        }
                    } else {
                        let waiters = self.w32(H_LOCK_WAITERS);
                        waiters.fetch_add(1, SeqCst);
                        let timeout = timespec(slice);
                        let _ = futex::wait(lock, futex::Flags::empty(), holder, Some(&timeout));
                        waiters.fetch_sub(1, SeqCst);
                    }
                    if lock.load(Relaxed) != holder {
                        continue;
                    }
                    let record = (holder & HOLDER_MASK).wrapping_sub(1);
                    if record >= MAX_MEMBERS {
                        return Err(broken());
                    }
                    // Dead: its record's lock is free, or the record is this
                    // process's and the word is not (a predecessor's). `member_alive`
                    // cannot see this process's own record (its lock is on this open
                    // file); `holder == me` is another thread of this process.
                    let dead = if record == self.member {
                        holder != me
                    } else {
                        !member_alive(&self.file, record)
                    };
                    if dead
                        && lock.load(Relaxed) == holder
                        && lock.compare_exchange(holder, me, Acquire, Relaxed).is_ok()
                    {
                        let g = Locked { q: self };
                        self.rebuild(&g, None)?;
                        return Ok(g);
                    }
                }
            }
        }
    }

    /// Rebuilds the lists and the count from the slots' states (under the lock):
    /// a slot a dead member was filling is freed (its send never returned), one it was
    /// emptying is queued again unless its receive had committed. `reclaim` is a member
    /// record whose previous holder is dead though the record is held now (by `open`).
    fn rebuild(&self, _g: &Locked, reclaim: Option<u32>) -> io::Result<()> {
        let mut alive = [None::<bool>; MAX_MEMBERS as usize];
        let mut dead = |m: u32| -> bool {
            if Some(m) == reclaim {
                return true;
            }
            if m == self.member || m >= MAX_MEMBERS {
                return m >= MAX_MEMBERS;
            }
            !*alive[m as usize].get_or_insert_with(|| member_alive(&self.file, m))
        };
        let mut queued: Vec<(u32, u64, u32)> = Vec::new();
        let mut free_head = NIL;
        let (mut recovered, mut aborted) = (0u64, 0u64);
        for i in (0..self.params.capacity).rev() {
            let st = self.s32(i, S_STATE)?;
            let s = st.load(Acquire);
            let owner = owner_of(s);
            let kind = match kind_of(s) {
                WRITING if dead(owner) => {
                    aborted += 1;
                    FREE
                }
                READING if dead(owner) => {
                    let committed = self
                        .w64(Params::member(owner.min(MAX_MEMBERS - 1)) + M_LAST_COMMITTED)
                        .load(Acquire);
                    if committed == self.s64(i, S_SEQ)?.load(Relaxed).wrapping_add(1) {
                        FREE
                    } else {
                        recovered += 1;
                        QUEUED
                    }
                }
                k @ (FREE | WRITING | QUEUED | READING) => k,
                _ => FREE,
            };
            match kind {
                FREE => {
                    st.store(FREE, Relaxed);
                    self.s32(i, S_NEXT)?.store(free_head, Relaxed);
                    free_head = i;
                }
                QUEUED => {
                    st.store(QUEUED, Relaxed);
                    let prio = self.s32(i, S_PRIO)?.load(Relaxed).min(PRIORITIES - 1);
                    queued.push((prio, self.s64(i, S_SEQ)?.load(Relaxed), i));
                }
                _ => {}
            }
        }
        // Highest priority first, then the order they were sent in.
        queued.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut prev = NIL;
        for &(_, _, i) in &queued {
            self.s32(i, S_PREV)?.store(prev, Relaxed);
            self.s32(i, S_NEXT)?.store(NIL, Relaxed);
            if prev != NIL {
                self.s32(prev, S_NEXT)?.store(i, Relaxed);
            }
            prev = i;
        }
        self.w32(H_READY_HEAD)
            .store(queued.first().map_or(NIL, |q| q.2), Relaxed);
        self.w32(H_READY_TAIL).store(prev, Relaxed);
        self.w32(H_READY_COUNT).store(queued.len() as u32, Relaxed);
        self.w32(H_FREE_HEAD).store(free_head, Relaxed);
        // A dead member has nothing in flight any more: its record stops calling for
        // another rebuild (`reap`).
        for m in 0..MAX_MEMBERS {
            if m != self.member && Some(m) != reclaim && alive[m as usize] == Some(false) {
                self.w32(Params::member(m) + M_INFLIGHT).store(NIL, Relaxed);
            }
        }
        self.w64(H_RECOVERED).fetch_add(recovered, Relaxed);
        self.w64(H_ABORTED).fetch_add(aborted, Relaxed);
        // Anyone waiting may have something to do now.
        self.bump(H_DATA_SEQ, H_RECV_WAITERS, i32::MAX as u32);
        self.bump(H_SPACE_SEQ, H_SEND_WAITERS, i32::MAX as u32);
        Ok(())
    }

    /// Bumps the wake-up word at `seq` and wakes up to `n` of its waiters, if any.
    /// True when the count of waiters said some sleep but the wake-up woke nobody: one
    /// of them may be a member that died asleep (or one about to sleep).
    fn bump(&self, seq: u64, waiters: u64, n: u32) -> bool {
        let word = self.w32(seq);
        word.fetch_add(1, SeqCst);
        self.w32(waiters).load(SeqCst) > 0 && futex::wake(word, futex::Flags::empty(), n) == Ok(0)
    }

    /// After a wake-up that woke nobody (outside the lock): looks for members that died
    /// asleep, at most every [`CHECK_EVERY`] per handle, and only when the lock is free
    /// at once (a send or receive does not wait for it here).
    fn after_idle_wake(&self) {
        let now = self.opened.elapsed().as_millis() as u64 + 1;
        let last = self.looked.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= CHECK_EVERY.as_millis() as u64;
        if due
            && self
                .looked
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
            && self.dead_waiters().next().is_some()
            && let Ok(g) = self.lock_until(Wait::No)
        {
            self.forget_dead_waiters(&g);
        }
    }

    /// Members (not this one) whose records count waits: each may be dead.
    fn dead_waiters(&self) -> impl Iterator<Item = u32> + '_ {
        (0..MAX_MEMBERS).filter(move |&m| {
            let rec = Params::member(m);
            m != self.member
                && (self.w32(rec + M_RECV_WAITERS).load(Relaxed) != 0
                    || self.w32(rec + M_SEND_WAITERS).load(Relaxed) != 0)
        })
    }

    /// Takes the waits of members that died asleep out of the queue's counts of
    /// waiters. Under the lock: a process taking a dead member's record takes the lock
    /// before it can wait, so a record found dead here is not reused meanwhile.
    fn forget_dead_waiters(&self, _g: &Locked) {
        let dead: Vec<u32> = self
            .dead_waiters()
            .filter(|&m| !member_alive(&self.file, m))
            .collect();
        for m in dead {
            self.forget_waits(m);
        }
    }

    /// Takes member `m`'s share out of the queue's counts of waiters (under the lock:
    /// it is dead, or its record is being taken over).
    fn forget_waits(&self, m: u32) {
        for total in [H_RECV_WAITERS, H_SEND_WAITERS] {
            let share = self
                .w32(Params::member(m) + own_share(total))
                .swap(0, SeqCst);
            if share != 0 {
                let _ = self
                    .w32(total)
                    .fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_sub(share)));
            }
        }
    }

    /// Waits on the wake-up word at `seq` (while it still reads `seen`) until the
    /// deadline, at most [`CHECK_EVERY`] at a time; then looks for dead members holding
    /// slots. `Err(ETIMEDOUT)` past the deadline.
    fn wait(&self, seq: u64, waiters: u64, seen: u32, deadline: Option<Instant>) -> io::Result<()> {
        let mut slice = CHECK_EVERY;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(errno(libc::ETIMEDOUT));
            }
            slice = slice.min(left);
        }
        let word = self.w32(seq);
        match self.polling {
            // A moment of spinning first, where another core can answer: the other
            // side usually moves within microseconds, and then neither side enters the
            // kernel.
            Polling::SpinThenSleep => {
                for _ in 0..SPINS {
                    if word.load(Acquire) != seen {
                        return Ok(());
                    }
                    std::hint::spin_loop();
                }
            }
            // No sleep: spin through the slice, yielding now and then to whatever
            // else this CPU has to run; a waiter that does not sleep is not counted,
            // so nobody wakes it.
            Polling::Busy => {
                let mut yielded = Instant::now();
                let end = yielded + slice;
                loop {
                    for _ in 0..BUSY_SPINS {
                        if word.load(Acquire) != seen {
                            return Ok(());
                        }
                        std::hint::spin_loop();
                    }
                    let now = Instant::now();
                    if now >= end {
                        return self.reap();
                    }
                    if now - yielded >= BUSY_YIELD_EVERY {
                        std::thread::yield_now();
                        yielded = Instant::now();
                    }
                }
            }
            Polling::Sleep => {}
        }
        // Counted in the queue's total (the other side looks at it), then in this
        // member's share of it (what is taken back from the total if this process dies
        // asleep); uncounted the other way round. Killed between the two, the total
        // keeps one too many for good: a wake-up call that wakes nobody now and then,
        // never a waiter left asleep.
        let count = self.w32(waiters);
        let mine = self.w32(Params::member(self.member) + own_share(waiters));
        count.fetch_add(1, SeqCst);
        mine.fetch_add(1, SeqCst);
        let r = futex::wait(word, futex::Flags::empty(), seen, Some(&timespec(slice)));
        // Saturating: a member may have written anything there.
        for word in [mine, count] {
            let _ = word.fetch_update(SeqCst, SeqCst, |v| Some(v.saturating_sub(1)));
        }
        match r {
            Err(rustix::io::Errno::TIMEDOUT) => self.reap(),
            Err(rustix::io::Errno::INTR) => Err(errno(libc::EINTR)),
            _ => Ok(()),
        }
    }

    /// Rebuilds (under the lock) when a member that has a slot in flight is dead, and
    /// takes the waits of members that died asleep out of the counts.
    fn reap(&self) -> io::Result<()> {
        let stranded = (0..MAX_MEMBERS).any(|m| {
            m != self.member
                && self.w32(Params::member(m) + M_INFLIGHT).load(Relaxed) != NIL
                && !member_alive(&self.file, m)
        });
        let asleep = self.dead_waiters().any(|m| !member_alive(&self.file, m));
        if stranded || asleep {
            let g = self.lock()?;
            self.forget_dead_waiters(&g);
            if stranded {
                self.rebuild(&g, None)?;
            }
        }
        Ok(())
    }

    /// Sends `data` with `priority` (0..32768, higher first), waiting for room until
    /// `deadline` (`None`: as long as it takes). Errors: EMSGSIZE (longer than the
    /// queue's message size), EINVAL (priority), ETIMEDOUT, EBADMSG (a broken queue).
    pub fn send(&self, data: &[u8], priority: u32, deadline: Option<Instant>) -> io::Result<()> {
        self.send_with(data, priority, Wait::Until(deadline))
    }

    /// [`Queue::send`] that does not wait: EAGAIN when the queue is full.
    pub fn try_send(&self, data: &[u8], priority: u32) -> io::Result<()> {
        self.send_with(data, priority, Wait::No)
    }

    fn send_with(&self, data: &[u8], priority: u32, wait: Wait) -> io::Result<()> {
        if data.len() > self.params.message_size as usize {
            return Err(errno(libc::EMSGSIZE));
        }
        if priority >= PRIORITIES {
            return Err(errno(libc::EINVAL));
        }
        let rec = Params::member(self.member);
        let mut found_full = false;
        let slot = loop {
            let seen = self.w32(H_SPACE_SEQ).load(SeqCst);
            {
                let _g = self.lock_until(wait)?;
                let head = self.w32(H_FREE_HEAD).load(Relaxed);
                if head != NIL {
                    let next = self.s32(head, S_NEXT)?.load(Relaxed);
                    self.w32(rec + M_INFLIGHT).store(head, Relaxed);
                    self.s32(head, S_STATE)?
                        .store(state(WRITING, self.member), Release);
                    self.w32(H_FREE_HEAD).store(next, Relaxed);
                    break head;
                }
                if !found_full {
                    found_full = true;
                    self.w64(H_FULL).fetch_add(1, Relaxed);
                }
            }
            match wait {
                Wait::No => return Err(errno(libc::EAGAIN)),
                Wait::Until(deadline) => self.wait(H_SPACE_SEQ, H_SEND_WAITERS, seen, deadline)?,
            }
        };
        let at = self.params.slot(slot);
        self.map.write(at + SLOT_HEADER, data).ok_or_else(broken)?;
        self.s32(slot, S_LEN)?.store(data.len() as u32, Relaxed);
        self.s32(slot, S_PRIO)?.store(priority, Relaxed);
        self.s64(slot, S_SENT_NS)?.store(now_ns(), Relaxed);
        {
            let _g = self.lock()?;
            let seq = self.w64(H_NEXT_SEQ).fetch_add(1, Relaxed);
            self.s64(slot, S_SEQ)?.store(seq, Relaxed);
            self.insert(slot, priority)?;
            self.s32(slot, S_STATE)?.store(QUEUED, Release);
            self.w32(H_READY_COUNT).fetch_add(1, Relaxed);
            self.w32(rec + M_INFLIGHT).store(NIL, Relaxed);
            self.w64(H_SENT).fetch_add(1, Relaxed);
            self.w64(H_SENT_BYTES).fetch_add(data.len() as u64, Relaxed);
            self.w64(rec + M_SENT).fetch_add(1, Relaxed);
        }
        if self.bump(H_DATA_SEQ, H_RECV_WAITERS, 1) {
            self.after_idle_wake();
        }
        Ok(())
    }

    /// Links `slot` into the ready list after every message of its priority or higher
    /// (under the lock). Walks back from the tail at most `capacity` steps.
    fn insert(&self, slot: u32, priority: u32) -> io::Result<()> {
        let mut after = self.w32(H_READY_TAIL).load(Relaxed);
        let mut steps = 0;
        while after != NIL && self.s32(after, S_PRIO)?.load(Relaxed) < priority {
            after = self.s32(after, S_PREV)?.load(Relaxed);
            steps += 1;
            if steps > self.params.capacity {
                return Err(broken());
            }
        }
        let next = if after == NIL {
            self.w32(H_READY_HEAD).load(Relaxed)
        } else {
            self.s32(after, S_NEXT)?.load(Relaxed)
        };
        self.s32(slot, S_PREV)?.store(after, Relaxed);
        self.s32(slot, S_NEXT)?.store(next, Relaxed);
        match after {
            NIL => self.w32(H_READY_HEAD).store(slot, Relaxed),
            a => self.s32(a, S_NEXT)?.store(slot, Relaxed),
        }
        match next {
            NIL => self.w32(H_READY_TAIL).store(slot, Relaxed),
            n => self.s32(n, S_PREV)?.store(slot, Relaxed),
        }
        Ok(())
    }

    /// Receives the oldest message of the highest priority into `buf`, waiting until
    /// `deadline` (`None`: as long as it takes). `buf` must hold the queue's message size
    /// (EMSGSIZE otherwise, as POSIX has it); ETIMEDOUT; EBADMSG.
    pub fn recv(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<Received> {
        let n = buf.len();
        self.recv_with(
            Wait::Until(deadline),
            |bytes, _| buf[..bytes.len()].copy_from_slice(bytes),
            n,
        )
    }

    /// [`Queue::recv`] that does not wait: EAGAIN when the queue is empty.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let n = buf.len();
        self.recv_with(
            Wait::No,
            |bytes, _| buf[..bytes.len()].copy_from_slice(bytes),
            n,
        )
    }

    /// Receives as [`Queue::recv`] does, handing the message to `take` in place (no
    /// copy) before the receive commits: if this process dies inside `take`, the
    /// message goes back to the queue for another receiver. The bytes are shared memory
    /// a hostile member could still write: check what you read in a copy.
    pub fn recv_in_place<T>(
        &self,
        deadline: Option<Instant>,
        take: impl FnOnce(&[u8], Received) -> T,
    ) -> io::Result<(Received, T)> {
        let mut out = None;
        let got = self.recv_with(
            Wait::Until(deadline),
            |bytes, r| out = Some(take(bytes, r)),
            usize::MAX,
        )?;
        Ok((got, out.expect("take ran")))
    }

    fn recv_with(
        &self,
        wait: Wait,
        take: impl FnOnce(&[u8], Received),
        room: usize,
    ) -> io::Result<Received> {
        if room < self.params.message_size as usize {
            return Err(errno(libc::EMSGSIZE));
        }
        let rec = Params::member(self.member);
        let slot = loop {
            let seen = self.w32(H_DATA_SEQ).load(SeqCst);
            {
                let _g = self.lock_until(wait)?;
                let head = self.w32(H_READY_HEAD).load(Relaxed);
                if head != NIL {
                    let next = self.s32(head, S_NEXT)?.load(Relaxed);
                    self.w32(rec + M_INFLIGHT).store(head, Relaxed);
                    self.s32(head, S_STATE)?
                        .store(state(READING, self.member), Release);
                    self.w32(H_READY_HEAD).store(next, Relaxed);
                    match next {
                        NIL => self.w32(H_READY_TAIL).store(NIL, Relaxed),
                        n => self.s32(n, S_PREV)?.store(NIL, Relaxed),
                    }
                    let count = self.w32(H_READY_COUNT);
                    count.store(count.load(Relaxed).saturating_sub(1), Relaxed);
                    break head;
                }
            }
            match wait {
                Wait::No => return Err(errno(libc::EAGAIN)),
                Wait::Until(deadline) => self.wait(H_DATA_SEQ, H_RECV_WAITERS, seen, deadline)?,
            }
        };
        let len = self.s32(slot, S_LEN)?.load(Relaxed);
        if len > self.params.message_size {
            return Err(broken());
        }
        let got = Received {
            len: len as usize,
            priority: self.s32(slot, S_PRIO)?.load(Relaxed),
            seq: self.s64(slot, S_SEQ)?.load(Relaxed),
        };
        // SAFETY: the slot is READING by this member: nobody writes it until it is
        // freed below.
        let bytes = unsafe_slice(&self.map, self.params.slot(slot) + SLOT_HEADER, len as u64)?;
        take(bytes, got);
        {
            let _g = self.lock()?;
            // The commit: from here on a rebuild frees the slot instead of queueing it.
            self.w64(rec + M_LAST_COMMITTED)
                .store(got.seq.wrapping_add(1), Release);
            self.s32(slot, S_STATE)?.store(FREE, Release);
            self.s32(slot, S_NEXT)?
                .store(self.w32(H_FREE_HEAD).load(Relaxed), Relaxed);
            self.w32(H_FREE_HEAD).store(slot, Relaxed);
            self.w32(rec + M_INFLIGHT).store(NIL, Relaxed);
            self.w64(H_RECEIVED).fetch_add(1, Relaxed);
            self.w64(H_RECEIVED_BYTES).fetch_add(len as u64, Relaxed);
            self.w64(rec + M_RECEIVED).fetch_add(1, Relaxed);
        }
        if self.bump(H_SPACE_SEQ, H_SEND_WAITERS, 1) {
            self.after_idle_wake();
        }
        Ok(got)
    }

    /// Capacity, message size and messages waiting now.
    pub fn attrs(&self) -> Attrs {
        Attrs {
            capacity: self.params.capacity,
            message_size: self.params.message_size,
            waiting: self
                .w32(H_READY_COUNT)
                .load(Relaxed)
                .min(self.params.capacity),
        }
    }

    /// The sequence number + 1 of the last message member record `i`'s receive
    /// committed (0: none), as its holder left it: what a crashed receiver had
    /// received.
    pub fn last_committed(&self, i: u32) -> u64 {
        self.w64(Params::member(i.min(MAX_MEMBERS - 1)) + M_LAST_COMMITTED)
            .load(Acquire)
    }
}

impl std::os::fd::AsRawFd for Queue {
    /// The queue file's descriptor (close-on-exec), which identifies this open queue.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The record's lock goes with the file; the in-use flag is only informational.
        self.w32(Params::member(self.member) + M_IN_USE)
            .store(0, Relaxed);
    }
}

#[derive(Clone, Copy)]
enum Wait {
    No,
    Until(Option<Instant>),
}

fn timespec(d: Duration) -> futex::Timespec {
    futex::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos() as i64,
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[allow(unsafe_code)]
fn unsafe_slice(map: &Map, offset: u64, len: u64) -> io::Result<&[u8]> {
    // SAFETY: the caller owns the slot (READING): nobody writes it meanwhile.
    unsafe { map.slice(offset, len) }.ok_or_else(broken)
}
