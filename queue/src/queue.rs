//! Opening a queue, sending and receiving.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use rustix::thread::futex;

use crate::layout::*;
use crate::map::Map;

mod file;
mod recovery;
mod wait;

pub(crate) use file::read_params;
pub use file::{create, format};
use wait::POLLING;
pub use wait::Polling;

/// How long a waiter sleeps before it looks for members that died holding what it waits
/// for (the lock, a slot).
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Spins on the lock word before sleeping on it.
const LOCK_SPINS: u32 = 100;
fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// A queue a member may not trust any more (a field out of range): `EBADMSG`.
fn broken() -> io::Error {
    errno(libc::EBADMSG)
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
