#!/usr/bin/env python3
"""host-mcp-gateway: serve a host's stdio MCP servers to MCP clients over authenticated HTTP.

Some MCP servers can only run on one machine (a Mac's Notes, Calendar, Shortcuts, Keychain). This one
file runs them as child processes speaking newline-delimited JSON-RPC on stdio, and lets many HTTP
clients share each of them safely:

    client --HTTP--> §10 HTTP layer --> §9 sessions --> §8 supervisor --> §7 child process --stdio--> MCP server
      (allowlist and connection caps   (Mcp-Session-Id,   (restart policy,   (id remapping, stdin backlog
       at accept; token, Origin, size   event streams,     backoff; the       thread, stdout/stderr readers)
       and time limits, calls in        relayed requests;  child's era:
       flight per client and token;     2026-07-28 calls,  server/discover
       the era of each request, §5)     input_required,    or initialize)
                                        listen streams)
    §5 decides each request's protocol era (the handshake revisions, or 2026-07-28's per-request _meta) and
    holds the translation rules; §9 applies them where client and child speak different eras.
    §6 telemetry watches all of it: metrics always (GET /metrics), OTLP/HTTP JSON traces and metrics when the
    standard OTEL_* variables ask for them.

Endpoints: `POST /{server_id}/rpc` is an MCP Streamable HTTP endpoint for both protocol eras (sessions, GET
event streams and DELETE for the handshake revisions; stateless requests for 2026-07-28) that also answers
plain curl calls without a session; `POST /rpc` takes
`{"server_id": ..., "payload": <JSON-RPC>}`; `GET /health`, `GET /servers` and `GET /metrics` report status;
`GET /` is a status page for a browser (served without the token: it holds no data, its script fetches them).

Quick start:   python3 host_mcp_gateway.py --demo
Own config:    python3 host_mcp_gateway.py --init  (then edit it)  and  python3 host_mcp_gateway.py --check
Run:           python3 host_mcp_gateway.py -config ~/.config/host-mcp-gateway/config.json
Reload:        python3 host_mcp_gateway.py --reload (SIGHUP)   At login (macOS): --install-agent

Config keys are listed in CONFIG_FIELDS and SERVER_FIELDS (§4) and, generated from them, in docs/configuration.md.
Python >= 3.9, standard library only. Sections: `grep -n '^# §' host_mcp_gateway.py`.
"""
from __future__ import annotations

import argparse
import base64
import bisect
import difflib
import email.utils
import errno
import hashlib
import hmac
import http
import ipaddress
import itertools
import json
import math
import os
import platform
import plistlib
import queue
import random
import re
import resource
import secrets
import select
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from http.server import ThreadingHTTPServer

# § 1 Constants and defaults ------------------------------------------------------------------------------------------

VERSION = "0.1.0"
SERVER_HEADER = "host-mcp-gateway"  # no version numbers: the default tells every client the interpreter's
DEFAULT_CONFIG_PATH = "~/.config/host-mcp-gateway/config.json"
DEFAULT_PORT = 7411
LAUNCHD_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"  # what launchd gives a LaunchAgent unless told otherwise
# What the LaunchAgent sets: Homebrew's folders (Apple silicon, Intel) first, for servers run as npx or uvx.
AGENT_PATH = "/opt/homebrew/bin:/usr/local/bin:" + LAUNCHD_PATH
AGENT_LABEL = "com.example.host-mcp-gateway"
MCP_REMOTE_VERSION = "0.15.1"  # Claude Desktop's bridge in --client-config: npm's current version when pinned
TOKEN_PLACEHOLDER = "${HOST_MCP_GATEWAY_TOKEN}"  # printed instead of the token when stdout is not a terminal

# MCP protocol revisions that use the initialize handshake, newest first. The gateway itself speaks the newest
# to its children; a client asking for an older one gets it on its session.
SUPPORTED_PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
HANDSHAKE_PROTOCOL_VERSION = SUPPORTED_PROTOCOL_VERSIONS[0]
PROTOCOL_VERSION_WHEN_ABSENT = "2025-03-26"  # transports spec: no MCP-Protocol-Version header means this one

MAX_HEAD_BYTES = 32 * 1024  # request line + headers; browsers and SDKs send well under 8 KiB
MAX_HEADER_COUNT = 100  # http.server's own _MAXHEADERS
MAX_JSON_DEPTH = 128  # nesting in a client's body; MCP messages use under 10, tool arguments rarely 20
STDERR_LOG_CHARS = 2000  # a child's stderr line longer than this is logged truncated
STDERR_TAIL_LINES = 10  # the last lines of stderr quoted when a child exits
LOGGED_LINE_CHARS = 200  # of a child's stdout line that is not JSON-RPC, quoted in the log line that drops it
CHILD_STOP_GRACE_S = 1.5  # SIGTERM to SIGKILL; keeps a whole gateway stop under 5 s
CHILD_JOIN_S = CHILD_STOP_GRACE_S * 2 + 1  # how long a client's own child may take to stop: past both signals
CHILD_EXIT_SETTLE_S = 1.0  # after stdout closes, how long a child gets to exit by itself before it is stopped
MAX_BACKOFF_S = 60.0  # restart backoff doubles up to this
MIN_LOOP_DELAY_S = 0.1  # even with restart_backoff_ms 0, a crash loop never spins the CPU
LISTEN_DEADLINE_S = 365 * 86400.0  # a modern child's own subscriptions/listen lasts as long as its client stays
REQUEST_CHILD_PREFIX = "request:"  # of the key a modern request's own child is held under (no session id has ":")
PROBE_TIMEOUT_S = 5.0  # child_protocol auto: a child silent this long on server/discover speaks the handshake
STABLE_AFTER_S = 30.0  # a child ready this long has recovered: the next failure starts the backoff over
SHUTDOWN_GRACE_S = 1.5  # in-flight requests get this long to finish on SIGTERM
STOP_BUDGET_S = 4.5  # SIGTERM to exit, all steps together: the issue promises 5 s
POLL_S = 0.5  # how often waiting threads look at their stop Event

JSONRPC_PARSE_ERROR = -32700
JSONRPC_INVALID_REQUEST = -32600
JSONRPC_METHOD_NOT_FOUND = -32601
JSONRPC_SERVER_ERROR = -32000  # the gateway's own failures (child unavailable or exited)
JSONRPC_REQUEST_TIMEOUT = -32001  # the SDKs use this code for a request that timed out
JSONRPC_REQUEST_CANCELLED = -32800  # the answer to a call its client cancelled (the code LSP uses)
JSONRPC_INVALID_PARAMS = -32602
MCP_RESOURCE_NOT_FOUND_LEGACY = -32002  # revisions up to 2025-11-25; 2026-07-28 answers -32602 instead
MCP_HEADER_MISMATCH = -32020  # 2026-07-28: HTTP headers disagree with the body, or a required one is missing
MCP_MISSING_CLIENT_CAPABILITY = -32021
MCP_UNSUPPORTED_PROTOCOL_VERSION = -32022


# § 2 Errors ----------------------------------------------------------------------------------------------------------

class GatewayError(Exception):
    """Every failure a client can see. The HTTP layer's one funnel (§10) turns it into a response: the gateway
    error shape `{"error": {"error_code", "message", "server_id", "request_id"}}`, or a JSON-RPC error where the
    caller speaks JSON-RPC. `error_code` values are a stable, documented list (docs/http-api.md, "Errors")."""

    def __init__(self, message, http_status=500, error_code="internal_error", rpc_code=JSONRPC_SERVER_ERROR,
                 server_id=None, request_id=None, close=False, headers=(), rpc_data=None):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.error_code = error_code
        self.rpc_code = rpc_code
        self.server_id = server_id
        self.request_id = request_id
        self.close = close  # the connection cannot be reused (unread body, broken framing)
        self.headers = tuple(headers)
        self.rpc_request_id = None  # when set, the caller speaks JSON-RPC: answer with an error for this id
        self.rpc_data = rpc_data  # what the specification puts in a JSON-RPC error's data (-32022's `supported`)

    def body(self):
        error = {"error_code": self.error_code, "message": self.message}
        if self.server_id is not None:
            error["server_id"] = self.server_id
        if self.request_id is not None:
            error["request_id"] = str(self.request_id)
        return {"error": error}


def bad_request(message, error_code="bad_request", close=False):
    return GatewayError(message, 400, error_code, JSONRPC_INVALID_REQUEST, close=close)


def session_required(server_id):
    return GatewayError("server %s gives each session a child of its own: initialize a session first, on "
                        "/%s/rpc" % (server_id, server_id), 400, "session_required", JSONRPC_INVALID_REQUEST,
                        server_id=server_id)


def server_not_found(server_id):
    return GatewayError("no server with server_id %r" % server_id, 404, "server_not_found", server_id=server_id)


def unavailable(server_id, message):
    return GatewayError(message, 503, "server_unavailable", JSONRPC_SERVER_ERROR, server_id=server_id)


class ConfigError(Exception):
    """A config or command-line problem: the process exits 2 after printing every message."""

    def __init__(self, messages):
        super().__init__("\n".join(messages))
        self.messages = list(messages)


# § 3 Small helpers ---------------------------------------------------------------------------------------------------

now = time.monotonic  # every deadline and backoff
_active = threading.local()  # .span: the span this thread works in, for log lines and for child spans (§6)


def current_span():
    return getattr(_active, "span", None)


_SECRET_KEYS = frozenset({"authorization", "auth_token", "auth_tokens", "token", "env"})


class Logger:
    """One JSON object per line: UTC time, level, event, fields. Fields named like secrets are never written,
    whatever a caller passes, so a token cannot reach the log by accident."""

    LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
    FLUSH_S = 0.05  # in the background mode, lines reach the stream at most this late

    def __init__(self, stream=None, level="info"):
        self._stream = stream if stream is not None else sys.stderr
        self._threshold = self.LEVELS[level]
        self._lock = threading.Lock()  # guards the two fields below
        self._write_lock = threading.Lock()  # one writer at a time on the stream, so lines stay whole and in order
        self._pending = []  # lines the background writer has yet to write
        self._writer = None  # the background writer thread, once started
        self._closed = threading.Event()
        self._second, self._second_text = 0, ""  # the timestamp's whole seconds, formatted once a second

    def set_level(self, level):
        self._threshold = self.LEVELS[level]

    def start_background(self):
        """From now on a thread writes lines in batches, so a request never waits on stderr."""
        self._writer = threading.Thread(target=self._write_loop, name="log-writer", daemon=True)
        self._writer.start()

    def close(self):
        """Stops the background writer after writing what it holds."""
        self._closed.set()
        if self._writer is not None:
            self._writer.join(timeout=POLL_S * 2)
        self.flush()

    def log(self, level, event, **fields):
        if self.LEVELS[level] < self._threshold:
            return
        t = time.time()
        if int(t) != self._second:
            self._second, self._second_text = int(t), time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
        record = {"ts": self._second_text + ".%03dZ" % (t % 1 * 1000), "level": level, "event": event}
        span = current_span()
        if span is not None and span.context is not None:  # a line written during a traced request
            record["trace_id"], record["span_id"] = span.context.trace_id, span.context.span_id
        record.update(fields)
        if not _SECRET_KEYS.isdisjoint(map(str.lower, fields)):
            for key in fields:
                if key.lower() in _SECRET_KEYS:
                    record[key] = "[redacted]"
        line = _log_json(record) + "\n"
        with self._lock:
            self._pending.append(line)
        if self._writer is None or self._closed.is_set():
            self.flush()

    def flush(self):
        with self._write_lock:
            with self._lock:
                lines, self._pending = self._pending, []
            if lines:
                try:
                    self._stream.write("".join(lines))
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # a closed stderr must not take the gateway down

    def _write_loop(self):
        while not self._closed.wait(self.FLUSH_S):
            self.flush()

    def info(self, event, **fields):
        self.log("info", event, **fields)

    def warning(self, event, **fields):
        self.log("warning", event, **fields)

    def error(self, event, **fields):
        self.log("error", event, **fields)


def _json_encoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=None):
    """json.JSONEncoder(...).encode at a fraction of its cost per call, which the gateway pays twice per request
    and more: CPython's C encoder made once (JSONEncoder.encode makes one on every call), without the check for
    circular references (decoded JSON and the gateway's own values have none). JSONEncoder where there is none."""
    default = default or json.JSONEncoder().default  # which raises TypeError for what JSON cannot hold
    if json.encoder.c_make_encoder is None:
        return json.JSONEncoder(ensure_ascii=ensure_ascii, separators=separators, allow_nan=allow_nan,
                                default=default).encode
    chunks = json.encoder.c_make_encoder(
        None, default, json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring,
        None, separators[1], separators[0], False, False, allow_nan)

    def encode(value):
        return "".join(chunks(value, 0))
    return encode


_compact_json = _json_encoder()
_ascii_json = _json_encoder(ensure_ascii=True)  # writes lone surrogates as \udXXX
_log_json = _json_encoder(separators=(", ", ": "), allow_nan=True, default=str)


def _no_constant(name):
    raise ValueError("%s is not JSON" % name)


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):  # 1e400: Python would read it as inf and write it back as Infinity
        raise ValueError("number %s is out of range" % text[:40])
    return value


# NaN, Infinity and numbers too large for a double are not JSON.
_scan_json = json.scanner.make_scanner(json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float))
_JSON_WHITESPACE = " \t\n\r"


def _decode_json(text):
    """JSONDecoder.decode without its two regular-expression matches per call: the scanner itself, with JSON's
    whitespace around the value skipped by hand."""
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    try:
        value, end = _scan_json(text, start)
    except StopIteration as e:
        raise json.JSONDecodeError("Expecting value", text, e.value) from None
    rest = text[end:].lstrip(_JSON_WHITESPACE) if end != len(text) else ""
    if rest:
        raise json.JSONDecodeError("Extra data", text, len(text) - len(rest))
    return value
_SURROGATE_ESCAPE_RE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_bytes(value):
    """UTF-8 JSON text; never fails on a string holding a lone surrogate (a child may send one): that is
    written escaped, as the child wrote it."""
    text = _compact_json(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ascii_json(value).encode("ascii")


def json_loads(data):
    """Decodes a JSON text given as UTF-8 bytes. Raises ValueError, also for nesting too deep to decode."""
    try:
        return _decode_json(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def json_depth_over(value, limit):
    """Whether arrays and objects nest more than `limit` deep in a decoded value (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def json_input_problem(data, value):
    """Why a decoded client body cannot be taken, or None. The gateway copies, encodes and logs what clients
    send, so it refuses what would fail there: a lone surrogate (\\udc00 unpaired: not Unicode text) and nesting
    deeper than MAX_JSON_DEPTH (Python's recursion limit is near 1000). Cheap for ordinary bodies: the first
    needs a surrogate escape in the text, the second more brackets than the limit."""
    if _SURROGATE_ESCAPE_RE.search(data):
        try:
            _compact_json(value).encode("utf-8")
        except UnicodeEncodeError:
            return "a string holds an unpaired surrogate (\\ud800-\\udfff): not Unicode text"
    if isinstance(value, (dict, list)) and data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and \
            json_depth_over(value, MAX_JSON_DEPTH):
        return "arrays and objects nest more than %d deep" % MAX_JSON_DEPTH
    return None


def io_ready(fileobj, events, timeout):
    """Whether a socket or descriptor is ready for `events` (select.POLLIN, POLLOUT) within `timeout` seconds, or
    has hung up. poll() because select() cannot watch a descriptor numbered 1024 or more, and the gateway raises
    its own file limit past that; Linux and macOS both have poll() for sockets and pipes."""
    poller = select.poll()
    poller.register(fileobj, events)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def describe_exit(returncode):
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return "killed by signal %d (%s)" % (-returncode, signal.Signals(-returncode).name)
        except ValueError:
            return "killed by signal %d" % -returncode
    return "exited with code %d" % returncode


def new_token():
    return secrets.token_hex(32)


def session_label(session_id):
    """Enough of a session id to follow it through logs and /servers without handing it out."""
    return session_id[:8]


# § 4 Configuration and access control (pure) -------------------------------------------------------------------------

TOKEN_HELP = ("make one with `openssl rand -hex 32` or "
              "`python3 -c 'import secrets; print(secrets.token_hex(32))'`")
RESTART_POLICIES = ("always", "on-failure", "never")
ROOTS_FROM_CLIENT = "client"  # the `roots` setting that lets a child ask the client of the call in flight
ISOLATION_MODES = ("shared", "session")
CHILD_PROTOCOLS = ("auto", "legacy", "modern")
SERVER_ID_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
ORIGIN_RE = re.compile(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?\Z")
# Path segments the gateway routes itself; a server_id equal to one would be shadowed or confusing.
RESERVED_SERVER_IDS = frozenset({"rpc", "health", "servers", "metrics", "status", "v1", ".", ".."})


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_string(value):
    return None if isinstance(value, str) else "must be a string"


def _check_nonempty_string(value):
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _check_bind_host(value):
    if isinstance(value, str) and value.strip() == "localhost":
        return None
    try:
        ipaddress.ip_address(value.strip() if isinstance(value, str) else "")
    except ValueError:
        return "must be an IP address (127.0.0.1, ::1, 0.0.0.0, ::, a LAN address) or localhost"
    return None


def _check_clients(value):
    problem = _check_string_list(value)
    return problem or (None if value else "must name at least one client (localhost, an IP or a CIDR)")


def _check_port(value):
    return None if _is_int(value) and 0 <= value <= 65535 else "must be an integer from 0 to 65535"


def _check_positive_int(value):
    return None if _is_int(value) and value > 0 else "must be a positive integer"


def _check_non_negative_int(value):
    return None if _is_int(value) and value >= 0 else "must be an integer >= 0"


def _check_bool(value):
    return None if isinstance(value, bool) else "must be true or false"


def _check_string_list(value):
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return None
    return "must be a list of strings"


def _check_string_map(value):
    if isinstance(value, dict) and all(isinstance(item, str) for item in value.values()):
        return None
    return "must be an object whose values are strings"


def _one_of(choices):
    def check(value):
        return None if value in choices else "must be one of " + ", ".join(choices)
    return check


def _check_origins(value):
    problem = _check_string_list(value)
    if problem is None and not all(ORIGIN_RE.match(origin) for origin in value):
        return "each entry must be an origin like http://localhost:6274 (scheme://host[:port], no path)"
    return problem


def root_path(root):
    """The folder a `roots` entry names: an absolute path (`~` expanded) or a file:// URI's path."""
    if root.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlsplit(root).path)
    return os.path.expanduser(root)


def root_uri(root):
    """A `roots` entry as the file:// URI a child is told; None when it names no absolute local folder."""
    if root.startswith("file://"):
        parts = urllib.parse.urlsplit(root)
        return root if parts.netloc in ("", "localhost") and parts.path.startswith("/") else None
    path = os.path.expanduser(root)
    return "file://" + urllib.parse.quote(path) if os.path.isabs(path) else None


def _check_roots(value):
    if value is None or value == ROOTS_FROM_CLIENT:
        return None
    if isinstance(value, list) and all(isinstance(root, str) and root_uri(root) for root in value):
        return None
    return ('must be "client", or a list of absolute paths (`~/` allowed) or file:// URIs')


def _check_auth_token(value):
    if not isinstance(value, str):
        return "must be a string; " + TOKEN_HELP
    if "replace-me" in value:
        return "still holds the placeholder; " + TOKEN_HELP
    if value != value.strip():  # a client's token is stripped, so this one could never match
        return "has leading or trailing whitespace; remove it"
    if not all(" " <= c <= "~" for c in value):  # headers arrive as latin-1: other characters never match
        return "must be printable ASCII (letters, digits, punctuation); " + TOKEN_HELP
    if len(value) < 32:
        return "must be at least 32 characters; " + TOKEN_HELP
    return None


TOKEN_ENV = "HOST_MCP_GATEWAY_TOKEN"
TOKEN_SOURCES = ("auth_token", "auth_token_file", "auth_tokens", TOKEN_ENV)  # exactly one gives the tokens
DEFAULT_TOKEN_NAME = "default"  # what a single token is called in logs, spans and /servers
# A token's name goes into log lines, span attributes and /servers: short, and safe in all three.
TOKEN_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


def config_file_path(config_dir, value):
    """A file a config names: `~` expanded, relative to the config's folder."""
    return os.path.join(config_dir, os.path.expanduser(value))


def readable_by_others(path):
    """Whether the group or other users may read the file."""
    return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))


