//! Plain HTTP on loopback and the Prometheus text format, as the tests read them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One HTTP/1.0 GET of `path` on `127.0.0.1:port`: (status, body); `None` when nothing
/// answers.
pub fn try_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// [`try_get`] of an endpoint that must answer.
pub fn get(port: u16, path: &str) -> (u16, String) {
    try_get(port, path).unwrap_or_else(|| panic!("nothing answers GET {path} on port {port}"))
}

/// The body of a 200 answer to GET `path`; `None` for anything else.
pub fn get_ok(port: u16, path: &str) -> Option<String> {
    match try_get(port, path) {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// The value of the first series of family `name` whose labels include every
/// `(label, value)` given (with none given, the first series of the family).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether an exposition shows `channel` of `link` as present and discovered (made by a
/// member, not declared).
pub fn discovered(text: &str, link: &str, channel: &str) -> bool {
    metric(
        text,
        "ipclink_channel_present",
        &[
            ("link", link),
            ("channel", channel),
            ("origin", "discovered"),
        ],
    ) == Some(1.0)
}

/// The (channel, role, holder) of every `ipclink_channel_holder_info` series of `link` in
/// an exposition, the holder named by the label `by` (`container` on Compose, `pod` on
/// Kubernetes).
pub fn holders<'a>(text: &'a str, link: &str, by: &str) -> Vec<(&'a str, &'a str, &'a str)> {
    let label = |line: &'a str, name: &str| -> Option<&'a str> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[start..].find('"')?;
        Some(&line[start..start + len])
    };
    text.lines()
        .filter(|l| l.starts_with("ipclink_channel_holder_info{"))
        .filter(|l| label(l, "link") == Some(link))
        .filter_map(|l| Some((label(l, "channel")?, label(l, "role")?, label(l, by)?)))
        .collect()
}

/// Runs Prometheus' own checker (`promtool check metrics`) on an exposition; panics with
/// its complaints.
pub fn promtool_check(text: &str) {
    use std::process::{Command, Stdio};
    crate::require_tool("promtool");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One GET of `url` with curl, certificates unchecked, with extra `headers`
/// (`Name: value`): (status, body); status 0 when nothing answered.
pub fn curl(url: &str, headers: &[String]) -> (u16, String) {
    curl_with(&[], url, headers)
}

/// [`curl`] with more curl arguments (`-X POST`, `--path-as-is`, `-H @FILE`).
pub fn curl_with(args: &[&str], url: &str, headers: &[String]) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sk", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// What [`flood_tokens`] saw: the strangers' answers by status, the reader's answers
/// meanwhile by status, and the server's resident memory before and at its peak.
#[derive(Debug)]
pub struct Flood {
    /// Status (as text; "0" for no answer) → how many of the strangers' requests got it.
    pub strangers: std::collections::BTreeMap<String, u64>,
    /// Status → how many of the reader's scrapes, made every 100 ms meanwhile, got it.
    pub reader: std::collections::BTreeMap<u16, u64>,
    /// `VmRSS` of the server before the flood, in bytes.
    pub rss_before: u64,
    /// Its peak resident memory (`VmHWM`) after the flood, in bytes: no sample can
    /// miss a peak between two.
    pub rss_peak: u64,
}

/// `VmRSS` of process `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// `VmHWM` (peak resident memory) of process `pid` in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Floods the HTTPS metrics port `port` of process `pid` with `requests` requests, each
/// with a new bearer token of `token_bytes` characters nobody issued, over
/// `connections` connections at once (`testkit/peers/flood_tokens.py`), while a reader
/// with `reader_token` scrapes `/metrics` every 100 ms.
pub fn flood_tokens(
    port: u16,
    pid: u32,
    requests: usize,
    token_bytes: usize,
    connections: usize,
    reader_token: &str,
) -> Flood {
    use std::sync::atomic::{AtomicBool, Ordering};
    crate::require_tool("/usr/bin/python3");
    let script = crate::repo_root().join("testkit/peers/flood_tokens.py");
    let rss_before = rss_bytes(pid).expect("the server runs");
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, token) = (done.clone(), reader_token.to_owned());
        std::thread::spawn(move || {
            let mut reader = std::collections::BTreeMap::new();
            let auth = vec![format!("Authorization: Bearer {token}")];
            loop {
                let finished = done.load(Ordering::SeqCst);
                let (code, _) = curl(&format!("https://127.0.0.1:{port}/metrics"), &auth);
                *reader.entry(code).or_insert(0) += 1;
                if finished {
                    return reader;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .args([usize::from(port), requests, token_bytes, connections].map(|n| n.to_string()))
        .output()
        .expect("python3");
    done.store(true, Ordering::SeqCst);
    let reader = watcher.join().expect("the reader thread");
    assert!(
        out.status.success(),
        "flood_tokens.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let strangers = serde_json::from_slice(&out.stdout).expect("the flood's counts");
    Flood {
        strangers,
        reader,
        rss_before,
        rss_peak: peak_rss_bytes(pid).expect("the server runs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_found_by_family_and_labels() {
        let text = "# HELP a x\na{k=\"1\",j=\"2\"} 3\na_total 4\na{k=\"5\"} 6\nb 7\n";
        assert_eq!(metric(text, "a", &[("k", "1")]), Some(3.0));
        assert_eq!(metric(text, "a", &[("k", "5")]), Some(6.0));
        assert_eq!(metric(text, "a", &[("k", "9")]), None);
        assert_eq!(metric(text, "a_total", &[]), Some(4.0));
        assert_eq!(metric(text, "b", &[]), Some(7.0));
        assert_eq!(metric(text, "c", &[]), None);
    }
}
