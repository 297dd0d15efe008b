//! `libipclink_queue.so`: ipclink queue channels for C programs, two ways.
//!
//! 1. Its own C ABI (`include/ipclink_queue.h`): `ipclink_queue_open(path)` and the
//!    rest, each returning a negative errno on failure.
//! 2. Loaded with `LD_PRELOAD`, it serves the POSIX `mq_*` calls of unchanged programs:
//!    `mq_open("/NAME")` opens the queue `$IPCLINK_QUEUE_DIR/mq.NAME` (default
//!    `/dev/shm`, where the link is mounted) when it exists, or creates it there with
//!    `O_CREAT` (the `mq_attr` and mode honoured, `O_EXCL` too) when this process may
//!    create files in that directory (a link with `allowCreate`). Other names, and
//!    descriptors this library did not open, go to the C library's own `mq_*`. A
//!    descriptor it opened is a real file descriptor of the queue file (close-on-exec),
//!    so its number never collides with another. `mq_notify` answers `ENOSYS` on them.
//!
//! Both keep one table of the descriptors they opened. A child made by `fork` gets
//! `EBADF` on the descriptors it inherited (sharing its parent's member record could
//! leave a dead holder looking alive) and opens the queue again.
#![allow(unsafe_code)] // a C library: C strings, out-pointers, errno, the next mq_* by dlsym

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_long, c_uint, c_void};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::libc::{self, mode_t, mq_attr, mqd_t, size_t, ssize_t, timespec};
use queue::{Params, Queue};

/// Linux's defaults for a queue made without attributes (`/proc/sys/fs/mqueue`).
const DEFAULT_CAPACITY: u32 = 10;
const DEFAULT_MESSAGE_SIZE: u32 = 8192;

struct Open {
    q: Queue,
    read: bool,
    write: bool,
    nonblock: AtomicBool,
}

impl Open {
    /// How an `mq_*` call on this descriptor waits: not at all with `O_NONBLOCK`.
    fn mode(&self, deadline: Option<Instant>) -> Deadline {
        if self.nonblock.load(Ordering::Relaxed) {
            Err(())
        } else {
            Ok(deadline)
        }
    }
}

static OPEN: LazyLock<Mutex<HashMap<c_int, Arc<Open>>>> = LazyLock::new(Default::default);

fn table() -> std::sync::MutexGuard<'static, HashMap<c_int, Arc<Open>>> {
    OPEN.lock().unwrap_or_else(|p| p.into_inner())
}

fn ours(fd: c_int) -> Option<Arc<Open>> {
    table().get(&fd).cloned()
}

fn set_errno(e: c_int) {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = e };
}

fn errno_of(e: &io::Error) -> c_int {
    e.raw_os_error().unwrap_or(match e.kind() {
        io::ErrorKind::InvalidInput => libc::EINVAL,
        io::ErrorKind::InvalidData | io::ErrorKind::Unsupported => libc::EBADMSG,
        io::ErrorKind::ResourceBusy => libc::EMFILE,
        _ => libc::EIO,
    })
}

fn fail<T: From<i8>>(e: c_int) -> T {
    set_errno(e);
    T::from(-1)
}

/// The C library's own `name` (the next definition after this library's).
fn next(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT is a valid handle.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    (!f.is_null()).then_some(f)
}

/// Where `/NAME`'s queue lives, or the errno Linux gives such a name.
fn queue_path(name: *const c_char) -> Result<PathBuf, c_int> {
    if name.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: a C string from the caller, as mq_open's contract has it.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    let rest = name.strip_prefix(b"/").ok_or(libc::EINVAL)?;
    if rest.is_empty() || rest == b"." || rest == b".." {
        return Err(libc::EINVAL);
    }
    if rest.contains(&b'/') {
        return Err(libc::EACCES);
    }
    if rest.len() > 255 - 3 {
        return Err(libc::ENAMETOOLONG);
    }
    let dir = std::env::var_os("IPCLINK_QUEUE_DIR").unwrap_or_else(|| "/dev/shm".into());
    let mut file = b"mq.".to_vec();
    file.extend_from_slice(rest);
    let file: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(&file);
    Ok(PathBuf::from(dir).join(file))
}

