//! The C peer programs (unchanged POSIX programs, glibc and musl) and stand-ins for pods
//! that run them with a link at `/dev/shm`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::require_tool;

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
    // Unique to the process and the call: tests of one binary compile on threads too.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let part = out.with_extension(format!("part-{}-{call}", std::process::id()));
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
    pod_command(None, link_dir, None, program, args)
        .spawn()
        .expect("starting a pod process with unshare")
}

/// [`spawn_pod`] running as `uid:gid` (no supplementary groups), as a pod with
/// `runAsUser` and `runAsGroup`.
pub fn spawn_pod_as(link_dir: &Path, uid: u32, gid: u32, program: &Path, args: &[&str]) -> Child {
    pod_command(None, link_dir, Some((uid, gid)), program, args)
        .spawn()
        .expect("starting a pod process with unshare")
}

/// [`spawn_pod_as`] with the process in the cgroup whose `cgroup.procs` is `procs`
/// before it runs anything (as a container's processes are in their pod's cgroup).
pub fn spawn_pod_as_in_cgroup(
    procs: &Path,
    link_dir: &Path,
    uid: u32,
    gid: u32,
    program: &Path,
    args: &[&str],
) -> Child {
    let pod = pod_command(None, link_dir, Some((uid, gid)), program, args);
    Command::new("sh")
        .args(["-c", r#"echo $$ > "$0" && exec "$@""#])
        .arg(procs)
        .arg(pod.get_program())
        .args(pod.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a pod process in a cgroup")
}

/// [`spawn_pod_as`] in the named network namespace `netns` (made with `ip netns add`)
/// rather than a new one of its own: pods that can reach each other over a network.
pub fn spawn_pod_in(
    netns: &str,
    link_dir: &Path,
    uid: u32,
    gid: u32,
    program: &Path,
    args: &[&str],
) -> Child {
    pod_command(Some(netns), link_dir, Some((uid, gid)), program, args)
        .spawn()
        .expect("starting a pod process with ip netns exec and unshare")
}

fn pod_command(
    netns: Option<&str>,
    link_dir: &Path,
    user: Option<(u32, u32)>,
    program: &Path,
    args: &[&str],
) -> Command {
    require_tool("unshare");
    let mut cmd = match netns {
        Some(name) => {
            require_tool("ip");
            let mut c = Command::new("ip");
            c.args(["netns", "exec", name, "unshare", "--mount", "--ipc"]);
            c
        }
        None => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--ipc", "--net"]);
            c
        }
    };
    cmd.args(["--propagation", "private", "--", "sh", "-c"])
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
