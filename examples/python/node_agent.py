"""A node agent and its clients over a node-scoped link (docs/node-scoped.md).

agent:  serves SOCKET with Python's socketserver; answers each line with its pod and node,
        and the pod that asked, which it learns from the node plugin (it passes the
        connection to the link's `.ipclink-peer` socket; docs/node-scoped.md). It binds at
        a temporary name beside SOCKET and renames it into place, so a new agent (a
        restart or a rollout) replaces the socket its predecessor left.
client: first tries what a client's read-only mount must refuse (create, unlink, bind,
        rename) and prints each outcome, then asks the agent every half second and
        prints each answer; a refused connection is retried. With ANSWERS=N it exits
        once N requests were answered.
"""

import errno
import json
import os
import socket
import socketserver
import sys
import time

POD = os.environ.get("POD_NAME", "?")
NODE = os.environ.get("NODE_NAME", "?")


def caller(conn, root):
    """The pod on the other end of `conn`, as the node plugin tells it."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as plugin:
            plugin.settimeout(10)
            plugin.connect(os.path.join(root, ".ipclink-peer"))
            socket.send_fds(plugin, [b"?"], [conn.fileno()])
            answer = json.loads(plugin.makefile().readline())
    except (OSError, ValueError) as e:
        return f"unknown ({e})"
    return answer.get("pod") or f"unknown ({answer.get('error')})"


class Answer(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(256).decode("utf-8", "replace").strip()
        root = os.path.dirname(os.path.dirname(self.server.server_address))
        who = caller(self.request, root)
        reply = f"agent {POD} on {NODE} answers {who}: {line}\n"
        self.wfile.write(reply.encode())


def agent(path):
    spare = f"{path}.{os.getpid()}"
    server = socketserver.ThreadingUnixStreamServer(spare, Answer)
    os.chmod(spare, 0o666)  # clients run as other users; connect() needs write access
    os.rename(spare, path)
    print(f"agent {POD} on {NODE} serving {path}", flush=True)
    server.serve_forever()


def attempt(what, action):
    try:
        action()
        print(f"ALLOWED {what}", flush=True)
    except OSError as e:
        print(f"refused {what}: {errno.errorcode.get(e.errno, e.errno)}", flush=True)


def client(path):
    directory = os.path.dirname(path)
    while not os.path.exists(path):
        time.sleep(0.2)
    attempt("create", lambda: open(os.path.join(directory, "mine"), "x").close())
    attempt("unlink", lambda: os.unlink(path))
    attempt("rename", lambda: os.rename(path, os.path.join(directory, "moved")))
    stray = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    attempt("bind", lambda: stray.bind(os.path.join(directory, "fake.sock")))
    stray.close()
    limit = int(os.environ.get("ANSWERS", "0"))
    asked = answered = 0
    while not limit or answered < limit:
        asked += 1
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(path)
                s.sendall(f"hello {asked} from {POD} on {NODE}\n".encode())
                reply = s.makefile().readline().strip()
            answered += 1
            print(f"answered {answered}/{asked}: {reply}", flush=True)
        except OSError as e:
            print(f"not answered {asked}: {errno.errorcode.get(e.errno, e)}", flush=True)
        time.sleep(0.5)


if __name__ == "__main__":
    {"agent": agent, "client": client}[sys.argv[1]](sys.argv[2])
