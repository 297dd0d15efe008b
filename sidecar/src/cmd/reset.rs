//! `ipclink-sidecar reset`: brings links back to their declared state when nothing uses
//! them — the links of files (sidecar and local mode, in the process's own store) or the
//! volumes of a running volume plugin (asked over its socket).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipclink_core::{Problem, Problems, Store};

use crate::Error;
use crate::cli::{ResetArgs, default_root};
use crate::links::{link_in_use, load_files, storage_mode};

/// Resets the links of the files in `args.targets` under the root, all or none: each is
/// checked first, and one in use leaves every one as it is.
pub fn links(args: &ResetArgs) -> Result<(), Error> {
    let files: Vec<PathBuf> = args.targets.iter().map(PathBuf::from).collect();
    let plans = load_files(&files)?;
    let root = args.root.clone().unwrap_or_else(default_root);
    let store = Store::open(&root, storage_mode(args.storage))?;
    let missing: Vec<Problem> = plans
        .iter()
        .filter(|p| store.open_link(&p.namespace, &p.name).is_err())
        .map(|p| {
            Problem::new(
                format!("link {}", p.key()),
                format!(
                    "{} does not exist: `up` makes it (check --root and the file)",
                    store.link_path(&p.namespace, &p.name).display()
                ),
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(Error::Invalid(Problems(missing)));
    }
    // Closed first (mode 0 on each link's root), so that a member container started
    // between the check and the reset cannot open an object the reset then removes
    // (members that run as root are not held back); the reset gives each root its
    // declared mode again, a refusal the mode it had.
    let closed: Vec<Option<Closed>> = plans.iter().map(|p| Closed::close(&store, p)).collect();
    let busy: Vec<String> = plans
        .iter()
        .filter_map(|p| Some(format!("link {}: {}", p.key(), link_in_use(&store, p)?)))
        .collect();
    if !busy.is_empty() {
        closed.iter().flatten().for_each(Closed::reopen);
        return Err(Error::InUse(format!(
            "{}\nnothing was changed",
            busy.join("\n")
        )));
    }
    for (i, plan) in plans.iter().enumerate() {
        let outcome = match store.reset(plan) {
            Ok(o) => o,
            Err(e) => {
                closed[i..].iter().flatten().for_each(Closed::reopen);
                return Err(e.into());
            }
        };
        println!(
            "{}: reset to its declared state ({} objects made afresh)",
            plan.key(),
            outcome.created.len()
        );
    }
    Ok(())
}

/// A link root closed to members for a reset, with the mode to give back.
struct Closed {
    root: std::os::fd::OwnedFd,
    mode: nix::sys::stat::Mode,
}

impl Closed {
    fn close(store: &Store, plan: &ipclink_core::LinkPlan) -> Option<Closed> {
        use nix::sys::stat::{Mode, fchmod, fstat};
        let root = store.open_link(&plan.namespace, &plan.name).ok()?;
        let mode = Mode::from_bits_truncate(fstat(&root).ok()?.st_mode & 0o7777);
        fchmod(&root, Mode::empty()).ok()?;
        Some(Closed { root, mode })
    }

    fn reopen(&self) {
        let _ = nix::sys::stat::fchmod(&self.root, self.mode);
    }
}

/// Asks the volume plugin on `socket` to reset each volume of `names`, in order; stops
/// at the first it refuses.
pub async fn volumes(socket: &Path, names: &[String]) -> Result<(), Error> {
    for name in names {
        let body = serde_json::to_vec(&serde_json::json!({ "Name": name })).unwrap_or_default();
        let (status, answer) = ipclink_runtime::client::post_unix(
            socket,
            "/IpcLink.Reset",
            body,
            Duration::from_secs(60),
        )
        .await
        .map_err(|source| Error::Io {
            what: format!("ask the volume plugin on {}", socket.display()),
            source,
        })?;
        let err = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["Err"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
        match status {
            200 => println!("volume {name}: reset to its declared state"),
            409 => return Err(Error::InUse(format!("{err}\nnothing was changed"))),
            400 | 404 => {
                return Err(Error::Invalid(Problems(vec![Problem::new("volume", err)])));
            }
            _ => {
                return Err(Error::Io {
                    what: format!("reset volume {name:?}"),
                    source: std::io::Error::other(format!("the plugin answered {status}: {err}")),
                });
            }
        }
    }
    Ok(())
}
