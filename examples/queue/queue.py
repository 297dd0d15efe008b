"""A queue channel from Python through ctypes and libipclink_queue.so's C ABI
(include/ipclink_queue.h): no module to install, Python's standard library only.

    python3 queue.py send PATH COUNT   send COUNT messages "SEQ PRIO", priorities 0..2
    python3 queue.py recv PATH COUNT   receive COUNT, check that each priority's arrive in
                                       the order sent, print the queue's attributes

PATH is the queue's file in the link (a channel `jobs` is /dev/shm/mq.jobs where the
link is mounted at /dev/shm). $IPCLINK_QUEUE_LIB names the library (default: the
loader's search path, e.g. /libipclink_queue.so in the example image or LD_LIBRARY_PATH).
Each call answers a negative errno on failure: raised here as OSError.
"""

import ctypes
import os
import sys


def load(path):
    lib = ctypes.CDLL(path, use_errno=True)
    lib.ipclink_queue_open.argtypes = [ctypes.c_char_p]
    lib.ipclink_queue_open.restype = ctypes.c_int
    lib.ipclink_queue_close.argtypes = [ctypes.c_int]
    lib.ipclink_queue_close.restype = ctypes.c_int
    lib.ipclink_queue_send.argtypes = [
        ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_long]
    lib.ipclink_queue_send.restype = ctypes.c_int
    lib.ipclink_queue_receive.argtypes = [
        ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_uint), ctypes.c_long]
    lib.ipclink_queue_receive.restype = ctypes.c_ssize_t
    lib.ipclink_queue_getattr.argtypes = [ctypes.c_int] + [ctypes.POINTER(ctypes.c_uint)] * 3
    lib.ipclink_queue_getattr.restype = ctypes.c_int
    return lib


def check(result, what):
    """A negative result is -errno: raised as OSError naming the call."""
    if result < 0:
        raise OSError(-result, f"{what}: {os.strerror(-result)}")
    return result


class Queue:
    """One queue channel, open for sending and receiving."""

    def __init__(self, lib, path):
        self.lib = lib
        self.fd = check(lib.ipclink_queue_open(os.fsencode(path)), f"open {path}")
        capacity, size, waiting = self.attrs()
        self.buf = ctypes.create_string_buffer(size)

    def attrs(self):
        """(capacity, message size, messages waiting)."""
        c, s, w = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
        check(self.lib.ipclink_queue_getattr(
            self.fd, ctypes.byref(c), ctypes.byref(s), ctypes.byref(w)), "getattr")
        return c.value, s.value, w.value

    def send(self, data, priority=0, timeout_ms=-1):
        check(self.lib.ipclink_queue_send(self.fd, data, len(data), priority, timeout_ms), "send")

    def receive(self, timeout_ms=-1):
        """(bytes, priority) of the oldest message of the highest priority."""
        prio = ctypes.c_uint()
        n = check(self.lib.ipclink_queue_receive(
            self.fd, self.buf, len(self.buf), ctypes.byref(prio), timeout_ms), "receive")
        return self.buf.raw[:n], prio.value

    def close(self):
        check(self.lib.ipclink_queue_close(self.fd), "close")


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("send", "recv"):
        print("usage: queue.py send|recv PATH COUNT", file=sys.stderr)
        return 2
    role, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    q = Queue(load(os.environ.get("IPCLINK_QUEUE_LIB", "libipclink_queue.so")), path)
    if role == "send":
        for seq in range(count):
            q.send(f"{seq} {seq % 3}".encode(), priority=seq % 3)
        print(f"queue.py: sent {count}")
    else:
        capacity, size, _ = q.attrs()
        print(f"queue.py: capacity {capacity} message size {size}")
        last = {}
        for _ in range(count):
            data, prio = q.receive(timeout_ms=60_000)
            seq, sent_prio = (int(x) for x in data.split())
            if sent_prio != prio or seq <= last.get(prio, -1):
                print(f"queue.py: {data!r} out of order or with priority {prio}")
                return 1
            last[prio] = seq
        try:
            q.receive(timeout_ms=0)
            print("queue.py: a message more than was sent")
            return 1
        except OSError as e:
            empty = os.strerror(e.errno)
        print(f"queue.py: received {count}, in order within each priority; then: {empty}")
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
