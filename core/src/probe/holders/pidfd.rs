//! Process descriptors: whether a process runs, and a duplicate of one of its
//! descriptors (`pidfd_open` + `pidfd_getfd`) to read a pipe's depth through.

use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Whether process `pid` exists and has not exited (a zombie has closed its files).
pub(super) fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // pid (comm) state ...: comm may hold spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X'))
    })
}

/// A descriptor referring to process `pid` (`pidfd_open`, Linux 5.3).
#[allow(unsafe_code)]
pub(super) fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: pidfd is a descriptor just returned to us and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd as i32) })
}

/// A duplicate, in this process, of descriptor `fd` of the process `pidfd` refers to
/// (`pidfd_getfd`, Linux 5.6; needs ptrace rights on the process).
#[allow(unsafe_code)]
pub(super) fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags, and returns a
    // new descriptor or -1; it reads no memory of ours.
    let dup = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(Errno::last());
    }
    // SAFETY: dup is a descriptor just returned to us and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

/// A duplicate, in this process, of descriptor `fd` of process `pid`
/// (`pidfd_open` + `pidfd_getfd`).
pub fn duplicate(pid: i32, fd: i32) -> nix::Result<OwnedFd> {
    pidfd_getfd(pidfd_open(pid)?.as_fd(), fd)
}

nix::ioctl_read_bad!(fionread, nix::libc::FIONREAD, nix::libc::c_int);

/// Bytes queued in a pipe, through one of its descriptors.
#[allow(unsafe_code)]
pub(crate) fn queued_bytes(fd: BorrowedFd<'_>) -> nix::Result<u64> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to `n`.
    unsafe { fionread(fd.as_raw_fd(), &mut n) }?;
    Ok(n.max(0) as u64)
}