def read_token_file(path):
    """(token, None) from a token file, its trailing newline stripped, or (None, problem). A file others may
    read is refused: the token is the only credential."""
    try:
        if readable_by_others(path):
            return None, "%s is readable by other users; run: chmod 600 %s" % (path, path)
        with open(path, "rb") as f:
            token = f.read().decode("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        return None, "cannot read %s: %s" % (path, getattr(e, "strerror", None) or e)
    problem = _check_auth_token(token)
    return (None, "%s %s" % (path, problem)) if problem else (token, None)


def named_token_problems(value):
    """What is wrong with an auth_tokens list, each problem with its path."""
    if not isinstance(value, list) or not value:
        return ['auth_tokens: must be a non-empty list of {"name": ..., "token": ...} objects']
    problems, names, tokens = [], set(), set()
    for index, entry in enumerate(value):
        where = "auth_tokens[%d]" % index
        if not isinstance(entry, dict) or set(entry) != {"name", "token"}:
            problems.append('%s: must be an object with exactly "name" and "token"' % where)
            continue
        name, token = entry["name"], entry["token"]
        if not (isinstance(name, str) and TOKEN_NAME_RE.match(name)):
            problems.append("%s.name: must be 1 to 64 letters, digits, '.', '_' or '-'" % where)
        elif name in names:
            problems.append("%s.name: duplicate name '%s'" % (where, name))
        problem = _check_auth_token(token)
        if problem:
            problems.append("%s.token: %s" % (where, problem))
        elif token in tokens:
            problems.append("%s.token: the same token as another entry; each client needs its own" % where)
        names.add(name)
        tokens.add(token)
    return problems


def resolve_tokens(values, environ, config_dir, errors):
    """([(name, token)], source) from the one token source the config and environment give; problems go to
    `errors`. The file is read here, so --check and every start (and reload) see the same token."""
    given = [key for key in TOKEN_SOURCES[:3] if values[key] is not None] + [
        key for key in TOKEN_SOURCES[3:] if key in environ]
    if len(given) != 1:
        errors.append("token: %s" % ("no token source; set one of " + ", ".join(TOKEN_SOURCES) if not given else
                                     " and ".join(given) + " each give a token; keep exactly one"))
        return [], None
    source = given[0]
    if source == "auth_token":
        return [(DEFAULT_TOKEN_NAME, values["auth_token"])], source
    if source == "auth_tokens":
        problems = named_token_problems(values["auth_tokens"])
        errors.extend(problems)
        return ([] if problems else [(entry["name"], entry["token"]) for entry in values["auth_tokens"]]), source
    if source == TOKEN_ENV:
        token, problem = environ[TOKEN_ENV], _check_auth_token(environ[TOKEN_ENV])
    else:
        token, problem = read_token_file(config_file_path(config_dir, values["auth_token_file"]))
    if problem:
        errors.append("%s: %s" % (source, problem))
        return [], source
    return [(DEFAULT_TOKEN_NAME, token)], source


class Field:
    """One config key: its default (REQUIRED when it has none), its check, and its line in the table of docs/configuration.md."""
    REQUIRED = object()

    def __init__(self, default, check, doc):
        self.default = default
        self.check = check
        self.doc = doc


CONFIG_FIELDS = {
    "bind_host": Field("127.0.0.1", _check_bind_host, "address to listen on; IPv4 or IPv6, `::` for all"),
    "bind_port": Field(DEFAULT_PORT, _check_port, "port to listen on; 0 picks a free one and logs it"),
    "auth_token": Field(None, _check_auth_token, "bearer token every request must carry (>= 32 chars); one of "
                        "the four token sources"),
    "auth_token_file": Field(None, _check_nonempty_string,
                             "file holding the token, mode 0600 (relative to the config's folder), so the config "
                             "can be shown without it"),
    "auth_tokens": Field(None, None, 'named tokens, one per client (`[{"name": "laptop", "token": "..."}]`), so that '
                         "one can be revoked alone; the name shows in logs and `/servers`"),
    "tls_cert_file": Field(None, _check_nonempty_string,
                           "PEM certificate (chain) to serve HTTPS with, TLS 1.2 or newer; with tls_key_file"),
    "tls_key_file": Field(None, _check_nonempty_string, "PEM private key of tls_cert_file"),
    "allowed_clients": Field(Field.REQUIRED, _check_clients,
                             "client IPs or CIDRs allowed to connect; `localhost` = 127.0.0.0/8 and ::1"),
    "allowed_origins": Field([], _check_origins,
                             "browser Origins allowed (e.g. `http://localhost:6274`); others get 403"),
    "log_level": Field("info", _one_of(tuple(Logger.LEVELS)),
                       "least level logged: `warning` drops the `http_request` lines; `--log-level` overrides it"),
    "request_timeout_ms": Field(30000, _check_positive_int, "how long a call may wait for its child's answer"),
    "restart_backoff_ms": Field(2000, _check_non_negative_int,
                                "first restart delay; doubles on each consecutive failure up to 60 s"),
    "max_body_bytes": Field(4 * 1024 * 1024, _check_positive_int, "largest request body; larger gets 413"),
    "max_message_bytes": Field(64 * 1024 * 1024, _check_positive_int,
                               "largest single JSON-RPC line a child may print"),
    "client_timeout_ms": Field(30000, _check_positive_int,
                               "time a client has to send a whole request once it starts"),
    "idle_timeout_ms": Field(60000, _check_positive_int, "an idle keep-alive connection is closed after this"),
    "session_idle_timeout_ms": Field(30 * 60 * 1000, _check_positive_int,
                                     "an MCP session unused this long expires"),
    # Long enough for any client to send its first request after initialize, short enough that the sessions
    # `claude mcp list` and mcp-remote's probe leave behind give way before anyone else's.
    "session_grace_ms": Field(60000, _check_positive_int,
                              "a session that made no request this long after it opened is the first "
                              "ended when sessions or children run out"),
    "max_sessions": Field(1000, _check_positive_int, "most MCP sessions open at once, all servers together"),
    "sse_keepalive_ms": Field(15000, _check_positive_int,
                              "an idle event stream gets a comment this often, so proxies keep it open"),
    # Each connection is a descriptor and a thread; the gateway raises its file limit to 10240, and each child
    # takes three pipes: 4096 leaves room for both, and for 1,000 MCP sessions each with an event stream.
    "max_connections": Field(4096, _check_positive_int, "most client connections open at once; more get 503"),
    # Half of the total, so that one address (a runaway script) can never take every connection.
    "max_connections_per_client": Field(2048, _check_positive_int,
                                        "most connections open at once from one client address; more get 503"),
    # Four times the 64 connections of the heaviest benchmark level: a client that needs more is running away.
    "max_calls_per_client": Field(256, _check_positive_int,
                                  "most POST requests in flight from one client address; more get 429"),
    "max_calls_per_token": Field(512, _check_positive_int,
                                 "most POST requests in flight under one bearer token; more get 429"),
    "servers": Field(Field.REQUIRED, None, "the MCP servers to run (table below)"),
}

SERVER_FIELDS = {
    "server_id": Field(Field.REQUIRED, None, "name in URLs: letters, digits, `.`, `_`, `-`"),
    "command": Field(Field.REQUIRED, _check_nonempty_string,
                     "program to run; found on `env.PATH` if set, else the gateway's PATH"),
    "args": Field([], _check_string_list, "its arguments"),
    "working_dir": Field("", _check_string, "directory to start it in; empty = the gateway's"),
    "env": Field({}, _check_string_map, "variables added to the gateway's environment for it"),
    "autostart": Field(False, _check_bool, "start with the gateway; otherwise on its first request"),
    "restart_policy": Field("on-failure", _one_of(RESTART_POLICIES), "always | on-failure | never"),
    "startup_timeout_ms": Field(0, _check_non_negative_int,
                                "time for it to answer the gateway's initialize; 0 = request_timeout_ms"),
    "isolation": Field("shared", _one_of(ISOLATION_MODES),
                       "`shared`: one child for all clients; `session`: a child of its own per MCP session (and "
                       "per revision 2026-07-28 request)"),
    "max_children": Field(8, _check_positive_int, "with isolation `session`: most children running at once"),
    "child_protocol": Field("auto", _one_of(CHILD_PROTOCOLS),
                            "`auto`: ask it `server/discover` first and speak revision 2026-07-28 when it answers "
                            "(a dual-era child gets a handshake twin for handshake-era sessions); `legacy`: always "
                            "the initialize handshake; `modern`: always 2026-07-28"),
    "roots": Field(None, _check_roots,
                   "what the child's `roots/list` gets: unset = no roots; a list of folders the gateway "
                   "answers with; `\"client\"` = the client of the call in flight"),
}


CLIENT_FORMAT_HINT = ('that is how MCP clients (Claude Desktop, Cursor, VS Code) list servers; the gateway takes '
                      '"servers", a list of objects, each with its name as server_id: "servers": [{"server_id": '
                      '"files", "command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem"], '
                      '"env": {}}]')
# Keys people bring from other tools -> the key they mean, or the whole hint. Looked up before difflib, which
# is also given these names so that their typos (bind_adress) find the right key.
CONFIG_ALIASES = {
    "allowed_ips": "allowed_clients", "allowed_hosts": "allowed_clients", "allowlist": "allowed_clients",
    "bind_address": "bind_host", "host": "bind_host", "port": "bind_port", "token": "auth_token",
    "mcpServers": CLIENT_FORMAT_HINT,
}
SERVER_ALIASES = {
    "cwd": "working_dir", "working_directory": "working_dir", "environment": "env", "cmd": "command",
    "arguments": "args", "name": "server_id", "id": "server_id",
}


class ServerSpec:
    """One configured MCP server, validated."""

    def __init__(self, values):
        self.server_id = values["server_id"]
        self.command = values["command"]
        self.args = list(values["args"])
        self.working_dir = values["working_dir"]
        self.env = dict(values["env"])
        self.autostart = values["autostart"]
        self.restart_policy = values["restart_policy"]
        self.startup_timeout_ms = values["startup_timeout_ms"]
        self.isolation = values["isolation"]
        self.max_children = values["max_children"]
        self.roots = values["roots"]
        self.child_protocol = values["child_protocol"]

    def held_to_handshake(self):
        """This server as its handshake twin runs it: the same command, spoken to in the handshake era."""
        return ServerSpec(dict(vars(self), child_protocol="legacy"))

    @property
    def fixed_roots(self):
        """The roots the gateway answers for the child itself, as MCP Root objects; None when it does not."""
        if not isinstance(self.roots, list):
            return None
        return [{"uri": root_uri(root), "name": os.path.basename(root_path(root).rstrip("/")) or "/"}
                for root in self.roots]


class Config:
    """The whole validated config. Values keep the names of the JSON keys."""

    def __init__(self, values, servers, path=None, tokens=(), token_source=None):
        for key in CONFIG_FIELDS:
            if key != "servers":
                setattr(self, key, values[key])
        self.servers = servers
        self.path = path
        self.tokens = list(tokens)  # [(name, token)] every request is checked against
        self.token_source = token_source  # which of TOKEN_SOURCES gave them

    @property
    def token_names(self):
        return [name for name, _ in self.tokens]


def unknown_key_hint(key, fields, aliases):
    """What to tell about a key not in `fields`: the key meant (from `aliases`, else the closest by difflib), or
    the known keys."""
    if key in aliases:
        meant = aliases[key]
    else:
        matches = difflib.get_close_matches(key, list(fields) + list(aliases), n=1)
        meant = aliases.get(matches[0], matches[0]) if matches else None
    if meant in fields:
        return "did you mean %s?" % meant
    return meant or "known keys: " + ", ".join(fields)


def _apply_fields(raw, fields, aliases, path, errors):
    """Check `raw` against a field table; returns the values with defaults filled in. Problems go to `errors`."""
    values = {}
    for key in raw:
        if key not in fields:
            errors.append("%s%s: unknown key; %s" % (path, key, unknown_key_hint(key, fields, aliases)))
    for key, field in fields.items():
        if key not in raw:
            if field.default is Field.REQUIRED:
                errors.append("%s%s: required" % (path, key))
            values[key] = None if field.default is Field.REQUIRED else field.default
            continue
        problem = field.check(raw[key]) if field.check else None
        if problem:
            errors.append("%s%s: %s" % (path, key, problem))
        values[key] = raw[key]
    return values


def _check_server_id(value, seen):
    if not isinstance(value, str):
        return "must be a string"
    if not SERVER_ID_RE.match(value):
        return "must be letters, digits, '.', '_' or '-'"
    if value.lower() in RESERVED_SERVER_IDS:
        return "'%s' is a name the gateway routes itself; choose another" % value
    if value in seen:
        return "duplicate server_id '%s'" % value
    return None


def validate_config(raw, path=None, environ=None):
    """Returns a Config or raises ConfigError listing every problem, each with its JSON path. `environ` is where
    the token may come from (TOKEN_ENV); None: nowhere."""
    if not isinstance(raw, dict):
        raise ConfigError(["config: must be a JSON object"])
    errors = []
    values = _apply_fields(raw, CONFIG_FIELDS, CONFIG_ALIASES, "", errors)
    servers = []
    raw_servers = raw.get("servers")
    if isinstance(raw_servers, dict):
        errors.append("servers: must be a list, not an object keyed by name; " + CLIENT_FORMAT_HINT)
        raw_servers = []
    elif "servers" in raw and not (isinstance(raw_servers, list) and raw_servers):
        errors.append("servers: must be a non-empty list of server objects")
        raw_servers = []
    seen = set()
    for index, raw_server in enumerate(raw_servers or ()):
        where = "servers[%d]." % index
        if not isinstance(raw_server, dict):
            errors.append("servers[%d]: must be an object" % index)
            continue
        server_values = _apply_fields(raw_server, SERVER_FIELDS, SERVER_ALIASES, where, errors)
        if "server_id" in raw_server:
            problem = _check_server_id(raw_server["server_id"], seen)
            if problem:
                errors.append("%sserver_id: %s" % (where, problem))
            elif isinstance(raw_server["server_id"], str):
                seen.add(raw_server["server_id"])
        if server_values["isolation"] == "session" and server_values["autostart"] is True:
            errors.append('%sautostart: must be false with isolation "session": each session starts its own '
                          'child' % where)
        servers.append(ServerSpec(server_values))
    if _check_string_list(values["allowed_clients"]) is None:
        for index, entry in enumerate(values["allowed_clients"]):
            problem = Allowlist.entry_problem(entry)
            if problem:
                errors.append("allowed_clients[%d]: %s" % (index, problem))
    if (values["tls_cert_file"] is None) != (values["tls_key_file"] is None):
        errors.append("tls_cert_file, tls_key_file: give both (HTTPS) or neither (HTTP)")
    tokens, token_source = resolve_tokens(values, environ or {}, config_folder(path), errors)
    if errors:
        raise ConfigError(errors)
    return Config(values, servers, path, tokens, token_source)


def config_folder(path):
    """The folder relative file names in a config are taken from: the config file's."""
    return os.path.dirname(os.path.abspath(path or "."))


def describe_json_error(error):
    """A json.JSONDecodeError as a config editor needs it: where, what, and the likely slip when it is one."""
    text, pos = error.doc, error.pos
    where = "invalid JSON at line %d, column %d: %s" % (error.lineno, error.colno, error.msg)
    if text.startswith(("//", "/*", "#"), pos):
        return where + " (JSON allows no comments: remove it)"
    before, after = text[:pos].rstrip(), text[pos:].lstrip(",").lstrip()  # 3.13 points at the comma, 3.9 after it
    if after[:1] in ("}", "]") and (before.endswith(",") or text.startswith(",", pos)):
        return where + " (JSON allows no comma after the last item: remove it)"
    return where


RESTART_KEYS = ("bind_host", "bind_port", "tls_cert_file", "tls_key_file")  # fixed once the gateway listens


def reload_plan(old, new):
    """What a reload does (pure): server ids added, removed, changed (any setting differs: the server restarts)
    and unchanged (its child and sessions carry on), and the keys whose change waits for a restart."""
    before = {spec.server_id: vars(spec) for spec in old.servers}
    after = {spec.server_id: vars(spec) for spec in new.servers}
    return {"added": [sid for sid in after if sid not in before],
            "removed": [sid for sid in before if sid not in after],
            "changed": [sid for sid in after if sid in before and after[sid] != before[sid]],
            "unchanged": [sid for sid in after if after[sid] == before.get(sid)],
            "needs_restart": [key for key in RESTART_KEYS if getattr(old, key) != getattr(new, key)]}


def load_config(path, environ=None):
    """Reads and validates the config file, with the token environment variable of `environ` (default
    os.environ); returns (Config, warnings) or raises ConfigError."""
    path = os.path.expanduser(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        shared = readable_by_others(path)
    except FileNotFoundError:
        raise ConfigError(["%s: no such file; create one with --init" % path]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(["%s: cannot read: %s" % (path, e)]) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(["%s: %s" % (path, describe_json_error(e))]) from None
    config = validate_config(raw, path, os.environ if environ is None else environ)
    warnings = []
    if shared and config.token_source in ("auth_token", "auth_tokens"):  # the others keep it out of the file
        warnings.append("%s is readable by other users and holds the token; run: chmod 600 %s" % (path, path))
    return config, warnings


class Allowlist:
    """Client addresses allowed to connect. `localhost` means 127.0.0.0/8 and ::1. An IPv4 client seen on a
    dual-stack socket as ::ffff:a.b.c.d is compared as a.b.c.d, so IPv4-mapped entries (::ffff:127.0.0.1,
    ::ffff:0:0/96) are kept as their IPv4 form: as written they could never match."""

    LOCALHOST = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")

    def __init__(self, entries):
        self._networks = []
        for entry in entries:
            if entry.strip().lower() == "localhost":
                self._networks.extend(self.LOCALHOST)
            else:
                self._networks.append(self.network(entry))

    @classmethod
    def network(cls, entry):
        """The network an entry that is not `localhost` stands for; raises ValueError."""
        network = ipaddress.ip_network(entry.strip(), strict=False)
        if network.version == 6 and network.subnet_of(cls.IPV4_MAPPED):
            return ipaddress.ip_network((network.network_address.ipv4_mapped, network.prefixlen - 96))
        return network

    @staticmethod
    def entry_problem(entry):
        if entry.strip().lower() == "localhost":
            return None
        try:
            Allowlist.network(entry)
        except ValueError:
            return "'%s' is not an IP address, a CIDR or 'localhost'" % entry
        return None

    def allows(self, host):
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def token_matches(authorization, expected):
    """Checks an Authorization header against the token in constant time."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8"))


def token_name(authorization, tokens):
    """The name of the token an Authorization header carries, from [(name, token)], or None. Every token is
    compared, so the time taken does not tell which one came close."""
    found = None
    for name, token in tokens:
        if token_matches(authorization, token) and found is None:
            found = name
    return found


def command_search_path(spec):
    """The PATH a server's command is looked up on, and where that PATH comes from."""
    if "PATH" in spec.env:
        return spec.env["PATH"], "the server's env.PATH"
    return os.environ.get("PATH", os.defpath), "the gateway's PATH"


def command_path(spec):
    """The command as the child is started with it: `~` expanded; with a `/`, relative to working_dir."""
    return os.path.expanduser(spec.command)


def command_file(spec):
    """The file a command with a `/` names."""
    return os.path.join(os.path.expanduser(spec.working_dir) or os.getcwd(), command_path(spec))


def resolve_command(spec):
    """Where the child's command will be found, or None. Returns (path or None, searched PATH, its source);
    a command with a `/` is not searched for, and its source is None."""
    command = command_path(spec)
    if os.sep in command:
        candidate = command_file(spec)
        found = candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
        return found, None, None
    search_path, source = command_search_path(spec)
    return shutil.which(command, path=search_path), search_path, source


def check_host(config):
    """The --check probes beyond the config's shape: commands, working directories, paths in args, roots.
    Returns (errors, notes)."""
    errors, notes = [], []
    for index, spec in enumerate(config.servers):
        where = "servers[%d]" % index
        for arg_index, arg in enumerate(spec.args):
            # only what is plainly a path; a warning, since a server may create it
            if arg.startswith(("/", "~/")) and not os.path.exists(os.path.expanduser(arg)):
                notes.append("%s.args[%d]: %s does not exist" % (where, arg_index, arg))
        for root in spec.roots if isinstance(spec.roots, list) else ():
            if not os.path.isdir(root_path(root)):
                notes.append("%s.roots: %s is not a folder on this host; the child is told it anyway" % (
                    where, root))
        if spec.working_dir and not os.path.isdir(os.path.expanduser(spec.working_dir)):
            errors.append("%s.working_dir: %s does not exist" % (where, spec.working_dir))
            continue
        found, search_path, source = resolve_command(spec)
        find_it = "`command -v %s` in a shell where it works shows its path" % os.path.basename(spec.command)
        if not found and source is None:
            exists = os.path.exists(command_file(spec))
            errors.append("%s.command: %s %s" % (where, spec.command, "is not an executable file" if exists
                                                  else "does not exist; " + find_it))
        elif not found:  # only here does launchd's PATH matter
            launchd = "" if source != "the gateway's PATH" else "; a LaunchAgent starts with PATH=" + LAUNCHD_PATH
            errors.append("%s.command: '%s' not found on %s (%s); give its absolute path (%s) or add its folder to "
                          "env.PATH%s" % (where, spec.command, source, search_path, find_it, launchd))
        elif source == "the gateway's PATH" and os.path.dirname(found) not in LAUNCHD_PATH.split(":"):
            notes.append("%s.command: found at %s, but a LaunchAgent starts with PATH=%s; set the absolute path "
                         "or env.PATH for this server if it runs under launchd" % (where, found, LAUNCHD_PATH))
    return errors, notes


def config_tables_markdown():
    """docs/configuration.md's two key tables (Key | Default | Value | Meaning), made from CONFIG_FIELDS and
    SERVER_FIELDS: Default from the field's default, Meaning from its doc, Value from what its check says of a
    value it refuses (its "must be ..." message), or from `values` below for a key whose check does not say it
    all (no check, or one that names only the first rule it tests). A test keeps the doc equal to this."""
    reserved = ", ".join("`%s`" % name for name in sorted(RESERVED_SERVER_IDS))
    values = {  # key -> Value, where the check's message cannot give it
        "auth_token": "a string of printable ASCII, at least 32 characters, no leading or trailing space, not "
                      "containing `replace-me`",
        "auth_token_file": "a path (`~` expanded); the file holds one token, as `auth_token`",
        "auth_tokens": 'a non-empty list of `{"name": ..., "token": ...}`: names of 1 to 64 letters, digits, `.`, '
                       "`_`, `-`, unique; tokens as `auth_token`, unique",
        "tls_cert_file": "a path, as `auth_token_file`; with `tls_key_file`",
        "tls_key_file": "a path, as `auth_token_file`; with `tls_cert_file`",
        "allowed_clients": "a non-empty list of IP addresses, CIDRs or `localhost`",
        "allowed_origins": "a list of origins: `http://` or `https://`, a host, an optional `:port`, no path",
        "servers": "non-empty list of server objects",
        "server_id": "letters, digits, `.`, `_`, `-`; unique; not one of %s (any case)" % reserved,
        "autostart": "true or false; must be false with isolation `session`",
    }

    def cell(text):
        return text.replace("|", "\\|")

    def table(fields):
        rows = ["| Key | Default | Value | Meaning |", "|---|---|---|---|"]
        for key, field in fields.items():
            default = ("required" if field.default is Field.REQUIRED else "unset" if field.default is None
                       else "`%s`" % json.dumps(field.default))
            value = values.get(key) or field.check(object())[len("must be "):]
            rows.append("| `%s` | %s | %s | %s |" % (key, default, cell(value), cell(field.doc)))
        return "\n".join(rows)

    return "Top-level keys:\n\n%s\n\nKeys of each object in `servers`:\n\n%s\n" % (
        table(CONFIG_FIELDS), table(SERVER_FIELDS))


# § 5 JSON-RPC core (no I/O) ------------------------------------------------------------------------------------------

REQUEST, NOTIFICATION, RESPONSE, INVALID = "request", "notification", "response", "invalid"
MODERN, LEGACY = "modern", "legacy"  # protocol eras: per-request _meta (2026-07-28 on), or the handshake


def valid_id(value):
    return isinstance(value, (str, float)) or _is_int(value)


def classify(message):
    """What a decoded JSON-RPC message is: (REQUEST | NOTIFICATION | RESPONSE | INVALID, reason or None)."""
    if not isinstance(message, dict):
        return INVALID, "a JSON-RPC message must be an object"
    if message.get("jsonrpc") != "2.0":
        return INVALID, 'jsonrpc must be "2.0"'
    if "method" in message:
        if not isinstance(message["method"], str):
            return INVALID, "method must be a string"
        if "params" in message and not isinstance(message["params"], (dict, list)):
            return INVALID, "params must be an object or an array"
        if "id" not in message:
            return NOTIFICATION, None
        if not valid_id(message["id"]):
            return INVALID, "id must be a string or a number"
        return REQUEST, None
    if "id" in message and ("result" in message) != ("error" in message):
        return RESPONSE, None
    return INVALID, "neither a request, a notification nor a response"


def rpc_error(request_id, code, message, data=None):
    error = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def rpc_error_from(error, request_id):
    """A GatewayError as the JSON-RPC error answering `request_id`; the gateway's fields travel in `data`."""
    data = dict(error.rpc_data or {}, error_code=error.error_code)
    if error.server_id is not None:
        data["server_id"] = error.server_id
    return rpc_error(request_id, error.rpc_code, error.message, data)


def message_id(message):
    """The id of a message if it carries a valid one, for error answers; else None."""
    if isinstance(message, dict) and valid_id(message.get("id")):
        return message["id"]
    return None


def negotiate_protocol_version(requested, child_version=None):
    """The protocol version a client gets: the one it asked for when the gateway supports it and the child speaks
    it (the child's own version or an older one), else the newest that both the gateway and the child speak."""
    usable = [version for version in SUPPORTED_PROTOCOL_VERSIONS
              if child_version not in SUPPORTED_PROTOCOL_VERSIONS or version <= child_version]
    return requested if requested in usable else usable[0]


# Revision 2026-07-28 ("modern"): no handshake, no session; every request carries its version and the client's
# capabilities in params._meta, and the HTTP headers mirror the body. The rules below decide a request's era and
# check it the way the specification's server validation (and the TypeScript SDK's classifier) does.

MODERN_PROTOCOL_VERSIONS = ("2026-07-28",)
FIRST_MODERN_VERSION = MODERN_PROTOCOL_VERSIONS[-1]
ALL_PROTOCOL_VERSIONS = MODERN_PROTOCOL_VERSIONS + SUPPORTED_PROTOCOL_VERSIONS  # what /{server_id}/rpc serves
META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
# Methods the revision removed; a modern request for one gets 404 and -32601, as for any unknown method.
REMOVED_IN_MODERN = frozenset({"initialize", "ping", "logging/setLevel", "resources/subscribe",
                               "resources/unsubscribe"})
# Results that must carry caching hints; the gateway cannot know how long a child's answer stays true.
CACHEABLE_METHODS = frozenset({"server/discover", "tools/list", "prompts/list", "resources/list",
                               "resources/templates/list", "resources/read"})
MRTR_METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})  # may answer input_required
# HTTP statuses the revision gives JSON-RPC errors of a request's own processing; the rest are answered 200
MODERN_ERROR_STATUS = {JSONRPC_METHOD_NOT_FOUND: 404, MCP_MISSING_CLIENT_CAPABILITY: 400}
# subscriptions/listen filter fields, and the capability whose listChanged each needs
LISTEN_FIELDS = (("toolsListChanged", "tools"), ("promptsListChanged", "prompts"),
                 ("resourcesListChanged", "resources"))
MCP_NAME_SOURCE = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}  # Mcp-Name mirrors it
_BASE64_SENTINEL_RE = re.compile(r"=\?base64\?([A-Za-z0-9+/]*={0,2})\?=\Z")


def is_modern_version(version):
    return isinstance(version, str) and version >= FIRST_MODERN_VERSION


def request_meta(message):
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta if isinstance(meta, dict) else None


def _modern_error(code, message, data=None, http_status=400):
    error_code = {MCP_HEADER_MISMATCH: "header_mismatch", MCP_UNSUPPORTED_PROTOCOL_VERSION:
                  "unsupported_protocol_version", JSONRPC_METHOD_NOT_FOUND: "method_not_found",
                  MCP_MISSING_CLIENT_CAPABILITY: "missing_client_capability"}.get(code, "invalid_params")
    return GatewayError(message, http_status, error_code, code, rpc_data=data)


def unsupported_version(requested):
    return _modern_error(MCP_UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version %s" % requested,
                         {"supported": list(ALL_PROTOCOL_VERSIONS), "requested": requested})


def envelope_problem(meta):
    """What is wrong with a modern request's _meta envelope, or None."""
    if not isinstance(meta.get(META_PROTOCOL_VERSION), str):
        return "%s: missing or not a string" % META_PROTOCOL_VERSION
    if not isinstance(meta.get(META_CLIENT_CAPABILITIES), dict):
        return "%s: missing or not an object" % META_CLIENT_CAPABILITIES
    info = meta.get(META_CLIENT_INFO)
    if info is not None and not (isinstance(info, dict) and isinstance(info.get("name"), str) and
                                 isinstance(info.get("version"), str)):
        return "%s: must be an object with string name and version" % META_CLIENT_INFO
    if META_LOG_LEVEL in meta and meta[META_LOG_LEVEL] not in LOG_LEVELS:
        return "%s: must be one of %s" % (META_LOG_LEVEL, ", ".join(LOG_LEVELS))
    return None


def decode_header_value(value):
    """An Mcp-Name / Mcp-Param-* value with its `=?base64?...?=` sentinel decoded; None when the sentinel holds
    no canonical base64 of UTF-8."""
    value = value.strip(" \t")
    if not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    match = _BASE64_SENTINEL_RE.match(value)
    if not match or len(match.group(1)) % 4:
        return None
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def _mismatch(what):
    return _modern_error(MCP_HEADER_MISMATCH, "Header mismatch: " + what)


def request_era(message, headers):
    """The era of one decoded POST body: (MODERN, version) or (LEGACY, None), decided from the body first as the
    specification asks (a proxy that drops a header must not change the era). Raises the GatewayError a modern
    client expects for a malformed claim: -32602, -32020 or -32022, each with HTTP 400. `headers` are the
    request's, lower-case names."""
    header_version = headers.get("mcp-protocol-version")
    header_version = header_version.strip(" \t") if header_version is not None else None
    if isinstance(message, list):
        if any(request_meta(item) and META_PROTOCOL_VERSION in request_meta(item) for item in message):
            raise GatewayError("JSON-RPC batches may not hold requests of revision %s or later" %
                               FIRST_MODERN_VERSION, 400, "invalid_request", JSONRPC_INVALID_REQUEST)
        return LEGACY, None
    kind, _ = classify(message)
    if kind not in (REQUEST, NOTIFICATION):
        return LEGACY, None
    meta = request_meta(message)
    claim = meta is not None and META_PROTOCOL_VERSION in meta
    method = message["method"]
    if method == "initialize" and not (claim and is_modern_version(meta[META_PROTOCOL_VERSION])):
        if is_modern_version(header_version):
            raise _mismatch("initialize (the handshake of earlier revisions) sent with MCP-Protocol-Version %s" %
                            header_version)
        return LEGACY, None
    if not claim:
        if not is_modern_version(header_version):
            return LEGACY, None
        if kind == NOTIFICATION:
            return MODERN, header_version
        raise _modern_error(JSONRPC_INVALID_PARAMS, "MCP-Protocol-Version names %s, but params._meta lacks %s" % (
            header_version, META_PROTOCOL_VERSION if meta is not None else "the per-request envelope"))
    problem = envelope_problem(meta) if kind == REQUEST else None
    if problem:
        raise _modern_error(JSONRPC_INVALID_PARAMS, "Invalid _meta envelope: " + problem)
    version = meta[META_PROTOCOL_VERSION]
    if header_version is not None and header_version != version:
        raise _mismatch("MCP-Protocol-Version %s, but params._meta names %s" % (header_version, version))
    method_header = headers.get("mcp-method")
    if method_header is not None and method_header.strip(" \t") != method:
        raise _mismatch("Mcp-Method %s, but the body's method is %s" % (method_header.strip(), method))
    if version not in MODERN_PROTOCOL_VERSIONS:
        raise unsupported_version(version)
    return MODERN, version


def check_modern_headers(message, headers):
    """The standard headers a modern request must carry, mirroring its body (raises -32020 with HTTP 400)."""
    if "mcp-protocol-version" not in headers:
        raise _mismatch("the required MCP-Protocol-Version header is missing")
    if "mcp-method" not in headers:
        raise _mismatch("the required Mcp-Method header is missing")
    field = MCP_NAME_SOURCE.get(message["method"])
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    body_value = params.get(field) if field else None
    if not isinstance(body_value, str):
        return
    if "mcp-name" not in headers:
        raise _mismatch("params.%s is %r but the required Mcp-Name header is missing" % (field, body_value))
    decoded = decode_header_value(headers["mcp-name"])
    if decoded is None:
        raise _mismatch("the Mcp-Name header holds an invalid base64 value")
    if decoded != body_value:
        raise _mismatch("Mcp-Name %r, but params.%s is %r" % (decoded, field, body_value))


def x_mcp_header_params(input_schema):
    """A tool's `x-mcp-header` declarations: [(property path, header name, JSON type)] along chains of
    `properties`, the only places the specification allows them."""
    found = []
    stack = [(input_schema, ())]
    while stack:
        schema, path = stack.pop()
        if not isinstance(schema, dict):
            continue
        name = schema.get("x-mcp-header")
        if path and isinstance(name, str) and name:
            found.append((path, name, schema.get("type")))
        properties = schema.get("properties")
        if isinstance(properties, dict):
            stack.extend((child, path + (key,)) for key, child in properties.items())
    return found


def _param_text(value):
    """A tool argument as its Mcp-Param-* header carries it; None for what no header carries."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def param_header_problem(declarations, arguments, headers):
    """Why a tools/call's Mcp-Param-* headers disagree with its arguments, or None (integers compared as
    numbers: 42.0 and 42 are equal)."""
    for path, name, kind in declarations:
        value = arguments
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        text = _param_text(value) if value is not None else None
        if text is None:
            continue
        header = headers.get("mcp-param-" + name.lower())
        if header is None:
            return "arguments.%s is set but the Mcp-Param-%s header is missing" % (".".join(path), name)
        if not all(" " <= c <= "~" or c == "\t" for c in header):
            return "the Mcp-Param-%s header holds characters a header may not carry" % name
        decoded = decode_header_value(header)
        if decoded is None:
            return "the Mcp-Param-%s header holds an invalid base64 value" % name
        if kind in ("integer", "number") and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                same = float(decoded) == value
            except ValueError:
                same = False
        else:
            same = decoded == text
        if not same:
            return "Mcp-Param-%s is %r but arguments.%s is %r" % (name, decoded, ".".join(path), value)
    return None


def modern_result(method, result, server_info):
    """A child's (or the gateway's) result as revision 2026-07-28 has it: resultType, the server's identity in
    _meta and, where the caching page requires them, caching hints: immediately stale and private, since the
    gateway cannot know how long a child's answer holds or whether it depends on the caller. Completes `result`,
    a dict of the caller's own, in place, and returns it."""
    result_type = result.setdefault("resultType", "complete")
    if server_info is not None:
        meta = result.get("_meta")
        if not isinstance(meta, dict):
            result["_meta"] = {META_SERVER_INFO: server_info}
        elif META_SERVER_INFO not in meta:
            result["_meta"] = dict(meta, **{META_SERVER_INFO: server_info})
    if result_type == "complete" and method in CACHEABLE_METHODS:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
    return result


class RequestStateCodec:
    """The requestState the gateway hands a modern client while it holds a handshake-era child's call for it
    (MRTR translation): a handle to that call, bound to the request's method and target and to an expiry, signed
    with a key of this process. The specification calls requestState attacker-controlled: whatever fails the
    signature, names another request or has expired is refused."""
    SIGNATURE_BYTES = 16

    def __init__(self, key=None, clock=time.time):
        self._key = key or secrets.token_bytes(32)
        self._clock = clock

    def encode(self, handle, method, target, ttl_s):
        payload = json_bytes([handle, method, target, int(self._clock() + ttl_s)])
        return "%s.%s" % (self._b64(payload), self._b64(self._sign(payload)))

    def decode(self, state, method, target):
        """The handle in `state`; raises GatewayError -32602 (HTTP 400) when it cannot be trusted."""
        handle, state_method, state_target, expires = json_loads(self._signed_payload(state))
        if (state_method, state_target) != (method, target):
            raise self._refused("it belongs to another request")
        if self._clock() > expires:
            raise self._refused("it has expired")
        return handle

    def issued(self, state):
        """Whether this process signed `state` (it may still have expired or name another request)."""
        try:
            self._signed_payload(state)
        except GatewayError:
            return False
        return True

    def _signed_payload(self, state):
        try:
            payload_text, signature_text = state.split(".")
            payload, signature = self._unb64(payload_text), self._unb64(signature_text)
        except (AttributeError, ValueError):
            raise self._refused("it is not one the gateway issued") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise self._refused("it fails its integrity check")
        return payload

    def _sign(self, payload):
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:self.SIGNATURE_BYTES]

    @staticmethod
    def _b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    @staticmethod
    def _unb64(text):
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    @staticmethod
    def _refused(why):
        return _modern_error(JSONRPC_INVALID_PARAMS, "requestState refused: %s" % why)


def mrtr_target(message):
    """What a retry must name the same as its first request: the tool, prompt or resource."""
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    value = params.get(MCP_NAME_SOURCE.get(message["method"], "name"))
    return value if isinstance(value, str) else None


def listenable(capabilities):
    """The list-change fields of a subscriptions/listen filter a server with these capabilities can honour,
    each with the notification it stands for."""
    return {field: "notifications/%s/list_changed" % kind for field, kind in LISTEN_FIELDS
            if isinstance(capabilities.get(kind), dict) and capabilities[kind].get("listChanged")}


def subscription_filter(subscription_id, methods):
    """What a subscriptions/listen stream hears: the notifications it opted in to, each tagged with the listen
    request's id (its subscription id); None for anything else."""
    def deliver(message):
        if message.get("method") not in methods:
            return None
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        return dict(message, params=dict(params, _meta=dict(meta, **{META_SUBSCRIPTION_ID: subscription_id})))
    return deliver


def modern_answer(method, answer, server_info):
    """A handshake-era child's answer as a modern client expects it, made in place (the answer is its call's
    alone): results per modern_result; the old resource-not-found code -32002 as the -32602 that replaced it."""
    error = answer.get("error")
    if isinstance(error, dict):
        if error.get("code") == MCP_RESOURCE_NOT_FOUND_LEGACY:
            error["code"] = JSONRPC_INVALID_PARAMS
        return answer
    result = answer.get("result")
    answer["result"] = modern_result(method, result if isinstance(result, dict) else {}, server_info)
    return answer


def result_extras_json(server_info):
    """What modern_result adds to a complete result that has neither resultType nor _meta, as JSON members (no
    braces): the same for every answer of one child, so encoded once, when it starts."""
    return json_bytes(modern_result("tools/call", {}, server_info))[1:-1]


def modern_answer_json(method, answer, server_info, extras):
    """json_bytes(modern_answer(method, answer, server_info)) at less cost for most answers: a complete result
    with neither resultType nor _meta of its own, to a method without caching hints, is encoded as the child gave
    it, and `extras` (result_extras_json of `server_info`) go in before its closing brace."""
    result = answer.get("result")
    if not (len(answer) == 3 and type(result) is dict and "resultType" not in result and "_meta" not in result and
            method not in CACHEABLE_METHODS):  # 3: jsonrpc, id and result, the members rebuilt below
        return json_bytes(modern_answer(method, answer, server_info))
    body = json_bytes({"jsonrpc": "2.0", "id": answer["id"], "result": result})  # ends with the result's "}" + "}"
    return b"".join((body[:-2], b"," if result else b"", extras, b"}}"))


def modern_envelope(message, capabilities, client_info=None, log_level=None):
    """A request as a modern child needs it: params._meta naming the revision, the client's capabilities and,
    when known, its identity and the log level it asked for."""
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    meta = dict(params.get("_meta") if isinstance(params.get("_meta"), dict) else {})
    meta[META_PROTOCOL_VERSION] = FIRST_MODERN_VERSION
    meta[META_CLIENT_CAPABILITIES] = capabilities
    if client_info:
        meta[META_CLIENT_INFO] = client_info
    if log_level:
        meta[META_LOG_LEVEL] = log_level
    return dict(message, params=dict(params, _meta=meta))


def drop_claim(message):
    """Makes a modern request one a handshake-era child takes, in place (the request's decoded body, which only
    its own call reads): its _meta without the revision claim, the key that marks a request of the modern era,
    which some such servers refuse on a handshake connection (the Python SDK's), and without `inputResponses` (a
    retry's answers are the gateway's to deliver). The other reserved keys (the client's capabilities, identity,
    log level) stay: news to a child that reads them per request (the TypeScript SDK's), and nothing to one that
    does not. `message` is a valid modern request (request_era): its params hold a _meta with the claim."""
    params = message["params"]
    params.pop("inputResponses", None)
    meta = params["_meta"]
    del meta[META_PROTOCOL_VERSION]
    if not meta:
        del params["_meta"]
    return message


def input_request(message):
    """A handshake-era child's request as one entry of an input_required result: its method and params, less
    the progress token it gave its own request (MRTR has no progress for it)."""
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else None
    if meta is not None and "progressToken" in meta:
        kept = {key: value for key, value in meta.items() if key != "progressToken"}
        params = dict(params, _meta=kept) if kept else {key: value for key, value in params.items() if key != "_meta"}
    return {"method": message["method"], "params": params}


def handshake_result_from(discovered):
    """What a handshake-era client's initialize is answered with from a modern child: its discover result in
    the shape of an initialize result."""
    meta = discovered.get("_meta") if isinstance(discovered.get("_meta"), dict) else {}
    result = {"protocolVersion": HANDSHAKE_PROTOCOL_VERSION, "capabilities": discovered.get("capabilities") or {},
              "serverInfo": meta.get(META_SERVER_INFO) or {"name": "unknown", "version": "unknown"}}
    if isinstance(discovered.get("instructions"), str):
        result["instructions"] = discovered["instructions"]
    return result


def legacy_answer(answer):
    """A modern child's answer for a handshake-era client: without the result fields only modern clients read."""
    result = answer.get("result")
    if not isinstance(result, dict):
        return answer
    return dict(answer, result={key: value for key, value in result.items()
                                if key not in ("resultType", "ttlMs", "cacheScope")})


def discover_result(init_result):
    """server/discover answered from a handshake-era child's kept initialize result."""
    result = {"supportedVersions": list(ALL_PROTOCOL_VERSIONS),
              "capabilities": init_result.get("capabilities") or {}}
    if isinstance(init_result.get("instructions"), str):
        result["instructions"] = init_result["instructions"]
    return modern_result("server/discover", result, init_result.get("serverInfo"))


# § 6 Telemetry -------------------------------------------------------------------------------------------------------
# Metrics are always kept (GET /metrics serves them); traces exist only while an exporter wants them. OTLP/HTTP
# with the protobuf-JSON encoding goes out on one thread, from bounded queues, only when OTEL_* variables ask.

HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)  # HTTP semconv
MCP_DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)  # MCP semconv
SPAN_INTERNAL, SPAN_SERVER, SPAN_CLIENT = 1, 2, 3  # OTLP SpanKind
STATUS_ERROR = 2  # OTLP Status.code
RETRYABLE_EXPORT_STATUSES = (429, 502, 503, 504)  # OTLP/HTTP: retry these, after Retry-After when given
EXPORT_ATTEMPTS = 3
SHUTDOWN_FLUSH_S = 1.0  # the last export at stop; keeps a gateway stop under 5 s even with a hung collector
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
OVERFLOW_ATTRIBUTES = (("otel.metric.overflow", True),)
_ids = random.Random()  # trace and span ids need to be unique, not secret: no os.urandom per request


class SpanContext:
    __slots__ = ("trace_id", "span_id", "sampled")

    def __init__(self, trace_id, span_id, sampled):
        self.trace_id = trace_id  # 32 lower-case hex digits
        self.span_id = span_id  # 16 lower-case hex digits
        self.sampled = sampled

    def traceparent(self):
        return "00-%s-%s-%s" % (self.trace_id, self.span_id, "01" if self.sampled else "00")


def parse_traceparent(value):
    """A W3C traceparent header value as a SpanContext, or None when it is absent or invalid."""
    match = _TRACEPARENT_RE.match(value.strip()) if isinstance(value, str) else None
    if not match or match.group(1) == "ff" or (match.group(1) == "00" and len(value.strip()) != 55):
        return None
    trace_id, span_id = match.group(2), match.group(3)
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return SpanContext(trace_id, span_id, bool(int(match.group(4), 16) & 1))


def meta_traceparent(message):
    """The trace context an MCP request carries in params._meta, or None."""
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    return parse_traceparent(meta.get("traceparent")) if isinstance(meta, dict) else None


