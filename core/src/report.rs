//! The `/v1/links` body: what every ipclink process that holds links reports about them
//! (the sidecar, the volume plugin, the CSI node plugin), and what the operator gathers.

use serde::{Deserialize, Serialize};

use crate::sample::LinkSample;

/// Body of `/v1/links`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinksReport {
    /// Every link, in (namespace, name) order.
    pub links: Vec<LinkSample>,
    /// Containers found mounting the links (Compose discovery), with their problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberReport>,
}

/// One container that mounts a link (Compose discovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReport {
    /// The link's namespace.
    pub namespace: String,
    /// The link's name.
    pub link: String,
    /// Compose service name (the member name), or the container name outside Compose.
    pub service: String,
    /// Container name.
    pub container: String,
    /// Container id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The user it runs as, as the engine reports it ("" is the image's default, root).
    pub user: String,
    /// The container's state (running, exited, paused, ...).
    pub state: String,
    /// Whether its permissions could be checked (a numeric user).
    pub checked: bool,
    /// What it cannot do, one line per object, naming service and channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Channels it cannot use as declared, with the missing access (for metrics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<(String, String)>,
    /// The roles (`reader`, `writer`) its service is declared for on each channel that
    /// names readers or writers, and none on any channel when it is not a member: what
    /// [`mark_undeclared`] holds its processes to.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
    /// Channels its processes hold in a role it is not declared for, with the role, as
    /// [`mark_undeclared`] found them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undeclared: Vec<(String, String)>,
}

/// Fills each member's `undeclared` from who holds what in `samples`: a hold by a
/// process of its container, on a channel its `roles` name, in a role they do not give
/// it. A mapping is allowed to a reader or a writer, and reading a region to its
/// writer (a region opened read-write is held in both roles).
pub fn mark_undeclared(members: &mut [MemberReport], samples: &[LinkSample]) {
    for m in members.iter_mut() {
        m.undeclared.clear();
        let Some(s) = samples
            .iter()
            .find(|s| *s.namespace == m.namespace && *s.name == m.link)
        else {
            continue;
        };
        for c in &s.channels {
            let Some(allowed) = m.roles.get(&c.info.name) else {
                continue;
            };
            for h in c.holders.iter().filter(|h| h.container == m.container) {
                let writer = allowed.iter().any(|r| r == "writer");
                let ok = allowed.contains(&h.role)
                    || (h.role == "mapper" && !allowed.is_empty())
                    || (h.role == "reader" && c.info.kind == "shm" && writer);
                let hold = (c.info.name.clone(), h.role.clone());
                if !ok && !m.undeclared.contains(&hold) {
                    m.undeclared.push(hold);
                }
            }
        }
    }
}

/// The row `kubectl ipclink top` and `ipclink-sidecar status` show for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    /// The link's namespace.
    pub namespace: String,
    /// The link.
    pub link: String,
    /// Channel or semaphore name.
    pub channel: String,
    /// shm, fifo, socket, or semaphore/ABI.
    pub kind: String,
    /// declared or discovered.
    pub origin: &'static str,
    /// What is waiting: a FIFO's or socket's queued bytes (and a socket's connections
    /// waiting in accept()), a semaphore's value; `-` for a region (it has no depth).
    pub depth: String,
    /// A FIFO's pipe size or a region's size; `-` where there is none.
    pub capacity: String,
    /// Processes reading it (holding a read end, listening, or having it open to read).
    pub readers: String,
    /// Processes writing it.
    pub writers: String,
    /// Who holds it, by pod, container or command, with their roles (r, w, m).
    pub holders: String,
    /// Owner `uid:gid` and mode.
    pub owner: String,
    /// Permission bits.
    pub mode: String,
}

/// What cannot be known is shown as such, never as 0.
pub const UNKNOWN: &str = "<unknown>";

