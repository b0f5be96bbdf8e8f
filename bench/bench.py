#!/usr/bin/env python3
"""Benchmark for host-mcp-gateway: added latency, requests per second and memory, in one run.

    python3 bench/bench.py              # full run: ~10 s per load level, about 2.5 minutes in all
    python3 bench/bench.py --quick      # 2 s per load level, fewer latency samples
    python3 bench/bench.py --json       # machine-readable results on stdout

What it measures, all with the same child (bench/fast_server.py, or the gateway's --example-server):
  1. latency of one `tools/call` round trip on one keep-alive connection through the gateway, minus the same
     call made to the child directly on stdio (the gateway's added latency), median and p99;
  2. requests per second at 1, 16 and 64 keep-alive connections, with wrk when it is installed, else with a
     load generator of several processes on raw sockets;
  3. the gateway's RSS at idle, after the load, and at its peak;
  4. the same against supergateway 4.0.0 (stateful Streamable HTTP) as the reference, when it is found:
     $HMG_SUPERGATEWAY, else the CI cache ~/.cache/host-mcp-gateway-ci/env-*/npm/node_modules/.bin/supergateway.
Latency and load through the gateway are measured for both protocol eras (--protocol): "legacy", the sessionless
JSON-RPC call of the handshake-era revisions, and "modern", the stateless call of revision 2026-07-28 (its
per-request _meta envelope and MCP-Protocol-Version / Mcp-Method / Mcp-Name headers), in halves run legacy,
modern, modern, legacy at each level.
Then it checks three targets: gateway (legacy) req/s at 16 connections >= 3x supergateway's, added median
latency <= 0.15 ms, and modern req/s at 16 connections >= 0.9x legacy req/s.

Python 3.9+, standard library only. Traffic goes to 127.0.0.1 only; every process it starts is stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import glob
import json
import multiprocessing
import os
import platform
import re
import resource
import secrets
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GATEWAY = os.path.join(os.path.dirname(HERE), "host_mcp_gateway.py")
FAST_SERVER = os.path.join(HERE, "fast_server.py")
SERVER_ID = "bench"
HOST = "127.0.0.1"

TARGET_RPS_RATIO = 3.0  # gateway req/s at 16 connections vs supergateway's
TARGET_ADDED_MEDIAN_MS = 0.15
TARGET_CONNECTIONS = 16
TARGET_MODERN_RATIO = 0.9  # modern req/s at 16 connections vs legacy's: the modern path costs at most 10% more
SLOW_WAKEUP_MS = 0.04  # a direct stdio round trip slower than this means CPUs are slow to wake from idle
NOISY_CPU_PCT = 10.0  # other processes using more than this (% of one core) in a phase make its figures suspect

ECHO_TEXT = "bench"
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": ECHO_TEXT}}}
INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "bench", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}

# Protocol eras of the gateway's /{server_id}/rpc. legacy: the call above, sessionless, no MCP headers. modern:
# revision 2026-07-28, stateless: the version and the client's capabilities in params._meta of every request, and
# headers mirroring the body (Mcp-Name is required for tools/call).
LEGACY, MODERN = "legacy", "modern"
PROTOCOLS = (LEGACY, MODERN)
MODERN_VERSION = "2026-07-28"
MODERN_CALL = dict(CALL, params=dict(CALL["params"], _meta={
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"}}))
PROTOCOL_CALLS = {LEGACY: CALL, MODERN: MODERN_CALL}
PROTOCOL_HEADERS = {LEGACY: {}, MODERN: {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": "tools/call",
                                         "Mcp-Name": "echo", "Accept": "application/json, text/event-stream"}}
START_TIMEOUT_S = 30.0


def dumps(value):
    return json.dumps(value, separators=(",", ":")).encode()


# Processes: memory and CPU ------------------------------------------------------------------------------------

def rss_kib(pid, field="VmRSS"):
    """Resident memory in KiB: /proc on Linux (VmRSS now, VmHWM peak), `ps` elsewhere (no peak there)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return None
    except FileNotFoundError:
        pass
    if field != "VmRSS":
        return None
    try:
        return int(subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True).stdout)
    except (OSError, ValueError):
        return None


def cpu_seconds(pid):
    """User + system CPU time of a process (Linux only; None elsewhere)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid):
    """Every process below `pid` (Linux only): the children a gateway runs."""
    found = []
    for path in glob.glob("/proc/%d/task/*/children" % pid):
        try:
            with open(path) as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid] + descendants(kid)
    return found


def tree_cpu(pids):
    values = [cpu_seconds(pid) for pid in pids]
    return None if None in values else sum(values)


def machine_busy_seconds():
    """CPU time used on the whole machine (Linux /proc/stat: user, nice, system and steal; interrupt time is
    left out, since loopback traffic is counted there rather than to the processes that cause it)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (fields[0] + fields[1] + fields[2] + fields[7]) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    """CPU of this process's reaped children: the load generator (wrk or the worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpuidle_driver():
    try:
        with open("/sys/devices/system/cpu/cpuidle/current_driver") as f:
            return f.read().strip()
    except OSError:
        return None


def stop_process(proc, grace=5.0):
    """SIGTERM its process group (its children too), then SIGKILL after a grace."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # also whatever it left behind in its group
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# HTTP on raw sockets ------------------------------------------------------------------------------------------
# http.client costs tens of microseconds per call in the client itself; at 0.1 ms scale that would be counted as
# the gateway's. These helpers send pre-built bytes and parse only what they must.

