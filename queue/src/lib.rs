//! ipclink's message queue: a file in a link's shared memory that any member (a process
//! in any pod or container that mounts the link) opens to send and receive messages,
//! with the semantics of POSIX message queues: bounded capacity and message size,
//! priorities (higher first, in the order sent within one), blocking send and receive
//! with deadlines, non-blocking variants.
//!
//! **Waking.** Waiters sleep on futex words in the file (shared futexes are keyed by the
//! file's page, so they work across pid and mount namespaces); a send or receive wakes
//! one only when someone waits. A waiter spins a few microseconds before it sleeps, or
//! never sleeps, or sleeps at once: [`Polling`].
//!
//! **Crash safety.** Members take a member record each (an open file description lock
//! on one byte, held while the process lives; visible across pid namespaces), and a
//! short lock guards the lists (its word names the holder's record). A member killed at
//! any instruction leaves:
//! - the lock: the next waiter sees the holder's record unlocked within 50 ms, takes
//!   the lock and rebuilds the lists from the slots' states;
//! - a slot it was filling: freed (its send never returned);
//! - a slot it was emptying: queued again in its place, unless its receive had
//!   committed (the member record names the last message it committed), so a message is
//!   never lost before a receive returned it, and never delivered twice.
//!
//! The file is laid out in [`layout`]; what the node plugin reads for metrics without
//! joining is in [`stats`].

pub mod layout;
mod map;
mod queue;
pub mod stats;

pub use layout::Params;
pub use queue::{Attrs, Polling, Queue, Received, create, format};