fn register(q: Queue, read: bool, write: bool, nonblock: bool) -> c_int {
    let fd = q.as_raw_fd();
    let old = table().insert(
        fd,
        Arc::new(Open {
            q,
            read,
            write,
            nonblock: AtomicBool::new(nonblock),
        }),
    );
    // A queue the program closed with close(2) left its entry; the number is another
    // file's now: the entry is dropped without closing it (its mapping stays).
    std::mem::forget(old);
    fd
}

/// Forgets an entry whose number the C library just handed out for one of its own
/// queues (the program closed ours with close(2)): it must not answer for that number.
fn disown(fd: c_int) {
    std::mem::forget(table().remove(&fd));
}

/// A deadline from an absolute CLOCK_REALTIME time (`mq_timed*`), or EINVAL.
fn deadline_of(abs: *const timespec) -> Result<Option<Instant>, c_int> {
    if abs.is_null() {
        return Ok(None);
    }
    // SAFETY: a timespec from the caller.
    let t = unsafe { *abs };
    if !(0..1_000_000_000).contains(&t.tv_nsec) || t.tv_sec < 0 {
        return Err(libc::EINVAL);
    }
    let at = Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok(Some(Instant::now() + at.saturating_sub(now)))
}

/// # Safety
/// As POSIX `mq_open`: `mode` and `attr` are read only with `O_CREAT` (the variadic
/// arguments a caller passes then; registers otherwise).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_open(
    name: *const c_char,
    oflag: c_int,
    mode: mode_t,
    attr: *mut mq_attr,
) -> mqd_t {
    let creat = oflag & libc::O_CREAT != 0;
    let path = match queue_path(name) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    let exists = std::fs::symlink_metadata(&path).is_ok();
    let may_create = creat && nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok();
    if !exists && !may_create {
        return match next(c"mq_open") {
            Some(f) => {
                // SAFETY: glibc's and musl's mq_open has this (variadic) signature.
                let real: unsafe extern "C" fn(*const c_char, c_int, ...) -> mqd_t =
                    unsafe { std::mem::transmute(f) };
                let fd = if creat {
                    // SAFETY: forwarding the caller's own arguments.
                    unsafe { real(name, oflag, mode as c_uint, attr) }
                } else {
                    // SAFETY: as above.
                    unsafe { real(name, oflag) }
                };
                if fd >= 0 {
                    disown(fd);
                }
                fd
            }
            None => fail(libc::ENOSYS),
        };
    }
    if exists && creat && oflag & libc::O_EXCL != 0 {
        return fail(libc::EEXIST);
    }
    if !exists {
        let params = if attr.is_null() {
            Params {
                capacity: DEFAULT_CAPACITY,
                message_size: DEFAULT_MESSAGE_SIZE,
            }
        } else {
            // SAFETY: an mq_attr from the caller (O_CREAT).
            let a = unsafe { &*attr };
            let bound =
                |v: c_long, max: u32| u32::try_from(v).ok().filter(|v| (1..=max).contains(v));
            match (
                bound(a.mq_maxmsg, queue::layout::MAX_CAPACITY),
                bound(a.mq_msgsize, queue::layout::MAX_MESSAGE_SIZE),
            ) {
                (Some(capacity), Some(message_size)) => Params {
                    capacity,
                    message_size,
                },
                _ => return fail(libc::EINVAL),
            }
        };
        match queue::create(&path, params, mode & 0o777) {
            Ok(_) => {}
            // Made by another process meanwhile: open it, unless O_EXCL.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if oflag & libc::O_EXCL != 0 {
                    return fail(libc::EEXIST);
                }
            }
            Err(e) => return fail(errno_of(&e)),
        }
    }
    let access = oflag & libc::O_ACCMODE;
    let (read, write) = match access {
        libc::O_RDONLY => (true, false),
        libc::O_WRONLY => (false, true),
        libc::O_RDWR => (true, true),
        _ => return fail(libc::EINVAL),
    };
    match Queue::open(&path) {
        Ok(q) => register(q, read, write, oflag & libc::O_NONBLOCK != 0),
        Err(e) => fail(errno_of(&e)),
    }
}

/// What glibc's `_FORTIFY_SOURCE` calls for a two-argument `mq_open` whose flags are not
/// a constant: the same open (`O_CREAT` without a mode and attributes is the caller's
/// bug, refused as glibc does, by aborting).
///
/// # Safety
/// As POSIX `mq_open` with two arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __mq_open_2(name: *const c_char, oflag: c_int) -> mqd_t {
    if oflag & libc::O_CREAT != 0 {
        eprintln!("invalid mq_open call: O_CREAT without mode and attributes");
        std::process::abort();
    }
    // SAFETY: without O_CREAT the mode and attributes are not read.
    unsafe { mq_open(name, oflag, 0, std::ptr::null_mut()) }
}