def with_meta(message, **entries):
    """A copy of a request with entries added to its params._meta."""
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    meta = params.get("_meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta.update(entries)
    return dict(message, params=dict(params, _meta=meta))


def should_sample(sampler, ratio, parent, trace_id):
    """OTEL_TRACES_SAMPLER's decision for a new span (pure)."""
    if sampler.startswith("parentbased_") and parent is not None:
        return parent.sampled
    root = sampler[len("parentbased_"):] if sampler.startswith("parentbased_") else sampler
    if root == "always_off":
        return False
    if root == "traceidratio":  # the low 8 bytes of the trace id are random: compare them with the ratio
        return int(trace_id[16:], 16) < ratio * (1 << 64)
    return True


class Span:
    """One span: a name, a kind, times, attributes and events; exported when it ends, if sampled."""
    __slots__ = ("context", "parent_id", "name", "kind", "start_ns", "attributes", "events", "error", "_tracer")

    def __init__(self, tracer, name, kind, context, parent_id, attributes):
        self._tracer = tracer
        self.name = name
        self.kind = kind
        self.context = context
        self.parent_id = parent_id
        self.start_ns = time.time_ns()
        self.attributes = attributes
        self.events = []
        self.error = None

    def set(self, key, value):
        self.attributes[key] = value

    def add_event(self, name, **attributes):
        self.events.append((time.time_ns(), name, attributes))

    def fail(self, message):
        self.error = message

    def reparent(self, parent):
        """Continues a trace learned after the span began (params._meta); only before it has children."""
        self.context = SpanContext(parent.trace_id, self.context.span_id, self._tracer.sample(parent, parent.trace_id))
        self.parent_id = parent.span_id

    def end(self):
        if self.context.sampled:
            self._tracer.export(self, time.time_ns())


class _NoSpan:
    """What tracing hands out while no exporter wants spans: accepts everything, keeps nothing."""
    context = None

    def set(self, key, value):
        pass

    def add_event(self, name, **attributes):
        pass

    def fail(self, message):
        pass

    def reparent(self, parent):
        pass

    def end(self):
        pass


NO_SPAN = _NoSpan()


def bound_label(value, limit):
    """A client-chosen label value cut to `limit` characters, marked with a trailing "..." when it was cut."""
    return value if len(value) <= limit else value[:limit - 3] + "..."


class LabelValues:
    """Bounds the values clients choose (method, tool and prompt names) before they become metric labels and
    span attributes: each is cut to MAX_CHARS, and past MAX_DISTINCT distinct values of one attribute, new
    values all become OVERFLOW. Memory and /metrics then stay small whatever names clients send."""
    MAX_CHARS = 128
    MAX_DISTINCT = 100
    OVERFLOW = "_other"

    def __init__(self, known=None):
        self._known = known or {}  # attribute key -> values that always pass and count for nothing
        self._lock = threading.Lock()
        self._seen = {}  # attribute key -> set of the values let through (self._lock for additions)

    def bound(self, key, value):
        value = bound_label(value, self.MAX_CHARS)
        seen = self._seen.get(key)
        if seen is not None and value in seen or value in self._known.get(key, ()):  # no lock: the common case
            return value
        with self._lock:
            seen = self._seen.setdefault(key, set())
            if len(seen) >= self.MAX_DISTINCT and value not in seen:
                return self.OVERFLOW
            seen.add(value)
        return value


# The specification's request methods: a flood of made-up ones cannot push them into the overflow value.
MCP_REQUEST_METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list",
    "resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel", "server/discover"})
CLIENT_LABELS = LabelValues({"mcp.method.name": MCP_REQUEST_METHODS})  # one per process: it bounds its memory


class Instrument:
    """A metric with cumulative points per attribute set: a histogram (bounds given) or a sum."""
    MAX_POINTS = 2000  # the OpenTelemetry SDKs' default cardinality limit

    def __init__(self, name, unit, description, bounds=None, monotonic=True, observe=None):
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds = bounds
        self.monotonic = monotonic
        self.observe = observe  # for a gauge read when collected: () -> [(attributes tuple, value)]
        self._lock = threading.Lock()
        self._points = {}  # attribute items (a tuple) -> [bucket counts..., sum, count, min, max] or [value]

    def record(self, value, attributes=()):
        """Adds `value` (a sum's increment, or a histogram's measurement) to the point for `attributes`. Past
        MAX_POINTS attribute sets, new ones share one overflow point, as OpenTelemetry SDKs do: clients choose
        method and tool names, and must not grow the gateway's memory without end."""
        key = attributes if type(attributes) is tuple else tuple(attributes)
        with self._lock:
            point = self._points.get(key)
            if point is None and len(self._points) >= self.MAX_POINTS:
                key = OVERFLOW_ATTRIBUTES
                point = self._points.get(key)
            if self.bounds is None:
                self._points[key] = [value + (point[0] if point else 0)]
                return
            if point is None:
                point = self._points[key] = [0] * (len(self.bounds) + 1) + [0.0, 0, value, value]
            point[bisect.bisect_left(self.bounds, value)] += 1
            point[-4] += value
            point[-3] += 1
            point[-2] = min(point[-2], value)
            point[-1] = max(point[-1], value)

    def points(self):
        """[(attributes dict, point list)], a consistent copy."""
        if self.observe is not None:
            return [(dict(key), [value]) for key, value in self.observe()]
        with self._lock:
            return [(dict(key), list(point)) for key, point in self._points.items()]


class Meter:
    """Every instrument the gateway keeps. Names and units follow the OpenTelemetry conventions where they
    have one (HTTP, MCP); the gateway's own start with host_mcp_gateway."""

    def __init__(self):
        self.start_ns = time.time_ns()
        self.http_duration = Instrument("http.server.request.duration", "s", "Duration of HTTP server requests.",
                                        HTTP_DURATION_BUCKETS)
        self.server_operation = Instrument("mcp.server.operation.duration", "s",
                                           "MCP request duration as the gateway's clients see it.", MCP_DURATION_BUCKETS)
        self.client_operation = Instrument("mcp.client.operation.duration", "s",
                                           "MCP request duration between the gateway and its children.",
                                           MCP_DURATION_BUCKETS)
        self.requests = Instrument("host_mcp_gateway.requests", "{request}", "HTTP requests by route and outcome.")
        self.restarts = Instrument("host_mcp_gateway.child.restarts", "{restart}", "Child processes restarted.")
        self.dropped = Instrument("host_mcp_gateway.telemetry.dropped", "{item}",
                                  "Spans and metric exports dropped because a queue was full or a collector failed.")
        self.sessions = Instrument("host_mcp_gateway.sessions.active", "{session}", "MCP sessions open.",
                                   monotonic=False)
        # Read when collected, from the children's own tables: counting each call in and out would cost the
        # request path for a number nobody reads until the next export or scrape.
        self.calls = Instrument("host_mcp_gateway.calls.in_flight", "{call}", "Calls waiting for a child's answer.",
                                monotonic=False, observe=lambda: [])
        self.instruments = [self.http_duration, self.server_operation, self.client_operation, self.requests,
                            self.restarts, self.dropped, self.sessions, self.calls]


def _otlp_value(value):
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in protobuf JSON
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_otlp_value(item) for item in value]}}
    return {"stringValue": str(value)}


def otlp_attributes(attributes):
    return [{"key": key, "value": _otlp_value(value)} for key, value in attributes.items() if value is not None]


def otlp_span(span, end_ns):
    encoded = {"traceId": span.context.trace_id, "spanId": span.context.span_id, "name": span.name,
               "kind": span.kind, "startTimeUnixNano": str(span.start_ns), "endTimeUnixNano": str(end_ns),
               "attributes": otlp_attributes(span.attributes),
               "events": [{"timeUnixNano": str(t), "name": name, "attributes": otlp_attributes(attributes)}
                          for t, name, attributes in span.events]}
    if span.parent_id:
        encoded["parentSpanId"] = span.parent_id
    if span.error is not None:
        encoded["status"] = {"code": STATUS_ERROR, "message": span.error}
    return encoded


def otlp_traces(resource, scope, spans):
    """An ExportTraceServiceRequest in OTLP/JSON: ids in hex, enums as numbers, 64-bit integers as strings."""
    return {"resourceSpans": [{"resource": {"attributes": otlp_attributes(resource)},
                               "scopeSpans": [{"scope": scope, "spans": spans}]}]}


def otlp_metrics(resource, scope, meter, now_ns):
    """An ExportMetricsServiceRequest in OTLP/JSON, every point cumulative since the meter started."""
    metrics = []
    for instrument in meter.instruments:
        points = instrument.points()
        if not points:
            continue
        times = {"startTimeUnixNano": str(meter.start_ns), "timeUnixNano": str(now_ns)}
        metric = {"name": instrument.name, "unit": instrument.unit, "description": instrument.description}
        if instrument.bounds is None:
            metric["sum"] = {"aggregationTemporality": 2, "isMonotonic": instrument.monotonic, "dataPoints": [
                dict(times, attributes=otlp_attributes(attributes), asInt=str(point[0]))
                for attributes, point in points]}
        else:
            metric["histogram"] = {"aggregationTemporality": 2, "dataPoints": [
                dict(times, attributes=otlp_attributes(attributes), count=str(point[-3]), sum=point[-4],
                     bucketCounts=[str(n) for n in point[:-4]], explicitBounds=list(instrument.bounds),
                     min=point[-2], max=point[-1])
                for attributes, point in points]}
        metrics.append(metric)
    return {"resourceMetrics": [{"resource": {"attributes": otlp_attributes(resource)},
                                 "scopeMetrics": [{"scope": scope, "metrics": metrics}]}]}


_PROMETHEUS_UNITS = {"s": "_seconds", "By": "_bytes"}


def prometheus_name(instrument):
    """An instrument's name as OpenTelemetry's Prometheus exporter writes it: dots to underscores, the unit as
    a suffix (annotations such as {request} dropped), and _total on monotonic sums."""
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", instrument.name) + _PROMETHEUS_UNITS.get(instrument.unit, "")
    return name + "_total" if instrument.bounds is None and instrument.monotonic else name


def _prometheus_labels(attributes, extra=()):
    pairs = [(re.sub(r"[^a-zA-Z0-9_]", "_", key), str(value)) for key, value in attributes.items()
             if value is not None] + list(extra)
    if not pairs:
        return ""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, value in pairs)
    return "{" + ",".join('%s="%s"' % (key, value) for (key, _), value in zip(pairs, escaped)) + "}"


def prometheus_text(meter):
    """Every instrument in the Prometheus text exposition format (version 0.0.4)."""
    lines = []
    for instrument in meter.instruments:
        name = prometheus_name(instrument)
        kind = "histogram" if instrument.bounds else "counter" if instrument.monotonic else "gauge"
        lines += ["# HELP %s %s" % (name, instrument.description), "# TYPE %s %s" % (name, kind)]
        for attributes, point in instrument.points():
            if instrument.bounds is None:
                lines.append("%s%s %s" % (name, _prometheus_labels(attributes), point[0]))
                continue
            cumulative = 0
            for bound, count in zip(list(instrument.bounds) + ["+Inf"], point[:-4]):
                cumulative += count
                lines.append("%s_bucket%s %d" % (name, _prometheus_labels(attributes, [("le", str(bound))]),
                                                 cumulative))
            lines.append("%s_sum%s %s" % (name, _prometheus_labels(attributes), repr(float(point[-4]))))
            lines.append("%s_count%s %d" % (name, _prometheus_labels(attributes), point[-3]))
    return "\n".join(lines) + "\n"


def _parse_key_values(text):
    """OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES: comma-separated, URL-encoded key=value pairs."""
    pairs = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return pairs


def _env_number(environ, name, default, warnings, minimum=0):
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        warnings.append("%s=%r is not a number >= %s; using %s" % (name, raw, minimum, default))
        return default
    return value


def _endpoint_url(value):
    value = value.strip()
    return value if "://" in value else "http://" + value  # the original README's "localhost:4317" has none


class TelemetrySettings:
    """What the standard OTEL_* variables ask for (pure: built from a mapping). `warnings` say what was off."""

    SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
                "parentbased_traceidratio")

    def __init__(self, environ):
        self.warnings = []
        get = environ.get
        self.disabled = get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        base = get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        timeout = _env_number(environ, "OTEL_EXPORTER_OTLP_TIMEOUT", 10000, self.warnings, 1)
        self.endpoints, self.headers, self.timeouts = {}, {}, {}
        mismatched = []  # endpoints that look like gRPC or protobuf
        for kind in ("traces", "metrics"):
            upper = kind.upper()
            headers = _parse_key_values(get("OTEL_EXPORTER_OTLP_HEADERS"))
            headers.update(_parse_key_values(get("OTEL_EXPORTER_OTLP_%s_HEADERS" % upper)))
            self.headers[kind] = headers
            self.timeouts[kind] = _env_number(environ, "OTEL_EXPORTER_OTLP_%s_TIMEOUT" % upper, timeout,
                                              self.warnings, 1) / 1000.0
            own = get("OTEL_EXPORTER_OTLP_%s_ENDPOINT" % upper, "").strip()
            url = _endpoint_url(own) if own else _endpoint_url(base).rstrip("/") + "/v1/" + kind if base else None
            exporter = get("OTEL_%s_EXPORTER" % upper, "otlp").strip().lower()
            if url is None or self.disabled or exporter == "none":
                continue
            if exporter != "otlp":
                self.warnings.append("OTEL_%s_EXPORTER=%s: this gateway only exports otlp; %s stay off" % (
                    upper, exporter, kind))
                continue
            try:
                port = urllib.parse.urlsplit(url).port
            except ValueError:
                self.warnings.append("%s is not a valid endpoint URL (its port); %s stay off" % (url, kind))
                continue
            self.endpoints[kind] = url
            protocol = (get("OTEL_EXPORTER_OTLP_%s_PROTOCOL" % upper) or get("OTEL_EXPORTER_OTLP_PROTOCOL", "")).strip()
            if protocol in ("grpc", "http/protobuf") or port == 4317:
                mismatched.append("%s (%s)" % (url, protocol or "gRPC on port 4317"))
        if mismatched:  # one warning, however many signals it concerns
            self.warnings.append(
                "this gateway exports OTLP/HTTP with JSON bodies (usually port 4318), not what %s suggests; set "
                "OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:4318 and OTEL_EXPORTER_OTLP_PROTOCOL=http/json" %
                " and ".join(mismatched))
        self.service_name = get("OTEL_SERVICE_NAME", "").strip() or None
        self.resource_attributes = _parse_key_values(get("OTEL_RESOURCE_ATTRIBUTES"))
        self.sampler = get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
        if self.sampler not in self.SAMPLERS:
            self.warnings.append("OTEL_TRACES_SAMPLER=%s is not one of %s; using parentbased_always_on" % (
                self.sampler, ", ".join(self.SAMPLERS)))
            self.sampler = "parentbased_always_on"
        self.ratio = min(1.0, _env_number(environ, "OTEL_TRACES_SAMPLER_ARG", 1.0, self.warnings))
        self.schedule_delay_s = _env_number(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000, self.warnings) / 1000.0
        self.max_queue = int(_env_number(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, self.warnings, 1))
        self.max_batch = int(_env_number(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, self.warnings, 1))
        self.metric_interval_s = _env_number(environ, "OTEL_METRIC_EXPORT_INTERVAL", 60000, self.warnings,
                                             1) / 1000.0

    def resource(self):
        attributes = {"host.name": socket.gethostname(), "os.type": platform.system().lower(),
                      "process.pid": os.getpid()}
        attributes.update(self.resource_attributes)
        attributes.update({"service.name": self.service_name or attributes.get("service.name", SERVER_HEADER),
                           "service.version": VERSION})
        return attributes


class Telemetry:
    """Spans, metrics, and the one exporter thread. Recording never waits on the network: spans go to a bounded
    queue (the oldest dropped, and counted, when it is full), and a collector that is down, slow or failing costs
    the exporter thread its time, never a request."""

    def __init__(self, settings, logger):
        self.settings = settings
        self._log = logger
        self.meter = Meter()
        self.tracing = "traces" in settings.endpoints
        self._resource = settings.resource()
        self._scope = {"name": SERVER_HEADER, "version": VERSION}
        self._lock = threading.Lock()
        self._spans = deque()  # (Span, end time) waiting for export (self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failing = set()  # signals whose last export failed: one warning per outage
        self._thread = None
        self._flush_s = SHUTDOWN_FLUSH_S  # how long the last export may take, set by stop()

    def start(self):
        for warning in self.settings.warnings:
            self._log.warning("telemetry_setting", message=warning)
        if self.settings.endpoints:
            self._log.info("telemetry_export", endpoints=self.settings.endpoints, sampler=self.settings.sampler)
            self._thread = threading.Thread(target=self._export_loop, name="telemetry-exporter", daemon=True)
            self._thread.start()

    def stop(self, budget_s=SHUTDOWN_FLUSH_S):
        """The last export, within `budget_s` (at most SHUTDOWN_FLUSH_S)."""
        self._flush_s = min(budget_s, SHUTDOWN_FLUSH_S)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._flush_s + 0.1)

    # Spans -----------------------------------------------------------------------------------------------------

    def start_span(self, name, kind, attributes, parent=None):
        """A new span under `parent` (a SpanContext), or else under the span this thread is in, or a new trace."""
        if not self.tracing:
            return NO_SPAN
        if parent is None:
            current = current_span()
            parent = current.context if current is not None else None
        trace_id = parent.trace_id if parent else "%032x" % _ids.getrandbits(128)
        context = SpanContext(trace_id, "%016x" % _ids.getrandbits(64), self.sample(parent, trace_id))
        return Span(self, name, kind, context, parent.span_id if parent else None, attributes)

    def sample(self, parent, trace_id):
        return should_sample(self.settings.sampler, self.settings.ratio, parent, trace_id)

    def export(self, span, end_ns):
        with self._lock:
            if len(self._spans) >= self.settings.max_queue:
                self._spans.popleft()
                self.meter.dropped.record(1, (("signal", "traces"), ("reason", "queue_full")))
            self._spans.append((span, end_ns))
            full = len(self._spans) >= self.settings.max_batch
        if full:
            self._wake.set()

    # Export ----------------------------------------------------------------------------------------------------

    def _export_loop(self):
        try:
            next_traces = now() + self.settings.schedule_delay_s
            next_metrics = now() + self.settings.metric_interval_s
            while not self._stop.is_set():
                self._wake.wait(max(0.0, min(next_traces, next_metrics) - now()))
                self._wake.clear()
                if now() >= next_traces or self._queued() >= self.settings.max_batch:
                    self._export_spans(now() + self.settings.timeouts["traces"] * EXPORT_ATTEMPTS)
                    next_traces = now() + self.settings.schedule_delay_s
                if now() >= next_metrics:
                    self._export_metrics(now() + self.settings.timeouts["metrics"] * EXPORT_ATTEMPTS)
                    next_metrics = now() + self.settings.metric_interval_s
            deadline = now() + self._flush_s
            self._export_spans(deadline)
            self._export_metrics(deadline)
        except Exception as e:
            self._log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))

    def _queued(self):
        with self._lock:
            return len(self._spans)

    def _export_spans(self, deadline):
        while "traces" in self.settings.endpoints and now() < deadline:
            with self._lock:
                batch = [self._spans.popleft() for _ in range(min(len(self._spans), self.settings.max_batch))]
            if not batch:
                return
            body = otlp_traces(self._resource, self._scope, [otlp_span(span, end) for span, end in batch])
            if not self._post("traces", body, deadline):
                self.meter.dropped.record(len(batch), (("signal", "traces"), ("reason", "export_failed")))

    def _export_metrics(self, deadline):
        if "metrics" in self.settings.endpoints:
            body = otlp_metrics(self._resource, self._scope, self.meter, time.time_ns())
            if not self._post("metrics", body, deadline):
                self.meter.dropped.record(1, (("signal", "metrics"), ("reason", "export_failed")))

    def _post(self, kind, body, deadline):
        """One export with retries on 429/502/503/504 and network errors (after Retry-After when given), within
        `deadline`. Logs once when a collector starts failing and once when it recovers."""
        url = self.settings.endpoints[kind]
        data = json_bytes(body)
        headers = dict(self.settings.headers[kind], **{"Content-Type": "application/json"})
        problem = None
        for attempt in range(EXPORT_ATTEMPTS):
            timeout = min(self.settings.timeouts[kind], deadline - now())
            if timeout <= 0:
                break
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data, headers, method="POST"),
                                            timeout=timeout) as response:
                    response.read()
                if kind in self._failing:
                    self._failing.discard(kind)
                    self._log.info("telemetry_export_recovered", signal=kind, url=url)
                return True
            except urllib.error.HTTPError as e:
                problem = "HTTP %d" % e.code
                if e.code not in RETRYABLE_EXPORT_STATUSES:
                    break
                delay = _retry_after(e.headers.get("Retry-After"), attempt)
            except (OSError, ValueError) as e:  # refused, unreachable, timed out, a malformed URL
                problem = str(getattr(e, "reason", e))
                delay = _retry_after(None, attempt)
            if delay >= deadline - now():
                break
            self._stop.wait(delay)
        if kind not in self._failing:
            self._failing.add(kind)
            self._log.warning("telemetry_export_failing", signal=kind, url=url, problem=problem,
                              note="requests are unaffected; this is logged once until the collector recovers")
        return False


def _retry_after(header, attempt, now_s=None):
    """Seconds to wait before retrying an export: what Retry-After says (seconds or an HTTP date), else 0.5, 1,
    2..."""
    header = (header or "").strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.5 * 2 ** attempt
    return max(0.0, when - (time.time() if now_s is None else now_s))


# § 7 Child process ---------------------------------------------------------------------------------------------------

GATEWAY_CLIENT_INFO = {"name": "host-mcp-gateway", "version": VERSION}
# Declared to shared children so that they may ask for sampling and elicitation; the gateway relays those
# requests to the client of a call in flight that declared the same capability (§9). Roots are declared only
# when the server's `roots` setting says who answers them.
GATEWAY_CLIENT_CAPABILITIES = {"sampling": {}, "elicitation": {}}


def request_client_params(meta):
    """A modern request's _meta as the initialize params of a child of its own (isolation "session")."""
    info = meta.get(META_CLIENT_INFO)
    return {"protocolVersion": HANDSHAKE_PROTOCOL_VERSION, "capabilities": meta[META_CLIENT_CAPABILITIES],
            "clientInfo": info if isinstance(info, dict) else GATEWAY_CLIENT_INFO}


def child_handshake_params(spec, client_params=None):
    """The initialize params a child gets: the gateway's own for a shared child, its client's for a per-session
    one. With fixed roots the gateway answers roots/list itself, so the roots capability is its own, without
    listChanged: the list never changes while the child runs."""
    if client_params is None:
        capabilities = dict(GATEWAY_CLIENT_CAPABILITIES)
        if spec.roots is not None:
            capabilities["roots"] = {}
        return {"protocolVersion": HANDSHAKE_PROTOCOL_VERSION, "capabilities": capabilities,
                "clientInfo": GATEWAY_CLIENT_INFO}
    if spec.fixed_roots is None:
        return client_params
    capabilities = client_params.get("capabilities")
    capabilities = dict(capabilities if isinstance(capabilities, dict) else {}, roots={})
    return dict(client_params, capabilities=capabilities)


# Processes recorded in the state file ------------------------------------------------------------------------------

STATE_DIR_ENV = "HOST_MCP_GATEWAY_STATE_DIR"  # where state files go instead of the platform's folder
_HAVE_PROC = os.path.exists("/proc/self/stat")


def state_folder(environ, platform, home):
    """Where the gateway keeps its state files: HOST_MCP_GATEWAY_STATE_DIR, else the platform's folder for it."""
    if environ.get(STATE_DIR_ENV):
        return environ[STATE_DIR_ENV]
    if platform == "darwin":
        return os.path.join(home, "Library", "Application Support", "host-mcp-gateway")
    return os.path.join(environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state"), "host-mcp-gateway")


def state_file_path(config_path, environ=None):
    """One state file per config file (gateways of different configs keep apart); the demo has its own."""
    key = os.path.realpath(os.path.expanduser(config_path)) if config_path else "demo"
    name = "gateway-%s.json" % hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return os.path.join(state_folder(os.environ if environ is None else environ, sys.platform,
                                     os.path.expanduser("~")), name)


def process_start_time(pid):
    """When a process started, as text that differs for a pid the system has reused; None when none runs.
    Linux: /proc/PID/stat field 22 (clock ticks since boot); elsewhere `ps -o lstart=` (to the second)."""
    if _HAVE_PROC:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return None if fields[0] == "Z" else "ticks:" + fields[19]
    try:
        result = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True,
                                timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def valid_pid(value):
    """Whether a recorded pid may be signalled: killpg(0) or killpg(1) would reach this group or everything."""
    return _is_int(value) and value > 1


def signal_groups(pgids, signum):
    for pgid in pgids:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def recorded_child_fate(entry, start_time_of, group_alive_of):
    """What to do with a child a gateway that is gone recorded, by what runs now (pure, given the two probes):
    "end" its group when its leader still runs with the recorded start time, or has gone leaving members of
    its group (a group id is not reused while the group exists); "reused" when its pid now names another
    process: that one is left alone; "gone" when nothing of it is left."""
    started = start_time_of(entry["pid"])
    if started == entry["start_time"]:
        return "end"
    if started is not None:
        return "reused"
    return "end" if group_alive_of(entry["pid"]) else "gone"


class StateFile:
    """What a gateway records of itself while it runs: its pid and start time (--reload finds it by them) and the
    process group of every child it started, with the child's start time. A gateway that is SIGKILLed cannot
    stop its children; the next one started with the same config ends those that survived (claim). Written whole
    and atomically on each change, so a reader never sees half of it."""

    def __init__(self, path, logger):
        self.path = path
        self._log = logger
        self._lock = threading.Lock()  # guards the fields below and orders the writes
        self._children = {}  # child pid (= its process group) -> {"server_id", "pid", "start_time"}
        self._gateway = None  # {"pid", "start_time", "config"} of this process, once claimed
        self._failed = False  # a write failed: logged once

    @staticmethod
    def read(path):
        """The record a state file holds, or None when there is none (or it is unreadable)."""
        try:
            with open(path, "rb") as f:
                record = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("gateway"), dict) else None

    def claim(self, config_path):
        """Ends the children a previous gateway of this config left running, then records this one. When that
        gateway still runs (same pid and start time), its children are its own: none is touched."""
        previous = self.read(self.path)
        if previous is not None:
            owner = previous["gateway"]
            if valid_pid(owner.get("pid")) and owner["pid"] != os.getpid() and \
                    process_start_time(owner["pid"]) == owner.get("start_time"):
                self._log.warning("state_file_in_use", path=self.path, pid=owner["pid"],
                                  note="another gateway runs with this config; its children are left alone")
            else:
                self._end_survivors([entry for entry in previous.get("children") or () if isinstance(entry, dict)
                                     and valid_pid(entry.get("pid"))])
        with self._lock:
            self._gateway = {"pid": os.getpid(), "start_time": process_start_time(os.getpid()),
                             "config": config_path}
            self._write()

    def _end_survivors(self, entries):
        fates = [(entry, recorded_child_fate(entry, process_start_time, group_alive)) for entry in entries]
        survivors = [entry["pid"] for entry, fate in fates if fate == "end"]
        signal_groups(survivors, signal.SIGTERM)  # the grace stop() gives a child, then SIGKILL for the group
        deadline = now() + CHILD_STOP_GRACE_S
        while now() < deadline and any(group_alive(pgid) for pgid in survivors):
            time.sleep(0.05)  # not our children: there is no exit to wait on, only their absence to look for
        signal_groups(survivors, signal.SIGKILL)
        for entry, fate in fates:
            if fate != "gone":
                (self._log.warning if fate == "end" else self._log.info)(
                    "orphan_ended" if fate == "end" else "orphan_left_alone", server_id=entry.get("server_id"),
                    pid=entry["pid"], reason="its gateway is gone" if fate == "end" else
                    "the pid now belongs to another process")

    def add(self, server_id, pid):
        entry = {"server_id": server_id, "pid": pid, "start_time": process_start_time(pid)}
        with self._lock:
            self._children[pid] = entry
            self._write()

    def remove(self, pid):
        with self._lock:
            if self._children.pop(pid, None) is not None:
                self._write()

    def close(self):
        """The gateway has stopped its children: the file goes, unless one could not be killed (the next start
        tries again)."""
        with self._lock:
            if self._gateway is not None and not self._children:
                self._gateway = None
                try:
                    os.unlink(self.path)
                except OSError:
                    pass

    def _write(self):
        """Caller holds self._lock. Only after claim(), and never after close()."""
        if self._gateway is None:
            return
        record = {"gateway": self._gateway, "children": list(self._children.values())}
        temporary = self.path + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            with open(temporary, "w") as f:
                f.write(json.dumps(record, indent=1) + "\n")
            os.replace(temporary, self.path)
        except OSError as e:
            if not self._failed:
                self._failed = True
                self._log.error("state_file_failed", path=self.path, error=str(e),
                                note="children that outlive a SIGKILL of the gateway will not be ended")


class PendingCall:
    """A request forwarded to a child and not yet answered."""
    __slots__ = ("caller_id", "method", "session", "progress_token", "answers")

    def __init__(self, caller_id, method, session, progress_token):
        self.caller_id = caller_id  # the id the caller chose; its answer goes back with it, type preserved
        self.method = method
        self.session = session  # the MCP session that made it, or None
        self.progress_token = progress_token  # the caller's own progressToken; the child sees the gateway id
        # What the HTTP thread waits for: messages for the caller while the call runs (Interim), then the
        # child's response with the caller's id restored, or a GatewayError.
        self.answers = queue.SimpleQueue()


class Interim:
    """A message for the caller of a call in flight: progress, or a request the child makes during the call."""
    __slots__ = ("message",)

    def __init__(self, message):
        self.message = message


