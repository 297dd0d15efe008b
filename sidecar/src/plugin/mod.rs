//! `ipclink-sidecar volume-plugin`: the Docker volume plugin protocol (v1, JSON over HTTP
//! on a Unix socket), so that Compose files can say `driver: ipclink`. Docker and podman
//! both speak it.
//!
//! Each volume is one link, materialized under `ROOT/docker/<key>/` (the name as a DNS
//! label, see [`options::key_for`]; its own tmpfs as root) when it is created and torn
//! down when it is removed. Mounts are counted per caller id (a caller mounting again,
//! as Docker does for the containers it live-restores, counts once). The volumes and their
//! mounts are kept in `ROOT/.volumes.json` (temp file, fsync, rename), so a restarted
//! plugin carries on where the last one stopped.
//!
//! Every refusal is `{"Err": "..."}` with a 4xx status, names the field, and changes
//! nothing: neither the state file nor anything under the root.
//!
//! This module is the state machine; [`options`] turns `driver_opts` into a link and
//! [`protocol`] speaks HTTP.

pub mod linkfile;
pub mod options;
pub mod protocol;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use axum::http::StatusCode;
use ipclink_core::fs::write_atomic_at;
use ipclink_core::probe::LinkProbe;
use ipclink_core::probe::Observer;
use ipclink_core::probe::holders::{ContainerNames, ContainerProcesses};
use ipclink_core::{IpcLink, LinkPlan, Store, validate};
use ipclink_runtime::links::{LinkSet, SharedLinks};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode as FileMode;
use serde::{Deserialize, Serialize};

pub use linkfile::LinkDir;
pub use options::{check_name, key_for, link_from_opts};
pub use protocol::{SharedPlugin, bind_socket, router};

use options::{opts_problems, show_opts};

use crate::links::{InUse, link_in_use};

/// The namespace directory under the root that holds every volume's link.
pub const NAMESPACE: &str = "docker";
/// Largest request body read; larger ones are refused unread.
pub const MAX_BODY: usize = 64 * 1024;
pub(crate) const STATE_FILE: &str = ".volumes.json";

/// A refusal: HTTP status and the message for `Err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 4xx for the caller's mistakes, 500 for ours.
    pub status: StatusCode,
    /// Names the field and what is allowed.
    pub message: String,
}

pub(crate) fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

