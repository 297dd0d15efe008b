//! `ipclink-sidecar volume-plugin`: the Docker volume plugin protocol (v1, JSON over HTTP
//! on a Unix socket), so that Compose files can say `driver: ipclink`. Docker and podman
//! both speak it.
//!
//! Each volume is one link, materialized under `ROOT/docker/<key>/` (the name as a DNS
//! label, see [`key_for`]) (its own tmpfs as
//! root) when it is created and torn down when it is removed. `driver_opts` either name
//! a link file (`link=/abs/file.yaml`) or declare the objects inline (`shm=frames:1Mi`,
//! `fifo=events`, `socket=control:0770` (an optional mode each), `semaphores=slots:8`,
//! `size=`, `owner=`, `mode=` (of every object without its own), `abi=`). Mounts are counted per caller id. The volumes and their mounts are kept in
//! `ROOT/.volumes.json` (temp file, fsync, rename), so a restarted plugin carries on
//! where the last one stopped.
//!
//! Every refusal is `{"Err": "..."}` with a 4xx status, names the field, and changes
//! nothing: neither the state file nor anything under the root.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ipclink_core::materialize::write_atomic_at;
use ipclink_core::probe::LinkProbe;
use ipclink_core::spec::{Mode, Owner, Quantity};
use ipclink_core::{
    Channel, ChannelKind, IpcLink, IpcLinkSpec, LinkPlan, Semaphore, SemaphoreAbi, Store,
    parse_links, validate,
};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode as FileMode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::LinkSet;

/// The namespace directory under the root that holds every volume's link.
pub const NAMESPACE: &str = "docker";
/// Largest request body read; larger ones are refused unread.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest volume name accepted.
pub const MAX_NAME: usize = 128;
/// Largest link file a `link=` option may name.
const MAX_LINK_FILE: u64 = 1024 * 1024;
const STATE_FILE: &str = ".volumes.json";
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";
const OPTIONS: &str = "link, size, owner, mode, abi, shm, fifo, socket, semaphores";

/// A refusal: HTTP status and the message for `Err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 4xx for the caller's mistakes, 500 for ours.
    pub status: StatusCode,
    /// Names the field and what is allowed.
    pub message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

fn bad(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, message)
}

/// One volume as kept in the state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    /// The name the engine uses.
    pub name: String,
    /// The link's name under `ROOT/docker/` (the name itself when it is a DNS label).
    pub key: String,
    /// The options it was created with.
    pub opts: BTreeMap<String, String>,
    /// The resolved link.
    pub plan: LinkPlan,
    /// Caller ids that have it mounted.
    pub mounts: BTreeSet<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    volumes: Vec<Volume>,
}

/// The plugin's state: the store and the volumes, guarded by one lock.
#[derive(Debug)]
pub struct Plugin {
    store: Store,
    volumes: BTreeMap<String, Volume>,
    links: Arc<Mutex<LinkSet>>,
}

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
    use ipclink_core::validate::check_dns_label;
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
    // FNV-1a, 64 bits: stable across versions and machines.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
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
        if let Err(e) = ipclink_core::validate::check_dns_label(name) {
            return Err(bad(format!("Opts.{field}: {name:?}: {e}")));
        }
        out.push((name, arg));
    }
    Ok(out)
}

