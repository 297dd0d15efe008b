//! A running `ipclink-sidecar up` for tests, stopped (and its log printed on failure) in Drop.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ipclink-sidecar");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Plain HTTP/1.0 GET; returns (status, body).
pub fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the sidecar");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Value of the first sample of `metric` whose labels contain every `a="b"` given.
pub fn metric(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub struct Sidecar {
    pub child: Option<Child>,
    pub port: u16,
    pub root: PathBuf,
    log: PathBuf,
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
        let child = cmd
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("IPCLINK_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start ipclink-sidecar");
        let mut s = Sidecar {
            child: Some(child),
            port,
            root: root.to_path_buf(),
            log,
        };
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && get(port, "/readyz").0 == 200 {
                return s;
            }
            if let Some(status) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("sidecar exited with {status}:\n{}", s.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "sidecar not ready:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = child.wait().expect("wait");
        status.code().unwrap_or(-1)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.child.is_some() {
            let code = self.stop();
            if std::thread::panicking() {
                eprintln!("sidecar log (exit {code}):\n{}", self.log());
            }
        }
    }
}

/// Writes `text` to a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write spec file");
    p
}
