#!/usr/bin/env python3
"""Hostile-load figures for host-mcp-gateway, with its default settings (Linux: reads /proc).

    python3 bench/hostile.py              # about 1.5 minutes
    python3 bench/hostile.py --soak 10    # a shorter soak

1. 2,000 idle connections from 127.0.0.2, then /health from 127.0.0.1: p50 and p99 (target p99 < 100 ms).
2. 1,000 open GET event streams, each on a session of its own: the gateway's RSS and threads.
3. A soak: 16 keep-alive connections calling tools for --soak seconds, 1% of the calls crashing the child:
   RSS (target: within 10%), threads and open descriptors from the start of the soak to its end, and no
   child left after the gateway stops.

Standard library only; every process it starts is stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GATEWAY = os.path.join(ROOT, "host_mcp_gateway.py")
FAKE_SERVER = os.path.join(ROOT, "tests", "fake_mcp_server.py")
TIMEOUT = 30.0


def proc_status(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def descendants(pid):
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir("/proc/%d/task" % parent) if os.path.exists("/proc/%d" % parent) else ():
            try:
                with open("/proc/%d/task/%s/children" % (parent, task)) as f:
                    kids = [int(p) for p in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def settle(pid, threads, timeout=TIMEOUT):
    """Waits until the gateway is back to about `threads` threads (connections just closed take a moment)."""
    deadline = time.monotonic() + timeout
    while proc_status(pid, "Threads") > threads + 2 and time.monotonic() < deadline:
        time.sleep(0.1)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class Gateway:
    def __init__(self, token):
        self.folder = tempfile.mkdtemp(prefix="hmg-hostile-")
        path = os.path.join(self.folder, "config.json")
        config = {"bind_port": 0, "auth_token": token, "allowed_clients": ["localhost"],
                  "servers": [{"server_id": "fake", "command": sys.executable, "args": [FAKE_SERVER],
                               "autostart": True}]}
        with open(path, "w") as f:
            json.dump(config, f)
        os.chmod(path, 0o600)
        self.log = open(os.path.join(self.folder, "gateway.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, GATEWAY, "-config", path],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for line in self.proc.stderr:  # the default log level, as a user runs it
            self.log.write(line)
            if b'"listening"' in line:
                self.port = json.loads(line)["port"]
                break
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.write(line)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=TIMEOUT)


def request(sock, data, buf=b""):
    """Sends a request and reads one Content-Length response: (status, body, rest of the buffer)."""
    sock.sendall(data)
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(buf) < length:
        buf += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), buf[:length], buf[length:]


def connect(port, source="127.0.0.1"):
    sock = socket.socket()
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def head(method, path, token, body=b"", extra=""):
    return ("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n%s\r\n" % (
        method, path, token, len(body), extra)).encode() + body


def idle_then_health(gw, token, say):
    idle = [connect(gw.port, "127.0.0.2") for _ in range(2000)]
    sock = connect(gw.port)
    req = head("GET", "/health", token)
    status, _, _ = request(sock, req)  # after every idle connection was accepted
    assert status == 200, status
    keep_alive, fresh = [], []
    for _ in range(500):
        started = time.monotonic()
        status, _, _ = request(sock, req)
        keep_alive.append(time.monotonic() - started)
    for _ in range(200):
        started = time.monotonic()
        with connect(gw.port) as one:
            status, _, _ = request(one, req)
        fresh.append(time.monotonic() - started)
    say("1. 2000 idle connections from 127.0.0.2: gateway threads %d, descriptors %d, RSS %.1f MiB" % (
        proc_status(gw.proc.pid, "Threads"), open_fds(gw.proc.pid), proc_status(gw.proc.pid, "VmRSS") / 1024))
    for name, samples in (("keep-alive", keep_alive), ("new connection", fresh)):
        say("   /health from 127.0.0.1 (%s): p50 %.2f ms, p99 %.2f ms (target p99 < 100 ms: %s)" % (
            name, percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000,
            "PASS" if percentile(samples, 0.99) < 0.1 else "MISS"))
    sock.close()
    for one in idle:
        one.close()


def event_streams(gw, token, say):
    rss_before = proc_status(gw.proc.pid, "VmRSS")
    streams = []
    for _ in range(1000):
        sock = connect(gw.port)
        sock.sendall(head("GET", "/fake/rpc", token, extra="Accept: text/event-stream\r\n"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
        streams.append(sock)
    say("2. 1000 open event streams (1000 sessions): RSS %.1f MiB (%.1f before, %.1f KiB per stream), "
        "threads %d" % (proc_status(gw.proc.pid, "VmRSS") / 1024, rss_before / 1024,
                        (proc_status(gw.proc.pid, "VmRSS") - rss_before) / 1000.0, proc_status(gw.proc.pid, "Threads")))
    for sock in streams:
        sock.close()


def soak(gw, token, seconds, say):
    stop = threading.Event()
    counts = {"ok": 0, "error": 0, "crash": 0}
    lock = threading.Lock()

    def worker(n):
        rng = random.Random(n)
        sock, buf = connect(gw.port), b""
        while not stop.is_set():
            crash = rng.random() < 0.01
            call = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                    "params": {"name": "crash", "arguments": {"code": 1}} if crash else
                    {"name": "echo", "arguments": {"text": "soak"}}}
            try:
                status, _, buf = request(sock, head("POST", "/fake/rpc", token, json.dumps(call).encode()), buf)
            except (OSError, ConnectionError):
                sock.close()
                sock, buf = connect(gw.port), b""
                continue
            with lock:
                counts["crash" if crash else "ok" if status == 200 else "error"] += 1
        sock.close()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(min(5.0, seconds / 4))  # a warm-up before the first figures
    pid = gw.proc.pid
    first = (proc_status(pid, "VmRSS"), proc_status(pid, "Threads"), open_fds(pid))
    time.sleep(seconds)
    last = (proc_status(pid, "VmRSS"), proc_status(pid, "Threads"), open_fds(pid))
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT)
    children = descendants(pid)
    growth = (last[0] - first[0]) * 100.0 / first[0]
    say("3. soak %d s, 16 connections, 1%% crashing calls: %d answered 200, %d other, %d crashes" % (
        seconds, counts["ok"], counts["error"], counts["crash"]))
    say("   RSS %.1f -> %.1f MiB (%+.1f%%, target within 10%%: %s); threads %d -> %d; descriptors %d -> %d" % (
        first[0] / 1024, last[0] / 1024, growth, "PASS" if abs(growth) <= 10 else "MISS", first[1], last[1],
        first[2], last[2]))
    return children


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--soak", type=int, default=60, help="seconds of soak (default 60)")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    token = secrets.token_hex(32)

    def say(line):
        print(line, flush=True)
    gw = Gateway(token)
    try:
        base = proc_status(gw.proc.pid, "Threads")
        say("0. idle gateway: RSS %.1f MiB, threads %d, descriptors %d" % (
            proc_status(gw.proc.pid, "VmRSS") / 1024, base, open_fds(gw.proc.pid)))
        idle_then_health(gw, token, say)
        settle(gw.proc.pid, base)
        event_streams(gw, token, say)
        settle(gw.proc.pid, base)
        children = soak(gw, token, args.soak, say)
        code = gw.stop()
        left = [pid for pid in children if alive(pid)]
        say("   gateway exit code %d; children left after its stop: %d" % (code, len(left)))
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait(TIMEOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
