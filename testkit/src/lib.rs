//! ipclink-testkit: what the tests of every crate share — real peers (a control plane, a
//! kubelet node, the kernel's namespaces, real compilers and libcs), HTTP and metric
//! helpers, mount-table helpers, tree snapshots and manifest builders. A missing peer or
//! missing root fails the test with what to install; nothing is skipped silently.

pub mod control_plane;
pub mod engine;
pub mod http;
mod links;
pub mod mounts;
pub mod node;
pub mod operator;
mod peers;
pub mod pods;
pub mod process;
pub mod prometheus;
mod scripts;

pub use links::{LinkGuard, materialize, probe_records, serve_links, serve_records};
pub use peers::{
    Libc, compile_peer, scratch_dir, spawn_pod, spawn_pod_as, spawn_pod_as_in_cgroup, spawn_pod_in,
};
pub use scripts::{
    doc_block, doc_script, path_with, repo_root, run_script, script_path, script_path_with,
};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The host id an examples/fastdds pair member (`role`: pub or sub) says in its log that
/// Fast-DDS gave its participant; panics, showing the log, when it says none.
pub fn fastdds_host_id(log: &str, role: &str) -> String {
    let prefix = format!("fastdds {role}: host id ");
    log.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no host id in the {role} log:\n{log}"))
        .to_owned()
}

/// Whether `name` is a Fast-DDS participant's own shared-memory segment: `fastrtps_` and
/// 16 hexadecimal digits.
pub fn fastdds_participant_segment(name: &str) -> bool {
    name.strip_prefix("fastrtps_")
        .is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether the plugin's metrics `m` show an examples/fastdds pair's own objects in `link`
/// as discovered objects held by both: the discovery port's segment
/// (`fastrtps_port7400`) and both participants' segments, mapped by `publisher` and
/// `subscriber` (the holders' values of label `by`: `pod` or `container`).
pub fn fastdds_objects_held(
    m: &str,
    link: &str,
    by: &str,
    publisher: &str,
    subscriber: &str,
) -> bool {
    let held = http::holders(m, link, by);
    let by_both = |channel: &str| {
        [publisher, subscriber]
            .iter()
            .all(|who| held.contains(&(channel, "mapper", *who)))
    };
    let segments = held
        .iter()
        .filter(|&&(channel, role, who)| {
            role == "mapper"
                && who == publisher
                && fastdds_participant_segment(channel)
                && by_both(channel)
        })
        .count();
    by_both("fastrtps_port7400") && segments >= 2 && http::discovered(m, link, "fastrtps_port7400")
}

/// Whether the plugin's metrics `m` show an examples/zenoh pair's own objects in `link` as
/// discovered objects held by both: the socket (`zenoh.sock`, `sub` reading, `publisher`
/// writing) and a segment of the publisher's pool (`*.zenoh`) mapped by both (the holders'
/// values of label `by`: `pod` or `container`).
pub fn zenoh_objects_held(m: &str, link: &str, by: &str, sub: &str, publisher: &str) -> bool {
    let held = http::holders(m, link, by);
    let socket = held.contains(&("zenoh.sock", "reader", sub))
        && held.contains(&("zenoh.sock", "writer", publisher));
    let segment = held.iter().any(|&(channel, role, who)| {
        channel.ends_with(".zenoh")
            && role == "mapper"
            && who == sub
            && held.contains(&(channel, "mapper", publisher))
    });
    socket && segment && http::discovered(m, link, "zenoh.sock")
}

/// Checks the logs of an examples/fastdds pair that matched: the subscriber got its
/// 1,000 samples in order, the publisher had them acknowledged, and both participants
/// have the same host id (`what` names the pair in a failure).
pub fn assert_fastdds_pair_matched(pub_log: &str, sub_log: &str, what: &str) {
    assert!(
        sub_log.contains("fastdds sub: 1000 samples arrived in order"),
        "{what}: {sub_log}"
    );
    assert!(
        pub_log.contains("fastdds pub: 1000 samples sent and acknowledged"),
        "{what}: {pub_log}"
    );
    assert_eq!(
        fastdds_host_id(pub_log, "pub"),
        fastdds_host_id(sub_log, "sub"),
        "{what}"
    );
}

/// Checks the logs of an examples/zenoh pair that passed `samples` samples of 64 KiB
/// over the link's socket (`unixsock-stream//dev/shm/zenoh.sock`): the subscriber
/// listened there and nowhere else, the publisher nowhere, and every sample arrived in
/// order and in shared memory, acknowledged.
pub fn assert_zenoh_pair_over_the_link(sub_log: &str, pub_log: &str, samples: u32) {
    assert!(
        sub_log.contains("zenoh sub: listening on unixsock-stream//dev/shm/zenoh.sock\n"),
        "{sub_log}"
    );
    assert!(
        sub_log.contains(&format!(
            "zenoh sub: {samples} samples of 65536 bytes arrived in order, {samples} in shared memory"
        )),
        "{sub_log}"
    );
    assert!(
        pub_log.contains("zenoh pub: listening on nothing\n"),
        "{pub_log}"
    );
    assert!(
        pub_log.contains(&format!(
            "zenoh pub: {samples} samples of 65536 bytes sent (shared memory), the subscriber acknowledged {samples}"
        )),
        "{pub_log}"
    );
    // How often the publisher's transport came without shared memory before one had it
    // (zenoh-shm's start-up clean-up can take the other side's segment: docs/zenoh.md);
    // printed for the CI log, which issue 30 reads.
    let again = pub_log.matches("connecting again").count();
    eprintln!(
        "zenoh pair: {samples} samples in shared memory; publisher reconnected {again} times for shared memory"
    );
}

/// Panics unless running as root (namespaces and tmpfs mounts need it).
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (namespaces, mounts); run the README test command, which runs as root in CI"
    );
}