/// # Safety
/// As POSIX `mq_close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_close(fd: mqd_t) -> c_int {
    if table().remove(&fd).is_some() {
        return 0;
    }
    match next(c"mq_close") {
        // SAFETY: mq_close(mqd_t) -> int.
        Some(f) => unsafe {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(mqd_t) -> c_int>(f)(fd)
        },
        None => fail(libc::EBADF),
    }
}

/// # Safety
/// As POSIX `mq_unlink`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_unlink(name: *const c_char) -> c_int {
    let path = match queue_path(name) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if std::fs::symlink_metadata(&path).is_ok() {
        return match std::fs::remove_file(&path) {
            Ok(()) => 0,
            Err(e) => fail(errno_of(&e)),
        };
    }
    match next(c"mq_unlink") {
        // SAFETY: mq_unlink(const char *) -> int.
        Some(f) => unsafe {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*const c_char) -> c_int>(f)(
                name,
            )
        },
        None => fail(libc::ENOENT),
    }
}

/// `Err(())`: do not wait at all; else wait until then (`None`: for good).
type Deadline = Result<Option<Instant>, ()>;

/// A send on `o`; the errno on failure (the `mq_*` entry points set it, the C ABI
/// returns it negated).
fn send(
    o: &Open,
    msg: *const c_char,
    len: size_t,
    prio: c_uint,
    deadline: Deadline,
) -> Result<(), c_int> {
    if !o.write {
        return Err(libc::EBADF);
    }
    if msg.is_null() && len > 0 {
        return Err(libc::EFAULT);
    }
    let data: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the caller's buffer of `len` bytes.
        unsafe { std::slice::from_raw_parts(msg.cast(), len) }
    };
    match deadline {
        Err(()) => o.q.try_send(data, prio),
        Ok(d) => o.q.send(data, prio, d),
    }
    .map_err(|e| errno_of(&e))
}

fn receive(
    o: &Open,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
    deadline: Deadline,
) -> Result<ssize_t, c_int> {
    if !o.read {
        return Err(libc::EBADF);
    }
    if len < o.q.params().message_size as usize {
        return Err(libc::EMSGSIZE);
    }
    if msg.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's buffer of `len` bytes.
    let buf = unsafe { std::slice::from_raw_parts_mut(msg.cast::<u8>(), len) };
    let r = match deadline {
        Err(()) => o.q.try_recv(buf),
        Ok(d) => o.q.recv(buf, d),
    };
    let got = r.map_err(|e| errno_of(&e))?;
    if !prio.is_null() {
        // SAFETY: the caller's out-pointer.
        unsafe { *prio = got.priority };
    }
    Ok(got.len as ssize_t)
}

type Send = unsafe extern "C" fn(mqd_t, *const c_char, size_t, c_uint, *const timespec) -> c_int;
type Receive =
    unsafe extern "C" fn(mqd_t, *mut c_char, size_t, *mut c_uint, *const timespec) -> ssize_t;

/// # Safety
/// As POSIX `mq_send`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_send(
    fd: mqd_t,
    msg: *const c_char,
    len: size_t,
    prio: c_uint,
) -> c_int {
    // SAFETY: the caller's arguments, forwarded.
    unsafe { mq_timedsend(fd, msg, len, prio, std::ptr::null()) }
}

/// # Safety
/// As POSIX `mq_timedsend`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_timedsend(
    fd: mqd_t,
    msg: *const c_char,
    len: size_t,
    prio: c_uint,
    abs: *const timespec,
) -> c_int {
    match ours(fd) {
        Some(o) => match deadline_of(abs) {
            Ok(d) => send(&o, msg, len, prio, o.mode(d)).map_or_else(fail, |()| 0),
            Err(e) => fail(e),
        },
        None => match next(c"mq_timedsend") {
            // SAFETY: mq_timedsend's signature; the caller's arguments.
            Some(f) => unsafe {
                std::mem::transmute::<*mut c_void, Send>(f)(fd, msg, len, prio, abs)
            },
            None => fail(libc::EBADF),
        },
    }
}

