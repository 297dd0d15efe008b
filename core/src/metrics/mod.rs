//! The metric families of every component (DESIGN.md §3): names, help, labels, units.

use std::fmt::Write as _;

use prometheus::{Registry, TextEncoder};

use crate::sample::{ChannelSample, LinkSample, SemaphoreSample};

mod components;
mod families;
pub use components::{CsiMetrics, OperatorMetrics};
use families::FAMILIES;

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
