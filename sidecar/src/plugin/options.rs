//! `driver_opts` of a volume: either a link file (`link=/abs/file.yaml`) or the objects
//! declared inline (`shm=frames:1Mi`, `fifo=events`, `socket=control:0770` (an optional
//! mode each), `queue=jobs:64x4Ki` (capacity x message size), `semaphores=slots:8`,
//! `size=`, `owner=`, `mode=` (of every object without its own), `abi=`,
//! `allowCreate=true`, `rootMode=`), resolved into one `IpcLink` through core's
//! validator; and volume names and the link names they map to.

use std::collections::BTreeMap;

use ipclink_core::model::spec::{Mode, Owner, Quantity};
use ipclink_core::{Channel, ChannelKind, IpcLink, IpcLinkSpec, Semaphore, SemaphoreAbi};

use super::{NAMESPACE, Refusal, bad};

/// Longest volume name accepted.
pub const MAX_NAME: usize = 128;
/// Every option a volume may have.
const OPTIONS: &[&str] = &[
    "link",
    "size",
    "owner",
    "mode",
    "abi",
    "shm",
    "fifo",
    "socket",
    "queue",
    "semaphores",
    "allowCreate",
    "rootMode",
];

/// Checks a volume name from the engine: 1..=128 of `[A-Za-z0-9_.-]`, starting with a
/// letter or digit, without `..` (Docker's own rule, plus the length and `..`).
pub fn check_name(name: &str) -> Result<(), Refusal> {
    let shown: String = name.chars().take(64).collect();
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "Name: {shown:?}{} is not allowed: use 1 to {MAX_NAME} letters, digits, '_', '.' or '-', starting with a letter or digit, without \"..\"",
            if name.chars().count() > 64 { "..." } else { "" }
        )))
    }
}

/// The link name for a volume: the name itself when it is a DNS label; else lowercased
/// with `_` and `.` as `-`; a name that still is not a DNS label (too long) gets a hash
/// of the whole name. Two volumes that map to one link are refused at Create.
pub fn key_for(name: &str) -> String {
    use ipclink_core::model::names::check_dns_label;
    if check_dns_label(name).is_ok() {
        return name.to_owned();
    }
    let plain: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if check_dns_label(&plain).is_ok() {
        return plain;
    }
    let hash = ipclink_core::model::names::fnv1a64(name.as_bytes());
    let stem: String = plain.chars().take(40).collect();
    let stem = stem.trim_matches('-');
    if stem.is_empty() {
        format!("v-{hash:016x}")
    } else {
        format!("{stem}-{hash:016x}")
    }
}

fn split_entries<'a>(
    field: &str,
    value: &'a str,
) -> Result<Vec<(&'a str, Option<&'a str>)>, Refusal> {
    let mut out = Vec::new();
    for entry in value.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(bad(format!("Opts.{field}: empty entry in {value:?}")));
        }
        let (name, arg) = match entry.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (entry, None),
        };
        if let Err(e) = ipclink_core::model::names::check_dns_label(name) {
            return Err(bad(format!("Opts.{field}: {name:?}: {e}")));
        }
        out.push((name, arg));
    }
    Ok(out)
}

