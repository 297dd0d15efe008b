//! The mount table and the files under a directory, as tests compare them before and
//! after a call that must change nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// Every mount point of this mount namespace (field 5 of /proc/self/mountinfo).
pub fn mount_points() -> Vec<String> {
    mountinfo()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// Mount points at or below any of `dirs`. Tests compare these, not the whole table:
/// other tests and earlier CI steps' container engines mount elsewhere meanwhile.
pub fn mount_points_under(dirs: &[&Path]) -> Vec<String> {
    mount_points()
        .into_iter()
        .filter(|m| dirs.iter().any(|d| Path::new(m).starts_with(d)))
        .collect()
}

/// Mount points whose path contains `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    mount_points()
        .into_iter()
        .filter(|m| m.contains(needle))
        .collect()
}

/// The mountinfo line of the mount at exactly `path`, if `path` is a mount point.
pub fn mount_line(path: &Path) -> Option<String> {
    let path = path.to_str()?;
    mountinfo()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(path))
        .map(str::to_owned)
}

/// The per-mount options (field 6: `rw`, `nosuid`, ...) of the mount at `path`.
pub fn mount_options(path: &Path) -> Option<Vec<String>> {
    let line = mount_line(path)?;
    let options = line.split(' ').nth(5)?;
    Some(options.split(',').map(str::to_owned).collect())
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

/// Unmounts everything at or below a directory when dropped, so a failing test leaves no
/// mount behind (drop it after the processes that made the mounts).
#[derive(Debug)]
pub struct Unmounter(pub PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        unmount_below(&self.0);
    }
}

/// FNV-1a of a file's bytes: content compared without holding it.
fn digest(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!(
            "{:016x}",
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        ),
        Err(e) => format!("unreadable: {e}"),
    }
}

/// Everything a call could change under `root`: every path below it with its type,
/// mode, owner, size and (for regular files) a digest of the content, never following a
/// symlink nor entering another mount's files twice; then the mount table's lines there
/// (without the mount ids, which an unchanged table keeps anyway).
pub fn snapshot(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let content = if m.is_file() {
                digest(&path)
            } else {
                String::new()
            };
            out.push(format!(
                "{} {:o} {}:{} {} {content}",
                path.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
            ));
            if m.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    let needle = root.display().to_string();
    out.extend(
        mountinfo()
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&needle)))
            .map(|l| l.split(' ').skip(2).collect::<Vec<_>>().join(" ")),
    );
    out
}
