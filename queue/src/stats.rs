//! What an observer (the node plugin, `status`) reads of a queue without joining it:
//! through `pread` on a read-only descriptor, never a mapping (a member that shrinks
//! the file cannot make the observer fault), never following a link a member wrote, and
//! with every count of messages and bytes clamped to what the header allows.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::layout::*;
use crate::queue::{member_alive, read_params};

/// Slot bytes read in one call, and at most in all, to find the waiting bytes and the
/// oldest message: an observer reads every queue of a node each scrape, and a tenant
/// may declare many queues.
const CHUNK: u64 = 64 << 10;
const SCAN_LIMIT: u64 = 256 << 10;

/// A queue as seen from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub params: Params,
    /// Messages waiting to be received.
    pub waiting: u32,
    /// Their bytes, and when the oldest was sent (CLOCK_REALTIME nanoseconds); `None`
    /// when the slots were not read (a queue of more than 256 KiB of slots).
    pub waiting_bytes: Option<u64>,
    pub oldest_sent_ns: Option<u64>,
    pub sent: u64,
    pub received: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Messages given back after their receiver died, slots freed after their sender
    /// died, sends that found the queue full.
    pub recovered: u64,
    pub aborted: u64,
    pub full: u64,
    /// Threads sleeping until there is something to receive, or room to send.
    pub receivers_waiting: u32,
    pub senders_waiting: u32,
}

/// Member records held by live processes: one lock query per record. A member can make
/// each query slow (by taking many byte-range locks on the file), so an observer serving
/// every queue of a node counts the processes that hold the file instead; this is for
/// the queue's own members and tools.
pub fn members(file: &File) -> u32 {
    (0..MAX_MEMBERS).filter(|&i| member_alive(file, i)).count() as u32
}

fn u32_at(b: &[u8], o: u64) -> u32 {
    let o = o as usize;
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: u64) -> u64 {
    u64::from(u32_at(b, o)) | (u64::from(u32_at(b, o + 4)) << 32)
}

/// Reads the queue open (read-only is enough) as `file`.
pub fn read(file: &File) -> io::Result<Stats> {
    let params = read_params(file)?;
    let mut h = vec![0u8; 512];
    file.read_exact_at(&mut h, 0)?;
    let mut s = Stats {
        params,
        waiting: u32_at(&h, H_READY_COUNT).min(params.capacity),
        waiting_bytes: None,
        oldest_sent_ns: None,
        sent: u64_at(&h, H_SENT),
        received: u64_at(&h, H_RECEIVED),
        sent_bytes: u64_at(&h, H_SENT_BYTES),
        received_bytes: u64_at(&h, H_RECEIVED_BYTES),
        recovered: u64_at(&h, H_RECOVERED),
        aborted: u64_at(&h, H_ABORTED),
        full: u64_at(&h, H_FULL),
        // Threads, not processes: as many as the members' counts say.
        receivers_waiting: u32_at(&h, H_RECV_WAITERS),
        senders_waiting: u32_at(&h, H_SEND_WAITERS),
    };
    let stride = params.stride();
    let area = stride * params.capacity as u64;
    if area <= SCAN_LIMIT {
        let (mut bytes, mut oldest) = (0u64, None::<u64>);
        let per_chunk = (CHUNK / stride).max(1);
        let mut buf = vec![0u8; (per_chunk * stride) as usize];
        let mut i = 0u64;
        while i < params.capacity as u64 {
            let n = per_chunk.min(params.capacity as u64 - i);
            let part = &mut buf[..(n * stride) as usize];
            file.read_exact_at(part, SLOTS + i * stride)?;
            for k in 0..n {
                let at = k * stride;
                if kind_of(u32_at(part, at + S_STATE)) == QUEUED {
                    bytes += u64::from(u32_at(part, at + S_LEN).min(params.message_size));
                    let sent = u64_at(part, at + S_SENT_NS);
                    oldest = Some(oldest.map_or(sent, |o| o.min(sent)));
                }
            }
            i += n;
        }
        s.waiting_bytes = Some(bytes);
        s.oldest_sent_ns = oldest;
    }
    Ok(s)
}
