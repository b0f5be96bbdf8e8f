#!/usr/bin/env python3
"""host-mcp-gateway: serve a host's stdio MCP servers to MCP clients over authenticated HTTP.

Some MCP servers can only run on one machine (a Mac's Notes, Calendar, Shortcuts, Keychain). This one
file runs them as child processes speaking newline-delimited JSON-RPC on stdio, and lets many HTTP
clients share each of them safely:

    client --HTTP--> §10 HTTP layer --> §8 sessions --> §7 supervisor --> §6 child process --stdio--> MCP server
      (token, allowlist, Origin,       (Mcp-Session-Id,   (restart policy,   (id remapping, one writer
       size and time limits)            event streams)     backoff)           thread, stdout/stderr readers)

Endpoints: `POST /{server_id}/rpc` is an MCP Streamable HTTP endpoint (POST, GET event stream, DELETE,
`Mcp-Session-Id`) that also answers plain curl calls without a session; `POST /rpc` takes
`{"server_id": ..., "payload": <JSON-RPC>}`; `GET /health` and `GET /servers` report status.

Quick start:   python3 host_mcp_gateway.py --demo
Own config:    python3 host_mcp_gateway.py --init  (then edit it)  and  python3 host_mcp_gateway.py --check
Run:           python3 host_mcp_gateway.py -config ~/.config/host-mcp-gateway/config.json

Config keys are listed in CONFIG_FIELDS and SERVER_FIELDS (§4) and in README.md.
Python >= 3.9, standard library only. Sections: `grep -n '^# §' host_mcp_gateway.py`.
"""
from __future__ import annotations

import argparse
import difflib
import email.utils
import hmac
import http
import ipaddress
import itertools
import json
import os
import platform
import queue
import re
import secrets
import select
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import ThreadingHTTPServer

# § 1 Constants and defaults ------------------------------------------------------------------------------------

VERSION = "0.1.0"
SERVER_HEADER = "host-mcp-gateway"  # no version numbers: the default tells every client the interpreter's
DEFAULT_CONFIG_PATH = "~/.config/host-mcp-gateway/config.json"
DEFAULT_PORT = 7411
LAUNCHD_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"  # what launchd gives a LaunchAgent unless told otherwise

# MCP protocol revisions that use the initialize handshake, newest first. The gateway itself speaks the newest
# to its children; a client asking for an older one gets it on its session.
SUPPORTED_PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
HANDSHAKE_PROTOCOL_VERSION = SUPPORTED_PROTOCOL_VERSIONS[0]
PROTOCOL_VERSION_WHEN_ABSENT = "2025-03-26"  # transports spec: no MCP-Protocol-Version header means this one

MAX_HEAD_BYTES = 32 * 1024  # request line + headers; browsers and SDKs send well under 8 KiB
MAX_HEADER_COUNT = 100  # http.server's own _MAXHEADERS
STDERR_LOG_CHARS = 2000  # a child's stderr line longer than this is logged truncated
STDERR_TAIL_LINES = 10  # the last lines of stderr quoted when a child exits
CHILD_STOP_GRACE_S = 2.0  # SIGTERM to SIGKILL; keeps a whole gateway stop under 5 s
CHILD_EXIT_SETTLE_S = 1.0  # after stdout closes, how long a child gets to exit by itself before it is stopped
MAX_BACKOFF_S = 60.0  # restart backoff doubles up to this
MIN_LOOP_DELAY_S = 0.1  # even with restart_backoff_ms 0, a crash loop never spins the CPU
STABLE_AFTER_S = 30.0  # a child ready this long has recovered: the next failure starts the backoff over
SHUTDOWN_GRACE_S = 2.0  # in-flight requests get this long to finish on SIGTERM
POLL_S = 0.5  # how often waiting threads look at their stop Event

JSONRPC_PARSE_ERROR = -32700
JSONRPC_INVALID_REQUEST = -32600
JSONRPC_METHOD_NOT_FOUND = -32601
JSONRPC_SERVER_ERROR = -32000  # the gateway's own failures (child unavailable or exited)
JSONRPC_REQUEST_TIMEOUT = -32001  # the SDKs use this code for a request that timed out
JSONRPC_REQUEST_CANCELLED = -32800  # the answer to a call its client cancelled (the code LSP uses)


# § 2 Errors ----------------------------------------------------------------------------------------------------

class GatewayError(Exception):
    """Every failure a client can see. The HTTP layer's one funnel (§10) turns it into a response: the gateway
    error shape `{"error": {"error_code", "message", "server_id", "request_id"}}`, or a JSON-RPC error where the
    caller speaks JSON-RPC. `error_code` values are a stable, documented list (README, "Errors")."""

    def __init__(self, message, http_status=500, error_code="internal_error", rpc_code=JSONRPC_SERVER_ERROR,
                 server_id=None, request_id=None, close=False, headers=()):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.error_code = error_code
        self.rpc_code = rpc_code
        self.server_id = server_id
        self.request_id = request_id
        self.close = close  # the connection cannot be reused (unread body, broken framing)
        self.headers = tuple(headers)

    def body(self):
        error = {"error_code": self.error_code, "message": self.message}
        if self.server_id is not None:
            error["server_id"] = self.server_id
        if self.request_id is not None:
            error["request_id"] = str(self.request_id)
        return {"error": error}


def bad_request(message, error_code="bad_request", close=False):
    return GatewayError(message, 400, error_code, JSONRPC_INVALID_REQUEST, close=close)


def unavailable(server_id, message):
    return GatewayError(message, 503, "server_unavailable", JSONRPC_SERVER_ERROR, server_id=server_id)


class ConfigError(Exception):
    """A config or command-line problem: the process exits 2 after printing every message."""

    def __init__(self, messages):
        super().__init__("\n".join(messages))
        self.messages = list(messages)