/// `n` bytes for people: `512B`, `64KiB`, `1.5MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// Who a holder is for people: its pod's name (the link's namespace left out), else its
/// container, else its command and pid.
fn who(h: &crate::sample::HolderSample, namespace: &str) -> String {
    if !h.pod.is_empty() {
        let pod = h
            .pod
            .strip_prefix(namespace)
            .and_then(|p| p.strip_prefix('/'));
        return pod.unwrap_or(&h.pod).to_owned();
    }
    if !h.container.is_empty() {
        return h.container.clone();
    }
    format!("{}[{}]", h.command, h.pid)
}

/// Most holders a row names; the rest are counted (`+N`).
const NAMED_HOLDERS: usize = 3;

/// The READERS, WRITERS and HOLDERS cells of an object's holders.
fn holder_cells(
    holders: &[crate::sample::HolderSample],
    known: bool,
    namespace: &str,
) -> (String, String, String) {
    if !known {
        return (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into());
    }
    let count = |role: &str| {
        let pids: std::collections::BTreeSet<i32> = holders
            .iter()
            .filter(|h| h.role == role)
            .map(|h| h.pid)
            .collect();
        pids.len().to_string()
    };
    // Roles per holder, in the order the holders come.
    let mut named: Vec<(String, String)> = Vec::new();
    for h in holders {
        let name = who(h, namespace);
        let letter = &h.role[..1];
        match named.iter_mut().find(|(n, _)| *n == name) {
            Some((_, roles)) if !roles.contains(letter) => roles.push_str(letter),
            Some(_) => {}
            None => named.push((name, letter.to_owned())),
        }
    }
    let mut cell: Vec<String> = named
        .iter()
        .take(NAMED_HOLDERS)
        .map(|(n, r)| {
            // Always in the order r, w, m.
            let roles: String = "rwm".chars().filter(|c| r.contains(*c)).collect();
            format!("{n}({roles})")
        })
        .collect();
    if named.len() > NAMED_HOLDERS {
        cell.push(format!("+{}", named.len() - NAMED_HOLDERS));
    }
    let cell = if cell.is_empty() {
        "-".to_owned()
    } else {
        cell.join(" ")
    };
    (count("reader"), count("writer"), cell)
}

/// One row per object of `sample`, channels then semaphores.
pub fn object_rows(sample: &LinkSample) -> Vec<ObjectRow> {
    let ns = &*sample.namespace;
    let mut rows = Vec::new();
    for c in &sample.channels {
        let bytes = |v: Option<u64>| v.map_or_else(|| UNKNOWN.to_owned(), human_bytes);
        let (depth, capacity) = match (c.present, c.observed, c.info.kind.as_str()) {
            (false, _, _) => ("MISSING".to_owned(), "-".to_owned()),
            (_, _, "shm") => (
                "-".to_owned(),
                match c.declared_bytes {
                    Some(d) => format!("{} (declared {})", bytes(c.capacity_bytes), human_bytes(d)),
                    None => bytes(c.capacity_bytes),
                },
            ),
            (_, false, _) => (UNKNOWN.to_owned(), UNKNOWN.to_owned()),
            (_, _, "socket") => (
                format!(
                    "{} waiting, {}",
                    c.backlog_connections
                        .map_or_else(|| UNKNOWN.to_owned(), |n| n.to_string()),
                    bytes(c.queue_bytes)
                ),
                "-".to_owned(),
            ),
            _ => (
                bytes(c.queue_bytes),
                // No holder: the pipe is empty and has no size yet.
                c.capacity_bytes.map_or_else(|| "-".to_owned(), human_bytes),
            ),
        };
        let (readers, writers, holders) = holder_cells(&c.holders, sample.holders_known, ns);
        rows.push(ObjectRow {
            namespace: ns.to_owned(),
            link: sample.name.to_string(),
            channel: c.info.name.clone(),
            kind: c.info.kind.clone(),
            origin: c.info.origin(),
            depth,
            capacity,
            readers,
            writers,
            holders,
            owner: format!("{}:{}", c.info.uid, c.info.gid),
            mode: c.info.mode.clone(),
        });
    }
    for m in &sample.semaphores {
        let depth = match (m.present, m.value) {
            (false, _) => "MISSING".to_owned(),
            (true, Some(v)) => match (m.waiters, m.stale_waiters) {
                (_, Some(w)) => format!("value {v}, {w} waiting, but no process seen holding it"),
                (Some(w), _) if w > 0 => format!("value {v}, {w} waiting"),
                _ => format!("value {v}"),
            },
            (true, None) => UNKNOWN.to_owned(),
        };
        let (readers, writers, holders) = holder_cells(&m.holders, sample.holders_known, ns);
        rows.push(ObjectRow {
            namespace: ns.to_owned(),
            link: sample.name.to_string(),
            channel: m.info.name.clone(),
            kind: format!("semaphore/{}", m.info.abi.as_deref().unwrap_or("glibc")),
            origin: m.info.origin(),
            depth,
            capacity: "-".to_owned(),
            readers,
            writers,
            holders,
            owner: format!("{}:{}", m.info.uid, m.info.gid),
            mode: m.info.mode.clone(),
        });
    }
    rows
}