def http_request_bytes(port, path, body, headers):
    lines = ["POST %s HTTP/1.1" % path, "Host: %s:%d" % (HOST, port), "Content-Type: application/json",
             "Content-Length: %d" % len(body)]
    lines += ["%s: %s" % item for item in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def call_parts(protocol=LEGACY):
    """The JSON text of one tools/call of `protocol` before and after its id: ('{..."id":', ',"method":...}')."""
    before, after = dumps(dict(PROTOCOL_CALLS[protocol], id=0)).decode().split('"id":0', 1)
    return before + '"id":', after


def call_maker(port=None, path=None, headers=None, protocol=LEGACY):
    """A function id -> the bytes of one tools/call with that id: an HTTP request when a path is given, else a
    stdio line. Every call carries its own id: a stateful MCP session (supergateway's) maps answers to requests
    by id, so concurrent requests with one id would be answered on the wrong connection or not at all.
    `headers` are sent as given: the protocol's own are added by Target.headers_for."""
    before, after = [part.encode() for part in call_parts(protocol)]
    if path is None:
        return lambda n: before + str(n).encode() + after + b"\n"
    head = http_request_bytes(port, path, b"", headers).replace(b"Content-Length: 0\r\n", b"")[:-2]
    length = b"Content-Length: %d\r\n\r\n"
    fixed = len(before) + len(after)

    def make(n):
        digits = str(n).encode()
        return head + length % (fixed + len(digits)) + before + digits + after
    return make


def parse_response(buf):
    """(bytes consumed, status, head, body) for the first complete response in `buf`, or None if incomplete.
    Knows Content-Length and chunked bodies (supergateway answers with chunked event streams)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    start = end + 4
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        eol = head.find(b"\r\n", i + 2)
        stop = start + int(head[i + 17:eol if eol > 0 else len(head)])
        if len(buf) < stop:
            return None
        return stop, int(head[9:12]), head, bytes(buf[start:stop])
    if b"\r\ntransfer-encoding: chunked" not in head:
        return len(buf), int(head[9:12]), head, bytes(buf[start:])  # bodiless (202 without a length is not sent)
    body, pos = [], start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            last = buf.find(b"\r\n\r\n", eol)  # end of the (empty) trailer section
            if last < 0:
                return None
            return last + 4, int(head[9:12]), head, b"".join(body)
        if len(buf) < eol + 2 + size + 2:
            return None
        body.append(bytes(buf[eol + 2:eol + 2 + size]))
        pos = eol + 2 + size + 2


def header_value(head, name):
    match = re.search(rb"\r\n" + name.lower().encode() + rb":[ \t]*([^\r\n]*)", head)
    return match.group(1).decode("latin-1").strip() if match else None


def connect(port):
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # what every HTTP client does for small requests
    return sock


def exchange(sock, request, buf):
    """Sends one request and returns (status, head, body); `buf` (a bytearray) carries bytes across calls."""
    sock.sendall(request)
    while True:
        parsed = parse_response(buf)
        if parsed is not None:
            consumed, status, head, body = parsed
            del buf[:consumed]
            return status, head, body
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        buf += data


def rpc_result(body):
    """The JSON-RPC message in a response body: plain JSON or the data line of an event stream."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        return json.loads(text)
    for line in text.splitlines():
        if line.startswith("data:"):
            return json.loads(line[5:])
    raise ValueError("no JSON-RPC message in: %r" % text[:200])


def echo_ok(message):
    """True when a tools/call answer carries the echoed text (fast_server: as the text; --example-server: as
    structuredContent, with the text holding it as JSON)."""
    result = message.get("result") or {}
    content = result.get("content") or [{}]
    return content[0].get("text") == ECHO_TEXT or (result.get("structuredContent") or {}).get("text") == ECHO_TEXT


def check_echo(status, body, who):
    if status != 200:
        raise RuntimeError("%s answered tools/call with HTTP %d: %r" % (who, status, body[:300]))
    message = rpc_result(body)
    if not echo_ok(message):
        raise RuntimeError("%s answered tools/call wrongly: %r" % (who, message))


# Targets: the child on stdio, the gateway, supergateway --------------------------------------------------------

def log_records(path):
    """The JSON records of a gateway's log file so far, skipping lines that are not JSON."""
    with open(path, "rb") as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def child_command(kind):
    if kind == "example":
        return [sys.executable, GATEWAY, "--example-server"]
    return [sys.executable, FAST_SERVER]


class StdioChild:
    """The child run directly: one request line out, one response line back."""

    def __init__(self, command):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self._fd = self.proc.stdin.fileno()
        self.call(dumps(INITIALIZE) + b"\n")
        os.write(self._fd, dumps(INITIALIZED) + b"\n")

    def call(self, line):
        os.write(self._fd, line)  # unbuffered: one write per request, as the gateway does
        return self.proc.stdout.readline()

    def close(self):
        self.proc.stdin.close()
        stop_process(self.proc)


class Target:
    """A running HTTP front for the child: what the latency and load phases need to talk to it."""
    name = ""
    proc = None
    port = 0
    path = ""
    headers = {}
    protocols = (LEGACY,)  # the protocol eras it serves

    def request(self, body):
        return http_request_bytes(self.port, self.path, body, self.headers)

    def headers_for(self, protocol):
        return dict(self.headers, **PROTOCOL_HEADERS[protocol])

    def call_maker(self, protocol=LEGACY):
        return call_maker(self.port, self.path, self.headers_for(protocol), protocol)

    def child_pids(self):
        return descendants(self.proc.pid)

    def stop(self):
        stop_process(self.proc)

    @contextlib.contextmanager
    def stopped_on_failure(self):
        """A start that fails half-way must not leave the process running."""
        try:
            yield
        except BaseException:
            self.stop()
            raise


class GatewayTarget(Target):
    name = "host-mcp-gateway"
    protocols = PROTOCOLS

    def __init__(self, workdir, child_cmd, log_level, wrapper=()):
        token = secrets.token_hex(32)
        # Port 0 and the "listening" log line tell the port; below info level that line is not written, so a
        # free port is picked here instead.
        port = 0 if log_level in ("debug", "info") else free_port()
        config = {"bind_host": HOST, "bind_port": port, "auth_token": token, "allowed_clients": ["localhost"],
                  "servers": [{"server_id": SERVER_ID, "command": child_cmd[0], "args": child_cmd[1:],
                               "autostart": True, "restart_policy": "never"}]}
        config_path = os.path.join(workdir, "gateway.json")
        with open(os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(config, f)
        # Its log goes to a file, as under launchd: a pipe nobody drains would stall it, a terminal would slow it.
        self.log_path = os.path.join(workdir, "gateway.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*wrapper, sys.executable, GATEWAY, "-config", config_path,
                                          "--log-level", log_level],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True)
        self.path = "/%s/rpc" % SERVER_ID
        self.headers = {"Authorization": "Bearer " + token}
        with self.stopped_on_failure():
            self.port = self._wait_listening(port)
            self._wait_ready(token)
        self.child_era, self.child_start_ms = self._child_start()

    def _child_start(self):
        """The era the gateway speaks with its child and how long from the child's start to ready, from the log
        (None below info level). With child_protocol auto the gateway probes a new child with server/discover
        first: a handshake-era child must refuse it at once (fast_server answers -32601), not stay silent."""
        deadline = time.monotonic() + 2.0  # /health may say ready a moment before the line is written
        while True:
            started = ready = era = None
            for record in log_records(self.log_path):
                if record.get("event") == "child_started" and started is None:
                    started = record.get("ts")
                elif record.get("event") == "child_ready" and ready is None:
                    ready, era = record.get("ts"), record.get("era")
            if ready or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not (started and ready):
            return era, None
        stamp = lambda ts: datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        return era, round((stamp(ready) - stamp(started)).total_seconds() * 1000.0, 1)

    def _wait_listening(self, port):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if port:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    return port
                except OSError:
                    pass
            for record in log_records(self.log_path):
                if record.get("event") == "listening":
                    return record["port"]
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError("the gateway did not start; its log:\n" + open(self.log_path).read()[-3000:])

    def _wait_ready(self, token):
        """Until GET /health says the child is ready (it starts the child after it listens)."""
        request = ("GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % token).encode()
        deadline = time.monotonic() + START_TIMEOUT_S
        with connect(self.port) as sock:
            buf = bytearray()
            while time.monotonic() < deadline:
                sock.sendall(request)
                while parse_response(buf) is None:
                    buf += sock.recv(65536)
                consumed, status, _, _ = parse_response(buf)
                del buf[:consumed]
                if status == 200:
                    return
                time.sleep(0.05)
        raise RuntimeError("the gateway's child did not become ready; log:\n" + open(self.log_path).read()[-3000:])


def find_supergateway():
    explicit = os.environ.get("HMG_SUPERGATEWAY")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    pattern = os.path.expanduser("~/.cache/host-mcp-gateway-ci/env-*/npm/node_modules/.bin/supergateway")
    found = [path for path in sorted(glob.glob(pattern)) if os.access(path, os.X_OK)]
    return found[-1] if found else None


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class SupergatewayTarget(Target):
    """supergateway in stateful Streamable HTTP mode: one MCP session, opened here, carries every request."""
    name = "supergateway"

    def __init__(self, workdir, binary, child_cmd, log_level):
        self.port = free_port()
        self.path = "/mcp"
        self.log_path = os.path.join(workdir, "supergateway.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "--stdio", shlex.join(child_cmd), "--outputTransport", "streamableHttp", "--stateful",
                 "--port", str(self.port), "--logLevel", log_level],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        # Every request of a session carries its id and accepts either a JSON body or an event stream.
        self.headers = {"Accept": "application/json, text/event-stream"}
        with self.stopped_on_failure(), connect(self._wait_listening()) as sock:
            buf = bytearray()
            status, head, body = exchange(sock, self.request(dumps(INITIALIZE)), buf)
            session = header_value(head, "mcp-session-id")
            if status != 200 or not session:
                raise RuntimeError("supergateway initialize failed: HTTP %d %r" % (status, body[:300]))
            self.headers["Mcp-Session-Id"] = session
            status, _, body = exchange(sock, self.request(dumps(INITIALIZED)), buf)
            if status not in (200, 202):
                raise RuntimeError("supergateway notifications/initialized: HTTP %d %r" % (status, body[:300]))

    def _wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return self.port
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("supergateway did not start; its log:\n" + open(self.log_path).read()[-3000:])


# 1. Latency ---------------------------------------------------------------------------------------------------

def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarize(samples_s):
    return {"median_ms": statistics.median(samples_s) * 1000, "p99_ms": percentile(samples_s, 0.99) * 1000,
            "samples": len(samples_s)}


def timed_loop(one_call, make, samples, warmup):
    """Calls `one_call(make(id))` warmup + samples times, ids 2, 3, ...; returns the last `samples` durations in
    seconds. The collector is paused so that its pauses are not counted as anyone's latency."""
    for n in range(2, warmup + 2):
        one_call(make(n))
    clock = time.perf_counter
    out = []
    gc.disable()
    try:
        for n in range(warmup + 2, warmup + samples + 2):
            data = make(n)
            t0 = clock()
            one_call(data)
            out.append(clock() - t0)
    finally:
        gc.enable()
    return out


def latency_direct(child_cmd, samples, warmup):
    child = StdioChild(child_cmd)
    try:
        make = call_maker()
        reply = json.loads(child.call(make(1)))
        if reply.get("id") != 1 or not echo_ok(reply):
            raise RuntimeError("the child answered tools/call wrongly: %r" % reply)
        window = CpuWindow(child.proc.pid, [], client_self=True)
        window.begin()
        result = summarize(timed_loop(child.call, make, samples, warmup))
        window.end()
        result["other_cpu_pct"] = window.result.get("other_cpu_pct")
        return result
    finally:
        child.close()


def latency_http_samples(target, samples, warmup, protocol=LEGACY):
    """(round-trip durations in seconds, other processes' CPU meanwhile) on one new keep-alive connection."""
    make = target.call_maker(protocol)
    with connect(target.port) as sock:
        buf = bytearray()
        status, _, body = exchange(sock, make(1), buf)
        check_echo(status, body, "%s (%s)" % (target.name, protocol))
        window = CpuWindow(target.proc.pid, target.child_pids(), client_self=True)
        window.begin()
        durations = timed_loop(lambda data: exchange(sock, data, buf), make, samples, warmup)
        window.end()
        return durations, window.result.get("other_cpu_pct")


def latency_http(target, samples, warmup, protocol=LEGACY):
    durations, other = latency_http_samples(target, samples, warmup, protocol)
    return dict(summarize(durations), other_cpu_pct=other)


# 2. Load ------------------------------------------------------------------------------------------------------

# Each request gets its own id (see call_maker): thread k numbers its requests from k * 10^9.
WRK_SCRIPT = """
local started = 0
function setup(thread)
  started = started + 1
  thread:set("first_id", started * 1000000000)
end
local n = 0
function init(args)
  n = first_id
end
local headers = {%s}
local before, after = [==[%s]==], [==[%s]==]
function request()
  n = n + 1
  return wrk.format("POST", nil, headers, before .. n .. after)
end
"""


def wrk_version(wrk):
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "?"


def parse_duration_ms(text):
    value, unit = re.match(r"([0-9.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


class CpuWindow:
    """CPU used between begin() and end(), in % of one core: by the server, its child, the client (the load
    generator, or this process when `client_self`), and by every other process on the machine. The last one
    is the noise check: on a shared machine other work steals the cores the figures depend on."""

    def __init__(self, pid, kids, client_self=False):
        self.pid, self.kids, self.client_self = pid, kids, client_self

    def _sample(self):
        client = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) if self.client_self else children_cpu()
        return cpu_seconds(self.pid), tree_cpu(self.kids), client, machine_busy_seconds(), time.monotonic()

    def begin(self):
        self.before = self._sample()

    def end(self, client_cpu=None):
        """`client_cpu`: the generator's own CPU seconds when it measures them itself (it is not reaped yet)."""
        after = self._sample()
        wall = after[-1] - self.before[-1]
        used = [None if a is None or b is None else a - b for a, b in zip(after[:4], self.before[:4])]
        if client_cpu is not None:
            used[2] = client_cpu
        if None not in used:
            used[3] = max(0.0, used[3] - sum(used[:3]))
        else:
            used[3] = None
        self.result = {key: 100.0 * value / wall for key, value in zip(
            ("server_cpu_pct", "child_cpu_pct", "client_cpu_pct", "other_cpu_pct"), used) if value is not None}


def run_wrk(wrk, workdir, target, connections, duration, window, protocol=LEGACY):
    headers = dict(target.headers_for(protocol), **{"Content-Type": "application/json"})
    before, after = call_parts(protocol)
    script = os.path.join(workdir, "post-%s.lua" % protocol)
    with open(script, "w") as f:
        f.write(WRK_SCRIPT % (", ".join('["%s"] = "%s"' % item for item in headers.items()), before, after))
    threads = min(connections, os.cpu_count() or 2)
    window.begin()
    seconds = max(1, int(round(duration)))  # wrk takes whole seconds only
    out = subprocess.run([wrk, "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds, "--latency",
                          "-s", script, "http://%s:%d%s" % (HOST, target.port, target.path)],
                         capture_output=True, text=True, timeout=seconds + 60)
    window.end()
    text = out.stdout
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if out.returncode != 0 or not rps:
        raise RuntimeError("wrk failed: %s%s" % (out.stdout, out.stderr))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(non2xx.group(1)) if non2xx else 0
    result = {"rps": float(rps.group(1)), "errors": errors,
              "requests": int(re.search(r"(\d+) requests in", text).group(1))}
    for pct in ("50", "99"):
        match = re.search(r"^\s+%s%%\s+(\S+)" % pct, text, re.M)
        if match:
            result["p%s_ms" % pct] = parse_duration_ms(match.group(1))
    return result


def _load_worker(port, path, headers, protocol, first_id, connections, start_at, stop_at, results):
    """One generator process: `connections` keep-alive sockets, each with one request in flight (a closed loop,
    as wrk does). Counts the responses that complete between start_at and stop_at."""
    make = call_maker(port, path, headers, protocol)  # built here: a closure cannot be sent to a spawned process
    sel = selectors.DefaultSelector()
    buffers = {}
    for _ in range(connections):
        sock = connect(port)
        sock.setblocking(False)
        buffers[sock] = bytearray()
        sel.register(sock, selectors.EVENT_READ)
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    next_id = first_id
    cpu_at_start = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    for sock in buffers:
        sock.send(make(next_id))  # small enough for an empty socket buffer
        next_id += 1
    done = errors = 0
    latencies = []
    sent_at = dict.fromkeys(buffers, time.perf_counter())
    now = time.time()
    while now < stop_at:
        for key, _ in sel.select(timeout=stop_at - now):
            sock = key.fileobj
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed a connection under load")
            buf = buffers[sock]
            buf += data
            parsed = parse_response(buf)
            if parsed is None:
                continue
            del buf[:parsed[0]]
            done += 1
            errors += parsed[1] != 200
            t = time.perf_counter()
            latencies.append(t - sent_at[sock])
            sent_at[sock] = t
            sock.send(make(next_id))
            next_id += 1
        now = time.time()
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu_at_start
    for sock in buffers:
        sock.close()
    results.put((done, errors, latencies, cpu))


def run_python_load(target, connections, duration, window, protocol=LEGACY):
    """Several processes, raw sockets and pre-built request bytes, so that the generator's own interpreter lock
    is not what limits the count."""
    procs_n = max(1, min(connections, os.cpu_count() or 2))
    shares = [connections // procs_n + (i < connections % procs_n) for i in range(procs_n)]
    results = multiprocessing.Queue()
    start_at = time.time() + 0.5  # every worker has its connections open by then
    stop_at = start_at + duration
    workers = [multiprocessing.Process(target=_load_worker, args=(
        target.port, target.path, target.headers_for(protocol), protocol, (i + 1) * 10 ** 9, n, start_at, stop_at,
        results)) for i, n in enumerate(shares)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start_at - time.time()))
    window.begin()
    time.sleep(max(0.0, stop_at - time.time()))
    collected = [results.get(timeout=duration + 30) for _ in workers]
    window.end(client_cpu=sum(c[3] for c in collected))
    for w in workers:
        w.join()
    done = sum(c[0] for c in collected)
    latencies = [x for c in collected for x in c[2]]
    result = {"rps": done / duration, "errors": sum(c[1] for c in collected), "requests": done}
    if latencies:
        result.update(p50_ms=percentile(latencies, 0.5) * 1000, p99_ms=percentile(latencies, 0.99) * 1000)
    return result


def combine_loads(parts):
    """One load level from its parts of equal duration: req/s and CPU averaged (req/s over the total time), p50 and
    p99 averaged (an approximation: the parts' latencies are not merged), errors and requests added up,
    other processes' CPU at its worst."""
    if len(parts) == 1:
        return parts[0]
    out = {"parts": len(parts), "connections": parts[0]["connections"]}
    for key in ("errors", "requests"):
        out[key] = sum(part[key] for part in parts)
    for key in ("rps", "p50_ms", "p99_ms", "server_cpu_pct", "child_cpu_pct", "client_cpu_pct"):
        values = [part.get(key) for part in parts]
        if None not in values:
            out[key] = sum(values) / len(values)
    others = [part.get("other_cpu_pct") for part in parts]
    if None not in others:
        out["other_cpu_pct"] = max(others)
    return out


def run_load(wrk, workdir, target, connections, duration, protocol=LEGACY):
    """One load level, with the CPU each side used during it."""
    run = (lambda d, w: run_wrk(wrk, workdir, target, connections, d, w, protocol)) if wrk else (
        lambda d, w: run_python_load(target, connections, d, w, protocol))
    window = CpuWindow(target.proc.pid, target.child_pids())
    run(min(1.0, duration), window)  # warm-up: connections, threads and caches settle before the measured run
    result = run(duration, window)
    result.update(window.result, connections=connections)
    return result


def add_cpu_per_request(row):
    """The server process's CPU time per answered request, in microseconds: what a saturated server's req/s is
    the inverse of, and less moved by neighbours than req/s is."""
    if row.get("server_cpu_pct") is not None and row.get("rps"):
        row["server_cpu_us_per_req"] = row["server_cpu_pct"] / 100.0 / row["rps"] * 1e6
    return row


# 3./4. One target from start to stop --------------------------------------------------------------------------

IDLE_SESSIONS = 1000  # opened after the load to price one idle MCP session


def session_cost_kib(target):
    """RSS added per idle MCP session: IDLE_SESSIONS initialize requests on one connection, nothing after."""
    body = dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {"roots": {}}, "clientInfo": {"name": "bench", "version": "1"}}})
    request = http_request_bytes(target.port, target.path, body, target.headers)
    before = rss_kib(target.proc.pid)
    with connect(target.port) as sock:
        buf = bytearray()
        for _ in range(IDLE_SESSIONS):
            status, _, _ = exchange(sock, request, buf)
            if status != 200:
                raise RuntimeError("initialize answered %d" % status)
    return (rss_kib(target.proc.pid) - before) / IDLE_SESSIONS