def with_progress_token(message, token):
    """A copy of a request whose params._meta.progressToken is `token`; (copy, the token it had) or, when it
    has none, (message, None)."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or "progressToken" not in meta:
        return message, None
    return dict(message, params=dict(params, _meta=dict(meta, progressToken=token))), meta["progressToken"]


class ChildProcess:
    """One run of an MCP server on stdio. Writes go straight into its non-blocking stdin when the pipe has room,
    else to a backlog that a writer thread sends as the child reads, so an HTTP thread never blocks on a child
    that stops reading; stdout and stderr each have a reader thread, so a full pipe never stalls the child.
    Requests get fresh gateway-owned ids; answers go back with the caller's."""

    def __init__(self, spec, config, logger, on_unsolicited, state_file=None):
        self.spec = spec
        self.server_id = spec.server_id
        self._log = logger
        self._state_file = state_file  # the StateFile its process group is recorded in while it runs, or None
        self._max_line_bytes = config.max_message_bytes
        self._request_timeout_ms = config.request_timeout_ms  # named in a timeout's message
        self._on_unsolicited = on_unsolicited  # (child, message, kind) for child messages that answer no call
        self.process = None
        self._write_lock = threading.Lock()  # guards the three fields below and writes to the child's stdin
        self._backlog = bytearray()  # what the child's stdin pipe could not take yet, for the writer thread
        self._stdin_open = False
        self._stdin_fd = None
        self._backlog_ready = threading.Event()  # set while the backlog holds bytes
        self._lock = threading.Lock()
        self._pending = {}  # gateway id -> PendingCall (self._lock)
        self._exit_error = None  # once set, the GatewayError every call gets (self._lock)
        self._ids = itertools.count(1)  # gateway-owned request ids for this run
        self._stderr_tail = deque(maxlen=STDERR_TAIL_LINES)
        self._closing = threading.Event()  # stop() was called: the writer thread ends and closes stdin
        self.stdout_closed = threading.Event()  # set once calls in flight were failed after stdout ended
        self._threads = []

    @property
    def pid(self):
        return self.process.pid if self.process else None

    @property
    def accepting_calls(self):
        return self._exit_error is None

    def start(self):
        spec = self.spec
        env = dict(os.environ)
        env.pop(TOKEN_ENV, None)  # the gateway's credential is none of its servers' business
        env.update(spec.env)
        working_dir = os.path.expanduser(spec.working_dir) if spec.working_dir else None
        try:
            self.process = subprocess.Popen(
                [command_path(spec)] + spec.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=working_dir, env=env, start_new_session=True)
        except OSError as e:
            raise unavailable(self.server_id, self._spawn_problem(e)) from None
        if self._state_file is not None:
            self._state_file.add(self.server_id, self.pid)
        self._stdin_fd = self.process.stdin.fileno()
        os.set_blocking(self._stdin_fd, False)
        self._stdin_open = True
        # stdout's reader starts last: a child that exits at once ends it at once, and it then joins the
        # stderr drain (for the last words), which must have started. A thread is listed once it runs.
        for name, target in (("stderr", self._drain_stderr), ("stdin", self._write_loop),
                             ("stdout", self._read_stdout)):
            thread = threading.Thread(target=target, name="%s-%s-%d" % (self.server_id, name, self.pid),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _spawn_problem(self, error):
        spec = self.spec
        if spec.working_dir and not os.path.isdir(os.path.expanduser(spec.working_dir)):
            return "cannot start %r: working_dir %s does not exist" % (spec.command, spec.working_dir)
        search_path, source = command_search_path(spec)
        if isinstance(error, FileNotFoundError) and os.sep not in command_path(spec):
            return "cannot start %r: not found on %s (%s)" % (spec.command, source, search_path)
        return "cannot start %r: %s" % (spec.command, error.strerror or error)

    # Writing ---------------------------------------------------------------------------------------------------

    def send(self, message):
        """Writes a message at once when the pipe has room and nothing queued is ahead of it, so the common case
        costs no thread hand-off; what the pipe cannot take waits in a backlog for the writer thread. False when
        the child has stopped reading and its backlog is full: the message is dropped."""
        return self._send_line(json_bytes(message) + b"\n")

    def _send_line(self, data):
        with self._write_lock:  # held across os.write on a non-blocking fd only: that never waits
            if not self._stdin_open:
                return True  # the child is gone; its stdout's end tells the callers why
            if not self._backlog:
                data = data[self._write_some(data):]
            if not data:
                return True
            if len(self._backlog) > self._max_line_bytes:
                return False
            self._backlog += data
            self._backlog_ready.set()
        return True

    def _write_some(self, data):
        """Bytes of `data` the pipe took now. Caller holds self._write_lock."""
        try:
            return os.write(self._stdin_fd, data)
        except BlockingIOError:
            return 0
        except OSError:  # the child closed its stdin or exited: nothing more will reach it
            return len(data)

    def _write_loop(self):
        """Sends the backlog as the child makes room for it, until stop()."""
        try:
            while not self._closing.is_set():
                if not self._backlog_ready.wait(POLL_S):
                    continue
                io_ready(self._stdin_fd, select.POLLOUT, POLL_S)  # room in the pipe, or a look at _closing
                with self._write_lock:
                    del self._backlog[:self._write_some(self._backlog)]
                    if not self._backlog:
                        self._backlog_ready.clear()
        except Exception as e:
            self._log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))
        finally:
            with self._write_lock:  # no send() is inside os.write when the fd closes (it could be reused)
                self._stdin_open = False
                try:
                    self.process.stdin.close()
                except OSError:
                    pass

    # Reading ---------------------------------------------------------------------------------------------------

    def _read_stdout(self):
        stream = self.process.stdout
        try:
            while True:
                line = stream.readline(self._max_line_bytes + 1)
                if not line:
                    break
                if len(line) > self._max_line_bytes and not line.endswith(b"\n"):
                    self._skip_rest_of_line(stream)
                    self._log.warning("child_line_too_long", server_id=self.server_id, pid=self.pid,
                                      limit=self._max_line_bytes)
                    continue
                line = line.strip()
                if line:
                    self._receive_line(line)
        except Exception as e:
            self._log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))
        finally:
            self._fail_calls_on_exit()
            self.stdout_closed.set()

    @staticmethod
    def _skip_rest_of_line(stream):
        while True:
            chunk = stream.readline(1 << 20)
            if not chunk or chunk.endswith(b"\n"):
                return

    def _receive_line(self, line):
        try:
            message = json_loads(line)
        except ValueError:
            self._log.warning("child_non_json_line", server_id=self.server_id, pid=self.pid,
                              line=line[:LOGGED_LINE_CHARS].decode("utf-8", "replace"))
            return
        kind, _ = classify(message)
        if kind == RESPONSE and valid_id(message["id"]):
            with self._lock:
                call = self._pending.pop(message["id"], None)
            if call is not None:
                message["id"] = call.caller_id
                call.answers.put(message)
            else:
                self._log.info("child_late_response_dropped", server_id=self.server_id, id=message["id"])
            return
        self._on_unsolicited(self, message, kind)

    def _drain_stderr(self):
        stream = self.process.stderr
        try:
            for raw in iter(lambda: stream.readline(65536), b""):
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._stderr_tail.append(text[:STDERR_LOG_CHARS])
                self._log.info("child_stderr", server_id=self.server_id, pid=self.pid,
                               line=text[:STDERR_LOG_CHARS], truncated=len(text) > STDERR_LOG_CHARS)
        except Exception as e:
            self._log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))

    def _fail_calls_on_exit(self):
        """stdout ended: the child exited or is about to. Calls in flight fail now, with the exit status and
        the child's last words, instead of waiting for their timeout."""
        try:
            self.process.wait(timeout=CHILD_EXIT_SETTLE_S)
        except subprocess.TimeoutExpired:
            pass
        self._join_thread("-stderr", POLL_S)  # so the tail below holds what it wrote last
        self.fail_calls(self.exit_error())

    def exit_error(self):
        """What calls get once the child has gone: its exit status and last stderr lines."""
        return GatewayError(self.exit_summary(), 502, "server_exited", JSONRPC_SERVER_ERROR,
                            server_id=self.server_id)

    def exit_summary(self):
        returncode = self.process.poll()
        status = describe_exit(returncode) if returncode is not None else "closed its stdout"
        summary = "server %s (pid %d) %s" % (self.server_id, self.pid, status)
        if self._stderr_tail:
            summary += "; last stderr: " + " | ".join(self._stderr_tail)
        return summary

    # Calls -----------------------------------------------------------------------------------------------------

    def begin_call(self, message, session=None):
        """Forwards a request under a fresh id, which also stands in for its progress token (client tokens can
        collide between sessions). Returns (gateway id, PendingCall) for wait_call."""
        gateway_id = next(self._ids)
        forwarded, progress_token = with_progress_token(message, gateway_id)
        call = PendingCall(message["id"], message["method"], session, progress_token)
        line = json_bytes(dict(forwarded, id=gateway_id)) + b"\n"  # before the call is registered: it may fail
        with self._lock:
            if self._exit_error is not None:
                raise self._exit_error
            self._pending[gateway_id] = call
        if not self._send_line(line):
            with self._lock:
                self._pending.pop(gateway_id, None)
            raise unavailable(self.server_id, "server %s is not reading its input (%d bytes wait for it)" % (
                self.server_id, self._max_line_bytes))
        return gateway_id, call

    def send_request(self, method, params):
        """A request of the gateway's own whose answer nobody awaits (re-subscribing after a restart)."""
        self.begin_call({"jsonrpc": "2.0", "id": "gateway", "method": method, "params": params})

    def wait_call(self, gateway_id, call, deadline, tick=None):
        """The next answer for a call: an Interim message, the child's response with the caller's id, or None
        when `tick` seconds pass first. Raises GatewayError; a call that times out is cancelled at the child,
        and its late answer is dropped."""
        timeout = deadline - now()
        try:
            answer = call.answers.get(timeout=max(0.0, timeout if tick is None else min(tick, timeout)))
        except queue.Empty:
            if now() < deadline:
                return None
            self.cancel_call(gateway_id, "timed out in the gateway")
            raise GatewayError("server %s did not answer %s within %d ms (request_timeout_ms)" % (
                self.server_id, call.method, self._request_timeout_ms), 504, "timeout", JSONRPC_REQUEST_TIMEOUT,
                server_id=self.server_id, request_id=call.caller_id) from None
        if isinstance(answer, GatewayError):
            raise answer
        return answer

    def call(self, message, deadline):
        """A request of the gateway's own: waits for the final answer, ignoring interim messages."""
        gateway_id, call = self.begin_call(message)
        while True:
            answer = self.wait_call(gateway_id, call, deadline)
            if not isinstance(answer, Interim):
                return answer

    def calls_in_flight(self):
        """[(gateway id, PendingCall)], oldest first."""
        with self._lock:
            return list(self._pending.items())

    def call_by_id(self, token):
        """The call in flight whose progress token (its gateway id) is `token`, or None."""
        if not _is_int(token):
            return None
        with self._lock:
            return self._pending.get(token)

    def cancel_calls_of(self, session, reason):
        for gateway_id, call in self.calls_in_flight():
            if call.session is session:
                self.cancel_call(gateway_id, reason, answer_caller=True)

    def find_call(self, caller_id, session):
        """The gateway id of `session`'s call whose caller id is `caller_id`; None when none or ambiguous."""
        with self._lock:
            matches = [gateway_id for gateway_id, call in self._pending.items()
                       if call.session is session and call.caller_id == caller_id]
        return matches[0] if len(matches) == 1 else None

    def cancel_call(self, gateway_id, reason, answer_caller=False):
        """Tells the child to drop a call; its late answer will be dropped. With `answer_caller`, whoever waits
        for the call is answered now with a cancellation error."""
        with self._lock:
            call = self._pending.pop(gateway_id, None)
        if call is None:
            return
        self.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": gateway_id, "reason": reason}})
        if answer_caller:
            call.answers.put(rpc_error(call.caller_id, JSONRPC_REQUEST_CANCELLED, "request cancelled: " + reason))

    def fail_calls(self, error):
        """Fails every call in flight, and every later one, with `error` (the first error given wins)."""
        with self._lock:
            if self._exit_error is None:
                self._exit_error = error
            calls = list(self._pending.values())
            self._pending.clear()
        for call in calls:
            call.answers.put(self._exit_error)

    def handshake(self, timeout_s, params):
        """Initializes the child with `params` (see child_handshake_params); returns its initialize result, or
        None when it refuses as a server of revision 2026-07-28 only (-32601, or -32022 naming no handshake
        revision)."""
        request = {"jsonrpc": "2.0", "id": "gateway-initialize", "method": "initialize", "params": params}
        try:
            answer = self.call(request, now() + timeout_s)
        except GatewayError as e:
            if e.error_code == "timeout":
                e = unavailable(self.server_id, "server %s did not answer initialize within %d ms" % (
                    self.server_id, timeout_s * 1000))
            raise e from None
        result = answer.get("result")
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        data = error.get("data") if isinstance(error.get("data"), dict) else {}
        supported = data.get("supported") if isinstance(data.get("supported"), list) else []
        code = error.get("code")
        if code == JSONRPC_METHOD_NOT_FOUND or (code == MCP_UNSUPPORTED_PROTOCOL_VERSION and
                                                all(is_modern_version(version) for version in supported)):
            return None
        if not isinstance(result, dict):
            raise unavailable(self.server_id, "server %s refused initialize: %s" % (
                self.server_id, json.dumps(answer.get("error"))))
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    def discover(self, timeout_s, capabilities):
        """Revision 2026-07-28's probe: the child's DiscoverResult, or None when it answers with an error that
        is not a modern one (a handshake-era child). Raises GatewayError "timeout" when it says nothing in time,
        and server_unavailable when it is modern but speaks no revision the gateway does."""
        request = modern_envelope({"jsonrpc": "2.0", "id": "gateway-discover", "method": "server/discover",
                                   "params": {}}, capabilities, GATEWAY_CLIENT_INFO)
        answer = self.call(request, now() + timeout_s)
        result = answer.get("result")
        if isinstance(result, dict) and FIRST_MODERN_VERSION in (result.get("supportedVersions") or ()):
            return result
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        if error.get("code") == MCP_UNSUPPORTED_PROTOCOL_VERSION:
            raise unavailable(self.server_id, "server %s speaks none of the revisions %s: %s" % (
                self.server_id, ", ".join(ALL_PROTOCOL_VERSIONS), json.dumps(error.get("data"))))
        return None

    # Stopping --------------------------------------------------------------------------------------------------

    def stop(self, reason="server is stopping"):
        """Close stdin, SIGTERM the process group, wait a grace, SIGKILL the group, reap. Idempotent."""
        if self.process is None:
            return
        self.fail_calls(unavailable(self.server_id, "server %s: %s" % (self.server_id, reason)))
        self._closing.set()
        self._join_thread("-stdin", POLL_S * 2)
        signal_groups([self.process.pid], signal.SIGTERM)
        try:
            self.process.wait(timeout=CHILD_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        signal_groups([self.process.pid], signal.SIGKILL)  # also reaches grandchildren that outlived the leader
        try:
            self.process.wait(timeout=CHILD_STOP_GRACE_S)
            if self._state_file is not None:
                self._state_file.remove(self.pid)  # its group got SIGKILL: nothing of it is left to end
        except subprocess.TimeoutExpired:
            self._log.error("child_unkillable", server_id=self.server_id, pid=self.pid)
        for thread in self._threads:
            thread.join(timeout=CHILD_EXIT_SETTLE_S + POLL_S)
        for stream in (self.process.stdout, self.process.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def _join_thread(self, suffix, timeout):
        for thread in self._threads:
            if thread.name.startswith(self.server_id + suffix):
                thread.join(timeout=timeout)


# § 8 Supervisor ------------------------------------------------------------------------------------------------------

def should_restart(policy, returncode, reached_ready):
    """The restart rule. `returncode` is None when the command could not be spawned."""
    if policy == "always":
        return True
    if policy == "never":
        return False
    return returncode != 0 or not reached_ready  # on-failure: non-zero exit, signal, failed spawn or handshake


def backoff_delay(base_s, consecutive_failures):
    """Seconds before the next start: base, doubling with each consecutive failure, at most MAX_BACKOFF_S."""
    if consecutive_failures <= 0:
        return 0.0
    delay = min(MAX_BACKOFF_S, base_s * 2 ** (consecutive_failures - 1))
    return delay if consecutive_failures == 1 else max(delay, MIN_LOOP_DELAY_S)


class ServerRuntime:
    """One configured server: its current child, its state, and the supervisor thread that starts it, watches
    it and applies the restart policy. States: stopped, starting, ready, backoff, failed."""

    def __init__(self, spec, config, logger, telemetry, on_unsolicited, on_ready=None, handshake_params=None,
                 state_file=None):
        self.spec = spec
        self.state_file = state_file  # the StateFile its children are recorded in (the gateway's), or None
        self.server_id = spec.server_id
        self._config = config
        self._log = logger
        self._telemetry = telemetry
        self._on_unsolicited = on_unsolicited  # (runtime, child, message, kind) for messages the child starts
        self._on_ready = on_ready  # (runtime, child, restarted) on the supervisor thread when a child is ready
        self.handshake_params = handshake_params  # a client's own initialize params, for a child of its own
        self.owner, self.adopted_as = None, None  # the server's runtime that holds it, and under which key
        self._cond = threading.Condition()  # guards every field below and wakes callers waiting for readiness
        self.private = {}  # session id -> ServerRuntime of that session's own child (isolation "session")
        self.twin = None  # the handshake twin of a dual-era child, once a handshake-era session needed it
        self._twin_unusable = None  # why this server's child can have no twin (it refused the handshake)
        self.state = "stopped"
        self.child = None  # the ChildProcess while ready
        self.init_result = None  # the child's initialize result, kept for clients' own initialize
        self.result_extras = None  # result_extras_json of its serverInfo, for answers to modern clients
        self.header_params = None  # tool name -> its x-mcp-header declarations; None until listed (Router)
        self.era = None  # MODERN or LEGACY: how the current child is spoken to (child_protocol, its probe)
        self.listen_feed = None  # gateway id of the subscriptions/listen that feeds sessions of a modern child
        self.feed_generation = 0  # counts refreshes of listen_feed (both guarded by the Router's lock)
        self._silent_on_probe = False  # a child said nothing to server/discover: its restarts skip the probe
        self.restart_count = 0
        self.last_exit = None
        self.last_error = None
        self._ready_since = None
        self._next_start_at = None
        self._failed_since_ready = False  # the last attempt failed and none has been ready since
        self._down = False  # the restart policy let it stay down: no more starts
        self._thread = None
        self._stop = threading.Event()
        self._stop_reason = None  # why it stops, for the calls it fails: set with _stop

    def start(self):
        """Starts supervising (idempotent): at gateway start for autostart servers, else on first request."""
        with self._cond:
            if self._thread is not None or self._stop.is_set():
                return
            self.state = "starting"
            self._thread = threading.Thread(target=self._supervise, name="supervisor-" + self.server_id,
                                            daemon=True)
            self._thread.start()

    @property
    def is_private(self):
        """Whether this runs one client's own child (isolation "session": a session's, or a modern request's),
        not a configured server's."""
        return self.handshake_params is not None

    @property
    def serves_request(self):
        """Whether this runs the child of one modern request (isolation "session"), not of a session."""
        return self.is_private and self.adopted_as.startswith(REQUEST_CHILD_PREFIX)

    def adopt(self, key, private):
        """Takes on the runtime of a session's or a request's own child (isolation "session"), within
        max_children, and starts it."""
        with self._cond:
            if self._stop.is_set():  # request_stop has gone through what it owns: a child now would outlive it
                raise unavailable(self.server_id, "server %s: %s" % (self.server_id, self._stop_reason))
            if private._stop.is_set():  # its session closed (evicted) before it got here: it would hold a room
                raise unavailable(self.server_id, "server %s: %s" % (self.server_id, private._stop_reason))
            if len(self.private) >= self.spec.max_children:  # the Router made room; a concurrent one took it
                raise GatewayError("server %s already runs %d children of clients' own (max_children)" % (
                    self.server_id, self.spec.max_children), 503, "too_many_children", server_id=self.server_id)
            self.private[key] = private
        private.owner, private.adopted_as = self, key
        private.state_file = self.state_file
        private.start()

    def release(self, private):
        with self._cond:
            if self.private.get(private.adopted_as) is private:
                del self.private[private.adopted_as]

    def handshake_twin(self):
        """For handshake-era sessions of a child the gateway speaks to in revision 2026-07-28 (child_protocol
        auto): a second process of the same server, held to the handshake, so that those clients meet the server
        they were written for (a dual-era server's tools that ask their client directly work on that era only).
        Started on first need; None when this server has none (the child speaks only the new revision)."""
        with self._cond:
            if (self.spec.child_protocol != "auto" or self.era != MODERN or self.is_private or
                    self._twin_unusable or self._stop.is_set()):
                return None
            if self.twin is None:
                self.twin = ServerRuntime(self.spec.held_to_handshake(), self._config, self._log, self._telemetry,
                                          self._on_unsolicited, self._on_ready, state_file=self.state_file)
            twin = self.twin
        twin.start()
        return twin

    def drop_twin(self, why):
        """The twin could not start: this server's child speaks only the new revision (or will not run twice);
        its handshake-era sessions are translated, as for a 2026-only child."""
        with self._cond:
            twin, self.twin, self._twin_unusable = self.twin, None, why
        if twin is not None:
            twin.request_stop("it could not speak the handshake")
            self._log.info("handshake_twin_unavailable", server_id=self.server_id, reason=why)

    def request_stop(self, reason="the gateway is stopping"):
        """Stops this runtime's child, and those it owns: its twin and its clients' own."""
        self._stop_reason = self._stop_reason or reason
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for runtime in self.owned():
            runtime.request_stop(reason)

    def join(self, timeout):
        deadline = now() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        for runtime in self.owned():
            runtime.join(max(0.0, deadline - now()))

    def owned(self):
        """The runtimes this one owns: its handshake twin, and its clients' own children."""
        with self._cond:
            return ([self.twin] if self.twin is not None else []) + list(self.private.values())

    def ready_child(self, deadline):
        """The ready child, waiting for a start or a restart within the caller's deadline. A server that has not
        been ready since its last failure, or is down for good, is unavailable at once."""
        child = self.child  # the common case, without the lock; begin_call catches a child that just exited
        if self.state == "ready" and child is not None and child.accepting_calls:
            return child
        self.start()
        with self._cond:
            while True:
                if self.state == "ready" and self.child.accepting_calls:
                    return self.child
                if self._stop.is_set():
                    raise unavailable(self.server_id, "server %s: %s" % (self.server_id, self._stop_reason))
                if self._down or self._failed_since_ready:
                    raise unavailable(self.server_id, self._unavailable_reason())
                remaining = deadline - now()
                if remaining <= 0:
                    raise GatewayError("server %s did not become ready within %d ms (request_timeout_ms; state "
                                       "%s)" % (self.server_id, self._config.request_timeout_ms, self.state),
                                       504, "timeout", JSONRPC_REQUEST_TIMEOUT, server_id=self.server_id)
                self._cond.wait(remaining)

    def _unavailable_reason(self):
        reason = "server %s is unavailable: %s" % (self.server_id, self.last_error or self.state)
        if self._down:
            return reason + " (restart_policy %s: it stays down)" % self.spec.restart_policy
        if self._next_start_at is not None:
            return reason + "; next start in %.1f s" % max(0.0, self._next_start_at - now())
        return reason

    def _set(self, **fields):
        with self._cond:
            for key, value in fields.items():
                setattr(self, key, value)
            self._cond.notify_all()

    def _supervise(self):
        failures = 0
        try:
            while not self._stop.is_set():
                child, ready_for = self._run_once()
                if self._stop.is_set():
                    break
                if ready_for is not None and ready_for >= STABLE_AFTER_S:
                    failures = 0
                failures += 1
                returncode = child.process.returncode if child.process else None
                if not should_restart(self.spec.restart_policy, returncode, ready_for is not None):
                    clean = returncode == 0 and ready_for is not None
                    self._set(state="stopped" if clean else "failed", _next_start_at=None, _down=True)
                    self._log.warning("server_down", server_id=self.server_id, reason=self.last_error,
                                      restart_policy=self.spec.restart_policy)
                    break
                delay = backoff_delay(self._config.restart_backoff_ms / 1000.0, failures)
                self._set(state="backoff", _next_start_at=now() + delay)
                self._log.info("server_restart_scheduled", server_id=self.server_id, delay_s=delay,
                               consecutive_failures=failures)
                if self._stop.wait(delay):
                    break
                with self._cond:
                    self.restart_count += 1
                self._telemetry.meter.restarts.record(1, (("host_mcp_gateway.server_id", self.server_id),))
        except Exception as e:
            self._log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))
            self._set(state="failed", last_error="supervisor failed: %r" % e, _down=True)
        finally:
            if self._stop.is_set():
                self._set(state="stopped", child=None)

    def _run_once(self):
        """Starts one child and watches it until it exits or the gateway stops it. Returns (child, seconds it
        was ready, or None if it never became ready)."""
        child = ChildProcess(self.spec, self._config, self._log,
                             lambda child, message, kind: self._on_unsolicited(self, child, message, kind),
                             self.state_file)
        self._set(state="starting", _next_start_at=None)
        startup_ms = self.spec.startup_timeout_ms or self._config.request_timeout_ms
        restarted = self.init_result is not None
        span = self._telemetry.start_span("start " + self.server_id, SPAN_INTERNAL, {
            "host_mcp_gateway.server_id": self.server_id, "host_mcp_gateway.restart": restarted})
        try:
            child.start()
            span.set("process.pid", child.pid)
            self._log.info("child_started", server_id=self.server_id, pid=child.pid)
            result, era = self._introduce(child, startup_ms / 1000.0)
            span.add_event("handshake", **{"mcp.protocol.version": FIRST_MODERN_VERSION if era == MODERN
                                           else result.get("protocolVersion")})
        except GatewayError as e:
            span.fail(e.message)
            span.end()
            child.stop("its start failed")
            returncode = child.process.returncode if child.process else None
            self._set(last_error=e.message, _failed_since_ready=True,
                      last_exit=describe_exit(returncode) if child.process else "not started")
            self._log.warning("child_start_failed", server_id=self.server_id, pid=child.pid, reason=e.message)
            return child, None
        span.end()
        ready_at = now()
        self._set(state="ready", child=child, init_result=result, era=era, _ready_since=ready_at,
                  result_extras=result_extras_json(result.get("serverInfo")), _failed_since_ready=False,
                  last_error=None)
        self._log.info("child_ready", server_id=self.server_id, pid=child.pid, era=era,
                       server_info=result.get("serverInfo"), protocol_version=self.protocol_version)
        if self._on_ready is not None:
            self._on_ready(self, child, restarted)
        while not child.stdout_closed.wait(POLL_S):
            if self._stop.is_set():
                break
            if child.process.poll() is not None:  # it exited, but a process it started still holds its stdout
                child.fail_calls(child.exit_error())
                break
        summary = child.exit_summary() if not self._stop.is_set() else None
        child.stop(self._stop_reason if self._stop.is_set() else "it exited")
        self._set(state="starting", child=None, _ready_since=None,
                  last_exit=describe_exit(child.process.returncode), last_error=summary)
        if summary:
            self._log.warning("child_exited", server_id=self.server_id, pid=child.pid, summary=summary)
            exit_span = self._telemetry.start_span("exit " + self.server_id, SPAN_INTERNAL, {
                "host_mcp_gateway.server_id": self.server_id, "process.pid": child.pid,
                "process.exit.code": child.process.returncode})
            exit_span.fail(summary)
            exit_span.end()
        return child, now() - ready_at

    def _introduce(self, child, timeout_s):
        """Opens a new child in its era: with child_protocol auto, server/discover first (a dual-era child's
        first message fixes its era for the life of its process), the initialize handshake when that gets a
        handshake-era error or silence. A session's own child serves one handshake-era client: it is offered
        the handshake first, and server/discover only when it refuses that as a 2026-07-28-only server. Returns
        (its initialize result, or one made from its discover result; the era)."""
        params = child_handshake_params(self.spec, self.handshake_params)
        mode = self.spec.child_protocol
        if mode == "auto" and self.is_private and not self.serves_request:
            result = child.handshake(timeout_s, params)
            if result is not None:
                return result, LEGACY
            mode = "modern"
        if mode == "modern" or mode == "auto" and not self._silent_on_probe:
            try:
                discovered = child.discover(timeout_s if mode == "modern" else min(PROBE_TIMEOUT_S, timeout_s),
                                            params["capabilities"] if isinstance(params.get("capabilities"), dict)
                                            else {})
            except GatewayError as e:
                if e.error_code != "timeout" or mode == "modern":
                    raise
                self._silent_on_probe = True
                discovered = None
            if discovered is not None:
                return handshake_result_from(discovered), MODERN
            if mode == "modern":
                raise unavailable(self.server_id, "server %s (child_protocol modern) refused server/discover" %
                                  self.server_id)
        result = child.handshake(timeout_s, params)
        if result is None:
            raise unavailable(self.server_id, "server %s refused initialize as a server of revision %s only (%d or "
                              "%d)" % (self.server_id, FIRST_MODERN_VERSION, JSONRPC_METHOD_NOT_FOUND,
                                       MCP_UNSUPPORTED_PROTOCOL_VERSION))
        return result, LEGACY

    @property
    def protocol_version(self):
        """The revision the current child speaks with the gateway."""
        if self.era == MODERN:
            return FIRST_MODERN_VERSION
        return (self.init_result or {}).get("protocolVersion")

    def use_config(self, config):
        """A reloaded config's gateway-wide settings (timeouts, backoff), from its next call or start on; for the
        children it owns too."""
        self._config = config
        for runtime in self.owned():
            runtime.use_config(config)

    def describe(self):
        """What /servers shows: never env values or the token."""
        with self._cond:
            info = self.init_result or {}
            described = {
                "server_id": self.server_id, "state": self.state,
                "pid": self.child.pid if self.child else None,
                "calls_in_flight": len(self.child.calls_in_flight()) if self.child else 0,
                "restart_count": self.restart_count, "last_exit": self.last_exit, "last_error": self.last_error,
                "uptime_s": round(now() - self._ready_since, 3) if self._ready_since else None,
                "next_start_in_s": (round(max(0.0, self._next_start_at - now()), 3)
                                    if self._next_start_at is not None else None),
                "autostart": self.spec.autostart, "restart_policy": self.spec.restart_policy,
                "server_info": info.get("serverInfo"), "protocol_version": self.protocol_version,
                "protocol_era": self.era,
                "capabilities": sorted((info.get("capabilities") or {}).keys()),
            }
            twin = self.twin
        if twin is not None:
            described["handshake_twin"] = {key: value for key, value in twin.describe().items()
                                           if key not in ("server_id", "autostart", "restart_policy")}
        return described


# § 9 Sessions and routing --------------------------------------------------------------------------------------------

SESSION_BUFFER_EVENTS = 100  # messages kept per session for its event stream, replayed after Last-Event-ID
SESSION_BUFFER_BYTES = 1 << 20  # ... and no more bytes than this, so a flood of logs cannot grow a session
CLIENT_LABEL_CHARS = 64  # of a client's clientInfo name and version, kept for /servers
ADMIT_ATTEMPTS = 3  # evictions tried for one new session while concurrent ones take the room made
# The client capability a server-to-client request needs; other requests (ping) may go to any client.
REQUEST_CAPABILITY = {"roots/list": "roots", "sampling/createMessage": "sampling", "elicitation/create": "elicitation"}
# What sessions hear after a restart, for each list the child declared as changeable.
LIST_CHANGED = {"tools": "notifications/tools/list_changed", "resources": "notifications/resources/list_changed",
                "prompts": "notifications/prompts/list_changed"}
# The list_changed notification each list request answers: once a client lists again, it may be told again.
LISTED_BY = {"tools/list": LIST_CHANGED["tools"], "resources/list": LIST_CHANGED["resources"],
             "resources/templates/list": LIST_CHANGED["resources"], "prompts/list": LIST_CHANGED["prompts"]}


def client_info(params):
    """An initialize's clientInfo, name and version only and each bounded (the client chooses them; /servers
    shows them and a modern child is told them); None without one."""
    info = params.get("clientInfo")
    info = info if isinstance(info, dict) else {}
    kept = {key: str(info[key])[:CLIENT_LABEL_CHARS] for key in ("name", "version") if info.get(key) is not None}
    return kept or None


def client_label(params):
    """`name version` from an initialize's clientInfo, bounded."""
    return " ".join((client_info(params) or {}).values()) or None


class Session:
    """One MCP session: what its client declared, the resources it watches, and the bounded buffer of messages
    for its GET event stream (at most one open at a time). An idle session is a few fields and an empty deque."""

    def __init__(self, session_id, runtime, parent, params, opened_by="initialize"):
        self.id = session_id
        self.label = session_label(session_id)
        self.runtime = runtime  # where its calls go: the shared server, or its own child's (isolation "session")
        self.parent = parent  # the configured server
        self.server_id = parent.server_id
        capabilities = params.get("capabilities")
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        self.client_info = client_info(params)
        self.client = client_label(params)
        self.log_level = None  # set by logging/setLevel on a modern child, which gets it in each request's _meta
        self.opened_by = opened_by  # "initialize", or "GET" for a stream opened without a session
        self.token_name = None  # the name of the token it was opened with, for /servers
        self.protocol_version = None  # negotiated at initialize
        self.subscriptions = set()  # resource uris it subscribed to (Router._lock)
        self.opened_at = self.last_seen = now()
        self.used = False  # it has sent something since it opened (notifications/initialized aside)
        self.announced = set()  # list_changed methods pushed since its client last listed that kind (self._cond)
        self.deliver = None  # message -> what its stream gets of it, or None to drop it (subscriptions/listen)
        self.closed = False
        self._cond = threading.Condition()  # guards the fields below
        self._events = deque()  # (event id, encoded message), oldest first
        self._event_bytes = 0
        self._next_event_id = 1
        self.delivered_id = 0  # the last event id a GET stream wrote
        self.streaming = False  # a GET stream is open
        self._holder = None  # the connection that holds it (anything with peer_closed())
        self.stream_generation = 0  # bumped to tell a stream whose client has gone to end

    def touch(self):
        self.last_seen = now()

    def push(self, message):
        if self.deliver is not None:
            message = self.deliver(message)
            if message is None:
                return
        data = json_bytes(message)
        with self._cond:
            if self.closed:
                return
            self._events.append((self._next_event_id, data))
            self._next_event_id += 1
            self._event_bytes += len(data)
            while len(self._events) > 1 and (len(self._events) > SESSION_BUFFER_EVENTS or
                                             self._event_bytes > SESSION_BUFFER_BYTES):
                self._event_bytes -= len(self._events.popleft()[1])
            self._cond.notify_all()

    def announce(self, message):
        """Pushes a list_changed notification unless one of its kind still waits for the client to list again:
        one says all (a restarted child re-registering its tools sends a burst)."""
        with self._cond:
            if message["method"] in self.announced:
                return
            if self.opened_by != "listen":  # a listen stream's client lists on other requests: tell it each time
                self.announced.add(message["method"])
        self.push(message)

    def listed(self, method):
        """Its client sent `method`; if that lists a kind, the next change of that kind is news again."""
        if method in LISTED_BY:
            with self._cond:
                self.announced.discard(LISTED_BY[method])

    def open_stream(self, holder):
        """Claims the session's one GET stream for `holder`; False while another live one holds it. A holder whose
        client is already gone gives way at once, so a reconnecting client need not wait for a keepalive."""
        with self._cond:
            previous = self._holder if self.streaming else None
        if previous is not None and previous.peer_closed():  # looked at outside the lock: it touches a socket
            self.end_stream()
            deadline = now() + POLL_S * 2
            with self._cond:
                while self.streaming and self._holder is previous and now() < deadline:
                    self._cond.wait(deadline - now())
        with self._cond:
            if self.streaming or self.closed:
                return False
            self.streaming, self._holder = True, holder
            return True

    def stream_alive(self):
        """Whether a GET stream is open and its client still connected (looked at on the socket, no lock held)."""
        with self._cond:
            holder = self._holder if self.streaming else None
        return holder is not None and not holder.peer_closed()

    def close_stream(self, holder):
        with self._cond:
            if self._holder is holder:
                self.streaming, self._holder = False, None
                self._cond.notify_all()
        self.touch()  # idle time counts from the end of its stream

    def next_events(self, after_id, timeout, generation):
        """Buffered events with ids above `after_id`, waiting up to `timeout` for one; [] on timeout, on close, or
        when the stream of `generation` has been replaced."""
        deadline = now() + timeout
        with self._cond:
            while not self.closed and generation == self.stream_generation:
                events = [event for event in self._events if event[0] > after_id]
                if events:
                    return events
                remaining = deadline - now()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return []

    def end_stream(self):
        """Tells the open GET stream, if any, to end."""
        with self._cond:
            self.stream_generation += 1
            self._cond.notify_all()

    def mark_delivered(self, event_id):
        with self._cond:
            self.delivered_id = max(self.delivered_id, event_id)

    def close(self):
        with self._cond:
            self.closed = True
            self._events.clear()
            self._cond.notify_all()

    def idle_for(self, grace_s):
        """How readily it gives way when room is needed: a session never used within its grace first, then
        the least recently active (the smaller, the sooner)."""
        unused = not self.used and now() - self.opened_at >= grace_s
        return (0 if unused else 1, self.last_seen)

    def describe(self):
        """What /servers shows of it."""
        return {"session": self.label, "client": self.client, "protocol_version": self.protocol_version,
                "opened_by": self.opened_by, "age_s": round(now() - self.opened_at, 3),
                "idle_s": round(now() - self.last_seen, 3), "used": self.used, "stream_open": self.streaming,
                "token_name": self.token_name}


class SessionStore:
    """Open sessions by id, capped in number."""

    def __init__(self, max_sessions, meter):
        self.max_sessions = max_sessions  # a reload may change it
        self._meter = meter
        self._lock = threading.Lock()
        self._sessions = {}  # session id -> Session (self._lock)

    def full(self):
        with self._lock:
            return len(self._sessions) >= self.max_sessions

    def add(self, session):
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise GatewayError("all %d sessions are busy (max_sessions): each has a call in flight or an "
                                   "open stream" % self.max_sessions, 503, "too_many_sessions")
            self._sessions[session.id] = session
        self._meter.sessions.record(1, (("host_mcp_gateway.server_id", session.server_id),))

    def get(self, session_id, server_id):
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or session.server_id != server_id:
            raise GatewayError("unknown or expired session; initialize a new one", 404, "session_not_found",
                               server_id=server_id)
        return session

    def remove(self, session):
        with self._lock:
            removed = self._sessions.pop(session.id, None) is not None
        if removed:
            self._meter.sessions.record(-1, (("host_mcp_gateway.server_id", session.server_id),))
        return removed

    def all(self):
        with self._lock:
            return list(self._sessions.values())

    def of_runtime(self, runtime):
        return [session for session in self.all() if session.runtime is runtime]


