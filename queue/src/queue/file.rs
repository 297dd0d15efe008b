//! Making a queue file, laying it out, and reading its identity and sizes.

use std::os::unix::fs::FileExt;

use super::*;

/// Makes the queue file at `path` (it must not exist), with mode `mode`, sized and laid
/// out for `params`, and marks it ready last. Whoever makes it owns it: the caller sets
/// the owner after.
///
/// The file is made unnamed in `path`'s directory (`O_TMPFILE`), laid out, and only then
/// linked at `path`: nobody opens a queue that is not ready, and a creator killed half
/// way leaves nothing behind. An existing `path` is never replaced (`AlreadyExists`).
pub fn create(path: &Path, params: Params, mode: u32) -> io::Result<File> {
    params
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)?;
    format(&file, params)?;
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)).as_str(),
        nix::fcntl::AT_FDCWD,
        path,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )?;
    Ok(file)
}

/// Lays out `params` in `file` (empty, already created): preallocated, so that no page
/// is missing later (a member would get SIGBUS), then the header, the free list, and the
/// state `READY` last.
pub fn format(file: &File, params: Params) -> io::Result<()> {
    params
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let size = params.file_size();
    nix::fcntl::fallocate(
        file.as_fd(),
        nix::fcntl::FallocateFlags::empty(),
        0,
        size as i64,
    )?;
    let map = Map::new(file, size)?;
    let w32 = |o: u64, v: u32| map.u32(o).map(|w| w.store(v, Relaxed)).ok_or_else(broken);
    let w64 = |o: u64, v: u64| map.u64(o).map(|w| w.store(v, Relaxed)).ok_or_else(broken);
    map.write(H_MAGIC, &MAGIC).ok_or_else(broken)?;
    let abi = (ABI_MAJOR as u32) | ((ABI_MINOR as u32) << 16);
    w32(H_ABI_MAJOR, abi)?;
    w32(H_HEADER_LEN, HEADER as u32)?;
    w32(H_CAPACITY, params.capacity)?;
    w32(H_MESSAGE_SIZE, params.message_size)?;
    w32(H_STRIDE, params.stride() as u32)?;
    w32(H_MAX_MEMBERS, MAX_MEMBERS)?;
    w32(H_PRIORITIES, PRIORITIES)?;
    w32(H_READY_HEAD, NIL)?;
    w32(H_READY_TAIL, NIL)?;
    w32(H_FREE_HEAD, 0)?;
    w64(H_NEXT_SEQ, 1)?;
    for i in 0..MAX_MEMBERS {
        w32(Params::member(i) + M_INFLIGHT, NIL)?;
    }
    for i in 0..params.capacity {
        let s = params.slot(i);
        w32(
            s + S_NEXT,
            if i + 1 < params.capacity { i + 1 } else { NIL },
        )?;
        w32(s + S_PREV, NIL)?;
    }
    map.u32(H_STATE).ok_or_else(broken)?.store(READY, Release);
    Ok(())
}

/// Reads and checks the header's identity and sizes through `file` (no mapping).
pub(crate) fn read_params(file: &File) -> io::Result<Params> {
    let mut h = [0u8; 40];
    file.read_exact_at(&mut h, 0)?;
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    if h[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an ipclink queue (no IPCLQUE magic)",
        ));
    }
    let major = u16::from_le_bytes([h[8], h[9]]);
    if major != ABI_MAJOR {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("queue layout version {major}; this library reads version {ABI_MAJOR}"),
        ));
    }
    let params = Params {
        capacity: u32_at(H_CAPACITY as usize),
        message_size: u32_at(H_MESSAGE_SIZE as usize),
    };
    params
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if u32_at(H_STATE as usize) != READY
        || u32_at(H_STRIDE as usize) as u64 != params.stride()
        || u32_at(H_MAX_MEMBERS as usize) != MAX_MEMBERS
        || file.metadata()?.len() < params.file_size()
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "queue header does not match its file (not ready, or resized)",
        ));
    }
    Ok(params)
}