/// Resolves a volume's options into a link named `key`, or refuses naming the option.
/// `from_file` is what reading the file `Opts.link` names gave (see
/// [`LinkDir::read`](super::linkfile::LinkDir::read)), when it names one.
pub fn link_from_opts(
    key: &str,
    opts: &BTreeMap<String, String>,
    from_file: Option<Result<IpcLinkSpec, Refusal>>,
) -> Result<IpcLink, Refusal> {
    let allowed = OPTIONS.join(", ");
    for k in opts.keys() {
        if !OPTIONS.contains(&k.as_str()) {
            return Err(bad(format!(
                "Opts: unknown option {k:?}; allowed: {allowed}"
            )));
        }
    }
    let mut spec = if opts.contains_key("link") {
        if let Some(other) = opts.keys().find(|k| k.as_str() != "link") {
            return Err(bad(format!(
                "Opts.link: cannot be combined with Opts.{other} (the link file declares everything)"
            )));
        }
        from_file.unwrap_or_else(|| Err(bad("Opts.link: the link file was not read")))?
    } else {
        IpcLinkSpec::default()
    };
    if let Some(size) = opts.get("size") {
        ipclink_core::model::quantity::parse_bytes(size).map_err(|e| {
            bad(format!(
                "Opts.size: {e}; use a quantity from 1 to 1Ti such as 64Mi"
            ))
        })?;
        spec.size_limit = Some(Quantity(size.clone()));
    }
    match opts.get("allowCreate").map(String::as_str) {
        None | Some("false") => {}
        Some("true") => spec.allow_create = true,
        Some(other) => {
            return Err(bad(format!(
                "Opts.allowCreate: {:?}; allowed: true, false",
                other.escape_debug().to_string()
            )));
        }
    }
    spec.root_mode = opts.get("rootMode").cloned();
    if let Some(owner) = opts.get("owner") {
        let parsed = owner
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
            .filter(|&(u, g)| u != u32::MAX && g != u32::MAX);
        let Some((uid, gid)) = parsed else {
            return Err(bad(format!(
                "Opts.owner: {owner:?} is not UID:GID with numbers from 0 to 4294967294"
            )));
        };
        spec.owner = Some(Owner {
            uid: i64::from(uid),
            gid: i64::from(gid),
        });
    }
    let mode = match opts.get("mode") {
        Some(m) => {
            let mode = Mode(m.clone());
            ipclink_core::model::validate::parse_mode(&mode)
                .map_err(|e| bad(format!("Opts.mode: {e}")))?;
            Some(mode)
        }
        None => None,
    };
    let abi = match opts.get("abi").map(String::as_str) {
        None | Some("glibc") => SemaphoreAbi::Glibc,
        Some("musl") => SemaphoreAbi::Musl,
        Some(other) => {
            return Err(bad(format!("Opts.abi: {other:?}; allowed: glibc, musl")));
        }
    };
    let channel = |name: &str, kind, size: Option<&str>| Channel {
        name: name.to_owned(),
        kind,
        size: size.map(|s| Quantity(s.to_owned())),
        capacity: None,
        message_size: None,
        mode: mode.clone(),
        owner: None,
        writers: Vec::new(),
        readers: Vec::new(),
    };
    if let Some(v) = opts.get("shm") {
        for (name, size) in split_entries("shm", v)? {
            let Some(size) = size else {
                return Err(bad(format!(
                    "Opts.shm: {name:?} needs a size, as in {name}:1Mi"
                )));
            };
            ipclink_core::model::quantity::parse_bytes(size)
                .map_err(|e| bad(format!("Opts.shm: {name}: {e}")))?;
            spec.channels
                .push(channel(name, ChannelKind::Shm, Some(size)));
        }
    }
    for (field, kind) in [("fifo", ChannelKind::Fifo), ("socket", ChannelKind::Socket)] {
        if let Some(v) = opts.get(field) {
            for (name, arg) in split_entries(field, v)? {
                let mut c = channel(name, kind, None);
                // `name:MODE` sets this channel's mode (a socket directory needs search
                // bits, which the shared `mode` of files does not have).
                if let Some(m) = arg {
                    let m = Mode(m.to_owned());
                    let parse = if kind == ChannelKind::Socket {
                        ipclink_core::model::validate::parse_socket_mode
                    } else {
                        ipclink_core::model::validate::parse_mode
                    };
                    parse(&m).map_err(|e| bad(format!("Opts.{field}: {name}: {e}")))?;
                    c.mode = Some(m);
                }
                spec.channels.push(c);
            }
        }
    }
    if let Some(v) = opts.get("queue") {
        for (name, arg) in split_entries("queue", v)? {
            let (capacity, size) = queue_params(name, arg)?;
            let mut c = channel(name, ChannelKind::Queue, None);
            c.capacity = Some(i64::from(capacity));
            c.message_size = Some(Quantity(size.to_owned()));
            spec.channels.push(c);
        }
    }
    if let Some(v) = opts.get("semaphores") {
        for (name, initial) in split_entries("semaphores", v)? {
            let initial = match initial {
                None => 0,
                Some(i) => i.parse::<i64>().map_err(|_| {
                    bad(format!(
                        "Opts.semaphores: {name}: initial value {i:?} is not a number from 0 to 2147483647"
                    ))
                })?,
            };
            spec.semaphores.push(Semaphore {
                name: name.to_owned(),
                initial,
                abi,
                mode: mode.clone(),
                owner: None,
            });
        }
    }
    if opts.get("link").is_none()
        && spec.channels.is_empty()
        && spec.semaphores.is_empty()
        && !spec.allow_create
    {
        return Err(bad(format!(
            "Opts: declare the link with Opts.link=/path/link.yaml, with at least one of shm, fifo, socket, queue, semaphores, or let members create their own objects with allowCreate=true (options: {allowed})"
        )));
    }
    let mut link = IpcLink::new(key, spec);
    link.metadata.namespace = Some(NAMESPACE.into());
    Ok(link)
}

/// `CAPACITYxSIZE` of a `queue` entry (`64x4Ki`: 64 messages of up to 4 KiB): the
/// capacity, and the message size as written, both within a queue's bounds.
fn queue_params<'a>(name: &str, arg: Option<&'a str>) -> Result<(u32, &'a str), Refusal> {
    let usage = || {
        bad(format!(
            "Opts.queue: {name:?} needs a capacity and a message size, as in {name}:64x4Ki (64 messages of up to 4 KiB)"
        ))
    };
    let (capacity, size) = arg.and_then(|a| a.split_once('x')).ok_or_else(usage)?;
    let capacity = capacity.parse::<u32>().map_err(|_| usage())?;
    let bytes = ipclink_core::model::quantity::parse_bytes(size)
        .map_err(|e| bad(format!("Opts.queue: {name}: messageSize: {e}")))?;
    ipclink_queue::Params {
        capacity,
        message_size: u32::try_from(bytes).unwrap_or(u32::MAX),
    }
    .check()
    .map_err(|e| bad(format!("Opts.queue: {name}: {e}")))?;
    Ok((capacity, size))
}

