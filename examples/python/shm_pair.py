#!/usr/bin/env python3
"""A producer and a consumer that meet in /dev/shm through Python's own
multiprocessing.shared_memory: the producer creates the region (shm_open with O_CREAT),
the consumer attaches to it by name. In two pods or two containers they need one
/dev/shm: an ipclink link with allowCreate: true mounted there in both.

    shm_pair.py producer|consumer    (FRAMES, SHM_NAME, SHM_SIZE from the environment)

Layout of the region: bytes 0..8 the last frame written, 8..16 the last frame the
consumer checked, then the frame. Every frame's bytes are derived from its number, so the
consumer checks each one. Exit 0 when all frames passed; 13 when the region cannot be
created (EACCES: the link does not let members create objects).
"""

import hashlib
import os
import sys
import time
from multiprocessing import resource_tracker, shared_memory

NAME = os.environ.get("SHM_NAME", "py-frames")
SIZE = int(os.environ.get("SHM_SIZE", str(1 << 20)))
FRAMES = int(os.environ.get("FRAMES", "200"))
PATIENCE = 120.0


def frame(i):
    """The bytes of frame i: 64 KiB from a hash chain seeded with i."""
    block = hashlib.sha256(i.to_bytes(8, "little")).digest()
    return (block * (65536 // len(block)))[: SIZE - 16]


def counter(buf, at):
    return int.from_bytes(buf[at : at + 8], "little")


def wait(what, done):
    deadline = time.monotonic() + PATIENCE
    while not done():
        if time.monotonic() > deadline:
            sys.exit(f"{what}: nothing within {PATIENCE:.0f}s")
        time.sleep(0.0002)


def producer():
    try:
        shm = shared_memory.SharedMemory(name=NAME, create=True, size=SIZE)
    except PermissionError as e:
        print(f"producer: cannot create /dev/shm/{NAME}: {e}", flush=True)
        sys.exit(13)
    for i in range(1, FRAMES + 1):
        data = frame(i)
        shm.buf[16 : 16 + len(data)] = data
        shm.buf[0:8] = i.to_bytes(8, "little")
        wait(f"producer: ack of frame {i}", lambda: counter(shm.buf, 8) == i)
    print(f"producer ok {FRAMES} frames through /dev/shm/{NAME}", flush=True)
    shm.close()
    shm.unlink()


def consumer():
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            shm = shared_memory.SharedMemory(name=NAME)
            break
        except FileNotFoundError:
            if time.monotonic() > deadline:
                sys.exit(f"consumer: /dev/shm/{NAME} never appeared")
            time.sleep(0.05)
    # Python before 3.13 tracks attached regions too and would unlink this one at exit.
    resource_tracker.unregister(shm._name, "shared_memory")
    for i in range(1, FRAMES + 1):
        wait(f"consumer: frame {i}", lambda: counter(shm.buf, 0) >= i)
        data = frame(i)
        if bytes(shm.buf[16 : 16 + len(data)]) != data:
            sys.exit(f"consumer: frame {i} differs from what the producer wrote")
        shm.buf[8:16] = i.to_bytes(8, "little")
    print(f"consumer ok {FRAMES} frames checked", flush=True)
    shm.close()


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "producer":
        producer()
    elif role == "consumer":
        consumer()
    else:
        sys.exit("usage: shm_pair.py producer|consumer")
