"""A stranger flooding an HTTPS metrics port with bearer tokens nobody issued.

usage: flood_tokens.py PORT REQUESTS TOKEN_BYTES CONNECTIONS

Each request is `GET /metrics` with a token of TOKEN_BYTES b64 characters, new for every
request, over CONNECTIONS connections at once (a new one when the server closes one).
The certificate is not checked: the stranger wants the server's memory, not its data.
Prints one line: the count of each HTTP status seen ("0" for a connection closed without
an answer), as JSON.
"""
import json
import socket
import ssl
import sys
import threading

port, requests, size, connections = (int(a) for a in sys.argv[1:5])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
counts = {}
lock = threading.Lock()
next_request = [0]


def take():
    with lock:
        if next_request[0] >= requests:
            return None
        next_request[0] += 1
        return next_request[0]


def seen(code):
    with lock:
        counts[code] = counts.get(code, 0) + 1


def worker():
    while True:
        n = take()
        if n is None:
            return
        token = (b"%08d" % n) + b"A" * (size - 8)
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\n\r\n"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                with ctx.wrap_socket(raw) as s:
                    try:
                        s.sendall(head)
                    except OSError:
                        pass  # the server may answer and close before all of it is sent
                    answer = b""
                    while b"\r\n" not in answer:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
            code = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        except OSError:
            code = 0
        seen(str(code))


threads = [threading.Thread(target=worker) for _ in range(connections)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(counts, sort_keys=True))
