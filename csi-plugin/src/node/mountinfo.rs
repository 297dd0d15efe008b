//! Publications rebuilt from `/proc/self/mountinfo` when the state file is lost: the
//! mount table is the truth about what is bound where.

use std::collections::HashMap;
use std::path::Path;

use ipclink_core::LinkKey;
use ipclink_core::model::names::check_dns_label;

use super::{Publication, Publications};

/// Rebuilds the publications from one read of `/proc/self/mountinfo`: every mount of a
/// link's tmpfs (same device) outside the links directory is a publication. Volume ids are
/// not in mountinfo; they are filled in by the CO's next publish of the same target.
pub(super) fn rebuild_from_mountinfo(links_dir: &Path) -> Publications {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let base = links_dir.to_string_lossy().into_owned();
    // mountinfo: id parent major:minor root mount-point options ... - fstype source super-options
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split(' ').collect())
        .filter(|f: &Vec<&str>| f.len() > 5)
        .collect();
    let mut links: HashMap<&str, LinkKey> = HashMap::new();
    for f in &rows {
        if let Some(rest) = f[4].strip_prefix(&base)
            && let Some((ns, name)) = rest.trim_start_matches('/').split_once('/')
            && check_dns_label(ns).is_ok()
            && check_dns_label(name).is_ok()
        {
            links.insert(f[2], LinkKey::new(ns, name));
        }
    }
    let mut out = Publications::default();
    for f in &rows {
        if f[4].starts_with(&base) || f[3] != "/" {
            continue;
        }
        if let Some(key) = links.get(f[2]) {
            // Octal escapes (\040 for a space) are how mountinfo writes odd paths.
            let target = ipclink_core::fs::unescape_mountinfo(f[4]);
            out.by_target.insert(
                target,
                Publication {
                    volume_id: String::new(),
                    namespace: key.namespace.clone(),
                    link: key.name.clone(),
                    readonly: f[5].split(',').any(|o| o == "ro"),
                    // Until the next publish says: a read-only mount is taken for a
                    // client's (which may not ask who calls).
                    client: f[5].split(',').any(|o| o == "ro"),
                    pod: None,
                    pod_uid: None,
                },
            );
        }
    }
    out
}