# § 3 Small helpers ---------------------------------------------------------------------------------------------

now = time.monotonic  # every deadline and backoff

_SECRET_KEYS = frozenset({"authorization", "auth_token", "token", "env"})


class Logger:
    """One JSON object per line: UTC time, level, event, fields. Fields named like secrets are never written,
    whatever a caller passes, so a token cannot reach the log by accident."""

    LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

    def __init__(self, stream=None, level="info"):
        self._stream = stream if stream is not None else sys.stderr
        self._threshold = self.LEVELS[level]
        self._lock = threading.Lock()  # guards self._stream

    def log(self, level, event, **fields):
        if self.LEVELS[level] < self._threshold:
            return
        t = time.time()
        record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (t % 1 * 1000),
                  "level": level, "event": event}
        for key, value in fields.items():
            record[key] = "[redacted]" if key.lower() in _SECRET_KEYS else value
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed stderr must not take the gateway down

    def info(self, event, **fields):
        self.log("info", event, **fields)

    def warning(self, event, **fields):
        self.log("warning", event, **fields)

    def error(self, event, **fields):
        self.log("error", event, **fields)


def json_bytes(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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


# § 4 Configuration and access control (pure) ------------------------------------------------------------------

TOKEN_HELP = ("make one with `openssl rand -hex 32` or "
              "`python3 -c 'import secrets; print(secrets.token_hex(32))'`")
RESTART_POLICIES = ("always", "on-failure", "never")
SERVER_ID_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
# Path segments the gateway routes itself; a server_id equal to one would be shadowed or confusing.
RESERVED_SERVER_IDS = frozenset({"rpc", "health", "servers", "metrics", "status", "v1", ".", ".."})


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_string(value):
    return None if isinstance(value, str) else "must be a string"


def _check_nonempty_string(value):
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


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


def _check_auth_token(value):
    if not isinstance(value, str):
        return "must be a string; " + TOKEN_HELP
    if "replace-me" in value:
        return "still holds the placeholder; " + TOKEN_HELP
    if len(value) < 32:
        return "must be at least 32 characters; " + TOKEN_HELP
    return None


class Field:
    """One config key: its default (REQUIRED when it has none), its check, and its line in README's table."""
    REQUIRED = object()

    def __init__(self, default, check, doc):
        self.default = default
        self.check = check
        self.doc = doc


CONFIG_FIELDS = {
    "bind_host": Field("127.0.0.1", _check_nonempty_string, "address to listen on; IPv4 or IPv6, `::` for all"),
    "bind_port": Field(DEFAULT_PORT, _check_port, "port to listen on; 0 picks a free one and logs it"),
    "auth_token": Field(Field.REQUIRED, _check_auth_token, "bearer token every request must carry (>= 32 chars)"),
    "allowed_clients": Field(Field.REQUIRED, _check_string_list,
                             "client IPs or CIDRs allowed to connect; `localhost` = 127.0.0.0/8 and ::1"),
    "allowed_origins": Field([], _check_string_list,
                             "browser Origins allowed (e.g. `http://localhost:6274`); others get 403"),
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
    "max_sessions": Field(1000, _check_positive_int, "most MCP sessions open at once, all servers together"),
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


class Config:
    """The whole validated config. Values keep the names of the JSON keys."""

    def __init__(self, values, servers, path=None):
        for key in CONFIG_FIELDS:
            if key != "servers":
                setattr(self, key, values[key])
        self.servers = servers
        self.path = path


def _unknown_key_error(path, key, known):
    match = difflib.get_close_matches(key, list(known), n=1)
    hint = "; did you mean %s?" % match[0] if match else "; known keys: " + ", ".join(known)
    return "%s%s: unknown key%s" % (path, key, hint)


def _apply_fields(raw, fields, path, errors):
    """Check `raw` against a field table; returns the values with defaults filled in. Problems go to `errors`."""
    values = {}
    for key in raw:
        if key not in fields:
            errors.append(_unknown_key_error(path, key, fields))
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


def validate_config(raw, path=None):
    """Returns a Config or raises ConfigError listing every problem, each with its JSON path."""
    if not isinstance(raw, dict):
        raise ConfigError(["config: must be a JSON object"])
    errors = []
    values = _apply_fields(raw, CONFIG_FIELDS, "", errors)
    servers = []
    raw_servers = raw.get("servers")
    if "servers" in raw and not (isinstance(raw_servers, list) and raw_servers):
        errors.append("servers: must be a non-empty list of server objects")
        raw_servers = []
    seen = set()
    for index, raw_server in enumerate(raw_servers or ()):
        where = "servers[%d]." % index
        if not isinstance(raw_server, dict):
            errors.append("servers[%d]: must be an object" % index)
            continue
        server_values = _apply_fields(raw_server, SERVER_FIELDS, where, errors)
        if "server_id" in raw_server:
            problem = _check_server_id(raw_server["server_id"], seen)
            if problem:
                errors.append("%sserver_id: %s" % (where, problem))
            elif isinstance(raw_server["server_id"], str):
                seen.add(raw_server["server_id"])
        servers.append(ServerSpec(server_values))
    if _check_string_list(values["allowed_clients"]) is None:
        for index, entry in enumerate(values["allowed_clients"]):
            problem = Allowlist.entry_problem(entry)
            if problem:
                errors.append("allowed_clients[%d]: %s" % (index, problem))
    if errors:
        raise ConfigError(errors)
    return Config(values, servers, path)


def load_config(path):
    """Reads and validates the config file; returns (Config, warnings) or raises ConfigError."""
    path = os.path.expanduser(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(["%s: no such file; create one with --init" % path]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(["%s: cannot read: %s" % (path, e)]) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(["%s: invalid JSON at line %d, column %d: %s" % (path, e.lineno, e.colno, e.msg)])
    config = validate_config(raw, path)
    warnings = []
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append("%s is readable by other users and holds the token; run: chmod 600 %s" % (path, path))
    return config, warnings


class Allowlist:
    """Client addresses allowed to connect. `localhost` means 127.0.0.0/8 and ::1; an IPv4 client seen on a
    dual-stack socket as ::ffff:a.b.c.d matches IPv4 entries."""

    LOCALHOST = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

    def __init__(self, entries):
        self._networks = []
        for entry in entries:
            if entry.strip().lower() == "localhost":
                self._networks.extend(self.LOCALHOST)
            else:
                self._networks.append(ipaddress.ip_network(entry.strip(), strict=False))

    @staticmethod
    def entry_problem(entry):
        if entry.strip().lower() == "localhost":
            return None
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
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


def command_search_path(spec):
    """The PATH a server's command is looked up on, and where that PATH comes from."""
    if "PATH" in spec.env:
        return spec.env["PATH"], "the server's env.PATH"
    return os.environ.get("PATH", os.defpath), "the gateway's PATH"


def command_path(spec):
    """The command as the child is started with it: `~` expanded; with a `/`, relative to working_dir."""
    return os.path.expanduser(spec.command)


def resolve_command(spec):
    """Where the child's command will be found, or None. Returns (path or None, searched PATH, its source);
    a command with a `/` is not searched for, and its source is None."""
    command = command_path(spec)
    if os.sep in command:
        candidate = os.path.join(os.path.expanduser(spec.working_dir) or os.getcwd(), command)
        found = candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
        return found, None, None
    search_path, source = command_search_path(spec)
    return shutil.which(command, path=search_path), search_path, source


def check_host(config):
    """The --check probes beyond the config's shape: commands, working directories. Returns (errors, notes)."""
    errors, notes = [], []
    for index, spec in enumerate(config.servers):
        where = "servers[%d]" % index
        if spec.working_dir and not os.path.isdir(os.path.expanduser(spec.working_dir)):
            errors.append("%s.working_dir: %s does not exist" % (where, spec.working_dir))
            continue
        found, search_path, source = resolve_command(spec)
        if not found and source is None:
            errors.append("%s.command: %s is not an executable file" % (where, spec.command))
        elif not found:
            errors.append("%s.command: '%s' not found on %s (%s)" % (where, spec.command, source, search_path))
        elif source == "the gateway's PATH" and os.path.dirname(found) not in LAUNCHD_PATH.split(":"):
            notes.append("%s.command: found at %s, but a LaunchAgent starts with PATH=%s; set the absolute path "
                         "or env.PATH for this server if it runs under launchd" % (where, found, LAUNCHD_PATH))
    return errors, notes


# § 5 JSON-RPC core (no I/O) ------------------------------------------------------------------------------------

REQUEST, NOTIFICATION, RESPONSE, INVALID = "request", "notification", "response", "invalid"


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
    data = {"error_code": error.error_code}
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


# § 6 Child process ---------------------------------------------------------------------------------------------

GATEWAY_CLIENT_INFO = {"name": "host-mcp-gateway", "version": VERSION}
# Declared to children so that they may ask for roots, sampling and elicitation; the gateway relays those
# requests to a session whose client declared the same capability (§8).
GATEWAY_CLIENT_CAPABILITIES = {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {}}


class PendingCall:
    """A request forwarded to a child and not yet answered."""
    __slots__ = ("caller_id", "method", "session", "answers")

    def __init__(self, caller_id, method, session):
        self.caller_id = caller_id  # the id the caller chose; its answer goes back with it, type preserved
        self.method = method
        self.session = session  # the MCP session that made it, or None
        self.answers = queue.SimpleQueue()  # the child's response (id already restored), or a GatewayError


class ChildProcess:
    """One run of an MCP server on stdio. The gateway writes through one writer thread fed by a queue, so an
    HTTP thread never blocks on a child that stops reading; stdout and stderr each have a reader thread, so a
    full pipe never stalls the child. Requests get fresh gateway-owned ids; answers go back with the caller's."""

    def __init__(self, spec, logger, max_line_bytes, on_unsolicited):
        self.spec = spec
        self.server_id = spec.server_id
        self._log = logger
        self._max_line_bytes = max_line_bytes
        self._on_unsolicited = on_unsolicited  # (child, message, kind) for child messages that answer no call
        self.process = None
        self._outbox = queue.SimpleQueue()  # encoded lines for the writer thread; None = flush, close stdin, end
        self._lock = threading.Lock()
        self._pending = {}  # gateway id -> PendingCall (self._lock)
        self._exit_error = None  # once set, the GatewayError every call gets (self._lock)
        self._ids = itertools.count(1)  # gateway-owned request ids for this run
        self._stderr_tail = deque(maxlen=STDERR_TAIL_LINES)
        self._closing = threading.Event()  # stop() was called: the writer abandons a blocked write
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
        env.update(spec.env)
        working_dir = os.path.expanduser(spec.working_dir) if spec.working_dir else None
        try:
            self.process = subprocess.Popen(
                [command_path(spec)] + spec.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=working_dir, env=env, start_new_session=True)
        except OSError as e:
            raise unavailable(self.server_id, self._spawn_problem(e)) from None
        os.set_blocking(self.process.stdin.fileno(), False)
        for name, target in (("stdin", self._write_loop), ("stdout", self._read_stdout),
                             ("stderr", self._drain_stderr)):
            thread = threading.Thread(target=target, name="%s-%s-%d" % (self.server_id, name, self.pid),
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

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
        self._outbox.put(json_bytes(message) + b"\n")

    def _write_loop(self):
        fd = self.process.stdin.fileno()
        try:
            done = False
            while not done and not self._closing.is_set():
                try:
                    first = self._outbox.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                chunks = [first]
                while chunks[-1] is not None:  # everything queued meanwhile goes out in one write
                    try:
                        chunks.append(self._outbox.get_nowait())
                    except queue.Empty:
                        break
                done = chunks[-1] is None
                self._write_all(fd, b"".join(chunk for chunk in chunks if chunk is not None))
        except OSError as e:  # the child closed its stdin or exited; stdout's end reports why
            self._log.log("debug", "child_stdin_closed", server_id=self.server_id, pid=self.pid, reason=str(e))
        except Exception as e:
            self._log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))
        finally:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def _write_all(self, fd, data):
        view = memoryview(data)
        while view and not self._closing.is_set():
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:  # the pipe is full: wait for the child to read, or for stop()
                select.select([], [fd], [], POLL_S)

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
        chunk = b""
        while True:
            chunk = stream.readline(1 << 20)
            if not chunk or chunk.endswith(b"\n"):
                return

    def _receive_line(self, line):
        try:
            message = json.loads(line)
        except ValueError:
            self._log.warning("child_non_json_line", server_id=self.server_id, pid=self.pid,
                              line=line[:200].decode("utf-8", "replace"))
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
        for thread in self._threads:
            if thread.name.startswith(self.server_id + "-stderr"):
                thread.join(timeout=POLL_S)  # so the tail below holds what it wrote last
        self.fail_calls(GatewayError(self.exit_summary(), 502, "server_exited", JSONRPC_SERVER_ERROR,
                                     server_id=self.server_id))

    def exit_summary(self):
        returncode = self.process.poll()
        status = describe_exit(returncode) if returncode is not None else "closed its stdout"
        summary = "server %s (pid %d) %s" % (self.server_id, self.pid, status)
        if self._stderr_tail:
            summary += "; last stderr: " + " | ".join(self._stderr_tail)
        return summary

    # Calls -----------------------------------------------------------------------------------------------------

    def begin_call(self, message, session=None):
        """Forwards a request under a fresh id. Returns (gateway id, PendingCall) for wait_call."""
        call = PendingCall(message["id"], message["method"], session)
        gateway_id = next(self._ids)
        forwarded = dict(message)
        forwarded["id"] = gateway_id
        with self._lock:
            if self._exit_error is not None:
                raise self._exit_error
            self._pending[gateway_id] = call
        self.send(forwarded)
        return gateway_id, call

    def wait_call(self, gateway_id, call, deadline):
        """The child's answer with the caller's id, or GatewayError. A call that times out is cancelled at the
        child, and its late answer is dropped."""
        try:
            answer = call.answers.get(timeout=max(0.0, deadline - now()))
        except queue.Empty:
            self.cancel_call(gateway_id, "timed out in the gateway")
            raise GatewayError("server %s did not answer %s within the request timeout" % (
                self.server_id, call.method), 504, "timeout", JSONRPC_REQUEST_TIMEOUT,
                server_id=self.server_id, request_id=call.caller_id) from None
        if isinstance(answer, GatewayError):
            raise answer
        return answer

    def call(self, message, deadline, session=None):
        gateway_id, call = self.begin_call(message, session)
        return self.wait_call(gateway_id, call, deadline)

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

    def handshake(self, timeout_s):
        """The gateway's own initialize; returns the child's initialize result."""
        request = {"jsonrpc": "2.0", "id": "gateway-initialize", "method": "initialize",
                   "params": {"protocolVersion": HANDSHAKE_PROTOCOL_VERSION,
                              "capabilities": GATEWAY_CLIENT_CAPABILITIES, "clientInfo": GATEWAY_CLIENT_INFO}}
        try:
            answer = self.call(request, now() + timeout_s)
        except GatewayError as e:
            if e.error_code == "timeout":
                e = unavailable(self.server_id, "server %s did not answer initialize within %d ms" % (
                    self.server_id, timeout_s * 1000))
            raise e from None
        result = answer.get("result")
        if not isinstance(result, dict):
            raise unavailable(self.server_id, "server %s refused initialize: %s" % (
                self.server_id, json.dumps(answer.get("error"))))
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    # Stopping --------------------------------------------------------------------------------------------------

    def stop(self, reason="server is stopping"):
        """Close stdin, SIGTERM the process group, wait a grace, SIGKILL the group, reap. Idempotent."""
        if self.process is None:
            return
        self.fail_calls(unavailable(self.server_id, "server %s: %s" % (self.server_id, reason)))
        self._outbox.put(None)
        self._closing.set()
        self._join_thread("-stdin", POLL_S * 2)
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=CHILD_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)  # also reaches grandchildren that outlived the leader
        try:
            self.process.wait(timeout=CHILD_STOP_GRACE_S)
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

    def _signal_group(self, signum):
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


# § 7 Supervisor ------------------------------------------------------------------------------------------------

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

    def __init__(self, spec, config, logger, max_line_bytes, on_unsolicited, on_ready=None):
        self.spec = spec
        self.server_id = spec.server_id
        self._config = config
        self._log = logger
        self._max_line_bytes = max_line_bytes
        self._on_unsolicited = on_unsolicited
        self._on_ready = on_ready  # called on the supervisor thread each time a child becomes ready
        self._cond = threading.Condition()  # guards every field below and wakes callers waiting for readiness
        self.state = "stopped"
        self.child = None  # the ChildProcess while ready
        self.init_result = None  # the child's initialize result, kept for clients' own initialize
        self.restart_count = 0
        self.last_exit = None
        self.last_error = None
        self._ready_since = None
        self._next_start_at = None
        self._failed_since_ready = False  # the last attempt failed and none has been ready since
        self._down = False  # the restart policy let it stay down: no more starts
        self._thread = None
        self._stop = threading.Event()

    def start(self):
        """Starts supervising (idempotent): at gateway start for autostart servers, else on first request."""
        with self._cond:
            if self._thread is not None or self._stop.is_set():
                return
            self.state = "starting"
            self._thread = threading.Thread(target=self._supervise, name="supervisor-" + self.server_id,
                                            daemon=True)
            self._thread.start()

    def request_stop(self):
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout):
        if self._thread is not None:
            self._thread.join(timeout)

    def ready_child(self, deadline):
        """The ready child, waiting for a start or a restart within the caller's deadline. A server that has not
        been ready since its last failure, or is down for good, is unavailable at once."""
        self.start()
        with self._cond:
            while True:
                if self.state == "ready" and self.child.accepting_calls:
                    return self.child
                if self._stop.is_set():
                    raise unavailable(self.server_id, "server %s: the gateway is stopping" % self.server_id)
                if self._down or self._failed_since_ready:
                    raise unavailable(self.server_id, self._unavailable_reason())
                remaining = deadline - now()
                if remaining <= 0:
                    raise GatewayError("server %s did not become ready in time (state %s)" % (
                        self.server_id, self.state), 504, "timeout", JSONRPC_REQUEST_TIMEOUT,
                        server_id=self.server_id)
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
        except Exception as e:
            self._log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))
            self._set(state="failed", last_error="supervisor failed: %r" % e, _down=True)
        finally:
            if self._stop.is_set():
                self._set(state="stopped", child=None)

    def _run_once(self):
        """Starts one child and watches it until it exits or the gateway stops it. Returns (child, seconds it
        was ready, or None if it never became ready)."""
        child = ChildProcess(self.spec, self._log, self._max_line_bytes, self._on_unsolicited)
        self._set(state="starting", _next_start_at=None)
        startup_ms = self.spec.startup_timeout_ms or self._config.request_timeout_ms
        try:
            child.start()
            self._log.info("child_started", server_id=self.server_id, pid=child.pid)
            result = child.handshake(startup_ms / 1000.0)
        except GatewayError as e:
            child.stop("its start failed")
            returncode = child.process.returncode if child.process else None
            self._set(last_error=e.message, _failed_since_ready=True,
                      last_exit=describe_exit(returncode) if child.process else "not started")
            self._log.warning("child_start_failed", server_id=self.server_id, pid=child.pid, reason=e.message)
            return child, None
        ready_at = now()
        self._set(state="ready", child=child, init_result=result, _ready_since=ready_at,
                  _failed_since_ready=False, last_error=None)
        self._log.info("child_ready", server_id=self.server_id, pid=child.pid,
                       server_info=result.get("serverInfo"), protocol_version=result.get("protocolVersion"))
        if self._on_ready is not None:
            self._on_ready(self, child)
        while not child.stdout_closed.wait(POLL_S):
            if self._stop.is_set():
                break
        summary = child.exit_summary() if child.stdout_closed.is_set() else None
        child.stop("the gateway is stopping" if self._stop.is_set() else "it exited")
        self._set(state="starting", child=None, _ready_since=None,
                  last_exit=describe_exit(child.process.returncode), last_error=summary)
        if summary:
            self._log.warning("child_exited", server_id=self.server_id, pid=child.pid, summary=summary)
        return child, now() - ready_at

    def describe(self):
        """What /servers shows: never env values or the token."""
        with self._cond:
            info = self.init_result or {}
            return {
                "server_id": self.server_id, "state": self.state,
                "pid": self.child.pid if self.child else None,
                "restart_count": self.restart_count, "last_exit": self.last_exit, "last_error": self.last_error,
                "uptime_s": round(now() - self._ready_since, 3) if self._ready_since else None,
                "next_start_in_s": (round(max(0.0, self._next_start_at - now()), 3)
                                    if self._next_start_at is not None else None),
                "autostart": self.spec.autostart, "restart_policy": self.spec.restart_policy,
                "server_info": info.get("serverInfo"), "protocol_version": info.get("protocolVersion"),
                "capabilities": sorted((info.get("capabilities") or {}).keys()),
            }