pub(crate) fn bad(message: impl Into<String>) -> Refusal {
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

impl Volume {
    /// Refused (409, naming the callers and then `advice`) while a caller has it mounted.
    fn unmounted(&self, advice: &str) -> Result<(), Refusal> {
        if self.mounts.is_empty() {
            return Ok(());
        }
        Err(refuse(
            StatusCode::CONFLICT,
            format!(
                "Name: volume {:?} is mounted by {} caller(s) ({}); {advice}",
                self.name,
                self.mounts.len(),
                self.mounts.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        ))
    }
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
    /// Each volume's link as last read (its members, readers and writers, which
    /// discovery holds the containers to); a volume whose link file cannot be read has
    /// none.
    specs: BTreeMap<String, IpcLink>,
    links: SharedLinks,
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

pub(crate) fn internal(e: impl std::fmt::Display) -> Refusal {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl Plugin {
    /// Opens the root and reads the state file, re-materializing any volume whose link is
    /// missing (after a reboot) and checking the rest against their plans; link files
    /// are read from `link_dir`.
    pub fn open(
        root: &Path,
        mode: ipclink_core::StorageMode,
        links: SharedLinks,
        names: ContainerNames,
        fifo_open_probe: bool,
        link_dir: &LinkDir,
    ) -> Result<Self, crate::Error> {
        // Who holds what: the processes of the host's containers that mount one of the
        // volumes (their mount tables say), named as discovery (`names`) knows them,
        // else by id; no other container is read. (The engines' mount callers are no
        // help: podman mounts a plugin volume once for all its containers, under one
        // id, and unmounts it while they run.)
        let observer = Observer::new(
            Box::new(ContainerProcesses::new(names, false).mounting()),
            true,
            fifo_open_probe,
        );
        *links.lock().unwrap_or_else(|p| p.into_inner()) = LinkSet::default().observed_by(observer);
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
            specs: BTreeMap::new(),
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
            // The link its plan was made from, when the file still says so (an edit made
            // meanwhile is looked at once it is applied).
            let read = v.opts.get("link").map(|file| link_dir.read(file));
            match link_from_opts(&v.key, &v.opts, read) {
                Ok(link) if validate(&link).is_ok_and(|plan| plan == v.plan) => {
                    plugin.specs.insert(v.name.clone(), link);
                }
                Ok(_) => tracing::info!(
                    volume = %v.name,
                    "the link file changed while the plugin was stopped; its members are looked at once it is applied"
                ),
                Err(r) => tracing::error!(
                    volume = %v.name,
                    "the link file is refused; its members are not looked at: {}",
                    r.message
                ),
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

    /// What discovery looks for: each volume whose link is known, with it.
    pub fn watched(&self) -> Vec<crate::discover::Watched> {
        self.volumes
            .values()
            .filter_map(|v| {
                Some(crate::discover::Watched {
                    volume: v.name.clone(),
                    link: self.specs.get(&v.name)?.clone(),
                    plan: v.plan.clone(),
                })
            })
            .collect()
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
            .map(|v| {
                match self.store.record(NAMESPACE, &v.key) {
                    Some(r) => LinkProbe::of_record(&self.store, &r),
                    None => LinkProbe::open(&self.store, &v.plan),
                }
                .map_err(|e| (v, e))
            })
            .filter_map(|probe| match probe {
                Ok(p) => Some(p),
                Err((v, e)) => {
                    tracing::warn!(volume = %v.name, error = %e, "cannot probe the volume");
                    None
                }
            })
            .collect();
        let mut set = self.links.lock().unwrap_or_else(|p| p.into_inner());
        set.set_probes(probes);
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

    /// Creates volume `name`; `from_file` is what reading its `Opts.link` gave (read
    /// before the plugin's lock was taken), if it has one.
    fn create(
        &mut self,
        name: &str,
        opts: BTreeMap<String, String>,
        from_file: Option<Result<ipclink_core::IpcLinkSpec, Refusal>>,
    ) -> Result<(), Refusal> {
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
        let link = link_from_opts(&key, &opts, from_file)?;
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
        self.specs.insert(name.to_owned(), link);
        self.refresh_probes();
        tracing::info!(volume = name, namespace = NAMESPACE, link = %key, "volume created");
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), Refusal> {
        let v = self.get(name)?;
        v.unmounted("unmount it first")?;
        let key = v.key.clone();
        // Tear down first: if that fails the volume is still on record and Remove can be
        // retried; if saving fails after it, a restarted plugin recreates the link empty.
        if let Err(e) = self.store.teardown(NAMESPACE, &key) {
            tracing::error!(volume = name, error = %e, "teardown failed");
            return Err(internal(e));
        }
        self.volumes.remove(name);
        self.specs.remove(name);
        self.refresh_probes();
        self.save(&self.volumes)?;
        tracing::info!(volume = name, "volume removed");
        Ok(())
    }

    fn mount(
        &mut self,
        name: &str,
        id: &str,
        from_file: Option<Result<ipclink_core::IpcLinkSpec, Refusal>>,
    ) -> Result<String, Refusal> {
        let v = self.get(name)?;
        check_id(id)?;
        let mountpoint = self.mountpoint(v);
        // A caller that has it mounted already is one Docker restored with live-restore
        // (it mounts again what its running containers hold): the same answer, counted
        // once, nothing changed.
        let present = self.store.open_link(NAMESPACE, &v.key).is_ok();
        if v.mounts.contains(id) && present {
            tracing::info!(volume = name, id, "mounted again by the same caller");
            return Ok(mountpoint);
        }
        if !present {
            self.store.materialize(&v.plan).map_err(internal)?;
        } else if v.mounts.is_empty() {
            // The persistence rule: a link lives while some container uses it; the first
            // one after none finds it as declared (as a Compose tmpfs volume would be).
            // A reset that fails (what a member left is too much to remove at once)
            // leaves the volume as it is, served: the Mount is not refused for it.
            match link_in_use(&self.store, &v.plan) {
                None => match self.store.reset(&v.plan) {
                    Ok(_) => tracing::info!(
                        volume = name,
                        "no container used the volume: its link starts as declared"
                    ),
                    Err(e) => tracing::error!(
                        volume = name,
                        "cannot reset the volume; it is kept as it is: {e}"
                    ),
                },
                Some(why @ InUse::Unknown(_)) => {
                    tracing::warn!(volume = name, "kept as it is: {why}")
                }
                Some(why) => tracing::info!(volume = name, "kept as it is: {why}"),
            }
            self.refresh_probes();
        }
        if let Some(read) = from_file {
            self.apply_file(name, read)?;
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

    /// Applies the link file of volume `name` as read now (`read`): when it differs from
    /// the volume's plan, the link is made to serve it by the live rule (what waits for
    /// the members is done when no container has the volume mounted) and the volume
    /// keeps the new plan. A file that cannot be read or is invalid changes nothing: the
    /// volume serves as it was, and that is logged.
    pub fn apply_file(
        &mut self,
        name: &str,
        read: Result<ipclink_core::IpcLinkSpec, Refusal>,
    ) -> Result<(), Refusal> {
        let v = self.get(name)?;
        let checked = link_from_opts(&v.key, &v.opts, Some(read)).and_then(|link| {
            let plan = validate(&link).map_err(|p| bad(format!("Opts: {}", opts_problems(&p))))?;
            Ok((link, plan))
        });
        let (link, plan) = match checked {
            Ok(checked) => checked,
            Err(r) => {
                tracing::error!(
                    volume = name,
                    "the link file is refused; the volume serves as it was: {}",
                    r.message
                );
                return Ok(());
            }
        };
        let (key, idle, same) = (v.key.clone(), v.mounts.is_empty(), plan == v.plan);
        if same {
            // Members, readers and writers may change without the plan.
            self.specs.insert(name.to_owned(), link.clone());
        }
        let pending = self
            .store
            .record(NAMESPACE, &key)
            .is_some_and(|r| !r.pending.is_empty());
        if same && !(pending && idle) {
            return Ok(());
        }
        let outcome = self
            .store
            .apply(&plan, &ipclink_core::InProcess, idle)
            .map_err(internal)?;
        outcome.log(&plan);
        let mut next = self.volumes.clone();
        if let Some(v) = next.get_mut(name) {
            v.plan = plan;
        }
        self.save(&next)?;
        self.volumes = next;
        // The link goes with the plan it was applied as.
        self.specs.insert(name.to_owned(), link);
        self.refresh_probes();
        Ok(())
    }

    /// The volumes made from a link file, with the file each names.
    pub fn link_files(&self) -> Vec<(String, String)> {
        self.volumes
            .values()
            .filter_map(|v| Some((v.name.clone(), v.opts.get("link")?.clone())))
            .collect()
    }

    /// Brings volume `name` back to its declared state: refused, changing nothing, while
    /// a caller has it mounted or a container uses it.
    fn reset(&mut self, name: &str) -> Result<(), Refusal> {
        let v = self.get(name)?;
        v.unmounted("stop the containers that use it first")?;
        if let Some(why) = link_in_use(&self.store, &v.plan) {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("Name: volume {name:?} is in use: {why}"),
            ));
        }
        self.store.reset(&v.plan).map_err(internal)?;
        self.refresh_probes();
        tracing::info!(volume = name, "volume reset to its declared state");
        Ok(())
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
