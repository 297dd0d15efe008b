//! Memory accounting that matches Kubernetes: the pages of a link's preallocated shm
//! regions are charged to the first member pod's memory cgroup, never to the node
//! plugin, so the pod's memory limit covers its link as it covers an `emptyDir` of
//! medium Memory, and one tenant's large region cannot get the plugin OOM-killed.
//!
//! The kernel charges a tmpfs page to the memory cgroup of the task that first touches
//! it. So the plugin starts a short-lived helper (this binary's hidden `charge`
//! subcommand), which moves itself into the pod's memory cgroup and then `fallocate`s
//! the new region, reopened through the plugin's descriptor (`/proc/PID/fd/N`). Past the
//! pod's limit the kernel's OOM killer stops the helper (SIGKILL) before any page is
//! kept: the publish is refused with `ResourceExhausted`, and the plugin's own memory
//! never moves. The helper makes itself the OOM killer's first choice (`oom_score_adj`
//! 1000), so a region that does not fit never costs a running member its processes.
//! cgroup v1 (the memory hierarchy) and v2 (the unified hierarchy, where a process must
//! sit in a leaf, so each helper uses a child cgroup `ipclink-charge-PID-N` of the pod's)
//! are both handled; the pod's cgroup is found by the kubelet's names for it
//! under `kubepods`: `pod<UID>` (cgroupfs driver) or `…-pod<UID with _>.slice`
//! (systemd driver).

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipclink_core::{Preallocate, PreallocateError};
use nix::errno::Errno;

use crate::error::CsiError;

/// Exit code of the helper when the link's tmpfs is full.
const EXIT_ENOSPC: i32 = 3;
/// The prefix of the child cgroup a v2 helper runs in (one per call:
/// `ipclink-charge-PID-N`, so concurrent helpers never race one's removal against
/// another's join).
const LEAF: &str = "ipclink-charge";

/// Calls of this process, numbering the helpers' leaves.
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Where the memory controller's hierarchy is.
#[derive(Debug, Clone)]
pub struct Cgroups {
    memory: PathBuf,
    v2: bool,
}

impl Cgroups {
    /// The memory hierarchy under `root` (usually `/sys/fs/cgroup`): the unified
    /// hierarchy itself when `cgroup.controllers` names `memory`, else `root/memory`.
    pub fn detect(root: &Path) -> Cgroups {
        let v2 = std::fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
        Cgroups {
            memory: if v2 {
                root.to_path_buf()
            } else {
                root.join("memory")
            },
            v2,
        }
    }

    /// The memory cgroup of the pod with `uid`, found under the `kubepods` trees.
    pub fn pod(&self, uid: &str) -> Result<PathBuf, CsiError> {
        let valid = !uid.is_empty()
            && uid.len() <= 64
            && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !valid {
            return Err(CsiError::invalid(
                "volume_context",
                format!("pod uid {uid:?} is not a UID (hex digits and '-')"),
            ));
        }
        let cgroupfs = format!("pod{uid}");
        let systemd = format!("-pod{}.slice", uid.replace('-', "_"));
        let matches = |name: &str| name == cgroupfs || name.ends_with(&systemd);
        let dirs = |dir: &Path| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        };
        // The kubelet's trees: `kubepods[.slice]` at the top, or one level down when the
        // kubelet has a `cgroupRoot` of its own (e.g. `/kubelet/kubepods`).
        let mut level = Vec::new();
        for (name, path) in dirs(&self.memory) {
            if name.starts_with("kubepods") {
                level.push(path);
            } else {
                level.extend(
                    dirs(&path)
                        .into_iter()
                        .filter(|(n, _)| n.starts_with("kubepods"))
                        .map(|(_, p)| p),
                );
            }
        }
        // Within them, the pod directly (Guaranteed) or below its QoS class
        // (`burstable`, `kubepods-besteffort.slice`, ...).
        for _ in 0..2 {
            let mut next = Vec::new();
            for dir in &level {
                for (name, path) in dirs(dir) {
                    if matches(&name) {
                        return Ok(path);
                    }
                    next.push(path);
                }
            }
            level = next;
        }
        let m = self.memory.display();
        Err(CsiError::Precondition(format!(
            "no memory cgroup of pod {uid} under {m}/kubepods* or {m}/*/kubepods*: ipclink charges a link's shm regions to its first member pod; point --cgroup-root at the host's cgroup mount (or use --charge-memory=plugin)"
        )))
    }

    /// A charge into the pod cgroup `pod`.
    pub fn charge(&self, pod: PathBuf, pod_uid: &str) -> PodCharge {
        PodCharge {
            cgroup: pod,
            v2: self.v2,
            pod_uid: pod_uid.to_owned(),
        }
    }
}

/// Preallocates in the helper placed in one pod's memory cgroup.
#[derive(Debug)]
pub struct PodCharge {
    cgroup: PathBuf,
    v2: bool,
    pod_uid: String,
}

