//! A running `ipclink-sidecar up` for tests, stopped (and its log printed on failure) in
//! Drop.

#![allow(dead_code, unused_imports)]

pub mod plugin;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use ipclink_testkit::free_port;
pub use ipclink_testkit::http::{get, metric, try_get};
use ipclink_testkit::process::Process;

pub const BIN: &str = env!("CARGO_BIN_EXE_ipclink-sidecar");

pub struct Sidecar {
    process: Process,
    pub port: u16,
    pub root: PathBuf,
}

impl Sidecar {
    /// Starts `up` on `files` with extra args, and waits until `/readyz` answers 200.
    pub fn up(root: &Path, files: &[&Path], extra: &[&str]) -> Sidecar {
        let mut cmd = Command::new(BIN);
        cmd.arg("up")
            .args(files)
            .arg("--root")
            .arg(root)
            .args(extra);
        Sidecar::start(cmd, root)
    }

    /// Starts `cmd` (an `up` without `--listen`, possibly wrapped) on a free port and
    /// waits until `/readyz` answers 200. Its log goes next to `root`.
    pub fn start(mut cmd: Command, root: &Path) -> Sidecar {
        let port = free_port();
        let log = root.with_extension("log");
        let _ = std::fs::remove_file(&log);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("IPCLINK_LOG", "debug");
        let mut process = Process::spawn("ipclink-sidecar", cmd, &log);
        process.wait_until("ready", Duration::from_secs(20), || {
            try_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
        });
        Sidecar {
            process,
            port,
            root: root.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Sends SIGHUP: `up` reads its files again.
    pub fn hup(&self) {
        let pid = self.process.pid().expect("running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGHUP)
            .expect("SIGHUP");
    }

    /// Waits until the log has `n` lines containing `needle`.
    pub fn wait_log(&mut self, needle: &str, n: usize) {
        let log = self.root.with_extension("log");
        self.process.wait_until(
            &format!("{n} × {needle:?} in the log"),
            Duration::from_secs(20),
            || {
                std::fs::read_to_string(&log)
                    .is_ok_and(|t| t.lines().filter(|l| l.contains(needle)).count() >= n)
            },
        );
    }

    /// Waits until `ready` holds, failing if the sidecar exits first.
    pub fn wait_for(&mut self, what: &str, ready: impl FnMut() -> bool) {
        self.process
            .wait_until(what, Duration::from_secs(20), ready);
    }

    /// Sends SIGINT (Ctrl-C) and waits up to 20 s; the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = self.process.pid().expect("running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGINT)
            .expect("SIGINT");
        self.process.wait_exit(Duration::from_secs(20))
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        self.process.stop().code().unwrap_or(-1)
    }
}

/// Writes `text` to a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write spec file");
    p
}

/// The link most tests run: every kind of object, with members and modes.
pub const LINK: &str = r#"
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: frames, namespace: vision }
spec:
  sizeLimit: 2Mi
  members: [{ name: camera }, { name: detector }]
  channels:
    - { name: frames,  kind: shm,    size: 1Mi, mode: "0640" }
    - { name: events,  kind: fifo,   writers: [camera], readers: [detector] }
    - { name: control, kind: socket }
  semaphores:
    - { name: frame-ready, initial: 3 }
    - { name: slots, initial: 8, abi: musl }
"#;

/// A link file in a temporary directory and where `up --root` puts its link.
pub struct Setup {
    _dir: tempfile::TempDir,
    pub file: PathBuf,
    pub root: PathBuf,
    pub link: PathBuf,
}

impl Drop for Setup {
    /// Links kept with --keep by a test that then failed must not outlive it.
    fn drop(&mut self) {
        ipclink_testkit::mounts::unmount_below(&self.root);
    }
}

/// `yaml` as a link file, for a link `vision/frames` under a root of its own.
pub fn setup(yaml: &str) -> Setup {
    ipclink_testkit::require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(dir.path(), "link.yaml", yaml);
    let root = dir.path().join("root");
    let link = root.join("vision/frames");
    Setup {
        _dir: dir,
        file,
        root,
        link,
    }
}

/// A process (`sh`, then `sleep`) that holds `file` open for reading, once it does; its
/// log goes to `log`.
pub fn hold_open(file: &Path, log: &Path) -> Process {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"exec 3<"$0"; exec sleep 600"#]).arg(file);
    let mut holder = Process::spawn("holder", cmd, log);
    let pid = holder.pid().expect("running");
    holder.wait_until("the holder's descriptor", Duration::from_secs(10), || {
        std::fs::read_link(format!("/proc/{pid}/fd/3")).is_ok_and(|t| t == file)
    });
    holder
}