# § 8 Routing between clients and children ---------------------------------------------------------------------

class Ticket:
    """A request on its way through a child: what the HTTP thread waits on."""
    __slots__ = ("child", "gateway_id", "call")

    def __init__(self, child, gateway_id, call):
        self.child = child
        self.gateway_id = gateway_id
        self.call = call

    def wait(self, deadline):
        return self.child.wait_call(self.gateway_id, self.call, deadline)


class Router:
    """Carries JSON-RPC payloads from clients to a server's child and back, and the messages a child starts to
    the clients they concern. A payload is one message or a batch (an array, protocol revision 2025-03-26)."""

    def __init__(self, logger):
        self._log = logger

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
        kind, problem = classify(message)
        if kind == INVALID:
            raise GatewayError("invalid JSON-RPC message: " + problem, 400, "invalid_request",
                               JSONRPC_INVALID_REQUEST, server_id=runtime.server_id, request_id=message_id(message))
        method = message.get("method")
        if method == "notifications/initialized":
            return None  # the gateway did the child's handshake itself; the child expects no second one
        if kind == RESPONSE:
            self._log.info("client_response_dropped", server_id=runtime.server_id, id=message["id"],
                           reason="no server-to-client request is waiting for it")
            return None
        if kind == REQUEST and method != "initialize":
            return self._forward_request(runtime, message, deadline, session)
        child = runtime.ready_child(deadline)
        if method == "initialize":
            return self.initialize_reply(runtime, message)
        if method == "notifications/cancelled":
            self._cancel_for_client(child, message, session)
        else:
            child.send(message)
        return None

    @staticmethod
    def _forward_request(runtime, message, deadline, session):
        while True:
            child = runtime.ready_child(deadline)
            try:
                gateway_id, call = child.begin_call(message, session)
            except GatewayError as e:
                if e.error_code == "server_exited":
                    continue  # it died before the call reached it: wait for the restart like any later call
                raise
            return Ticket(child, gateway_id, call)

    @staticmethod
    def initialize_reply(runtime, message):
        """A client's initialize, answered from the child's kept result: the child is initialized exactly once."""
        result = dict(runtime.init_result)
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        result["protocolVersion"] = negotiate_protocol_version(params.get("protocolVersion"),
                                                               runtime.init_result.get("protocolVersion"))
        return {"jsonrpc": "2.0", "id": message["id"], "result": result}

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

    def on_child_message(self, child, message, kind):
        """A message from a child that answers no call. Until sessions route them, notifications are logged and
        a server-to-client request is refused at once, so the child never waits for an answer."""
        if kind == REQUEST:
            child.send(rpc_error(message["id"], JSONRPC_METHOD_NOT_FOUND,
                                 "no client can answer %s through the gateway" % message["method"]))
        self._log.info("child_message", server_id=child.server_id, kind=kind, method=message.get("method"))


