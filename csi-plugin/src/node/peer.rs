//! Who is calling: in a link with a `server` member, the node plugin listens on
//! [`PEER_SOCKET`] in the link's root. A server connects, sends one byte with one
//! descriptor (`SCM_RIGHTS`): a connection it accepted. The plugin answers with one JSON
//! line naming the pod on the other end of that connection, as its publications of this
//! link know it (`{"namespace", "pod", "podUID", "client"}`), or `{"error"}`, and hangs up.
//!
//! The other end is found from the kernel, not from anything a member says: the peer's
//! pidfd (`SO_PEERPIDFD`, the process that called `connect`), its pid in this (the host's)
//! pid namespace, and the pod UID in that process's cgroup path, read while the pidfd
//! shows the process alive (so a reused pid is never read). Only a pod that a server
//! member of the link's current spec selects, with a read-write publication of it here,
//! may ask; anyone else is told so at once, before it sends anything, and hung up on. A
//! descriptor that is not a connected Unix socket, or more than one, is refused. At most
//! [`MAX_CALLS`] calls at a time per link, each done within [`DEADLINE`].

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ipclink_core::LinkKey;
use ipclink_core::fs::PEER_SOCKET;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, getsockname,
    getsockopt, recvmsg, sockopt,
};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use super::NodePlugin;

/// Calls served at once per link; more wait in the kernel's backlog.
pub const MAX_CALLS: usize = 8;
/// How long one call may take, from accept to answer.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// The most of a process's cgroup file read.
const MAX_CGROUP_BYTES: u64 = 16 * 1024;

/// A running peer service: what stops it, and its task.
#[derive(Debug)]
pub(super) struct Service {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// The running peer services, by link.
pub(super) type Services = HashMap<LinkKey, Service>;

impl NodePlugin {
    /// Starts the peer service of link `namespace/name` unless it runs (a link whose spec
    /// has a server member). A failure is logged: the link serves its members anyway.
    pub(super) async fn ensure_peer_service(self: &Arc<Self>, namespace: &str, name: &str) {
        let key = LinkKey::new(namespace, name);
        // One start or stop at a time: two starts would bind twice, and a stop must not
        // miss a service being started (it would hold a torn-down tmpfs).
        let _one = self.peer_start.lock().await;
        {
            let services = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            if services.get(&key).is_some_and(|s| !s.task.is_finished()) {
                return;
            }
        }
        // A link no publication uses is on its way out (or gone).
        if !self.in_use(namespace, name) {
            return;
        }
        let (ns, n) = (namespace.to_owned(), name.to_owned());
        let bound = self
            .blocking(move |p| {
                p.store.bind_socket(&ns, &n, PEER_SOCKET).map_err(|e| {
                    crate::error::CsiError::Internal(format!("bind {PEER_SOCKET}: {e}"))
                })
            })
            .await
            .and_then(|l| {
                l.set_nonblocking(true)
                    .and_then(|()| UnixListener::from_std(l))
                    .map_err(|e| crate::error::CsiError::Internal(e.to_string()))
            });
        let listener = match bound {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(namespace, link = name, error = %e, "cannot serve the link's peer socket; servers cannot ask who calls");
                return;
            }
        };
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(serve(
            Arc::downgrade(self),
            key.clone(),
            listener,
            stop.clone(),
        ));
        let old = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Service { stop, task });
        if let Some(old) = old {
            old.task.abort();
        }
    }

    /// Keeps the peer service of link `namespace/name`, in use here, in step with its
    /// spec (`wanted`: it has a server member): started if it does not run (after a
    /// restart of this plugin, or a failed start), stopped once the spec has none.
    /// [`NodePlugin::apply_edits`] calls it with the spec it has just read.
    pub(super) async fn keep_peer_service(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        wanted: bool,
    ) {
        if !self.in_use(namespace, name) {
            return;
        }
        if wanted {
            self.ensure_peer_service(namespace, name).await;
        } else {
            self.stop_peer_service(&LinkKey::new(namespace, name)).await;
        }
    }

    /// Stops the peer service of `key` and waits until its socket and calls are closed
    /// (they hold the link's tmpfs, which is unmounted next).
    pub(super) async fn stop_peer_service(&self, key: &LinkKey) {
        let _one = self.peer_start.lock().await;
        let service = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(Service { stop, task }) = service {
            stop.notify_one();
            let _ = task.await;
        }
    }
}