impl PodCharge {
    /// The `cgroup.procs` the helper writes its pid to.
    fn procs(&self) -> Result<PathBuf, PreallocateError> {
        if !self.v2 {
            // v1 allows tasks in a cgroup that has children.
            return Ok(self.cgroup.join("cgroup.procs"));
        }
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let leaf = self
            .cgroup
            .join(format!("{LEAF}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) => {
                return Err(PreallocateError::Failed(format!(
                    "cannot make {}: {e}",
                    leaf.display()
                )));
            }
        }
        Ok(leaf.join("cgroup.procs"))
    }
}

impl Preallocate for PodCharge {
    fn preallocate(&self, file: BorrowedFd<'_>, size: u64) -> Result<(), PreallocateError> {
        let procs = self.procs()?;
        let reopen = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        let out = Command::new("/proc/self/exe")
            .arg("charge")
            .arg("--procs")
            .arg(&procs)
            .arg("--file")
            .arg(&reopen)
            .arg("--size")
            .arg(size.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| PreallocateError::Failed(format!("cannot start the helper: {e}")));
        if self.v2 {
            // Empty again once the helper is gone; its pages stay charged to the pod.
            let _ = std::fs::remove_dir(procs.parent().unwrap_or(&self.cgroup));
        }
        let out = out?;
        use std::os::unix::process::ExitStatusExt;
        match (out.status.code(), out.status.signal()) {
            (Some(0), _) => Ok(()),
            (Some(EXIT_ENOSPC), _) => Err(PreallocateError::Sys(Errno::ENOSPC)),
            (_, Some(9)) => Err(PreallocateError::OutOfMemory(format!(
                "the memory limit of pod {} cannot hold {}: the kernel's OOM killer stopped the allocation in the pod's memory cgroup ({}); raise the first member's memory limit or shrink the region",
                self.pod_uid,
                ipclink_core::model::quantity::format_bytes(size),
                self.cgroup.display()
            ))),
            _ => Err(PreallocateError::Failed(format!(
                "the helper in {} failed ({}): {}",
                self.cgroup.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }
}

/// The hidden `ipclink-csi charge` subcommand: moves this process into the memory cgroup
/// of `procs`, then allocates `size` bytes of `file`. Returns the exit code.
pub fn run_helper(procs: &Path, file: &Path, size: u64) -> i32 {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        let _ = writeln!(std::io::stderr(), "{what}: {e}");
        1
    };
    // This process, not a member's, is the one the pod's OOM killer picks when the
    // region does not fit (it inherited the plugin's -997 from a system-node-critical
    // pod, which would make the pod's own processes the victims).
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        return fail("set oom_score_adj", &e);
    }
    // Then: every page this process touches from now on is charged to the pod.
    if let Err(e) = std::fs::write(procs, std::process::id().to_string()) {
        return fail(&format!("join {}", procs.display()), &e);
    }
    // Test hook: a preallocation that takes its time, to show it holds up nothing else.
    if ipclink_core::fault::is(ipclink_core::fault::Fault::SlowCharge) {
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
    {
        Ok(f) => f,
        Err(e) => return fail(&format!("open {}", file.display()), &e),
    };
    match nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, size as i64) {
        Ok(()) => 0,
        Err(Errno::ENOSPC) => EXIT_ENOSPC,
        Err(e) => fail("fallocate", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cgroups_are_found_by_both_drivers_names_and_uids_are_checked() {
        let root = tempfile::tempdir().expect("temp dir");
        let mem = root.path().join("memory");
        let uid = "0b7f6d1e-2f6a-4c39-9d55-3c1a7f0e4b21";
        let cgroupfs = mem.join(format!("kubepods/burstable/pod{uid}"));
        std::fs::create_dir_all(&cgroupfs).expect("mkdir");
        let systemd_uid = "11111111-2222-3333-4444-555555555555";
        let systemd = mem.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            systemd_uid.replace('-', "_")
        ));
        std::fs::create_dir_all(&systemd).expect("mkdir");
        // A kubelet with a cgroupRoot of its own, and a Guaranteed pod (no QoS class).
        let nested_uid = "22222222-3333-4444-5555-666666666666";
        let nested = mem.join(format!("node-b/kubepods/pod{nested_uid}"));
        std::fs::create_dir_all(&nested).expect("mkdir");
        // A pod-like name outside any kubelet tree is not taken.
        let stray_uid = "33333333-4444-5555-6666-777777777777";
        std::fs::create_dir_all(mem.join(format!("system.slice/pod{stray_uid}"))).expect("mkdir");
        let c = Cgroups::detect(root.path());
        assert_eq!(c.pod(uid).expect("cgroupfs"), cgroupfs);
        assert_eq!(c.pod(systemd_uid).expect("systemd"), systemd);
        assert_eq!(c.pod(nested_uid).expect("cgroupRoot"), nested);
        assert!(c.pod(stray_uid).is_err());
        let missing = c.pod("99999999-0000-0000-0000-000000000000");
        assert!(
            matches!(missing, Err(CsiError::Precondition(ref m)) if m.contains("--cgroup-root")),
            "{missing:?}"
        );
        for bad in ["", "../x", "a/b", "pod", "0b7f 6d1e"] {
            assert!(
                matches!(c.pod(bad), Err(CsiError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