class RelayedRequest:
    """A request a child made, passed on to a client under an id of the gateway's. Its answer goes back to the
    child, or, for a request a modern child put in an input_required result, into `sink` for the call that
    waits for it (InputBridge)."""
    __slots__ = ("child", "child_id", "session", "expires", "sink")

    def __init__(self, child, child_id, session, expires, sink=None):
        self.child = child
        self.child_id = child_id  # the id the child chose (the input key, with a sink); the answer goes with it
        self.session = session
        self.expires = expires
        self.sink = sink

    def answer(self, message):
        if self.sink is not None:
            self.sink.put((self.child_id, message))
        else:
            self.child.send(dict(message, id=self.child_id))


class ModernCaller:
    """The client of one request of revision 2026-07-28: what its _meta declared. It stands where a Session
    stands for the relay rule, so that a handshake-era child's request during the call reaches this caller (as
    inputRequests of an input_required result), and only if it declared the capability."""
    __slots__ = ("capabilities", "protocol_version", "label", "closed")

    def __init__(self, meta, protocol_version):
        capabilities = meta.get(META_CLIENT_CAPABILITIES)
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        self.protocol_version = protocol_version
        self.label = None  # no session
        self.closed = False


class ParkedCall:
    """A modern client's call that waits at a handshake-era child for answers to the requests the child made;
    the client gives them on its retry, which names this call by its requestState (bound there to the method
    and target)."""
    __slots__ = ("ticket", "requests", "expires", "runtime")

    def __init__(self, ticket, requests, expires, runtime):
        self.ticket = ticket
        self.requests = requests  # input key (the relay id) -> {"method", "params"} the child asked
        self.expires = expires
        self.runtime = runtime  # the child's: a request's own child lives while its call waits


def mcp_attributes(message, server_id, session):
    """The low-cardinality attributes of an MCP request, for its spans and duration metrics (pure)."""
    method, params = message["method"], message.get("params")
    attributes = [("mcp.method.name", CLIENT_LABELS.bound("mcp.method.name", method)),
                  ("host_mcp_gateway.server_id", server_id)]
    if session is not None and session.protocol_version:
        attributes.append(("mcp.protocol.version", session.protocol_version))
    name = params.get("name") if isinstance(params, dict) else None
    if method == "tools/call" and isinstance(name, str):
        attributes += [("gen_ai.tool.name", CLIENT_LABELS.bound("gen_ai.tool.name", name)),
                       ("gen_ai.operation.name", "execute_tool")]
    elif method == "prompts/get" and isinstance(name, str):
        attributes.append(("gen_ai.prompt.name", CLIENT_LABELS.bound("gen_ai.prompt.name", name)))
    return tuple(attributes)


def mcp_span_name(attributes):
    """`{mcp.method.name} {target}`, the target being the tool or prompt when there is one."""
    values = dict(attributes)
    target = values.get("gen_ai.tool.name") or values.get("gen_ai.prompt.name")
    return values["mcp.method.name"] + (" " + target if target else "")


class InputBridge:
    """A handshake-era client's call on a modern child. The child answers what it needs from the client as an
    input_required result; the bridge passes those requests to the client's session as real requests (under
    relay ids, on the call's stream or the session's), collects the answers, and sends the child its request
    again with them and its requestState, until the child completes it."""

    def __init__(self, router, message, session, fixed_roots=None):
        self._router = router
        self._message = message  # as the child got it (with the modern envelope)
        self._session = session
        self._fixed_roots = fixed_roots  # the server's `roots` list, which the gateway answers roots/list with
        self._answers = queue.SimpleQueue()  # (input key, the client's response), from the relay
        self._waiting = set()  # input keys the client has yet to answer
        self._responses = {}  # input key -> the client's result, for the retry
        self._state = None  # the child's requestState, echoed on the retry

    @property
    def waiting(self):
        return bool(self._waiting)

    def on_answer(self, answer):
        """The child's final answer: the requests to pass to the client (Interim messages, [] for a bare
        requestState), or None when it is the answer itself."""
        result = answer.get("result")
        if not isinstance(result, dict) or result.get("resultType") != "input_required":
            return None
        requests = result.get("inputRequests") if isinstance(result.get("inputRequests"), dict) else {}
        self._state, self._responses = result.get("requestState"), {}
        interims = []
        for key, request in requests.items():
            if self._fixed_roots is not None and isinstance(request, dict) and request.get("method") == "roots/list":
                self._responses[key] = {"roots": self._fixed_roots}
                continue
            relay_id = self._router.hold_request(self._session, key, request, self._answers)
            self._waiting.add(key)
            interims.append(Interim({"jsonrpc": "2.0", "id": relay_id, "method": request["method"],
                                     "params": request.get("params") or {}}))
        return interims

    def collect(self, timeout):
        """Takes the client's answers as they come; the request to send the child again once all are in, or None
        while some are missing after `timeout` seconds."""
        try:
            key, response = self._answers.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        self._waiting.discard(key)
        if isinstance(response.get("result"), dict):
            self._responses[key] = response["result"]
        return None if self._waiting else self.retry()

    def retry(self):
        params = dict(self._message.get("params") or {}, inputResponses=self._responses)
        if self._state is not None:
            params["requestState"] = self._state
        return dict(self._message, params=params)


class Ticket:
    """A request on its way through a child: what the HTTP thread waits on. It also carries the request's
    CLIENT span and records its durations when the final answer (or failure) comes."""
    __slots__ = ("child", "gateway_id", "call", "bridge", "_outbox", "_telemetry", "_span", "_attributes",
                 "_received", "_sent", "_done")

    def __init__(self, child, gateway_id, call, telemetry, span, attributes, received, bridge=None):
        self.child = child
        self.gateway_id = gateway_id
        self.call = call
        self.bridge = bridge  # an InputBridge for a handshake-era client of a modern child, else None
        self._outbox = deque()  # requests of the bridge for the client, not yet taken by next()
        self._telemetry = telemetry
        self._span = span
        self._attributes = attributes
        self._received = received  # when the gateway got the request
        self._sent = now()  # when it went to the child
        self._done = False

    def next(self, deadline, tick=None):
        """An Interim message, the final response, or None after `tick` seconds (see ChildProcess.wait_call)."""
        try:
            answer = self._next(deadline, tick)
        except GatewayError as e:
            self.finish(e.error_code, e.message)
            raise
        if answer is not None and not isinstance(answer, Interim):
            error = answer.get("error")
            if isinstance(error, dict):
                self.finish(str(error.get("code")), str(error.get("message")))
            else:
                self.finish()
        return answer

    def _next(self, deadline, tick):
        while True:
            if self._outbox:
                return self._outbox.popleft()
            if self.bridge is not None and self.bridge.waiting:
                timeout = deadline - now() if tick is None else min(tick, deadline - now())
                retry = self.bridge.collect(timeout)
                if retry is not None:
                    self._resend(retry)
                elif now() >= deadline:
                    raise GatewayError("the client did not answer the server's requests in time", 504, "timeout",
                                       JSONRPC_REQUEST_TIMEOUT, server_id=self.child.server_id)
                elif tick is not None:
                    return None
                continue
            answer = self.child.wait_call(self.gateway_id, self.call, deadline, tick)
            if self.bridge is None or answer is None or isinstance(answer, Interim):
                return answer
            requests = self.bridge.on_answer(answer)
            if requests is None:
                return legacy_answer(answer)
            if requests:
                self._outbox.extend(requests)
            else:  # nothing for the client (a requestState alone, or roots the gateway gave): again at once
                self._resend(self.bridge.retry())

    def _resend(self, message):
        """The child's request again, with the client's answers: a new call that the ticket follows from now."""
        self.gateway_id, self.call = self.child.begin_call(message, self.call.session)

    def wait(self, deadline):
        """The final response; messages that come first go to the session's event stream (or are dropped when
        the caller has no session)."""
        while True:
            answer = self.next(deadline)
            if not isinstance(answer, Interim):
                return answer
            if self.call.session is not None:
                self.call.session.push(answer.message)

    def finish(self, error_type=None, message=None):
        """Records the call's durations and ends its span, once; a caller that goes away finishes it too."""
        if self._done:
            return
        self._done = True
        ended = now()
        attributes = self._attributes + ((("error.type", error_type),) if error_type else ())
        meter = self._telemetry.meter
        meter.client_operation.record(ended - self._sent, attributes + (("network.transport", "pipe"),))
        meter.server_operation.record(ended - self._received, attributes + (("network.transport", "tcp"),))
        if error_type:
            self._span.set("error.type", error_type)
            self._span.fail(message or error_type)
        self._span.end()


def result_reply(message, result):
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


class Router:
    """Carries JSON-RPC payloads from clients to a server's child and back, and the messages a child starts to
    the sessions they concern. Owns the sessions and the thread that expires them.

    stdio carries no link between a request the child makes and the call that caused it, so the gateway asks
    the session of the most recently started call in flight on that child whose client declared the needed
    capability; a per-session child, with no such call, asks its own session on its event stream; with
    neither, the child gets an error at once. A shared child's request never reaches a client that merely has
    a stream open: what it asks (and what the answer holds) belongs to the call that caused it. Roots are a
    client's own data, so a shared child gets them only with `roots: "client"`, and the gateway answers for
    fixed roots itself."""

    def __init__(self, config, logger, telemetry):
        self._config = config
        self._log = logger
        self._telemetry = telemetry
        self.sessions = SessionStore(config.max_sessions, telemetry.meter)
        self._lock = threading.Lock()  # guards the two maps below
        self._relayed = {}  # client-facing id -> RelayedRequest
        self._subscribers = {}  # (runtime, uri) -> number of sessions subscribed
        self._relay_ids = itertools.count(1)
        self._parked = {}  # handle -> ParkedCall: modern calls waiting for their client's retry (self._lock)
        self._park_ids = itertools.count(1)
        self._request_children = itertools.count(1)  # keys of modern requests' own children
        self.request_states = RequestStateCodec()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="session-reaper", daemon=True)

    def start(self):
        self._reaper.start()

    def close_sessions(self, sessions, reason):
        """Ends these sessions; their own children (isolation "session") all stop at once, not one after another."""
        for session in sessions:
            if session.runtime.is_private:
                session.runtime.request_stop(reason)
        for session in sessions:
            self.close_session(session, reason)

    def use_config(self, config):
        """A reloaded config's session settings, for the sessions and requests that come next."""
        self._config = config
        self.sessions.max_sessions = config.max_sessions

    def end_streams(self):
        """Ends every GET event stream (the gateway is stopping); sessions stay until stop()."""
        for session in self.sessions.all():
            session.end_stream()

    def stop(self):
        """Ends every session (their streams close) and the reaper thread."""
        self._stop.set()
        self.close_sessions(self.sessions.all(), "the gateway is stopping")
        if self._reaper.is_alive():
            self._reaper.join(timeout=POLL_S * 2)

    # Requests from clients -------------------------------------------------------------------------------------

    def dispatch(self, runtime, payload, deadline, session=None):
        """Returns the reply for a payload: a response, a list of responses, or None when nothing answers (only
        notifications and responses). A single message's failure raises GatewayError; a batch element's becomes
        a JSON-RPC error in the list."""
        if isinstance(payload, list):
            return self._dispatch_batch(runtime, payload, deadline, session)
        outcome = self.begin(runtime, payload, deadline, session)
        return outcome.wait(deadline) if isinstance(outcome, Ticket) else outcome

    def _dispatch_batch(self, runtime, messages, deadline, session):
        if not messages:
            raise GatewayError("an empty batch is not a valid JSON-RPC request", 400, "invalid_request",
                               JSONRPC_INVALID_REQUEST)
        outcomes = []
        for message in messages:  # every request is sent before any answer is awaited: they run concurrently
            try:
                outcomes.append(self.begin(runtime, message, deadline, session))
            except GatewayError as e:
                outcomes.append(rpc_error_from(e, message_id(message)))
        replies = []
        for message, outcome in zip(messages, outcomes):
            if isinstance(outcome, Ticket):
                try:
                    outcome = outcome.wait(deadline)
                except GatewayError as e:
                    outcome = rpc_error_from(e, message_id(message))
            if outcome is not None:
                replies.append(outcome)
        return replies or None

    def begin(self, runtime, message, deadline, session=None):
        """Starts one message on its way. Returns a Ticket for a forwarded request, a reply the gateway gives
        itself, or None when no reply is due."""
        received = now()
        kind, problem = classify(message)
        if kind == INVALID:
            raise GatewayError("invalid JSON-RPC message: " + problem, 400, "invalid_request",
                               JSONRPC_INVALID_REQUEST, server_id=runtime.server_id, request_id=message_id(message))
        method = message.get("method")
        if method == "notifications/initialized":
            return None  # the gateway did the child's handshake itself; the child expects no second one
        if session is not None:
            session.used = True
            session.listed(method)
        if kind == RESPONSE:
            self._relay_response(message, session)
            return None
        if method == "server/discover" and kind == REQUEST:
            # Revision 2026-07-28's probe. The gateway's sessions, relaying and restarts rest on the handshake,
            # so it steers every client to initialize: any error does that.
            self._record_local(message, mcp_attributes(message, runtime.server_id, session), received,
                               str(JSONRPC_METHOD_NOT_FOUND))
            return rpc_error(message["id"], JSONRPC_METHOD_NOT_FOUND, "server/discover is not supported: "
                             "use initialize (protocol revisions %s)" % ", ".join(SUPPORTED_PROTOCOL_VERSIONS))
        if method in ("resources/subscribe", "resources/unsubscribe") and session is not None:
            return self._subscription(message, deadline, session)
        if kind == REQUEST and method in ("ping", "logging/setLevel"):
            runtime.ready_child(deadline)
            if runtime.era == MODERN:  # revision 2026-07-28 has neither: the gateway answers for its child
                params = message.get("params")
                level = params.get("level") if isinstance(params, dict) else None
                if session is not None and level in LOG_LEVELS:
                    session.log_level = level  # the child hears it in the _meta of the session's requests
                return result_reply(message, {})
        if kind == REQUEST and method != "initialize":
            return self.forward_request(runtime, message, deadline, session)
        if method == "initialize" and kind != REQUEST:
            raise GatewayError("initialize must be a request, with an id", 400, "invalid_request",
                               JSONRPC_INVALID_REQUEST, server_id=runtime.server_id)
        child = runtime.ready_child(deadline)
        if method == "initialize":
            self._record_local(message, mcp_attributes(message, runtime.server_id, session), received)
            return self.initialize_reply(runtime, message)
        if method == "notifications/cancelled":
            self._cancel_for_client(child, message, session)
        elif runtime.era == MODERN:
            pass  # revision 2026-07-28 has no other client notification
        elif method == "notifications/roots/list_changed" and not (runtime.is_private and
                                                                   runtime.spec.fixed_roots is None):
            pass  # one client's roots changing is no news to a child that does not get that client's roots
        else:
            child.send(message)
        return None

    def forward_request(self, runtime, message, deadline, session):
        """Sends a request to the child under a CLIENT span whose context the child gets in params._meta."""
        received = now()
        attributes = mcp_attributes(message, runtime.server_id, session)
        span = NO_SPAN
        if self._telemetry.tracing:
            span = self._telemetry.start_span(mcp_span_name(attributes), SPAN_CLIENT, dict(
                attributes, **{"jsonrpc.request.id": bound_label(str(message["id"]), LabelValues.MAX_CHARS),
                               "network.transport": "pipe",
                               "mcp.session.id": session.label if session else None}))
            message = with_meta(message, traceparent=span.context.traceparent())
        while True:
            bridge = None
            try:
                child = runtime.ready_child(deadline)
                outgoing = message
                if runtime.era == MODERN and not isinstance(session, ModernCaller):
                    capabilities = dict(session.capabilities) if session else {}
                    if runtime.spec.fixed_roots is not None:
                        capabilities["roots"] = {}  # the gateway answers them (InputBridge)
                    outgoing = modern_envelope(message, capabilities, session.client_info if session else None,
                                               session.log_level if session else None)
                    bridge = InputBridge(self, outgoing, session, runtime.spec.fixed_roots)
                gateway_id, call = child.begin_call(outgoing, session)
            except GatewayError as e:
                if e.error_code == "server_exited":
                    continue  # it died before the call reached it: wait for the restart like any later call
                self._record_local(message, attributes, received, e.error_code)
                span.set("error.type", e.error_code)
                span.fail(e.message)
                span.end()
                raise
            return Ticket(child, gateway_id, call, self._telemetry, span, attributes, received, bridge)

    def _record_local(self, message, attributes, received, error_type=None):
        """The duration of a request the gateway answered (or refused) without the child."""
        if error_type:
            attributes += (("error.type", error_type),)
        self._telemetry.meter.server_operation.record(now() - received, attributes + (("network.transport", "tcp"),))

    @staticmethod
    def initialize_reply(runtime, message):
        """A client's initialize, answered from the child's kept result: the child is initialized exactly once."""
        result = dict(runtime.init_result)
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        result["protocolVersion"] = negotiate_protocol_version(params.get("protocolVersion"),
                                                               runtime.init_result.get("protocolVersion"))
        return result_reply(message, result)

    @staticmethod
    def _cancel_for_client(child, message, session):
        """A client's notifications/cancelled names its own request id: the child is told the gateway id, and
        the cancelled call's HTTP request is answered at once instead of at its timeout."""
        params = message.get("params")
        if not isinstance(params, dict) or "requestId" not in params:
            return
        gateway_id = child.find_call(params["requestId"], session)
        if gateway_id is not None:  # else: already answered, or ambiguous among sessionless callers
            reason = params.get("reason") if isinstance(params.get("reason"), str) else "cancelled by the client"
            child.cancel_call(gateway_id, reason, answer_caller=True)

    def _subscription(self, message, deadline, session):
        """resources/subscribe and unsubscribe, counted per resource: the child is subscribed once, while any
        session watches the resource, and updates reach only the sessions that subscribed."""
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        if not isinstance(uri, str):
            return self.forward_request(session.runtime, message, deadline, session)
        key = (session.runtime, uri)
        subscribe = message["method"] == "resources/subscribe"
        session.runtime.ready_child(deadline)
        if session.runtime.era == MODERN:  # its one subscriptions/listen carries every session's resources
            with self._lock:
                self._count_subscription(session, key, subscribe)
            self.refresh_listen_feed(session.runtime)
            return result_reply(message, {})
        with self._lock:
            count = self._subscribers.get(key, 0)
            watching = uri in session.subscriptions
            if subscribe and (watching or count > 0) or not subscribe and (not watching or count > 1):
                self._count_subscription(session, key, subscribe)
                return result_reply(message, {})
        reply = self.forward_request(session.runtime, message, deadline, session).wait(deadline)
        if "result" in reply:
            with self._lock:
                self._count_subscription(session, key, subscribe)
        return reply

    def _count_subscription(self, session, key, subscribe):
        """Records that `session` now does (or no longer does) watch key's uri. Caller holds self._lock."""
        uri = key[1]
        if subscribe and uri not in session.subscriptions:
            session.subscriptions.add(uri)
            self._subscribers[key] = self._subscribers.get(key, 0) + 1
        elif not subscribe and uri in session.subscriptions:
            session.subscriptions.discard(uri)
            self._subscribers[key] -= 1
            if not self._subscribers[key]:
                del self._subscribers[key]

    def _relay_response(self, message, session):
        """A client's answer to a request a child made: back to that child under the child's own id."""
        with self._lock:
            relay = self._relayed.get(message["id"]) if isinstance(message["id"], str) else None
            if relay is not None and relay.session is session:
                del self._relayed[message["id"]]
            else:
                relay = None
        if relay is None:
            self._log.info("client_response_dropped", id=message["id"],
                           reason="no request of a server is waiting for it in this session")
            return
        relay.answer(message)

    # Multi round-trip requests for modern clients of handshake-era children -----------------------------------

    def park(self, ticket, requests, message, runtime):
        """Holds a modern client's call, which waits at `runtime`'s child for the answers to `requests` (input
        key -> the child's request); returns the requestState that names it on the client's retry. At most
        max_sessions calls wait so: a client that never retries holds nothing for long or in number."""
        ttl_s = self._config.request_timeout_ms / 1000.0
        with self._lock:
            if len(self._parked) >= self._config.max_sessions:
                raise GatewayError("too many calls wait for their clients' input (max_sessions)", 503,
                                   "too_many_sessions")
            handle = next(self._park_ids)
            self._parked[handle] = ParkedCall(ticket, requests, now() + ttl_s, runtime)
        return self.request_states.encode(handle, message["method"], mrtr_target(message), ttl_s)

    def parked_runtime(self, server_id, message):
        """The runtime whose child holds the call a retry's requestState names (refused as resume would)."""
        return self._parked_call(server_id, message, take=False).runtime

    def resume(self, server_id, message, caller):
        """A modern client's retry to server `server_id`: its inputResponses go to the child's waiting requests,
        and the call it names answers this request from now on. Returns (ticket, requests still unanswered:
        input key -> request)."""
        params = message["params"]
        parked = self._parked_call(server_id, message, take=True)
        call = parked.ticket.call
        call.caller_id = message["id"]  # before any answer can come for it
        call.session = caller
        call.progress_token = (request_meta(message) or {}).get("progressToken")  # the retry's own, if any
        responses = params.get("inputResponses") if isinstance(params.get("inputResponses"), dict) else {}
        missing = {}
        for key, request in parked.requests.items():
            with self._lock:
                relay = self._relayed.pop(key, None) if isinstance(responses.get(key), dict) else None
            if relay is not None:
                relay.answer({"jsonrpc": "2.0", "id": None, "result": responses[key]})
            else:
                missing[key] = request
        return parked.ticket, missing

    def _parked_call(self, server_id, message, take):
        handle = self.request_states.decode(message["params"]["requestState"], message["method"],
                                            mrtr_target(message))
        with self._lock:
            parked = self._parked.get(handle)
            if parked is not None and parked.ticket.child.server_id != server_id:
                raise _modern_error(JSONRPC_INVALID_PARAMS, "requestState refused: it belongs to another server")
            if take:
                self._parked.pop(handle, None)
        if parked is None:
            raise _modern_error(JSONRPC_INVALID_PARAMS, "requestState refused: the call it names has ended or "
                                "was already resumed")
        return parked

    MAX_TOOL_PAGES = 50  # of tools/list the gateway reads itself to learn which arguments headers mirror

    def tool_header_params(self, runtime, name, deadline):
        """The x-mcp-header declarations of one of the child's tools; the gateway lists the child's tools itself
        once after each start or change (notifications/tools/list_changed)."""
        declarations = runtime.header_params
        if declarations is None:
            declarations, cursor = {}, None
            child = runtime.ready_child(deadline)
            for _ in range(self.MAX_TOOL_PAGES):
                listing = {"jsonrpc": "2.0", "id": "gateway-tools", "method": "tools/list",
                           "params": {"cursor": cursor} if cursor else {}}
                if runtime.era == MODERN:
                    listing = modern_envelope(listing, {}, GATEWAY_CLIENT_INFO)
                answer = child.call(listing, deadline)
                result = answer.get("result") if isinstance(answer.get("result"), dict) else {}
                for tool in result.get("tools") or ():
                    if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                        declarations[tool["name"]] = x_mcp_header_params(tool.get("inputSchema"))
                cursor = result.get("nextCursor")
                if not isinstance(cursor, str):
                    break
            runtime.header_params = declarations
        return declarations.get(name, ()) if isinstance(name, str) else ()

    def _expire_parked(self):
        """Calls whose client never came back: cancelled at the child, their requests answered with an error."""
        with self._lock:
            expired = [handle for handle, parked in self._parked.items() if parked.expires < now()]
            calls = [self._parked.pop(handle) for handle in expired]
        for parked in calls:
            parked.ticket.child.cancel_call(parked.ticket.gateway_id, "its client did not retry in time")
            parked.ticket.finish("input_expired", "the client did not answer the server's requests in time")
        stopping = [parked.runtime for parked in calls if self._stop_request_child(parked.runtime)]
        for private in stopping:  # all stop at once: the reaper waits out one grace period, not one each
            private.join(timeout=CHILD_JOIN_S)

    # Sessions --------------------------------------------------------------------------------------------------

    def open_listen(self, runtime, message, caller, deadline):
        """subscriptions/listen of a modern client: a session of its own that hears only what it opted in to,
        each notification tagged with the listen request's id; resource subscriptions are counted with the
        sessions' own. Returns (session, the filter honoured, for the acknowledgement)."""
        wanted = message["params"].get("notifications") if isinstance(message.get("params"), dict) else None
        wanted = wanted if isinstance(wanted, dict) else {}
        capabilities = runtime.init_result.get("capabilities") or {}
        honoured, methods = {}, set()
        for field, method in listenable(capabilities).items():
            if wanted.get(field) is True:
                honoured[field] = True
                methods.add(method)
        uris = wanted.get("resourceSubscriptions")
        if isinstance(uris, list) and (capabilities.get("resources") or {}).get("subscribe"):
            honoured["resourceSubscriptions"] = [uri for uri in uris if isinstance(uri, str)]
            methods.add("notifications/resources/updated")
        session = Session(secrets.token_urlsafe(24), runtime, runtime, {"capabilities": caller.capabilities,
                                                                         "clientInfo": None}, opened_by="listen")
        session.protocol_version = caller.protocol_version
        session.deliver = subscription_filter(message["id"], methods)
        self._admit(session)
        for uri in honoured.get("resourceSubscriptions", ()):
            self._subscription({"jsonrpc": "2.0", "id": "listen", "method": "resources/subscribe",
                                "params": {"uri": uri}}, deadline, session)
        return session, honoured

    def open_session(self, runtime, message, deadline):
        """A client's initialize: a new session, answered from the shared child's kept result, or, with isolation
        "session", by a child of the session's own that the client's handshake initializes."""
        received = now()
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        session_id = secrets.token_urlsafe(24)
        if runtime.spec.isolation == "session":
            target = ServerRuntime(runtime.spec, self._config, self._log, self._telemetry, self.on_child_message,
                                   self.on_child_ready, handshake_params=params)
        else:
            target = self._handshake_child(runtime, deadline)
        session = Session(session_id, target, runtime, params)
        self._admit(session)  # counted before any per-session child starts: a full gateway starts none
        try:
            if target.is_private:
                runtime.adopt(session_id, target)
            target.ready_child(deadline)
        except GatewayError:
            self.close_session(session, "its server did not start")
            raise
        if not target.is_private or target.era == MODERN:  # a shared or modern child: the gateway negotiates
            reply = self.initialize_reply(target, message)
        else:
            reply = result_reply(message, target.init_result)
        session.protocol_version = reply["result"].get("protocolVersion")
        self._record_local(message, mcp_attributes(message, runtime.server_id, session), received)
        self._log.info("session_opened", server_id=runtime.server_id, session=session.label,
                       protocol_version=session.protocol_version, client_info=params.get("clientInfo"))
        return session, reply

    @staticmethod
    def _handshake_child(runtime, deadline):
        """Where a new handshake-era session of a shared server goes: its handshake twin when its child is
        dual-era and spoken to in the new revision, else the shared child itself."""
        runtime.ready_child(deadline)
        twin = runtime.handshake_twin()
        if twin is None:
            return runtime
        try:
            twin.ready_child(deadline)
        except GatewayError as e:
            if e.error_code == "timeout" or twin.init_result is not None:  # slow, or down after serving: as usual
                raise
            runtime.drop_twin(e.message)
            return runtime
        return twin

    def open_stream_session(self, runtime, protocol_version):
        """A session opened by a GET without one (the original daemon's contract): no client capabilities. Never
        used by a POST, it ends soon after its stream (the reaper), so such GETs cannot fill the gateway."""
        session = Session(secrets.token_urlsafe(24), runtime, runtime, {}, opened_by="GET")
        session.protocol_version = protocol_version or PROTOCOL_VERSION_WHEN_ABSENT
        self._admit(session)
        self._log.info("session_opened", server_id=runtime.server_id, session=session.label,
                       protocol_version=session.protocol_version, by="GET")
        return session

    def request_child(self, runtime, client_params, deadline):
        """A child of its own for one modern request to a server with isolation "session" (revision 2026-07-28
        has no session to give one to), initialized with the request's capabilities and identity; within
        max_children, an idle session giving way as for a new session's child."""
        private = ServerRuntime(runtime.spec, self._config, self._log, self._telemetry, self.on_child_message,
                                self.on_child_ready, handshake_params=client_params)
        for _ in range(ADMIT_ATTEMPTS):
            if self._room_for_child(runtime):
                break
        runtime.adopt("%s%d" % (REQUEST_CHILD_PREFIX, next(self._request_children)), private)
        try:
            private.ready_child(deadline)
        except GatewayError:
            self.end_request_child(private)
            raise
        return private

    def end_request_child(self, private):
        """Stops a request's own child once its call is over: not while the call waits for its client's retry,
        nor while a retry works on it."""
        if self._stop_request_child(private):
            private.join(timeout=CHILD_JOIN_S)

    def _stop_request_child(self, private):
        """end_request_child without the wait for the child's exit: whether it was asked to stop."""
        if not private.serves_request:  # a shared child's call: nothing of the request's own to end
            return False
        with self._lock:
            if any(parked.runtime is private for parked in self._parked.values()):
                return False
        if private.child is not None and private.child.calls_in_flight():
            return False
        private.owner.release(private)  # its room is free at once: what is left is this thread's to finish
        private.request_stop("its request was answered")
        return True

    def _room_for_child(self, parent):
        """Whether `parent` may start one more child of a client's own; when it runs max_children, the idle
        session that matters least ends first (False: look again), and 503 when each has a call or a stream."""
        if len(parent.private) < parent.spec.max_children:
            return True
        self._evict([s for s in self.sessions.all() if s.parent is parent], "max_children", GatewayError(
            "server %s already runs %d children of clients' own (max_children), each with a call in flight or an "
            "open stream" % (parent.server_id, parent.spec.max_children), 503, "too_many_children",
            server_id=parent.server_id))
        return False

    def _admit(self, session):
        """Adds a new session. When sessions, or its server's per-session children, have run out, the idle
        session that matters least is ended first (clients such as `claude mcp list` and mcp-remote never send
        DELETE; theirs gets 404 next time and initializes again, as the specification intends); 503 only when
        every candidate has a call in flight or an open stream."""
        parent = session.parent
        for _ in range(ADMIT_ATTEMPTS):
            if session.runtime.is_private and not self._room_for_child(parent):
                continue
            if self.sessions.full():
                self._evict(self.sessions.all(), "max_sessions", None)
            try:
                self.sessions.add(session)
                return
            except GatewayError:
                continue  # a concurrent initialize took the room: make room again
        self.sessions.add(session)  # raises too_many_sessions when still full

    def _evict(self, candidates, limit, error):
        """Ends the candidate that gives way first (Session.idle_for) among those with no call in flight and no
        stream whose client is still there; raises `error` (when given) if there is none."""
        busy = self._sessions_with_calls()
        idle = [s for s in candidates if s not in busy and not s.closed and not s.stream_alive()]
        grace_s = self._config.session_grace_ms / 1000.0
        victim = min(idle, key=lambda s: s.idle_for(grace_s), default=None)
        if victim is None:
            if error is not None:
                raise error
            return
        self._log.info("session_evicted", server_id=victim.server_id, session=victim.label, limit=limit,
                       used=victim.used, idle_s=round(now() - victim.last_seen, 3))
        self.close_session(victim, "evicted to make room (%s)" % limit)

    def _sessions_with_calls(self):
        """Sessions with a call in flight on some child."""
        busy = set()
        for runtime in {session.runtime for session in self.sessions.all()}:
            child = runtime.child
            if child is not None:
                busy.update(call.session for _, call in child.calls_in_flight())
        return busy

    def describe(self, runtime):
        """/servers' entry for a configured server: its state, its sessions and, with isolation "session", each
        session's child with that session's age and last activity."""
        described = runtime.describe()
        sessions = [session for session in self.sessions.all() if session.parent is runtime]
        described["sessions"] = [session.describe() for session in sessions]
        if runtime.spec.isolation == "session":
            described["isolation"] = "session"
            described["children"] = [
                dict(session.runtime.describe(), session=session.label, session_age_s=view["age_s"],
                     session_idle_s=view["idle_s"])
                for session, view in zip(sessions, described["sessions"]) if session.runtime.is_private]
            of_sessions = {session.runtime for session in sessions}
            described["children"] += [dict(private.describe(), request=True)  # a modern request's own
                                      for private in list(runtime.private.values()) if private not in of_sessions]
        return described

    def close_session(self, session, reason):
        """Ends a session: its calls in flight are cancelled at the child, its streams close, its subscriptions
        and requests waiting on its client are released, and its own child (if any) stops."""
        if not self.sessions.remove(session):
            return
        session.close()
        child = session.runtime.child
        if child is not None:
            child.cancel_calls_of(session, "session " + reason)
        with self._lock:
            relays = [(relay_id, relay) for relay_id, relay in self._relayed.items() if relay.session is session]
            for relay_id, _ in relays:
                del self._relayed[relay_id]
            released = list(session.subscriptions)
            for uri in released:
                self._count_subscription(session, (session.runtime, uri), subscribe=False)
            unwatched = [uri for uri in released if (session.runtime, uri) not in self._subscribers]
        for _, relay in relays:
            relay.answer(rpc_error(None, JSONRPC_SERVER_ERROR, "the client's session ended"))
        if child is not None:
            for uri in unwatched:
                child.send_request("resources/unsubscribe", {"uri": uri})
        if session.runtime.is_private:
            session.parent.release(session.runtime)
            session.runtime.request_stop()
            session.runtime.join(timeout=CHILD_JOIN_S)
        self._log.info("session_closed", server_id=session.server_id, session=session.label, reason=reason)

    def _reap(self):
        """Expires idle sessions and requests that no client answered in time."""
        interval = 0.05
        try:
            while not self._stop.wait(interval):
                idle_s = self._config.session_idle_timeout_ms / 1000.0  # read each time: a reload may change them
                grace_s = self._config.session_grace_ms / 1000.0
                timeout_s = self._config.request_timeout_ms / 1000.0  # relayed requests and parked calls expire
                interval = min(30.0, max(0.05, min(idle_s, grace_s, timeout_s) / 4))
                expired, unused = [], []
                for session in self.sessions.all():
                    if session.streaming:
                        continue
                    if now() - session.last_seen > idle_s:
                        expired.append(session)
                    elif session.opened_by == "GET" and not session.used and now() - session.last_seen > grace_s:
                        unused.append(session)
                self.close_sessions(expired, "expired")  # their own children stop together
                self.close_sessions(unused, "its stream ended and it was never used")
                self._expire_relays()
                self._expire_parked()
        except Exception as e:
            self._log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))

    def _expire_relays(self):
        with self._lock:
            expired = [(relay_id, relay) for relay_id, relay in self._relayed.items() if relay.expires < now()]
            for relay_id, _ in expired:
                del self._relayed[relay_id]
        for _, relay in expired:
            relay.answer(rpc_error(None, JSONRPC_REQUEST_TIMEOUT, "the client did not answer within the request "
                                                                  "timeout"))

    # Messages children start -----------------------------------------------------------------------------------

    def on_child_message(self, runtime, child, message, kind):
        """Routes a message from a child that answers none of the gateway's calls (on the child's stdout thread:
        it must not block)."""
        if kind == REQUEST:
            self._relay_request(runtime, child, message)
            return
        if kind != NOTIFICATION:
            self._log.warning("child_message_dropped", server_id=runtime.server_id, pid=child.pid,
                              reason=classify(message)[1] or "a response without a valid id",
                              line=_log_json(message)[:LOGGED_LINE_CHARS])
            return
        method = message["method"]
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if method == "notifications/progress":  # to the call whose token (the gateway id) it names
            call = child.call_by_id(params.get("progressToken"))
            if call is not None and call.progress_token is not None:  # a retry (MRTR) may have asked for none
                call.answers.put(Interim(dict(message, params=dict(params, progressToken=call.progress_token))))
            return
        if method == "notifications/cancelled":  # the child gave up a request it made to a client
            relay_id, relay = self._take_relay_of(child, params.get("requestId"))
            if relay is not None:
                relay.session.push(dict(message, params=dict(params, requestId=relay_id)))
            return
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        if META_SUBSCRIPTION_ID in meta:  # a modern child's listen stream: a modern client's own, or the feed
            subscription = meta[META_SUBSCRIPTION_ID]
            listener = child.call_by_id(subscription)
            if listener is not None and isinstance(listener.session, ModernCaller):
                retagged = dict(meta, **{META_SUBSCRIPTION_ID: listener.caller_id})
                listener.answers.put(Interim(dict(message, params=dict(params, _meta=retagged))))
                return
            if subscription != runtime.listen_feed or method == "notifications/subscriptions/acknowledged":
                return
            untagged = {key: value for key, value in meta.items() if key != META_SUBSCRIPTION_ID}
            params = dict(params, _meta=untagged) if untagged else {k: v for k, v in params.items() if k != "_meta"}
            message = dict(message, params=params)
        if method == LIST_CHANGED["tools"]:
            runtime.header_params = None  # which arguments headers mirror may have changed
        sessions = self.sessions.of_runtime(runtime)
        if method == "notifications/resources/updated":
            sessions = [session for session in sessions if params.get("uri") in session.subscriptions]
        for session in sessions:
            (session.announce if method in LISTED_BY.values() else session.push)(message)
        self._log.log("debug", "child_notification", server_id=runtime.server_id, method=method,
                      sessions=len(sessions))

    def refresh_listen_feed(self, runtime):
        """A modern child's one subscriptions/listen for its handshake-era sessions: every list change it can
        announce and every resource some session watches. Opened again when that set of resources changes."""
        child = runtime.child
        if child is None or runtime.era != MODERN or runtime.serves_request:  # a request's child feeds no one
            return
        capabilities = runtime.init_result.get("capabilities") or {}
        wanted = {field: True for field in listenable(capabilities)}
        with self._lock:
            uris = sorted(uri for (owner, uri) in self._subscribers if owner is runtime)
            runtime.feed_generation += 1  # refreshes may race (a subscribe, a restart): the last one wins
            generation, previous, runtime.listen_feed = runtime.feed_generation, runtime.listen_feed, None
        if uris:
            wanted["resourceSubscriptions"] = uris
        if previous is not None:
            child.cancel_call(previous, "opened again for other resources")
        if not wanted:
            return
        feed, _ = child.begin_call(modern_envelope(
            {"jsonrpc": "2.0", "id": "gateway-listen", "method": "subscriptions/listen",
             "params": {"notifications": wanted}}, child_handshake_params(runtime.spec)["capabilities"],
            GATEWAY_CLIENT_INFO))
        with self._lock:
            if runtime.feed_generation == generation:
                runtime.listen_feed, feed = feed, None
        if feed is not None:
            child.cancel_call(feed, "a later one replaced it")

    def _take_relay_of(self, child, child_id):
        """(client-facing id, RelayedRequest) of a child's request, forgotten; (None, None) if unknown."""
        with self._lock:
            for relay_id, relay in self._relayed.items():
                if relay.child is child and relay.child_id == child_id:
                    return relay_id, self._relayed.pop(relay_id)
        return None, None

    def _relay_request(self, runtime, child, message):
        """A request the child makes goes to a client only by the rule in the class docstring; roots/list may
        be the gateway's own to answer (the server's `roots` setting), and a ping always may."""
        method = message["method"]
        if method == "roots/list" and runtime.spec.fixed_roots is not None:
            child.send(result_reply(message, {"roots": runtime.spec.fixed_roots}))
            return
        if method == "roots/list" and runtime.spec.roots is None and not runtime.is_private:
            self._refuse_child_request(runtime, child, message, "the server's roots setting is unset: it "
                                       "has no roots, and no client's roots are passed to a shared child")
            return
        needed = REQUEST_CAPABILITY.get(method)
        call, session = self._relay_target(runtime, child, needed)
        if session is None:
            if method == "ping":  # the gateway is the child's client, and it is alive
                child.send(result_reply(message, {}))
            else:
                self._fail_modern_call_lacking(child, needed)
                self._refuse_child_request(runtime, child, message, "no client with a call in flight on this "
                                           "child can answer it" if not runtime.is_private else
                                           "its session's client did not declare that capability or is gone")
            return
        relay_id = self._relay(RelayedRequest(child, message["id"], session, self._relay_expiry()))
        forwarded = dict(message, id=relay_id)
        if call is not None:
            call.answers.put(Interim(forwarded))  # rides on the call's own stream
        else:
            session.push(forwarded)

    def _relay_target(self, runtime, child, needed):
        """(call, session) a child's request goes to: the newest call in flight whose client declared the
        `needed` capability; for a per-session child, else its session when its stream is open. (None, None)
        when no client may be asked: a shared child's request never reaches a client that has no call on it."""
        def can_answer(session):
            return session is not None and not session.closed and (needed is None or needed in session.capabilities)
        call = next((call for _, call in reversed(child.calls_in_flight()) if can_answer(call.session)), None)
        if call is not None:
            return call, call.session
        if runtime.is_private:
            streaming = [s for s in self.sessions.of_runtime(runtime) if s.streaming and can_answer(s)]
            if streaming:
                return None, streaming[0]
        return None, None

    def hold_request(self, session, key, request, sink):
        """Passes a request of a modern child's input_required result to a handshake-era session as a real one;
        its answer goes into `sink` as (key, response). Returns the relay id it goes under. A client without a
        session, or without the capability, cannot be asked: 400 with -32021."""
        method = request.get("method") if isinstance(request, dict) else None
        needed = REQUEST_CAPABILITY.get(method)
        if session is None or session.closed or needed is None or needed not in session.capabilities:
            raise _modern_error(MCP_MISSING_CLIENT_CAPABILITY, "the server asks its client for %s, which this "
                                "client %s" % (method, "cannot give without a session" if session is None else
                                               "did not declare"), {"requiredCapabilities": {needed or method: {}}})
        return self._relay(RelayedRequest(None, key, session, self._relay_expiry(), sink))

    def _relay(self, relay):
        """Registers a request on its way to a client; returns the id it goes under."""
        relay_id = "hmg-%d" % next(self._relay_ids)
        with self._lock:
            self._relayed[relay_id] = relay
        return relay_id

    def _relay_expiry(self):
        return now() + self._config.request_timeout_ms / 1000.0

    def refuse_relay(self, relay_id, reason):
        """Answers a child's request, already relayed under `relay_id`, with an error instead of a client."""
        with self._lock:
            relay = self._relayed.pop(relay_id, None)
        if relay is not None:
            relay.answer(rpc_error(None, JSONRPC_METHOD_NOT_FOUND, reason))

    @staticmethod
    def _fail_modern_call_lacking(child, needed):
        """A modern client's call that needs a capability its client did not declare ends with -32021, as a
        server of that revision must answer it; the child is told to drop it."""
        if needed is None:
            return
        for gateway_id, call in reversed(child.calls_in_flight()):
            if isinstance(call.session, ModernCaller) and needed not in call.session.capabilities:
                child.cancel_call(gateway_id, "its client did not declare the %s capability" % needed)
                call.answers.put(_modern_error(MCP_MISSING_CLIENT_CAPABILITY, "the request needs the client "
                                               "capability %s, which the request did not declare" % needed,
                                               {"requiredCapabilities": {needed: {}}}))
                return

    def _refuse_child_request(self, runtime, child, message, reason):
        child.send(rpc_error(message["id"], JSONRPC_METHOD_NOT_FOUND, "%s: %s" % (message["method"], reason)))
        self._log.info("child_request_refused", server_id=runtime.server_id, method=message["method"],
                       reason=reason)

    def on_child_ready(self, runtime, child, restarted):
        """After a restart, sessions carry on: subscriptions are renewed and clients are told to refresh the
        lists the child declared as changeable."""
        runtime.header_params = None
        with self._lock:
            runtime.listen_feed = None  # the old child's, if any, went with it
        self.refresh_listen_feed(runtime)
        if not restarted:
            return
        with self._lock:
            uris = [uri for (owner, uri) in self._subscribers if owner is runtime]
        for uri in uris if runtime.era == LEGACY else ():  # a modern child's feed names them already
            child.send_request("resources/subscribe", {"uri": uri})
        capabilities = runtime.init_result.get("capabilities") or {}
        notices = [{"jsonrpc": "2.0", "method": method} for name, method in LIST_CHANGED.items()
                   if isinstance(capabilities.get(name), dict) and capabilities[name].get("listChanged")]
        for session in self.sessions.of_runtime(runtime):
            for notice in notices:
                session.announce(notice)
        self._log.info("sessions_resumed", server_id=runtime.server_id, resubscribed=len(uris),
                       sessions=len(self.sessions.of_runtime(runtime)))


