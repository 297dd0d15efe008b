//! The metric families of every component (DESIGN.md §3): names, help, labels, units.

use std::fmt::Write as _;

use prometheus::{Registry, TextEncoder};

use crate::sample::{ChannelSample, LinkSample, SemaphoreSample};

mod components;
pub use components::{CsiMetrics, OperatorMetrics};

/// One family of the channel metrics: name, help, type, and how to read a value.
struct Family {
    name: &'static str,
    help: &'static str,
    /// A counter (only grows while the object lives; a name ending in `_total`), else a
    /// gauge.
    counter: bool,
    channel: fn(&ChannelSample) -> Option<u64>,
    semaphore: fn(&SemaphoreSample) -> Option<u64>,
    link: fn(&LinkSample) -> Option<u64>,
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

const FAMILIES: &[Family] = &[
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

/// Appends a label value with the exposition format's escapes.
fn escape_into(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Bytes [`escape_into`] writes for `value`.
fn escaped_len(value: &str) -> usize {
    value.len()
        + value
            .bytes()
            .filter(|b| matches!(b, b'\\' | b'"' | b'\n'))
            .count()
}

/// Bytes [`series`] writes.
fn series_len(family: &str, labels: &[(&str, &str)], value: u64) -> usize {
    let pairs: usize = labels
        .iter()
        .map(|(k, v)| k.len() + 3 + escaped_len(v))
        .sum();
    let commas = labels.len().saturating_sub(1);
    let digits = value.checked_ilog10().unwrap_or(0) as usize + 1;
    family.len() + 1 + pairs + commas + 2 + digits + 1
}

/// One object of a sample, for [`object_bytes`].
#[derive(Debug, Clone, Copy)]
pub enum ObjectRef<'a> {
    /// A channel.
    Channel(&'a ChannelSample),
    /// A semaphore.
    Semaphore(&'a SemaphoreSample),
}

/// At most the bytes the series of one object of link `namespace/link` take in
/// `/metrics`: its families (with the depth age its sample gets later) and its holder
/// counts, each series with `extra` more bytes of labels (e.g. `,node="n1"`). What a
/// link's budget for the objects members created counts.
pub fn object_bytes(namespace: &str, link: &str, extra: usize, object: ObjectRef<'_>) -> usize {
    let info = match object {
        ObjectRef::Channel(c) => &c.info,
        ObjectRef::Semaphore(m) => &m.info,
    };
    let labels = [
        ("namespace", namespace),
        ("link", link),
        ("channel", info.name.as_str()),
        ("kind", info.kind.as_str()),
        ("origin", info.origin()),
    ];
    let widest = u64::MAX;
    let mut n = 0;
    for f in FAMILIES {
        let value = match object {
            ObjectRef::Channel(c) => (f.channel)(c).or_else(|| {
                // Set after the walk, for a channel whose depth is known.
                (f.name == "ipclink_channel_depth_unchanged_seconds" && c.queue_bytes.is_some())
                    .then_some(widest)
            }),
            ObjectRef::Semaphore(m) => (f.semaphore)(m),
        };
        if value.is_some() {
            n += series_len(f.name, &labels, widest) + extra;
        }
    }
    let roles = match info.kind.as_str() {
        "fifo" | "socket" => 2,
        _ => 3,
    };
    let holders = [&labels[..], &[("role", "writer")]].concat();
    n + roles * (series_len("ipclink_channel_holders", &holders, widest) + extra)
}

fn series(out: &mut String, family: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(family);
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_into(out, v);
        out.push('"');
    }
    out.push_str("} ");
    let _ = write!(out, "{value}");
    out.push('\n');
}

/// Renders one gauge family (HELP, TYPE, then every row) in the text format, with label
/// values escaped; nothing when there are no rows.
pub fn render_gauge(out: &mut String, family: &str, help: &str, rows: &[(Vec<(&str, &str)>, u64)]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {family} {help}");
    let _ = writeln!(out, "# TYPE {family} gauge");
    for (labels, value) in rows {
        series(out, family, labels, *value);
    }
}

/// Renders the channel, semaphore and link families of `samples` in the Prometheus text
/// format, each family once with its HELP and TYPE. Written directly rather than through
/// a registry: a scrape of 10,000 channels must not pay a hash lookup per series.
/// `extra` labels (e.g. `node`) are added to every series.
pub fn render_channels(samples: &[LinkSample], extra: &[(&str, &str)], out: &mut String) {
    render_channel_groups(&[(extra, samples)], out);
}

/// Samples that share the extra labels (e.g. `node`) given first.
pub type SampleGroup<'a> = (&'a [(&'a str, &'a str)], &'a [LinkSample]);

/// [`render_channels`] over several groups of samples, each with its own `extra` label
/// (e.g. the samples of each node), every family still written once.
pub fn render_channel_groups(groups: &[SampleGroup<'_>], out: &mut String) {
    for f in FAMILIES {
        let kind = if f.counter { "counter" } else { "gauge" };
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {kind}",
            f.name, f.help, f.name
        );
        for (extra, s) in groups
            .iter()
            .flat_map(|(extra, samples)| samples.iter().map(move |s| (*extra, s)))
        {
            if let Some(v) = (f.link)(s) {
                let mut labels = vec![("namespace", &*s.namespace), ("link", &*s.name)];
                labels.extend_from_slice(extra);
                series(out, f.name, &labels, v);
            }
            let channels = s.channels.iter().map(|c| (&c.info, (f.channel)(c)));
            let semaphores = s.semaphores.iter().map(|m| (&m.info, (f.semaphore)(m)));
            for (info, value) in channels.chain(semaphores) {
                let Some(v) = value else { continue };
                let mut labels = [
                    ("namespace", &*s.namespace),
                    ("link", &*s.name),
                    ("channel", info.name.as_str()),
                    ("kind", info.kind.as_str()),
                    ("origin", info.origin()),
                    ("", ""),
                ];
                let n = match extra.first() {
                    Some(e) => {
                        labels[5] = *e;
                        6
                    }
                    None => 5,
                };
                series(out, f.name, &labels[..n], v);
            }
        }
    }
    render_holders(groups, out);
}

/// Most holder-info series per link: the holders of a busy link are counted in full
/// (`ipclink_channel_holders`) but named only up to this many, and only up to
/// [`MAX_HOLDER_INFO_BYTES`].
pub const MAX_HOLDER_INFO: usize = 100;
/// Most bytes of holder-info series per link.
pub const MAX_HOLDER_INFO_BYTES: usize = 16 << 10;

/// `ipclink_channel_holders{role}` (how many processes per role) and
/// `ipclink_channel_holder_info{role,pod,container,command}` (who, capped per link), for
/// the samples whose holders are known.
fn render_holders(groups: &[SampleGroup<'_>], out: &mut String) {
    use std::collections::BTreeMap;
    let mut counts = String::new();
    let mut info = String::new();
    for (extra, samples) in groups {
        for s in samples.iter() {
            let (mut named, mut named_bytes) = (0usize, 0usize);
            let channels = s.channels.iter().map(|c| (&c.info, &c.holders));
            let semaphores = s.semaphores.iter().map(|m| (&m.info, &m.holders));
            for (obj, holders) in channels.chain(semaphores) {
                if !s.holders_known {
                    continue; // absent, not 0: nobody could tell
                }
                // Every role the object can have, 0 included: a FIFO's missing reader is
                // a series at 0, not a missing series.
                let roles: &[&str] = match obj.kind.as_str() {
                    "fifo" | "socket" => &["reader", "writer"],
                    _ => &["reader", "writer", "mapper"],
                };
                let mut by_role: BTreeMap<&str, u64> = roles.iter().map(|r| (*r, 0)).collect();
                for h in holders {
                    *by_role.entry(h.role.as_str()).or_default() += 1;
                }
                let object = [
                    ("namespace", &*s.namespace),
                    ("link", &*s.name),
                    ("channel", obj.name.as_str()),
                    ("kind", obj.kind.as_str()),
                    ("origin", obj.origin()),
                ];
                for (role, n) in by_role {
                    let labels = [&object[..], &[("role", role)], extra].concat();
                    series(&mut counts, "ipclink_channel_holders", &labels, n);
                }
                // Processes of one container doing the same are one series (the pid
                // changes with every restart: it is no label).
                let who: std::collections::BTreeSet<_> = holders
                    .iter()
                    .map(|h| (h.role.as_str(), &h.pod, &h.container, &h.command))
                    .collect();
                for (role, pod, container, command) in who {
                    let who = [
                        ("role", role),
                        ("pod", pod.as_str()),
                        ("container", container.as_str()),
                        ("command", command.as_str()),
                    ];
                    let labels = [&object[..], &who, extra].concat();
                    let bytes = series_len("ipclink_channel_holder_info", &labels, 1);
                    if named == MAX_HOLDER_INFO || named_bytes + bytes > MAX_HOLDER_INFO_BYTES {
                        break;
                    }
                    named += 1;
                    named_bytes += bytes;
                    series(&mut info, "ipclink_channel_holder_info", &labels, 1);
                }
            }
        }
    }
    if !counts.is_empty() {
        let _ = writeln!(
            out,
            "# HELP ipclink_channel_holders Processes holding a channel or semaphore, by role (reader, writer, mapper).\n# TYPE ipclink_channel_holders gauge"
        );
        out.push_str(&counts);
    }
    if !info.is_empty() {
        let _ = writeln!(
            out,
            "# HELP ipclink_channel_holder_info Who holds a channel or semaphore: pod, container and command of each holding process (at most {MAX_HOLDER_INFO} per link); always 1.\n# TYPE ipclink_channel_holder_info gauge"
        );
        out.push_str(&info);
    }
}

/// Appends a registry's families to `out` in the Prometheus text format.
pub fn render(registry: &Registry, out: &mut String) {
    // Encoding our own families into a String cannot fail.
    let _ = TextEncoder::new().encode_utf8(&registry.gather(), out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{ChannelSample, LinkSample};

    #[test]
    fn renders_each_family_once_with_escaped_labels() {
        let sample = LinkSample {
            namespace: "ns".into(),
            name: "l".into(),
            limit_bytes: 10,
            used_bytes: 4,
            channels: vec![ChannelSample {
                info: std::sync::Arc::new(crate::sample::ObjectInfo {
                    name: "a\"b\\c\nd".into(),
                    kind: "fifo".into(),
                    ..Default::default()
                }),
                present: true,
                queue_bytes: Some(3),
                ..ChannelSample::default()
            }],
            ..LinkSample::default()
        };
        let mut out = String::new();
        render_channels(&[sample], &[("node", "n1")], &mut out);
        assert_eq!(
            out.matches("# TYPE ipclink_channel_queue_bytes gauge")
                .count(),
            1
        );
        assert!(out.contains(
            "ipclink_channel_queue_bytes{namespace=\"ns\",link=\"l\",channel=\"a\\\"b\\\\c\\nd\",kind=\"fifo\",origin=\"declared\",node=\"n1\"} 3\n"
        ), "{out}");
        assert!(
            out.contains("ipclink_link_limit_bytes{namespace=\"ns\",link=\"l\",node=\"n1\"} 10\n"),
            "{out}"
        );
        assert!(!out.contains("ipclink_semaphore_value{"), "{out}");
    }

    #[test]
    fn an_objects_budgeted_bytes_cover_what_is_rendered_for_it() {
        let info = |kind: &str| {
            std::sync::Arc::new(crate::sample::ObjectInfo {
                name: format!("deep/\"{}\\name", "x".repeat(120)),
                kind: kind.into(),
                discovered: true,
                ..Default::default()
            })
        };
        let holder = crate::sample::HolderSample {
            role: "reader".into(),
            pid: 7,
            ..Default::default()
        };
        let fifo = ChannelSample {
            info: info("fifo"),
            present: true,
            queue_bytes: Some(12345),
            capacity_bytes: Some(65536),
            reader_present: Some(true),
            writer_present: Some(false),
            depth_unchanged_seconds: Some(99),
            holders: vec![holder.clone()],
            ..ChannelSample::default()
        };
        let shm = ChannelSample {
            info: info("shm"),
            present: true,
            capacity_bytes: Some(1 << 30),
            resident_bytes: Some(1 << 30),
            ..ChannelSample::default()
        };
        let sem = SemaphoreSample {
            info: info("semaphore"),
            present: true,
            value: Some(u32::MAX),
            waiters: Some(3),
            stale_waiters: None,
            holders: vec![holder],
        };
        let extra = [("node", "node-with-a-long-name-1")];
        let extra_bytes = ",node=\"node-with-a-long-name-1\"".len();
        for (sample, budgeted) in [
            (
                LinkSample {
                    channels: vec![fifo.clone()],
                    ..LinkSample::default()
                },
                object_bytes("ns", "l", extra_bytes, ObjectRef::Channel(&fifo)),
            ),
            (
                LinkSample {
                    channels: vec![shm.clone()],
                    ..LinkSample::default()
                },
                object_bytes("ns", "l", extra_bytes, ObjectRef::Channel(&shm)),
            ),
            (
                LinkSample {
                    semaphores: vec![sem.clone()],
                    ..LinkSample::default()
                },
                object_bytes("ns", "l", extra_bytes, ObjectRef::Semaphore(&sem)),
            ),
        ] {
            let sample = LinkSample {
                namespace: "ns".into(),
                name: "l".into(),
                holders_known: true,
                ..sample
            };
            let mut out = String::new();
            render_channels(&[sample], &extra, &mut out);
            let rendered: usize = out
                .lines()
                .filter(|l| l.contains("channel=") && !l.starts_with("ipclink_channel_holder_info"))
                .map(|l| l.len() + 1)
                .sum();
            assert!(rendered > 0);
            assert!(
                budgeted >= rendered,
                "budgeted {budgeted} < rendered {rendered}:\n{out}"
            );
            assert!(
                budgeted <= rendered * 2,
                "budgeted {budgeted} for {rendered}"
            );
        }
    }
}
