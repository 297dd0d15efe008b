//! ipclink-testkit: what the tests of every crate share — real peers (a control plane, a
//! kubelet node, the kernel's namespaces, real compilers and libcs), HTTP and metric
//! helpers, mount-table helpers, tree snapshots and manifest builders. A missing peer or
//! missing root fails the test with what to install; nothing is skipped silently.

pub mod control_plane;
pub mod engine;
pub mod http;
pub mod mounts;
pub mod node;
pub mod operator;
pub mod pods;
pub mod process;
pub mod prometheus;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Which C library a peer program is built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Libc {
    /// Debian's gcc and glibc, dynamically linked.
    Glibc,
    /// musl-gcc, statically linked.
    Musl,
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
    // Start at a place of this process's own, so two test binaries rarely meet either.
    let mut port = next.unwrap_or(floor + (std::process::id() % 4000) as u16 * 2);
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

/// Directory for build products of the tests (under the cargo target directory).
pub fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| PathBuf::from(t).join("e2e"))
        .unwrap_or(dir);
    std::fs::create_dir_all(&dir).expect("creating the e2e scratch directory");
    dir
}

/// Compiles `testkit/peers/NAME.c` against `libc`, returning the program's path.
pub fn compile_peer(name: &str, libc: Libc) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(format!("{name}.c"));
    let (cc, suffix, extra): (&str, &str, &[&str]) = match libc {
        Libc::Glibc => ("gcc", "glibc", &["-pthread"]),
        Libc::Musl => ("musl-gcc", "musl", &["-static"]),
    };
    require_tool(cc);
    let out = scratch_dir().join(format!("{name}-{suffix}"));
    // Compiled beside it and renamed into place: a test of another lane may be running
    // the program now (writing over it would fail with ETXTBSY, or hand it half a file).
    let part = out.with_extension(format!("part-{}", std::process::id()));
    let status = Command::new(cc)
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&part)
        .arg(&src)
        .args(extra)
        .status()
        .expect("running the C compiler");
    assert!(status.success(), "{cc} failed on {}", src.display());
    std::fs::rename(&part, &out).expect("renaming the compiled peer into place");
    out
}

/// A stand-in for a pod: a process in its own mount, IPC and network namespaces that
/// sees only `link_dir`, bind-mounted (recursively, as the node plugin publishes a link)
/// at `/dev/shm`.
pub fn spawn_pod(link_dir: &Path, program: &Path, args: &[&str]) -> Child {
    pod_command(link_dir, None, program, args)
        .spawn()
        .expect("starting a pod process with unshare")
}

/// [`spawn_pod`] running as `uid:gid` (no supplementary groups), as a pod with
/// `runAsUser` and `runAsGroup`.
pub fn spawn_pod_as(link_dir: &Path, uid: u32, gid: u32, program: &Path, args: &[&str]) -> Child {
    pod_command(link_dir, Some((uid, gid)), program, args)
        .spawn()
        .expect("starting a pod process with unshare")
}

fn pod_command(
    link_dir: &Path,
    user: Option<(u32, u32)>,
    program: &Path,
    args: &[&str],
) -> Command {
    require_tool("unshare");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--ipc",
        "--net",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
    ])
    // As a container sees a publication: the link bound alone at /dev/shm, and the
    // node's own mount of it (the tmpfs, below the plugin's state) out of sight.
    .arg(r#"mount --bind "$1" /dev/shm && { umount -l "$1" 2>/dev/null; shift; } && exec "$@""#)
    .arg("pod")
    .arg(link_dir);
    if let Some((uid, gid)) = user {
        require_tool("setpriv");
        cmd.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
        ]);
    }
    cmd.arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
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

/// Tears a materialized link down when dropped, so a failing test leaves no mount behind.
#[derive(Debug)]
pub struct LinkGuard<'a> {
    /// The store holding the link.
    pub store: &'a ipclink_core::Store,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Drop for LinkGuard<'_> {
    fn drop(&mut self) {
        let _ = self.store.teardown(&self.namespace, &self.name);
    }
}

/// Materializes `yaml`'s single link in `store`; the guard removes it again.
pub fn materialize<'a>(
    store: &'a ipclink_core::Store,
    yaml: &str,
) -> (ipclink_core::LinkPlan, LinkGuard<'a>) {
    let link = &ipclink_core::parse_links("test", yaml).expect("parse")[0];
    let plan = ipclink_core::validate(link).expect("valid");
    store.materialize(&plan).expect("materialize");
    let guard = LinkGuard {
        store,
        namespace: plan.namespace.clone(),
        name: plan.name.clone(),
    };
    (plan, guard)
}