/// Resolves a volume's options into a link named `key`, or refuses naming the option.
pub fn link_from_opts(key: &str, opts: &BTreeMap<String, String>) -> Result<IpcLink, Refusal> {
    for k in opts.keys() {
        if !OPTIONS.split(", ").any(|o| o == k) {
            return Err(bad(format!(
                "Opts: unknown option {k:?}; allowed: {OPTIONS}"
            )));
        }
    }
    let mut spec = if let Some(file) = opts.get("link") {
        if let Some(other) = opts.keys().find(|k| k.as_str() != "link") {
            return Err(bad(format!(
                "Opts.link: cannot be combined with Opts.{other} (the link file declares everything)"
            )));
        }
        read_link_file(file)?
    } else {
        IpcLinkSpec::default()
    };
    if let Some(size) = opts.get("size") {
        ipclink_core::quantity::parse_bytes(size).map_err(|e| {
            bad(format!(
                "Opts.size: {e}; use a quantity from 1 to 1Ti such as 64Mi"
            ))
        })?;
        spec.size_limit = Some(Quantity(size.clone()));
    }
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
            ipclink_core::validate::parse_mode(&mode)
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
            ipclink_core::quantity::parse_bytes(size)
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
                    ipclink_core::validate::parse_mode(&m)
                        .map_err(|e| bad(format!("Opts.{field}: {name}: {e}")))?;
                    c.mode = Some(m);
                }
                spec.channels.push(c);
            }
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
    if opts.get("link").is_none() && spec.channels.is_empty() && spec.semaphores.is_empty() {
        return Err(bad(format!(
            "Opts: declare the link with Opts.link=/path/link.yaml or with at least one of shm, fifo, socket, semaphores (options: {OPTIONS})"
        )));
    }
    let mut link = IpcLink::new(key, spec);
    link.metadata.namespace = Some(NAMESPACE.into());
    Ok(link)
}

fn read_link_file(file: &str) -> Result<IpcLinkSpec, Refusal> {
    let path = Path::new(file);
    if !path.is_absolute() {
        return Err(bad(format!("Opts.link: {file:?} must be an absolute path")));
    }
    let opened = File::open(path)
        .and_then(|f| f.metadata().map(|m| (f, m)))
        .map_err(|e| bad(format!("Opts.link: cannot read {file:?}: {e}")))?;
    let (f, meta) = opened;
    if !meta.is_file() || meta.len() > MAX_LINK_FILE {
        return Err(bad(format!(
            "Opts.link: {file:?} must be a regular file of at most {MAX_LINK_FILE} bytes"
        )));
    }
    let text = std::io::read_to_string(f)
        .map_err(|e| bad(format!("Opts.link: cannot read {file:?}: {e}")))?;
    let mut links = parse_links(file, &text).map_err(|p| bad(format!("Opts.link: {file}: {p}")))?;
    if links.len() != 1 {
        return Err(bad(format!(
            "Opts.link: {file:?} holds {} IpcLink documents; a volume takes exactly one",
            links.len()
        )));
    }
    Ok(links.remove(0).spec)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameReq {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MountReq {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID")]
    id: String,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))
}

/// Bodies of calls that take no arguments: empty, `null` or `{}`.
fn parse_empty(body: &[u8]) -> Result<(), Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: serde_json::Value = parse(body)?;
    match v {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::Object(m) if m.is_empty() => Ok(()),
        _ => Err(bad(
            "request body: this call takes no arguments; send {} or nothing",
        )),
    }
}