# § 10 HTTP layer -----------------------------------------------------------------------------------------------------

_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_REQUEST_LINE_RE = re.compile(rb"(" + _TCHAR + rb"+) ([!-~]+) HTTP/([0-9])\.([0-9])\Z")
# Every header line at once: name, colon, value without CR, LF or NUL. A line that starts with whitespace
# (obsolete folding) or has whitespace before its colon fails here.
_HEADER_BLOCK_RE = re.compile(rb"%s+:[^\r\n\x00]*(?:\r\n%s+:[^\r\n\x00]*)*" % (_TCHAR, _TCHAR))
_CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,15}\Z")
_EVENT_ID_RE = re.compile(r"[0-9]{1,18}\Z")
_BARE_LF_RE = re.compile(rb"(?<!\r)\n")


class Request:
    """One parsed HTTP request head. Header names are lower-case; repeated headers are joined with ', '."""
    __slots__ = ("method", "target", "path", "version", "headers", "keep_alive", "content_length")

    def __init__(self, method, target, path, version, headers, keep_alive, content_length):
        self.method = method
        self.target = target
        self.path = path
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length


def parse_head(head):
    """Parses a request head (request line and header lines, without the blank line) as strictly as RFC 9112
    asks: malformed lines, obsolete line folding, conflicting Content-Lengths and Transfer-Encoding (which the
    gateway does not decode) are refused, and the connection is closed since its framing cannot be trusted."""
    request_line, _, header_block = head.partition(b"\r\n")
    match = _REQUEST_LINE_RE.match(request_line)
    if not match:
        raise bad_request("malformed request line", close=True)
    method, target = match.group(1).decode("ascii"), match.group(2).decode("ascii")
    version = (int(match.group(3)), int(match.group(4)))
    if version not in ((1, 0), (1, 1)):
        raise GatewayError("HTTP/%d.%d is not supported; use HTTP/1.1" % version, 505,
                           "http_version_not_supported", close=True)
    if header_block and header_block.count(b"\r\n") >= MAX_HEADER_COUNT:
        raise GatewayError("more than %d header lines" % MAX_HEADER_COUNT, 431, "headers_too_large", close=True)
    if header_block and not _HEADER_BLOCK_RE.fullmatch(header_block):
        raise bad_request("malformed header line", close=True)
    headers, lengths = {}, []
    for line in header_block.decode("latin-1").split("\r\n") if header_block else ():  # names: ASCII (above)
        name, _, value = line.partition(":")
        name, value = name.lower(), value.strip(" \t")
        if name == "content-length":
            lengths.extend(part.strip() for part in value.split(","))
        elif name in headers:
            headers[name] += ", " + value
        else:
            headers[name] = value
    if "transfer-encoding" in headers:
        raise GatewayError("Transfer-Encoding request bodies are not supported; send Content-Length", 411,
                           "length_required", close=True)
    if lengths and (len(set(lengths)) != 1 or not _CONTENT_LENGTH_RE.match(lengths[0])):
        raise bad_request("invalid Content-Length", close=True)
    if version == (1, 1) and "host" not in headers:
        raise bad_request("HTTP/1.1 requests need a Host header", close=True)
    if "," in headers.get("host", ""):
        raise bad_request("more than one Host header", close=True)
    tokens = {token.strip() for token in headers.get("connection", "").lower().split(",")}
    keep_alive = "close" not in tokens if version == (1, 1) else "keep-alive" in tokens
    if target.startswith(("http://", "https://")):  # absolute-form, which servers must accept
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    path = target.split("?", 1)[0]
    return Request(method, target, path, version, headers, keep_alive, int(lengths[0]) if lengths else 0)


STATIC_ROUTES = {"/health": ("GET", "HEAD"), "/servers": ("GET", "HEAD"), "/metrics": ("GET", "HEAD"),
                 "/rpc": ("POST",), "/": ("GET", "HEAD")}  # HEAD is answered as GET without the body
ROUTE_TEMPLATES = {"health": "/health", "servers": "/servers", "metrics": "/metrics", "rpc": "/rpc",
                   "mcp": "/{server_id}/rpc", "": "/"}  # http.route, low-cardinality
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
MCP_METHODS = ("GET", "POST", "DELETE")
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID"
CORS_EXPOSE_HEADERS = "Mcp-Session-Id, WWW-Authenticate"


class Runtimes(dict):
    """server_id -> ServerRuntime. A reload replaces the map whole; a request that found its server in the old
    map and looks again in the new one, where a reload removed it, gets 404, as it would a moment later."""

    def __missing__(self, server_id):
        raise server_not_found(server_id)


# The status page (GET /): one self-contained page, served without the token since it holds no data; its script
# asks for the token (or takes it from the URL's #token= fragment, which browsers never send) and fetches
# /servers and /health with it. The headers allow nothing but that inline style and script, by their hashes.
_STATUS_STYLE = r'''
body { font: 14px/1.4 -apple-system, BlinkMacSystemFont, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em;
       color: #1d1d1f; background: #fff; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
#summary { color: #555; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #e5e5e5; vertical-align: top; }
th { font-weight: 600; color: #444; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state { font-weight: 600; }
.ready { color: #1a7f37; } .starting, .backoff { color: #9a6700; } .failed, .stopped, .exited { color: #cf222e; }
.muted { color: #777; }
pre { background: #f6f8fa; padding: .8em; overflow: auto; white-space: pre-wrap; word-break: break-all; }
pre:empty { display: none; }
ul#errors { padding-left: 1.2em; } ul#errors li { font-family: ui-monospace, Menlo, monospace; font-size: 12px; }
form#login { max-width: 28em; } input[type=password] { width: 100%; padding: .4em; margin: .3em 0; }
button, select { font: inherit; padding: .25em .6em; margin-right: .4em; }
.error { color: #cf222e; }
'''
_STATUS_SCRIPT = '"use strict";\nconst MCP_REMOTE_VERSION = %s;\n' % json.dumps(MCP_REMOTE_VERSION) + r'''
// Everything this page shows comes from GET /servers and GET /health, fetched with the token; the page itself
// holds no data. Every value is inserted as text (textContent), never as HTML.
const MCP_REMOTE = "mcp-remote@" + MCP_REMOTE_VERSION;
const KEY = "host-mcp-gateway-token";
const POLL_MS = 2000;
let token = null, timer = null, previous = {}, serverIds = [];
const recent = [];  // what changed, newest first: kept here, not by the gateway

function $(id) { return document.getElementById(id); }
function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}
function duration(s) {
  if (s === null || s === undefined) return "";
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + (s % 60) + "s";
}
function text(value) {
  return typeof value === "string" || value === null || value === undefined ? value : JSON.stringify(value);
}
function item(list, line, className) {
  const li = document.createElement("li");
  li.textContent = line;
  if (className) li.className = className;
  list.appendChild(li);
}

// The snippets of --client-config, built here from the same shapes (host_mcp_gateway.py's CLIENT_SNIPPETS).
function snippet(client, ids, base, tok) {
  const url = id => base + "/" + id + "/rpc";
  const each = build => { const out = {}; for (const id of ids) out[id] = build(url(id)); return out; };
  const headers = {"Authorization": "Bearer " + tok};
  const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(new URL(base).hostname);
  switch (client) {
    case "claude-code": {
      const quoted = tok === "${HOST_MCP_GATEWAY_TOKEN}" ? tok : tok.replace(/[\\"$`]/g, "\\$&");
      return ids.map(id => "claude mcp add --transport http " + id + " " + url(id) +
                      ' --header "Authorization: Bearer ' + quoted + '"').join("\n");
    }
    case "claude-desktop":
      return JSON.stringify({mcpServers: each(u => ({command: "npx",
        args: ["-y", MCP_REMOTE, u, "--header", "Authorization:${AUTH}"].concat(loopback ? [] : ["--allow-http"]),
        env: {AUTH: "Bearer " + tok}}))}, null, 2);
    case "cursor": return JSON.stringify({mcpServers: each(u => ({url: u, headers}))}, null, 2);
    case "vscode": return JSON.stringify({servers: each(u => ({type: "http", url: u, headers}))}, null, 2);
    case "windsurf": return JSON.stringify({mcpServers: each(u => ({serverUrl: u, headers}))}, null, 2);
  }
  return "";
}

function note(what) {
  recent.unshift(new Date().toLocaleTimeString() + "  " + what);
  recent.length = Math.min(recent.length, 50);
}
function changes(server) {
  const before = previous[server.server_id];
  previous[server.server_id] = server;
  if (!before) return;
  if (server.state !== before.state) note(server.server_id + ": " + before.state + " -> " + server.state);
  if (server.restart_count > before.restart_count)
    note(server.server_id + ": restarted (" + server.restart_count + " so far); last exit: " +
         (text(server.last_exit) || "?"));
  if (server.last_error && server.last_error !== before.last_error)
    note(server.server_id + ": " + text(server.last_error));
}

function render(servers, health) {
  $("summary").textContent = "gateway " + health.status + ", up " + duration(health.uptime_s) + ", " +
    servers.length + " server(s); updated " + new Date().toLocaleTimeString();
  const rows = $("servers"), sessions = $("sessions");
  rows.replaceChildren();
  sessions.replaceChildren();
  for (const s of servers) {
    changes(s);
    const row = document.createElement("tr");
    row.dataset.server = s.server_id;
    cell(row, s.server_id);
    cell(row, s.state, "state " + s.state);
    cell(row, s.pid, "num pid");
    cell(row, duration(s.uptime_s), "num");
    cell(row, s.restart_count, "num restarts");
    cell(row, text(s.last_exit));
    cell(row, text(s.last_error), s.last_error ? "error" : "");
    cell(row, s.calls_in_flight, "num");
    cell(row, (s.sessions || []).length, "num");
    rows.appendChild(row);
    for (const v of s.sessions || []) {
      const r = document.createElement("tr");
      const stream = v.stream_open ? "open" : "closed";
      for (const value of [s.server_id, v.session, v.client, duration(v.age_s), duration(v.idle_s), stream])
        cell(r, value);
      sessions.appendChild(r);
    }
  }
  if (!sessions.children.length) {
    const r = document.createElement("tr");
    cell(r, "no MCP sessions open", "muted").colSpan = 6;
    sessions.appendChild(r);
  }
  const list = $("errors");
  list.replaceChildren();
  for (const line of recent) item(list, line);
  if (!recent.length) item(list, "nothing yet", "muted");
  const ids = servers.map(s => s.server_id);
  if (ids.join("\n") !== serverIds.join("\n")) {
    serverIds = ids;
    const pick = $("snippet-server");
    pick.replaceChildren();
    for (const value of ["(all)"].concat(ids)) {
      const option = document.createElement("option");
      option.textContent = value;
      pick.appendChild(option);
    }
  }
}

async function get(path) {
  const response = await fetch(path, {headers: {"Authorization": "Bearer " + token}, cache: "no-store"});
  if (response.status === 401) throw new Error("unauthorized");
  return response.json();  // /health answers 503 with the same shape when a server is not ready
}
async function poll() {
  timer = null;
  try {
    const [servers, health] = await Promise.all([get("/servers"), get("/health")]);
    render(servers.servers, health);
  } catch (error) {
    if (error.message === "unauthorized") { signOut("The gateway refused this token."); return; }
    $("summary").textContent = "cannot reach the gateway: " + error.message + " (trying again)";
  }
  timer = setTimeout(poll, POLL_MS);
}

function signIn(value) {
  token = value;
  sessionStorage.setItem(KEY, value);
  $("login").hidden = true;
  $("status").hidden = false;
  if (timer === null) poll();
}
function signOut(message) {
  token = null;
  sessionStorage.removeItem(KEY);
  if (timer !== null) { clearTimeout(timer); timer = null; }
  $("status").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

$("login").addEventListener("submit", event => {
  event.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  if (value) signIn(value);
});
$("forget").addEventListener("click", () => signOut(""));
$("show-snippet").addEventListener("click", () => {
  const chosen = $("snippet-server").value;
  $("snippet").textContent = snippet($("snippet-client").value, chosen === "(all)" ? serverIds : [chosen],
                                     location.origin, token);
});

// #token=... in the address: taken, then removed from the address bar. A fragment never reaches the server.
const fragment = /^#token=(.+)$/.exec(location.hash);
if (fragment) history.replaceState(null, "", location.pathname + location.search);
const saved = fragment ? decodeURIComponent(fragment[1]) : sessionStorage.getItem(KEY);
if (saved) signIn(saved); else signOut("");
'''
_STATUS_BODY = r'''
<header><h1>host-mcp-gateway</h1><div id="summary"></div></header>
<form id="login" hidden>
<p>Paste the gateway's token (the config's <code>auth_token</code>; <code>--status-url</code> prints a link with
it). It stays in this tab only.</p>
<input id="token" type="password" autocomplete="off" aria-label="token" autofocus>
<button type="submit">Show status</button>
<p id="login-error" class="error"></p>
</form>
<main id="status" hidden>
<table><thead><tr><th>Server</th><th>State</th><th>PID</th><th>Uptime</th><th>Restarts</th><th>Last exit</th>
<th>Last error</th><th>Calls in flight</th><th>Sessions</th></tr></thead><tbody id="servers"></tbody></table>
<h2>Sessions</h2>
<table><thead><tr><th>Server</th><th>Session</th><th>Client</th><th>Age</th><th>Idle</th><th>Event stream</th></tr>
</thead><tbody id="sessions"></tbody></table>
<h2>Recent changes and errors <span class="muted">(seen by this page since it opened)</span></h2>
<ul id="errors"></ul>
<h2>Connect a client</h2>
<select id="snippet-client" aria-label="client"><option>claude-code</option><option>claude-desktop</option>
<option>cursor</option><option>vscode</option><option>windsurf</option></select>
<select id="snippet-server" aria-label="server"></select>
<button id="show-snippet" type="button">Show settings</button>
<pre id="snippet"></pre>
<p><button id="forget" type="button">Forget the token</button></p>
</main>
'''


def _csp_hash(text):
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


STATUS_PAGE = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
               'content="width=device-width, initial-scale=1"><title>host-mcp-gateway status</title>'
               '<link rel="icon" href="data:,"><style>%s</style></head>\n<body>%s<script>%s</script>\n</body></html>\n'
               % (_STATUS_STYLE, _STATUS_BODY, _STATUS_SCRIPT)).encode("utf-8")
STATUS_PAGE_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src %s; style-src %s; connect-src 'self'; "
     "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
     % (_csp_hash(_STATUS_SCRIPT), _csp_hash(_STATUS_STYLE))),
    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"))
PUBLIC_PATHS = frozenset({"/"})  # answered without the token: the status page, which holds no data


def match_route(path, server_ids):
    """(route name, server_id or None, allowed methods) for a path, or GatewayError 404."""
    if path in STATIC_ROUTES:
        return path[1:], None, STATIC_ROUTES[path]
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "" and parts[2] == "rpc":
        if parts[1] in server_ids:
            return "mcp", parts[1], MCP_METHODS
        raise server_not_found(parts[1])
    raise GatewayError("no such path: %s" % path, 404, "not_found")


def origin_allowed(origin, host, allowed_origins):
    """An Origin is allowed when it is listed, or when it is the gateway's own loopback origin (a page the
    gateway itself would have served). A DNS-rebinding page carries its own host name, so it never is."""
    origin = origin.rstrip("/").lower()
    if origin in {entry.rstrip("/").lower() for entry in allowed_origins}:
        return True
    match = ORIGIN_RE.match(origin)
    if not match or not host or origin.split("://", 1)[1] != host.strip().lower():
        return False
    name = match.group(2).strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def accepts(request, media_type):
    """Whether the request's Accept header admits `media_type` (no header admits anything)."""
    accept = request.headers.get("accept")
    if accept is None:
        return True
    ranges = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return bool(ranges & {media_type, media_type.split("/")[0] + "/*", "*/*"})


def parse_json_body(body):
    """A client's body decoded, or 400 `invalid_json`, before anything is registered for it."""
    try:
        value = json_loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise GatewayError("request body is not valid JSON: %s" % e, 400, "invalid_json", JSONRPC_PARSE_ERROR) from None
    problem = json_input_problem(body, value)
    if problem:
        raise GatewayError("request body refused: " + problem, 400, "invalid_json", JSONRPC_PARSE_ERROR)
    return value


_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def response_head(status, length, content_type=None, headers=(), close=False):
    """The head of a response with a body of `length` bytes."""
    lines = ["HTTP/1.1 %d %s" % (status, _REASONS[status]), "Server: " + SERVER_HEADER,
             "Date: " + _HttpDate.get(), "Content-Length: %d" % length]
    if content_type:
        lines.append("Content-Type: " + content_type)
    lines.extend("%s: %s" % header for header in headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Slots:
    """Counts of what is in use (connections, calls) per key, each kind of key with its own cap. Keys at zero
    are dropped, so the table holds only what is in use and is bounded by it."""

    def __init__(self, caps):
        self.caps = caps  # kind of key -> most in use at once; replaced whole by a reload
        self._lock = threading.Lock()
        self._counts = {}  # (kind, value) -> number in use (self._lock)

    def acquire(self, keys):
        """Takes one under every (kind, value) key, or none: then returns the first key at its cap."""
        with self._lock:
            for key in keys:
                if self._counts.get(key, 0) >= self.caps[key[0]]:
                    return key
            for key in keys:
                self._counts[key] = self._counts.get(key, 0) + 1
        return None

    def release(self, keys):
        with self._lock:
            for key in keys:
                left = self._counts.pop(key) - 1
                if left:
                    self._counts[key] = left


class RefusalLog:
    """Which refusals get a log line. Refused requests (no token, a wrong one, bad framing, an address outside
    allowed_clients) cost a client nothing to send, so each address gets BURST lines per window and the rest
    are counted; summary() reports what was left out, so nothing goes unsaid. At most MAX_ADDRESSES addresses
    are tracked per window; refusals from others are only counted."""
    BURST = 20
    WINDOW_S = 10.0
    MAX_ADDRESSES = 1000
    SUMMARY_CLIENTS = 10  # the addresses a summary names, those with the most left out

    def __init__(self, clock=now):
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below
        self._window_end = clock() + self.WINDOW_S
        self._logged = {}  # client address -> lines logged in this window
        self._dropped = {}  # client address -> refusals left out in this window
        self._untracked = 0  # refusals left out from addresses past MAX_ADDRESSES

    def allow(self, address):
        with self._lock:
            logged = self._logged.get(address, 0)
            if logged < self.BURST and (logged or len(self._logged) < self.MAX_ADDRESSES):
                self._logged[address] = logged + 1
                return True
            if logged:
                self._dropped[address] = self._dropped.get(address, 0) + 1
            else:
                self._untracked += 1
            return False

    def summary(self, force=False):
        """What the window left out, once it has ended (or now, with `force`), and a new window; None when
        nothing was left out or the window is still open."""
        with self._lock:
            if not force and self._clock() < self._window_end:
                return None
            dropped, untracked = self._dropped, self._untracked
            self._window_end = self._clock() + self.WINDOW_S
            self._logged, self._dropped, self._untracked = {}, {}, 0
        if not dropped and not untracked:
            return None
        top = sorted(dropped.items(), key=lambda item: -item[1])[:self.SUMMARY_CLIENTS]
        return {"dropped": sum(dropped.values()) + untracked, "clients": len(dropped), "untracked": untracked,
                "top_clients": dict(top)}


class _HttpDate:
    """The Date header, formatted at most once a second."""
    second, text = 0, ""

    @classmethod
    def get(cls):
        second = int(time.time())
        if second != cls.second:
            cls.text, cls.second = email.utils.formatdate(second, usegmt=True), second
        return cls.text


def refuse_at_accept(sock, error):
    """Answers a connection with `error` without reading its request, then ends the writing side; the caller
    closes it. The answer fits an empty socket buffer, so the write cannot wait."""
    body = json_bytes(error.body())
    try:
        sock.setblocking(False)
        sock.send(response_head(error.http_status, len(body), "application/json", error.headers, True) + body)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)  # what the client sent already: left unread at close, it would turn the FIN into a reset
    except OSError:
        pass


def tls_context(config):
    """The TLS server context of a config (TLS 1.2 or newer), or None when it serves plain HTTP. Raises
    ConfigError when a file cannot be read or the key is not the certificate's: --check and start say the same."""
    if config.tls_cert_file is None:
        return None
    folder = config_folder(config.path)
    cert, key = (config_file_path(folder, value) for value in (config.tls_cert_file, config.tls_key_file))
    for name, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        if not os.path.isfile(path):
            raise ConfigError(["%s: %s does not exist" % (name, path)])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(["tls_key_file: %s is not the private key of the certificate in %s" % (key, cert)
                               ]) from None
        raise ConfigError(["tls_cert_file, tls_key_file: cannot load %s and %s as PEM: %s" % (
            cert, key, e.reason or e)]) from None
    except OSError as e:
        raise ConfigError(["tls_cert_file, tls_key_file: cannot read %s and %s: %s" % (
            cert, key, e.strerror or e)]) from None
    return context


TLS_HANDSHAKE_RECORD = b"\x16"  # the first byte a TLS client sends; a plain HTTP request starts with a letter