/// # Safety
/// As POSIX `mq_receive`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_receive(
    fd: mqd_t,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
) -> ssize_t {
    // SAFETY: the caller's arguments, forwarded.
    unsafe { mq_timedreceive(fd, msg, len, prio, std::ptr::null()) }
}

/// # Safety
/// As POSIX `mq_timedreceive`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_timedreceive(
    fd: mqd_t,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
    abs: *const timespec,
) -> ssize_t {
    match ours(fd) {
        Some(o) => match deadline_of(abs) {
            Ok(d) => receive(&o, msg, len, prio, o.mode(d)).unwrap_or_else(fail),
            Err(e) => fail(e),
        },
        None => match next(c"mq_timedreceive") {
            // SAFETY: mq_timedreceive's signature; the caller's arguments.
            Some(f) => unsafe {
                std::mem::transmute::<*mut c_void, Receive>(f)(fd, msg, len, prio, abs)
            },
            None => fail(libc::EBADF),
        },
    }
}

fn fill(o: &Open, attr: *mut mq_attr) {
    if attr.is_null() {
        return;
    }
    let a = o.q.attrs();
    // SAFETY: the caller's mq_attr.
    unsafe {
        (*attr).mq_flags = if o.nonblock.load(Ordering::Relaxed) {
            libc::O_NONBLOCK as c_long
        } else {
            0
        };
        (*attr).mq_maxmsg = c_long::from(a.capacity);
        (*attr).mq_msgsize = c_long::from(a.message_size);
        (*attr).mq_curmsgs = c_long::from(a.waiting);
    }
}

/// # Safety
/// As POSIX `mq_getattr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_getattr(fd: mqd_t, attr: *mut mq_attr) -> c_int {
    match ours(fd) {
        Some(o) if !attr.is_null() => {
            fill(&o, attr);
            0
        }
        Some(_) => fail(libc::EFAULT),
        None => match next(c"mq_getattr") {
            // SAFETY: mq_getattr's signature.
            Some(f) => unsafe {
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn(mqd_t, *mut mq_attr) -> c_int>(
                    f,
                )(fd, attr)
            },
            None => fail(libc::EBADF),
        },
    }
}

/// # Safety
/// As POSIX `mq_setattr`: only `O_NONBLOCK` of `new.mq_flags` changes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_setattr(fd: mqd_t, new: *const mq_attr, old: *mut mq_attr) -> c_int {
    match ours(fd) {
        Some(o) => {
            if new.is_null() {
                return fail(libc::EFAULT);
            }
            fill(&o, old);
            // SAFETY: the caller's mq_attr.
            let flags = unsafe { (*new).mq_flags };
            o.nonblock
                .store(flags & libc::O_NONBLOCK as c_long != 0, Ordering::Relaxed);
            0
        }
        None => match next(c"mq_setattr") {
            // SAFETY: mq_setattr's signature.
            Some(f) => unsafe {
                std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(mqd_t, *const mq_attr, *mut mq_attr) -> c_int,
                >(f)(fd, new, old)
            },
            None => fail(libc::EBADF),
        },
    }
}

/// # Safety
/// As POSIX `mq_notify`; `ENOSYS` on ipclink queues.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_notify(fd: mqd_t, sev: *const libc::sigevent) -> c_int {
    if ours(fd).is_some() {
        return fail(libc::ENOSYS);
    }
    match next(c"mq_notify") {
        // SAFETY: mq_notify's signature.
        Some(f) => unsafe {
            std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(mqd_t, *const libc::sigevent) -> c_int,
            >(f)(fd, sev)
        },
        None => fail(libc::EBADF),
    }
}

/// How a C ABI call waits: `ms` milliseconds from now; negative: for good; 0: not at
/// all.
fn after_ms(ms: c_long) -> Deadline {
    match u64::try_from(ms) {
        Ok(0) => Err(()),
        Ok(ms) => Ok(Some(Instant::now() + Duration::from_millis(ms))),
        Err(_) => Ok(None),
    }
}

/// Opens the queue file at `path` for sending and receiving: a descriptor, or a
/// negative errno.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipclink_queue_open(path: *const c_char) -> c_int {
    if path.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: the caller's C string.
    let path = unsafe { CStr::from_ptr(path) };
    let path: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(path.to_bytes());
    let path = std::path::Path::new(path);
    match Queue::open(path) {
        Ok(q) => register(q, true, true, false),
        Err(e) => -errno_of(&e),
    }
}