# § 10 HTTP layer -----------------------------------------------------------------------------------------------

_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_REQUEST_LINE_RE = re.compile(rb"(" + _TCHAR + rb"+) ([!-~]+) HTTP/([0-9])\.([0-9])\Z")
_HEADER_LINE_RE = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*([^\r\n\x00]*?)[ \t]*\Z")
_CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,15}\Z")


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
    lines = head.split(b"\r\n")
    match = _REQUEST_LINE_RE.match(lines[0])
    if not match:
        raise bad_request("malformed request line", close=True)
    method, target = match.group(1).decode("ascii"), match.group(2).decode("ascii")
    version = (int(match.group(3)), int(match.group(4)))
    if version not in ((1, 0), (1, 1)):
        raise GatewayError("HTTP/%d.%d is not supported; use HTTP/1.1" % version, 505,
                           "http_version_not_supported", close=True)
    if len(lines) - 1 > MAX_HEADER_COUNT:
        raise GatewayError("more than %d header lines" % MAX_HEADER_COUNT, 431, "headers_too_large", close=True)
    headers, lengths = {}, []
    for line in lines[1:]:
        match = _HEADER_LINE_RE.match(line)
        if not match:
            raise bad_request("malformed header line", close=True)
        name, value = match.group(1).decode("ascii").lower(), match.group(2).decode("latin-1")
        if name == "content-length":
            lengths.extend(part.strip() for part in value.split(","))
        else:
            headers[name] = headers[name] + ", " + value if name in headers else value
    if "transfer-encoding" in headers:
        raise GatewayError("Transfer-Encoding request bodies are not supported; send Content-Length", 411,
                           "length_required", close=True)
    if lengths and (len(set(lengths)) != 1 or not _CONTENT_LENGTH_RE.match(lengths[0])):
        raise bad_request("invalid Content-Length", close=True)
    if version == (1, 1) and "host" not in headers:
        raise bad_request("HTTP/1.1 requests need a Host header", close=True)
    tokens = {token.strip() for token in headers.get("connection", "").lower().split(",")}
    keep_alive = "close" not in tokens if version == (1, 1) else "keep-alive" in tokens
    if target.startswith(("http://", "https://")):  # absolute-form, which servers must accept
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    path = target.split("?", 1)[0]
    return Request(method, target, path, version, headers, keep_alive, int(lengths[0]) if lengths else 0)