fn check_id(id: &str) -> Result<(), Refusal> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        let shown: String = id.chars().take(64).collect();
        Err(bad(format!(
            "ID: {shown:?} is not allowed: use 1 to 256 letters, digits, '_', '.', '-' or ':'"
        )))
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl Plugin {
    /// Opens the root and reads the state file, re-materializing any volume whose link is
    /// missing (after a reboot) and checking the rest against their plans.
    pub fn open(
        root: &Path,
        mode: ipclink_core::StorageMode,
        links: Arc<Mutex<LinkSet>>,
    ) -> Result<Self, crate::Error> {
        let store = Store::open(root, mode)?;
        let state: StateFile = match openat(
            store.base_fd(),
            STATE_FILE,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            FileMode::empty(),
        ) {
            Ok(fd) => {
                let text =
                    std::io::read_to_string(File::from(fd)).map_err(|source| crate::Error::Io {
                        what: format!("read {}", root.join(STATE_FILE).display()),
                        source,
                    })?;
                serde_json::from_str(&text).map_err(|e| crate::Error::Io {
                    what: format!("parse {}", root.join(STATE_FILE).display()),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })?
            }
            Err(Errno::ENOENT) => StateFile::default(),
            Err(errno) => {
                return Err(crate::Error::Io {
                    what: format!("open {}", root.join(STATE_FILE).display()),
                    source: std::io::Error::from_raw_os_error(errno as i32),
                });
            }
        };
        let mut plugin = Plugin {
            store,
            volumes: BTreeMap::new(),
            links,
        };
        for v in state.volumes {
            // Members may have resized or filled objects since; a live link is never
            // changed, only recreated when it is gone (after a reboot, for instance).
            match plugin.store.open_link(NAMESPACE, &v.key) {
                Ok(_) => {
                    tracing::info!(volume = %v.name, mounts = v.mounts.len(), "volume restored")
                }
                Err(_) => match plugin.store.materialize(&v.plan) {
                    Ok(o) => {
                        tracing::info!(volume = %v.name, created = o.created.len(), "volume recreated")
                    }
                    Err(e) => {
                        tracing::error!(volume = %v.name, error = %e, "volume cannot be recreated")
                    }
                },
            }
            plugin.volumes.insert(v.name.clone(), v);
        }
        plugin.refresh_probes();
        Ok(plugin)
    }

    /// The volumes, by name.
    pub fn volumes(&self) -> &BTreeMap<String, Volume> {
        &self.volumes
    }

    fn mountpoint(&self, v: &Volume) -> String {
        self.store
            .link_path(NAMESPACE, &v.key)
            .display()
            .to_string()
    }

    fn save(&self, volumes: &BTreeMap<String, Volume>) -> Result<(), Refusal> {
        let state = StateFile {
            volumes: volumes.values().cloned().collect(),
        };
        let body = serde_json::to_vec_pretty(&state).map_err(internal)?;
        write_atomic_at(self.store.base_fd().as_fd(), STATE_FILE, &body)
            .map_err(|e| internal(format!("write the state file: {e}")))
    }

    fn refresh_probes(&self) {
        let probes = self
            .volumes
            .values()
            .filter_map(|v| match LinkProbe::open(&self.store, &v.plan) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(volume = %v.name, error = %e, "cannot probe the volume");
                    None
                }
            })
            .collect();
        let mut set = self.links.lock().unwrap_or_else(|p| p.into_inner());
        *set = LinkSet::new(probes);
    }

    fn get(&self, name: &str) -> Result<&Volume, Refusal> {
        check_name(name)?;
        self.volumes.get(name).ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                format!("Name: no ipclink volume {name:?}"),
            )
        })
    }

    /// Handles one call: `(endpoint, body)` to the JSON answer.
    pub fn call(&mut self, endpoint: &str, body: &[u8]) -> Result<serde_json::Value, Refusal> {
        match endpoint {
            "/Plugin.Activate" => {
                parse_empty(body)?;
                Ok(json!({"Implements": ["VolumeDriver"]}))
            }
            "/VolumeDriver.Capabilities" => {
                parse_empty(body)?;
                Ok(json!({"Capabilities": {"Scope": "local"}}))
            }
            "/VolumeDriver.List" => {
                parse_empty(body)?;
                let list: Vec<_> = self
                    .volumes
                    .values()
                    .map(|v| json!({"Name": v.name, "Mountpoint": self.mountpoint(v)}))
                    .collect();
                Ok(json!({"Volumes": list, "Err": ""}))
            }
            "/VolumeDriver.Get" => {
                let req: NameReq = parse(body)?;
                let v = self.get(&req.name)?;
                Ok(json!({"Volume": {
                    "Name": v.name,
                    "Mountpoint": self.mountpoint(v),
                    "Status": {"link": format!("{NAMESPACE}/{}", v.key), "mounts": v.mounts.len()},
                }, "Err": ""}))
            }
            "/VolumeDriver.Path" => {
                let req: NameReq = parse(body)?;
                let v = self.get(&req.name)?;
                Ok(json!({"Mountpoint": self.mountpoint(v), "Err": ""}))
            }
            "/VolumeDriver.Create" => {
                let req: CreateReq = parse(body)?;
                self.create(&req.name, req.opts.unwrap_or_default())?;
                Ok(json!({"Err": ""}))
            }
            "/VolumeDriver.Remove" => {
                let req: NameReq = parse(body)?;
                self.remove(&req.name)?;
                Ok(json!({"Err": ""}))
            }
            "/VolumeDriver.Mount" => {
                let req: MountReq = parse(body)?;
                let mountpoint = self.mount(&req.name, &req.id)?;
                Ok(json!({"Mountpoint": mountpoint, "Err": ""}))
            }
            "/VolumeDriver.Unmount" => {
                let req: MountReq = parse(body)?;
                self.unmount(&req.name, &req.id)?;
                Ok(json!({"Err": ""}))
            }
            other => Err(refuse(
                StatusCode::NOT_FOUND,
                format!(
                    "no endpoint {:?}; this plugin implements VolumeDriver",
                    other.chars().take(64).collect::<String>()
                ),
            )),
        }
    }

    fn create(&mut self, name: &str, opts: BTreeMap<String, String>) -> Result<(), Refusal> {
        check_name(name)?;
        if let Some(v) = self.volumes.get(name) {
            if v.opts == opts {
                return Ok(());
            }
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "Name: volume {name:?} exists with different options ({}); remove it first",
                    show_opts(&v.opts)
                ),
            ));
        }
        let key = key_for(name);
        if let Some(other) = self.volumes.values().find(|v| v.key == key) {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "Name: {name:?} maps to link {key:?}, which volume {:?} uses",
                    other.name
                ),
            ));
        }
        let link = link_from_opts(&key, &opts)?;
        let plan = validate(&link).map_err(|p| bad(format!("Opts: {}", opts_problems(&p))))?;
        if self.store.open_link(NAMESPACE, &key).is_ok() {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "Name: {} exists but this plugin has no record of it; it is left alone",
                    self.store.link_path(NAMESPACE, &key).display()
                ),
            ));
        }
        let volume = Volume {
            name: name.to_owned(),
            key: key.clone(),
            opts,
            plan,
            mounts: BTreeSet::new(),
        };
        self.store.materialize(&volume.plan).map_err(|e| {
            let _ = self.store.teardown(NAMESPACE, &key);
            internal(e)
        })?;
        let mut next = self.volumes.clone();
        next.insert(name.to_owned(), volume);
        if let Err(e) = self.save(&next) {
            let _ = self.store.teardown(NAMESPACE, &key);
            return Err(e);
        }
        self.volumes = next;
        self.refresh_probes();
        tracing::info!(volume = name, link = %format!("{NAMESPACE}/{key}"), "volume created");
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), Refusal> {
        let v = self.get(name)?;
        if !v.mounts.is_empty() {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "Name: volume {name:?} is mounted by {} caller(s) ({}); unmount it first",
                    v.mounts.len(),
                    v.mounts.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let key = v.key.clone();
        // Tear down first: if that fails the volume is still on record and Remove can be
        // retried; if saving fails after it, a restarted plugin recreates the link empty.
        if let Err(e) = self.store.teardown(NAMESPACE, &key) {
            tracing::error!(volume = name, error = %e, "teardown failed");
            return Err(internal(e));
        }
        self.volumes.remove(name);
        self.refresh_probes();
        self.save(&self.volumes)?;
        tracing::info!(volume = name, "volume removed");
        Ok(())
    }

    fn mount(&mut self, name: &str, id: &str) -> Result<String, Refusal> {
        let v = self.get(name)?;
        check_id(id)?;
        if v.mounts.contains(id) {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("ID: {id:?} has already mounted volume {name:?}"),
            ));
        }
        let mountpoint = self.mountpoint(v);
        if self.store.open_link(NAMESPACE, &v.key).is_err() {
            self.store.materialize(&v.plan).map_err(internal)?;
        }
        let mut next = self.volumes.clone();
        if let Some(v) = next.get_mut(name) {
            v.mounts.insert(id.to_owned());
        }
        self.save(&next)?;
        self.volumes = next;
        tracing::info!(volume = name, id, "mounted");
        Ok(mountpoint)
    }

    fn unmount(&mut self, name: &str, id: &str) -> Result<(), Refusal> {
        let v = self.get(name)?;
        check_id(id)?;
        if !v.mounts.contains(id) {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("ID: {id:?} has not mounted volume {name:?}"),
            ));
        }
        let mut next = self.volumes.clone();
        if let Some(v) = next.get_mut(name) {
            v.mounts.remove(id);
        }
        self.save(&next)?;
        self.volumes = next;
        tracing::info!(volume = name, id, "unmounted");
        Ok(())
    }
}

