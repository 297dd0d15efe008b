//! Runs the workspace's test binaries in lanes: the binaries of one lane one after
//! another, the lanes side by side.
//!
//! Most of a test run here waits on real peers (containers starting, a control plane
//! electing, a kubelet pulling nothing), so one binary after another leaves the two
//! cores idle. Binaries that share a machine-wide resource stay in one lane: the Compose
//! tests of one engine drive that engine (and restart it), so each engine has a lane,
//! and a binary with tests for both is run once in each lane with a filter (its tests
//! are named `…on_podman…` or `…on_docker…`); what the two engines' tests share on the
//! host (the plugin socket, its metrics port, the docs' fixed ports) they take in turn
//! through `ipclink_testkit::engine::hold`. Every kubelet test brings up containerd and
//! kubelets on the CNI bridges `ipcltN` and the `kubepods` cgroups. The rest (each with
//! temporary directories and free ports) form the last lane.
//!
//! Usage: `cargo test --workspace --no-run --message-format=json-render-diagnostics >
//! tests.json`, then `ipclink-test-lanes tests.json`. Each binary runs in its package's
//! directory, as `cargo test` runs it; its output is printed whole when it ends, then a
//! table of every binary's time and result. Exits 1 when any failed, after all have
//! run; 2 when the lanes name a binary cargo did not build, or when the filters that
//! split a binary between lanes leave one of its tests in no lane or in two.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Binaries (`package/target`, or `package/target FILTER` for the tests whose names
/// contain FILTER) that must not run beside another of their lane.
const LANES: &[(&str, &[&str])] = &[
    (
        "docker",
        &[
            "ipclink-e2e/compose on_docker",
            "ipclink-e2e/compose_docker",
            "ipclink-e2e/fastdds",
            "ipclink-e2e/persistence on_docker",
            "ipclink-e2e/queue",
            "ipclink-e2e/zenoh",
        ],
    ),
    (
        "podman",
        &[
            "ipclink-e2e/compose on_podman",
            "ipclink-e2e/persistence on_podman",
        ],
    ),
    (
        "kubelets",
        &[
            "ipclink-csi/abuse",
            "ipclink-csi/edits",
            "ipclink-csi/fastdds",
            "ipclink-csi/holders",
            "ipclink-csi/kubelet",
            "ipclink-csi/memory",
            "ipclink-csi/queue",
            "ipclink-csi/triton_style",
            "ipclink-csi/workloads",
            "ipclink-csi/zenoh",
            "ipclink-e2e/chart",
            "ipclink-e2e/in_cluster",
            "ipclink-e2e/two_nodes",
            "ipclink-operator/persistent",
        ],
    ),
];
const REST: &str = "others";

/// One test binary cargo built.
#[derive(Debug, Clone)]
struct Binary {
    /// `package/target`, or `package` for a crate's own unit tests.
    name: String,
    executable: PathBuf,
    package_dir: PathBuf,
}