/// Closes a queue `ipclink_queue_open` opened: 0 or `-EBADF`.
#[unsafe(no_mangle)]
pub extern "C" fn ipclink_queue_close(fd: c_int) -> c_int {
    if table().remove(&fd).is_some() {
        0
    } else {
        -libc::EBADF
    }
}

/// Sends `len` bytes with `priority`, waiting up to `timeout_ms` (negative: for good,
/// 0: not at all) for room: 0 or a negative errno.
///
/// # Safety
/// `msg` holds `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipclink_queue_send(
    fd: c_int,
    msg: *const c_char,
    len: size_t,
    priority: c_uint,
    timeout_ms: c_long,
) -> c_int {
    let Some(o) = ours(fd) else {
        return -libc::EBADF;
    };
    send(&o, msg, len, priority, after_ms(timeout_ms)).map_or_else(|e| -e, |()| 0)
}

/// Receives into `buf` (`cap` bytes, at least the message size), waiting up to
/// `timeout_ms`: the message's length (its priority in `*priority`), or a negative errno.
///
/// # Safety
/// `buf` holds `cap` bytes; `priority` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipclink_queue_receive(
    fd: c_int,
    buf: *mut c_char,
    cap: size_t,
    priority: *mut c_uint,
    timeout_ms: c_long,
) -> ssize_t {
    let Some(o) = ours(fd) else {
        return -(libc::EBADF as ssize_t);
    };
    receive(&o, buf, cap, priority, after_ms(timeout_ms)).unwrap_or_else(|e| -(e as ssize_t))
}

/// The queue's capacity, message size and messages waiting: 0 or `-EBADF`.
///
/// # Safety
/// Each pointer is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipclink_queue_getattr(
    fd: c_int,
    capacity: *mut c_uint,
    message_size: *mut c_uint,
    waiting: *mut c_uint,
) -> c_int {
    let Some(o) = ours(fd) else {
        return -libc::EBADF;
    };
    let a = o.q.attrs();
    for (p, v) in [
        (capacity, a.capacity),
        (message_size, a.message_size),
        (waiting, a.waiting),
    ] {
        if !p.is_null() {
            // SAFETY: the caller's out-pointer.
            unsafe { *p = v };
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names a program passes to `mq_open`: refused with Linux's errno, nothing made.
    #[test]
    fn hostile_names_are_refused_as_linux_refuses_them() {
        let long = format!("/{}", "a".repeat(253));
        for (name, want) in [
            (c"noslash".as_ptr(), libc::EINVAL),
            (c"/".as_ptr(), libc::EINVAL),
            (c"/..".as_ptr(), libc::EINVAL),
            (c"/../etc/passwd".as_ptr(), libc::EACCES),
            (c"/a/b".as_ptr(), libc::EACCES),
            (std::ptr::null(), libc::EINVAL),
        ] {
            assert_eq!(queue_path(name), Err(want));
        }
        let long = std::ffi::CString::new(long).expect("no NUL");
        assert_eq!(queue_path(long.as_ptr()), Err(libc::ENAMETOOLONG));
        let ok = queue_path(c"/jobs".as_ptr()).expect("a name");
        assert!(ok.ends_with("mq.jobs"), "{}", ok.display());
    }

    #[test]
    fn a_creating_open_refuses_bad_attributes_and_makes_nothing() {
        let dir = tempfile_dir();
        // SAFETY: setting the variable before any other thread of this test reads it.
        unsafe { std::env::set_var("IPCLINK_QUEUE_DIR", &dir) };
        for (maxmsg, msgsize) in [(0, 64), (-1, 64), (10, 0), (65_537, 64), (10, 16 << 20 | 1)] {
            // SAFETY: mq_attr is plain integers; all zero is a valid value.
            let mut attr: mq_attr = unsafe { std::mem::zeroed() };
            attr.mq_maxmsg = maxmsg;
            attr.mq_msgsize = msgsize;
            // SAFETY: a valid name and attribute.
            let fd = unsafe {
                mq_open(
                    c"/bad".as_ptr(),
                    libc::O_RDWR | libc::O_CREAT,
                    0o600,
                    &mut attr,
                )
            };
            assert_eq!(fd, -1, "{maxmsg} {msgsize}");
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EINVAL)
            );
            assert!(
                std::fs::read_dir(&dir).expect("dir").next().is_none(),
                "nothing made"
            );
        }
        let _ = std::fs::remove_dir(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ipclink-preload-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }
}
