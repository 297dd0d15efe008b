//! The Unix sockets of a network namespace, from one `NETLINK_SOCK_DIAG` dump (AF_UNIX,
//! `UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN`): each
//! socket's inode, the device and inode of the path it is bound to (a listener and the
//! connections it accepted share their listener's path), its peer, the connections
//! waiting in its `accept()` queue, and its read queue.
//!
//! A dump sees only the caller's network namespace: a socket bound by a process in
//! another one (a pod's) is not in it. [`SocketTable::dump_in`] dumps inside another
//! namespace, on a thread of its own that joins it (`setns`) and then ends.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};
use nix::sys::stat::makedev;

/// Unix sockets, indexed by the path they are bound to and by their own inode.
#[derive(Debug, Default, Clone)]
pub struct SocketTable {
    sockets: Vec<UnixSocket>,
    by_path: HashMap<(u64, u64), Vec<usize>>,
    by_ino: HashMap<u64, usize>,
}

/// One Unix socket as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    /// The socket's inode (`socket:[INO]` in `/proc/PID/fd`).
    pub ino: u64,
    /// Device and inode of the path it is bound to, if any.
    pub path: Option<(u64, u64)>,
    /// Whether it listens (a stream or seqpacket socket in `listen()`).
    pub listening: bool,
    /// Listening: connections waiting in `accept()`; otherwise bytes queued to read.
    pub rqueue: u32,
    /// Inode of the socket it is connected to.
    pub peer: Option<u64>,
    /// Listening: the connections waiting in `accept()`, each by the inode of its client
    /// socket (the kernel reports a waiting connection by its peer).
    pub incoming: Vec<u64>,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_ICONS: u32 = 0x8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const TCP_LISTEN: u8 = 10;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl SocketTable {
    /// Dumps every Unix socket of this network namespace.
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
        req.push(nix::libc::AF_UNIX as u8);
        req.push(0); // protocol
        req.extend_from_slice(&0u16.to_ne_bytes());
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        req.extend_from_slice(&0u32.to_ne_bytes()); // ino
        let show = UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
        req.extend_from_slice(&show.to_ne_bytes());
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

    /// Dumps the Unix sockets of the network namespace `netns` (a descriptor of
    /// `/proc/PID/ns/net`), joining it on a thread of its own. Needs CAP_SYS_ADMIN.
    pub fn dump_in(netns: OwnedFd) -> nix::Result<Self> {
        std::thread::Builder::new()
            .name("ipclink-sockdiag".into())
            .spawn(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                SocketTable::dump()
            })
            .map_err(|_| Errno::EAGAIN)?
            .join()
            .map_err(|_| Errno::EIO)?
    }

    fn add(&mut self, msg: &[u8]) {
        // struct unix_diag_msg: family, type, state, pad, ino (u32), cookie[2] = 16 bytes
        let (Some(&state), Some(ino)) = (msg.get(2), u32_at(msg, 4)) else {
            return;
        };
        let mut s = UnixSocket {
            ino: u64::from(ino),
            path: None,
            listening: state == TCP_LISTEN,
            rqueue: 0,
            peer: None,
            incoming: Vec::new(),
        };
        let mut off = 16;
        while off + 4 <= msg.len() {
            let len = u16_at(msg, off).unwrap_or(0) as usize;
            let kind = u16_at(msg, off + 2).unwrap_or(0);
            if len < 4 || off + len > msg.len() {
                break;
            }
            let body = &msg[off + 4..off + len];
            match kind {
                UNIX_DIAG_VFS => {
                    if let (Some(ino), Some(dev)) = (u32_at(body, 0), u32_at(body, 4)) {
                        // The kernel reports its own dev_t (major << 20 | minor).
                        let dev = makedev(u64::from(dev >> 20), u64::from(dev & 0xfffff));
                        s.path = Some((dev, u64::from(ino)));
                    }
                }
                UNIX_DIAG_PEER => s.peer = u32_at(body, 0).map(u64::from).filter(|p| *p != 0),
                UNIX_DIAG_ICONS => {
                    s.incoming = body
                        .chunks_exact(4)
                        .filter_map(|c| u32_at(c, 0))
                        .map(u64::from)
                        .collect();
                }
                UNIX_DIAG_RQLEN => s.rqueue = u32_at(body, 0).unwrap_or(0),
                _ => {}
            }
            off += len.div_ceil(4) * 4;
        }
        self.insert(s);
    }

    fn insert(&mut self, s: UnixSocket) {
        if self.by_ino.contains_key(&s.ino) {
            return;
        }
        let i = self.sockets.len();
        if let Some(p) = s.path {
            self.by_path.entry(p).or_default().push(i);
        }
        self.by_ino.insert(s.ino, i);
        self.sockets.push(s);
    }

    /// Adds the sockets of another dump (another network namespace).
    pub fn merge(&mut self, other: SocketTable) {
        for s in other.sockets {
            self.insert(s);
        }
    }

    /// The sockets bound to the path with this device and inode: a listener, the
    /// connections it accepted, or a bound datagram or stream socket.
    pub fn bound_at(&self, dev: u64, ino: u64) -> impl Iterator<Item = &UnixSocket> {
        self.by_path
            .get(&(dev, ino))
            .into_iter()
            .flatten()
            .map(|&i| &self.sockets[i])
    }

    /// What one bound path shows: its listener's backlog, or the read queue of the
    /// socket bound there; `None` when no socket of the dumped namespaces is bound there.
    pub fn get(&self, dev: u64, ino: u64) -> Option<PathSocket> {
        let mut bound = self.bound_at(dev, ino).peekable();
        bound.peek()?;
        let mut out = PathSocket::default();
        for s in bound {
            if s.listening {
                out.listening = true;
                out.backlog += u64::from(s.rqueue);
            } else {
                out.queued += u64::from(s.rqueue);
            }
        }
        Some(out)
    }

    /// The socket with this inode.
    pub fn by_ino(&self, ino: u64) -> Option<&UnixSocket> {
        self.by_ino.get(&ino).map(|&i| &self.sockets[i])
    }

    /// Every socket known.
    pub fn sockets(&self) -> &[UnixSocket] {
        &self.sockets
    }

    /// Number of sockets known.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether no socket is known.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// The sockets bound at one path, added up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PathSocket {
    /// Whether a listener is bound there.
    pub listening: bool,
    /// Connections waiting in the listener's `accept()`.
    pub backlog: u64,
    /// Bytes queued to read on the sockets bound there (and the connections accepted).
    pub queued: u64,
}