/// The test binaries of `cargo test --no-run --message-format=json` output.
fn binaries(json: &str) -> Vec<Binary> {
    let mut found = Vec::new();
    for line in json.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = msg["executable"].as_str() else {
            continue;
        };
        let package = msg["manifest_path"]
            .as_str()
            .map(Path::new)
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // `path+file:///w/e2e#ipclink-e2e@0.1.0`, or `…/w/demo#0.1.0` when the
        // package is named as its directory.
        let dir_name = package
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let crate_name = msg["package_id"]
            .as_str()
            .and_then(|id| id.rsplit('#').next())
            .and_then(|tail| tail.split_once('@').map(|(name, _)| name.to_owned()))
            .or(dir_name)
            .unwrap_or_default();
        let target = msg["target"]["name"].as_str().unwrap_or_default();
        let kinds = msg["target"]["kind"].to_string();
        let name = if kinds.contains("\"test\"") || kinds.contains("\"bench\"") {
            format!("{crate_name}/{target}")
        } else {
            format!("{crate_name} ({target}, unit)")
        };
        found.push(Binary {
            name,
            executable: PathBuf::from(executable),
            package_dir: package,
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found.dedup_by(|a, b| a.executable == b.executable);
    found
}

/// One run of a test binary in a lane: all its tests, or those whose names contain
/// `filter`.
#[derive(Debug, Clone)]
struct Job {
    lane: &'static str,
    binary: Binary,
    filter: Option<&'static str>,
}

impl Job {
    fn name(&self) -> String {
        match self.filter {
            Some(f) => format!("{} [{f}]", self.binary.name),
            None => self.binary.name.clone(),
        }
    }
}

/// A lane entry: (binary, filter).
fn entry(m: &'static str) -> (&'static str, Option<&'static str>) {
    match m.split_once(' ') {
        Some((name, filter)) => (name, Some(filter)),
        None => (m, None),
    }
}

/// The lanes' entries naming `binary`: (lane, filter).
fn entries_for(binary: &Binary) -> Vec<(&'static str, Option<&'static str>)> {
    let mut found = Vec::new();
    for (lane, members) in LANES {
        for m in *members {
            let (name, filter) = entry(m);
            if name == binary.name {
                found.push((*lane, filter));
            }
        }
    }
    found
}

/// The jobs for `binary`: one in the rest's lane when no lane names it, one per entry
/// otherwise. A binary split by filters must have each test in exactly one of them
/// (`tests` lists its tests), or a test would run twice or never.
fn jobs_for(
    binary: &Binary,
    tests: impl Fn() -> Result<Vec<String>, String>,
) -> Result<Vec<Job>, String> {
    let entries = entries_for(binary);
    if entries.is_empty() {
        return Ok(vec![Job {
            lane: REST,
            binary: binary.clone(),
            filter: None,
        }]);
    }
    if entries.len() > 1 || entries.iter().any(|(_, f)| f.is_some()) {
        if entries.iter().any(|(_, f)| f.is_none()) {
            return Err(format!(
                "{} is named whole and split by filters",
                binary.name
            ));
        }
        for test in tests()? {
            let matched = entries
                .iter()
                .filter(|(_, f)| f.is_some_and(|f| test.contains(f)))
                .count();
            if matched != 1 {
                return Err(format!(
                    "test {test} of {} is in {matched} lanes, not one (rename it or the lanes' filters)",
                    binary.name
                ));
            }
        }
    }
    Ok(entries
        .into_iter()
        .map(|(lane, filter)| Job {
            lane,
            binary: binary.clone(),
            filter,
        })
        .collect())
}

/// The names of a test binary's tests (`--list --format terse`).
fn list_tests(binary: &Binary) -> Result<Vec<String>, String> {
    let out = Command::new(&binary.executable)
        .args(["--list", "--format", "terse"])
        .current_dir(&binary.package_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: cannot list its tests: {e}", binary.name))?;
    let tests: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() || tests.is_empty() {
        return Err(format!(
            "{}: listing its tests gave {} and no test",
            binary.name, out.status
        ));
    }
    Ok(tests)
}

struct Ran {
    lane: &'static str,
    name: String,
    took: Duration,
    passed: bool,
}

/// Longest a test binary may run; past it, it is killed and reported failed (a test
/// that hangs must fail the run, not hold CI until its limit).
const BINARY_LIMIT: Duration = Duration::from_secs(30 * 60);

fn run(job: &Job, out: &Mutex<()>) -> Ran {
    let start = Instant::now();
    // Output goes to a file, and the run ends when the binary exits: a process it
    // started and left behind (holding a copy of its stdout) does not hold the lane.
    let (passed, text) = match run_to_file(&job.binary, job.filter) {
        Ok(r) => r,
        Err(e) => (
            false,
            format!("cannot run {}: {e}\n", job.binary.executable.display()),
        ),
    };
    let took = start.elapsed();
    let _printing = out.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "== [{}] {} ({:.1} s, {})\n{text}",
        job.lane,
        job.name(),
        took.as_secs_f64(),
        if passed { "ok" } else { "FAILED" }
    );
    Ran {
        lane: job.lane,
        name: job.name(),
        took,
        passed,
    }
}

/// Runs `binary` (its tests whose names contain `filter`, when given) with its stdout
/// and stderr in one temporary file, up to [`BINARY_LIMIT`]: whether it passed, and what
/// it printed.
fn run_to_file(binary: &Binary, filter: Option<&str>) -> std::io::Result<(bool, String)> {
    let log = tempfile::tempfile()?;
    let mut child = Command::new(&binary.executable)
        .args(filter)
        .current_dir(&binary.package_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > BINARY_LIMIT {
            // With what it started and still parents: a volume plugin it serves would
            // otherwise keep the socket and port that the other lane's next test takes
            // once the dead binary's lock is gone.
            for pid in descendants(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut text = String::new();
    let mut log = log;
    std::io::Seek::rewind(&mut log)?;
    std::io::Read::read_to_string(&mut log, &mut text)?;
    Ok(match status {
        Some(s) if s.success() => (true, text),
        Some(s) => (false, format!("{text}exit: {s}\n")),
        None => (
            false,
            format!("{text}killed: still running after {BINARY_LIMIT:?}\n"),
        ),
    })
}

/// The processes below `root` (children, their children, ...), from /proc.
fn descendants(root: u32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = Vec::new();
    let mut next = vec![i32::try_from(root).unwrap_or(-1)];
    while let Some(p) = next.pop() {
        for (pid, _) in parents.iter().filter(|(_, ppid)| *ppid == p) {
            if !found.contains(pid) {
                found.push(*pid);
                next.push(*pid);
            }
        }
    }
    found
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!(
            "usage: ipclink-test-lanes TESTS.json (cargo test --no-run --message-format=json)"
        );
        return ExitCode::from(2);
    };
    let json = match std::fs::read_to_string(&path) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("ipclink-test-lanes: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let all = binaries(&json);
    if all.is_empty() {
        eprintln!("ipclink-test-lanes: {path} names no test binary");
        return ExitCode::from(2);
    }
    let mut lanes: BTreeMap<&'static str, Vec<Job>> = BTreeMap::new();
    for b in &all {
        match jobs_for(b, || list_tests(b)) {
            Ok(jobs) => {
                for job in jobs {
                    lanes.entry(job.lane).or_default().push(job);
                }
            }
            Err(e) => {
                eprintln!("ipclink-test-lanes: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // A lane naming a binary cargo did not build is a renamed or moved test, which
    // would otherwise run beside its lane (IPCLINK_LANES_SUBSET=1 when building a part
    // of the workspace on purpose).
    let subset = std::env::var_os("IPCLINK_LANES_SUBSET").is_some_and(|v| v == "1");
    for (lane, members) in LANES {
        for m in *members {
            let (name, _) = entry(m);
            if !subset && !all.iter().any(|b| b.name == name) {
                eprintln!("ipclink-test-lanes: lane {lane} names {m}, which cargo did not build");
                return ExitCode::from(2);
            }
        }
    }
    let start = Instant::now();
    let printing = Mutex::new(());
    let mut ran: Vec<Ran> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .values()
            .map(|jobs| {
                let printing = &printing;
                s.spawn(move || jobs.iter().map(|j| run(j, printing)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    // A lane whose thread died reports nothing: every job not reported failed.
    for job in lanes.values().flatten() {
        if !ran.iter().any(|r| r.name == job.name()) {
            ran.push(Ran {
                lane: job.lane,
                name: format!("{} (no result: its lane stopped)", job.name()),
                took: Duration::ZERO,
                passed: false,
            });
        }
    }
    ran.sort_by(|a, b| (a.lane, b.took).cmp(&(b.lane, a.took)));
    println!("| lane | test binary | time | result |\n|---|---|---|---|");
    for r in &ran {
        println!(
            "| {} | {} | {:.1} s | {} |",
            r.lane,
            r.name,
            r.took.as_secs_f64(),
            if r.passed { "ok" } else { "FAILED" }
        );
    }
    for lane in lanes.keys() {
        let busy: Duration = ran.iter().filter(|r| r.lane == *lane).map(|r| r.took).sum();
        println!("lane {lane}: {:.0} s", busy.as_secs_f64());
    }
    let failed: Vec<&str> = ran
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.name.as_str())
        .collect();
    println!(
        "{} test binaries in {:.0} s; {}",
        ran.len(),
        start.elapsed().as_secs_f64(),
        if failed.is_empty() {
            "all passed".to_owned()
        } else {
            format!("FAILED: {}", failed.join(", "))
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_read_from_cargo_messages_and_put_in_their_lanes() {
        let json = [
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/e2e#ipclink-e2e@0.1.0","manifest_path":"/w/e2e/Cargo.toml","target":{"kind":["test"],"name":"compose"},"profile":{"test":true},"executable":"/t/compose-1"}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/core#ipclink-core@0.1.0","manifest_path":"/w/core/Cargo.toml","target":{"kind":["lib"],"name":"ipclink_core"},"profile":{"test":true},"executable":"/t/core-1"}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/core#ipclink-core@0.1.0","manifest_path":"/w/core/Cargo.toml","target":{"kind":["lib"],"name":"ipclink_core"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        let found = binaries(&json);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].name, "ipclink-core (ipclink_core, unit)");
        assert_eq!(found[0].package_dir, Path::new("/w/core"));
        let lanes = |b: &Binary, tests: &[&str]| {
            let tests: Vec<String> = tests.iter().map(|t| t.to_string()).collect();
            jobs_for(b, || Ok(tests.clone())).map(|jobs| {
                jobs.iter()
                    .map(|j| format!("{} {}", j.lane, j.name()))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            lanes(&found[0], &[]),
            Ok(vec![format!("{REST} ipclink-core (ipclink_core, unit)")])
        );
        assert_eq!(found[1].name, "ipclink-e2e/compose");
        // Split between the engines' lanes: each test in one.
        let both = ["sidecar_example_on_docker", "sidecar_example_on_podman"];
        assert_eq!(
            lanes(&found[1], &both),
            Ok(vec![
                "docker ipclink-e2e/compose [on_docker]".to_owned(),
                "podman ipclink-e2e/compose [on_podman]".to_owned()
            ])
        );
        // A test named for neither engine would run in no lane: refused.
        let err = lanes(&found[1], &["sidecar_example_on_docker", "sidecar_example"]);
        assert!(
            err.as_ref().is_err_and(
                |e| e.contains("test sidecar_example of ipclink-e2e/compose is in 0 lanes")
            ),
            "{err:?}"
        );
    }

    #[test]
    fn descendants_are_found_through_proc() {
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 60 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read");
        let sleep: i32 = line.trim().parse().expect("a pid");
        let found = descendants(sh.id());
        for pid in &found {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = sh.kill();
        let _ = sh.wait();
        assert!(found.contains(&sleep), "{found:?} lacks {sleep}");
        assert!(!found.contains(&(std::process::id() as i32)), "{found:?}");
    }

    #[test]
    fn a_binary_ends_when_it_exits_even_if_a_child_keeps_its_output() {
        // The "binary" leaves a process behind holding its stdout, prints that
        // process's pid and fails.
        let script = std::env::temp_dir().join(format!("lanes-test-{}.sh", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\nsleep 60 &\necho $!\nexit 3\n").expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let binary = Binary {
            name: "leaves-a-child".into(),
            executable: script.clone(),
            package_dir: std::env::temp_dir(),
        };
        // Another test's fork can hold the script's write descriptor for a moment (until
        // its child execs): the kernel then refuses to run it (ETXTBSY); try again.
        let mut tries = 0;
        let (passed, text) = loop {
            match run_to_file(&binary, None) {
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.expect("run"),
            }
        };
        let _ = std::fs::remove_file(&script);
        assert!(!passed, "{text}");
        assert!(text.contains("exit: exit status: 3"), "{text}");
        let pid: i32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid");
        // Returned while the process it left behind still runs (and holds the output).
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the runner waited for the process left behind"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
