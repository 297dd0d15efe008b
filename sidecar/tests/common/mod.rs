//! A running `ipclink-sidecar up` for tests, stopped (and its log printed on failure) in
//! Drop.

#![allow(dead_code, unused_imports)]

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
