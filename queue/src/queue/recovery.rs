//! The queue's lock, and the lists rebuilt from the slots when a member died holding it
//! (or holding a slot).

use super::wait::spin_while;
use super::*;

impl Queue {
    /// Takes the lock, waiting as long as it takes. A holder that died is found (its
    /// record's lock is free) after [`CHECK_EVERY`]; the lock is then taken from it and
    /// the lists rebuilt.
    pub(super) fn lock(&self) -> io::Result<Locked<'_>> {
        self.lock_until(Wait::Until(None))
    }

    /// Takes the lock, giving up with EAGAIN (`Wait::No`, once a live holder keeps it
    /// past the spins) or ETIMEDOUT (past the deadline): a member that holds it and
    /// stops (frozen, or hostile) cannot hold other members' timed and non-blocking
    /// calls.
    pub(super) fn lock_until(&self, wait: Wait) -> io::Result<Locked<'_>> {
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
                        spin_while(lock, holder, slice);
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
    pub(super) fn rebuild(&self, _g: &Locked, reclaim: Option<u32>) -> io::Result<()> {
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
}
