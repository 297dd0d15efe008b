//! The queue file mapped shared, with atomic access to its words and copies to and from
//! its message bytes. Every offset is checked against the mapping's length: a word that
//! another member wrote (an index, a length) can make an operation fail, never read or
//! write outside the mapping.
#![allow(unsafe_code)] // mmap, and atomics over the mapping

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

pub struct Map {
    ptr: NonNull<u8>,
    len: usize,
}

// The mapping is shared memory that other processes change anyway; every access goes
// through atomics or copies of bytes.
unsafe impl Send for Map {}
unsafe impl Sync for Map {}

impl Map {
    /// Maps `len` bytes of `file` read-write and shared.
    pub fn new(file: &File, len: u64) -> std::io::Result<Map> {
        let len = usize::try_from(len)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| std::io::Error::from_raw_os_error(nix::libc::EINVAL))?;
        // SAFETY: a fresh mapping of a file we hold; nothing else in this process
        // points into it. Other processes change its bytes, which every access below
        // allows for (atomics, copies).
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file.as_fd(),
                0,
            )
        }?;
        Ok(Map {
            ptr: ptr.cast(),
            len: len.get(),
        })
    }

    fn at(&self, offset: u64, size: u64, align: u64) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        if end > self.len as u64 || !offset.is_multiple_of(align) {
            return None;
        }
        // SAFETY: within the mapping (checked above).
        Some(unsafe { self.ptr.as_ptr().add(offset as usize) })
    }

    /// The 32-bit word at `offset`; `None` past the end or unaligned.
    pub fn u32(&self, offset: u64) -> Option<&AtomicU32> {
        let p = self.at(offset, 4, 4)?;
        // SAFETY: aligned, within the mapping, which lives as long as `self`; other
        // processes access the word only atomically too (or break their own queue).
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// The 64-bit word at `offset`.
    pub fn u64(&self, offset: u64) -> Option<&AtomicU64> {
        let p = self.at(offset, 8, 8)?;
        // SAFETY: as for `u32`.
        Some(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    /// Copies `data` into the mapping at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Option<()> {
        let p = self.at(offset, data.len() as u64, 1)?;
        // SAFETY: within the mapping; the bytes are a slot this member owns (other
        // members do not touch it until its state says so).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Some(())
    }

    /// The bytes at `offset` as a slice, for a receiver that reads them in place.
    ///
    /// # Safety
    /// Nobody may write them while the slice lives: the slot must be this member's.
    pub unsafe fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let p = self.at(offset, len, 1)?;
        // SAFETY: within the mapping; the caller vouches that nobody writes it.
        Some(unsafe { std::slice::from_raw_parts(p, len as usize) })
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, and no reference into it outlives `self`.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