/// Accepts calls until `stop`; then ends every call in progress and closes the socket
/// before it returns.
async fn serve(
    plugin: Weak<NodePlugin>,
    key: LinkKey,
    listener: UnixListener,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut calls = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.notified() => break,
            accepted = listener.accept(), if calls.len() < MAX_CALLS => match accepted {
                Ok((conn, _)) => {
                    let (plugin, key) = (plugin.clone(), key.clone());
                    calls.spawn(async move {
                        let _ = tokio::time::timeout(DEADLINE, answer(plugin, &key, conn)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(link = %key, error = %e, "peer socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
        }
    }
    calls.shutdown().await;
}

/// Answers one call with one JSON line.
async fn answer(plugin: Weak<NodePlugin>, key: &LinkKey, mut conn: UnixStream) {
    let reply = match plugin.upgrade() {
        Some(p) => match identify(&p, key, &conn).await {
            Ok(v) => v,
            Err(e) => json!({ "error": e }),
        },
        None => json!({ "error": "the node plugin is stopping" }),
    };
    let mut line = reply.to_string();
    line.push('\n');
    let _ = conn.write_all(line.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// The pod on the other end of the connection `conn`'s caller passes, once the caller
/// is known to be a server of the link.
async fn identify(plugin: &NodePlugin, key: &LinkKey, conn: &UnixStream) -> Result<Value, String> {
    // The caller first, from the connection alone: anyone else is refused before it
    // sends anything, and holds no call's place for long.
    let caller = pod_uid_of_peer(conn.as_fd()).map_err(|e| format!("who is asking: {e}"))?;
    if !may_ask(plugin, key, &caller).await {
        return Err(format!(
            "only a pod that a server member (role: server) of link {key} selects, with the link mounted read-write on this node, may ask who calls"
        ));
    }
    let passed = loop {
        conn.readable().await.map_err(|e| e.to_string())?;
        match conn.try_io(Interest::READABLE, || receive_one_fd(conn.as_fd())) {
            Ok(fd) => break fd,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
    };
    let uid = pod_uid_of_peer(passed.as_fd()).map_err(|e| format!("the connection passed: {e}"))?;
    let (pod, client) = publication_of(plugin, key, &uid).ok_or_else(|| {
        format!("the other end is not a pod with link {key} mounted on this node")
    })?;
    Ok(json!({
        "namespace": key.namespace,
        "pod": pod,
        "podUID": uid,
        "client": client,
    }))
}

/// Whether the pod with `uid` may ask about link `key`: it has a read-write publication
/// of the link here, and a server member of the link's current spec selects it.
async fn may_ask(plugin: &NodePlugin, key: &LinkKey, uid: &str) -> bool {
    let Some((pod, false)) = publication_of(plugin, key, uid) else {
        return false;
    };
    let Ok(snapshot) = plugin
        .source()
        .lookup(&key.namespace, &key.name, Some(&pod))
        .await
    else {
        return false;
    };
    let Ok((link, _)) = snapshot.link(&key.namespace, &key.name) else {
        return false;
    };
    snapshot
        .pod_labels(&key.namespace, &pod)
        .is_some_and(|labels| ipclink_core::model::roles::serves(link, labels))
}

/// (pod name, mounted as a client) of a publication of `key` to the pod with `uid`.
fn publication_of(plugin: &NodePlugin, key: &LinkKey, uid: &str) -> Option<(String, bool)> {
    plugin
        .publications()
        .iter()
        .filter(|(_, p)| p.namespace == key.namespace && p.link == key.name)
        .find(|(target, p)| p.pod_uid_at(target).as_deref() == Some(uid))
        .map(|(_, p)| (p.pod.clone().unwrap_or_default(), p.client))
}

/// Receives one byte and exactly one descriptor on `conn`.
#[allow(unsafe_code)]
fn receive_one_fd(conn: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    // Room for as many descriptors as the kernel passes in one message (SCM_MAX_FD):
    // never truncated, so every descriptor received is owned, and closed, here.
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 253]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel has just installed these descriptors in this process
            // for this message (MSG_CMSG_CLOEXEC); nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Err(std::io::Error::other(
            "the caller hung up without sending a connection",
        ));
    }
    match (truncated, fds.len()) {
        (false, 1) => Ok(fds.remove(0)),
        _ => Err(std::io::Error::other(
            "send exactly one descriptor (SCM_RIGHTS), an accepted Unix socket connection",
        )),
    }
}

/// The UID of the pod whose process is at the other end of the connected Unix socket
/// `fd`.
fn pod_uid_of_peer(fd: BorrowedFd<'_>) -> Result<String, String> {
    let raw = fd.as_raw_fd();
    let addr: SockaddrStorage = getsockname(raw).map_err(|e| format!("not a socket: {e}"))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err("not a Unix socket".into());
    }
    // A listening socket's "peer" is the process that called listen(): not a caller.
    if getsockopt(&fd, sockopt::AcceptConn).map_err(|e| format!("socket state: {e}"))? {
        return Err("not a connected socket: a listening one".into());
    }
    let pidfd = getsockopt(&fd, sockopt::PeerPidfd).map_err(|e| match e {
        nix::errno::Errno::ENOPROTOOPT => {
            "this kernel has no SO_PEERPIDFD (Linux 6.5 or later is needed)".to_owned()
        }
        nix::errno::Errno::ENOTCONN => "not a connected socket".to_owned(),
        e => format!("peer pidfd: {e}"),
    })?;
    let pid = pid_of(&pidfd)?;
    let cgroup = read_bounded(&format!("/proc/{pid}/cgroup"))?;
    // The process was alive, with this pid, after its cgroup was read: not a reused pid.
    if pid_of(&pidfd)? != pid {
        return Err("the process at the other end exited".into());
    }
    pod_uid_in_cgroup(&cgroup).ok_or_else(|| "the process at the other end is not in a pod".into())
}

/// The pid (in this pid namespace) of the process `pidfd` refers to.
fn pid_of(pidfd: &OwnedFd) -> Result<i32, String> {
    let info = read_bounded(&format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no pid in the pidfd's fdinfo")?;
    if pid <= 0 {
        return Err("the process at the other end exited, or is in another pid namespace".into());
    }
    Ok(pid)
}

fn read_bounded(path: &str) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CGROUP_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(text)
}

/// The pod UID in a `/proc/PID/cgroup` text: a path segment `pod<UID>` (cgroupfs driver)
/// or `…-pod<UID with _ for ->.slice` (systemd driver).
pub fn pod_uid_in_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .filter_map(|seg| {
            let at = seg.rfind("pod")?;
            let rest = seg[at + 3..].trim_end_matches(".slice");
            let uid = rest.replace('_', "-");
            let ok = uid.len() == 36
                && uid.chars().enumerate().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => c == '-',
                    _ => c.is_ascii_hexdigit(),
                });
            ok.then_some(uid)
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_are_read_from_either_cgroup_driver() {
        let uid = "0f4e2c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
        let cgroupfs = format!("0::/kubepods/besteffort/pod{uid}/0123abcd\n");
        let systemd = format!(
            "12:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-ab.scope\n",
            uid.replace('-', "_")
        );
        assert_eq!(pod_uid_in_cgroup(&cgroupfs).as_deref(), Some(uid));
        assert_eq!(pod_uid_in_cgroup(&systemd).as_deref(), Some(uid));
        for not in [
            "0::/user.slice/session-1.scope\n",
            "0::/kubepods/podnot-a-uid/x\n",
            "0::/kubepods/pod0f4e2c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6x/x\n",
            "",
        ] {
            assert_eq!(pod_uid_in_cgroup(not), None, "{not}");
        }
    }
}