class Connection(socketserver.BaseRequestHandler):
    """One client connection. Requests are read under deadlines with the strict parser above (http.server's own
    accepts what a gateway must not) and each response leaves in one sendall."""

    def setup(self):
        self.front = self.server.front
        self.sock = self.request
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = self.client_address[0]  # in allowed_clients: the others are turned away at accept
        self.busy = False  # inside a request (shutdown gives these a grace)
        self.close = False  # the connection ends after the current response
        self.response_headers = []  # added to every response to the current request (CORS)
        self.head = False  # the current request is a HEAD: responses carry no body
        self.streamed = False  # the current response is an event stream that has begun
        self.token_name = None  # the name of the token the current request carries, once it is checked
        self._chunked = True  # an event stream is sent in chunks (HTTP/1.1) or ended by closing (HTTP/1.0)
        self._buffer = bytearray()
        self._timeout = None  # the socket's current timeout
        self.front.track(self, True)

    def finish(self):
        self.front.track(self, False)
        if self.sock is not self.request:  # the TLS socket, which the server's shutdown_request does not know
            self.sock.close()

    def handle(self):
        try:
            if self.front.tls is not None and not self._start_tls():
                return
            while not self.close and not self.front.stopping.is_set():
                head = self._read_head()
                if head is None:
                    return
                self.front.set_busy(self, True)
                try:
                    self.front.serve(self, head)
                finally:
                    self.front.set_busy(self, False)
        except OSError:
            pass  # the client went away, or the gateway shut the socket down while stopping

    def _start_tls(self):
        """The TLS handshake, here in the connection's thread and within client_timeout_ms: in accept() one client
        that says nothing would hold up every other. A client speaking plain HTTP is told to use https://. Returns
        whether the connection is now TLS."""
        deadline = now() + self.front.config.client_timeout_ms / 1000.0
        self.sock.setblocking(False)
        try:
            if not io_ready(self.sock, select.POLLIN, deadline - now()):
                raise socket.timeout("no TLS handshake within client_timeout_ms")
            first = self.sock.recv(1, socket.MSG_PEEK)
            if first and first != TLS_HANDSHAKE_RECORD:
                refuse_at_accept(self.sock, GatewayError("this port speaks HTTPS: use https://", 400,
                                                         "https_required", close=True))
                return self._tls_failed("a plain HTTP request")
            self.sock = self.front.tls.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
            while True:
                try:
                    self.sock.do_handshake()
                    return True
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                if not io_ready(self.sock, events, deadline - now()):
                    raise socket.timeout("TLS handshake not done within client_timeout_ms")
        except OSError as e:  # ssl.SSLError and socket.timeout among them
            return self._tls_failed(getattr(e, "reason", None) or str(e) or type(e).__name__)

    def _tls_failed(self, reason):
        if self.front.refusals.allow(self.client):
            self.front.log.info("tls_handshake_failed", client=self.client, reason=reason)
        return False

    def _read_head(self):
        """The next request's head, None when the client closed or stayed idle; 408 for a slow sender."""
        deadline = None
        while True:
            if self._buffer[:1] in (b"\r", b"\n"):  # RFC 9112 2.2: ignore empty lines before a request line
                del self._buffer[:len(self._buffer) - len(self._buffer.lstrip(b"\r\n"))]
            end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
            if end >= 0:
                head = bytes(self._buffer[:end])
                del self._buffer[:end + 4]
                return head
            if _BARE_LF_RE.search(self._buffer, 0, MAX_HEAD_BYTES + 4):  # it would never end with CRLF CRLF
                self.send_error(bad_request("request head lines must end with CRLF", close=True))
                return None
            if len(self._buffer) >= MAX_HEAD_BYTES + 4:
                self.send_error(GatewayError("request head larger than %d bytes" % MAX_HEAD_BYTES, 431,
                                             "headers_too_large", close=True))
                return None
            if not self._buffer:
                timeout = self.front.config.idle_timeout_ms / 1000.0
            else:
                deadline = deadline or now() + self.front.config.client_timeout_ms / 1000.0
                timeout = deadline - now()
            if not self._receive(timeout):
                if self._buffer:
                    self.send_error(GatewayError("request not received in time", 408, "request_timeout",
                                                 close=True))
                return None

    def _receive(self, timeout):
        """Appends what arrives within `timeout` to the buffer; False on timeout or end of stream."""
        if timeout <= 0:
            return False
        if timeout != self._timeout:  # a keep-alive connection waits with the same idle timeout each time
            self._timeout = timeout
            self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        self._buffer += data
        return bool(data)

    def read_body(self, length):
        deadline = now() + self.front.config.client_timeout_ms / 1000.0
        while len(self._buffer) < length:
            if not self._receive(deadline - now()):
                raise GatewayError("request body not received in time", 408, "request_timeout", close=True)
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return body

    def send(self, status, body=b"", content_type="application/json", headers=(), keep_alive=True):
        """Sends a whole response in one write (its head only, for a HEAD request)."""
        if not keep_alive:
            self.close = True
        head = response_head(status, len(body), content_type if body else None,
                             list(headers) + self.response_headers, self.close)
        self.sock.sendall(head + (b"" if self.head else body))

    def start_stream(self, request, headers=()):
        """Starts a text/event-stream response; events follow with send_event, and end_stream ends it."""
        self.streamed = True
        self._chunked = request.version == (1, 1)
        if not self._chunked:
            self.close = True
        lines = ["HTTP/1.1 200 OK", "Server: " + SERVER_HEADER, "Date: " + _HttpDate.get(),
                 "Content-Type: text/event-stream", "Cache-Control: no-cache", "X-Accel-Buffering: no",
                 "Transfer-Encoding: chunked" if self._chunked else "Connection: close"]
        lines.extend("%s: %s" % header for header in list(headers) + self.response_headers)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send_event(self, data, event_id=None):
        """One SSE event carrying a JSON message (JSON text has no raw line breaks, so one data line)."""
        self._send_chunk((b"id: %d\n" % event_id if event_id is not None else b"") + b"event: message\ndata: " +
                         data + b"\n\n")

    def send_comment(self, text):
        self._send_chunk(b": " + text.encode("utf-8") + b"\n\n")

    def end_stream(self):
        if self._chunked:
            self.sock.sendall(b"0\r\n\r\n")

    def _send_chunk(self, data):
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    def peer_closed(self):
        """Whether the client has closed its side (looked at without reading or blocking)."""
        try:
            # on the raw socket, also under TLS (an SSLSocket takes no flags): a hang-up shows only as its end
            return io_ready(self.sock, select.POLLIN, 0) and socket.socket.recv(self.sock, 1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def send_json(self, status, value, headers=(), keep_alive=True):
        self.send(status, json_bytes(value), "application/json", headers, keep_alive)

    def send_reply(self, reply):
        """A JSON-RPC reply: 200 with it, or 202 with no body when nothing answers (None). Returns the status."""
        if reply is None:
            self.send(202)
            return 202
        self.send_json(200, reply)
        return 200

    def send_error(self, error):
        """The one error funnel: every GatewayError becomes the gateway's error shape, or a JSON-RPC error for the
        request it failed when the caller speaks JSON-RPC (its fields then go in error.data)."""
        body = error.body() if error.rpc_request_id is None else rpc_error_from(error, error.rpc_request_id)
        self.send_json(error.http_status, body, error.headers, keep_alive=not error.close)

    def send_continue(self):
        self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")


class HttpFront:
    """Checks every request in the documented order (client address, bearer token, route and method, body
    limits), runs its endpoint, and writes one access log line. PUBLIC_PATHS skip only the token check."""

    def __init__(self, config, logger, runtimes, router, telemetry):
        self.log = logger
        self.router = router
        self.telemetry = telemetry
        self.tls = None  # the ssl.SSLContext connections are wrapped in, when serving HTTPS (Gateway.start)
        self.calls = Slots({})
        self.connection_slots = Slots({})
        self.use_config(config, runtimes)
        self.refusals = RefusalLog()
        self.stopping = threading.Event()
        self.started_at = now()
        self._lock = threading.Condition()  # notified when a request ends
        self._connections = set()  # open Connections (self._lock)
        self._endpoints = {("health", "GET"): self.get_health, ("servers", "GET"): self.get_servers,
                           ("metrics", "GET"): self.get_metrics, ("rpc", "POST"): self.post_rpc, ("mcp", "POST"): self.post_mcp,
                           ("mcp", "GET"): self.get_mcp, ("mcp", "DELETE"): self.delete_mcp,
                           ("", "GET"): self.get_status}

    def use_config(self, config, runtimes):
        """At start, and at each reload for the requests that come next: each field is replaced whole, so a
        request sees the old value or the new one, never a mix. The address and TLS stay as they are."""
        self.config = config
        self.runtimes = runtimes  # Runtimes: server_id -> ServerRuntime
        self.allowlist = Allowlist(config.allowed_clients)
        self.tokens = config.tokens  # [(name, token)]: calls are counted, and requests logged, per name
        self.calls.caps = {"client": config.max_calls_per_client, "token": config.max_calls_per_token}
        self.connection_slots.caps = {"total": config.max_connections, "client": config.max_connections_per_client}

    def track(self, connection, is_open):
        with self._lock:
            (self._connections.add if is_open else self._connections.discard)(connection)

    def connections(self):
        with self._lock:
            return list(self._connections)

    def set_busy(self, connection, busy):
        connection.busy = busy
        if not busy and self.stopping.is_set():  # only shutdown waits for requests to end
            with self._lock:
                self._lock.notify_all()

    def wait_idle(self, timeout):
        """Waits until no connection is inside a request, or the timeout."""
        deadline = now() + timeout
        with self._lock:
            while any(conn.busy for conn in self._connections) and now() < deadline:
                self._lock.wait(deadline - now())

    def serve(self, conn, head):
        started = now()
        request, route, server_id, status, outcome, span = None, None, None, 0, "ok", NO_SPAN
        conn.head, conn.token_name, token = False, None, None
        try:
            request = parse_head(head)
            if self.telemetry.tracing:
                span = self.telemetry.start_span(request.method, SPAN_SERVER, {
                    "http.request.method": request.method if request.method in HTTP_METHODS else "_OTHER",
                    "url.path": request.path, "url.scheme": "https" if self.tls else "http",
                    "client.address": conn.client,
                    "network.protocol.version": "%d.%d" % request.version,
                    "user_agent.original": request.headers.get("user-agent")},
                    parse_traceparent(request.headers.get("traceparent")))
            _active.span = span
            conn.response_headers, conn.streamed, conn.head = [], False, request.method == "HEAD"
            if not request.keep_alive:
                conn.close = True
            origin = request.headers.get("origin")
            if origin is not None:
                if not origin_allowed(origin, request.headers.get("host"), self.config.allowed_origins):
                    raise GatewayError("Origin %s is not in allowed_origins" % origin, 403, "forbidden_origin")
                conn.response_headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                                         ("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS)]
                if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
                    status = self._preflight(conn, request)
                    return
            token = conn.token_name = token_name(request.headers.get("authorization"), self.tokens)
            if token is None and request.path not in PUBLIC_PATHS:
                raise GatewayError("missing or wrong bearer token", 401, "unauthorized",
                                   headers=[("WWW-Authenticate", 'Bearer realm="host-mcp-gateway"')])
            span.set("host_mcp_gateway.token.name", token)
            name, server_id, methods = match_route(request.path, self.runtimes)
            route = ROUTE_TEMPLATES[name]
            span.name = "%s %s" % (request.method, route)
            span.set("http.route", route)
            if request.method not in methods:
                raise GatewayError("%s does not allow %s" % (request.path, request.method), 405,
                                   "method_not_allowed", server_id=server_id, headers=[("Allow", ", ".join(methods))])
            if request.content_length > self.config.max_body_bytes:
                raise GatewayError("request body of %d bytes is over the limit of %d" % (
                    request.content_length, self.config.max_body_bytes), 413, "payload_too_large", close=True)
            if request.headers.get("expect", "").lower() == "100-continue":
                conn.send_continue()
            body = conn.read_body(request.content_length)
            request.content_length = 0  # consumed: an error from here on leaves the connection usable
            status = self._run(conn, request, body, name, server_id, token)
        except GatewayError as e:
            status, outcome = e.http_status, e.error_code
            if e.server_id is None:
                e.server_id = server_id
            if request is not None and request.content_length:
                e.close = True  # its body was never read, so the next request cannot be found
            if conn.streamed:
                conn.close = True  # an event stream cannot carry an error response: ending it says enough
            else:
                conn.send_error(e)
        except OSError:
            conn.close, outcome = True, "client_gone"
            raise
        except Exception as e:
            status, outcome = 500, "internal_error"
            self.log.error("internal_error", error=repr(e), path=request.path if request else None)
            if conn.streamed:
                conn.close = True  # a response has begun: a second one inside it would corrupt it
            else:
                conn.send_error(GatewayError("internal error: %s" % type(e).__name__, 500, "internal_error",
                                             close=True))
        finally:
            duration = now() - started
            self._record(request, route, status, outcome, duration, span)
            if token is not None or status < 400 or self.refusals.allow(conn.client):
                self.log.info("http_request", method=request.method if request else None,
                              path=request.path if request else None, status=status,
                              duration_ms=round(duration * 1000, 3), client=conn.client, server_id=server_id,
                              token_name=token)
            _active.span = None

    def _run(self, conn, request, body, name, server_id, token):
        """Runs the endpoint; a POST counts against its client's and its token's calls in flight."""
        if request.method != "POST":
            method = "GET" if request.method == "HEAD" else request.method
            return self._endpoints[name, method](conn, request, body, server_id)
        keys = (("client", conn.client), ("token", token))
        full = self.calls.acquire(keys)
        if full is not None:
            raise GatewayError("too many requests in flight from this %s (max_calls_per_%s); retry later" % (
                "client address" if full[0] == "client" else "token", full[0]), 429, "too_many_requests",
                server_id=server_id, headers=[("Retry-After", "1")])
        try:
            return self._endpoints[name, request.method](conn, request, body, server_id)
        finally:
            self.calls.release(keys)

    def log_refusal_summary(self, force=False):
        """Says how many refusals the log left out in the window that ended (RefusalLog)."""
        summary = self.refusals.summary(force)
        if summary is not None:
            self.log.warning("refusals_not_logged", window_s=RefusalLog.WINDOW_S, **summary)

    def admit(self, sock, client_address):
        """At accept, before anything is read and before a thread is started for it: a client outside
        allowed_clients gets 403, one over the connection caps 503, at once; then the connection closes. Returns
        whether it was let in."""
        client = client_address[0]
        if not self.allowlist.allows(client):
            error = GatewayError("client address %s is not in allowed_clients" % client, 403, "forbidden_client")
        elif self.connection_slots.acquire(self._connection_keys(client)) is not None:
            error = GatewayError("too many connections open (max_connections, max_connections_per_client); retry "
                                 "later", 503, "too_many_connections", headers=[("Retry-After", "1")])
        else:
            return True
        refuse_at_accept(sock, error)
        self._record(None, None, error.http_status, error.error_code, 0.0, NO_SPAN)
        if self.refusals.allow(client):
            self.log.info("connection_refused", client=client, status=error.http_status, error_code=error.error_code)
        return False

    def release(self, client_address):
        self.connection_slots.release(self._connection_keys(client_address[0]))

    @staticmethod
    def _connection_keys(client):
        return ("total", None), ("client", client)

    def _record(self, request, route, status, outcome, duration, span):
        """The request's metrics, and the end of its SERVER span (an error span only for 5xx answers)."""
        method = (request.method if request.method in HTTP_METHODS else "_OTHER") if request else "_OTHER"
        meter = self.telemetry.meter
        meter.http_duration.record(duration, (("http.request.method", method), ("http.route", route),
                                              ("http.response.status_code", status)))
        meter.requests.record(1, (("http.route", route), ("outcome", outcome)))
        span.set("http.response.status_code", status)
        if status >= 500:
            span.set("error.type", str(status))
            span.fail(outcome)
        span.end()

    def _preflight(self, conn, request):
        """A browser's CORS preflight, the one request answered without a token: it never carries one. Any path
        gets the same answer whether or not it names a server, so that a preflight tells nobody which exist."""
        methods = STATIC_ROUTES.get(request.path, MCP_METHODS)
        conn.send(204, headers=[("Access-Control-Allow-Methods", ", ".join(methods + ("OPTIONS",))),
                                ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
                                ("Access-Control-Max-Age", "600")])
        return 204

    def deadline(self):
        return now() + self.config.request_timeout_ms / 1000.0

    # Endpoints: each sends its response and returns the status ------------------------------------------------

    def get_health(self, conn, request, body, server_id):
        states = {sid: runtime.state for sid, runtime in self.runtimes.items()}
        healthy = all(runtime.state == "ready" for runtime in self.runtimes.values() if runtime.spec.autostart)
        status = 200 if healthy else 503
        conn.send_json(status, {"status": "ok" if healthy else "degraded", "version": VERSION,
                                "uptime_s": round(now() - self.started_at, 3), "servers": states})
        return status

    def get_metrics(self, conn, request, body, server_id):
        """The same instruments as the OTLP export, in the Prometheus text format, for scrapers."""
        conn.send(200, prometheus_text(self.telemetry.meter).encode("utf-8"), "text/plain; version=0.0.4")
        return 200

    def get_status(self, conn, request, body, server_id):
        conn.send(200, STATUS_PAGE, "text/html; charset=utf-8", STATUS_PAGE_HEADERS)
        return 200

    def get_servers(self, conn, request, body, server_id):
        conn.send_json(200, {"servers": [self.router.describe(runtime) for runtime in self.runtimes.values()]})
        return 200

    def post_rpc(self, conn, request, body, server_id):
        """The original daemon's wrapper: {"server_id", "payload"} in and out; failures in the gateway shape."""
        wrapper = parse_json_body(body)
        if not isinstance(wrapper, dict) or not isinstance(wrapper.get("server_id"), str) or "payload" not in wrapper:
            raise GatewayError('body must be {"server_id": "...", "payload": <JSON-RPC message or batch>}', 400,
                               "invalid_request", JSONRPC_INVALID_REQUEST)
        server_id = wrapper["server_id"]
        self._continue_trace(request, wrapper["payload"])
        runtime = self.runtimes.get(server_id)
        if runtime is None:
            raise server_not_found(server_id)
        if runtime.spec.isolation == "session":
            raise session_required(server_id)
        try:
            reply = self.router.dispatch(runtime, wrapper["payload"], self.deadline())
        except GatewayError as e:
            e.server_id = server_id
            if e.request_id is None:
                e.request_id = message_id(wrapper["payload"])
            raise
        return conn.send_reply(None if reply is None else {"server_id": server_id, "payload": reply})

    def post_mcp(self, conn, request, body, server_id):
        """POST /{server_id}/rpc: JSON-RPC in; a response, an event stream ending in one, or 202 out. initialize
        opens a session; a request without Mcp-Session-Id is served without one (curl). A failed single request
        is answered with a JSON-RPC error for its id (and the HTTP status of the failure)."""
        payload = parse_json_body(body)
        self._continue_trace(request, payload)
        runtime = self.runtimes[server_id]
        try:
            era, version = request_era(payload, request.headers)
            if era == MODERN:
                return self._serve_modern(conn, request, runtime, payload, version)
        except GatewayError as e:
            e.rpc_request_id = message_id(payload)  # a modern client decides its fallback from this error
            raise
        try:
            method = payload.get("method") if isinstance(payload, dict) else None
            if method == "initialize" and classify(payload)[0] == REQUEST:
                session, reply = self.router.open_session(runtime, payload, self.deadline())
                session.token_name = conn.token_name
                conn.send_json(200, reply, headers=[("Mcp-Session-Id", session.id)])
                return 200
            if method == "server/discover":  # the probe carries its own protocol version: answer it first
                return self._answer(conn, request, runtime, payload, None)
            self._check_protocol_version(request)
            session = self._session(request, runtime, server_id)
            target = session.runtime if session else runtime
            if isinstance(payload, list):
                return conn.send_reply(self.router.dispatch(target, payload, self.deadline(), session))
            return self._answer(conn, request, target, payload, session)
        except GatewayError as e:
            if e.error_code not in ("session_not_found", "unsupported_protocol_version"):
                e.rpc_request_id = message_id(payload)  # the HTTP-level refusals keep the gateway's shape
            raise

    @staticmethod
    def _continue_trace(request, payload):
        """A request without a traceparent header may carry one in params._meta: its SERVER span joins that trace
        (no span has started under it yet)."""
        parent = meta_traceparent(payload) if "traceparent" not in request.headers else None
        if parent is not None:
            current_span().reparent(parent)

    def _session(self, request, runtime, server_id):
        """The request's session, or None for a sessionless call; 404 for an unknown or ended one."""
        session_id = request.headers.get("mcp-session-id")
        if session_id is None:
            if runtime.spec.isolation == "session":
                raise session_required(server_id)
            return None
        session = self.router.sessions.get(session_id, server_id)
        session.touch()
        return session

    @staticmethod
    def _check_protocol_version(request):
        version = request.headers.get("mcp-protocol-version")
        if version is not None and version not in SUPPORTED_PROTOCOL_VERSIONS:
            raise GatewayError("MCP-Protocol-Version %s is not supported; supported: %s" % (
                version, ", ".join(SUPPORTED_PROTOCOL_VERSIONS)), 400, "unsupported_protocol_version",
                JSONRPC_INVALID_REQUEST)

    def _answer(self, conn, request, runtime, message, session):
        """One message. A request's answer is plain JSON unless the child sends messages for the caller first
        (progress, its own requests) and the client accepts an event stream: then those messages and the answer
        go out as one. A plain call never pays for streaming."""
        deadline = self.deadline()
        outcome = self.router.begin(runtime, message, deadline, session)
        if not isinstance(outcome, Ticket):
            return conn.send_reply(outcome)
        try:
            return self._stream_or_send(conn, request, outcome, deadline, session)
        finally:
            outcome.finish("client_gone")  # no-op when the answer came; else the caller went away

    def _stream_or_send(self, conn, request, outcome, deadline, session):
        wants_stream = "text/event-stream" in request.headers.get("accept", "").lower()
        keepalive = self.config.sse_keepalive_ms / 1000.0
        while True:
            try:
                answer = outcome.next(deadline, keepalive if conn.streamed else None)
            except GatewayError as e:
                if not conn.streamed:
                    raise
                answer = rpc_error_from(e, outcome.call.caller_id)
            if answer is None:
                conn.send_comment("keepalive")
            elif not isinstance(answer, Interim):
                break
            elif wants_stream:
                if not conn.streamed:
                    conn.start_stream(request)
                conn.send_event(json_bytes(answer.message))
            elif session is not None:
                session.push(answer.message)
        if not conn.streamed:
            return conn.send_reply(answer)
        conn.send_event(json_bytes(answer))
        conn.end_stream()
        return 200

    # Revision 2026-07-28 on /{server_id}/rpc: stateless requests, translated for handshake-era children -----

    MRTR_GATHER_S = 0.05  # after a child's first request during a call, how long its next ones may take to come

    def _serve_modern(self, conn, request, runtime, message, version):
        """A request of revision 2026-07-28: no session; the child is the shared one or, for a server with
        isolation "session", one of the request's own (a retry finds the one its call waits at); what a
        handshake-era child asks its client during a call is returned as an input_required result (multi
        round-trip requests)."""
        if "id" not in message:  # a notification: request_era let through only valid requests and notifications
            conn.send(202)  # this revision has no client notification for a child (the stream's end cancels)
            return 202
        check_modern_headers(message, request.headers)
        method, params = message["method"], message["params"]  # request_era: a modern request's hold its _meta
        if method in REMOVED_IN_MODERN:
            raise _modern_error(JSONRPC_METHOD_NOT_FOUND, "method not found: %s (revision %s removed it)" % (
                method, version), http_status=404)
        caller = ModernCaller(params["_meta"], version)
        deadline = self.deadline()
        if runtime.spec.isolation != "session":
            runtime.ready_child(deadline)
            return self._serve_modern_on(conn, request, runtime, message, caller, deadline)
        if method == "server/discover":  # steer clients that negotiate to a session: state lasts only in one
            raise _modern_error(MCP_UNSUPPORTED_PROTOCOL_VERSION, "server %s gives each client session a child of "
                                "its own, and revision %s has no sessions: use one of the handshake revisions" % (
                                    runtime.server_id, version),
                                {"supported": list(SUPPORTED_PROTOCOL_VERSIONS), "requested": version})
        if self.router.request_states.issued(params.get("requestState")):
            own = self.router.parked_runtime(runtime.server_id, message)
        else:
            own = self.router.request_child(runtime, request_client_params(params["_meta"]), deadline)
        try:
            return self._serve_modern_on(conn, request, own, message, caller, deadline)
        finally:
            self.router.end_request_child(own)

    def _serve_modern_on(self, conn, request, runtime, message, caller, deadline):
        """A modern request on `runtime`'s ready child."""
        method, params = message["method"], message["params"]
        if method == "tools/call":  # stdio has no headers: the gateway is the one to check them
            declarations = self.router.tool_header_params(runtime, params.get("name"), deadline)
            if declarations:
                arguments = params.get("arguments")
                problem = param_header_problem(declarations, arguments if isinstance(arguments, dict) else {},
                                               request.headers)
                if problem:
                    raise _mismatch(problem)
        if runtime.era == MODERN:  # both ends speak the revision: the gateway only remaps ids
            if method == "subscriptions/listen":
                deadline = now() + LISTEN_DEADLINE_S
            ticket = self.router.forward_request(runtime, message, deadline, caller)
            return self._answer_modern(conn, request, runtime, message, ticket, {}, deadline)
        if method == "server/discover":
            return conn.send_reply(result_reply(message, discover_result(runtime.init_result)))
        if method == "subscriptions/listen":
            return self._listen(conn, request, runtime, message, caller, deadline)
        pending = {}
        if "requestState" in params:
            ticket, pending = self.router.resume(runtime.server_id, message, caller)
        else:
            ticket = self.router.forward_request(runtime, drop_claim(message), deadline, caller)
        return self._answer_modern(conn, request, runtime, message, ticket, pending, deadline)

    def _answer_modern(self, conn, request, runtime, message, ticket, pending, deadline):
        """Sends a modern call's answer: as JSON, or as the last event of its stream. From a handshake-era child
        it is translated, and a child waiting for the caller's input makes it input_required (MRTR)."""
        answered = False  # the child answered, or waits parked for the caller's retry
        try:
            answer = self._await_modern(conn, request, ticket, message, pending, deadline)
            translate = answer is not None and runtime.era == LEGACY
            if answer is None:  # the child waits for what it asked: the client answers on its retry
                answer = result_reply(message, {"resultType": "input_required", "inputRequests": pending,
                                                "requestState": self.router.park(ticket, pending, message, runtime)})
            elif runtime.era == MODERN and message["method"] == "server/discover" and \
                    isinstance(answer.get("result"), dict):
                # what this endpoint serves: the child's revision, and the handshake ones by translation
                answer = dict(answer, result=dict(answer["result"], supportedVersions=list(ALL_PROTOCOL_VERSIONS)))
            body = modern_answer_json(message["method"], answer, runtime.init_result.get("serverInfo"),
                                      runtime.result_extras) if translate else json_bytes(answer)
            answered = True
            if conn.streamed:
                conn.send_event(body)
                conn.end_stream()
                return 200
            error = answer.get("error")
            status = MODERN_ERROR_STATUS.get(error.get("code"), 200) if isinstance(error, dict) else 200
            conn.send(status, body)
            return status
        finally:
            if not answered:  # the caller went away (a closed stream cancels, in this revision)
                ticket.finish("client_gone")
                ticket.child.cancel_call(ticket.gateway_id, "its client went away")

    def _await_modern(self, conn, request, ticket, message, pending, deadline):
        """The child's answer to a modern call, its progress streamed on the way; None when the child is waiting
        for the caller's input instead, with its requests gathered into `pending` (input key -> request)."""
        wants_stream = "text/event-stream" in request.headers.get("accept", "").lower()
        keepalive = self.config.sse_keepalive_ms / 1000.0
        while True:
            tick = self.MRTR_GATHER_S if pending else (keepalive if conn.streamed else None)
            try:
                answer = ticket.next(deadline, tick)
            except GatewayError as e:
                if not conn.streamed:
                    raise
                return rpc_error_from(e, ticket.call.caller_id)
            if answer is None:
                if pending:
                    return None
                if conn.peer_closed() or self.stopping.is_set():  # a long listen: its client left, or the end
                    raise GatewayError("the stream ended before the answer", 503, "client_gone")
                conn.send_comment("keepalive")
            elif not isinstance(answer, Interim):
                return answer
            elif "id" in answer.message:  # a request the child made, relayed to this caller
                if message["method"] in MRTR_METHODS:
                    pending[answer.message["id"]] = input_request(answer.message)
                else:
                    self.router.refuse_relay(answer.message["id"], "a %s request cannot ask its client for input "
                                             "in revision 2026-07-28" % message["method"])
            elif wants_stream:
                if not conn.streamed:
                    conn.start_stream(request)
                conn.send_event(json_bytes(answer.message))

    def _listen(self, conn, request, runtime, message, caller, deadline):
        """subscriptions/listen: one long-lived stream of the notifications the client opted in to, opened by an
        acknowledgement and, when the gateway ends it, closed by the listen request's own result."""
        runtime.ready_child(deadline)
        session, honoured = self.router.open_listen(runtime, message, caller, deadline)
        subscription = {META_SUBSCRIPTION_ID: message["id"]}
        try:
            session.open_stream(conn)
            conn.start_stream(request)
            conn.send_event(json_bytes({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                                        "params": {"_meta": subscription, "notifications": honoured}}))
            self._relay_events(conn, session, 0, event_ids=False)
            if self.stopping.is_set() or session.closed:  # the gateway ends it: say so, as the result
                conn.send_event(json_bytes(result_reply(message, {"resultType": "complete", "_meta": subscription})))
            conn.end_stream()
        finally:
            session.close_stream(conn)
            self.router.close_session(session, "its listen stream ended")
        return 200

    def get_mcp(self, conn, request, body, server_id):
        """GET /{server_id}/rpc: the session's event stream (one at a time), replaying after Last-Event-ID.
        Without Mcp-Session-Id it opens a session, as the original daemon did, and names it in the answer."""
        if not accepts(request, "text/event-stream"):
            raise GatewayError("GET opens an event stream: send Accept: text/event-stream", 406, "not_acceptable")
        self._check_protocol_version(request)
        runtime = self.runtimes[server_id]
        last_event_id = request.headers.get("last-event-id", "").strip()
        if last_event_id and not _EVENT_ID_RE.match(last_event_id):
            raise bad_request("Last-Event-ID %r is not an event id of this gateway" % last_event_id)
        session = self._session(request, runtime, server_id)
        if session is None:
            session = self.router.open_stream_session(runtime, request.headers.get("mcp-protocol-version"))
            session.token_name = conn.token_name
        cursor = int(last_event_id) if last_event_id else session.delivered_id
        if not session.open_stream(conn):
            raise GatewayError("this session already has an open event stream", 409, "stream_conflict")
        try:
            conn.start_stream(request, headers=[("Mcp-Session-Id", session.id)])
            self._relay_events(conn, session, cursor, event_ids=True)
            conn.end_stream()
        finally:
            session.close_stream(conn)
        return 200

    def _relay_events(self, conn, session, cursor, event_ids):
        """Writes a session's events to its open stream, with keepalives, until the session or the stream ends,
        the client goes, or the gateway stops. Revision 2026-07-28 streams carry no event ids."""
        generation = session.stream_generation
        keepalive = self.config.sse_keepalive_ms / 1000.0
        while not self.stopping.is_set():
            events = session.next_events(cursor, keepalive, generation)
            if session.closed or generation != session.stream_generation:
                return
            for event_id, data in events:
                conn.send_event(data, event_id if event_ids else None)
                cursor = event_id
                session.mark_delivered(event_id)
            if not events:
                if conn.peer_closed():
                    return
                conn.send_comment("keepalive")

    def delete_mcp(self, conn, request, body, server_id):
        if request.headers.get("mcp-session-id") is None:
            raise GatewayError("DELETE ends a session: send its Mcp-Session-Id", 400, "session_required")
        self._check_protocol_version(request)
        session = self._session(request, self.runtimes[server_id], server_id)
        self.router.close_session(session, "ended by its client")
        conn.send(204)
        return 204


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with IPv6, no reverse-DNS lookup at bind, named and owned connection threads."""
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, front):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.front = front
        self.threads = set()  # live connection threads (self._threads_lock); the gateway joins them on stop
        self._threads_lock = threading.Lock()
        self._short_of_descriptors = False
        super().__init__(address, Connection, bind_and_activate=False)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 too
            except OSError:
                pass
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would resolve the host name: slow, useless here

    def get_request(self):
        """accept(), pausing briefly when the process is out of file descriptors: the listening socket stays
        readable then, and the accept loop would spin. Logged once per shortage."""
        try:
            accepted = super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                if not self._short_of_descriptors:
                    self._short_of_descriptors = True
                    self.front.log.warning("out_of_file_descriptors", error=str(e),
                                           note="new connections wait until others close")
                self.front.stopping.wait(0.1)
            raise
        self._short_of_descriptors = False
        return accepted

    def verify_request(self, request, client_address):
        return self.front.admit(request, client_address)

    def service_actions(self):
        self.front.log_refusal_summary()  # the accept loop comes here a few times a second

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name="http-%s:%s" % client_address[:2], daemon=True)
        with self._threads_lock:
            self.threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # out of threads: socketserver logs it and closes the connection
            self._forget(thread, client_address)
            raise

    def _serve_connection(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception as e:
            self.front.log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))
        finally:  # its slot first: a client that has seen the connection close may open the next one at once
            self._forget(threading.current_thread(), client_address)
            self.shutdown_request(request)

    def _forget(self, thread, client_address):
        with self._threads_lock:
            self.threads.discard(thread)
        self.front.release(client_address)

    def handle_error(self, request, client_address):
        self.front.log.error("connection_failed", client=client_address[0], error=repr(sys.exc_info()[1]))


# § 11 Gateway --------------------------------------------------------------------------------------------------------

class Gateway:
    """Builds and wires everything; stops in reverse order."""

    def __init__(self, config, logger):
        self.config = config
        self.log = logger
        self.telemetry = Telemetry(TelemetrySettings(os.environ), logger)
        self.router = Router(config, logger, self.telemetry)
        self.state_file = StateFile(state_file_path(config.path), logger)
        self.runtimes = Runtimes((spec.server_id, self._runtime(spec)) for spec in config.servers)
        self.front = HttpFront(config, logger, self.runtimes, self.router, self.telemetry)
        self.telemetry.meter.calls.observe = self._calls_in_flight
        self._httpd = None
        self._accept_thread = None

    @property
    def port(self):
        return self._httpd.server_address[1]

    def _runtime(self, spec):
        return ServerRuntime(spec, self.config, self.log, self.telemetry, self.router.on_child_message,
                             self.router.on_child_ready, state_file=self.state_file)

    def reload(self, config):
        """Applies a new config without dropping anyone; runs on the main thread (serve), never in a signal
        handler. Removed servers stop and changed ones restart, their sessions closed (a changed server's
        sessions were made with what it was: they cannot carry on honestly); unchanged ones keep their child,
        sessions and streams. Everything else applies to the requests that come next, but for RESTART_KEYS,
        which are logged as waiting for a restart."""
        plan = reload_plan(self.config, config)
        for key in plan["needs_restart"]:
            setattr(config, key, getattr(self.config, key))  # what runs; later reloads report the key again
        ending = [self.runtimes[sid] for sid in plan["removed"] + plan["changed"]]
        for runtime in ending:
            runtime.request_stop("its config was %s by a reload" % (
                "removed" if runtime.server_id in plan["removed"] else "changed"))
        self.config = config
        runtimes = Runtimes((spec.server_id, self.runtimes[spec.server_id] if spec.server_id in plan["unchanged"]
                             else self._runtime(spec)) for spec in config.servers)
        for runtime in runtimes.values():
            runtime.use_config(config)
        self.router.use_config(config)
        self.runtimes = runtimes
        self.front.use_config(config, runtimes)  # from here on, requests see the new servers and tokens
        for _ in range(2):  # again once they have stopped: a session may have opened on one as it stopped
            self.router.close_sessions([s for s in self.router.sessions.all() if s.parent in ending],
                                       "its server's config changed")
            for runtime in ending:
                runtime.join(timeout=CHILD_STOP_GRACE_S * 2 + POLL_S)
        for sid in plan["added"] + plan["changed"]:
            if runtimes[sid].spec.autostart:
                runtimes[sid].start()
        self.log.info("config_reloaded", **{key: value for key, value in plan.items() if key != "needs_restart"})
        if plan["needs_restart"]:
            self.log.warning("config_needs_restart", keys=plan["needs_restart"],
                             note="these take effect when the gateway is restarted; until then the old values hold")

    def _calls_in_flight(self):
        """Calls each server's children are working on, for the host_mcp_gateway.calls.in_flight gauge."""
        points = []
        for server_id, runtime in self.runtimes.items():
            children = [runtime.child] + [owned.child for owned in runtime.owned()]
            count = sum(len(child.calls_in_flight()) for child in children if child is not None)
            points.append(((("host_mcp_gateway.server_id", server_id),), count))
        return points

    def start(self):
        """Listens, then starts autostart servers. Raises ConfigError when the TLS files are unusable, OSError when
        the address cannot be bound."""
        host, port = self.config.bind_host, self.config.bind_port
        self.front.tls = tls_context(self.config)
        self._httpd = _HTTPServer((host, port), self.front)
        try:
            self._httpd.server_bind()
            self._httpd.server_activate()
        except OSError:
            self._httpd.server_close()
            raise
        # Once the port is ours (so no other gateway of this config runs) and before any child can start: what
        # a SIGKILLed run left behind is ended first.
        self.state_file.claim(self.config.path)
        self._accept_thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.25},
                                               name="http-accept", daemon=True)
        self._accept_thread.start()
        self.router.start()
        self.telemetry.start()
        self.log.info("listening", host=host, port=self.port, scheme="https" if self.front.tls else "http",
                      version=VERSION, servers=list(self.runtimes),
                      token_source=self.config.token_source, token_names=self.config.token_names)
        for runtime in self.runtimes.values():
            if runtime.spec.autostart:
                runtime.start()

    def stop(self):
        """Stops accepting, ends event streams, gives requests in flight a short grace, stops every child at
        once, closes what is left, and flushes telemetry: all within STOP_BUDGET_S."""
        deadline = now() + STOP_BUDGET_S
        self.log.info("stopping")
        self.front.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._accept_thread.join(timeout=POLL_S * 2)
        self.router.end_streams()  # GET streams would otherwise count as requests in flight
        self._close_connections(idle_only=True)
        self.front.wait_idle(SHUTDOWN_GRACE_S)
        for runtime in self.runtimes.values():
            runtime.request_stop()  # every child at once (router.stop does the per-session ones): graces overlap
        self.router.stop()
        for runtime in self.runtimes.values():
            runtime.join(timeout=max(0.0, deadline - now()))
        self.front.wait_idle(min(POLL_S, max(0.0, deadline - now())))  # failed calls are answered before close
        self._close_connections(idle_only=False)
        if self._httpd is not None:
            for thread in list(self._httpd.threads):
                thread.join(timeout=min(POLL_S, max(0.0, deadline - now())))
        self.state_file.close()
        self.telemetry.stop(max(0.2, deadline - now()))
        self.front.log_refusal_summary(force=True)
        self.log.info("stopped")

    def _close_connections(self, idle_only):
        for conn in self.front.connections():
            if not (idle_only and conn.busy):
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# § 12 Example MCP server (--example-server) --------------------------------------------------------------------------

