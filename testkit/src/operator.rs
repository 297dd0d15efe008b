//! `ipclink-operator run` as a real process against a [`ControlPlane`].

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::control_plane::ControlPlane;
use crate::free_port;
use crate::http::get_ok;
use crate::process::Process;

/// A running operator; stopped in Drop, its log printed when a test fails.
#[derive(Debug)]
pub struct Operator {
    process: Process,
    _dir: tempfile::TempDir,
    /// Port of its /metrics.
    pub port: u16,
}

impl Operator {
    /// Starts the operator binary `bin` with the control plane's kubeconfig, a metrics
    /// port of its own and a 30 s resync, and waits for /healthz.
    pub fn start(bin: &str, cp: &ControlPlane, args: &[&str], env: &[(&str, &str)]) -> Operator {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("operator.log");
        let port = free_port();
        let mut cmd = Command::new(Path::new(bin));
        cmd.args(["run", "--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(["--resync-seconds", "30"])
            .args(args)
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("IPCLINK_LOG", "info,kube=warn")
            .envs(env.iter().copied());
        let mut process = Process::spawn("ipclink-operator", cmd, &log);
        process.wait_until("serving /healthz", Duration::from_secs(30), || {
            get_ok(port, "/healthz").is_some()
        });
        Operator {
            process,
            _dir: dir,
            port,
        }
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        self.process.log()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Its resident memory in bytes (`VmRSS`), while it runs.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmRSS").map(|k| k * 1024)
    }

    /// Its peak resident memory in bytes (`VmHWM`), while it runs.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmHWM").map(|k| k * 1024)
    }

    /// A `kB` field of its `/proc/PID/status`.
    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// Waits until `/readyz` answers 200 (a leader: its caches hold their first list);
    /// returns how long that took.
    pub fn wait_ready(&mut self, limit: Duration) -> Duration {
        let start = std::time::Instant::now();
        let port = self.port;
        self.process.wait_until("/readyz answering 200", limit, || {
            get_ok(port, "/readyz").is_some()
        });
        start.elapsed()
    }

    /// Its /metrics text.
    pub fn metrics(&self) -> String {
        get_ok(self.port, "/metrics").unwrap_or_default()
    }

    /// Waits for the process to exit by itself (e.g. after a fault), returning its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.process.wait_exit(limit)
    }

    /// SIGKILL, as a crash or a lost node would.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then waits; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.process.stop()
    }
}