fn show_opts(opts: &BTreeMap<String, String>) -> String {
    if opts.is_empty() {
        return "none".into();
    }
    opts.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Core's problems, with spec paths turned into the options that set them.
fn opts_problems(problems: &ipclink_core::Problems) -> String {
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

/// Shared handle for the HTTP handlers.
pub type SharedPlugin = Arc<Mutex<Plugin>>;

/// The plugin's router: every path goes to one handler, which reads the body (at most
/// [`MAX_BODY`] bytes) and answers in the plugin content type.
pub fn router(plugin: SharedPlugin) -> Router {
    Router::new().fallback(handle).with_state(plugin)
}

fn answer(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    State(plugin): State<SharedPlugin>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let endpoint = uri.path().to_owned();
    if method != Method::POST {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"Err": format!("{method} {}: the plugin protocol uses POST", endpoint.chars().take(64).collect::<String>())}),
        );
    }
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"Err": format!("request body: larger than {MAX_BODY} bytes")}),
            );
        }
    };
    let result = tokio::task::spawn_blocking(move || {
        let mut p = plugin.lock().unwrap_or_else(|p| p.into_inner());
        p.call(&endpoint, &bytes)
    })
    .await
    .unwrap_or_else(|e| Err(internal(format!("handler failed: {e}"))));
    match result {
        Ok(v) => answer(StatusCode::OK, &v),
        Err(r) => {
            tracing::warn!(status = r.status.as_u16(), error = %r.message, "request refused");
            answer(r.status, &json!({"Err": r.message}))
        }
    }
}

