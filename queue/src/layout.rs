//! The queue file's layout (version 1): fixed-width little-endian fields, 64-bit only.
//!
//! | offset | what |
//! |---|---|
//! | 0 | header (4 KiB): identity and sizes, the lock, the ready and free lists, the wake-up words, counters |
//! | 4096 | [`MAX_MEMBERS`] member records of 128 bytes, each OFD-locked (one byte) while its process lives |
//! | [`SLOTS`] | `capacity` slots of `stride` bytes: a 40-byte slot header, then the message |
//!
//! What a slot's `state` word says is the truth; the lists and the count are kept in
//! step with it under the lock, and are rebuilt from the slots when the lock is taken
//! from a member that died holding it.

/// `IPCLQUE` and a NUL.
pub const MAGIC: [u8; 8] = *b"IPCLQUE\0";
/// Readers refuse another major version.
pub const ABI_MAJOR: u16 = 1;
/// 1: member records count their waiters (a 0.x file has 0 there, which is right for
/// it).
pub const ABI_MINOR: u16 = 1;
pub const HEADER: u64 = 4096;
pub const MEMBER_SIZE: u64 = 128;
/// Processes that can have the queue open at once.
pub const MAX_MEMBERS: u32 = 64;
pub const SLOTS: u64 = HEADER + MEMBER_SIZE * MAX_MEMBERS as u64;
pub const SLOT_HEADER: u64 = 40;
/// No slot (list ends, no message in flight).
pub const NIL: u32 = u32::MAX;

/// Bounds, as Linux's own message queues have them (`HARD_MSGMAX`, `HARD_MSGSIZEMAX`,
/// `MQ_PRIO_MAX`).
pub const MAX_CAPACITY: u32 = 65_536;
pub const MAX_MESSAGE_SIZE: u32 = 16 << 20;
pub const PRIORITIES: u32 = 32_768;

// Header fields.
pub const H_MAGIC: u64 = 0;
pub const H_ABI_MAJOR: u64 = 8; // u16
pub const H_ABI_MINOR: u64 = 10; // u16
pub const H_HEADER_LEN: u64 = 12;
pub const H_CAPACITY: u64 = 16;
pub const H_MESSAGE_SIZE: u64 = 20;
pub const H_STRIDE: u64 = 24;
pub const H_MAX_MEMBERS: u64 = 28;
pub const H_PRIORITIES: u64 = 32;
/// 0 while the file is being made, [`READY`] once it may be used.
pub const H_STATE: u64 = 36;
/// The lock word: 0 free, else the holder's member index + 1.
pub const H_LOCK: u64 = 64;
pub const H_LOCK_WAITERS: u64 = 68;
pub const H_READY_HEAD: u64 = 128;
pub const H_READY_TAIL: u64 = 132;
pub const H_FREE_HEAD: u64 = 136;
pub const H_READY_COUNT: u64 = 140;
pub const H_NEXT_SEQ: u64 = 144; // u64
/// Bumped whenever a message becomes ready; receivers wait on it.
pub const H_DATA_SEQ: u64 = 192;
pub const H_RECV_WAITERS: u64 = 196;
/// Bumped whenever a slot becomes free; senders wait on it.
pub const H_SPACE_SEQ: u64 = 256;
pub const H_SEND_WAITERS: u64 = 260;
pub const H_SENT: u64 = 320; // u64 each from here
pub const H_RECEIVED: u64 = 328;
pub const H_SENT_BYTES: u64 = 336;
pub const H_RECEIVED_BYTES: u64 = 344;
/// Messages a dead receiver had taken and not returned, put back in the queue.
pub const H_RECOVERED: u64 = 352;
/// Slots a dead sender had taken and not filled, freed (its send never returned).
pub const H_ABORTED: u64 = 360;
pub const H_FULL: u64 = 368;
pub const READY: u32 = 1;

