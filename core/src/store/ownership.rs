//! Who owns a declared object on disk, and how that keeps members from removing it.
//!
//! In a link members may write to (`allowCreate`: a sticky root owned by root), the
//! sticky bit lets a member remove or rename only entries it owns. A declared object is
//! therefore owned by root, not by the spec's owner uid, and a POSIX access ACL gives
//! that uid the owner's bits: members open, map, read and write it exactly as the spec's
//! owner, group and mode say, but none of them, the spec's owner included, can unlink,
//! rename or replace it (EPERM). This costs no mount (a bind mount per object would be
//! copied into every publication: objects × publications mounts).
//!
//! With an extended ACL the group bits `stat` shows are the ACL mask (the owner's and
//! the group's bits together); the group's own bits are in the ACL. Kernel facts relied
//! on: `chmod` of a file with an extended ACL sets `user::`, `mask::` and `other::`
//! from the mode; setting the access ACL sets the mode's permission bits from it and
//! keeps the others (the sticky bit of a socket directory).

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::model::validate::ObjectPlan;

/// The access ACL's extended attribute.
const ACL_XATTR: &str = "system.posix_acl_access";
/// `POSIX_ACL_XATTR_VERSION`.
const ACL_VERSION: u32 = 2;
// Entry tags of the xattr form (`ACL_USER_OBJ` ...).
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// The id of entries that name no user or group.
const UNDEFINED_ID: u32 = u32::MAX;
/// The longest ACL read back: ours have five entries (4 + 5 × 8 bytes).
const ACL_READ_MAX: usize = 256;

/// An object's owner, mode as `stat` shows it, and access ACL (none: the mode alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub acl: Option<Vec<u8>>,
}

impl Ownership {
    /// How `obj` is owned: as the spec says, or, when `guarded` (a root members may write
    /// to, and this process can give files away), by root with the spec's owner in the
    /// ACL. An object the spec gives to root needs no ACL.
    pub fn of(obj: &ObjectPlan, guarded: bool) -> Self {
        if !guarded || obj.uid == 0 {
            return Ownership {
                uid: obj.uid,
                gid: obj.gid,
                mode: obj.mode,
                acl: None,
            };
        }
        let (u, g, o) = ((obj.mode >> 6) & 7, (obj.mode >> 3) & 7, obj.mode & 7);
        let entry = |tag: u16, perm: u32, id: u32| {
            let mut e = Vec::with_capacity(8);
            e.extend_from_slice(&tag.to_le_bytes());
            e.extend_from_slice(&(perm as u16).to_le_bytes());
            e.extend_from_slice(&id.to_le_bytes());
            e
        };
        // Entries sorted by tag, as the kernel wants them.
        let mut acl = ACL_VERSION.to_le_bytes().to_vec();
        acl.extend(entry(USER_OBJ, u, UNDEFINED_ID));
        acl.extend(entry(USER, u, obj.uid));
        acl.extend(entry(GROUP_OBJ, g, UNDEFINED_ID));
        acl.extend(entry(MASK, u | g, UNDEFINED_ID));
        acl.extend(entry(OTHER, o, UNDEFINED_ID));
        Ownership {
            uid: 0,
            gid: obj.gid,
            mode: (obj.mode & 0o7000) | (u << 6) | ((u | g) << 3) | o,
            acl: Some(acl),
        }
    }
}

