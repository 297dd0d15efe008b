//! A running `ipclink-sidecar volume-plugin`, spoken to over its Unix socket as an
//! engine would.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipclink_testkit::process::Process;

use super::BIN;

pub struct Plugin {
    pub process: Process,
    pub socket: PathBuf,
    pub root: PathBuf,
}

impl Plugin {
    /// A plugin whose root is `DIR/root` and whose link files are read from `DIR`.
    pub fn start(dir: &Path) -> Plugin {
        Plugin::start_with_links(dir, dir)
    }

    pub fn start_with_links(dir: &Path, links: &Path) -> Plugin {
        Plugin::launch(dir, links, &[])
    }

    /// A plugin as [`Plugin::start`] makes it, with more arguments.
    pub fn start_with_args(dir: &Path, args: &[&str]) -> Plugin {
        Plugin::launch(dir, dir, args)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    fn launch(dir: &Path, links: &Path, args: &[&str]) -> Plugin {
        let socket = dir.join("plugin.sock");
        let root = dir.join("root");
        let mut cmd = Command::new(BIN);
        cmd.args(["volume-plugin", "--storage", "tmpfs", "--socket"])
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .arg("--link-dir")
            .arg(links)
            .args(args)
            .env("IPCLINK_LOG", "debug");
        let log = dir.join("plugin.log");
        let _ = std::fs::remove_file(&log);
        let mut process = Process::spawn("ipclink-sidecar volume-plugin", cmd, &log);
        process.wait_until("answering", Duration::from_secs(10), || {
            call(&socket, "/Plugin.Activate", "{}").0 == 200
        });
        Plugin {
            process,
            socket,
            root,
        }
    }

    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// POSTs `body` to `endpoint`; (status, parsed JSON body).
    pub fn call(&self, endpoint: &str, body: &str) -> (u16, serde_json::Value) {
        call(&self.socket, endpoint, body)
    }

    pub fn raw(&self, request: &str) -> (u16, serde_json::Value) {
        raw(&self.socket, request)
    }
}

/// POSTs `body` to `endpoint` on `socket`; (status, parsed JSON body), or 0 when nothing
/// answers.
pub fn call(socket: &Path, endpoint: &str, body: &str) -> (u16, serde_json::Value) {
    raw(
        socket,
        &format!(
            "POST {endpoint} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

pub fn raw(socket: &Path, request: &str) -> (u16, serde_json::Value) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return (0, serde_json::Value::Null);
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes()).expect("send");
    read_answer(s)
}

pub fn read_answer(mut s: UnixStream) -> (u16, serde_json::Value) {
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}")),
    )
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ipclink-plugin-")
        .tempdir()
        .expect("temp dir")
}

pub fn err_of(v: &serde_json::Value) -> String {
    v["Err"].as_str().unwrap_or_default().to_owned()
}