/// Calls `f` every `every` until it returns a value, which it returns; panics naming
/// `what` after `limit`.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// Panics unless `tool` is on PATH.
pub fn require_tool(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{tool} is not installed; run scripts/install-test-deps (the README test command does)"
        )
    })
}

/// A free loopback port for a server a test starts. It is taken below the kernel's
/// ephemeral range (`ip_local_port_range`), where `bind(0)` and outgoing connections
/// never land, so nothing else grabs it between now and the server's own bind; and it is
/// handed out once per process, so parallel tests never get the same one.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let floor = low.saturating_sub(12000).max(1024);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    // Start at a place of this process's own, so two test binaries rarely meet either
    // (they run side by side in lanes): the pid scattered over the range, so processes
    // started one after another start far apart.
    let span = u64::from(low.saturating_sub(floor)).max(2);
    let spread = u64::from(std::process::id()).wrapping_mul(2_654_435_761) % span;
    let mut port = next.unwrap_or(floor + spread as u16);
    loop {
        if port >= low {
            port = floor;
        }
        let candidate = port;
        port += 1;
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            *next = Some(port);
            return candidate;
        }
    }
}

/// Kills and reaps a child when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    /// [`wait_with_timeout`] for the child: its output, within `limit` (killed after).
    pub fn output_within(mut self, limit: Duration) -> Output {
        // What is left in its place exits at once, and is reaped by Drop.
        let done = Command::new("true").spawn().expect("true");
        wait_with_timeout(std::mem::replace(&mut self.0, done), limit)
    }
}

/// `data` in base64 (as a Secret's `data` holds it).
pub fn base64(data: &[u8]) -> String {
    String::from_utf8(pipe_through(&["base64", "-w0"], data)).expect("base64 is ASCII")
}

/// The bytes base64 `text` holds.
pub fn unbase64(text: &str) -> Vec<u8> {
    pipe_through(&["base64", "-d"], text.as_bytes())
}

/// The output of `command` given `input` on its standard input.
fn pipe_through(command: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", command[0]));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{command:?} failed");
    out.stdout
}

/// Waits for a child up to `limit`, killing it after; returns its output.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("waiting for a child") {
            Some(_) => break,
            None if start.elapsed() > limit => {
                let _ = child.kill();
                break;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    child
        .wait_with_output()
        .expect("collecting a child's output")
}

/// Formats a child's output for an assertion message.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// podman serving the Docker API, docker-compose and our images loaded, through the
/// project's own scripts (`install-compose`, then `build-images --podman`); returns the
/// images directory. Panics without root.
pub fn compose_engine() -> PathBuf {
    require_root();
    // It prints the DOCKER_HOST line rather than a path; only its success matters here.
    script_path("install-compose");
    script_path_with("build-images", &["--podman"])
}

/// Docker Engine (Debian's docker.io on /var/run/docker.sock) with Compose v2 and our
/// images loaded, through `scripts/install-docker` and `build-images --docker` (once per
/// test process); returns the images directory. Each call makes sure the daemon runs
/// without live-restore (`install-docker` restarts it when that differs; see
/// `Engine::restart` for a daemon with it). Panics without root.
pub fn docker_engine() -> PathBuf {
    static IMAGES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    require_root();
    // It prints the DOCKER_HOST line rather than a path; only its success matters here.
    script_path("install-docker");
    IMAGES
        .get_or_init(|| script_path_with("build-images", &["--docker"]))
        .clone()
}

/// A command's stdout and stderr together, for assertions and failure messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The static binary `name` that `scripts/build-images` built next to its `images`
/// directory (`<target>/<host triple>/release/<name>`).
pub fn static_binary(images: &Path, name: &str) -> PathBuf {
    images
        .parent()
        .and_then(|target| {
            std::fs::read_dir(target).ok()?.flatten().find_map(|e| {
                let b = e.path().join("release").join(name);
                b.is_file().then_some(b)
            })
        })
        .unwrap_or_else(|| panic!("no static {name} next to {}", images.display()))
}