EXAMPLE_SERVER_ID = "example"
EXAMPLE_TOOLS = [
    {"name": "echo", "description": "Returns the text it is given.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    {"name": "host_info", "description": "Describes the host: name, operating system, machine, Python, load.",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "now", "description": "The host's current time, in UTC and in its local time zone.",
     "inputSchema": {"type": "object", "properties": {}}},
]


def _example_tool(name, arguments):
    if name == "echo":
        if not isinstance(arguments.get("text"), str):
            raise ValueError("echo needs a string argument 'text'")
        return {"text": arguments["text"]}
    if name == "host_info":
        info = {"hostname": socket.gethostname(), "system": platform.system(), "release": platform.release(),
                "machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()}
        if platform.mac_ver()[0]:
            info["macos"] = platform.mac_ver()[0]
        if hasattr(os, "getloadavg"):
            info["load_average"] = [round(load, 2) for load in os.getloadavg()]
        return info
    if name == "now":
        t = time.time()
        return {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
                "local": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t)), "timezone": time.tzname[0]}
    raise LookupError("unknown tool: %s" % name)


def example_reply(message):
    """The example server's answer to one request (pure)."""
    method, params = message["method"], message.get("params") or {}
    if method == "initialize":
        result = {"protocolVersion": negotiate_protocol_version(params.get("protocolVersion")),
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "host-mcp-gateway-example", "version": VERSION},
                  "instructions": "An example server embedded in host-mcp-gateway: echo, host_info and now."}
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": EXAMPLE_TOOLS}
    elif method == "tools/call":
        try:
            value = _example_tool(params.get("name"), params.get("arguments") or {})
        except LookupError as e:
            return rpc_error(message["id"], -32602, str(e))
        except ValueError as e:
            result = {"content": [{"type": "text", "text": str(e)}], "isError": True}
        else:
            result = {"content": [{"type": "text", "text": json.dumps(value, ensure_ascii=False)}],
                      "structuredContent": value}
    else:
        return rpc_error(message["id"], JSONRPC_METHOD_NOT_FOUND, "method not found: %s" % method)
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


def run_example_server(stdin=None, stdout=None):
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    for line in stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if classify(message)[0] == REQUEST:
            stdout.write(json_bytes(example_reply(message)) + b"\n")
            stdout.flush()
    return 0


# § 13 CLI ------------------------------------------------------------------------------------------------------------

def starter_config(port=DEFAULT_PORT):
    """A config that runs with no editing: a fresh token and the embedded example server."""
    return {
        "bind_host": "127.0.0.1", "bind_port": port, "auth_token": new_token(), "allowed_clients": ["localhost"],
        "request_timeout_ms": 30000, "restart_backoff_ms": 2000,
        "servers": [{"server_id": EXAMPLE_SERVER_ID, "command": sys.executable,
                     "args": [os.path.abspath(__file__), "--example-server"], "autostart": True,
                     "restart_policy": "on-failure"}],
    }


def init_config(path):
    path = os.path.expanduser(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print("%s already exists; not overwriting it" % path, file=sys.stderr)
        return 2
    except OSError as e:
        print("cannot create %s: %s" % (path, e), file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as f:
        json.dump(starter_config(), f, indent=2)
        f.write("\n")
    me = "%s %s" % (sys.executable, os.path.abspath(__file__))
    print("wrote %s (mode 0600) with a new token and the example server.\n"
          "Next: add your servers to it (--import FILE takes them from an MCP client's config), then run: %s --check "
          "-config %s\nThen %s --client-config CLIENT -config %s prints what to add to your MCP client (%s)."
          % (path, me, path, me, path, ", ".join(CLIENT_SNIPPETS)))
    return 0


def report_config_error(error):
    for message in error.messages:
        print("config error: " + message, file=sys.stderr)


def check_config(config, warnings):
    errors, notes = check_host(config)
    try:
        tls_context(config)
    except ConfigError as e:
        errors.extend(e.messages)
    for line in warnings + notes:
        print("warning: " + line, file=sys.stderr)
    for line in errors:
        print("error: " + line, file=sys.stderr)
    if errors:
        return 2
    print("%s: OK, %d server(s): %s; token from %s (%s)" % (
        config.path, len(config.servers), ", ".join(spec.server_id for spec in config.servers), config.token_source,
        ", ".join(config.token_names)))
    return 0


# Client snippets (--client-config): what each MCP client needs to reach this gateway. The status page (§10)
# builds the same shapes in its own script; ClientSnippetTest checks that both agree.

def gateway_url(config):
    """The base URL a client on this host uses: an all-addresses bind_host is reached on 127.0.0.1."""
    host = config.bind_host.strip()
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return "http://%s:%d" % ("[%s]" % host if ":" in host else host, config.bind_port)


def _shell_double_quoted(text):
    return '"%s"' % re.sub(r'([\\"$`])', r"\\\1", text)


def _claude_code_snippet(servers, token):
    header = "Authorization: Bearer "
    header = _shell_double_quoted(header + token) if token != TOKEN_PLACEHOLDER else '"%s%s"' % (header, token)
    return "\n".join("claude mcp add --transport http %s %s --header %s" % (name, url, header)
                     for name, url in servers)


def _claude_desktop_snippet(servers, token):
    # "Authorization:${AUTH}" has no space: Claude Desktop splits arguments with spaces on some versions, and
    # mcp-remote expands ${AUTH} from env itself. mcp-remote refuses plain http:// except to localhost.
    def args(url):
        loopback = urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
        return (["-y", "mcp-remote@" + MCP_REMOTE_VERSION, url, "--header", "Authorization:${AUTH}"] +
                ([] if loopback else ["--allow-http"]))
    return {"mcpServers": {name: {"command": "npx", "args": args(url), "env": {"AUTH": "Bearer " + token}}
                           for name, url in servers}}


def _url_headers_snippet(top, url_key, extra=()):
    def build(servers, token):
        return {top: {name: dict(extra, **{url_key: url, "headers": {"Authorization": "Bearer " + token}})
                      for name, url in servers}}
    return build


# client -> (snippet builder, where the snippet goes)
CLIENT_SNIPPETS = {
    "claude-code": (_claude_code_snippet, "run these in a terminal; add --scope user for every project"),
    "claude-desktop": (_claude_desktop_snippet, "merge into ~/Library/Application Support/Claude/"
                                                "claude_desktop_config.json, then restart Claude Desktop; needs "
                                                "Node.js (npx)"),
    "cursor": (_url_headers_snippet("mcpServers", "url"),
               "merge into ~/.cursor/mcp.json (every project) or .cursor/mcp.json (one project)"),
    "vscode": (_url_headers_snippet("servers", "url", {"type": "http"}),
               "merge into .vscode/mcp.json (one workspace) or the user mcp.json (MCP: Open User Configuration)"),
    "windsurf": (_url_headers_snippet("mcpServers", "serverUrl"), "merge into ~/.codeium/windsurf/mcp_config.json"),
}


def client_snippet(client, server_ids, base_url, token):
    """The text to paste into `client` for the given servers: shell lines or indented JSON."""
    servers = [(server_id, "%s/%s/rpc" % (base_url, server_id)) for server_id in server_ids]
    snippet = CLIENT_SNIPPETS[client][0](servers, token)
    return snippet if isinstance(snippet, str) else json.dumps(snippet, indent=2)


def shown_token(config, show_token):
    """The token to print: itself on a terminal or with --show-token, else the placeholder (said on stderr)."""
    if config.bind_port == 0:
        print("bind_port is 0, so the port is picked at start: put the one the gateway's `listening` log line "
              "names in place of :0", file=sys.stderr)
    if show_token or sys.stdout.isatty():
        return config.auth_token
    print("the token is left out because stdout is not a terminal; %s stands for it, --show-token prints it"
          % TOKEN_PLACEHOLDER, file=sys.stderr)
    return TOKEN_PLACEHOLDER


def print_client_config(config, words, show_token):
    """--client-config CLIENT [SERVER_ID]: exit 2 naming the choices for an unknown client or server id."""
    client, server_ids = words[0], [spec.server_id for spec in config.servers]
    if client not in CLIENT_SNIPPETS:
        print("unknown client %r; choose one of: %s" % (client, ", ".join(CLIENT_SNIPPETS)), file=sys.stderr)
        return 2
    if len(words) > 1:
        if words[1] not in server_ids:
            print("no server with server_id %r in %s; configured: %s" % (words[1], config.path, ", ".join(server_ids)),
                  file=sys.stderr)
            return 2
        server_ids = words[1:]
    snippet = client_snippet(client, server_ids, gateway_url(config), shown_token(config, show_token))
    print("# %s: %s" % (client, CLIENT_SNIPPETS[client][1]), file=sys.stderr)
    print(snippet)
    return 0


def status_url(base_url, token=None):
    """The status page's link; the token rides in the fragment, which the browser never sends."""
    return base_url + "/" + ("#token=" + urllib.parse.quote(token, safe="") if token else "")


def print_status_url(config, show_token):
    token = shown_token(config, show_token)
    print(status_url(gateway_url(config), None if token == TOKEN_PLACEHOLDER else token))
    return 0


# Importing MCP client configs (--import): Claude Desktop, Claude Code, Cursor, VS Code -----------------------------

_JSONC_COMMENT_RE = re.compile(r'("(?:[^"\\\n]|\\.)*")|//[^\n]*|/\*.*?\*/', re.S)
_JSONC_COMMA_RE = re.compile(r'("(?:[^"\\\n]|\\.)*")|,(?=\s*[}\]])')
REMOTE_TYPES = ("http", "sse", "streamable-http", "streamableHttp", "ws")  # client types that name a URL, not a command
IMPORTED_KEYS = ("command", "args", "env", "cwd", "type")  # of a client's entry; others are named as ignored


def strip_jsonc(text):
    """JSON with comments (VS Code's mcp.json) as JSON: `//` and `/* */` comments and trailing commas outside
    strings removed. A comment's line breaks are kept, so that a JSON error's line number stays right."""
    text = _JSONC_COMMENT_RE.sub(lambda m: m.group(1) or "\n" * m.group(0).count("\n"), text)
    return _JSONC_COMMA_RE.sub(lambda m: m.group(1) or "", text)


def client_servers(raw):
    """The name -> entry object of an MCP client's config: `mcpServers` (Claude Desktop, Claude Code, Cursor,
    Windsurf), `servers` (VS Code's mcp.json) or `mcp.servers` (VS Code's settings.json); None if it has none."""
    if not isinstance(raw, dict):
        return None
    mcp = raw.get("mcp")
    for found in (raw.get("mcpServers"), raw.get("servers"), mcp.get("servers") if isinstance(mcp, dict) else None):
        if isinstance(found, dict):
            return found
    return None


def url_safe_id(name):
    """A client's server name as a server_id: runs of other characters become `-`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "server"


def _spec_for(server):
    """A ServerSpec of a server object that has only some keys, the others at their defaults."""
    return ServerSpec(dict({key: field.default for key, field in SERVER_FIELDS.items()}, **server))


def _imported_server(entry, server_id):
    """(server object, warnings) for a client's stdio entry, or (None, [why it is skipped])."""
    if not isinstance(entry.get("command"), str) or not entry["command"].strip():
        return None, ["has no command"]
    server = {"server_id": server_id, "command": entry["command"]}
    for key, target in (("args", "args"), ("env", "env"), ("cwd", "working_dir")):
        if key in entry:
            problem = SERVER_FIELDS[target].check(entry[key])
            if problem:
                return None, ["%s %s" % (key, problem)]
            server[target] = entry[key]
    warnings = []
    ignored = sorted(key for key in entry if key not in IMPORTED_KEYS)
    if ignored:
        warnings.append("ignored: " + ", ".join(ignored))
    if any("${" in value for value in server.get("args", []) + list(server.get("env", {}).values())):
        warnings.append("uses ${...} variables, which the gateway passes on as they are: put in their values")
    found, search_path, source = resolve_command(_spec_for(server))
    if found is None:
        where = "on %s (%s)" % (source, search_path) if source else "there"
        warnings.append("command %r not found %s; kept as it is: give its absolute path" % (server["command"], where))
    else:
        server["command"] = os.path.abspath(found)
        folder = os.path.dirname(server["command"])
        if "PATH" not in server.get("env", {}) and folder not in LAUNCHD_PATH.split(":"):
            # a script such as npx starts `#!/usr/bin/env node`: node is beside it, and launchd's PATH lacks both
            server["env"] = dict(server.get("env", {}), PATH=folder + ":" + LAUNCHD_PATH)
    return server, warnings


def import_client_servers(entries, existing_ids, taken=None):
    """Gateway server objects for a client config's stdio entries. Returns (servers, report lines, warnings).
    Names are made URL-safe; a name whose id is reserved or already taken by an earlier entry of the import
    gets -2, -3...; an id already in the gateway config is never overwritten; remote entries are skipped."""
    taken = set() if taken is None else taken  # server_ids given out in this import, across files
    servers, report, warnings = [], [], []
    for name, entry in entries.items():
        base = url_safe_id(name)
        server_id, n = base, 1
        while server_id.lower() in RESERVED_SERVER_IDS or server_id in taken:
            n += 1
            server_id = "%s-%d" % (base, n)
        taken.add(server_id)
        if not isinstance(entry, dict):
            report.append("skipped %s: not an object" % name)
            continue
        if "url" in entry or "serverUrl" in entry or entry.get("type") in REMOTE_TYPES:
            report.append("skipped %s: a remote server (%s); point your client at it directly" % (
                name, entry.get("url") or entry.get("serverUrl") or entry.get("type")))
            continue
        if server_id in existing_ids:
            report.append("skipped %s: server_id %s is already in the config; kept as it is" % (name, server_id))
            continue
        server, notes = _imported_server(entry, server_id)
        if server is None:
            report.append("skipped %s: %s" % (name, notes[0]))
            continue
        servers.append(server)
        why = []
        if base != name:
            why.append("names in URLs are letters, digits, '.', '_', '-'")
        if server_id != base:
            why.append("%s is %s" % (base, "a path the gateway routes itself" if base.lower() in RESERVED_SERVER_IDS
                                     else "taken by an earlier entry"))
        renamed = " as %s (%s)" % (server_id, "; ".join(why)) if why else ""
        report.append("added %s%s: %s" % (name, renamed, " ".join([server["command"]] + server.get("args", []))))
        warnings.extend("%s: %s" % (server_id, note) for note in notes)
    return servers, report, warnings


def usual_client_configs(home):
    """Where a Mac's MCP clients keep their servers, in the order --import reads them."""
    return [os.path.join(home, "Library", "Application Support", "Claude", "claude_desktop_config.json"),
            os.path.join(home, ".cursor", "mcp.json"), os.path.join(home, ".claude.json")]


def read_client_config(path):
    """A client config's servers (name -> entry), or a ConfigError saying why there are none."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(["%s: cannot read: %s" % (path, e)]) from None
    try:
        raw = json.loads(strip_jsonc(text))
    except json.JSONDecodeError as e:
        raise ConfigError(["%s: %s" % (path, describe_json_error(e))]) from None
    entries = client_servers(raw)
    if entries is None:
        raise ConfigError(["%s: no mcpServers or servers object; not an MCP client's config" % path])
    return entries


def write_config_file(path, raw):
    """Replaces the config at `path` (through a symlink) at once: a temporary file beside it, mode 0600, renamed."""
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=folder)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(raw, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def import_client_configs(files, config_path):
    """--import [FILE]: adds a client config's stdio servers to the gateway config. Returns None when the
    config was written (main then checks it like --check), else the exit code."""
    given = bool(files)  # a file the user named must be a client config; one found in the usual places may not
    if not given:
        if platform.system() != "Darwin":
            print("--import: give the client config to read, e.g. --import .vscode/mcp.json", file=sys.stderr)
            return 2
        files = [path for path in usual_client_configs(os.path.expanduser("~")) if os.path.isfile(path)]
        if not files:
            print("--import: no client config in %s; give FILE" % ", ".join(
                usual_client_configs("~")), file=sys.stderr)
            return 2
    path = os.path.expanduser(config_path)
    if os.path.exists(path):
        load_config(path)  # refuses to add to a config that is already broken
        with open(path, "rb") as f:
            raw = json.loads(f.read().decode("utf-8"))
        print("adding to %s" % path)
    else:
        raw = starter_config()
        print("starting %s from the starter config (a new token and the example server)" % path)
    existing, taken, added = {server["server_id"] for server in raw["servers"]}, set(), []
    for file in files:
        print("reading %s" % file)
        try:
            entries = read_client_config(os.path.expanduser(file))
        except ConfigError as e:
            if given:
                raise
            print("  " + e.messages[0])
            continue
        servers, report, warnings = import_client_servers(entries, existing, taken)
        for line in report:
            print("  " + line)
        for line in warnings:
            print("warning: " + line, file=sys.stderr)
        added.extend(servers)
    if not added:
        print("nothing added; %s is unchanged" % path)
        return 0
    raw["servers"].extend(added)
    write_config_file(path, raw)
    print("wrote %s (mode 0600) with %d new server(s); checking it:" % (path, len(added)))
    return None


def demo_banner(gateway, token, asked_port):
    base = "http://127.0.0.1:%d" % gateway.port
    moved = "" if gateway.port == asked_port else " (port %d was taken)" % asked_port
    rpc = base + "/" + EXAMPLE_SERVER_ID + "/rpc"
    auth = '-H "Authorization: Bearer $TOKEN"'
    return "\n".join([
        "host-mcp-gateway %s demo: the embedded example MCP server at %s%s" % (VERSION, rpc, moved),
        "Token (shown once, valid until you stop this process):", "  " + token, "",
        "Try it from another terminal:",
        "  TOKEN=" + token,
        "  curl -s %s %s/health" % (auth, base),
        "  curl -s %s %s/servers" % (auth, base),
        "  curl -s %s -d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}' %s" % (auth, rpc),
        "  curl -s %s -d '{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":"
        "{\"name\":\"host_info\",\"arguments\":{}}}' %s" % (auth, rpc),
        "  claude mcp add --transport http host-example %s --header \"Authorization: Bearer $TOKEN\"" % rpc,
        "Status page, with what to add to other clients: %s (with a config of your own, "
        "--client-config CLIENT prints what to add)" % status_url(base, token),
        "Stop with Ctrl-C.", ""])


def raise_file_limit():
    """A LaunchAgent starts with a soft limit of 256 open files; every connection and every child's three pipes
    use some. Raise the soft limit as far as the hard one allows (up to 10240)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 10240 if hard == resource.RLIM_INFINITY else min(10240, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


def reload_gateway(gateway, load, logger):
    """SIGHUP: the config is read again and applied whole, or, when it does not validate, not at all."""
    try:
        config, warnings = load()
    except ConfigError as e:
        logger.error("config_reload_failed", errors=e.messages, note="the gateway goes on with the config it had")
        return
    for warning in warnings:
        logger.warning("config_warning", message=warning)
    logger.set_level(config.log_level)
    gateway.reload(config)


def serve(config, logger, on_listening=None, load=None):
    """Runs the gateway until SIGTERM or SIGINT. SIGHUP reloads the config with `load` (see load_to_serve); with
    none (the demo), it stops the gateway, as a closed Terminal window means. Returns the exit code."""
    raise_file_limit()
    received = queue.SimpleQueue()  # signal numbers, put by the handler (SimpleQueue.put may be), taken below
    previous = {signum: signal.signal(signum, lambda signum, _: received.put(signum))
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    gateway = Gateway(config, logger)
    logger.start_background()
    try:
        try:
            gateway.start()
        except ConfigError as e:
            report_config_error(e)
            return 2
        except OSError as e:
            logger.error("listen_failed", host=config.bind_host, port=config.bind_port, error=str(e))
            print("cannot listen on %s port %d: %s" % (config.bind_host, config.bind_port, e.strerror or e),
                  file=sys.stderr)
            return 1
        if on_listening is not None:
            on_listening(gateway)
        while True:
            try:
                signum = received.get(timeout=POLL_S)  # the reload runs here, on the main thread
            except queue.Empty:
                continue
            if signum != signal.SIGHUP or load is None:
                break
            reload_gateway(gateway, load, logger)
        gateway.stop()
        return 0
    finally:
        logger.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_demo(log_level):
    raw = starter_config()
    config = validate_config(raw)
    logger = Logger(level=log_level or config.log_level)
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", DEFAULT_PORT))
    except OSError:
        config.bind_port = 0  # 7411 is taken: any free port, and the banner says which
    finally:
        probe.close()

    def announce(gateway):
        sys.stdout.write(demo_banner(gateway, config.auth_token, DEFAULT_PORT))
        sys.stdout.flush()
    return serve(config, logger, announce)


def _path_argument(value):
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def load_to_serve(path, log_level=None):
    """load_config, with --log-level (when given) in place of the config's log_level, at start and reload."""
    config, warnings = load_config(path)
    config.log_level = log_level or config.log_level
    return config, warnings


def send_reload(path):
    """--reload: SIGHUP to the gateway serving this config, found by its state file, and only when the pid there
    is still that gateway (same start time). The config was checked first: a broken one is not sent."""
    record = StateFile.read(state_file_path(path))
    owner = record["gateway"] if record else {}
    pid = owner.get("pid")
    if not valid_pid(pid) or process_start_time(pid) != owner.get("start_time"):
        print("no gateway is running with %s (looked in %s)" % (path, state_file_path(path)), file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGHUP)
    print("sent SIGHUP to the gateway (pid %d); its log says config_reloaded, or config_reload_failed and why"
          % pid)
    return 0


def launch_agent(python, script, config_path, home):
    """The LaunchAgent that runs `script` with `python` on `config_path`, as plistlib writes it (pure); with the
    sample's placeholder paths it is host-mcp-gateway.plist.sample. Why each key: docs/operations.md."""
    log = os.path.join(home, "Library", "Logs", "host-mcp-gateway", "gateway.log")
    return {"Label": AGENT_LABEL, "ProgramArguments": [python, script, "-config", config_path],
            "EnvironmentVariables": {"PATH": AGENT_PATH}, "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False}, "ThrottleInterval": 10, "ProcessType": "Interactive",
            "StandardOutPath": log, "StandardErrorPath": log}


def agent_plist_path(home):
    return os.path.join(home, "Library", "LaunchAgents", AGENT_LABEL + ".plist")


def launchctl(*args):
    """Runs launchctl; (exit code, what it printed)."""
    try:
        result = subprocess.run(("launchctl",) + args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, str(e)
    return result.returncode, (result.stdout + result.stderr).strip()


def not_on_macos(option):
    if sys.platform == "darwin":
        return False
    print("%s manages a macOS LaunchAgent; this is %s: nothing was written" % (option, sys.platform),
          file=sys.stderr)
    return True


def install_agent(path, config, warnings):
    """--install-agent: after --check passes, writes the LaunchAgent for this interpreter, this file and this
    config, and bootstraps it (booting out the one installed before, if any)."""
    if not_on_macos("--install-agent"):
        return 2
    if check_config(config, warnings):
        print("the LaunchAgent was not installed: fix the errors above first", file=sys.stderr)
        return 2
    home, service = os.path.expanduser("~"), "gui/%d/%s" % (os.getuid(), AGENT_LABEL)
    plist = agent_plist_path(home)
    agent = launch_agent(sys.executable, os.path.abspath(__file__), os.path.abspath(os.path.expanduser(path)), home)
    try:
        os.makedirs(os.path.dirname(agent["StandardErrorPath"]), exist_ok=True)  # launchd makes no folders
        os.makedirs(os.path.dirname(plist), exist_ok=True)
        launchctl("bootout", service)  # the one installed before; fails harmlessly when there is none
        with open(plist, "wb") as f:
            plistlib.dump(agent, f)
    except OSError as e:
        print("cannot write %s: %s" % (plist, e), file=sys.stderr)
        return 1
    code, output = launchctl("bootstrap", "gui/%d" % os.getuid(), plist)
    if code:
        print("wrote %s, but launchctl bootstrap failed (%d): %s" % (plist, code, output), file=sys.stderr)
        return 1
    print("installed and started %s\nits state: launchctl print %s\nits log:   %s" % (
        plist, service, agent["StandardErrorPath"]))
    return 0


def uninstall_agent():
    """--uninstall-agent: boots the LaunchAgent out (the gateway stops its children and exits) and removes it."""
    if not_on_macos("--uninstall-agent"):
        return 2
    plist = agent_plist_path(os.path.expanduser("~"))
    code, output = launchctl("bootout", "gui/%d/%s" % (os.getuid(), AGENT_LABEL))
    try:
        os.unlink(plist)
    except FileNotFoundError:
        if code:
            print("no LaunchAgent %s is installed (%s)" % (AGENT_LABEL, output), file=sys.stderr)
            return 1
    print("stopped and removed %s" % plist)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="host_mcp_gateway.py", allow_abbrev=False,
        description="Serve this host's stdio MCP servers to MCP clients over authenticated HTTP.",
        epilog="Exit codes: 0 clean stop, 1 runtime failure, 2 config or usage error.")
    parser.add_argument("-config", "--config", metavar="PATH", type=_path_argument,
                        help="config file (default %s)" % DEFAULT_CONFIG_PATH)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="validate the config and the host (commands, directories) without serving")
    mode.add_argument("--init", nargs="?", const=True, metavar="PATH", type=_path_argument,
                      help="write a starter config with a new token to PATH, else to -config PATH, else to %s"
                      % DEFAULT_CONFIG_PATH)
    mode.add_argument("--demo", action="store_true",
                      help="serve the embedded example server on 127.0.0.1:%d with a new token" % DEFAULT_PORT)
    mode.add_argument("--reload", action="store_true",
                      help="check the config, then tell the gateway running with it to reload it (SIGHUP)")
    mode.add_argument("--install-agent", action="store_true",
                      help="macOS: check the config, then install and start a LaunchAgent that serves it at login")
    mode.add_argument("--uninstall-agent", action="store_true", help="macOS: stop and remove that LaunchAgent")
    mode.add_argument("--example-server", action="store_true",
                      help="be the embedded example MCP server on stdin/stdout (what --demo runs)")
    mode.add_argument("--import", nargs="*", dest="import_files", metavar="FILE",
                      help="add the stdio servers of an MCP client's config (claude_desktop_config.json, .mcp.json, "
                      "Cursor's or VS Code's mcp.json) to the config, then check it; on a Mac, with no FILE, "
                      "read the usual places")
    mode.add_argument("--client-config", nargs="+", metavar=("CLIENT", "SERVER_ID"),
                      help="print what to add to an MCP client (%s) to reach the configured servers, or one"
                      % ", ".join(CLIENT_SNIPPETS))
    mode.add_argument("--status-url", action="store_true",
                      help="print the link to the status page, http://127.0.0.1:PORT/#token=...")
    parser.add_argument("--show-token", action="store_true",
                        help="with --client-config and --status-url: print the token even when stdout is not a "
                        "terminal")
    parser.add_argument("--log-level", choices=tuple(Logger.LEVELS),
                        help="least level logged; overrides the config's log_level (default info)")
    parser.add_argument("--version", action="version", version="host-mcp-gateway " + VERSION)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.example_server:
        return run_example_server()
    if args.init is not None:
        path = args.config if args.init is True else args.init  # a bare --init writes where -config points
        if args.config and path != args.config:
            parser.error("--init %s and -config %s name two files; give the path once" % (path, args.config))
        return init_config(path or DEFAULT_CONFIG_PATH)
    if args.demo:
        return run_demo(args.log_level)
    if args.uninstall_agent:
        return uninstall_agent()
    if args.client_config is not None and len(args.client_config) > 2:
        parser.error("--client-config takes CLIENT and at most one SERVER_ID")
    path = args.config or DEFAULT_CONFIG_PATH

    def load():
        return load_to_serve(path, args.log_level)
    try:
        if args.import_files is not None:
            code = import_client_configs(args.import_files, path)
            if code is not None:
                return code
        config, warnings = load()
    except ConfigError as e:
        report_config_error(e)
        return 2
    if args.check or args.import_files is not None:
        return check_config(config, warnings)
    if args.reload:
        return send_reload(path)
    if args.install_agent:
        return install_agent(path, config, warnings)
    if args.client_config is not None:
        return print_client_config(config, args.client_config, args.show_token)
    if args.status_url:
        return print_status_url(config, args.show_token)
    logger = Logger(level=config.log_level)
    for warning in warnings:
        logger.warning("config_warning", message=warning)
    return serve(config, logger, load=load)


if __name__ == "__main__":
    sys.exit(main())
