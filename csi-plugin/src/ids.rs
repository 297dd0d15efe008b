//! Volume ids, volume contexts and target paths: checked before any use.

use std::collections::BTreeMap;
use std::path::Path;

use ipclink_core::LinkKey;
use ipclink_core::model::names::check_dns_label;

use crate::csi;
use crate::error::CsiError;

/// Context keys the kubelet adds with `podInfoOnMount`.
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// Pod namespace key.
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// Pod uid key.
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
/// Service account key.
pub const POD_SA: &str = "csi.storage.k8s.io/serviceAccount.name";
/// "true" for an inline ephemeral volume.
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
/// Link name key (ephemeral volumes, and persistent volumes' context).
pub const LINK: &str = "link";
/// Namespace key (persistent volumes' context).
pub const NAMESPACE: &str = "namespace";

/// Largest volume id or name we accept (CSI's limit for ids).
pub const MAX_ID: usize = 128;
/// Largest volume context, keys and values together.
pub const MAX_CONTEXT: usize = 4096;

/// A persistent volume id: `<namespace>.<link>.<uid>` (DNS labels hold no dots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeId {
    /// Namespace of the link.
    pub namespace: String,
    /// Link name.
    pub link: String,
    /// Distinguishes claims of the same link.
    pub uid: String,
}

impl VolumeId {
    /// Parses an id; `None` when it cannot be an ipclink persistent volume.
    pub fn parse(id: &str) -> Option<VolumeId> {
        let mut parts = id.split('.');
        let (ns, link, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || id.len() > MAX_ID {
            return None;
        }
        for p in [ns, link, uid] {
            check_dns_label(p).ok()?;
        }
        Some(VolumeId {
            namespace: ns.into(),
            link: link.into(),
            uid: uid.into(),
        })
    }

    /// The id as text.
    pub fn render(&self) -> String {
        format!("{}.{}.{}", self.namespace, self.link, self.uid)
    }
}

/// Rejects an empty, oversized or control-character id with InvalidArgument.
pub fn check_id(field: &'static str, id: &str) -> Result<(), CsiError> {
    if id.is_empty() {
        return Err(CsiError::invalid(field, "is required"));
    }
    if id.len() > MAX_ID {
        return Err(CsiError::invalid(
            field,
            format!("is {} bytes; at most {MAX_ID}", id.len()),
        ));
    }
    if id.chars().any(|c| c.is_control() || c == '/') {
        return Err(CsiError::invalid(
            field,
            format!("{id:?} holds a control character or '/'"),
        ));
    }
    Ok(())
}

/// Checks a volume context: size and known keys only.
pub fn check_context(ctx: &BTreeMap<String, String>) -> Result<(), CsiError> {
    let size: usize = ctx.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_CONTEXT {
        return Err(CsiError::invalid(
            "volume_context",
            format!("is {size} bytes; at most {MAX_CONTEXT}"),
        ));
    }
    for k in ctx.keys() {
        if ![
            LINK,
            NAMESPACE,
            POD_NAME,
            POD_NAMESPACE,
            POD_UID,
            POD_SA,
            EPHEMERAL,
        ]
        .contains(&k.as_str())
        {
            return Err(CsiError::invalid(
                "volume_context",
                format!(
                    "unknown key {k:?}; allowed: link, namespace and the csi.storage.k8s.io pod keys"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that a target path is absolute and normalized (no `.`, `..` or empty parts).
pub fn check_target(field: &'static str, path: &str) -> Result<(), CsiError> {
    if path.is_empty() {
        return Err(CsiError::invalid(field, "is required"));
    }
    if path.contains('\0') || path.chars().any(char::is_control) {
        return Err(CsiError::invalid(field, "holds a control character"));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(CsiError::invalid(
            field,
            format!("{path:?} is not absolute"),
        ));
    }
    // Raw segments: Path::components() would quietly drop a "." in the middle.
    if path
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(CsiError::invalid(
            field,
            format!("{path:?} is not a normalized path (no '.', '..' or '//')"),
        ));
    }
    if p.parent().is_none() || p.file_name().is_none() {
        return Err(CsiError::invalid(
            field,
            format!("{path:?} has no parent directory"),
        ));
    }
    Ok(())
}

/// Only mounted directories: block access makes no sense for a link.
pub fn check_capability(cap: &csi::VolumeCapability) -> Result<(), CsiError> {
    use csi::volume_capability::AccessType;
    match cap.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) => {
            return Err(CsiError::invalid(
                "volume_capability",
                "block access is not supported; an ipclink volume is a directory (use mount)",
            ));
        }
        None => {
            return Err(CsiError::invalid(
                "volume_capability",
                "access_type is required (mount)",
            ));
        }
    }
    match cap.access_mode.as_ref().map(|m| m.mode) {
        Some(m) if m != 0 => Ok(()),
        _ => Err(CsiError::invalid(
            "volume_capability",
            "access_mode is required",
        )),
    }
}

/// (namespace, link) of a publish request: from the id for a persistent volume, from the
/// context for an inline ephemeral one. A pod of another namespace is refused.
pub(crate) fn resolve_link(
    volume_id: &str,
    ctx: &BTreeMap<String, String>,
) -> Result<LinkKey, CsiError> {
    let pod_ns = ctx.get(POD_NAMESPACE);
    if ctx.get(EPHEMERAL).map(String::as_str) == Some("true") {
        let link = ctx.get(LINK).ok_or_else(|| {
            CsiError::invalid(
                "volume_context",
                "an inline volume needs volumeAttributes.link",
            )
        })?;
        check_dns_label(link)
            .map_err(|e| CsiError::invalid("volume_context", format!("link: {e}")))?;
        let ns = pod_ns.ok_or_else(|| {
            CsiError::invalid(
                "volume_context",
                "no pod namespace: the CSIDriver needs podInfoOnMount: true",
            )
        })?;
        check_dns_label(ns)
            .map_err(|e| CsiError::invalid("volume_context", format!("pod namespace: {e}")))?;
        return Ok(LinkKey::new(ns, link));
    }
    let id = VolumeId::parse(volume_id)
        .ok_or_else(|| CsiError::NotFound(format!("{volume_id:?} is not an ipclink volume id")))?;
    for (key, want) in [(NAMESPACE, &id.namespace), (LINK, &id.link)] {
        if let Some(v) = ctx.get(key)
            && v != want
        {
            return Err(CsiError::invalid(
                "volume_context",
                format!("{key} {v:?} does not match the volume id"),
            ));
        }
    }
    if let Some(ns) = pod_ns
        && ns != &id.namespace
    {
        return Err(CsiError::Denied(format!(
            "a pod of namespace {ns} may not mount link {}/{}",
            id.namespace, id.link
        )));
    }
    Ok(LinkKey::new(id.namespace, id.link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_round_trip_and_refuse_traversal() {
        let id = VolumeId::parse("vision.frames.abc123").expect("valid");
        assert_eq!(id.render(), "vision.frames.abc123");
        for bad in [
            "", "..", "../x", "a/..", "/etc", ".", "a//b", "a.b", "a.b.c.d", "A.b.c", "a.b.c\n",
            "a\0.b.c",
        ] {
            assert!(VolumeId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn targets_must_be_absolute_and_normalized() {
        assert!(check_target("t", "/var/lib/kubelet/pods/x/volumes/y/mount").is_ok());
        for bad in [
            "", "rel/path", "/a/../b", "/a/./b", "/a//b", "/", "/a\0b", "/a\nb",
        ] {
            assert!(check_target("t", bad).is_err(), "{bad:?}");
        }
    }
}
