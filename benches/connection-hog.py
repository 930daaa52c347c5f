#!/usr/bin/env python3
"""One client holds many idle connections; how fast is /healthz for another?

Starts `keyledger serve` (the binary given, default target/release/keyledger)
on a fresh data directory with its default limits, then, in one run:

  1. PROBES sequential GET /healthz, each on a fresh connection from
     127.0.0.2 (another client to the server: all of 127.0.0.0/8 is this
     machine on Linux): the figures without the hog;
  2. a hog on 127.0.0.1 opens HOG connections and holds them, sending
     nothing; every one the server closes (refused over the per-client
     limit, or idle past the idle timeout) is reopened at once, for as long
     as the run lasts;
  3. after SETTLE seconds, PROBES /healthz again from 127.0.0.2.

Prints p50/p99/max of both, and the server's connection metrics. Bounded:
HOG sockets, PROBES requests, and HOLD_SECONDS at most of hogging.

Usage: benches/connection-hog.py [binary]   (env: HOG=2000 PROBES=1000
SETTLE=2 HOLD_SECONDS=60). Results of one run are in docs/reliability.md.
"""

import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/keyledger"
HOG = int(os.environ.get("HOG", "2000"))
PROBES = int(os.environ.get("PROBES", "1000"))
SETTLE = float(os.environ.get("SETTLE", "2"))
HOLD_SECONDS = float(os.environ.get("HOLD_SECONDS", "60"))
TOKEN = "operator-token-of-the-connection-hog-run"


def connect(source, addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect(addr)
    return s


def healthz(addr):
    s = connect("127.0.0.2", addr)
    s.settimeout(30)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    if not data.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"/healthz answered {data[:80]!r}")


def probe(addr, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        healthz(addr)
        times.append(time.perf_counter() - t)
    times.sort()
    pick = lambda p: times[min(len(times) - 1, len(times) * p // 100)] * 1000
    return f"p50 {pick(50):.2f} ms, p99 {pick(99):.2f} ms, max {times[-1] * 1000:.2f} ms"


def metrics(addr):
    s = connect("127.0.0.3", addr)
    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
              "Connection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return [l for l in data.decode().splitlines() if l.startswith("keyledger_http_connections")]


def hog(addr, stop, counts):
    sel = selectors.DefaultSelector()
    for _ in range(HOG):
        s = connect("127.0.0.1", addr)
        sel.register(s, selectors.EVENT_READ)
    counts["opened"] = HOG
    counts["ready"] = True
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:  # closed by the server: reopen at once
                sel.unregister(s)
                s.close()
                sel.register(connect("127.0.0.1", addr), selectors.EVENT_READ)
                counts["reopened"] = counts.get("reopened", 0) + 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()


def main():
    data = tempfile.mkdtemp(prefix="keyledger-hog-")
    env = dict(os.environ, KEYLEDGER_OPERATOR_TOKEN=TOKEN, KEYLEDGER_LOG="warn")
    server = subprocess.Popen([BIN, "--data", data + "/data", "serve", "--addr", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, env=env, text=True)
    try:
        for line in server.stdout:
            if line.startswith("listening on http://"):
                host, port = line.strip().rsplit("/", 1)[1].split(":")
                addr = (host, int(port))
                break
        print(f"{BIN}: {HOG} hog sockets, {PROBES} probes each")
        print(f"  /healthz from 127.0.0.2, no hog:      {probe(addr, PROBES)}")
        stop, counts = threading.Event(), {}
        t = threading.Thread(target=hog, args=(addr, stop, counts), daemon=True)
        started = time.monotonic()
        t.start()
        while not counts.get("ready") and time.monotonic() - started < HOLD_SECONDS:
            time.sleep(0.05)
        time.sleep(SETTLE)
        print(f"  /healthz from 127.0.0.2, {HOG} hogged: {probe(addr, PROBES)}")
        print("  " + "; ".join(metrics(addr)))
        stop.set()
        t.join(timeout=HOLD_SECONDS)
        print(f"  hog: {counts.get('reopened', 0)} connections reopened after the server closed them")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
