//! Unix control sockets (CSI, kubelet registration, the Docker volume plugin).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

/// Binds a control socket with mode 0600, replacing a stale socket (never another kind
/// of file) left by a previous run. Needs a Tokio runtime.
///
/// The socket is bound in a private directory (mode 0700) next to `path`, made 0600
/// there, and renamed into place: nobody can connect before its mode is set, the
/// process umask is left alone (other threads may be creating files), and a stale
/// socket is replaced in one step instead of being unlinked first.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket; not removed",
                path.display()
            )));
        }
        Err(_) => {}
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let private = nix::unistd::mkdtemp(&dir.join(".ipclink-bind-XXXXXX"))?;
    let result = (|| {
        let inner = private.join("socket");
        let listener = UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn a_socket_is_bound_0600_replaces_a_stale_one_and_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("run/plugin.sock");
        let first = bind_unix(&path).expect("bind");
        assert_eq!(
            std::fs::metadata(&path).expect("socket").mode() & 0o777,
            0o600
        );
        drop(first);
        // A stale socket (nobody listens) is replaced, and the new one answers.
        let second = bind_unix(&path).expect("rebind over a stale socket");
        let connected = std::os::unix::net::UnixStream::connect(&path);
        assert!(connected.is_ok(), "{connected:?}");
        let (_accepted, _) = second.accept().await.expect("accept");
        // Nothing but the socket is left in its directory.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("run"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["plugin.sock"]);
        // Another kind of file is never replaced.
        let file = dir.path().join("file");
        std::fs::write(&file, "keep").expect("write");
        let err = bind_unix(&file).expect_err("not a socket");
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep");
    }
}
