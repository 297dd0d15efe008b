//! Running `ipclink-csi node` and `controller` as real processes for tests; stopped, their
//! mounts removed and (on failure) their logs printed in Drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ipclink-csi");

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (tmpfs and bind mounts); run the README test command"
    );
}

pub fn sanity_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sanity")
}

/// A plugin process and its directories.
pub struct Plugin {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub dir: PathBuf,
    pub log: PathBuf,
    role: String,
}

impl Plugin {
    /// Starts `ipclink-csi ROLE` with its socket and state under `dir`.
    pub fn start(role: &str, dir: &Path, links: &Path, extra: &[&str]) -> Plugin {
        let links = ["--links-dir", links.to_str().expect("utf-8")];
        Plugin::start_with(role, dir, &[&links[..], extra].concat(), &[])
    }

    /// Starts `ipclink-csi ROLE` with any arguments and environment.
    pub fn start_with(role: &str, dir: &Path, extra: &[&str], envs: &[(&str, &Path)]) -> Plugin {
        std::fs::create_dir_all(dir).expect("plugin dir");
        let socket = dir.join(format!("{role}.sock"));
        let log = dir.join(format!("{role}.log"));
        let mut cmd = Command::new(BIN);
        cmd.arg(role)
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--state-dir")
            .arg(dir.join(format!("{role}-state")))
            .args(extra)
            .envs(envs.iter().copied())
            .env("IPCLINK_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log"),
            );
        if role == "node" {
            cmd.args(["--node-id", "node-1"]);
        }
        let child = cmd.spawn().expect("start ipclink-csi");
        let p = Plugin {
            child: Some(child),
            socket,
            dir: dir.to_path_buf(),
            log,
            role: role.into(),
        };
        let start = Instant::now();
        // The socket file of a killed plugin may still be there: wait for a live one.
        while std::os::unix::net::UnixStream::connect(&p.socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{role} did not start:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- ipclink-csi {} log ---\n{}", self.role, self.log());
        }
    }
}

/// Unmounts everything under a directory when dropped (after the plugins are gone).
pub struct Unmounter(pub PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        ipclink_e2e::unmount_below(&self.0);
    }
}

/// A gRPC channel to a plugin's Unix socket.
pub async fn connect(socket: &Path) -> tonic::transport::Channel {
    ipclink_csi::connect(socket)
        .await
        .expect("connect to the plugin socket")
}

/// A mount capability (single node writer).
pub fn mount_cap() -> ipclink_csi::csi::VolumeCapability {
    use ipclink_csi::csi::volume_capability::{
        AccessMode, AccessType, MountVolume, access_mode::Mode,
    };
    ipclink_csi::csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// A publish request for an inline ephemeral volume of `link`, for pod `ns/pod`.
pub fn ephemeral(
    id: &str,
    target: &Path,
    ns: &str,
    pod: &str,
    link: &str,
) -> ipclink_csi::csi::NodePublishVolumeRequest {
    ipclink_csi::csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap()),
        volume_context: [
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.name", pod),
            ("csi.storage.k8s.io/pod.namespace", ns),
            ("link", link),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..Default::default()
    }
}

/// A two-worker runtime for driving a client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
