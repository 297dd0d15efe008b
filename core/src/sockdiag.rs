//! The Unix sockets of this network namespace with a bound path, from one
//! `NETLINK_SOCK_DIAG` dump (AF_UNIX, `UDIAG_SHOW_VFS | UDIAG_SHOW_RQLEN`): listening or
//! not, and the read queue, keyed by the device and inode of the path they are bound to.
//! A socket bound by a process in another network namespace is not in the dump.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};
use nix::sys::stat::makedev;

/// Unix sockets of this network namespace, by (device, inode) of their bound path.
#[derive(Debug, Default)]
pub struct SocketTable {
    by_path: HashMap<(u64, u64), UnixSocket>,
}

/// One bound Unix socket as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixSocket {
    /// Whether it listens (a stream or seqpacket socket in `listen()`).
    pub listening: bool,
    /// Listening: connections waiting in `accept()`; otherwise bytes queued to read.
    pub rqueue: u32,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_RQLEN: u16 = 4;
const TCP_LISTEN: u8 = 10;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl SocketTable {
    /// Dumps every Unix socket with a bound path in this network namespace.
    pub fn dump() -> nix::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        // struct nlmsghdr (16 bytes) + struct unix_diag_req (24 bytes)
        let mut req = Vec::with_capacity(40);
        req.extend_from_slice(&40u32.to_ne_bytes());
        req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&1u32.to_ne_bytes()); // seq
        req.extend_from_slice(&0u32.to_ne_bytes()); // pid
        req.push(libc_af_unix());
        req.push(0); // protocol
        req.extend_from_slice(&0u16.to_ne_bytes());
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        req.extend_from_slice(&0u32.to_ne_bytes()); // ino
        req.extend_from_slice(&(UDIAG_SHOW_VFS | UDIAG_SHOW_RQLEN).to_ne_bytes());
        req.extend_from_slice(&[0xff; 8]); // cookie: none
        sendto(
            fd.as_raw_fd(),
            &req,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;

        let mut table = SocketTable::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32_at(&buf, off).unwrap_or(0) as usize;
                let kind = u16_at(&buf, off + 4).unwrap_or(0);
                if len < 16 || off + len > n {
                    return Err(Errno::EBADMSG);
                }
                match kind {
                    NLMSG_DONE => return Ok(table),
                    NLMSG_ERROR => {
                        let code = u32_at(&buf, off + 16).unwrap_or(0) as i32;
                        return Err(Errno::from_raw(-code));
                    }
                    SOCK_DIAG_BY_FAMILY => table.add(&buf[off + 16..off + len]),
                    _ => {}
                }
                off += len.div_ceil(4) * 4;
            }
        }
    }

    fn add(&mut self, msg: &[u8]) {
        // struct unix_diag_msg: family, type, state, pad, ino, cookie[2] = 16 bytes
        let Some(&state) = msg.get(2) else { return };
        let mut vfs = None;
        let mut rqueue = 0;
        let mut off = 16;
        while off + 4 <= msg.len() {
            let len = u16_at(msg, off).unwrap_or(0) as usize;
            let kind = u16_at(msg, off + 2).unwrap_or(0);
            if len < 4 || off + len > msg.len() {
                break;
            }
            match kind {
                UNIX_DIAG_VFS => {
                    if let (Some(ino), Some(dev)) = (u32_at(msg, off + 4), u32_at(msg, off + 8)) {
                        // The kernel reports its own dev_t (major << 20 | minor).
                        let dev = makedev(u64::from(dev >> 20), u64::from(dev & 0xfffff));
                        vfs = Some((dev, u64::from(ino)));
                    }
                }
                UNIX_DIAG_RQLEN => rqueue = u32_at(msg, off + 4).unwrap_or(0),
                _ => {}
            }
            off += len.div_ceil(4) * 4;
        }
        if let Some(key) = vfs {
            self.by_path.insert(
                key,
                UnixSocket {
                    listening: state == TCP_LISTEN,
                    rqueue,
                },
            );
        }
    }

    /// The socket bound at the path with this device and inode, if this namespace has it.
    pub fn get(&self, dev: u64, ino: u64) -> Option<UnixSocket> {
        self.by_path.get(&(dev, ino)).copied()
    }

    /// Number of bound sockets known.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether no bound socket is known.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

fn libc_af_unix() -> u8 {
    nix::libc::AF_UNIX as u8
}