def measure_target(make_target, args, wrk, workdir, say):
    """Latency and load for every protocol era the target serves of those asked for; legacy's results at the
    top level (as before modern was measured), modern's under "modern"."""
    target = make_target()
    try:
        pid = target.proc.pid
        time.sleep(0.5)  # let start-up allocation settle before "idle"
        out = {"pid": pid, "rss_idle_kib": rss_kib(pid)}
        if isinstance(target, GatewayTarget):
            out.update(child_era=target.child_era, child_start_ms=target.child_start_ms)
        protocols = [p for p in args.protocols if p in target.protocols]
        runs = {p: {"load": []} for p in protocols}
        # With two eras, each measurement is split in halves run in the order A B B A (legacy, modern, modern,
        # legacy): a drift of the machine's speed during the sequence (a neighbour starting or ending) then
        # weighs on both eras alike, and the ratio of the two is what the target checks.
        order = protocols if len(protocols) == 1 else protocols + protocols[::-1]
        parts = len(order) // len(protocols)
        latency_parts = {p: ([], []) for p in protocols}
        for p in order:
            say("%s: %s latency, %d samples on one connection" % (target.name, p, args.samples // parts))
            durations, other = latency_http_samples(target, args.samples // parts, args.warmup // parts, p)
            latency_parts[p][0].extend(durations)
            latency_parts[p][1].append(other)
        for p, (durations, others) in latency_parts.items():
            runs[p]["latency"] = dict(summarize(durations), other_cpu_pct=None if None in others else max(others))
        for n in args.connections:
            load_parts = {p: [] for p in protocols}
            for p in order:
                say("%s: %s, %d connection(s) for %g s" % (target.name, p, n, args.duration / parts))
                load_parts[p].append(run_load(wrk, workdir, target, n, args.duration / parts, p))
            for p, results in load_parts.items():
                runs[p]["load"].append(add_cpu_per_request(dict(combine_loads(results), protocol=p)))
        if LEGACY in runs:
            out.update(runs[LEGACY])
        if MODERN in runs:
            out["modern"] = runs[MODERN]
        time.sleep(1.0)  # the load's connections close and their threads end
        out["rss_after_kib"] = rss_kib(pid)
        out["rss_peak_kib"] = rss_kib(pid, "VmHWM")
        if isinstance(target, GatewayTarget):
            say("%s: %d idle sessions" % (target.name, IDLE_SESSIONS))
            out["rss_per_idle_session_kib"] = session_cost_kib(target)
        return out
    finally:
        target.stop()


# 5. Report ----------------------------------------------------------------------------------------------------

def rps_at(result, connections):
    for row in (result or {}).get("load", []):
        if row["connections"] == connections:
            return row["rps"]
    return None


def protocol_runs(result):
    """[(protocol, {"latency", "load"})] of a target's results: legacy at the top level, modern under "modern"."""
    runs = []
    if result and "latency" in result:
        runs.append((LEGACY, result))
    if result and "modern" in result:
        runs.append((MODERN, result["modern"]))
    return runs


def evaluate(results):
    gw, ref, direct = results["gateway"], results.get("supergateway"), results["direct"]
    runs = dict(protocol_runs(gw))
    for protocol, run in runs.items():
        results["added_latency_ms" if protocol == LEGACY else "modern_added_latency_ms"] = {
            "median": run["latency"]["median_ms"] - direct["median_ms"],
            "p99": run["latency"]["p99_ms"] - direct["p99_ms"]}
    name = "added median latency <= %.2f ms at 1 connection" % TARGET_ADDED_MEDIAN_MS
    if LEGACY in runs:
        added_median = results["added_latency_ms"]["median"]
        targets = [{"name": name, "value": round(added_median, 4), "pass": added_median <= TARGET_ADDED_MEDIAN_MS}]
    else:
        targets = [{"name": name, "value": None, "pass": None}]
    gw_rps, ref_rps = rps_at(gw if LEGACY in runs else None, TARGET_CONNECTIONS), rps_at(ref, TARGET_CONNECTIONS)
    name = "gateway req/s at %d connections >= %gx supergateway's" % (TARGET_CONNECTIONS, TARGET_RPS_RATIO)
    if gw_rps is None or ref_rps is None:
        targets.append({"name": name, "value": None, "pass": None})
    else:
        ratio = gw_rps / ref_rps if ref_rps else float("inf")
        targets.append({"name": name, "value": round(ratio, 2), "pass": ratio >= TARGET_RPS_RATIO})
    name = "modern req/s at %d connections >= %gx legacy's" % (TARGET_CONNECTIONS, TARGET_MODERN_RATIO)
    if LEGACY in runs and MODERN in runs:
        legacy_rps = {row["connections"]: row["rps"] for row in runs[LEGACY]["load"]}
        ratios = {str(row["connections"]): row["rps"] / legacy_rps[row["connections"]]
                  for row in runs[MODERN]["load"] if legacy_rps.get(row["connections"])}
        legacy_cpu = {row["connections"]: row.get("server_cpu_us_per_req") for row in runs[LEGACY]["load"]}
        results["modern_vs_legacy"] = {
            "rps_ratio": ratios,
            "server_cpu_per_req_ratio": {str(row["connections"]): row["server_cpu_us_per_req"] /
                                         legacy_cpu[row["connections"]] for row in runs[MODERN]["load"]
                                         if row.get("server_cpu_us_per_req") and legacy_cpu.get(row["connections"])},
            "median_latency_diff_ms": runs[MODERN]["latency"]["median_ms"] - runs[LEGACY]["latency"]["median_ms"]}
        ratio = ratios.get(str(TARGET_CONNECTIONS))
        targets.append({"name": name, "value": None if ratio is None else round(ratio, 3),
                        "pass": None if ratio is None else ratio >= TARGET_MODERN_RATIO})
    else:
        targets.append({"name": name, "value": None, "pass": None})
    results["targets"] = targets
    phases = [direct] + [run["latency"] for r in (gw, ref) for _, run in protocol_runs(r)] + [
        row for r in (gw, ref) for _, run in protocol_runs(r) for row in run["load"]]
    others = [p["other_cpu_pct"] for p in phases if p.get("other_cpu_pct") is not None]
    results["noise_cpu_pct"] = max(others) if others else None


def mib(kib):
    return "%.1f" % (kib / 1024.0) if kib is not None else "-"


def pct(value):
    return "%.0f%%" % value if value is not None else "-"


def print_table(results):
    env, direct, gw = results["environment"], results["direct"], results["gateway"]
    runs = protocol_runs(gw)
    rows = [("host-mcp-gateway" if len(runs) == 1 else "host-mcp-gateway " + p, run) for p, run in runs]
    targets = [("host-mcp-gateway", gw)]
    if results.get("supergateway"):
        rows.append(("supergateway", results["supergateway"]))
        targets.append(("supergateway", results["supergateway"]))
    print("host-mcp-gateway bench: child %s, load by %s, %g s per level, %s CPUs, Python %s, %s%s, logs %s" % (
        env["child"], env["load_generator"], env["duration_s"], env["cpus"], env["python"], env["platform"],
        " (cpuidle %s)" % env["cpuidle"] if env["cpuidle"] else "", env["log_level"]))
    if gw.get("child_era"):
        print("gateway's child: %s era%s; modern requests to a handshake-era child are translated by the gateway" % (
            gw["child_era"], ", ready %.0f ms after its start (server/discover probe included)" %
            gw["child_start_ms"] if gw.get("child_start_ms") is not None else ""))
    print()
    print("tools/call latency, 1 keep-alive connection (%d samples)   median      p99    added median / p99"
          % direct["samples"])
    print("  %-34s  %9.3f ms  %8.3f ms" % ("child directly on stdio", direct["median_ms"], direct["p99_ms"]))
    for name, r in rows:
        lat = r["latency"]
        print("  %-34s  %9.3f ms  %8.3f ms   %+.3f / %+.3f ms" % (
            name, lat["median_ms"], lat["p99_ms"], lat["median_ms"] - direct["median_ms"],
            lat["p99_ms"] - direct["p99_ms"]))
    versus = results.get("modern_vs_legacy")
    if versus:
        print("  %-34s  %+9.3f ms" % ("modern minus legacy", versus["median_latency_diff_ms"]))
    print()
    width = 24
    levels = [row["connections"] for row in rows[0][1]["load"]]
    print("%-*s" % (width + 2, "throughput (req/s)") + "".join("%12d conn" % n for n in levels))
    print("  (CPU: % of one core used by the server process / its child / the load generator)")
    for name, r in rows:
        print("  %-*s" % (width, name) + "".join("%17.0f" % row["rps"] for row in r["load"]))
        print("  %-*s" % (width, "  p50 / p99 ms") + "".join(
            "%17s" % ("%.2f / %.2f" % (row["p50_ms"], row["p99_ms"]) if "p50_ms" in row else "-")
            for row in r["load"]))
        print("  %-*s" % (width, "  CPU srv/child/load") + "".join(
            "%17s" % ("%s/%s/%s" % (pct(row.get("server_cpu_pct")), pct(row.get("child_cpu_pct")),
                                    pct(row.get("client_cpu_pct")))) for row in r["load"]))
        print("  %-*s" % (width, "  server CPU us/req") + "".join(
            "%17s" % ("%.0f" % row["server_cpu_us_per_req"] if row.get("server_cpu_us_per_req") else "-")
            for row in r["load"]))
        bad = sum(row["errors"] for row in r["load"])
        if bad:
            print("  %-*s" % (width, "  errors") + " %d failed or non-2xx responses" % bad)
    if versus:
        for label, key in (("modern / legacy req/s", "rps_ratio"),
                           ("  server CPU per req", "server_cpu_per_req_ratio")):
            print("  %-*s" % (width, label) + "".join(
                "%17s" % ("%.3fx" % versus[key][str(n)] if str(n) in versus.get(key, {}) else "-") for n in levels))
    print()
    print("RSS (MiB)                 idle   after load    peak")
    for name, r in targets:
        print("  %-20s %9s %12s %7s" % (name, mib(r["rss_idle_kib"]), mib(r["rss_after_kib"]),
                                        mib(r["rss_peak_kib"])))
    if gw.get("rss_per_idle_session_kib") is not None:
        print("  host-mcp-gateway RSS per idle MCP session: %.1f KiB (%d sessions opened)" % (
            gw["rss_per_idle_session_kib"], IDLE_SESSIONS))
    if results.get("reference_skipped"):
        print("\nreference skipped: " + results["reference_skipped"])
    if direct["median_ms"] > SLOW_WAKEUP_MS:
        print("\nnote: a direct stdio round trip takes %.3f ms here (about 0.01 ms when CPUs are awake): idle CPUs "
              "wake up slowly,\nas on VMs whose idle vCPUs halt, and every hand-off between processes or threads "
              "pays for it" % direct["median_ms"])
    noise = results.get("noise_cpu_pct")
    if noise is not None:
        print("\nother processes on the machine: up to %.0f%% of a core in a measured phase%s" % (
            noise, "" if noise < NOISY_CPU_PCT else "  -- NOISY: rerun on a quiet machine"))
    print("\ntargets")
    for t in results["targets"]:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[t["pass"]]
        if t["value"] is None:
            value = "-"
        elif "latency" in t["name"]:
            value = "%.3f ms" % t["value"]
        else:
            value = ("%.3fx" if "modern" in t["name"] else "%.2fx") % t["value"]
        print("  %s  %-58s %s" % (verdict, t["name"], value))


# Main ---------------------------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description="Benchmark host-mcp-gateway against a direct stdio child and "
                                                 "supergateway.")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level (default 10)")
    parser.add_argument("--quick", action="store_true", help="2 s per load level and 1000 latency samples")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--samples", type=int, default=5000, help="latency samples (default 5000)")
    parser.add_argument("--connections", default="1,16,64", help="load levels (default 1,16,64)")
    parser.add_argument("--protocol", default="legacy,modern",
                        help="protocol eras to measure through the gateway, comma-separated (default legacy,modern): "
                             "legacy, the sessionless JSON-RPC call; modern, revision %s's stateless call "
                             "(_meta envelope and MCP headers). supergateway is measured with legacy only"
                             % MODERN_VERSION)
    parser.add_argument("--child", choices=("fast", "example"), default="fast",
                        help="fast: bench/fast_server.py (default); example: the gateway's --example-server")
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load generator even if wrk exists")
    parser.add_argument("--no-reference", action="store_true", help="skip supergateway")
    parser.add_argument("--quiet-logs", action="store_true",
                        help="gateway at --log-level warning and supergateway at --logLevel none (default: "
                             "both at their default info level, one or more log lines per request)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 2.0)
        args.samples = min(args.samples, 1000)
    args.warmup = max(200, args.samples // 5)
    args.connections = [int(n) for n in args.connections.split(",")]
    args.protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    unknown = [p for p in args.protocols if p not in PROTOCOLS]
    if unknown or not args.protocols:
        parser.error("--protocol: a comma-separated list of %s, not %r" % (" and ".join(PROTOCOLS), args.protocol))
    args.protocols = [p for p in PROTOCOLS if p in args.protocols]  # legacy first, each once
    if TARGET_CONNECTIONS not in args.connections:
        args.connections.append(TARGET_CONNECTIONS)
    return args


def main(argv=None):
    args = parse_args(argv)
    say = (lambda msg: print("... " + msg, file=sys.stderr, flush=True))
    wrk = None if args.no_wrk else shutil.which("wrk")
    child_cmd = child_command(args.child)
    results = {"environment": {
        "child": os.path.relpath(child_cmd[-1]) if args.child == "fast" else "--example-server",
        "load_generator": ("wrk " + wrk_version(wrk)) if wrk else "python (%d processes)" % min(
            max(args.connections), os.cpu_count() or 2),
        "duration_s": args.duration, "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.system(), "log_level": "warning/none" if args.quiet_logs else "info",
        "cpuidle": cpuidle_driver(), "protocols": args.protocols}}
    if not wrk:
        say("using the Python load generator (%s)" % ("--no-wrk" if args.no_wrk else "wrk not found"))
    workdir = tempfile.mkdtemp(prefix="hmg-bench-")
    try:
        say("child directly on stdio: latency, %d samples" % args.samples)
        results["direct"] = latency_direct(child_cmd, args.samples, args.warmup)
        results["gateway"] = measure_target(
            lambda: GatewayTarget(workdir, child_cmd, "warning" if args.quiet_logs else "info"),
            args, wrk, workdir, say)
        binary = None if args.no_reference or LEGACY not in args.protocols else find_supergateway()
        if binary:
            results["supergateway"] = measure_target(
                lambda: SupergatewayTarget(workdir, binary, child_cmd, "none" if args.quiet_logs else "info"),
                args, wrk, workdir, say)
        else:
            results["reference_skipped"] = (
                "--no-reference" if args.no_reference else
                "--protocol without legacy (supergateway is measured with legacy calls only)"
                if LEGACY not in args.protocols else
                "supergateway not found: set HMG_SUPERGATEWAY, or run .ci/run once to fill "
                "~/.cache/host-mcp-gateway-ci")
            say("reference skipped: " + results["reference_skipped"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    evaluate(results)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