/// The `/proc/self/fd` path of a descriptor: reaches exactly the object it holds, also
/// for an `O_PATH` descriptor (which the `f*xattr` calls do not take).
fn magic(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

/// The extended attribute ipclink marks the objects it makes with: the name it made
/// the object at. `trusted.` attributes need `CAP_SYS_ADMIN` to read or write, so no
/// member can forge one; a hard link a member makes to a declared object carries the
/// original name, so it is not taken for an object made at its own name.
const MADE_XATTR: &str = "trusted.ipclink.made";

/// Marks the object `fd` holds as made by ipclink at `name`.
pub(crate) fn mark_made(fd: BorrowedFd<'_>, name: &str) -> nix::Result<()> {
    rustix::fs::setxattr(
        magic(fd).as_str(),
        MADE_XATTR,
        name.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(errno)
}

/// Takes ipclink's mark off the object `fd` holds (it is being removed; a member may
/// keep a hard link to it). Unmarked already is fine.
pub(crate) fn unmark(fd: BorrowedFd<'_>) -> nix::Result<()> {
    match rustix::fs::removexattr(magic(fd).as_str(), MADE_XATTR) {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

/// Whether the object `fd` holds was made by ipclink at `name`.
pub(crate) fn made_at(fd: BorrowedFd<'_>, name: &str) -> bool {
    let mut buf = [0u8; 256];
    rustix::fs::getxattr(magic(fd).as_str(), MADE_XATTR, &mut buf[..])
        .is_ok_and(|n| &buf[..n] == name.as_bytes())
}

/// The access ACL of the object `fd` holds; `None` when it has none (the mode alone).
pub(crate) fn read_acl(fd: BorrowedFd<'_>) -> nix::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; ACL_READ_MAX];
    match rustix::fs::getxattr(magic(fd).as_str(), ACL_XATTR, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(rustix::io::Errno::NODATA) => Ok(None),
        // Longer than any ACL of ours: it differs.
        Err(rustix::io::Errno::RANGE) => Ok(Some(Vec::new())),
        Err(e) => Err(errno(e)),
    }
}

/// Gives the object `fd` holds the access ACL `acl`, or removes the one it has.
pub(crate) fn write_acl(fd: BorrowedFd<'_>, acl: Option<&[u8]>) -> nix::Result<()> {
    let path = magic(fd);
    match acl {
        Some(a) => {
            rustix::fs::setxattr(path.as_str(), ACL_XATTR, a, rustix::fs::XattrFlags::empty())
                .map_err(|e| match e {
                    // No ACLs on this filesystem: the kernel lacks CONFIG_TMPFS_POSIX_ACL.
                    rustix::io::Errno::OPNOTSUPP => Errno::EOPNOTSUPP,
                    e => errno(e),
                })
        }
        None => match rustix::fs::removexattr(path.as_str(), ACL_XATTR) {
            Ok(()) | Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(errno(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate::ObjectKind;

    fn obj(uid: u32, gid: u32, mode: u32) -> ObjectPlan {
        ObjectPlan {
            name: "events".into(),
            field: "spec.channels[0]".into(),
            kind: ObjectKind::Fifo,
            uid,
            gid,
            mode,
        }
    }

    #[test]
    fn a_guarded_object_is_roots_with_its_owner_in_the_acl() {
        let o = Ownership::of(&obj(1000, 2000, 0o620), true);
        assert_eq!((o.uid, o.gid, o.mode), (0, 2000, 0o660));
        let acl = o.acl.expect("acl");
        assert_eq!(acl.len(), 4 + 5 * 8);
        assert_eq!(&acl[..4], &2u32.to_le_bytes());
        // user:1000:rw- comes second, with the owner's bits.
        assert_eq!(&acl[12..20], &[2, 0, 6, 0, 0xe8, 3, 0, 0]);
        // The group keeps its own bits (w), the mask is rw.
        assert_eq!(&acl[20..24], &[4, 0, 2, 0]);
        assert_eq!(&acl[28..32], &[0x10, 0, 6, 0]);
        // The sticky bit of a socket directory stays.
        assert_eq!(Ownership::of(&obj(1000, 2000, 0o1770), true).mode, 0o1770);
        // Unguarded, or owned by root anyway: the spec's owner and mode, no ACL.
        assert_eq!(
            Ownership::of(&obj(1000, 2000, 0o620), false),
            Ownership {
                uid: 1000,
                gid: 2000,
                mode: 0o620,
                acl: None
            }
        );
        assert_eq!(Ownership::of(&obj(0, 2000, 0o660), true).acl, None);
    }
}
