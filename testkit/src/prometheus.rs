//! Debian's own Prometheus as a host process, scraping given targets the way the chart's
//! monitors do (`honor_labels`), and its query API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::process::Process;

/// How a secure scrape proves itself and checks its targets: the bearer token, the CA
/// (PEM) and the server name each job's certificates carry.
type Scraper<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A running Prometheus; stopped in Drop.
#[derive(Debug)]
pub struct Prometheus {
    _process: Process,
    /// Its API port on 127.0.0.1.
    pub port: u16,
}

/// `s` with every byte but unreserved ones percent-encoded, for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts Prometheus with its data under `dir`, scraping each `(job, HOST:PORT)`
    /// every second with `honor_labels: true`; returns once it is ready.
    pub fn start(dir: &Path, targets: &[(&str, String)]) -> Prometheus {
        Prometheus::start_with(dir, targets, None)
    }

    /// [`Prometheus::start`], scraping over HTTPS with `token` as its bearer token and
    /// each job's certificates checked against the CA `ca` (PEM) for the name `names`
    /// gives the job, as the chart's ServiceMonitor and PodMonitor do.
    pub fn start_secure(
        dir: &Path,
        targets: &[(&str, String)],
        token: &str,
        ca: &str,
        names: &[(&str, &str)],
    ) -> Prometheus {
        Prometheus::start_with(dir, targets, Some((token, ca, names)))
    }

    fn start_with(
        dir: &Path,
        targets: &[(&str, String)],
        secure: Option<Scraper<'_>>,
    ) -> Prometheus {
        crate::require_tool("prometheus");
        let secure = secure.map(|(token, ca, names)| {
            let file = dir.join("token");
            std::fs::write(&file, token).expect("token file");
            let ca_file = dir.join("ca.crt");
            std::fs::write(&ca_file, ca).expect("ca file");
            (file, ca_file, names)
        });
        let secure_of = |job: &str| {
            secure.as_ref().map(|(token, ca, names)| {
                let name = names
                    .iter()
                    .find(|(j, _)| *j == job)
                    .map(|(_, n)| *n)
                    .unwrap_or_else(|| panic!("no server name for job {job}"));
                format!(
                    "    scheme: https\n    authorization: {{credentials_file: '{}'}}\n    tls_config: {{ca_file: '{}', server_name: '{name}'}}\n",
                    token.display(),
                    ca.display()
                )
            })
        };
        let port = crate::free_port();
        let mut config =
            String::from("global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n");
        // Targets of one job name are one job, as a monitor over a Service's endpoints.
        let mut jobs: Vec<(&str, Vec<&str>)> = Vec::new();
        for (job, target) in targets {
            match jobs.iter_mut().find(|(j, _)| j == job) {
                Some((_, t)) => t.push(target),
                None => jobs.push((job, vec![target])),
            }
        }
        for (job, targets) in jobs {
            let targets = targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ");
            config.push_str(&format!(
                "  - job_name: {job}\n    honor_labels: true\n    static_configs: [{{targets: [{targets}]}}]\n"
            ));
            config.push_str(secure_of(job).as_deref().unwrap_or_default());
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, &config).expect("prometheus.yml");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut process = Process::spawn("prometheus", cmd, &dir.join("prometheus.log"));
        process.wait_until("ready", Duration::from_secs(60), || {
            crate::http::try_get(port, "/-/ready").is_some_and(|(s, _)| s == 200)
        });
        Prometheus {
            _process: process,
            port,
        }
    }

    /// The result vector of an instant query (empty when nothing matches or on error).
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let body = crate::http::get_ok(
            self.port,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }
}