// Member record fields (from the record's start).
pub const M_IN_USE: u64 = 0;
pub const M_PID: u64 = 4;
pub const M_GENERATION: u64 = 8; // u64
/// The sequence number + 1 of the last message this member's receive committed.
pub const M_LAST_COMMITTED: u64 = 16; // u64
/// The slot this member is filling or emptying outside the lock, or [`NIL`].
pub const M_INFLIGHT: u64 = 24;
pub const M_SENT: u64 = 32; // u64
pub const M_RECEIVED: u64 = 40; // u64
/// This member's threads asleep in a receive, and in a send: their share of
/// [`H_RECV_WAITERS`] and [`H_SEND_WAITERS`], taken back from those when the member is
/// found dead.
pub const M_RECV_WAITERS: u64 = 48;
pub const M_SEND_WAITERS: u64 = 52;

// Slot header fields.
pub const S_STATE: u64 = 0;
pub const S_NEXT: u64 = 4;
pub const S_PREV: u64 = 8;
pub const S_LEN: u64 = 12;
pub const S_PRIO: u64 = 16;
pub const S_SEQ: u64 = 24; // u64
/// CLOCK_REALTIME nanoseconds when it was sent.
pub const S_SENT_NS: u64 = 32; // u64

/// A slot's state word: the kind in the low byte, the owning member above it.
pub const FREE: u32 = 0;
pub const WRITING: u32 = 1;
pub const QUEUED: u32 = 2;
pub const READING: u32 = 3;

pub fn state(kind: u32, member: u32) -> u32 {
    kind | (member << 8)
}

pub fn kind_of(state: u32) -> u32 {
    state & 0xff
}

pub fn owner_of(state: u32) -> u32 {
    state >> 8
}

/// What a queue holds: `capacity` messages of up to `message_size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub capacity: u32,
    pub message_size: u32,
}

impl Params {
    /// The distance between slots: header and message, in 64-byte lines.
    pub fn stride(&self) -> u64 {
        (SLOT_HEADER + self.message_size as u64).div_ceil(64) * 64
    }

    /// The whole file's size.
    pub fn file_size(&self) -> u64 {
        SLOTS + self.capacity as u64 * self.stride()
    }

    /// Refuses what a queue cannot be, naming the field and what is allowed.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(format!(
                "capacity {} is not a number of messages from 1 to {MAX_CAPACITY}",
                self.capacity
            ));
        }
        if !(1..=MAX_MESSAGE_SIZE).contains(&self.message_size) {
            return Err(format!(
                "messageSize {} is not a number of bytes from 1 to {MAX_MESSAGE_SIZE}",
                self.message_size
            ));
        }
        Ok(())
    }

    /// The file's offset of member record `i`.
    pub fn member(i: u32) -> u64 {
        HEADER + MEMBER_SIZE * i as u64
    }

    /// The file's offset of slot `i`.
    pub fn slot(&self, i: u32) -> u64 {
        SLOTS + self.stride() * i as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_bounds() {
        let p = Params {
            capacity: 64,
            message_size: 24,
        };
        assert_eq!(p.stride(), 64);
        assert_eq!(p.file_size(), SLOTS + 64 * 64);
        assert_eq!(
            Params {
                capacity: 1,
                message_size: 25
            }
            .stride(),
            128
        );
        assert!(p.check().is_ok());
        for bad in [
            Params {
                capacity: 0,
                message_size: 1,
            },
            Params {
                capacity: MAX_CAPACITY + 1,
                message_size: 1,
            },
        ] {
            assert!(bad.check().unwrap_err().starts_with("capacity "), "{bad:?}");
        }
        let big = Params {
            capacity: 1,
            message_size: MAX_MESSAGE_SIZE + 1,
        };
        assert!(big.check().unwrap_err().starts_with("messageSize "));
        // The largest queue Linux allows, in 64-bit offsets.
        let max = Params {
            capacity: MAX_CAPACITY,
            message_size: MAX_MESSAGE_SIZE,
        };
        assert!(max.file_size() > u32::MAX as u64);
        assert_eq!(state(QUEUED, 63) >> 8, 63);
        assert_eq!(kind_of(state(READING, 5)), READING);
        assert_eq!(owner_of(state(READING, 5)), 5);
    }
}
