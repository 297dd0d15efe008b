#!/usr/bin/env python3
"""A Triton-style exchange through /dev/shm with Python's multiprocessing.shared_memory:
the client creates a region, the server attaches to it by name (as Triton's system shared
memory is used), reads it and lets go, and the client then checks that its region is
still there. In two pods or two containers they need one /dev/shm: an ipclink link with
allowCreate: true mounted there in both, and one uid (Python makes the region 0600).

    triton_style.py client|server

The server unregisters the region from Python's resource tracker (3.11; `track=False` on
3.13+): without that its exit would unlink the client's region (python/cpython#82300).
Each side waits up to 300 s for the other; exit 1 with a message when it does not come.
"""

import os
import sys
import time
from multiprocessing import resource_tracker, shared_memory

REGION = "triton-input-0"
SERVED = "/dev/shm/served"


def wait_for(path, who):
    """Waits up to 300 s for `path` to exist (a loaded node may start the other pod late)."""
    for _ in range(3000):
        if os.path.exists(path):
            return
        time.sleep(0.1)
    sys.exit(f"{who}: {path} never appeared")


def client():
    region = shared_memory.SharedMemory(name=REGION, create=True, size=1 << 20)
    region.buf[:5] = b"hello"
    print(f"client: region {REGION} made", flush=True)
    wait_for(SERVED, "client")
    if not os.path.exists(f"/dev/shm/{REGION}"):
        sys.exit("client: the server unlinked the region")
    print("client: region still there after the server read it and let go", flush=True)
    region.close()
    region.unlink()


def server():
    wait_for(f"/dev/shm/{REGION}", "server")
    if sys.version_info >= (3, 13):
        region = shared_memory.SharedMemory(name=REGION, track=False)
    else:
        region = shared_memory.SharedMemory(name=REGION)
        resource_tracker.unregister(region._name, "shared_memory")
    if bytes(region.buf[:5]) != b"hello":
        sys.exit("server: the region does not hold hello")
    print("server: read hello from the client's region", flush=True)
    region.close()
    open(SERVED, "w").close()


if __name__ == "__main__":
    roles = {"client": client, "server": server}
    if len(sys.argv) != 2 or sys.argv[1] not in roles:
        sys.exit("usage: triton_style.py client|server")
    roles[sys.argv[1]]()
