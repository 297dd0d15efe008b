//! The channel, semaphore and link families: name, help, type, and how each is read
//! from a sample.

use crate::sample::{ChannelSample, LinkSample, SemaphoreSample};

/// One family of the channel metrics: name, help, type, and how to read a value.
pub(super) struct Family {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    /// A counter (only grows while the object lives; a name ending in `_total`), else a
    /// gauge.
    pub(super) counter: bool,
    pub(super) channel: fn(&ChannelSample) -> Option<u64>,
    pub(super) semaphore: fn(&SemaphoreSample) -> Option<u64>,
    pub(super) link: fn(&LinkSample) -> Option<u64>,
}

fn no_channel(_: &ChannelSample) -> Option<u64> {
    None
}
fn no_semaphore(_: &SemaphoreSample) -> Option<u64> {
    None
}
fn no_link(_: &LinkSample) -> Option<u64> {
    None
}

pub(super) const FAMILIES: &[Family] = &[
    Family {
        name: "ipclink_channel_queue_bytes",
        help: "Bytes queued in a channel and not yet read.",
        counter: false,
        channel: |c| c.queue_bytes,
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_channel_capacity_bytes",
        help: "Bytes a fifo's pipe buffer can hold, or a queue's messages at most.",
        counter: false,
        channel: |c| {
            if c.info.kind == "shm" {
                None
            } else {
                c.capacity_bytes
            }
        },
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_channel_queue_messages",
        help: "Messages waiting in a queue channel.",
        counter: false,
        channel: |c| c.queue.as_ref().map(|q| u64::from(q.messages)),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_channel_capacity_messages",
        help: "Messages a queue channel holds at most.",
        counter: false,
        channel: |c| c.queue.as_ref().map(|q| u64::from(q.capacity)),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_queue_oldest_message_timestamp_seconds",
        help: "When the oldest message waiting in a queue channel was sent (Unix time); absent when none waits.",
        counter: false,
        channel: |c| c.queue.as_ref().and_then(|q| q.oldest_sent_seconds),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_queue_receivers_waiting",
        help: "Threads sleeping in a receive on an empty queue channel (one killed asleep counts until a member sends and wakes nobody, waits 50 ms, or takes its record).",
        counter: false,
        channel: |c| c.queue.as_ref().map(|q| u64::from(q.receivers_waiting)),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_queue_senders_waiting",
        help: "Threads sleeping in a send on a full queue channel (one killed asleep counts until a member receives and wakes nobody, waits 50 ms, or takes its record).",
        counter: false,
        channel: |c| c.queue.as_ref().map(|q| u64::from(q.senders_waiting)),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_queue_sent_messages_total",
        help: "Messages sent to a queue channel since it was made (a queue made again starts at 0).",
        counter: true,
        channel: |c| c.queue.as_ref().map(|q| q.sent),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_queue_received_messages_total",
        help: "Messages received from a queue channel since it was made (a queue made again starts at 0).",
        counter: true,
        channel: |c| c.queue.as_ref().map(|q| q.received),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_queue_recovered_messages_total",
        help: "Messages a queue channel gave back to its queue after the member receiving them died before its receive returned.",
        counter: true,
        channel: |c| c.queue.as_ref().map(|q| q.recovered),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_queue_members",
        help: "Processes that hold a queue channel (open or mapped), when they can be known.",
        counter: false,
        channel: |c| c.queue.as_ref().and_then(|q| q.members).map(u64::from),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_socket_backlog_connections",
        help: "Connections waiting in accept() on listening sockets of a socket channel.",
        counter: false,
        channel: |c| c.backlog_connections,
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_fifo_reader_present",
        help: "1 when a process holds a fifo's read end, 0 when none does.",
        counter: false,
        channel: |c| c.reader_present.map(u64::from),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_fifo_writer_present",
        help: "1 when a process holds a fifo's write end, 0 when none does.",
        counter: false,
        channel: |c| c.writer_present.map(u64::from),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_channel_observed",
        help: "1 when a channel's depth could be observed; 0 when it could not (its depth series are then absent, not 0).",
        counter: false,
        channel: |c| Some(u64::from(c.observed)),
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_channel_depth_unchanged_seconds",
        help: "Seconds since a channel's queued bytes (and a socket channel's backlog) last changed, as long as this process has watched it: a stuck consumer does not move it.",
        counter: false,
        channel: |c| c.depth_unchanged_seconds,
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_channel_present",
        help: "1 when a declared channel or semaphore exists on disk.",
        counter: false,
        channel: |c| Some(u64::from(c.present)),
        semaphore: |s| Some(u64::from(s.present)),
        link: no_link,
    },
    Family {
        name: "ipclink_semaphore_value",
        help: "Current value of a named semaphore.",
        counter: false,
        channel: no_channel,
        semaphore: |s| s.value.map(u64::from),
        link: no_link,
    },
    Family {
        name: "ipclink_semaphore_waiters",
        help: "Threads waiting on a named semaphore.",
        counter: false,
        channel: no_channel,
        semaphore: |s| s.waiters.map(u64::from),
        link: no_link,
    },
    Family {
        name: "ipclink_shm_size_bytes",
        help: "Size of a shared-memory region, as its file has it (a member may have grown it past the declared size).",
        counter: false,
        channel: |c| {
            if c.info.kind == "shm" {
                c.capacity_bytes
            } else {
                None
            }
        },
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_shm_resident_bytes",
        help: "Memory held by a shared-memory region.",
        counter: false,
        channel: |c| c.resident_bytes,
        semaphore: no_semaphore,
        link: no_link,
    },
    Family {
        name: "ipclink_link_used_bytes",
        help: "Bytes used on a link's tmpfs.",
        counter: false,
        channel: no_channel,
        semaphore: no_semaphore,
        // In a plain directory the bytes are what the walk found: unknown past its bound.
        link: |l| (l.size_limit_enforced || !l.walk_truncated).then_some(l.used_bytes),
    },
    Family {
        name: "ipclink_link_limit_bytes",
        help: "Size limit of a link's tmpfs.",
        counter: false,
        channel: no_channel,
        semaphore: no_semaphore,
        link: |l| Some(l.limit_bytes),
    },
    Family {
        name: "ipclink_link_preallocated_bytes",
        help: "Bytes a link's declared objects take from the start (preallocated shm regions, semaphore pages).",
        counter: false,
        channel: no_channel,
        semaphore: no_semaphore,
        link: |l| Some(l.preallocated_bytes),
    },
    Family {
        name: "ipclink_link_unreported_objects",
        help: "Objects members created in a link beyond what one report names per link (at most 1000 objects, 96 KiB of these series, 40 KiB of /v1/links): counted, not reported one by one.",
        counter: false,
        channel: no_channel,
        semaphore: no_semaphore,
        link: |l| (!l.walk_truncated).then_some(l.unreported_objects),
    },
    Family {
        name: "ipclink_link_pending_changes",
        help: "Fields of a link's spec that wait until no member holds the link (a region made smaller, a channel of another kind, ...); 0 when the link serves its spec.",
        counter: false,
        channel: no_channel,
        semaphore: no_semaphore,
        link: |l| Some(l.pending.len() as u64),
    },
];
