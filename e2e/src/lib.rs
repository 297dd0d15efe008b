//! Helpers for tests against real peers: the kernel's namespaces, real compilers and
//! libcs. A missing peer or missing root fails the test with what to install; nothing is
//! skipped silently.

pub mod control_plane;
pub mod node;

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

/// Directory for build products of the tests (under the cargo target directory).
pub fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| PathBuf::from(t).join("e2e"))
        .unwrap_or(dir);
    std::fs::create_dir_all(&dir).expect("creating the e2e scratch directory");
    dir
}

/// Compiles `e2e/peers/NAME.c` against `libc`, returning the program's path.
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
    let status = Command::new(cc)
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .status()
        .expect("running the C compiler");
    assert!(status.success(), "{cc} failed on {}", src.display());
    out
}

/// A stand-in for a pod: a process in its own mount, IPC and network namespaces that
/// sees only `link_dir`, bind-mounted at `/dev/shm`.
pub fn spawn_pod(link_dir: &Path, program: &Path, args: &[&str]) -> Child {
    require_tool("unshare");
    Command::new("unshare")
        .args([
            "--mount",
            "--ipc",
            "--net",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
        ])
        .arg(r#"mount --bind "$1" /dev/shm && shift && exec "$@""#)
        .arg("pod")
        .arg(link_dir)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a pod process with unshare")
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

/// The first ```sh block between `<!-- NAME:` and `<!-- /NAME -->` in the README, which
/// the README tests run as written.
pub fn readme_block(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let start = readme
        .find(&format!("<!-- {name}:"))
        .unwrap_or_else(|| panic!("README: no <!-- {name}: marker"));
    let end = readme
        .find(&format!("<!-- /{name} -->"))
        .unwrap_or_else(|| panic!("README: no <!-- /{name} --> marker"));
    readme[start..end]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("README {name}: no closed sh block"))
        .to_owned()
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

/// A command's stdout and stderr together, for assertions and failure messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every mount point of this mount namespace (field 5 of /proc/self/mountinfo).
pub fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// Mount points whose path contains `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    mount_points()
        .into_iter()
        .filter(|m| m.contains(needle))
        .collect()
}

/// Lazily unmounts every mount at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let prefix = dir.display().to_string();
    let mut found: Vec<String> = mount_points()
        .into_iter()
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in found {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
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
