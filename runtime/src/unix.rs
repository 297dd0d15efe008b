//! Unix control sockets (CSI, kubelet registration, the Docker volume plugin).

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use tokio::net::UnixListener;

/// Binds a control socket with mode 0600, replacing a stale socket (never another kind
/// of file) left by a previous run. Needs a Tokio runtime.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket; not removed",
                path.display()
            )));
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Created 0600 from the start: no moment in which others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    bound
}