STATIC_ROUTES = {"/health": ("GET",), "/servers": ("GET",), "/rpc": ("POST",)}
MCP_METHODS = ("POST",)


def match_route(path, server_ids):
    """(route name, server_id or None, allowed methods) for a path, or GatewayError 404."""
    if path in STATIC_ROUTES:
        return path[1:], None, STATIC_ROUTES[path]
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "" and parts[2] == "rpc":
        if parts[1] in server_ids:
            return "mcp", parts[1], MCP_METHODS
        raise GatewayError("no server with server_id %r" % parts[1], 404, "unknown_server", server_id=parts[1])
    raise GatewayError("no such path: %s" % path, 404, "not_found")


def parse_json_body(body):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise GatewayError("request body is not valid JSON: %s" % e, 400, "invalid_json", JSONRPC_PARSE_ERROR)


class _HttpDate:
    """The Date header, formatted at most once a second."""
    second, text = 0, ""

    @classmethod
    def get(cls):
        second = int(time.time())
        if second != cls.second:
            cls.text, cls.second = email.utils.formatdate(second, usegmt=True), second
        return cls.text


class Connection(socketserver.BaseRequestHandler):
    """One client connection. Requests are read under deadlines with the strict parser above (http.server's own
    accepts what a gateway must not) and each response leaves in one sendall."""

    def setup(self):
        self.front = self.server.front
        self.sock = self.request
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = self.client_address[0]
        self.allowed = self.front.allowlist.allows(self.client)  # fixed for the connection's life
        self.busy = False  # inside a request (shutdown gives these a grace)
        self.close = False  # the connection ends after the current response
        self._buffer = bytearray()
        self.front.track(self, True)

    def finish(self):
        self.front.track(self, False)

    def handle(self):
        try:
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

    def _read_head(self):
        """The next request's head, None when the client closed or stayed idle; 408 for a slow sender."""
        while self._buffer[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request line
            del self._buffer[:2]
        deadline = None
        while True:
            end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
            if end >= 0:
                head = bytes(self._buffer[:end])
                del self._buffer[:end + 4]
                return head
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
        """Sends a whole response in one write."""
        if not keep_alive:
            self.close = True
        lines = ["HTTP/1.1 %d %s" % (status, http.HTTPStatus(status).phrase), "Server: " + SERVER_HEADER,
                 "Date: " + _HttpDate.get(), "Content-Length: %d" % len(body)]
        if body:
            lines.append("Content-Type: " + content_type)
        lines.extend("%s: %s" % header for header in headers)
        if self.close:
            lines.append("Connection: close")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def send_json(self, status, value, headers=(), keep_alive=True):
        self.send(status, json_bytes(value), "application/json", headers, keep_alive)

    def send_error(self, error):
        """The one error funnel: every GatewayError becomes the gateway's error shape."""
        self.send_json(error.http_status, error.body(), error.headers, keep_alive=not error.close)

    def send_continue(self):
        self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")


class HttpFront:
    """Checks every request in the documented order (client address, bearer token, route and method, body
    limits), runs its endpoint, and writes one access log line."""

    def __init__(self, config, logger, runtimes, router):
        self.config = config
        self.log = logger
        self.runtimes = runtimes  # server_id -> ServerRuntime
        self.router = router
        self.allowlist = Allowlist(config.allowed_clients)
        self.stopping = threading.Event()
        self.started_at = now()
        self._lock = threading.Condition()  # notified when a request ends
        self._connections = set()  # open Connections (self._lock)
        self._endpoints = {("health", "GET"): self.get_health, ("servers", "GET"): self.get_servers,
                           ("rpc", "POST"): self.post_rpc, ("mcp", "POST"): self.post_mcp}

    def track(self, connection, is_open):
        with self._lock:
            (self._connections.add if is_open else self._connections.discard)(connection)

    def connections(self):
        with self._lock:
            return list(self._connections)

    def set_busy(self, connection, busy):
        with self._lock:
            connection.busy = busy
            self._lock.notify_all()

    def wait_idle(self, timeout):
        """Waits until no connection is inside a request, or the timeout."""
        deadline = now() + timeout
        with self._lock:
            while any(conn.busy for conn in self._connections) and now() < deadline:
                self._lock.wait(deadline - now())

    def serve(self, conn, head):
        started = now()
        request, server_id, status = None, None, 0
        try:
            if not conn.allowed:
                raise GatewayError("client address %s is not in allowed_clients" % conn.client, 403,
                                   "forbidden_client", close=True)
            request = parse_head(head)
            if not request.keep_alive:
                conn.close = True
            if not token_matches(request.headers.get("authorization"), self.config.auth_token):
                raise GatewayError("missing or wrong bearer token", 401, "unauthorized",
                                   headers=[("WWW-Authenticate", 'Bearer realm="host-mcp-gateway"')])
            name, server_id, methods = match_route(request.path, self.runtimes)
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
            status = self._endpoints[name, request.method](conn, request, body, server_id)
        except GatewayError as e:
            status = e.http_status
            if e.server_id is None:
                e.server_id = server_id
            if request is not None and request.content_length:
                e.close = True  # its body was never read, so the next request cannot be found
            conn.send_error(e)
        except OSError:
            conn.close = True
            raise
        except Exception as e:
            status = 500
            self.log.error("internal_error", error=repr(e), path=request.path if request else None)
            conn.send_error(GatewayError("internal error: %s" % type(e).__name__, 500, "internal_error",
                                         close=True))
        finally:
            self.log.info("http_request", method=request.method if request else None,
                          path=request.path if request else None, status=status,
                          duration_ms=round((now() - started) * 1000, 3), client=conn.client,
                          server_id=server_id)

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

    def get_servers(self, conn, request, body, server_id):
        conn.send_json(200, {"servers": [runtime.describe() for runtime in self.runtimes.values()]})
        return 200

    def post_rpc(self, conn, request, body, server_id):
        """The original daemon's wrapper: {"server_id", "payload"} in and out; failures in the gateway shape."""
        wrapper = parse_json_body(body)
        if not isinstance(wrapper, dict) or not isinstance(wrapper.get("server_id"), str) or "payload" not in wrapper:
            raise GatewayError('body must be {"server_id": "...", "payload": <JSON-RPC message or batch>}', 400,
                               "invalid_request", JSONRPC_INVALID_REQUEST)
        server_id = wrapper["server_id"]
        runtime = self.runtimes.get(server_id)
        if runtime is None:
            raise GatewayError("no server with server_id %r" % server_id, 404, "unknown_server",
                               server_id=server_id)
        try:
            reply = self.router.dispatch(runtime, wrapper["payload"], self.deadline())
        except GatewayError as e:
            e.server_id = server_id
            if e.request_id is None:
                e.request_id = message_id(wrapper["payload"])
            raise
        if reply is None:
            conn.send(202)
            return 202
        conn.send_json(200, {"server_id": server_id, "payload": reply})
        return 200

    def post_mcp(self, conn, request, body, server_id):
        """POST /{server_id}/rpc: raw JSON-RPC in and out. A failed single request is answered with a JSON-RPC
        error for its id (and the HTTP status of the failure); the gateway's fields are in error.data."""
        payload = parse_json_body(body)
        try:
            reply = self.router.dispatch(self.runtimes[server_id], payload, self.deadline())
        except GatewayError as e:
            request_id = message_id(payload)
            if request_id is None:
                raise
            e.server_id = server_id
            conn.send_json(e.http_status, rpc_error_from(e, request_id))
            return e.http_status
        if reply is None:
            conn.send(202)
            return 202
        conn.send_json(200, reply)
        return 200


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with IPv6, no reverse-DNS lookup at bind, named and owned connection threads."""
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, front):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.front = front
        self.threads = set()  # live connection threads (self._threads_lock); the gateway joins them on stop
        self._threads_lock = threading.Lock()
        super().__init__(address, Connection, bind_and_activate=False)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 too
            except OSError:
                pass
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would resolve the host name: slow, useless here

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name="http-%s:%s" % client_address[:2], daemon=True)
        with self._threads_lock:
            self.threads.add(thread)
        thread.start()

    def _serve_connection(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception as e:
            self.front.log.error("thread_failed", thread=threading.current_thread().name, error=repr(e))
        finally:
            self.shutdown_request(request)
            with self._threads_lock:
                self.threads.discard(threading.current_thread())

    def handle_error(self, request, client_address):
        self.front.log.error("connection_failed", client=client_address[0], error=repr(sys.exc_info()[1]))


# § 11 Gateway --------------------------------------------------------------------------------------------------

class Gateway:
    """Builds and wires everything; stops in reverse order."""

    def __init__(self, config, logger):
        self.config = config
        self.log = logger
        self.router = Router(logger)
        self.runtimes = {spec.server_id: ServerRuntime(spec, config, logger, config.max_message_bytes,
                                                       self.router.on_child_message)
                         for spec in config.servers}
        self.front = HttpFront(config, logger, self.runtimes, self.router)
        self._httpd = None
        self._accept_thread = None

    @property
    def port(self):
        return self._httpd.server_address[1]

    def start(self):
        """Listens, then starts autostart servers. Raises OSError when the address cannot be bound."""
        host, port = self.config.bind_host, self.config.bind_port
        self._httpd = _HTTPServer((host, port), self.front)
        try:
            self._httpd.server_bind()
            self._httpd.server_activate()
        except OSError:
            self._httpd.server_close()
            raise
        self._accept_thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": POLL_S},
                                               name="http-accept", daemon=True)
        self._accept_thread.start()
        self.log.info("listening", host=host, port=self.port, version=VERSION, servers=list(self.runtimes))
        for runtime in self.runtimes.values():
            if runtime.spec.autostart:
                runtime.start()

    def stop(self):
        """Stops accepting, gives requests in flight a short grace, stops every child, closes what is left."""
        self.log.info("stopping")
        self.front.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._accept_thread.join(timeout=POLL_S * 2)
        self._close_connections(idle_only=True)
        self.front.wait_idle(SHUTDOWN_GRACE_S)
        for runtime in self.runtimes.values():
            runtime.request_stop()
        for runtime in self.runtimes.values():
            runtime.join(timeout=CHILD_STOP_GRACE_S * 2 + 1)
        self.front.wait_idle(POLL_S)  # calls failed by the stop above are answered before their sockets close
        self._close_connections(idle_only=False)
        if self._httpd is not None:
            for thread in list(self._httpd.threads):
                thread.join(timeout=POLL_S)
        self.log.info("stopped")

    def _close_connections(self, idle_only):
        for conn in self.front.connections():
            if not (idle_only and conn.busy):
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# § 12 Example MCP server (--example-server) --------------------------------------------------------------------

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


# § 13 CLI ------------------------------------------------------------------------------------------------------

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
    print("wrote %s (mode 0600) with a new token and the example server.\n"
          "Next: add your servers to it, then run: %s %s --check -config %s"
          % (path, sys.executable, os.path.abspath(__file__), path))
    return 0


def check_config(config, warnings):
    errors, notes = check_host(config)
    for line in warnings + notes:
        print("warning: " + line, file=sys.stderr)
    for line in errors:
        print("error: " + line, file=sys.stderr)
    if errors:
        print("(a LaunchAgent starts with PATH=%s, so a command found in your shell may not be found there)"
              % LAUNCHD_PATH, file=sys.stderr)
        return 2
    print("%s: OK, %d server(s): %s" % (config.path, len(config.servers),
                                        ", ".join(spec.server_id for spec in config.servers)))
    return 0


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
        "Stop with Ctrl-C.", ""])


def serve(config, logger, on_listening=None):
    """Runs the gateway until SIGTERM or SIGINT. Returns the exit code."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    gateway = Gateway(config, logger)
    try:
        try:
            gateway.start()
        except OSError as e:
            logger.error("listen_failed", host=config.bind_host, port=config.bind_port, error=str(e))
            print("cannot listen on %s port %d: %s" % (config.bind_host, config.bind_port, e.strerror or e),
                  file=sys.stderr)
            return 1
        if on_listening is not None:
            on_listening(gateway)
        while not stop.wait(POLL_S):
            pass
        gateway.stop()
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_demo(logger):
    raw = starter_config()
    config = validate_config(raw)
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="host_mcp_gateway.py", allow_abbrev=False,
        description="Serve this host's stdio MCP servers to MCP clients over authenticated HTTP.",
        epilog="Exit codes: 0 clean stop, 1 runtime failure, 2 config or usage error.")
    parser.add_argument("-config", "--config", metavar="PATH",
                        help="config file (default %s)" % DEFAULT_CONFIG_PATH)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="validate the config and the host (commands, directories) without serving")
    mode.add_argument("--init", nargs="?", const=DEFAULT_CONFIG_PATH, metavar="PATH",
                      help="write a starter config with a new token (default path %s)" % DEFAULT_CONFIG_PATH)
    mode.add_argument("--demo", action="store_true",
                      help="serve the embedded example server on 127.0.0.1:%d with a new token" % DEFAULT_PORT)
    mode.add_argument("--example-server", action="store_true",
                      help="be the embedded example MCP server on stdin/stdout (what --demo runs)")
    parser.add_argument("--log-level", choices=sorted(Logger.LEVELS, key=Logger.LEVELS.get), default="info")
    parser.add_argument("--version", action="version", version="host-mcp-gateway " + VERSION)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.example_server:
        return run_example_server()
    if args.init:
        return init_config(args.init)
    logger = Logger(level=args.log_level)
    if args.demo:
        return run_demo(logger)
    try:
        config, warnings = load_config(args.config or DEFAULT_CONFIG_PATH)
    except ConfigError as e:
        for message in e.messages:
            print("config error: " + message, file=sys.stderr)
        return 2
    if args.check:
        return check_config(config, warnings)
    for warning in warnings:
        logger.warning("config_warning", message=warning)
    return serve(config, logger)


if __name__ == "__main__":
    sys.exit(main())