/// The first ```sh block between `<!-- NAME:` and `<!-- /NAME -->` in `page` (the
/// README or a page of `docs/`, from the repository root), which the docs tests run as
/// written.
pub fn doc_block(page: &str, name: &str) -> String {
    let path = repo_root().join(page);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = text
        .find(&format!("<!-- {name}:"))
        .unwrap_or_else(|| panic!("{page}: no <!-- {name}: marker"));
    let end = text
        .find(&format!("<!-- /{name} -->"))
        .unwrap_or_else(|| panic!("{page}: no <!-- /{name} --> marker"));
    text[start..end]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("{page} {name}: no closed sh block"))
        .to_owned()
}

/// [`doc_block`] made runnable here: without the lines that start with one of `skip`
/// (builds a test has already done), and with each `(from, to)` replaced (paths, ports).
pub fn doc_script(page: &str, name: &str, skip: &[&str], replace: &[(&str, &str)]) -> String {
    let mut script = doc_block(page, name)
        .lines()
        .filter(|l| !skip.iter().any(|s| l.starts_with(s)))
        .collect::<Vec<_>>()
        .join("\n");
    for (from, to) in replace {
        script = script.replace(from, to);
    }
    script
}

/// Runs `script` under `bash -euo pipefail` in the repository root with `env` added;
/// (stdout, stderr) when it succeeds, a panic showing the script and both outputs when
/// it fails.
pub fn run_script(what: &str, script: &str, env: &[(&str, &std::ffi::OsStr)]) -> (String, String) {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(repo_root())
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{what}: bash: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// `PATH` with `dirs` in front.
pub fn path_with(dirs: &[&Path]) -> std::ffi::OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let all = dirs
        .iter()
        .map(|d| d.to_path_buf())
        .chain(std::env::split_paths(&current));
    std::env::join_paths(all).expect("PATH entries without ':'")
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `scripts/NAME` (an installer or builder that prints one path) and returns that
/// path; panics with the script's stderr when it fails.
pub fn script_path(name: &str) -> PathBuf {
    script_path_with(name, &[])
}

/// [`script_path`] with arguments.
pub fn script_path_with(name: &str, args: &[&str]) -> PathBuf {
    let out = Command::new(repo_root().join("scripts").join(name))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
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

/// Serves the runtime's links endpoint (`/metrics`, `/v1/links`, as the sidecar serves
/// them) over the links of `yamls`, materialized in a plain directory under `root`, on a
/// thread of its own; returns its port. The endpoint lives until the process ends.
pub fn serve_links(root: &Path, yamls: &[&str]) -> u16 {
    let store = ipclink_core::Store::open(root, ipclink_core::StorageMode::PlainDir)
        .expect("open the links directory");
    for yaml in yamls {
        for link in ipclink_core::parse_links("links", yaml).expect("parse") {
            let plan = ipclink_core::validate(&link).expect("valid");
            store.materialize(&plan).expect("materialize");
        }
    }
    serve_records(root).0
}

/// Serves `/v1/links` (as the sidecar and the node plugins do) over every link recorded
/// under `root` (a plain directory), as each record says it serves (with what is
/// pending); returns the port and the probes, which [`probe_records`] renews.
pub fn serve_records(root: &Path) -> (u16, ipclink_runtime::links::SharedLinks) {
    use std::sync::{Arc, Mutex};
    let store = ipclink_core::Store::open(root, ipclink_core::StorageMode::PlainDir)
        .expect("open the links directory");
    let links = Arc::new(Mutex::new(ipclink_runtime::links::LinkSet::new(
        probe_records(&store),
    )));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = links.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _keep = store;
            let _ = ipclink_runtime::http::serve(
                listener,
                ipclink_runtime::links::router(served),
                ipclink_runtime::http::Limits::default(),
                std::future::pending::<()>(),
            )
            .await;
        });
    });
    (port, links)
}

/// A probe of every link recorded in `store`.
pub fn probe_records(store: &ipclink_core::Store) -> Vec<ipclink_core::probe::LinkProbe> {
    store
        .records()
        .0
        .iter()
        .map(|r| ipclink_core::probe::LinkProbe::of_record(store, r).expect("probe"))
        .collect()
}