/// `s` as it may reach a terminal: control characters (C0, DEL, C1) as `\xNN`, the
/// characters that reorder or hide text (bidi controls, zero-width and line or
/// paragraph separators) as `\u{NNNN}`, and a backslash as `\\`, so no escape can be
/// forged. Names members choose and commands they set pass through here before any
/// table, Event or condition shows them.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c,
                '\\' | '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
                    | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    if !s.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x100 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if hidden(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Columns aligned as kubectl aligns them: each as wide as its widest cell, three
/// spaces apart, the last one not padded. Every cell is shown [`printable`].
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| printable(h).into_owned()).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let last = r.len().saturating_sub(1);
        for (i, (cell, w)) in r.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = w - cell.chars().count() + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sample::{ChannelSample, HolderSample, ObjectInfo};

    fn holder(role: &str, pid: i32, pod: &str) -> HolderSample {
        HolderSample {
            role: role.into(),
            pid,
            pod: pod.into(),
            container: "main".into(),
            command: "python3".into(),
        }
    }

    #[test]
    fn rows_name_holders_and_say_what_is_unknown() {
        let fifo = ChannelSample {
            info: Arc::new(ObjectInfo {
                name: "events".into(),
                kind: "fifo".into(),
                ..ObjectInfo::default()
            }),
            present: true,
            queue_bytes: Some(1536),
            capacity_bytes: Some(65536),
            holders: vec![
                holder("reader", 7, "vision/consumer"),
                holder("writer", 9, "vision/producer"),
                holder("reader", 9, "vision/producer"),
            ],
            ..ChannelSample::default()
        };
        let mut sample = LinkSample {
            namespace: "vision".into(),
            name: "frames".into(),
            channels: vec![fifo],
            holders_known: true,
            ..LinkSample::default()
        };
        let row = &object_rows(&sample)[0];
        assert_eq!(
            (&*row.depth, &*row.capacity, &*row.readers, &*row.writers),
            ("1.5KiB", "64KiB", "2", "1")
        );
        assert_eq!(row.holders, "consumer(r) producer(rw)");
        sample.holders_known = false;
        sample.channels[0].observed = false;
        let row = &object_rows(&sample)[0];
        assert_eq!((&*row.depth, &*row.readers), (UNKNOWN, UNKNOWN));
        let text = table(
            &["A", "BB"],
            &[
                vec!["long".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A      BB\nlong   x\ns      y\n");
    }

    #[test]
    fn holds_in_roles_a_member_is_not_declared_for_are_marked() {
        let channel = |name: &str, holders: Vec<HolderSample>| ChannelSample {
            info: Arc::new(ObjectInfo {
                name: name.into(),
                kind: if name == "frames" { "shm" } else { "socket" }.into(),
                ..ObjectInfo::default()
            }),
            holders,
            ..ChannelSample::default()
        };
        let by = |role: &str, container: &str| HolderSample {
            container: container.into(),
            ..holder(role, 1, "")
        };
        let sample = LinkSample {
            namespace: "compose".into(),
            name: "frames".into(),
            channels: vec![
                // The consumer listens on `control` (reader), the producer connects.
                channel(
                    "control",
                    vec![
                        by("reader", "c-1"),
                        by("writer", "p-1"),
                        by("reader", "p-1"),
                    ],
                ),
                channel(
                    "frames",
                    vec![
                        by("mapper", "c-1"),
                        by("mapper", "x-1"),
                        by("reader", "p-1"),
                        by("writer", "p-1"),
                        by("writer", "c-1"),
                    ],
                ),
                channel("open", vec![by("writer", "c-1")]),
            ],
            ..LinkSample::default()
        };
        let member = |service: &str, container: &str, roles: &[(&str, &[&str])]| MemberReport {
            namespace: "compose".into(),
            link: "frames".into(),
            service: service.into(),
            container: container.into(),
            id: String::new(),
            user: String::new(),
            state: "running".into(),
            checked: true,
            problems: Vec::new(),
            denied: Vec::new(),
            roles: roles
                .iter()
                .map(|(c, r)| (c.to_string(), r.iter().map(|s| s.to_string()).collect()))
                .collect(),
            undeclared: vec![("stale".into(), "reader".into())],
        };
        let mut members = vec![
            member(
                "consumer",
                "c-1",
                &[("control", &["reader"]), ("frames", &["reader"])],
            ),
            member(
                "producer",
                "p-1",
                &[("control", &["writer"]), ("frames", &["writer"])],
            ),
            // Not a member: no role anywhere.
            member(
                "intruder",
                "x-1",
                &[("control", &[]), ("frames", &[]), ("open", &[])],
            ),
        ];
        mark_undeclared(&mut members, std::slice::from_ref(&sample));
        assert_eq!(
            members[0].undeclared,
            [("frames".to_owned(), "writer".to_owned())],
            "a reader that opens the region read-write"
        );
        assert_eq!(
            members[1].undeclared,
            [("control".to_owned(), "reader".to_owned())]
        );
        assert_eq!(
            members[2].undeclared,
            [("frames".to_owned(), "mapper".to_owned())]
        );
    }

    #[test]
    fn cells_show_control_and_bidi_characters_escaped() {
        assert_eq!(printable("frames"), "frames");
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            printable("evil\n\"x\" \u{1b}[2J\u{1b}]0;pwned\u{7}"),
            "evil\\x0a\"x\" \\x1b[2J\\x1b]0;pwned\\x07"
        );
        assert_eq!(printable("a\u{7f}b\u{9b}c"), "a\\x7fb\\x9bc");
        // OSC 52 (write the terminal's clipboard) is escaped like every other sequence.
        assert_eq!(
            printable("\u{1b}]52;c;cm0gLXJmIH4=\u{7}"),
            "\\x1b]52;c;cm0gLXJmIH4=\\x07"
        );
        assert_eq!(printable("abc\u{202e}txt.exe"), "abc\\u{202e}txt.exe");
        assert_eq!(
            printable("zero\u{200b}width\u{2066}"),
            "zero\\u{200b}width\\u{2066}"
        );
        // A backslash is doubled, so "\\x1b" typed by a member is not an escape we made.
        assert_eq!(printable("a\\x1b"), "a\\\\x1b");
        assert_eq!(printable("naïve 名前"), "naïve 名前");
        let text = table(
            &["CHANNEL", "HOLDERS"],
            &[
                vec!["fake\nrev   l1   frames".into(), "\u{1b}[31mRED".into()],
                vec!["ok".into(), "x".into()],
            ],
        );
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains("fake\\x0arev   l1   frames   \\x1b[31mRED"),
            "{text}"
        );
    }
}