pub(crate) fn show_opts(opts: &BTreeMap<String, String>) -> String {
    if opts.is_empty() {
        return "none".into();
    }
    opts.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Core's problems, with spec paths turned into the options that set them.
pub(crate) fn opts_problems(problems: &ipclink_core::Problems) -> String {
    problems
        .0
        .iter()
        .map(|p| {
            let field = p
                .field
                .replace("spec.sizeLimit", "size")
                .replace("spec.owner", "owner")
                .replace("spec.", "");
            format!("{field}: {}", p.message)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use ipclink_core::validate;

    #[test]
    fn names_and_keys() {
        for good in ["frames", "proj_frames", "A.b-c_9", &"a".repeat(128)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for badname in [
            "",
            "-x",
            ".x",
            "..",
            "a..b",
            "a/b",
            "a\0b",
            "ü",
            &"a".repeat(129),
        ] {
            let e = check_name(badname).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.starts_with("Name: "), "{}", e.message);
        }
        assert_eq!(key_for("frames"), "frames");
        assert_eq!(key_for("Proj_Frames"), "proj-frames");
        assert_eq!(key_for("proj.frames"), "proj-frames");
        let long = key_for(&"x_".repeat(64));
        assert!(
            ipclink_core::model::names::check_dns_label(&long).is_ok(),
            "{long}"
        );
        assert_ne!(long, key_for(&"x.".repeat(64)));
    }

    #[test]
    fn inline_options_resolve_to_a_link() {
        let opts: BTreeMap<String, String> = [
            ("shm", "frames:64Ki"),
            ("fifo", "events,ticks:0640"),
            ("socket", "control:0770"),
            ("semaphores", "slots:8,frame-ready"),
            ("queue", "jobs:64x4Ki"),
            ("owner", "1000:1000"),
            ("mode", "0660"),
            ("abi", "musl"),
            ("size", "8Mi"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let link = link_from_opts("v", &opts, None).unwrap();
        let plan = validate(&link).unwrap();
        assert_eq!(plan.objects.len(), 7);
        let jobs = link
            .spec
            .channels
            .iter()
            .find(|c| c.name == "jobs")
            .unwrap();
        assert_eq!(jobs.kind, ChannelKind::Queue);
        assert_eq!(jobs.capacity, Some(64));
        assert_eq!(jobs.message_size, Some(Quantity("4Ki".into())));
        // A comma-separated list, each name with its own mode or the volume's.
        let fifos: Vec<(&str, u32)> = plan
            .objects
            .iter()
            .filter(|o| matches!(o.kind, ipclink_core::ObjectKind::Fifo))
            .map(|o| (o.name.as_str(), o.mode))
            .collect();
        assert_eq!(fifos, [("events", 0o660), ("ticks", 0o640)]);
        assert_eq!(plan.namespace, NAMESPACE);
        for (k, v, field) in [
            ("size", "-1", "Opts.size"),
            ("size", "abc", "Opts.size"),
            ("size", "1e20", "Opts.size"),
            ("mode", "4777", "Opts.mode"),
            ("owner", "x", "Opts.owner"),
            ("abi", "bsd", "Opts.abi"),
            ("bogus", "1", "Opts: unknown option"),
            ("shm", "frames", "Opts.shm"),
            ("socket", "control:777x", "Opts.socket"),
            ("fifo", "Bad_Name", "Opts.fifo"),
            ("semaphores", "s:-1x", "Opts.semaphores"),
            ("queue", "jobs", "Opts.queue: \"jobs\" needs a capacity"),
            ("queue", "jobs:64", "Opts.queue: \"jobs\" needs a capacity"),
            (
                "queue",
                "jobs:x4Ki",
                "Opts.queue: \"jobs\" needs a capacity",
            ),
            ("queue", "jobs:0x4Ki", "Opts.queue: jobs: capacity 0 is not"),
            (
                "queue",
                "jobs:65537x1",
                "Opts.queue: jobs: capacity 65537 is not",
            ),
            ("queue", "jobs:8x0", "Opts.queue: jobs: messageSize"),
            ("queue", "jobs:8x17Mi", "Opts.queue: jobs: messageSize"),
            ("queue", "jobs:8x1e30", "Opts.queue: jobs: messageSize"),
            ("queue", "Jobs:8x1", "Opts.queue: \"Jobs\""),
            ("link", "relative.yaml", "Opts.link"),
        ] {
            let mut o = opts.clone();
            o.insert(k.into(), v.into());
            let e = link_from_opts("v", &o, None)
                .and_then(|l| validate(&l).map(drop).map_err(|p| bad(opts_problems(&p))))
                .unwrap_err();
            assert!(e.message.starts_with(field), "{k}={v}: {}", e.message);
        }
    }
}