/// Binds the plugin socket (mode 0600). A socket file nobody answers on is a leftover and
/// is replaced; one that answers belongs to a running plugin and is an error.
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, crate::Error> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(crate::Error::Io {
            what: format!("{}: another plugin is serving it", path.display()),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        });
    }
    crate::http::bind_unix(path).map_err(|source| crate::Error::Io {
        what: format!("bind {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ipclink_core::validate::check_dns_label(&long).is_ok(),
            "{long}"
        );
        assert_ne!(long, key_for(&"x.".repeat(64)));
    }

    #[test]
    fn inline_options_resolve_to_a_link() {
        let opts: BTreeMap<String, String> = [
            ("shm", "frames:64Ki"),
            ("fifo", "events"),
            ("socket", "control:0770"),
            ("semaphores", "slots:8,frame-ready"),
            ("owner", "1000:1000"),
            ("mode", "0660"),
            ("abi", "musl"),
            ("size", "8Mi"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let link = link_from_opts("v", &opts).unwrap();
        let plan = validate(&link).unwrap();
        assert_eq!(plan.objects.len(), 5);
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
            ("link", "relative.yaml", "Opts.link"),
        ] {
            let mut o = opts.clone();
            o.insert(k.into(), v.into());
            let e = link_from_opts("v", &o)
                .and_then(|l| validate(&l).map(drop).map_err(|p| bad(opts_problems(&p))))
                .unwrap_err();
            assert!(e.message.starts_with(field), "{k}={v}: {}", e.message);
        }
    }
}
