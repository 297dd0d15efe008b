//! The plugin protocol on the wire: one POST handler for every endpoint, which reads the
//! body (at most [`MAX_BODY`] bytes), decodes the request strictly, runs the call on the
//! blocking pool and answers in the plugin content type.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{LinkDir, MAX_BODY, NAMESPACE, Plugin, Refusal, bad, internal, refuse};

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

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

/// What a call needs that is read before the plugin's lock is taken: the link file a
/// Create's `Opts.link` names, or the one of the volume a Mount names, whose edits the
/// mount applies (a slow or hostile file holds up no other call).
fn read_before_lock(
    endpoint: &str,
    body: &[u8],
    dir: &LinkDir,
    plugin: &SharedPlugin,
) -> Option<Result<ipclink_core::IpcLinkSpec, Refusal>> {
    let file = match endpoint {
        "/VolumeDriver.Create" => parse::<CreateReq>(body).ok()?.opts?.remove("link")?,
        "/VolumeDriver.Mount" => {
            let name = parse::<MountReq>(body).ok()?.name;
            let p = plugin.lock().unwrap_or_else(|p| p.into_inner());
            p.volumes().get(&name)?.opts.get("link")?.clone()
        }
        _ => return None,
    };
    Some(dir.read(&file))
}

impl Plugin {
    /// Handles one call: `(endpoint, body)` to the JSON answer; `from_file` is the link
    /// file a Create names, read before the lock.
    pub fn call(
        &mut self,
        endpoint: &str,
        body: &[u8],
        from_file: Option<Result<ipclink_core::IpcLinkSpec, Refusal>>,
    ) -> Result<serde_json::Value, Refusal> {
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
                self.create(&req.name, req.opts.unwrap_or_default(), from_file)?;
                Ok(json!({"Err": ""}))
            }
            "/VolumeDriver.Remove" => {
                let req: NameReq = parse(body)?;
                self.remove(&req.name)?;
                Ok(json!({"Err": ""}))
            }
            "/VolumeDriver.Mount" => {
                let req: MountReq = parse(body)?;
                let mountpoint = self.mount(&req.name, &req.id, from_file)?;
                Ok(json!({"Mountpoint": mountpoint, "Err": ""}))
            }
            "/VolumeDriver.Unmount" => {
                let req: MountReq = parse(body)?;
                self.unmount(&req.name, &req.id)?;
                Ok(json!({"Err": ""}))
            }
            // ipclink's own call (`ipclink-sidecar reset --volume-plugin`), on the same
            // socket: whoever may mount volumes through it may reset an unused one.
            "/IpcLink.Reset" => {
                let req: NameReq = parse(body)?;
                self.reset(&req.name)?;
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
}

/// Shared handle for the HTTP handlers.
pub type SharedPlugin = Arc<Mutex<Plugin>>;

/// The plugin's router: every path goes to one handler, which reads the body (at most
/// [`MAX_BODY`] bytes) and answers in the plugin content type; link files are read from
/// `links`.
pub fn router(plugin: SharedPlugin, links: LinkDir) -> Router {
    Router::new()
        .fallback(handle)
        .with_state((plugin, Arc::new(links)))
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
    State((plugin, links)): State<(SharedPlugin, Arc<LinkDir>)>,
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
    let asked = endpoint.clone();
    let result = tokio::task::spawn_blocking(move || {
        let from_file = read_before_lock(&endpoint, &bytes, &links, &plugin);
        let mut p = plugin.lock().unwrap_or_else(|p| p.into_inner());
        p.call(&endpoint, &bytes, from_file)
    })
    .await
    .unwrap_or_else(|e| Err(internal(format!("handler failed: {e}"))));
    match result {
        Ok(v) => answer(StatusCode::OK, &v),
        Err(r) => {
            // The engine asks every volume driver about any volume it looks up
            // (`/VolumeDriver.Get`, `.Path`): "not ours" is routine, not a warning.
            let lookup = matches!(asked.as_str(), "/VolumeDriver.Get" | "/VolumeDriver.Path");
            if lookup && r.status == StatusCode::NOT_FOUND {
                tracing::debug!(endpoint = asked, error = %r.message, "not a volume of this plugin");
            } else {
                tracing::warn!(status = r.status.as_u16(), error = %r.message, "request refused");
            }
            answer(r.status, &json!({"Err": r.message}))
        }
    }
}

/// The plugin socket, and the lock that makes it this process's.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener.
    pub listener: tokio::net::UnixListener,
    /// `SOCKET.lock`, locked while the plugin runs: a second plugin started on the same
    /// socket, even at the same moment, fails to take it and leaves the first alone.
    pub lock: nix::fcntl::Flock<std::fs::File>,
    /// Whether the socket was passed by the service manager (systemd socket activation):
    /// it then belongs to the manager, which keeps it answering while this process is
    /// gone, and is neither removed nor replaced here.
    pub activated: bool,
}

