//! How members wait for a message or for room, wake each other, and take back the
//! waits of members that died asleep.

use super::*;

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
pub(super) static POLLING: std::sync::LazyLock<Polling> =
    std::sync::LazyLock::new(Polling::from_env);

/// The member record's share of the header's count of waiters at `total`.
fn own_share(total: u64) -> u64 {
    if total == H_RECV_WAITERS {
        M_RECV_WAITERS
    } else {
        M_SEND_WAITERS
    }
}

/// Busy-polls `word` while it reads `value`, for at most `slice`: looks at it on every
/// spin, at the clock every [`BUSY_SPINS`], and yields the CPU every
/// [`BUSY_YIELD_EVERY`]. True when the slice ran out with the word unchanged.
pub(super) fn spin_while(word: &AtomicU32, value: u32, slice: Duration) -> bool {
    let mut yielded = Instant::now();
    let end = yielded + slice;
    loop {
        for _ in 0..BUSY_SPINS {
            if word.load(Acquire) != value {
                return false;
            }
            std::hint::spin_loop();
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        if now - yielded >= BUSY_YIELD_EVERY {
            std::thread::yield_now();
            yielded = Instant::now();
        }
    }
}

impl Queue {
    /// Bumps the wake-up word at `seq` and wakes up to `n` of its waiters, if any.
    /// True when the count of waiters said some sleep but the wake-up woke nobody: one
    /// of them may be a member that died asleep (or one about to sleep).
    pub(super) fn bump(&self, seq: u64, waiters: u64, n: u32) -> bool {
        let word = self.w32(seq);
        word.fetch_add(1, SeqCst);
        self.w32(waiters).load(SeqCst) > 0 && futex::wake(word, futex::Flags::empty(), n) == Ok(0)
    }

    /// After a wake-up that woke nobody (outside the lock): looks for members that died
    /// asleep, at most every [`CHECK_EVERY`] per handle, and only when the lock is free
    /// at once (a send or receive does not wait for it here).
    pub(super) fn after_idle_wake(&self) {
        let now = self.opened.elapsed().as_millis() as u64 + 1;
        let last = self.looked.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= CHECK_EVERY.as_millis() as u64;
        if due
            && self
                .looked
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
            && self.members_counting_waits().next().is_some()
            && let Ok(g) = self.lock_until(Wait::No)
        {
            self.forget_dead_waiters(&g);
        }
    }

    /// Members (not this one) whose records count waits: each may be dead.
    pub(super) fn members_counting_waits(&self) -> impl Iterator<Item = u32> + '_ {
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
    pub(super) fn forget_dead_waiters(&self, _g: &Locked) {
        let dead: Vec<u32> = self
            .members_counting_waits()
            .filter(|&m| !member_alive(&self.file, m))
            .collect();
        for m in dead {
            self.forget_waits(m);
        }
    }

    /// Takes member `m`'s share out of the queue's counts of waiters (under the lock:
    /// it is dead, or its record is being taken over).
    pub(super) fn forget_waits(&self, m: u32) {
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
    pub(super) fn wait(
        &self,
        seq: u64,
        waiters: u64,
        seen: u32,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
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
                return if spin_while(word, seen, slice) {
                    self.reap()
                } else {
                    Ok(())
                };
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
    pub(super) fn reap(&self) -> io::Result<()> {
        let stranded = (0..MAX_MEMBERS).any(|m| {
            m != self.member
                && self.w32(Params::member(m) + M_INFLIGHT).load(Relaxed) != NIL
                && !member_alive(&self.file, m)
        });
        let asleep = self
            .members_counting_waits()
            .any(|m| !member_alive(&self.file, m));
        if stranded || asleep {
            let g = self.lock()?;
            self.forget_dead_waiters(&g);
            if stranded {
                self.rebuild(&g, None)?;
            }
        }
        Ok(())
    }
}
