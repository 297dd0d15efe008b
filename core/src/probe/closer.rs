//! Closing what a member may have put behind a descriptor, off the caller's thread.
//!
//! A scrape duplicates a holder's descriptor (`pidfd_getfd`) to read a FIFO's depth. By
//! then the member may have put one of its own files at that number, and closing a file
//! can wait on whoever serves it (a FUSE server the member runs answers the flush, or
//! never does). Such duplicates are closed on a thread of their own, a bounded number
//! at a time: while that many wait, no more are taken and the depths are unknown, so a
//! member can stall only this thread, never a scrape.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};

/// Duplicates waiting to be closed at most, in the closer every scrape shares.
pub const MAX_WAITING: usize = 64;

/// A thread that drops what it is given, and how many items wait for it.
pub(crate) struct Closer {
    tx: Option<SyncSender<Box<dyn Send>>>,
    waiting: Arc<AtomicUsize>,
    max: usize,
}

impl Closer {
    /// A closer that lets `max` items wait; without a thread (none could be started)
    /// it takes nothing.
    pub(crate) fn new(max: usize) -> Closer {
        let waiting = Arc::new(AtomicUsize::new(0));
        // Twice the bound: concurrent scrapes may pass `admits` together.
        let (tx, rx) = sync_channel::<Box<dyn Send>>(2 * max);
        let count = waiting.clone();
        let started = std::thread::Builder::new()
            .name("ipclink-closer".into())
            .spawn(move || {
                for item in rx {
                    drop(item);
                    count.fetch_sub(1, Ordering::AcqRel);
                }
            });
        Closer {
            tx: started.is_ok().then_some(tx),
            waiting,
            max,
        }
    }

    /// The closer every scrape of this process shares.
    pub(crate) fn shared() -> &'static Closer {
        static SHARED: OnceLock<Closer> = OnceLock::new();
        SHARED.get_or_init(|| Closer::new(MAX_WAITING))
    }

    /// Whether there is room for one more item.
    pub(crate) fn admits(&self) -> bool {
        self.tx.is_some() && self.waiting.load(Ordering::Acquire) < self.max
    }

    /// Hands `item` to the thread. Past what the channel holds (only when concurrent
    /// callers passed [`Closer::admits`] together) it is leaked, never dropped here.
    pub(crate) fn let_go(&self, item: Box<dyn Send>) {
        let Some(tx) = &self.tx else {
            std::mem::forget(item);
            return;
        };
        self.waiting.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(item) | TrySendError::Disconnected(item)) => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                std::mem::forget(item);
            }
        }
    }

    /// Items waiting now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{Receiver, channel};

    /// Blocks its dropper until told to go on, as a close a FUSE server never answers.
    struct Stuck(Receiver<()>);
    impl Drop for Stuck {
        fn drop(&mut self) {
            let _ = self.0.recv();
        }
    }

    #[test]
    fn a_stuck_close_stalls_only_the_closer_and_no_more_is_taken() {
        let closer = Closer::new(2);
        assert!(closer.admits());
        let (go, wait) = channel();
        closer.let_go(Box::new(Stuck(wait)));
        closer.let_go(Box::new(7u8));
        // The caller was not held up, and with two waiting nothing more is admitted.
        assert_eq!(closer.waiting(), 2);
        assert!(!closer.admits(), "a full closer takes no more");
        go.send(()).expect("go");
        while closer.waiting() > 0 {
            std::thread::yield_now(); // the thread drains what waited
        }
        assert!(closer.admits());
    }
}