impl BoundSocket {
    /// Removes the socket file at `path` if this process bound it; one the service
    /// manager passed stays, answering for the next start.
    pub fn remove_own(&self, path: &Path) {
        if !self.activated {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The listening socket systemd passed (`LISTEN_PID` is this process, `LISTEN_FDS` is 1:
/// descriptor 3), if it did. It must be a listening Unix stream socket bound at `path`;
/// anything else is an error naming what was passed.
#[allow(unsafe_code)] // taking ownership of descriptor 3, as the protocol hands it over
fn activated_socket(path: &Path) -> Result<Option<std::os::unix::net::UnixListener>, crate::Error> {
    use nix::sys::socket::{SockType, UnixAddr, getsockname, getsockopt, sockopt};
    use std::os::fd::{FromRawFd, OwnedFd};
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        == Some(std::process::id() as i32);
    let fds = std::env::var("LISTEN_FDS").ok();
    if !ours || fds.is_none() {
        return Ok(None);
    }
    let refuse = |field: &str, why: String| {
        crate::Error::Invalid(ipclink_core::Problems(vec![ipclink_core::Problem::new(
            field, why,
        )]))
    };
    if fds.as_deref() != Some("1") {
        return Err(refuse(
            "LISTEN_FDS",
            format!(
                "{} sockets passed (socket activation); the plugin takes exactly one (ListenStream= once)",
                fds.unwrap_or_default()
            ),
        ));
    }
    // SAFETY: under the socket-activation protocol descriptor 3 is passed to this
    // process, which owns it from here on; nothing else in this process uses it.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    // The variables stay set: LISTEN_PID names this process only, so no child takes them.
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
    let stream = getsockopt(&fd, sockopt::SockType).ok() == Some(SockType::Stream);
    let bound: Option<UnixAddr> = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).ok();
    let at = bound.as_ref().and_then(|a| a.path()).map(Path::to_path_buf);
    if !(listening && stream && at.is_some()) {
        return Err(refuse(
            "LISTEN_FDS",
            "descriptor 3 is not a listening Unix stream socket bound to a path (ListenStream=PATH)".into(),
        ));
    }
    if at.as_deref() != Some(path) {
        return Err(refuse(
            "--socket",
            format!(
                "the socket passed (socket activation) is bound at {}; give --socket the same path",
                at.map(|p| p.display().to_string()).unwrap_or_default()
            ),
        ));
    }
    Ok(Some(std::os::unix::net::UnixListener::from(fd)))
}

/// Binds the plugin socket (mode 0600) once this process holds `SOCKET.lock`, or takes
/// the one systemd passed for that path (socket activation). A socket file nobody
/// answers on is a leftover and is replaced; one that answers, or a lock another
/// process holds, belongs to a running plugin and is an error.
pub fn bind_socket(path: &Path) -> Result<BoundSocket, crate::Error> {
    let busy = || crate::Error::Io {
        what: format!("{}: another plugin is serving it", path.display()),
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    };
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| crate::Error::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|source| crate::Error::Io {
            what: format!("open {}", Path::new(&lock_path).display()),
            source,
        })?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| busy())?;
    if let Some(passed) = activated_socket(path)? {
        let io = |source| crate::Error::Io {
            what: format!("use the socket passed for {}", path.display()),
            source,
        };
        passed.set_nonblocking(true).map_err(io)?;
        let listener = tokio::net::UnixListener::from_std(passed).map_err(io)?;
        return Ok(BoundSocket {
            listener,
            lock,
            activated: true,
        });
    }
    // A plugin of an earlier version (without the lock) may still be serving.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(busy());
    }
    let listener = ipclink_runtime::unix::bind_unix(path).map_err(|source| crate::Error::Io {
        what: format!("bind {}", path.display()),
        source,
    })?;
    Ok(BoundSocket {
        listener,
        lock,
        activated: false,
    })
}
