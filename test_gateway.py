"""Tests for host_mcp_gateway.py: standard library only, run with `python3 -m unittest`.

Unit tables exercise the pure parts (config validation, allowlist, token check, HTTP head parsing, JSON-RPC
classification, restart rules). Everything else runs a real gateway process on port 0 with real child
processes (tests/fake_mcp_server.py) and talks to it over real sockets. Waits are on conditions with deadlines.
"""
from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import plistlib
import pty
import resource
import select
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor

import host_mcp_gateway as gw

HERE = os.path.dirname(os.path.abspath(__file__))
GATEWAY = os.path.join(HERE, "host_mcp_gateway.py")
FAKE_SERVER = os.path.join(HERE, "tests", "fake_mcp_server.py")
TOKEN = "test-token-0123456789abcdef0123456789abcdef"
PHONE_TOKEN = "phone-token-0123456789abcdef0123456789abcdef"
TIMEOUT = 10.0  # every blocking call in a test gives up after this, so a failure is quick and clear
# The gateways the tests start keep their state files here, never in the home folder.
os.environ[gw.STATE_DIR_ENV] = tempfile.mkdtemp(prefix="hmg-state-")


def wait_for(predicate, what="a condition", timeout=TIMEOUT):
    """Polls `predicate` until it returns something true, and returns that; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.01)


def process_gone(pid):
    """True once `pid` no longer runs (a zombie counts as gone: it runs nothing)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def fake_server(server_id="fake", *flags, **fields):
    spec = {"server_id": server_id, "command": sys.executable, "args": [FAKE_SERVER] + list(flags),
            "autostart": True}
    spec.update(fields)
    return spec


def base_config(servers, **overrides):
    config = {"bind_host": "127.0.0.1", "bind_port": 0, "auth_token": TOKEN, "allowed_clients": ["localhost"],
              "request_timeout_ms": 5000, "restart_backoff_ms": 0, "servers": servers}
    config.update(overrides)
    return config


def token_config(servers=None, **keys):
    """base_config with the token source given by `keys` instead of auth_token."""
    config = base_config(servers or [fake_server()])
    del config["auth_token"]
    config.update(keys)
    return config


def rpc(method, params=None, request_id=1):
    message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def tool_call(name, request_id=1, **arguments):
    return rpc("tools/call", {"name": name, "arguments": arguments}, request_id)


class GatewayProcess:
    """A real gateway process on port 0, its JSON log lines collected as they arrive."""

    def __init__(self, testcase, config, env=None, tls=None, folder=None):
        self.folder = folder or tempfile.mkdtemp(prefix="hmg-test-")  # the same folder: the same config path
        self.tls = tls  # the client's ssl.SSLContext, for a gateway serving HTTPS
        self.config_path = os.path.join(self.folder, "config.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        os.chmod(self.config_path, 0o600)
        self.logs = []
        self.raw_stderr = []
        self._connections = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, GATEWAY, "-config", self.config_path], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_logs, daemon=True)
        self._reader.start()
        testcase.addCleanup(self.kill)
        listening = self.wait_log(lambda r: r.get("event") == "listening", what="the gateway to listen")
        self.port = listening["port"]

    def _read_logs(self):
        for line in self.proc.stderr:
            text = line.decode("utf-8", "replace")
            with self._cond:
                self.raw_stderr.append(text)
                try:
                    self.logs.append(json.loads(text))
                except ValueError:
                    pass
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_log(self, predicate, timeout=TIMEOUT, what="a log line"):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self.logs:
                    if predicate(record):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError("no log line for %s; stderr:\n%s" % (what, "".join(self.raw_stderr[-30:])))
                self._cond.wait(remaining)

    def connect(self):
        """A new connection, closed with the gateway at the end of the test."""
        if self.tls is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=TIMEOUT, context=self.tls)
        self._connections.append(conn)
        return conn

    def request(self, method, path, body=None, headers=None, token=TOKEN, conn=None):
        """(status, response, decoded JSON body or raw bytes); a connection made here is closed after."""
        own = conn is None
        conn = conn or self.connect()
        all_headers = {"Authorization": "Bearer " + token} if token else {}
        all_headers.update(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            all_headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        if own:
            conn.close()
            self._connections.remove(conn)
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = data
        return response.status, response, decoded

    def call(self, server_id, message, **kwargs):
        status, _, body = self.request("POST", "/%s/rpc" % server_id, json.dumps(message), **kwargs)
        return status, body

    def tool(self, name, server_id="fake", request_id=1, **arguments):
        status, body = self.call(server_id, tool_call(name, request_id, **arguments))
        assert status == 200, (status, body)
        return body["result"]

    def servers(self):
        return {s["server_id"]: s for s in self.request("GET", "/servers")[2]["servers"]}

    def wait_state(self, server_id, state, timeout=TIMEOUT):
        return wait_for(lambda: self.servers()[server_id]["state"] == state and self.servers()[server_id],
                        "server %s to be %s" % (server_id, state), timeout)

    def stop(self, signum=signal.SIGTERM, timeout=TIMEOUT):
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=TIMEOUT)
        return code

    def kill(self):
        for conn in self._connections:
            conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()


def start_in_flight(testcase, gateway, message, server_id="fake"):
    """Sends `message` from a worker thread; returns once the child has received it, as a future of
    (status, reply). A marker notification goes in the same batch just before it, and the child lists it."""
    marker = {"jsonrpc": "2.0", "method": "notifications/marker-%s" % id(message)}
    pool = ThreadPoolExecutor(1)
    testcase.addCleanup(pool.shutdown)

    def call():
        status, replies = gateway.call(server_id, [marker, message])
        return status, replies[0] if isinstance(replies, list) else replies
    future = pool.submit(call)
    wait_for(lambda: any(n["method"] == marker["method"]
                         for n in gateway.tool("received", server_id)["structuredContent"]["notifications"]),
             what="the call to reach the child")
    return future


def raw_exchange(port, data, read_until_close=True):
    """Sends raw bytes and returns what comes back until the server closes (or the first response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def status_of(raw):
    return int(raw.split(b" ", 2)[1])


def body_of(raw):
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def wait_readable(fileobj, timeout=TIMEOUT):
    """Returns once `fileobj` has something to read (or its end); fails the test after `timeout`."""
    poller = select.poll()
    poller.register(fileobj, select.POLLIN)
    if not poller.poll(timeout * 1000):
        raise AssertionError("nothing to read in %.0f s" % timeout)


def run_cli(*args, timeout=TIMEOUT, env=None):
    return subprocess.run([sys.executable, GATEWAY] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=env)


# Unit tables -----------------------------------------------------------------------------------------------------

class ConfigValidationTest(unittest.TestCase):
    def errors_for(self, raw):
        with self.assertRaises(gw.ConfigError) as caught:
            gw.validate_config(raw)
        return caught.exception.messages

    def test_valid_config_gets_documented_defaults(self):
        config = gw.validate_config({"auth_token": TOKEN, "allowed_clients": ["localhost"],
                                     "servers": [{"server_id": "a", "command": "x"}]})
        self.assertEqual((config.bind_host, config.bind_port, config.request_timeout_ms, config.restart_backoff_ms,
                          config.log_level), ("127.0.0.1", 7411, 30000, 2000, "info"))
        spec = config.servers[0]
        self.assertEqual((spec.args, spec.working_dir, spec.env, spec.autostart, spec.restart_policy,
                          spec.startup_timeout_ms), ([], "", {}, False, "on-failure", 0))

    def test_each_problem_is_reported_with_its_path(self):
        good_server = {"server_id": "a", "command": "x"}
        cases = [
            ({"auth_token": None}, "token: no token source; set one of auth_token, auth_token_file, auth_tokens, "
                                   "HOST_MCP_GATEWAY_TOKEN"),
            ({"allowed_clients": None}, "allowed_clients: required"),
            ({"servers": None}, "servers: required"),
            ({"servers": []}, "servers: must be a non-empty list"),
            ({"auth_token": "replace-me-with-a-long-random-string-please"}, "auth_token: still holds the placeholder"),
            ({"auth_token": "short"}, "auth_token: must be at least 32 characters; make one with `openssl rand -hex 32`"),
            ({"auth_token": TOKEN + " "}, "auth_token: has leading or trailing whitespace"),
            ({"auth_token": "\t" + TOKEN}, "auth_token: has leading or trailing whitespace"),
            ({"auth_token": TOKEN + "é"}, "auth_token: must be printable ASCII"),
            ({"auth_token": TOKEN[:20] + "\n" + TOKEN[20:]}, "auth_token: must be printable ASCII"),
            ({"bind_port": 70000}, "bind_port: must be an integer from 0 to 65535"),
            ({"log_level": "verbose"}, "log_level: must be one of debug, info, warning, error"),
            ({"log_level": "INFO"}, "log_level: must be one of debug, info, warning, error"),
            ({"bind_port": True}, "bind_port: must be an integer"),
            ({"request_timeout_ms": 0}, "request_timeout_ms: must be a positive integer"),
            ({"allowed_clients": ["10.0.0.0/8", "not-an-ip"]}, "allowed_clients[1]: 'not-an-ip' is not an IP"),
            ({"allowed_clients": []}, "allowed_clients: must name at least one client"),
            ({"bind_host": "my-mac.local"}, "bind_host: must be an IP address"),
            ({"bind_hots": "x"}, "bind_hots: unknown key; did you mean bind_host?"),
            ({"servers": [good_server, {"server_id": "b", "command": "y", "restart_policy": "sometimes"}]},
             "servers[1].restart_policy: must be one of always, on-failure, never"),
            ({"servers": [{"server_id": "a", "command": "x", "restart_polcy": "never"}]},
             "servers[0].restart_polcy: unknown key; did you mean restart_policy?"),
            ({"servers": [{"server_id": "a"}]}, "servers[0].command: required"),
            ({"servers": [{"command": "x"}]}, "servers[0].server_id: required"),
            ({"servers": [{"server_id": "has space", "command": "x"}]}, "servers[0].server_id: must be letters"),
            ({"servers": [{"server_id": "health", "command": "x"}]}, "servers[0].server_id: 'health' is a name"),
            ({"servers": [good_server, dict(good_server)]}, "servers[1].server_id: duplicate server_id 'a'"),
            ({"servers": [{"server_id": "a", "command": "x", "env": {"A": 1}}]}, "servers[0].env: must be an object"),
            ({"servers": [{"server_id": "a", "command": "x", "args": "-v"}]}, "servers[0].args: must be a list"),
            ({"servers": [{"server_id": "a", "command": "x", "autostart": "yes"}]}, "servers[0].autostart: must be true"),
            ({"servers": ["a"]}, "servers[0]: must be an object"),
            ({"servers": [{"server_id": "a", "command": "x", "isolation": "session", "autostart": True}]},
             'servers[0].autostart: must be false with isolation "session"'),
            ({"servers": [{"server_id": "a", "command": "x", "isolation": "per-user"}]},
             "servers[0].isolation: must be one of shared, session"),
            ({"allowed_origins": ["http://ok:1", "https://x.example/path"]},
             "allowed_origins: each entry must be an origin"),
            ({"servers": [{"server_id": ["a"], "command": "x"}]}, "servers[0].server_id: must be a string"),
            ({"allowed_clients": ["localhost", 7]}, "allowed_clients: must be a list of strings"),
        ]
        for overrides, expected in cases:
            raw = {"auth_token": TOKEN, "allowed_clients": ["localhost"], "servers": [good_server]}
            raw.update(overrides)
            for key in [key for key, value in overrides.items() if value is None]:
                del raw[key]  # None in the table means: leave the key out
            with self.subTest(expected=expected):
                messages = self.errors_for(raw)
                self.assertTrue(any(m.startswith(expected) for m in messages), messages)

    def test_unknown_keys_get_the_key_they_likely_mean(self):
        top, server = (gw.CONFIG_FIELDS, gw.CONFIG_ALIASES), (gw.SERVER_FIELDS, gw.SERVER_ALIASES)
        cases = [
            (top, "allowed_ips", "did you mean allowed_clients?"),
            (top, "allowed_hosts", "did you mean allowed_clients?"),
            (top, "bind_adress", "did you mean bind_host?"), (top, "bind_hots", "did you mean bind_host?"),
            (top, "port", "did you mean bind_port?"), (top, "tokn", "did you mean auth_token?"),
            (top, "allowedClients", "did you mean allowed_clients?"), (top, "zzz", "known keys: bind_host, bind_port"),
            (server, "cwd", "did you mean working_dir?"), (server, "environment", "did you mean env?"),
            (server, "enviroment", "did you mean env?"), (server, "restart_polcy", "did you mean restart_policy?"),
            (server, "comand", "did you mean command?"), (server, "name", "did you mean server_id?"),
        ]
        for (fields, aliases), key, expected in cases:
            with self.subTest(key=key):
                self.assertTrue(gw.unknown_key_hint(key, fields, aliases).startswith(expected))

    def test_an_mcp_client_config_is_explained(self):
        command = {"command": "npx", "args": ["-y", "x"]}
        for raw, where in [({"mcpServers": {"files": command}}, "mcpServers: unknown key; "),
                           ({"mcp_servers": {"files": command}}, "mcp_servers: unknown key; "),
                           ({"servers": {"files": command}}, "servers: must be a list, not an object keyed by name; ")]:
            with self.subTest(raw=raw):
                messages = self.errors_for(dict(raw, auth_token=TOKEN, allowed_clients=["localhost"]))
                explained = [m for m in messages if m.startswith(where)]
                self.assertEqual(len(explained), 1, messages)
                for phrase in ("MCP clients", '"servers", a list of objects', '"server_id": "files"', '"command"',
                               '"args"', '"env"'):
                    self.assertIn(phrase, explained[0])

    def test_every_error_is_reported_at_once(self):
        messages = self.errors_for({"auth_token": "short", "bind_port": -1, "allowed_clients": ["x"],
                                    "servers": [{"server_id": "rpc"}]})
        self.assertEqual(len(messages), 5, messages)

    def test_not_an_object(self):
        self.assertEqual(self.errors_for([]), ["config: must be a JSON object"])

    def test_invalid_json_names_line_and_column(self):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "c.json")
            with open(path, "w") as f:
                f.write('{\n  "auth_token": "x",\n  oops\n}')
            with self.assertRaises(gw.ConfigError) as caught:
                gw.load_config(path)
            self.assertIn("invalid JSON at line 3, column 3", caught.exception.messages[0])
            with open(path, "w") as f:
                f.write('{\n  "auth_token": "x",\n}')
            with self.assertRaises(gw.ConfigError) as caught:
                gw.load_config(path)
            self.assertIn("(JSON allows no comma after the last item: remove it)", caught.exception.messages[0])

    def test_json_slips_are_named(self):
        comment, comma = "(JSON allows no comments: remove it)", "(JSON allows no comma after the last item: remove it)"
        cases = [('{"a": 1,}', comma), ('{"a": [1, 2,\n  ]}', comma), ('{"a": [1, 2] ,\n}', comma),
                 ('{\n  // note\n  "a": 1}', comment), ('{"a": 1 /* note */}', comment), ('{"a": # note\n 1}', comment),
                 ('{"a": 1 "b": 2}', None), ('{"a": x}', None), ('{"a": [1,, 2]}', None)]
        for text, hint in cases:  # the messages before the hint differ between Python versions
            with self.subTest(text=text):
                with self.assertRaises(json.JSONDecodeError) as caught:
                    json.loads(text)
                error = caught.exception
                described = gw.describe_json_error(error)
                self.assertTrue(described.startswith("invalid JSON at line %d, column %d: %s"
                                                     % (error.lineno, error.colno, error.msg)), described)
                self.assertTrue(described.endswith(hint or error.msg), described)

    def test_readable_config_file_is_warned_about(self):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "c.json")
            with open(path, "w") as f:
                json.dump(base_config([{"server_id": "a", "command": "x"}]), f)
            os.chmod(path, 0o644)
            _, warnings = gw.load_config(path)
            self.assertTrue(warnings and "chmod 600" in warnings[0], warnings)
            os.chmod(path, 0o600)
            self.assertEqual(gw.load_config(path)[1], [])


class AllowlistTest(unittest.TestCase):
    def test_table(self):
        cases = [
            (["localhost"], "127.0.0.1", True), (["localhost"], "127.8.9.10", True), (["localhost"], "::1", True),
            (["localhost"], "::ffff:127.0.0.1", True), (["localhost"], "10.0.0.1", False),
            (["localhost"], "::ffff:10.0.0.1", False), (["10.0.0.0/8"], "10.1.2.3", True),
            (["10.0.0.0/8"], "::ffff:10.1.2.3", True), (["10.0.0.0/8"], "11.0.0.1", False),
            (["192.168.1.7"], "192.168.1.7", True), (["192.168.1.7"], "192.168.1.8", False),
            (["fd00::/8"], "fd12::1", True), (["fd00::/8"], "fe80::1", False), (["fe80::/10"], "fe80::1%eth0", True),
            (["LOCALHOST"], "127.0.0.1", True), ([], "127.0.0.1", False), (["localhost"], "garbage", False),
            # IPv4-mapped entries stand for their IPv4 form, as IPv4 clients are compared as IPv4
            (["::ffff:127.0.0.1"], "127.0.0.1", True), (["::ffff:127.0.0.1"], "::ffff:127.0.0.1", True),
            (["::ffff:127.0.0.1"], "127.0.0.2", False), (["::ffff:0:0/96"], "10.1.2.3", True),
            (["::ffff:0:0/96"], "::1", False), (["::ffff:10.0.0.0/104"], "::ffff:10.200.0.1", True),
            (["::ffff:10.0.0.0/104"], "11.0.0.1", False), (["::ffff:0:0/95"], "10.1.2.3", False),
        ]
        for entries, address, allowed in cases:
            with self.subTest(entries=entries, address=address):
                self.assertEqual(gw.Allowlist(entries).allows(address), allowed)

    def test_entry_problems(self):
        for entry, ok in [("localhost", True), ("10.0.0.0/8", True), ("::1", True), ("10.0.0.1/33", False),
                          ("example.com", False), ("", False), ("::ffff:127.0.0.1", True), ("::ffff:0:0/96", True),
                          ("::ffff:10.0.0.0/104", True), ("::ffff:10.0.0.1/129", False)]:
            with self.subTest(entry=entry):
                self.assertEqual(gw.Allowlist.entry_problem(entry) is None, ok)


class TokenTest(unittest.TestCase):
    def test_each_request_is_named_by_the_token_it_carries(self):
        tokens = [("laptop", TOKEN), ("phone", PHONE_TOKEN)]
        for header, name in [("Bearer " + TOKEN, "laptop"), ("Bearer " + PHONE_TOKEN, "phone"),
                             ("Bearer " + TOKEN[:-1], None), (None, None)]:
            with self.subTest(header=header):
                self.assertEqual(gw.token_name(header, tokens), name)

    def test_sources(self):
        folder = tempfile.mkdtemp(prefix="hmg-token-")
        files = {"private": (TOKEN + "\n", 0o600), "shared": (TOKEN, 0o640), "crlf": (TOKEN + "\r\n", 0o600),
                 "short": ("abc\n", 0o600), "spaced": (" " + TOKEN, 0o600)}
        for name, (text, mode) in files.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(folder, name), mode)
        named = [{"name": "laptop", "token": TOKEN}, {"name": "phone", "token": PHONE_TOKEN}]
        env = {gw.TOKEN_ENV: TOKEN}
        ok = [({"auth_token": TOKEN}, {}, "auth_token", ["default"]),
              ({"auth_token_file": "private"}, {}, "auth_token_file", ["default"]),
              ({"auth_token_file": os.path.join(folder, "crlf")}, {}, "auth_token_file", ["default"]),
              ({"auth_tokens": named}, {}, "auth_tokens", ["laptop", "phone"]),
              ({}, env, gw.TOKEN_ENV, ["default"])]
        for keys, environ, source, names in ok:
            with self.subTest(keys=keys, environ=environ):
                config = gw.validate_config(token_config(**keys),
                                            os.path.join(folder, "config.json"), environ)
                self.assertEqual((config.token_source, config.token_names), (source, names))
                self.assertIn(TOKEN, [token for _, token in config.tokens])
        bad = [({"auth_token": TOKEN}, env, "token: auth_token and HOST_MCP_GATEWAY_TOKEN each give a token; "
                                            "keep exactly one"),
               ({"auth_token": TOKEN, "auth_tokens": named}, {}, "token: auth_token and auth_tokens each give"),
               ({}, {}, "token: no token source; set one of auth_token, auth_token_file, auth_tokens, "
                        "HOST_MCP_GATEWAY_TOKEN"),
               ({"auth_token_file": "shared"}, {}, "auth_token_file: %s is readable by other users; run: chmod 600 %s"
                % ((os.path.join(folder, "shared"),) * 2)),
               ({"auth_token_file": "missing"}, {}, "auth_token_file: cannot read %s: No such file" % os.path.join(
                   folder, "missing")),
               ({"auth_token_file": "short"}, {}, "auth_token_file: %s must be at least 32 characters" % os.path.join(
                   folder, "short")),
               ({"auth_token_file": "spaced"}, {}, "auth_token_file: %s has leading or trailing whitespace"
                % os.path.join(folder, "spaced")),
               ({"auth_token_file": ""}, {}, "auth_token_file: must be a non-empty string"),
               ({}, {gw.TOKEN_ENV: "short"}, "HOST_MCP_GATEWAY_TOKEN: must be at least 32 characters"),
               ({"auth_tokens": []}, {}, "auth_tokens: must be a non-empty list"),
               ({"auth_tokens": [{"name": "a", "token": TOKEN, "extra": 1}]}, {}, 'auth_tokens[0]: must be an object '
                                                                                 'with exactly "name" and "token"'),
               ({"auth_tokens": [{"name": "a b", "token": TOKEN}]}, {}, "auth_tokens[0].name: must be 1 to 64"),
               ({"auth_tokens": [named[0], dict(named[1], name="laptop")]}, {}, "auth_tokens[1].name: duplicate "
                                                                                "name 'laptop'"),
               ({"auth_tokens": [named[0], dict(named[1], token=TOKEN)]}, {}, "auth_tokens[1].token: the same token"),
               ({"auth_tokens": [dict(named[0], token="replace-me" * 4)]}, {}, "auth_tokens[0].token: still holds "
                                                                              "the placeholder")]
        for keys, environ, expected in bad:
            with self.subTest(keys=keys, environ=environ):
                with self.assertRaises(gw.ConfigError) as caught:
                    gw.validate_config(token_config(**keys),
                                       os.path.join(folder, "config.json"), environ)
                self.assertTrue(any(m.startswith(expected) for m in caught.exception.messages),
                                caught.exception.messages)

    def test_table(self):
        cases = [("Bearer " + TOKEN, True), ("bearer " + TOKEN, True), ("Bearer  " + TOKEN, True),
                 ("Bearer " + TOKEN + "x", False), ("Bearer " + TOKEN[:-1], False), ("Basic " + TOKEN, False),
                 (TOKEN, False), ("", False), (None, False), ("Bearer", False), ("Bearer é", False)]
        for header, ok in cases:
            with self.subTest(header=header):
                self.assertEqual(gw.token_matches(header, TOKEN), ok)


class ParseHeadTest(unittest.TestCase):
    def test_valid_heads(self):
        request = gw.parse_head(b"POST /fake/rpc?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n"
                                b"X-A: 1\r\nx-a: 2\r\nConnection: keep-alive")
        self.assertEqual((request.method, request.path, request.version, request.content_length, request.keep_alive),
                         ("POST", "/fake/rpc", (1, 1), 12, True))
        self.assertEqual(request.headers["x-a"], "1, 2")
        self.assertFalse(gw.parse_head(b"GET / HTTP/1.0").keep_alive)
        self.assertTrue(gw.parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive").keep_alive)
        self.assertFalse(gw.parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close").keep_alive)
        self.assertEqual(gw.parse_head(b"GET http://h:1/health?a HTTP/1.1\r\nHost: h").path, "/health")
        self.assertEqual(gw.parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5").content_length, 5)

    def test_invalid_heads(self):
        cases = [
            (b"GET /\r\nHost: h", 400), (b"GET  / HTTP/1.1\r\nHost: h", 400), (b"G(T / HTTP/1.1\r\nHost: h", 400),
            (b"GET / HTTP/2.0\r\nHost: h", 505), (b"GET / HTTP/1.1", 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x", 400), (b"GET / HTTP/1.1\r\nHost : h", 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\n folded", 400), (b"GET / HTTP/1.1\r\nHost: h\r\nNoColon", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1_0", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked", 411),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", 411),
            (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 101, 431),
        ]
        for head, status in cases:
            with self.subTest(head=head[:60]):
                with self.assertRaises(gw.GatewayError) as caught:
                    gw.parse_head(head)
                self.assertEqual(caught.exception.http_status, status)
                self.assertTrue(caught.exception.close)


class JsonRpcTest(unittest.TestCase):
    def test_classify(self):
        cases = [
            ({"jsonrpc": "2.0", "id": 1, "method": "x"}, gw.REQUEST),
            ({"jsonrpc": "2.0", "id": "a", "method": "x", "params": {}}, gw.REQUEST),
            ({"jsonrpc": "2.0", "id": 1.5, "method": "x"}, gw.REQUEST),
            ({"jsonrpc": "2.0", "method": "x"}, gw.NOTIFICATION),
            ({"jsonrpc": "2.0", "id": 1, "result": {}}, gw.RESPONSE),
            ({"jsonrpc": "2.0", "id": None, "error": {"code": 1, "message": "m"}}, gw.RESPONSE),
            ({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}, gw.INVALID),
            ({"jsonrpc": "1.0", "id": 1, "method": "x"}, gw.INVALID),
            ({"id": 1, "method": "x"}, gw.INVALID),
            ({"jsonrpc": "2.0", "id": 1, "method": 5}, gw.INVALID),
            ({"jsonrpc": "2.0", "id": None, "method": "x"}, gw.INVALID),
            ({"jsonrpc": "2.0", "id": True, "method": "x"}, gw.INVALID),
            ({"jsonrpc": "2.0", "id": [1], "method": "x"}, gw.INVALID),
            ({"jsonrpc": "2.0", "id": 1, "method": "x", "params": "p"}, gw.INVALID),
            ({"jsonrpc": "2.0"}, gw.INVALID), ([], gw.INVALID), ("x", gw.INVALID), (None, gw.INVALID),
        ]
        for message, kind in cases:
            with self.subTest(message=message):
                self.assertEqual(gw.classify(message)[0], kind)

    def test_protocol_negotiation(self):
        cases = [("2025-06-18", None, "2025-06-18"), ("2024-11-05", None, "2024-11-05"),
                 ("2099-01-01", None, "2025-11-25"), (None, None, "2025-11-25"),
                 ("2025-11-25", "2025-06-18", "2025-06-18"), ("2025-03-26", "2025-06-18", "2025-03-26"),
                 ("2025-11-25", "2025-11-25", "2025-11-25"), ("2025-06-18", "1.0", "2025-06-18"),
                 ("2099-01-01", "2025-03-26", "2025-03-26")]
        for requested, child_version, answered in cases:
            with self.subTest(requested=requested, child_version=child_version):
                self.assertEqual(gw.negotiate_protocol_version(requested, child_version), answered)

    def test_example_server_replies(self):
        cases = [
            (rpc("initialize", {"protocolVersion": "2025-06-18"}), lambda r: r["result"]["protocolVersion"] == "2025-06-18"),
            (rpc("tools/list"), lambda r: [t["name"] for t in r["result"]["tools"]] == ["echo", "host_info", "now"]),
            (tool_call("echo", text="hi"), lambda r: r["result"]["structuredContent"] == {"text": "hi"}),
            (tool_call("echo"), lambda r: r["result"]["isError"] is True),
            (tool_call("host_info"), lambda r: r["result"]["structuredContent"]["python"]),
            (tool_call("now"), lambda r: r["result"]["structuredContent"]["utc"].endswith("Z")),
            (tool_call("nope"), lambda r: r["error"]["code"] == -32602),
            (rpc("nope/nope"), lambda r: r["error"]["code"] == -32601),
        ]
        for message, check in cases:
            with self.subTest(message=message):
                self.assertTrue(check(gw.example_reply(message)))


class RestartRuleTest(unittest.TestCase):
    def test_should_restart(self):
        cases = [("always", 0, True, True), ("always", 1, True, True), ("always", None, False, True),
                 ("never", 1, True, False), ("never", -9, False, False),
                 ("on-failure", 0, True, False), ("on-failure", 3, True, True), ("on-failure", -9, True, True),
                 ("on-failure", None, False, True), ("on-failure", 0, False, True)]
        for policy, returncode, reached_ready, expected in cases:
            with self.subTest(policy=policy, returncode=returncode, reached_ready=reached_ready):
                self.assertEqual(gw.should_restart(policy, returncode, reached_ready), expected)

    def test_backoff_doubles_up_to_the_cap(self):
        for base, failures, delay in [(2.0, 0, 0.0), (2.0, 1, 2.0), (2.0, 2, 4.0), (2.0, 5, 32.0), (2.0, 6, 60.0),
                                      (2.0, 50, 60.0), (0.0, 1, 0.0), (0.0, 2, 0.1), (0.0, 7, 0.1)]:
            with self.subTest(base=base, failures=failures):
                self.assertEqual(gw.backoff_delay(base, failures), delay)


class RouteTest(unittest.TestCase):
    def test_table(self):
        ids = {"fake", "a.b-c_d"}
        for path, expected in [("/health", ("health", None)), ("/servers", ("servers", None)), ("/rpc", ("rpc", None)),
                               ("/fake/rpc", ("mcp", "fake")), ("/a.b-c_d/rpc", ("mcp", "a.b-c_d")), ("/", ("", None))]:
            with self.subTest(path=path):
                self.assertEqual(gw.match_route(path, ids)[:2], expected)
        for path, code in [("//", "not_found"), ("//health", "not_found"), ("/health/", "not_found"),
                           ("/fake/rpc/x", "not_found"), ("/nope/rpc", "server_not_found"), ("/fake", "not_found")]:
            with self.subTest(path=path):
                with self.assertRaises(gw.GatewayError) as caught:
                    gw.match_route(path, ids)
                self.assertEqual((caught.exception.http_status, caught.exception.error_code), (404, code))


# The command line ------------------------------------------------------------------------------------------------

class CliTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="hmg-cli-")

    def write_config(self, config, mode=0o600):
        path = os.path.join(self.folder, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        os.chmod(path, mode)
        return path

    def test_version_and_help(self):
        self.assertEqual(run_cli("--version").stdout.strip(), "host-mcp-gateway " + gw.VERSION)
        help_text = run_cli("--help").stdout
        for option in ("-config", "--check", "--init", "--demo", "--version"):
            self.assertIn(option, help_text)

    def test_usage_error_exits_2(self):
        self.assertEqual(run_cli("--no-such-flag").returncode, 2)

    def test_invalid_config_lists_every_error_and_exits_2(self):
        path = self.write_config({"auth_token": "replace-me", "allowed_clients": ["nope"],
                                  "servers": [{"server_id": "a", "command": "x", "restart_polcy": "never"}]})
        for flag in ("-config", "--config"):
            result = run_cli(flag, path)
            self.assertEqual(result.returncode, 2)
            self.assertIn("auth_token: still holds the placeholder", result.stderr)
            self.assertIn("allowed_clients[0]: 'nope' is not an IP address", result.stderr)
            self.assertIn("servers[0].restart_polcy: unknown key; did you mean restart_policy?", result.stderr)

    def test_check_resolves_commands_like_the_child_will(self):
        path = self.write_config(base_config([
            fake_server("ok"),
            {"server_id": "missing", "command": "no-such-command-hmg", "env": {"PATH": "/nonexistent/bin"}},
            {"server_id": "missing2", "command": "no-such-command-hmg"},
            {"server_id": "nodir", "command": sys.executable, "working_dir": "/nonexistent/dir"},
            {"server_id": "notexec", "command": FAKE_SERVER},
        ]))
        result = run_cli("--check", "-config", path)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("servers[1].command: 'no-such-command-hmg' not found on the server's env.PATH "
                      "(/nonexistent/bin)", result.stderr)
        self.assertIn("servers[2].command: 'no-such-command-hmg' not found on the gateway's PATH", result.stderr)
        self.assertIn("servers[3].working_dir: /nonexistent/dir does not exist", result.stderr)
        self.assertIn("servers[4].command: %s is not an executable file" % FAKE_SERVER, result.stderr)
        self.assertIn("LaunchAgent starts with PATH=/usr/bin:/bin:/usr/sbin:/sbin", result.stderr)
        self.assertNotIn("servers[0]", result.stderr.replace("servers[0].command: found", ""))

    def test_check_says_which_file_is_missing(self):
        env = dict(os.environ, HOME=self.folder)
        uvx = os.path.join(self.folder, "bin", "uvx")
        paths = fake_server("paths", "/nonexistent/hmg/Documents", "~/nowhere", "--root=/nonexistent", "relative/x", "~")
        path = self.write_config(base_config([{"server_id": "uvx", "command": uvx}, paths]))
        result = run_cli("--check", "-config", path, env=env)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("error: servers[0].command: %s does not exist; `command -v uvx` in a shell where it works shows "
                      "its path" % uvx, result.stderr)
        self.assertNotIn("LaunchAgent", result.stderr)  # launchd's PATH has nothing to do with an absolute path
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: servers[1].")]
        self.assertEqual(warnings, ["warning: servers[1].args[1]: /nonexistent/hmg/Documents does not exist",
                                    "warning: servers[1].args[2]: ~/nowhere does not exist"])
        path = self.write_config(base_config([paths]))
        result = run_cli("--check", "-config", path, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)  # a server may create the paths it is given
        self.assertIn("warning: servers[0].args[1]: /nonexistent/hmg/Documents does not exist", result.stderr)

    def test_check_passes_a_good_config_and_warns_about_permissions(self):
        path = self.write_config(base_config([fake_server("ok")]), mode=0o644)
        result = run_cli("--check", "-config", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("OK, 1 server(s): ok", result.stdout)
        self.assertIn("chmod 600", result.stderr)

    def test_a_token_file_others_can_read_is_refused_with_the_fix(self):
        token_file = os.path.join(self.folder, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(token_file, 0o644)
        path = self.write_config(token_config(auth_token_file=token_file))
        for args in (["--check", "-config", path], ["-config", path]):
            with self.subTest(args=args):
                result = run_cli(*args)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn("chmod 600 " + token_file, result.stderr)
        os.chmod(token_file, 0o600)
        result = run_cli("--check", "-config", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("token from auth_token_file (default)", result.stdout)

    def test_check_notes_commands_a_launch_agent_would_not_find(self):
        folder = os.path.join(self.folder, "bin")
        os.mkdir(folder)
        tool = os.path.join(folder, "hmg-tool")
        with open(tool, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(tool, 0o755)
        path = self.write_config(base_config([{"server_id": "t", "command": "hmg-tool"}]))
        env = dict(os.environ, PATH=folder + os.pathsep + os.environ.get("PATH", ""))
        result = run_cli("--check", "-config", path, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("found at %s, but a LaunchAgent starts with PATH=" % tool, result.stderr)

    def test_init_writes_a_private_working_config_and_never_overwrites(self):
        path = os.path.join(self.folder, "sub", "config.json")
        result = run_cli("--init", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            config = json.load(f)
        self.assertEqual(len(config["auth_token"]), 64)
        self.assertEqual(config["servers"][0]["args"], [GATEWAY, "--example-server"])
        self.assertIn("--client-config CLIENT -config %s prints what to add" % path, result.stdout)
        checked = run_cli("--check", "-config", path)
        self.assertEqual(checked.returncode, 0)
        self.assertNotIn("LaunchAgent", checked.stderr)  # an absolute command needs no PATH
        again = run_cli("--init", path)
        self.assertEqual(again.returncode, 2)
        self.assertIn("already exists", again.stderr)
        with open(path) as f:
            self.assertEqual(json.load(f)["auth_token"], config["auth_token"])

    def test_init_writes_where_config_points_and_refuses_an_empty_path(self):
        env = dict(os.environ, HOME=self.folder)  # the default path, if anything wrongly wrote there
        a, b, c, d, e, f = (os.path.join(self.folder, name + ".json") for name in "abcdef")
        for args, written in [(["--init", "-config", a], a), (["-config", b, "--init"], b), (["--init", c], c),
                              (["--init", d, "-config", d], d)]:
            with self.subTest(args=args):
                result = run_cli(*args, env=env)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertIn("wrote " + written, result.stdout)
        for args, complaint in [(["--init", e, "-config", f], "name two files"),
                                (["--init", ""], "--init: must not be empty"),
                                (["-config", ""], "-config/--config: must not be empty"),
                                (["--check", "-config", " "], "-config/--config: must not be empty")]:
            with self.subTest(args=args):
                result = run_cli(*args, env=env)
                self.assertEqual(result.returncode, 2)
                self.assertIn(complaint, result.stderr)
                self.assertIn("usage:", result.stderr)
        self.assertEqual(sorted(os.listdir(self.folder)), ["a.json", "b.json", "c.json", "d.json"])

    def served_events(self, config, *args):
        """The events a gateway started with `config` and `args` logs while it answers two requests and stops."""
        with socket.socket() as probe:  # the port is chosen here: above info level the gateway does not log it
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        path = self.write_config(dict(config, bind_port=port), mode=0o644)  # 0644: a config_warning, at warning
        proc = subprocess.Popen([sys.executable, GATEWAY, "-config", path] + list(args), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        self.addCleanup(conn.close)

        def health():
            try:
                conn.request("GET", "/health", headers={"Authorization": "Bearer " + TOKEN})
                response = conn.getresponse()
                response.read()
                return response.status
            except OSError:
                conn.close()
                return None
        wait_for(health, what="the gateway to answer")
        health()  # on the same connection, so the first request is over and its line logged
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=TIMEOUT)
        return [json.loads(line)["event"] for line in stderr.splitlines()]

    def test_launch_agent_is_refused_off_macos(self):
        if sys.platform == "darwin":
            self.skipTest("this is macOS")
        env = dict(os.environ, HOME=self.folder)
        path = self.write_config(base_config([fake_server()]))
        for args in (["--install-agent", "-config", path], ["--uninstall-agent"]):
            with self.subTest(args=args):
                result = run_cli(*args, env=env)
                self.assertEqual(result.returncode, 2)
                self.assertIn("manages a macOS LaunchAgent; this is %s: nothing was written" % sys.platform,
                              result.stderr)
        self.assertEqual(os.listdir(self.folder), ["config.json"])

    def test_launch_agent_install_and_uninstall(self):
        """As on macOS: sys.platform says darwin and a launchctl on PATH records what it is asked."""
        home, bin_folder = os.path.join(self.folder, "home"), os.path.join(self.folder, "bin")
        os.makedirs(bin_folder)
        calls = os.path.join(self.folder, "launchctl.calls")
        with open(os.path.join(bin_folder, "launchctl"), "w") as f:
            f.write('#!/bin/sh\necho "$@" >> %s\n' % calls)
        os.chmod(os.path.join(bin_folder, "launchctl"), 0o755)
        env = dict(os.environ, HOME=home, PATH=bin_folder + os.pathsep + os.environ["PATH"])
        as_macos = "import sys, host_mcp_gateway as g; sys.platform = 'darwin'; sys.exit(g.main(sys.argv[1:]))"
        broken = self.write_config(base_config([{"server_id": "x", "command": "/nonexistent/x"}]))
        result = subprocess.run([sys.executable, "-c", as_macos, "--install-agent", "-config", broken], cwd=HERE,
                                env=env, capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(result.returncode, 2)
        self.assertIn("not installed: fix the errors above", result.stderr)
        self.assertFalse(os.path.exists(home))
        path = self.write_config(base_config([fake_server()]))
        result = subprocess.run([sys.executable, "-c", as_macos, "--install-agent", "-config", path], cwd=HERE,
                                env=env, capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(result.returncode, 0, result.stderr)
        service = "gui/%d/%s" % (os.getuid(), gw.AGENT_LABEL)
        self.assertIn("launchctl print " + service, result.stdout)
        plist = os.path.join(home, "Library", "LaunchAgents", gw.AGENT_LABEL + ".plist")
        with open(plist, "rb") as f:
            self.assertEqual(plistlib.load(f), gw.launch_agent(sys.executable, GATEWAY, path, home))
        self.assertTrue(os.path.isdir(os.path.join(home, "Library", "Logs", "host-mcp-gateway")))
        result = subprocess.run([sys.executable, "-c", as_macos, "--uninstall-agent"], cwd=HERE, env=env,
                                capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(os.path.exists(plist))
        with open(calls) as f:
            self.assertEqual(f.read().splitlines(), ["bootout " + service, "bootstrap gui/%d %s" % (os.getuid(), plist),
                                                     "bootout " + service])

    def test_log_level_from_config_and_command_line(self):
        config = base_config([fake_server(autostart=False)], log_level="warning")
        events = self.served_events(config)
        self.assertIn("config_warning", events)
        self.assertNotIn("http_request", events)
        self.assertNotIn("listening", events)
        events = self.served_events(config, "--log-level", "debug")
        self.assertIn("http_request", events)
        self.assertIn("listening", events)
        self.assertIn("http_request", self.served_events(dict(config, log_level="info")))

    def test_port_in_use_exits_1_naming_the_address(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            path = self.write_config(base_config([fake_server()], bind_port=port))
            result = run_cli("-config", path)
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot listen on 127.0.0.1 port %d" % port, result.stderr)

    def test_example_server_speaks_stdio(self):
        lines = [rpc("initialize", {"protocolVersion": "2025-06-18"}), {"jsonrpc": "2.0", "method": "x"},
                 tool_call("echo", 2, text="hello")]
        result = subprocess.run([sys.executable, GATEWAY, "--example-server"], capture_output=True, timeout=TIMEOUT,
                                input="\n".join(json.dumps(line) for line in lines).encode() + b"\nnot json\n")
        replies = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertEqual([reply["id"] for reply in replies], [1, 2])
        self.assertEqual(replies[1]["result"]["structuredContent"], {"text": "hello"})

    def test_demo_serves_the_example_with_a_fresh_token(self):
        proc = subprocess.Popen([sys.executable, GATEWAY, "--demo"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if line.startswith("Stop with"):
                break
        text = "".join(banner)
        token = text.split("TOKEN=", 1)[1].split()[0]
        self.assertIn("/#token=%s (with a config of your own, --client-config CLIENT prints what to add)" % token, text)
        port = int(text.split("http://127.0.0.1:", 1)[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        self.addCleanup(conn.close)
        payload = json.dumps(tool_call("echo", 1, text="demo"))

        def echo():
            conn.request("POST", "/example/rpc", payload, {"Authorization": "Bearer " + token})
            response = conn.getresponse()
            return response.status == 200 and json.loads(response.read())
        reply = wait_for(echo, what="the demo's example server")
        self.assertEqual(reply["result"]["structuredContent"], {"text": "demo"})
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(timeout=TIMEOUT), 0)
        proc.stdout.close()


class JsoncTest(unittest.TestCase):
    def test_comments_and_trailing_commas_go_strings_stay(self):
        table = [
            ('{"a": 1}', '{"a": 1}'),
            ('{"a": 1, // note\n"b": 2}', '{"a": 1, \n"b": 2}'),
            ('{"a": /* x\ny */ 1}', '{"a": \n 1}'),
            ('{"a": [1, 2,], "b": {"c": 3,},}', '{"a": [1, 2], "b": {"c": 3}}'),
            ('{"a": [1, // last\n]}', '{"a": [1 \n]}'),
            ('{"url": "http://x/y", "c": "/* not */", "d": ",}"}', '{"url": "http://x/y", "c": "/* not */", "d": ",}"}'),
            ('{"q": "a\\"//b", "r": 1}', '{"q": "a\\"//b", "r": 1}'),
            ('{"s": "\\\\"// c\n}', '{"s": "\\\\"\n}'),
        ]
        for text, expected in table:
            with self.subTest(text=text):
                self.assertEqual(gw.strip_jsonc(text), expected)
                json.loads(gw.strip_jsonc(text))


class ClientImportTest(unittest.TestCase):
    def setUp(self):
        folder = tempfile.mkdtemp(prefix="hmg-import-")
        self.addCleanup(shutil.rmtree, folder, True)
        self.bin = os.path.join(folder, "bin")
        os.mkdir(self.bin)
        self.tool = os.path.join(self.bin, "hmg-tool")
        with open(self.tool, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(self.tool, 0o755)

    def test_url_safe_ids(self):
        for name, expected in [("files", "files"), ("my server", "my-server"), ("a/b:c", "a-b-c"),
                               ("Ünïcode", "n-code"), ("...", "server"), ("-x-", "x"), ("v1.2_ok", "v1.2_ok")]:
            with self.subTest(name=name):
                self.assertEqual(gw.url_safe_id(name), expected)
                self.assertTrue(gw.SERVER_ID_RE.match(gw.url_safe_id(name)))

    def test_each_client_format_names_its_servers(self):
        entry = {"command": "x"}
        for raw, found in [({"mcpServers": {"a": entry}}, {"a": entry}), ({"servers": {"b": entry}, "inputs": []},
                           {"b": entry}), ({"mcp": {"servers": {"c": entry}}}, {"c": entry}),
                           ({"servers": [entry]}, None), ([], None), ({"other": 1}, None)]:
            with self.subTest(raw=raw):
                self.assertEqual(gw.client_servers(raw), found)

    def test_ids_collisions_remote_and_existing(self):
        entries = {"my server": {"command": self.tool}, "my-server": {"command": self.tool},
                   "health": {"command": self.tool}, "kept": {"command": self.tool},
                   "web": {"url": "https://example.com/mcp"}, "sse": {"type": "sse", "command": "x"},
                   "wind": {"serverUrl": "https://example.com/mcp"}, "none": {"args": []}, "bad": {"command": "x", "args": "y"},
                   "odd": "not an object"}
        servers, report, _ = gw.import_client_servers(entries, existing_ids={"kept"})
        self.assertEqual([s["server_id"] for s in servers], ["my-server", "my-server-2", "health-2"])
        self.assertEqual(report, [
            "added my server as my-server (names in URLs are letters, digits, '.', '_', '-'): " + self.tool,
            "added my-server as my-server-2 (my-server is taken by an earlier entry): " + self.tool,
            "added health as health-2 (health is a path the gateway routes itself): " + self.tool,
            "skipped kept: server_id kept is already in the config; kept as it is",
            "skipped web: a remote server (https://example.com/mcp); point your client at it directly",
            "skipped sse: a remote server (sse); point your client at it directly",
            "skipped wind: a remote server (https://example.com/mcp); point your client at it directly",
            "skipped none: has no command",
            "skipped bad: args must be a list of strings",
            "skipped odd: not an object"])

    def test_commands_are_resolved_on_the_servers_path_else_this_one(self):
        entries = {"own": {"command": "hmg-tool", "env": {"PATH": self.bin}, "cwd": "/tmp", "args": ["a"]},
                   "shell": {"command": os.path.basename(sys.executable)},
                   "lost": {"command": "no-such-command-hmg", "env": {"PATH": self.bin}, "disabled": False,
                            "args": ["${HOME}"]}}
        servers, _, warnings = gw.import_client_servers(entries, existing_ids=set())
        own, shell, lost = servers
        self.assertEqual(own, {"server_id": "own", "command": self.tool, "args": ["a"], "env": {"PATH": self.bin},
                               "working_dir": "/tmp"})
        self.assertEqual(shell["command"], shutil.which(os.path.basename(sys.executable)))
        if os.path.dirname(shell["command"]) not in gw.LAUNCHD_PATH.split(":"):  # launchd needs its folder too
            self.assertEqual(shell["env"], {"PATH": os.path.dirname(shell["command"]) + ":" + gw.LAUNCHD_PATH})
        self.assertEqual(lost["command"], "no-such-command-hmg")
        self.assertEqual(warnings, [
            "lost: ignored: disabled",
            "lost: uses ${...} variables, which the gateway passes on as they are: put in their values",
            "lost: command 'no-such-command-hmg' not found on the server's env.PATH (%s); kept as it is: give its "
            "absolute path" % self.bin])


class ClientSnippetTest(unittest.TestCase):
    def config(self, **overrides):
        return gw.validate_config(base_config([fake_server("a"), fake_server("b")], **overrides))

    def test_gateway_url(self):
        for host, url in [("127.0.0.1", "http://127.0.0.1:7411"), ("0.0.0.0", "http://127.0.0.1:7411"),
                          ("::", "http://127.0.0.1:7411"), ("::1", "http://[::1]:7411"),
                          ("192.168.1.5", "http://192.168.1.5:7411"), ("localhost", "http://localhost:7411")]:
            with self.subTest(host=host):
                self.assertEqual(gw.gateway_url(self.config(bind_host=host, bind_port=7411)), url)

    def test_each_clients_snippet_has_its_shape(self):
        base, url = "http://127.0.0.1:7411", "http://127.0.0.1:7411/a/rpc"
        bearer = {"Authorization": "Bearer T"}
        self.assertEqual(gw.client_snippet("claude-code", ["a", "b"], base, "T").splitlines(), [
            'claude mcp add --transport http a %s --header "Authorization: Bearer T"' % url,
            'claude mcp add --transport http b %s/b/rpc --header "Authorization: Bearer T"' % base])
        self.assertEqual(json.loads(gw.client_snippet("claude-desktop", ["a"], base, "T")), {"mcpServers": {"a": {
            "command": "npx", "args": ["-y", "mcp-remote@" + gw.MCP_REMOTE_VERSION, url, "--header",
                                       "Authorization:${AUTH}"], "env": {"AUTH": "Bearer T"}}}})
        self.assertEqual(json.loads(gw.client_snippet("cursor", ["a"], base, "T")),
                         {"mcpServers": {"a": {"url": url, "headers": bearer}}})
        self.assertEqual(json.loads(gw.client_snippet("vscode", ["a"], base, "T")),
                         {"servers": {"a": {"type": "http", "url": url, "headers": bearer}}})
        self.assertEqual(json.loads(gw.client_snippet("windsurf", ["a"], base, "T")),
                         {"mcpServers": {"a": {"serverUrl": url, "headers": bearer}}})
        lan = json.loads(gw.client_snippet("claude-desktop", ["a"], "http://192.168.1.5:7411", "T"))
        self.assertEqual(lan["mcpServers"]["a"]["args"][-1], "--allow-http")  # mcp-remote wants it off loopback

    def test_status_url_carries_the_token_in_its_fragment(self):
        for token, url in [(None, "http://h:1/"), ("abc123", "http://h:1/#token=abc123"),
                           ("a%b#c d/e", "http://h:1/#token=a%25b%23c%20d%2Fe")]:
            with self.subTest(token=token):
                self.assertEqual(gw.status_url("http://h:1", token), url)

    def test_shell_lines_quote_the_token_but_not_the_placeholder(self):
        line = gw.client_snippet("claude-code", ["a"], "http://h:1", 'x"$`\\y')
        self.assertTrue(line.endswith(r'--header "Authorization: Bearer x\"\$\`\\y"'), line)
        line = gw.client_snippet("claude-code", ["a"], "http://h:1", gw.TOKEN_PLACEHOLDER)
        self.assertTrue(line.endswith('--header "Authorization: Bearer ${HOST_MCP_GATEWAY_TOKEN}"'), line)


class ClientCliTest(unittest.TestCase):
    """--import, --client-config and --status-url, run as a user would on files in a temporary folder."""

    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="hmg-clients-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.config_path = os.path.join(self.folder, "gateway", "config.json")
        self.env = dict(os.environ, HOME=self.folder)

    def write(self, name, text):
        path = os.path.join(self.folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text if isinstance(text, str) else json.dumps(text))
        return path

    def imported(self, *files):
        result = run_cli("-config", self.config_path, "--import", *files, env=self.env)
        with open(self.config_path) as f:
            return result, json.load(f)

    def test_each_client_format_is_imported_into_a_config_that_passes_check(self):
        python = os.path.basename(sys.executable)
        stdio = {"command": sys.executable, "args": [FAKE_SERVER]}
        fixtures = {
            "claude_desktop_config.json": {"mcpServers": {"desktop": stdio, "remote": {"url": "https://x/mcp"}},
                                           "globalShortcut": ""},
            ".mcp.json": {"mcpServers": {"code": dict(stdio, type="stdio", env={}),
                                         "code-http": {"type": "http", "url": "https://x/mcp"}}},
            ".cursor/mcp.json": {"mcpServers": {"cursor": dict(stdio, command=python)}},
            ".vscode/mcp.json": ('{\n  // VS Code allows comments\n  "inputs": [{"type": "promptString", "id": "k"}],\n'
                                 '  "servers": {\n    "vs code": {"type": "stdio", "command": %s, "args": [%s],'
                                 ' "cwd": %s,},\n    "vs-http": {"type": "http", "url": "https://x/mcp"} /* remote */\n'
                                 '  },\n}\n' % (json.dumps(sys.executable), json.dumps(FAKE_SERVER),
                                                json.dumps(self.folder))),
        }
        added = {"claude_desktop_config.json": ("desktop", "skipped remote"), ".mcp.json": ("code", "skipped code-http"),
                 ".cursor/mcp.json": ("cursor", "added cursor"), ".vscode/mcp.json": ("vs-code", "skipped vs-http")}
        for name, text in fixtures.items():
            with self.subTest(client_config=name):
                result, config = self.imported(self.write(name, text))
                self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
                self.assertIn("OK, %d server(s)" % len(config["servers"]), result.stdout)
                self.assertEqual(config["servers"][-1]["server_id"], added[name][0])
                self.assertIn(added[name][1], result.stdout)
                self.assertEqual(stat.S_IMODE(os.stat(self.config_path).st_mode), 0o600)
                self.assertEqual([f for f in os.listdir(os.path.dirname(self.config_path))], ["config.json"])
        servers = {s["server_id"]: s for s in config["servers"]}
        self.assertEqual(list(servers), [gw.EXAMPLE_SERVER_ID, "desktop", "code", "cursor", "vs-code"])
        self.assertEqual(servers["cursor"]["command"], shutil.which(python))  # resolved now, not under launchd
        self.assertEqual(servers["vs-code"]["working_dir"], self.folder)
        gw.validate_config(config)

    def test_existing_servers_are_kept_and_a_bad_config_is_not_touched(self):
        with open(self.write("gateway/config.json", base_config([fake_server("files")], log_level="warning"))) as f:
            before = f.read()
        client = self.write("c.json", {"mcpServers": {"files": {"command": "/bin/sh"}, "new": {"command": "sh"}}})
        result, config = self.imported(client)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("skipped files: server_id files is already in the config; kept as it is", result.stdout)
        self.assertEqual(config["servers"][0], json.loads(before)["servers"][0])
        self.assertEqual(config["log_level"], "warning")
        self.assertEqual([s["server_id"] for s in config["servers"]], ["files", "new"])
        again, _ = self.imported(client)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("nothing added", again.stdout)
        self.write("gateway/config.json", {"servers": []})
        broken = run_cli("-config", self.config_path, "--import", client, env=self.env)
        self.assertEqual(broken.returncode, 2)
        self.assertIn("config error:", broken.stderr)
        with open(self.config_path) as f:
            self.assertEqual(json.load(f), {"servers": []})

    def test_import_needs_a_client_config(self):
        for args, complaint in [([], "--import: give the client config to read"),
                                ([self.write("x.json", {"other": {}})], "no mcpServers or servers object"),
                                ([self.write("y.json", '{"mcpServers": {,}')], "invalid JSON at line 1")]:
            with self.subTest(args=args):
                result = run_cli("-config", self.config_path, "--import", *args, env=self.env)
                self.assertEqual(result.returncode, 2)
                self.assertIn(complaint, result.stderr)
        self.assertFalse(os.path.exists(self.config_path))

    def test_a_macs_usual_places(self):
        self.assertEqual(gw.usual_client_configs("/Users/me"), [
            "/Users/me/Library/Application Support/Claude/claude_desktop_config.json", "/Users/me/.cursor/mcp.json",
            "/Users/me/.claude.json"])

    def test_client_config_prints_the_token_only_on_a_terminal_or_when_asked(self):
        self.write("gateway/config.json", base_config([fake_server("a"), fake_server("b")], bind_port=7499))
        os.chmod(self.config_path, 0o600)
        hidden = run_cli("-config", self.config_path, "--client-config", "cursor")
        self.assertEqual(hidden.returncode, 0, hidden.stderr)
        self.assertNotIn(TOKEN, hidden.stdout)
        self.assertIn("--show-token", hidden.stderr)
        self.assertEqual(json.loads(hidden.stdout)["mcpServers"]["b"], {
            "url": "http://127.0.0.1:7499/b/rpc", "headers": {"Authorization": "Bearer " + gw.TOKEN_PLACEHOLDER}})
        shown = run_cli("-config", self.config_path, "--client-config", "claude-code", "a", "--show-token")
        self.assertEqual(shown.stdout.splitlines(), ['claude mcp add --transport http a http://127.0.0.1:7499/a/rpc '
                                                     '--header "Authorization: Bearer %s"' % TOKEN])
        self.assertEqual(run_cli("-config", self.config_path, "--status-url").stdout, "http://127.0.0.1:7499/\n")
        self.assertNotIn("bind_port is 0", hidden.stderr)
        self.assertEqual(run_cli("-config", self.config_path, "--status-url", "--show-token").stdout,
                         "http://127.0.0.1:7499/#token=%s\n" % TOKEN)
        self.assertIn(TOKEN, self.on_terminal("-config", self.config_path, "--client-config", "vscode"))
        for args, complaint in [(["nope"], "unknown client 'nope'; choose one of: claude-code, claude-desktop"),
                                (["vscode", "c"], "no server with server_id 'c' in %s; configured: a, b"
                                 % self.config_path),
                                (["vscode", "a", "b"], "takes CLIENT and at most one SERVER_ID")]:
            with self.subTest(args=args):
                result = run_cli("-config", self.config_path, "--client-config", *args)
                self.assertEqual(result.returncode, 2)
                self.assertIn(complaint, result.stderr)
        self.write("gateway/config.json", base_config([fake_server("a")]))
        self.assertIn("bind_port is 0", run_cli("-config", self.config_path, "--status-url").stderr)

    def on_terminal(self, *args):
        """What the CLI prints when its stdout is a terminal (a pseudo-terminal here)."""
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, GATEWAY] + list(args), stdout=slave, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        os.close(slave)
        chunks = []
        with os.fdopen(master, "rb", buffering=0) as terminal:
            while True:
                wait_readable(terminal)
                try:
                    chunk = terminal.read(65536)
                except OSError:  # Linux: EIO once the child closed its side
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        proc.wait(timeout=TIMEOUT)
        return b"".join(chunks).decode()


class SamplesTest(unittest.TestCase):
    def test_plist_is_a_launch_agent_for_the_system_python(self):
        with open(os.path.join(HERE, "host-mcp-gateway.plist.sample"), "rb") as f:
            agent = plistlib.load(f)
        self.assertEqual(agent["ProgramArguments"][:2], ["/usr/bin/python3", agent["ProgramArguments"][1]])
        self.assertTrue(agent["ProgramArguments"][1].endswith("host_mcp_gateway.py"))
        self.assertIn("-config", agent["ProgramArguments"])
        self.assertTrue(agent["RunAtLoad"])
        self.assertTrue(agent["KeepAlive"])
        self.assertIn("/Library/Logs/", agent["StandardErrorPath"])
        path = agent["EnvironmentVariables"]["PATH"].split(":")
        self.assertIn("/opt/homebrew/bin", path)
        self.assertIn("/usr/local/bin", path)

    def test_plist_is_the_one_install_agent_writes(self):
        with open(os.path.join(HERE, "host-mcp-gateway.plist.sample"), "rb") as f:
            sample = plistlib.load(f)
        self.assertEqual(gw.launch_agent("/usr/bin/python3", "/Users/you/host-mcp-gateway/host_mcp_gateway.py",
                                         "/Users/you/.config/host-mcp-gateway/config.json", "/Users/you"), sample)

    def test_check_flags_the_sample_paths_this_host_lacks(self):
        with open(os.path.join(HERE, "config.sample.json")) as f:
            raw = json.load(f)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "config.json")
            with open(path, "w") as f:
                json.dump(dict(raw, auth_token=TOKEN), f)
            os.chmod(path, 0o600)
            result = run_cli("--check", "-config", path)
        paths = [value for server in raw["servers"] for value in [server["command"]] + server["args"]
                 if value.startswith("/")]
        missing = [value for value in paths if not os.path.exists(value)]
        self.assertIn("/Users/you/host-mcp-gateway/host_mcp_gateway.py", missing)
        for value in missing:
            self.assertIn(value + " does not exist", result.stderr)
        if "/opt/homebrew/bin/uvx" in missing:
            self.assertIn("`command -v uvx`", result.stderr)
        roots = [root for server in raw["servers"] for root in server.get("roots", ())]
        self.assertTrue(roots)
        for root in roots if not os.path.isdir(roots[0]) else ():
            self.assertIn("roots: %s is not a folder on this host" % root, result.stderr)

    def test_sample_config_is_valid_but_for_its_placeholder_token(self):
        with open(os.path.join(HERE, "config.sample.json")) as f:
            raw = json.load(f)
        with self.assertRaises(gw.ConfigError) as caught:
            gw.validate_config(raw)
        self.assertEqual(len(caught.exception.messages), 1)
        self.assertIn("auth_token: still holds the placeholder", caught.exception.messages[0])
        gw.validate_config(dict(raw, auth_token=TOKEN))


# HTTP front: access rules, framing, limits, errors -----------------------------------------------------------------

class HttpFrontTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gateway = GatewayProcess(cls, base_config([fake_server()], max_body_bytes=1024, client_timeout_ms=500))

    @classmethod
    def addCleanup(cls, function, *args):  # GatewayProcess registers its own cleanup: run it after the class
        cls.addClassCleanup(function, *args)

    def test_every_path_and_method_needs_the_token(self):
        for path in ("/health", "/servers", "/metrics", "/rpc", "/fake/rpc", "/nope/rpc", "/anything", "//"):
            for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "TRACE", "PROPFIND"):
                for token in (None, "wrong-token"):
                    with self.subTest(path=path, method=method, token=token):
                        status, response, body = self.gateway.request(method, path, token=token)
                        self.assertEqual(status, 401)
                        self.assertEqual(response.getheader("WWW-Authenticate"), 'Bearer realm="host-mcp-gateway"')
                        if method != "HEAD":
                            self.assertEqual(body["error"]["error_code"], "unauthorized")

    def test_status_page_needs_no_token_and_holds_no_data(self):
        status, response, body = self.gateway.request("GET", "/", token=None)
        self.assertEqual(status, 200)
        self.assertEqual(response.getheader("Content-Type"), "text/html; charset=utf-8")
        page = body.decode("utf-8")
        for secret in ("fake", TOKEN, FAKE_SERVER, str(self.gateway.port)):
            self.assertNotIn(secret, page)
        script = page.split("<script>", 1)[1].split("</script>", 1)[0]
        style = page.split("<style>", 1)[1].split("</style>", 1)[0]
        self.assertEqual(response.getheader("Content-Security-Policy"),
                         "default-src 'none'; script-src %s; style-src %s; connect-src 'self'; img-src data:; "
                         "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
                         % (gw._csp_hash(script), gw._csp_hash(style)))
        for header, value in [("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
                              ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]:
            self.assertEqual(response.getheader(header), value)
        for fetched in ('get("/servers")', 'get("/health")', '"Authorization": "Bearer " + token',
                        "sessionStorage", "#token=", "mcp-remote@", '"Authorization:${AUTH}"'):
            self.assertIn(fetched, script)
        self.assertEqual(script.count(".innerHTML"), 0)  # data goes in as text only
        for client in gw.CLIENT_SNIPPETS:  # the page offers every client --client-config knows
            self.assertIn("<option>%s</option>" % client, page)
        self.assertIn('MCP_REMOTE_VERSION = "%s"' % gw.MCP_REMOTE_VERSION, script)
        status, head_response, head_body = self.gateway.request("HEAD", "/", token=None)
        self.assertEqual((status, head_body), (200, None))
        self.assertEqual(head_response.getheader("Content-Length"), str(len(body)))
        self.assertEqual(head_response.getheader("Content-Security-Policy"), response.getheader("Content-Security-Policy"))
        for method in ("POST", "PUT", "DELETE"):
            with self.subTest(method=method):
                status, response, body = self.gateway.request(method, "/", token=None)
                self.assertEqual((status, body["error"]["error_code"]), (405, "method_not_allowed"))
                self.assertEqual(response.getheader("Allow"), "GET, HEAD")
        status, _, body = self.gateway.request("GET", "/", token=None, headers={"Origin": "http://evil.example"})
        self.assertEqual((status, body["error"]["error_code"]), (403, "forbidden_origin"))
        own = "http://127.0.0.1:%d" % self.gateway.port
        status, _, _ = self.gateway.request("GET", "/", token=None, headers={"Origin": own})
        self.assertEqual(status, 200)

    def test_the_token_never_reaches_the_log(self):
        self.gateway.request("GET", "/health", token="wrong-" + TOKEN)
        self.gateway.request("GET", "/health")
        self.gateway.wait_log(lambda r: r.get("event") == "http_request" and r.get("status") == 401)
        log = "".join(self.gateway.raw_stderr)
        self.assertNotIn(TOKEN, log)
        self.assertNotIn("Bearer", log)

    def test_keep_alive_serves_many_requests_on_one_connection(self):
        conn = self.gateway.connect()
        for _ in range(5):
            status, response, _ = self.gateway.request("GET", "/health", conn=conn)
            self.assertEqual(status, 200)
        self.assertIsNotNone(conn.sock)  # not closed by the server

    def test_error_shapes(self):
        cases = [
            ("GET", "/nope", None, 404, "not_found"),
            ("GET", "/nope/rpc", None, 404, "server_not_found"),
            ("DELETE", "/health", None, 405, "method_not_allowed"),
            ("GET", "/rpc", None, 405, "method_not_allowed"),
            ("POST", "/fake/rpc", b"{not json", 400, "invalid_json"),
            ("POST", "/rpc", b"[1]", 400, "invalid_request"),
            ("POST", "/rpc", {"server_id": "nope", "payload": rpc("ping")}, 404, "server_not_found"),
            ("POST", "/fake/rpc", b"x" * 2000, 413, "payload_too_large"),
        ]
        for method, path, body, status, code in cases:
            with self.subTest(method=method, path=path):
                got, response, reply = self.gateway.request(method, path, body)
                self.assertEqual((got, reply["error"]["error_code"]), (status, code))
                self.assertIsInstance(reply["error"]["message"], str)
                self.assertEqual(response.getheader("Content-Type"), "application/json")
                if status == 405:
                    self.assertIn(response.getheader("Allow"), ("GET, HEAD", "POST"))

    def test_oversized_body_is_refused_before_it_is_sent(self):
        with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST /fake/rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                         b"\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
            reply = sock.recv(65536)
        self.assertEqual(status_of(reply), 413)
        self.assertIn(b"Connection: close", reply)

    def test_expect_continue_is_answered(self):
        body = json.dumps(rpc("ping")).encode()
        with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST /fake/rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                         b"\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
            self.assertEqual(sock.recv(65536), b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(body)
            self.assertEqual(status_of(sock.recv(65536)), 200)

    def test_malformed_framing_is_refused_and_the_connection_closed(self):
        auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        cases = [
            (b"POST /fake/rpc HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411),
            (b"POST /fake/rpc HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
            (b"POST /fake/rpc HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: -1\r\n\r\n", 400),
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET /health HTTP/3.0\r\nHost: x\r\n" + auth + b"\r\n", 505),
            (b"GET /health HTTP/1.1\r\nHost: x\r\n" + auth + b"X-Long: " + b"a" * 40000 + b"\r\n\r\n", 431),
        ]
        for data, status in cases:
            with self.subTest(data=data[:50]):
                reply = raw_exchange(self.gateway.port, data)
                self.assertEqual(status_of(reply), status)
                self.assertIn("error_code", body_of(reply)["error"])

    def test_slow_request_times_out_with_408(self):
        started = time.monotonic()
        reply = raw_exchange(self.gateway.port, b"GET /health HTTP/1.1\r\nHost: x\r\n")
        self.assertEqual(status_of(reply), 408)
        self.assertLess(time.monotonic() - started, 5)

    def test_idle_and_half_open_connections_do_not_block_others(self):
        idle = [socket.create_connection(("127.0.0.1", self.gateway.port), timeout=TIMEOUT) for _ in range(50)]
        try:
            for sock in idle[:25]:
                sock.sendall(b"GET /health HTTP/1.1\r\n")  # half a request
            status, _, body = self.gateway.request("GET", "/health")
            self.assertEqual((status, body["status"]), (200, "ok"))
        finally:
            for sock in idle:
                sock.close()

    def test_pipelined_requests_are_answered_in_order(self):
        auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
        last = b"GET /servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth + b"\r\n"
        reply = raw_exchange(self.gateway.port, request * 2 + last)
        self.assertEqual(reply.count(b"HTTP/1.1 200 OK"), 3)
        self.assertIn(b'"servers":[', reply)

    def test_health_and_servers(self):
        self.gateway.wait_state("fake", "ready")
        status, response, health = self.gateway.request("GET", "/health")
        self.assertEqual(status, 200)
        self.assertEqual((health["status"], health["version"], health["servers"]), ("ok", gw.VERSION, {"fake": "ready"}))
        self.assertNotIn("Python", response.getheader("Server"))
        server = self.gateway.servers()["fake"]
        for key in ("state", "pid", "restart_count", "last_exit", "last_error", "uptime_s", "autostart",
                    "restart_policy", "server_info", "protocol_version"):
            self.assertIn(key, server)
        self.assertEqual(server["server_info"], {"name": "fake", "version": "1.0.0"})
        self.assertNotIn("env", server)

    def test_access_log_line(self):
        self.gateway.request("GET", "/servers?x=1")
        record = self.gateway.wait_log(lambda r: r.get("event") == "http_request" and r.get("path") == "/servers")
        for key in ("ts", "level", "method", "status", "duration_ms", "client"):
            self.assertIn(key, record)
        self.assertTrue(record["ts"].endswith("Z"))


class AccessRuleTest(unittest.TestCase):
    def test_client_outside_the_allowlist_is_refused_even_with_the_token(self):
        gateway = GatewayProcess(self, base_config([fake_server(autostart=False)], allowed_clients=["10.9.9.9"]))
        status, _, body = gateway.request("GET", "/health")
        self.assertEqual((status, body["error"]["error_code"]), (403, "forbidden_client"))

    def test_ipv6_listener(self):
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            self.skipTest("no IPv6 loopback here")
        gateway = GatewayProcess(self, base_config([fake_server(autostart=False)], bind_host="::1"))
        conn = http.client.HTTPConnection("::1", gateway.port, timeout=TIMEOUT)
        self.addCleanup(conn.close)
        status, _, body = gateway.request("GET", "/health", conn=conn)
        self.assertEqual(status, 200)

    def test_sigterm_stops_cleanly_and_leaves_no_child(self):
        gateway = GatewayProcess(self, base_config([fake_server()]))
        gateway.wait_state("fake", "ready")
        pid = gateway.tool("pid")["structuredContent"]["pid"]
        grandchild = gateway.tool("spawn_grandchild")["structuredContent"]["pid"]
        started = time.monotonic()
        self.assertEqual(gateway.stop(signal.SIGTERM), 0)
        self.assertLess(time.monotonic() - started, 5)
        wait_for(lambda: process_gone(pid) and process_gone(grandchild), what="the child and grandchild to end")


    def test_sigint_stops_with_a_request_in_flight(self):
        gateway = GatewayProcess(self, base_config([fake_server()]))
        gateway.wait_state("fake", "ready")
        hung = start_in_flight(self, gateway, tool_call("hang"))
        started = time.monotonic()
        self.assertEqual(gateway.stop(signal.SIGINT), 0)
        self.assertLess(time.monotonic() - started, 5)
        status, reply = hung.result(TIMEOUT)
        self.assertEqual((status, reply["error"]["data"]["error_code"]), (200, "server_unavailable"))
        self.assertIn("the gateway is stopping", reply["error"]["message"])


class TokenSourceTest(unittest.TestCase):
    def test_named_tokens_are_checked_counted_and_shown_by_name(self):
        named = [{"name": "laptop", "token": TOKEN}, {"name": "phone", "token": PHONE_TOKEN}]
        gateway = GatewayProcess(self, token_config(auth_tokens=named, max_calls_per_token=1))
        listening = gateway.wait_log(lambda r: r.get("event") == "listening")
        self.assertEqual((listening["token_source"], listening["token_names"]), ("auth_tokens", ["laptop", "phone"]))
        self.assertEqual(gateway.request("GET", "/servers", token=PHONE_TOKEN)[0], 200)
        self.assertEqual(gateway.request("GET", "/servers", token=PHONE_TOKEN[:-1] + "x")[0], 401)
        client = McpClient(gateway)  # with the laptop's token
        sessions = gateway.servers()["fake"]["sessions"]
        self.assertEqual([s["token_name"] for s in sessions], ["laptop"])
        for name in ("laptop", "phone"):
            gateway.wait_log(lambda r, name=name: r.get("event") == "http_request" and r.get("token_name") == name)
        self.assertFalse([r for r in gateway.logs if TOKEN in json.dumps(r) or PHONE_TOKEN in json.dumps(r)])
        pool = ThreadPoolExecutor(1)
        self.addCleanup(pool.shutdown)
        marker = {"jsonrpc": "2.0", "method": "notifications/marker"}
        hung = pool.submit(gateway.call, "fake", [marker, tool_call("hang")])
        wait_for(lambda: any(n["method"] == marker["method"] for n in gateway.call(
            "fake", tool_call("received"), token=PHONE_TOKEN)[1]["result"]["structuredContent"]["notifications"]),
            what="the laptop's call to be in flight")
        status, body = gateway.call("fake", tool_call("echo", text="x"))
        self.assertEqual((status, body["error"]["error_code"]), (429, "too_many_requests"))
        self.assertEqual(gateway.call("fake", tool_call("echo", text="x"), token=PHONE_TOKEN)[0], 200)
        client.delete()
        gateway.stop()
        self.assertEqual(hung.result(TIMEOUT)[0], 200)  # answered: the gateway stopped

    def test_token_from_the_environment_is_kept_from_children(self):
        gateway = GatewayProcess(self, token_config(), env=dict(os.environ, **{gw.TOKEN_ENV: TOKEN}))
        self.assertEqual(gateway.wait_log(lambda r: r.get("event") == "listening")["token_source"], gw.TOKEN_ENV)
        pid = gateway.tool("pid")["structuredContent"]["pid"]
        if not os.path.exists("/proc/%d/environ" % pid):
            return  # where /proc is missing, the request above shows the variable was read
        with open("/proc/%d/environ" % pid, "rb") as f:
            self.assertNotIn(gw.TOKEN_ENV.encode(), f.read())


def make_certificate(folder, name="gateway"):
    """A self-signed certificate for localhost and 127.0.0.1 and its key, made with openssl: (cert, key)."""
    cert, key = (os.path.join(folder, name + suffix) for suffix in (".crt", ".key"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True,
                   timeout=TIMEOUT)
    return cert, key


@unittest.skipIf(shutil.which("openssl") is None, "openssl is not installed: it makes the test certificates")
class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="hmg-tls-")
        cls.cert, cls.key = make_certificate(cls.folder)
        cls.client_tls = ssl.create_default_context(cafile=cls.cert)
        cls.gateway = GatewayProcess(cls, base_config([fake_server(autostart=False)], tls_cert_file=cls.cert,
                                                      tls_key_file=cls.key, client_timeout_ms=1000), tls=cls.client_tls)

    @classmethod
    def addCleanup(cls, function, *args):  # GatewayProcess registers its own cleanup: run it after the class
        cls.addClassCleanup(function, *args)

    def test_https_with_the_certificate_as_ca(self):
        self.assertEqual(self.gateway.wait_log(lambda r: r.get("event") == "listening")["scheme"], "https")
        status, _, body = self.gateway.request("GET", "/servers")
        self.assertEqual((status, list(self.gateway.servers())), (200, ["fake"]))
        self.assertEqual(self.gateway.call("fake", tool_call("echo", text="over tls"))[1]["result"]["structuredContent"]
                         ["text"], "over tls")

    def test_plain_http_is_told_to_use_https(self):
        raw = raw_exchange(self.gateway.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status_of(raw), body_of(raw)["error"]["error_code"]), (400, "https_required"))

    def test_a_silent_connection_holds_up_no_one_and_is_closed(self):
        with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=TIMEOUT) as silent:
            started = time.monotonic()
            self.assertEqual(self.gateway.request("GET", "/servers")[0], 200)
            self.assertLess(time.monotonic() - started, 0.9)  # before client_timeout_ms would free the silent one
            self.assertEqual(silent.recv(1), b"")  # closed once client_timeout_ms has passed
        self.gateway.wait_log(lambda r: r.get("event") == "tls_handshake_failed" and "client_timeout_ms" in r["reason"])

    def test_tls_1_1_is_refused(self):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.cert)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is: the point of the test
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only at security level 0
        except ssl.SSLError:
            pass  # a library without security levels
        with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=TIMEOUT) as sock:
            with self.assertRaises(ssl.SSLError):
                context.wrap_socket(sock, server_hostname="localhost")
        self.gateway.wait_log(lambda r: r.get("event") == "tls_handshake_failed" and any(
            word in r["reason"] for word in ("PROTOCOL", "VERSION")))  # OpenSSL and LibreSSL word it differently

    def test_a_key_that_is_not_the_certificates_exits_2(self):
        _, other_key = make_certificate(self.folder, "other")
        path = os.path.join(self.folder, "mismatch.json")
        with open(path, "w") as f:
            json.dump(base_config([fake_server()], tls_cert_file=self.cert, tls_key_file=other_key), f)
        os.chmod(path, 0o600)
        for args in (["--check", "-config", path], ["-config", path]):
            with self.subTest(args=args):
                result = run_cli(*args)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn("tls_key_file: %s is not the private key of the certificate in %s" % (
                    other_key, self.cert), result.stderr)
                self.assertNotIn("Traceback", result.stderr)


class ReloadTest(unittest.TestCase):
    def test_plan(self):
        a, b = fake_server("a"), fake_server("b")
        old = gw.validate_config(base_config([a, b, fake_server("c")]))
        cases = [
            (base_config([a, b, fake_server("c")]), ([], [], [], ["a", "b", "c"], [])),
            (base_config([b, fake_server("d")], bind_port=9), (["d"], ["a", "c"], [], ["b"], ["bind_port"])),
            (base_config([dict(a, args=a["args"] + ["--name", "x"]), b, fake_server("c", autostart=False)],
                         auth_token=PHONE_TOKEN, max_sessions=3),
             ([], [], ["a", "c"], ["b"], [])),
        ]
        for raw, (added, removed, changed, unchanged, restart) in cases:
            with self.subTest(raw=raw):
                self.assertEqual(gw.reload_plan(old, gw.validate_config(raw)), {
                    "added": added, "removed": removed, "changed": changed, "unchanged": unchanged,
                    "needs_restart": restart})

    def test_sighup_applies_the_new_config_and_keeps_what_did_not_change(self):
        named = [{"name": "laptop", "token": TOKEN}, {"name": "phone", "token": PHONE_TOKEN}]
        servers = [fake_server("keep"), fake_server("gone"), fake_server("change")]
        gateway = GatewayProcess(self, token_config(servers, auth_tokens=named))
        pids = {sid: gateway.tool("pid", sid)["structuredContent"]["pid"] for sid in ("keep", "gone", "change")}
        clients = {sid: McpClient(gateway, sid) for sid in ("keep", "gone", "change")}
        stream = clients["keep"].open_stream()
        self.assertEqual(stream.status, 200)
        with open(gateway.config_path, "w") as f:
            json.dump(token_config([fake_server("keep"), fake_server("change", "--name", "changed"),
                                    fake_server("new")], auth_tokens=named[:1], bind_port=9), f)
        result = run_cli("--reload", "-config", gateway.config_path)
        self.assertEqual(result.returncode, 0, result.stderr)
        reloaded = gateway.wait_log(lambda r: r.get("event") == "config_reloaded")
        self.assertEqual([reloaded[key] for key in ("added", "removed", "changed", "unchanged")],
                         [["new"], ["gone"], ["change"], ["keep"]])
        self.assertEqual(gateway.wait_log(lambda r: r.get("event") == "config_needs_restart")["keys"], ["bind_port"])
        self.assertEqual(gateway.tool("pid", "keep")["structuredContent"]["pid"], pids["keep"])
        self.assertEqual(clients["keep"].call("notify", method="notifications/message", params={"level": "info"})
                         ["content"][0]["text"], "notified")
        self.assertEqual(stream_until(stream, lambda m: m.get("method") == "notifications/message")[-1][1]["method"],
                         "notifications/message")  # the stream opened before the reload carries on
        self.assertEqual(clients["gone"].post(rpc("ping"))[0], 404)  # server_not_found
        self.assertEqual(clients["change"].post(rpc("ping"))[0], 404)  # session_not_found: closed with its child
        self.assertNotEqual(gateway.tool("pid", "change")["structuredContent"]["pid"], pids["change"])
        self.assertEqual(gateway.wait_state("new", "ready")["server_info"]["name"], "fake")
        wait_for(lambda: process_gone(pids["gone"]) and process_gone(pids["change"]), what="the old children to end")
        self.assertEqual(gateway.request("GET", "/servers", token=PHONE_TOKEN)[0], 401)  # revoked at once
        with open(gateway.config_path, "w") as f:
            f.write('{"servers": [}')
        gateway.proc.send_signal(signal.SIGHUP)
        failed = gateway.wait_log(lambda r: r.get("event") == "config_reload_failed")
        self.assertIn("invalid JSON", failed["errors"][0])
        self.assertEqual(gateway.tool("pid", "keep")["structuredContent"]["pid"], pids["keep"])
        hang_up(stream)
        self.assertEqual(gateway.stop(), 0)
        result = run_cli("--reload", "-config", gateway.config_path)
        self.assertEqual(result.returncode, 2)  # the config is checked first
        with open(gateway.config_path, "w") as f:
            json.dump(base_config([fake_server()]), f)
        result = run_cli("--reload", "-config", gateway.config_path)
        self.assertEqual(result.returncode, 1)
        self.assertIn("no gateway is running with " + gateway.config_path, result.stderr)


class OrphanTest(unittest.TestCase):
    def test_only_real_pids_are_signalled(self):
        for value, ok in [(2, True), (1, False), (0, False), (-1, False), ("5", False), (True, False), (None, False)]:
            with self.subTest(value=value):
                self.assertEqual(gw.valid_pid(value), ok)

    def test_fates_of_recorded_children(self):
        entry = {"server_id": "s", "pid": 100, "start_time": "t1"}
        cases = [("t1", True, "end"), ("t1", False, "end"), ("t2", True, "reused"), ("t2", False, "reused"),
                 (None, True, "end"), (None, False, "gone")]
        for started, group, fate in cases:
            with self.subTest(started=started, group=group):
                fate_now = gw.recorded_child_fate(entry, lambda pid, started=started: started,
                                                  lambda pgid, group=group: group)
                self.assertEqual(fate_now, fate)

    def test_state_folder(self):
        cases = [({gw.STATE_DIR_ENV: "/s"}, "darwin", "/s"),
                 ({}, "darwin", "/h/Library/Application Support/host-mcp-gateway"),
                 ({}, "linux", "/h/.local/state/host-mcp-gateway"),
                 ({"XDG_STATE_HOME": "/x"}, "linux", "/x/host-mcp-gateway")]
        for environ, platform, folder in cases:
            with self.subTest(environ=environ, platform=platform):
                self.assertEqual(gw.state_folder(environ, platform, "/h"), folder)

    def test_a_sigkilled_gateway_leaves_no_child_behind(self):
        state = tempfile.mkdtemp(prefix="hmg-orphans-")
        env = dict(os.environ, **{gw.STATE_DIR_ENV: state})
        config = base_config([fake_server("fake", "--stubborn")])
        gateway = GatewayProcess(self, config, env=env)
        pid = gateway.tool("pid")["structuredContent"]["pid"]
        self.addCleanup(gw.signal_groups, [pid], signal.SIGKILL)  # should the test fail
        grandchild = gateway.tool("spawn_grandchild")["structuredContent"]["pid"]
        gateway.kill()  # SIGKILL: it can stop nothing
        self.assertFalse(process_gone(pid) or process_gone(grandchild))  # stubborn: stdin's end does not stop it
        state_file = gw.state_file_path(gateway.config_path, env)
        with open(state_file) as f:
            record = json.load(f)
        self.assertEqual([(e["server_id"], e["pid"]) for e in record["children"]], [("fake", pid)])
        decoy = {"server_id": "decoy", "pid": os.getpid(), "start_time": "not when this test process started"}
        with open(state_file, "w") as f:
            json.dump(dict(record, children=record["children"] + [decoy]), f)
        second = GatewayProcess(self, dict(config, servers=[fake_server(autostart=False)]), env=env,
                                folder=gateway.folder)
        self.assertTrue(process_gone(pid) and process_gone(grandchild))  # before it listens
        ended = second.wait_log(lambda r: r.get("event") == "orphan_ended")
        self.assertEqual((ended["server_id"], ended["pid"]), ("fake", pid))
        left = second.wait_log(lambda r: r.get("event") == "orphan_left_alone")
        self.assertEqual(left["pid"], os.getpid())
        self.assertEqual(second.stop(), 0)
        self.assertFalse(os.path.exists(state_file))  # a clean stop leaves nothing to clean


# Child bridge: ids, batches, handshake, notifications ---------------------------------------------------------------

class BridgeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gateway = GatewayProcess(cls, base_config([fake_server(), fake_server("lazy", autostart=False)],
                                                      request_timeout_ms=3000))

    @classmethod
    def addCleanup(cls, function, *args):
        cls.addClassCleanup(function, *args)

    def received(self, server_id="fake"):
        return self.gateway.tool("received", server_id)["structuredContent"]

    def test_fifty_clients_with_the_same_id_each_get_their_own_answer(self):
        def call(n):
            return self.gateway.call("fake", tool_call("echo", 1, text="client %d" % n))
        with ThreadPoolExecutor(50) as pool:
            replies = list(pool.map(call, range(50)))
        for n, (status, reply) in enumerate(replies):
            self.assertEqual(status, 200)
            self.assertEqual((reply["id"], reply["result"]["structuredContent"]["text"]), (1, "client %d" % n))

    def test_ids_keep_their_type(self):
        for request_id in ("abc", "7", 7, 0, -3, 2.5, "", "x" * 300):
            with self.subTest(request_id=request_id):
                status, reply = self.gateway.call("fake", rpc("ping", None, request_id))
                self.assertEqual(status, 200)
                self.assertEqual(reply["id"], request_id)
                self.assertIs(type(reply["id"]), type(request_id))

    def test_calls_complete_out_of_order(self):
        order = []

        def call(name, **arguments):
            self.gateway.call("fake", tool_call(name, 1, **arguments))
            order.append(name)
        slow = threading.Thread(target=call, args=("sleep",), kwargs={"seconds": 0.5})
        slow.start()
        call("add", a=1, b=2)
        slow.join(TIMEOUT)
        self.assertEqual(order, ["add", "sleep"])

    def test_wrapper_endpoint(self):
        status, _, body = self.gateway.request("POST", "/rpc", {"server_id": "fake", "payload": tool_call("add", 9, a=2, b=3)})
        self.assertEqual(status, 200)
        self.assertEqual(body["server_id"], "fake")
        self.assertEqual((body["payload"]["id"], body["payload"]["result"]["structuredContent"]), (9, {"sum": 5}))

    def test_client_notifications_are_forwarded_and_answered_202(self):
        for path, body in [("/fake/rpc", {"jsonrpc": "2.0", "method": "notifications/y"}),
                           ("/rpc", {"server_id": "fake", "payload": {"jsonrpc": "2.0", "method": "notifications/x"}})]:
            status, response, reply = self.gateway.request("POST", path, body)
            self.assertEqual((status, reply, response.getheader("Content-Length")), (202, None, "0"))
        methods = [n["method"] for n in self.received()["notifications"]]
        self.assertIn("notifications/y", methods)
        self.assertIn("notifications/x", methods)

    def test_the_gateway_holds_the_handshake(self):
        status, reply = self.gateway.call("fake", rpc("initialize", {"protocolVersion": "2025-06-18",
                                                                     "capabilities": {}, "clientInfo": {"name": "t"}}))
        self.assertEqual(status, 200)
        self.assertEqual(reply["result"]["protocolVersion"], "2025-06-18")
        self.assertEqual(reply["result"]["serverInfo"]["name"], "fake")
        self.assertEqual(self.gateway.call("fake", {"jsonrpc": "2.0", "method": "notifications/initialized"})[0], 202)
        self.assertEqual(self.gateway.tool("pid")["structuredContent"]["initializes"], 1)
        initialized = [n for n in self.received()["notifications"] if n["method"] == "notifications/initialized"]
        self.assertEqual(len(initialized), 1)

    def test_client_cancel_names_the_gateway_id_and_answers_the_call_at_once(self):
        hung = start_in_flight(self, self.gateway, tool_call("hang", "mine"))
        status, _ = self.gateway.call("fake", {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                               "params": {"requestId": "mine", "reason": "user gave up"}})
        self.assertEqual(status, 202)
        status, reply = hung.result(TIMEOUT)
        self.assertEqual((status, reply["id"], reply["error"]["code"]), (200, "mine", -32800))
        cancels = [n for n in self.received()["notifications"] if n["method"] == "notifications/cancelled"]
        self.assertEqual(cancels[-1]["params"]["reason"], "user gave up")
        self.assertIsInstance(cancels[-1]["params"]["requestId"], int)

    def test_batches(self):
        batch = [tool_call("echo", "a", text="1"), {"jsonrpc": "2.0", "method": "notifications/x"},
                 tool_call("add", 2, a=1, b=1), {"jsonrpc": "1.0", "id": 3, "method": "x"}, rpc("nope/nope", None, 4)]
        status, replies = self.gateway.call("fake", batch)
        self.assertEqual(status, 200)
        self.assertEqual([r["id"] for r in replies], ["a", 2, 3, 4])
        self.assertEqual(replies[0]["result"]["structuredContent"]["text"], "1")
        self.assertEqual(replies[2]["error"]["code"], -32600)
        self.assertEqual(replies[3]["error"]["code"], -32601)
        self.assertEqual(self.gateway.call("fake", [{"jsonrpc": "2.0", "method": "notifications/x"}])[0], 202)
        status, _, body = self.gateway.request("POST", "/fake/rpc", [])
        self.assertEqual((status, body["error"]["error_code"]), (400, "invalid_request"))

    def test_invalid_json_rpc_gets_a_clear_error(self):
        cases = [({"jsonrpc": "2.0", "id": 5, "method": 7}, 5), ({"jsonrpc": "1.0", "id": "x", "method": "ping"}, "x"),
                 ({"jsonrpc": "2.0", "id": 5, "method": "ping", "params": "nope"}, 5)]
        for message, request_id in cases:
            with self.subTest(message=message):
                status, reply = self.gateway.call("fake", message)
                self.assertEqual((status, reply["id"], reply["error"]["code"]), (400, request_id, -32600))
        for message in (1, "text", None, {"jsonrpc": "2.0", "id": [1], "method": "ping"}, {"jsonrpc": "2.0"},
                        {"jsonrpc": "2.0", "method": "initialize"}):
            with self.subTest(message=message):
                status, reply = self.gateway.call("fake", message)
                self.assertEqual((status, reply["error"]["error_code"]), (400, "invalid_request"))

    def test_lazy_server_starts_on_first_request(self):
        self.assertEqual(self.gateway.servers()["lazy"]["state"], "stopped")  # no other test touches it
        status, reply = self.gateway.call("lazy", rpc("ping"))
        self.assertEqual((status, reply["result"]), (200, {}))
        self.assertEqual(self.gateway.servers()["lazy"]["state"], "ready")

    def test_non_json_stdout_and_stderr_flood_are_survived(self):
        self.assertEqual(self.gateway.tool("garbage", text="this is not json")["content"][0]["text"], "ok")
        self.gateway.wait_log(lambda r: r.get("event") == "child_non_json_line" and r["line"] == "this is not json")
        self.assertEqual(self.gateway.tool("flood_stderr", bytes=3 * 1024 * 1024)["content"][0]["text"], "flooded")
        self.assertEqual(self.gateway.tool("add", a=2, b=2)["structuredContent"], {"sum": 4})

    def test_ten_mebibyte_result_passes_intact(self):
        size = 10 * 1024 * 1024
        result = self.gateway.tool("big", bytes=size)
        self.assertEqual(result["content"][0]["text"], "a" * size)

    def test_child_notifications_and_requests_are_never_taken_for_responses(self):
        self.assertEqual(self.gateway.tool("notify", method="notifications/tools/list_changed", params={},
                                           request_id=5)["content"][0]["text"], "notified")
        started = time.monotonic()
        asked = self.gateway.tool("ask", method="roots/list", timeout=5)["structuredContent"]["response"]
        self.assertLess(time.monotonic() - started, 2)  # refused at once: no session can answer it
        self.assertEqual(asked["error"]["code"], -32601)
        self.assertIn("roots setting is unset", asked["error"]["message"])


class TimeoutTest(unittest.TestCase):
    def test_timed_out_call_is_cancelled_and_others_are_unaffected(self):
        gateway = GatewayProcess(self, base_config([fake_server()], request_timeout_ms=700))
        gateway.wait_state("fake", "ready")
        with ThreadPoolExecutor(2) as pool:
            hung = pool.submit(gateway.call, "fake", tool_call("hang", "h"))
            status, reply = gateway.call("fake", tool_call("add", 2, a=1, b=1))
            self.assertEqual(status, 200)
            status, reply = hung.result(TIMEOUT)
        self.assertEqual((status, reply["id"], reply["error"]["code"]), (504, "h", -32001))
        self.assertEqual(reply["error"]["data"]["error_code"], "timeout")
        status, _, body = gateway.request("POST", "/rpc", {"server_id": "fake", "payload": tool_call("hang", 8)})
        self.assertEqual((status, body["error"]["error_code"], body["error"]["request_id"]), (504, "timeout", "8"))
        notifications = gateway.tool("received")["structuredContent"]["notifications"]
        cancelled = [n for n in notifications if n["method"] == "notifications/cancelled"]
        self.assertEqual(len(cancelled), 2)


class ChildLifecycleTest(unittest.TestCase):
    def test_crash_fails_calls_at_once_then_restarts(self):
        gateway = GatewayProcess(self, base_config([fake_server()], request_timeout_ms=20000))
        gateway.wait_state("fake", "ready")
        first_pid = gateway.tool("pid")["structuredContent"]["pid"]
        sleeper = start_in_flight(self, gateway, tool_call("sleep", 5, seconds=15))
        started = time.monotonic()
        status, reply = gateway.call("fake", tool_call("crash", 6, code=7, stderr="boom: disk on fire"))
        status_sleeper, reply_sleeper = sleeper.result(TIMEOUT)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual((status, status_sleeper), (502, 200))  # the sleeper went in a batch: its error is inside
        for answer, request_id in ((reply, 6), (reply_sleeper, 5)):
            self.assertEqual((answer["id"], answer["error"]["data"]["error_code"]), (request_id, "server_exited"))
            self.assertIn("exited with code 7", answer["error"]["message"])
            self.assertIn("boom: disk on fire", answer["error"]["message"])
        second_pid = wait_for(lambda: gateway.call("fake", tool_call("pid"))[1].get("result"),
                              what="the restarted child")["structuredContent"]["pid"]
        self.assertNotEqual(first_pid, second_pid)
        server = gateway.servers()["fake"]
        self.assertEqual((server["restart_count"], server["last_exit"]), (1, "exited with code 7"))
        wait_for(lambda: process_gone(first_pid), what="the old child to be reaped")

    def test_request_during_a_pending_restart_waits_for_it(self):
        gateway = GatewayProcess(self, base_config([fake_server()], restart_backoff_ms=300))
        gateway.wait_state("fake", "ready")
        gateway.call("fake", tool_call("kill_self", signal=9))
        status, reply = gateway.call("fake", tool_call("add", 2, a=20, b=22))
        self.assertEqual((status, reply["result"]["structuredContent"]), (200, {"sum": 42}))
        self.assertEqual(gateway.servers()["fake"]["last_exit"], "killed by signal 9 (SIGKILL)")

    def assert_unavailable_at_once(self, gateway, server_id, *phrases):
        started = time.monotonic()
        status, reply = gateway.call(server_id, rpc("ping"))
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual((status, reply["error"]["data"]["error_code"]), (503, "server_unavailable"))
        for phrase in phrases:
            self.assertIn(phrase, reply["error"]["message"])
        return reply

    def test_servers_that_cannot_become_ready_answer_503_at_once_with_the_reason(self):
        gateway = GatewayProcess(self, base_config([
            fake_server("crashloop", "--exit-at-start", "3"),
            {"server_id": "missing", "command": "no-such-command-hmg", "autostart": True, "restart_policy": "never"},
            fake_server("dies", "--handshake", "die"),
            fake_server("hangs", "--handshake", "hang", startup_timeout_ms=400, restart_policy="never"),
            fake_server("refuses", "--handshake", "error", restart_policy="never"),
        ], restart_backoff_ms=60000))
        gateway.wait_state("missing", "failed")
        gateway.wait_state("crashloop", "backoff")
        gateway.wait_state("dies", "backoff")
        gateway.wait_state("hangs", "failed")
        gateway.wait_state("refuses", "failed")
        self.assert_unavailable_at_once(gateway, "crashloop", "exited with code 3", "exiting at start")
        self.assert_unavailable_at_once(gateway, "missing", "'no-such-command-hmg': not found on the gateway's PATH",
                                        "stays down")
        self.assert_unavailable_at_once(gateway, "dies", "exited with code 3", "dying during handshake", "next start in")
        self.assert_unavailable_at_once(gateway, "hangs", "did not answer initialize within 400 ms")
        self.assert_unavailable_at_once(gateway, "refuses", "refused initialize", "handshake refused")
        servers = gateway.servers()
        self.assertEqual(servers["crashloop"]["last_exit"], "exited with code 3")
        self.assertGreater(servers["crashloop"]["next_start_in_s"], 50)
        status, _, health = gateway.request("GET", "/health")
        self.assertEqual((status, health["status"]), (503, "degraded"))

    def test_crash_loop_backs_off_and_counts_restarts(self):
        gateway = GatewayProcess(self, base_config([fake_server("loop", "--exit-at-start", "1")], restart_backoff_ms=50))
        wait_for(lambda: gateway.servers()["loop"]["restart_count"] >= 3, what="three restarts")
        delays = [r["delay_s"] for r in gateway.logs if r.get("event") == "server_restart_scheduled"][:3]
        self.assertEqual(delays, [0.05, 0.1, 0.2])

    def test_restart_policies(self):
        gateway = GatewayProcess(self, base_config([
            fake_server("never", restart_policy="never"), fake_server("onfail", restart_policy="on-failure"),
            fake_server("always", restart_policy="always")]))
        for server_id in ("never", "onfail", "always"):
            gateway.wait_state(server_id, "ready")
        gateway.call("never", tool_call("crash", code=1))
        gateway.call("onfail", tool_call("crash", code=0))
        gateway.call("always", tool_call("crash", code=0))
        self.assertEqual(gateway.wait_state("never", "failed")["last_exit"], "exited with code 1")
        self.assertEqual(gateway.wait_state("onfail", "stopped")["last_exit"], "exited with code 0")
        wait_for(lambda: gateway.servers()["always"]["restart_count"] == 1 and gateway.servers()["always"]["state"] == "ready",
                 what="always to restart")
        self.assert_unavailable_at_once(gateway, "never", "exited with code 1", "stays down")
        self.assert_unavailable_at_once(gateway, "onfail", "exited with code 0", "stays down")


    def test_a_command_that_exits_at_once_is_reported_at_once_every_time(self):
        quitters = [{"server_id": "quits-%d" % n, "command": "/bin/sh", "args": ["-c", "echo bye %d >&2; exit 3" % n],
                     "autostart": True, "restart_policy": "never", "startup_timeout_ms": 60000} for n in range(6)]
        quitters.append({"server_id": "true", "command": "/bin/true", "autostart": True, "restart_policy": "never",
                         "startup_timeout_ms": 60000})
        gateway = GatewayProcess(self, base_config(quitters))
        for n in range(6):  # long before the startup timeout: the exit itself is noticed
            server = gateway.wait_state("quits-%d" % n, "failed")
            self.assertIn("exited with code 3; last stderr: bye %d" % n, server["last_error"])
        self.assertIn("exited with code 0", gateway.wait_state("true", "failed")["last_error"])
        self.assertEqual(gateway.stop(), 0)
        self.assertNotIn("Traceback", "".join(gateway.raw_stderr))


class ComponentTest(unittest.TestCase):
    """ServerRuntime and ChildProcess in this process, to check that every thread they start ends."""

    def test_runtime_start_call_stop_leaves_no_thread_or_process(self):
        before = set(threading.enumerate())
        config = gw.validate_config(base_config([fake_server()]))
        logs = []
        logger = gw.Logger(stream=type("Sink", (), {"write": logs.append, "flush": lambda self: None})())
        telemetry = gw.Telemetry(gw.TelemetrySettings({}), logger)
        router = gw.Router(config, logger, telemetry)
        runtime = gw.ServerRuntime(config.servers[0], config, logger, telemetry, router.on_child_message,
                                   router.on_child_ready)
        runtime.start()
        child = runtime.ready_child(time.monotonic() + TIMEOUT)
        reply = child.call(tool_call("add", "x", a=1, b=2), time.monotonic() + TIMEOUT)
        self.assertEqual((reply["id"], reply["result"]["structuredContent"]), ("x", {"sum": 3}))
        pid = child.pid
        runtime.request_stop()
        runtime.join(TIMEOUT)
        self.assertEqual(runtime.state, "stopped")
        wait_for(lambda: set(threading.enumerate()) <= before, what="every thread to end")
        self.assertTrue(process_gone(pid))
        self.assertFalse(any(gw.TOKEN_HELP in line for line in logs))

    def test_a_stopped_runtime_takes_on_no_child_of_a_client(self):
        """A session's or request's own child adopted after its server's stop would be one nobody stops."""
        config = gw.validate_config(base_config([fake_server(isolation="session", autostart=False)]))
        logger = gw.Logger(stream=type("Sink", (), {"write": lambda self, text: None, "flush": lambda self: None})())
        telemetry = gw.Telemetry(gw.TelemetrySettings({}), logger)
        router = gw.Router(config, logger, telemetry)
        runtime = gw.ServerRuntime(config.servers[0], config, logger, telemetry, router.on_child_message)
        private = gw.ServerRuntime(config.servers[0], config, logger, telemetry, router.on_child_message)
        runtime.request_stop("the server was removed")
        with self.assertRaises(gw.GatewayError) as caught:
            runtime.adopt("session-1", private)
        self.assertEqual((caught.exception.http_status, caught.exception.error_code), (503, "server_unavailable"))
        self.assertIn("the server was removed", caught.exception.message)
        self.assertEqual((runtime.owned(), private.state), ([], "stopped"))  # never started
        serving = gw.ServerRuntime(config.servers[0], config, logger, telemetry, router.on_child_message)
        private.request_stop("session closed")  # evicted between its admission and its adoption
        with self.assertRaises(gw.GatewayError):
            serving.adopt("session-2", private)
        self.assertEqual(serving.owned(), [])  # no room held for good by a child that never runs


# MCP Streamable HTTP: sessions, streams, server-to-client traffic --------------------------------------------------

SSE_ACCEPT = "application/json, text/event-stream"
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def read_sse(response, until=None):
    """SSE events from a response as (event id or None, decoded message); stops at the end, or once `until`
    (a predicate on the message) is true. Comments are returned as (None, ':comment')."""
    events, fields = [], {}
    while True:
        line = response.readline()
        if not line:
            return events
        line = line.decode("utf-8").rstrip("\r\n")
        if line.startswith(":"):
            events.append((None, ":" + line[1:].strip()))
            if until is not None and until(events[-1][1]):
                return events
        elif line:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        elif "data" in fields:
            message = json.loads(fields["data"])
            events.append((fields.get("id"), message))
            fields = {}
            if until is not None and until(message):
                return events


class McpClient:
    """A minimal Streamable HTTP client: one session, its POSTs on one keep-alive connection."""

    def __init__(self, gateway, server_id="fake", capabilities=None, protocol_version="2025-06-18"):
        self.gateway = gateway
        self.server_id = server_id
        self.path = "/%s/rpc" % server_id
        self.conn = gateway.connect()
        self.session_id = None
        status, response, messages = self.post(rpc("initialize", {
            "protocolVersion": protocol_version, "capabilities": capabilities or {},
            "clientInfo": {"name": "test-client", "version": "1"}}, "init"))
        assert status == 200, (status, messages)
        self.initialize_result = messages[0]["result"]
        self.session_id = response.getheader("Mcp-Session-Id")
        assert self.post(INITIALIZED)[0] == 202

    def headers(self, accept=SSE_ACCEPT, **extra):
        headers = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json", "Accept": accept}
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
            headers["MCP-Protocol-Version"] = "2025-06-18"
        headers.update(extra)
        return headers

    def post(self, message, accept=SSE_ACCEPT, conn=None, **extra_headers):
        """(status, response, [messages]): the JSON body, or every event of an event stream."""
        conn = conn or self.conn
        conn.request("POST", self.path, json.dumps(message), self.headers(accept, **extra_headers))
        response = conn.getresponse()
        if response.getheader("Content-Type") == "text/event-stream":
            return response.status, response, [m for _, m in read_sse(response) if not isinstance(m, str)]
        data = response.read()
        return response.status, response, [json.loads(data)] if data else []

    def call(self, name, request_id=1, **arguments):
        status, _, messages = self.post(tool_call(name, request_id, **arguments))
        assert status == 200, (status, messages)
        return messages[-1]["result"]

    def open_stream(self, last_event_id=None):
        """A GET event stream on a connection of its own: (status, response)."""
        conn = self.gateway.connect()
        headers = self.headers("text/event-stream")
        headers.pop("Content-Type")
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        conn.request("GET", self.path, headers=headers)
        response = conn.getresponse()
        response.connection = conn  # for hang_up()
        return response

    def delete(self):
        conn = self.gateway.connect()
        conn.request("DELETE", self.path, headers=self.headers())
        response = conn.getresponse()
        response.read()
        return response.status


def hang_up(stream):
    """The client side of a GET stream goes away without a word."""
    stream.close()
    stream.connection.close()


def reopen_stream(client, last_event_id=None):
    """Opens the session's GET stream once the gateway has noticed that the previous one is gone (409 until)."""
    def attempt():
        response = client.open_stream(last_event_id)
        if response.status == 409:
            response.read()
            response.connection.close()
            return None
        return response
    return wait_for(attempt, what="the previous stream to end")


def stream_until(response, predicate):
    """Reads a GET stream until a message matches; returns every event read."""
    return read_sse(response, until=lambda m: not isinstance(m, str) and predicate(m))


class SessionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gateway = GatewayProcess(cls, base_config([fake_server(roots="client")], sse_keepalive_ms=200,
                                                      allowed_origins=["http://app.example:8080"]))

    @classmethod
    def addCleanup(cls, function, *args):
        cls.addClassCleanup(function, *args)

    def client(self, **kwargs):
        return McpClient(self.gateway, **kwargs)

    def received(self):
        return self.gateway.tool("received")["structuredContent"]

    def test_initialize_opens_a_session_answered_from_the_kept_result(self):
        initializes = self.gateway.tool("pid")["structuredContent"]["initializes"]
        client = self.client(protocol_version="2025-03-26")
        self.assertRegex(client.session_id, r"\A[!-~]{32,}\Z")
        self.assertEqual(client.initialize_result["protocolVersion"], "2025-03-26")
        self.assertEqual(client.initialize_result["serverInfo"]["name"], "fake")
        self.assertEqual(self.client(protocol_version="2099-01-01").initialize_result["protocolVersion"], "2025-11-25")
        self.assertNotEqual(client.session_id, self.client().session_id)
        self.assertEqual(self.gateway.tool("pid")["structuredContent"]["initializes"], initializes)
        self.assertEqual(client.call("add", a=1, b=2)["structuredContent"], {"sum": 3})

    def test_unknown_and_deleted_sessions_get_404(self):
        client = self.client()
        self.assertEqual(client.delete(), 204)
        for session_id in (client.session_id, "no-such-session"):
            client.session_id = session_id
            status, _, messages = client.post(rpc("ping"))
            self.assertEqual(status, 404)
            self.assertEqual(messages[0]["error"]["error_code"], "session_not_found")
            self.assertEqual(client.open_stream().status, 404)
            self.assertEqual(client.delete(), 404)

    def test_unsupported_protocol_version_header_is_400(self):
        client = self.client()
        status, _, messages = client.post(rpc("ping"), **{"MCP-Protocol-Version": "1999-01-01"})
        self.assertEqual((status, messages[0]["error"]["error_code"]), (400, "unsupported_protocol_version"))
        status, _, _ = client.post(rpc("ping"), **{"MCP-Protocol-Version": "2025-03-26"})
        self.assertEqual(status, 200)

    def test_a_discover_without_a_modern_claim_steers_clients_to_initialize(self):
        status, reply = self.gateway.call("fake", rpc("server/discover", {}, "probe"))
        self.assertEqual((status, reply["id"], reply["error"]["code"]), (200, "probe", -32601))
        status, reply = self.gateway.call("fake", rpc("server/discover", {}, "probe"),
                                          headers={"MCP-Protocol-Version": "2026-07-28"})
        self.assertEqual((status, reply["id"], reply["error"]["code"]), (400, "probe", -32602))

    def test_plain_calls_stay_json_even_when_streams_are_accepted(self):
        status, response, messages = self.client().post(tool_call("echo", 3, text="x"))
        self.assertEqual((status, response.getheader("Content-Type")), (200, "application/json"))
        self.assertEqual(messages[0]["result"]["structuredContent"]["text"], "x")

    def test_progress_streams_before_the_answer_with_each_sessions_own_token(self):
        def run(client):
            return client.post(rpc("tools/call", {"name": "progress", "arguments": {"steps": 3, "delay": 0.05},
                                                  "_meta": {"progressToken": "tok"}}, 1))
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(run, [self.client(), self.client()]))
        for status, response, messages in results:
            self.assertEqual((status, response.getheader("Content-Type")), (200, "text/event-stream"))
            progress = [m["params"] for m in messages[:-1]]
            self.assertEqual([(p["progressToken"], p["progress"]) for p in progress], [("tok", 1), ("tok", 2), ("tok", 3)])
            self.assertEqual((messages[-1]["id"], messages[-1]["result"]["content"][0]["text"]), (1, "done"))

    def test_progress_without_stream_accept_goes_to_the_get_stream(self):
        client = self.client()
        stream = client.open_stream()
        status, response, messages = client.post(
            rpc("tools/call", {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": 9}}, 4),
            accept="application/json")
        self.assertEqual((status, response.getheader("Content-Type"), messages[0]["id"]), (200, "application/json", 4))
        events = stream_until(stream, lambda m: m.get("params", {}).get("progress") == 2)
        self.assertEqual([m["params"]["progressToken"] for _, m in events if not isinstance(m, str)], [9, 9])

    def test_get_stream_delivers_child_notifications_to_every_session(self):
        clients = [self.client(), self.client()]
        streams = [client.open_stream() for client in clients]
        for stream, client in zip(streams, clients):
            self.assertEqual(stream.status, 200)
            self.assertEqual(stream.getheader("Content-Type"), "text/event-stream")
            self.assertEqual(stream.getheader("Mcp-Session-Id"), client.session_id)
        self.gateway.tool("notify", method="notifications/message", params={"level": "info", "data": "hello all"})
        for stream in streams:
            events = stream_until(stream, lambda m: m.get("method") == "notifications/message")
            self.assertEqual(events[-1][1]["params"]["data"], "hello all")
            self.assertTrue(events[-1][0].isdigit())

    def test_one_get_stream_per_session_and_disconnects_are_noticed(self):
        client = self.client()
        first = client.open_stream()
        self.assertEqual(first.status, 200)
        second = client.open_stream()
        self.assertEqual(second.status, 409)
        self.assertEqual(json.loads(second.read())["error"]["error_code"], "stream_conflict")
        keepalive = read_sse(first, until=lambda m: m == ":keepalive")
        self.assertEqual(keepalive[-1], (None, ":keepalive"))  # sse_keepalive_ms is 200 here
        hang_up(first)
        again = client.open_stream()  # the old stream's client is gone: it gives way without a keepalive
        self.assertEqual(again.status, 200)
        hang_up(again)

    def test_replay_after_last_event_id(self):
        client = self.client()
        stream = client.open_stream()
        for n in range(3):
            self.gateway.tool("notify", method="notifications/message", params={"level": "info", "data": "m%d" % n})
        events = stream_until(stream, lambda m: m.get("params", {}).get("data") == "m2")
        ids = [int(event_id) for event_id, m in events if event_id]
        hang_up(stream)
        replayed = stream_until(reopen_stream(client, ids[0]), lambda m: m.get("params", {}).get("data") == "m2")
        self.assertEqual([m["params"]["data"] for _, m in replayed if not isinstance(m, str)], ["m1", "m2"])

    def test_get_without_a_session_opens_one(self):
        conn = self.gateway.connect()
        conn.request("GET", "/fake/rpc", headers={"Authorization": "Bearer " + TOKEN, "Accept": "text/event-stream"})
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        session_id = response.getheader("Mcp-Session-Id")
        self.assertRegex(session_id, r"\A[!-~]{32,}\Z")
        conn.close()
        status, reply = self.gateway.call("fake", rpc("ping"), headers={"Mcp-Session-Id": session_id})
        self.assertEqual(status, 200)

    def test_get_needs_an_event_stream_accept(self):
        status, _, body = self.gateway.request("GET", "/fake/rpc", headers={"Accept": "application/json"})
        self.assertEqual((status, body["error"]["error_code"]), (406, "not_acceptable"))

    def test_server_request_rides_on_the_calls_stream_and_the_answer_returns(self):
        client = self.client(capabilities={"roots": {"listChanged": True}})
        conn = self.gateway.connect()
        conn.request("POST", client.path, json.dumps(tool_call("ask", 7, method="roots/list")), client.headers())
        response = conn.getresponse()
        self.assertEqual(response.getheader("Content-Type"), "text/event-stream")
        events = read_sse(response, until=lambda m: m.get("method") == "roots/list")
        request = events[-1][1]
        self.assertTrue(request["id"].startswith("hmg-"))
        status, _, _ = client.post({"jsonrpc": "2.0", "id": request["id"], "result": {"roots": [{"uri": "file:///r"}]}})
        self.assertEqual(status, 202)
        answer = [m for _, m in read_sse(response) if not isinstance(m, str)][-1]
        self.assertEqual(answer["id"], 7)
        relayed = answer["result"]["structuredContent"]["response"]
        self.assertTrue(relayed["id"].startswith("srv-"))  # the child got its own id back
        self.assertEqual(relayed["result"], {"roots": [{"uri": "file:///r"}]})

    def test_a_shared_childs_request_never_reaches_a_client_that_only_has_a_stream_open(self):
        bystander = self.client(capabilities={"sampling": {}, "roots": {}})
        stream = bystander.open_stream()
        asker = self.client()  # declares neither: nobody whose call is in flight can answer
        for method in ("sampling/createMessage", "roots/list"):
            response = asker.call("ask", method=method, params={"x": 1})["structuredContent"]["response"]
            self.assertEqual(response["error"]["code"], -32601, method)
        self.gateway.tool("notify", method="notifications/message", params={"level": "info", "data": "marker"})
        events = stream_until(stream, lambda m: m.get("params", {}).get("data") == "marker")
        self.assertEqual([m["method"] for _, m in events if not isinstance(m, str)], ["notifications/message"])
        hang_up(stream)

    def test_server_request_nobody_can_answer_fails_at_once(self):
        started = time.monotonic()
        result = self.client().call("ask", method="elicitation/create", params={"message": "?"})
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual(result["structuredContent"]["response"]["error"]["code"], -32601)

    def test_only_the_asked_session_can_answer_a_server_request(self):
        asked = self.client(capabilities={"roots": {}})
        other = self.client(capabilities={"roots": {}})
        conn = self.gateway.connect()
        conn.request("POST", asked.path, json.dumps(tool_call("ask", 1, method="roots/list")), asked.headers())
        response = conn.getresponse()
        request = read_sse(response, until=lambda m: m.get("method") == "roots/list")[-1][1]
        self.assertEqual(other.post({"jsonrpc": "2.0", "id": request["id"], "result": {"roots": ["stolen"]}})[0], 202)
        self.assertEqual(asked.post({"jsonrpc": "2.0", "id": request["id"], "result": {"roots": ["mine"]}})[0], 202)
        answer = [m for _, m in read_sse(response) if not isinstance(m, str)][-1]
        self.assertEqual(answer["result"]["structuredContent"]["response"]["result"], {"roots": ["mine"]})

    def test_subscriptions_are_counted_and_updates_reach_only_subscribers(self):
        uri = "fake://counted"
        a, b, c = self.client(), self.client(), self.client()
        streams = {name: client.open_stream() for name, client in (("a", a), ("b", b), ("c", c))}
        for client in (a, b):
            status, _, messages = client.post(rpc("resources/subscribe", {"uri": uri}, "s"))
            self.assertEqual((status, messages[0]["result"]), (200, {}))
        subscriptions = [s for s in self.received()["subscriptions"] if s["uri"] == uri]
        self.assertEqual(subscriptions, [{"method": "resources/subscribe", "uri": uri}])
        self.gateway.tool("notify", method="notifications/resources/updated", params={"uri": uri})
        self.gateway.tool("notify", method="notifications/message", params={"level": "info", "data": "after"})
        for name in ("a", "b", "c"):
            events = stream_until(streams[name], lambda m: m.get("params", {}).get("data") == "after")
            updated = [m for _, m in events if not isinstance(m, str) and m["method"] == "notifications/resources/updated"]
            self.assertEqual(len(updated), 0 if name == "c" else 1, name)
        self.assertEqual(a.post(rpc("resources/unsubscribe", {"uri": uri}, "u"))[2][0]["result"], {})
        self.assertEqual([s["method"] for s in self.received()["subscriptions"] if s["uri"] == uri],
                         ["resources/subscribe"])
        self.assertEqual(b.delete(), 204)
        wait_for(lambda: [s["method"] for s in self.received()["subscriptions"] if s["uri"] == uri] ==
                 ["resources/subscribe", "resources/unsubscribe"], what="the child to be unsubscribed")

    def test_delete_cancels_the_sessions_calls_in_flight(self):
        client = self.client()
        with ThreadPoolExecutor(1) as pool:
            hung = pool.submit(client.post, tool_call("hang", "h"), conn=self.gateway.connect())
            wait_for(lambda: self.gateway.servers()["fake"]["calls_in_flight"] > 0, what="the call to be in flight")
            self.assertEqual(client.delete(), 204)
            status, _, messages = hung.result(TIMEOUT)
        self.assertEqual((status, messages[0]["id"], messages[0]["error"]["code"]), (200, "h", -32800))
        cancels = [n for n in self.received()["notifications"] if n["method"] == "notifications/cancelled"]
        self.assertIn("session ended by its client", cancels[-1]["params"]["reason"])

    def test_origin_rules(self):
        allowed = "http://app.example:8080"
        cases = [({"Origin": "http://evil.example"}, 403), ({"Origin": allowed}, 200),
                 ({"Origin": "http://127.0.0.1:%d" % self.gateway.port}, 200),
                 ({"Origin": "http://localhost:%d" % self.gateway.port, "Host": "localhost:%d" % self.gateway.port}, 200),
                 ({"Origin": "http://evil.example:%d" % self.gateway.port, "Host": "evil.example:%d" % self.gateway.port}, 403),
                 ({"Origin": "null"}, 403)]
        for headers, expected in cases:
            with self.subTest(headers=headers):
                status, response, body = self.gateway.request("GET", "/servers", headers=headers)
                self.assertEqual(status, expected)
                if expected == 403:
                    self.assertEqual(body["error"]["error_code"], "forbidden_origin")
                else:
                    self.assertEqual(response.getheader("Access-Control-Allow-Origin"), headers["Origin"])
                    self.assertIn("Mcp-Session-Id", response.getheader("Access-Control-Expose-Headers"))

    def test_cors_preflight_is_answered_without_a_token_for_allowed_origins_only(self):
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "mcp-session-id"}
        status, response, _ = self.gateway.request("OPTIONS", "/fake/rpc", token=None,
                                                   headers=dict(preflight, Origin="http://app.example:8080"))
        self.assertEqual(status, 204)
        self.assertIn("Mcp-Session-Id", response.getheader("Access-Control-Allow-Headers"))
        self.assertIn("DELETE", response.getheader("Access-Control-Allow-Methods"))
        status, _, _ = self.gateway.request("OPTIONS", "/fake/rpc", token=None,
                                            headers=dict(preflight, Origin="http://evil.example"))
        self.assertEqual(status, 403)
        self.assertEqual(self.gateway.request("OPTIONS", "/fake/rpc", token=None)[0], 401)

    def test_a_preflight_does_not_tell_which_servers_exist(self):
        preflight = {"Access-Control-Request-Method": "POST", "Origin": "http://app.example:8080"}
        answers = []
        for path in ("/fake/rpc", "/no-such-server/rpc"):
            status, response, body = self.gateway.request("OPTIONS", path, token=None, headers=preflight)
            answers.append((status, body, response.getheader("Access-Control-Allow-Methods")))
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0][0], 204)


def in_flight_from(testcase, client, message):
    """Posts `message` on a connection of its own from a worker thread; returns the future of its result."""
    pool = ThreadPoolExecutor(1)
    testcase.addCleanup(pool.shutdown)
    return pool.submit(client.post, message, conn=client.gateway.connect())


def session_views(gateway, server_id="fake"):
    return {view["session"]: view for view in gateway.servers()[server_id]["sessions"]}


class SessionLimitsTest(unittest.TestCase):
    def test_idle_sessions_expire(self):
        gateway = GatewayProcess(self, base_config([fake_server()], session_idle_timeout_ms=300))
        first, second = McpClient(gateway), McpClient(gateway)
        stream = first.open_stream()  # a session with an open stream is not idle
        gateway.wait_log(lambda r: r.get("event") == "session_closed" and r.get("reason") == "expired" and
                         r.get("session") == second.session_id[:8])
        self.assertEqual(second.post(rpc("ping"))[0], 404)
        self.assertEqual(first.post(rpc("ping"), conn=gateway.connect())[0], 200)
        hang_up(stream)

    def test_at_max_sessions_the_idle_session_that_matters_least_gives_way(self):
        gateway = GatewayProcess(self, base_config([fake_server()], max_sessions=2, session_grace_ms=300))
        used, unused = McpClient(gateway), McpClient(gateway)
        self.assertEqual(used.post(rpc("ping"))[0], 200)
        self.assertEqual(unused.post(rpc("ping", request_id=2), conn=gateway.connect())[0], 200)
        self.assertEqual(used.post(rpc("ping", request_id=3))[0], 200)  # `unused` is now the least recently active
        fresh = McpClient(gateway)  # nothing is over its grace yet: the least recently active goes
        evicted = gateway.wait_log(lambda r: r.get("event") == "session_evicted")
        self.assertEqual((evicted["session"], evicted["limit"]), (unused.session_id[:8], "max_sessions"))
        self.assertEqual(unused.post(rpc("ping"))[0], 404)
        views = wait_for(lambda: [v for v in session_views(gateway).values() if v["session"] == fresh.session_id[:8]
                                  and v["age_s"] > 0.3], what="the new session to be past its grace")
        self.assertEqual((views[0]["used"], views[0]["client"], views[0]["opened_by"]),
                         (False, "test-client 1", "initialize"))
        self.assertEqual(used.post(rpc("ping", request_id=4))[0], 200)
        McpClient(gateway)  # `fresh` never made a request within its grace: it goes first, though more recent
        self.assertEqual(fresh.post(rpc("ping"))[0], 404)
        self.assertEqual(used.post(rpc("ping", request_id=5))[0], 200)

    def test_503_only_when_every_session_is_busy(self):
        gateway = GatewayProcess(self, base_config([fake_server()], max_sessions=2))
        streaming, calling = McpClient(gateway), McpClient(gateway)
        stream = streaming.open_stream()
        hung = in_flight_from(self, calling, tool_call("hang", "h"))
        wait_for(lambda: gateway.servers()["fake"]["calls_in_flight"] == 1, what="the call to be in flight")
        views = session_views(gateway)
        self.assertTrue(views[streaming.session_id[:8]]["stream_open"])
        with self.assertRaises(AssertionError) as caught:
            McpClient(gateway)
        self.assertIn("too_many_sessions", str(caught.exception))
        self.assertEqual(calling.delete(), 204)
        self.assertEqual(hung.result(TIMEOUT)[2][0]["error"]["code"], -32800)
        hang_up(stream)
        McpClient(gateway)  # there is room again

    def test_a_session_opened_by_a_get_ends_soon_after_its_stream(self):
        gateway = GatewayProcess(self, base_config([fake_server()], session_grace_ms=200, max_sessions=3,
                                                   sse_keepalive_ms=100))
        for _ in range(5):  # more than max_sessions GETs in a row, each hung up: none blocks the next
            conn = gateway.connect()
            conn.request("GET", "/fake/rpc", headers={"Authorization": "Bearer " + TOKEN,
                                                      "Accept": "text/event-stream"})
            response = conn.getresponse()
            self.assertEqual(response.status, 200)
            session_id = response.getheader("Mcp-Session-Id")
            conn.close()
        gateway.wait_log(lambda r: r.get("event") == "session_closed" and r.get("session") == session_id[:8] and
                         r.get("reason") == "its stream ended and it was never used")
        self.assertEqual(gateway.call("fake", rpc("ping"), headers={"Mcp-Session-Id": session_id})[0], 404)
        kept = McpClient(gateway)  # an initialized session is not ended for being unused (reaped every 50 ms)
        wait_for(lambda: session_views(gateway)[kept.session_id[:8]]["age_s"] > 0.5, what="a few reaper rounds")
        self.assertEqual(kept.post(rpc("ping"))[0], 200)


class RestartInvisibleTest(unittest.TestCase):
    def test_sessions_survive_a_restart(self):
        gateway = GatewayProcess(self, base_config([fake_server()]))
        client = McpClient(gateway)
        stream = client.open_stream()
        self.assertEqual(client.post(rpc("resources/subscribe", {"uri": "fake://kept"}, 1))[0], 200)
        old_pid = client.call("pid")["structuredContent"]["pid"]
        status, _, messages = client.post(tool_call("crash", 2, code=9))
        self.assertEqual(messages[0]["error"]["data"]["error_code"], "server_exited")
        events = stream_until(stream, lambda m: m.get("method") == "notifications/prompts/list_changed")
        methods = {m["method"] for _, m in events if not isinstance(m, str)}
        self.assertLessEqual({"notifications/tools/list_changed", "notifications/resources/list_changed"}, methods)
        new_pid = client.call("pid")["structuredContent"]["pid"]  # the same session, a new child
        self.assertNotEqual(old_pid, new_pid)
        wait_for(lambda: {"method": "resources/subscribe", "uri": "fake://kept"} in
                 client.call("received")["structuredContent"]["subscriptions"], what="the subscription to be renewed")


class RestartNoticeTest(unittest.TestCase):
    def test_each_list_changed_reaches_a_session_once_until_it_lists_again(self):
        gateway = GatewayProcess(self, base_config([fake_server("fake", "--list-changed-burst", "5")]))
        client = McpClient(gateway)
        stream = client.open_stream()
        client.post(tool_call("crash", 2, code=9))
        self.assertEqual(client.call("echo", text="restarted")["content"][0]["text"], "restarted")

        def tools_changed_until(marker):
            client.call("notify", method="notifications/message", params={"level": "info", "data": marker})
            events = stream_until(stream, lambda m: m.get("params", {}).get("data") == marker)
            return [m for _, m in events if not isinstance(m, str) and
                    m["method"] == "notifications/tools/list_changed"]
        self.assertEqual(len(tools_changed_until("after restart")), 1)  # the gateway's and the child's burst of 5
        client.call("notify", method="notifications/tools/list_changed")
        self.assertEqual(tools_changed_until("not listed yet"), [])
        self.assertEqual(client.post(rpc("tools/list", request_id=3))[0], 200)
        client.call("notify", method="notifications/tools/list_changed")
        self.assertEqual(len(tools_changed_until("listed again")), 1)
        hang_up(stream)


def answer_child_request(client, message, result):
    """Posts `message` (a call that makes the child ask its client), answers the child's request that arrives on
    the call's stream with `result`; returns (the request, the call's final answer)."""
    conn = client.gateway.connect()
    conn.request("POST", client.path, json.dumps(message), client.headers())
    response = conn.getresponse()
    request = read_sse(response, until=lambda m: "id" in m and "method" in m)[-1][1]
    assert client.post({"jsonrpc": "2.0", "id": request["id"], "result": result})[0] == 202
    return request, [m for _, m in read_sse(response) if not isinstance(m, str)][-1]


class RootsTest(unittest.TestCase):
    """Roots are one client's own: which client, if any, a child's roots/list reaches (the `roots` setting)."""

    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="hmg-roots-")
        cls.fixed = [{"uri": "file://" + urllib.parse.quote(cls.folder), "name": os.path.basename(cls.folder)},
                     {"uri": "file:///srv/shared%20data", "name": "shared data"}]
        cls.gateway = GatewayProcess(cls, base_config([
            fake_server("fixed", roots=[cls.folder, "file:///srv/shared%20data"]), fake_server("unset"),
            fake_server("own", isolation="session", autostart=False),
            fake_server("own-fixed", isolation="session", autostart=False, roots=[cls.folder])]))

    @classmethod
    def addCleanup(cls, function, *args):
        cls.addClassCleanup(function, *args)

    def client(self, server_id):
        return McpClient(self.gateway, server_id, capabilities={"roots": {"listChanged": True}, "sampling": {}})

    @staticmethod
    def notified_after_roots_changed(client):
        """The notifications the child has seen once the client said its roots changed (and a marker)."""
        for method in ("notifications/roots/list_changed", "notifications/marker-roots"):
            assert client.post({"jsonrpc": "2.0", "method": method})[0] == 202
        wait_for(lambda: "notifications/marker-roots" in [
            n["method"] for n in client.call("received")["structuredContent"]["notifications"]], what="the marker")
        return [n["method"] for n in client.call("received")["structuredContent"]["notifications"]]

    def test_fixed_roots_are_answered_by_the_gateway_and_survive_a_restart(self):
        client = self.client("fixed")
        for attempt in ("first child", "after a restart"):
            with self.subTest(attempt):
                status, _, messages = client.post(tool_call("ask", 1, method="roots/list"))
                self.assertEqual((status, len(messages)), (200, 1))  # the client was never asked
                self.assertEqual(messages[0]["result"]["structuredContent"]["response"]["result"],
                                 {"roots": self.fixed})
                capabilities = client.call("received")["structuredContent"]["initialize"]["capabilities"]
                self.assertEqual(capabilities["roots"], {})
                client.post(tool_call("crash", 2, code=1))
        self.assertNotIn("notifications/roots/list_changed", self.notified_after_roots_changed(client))

    def test_unset_roots_are_refused_at_once_even_when_the_caller_has_some(self):
        client = self.client("unset")
        started = time.monotonic()
        status, _, messages = client.post(tool_call("ask", 1, method="roots/list"))
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual((status, len(messages)), (200, 1))
        self.assertEqual(messages[0]["result"]["structuredContent"]["response"]["error"]["code"], -32601)
        self.assertNotIn("roots", client.call("received")["structuredContent"]["initialize"]["capabilities"])
        self.assertNotIn("notifications/roots/list_changed", self.notified_after_roots_changed(client))

    def test_a_per_session_child_asks_its_own_client(self):
        client = self.client("own")
        capabilities = client.call("received")["structuredContent"]["initialize"]["capabilities"]
        self.assertEqual(capabilities["roots"], {"listChanged": True})
        mine = {"roots": [{"uri": "file:///Users/a/projects"}]}
        request, answer = answer_child_request(client, tool_call("ask", 1, method="roots/list"), mine)
        self.assertEqual(request["method"], "roots/list")
        self.assertEqual(answer["result"]["structuredContent"]["response"]["result"], mine)
        self.assertIn("notifications/roots/list_changed", self.notified_after_roots_changed(client))

    def test_a_per_session_child_with_fixed_roots_gets_them_from_the_gateway(self):
        client = self.client("own-fixed")
        capabilities = client.call("received")["structuredContent"]["initialize"]["capabilities"]
        self.assertEqual((capabilities["roots"], capabilities["sampling"]), ({}, {}))
        status, _, messages = client.post(tool_call("ask", 1, method="roots/list"))
        self.assertEqual((status, len(messages)), (200, 1))
        self.assertEqual(messages[0]["result"]["structuredContent"]["response"]["result"], {"roots": self.fixed[:1]})
        self.assertNotIn("notifications/roots/list_changed", self.notified_after_roots_changed(client))


class IsolationTest(unittest.TestCase):
    def test_each_session_gets_its_own_child(self):
        gateway = GatewayProcess(self, base_config([fake_server("own", isolation="session", max_children=2,
                                                                autostart=False)]))
        first, second = McpClient(gateway, "own"), McpClient(gateway, "own")
        pids = [client.call("pid")["structuredContent"] for client in (first, second)]
        self.assertNotEqual(pids[0]["pid"], pids[1]["pid"])
        self.assertEqual([p["initializes"] for p in pids], [1, 1])
        children = gateway.servers()["own"]["children"]
        self.assertEqual(sorted(child["pid"] for child in children), sorted(p["pid"] for p in pids))
        self.assertEqual({child["session"] for child in children}, {first.session_id[:8], second.session_id[:8]})
        self.assertTrue(all(child["session_age_s"] >= child["session_idle_s"] >= 0 for child in children))
        status, reply = gateway.call("own", rpc("ping"))
        self.assertEqual((status, reply["error"]["data"]["error_code"]), (400, "session_required"))
        status, _, body = gateway.request("POST", "/rpc", {"server_id": "own", "payload": rpc("ping")})
        self.assertEqual((status, body["error"]["error_code"]), (400, "session_required"))
        status, reply = gateway.call("own", rpc("server/discover", {}, "probe"))
        self.assertEqual((status, reply["error"]["code"]), (200, -32601))
        self.assertEqual(first.delete(), 204)
        wait_for(lambda: process_gone(pids[0]["pid"]), what="the session's child to stop")
        self.assertEqual(len(gateway.servers()["own"]["children"]), 1)
        McpClient(gateway, "own")  # room for another
        self.assertEqual(gateway.stop(), 0)
        wait_for(lambda: process_gone(pids[1]["pid"]), what="every child to stop")

    def test_sessions_that_are_never_closed_give_way_to_new_ones(self):
        gateway = GatewayProcess(self, base_config([fake_server("own", isolation="session", max_children=2,
                                                                autostart=False)]))
        busy, idle = McpClient(gateway, "own"), McpClient(gateway, "own")
        idle_pid = idle.call("pid")["structuredContent"]["pid"]
        stream = busy.open_stream()
        for _ in range(3):  # like `claude mcp list` run again and again: initialize, never DELETE
            newest = McpClient(gateway, "own")
        self.assertEqual(idle.post(rpc("ping"))[0], 404)
        wait_for(lambda: process_gone(idle_pid), what="the evicted session's child to stop")
        evictions = [r for r in gateway.logs if r.get("event") == "session_evicted"]
        self.assertEqual([r["limit"] for r in evictions], ["max_children"] * 3)
        hung = in_flight_from(self, newest, tool_call("hang", "h"))
        wait_for(lambda: any(child["calls_in_flight"] for child in gateway.servers()["own"]["children"]),
                 what="the call to be in flight")
        with self.assertRaises(AssertionError) as caught:  # a stream and a call in flight: nobody gives way
            McpClient(gateway, "own")
        self.assertIn("too_many_children", str(caught.exception))
        self.assertEqual(newest.delete(), 204)
        self.assertEqual(hung.result(TIMEOUT)[2][0]["error"]["code"], -32800)
        hang_up(stream)


# Revision 2026-07-28: eras, the modern envelope, multi round-trip requests, subscriptions/listen ----------------

MODERN = "2026-07-28"
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN,
               "io.modelcontextprotocol/clientInfo": {"name": "modern-test", "version": "1"},
               "io.modelcontextprotocol/clientCapabilities": {}}


def modern(method, params=None, request_id=1, capabilities=None, **meta):
    """A request of revision 2026-07-28 and the headers that mirror it."""
    envelope = dict(MODERN_META, **meta)
    if capabilities is not None:
        envelope["io.modelcontextprotocol/clientCapabilities"] = capabilities
    message = rpc(method, dict(params or {}, _meta=envelope), request_id)
    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method, "Accept": SSE_ACCEPT}
    name = (params or {}).get("name", (params or {}).get("uri"))
    if isinstance(name, str):
        headers["Mcp-Name"] = name
    return message, headers


class EraUnitTest(unittest.TestCase):
    def test_request_era_ladder(self):
        good, headers = modern("tools/list")
        no_caps = rpc("tools/list", {"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}})
        future = rpc("tools/list", {"_meta": dict(MODERN_META, **{"io.modelcontextprotocol/protocolVersion":
                                                                    "2099-01-01"})})
        bad_info = rpc("tools/list", {"_meta": dict(MODERN_META, **{"io.modelcontextprotocol/clientInfo": "x"})})
        lowered = {name.lower(): value for name, value in headers.items()}
        cases = [  # (message, headers, era or the JSON-RPC error code it gets)
            (good, lowered, "modern"),
            (good, {}, "modern"),  # the body decides; check_modern_headers then asks for the headers
            (rpc("tools/list"), {}, "legacy"),
            (rpc("tools/list"), {"mcp-protocol-version": "2025-06-18"}, "legacy"),
            (rpc("initialize", {"protocolVersion": "2025-11-25"}), {}, "legacy"),
            (rpc("initialize", {}), {"mcp-protocol-version": MODERN}, -32020),
            (rpc("tools/list"), {"mcp-protocol-version": MODERN}, -32602),
            (no_caps, {}, -32602),
            (bad_info, {}, -32602),
            (good, {"mcp-protocol-version": "2025-11-25"}, -32020),
            (good, {"mcp-method": "tools/call"}, -32020),
            (future, {}, -32022),
            ([good], {}, -32600),
            ([rpc("ping")], {}, "legacy"),
            ({"jsonrpc": "2.0", "id": 1, "result": {}}, {"mcp-protocol-version": MODERN}, "legacy"),
            ({"jsonrpc": "2.0", "method": "notifications/x"}, {"mcp-protocol-version": MODERN}, "modern"),
        ]
        for message, request_headers, expected in cases:
            with self.subTest(message=message, headers=request_headers):
                try:
                    era, _ = gw.request_era(message, request_headers)
                except gw.GatewayError as e:
                    self.assertEqual((e.rpc_code, e.http_status), (expected, 400))
                    if expected == -32022:
                        self.assertEqual(e.rpc_data, {"supported": list(gw.ALL_PROTOCOL_VERSIONS),
                                                      "requested": "2099-01-01"})
                else:
                    self.assertEqual(era, expected)

    def test_standard_headers(self):
        message, headers = modern("tools/call", {"name": "echo"})
        lowered = {name.lower(): value for name, value in headers.items()}
        encoded = "=?base64?" + base64.b64encode("écho".encode()).decode() + "?="
        unicode_message, _ = modern("tools/call", {"name": "écho"})
        cases = [(message, lowered, None), (message, dict(lowered, **{"mcp-name": "  echo "}), None),
                 (message, {k: v for k, v in lowered.items() if k != "mcp-name"}, "Mcp-Name header is missing"),
                 (message, {k: v for k, v in lowered.items() if k != "mcp-method"}, "Mcp-Method"),
                 (message, {k: v for k, v in lowered.items() if k != "mcp-protocol-version"}, "MCP-Protocol-Version"),
                 (message, dict(lowered, **{"mcp-name": "other"}), "Mcp-Name 'other'"),
                 (message, dict(lowered, **{"mcp-name": "=?base64?!!?="}), "invalid base64"),
                 (unicode_message, dict(lowered, **{"mcp-name": encoded}), None),
                 (modern("tools/list")[0], {"mcp-protocol-version": MODERN, "mcp-method": "tools/list"}, None)]
        for request, request_headers, problem in cases:
            with self.subTest(headers=request_headers):
                if problem is None:
                    gw.check_modern_headers(request, request_headers)
                else:
                    with self.assertRaises(gw.GatewayError) as caught:
                        gw.check_modern_headers(request, request_headers)
                    self.assertEqual(caught.exception.rpc_code, -32020)
                    self.assertIn(problem, caught.exception.message)

    def test_request_state_is_refused_when_tampered_foreign_stale_or_for_another_request(self):
        clock = [1000.0]
        codec = gw.RequestStateCodec(clock=lambda: clock[0])
        state = codec.encode(7, "tools/call", "ask", 30)
        self.assertEqual(codec.decode(state, "tools/call", "ask"), 7)
        payload, signature = state.split(".")
        forged = base64.urlsafe_b64encode(b'[8,"tools/call","ask",99999]').rstrip(b"=").decode() + "." + signature
        cases = [(state + "-TAMPERED", "tools/call", "ask", "integrity"), (forged, "tools/call", "ask", "integrity"),
                 (gw.RequestStateCodec().encode(7, "tools/call", "ask", 30), "tools/call", "ask", "integrity"),
                 ("not-a-state", "tools/call", "ask", "not one the gateway issued"),
                 (12, "tools/call", "ask", "not one the gateway issued"),
                 (state, "prompts/get", "ask", "another request"), (state, "tools/call", "echo", "another request")]
        for bad, method, target, why in cases:
            with self.subTest(state=bad, method=method, target=target):
                with self.assertRaises(gw.GatewayError) as caught:
                    codec.decode(bad, method, target)
                self.assertEqual((caught.exception.rpc_code, caught.exception.http_status), (-32602, 400))
                self.assertIn(why, caught.exception.message)
        clock[0] += 31
        with self.assertRaises(gw.GatewayError) as caught:
            codec.decode(state, "tools/call", "ask")
        self.assertIn("expired", caught.exception.message)

    def test_arguments_mirrored_into_headers(self):
        schema = {"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"}, "zone": {"type": "integer", "x-mcp-header": "Zone"},
            "nested": {"type": "object", "properties": {"on": {"type": "boolean", "x-mcp-header": "On"}}},
            "list": {"type": "array", "items": {"type": "string", "x-mcp-header": "Never"}}}}
        declarations = gw.x_mcp_header_params(schema)
        self.assertEqual(sorted(declarations), [(("nested", "on"), "On", "boolean"), (("region",), "Region", "string"),
                                                (("zone",), "Zone", "integer")])
        accented = "=?base64?" + base64.b64encode("Zürich".encode()).decode() + "?="
        cases = [({"region": "eu"}, {"mcp-param-region": "eu"}, None),
                 ({"region": "eu", "zone": 4}, {"mcp-param-region": "eu", "mcp-param-zone": "4.0"}, None),
                 ({"nested": {"on": True}}, {"mcp-param-on": "true"}, None),
                 ({"region": "Zürich"}, {"mcp-param-region": accented}, None),
                 ({"region": None}, {}, None), ({}, {"mcp-param-region": "ignored"}, None),
                 ({"region": "eu"}, {}, "header is missing"),
                 ({"region": "eu"}, {"mcp-param-region": "us"}, "'us'"),
                 ({"zone": 4}, {"mcp-param-zone": "5"}, "arguments.zone"),
                 ({"region": "é"}, {"mcp-param-region": "\xc3\xa9"}, "characters"),
                 ({"region": "eu"}, {"mcp-param-region": "=?base64?%%%?="}, "invalid base64")]
        for arguments, headers, problem in cases:
            with self.subTest(arguments=arguments, headers=headers):
                found = gw.param_header_problem(declarations, arguments, headers)
                if problem is None:
                    self.assertIsNone(found)
                else:
                    self.assertIn(problem, found)

    def test_what_a_handshake_era_child_is_given(self):
        claim = {"io.modelcontextprotocol/protocolVersion": MODERN}
        rest = {key: value for key, value in MODERN_META.items() if key not in claim}
        cases = [(rpc("x", {"a": 1, "_meta": dict(MODERN_META, traceparent="t")}),
                  rpc("x", {"a": 1, "_meta": dict(rest, traceparent="t")})),
                 (rpc("x", {"a": 1, "_meta": dict(claim)}), rpc("x", {"a": 1})),
                 (rpc("x", {"_meta": dict(claim, progressToken=1)}), rpc("x", {"_meta": {"progressToken": 1}})),
                 (rpc("x", {"a": 1, "inputResponses": {"k": {}}, "_meta": dict(claim)}), rpc("x", {"a": 1}))]
        for message, expected in cases:
            with self.subTest(message=message):
                self.assertEqual(gw.drop_claim(message), expected)
        asked = {"jsonrpc": "2.0", "id": 3, "method": "elicitation/create", "params": {"message": "m", "_meta": {
            "progressToken": 0}}}
        self.assertEqual(gw.input_request(asked), {"method": "elicitation/create", "params": {"message": "m"}})

    def test_results_and_errors_as_modern_clients_get_them(self):
        info = {"name": "fake", "version": "1"}
        cases = [("tools/list", {"result": {"tools": []}},
                  {"result": {"tools": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private",
                              "_meta": {"io.modelcontextprotocol/serverInfo": info}}}),
                 ("tools/call", {"result": {"content": [], "_meta": {"k": 1}}},
                  {"result": {"content": [], "resultType": "complete",
                              "_meta": {"k": 1, "io.modelcontextprotocol/serverInfo": info}}}),
                 ("resources/read", {"error": {"code": -32002, "message": "no such resource"}},
                  {"error": {"code": -32602, "message": "no such resource"}}),
                 ("tools/call", {"error": {"code": -32601, "message": "nope"}},
                  {"error": {"code": -32601, "message": "nope"}})]
        cases += [("tools/call", {"result": {}}, {"result": {"resultType": "complete", "_meta": {
                       "io.modelcontextprotocol/serverInfo": info}}}),
                  ("tools/call", {"result": {"content": [{"type": "text", "text": "}}"}]}},
                   {"result": {"content": [{"type": "text", "text": "}}"}], "resultType": "complete",
                               "_meta": {"io.modelcontextprotocol/serverInfo": info}}}),
                  ("prompts/get", {"result": {"messages": [], "resultType": "complete"}},
                   {"result": {"messages": [], "resultType": "complete",
                               "_meta": {"io.modelcontextprotocol/serverInfo": info}}}),
                  ("tools/call", {"result": "not an object"}, {"result": {"resultType": "complete", "_meta": {
                      "io.modelcontextprotocol/serverInfo": info}}}),
                  ("tools/call", {"result": {}, "x-extra": 1}, {"result": {"resultType": "complete", "_meta": {
                      "io.modelcontextprotocol/serverInfo": info}}, "x-extra": 1})]
        for method, answer, expected in cases:
            with self.subTest(method=method, answer=answer):
                message = dict(answer, jsonrpc="2.0", id=1)
                copy = json.loads(json.dumps(message))  # modern_answer changes its answer
                self.assertEqual(gw.modern_answer(method, copy, info), dict(expected, jsonrpc="2.0", id=1))
                for server_info in (info, None):  # the shortcut writes what modern_answer makes
                    encoded = gw.modern_answer_json(method, json.loads(json.dumps(message)), server_info,
                                                    gw.result_extras_json(server_info))
                    self.assertEqual(json.loads(encoded), gw.modern_answer(method, json.loads(json.dumps(message)),
                                                                           server_info))
        discovered = gw.discover_result({"capabilities": {"tools": {}}, "serverInfo": info, "instructions": "hi"})
        self.assertEqual(discovered, {"supportedVersions": list(gw.ALL_PROTOCOL_VERSIONS),
                                      "capabilities": {"tools": {}}, "instructions": "hi", "resultType": "complete",
                                      "_meta": {"io.modelcontextprotocol/serverInfo": info}, "ttlMs": 0,
                                      "cacheScope": "private"})


class ModernClientTest(unittest.TestCase):
    """Clients of revision 2026-07-28 on a handshake-era child (the fake server), through real sockets."""

    @classmethod
    def setUpClass(cls):
        cls.gateway = GatewayProcess(cls, base_config([fake_server(roots="client")], sse_keepalive_ms=200))

    @classmethod
    def addCleanup(cls, function, *args):
        cls.addClassCleanup(function, *args)

    def post(self, message, headers, conn=None, server_id="fake"):
        """(status, [messages]) of a modern POST: its JSON body, or every message of its event stream."""
        conn = conn or self.gateway.connect()
        conn.request("POST", "/%s/rpc" % server_id, json.dumps(message), dict(headers, Authorization="Bearer " + TOKEN,
                                                                     **{"Content-Type": "application/json"}))
        response = conn.getresponse()
        self.assertIsNone(response.getheader("Mcp-Session-Id"))
        if response.getheader("Content-Type") == "text/event-stream":
            return response.status, [m for _, m in read_sse(response) if not isinstance(m, str)]
        return response.status, [json.loads(response.read())]

    def test_discover_lists_and_calls_without_a_session(self):
        status, (reply,) = self.post(*modern("server/discover", request_id="d"))
        self.assertEqual((status, reply["id"]), (200, "d"))
        result = reply["result"]
        self.assertIn("2026-07-28", result["supportedVersions"])
        self.assertEqual((result["resultType"], result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
                          result["instructions"]), ("complete", "fake", "fake server for tests"))
        self.assertIn("tools", result["capabilities"])
        status, (reply,) = self.post(*modern("tools/list", request_id=2))
        self.assertEqual((status, reply["result"]["ttlMs"], reply["result"]["cacheScope"]), (200, 0, "private"))
        status, (reply,) = self.post(*modern("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}}, 3))
        self.assertEqual((reply["id"], reply["result"]["structuredContent"], reply["result"]["resultType"]),
                         (3, {"sum": 5}, "complete"))
        status, (reply,) = self.post(*modern("tools/call", {"name": "echo", "arguments": {"text": "t"}}, 4,
                                             progressToken="p"))
        meta = reply["result"]["structuredContent"]["meta"]
        self.assertNotIn("io.modelcontextprotocol/protocolVersion", meta)  # the claim of the modern era
        self.assertEqual(meta["io.modelcontextprotocol/clientInfo"], MODERN_META["io.modelcontextprotocol/clientInfo"])
        self.assertEqual(self.gateway.servers()["fake"]["sessions"], [])

    def test_progress_streams_with_the_callers_own_token(self):
        message, headers = modern("tools/call", {"name": "progress", "arguments": {"steps": 2}}, 4,
                                  progressToken="mine")
        status, messages = self.post(message, headers)
        self.assertEqual([m["params"]["progressToken"] for m in messages[:-1]], ["mine", "mine"])
        self.assertEqual(messages[-1]["result"]["content"][0]["text"], "done")

    def test_removed_and_unknown_methods_get_404(self):
        for method in ("initialize", "ping", "logging/setLevel", "resources/subscribe", "no/such/method"):
            with self.subTest(method=method):
                status, (reply,) = self.post(*modern(method, {"uri": "fake://a"} if "subscribe" in method else {}))
                self.assertEqual((status, reply["error"]["code"]), (404, -32601))

    def test_a_childs_request_becomes_input_required_and_the_retry_answers_it(self):
        ask = {"name": "ask", "arguments": {"method": "elicitation/create", "params": {"message": "name?"}}}
        status, (reply,) = self.post(*modern("tools/call", ask, 1, capabilities={"elicitation": {}}))
        result = reply["result"]
        self.assertEqual((status, result["resultType"]), (200, "input_required"))
        (key, request), = result["inputRequests"].items()
        self.assertEqual((request["method"], request["params"]["message"]), ("elicitation/create", "name?"))
        self.assertEqual(self.gateway.servers()["fake"]["calls_in_flight"], 1)  # the child still waits
        retry = dict(ask, inputResponses={key: {"action": "accept", "content": {"name": "Ada"}}},
                     requestState=result["requestState"])
        status, (reply,) = self.post(*modern("tools/call", retry, 2, capabilities={"elicitation": {}}))
        self.assertEqual((status, reply["id"], reply["result"]["resultType"]), (200, 2, "complete"))
        answered = reply["result"]["structuredContent"]["response"]
        self.assertEqual(answered["result"]["content"], {"name": "Ada"})
        status, (reply,) = self.post(*modern("tools/call", retry, 3, capabilities={"elicitation": {}}))
        self.assertEqual((status, reply["error"]["code"]), (400, -32602))  # a state is good for one retry
        tampered = dict(retry, requestState=result["requestState"] + "x")
        status, (reply,) = self.post(*modern("tools/call", tampered, 4, capabilities={"elicitation": {}}))
        self.assertEqual((status, reply["error"]["code"]), (400, -32602))

    def test_a_request_needing_an_undeclared_capability_gets_32021(self):
        ask = {"name": "ask", "arguments": {"method": "sampling/createMessage", "params": {}}}
        status, (reply,) = self.post(*modern("tools/call", ask, 1, capabilities={"elicitation": {}}))
        self.assertEqual((status, reply["error"]["code"], reply["error"]["data"]["requiredCapabilities"]),
                         (400, -32021, {"sampling": {}}))
        wait_for(lambda: self.gateway.servers()["fake"]["calls_in_flight"] == 0, what="the call to be dropped")

    def test_listen_hears_only_what_it_opted_in_to_tagged_with_its_id(self):
        message, headers = modern("subscriptions/listen", {"notifications": {
            "toolsListChanged": True, "resourceSubscriptions": ["fake://watched"]}}, "listen-1")
        conn = self.gateway.connect()
        conn.request("POST", "/fake/rpc", json.dumps(message), dict(headers, Authorization="Bearer " + TOKEN))
        stream = conn.getresponse()
        stream.connection = conn
        first = read_sse(stream, until=lambda m: not isinstance(m, str))[-1][1]
        self.assertEqual(first["method"], "notifications/subscriptions/acknowledged")
        self.assertEqual(first["params"], {"_meta": {"io.modelcontextprotocol/subscriptionId": "listen-1"},
                                           "notifications": {"toolsListChanged": True,
                                                             "resourceSubscriptions": ["fake://watched"]}})
        wait_for(lambda: {"method": "resources/subscribe", "uri": "fake://watched"} in
                 self.gateway.tool("received")["structuredContent"]["subscriptions"], what="the child's subscription")
        for method, params in (("notifications/message", {"level": "info", "data": "not for listeners"}),
                               ("notifications/prompts/list_changed", {}),
                               ("notifications/resources/updated", {"uri": "fake://other"}),
                               ("notifications/resources/updated", {"uri": "fake://watched"}),
                               ("notifications/tools/list_changed", {})):
            self.gateway.tool("notify", method=method, params=params)
        events = stream_until(stream, lambda m: m.get("method") == "notifications/tools/list_changed")
        heard = [(m["method"], m["params"].get("uri"), m["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"])
                 for _, m in events if not isinstance(m, str)]
        self.assertEqual(heard, [("notifications/resources/updated", "fake://watched", "listen-1"),
                                 ("notifications/tools/list_changed", None, "listen-1")])
        hang_up(stream)
        wait_for(lambda: {"method": "resources/unsubscribe", "uri": "fake://watched"} in
                 self.gateway.tool("received")["structuredContent"]["subscriptions"], what="the stream's end")

    def test_arguments_a_tool_mirrors_into_headers_must_match_them(self):
        message, headers = modern("tools/call", {"name": "located", "arguments": {"region": "eu", "zone": 3}}, 5)
        cases = [(dict(headers, **{"Mcp-Param-Region": "eu", "Mcp-Param-Zone": "3"}), 200),
                 (dict(headers, **{"Mcp-Param-Region": "us", "Mcp-Param-Zone": "3"}), 400),
                 (dict(headers, **{"Mcp-Param-Region": "eu"}), 400)]
        for request_headers, status in cases:
            with self.subTest(headers=request_headers):
                got, (reply,) = self.post(message, request_headers)
                self.assertEqual(got, status)
                if status == 400:
                    self.assertEqual(reply["error"]["code"], -32020)

    def test_malformed_claims_get_the_modern_errors_for_their_id(self):
        message, headers = modern("tools/list", request_id="m")
        cases = [(dict(headers, **{"MCP-Protocol-Version": "2025-11-25"}), 400, -32020),
                 ({k: v for k, v in headers.items() if k != "Mcp-Method"}, 400, -32020),
                 (dict(headers, **{"Mcp-Method": "tools/call"}), 400, -32020)]
        for request_headers, status, code in cases:
            with self.subTest(headers=request_headers):
                got_status, (reply,) = self.post(message, request_headers)
                self.assertEqual((got_status, reply["jsonrpc"], reply["id"], reply["error"]["code"]),
                                 (status, "2.0", "m", code))


class ModernChildTest(unittest.TestCase):
    """Children that speak revision 2026-07-28 (the fake server's --era modern and dual), with clients of both
    eras: handshake-era sessions meet a dual-era server's handshake twin, or are translated for a 2026-only one;
    modern clients pass through with ids remapped."""

    @classmethod
    def setUpClass(cls):
        cls.gateway = GatewayProcess(cls, base_config([
            fake_server("dual", "--era", "dual"), fake_server("modern", "--era", "modern"),
            fake_server("held", "--era", "dual", child_protocol="legacy"),
            fake_server("insists", child_protocol="modern", restart_policy="never"),
            fake_server("rooted", "--era", "modern", roots=["/srv"])], sse_keepalive_ms=200))

    @classmethod
    def addCleanup(cls, function, *args):
        cls.addClassCleanup(function, *args)

    def child_meta(self, client):
        return client.call("received")["structuredContent"]["meta"]

    def test_the_era_each_child_speaks(self):
        servers = {server_id: self.gateway.wait_state(server_id, "ready") for server_id in ("dual", "modern", "held")}
        self.assertEqual({server_id: (server["protocol_era"], server["protocol_version"])
                          for server_id, server in servers.items()},
                         {"dual": ("modern", "2026-07-28"), "modern": ("modern", "2026-07-28"),
                          "held": ("legacy", "2025-11-25")})
        self.assertEqual(self.gateway.tool("pid", "held")["structuredContent"]["initializes"], 1)
        failed = self.gateway.wait_state("insists", "failed")
        self.assertIn("child_protocol modern", failed["last_error"])

    def test_a_handshake_era_session_on_a_modern_child(self):
        client = McpClient(self.gateway, "modern", capabilities={"elicitation": {}})
        self.assertEqual((client.initialize_result["protocolVersion"], client.initialize_result["serverInfo"]["name"]),
                         ("2025-06-18", "fake"))
        result = client.call("add", a=1, b=2)
        self.assertEqual(result["structuredContent"], {"sum": 3})
        self.assertNotIn("resultType", result)
        meta = self.child_meta(client)
        self.assertEqual((meta["io.modelcontextprotocol/protocolVersion"],
                          meta["io.modelcontextprotocol/clientCapabilities"],
                          meta["io.modelcontextprotocol/clientInfo"]),
                         ("2026-07-28", {"elicitation": {}}, {"name": "test-client", "version": "1"}))
        self.assertEqual(client.post(rpc("ping", request_id=2))[2][0]["result"], {})  # the gateway answers
        self.assertEqual(client.post(rpc("logging/setLevel", {"level": "debug"}, 3))[2][0]["result"], {})
        self.assertEqual(self.child_meta(client)["io.modelcontextprotocol/logLevel"], "debug")

    def test_input_required_becomes_a_real_request_to_the_session(self):
        client = McpClient(self.gateway, "modern", capabilities={"elicitation": {}})
        request, answer = answer_child_request(client, tool_call("ask", 4, method="elicitation/create",
                                                                 params={"message": "name?"}),
                                               {"action": "accept", "content": {"name": "Ada"}})
        self.assertEqual((request["method"], request["params"]["message"]), ("elicitation/create", "name?"))
        self.assertTrue(request["id"].startswith("hmg-"))
        self.assertEqual((answer["id"], answer["result"]["structuredContent"]["response"]["result"]),
                         (4, {"action": "accept", "content": {"name": "Ada"}}))
        without = McpClient(self.gateway, "modern")
        status, _, messages = without.post(tool_call("ask", 5, method="elicitation/create"))
        self.assertEqual((status, messages[0]["error"]["code"]), (400, -32021))
        rooted = McpClient(self.gateway, "rooted")  # declares no roots: the server's own list is the answer
        status, _, messages = rooted.post(tool_call("ask", 6, method="roots/list"))
        self.assertEqual((status, len(messages)), (200, 1))
        self.assertEqual(messages[0]["result"]["structuredContent"]["response"]["result"],
                         {"roots": [{"uri": "file:///srv", "name": "srv"}]})
        self.assertEqual(self.child_meta(rooted)["io.modelcontextprotocol/clientCapabilities"], {"roots": {}})

    def test_a_dual_era_child_meets_handshake_sessions_with_its_handshake_twin(self):
        primary_pid = self.gateway.wait_state("dual", "ready")["pid"]
        client = McpClient(self.gateway, "dual", capabilities={"elicitation": {}})
        self.assertIsNone(client.call("received")["structuredContent"]["meta"])  # no envelope: the handshake
        request, answer = answer_child_request(client, tool_call("ask", 4, method="elicitation/create",
                                                                 params={"message": "name?"}),
                                               {"action": "accept", "content": {"name": "Ada"}})
        self.assertEqual(answer["result"]["structuredContent"]["response"]["result"]["content"], {"name": "Ada"})
        second = McpClient(self.gateway, "dual")
        self.assertEqual(second.call("pid")["structuredContent"]["pid"], client.call("pid")["structuredContent"]["pid"])
        twin = self.gateway.servers()["dual"]["handshake_twin"]
        self.assertEqual((twin["state"], twin["protocol_era"]), ("ready", "legacy"))
        self.assertNotIn(twin["pid"], (None, primary_pid))
        post = ModernClientTest.post  # modern clients keep the modern child
        status, (reply,) = post(self, *modern("tools/call", {"name": "pid", "arguments": {}}, 1), server_id="dual")
        self.assertEqual(reply["result"]["structuredContent"]["pid"], primary_pid)

    def test_a_twin_stops_with_the_gateway(self):
        gateway = GatewayProcess(self, base_config([fake_server("dual", "--era", "dual")]))
        client = McpClient(gateway, "dual")
        twin_pid = client.call("pid")["structuredContent"]["pid"]
        primary_pid = gateway.wait_state("dual", "ready")["pid"]
        self.assertNotEqual(twin_pid, primary_pid)
        self.assertEqual(gateway.stop(), 0)
        wait_for(lambda: process_gone(twin_pid) and process_gone(primary_pid), what="both children to be gone")

    def test_a_2026_only_child_is_tried_for_a_twin_once(self):
        def starts():
            return len([r for r in self.gateway.logs if r.get("event") == "child_started" and
                        r.get("server_id") == "modern"])
        McpClient(self.gateway, "modern").call("add", a=1, b=1)
        refused = self.gateway.wait_log(lambda r: r.get("event") == "handshake_twin_unavailable" and
                                        r.get("server_id") == "modern", what="the twin to be given up")
        self.assertIn("-32022", refused["reason"])
        started = starts()
        self.assertEqual(McpClient(self.gateway, "modern").call("add", a=1, b=1)["structuredContent"], {"sum": 2})
        self.assertEqual(starts(), started)
        self.assertNotIn("handshake_twin", self.gateway.servers()["modern"])

    def test_session_streams_and_subscriptions_are_fed_by_one_listen(self):
        client, other = McpClient(self.gateway, "modern"), McpClient(self.gateway, "modern")
        stream, other_stream = client.open_stream(), other.open_stream()
        self.assertEqual(client.post(rpc("resources/subscribe", {"uri": "fake://watched"}, 2))[2][0]["result"], {})
        wait_for(lambda: any(n["method"] == "notifications/cancelled" for n in
                             client.call("received")["structuredContent"]["notifications"]),
                 what="the feed to be opened again with the resource")
        for method, params in (("notifications/resources/updated", {"uri": "fake://watched"}),
                               ("notifications/tools/list_changed", {})):
            client.call("notify", method=method, params=params)
        for session_stream, updates in ((stream, 1), (other_stream, 0)):
            events = stream_until(session_stream, lambda m: m.get("method") == "notifications/tools/list_changed")
            heard = [m for _, m in events if not isinstance(m, str)]
            self.assertEqual(len([m for m in heard if m["method"] == "notifications/resources/updated"]), updates)
            self.assertNotIn("_meta", heard[-1].get("params", {}))  # the feed's tag is the gateway's own
        hang_up(stream)
        hang_up(other_stream)

    def test_modern_clients_pass_through(self):
        post = ModernClientTest.post
        status, (reply,) = post(self, *modern("server/discover", request_id="d"), server_id="modern")
        self.assertEqual(reply["result"]["supportedVersions"], list(gw.ALL_PROTOCOL_VERSIONS))
        ask = {"name": "ask", "arguments": {"method": "sampling/createMessage", "params": {"x": 1}}}
        status, (reply,) = post(self, *modern("tools/call", ask, 1), server_id="modern")
        self.assertEqual((reply["result"]["resultType"], reply["result"]["requestState"]), ("input_required", "fake-state"))
        retry = dict(ask, inputResponses={"answer": {"model": "m"}}, requestState="fake-state")
        status, (reply,) = post(self, *modern("tools/call", retry, 2), server_id="modern")
        self.assertEqual((status, reply["result"]["structuredContent"]["response"]["result"]), (200, {"model": "m"}))
        message, headers = modern("subscriptions/listen", {"notifications": {"toolsListChanged": True}}, "mine")
        conn = self.gateway.connect()
        conn.request("POST", "/modern/rpc", json.dumps(message), dict(headers, Authorization="Bearer " + TOKEN))
        stream = conn.getresponse()
        stream.connection = conn
        ack = read_sse(stream, until=lambda m: not isinstance(m, str))[-1][1]
        self.assertEqual((ack["method"], ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"]),
                         ("notifications/subscriptions/acknowledged", "mine"))
        self.gateway.tool("notify", "modern", method="notifications/tools/list_changed", params={})
        changed = stream_until(stream, lambda m: m.get("method") == "notifications/tools/list_changed")[-1][1]
        self.assertEqual(changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "mine")
        hang_up(stream)
        wait_for(lambda: self.gateway.servers()["modern"]["calls_in_flight"] == 1, what="the listen to be cancelled")


class ModernIsolationTest(unittest.TestCase):
    """Revision 2026-07-28 requests to servers with isolation "session": each request gets a child of its own
    (the revision has no session), which a call waiting for its client's input keeps until the retry."""

    post = ModernClientTest.post

    def call(self, server_id, name, request_id=1, capabilities=None, **params):
        status, messages = self.post(*modern("tools/call", dict(params, name=name), request_id, capabilities),
                                     server_id=server_id)
        self.assertEqual(status, 200, messages)
        return messages[-1]["result"]

    def test_each_request_gets_a_child_of_its_own(self):
        gateway = self.gateway = GatewayProcess(self, base_config([
            fake_server("own", isolation="session", autostart=False, max_children=2)]))
        first, second = (self.call("own", "pid", arguments={})["structuredContent"]["pid"] for _ in range(2))
        self.assertNotEqual(first, second)
        for pid in (first, second):
            wait_for(lambda: process_gone(pid), what="a request's child to stop after its answer")  # noqa: B023
        received = self.call("own", "received", arguments={}, capabilities={"elicitation": {}})["structuredContent"]
        self.assertEqual((received["initialize"]["clientInfo"], received["initialize"]["capabilities"]),
                         ({"name": "modern-test", "version": "1"}, {"elicitation": {}}))
        status, (reply,) = self.post(*modern("server/discover", request_id="d"), server_id="own")  # use a session
        self.assertEqual((status, reply["error"]["code"], reply["error"]["data"]["supported"]),
                         (400, -32022, list(gw.SUPPORTED_PROTOCOL_VERSIONS)))
        wait_for(lambda: gateway.servers()["own"]["children"] == [], what="every request's child to stop")

    def test_a_call_waiting_for_input_keeps_its_child_until_the_retry(self):
        gateway = self.gateway = GatewayProcess(self, base_config([
            fake_server("own", isolation="session", autostart=False, max_children=1), fake_server("other")]))
        ask = {"name": "ask", "arguments": {"method": "elicitation/create", "params": {"message": "name?"}}}
        status, (reply,) = self.post(*modern("tools/call", ask, 1, {"elicitation": {}}), server_id="own")
        result = reply["result"]
        self.assertEqual((status, result["resultType"]), (200, "input_required"))
        (child,) = gateway.servers()["own"]["children"]
        self.assertEqual((child["request"], child["state"]), (True, "ready"))
        status, (busy,) = self.post(*modern("tools/call", {"name": "pid", "arguments": {}}, 2), server_id="own")
        self.assertEqual((status, busy["error"]["data"]["error_code"]), (503, "too_many_children"))
        (key,) = result["inputRequests"]
        retry = dict(ask, inputResponses={key: {"action": "accept", "content": {"name": "Ada"}}},
                     requestState=result["requestState"])
        status, (elsewhere,) = self.post(*modern("tools/call", retry, 3, {"elicitation": {}}), server_id="other")
        self.assertEqual((status, elsewhere["error"]["code"]), (400, -32602))
        self.assertIn("another server", elsewhere["error"]["message"])
        status, (reply,) = self.post(*modern("tools/call", retry, 3, {"elicitation": {}}), server_id="own")
        self.assertEqual(reply["result"]["structuredContent"]["response"]["result"]["content"], {"name": "Ada"})
        wait_for(lambda: process_gone(child["pid"]), what="the request's child to stop after the retry")
        self.assertEqual(self.call("own", "add", 4, arguments={"a": 1, "b": 2})["structuredContent"], {"sum": 3})

    def test_a_call_whose_retry_never_comes_ends_its_child(self):
        gateway = self.gateway = GatewayProcess(self, base_config([
            fake_server("own", isolation="session", autostart=False)], request_timeout_ms=500))
        ask = {"name": "ask", "arguments": {"method": "elicitation/create", "params": {"message": "name?"}}}
        status, (reply,) = self.post(*modern("tools/call", ask, 1, {"elicitation": {}}), server_id="own")
        self.assertEqual(reply["result"]["resultType"], "input_required")
        (child,) = gateway.servers()["own"]["children"]
        wait_for(lambda: process_gone(child["pid"]), what="the unanswered call's child to stop")
        self.assertEqual(gateway.servers()["own"]["children"], [])

    def test_a_sessions_own_child_is_offered_the_handshake_first(self):
        gateway = self.gateway = GatewayProcess(self, base_config([
            fake_server("dual", "--era", "dual", isolation="session", autostart=False),
            fake_server("modern", "--era", "modern", isolation="session", autostart=False)]))
        dual, modern_only = McpClient(gateway, "dual"), McpClient(gateway, "modern")
        self.assertIsNone(dual.call("received")["structuredContent"]["meta"])  # initialized: the handshake
        meta = modern_only.call("received")["structuredContent"]["meta"]  # refused it: translated
        self.assertEqual(meta["io.modelcontextprotocol/protocolVersion"], MODERN)
        servers = gateway.servers()
        self.assertEqual([[child["protocol_era"] for child in servers[server_id]["children"]]
                          for server_id in ("dual", "modern")], [["legacy"], ["modern"]])

    def test_modern_children_of_their_own(self):
        gateway = self.gateway = GatewayProcess(self, base_config([
            fake_server("own", "--era", "modern", isolation="session", autostart=False)]))
        ask = {"name": "ask", "arguments": {"method": "sampling/createMessage", "params": {"x": 1}}}
        status, (reply,) = self.post(*modern("tools/call", ask, 1), server_id="own")
        self.assertEqual(reply["result"]["requestState"], "fake-state")  # the child's own: stateless, passed on
        retry = dict(ask, inputResponses={"answer": {"model": "m"}}, requestState="fake-state")
        status, (reply,) = self.post(*modern("tools/call", retry, 2), server_id="own")
        self.assertEqual(reply["result"]["structuredContent"]["response"]["result"], {"model": "m"})
        wait_for(lambda: gateway.servers()["own"]["children"] == [], what="both requests' children to stop")


# Telemetry: OTEL_* settings, OTLP/HTTP JSON export, trace context, Prometheus ------------------------------------

class TelemetryUnitTest(unittest.TestCase):
    def test_traceparent(self):
        cases = [("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", ("0af7651916cd43dd8448eb211c80319c",
                                                                               "b7ad6b7169203331", True)),
                 ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", ("0af7651916cd43dd8448eb211c80319c",
                                                                               "b7ad6b7169203331", False)),
                 (" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ", ("0af7651916cd43dd8448eb211c80319c",
                                                                                 "b7ad6b7169203331", True)),
                 ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", ("0af7651916cd43dd8448eb211c80319c",
                                                                                     "b7ad6b7169203331", True)),
                 ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),
                 ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),
                 ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
                 ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", None),
                 ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", None),
                 ("garbage", None), ("", None), (None, None), (5, None)]
        for value, expected in cases:
            with self.subTest(value=value):
                context = gw.parse_traceparent(value)
                self.assertEqual(context and (context.trace_id, context.span_id, context.sampled), expected)
        context = gw.parse_traceparent(cases[0][0])
        self.assertEqual(context.traceparent(), cases[0][0])

    def test_sampler(self):
        sampled, unsampled = gw.SpanContext("a" * 32, "b" * 16, True), gw.SpanContext("a" * 32, "b" * 16, False)
        low, high = "0" * 16 + "0" * 15 + "1", "0" * 16 + "f" * 16
        cases = [("always_on", 1.0, None, low, True), ("always_off", 1.0, sampled, low, False),
                 ("traceidratio", 0.5, None, low, True), ("traceidratio", 0.5, None, high, False),
                 ("traceidratio", 0.0, None, low, False), ("parentbased_always_on", 1.0, unsampled, low, False),
                 ("parentbased_always_on", 1.0, None, low, True), ("parentbased_always_off", 1.0, sampled, low, True),
                 ("parentbased_always_off", 1.0, None, low, False), ("parentbased_traceidratio", 0.5, None, high, False),
                 ("parentbased_traceidratio", 0.5, sampled, high, True)]
        for sampler, ratio, parent, trace_id, expected in cases:
            with self.subTest(sampler=sampler, parent=parent and parent.sampled, trace_id=trace_id):
                self.assertEqual(gw.should_sample(sampler, ratio, parent, trace_id), expected)

    def test_settings_from_the_standard_variables(self):
        settings = gw.TelemetrySettings({
            "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318/", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://m.example/x",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b,x-team=gw", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-team=t",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_SERVICE_NAME": "my-gw",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=lab,service.name=ignored",
            "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5", "OTEL_METRIC_EXPORT_INTERVAL": "1000"})
        self.assertEqual(settings.endpoints, {"traces": "http://collector:4318/v1/traces", "metrics": "https://m.example/x"})
        self.assertEqual(settings.headers["traces"], {"api-key": "a b", "x-team": "t"})
        self.assertEqual(settings.headers["metrics"], {"api-key": "a b", "x-team": "gw"})
        self.assertEqual((settings.timeouts["traces"], settings.sampler, settings.ratio), (2.5, "traceidratio", 0.25))
        self.assertEqual((settings.schedule_delay_s, settings.max_queue, settings.max_batch, settings.metric_interval_s),
                         (0.1, 10, 5, 1.0))
        resource = settings.resource()
        self.assertEqual((resource["service.name"], resource["deployment.environment"], resource["service.version"]),
                         ("my-gw", "lab", gw.VERSION))
        for key in ("host.name", "os.type", "process.pid"):
            self.assertIn(key, resource)
        self.assertEqual(settings.warnings, [])

    def test_settings_table(self):
        cases = [
            ({}, {}, 0),
            ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h:4318/v1/traces"}, {"traces": "http://h:4318/v1/traces"}, 0),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4317"},
             {"traces": "http://localhost:4317/v1/traces", "metrics": "http://localhost:4317/v1/metrics"}, 1),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
             {"traces": "http://h:4318/v1/traces", "metrics": "http://h:4318/v1/metrics"}, 1),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_SDK_DISABLED": "true"}, {}, 0),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_TRACES_SAMPLER": "sometimes",
              "OTEL_BSP_SCHEDULE_DELAY": "soon"}, {"traces": "http://h:4318/v1/traces", "metrics": "http://h:4318/v1/metrics"}, 2),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_TRACES_EXPORTER": "none"},
             {"metrics": "http://h:4318/v1/metrics"}, 0),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_METRICS_EXPORTER": "prometheus"},
             {"traces": "http://h:4318/v1/traces"}, 1),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:99999"}, {}, 2),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4317", "OTEL_SDK_DISABLED": "true"}, {}, 0),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_EXPORTER_OTLP_TIMEOUT": "never"},
             {"traces": "http://h:4318/v1/traces", "metrics": "http://h:4318/v1/metrics"}, 1),
        ]
        for environ, endpoints, warning_count in cases:
            with self.subTest(environ=environ):
                settings = gw.TelemetrySettings(environ)
                self.assertEqual(settings.endpoints, endpoints)
                self.assertEqual(len(settings.warnings), warning_count, settings.warnings)
        grpc = gw.TelemetrySettings({"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4317"}).warnings[0]
        self.assertIn("OTLP/HTTP with JSON bodies (usually port 4318)", grpc)
        self.assertIn("OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:4318", grpc)

    def test_otlp_encoding(self):
        self.assertEqual(gw.otlp_attributes({"s": "x", "i": 5, "f": 0.5, "b": True, "l": ["a", 1], "none": None}), [
            {"key": "s", "value": {"stringValue": "x"}}, {"key": "i", "value": {"intValue": "5"}},
            {"key": "f", "value": {"doubleValue": 0.5}}, {"key": "b", "value": {"boolValue": True}},
            {"key": "l", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"}]}}}])
        meter = gw.Meter()
        for value in (0.003, 0.2, 20.0):
            meter.http_duration.record(value, (("http.route", "/health"),))
        meter.sessions.record(1, (("server", "a"),))
        meter.sessions.record(-1, (("server", "a"),))
        body = gw.otlp_metrics({"service.name": "x"}, {"name": "s"}, meter, 123)
        metrics = {m["name"]: m for m in body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]}
        point = metrics["http.server.request.duration"]["histogram"]["dataPoints"][0]
        self.assertEqual(metrics["http.server.request.duration"]["histogram"]["aggregationTemporality"], 2)
        self.assertEqual((point["count"], point["min"], point["max"], point["timeUnixNano"]), ("3", 0.003, 20.0, "123"))
        self.assertEqual(point["bucketCounts"], ["1"] + ["0"] * 5 + ["1"] + ["0"] * 7 + ["1"])
        self.assertEqual(len(point["bucketCounts"]), len(point["explicitBounds"]) + 1)
        self.assertEqual(metrics["host_mcp_gateway.sessions.active"]["sum"]["isMonotonic"], False)
        self.assertEqual(metrics["host_mcp_gateway.sessions.active"]["sum"]["dataPoints"][0]["asInt"], "0")

    def test_prometheus_names_and_text(self):
        meter = gw.Meter()
        self.assertEqual([gw.prometheus_name(i) for i in meter.instruments], [
            "http_server_request_duration_seconds", "mcp_server_operation_duration_seconds",
            "mcp_client_operation_duration_seconds", "host_mcp_gateway_requests_total",
            "host_mcp_gateway_child_restarts_total", "host_mcp_gateway_telemetry_dropped_total",
            "host_mcp_gateway_sessions_active", "host_mcp_gateway_calls_in_flight"])
        meter.http_duration.record(0.02, (("http.route", '/a"b\\c'),))
        meter.http_duration.record(0.3, (("http.route", '/a"b\\c'),))
        meter.requests.record(2, (("outcome", "ok"),))
        text = gw.prometheus_text(meter)
        self.assertIn('http_server_request_duration_seconds_bucket{http_route="/a\\"b\\\\c",le="0.01"} 0\n', text)
        self.assertIn('http_server_request_duration_seconds_bucket{http_route="/a\\"b\\\\c",le="0.025"} 1\n', text)
        self.assertIn('http_server_request_duration_seconds_bucket{http_route="/a\\"b\\\\c",le="+Inf"} 2\n', text)
        self.assertIn('http_server_request_duration_seconds_count{http_route="/a\\"b\\\\c"} 2\n', text)
        self.assertIn('host_mcp_gateway_requests_total{outcome="ok"} 2\n', text)
        self.assertIn("# TYPE host_mcp_gateway_sessions_active gauge\n", text)

    def test_retry_after(self):
        date = "Wed, 21 Oct 2015 07:28:00 GMT"
        cases = [("3", 0, 3.0), (None, 0, 0.5), (None, 2, 2.0), ("soon", 1, 1.0), (date, 0, 5.0), (date, 1, 0.0)]
        for header, attempt, delay in cases:
            with self.subTest(header=header, attempt=attempt):
                now_s = 1445412475.0 if attempt == 0 else 1445412490.0  # 5 s before that date, then 10 s after
                self.assertEqual(gw._retry_after(header, attempt, now_s), delay)

    def test_metric_series_are_capped(self):
        instrument = gw.Instrument("x", "s", "d", (1.0,))
        instrument.MAX_POINTS = 3
        for n in range(10):
            instrument.record(0.5, (("gen_ai.tool.name", "tool%d" % n),))
        points = dict((tuple(sorted(a.items())), p) for a, p in instrument.points())
        self.assertEqual(len(points), 4)
        self.assertEqual(points[(("otel.metric.overflow", True),)][-3], 7)

    def test_log_lines_never_carry_secrets(self):
        lines = []
        logger = gw.Logger(stream=type("Sink", (), {"write": lines.append, "flush": lambda self: None})())
        logger.info("event", Authorization="Bearer " + TOKEN, token=TOKEN, auth_token=TOKEN, env={"K": "v"}, ok=1)
        record = json.loads(lines[0])
        self.assertNotIn(TOKEN, lines[0])
        self.assertEqual((record["Authorization"], record["token"], record["env"], record["ok"]),
                         ("[redacted]", "[redacted]", "[redacted]", 1))


class FakeCollector:
    """An OTLP/HTTP receiver on port 0 that records what arrives; it can answer with an error a few times first,
    or hang without answering."""

    def __init__(self, testcase, fail_first=0, fail_status=503, hang=False):
        self.requests = []
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.hang = hang
        self.release = threading.Event()
        self._cond = threading.Condition()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if collector.hang:
                    collector.release.wait(TIMEOUT)
                    return
                with collector._cond:
                    failing = collector.fail_first > 0
                    collector.fail_first -= failing
                    headers = {key.lower(): value for key, value in self.headers.items()}
                    collector.requests.append((self.path, headers, json.loads(body), failing))
                    collector._cond.notify_all()
                self.send_response(collector.fail_status if failing else 200)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        testcase.addCleanup(self.close)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(TIMEOUT)

    def wait_for_request(self, predicate, what):
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while True:
                found = [r for r in self.requests if predicate(r)]
                if found:
                    return found
                if time.monotonic() > deadline:
                    raise AssertionError("the collector got no " + what)
                self._cond.wait(deadline - time.monotonic())

    def wait_spans(self, *names):
        """The exported spans by name, once every one of `names` has arrived."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            spans = {span["name"]: span for span in self.spans()}
            if all(name in spans for name in names):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError("the collector got no spans named %s; got %s" % (names, sorted(spans)))
            with self._cond:
                self._cond.wait(0.1)

    def bodies(self, path):
        """The bodies delivered to `path` (failed deliveries left out)."""
        with self._cond:
            return [body for request_path, _, body, failing in self.requests if request_path == path and not failing]

    def spans(self):
        with self._cond:
            return [span for path, _, body, failing in self.requests if path == "/v1/traces" and not failing
                    for resource in body["resourceSpans"] for scope in resource["scopeSpans"] for span in scope["spans"]]


def attributes_of(item):
    return {a["key"]: list(a["value"].values())[0] for a in item.get("attributes", [])}


class TelemetryExportTest(unittest.TestCase):
    def start_gateway(self, environ, servers=None, **overrides):
        saved = {key: os.environ.get(key) for key in environ}
        os.environ.update(environ)  # the gateway process inherits them
        try:
            return GatewayProcess(self, base_config(servers or [fake_server()], **overrides))
        finally:
            for key, value in saved.items():
                if value is None:
                    del os.environ[key]
                else:
                    os.environ[key] = value

    def otel_env(self, collector, **extra):
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
                   "OTEL_METRIC_EXPORT_INTERVAL": "200", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cret%20key"}
        environ.update(extra)
        return environ

    def test_traces_follow_the_request_into_the_child(self):
        collector = FakeCollector(self)
        gateway = self.start_gateway(self.otel_env(collector, OTEL_SERVICE_NAME="gw-under-test"))
        gateway.wait_state("fake", "ready")
        incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        status, reply = gateway.call("fake", tool_call("echo", 1, text="traced"), headers={"traceparent": incoming})
        self.assertEqual(status, 200)
        child_saw = gw.parse_traceparent(reply["result"]["structuredContent"]["meta"]["traceparent"])
        self.assertEqual(child_saw.trace_id, "0af7651916cd43dd8448eb211c80319c")
        spans = collector.wait_spans("POST /{server_id}/rpc", "tools/call echo", "start fake")
        server, client = spans["POST /{server_id}/rpc"], spans["tools/call echo"]
        self.assertEqual((server["kind"], client["kind"]), (2, 3))
        self.assertEqual((server["traceId"], server["parentSpanId"]), ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"))
        self.assertEqual((client["traceId"], client["parentSpanId"]), (server["traceId"], server["spanId"]))
        self.assertEqual(child_saw.span_id, client["spanId"])
        self.assertTrue(len(server["traceId"]) == 32 and len(server["spanId"]) == 16)
        self.assertLessEqual(int(client["startTimeUnixNano"]), int(client["endTimeUnixNano"]))
        server_attributes, client_attributes = attributes_of(server), attributes_of(client)
        self.assertEqual((server_attributes["http.request.method"], server_attributes["http.route"],
                          server_attributes["http.response.status_code"], server_attributes["client.address"]),
                         ("POST", "/{server_id}/rpc", "200", "127.0.0.1"))
        self.assertEqual((client_attributes["mcp.method.name"], client_attributes["gen_ai.tool.name"],
                          client_attributes["jsonrpc.request.id"]), ("tools/call", "echo", "1"))
        path, headers, body, _ = collector.requests[0]
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["api-key"], "s3cret key")
        resource = attributes_of(body[next(iter(body))][0]["resource"])
        self.assertEqual((resource["service.name"], resource["service.version"]), ("gw-under-test", gw.VERSION))
        self.assertTrue(any(s["name"] == "start fake" and attributes_of(s)["process.pid"] for s in spans.values()))
        record = gateway.wait_log(lambda r: r.get("event") == "http_request" and r.get("path") == "/fake/rpc")
        self.assertEqual((record["trace_id"], record["span_id"]), (server["traceId"], server["spanId"]))

    def test_meta_traceparent_continues_the_trace_and_errors_mark_spans(self):
        collector = FakeCollector(self)
        gateway = self.start_gateway(self.otel_env(collector), request_timeout_ms=300)
        gateway.wait_state("fake", "ready")
        meta = {"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
        gateway.call("fake", rpc("tools/call", {"name": "hang", "arguments": {}, "_meta": meta}, 4))
        spans = collector.wait_spans("POST /{server_id}/rpc", "tools/call hang")
        server, client = spans["POST /{server_id}/rpc"], spans["tools/call hang"]
        self.assertEqual((server["traceId"], server["parentSpanId"]), ("1" * 32, "2" * 16))
        self.assertEqual((client["status"]["code"], attributes_of(client)["error.type"]), (2, "timeout"))
        self.assertEqual((server["status"]["code"], server["status"]["message"]), (2, "timeout"))  # answered 504
        text = gateway.request("GET", "/metrics")[2].decode()
        self.assertIn('host_mcp_gateway_requests_total{http_route="/{server_id}/rpc",outcome="timeout"} 1\n', text)

    def test_the_sampler_decides_for_traces_continued_from_meta(self):
        collector = FakeCollector(self)
        gateway = self.start_gateway(self.otel_env(collector, OTEL_TRACES_SAMPLER="always_off"))
        gateway.wait_state("fake", "ready")
        meta = {"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
        self.assertEqual(gateway.call("fake", rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2},
                                                                 "_meta": meta}, 1))[0], 200)
        collector.wait_for_request(lambda r: r[0] == "/v1/metrics" and "gen_ai.tool.name" in json.dumps(r[2]),
                                   "metrics that include the call")
        self.assertEqual(collector.bodies("/v1/traces"), [])

    def test_metrics_arrive_cumulative_and_match_prometheus(self):
        collector = FakeCollector(self)
        gateway = self.start_gateway(self.otel_env(collector))
        gateway.wait_state("fake", "ready")
        for n in range(3):
            gateway.tool("add", request_id=n, a=n, b=1)

        def histogram_count(request):
            for resource_metrics in request[2].get("resourceMetrics", []):
                for scope in resource_metrics["scopeMetrics"]:
                    for metric in scope["metrics"]:
                        if metric["name"] == "mcp.client.operation.duration":
                            return sum(int(p["count"]) for p in metric["histogram"]["dataPoints"]
                                       if attributes_of(p).get("gen_ai.tool.name") == "add")
            return 0
        found = collector.wait_for_request(lambda r: r[0] == "/v1/metrics" and histogram_count(r) >= 3, "three add calls")
        metric_names = {m["name"] for rm in found[0][2]["resourceMetrics"] for sm in rm["scopeMetrics"] for m in sm["metrics"]}
        self.assertLessEqual({"http.server.request.duration", "mcp.server.operation.duration",
                              "host_mcp_gateway.requests", "host_mcp_gateway.calls.in_flight"}, metric_names)
        status, response, text = gateway.request("GET", "/metrics")
        self.assertEqual((status, response.getheader("Content-Type")), (200, "text/plain; version=0.0.4"))
        text = text.decode()
        self.assertRegex(text, r'mcp_client_operation_duration_seconds_count\{[^}]*gen_ai_tool_name="add"[^}]*\} 3\n')
        self.assertRegex(text, r'http_server_request_duration_seconds_bucket\{[^}]*le="\+Inf"\} \d+\n')
        self.assertIn('host_mcp_gateway_calls_in_flight{host_mcp_gateway_server_id="fake"} 0\n', text)

    def test_retries_after_503_then_delivers(self):
        collector = FakeCollector(self, fail_first=2)
        gateway = self.start_gateway(self.otel_env(collector, OTEL_METRIC_EXPORT_INTERVAL="60000"))
        gateway.wait_state("fake", "ready")
        collector.wait_for_request(lambda r: r[0] == "/v1/traces" and not r[3], "a delivered batch")
        self.assertEqual([r[3] for r in collector.requests[:3]], [True, True, False])

    def test_a_hung_or_absent_collector_changes_nothing_for_clients(self):
        for name, make_url in (("hung", lambda: FakeCollector(self, hang=True).url), ("absent", unused_port_url)):
            with self.subTest(collector=name):
                gateway = self.start_gateway({"OTEL_EXPORTER_OTLP_ENDPOINT": make_url(), "OTEL_BSP_SCHEDULE_DELAY": "20",
                                              "OTEL_METRIC_EXPORT_INTERVAL": "20", "OTEL_EXPORTER_OTLP_TIMEOUT": "300"})
                gateway.wait_state("fake", "ready")
                threads_before = thread_count(gateway.proc.pid)
                slowest = 0.0
                for n in range(40):
                    started = time.monotonic()
                    self.assertEqual(gateway.call("fake", rpc("ping", None, n))[0], 200)
                    slowest = max(slowest, time.monotonic() - started)
                self.assertLess(slowest, 0.25)  # export attempts take 300 ms each; no request waits on one
                gateway.wait_log(lambda r: r.get("event") == "telemetry_export_failing")
                self.assertLessEqual(thread_count(gateway.proc.pid), threads_before + 1)
                self.assertEqual(gateway.stop(), 0)
                failing = [r for r in gateway.logs if r.get("event") == "telemetry_export_failing"]
                self.assertLessEqual(len(failing), 2, failing)  # one per signal and outage, not one per batch

    def test_grpc_port_is_warned_about_and_disabled_sdk_exports_nothing(self):
        collector = FakeCollector(self)
        gateway = self.start_gateway({"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4317"})
        warning = gateway.wait_log(lambda r: r.get("event") == "telemetry_setting")
        self.assertIn("usually port 4318", warning["message"])
        quiet = self.start_gateway(dict(self.otel_env(collector), OTEL_SDK_DISABLED="true"))
        quiet.wait_state("fake", "ready")
        quiet.call("fake", rpc("ping"))
        self.assertEqual(quiet.stop(), 0)
        self.assertEqual(collector.requests, [])
        self.assertFalse(any("trace_id" in r for r in quiet.logs))


def unused_port_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d" % probe.getsockname()[1]


def proc_entries(pid, folder):
    """Entries of /proc/PID/FOLDER (Linux: "task" for threads, "fd" for open descriptors), or 0 without /proc."""
    try:
        return len(os.listdir("/proc/%d/%s" % (pid, folder)))
    except FileNotFoundError:
        return 0


def thread_count(pid):
    return proc_entries(pid, "task")


class StuckChildTest(unittest.TestCase):
    def test_a_child_that_stops_reading_holds_up_nobody_else(self):
        gateway = GatewayProcess(self, base_config([fake_server("stuck"), fake_server("other")],
                                                   request_timeout_ms=1000))
        gateway.wait_state("stuck", "ready")
        gateway.wait_state("other", "ready")
        self.assertEqual(gateway.tool("stop_reading", "stuck", seconds=30)["content"][0]["text"], "stopped reading")
        text = "x" * (512 * 1024)  # eight of these are far more than a pipe holds
        with ThreadPoolExecutor(8) as pool:
            started = time.monotonic()
            stuck = [pool.submit(gateway.call, "stuck", tool_call("echo", n, text=text)) for n in range(8)]
            for _ in range(5):
                asked = time.monotonic()
                self.assertEqual(gateway.call("other", rpc("ping"))[0], 200)
                self.assertLess(time.monotonic() - asked, 0.5)
            results = [future.result(TIMEOUT) for future in stuck]
        self.assertLess(time.monotonic() - started, 5)  # each ended at its own timeout, none hung on the pipe
        for status, reply in results:
            self.assertEqual((status, reply["error"]["data"]["error_code"]), (504, "timeout"))
        self.assertEqual(gateway.request("GET", "/health")[0], 200)


class HostileInputTest(unittest.TestCase):
    """Odd input gets a clear 4xx in the documented shape; nothing answers 500, nothing stops working."""

    @classmethod
    def setUpClass(cls):
        cls.gateway = GatewayProcess(cls, base_config([fake_server()]))

    @classmethod
    def addCleanup(cls, function, *args):
        cls.addClassCleanup(function, *args)

    def test_bodies(self):
        cases = [(b"[" * 100000, 400, "invalid_json"), (b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}', 400, "invalid_json"),
                 (b'{"jsonrpc":"2.0","method":"server/discover"}', 202, None)]
        for body, status, code in cases:
            with self.subTest(body=body[:40]):
                got, _, reply = self.gateway.request("POST", "/fake/rpc", body)
                self.assertEqual(got, status)
                if code:
                    self.assertEqual(reply["error"]["error_code"], code)
        self.assertEqual(self.gateway.call("fake", rpc("ping"))[0], 200)

    def test_bad_last_event_id_opens_no_session(self):
        status, _, reply = self.gateway.request("GET", "/fake/rpc", headers={"Accept": "text/event-stream",
                                                                               "Last-Event-ID": "\u00b2"})
        self.assertEqual((status, reply["error"]["error_code"]), (400, "bad_request"))
        self.assertFalse(any(r.get("event") == "session_opened" and r.get("by") == "GET" for r in self.gateway.logs))

    def test_head_gets_no_body_and_the_connection_stays_usable(self):
        reply = raw_exchange(self.gateway.port, b"HEAD /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                             TOKEN.encode() + b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
        first, second = reply.split(b"HTTP/1.1 ", 2)[1:]
        self.assertTrue(first.startswith(b"200 "))  # HEAD is GET without the body
        self.assertTrue(first.endswith(b"\r\n\r\n"))  # a head, no body
        self.assertTrue(second.startswith(b"200 "))
        self.assertIn(b"Content-Type: application/json", first)  # the GET's head: its length, its type
        self.assertNotIn(b"Content-Length: 0\r\n", first)
        for path, status in (("/servers", 200), ("/metrics", 200), ("/fake/rpc", 405), ("/rpc", 405)):
            with self.subTest(path=path):
                got, response, body = self.gateway.request("HEAD", path)
                self.assertEqual((got, body), (status, None))
                if status == 405:
                    self.assertNotIn("HEAD", response.getheader("Allow"))

    def test_empty_lines_before_a_request_are_ignored_and_bare_lf_is_refused_at_once(self):
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer " + TOKEN.encode() + \
            b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"\r\n")  # in a packet of its own, read alone while nothing comes back
            sock.settimeout(1.0)
            self.assertRaises(socket.timeout, sock.recv, 65536)
            sock.settimeout(TIMEOUT)
            sock.sendall(b"\r\n" + request)
            self.assertEqual(status_of(sock.recv(65536)), 200)
        self.assertEqual(status_of(raw_exchange(self.gateway.port, b"\r\n\r\n" + request)), 200)
        started = time.monotonic()
        reply = raw_exchange(self.gateway.port, b"GET /health HTTP/1.1\nHost: x\n\n")
        self.assertEqual((status_of(reply), body_of(reply)["error"]["error_code"]), (400, "bad_request"))
        self.assertLess(time.monotonic() - started, 2)  # not the client timeout

    def test_two_host_headers_are_refused(self):
        reply = raw_exchange(self.gateway.port, b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertEqual(status_of(reply), 400)

    def test_a_child_line_nested_too_deeply_is_skipped(self):
        self.assertEqual(self.gateway.tool("garbage", text="[" * 100000)["content"][0]["text"], "ok")
        self.gateway.wait_log(lambda r: r.get("event") == "child_non_json_line")
        self.assertEqual(self.gateway.tool("add", a=1, b=1)["structuredContent"], {"sum": 2})


class GrandchildTest(unittest.TestCase):
    def test_a_child_that_exits_while_its_own_child_holds_stdout_is_noticed(self):
        gateway = GatewayProcess(self, base_config([fake_server()], request_timeout_ms=8000))
        gateway.wait_state("fake", "ready")
        first_pid = gateway.tool("pid")["structuredContent"]["pid"]
        grandchild = gateway.tool("spawn_grandchild")["structuredContent"]["pid"]
        started = time.monotonic()
        status, reply = gateway.call("fake", tool_call("crash", 2, code=5))
        self.assertLess(time.monotonic() - started, 3)
        self.assertEqual((status, reply["error"]["data"]["error_code"]), (502, "server_exited"))
        self.assertIn("exited with code 5", reply["error"]["message"])
        new_pid = wait_for(lambda: gateway.call("fake", tool_call("pid"))[1].get("result"),
                           "the restarted child")["structuredContent"]["pid"]
        self.assertNotEqual(new_pid, first_pid)
        wait_for(lambda: process_gone(grandchild), "the old child's process group to be killed")


class StopBudgetTest(unittest.TestCase):
    def test_sigterm_exits_within_5_s_with_sessions_streams_calls_and_a_stubborn_child(self):
        gateway = GatewayProcess(self, base_config([fake_server(), fake_server("stubborn", "--stubborn"),
                                                    fake_server("own", isolation="session", autostart=False)]))
        gateway.wait_state("stubborn", "ready")
        sessions = [McpClient(gateway), McpClient(gateway, "own")]
        streams = [client.open_stream() for client in sessions]
        hung = start_in_flight(self, gateway, tool_call("hang", "h"), "stubborn")
        pids = [gateway.servers()[sid]["pid"] for sid in ("fake", "stubborn")]
        pids.append(gateway.servers()["own"]["children"][0]["pid"])
        started = time.monotonic()
        self.assertEqual(gateway.stop(), 0)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(hung.result(TIMEOUT)[1]["error"]["data"]["error_code"], "server_unavailable")
        for stream in streams:
            stream.read()  # each stream ended with the stop
        wait_for(lambda: all(process_gone(pid) for pid in pids), "every child to be gone")


class DemoPortTest(unittest.TestCase):
    def test_demo_moves_to_a_free_port_when_7411_is_taken(self):
        holder = socket.socket()
        self.addCleanup(holder.close)
        try:
            holder.bind(("127.0.0.1", gw.DEFAULT_PORT))
            holder.listen(1)
        except OSError:
            pass  # something else holds it already: the demo must move all the same
        proc = subprocess.Popen([sys.executable, GATEWAY, "--demo"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        banner = proc.stdout.readline()
        self.assertIn("(port 7411 was taken)", banner)
        self.assertNotIn("127.0.0.1:7411/", banner)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=TIMEOUT), 0)
        proc.stdout.close()


class LimitsTest(unittest.TestCase):
    def test_an_over_long_child_line_is_skipped_and_a_late_answer_dropped(self):
        gateway = GatewayProcess(self, base_config([fake_server()], max_message_bytes=100000, request_timeout_ms=600))
        gateway.wait_state("fake", "ready")
        status, reply = gateway.call("fake", tool_call("big", 1, bytes=200000))
        self.assertEqual((status, reply["error"]["data"]["error_code"]), (504, "timeout"))
        gateway.wait_log(lambda r: r.get("event") == "child_line_too_long" and r.get("limit") == 100000)
        status, reply = gateway.call("fake", tool_call("sleep", 2, seconds=1))  # answers after its timeout
        self.assertEqual((status, reply["error"]["data"]["error_code"]), (504, "timeout"))
        gateway.wait_log(lambda r: r.get("event") == "child_late_response_dropped")
        self.assertEqual(gateway.tool("big", bytes=50000)["structuredContent"], {"length": 50000})


def idle_connections(testcase, port, count, source="127.0.0.1"):
    """`count` connections that say nothing, closed at the end of the test."""
    socks = []
    testcase.addCleanup(lambda: [sock.close() for sock in socks])
    for _ in range(count):
        socks.append(connect_from(source, port))
    return socks


def connect_from(source, port):
    """A connection to the gateway from a given local address (Linux routes all of 127/8 to loopback)."""
    sock = socket.socket()
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock




class ManyDescriptorsTest(unittest.TestCase):
    """Past 1024 open descriptors, where select() gives up, event streams and stuck children still work."""

    def test_streams_and_a_stuck_child_past_1024_descriptors(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2048:
            self.skipTest("the hard file limit is below 2048")
        if soft != resource.RLIM_INFINITY and soft < 2048:
            resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        gateway = GatewayProcess(self, base_config([fake_server(autostart=False)], sse_keepalive_ms=100,
                                                   request_timeout_ms=8000))
        idle_connections(self, gateway.port, 1100)
        self.assertEqual(gateway.request("GET", "/health")[0], 200)  # answered after every idle one was accepted
        if proc_entries(gateway.proc.pid, "fd"):
            self.assertGreater(proc_entries(gateway.proc.pid, "fd"), 1100)
        # The child starts now, so its pipes are numbered above 1100.
        self.assertEqual(gateway.tool("stop_reading", seconds=1)["content"][0]["text"], "stopped reading")
        text = "x" * (512 * 1024)  # more than a pipe holds: the rest waits for the writer thread
        self.assertEqual(gateway.tool("echo", text=text)["content"][0]["text"], text)
        client = McpClient(gateway)
        stream = client.open_stream()
        self.assertEqual(stream.status, 200)
        events = read_sse(stream, until=lambda m: m == ":keepalive")
        read_sse(stream, until=lambda m: m == ":keepalive")  # a second one: the stream lived through a look
        self.assertEqual(events[-1], (None, ":keepalive"))
        hang_up(stream)
        again = reopen_stream(client)
        self.assertEqual(again.status, 200)
        hang_up(again)
        self.assertFalse([r for r in gateway.logs if r.get("event") in ("internal_error", "thread_failed")])


class JsonInputTest(unittest.TestCase):
    def test_json_input_problem(self):
        cases = [(b'{"a":"\\udc00"}', "surrogate"), (b'{"a":"\\ud800"}', "surrogate"),
                 (b'["\\ud83d\\ude00"]', None),  # a pair is one character
                 (b'"\\\\udc00"', None),  # an escaped backslash, then text
                 (b"[" * 129 + b"]" * 129, "nest"), (b"[" * 128 + b"]" * 128, None),
                 (b'[' + b'[],' * 500 + b'[]]', None),  # many brackets, shallow
                 (b'{"k":' * 200 + b'1' + b'}' * 200, "nest")]
        for data, expected in cases:
            with self.subTest(data=data[:30]):
                problem = gw.json_input_problem(data, gw.json_loads(data))
                if expected is None:
                    self.assertIsNone(problem)
                else:
                    self.assertIn(expected, problem)

    def test_numbers_and_encoding(self):
        for text in (b"1e400", b"-1e400", b'{"id":1e999}', b"NaN", b"Infinity"):
            with self.subTest(text=text):
                self.assertRaises(ValueError, gw.json_loads, text)
        self.assertEqual(gw.json_loads(b"[1e308, 0.5]"), [1e308, 0.5])
        self.assertRaises(ValueError, gw.json_bytes, float("inf"))
        self.assertEqual(gw.json_bytes({"a": "\udc00é"}), b'{"a":"\\udc00\\u00e9"}')  # still JSON text
        self.assertEqual(gw.json_bytes({"a": "é"}), '{"a":"é"}'.encode("utf-8"))

    def test_decoding_reads_as_the_json_decoder_does(self):
        """The scanner the gateway calls itself: the same values and the same errors, where they are."""
        for text in ('{"a": [1, "x", null]}', ' \t\r\n[true] \n', '"s"', "0", '{"a":1}   }', "", "   ", "[1,",
                     '{"a" 1}', "[1] [2]", "\ufeff[]", "01", "[1,]"):
            with self.subTest(text=text):
                try:
                    expected = json.JSONDecoder().decode(text)
                except ValueError as e:
                    with self.assertRaises(ValueError) as caught:
                        gw.json_loads(text.encode("utf-8"))
                    self.assertEqual(str(caught.exception), str(e))
                else:
                    self.assertEqual(gw.json_loads(text.encode("utf-8")), expected)

    def test_hostile_bodies_are_refused_before_anything_is_registered(self):
        gateway = GatewayProcess(self, base_config([fake_server()]))
        gateway.wait_state("fake", "ready")
        deep = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":%s}}}' % (
            "[" * 975 + '"x"' + "]" * 975)
        cases = [("/fake/rpc", json.dumps(tool_call("echo", text="\udc00"))),
                 ("/fake/rpc", deep),
                 ("/fake/rpc", '{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}'),
                 ("/fake/rpc", '{"jsonrpc":"2.0","id":1e400,"method":"ping"}'),
                 ("/rpc", '{"server_id":"\\ud800","payload":{"jsonrpc":"2.0","id":1,"method":"ping"}}'),
                 ("/rpc", json.dumps({"server_id": "fake", "payload": tool_call("echo", text="\udc00")}))]
        for path, body in cases:
            with self.subTest(path=path, body=body[:60]):
                status, _, reply = gateway.request("POST", path, body)
                self.assertEqual((status, reply["error"]["error_code"]), (400, "invalid_json"))
        self.assertEqual(gateway.servers()["fake"]["calls_in_flight"], 0)
        self.assertFalse([r for r in gateway.logs if r.get("event") == "internal_error"])
        self.assertEqual(gateway.tool("add", a=1, b=2)["structuredContent"], {"sum": 3})


def raw_request(path, method="GET", token=TOKEN, body=b""):
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
    return (b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n%s" % (
        method.encode(), path.encode(), auth, len(body), body))


def exchange_from(source, port, data):
    """raw_exchange from a given source address."""
    with connect_from(source, port) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class LimitsUnitTest(unittest.TestCase):
    def test_slots(self):
        slots = gw.Slots({"total": 3, "client": 2})
        a, b = (("total", None), ("client", "a")), (("total", None), ("client", "b"))
        steps = [(a, None), (a, None), (a, ("client", "a")), (b, None), (b, ("total", None))]
        for keys, refused in steps:
            with self.subTest(keys=keys):
                self.assertEqual(slots.acquire(keys), refused)
        slots.release(a)
        self.assertIsNone(slots.acquire(b))
        for keys in (a, b, b):
            slots.release(keys)
        self.assertEqual(slots._counts, {})  # nothing kept for keys no longer in use

    def test_refusal_log(self):
        clock = FakeClock()
        log = gw.RefusalLog(clock)
        log.BURST, log.MAX_ADDRESSES = 2, 3
        # (time, address, logged?)
        steps = [(0, "a", True), (1, "a", True), (2, "a", False), (2, "a", False), (3, "b", True), (3, "c", True),
                 (4, "d", False), (4, "e", False), (5, "b", True), (5, "b", False)]
        for t, address, logged in steps:
            with self.subTest(t=t, address=address):
                clock.t = t
                self.assertEqual(log.allow(address), logged)
        self.assertIsNone(log.summary())  # the window is still open
        clock.t = log.WINDOW_S
        self.assertEqual(log.summary(), {"dropped": 5, "clients": 2, "untracked": 2, "top_clients": {"a": 2, "b": 1}})
        self.assertEqual((len(log._logged), len(log._dropped)), (0, 0))
        self.assertTrue(log.allow("a"))  # a new window
        self.assertIsNone(log.summary(force=True))  # nothing was left out
        for _ in range(5):
            log.allow("z")
        self.assertEqual(log.summary(force=True)["dropped"], 3)

    def test_token_name(self):
        tokens = [("default", TOKEN), ("ci", "c" * 40)]
        cases = [("Bearer " + TOKEN, "default"), ("bearer " + "c" * 40, "ci"), ("Bearer nope", None), (None, None)]
        for header, name in cases:
            with self.subTest(header=header):
                self.assertEqual(gw.token_name(header, tokens), name)


class HostileClientTest(unittest.TestCase):
    """Many connections, refused clients and floods from one address leave others served."""

    def setUp(self):
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.2", 0))
        except OSError:
            self.skipTest("127.0.0.2 is not a local address here")

    def test_connection_caps_per_client_and_in_total(self):
        gateway = GatewayProcess(self, base_config([fake_server(autostart=False)], max_connections=5,
                                                   max_connections_per_client=3))
        idle_connections(self, gateway.port, 3, "127.0.0.2")
        refused = exchange_from("127.0.0.2", gateway.port, b"")
        self.assertEqual((status_of(refused), body_of(refused)["error"]["error_code"]), (503, "too_many_connections"))
        self.assertIn(b"Retry-After: 1", refused)
        self.assertEqual(status_of(exchange_from("127.0.0.1", gateway.port, raw_request("/health"))), 200)
        idle_connections(self, gateway.port, 2, "127.0.0.1")  # five now: the total is reached
        self.assertEqual(status_of(exchange_from("127.0.0.3", gateway.port, b"")), 503)
        gateway.wait_log(lambda r: r.get("event") == "connection_refused" and r.get("client") == "127.0.0.3")

    def test_a_refused_address_gets_403_at_once_and_holds_no_thread(self):
        gateway = GatewayProcess(self, base_config([fake_server(autostart=False)], allowed_clients=["127.0.0.1"]))
        threads = thread_count(gateway.proc.pid)
        socks = idle_connections(self, gateway.port, 50, "127.0.0.2")
        for sock in socks:  # sent nothing, answered anyway
            reply = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            self.assertEqual((status_of(reply), body_of(reply)["error"]["error_code"]), (403, "forbidden_client"))
        self.assertLessEqual(thread_count(gateway.proc.pid), threads)
        self.assertEqual(status_of(exchange_from("127.0.0.1", gateway.port, raw_request("/health"))), 200)

    def test_refusals_are_logged_at_a_bounded_rate_with_a_summary(self):
        gateway = GatewayProcess(self, base_config([fake_server(autostart=False)]))
        conn = gateway.connect()
        for _ in range(200):
            self.assertEqual(gateway.request("GET", "/health", token="wrong-token", conn=conn)[0], 401)
        self.assertEqual(gateway.request("GET", "/health")[0], 200)
        self.assertEqual(gateway.stop(), 0)
        refused = [r for r in gateway.logs if r.get("event") == "http_request" and r.get("status") == 401]
        self.assertEqual(len(refused), gw.RefusalLog.BURST)
        summary = [r for r in gateway.logs if r.get("event") == "refusals_not_logged"]
        self.assertEqual(sum(r["dropped"] for r in summary), 200 - gw.RefusalLog.BURST)
        self.assertTrue(any(r.get("status") == 200 for r in gateway.logs if r.get("event") == "http_request"))

    def test_calls_in_flight_are_capped_per_client_and_per_token(self):
        gateway = GatewayProcess(self, base_config([fake_server()], max_calls_per_client=2, max_calls_per_token=3,
                                                   request_timeout_ms=3000))
        gateway.wait_state("fake", "ready")
        pool = ThreadPoolExecutor(4)
        self.addCleanup(pool.shutdown)
        body = json.dumps(tool_call("hang")).encode()

        def hang(source):
            return exchange_from(source, gateway.port, raw_request("/fake/rpc", "POST", body=body))
        hung = [pool.submit(hang, "127.0.0.2") for _ in range(2)]
        wait_for(lambda: gateway.servers()["fake"]["calls_in_flight"] == 2, what="two calls in flight")
        refused = exchange_from("127.0.0.2", gateway.port, raw_request("/fake/rpc", "POST", body=body))
        self.assertEqual((status_of(refused), body_of(refused)["error"]["error_code"]), (429, "too_many_requests"))
        self.assertIn(b"Retry-After: 1", refused)
        self.assertIn("max_calls_per_client", body_of(refused)["error"]["message"])
        hung.append(pool.submit(hang, "127.0.0.3"))  # another address is served ...
        wait_for(lambda: gateway.servers()["fake"]["calls_in_flight"] == 3, what="three calls in flight")
        refused = exchange_from("127.0.0.4", gateway.port, raw_request("/fake/rpc", "POST", body=body))
        self.assertIn("max_calls_per_token", body_of(refused)["error"]["message"])  # ... up to the token's cap
        self.assertEqual(gateway.request("GET", "/health")[0], 200)  # a GET is no call
        for future in hung:
            self.assertEqual(status_of(future.result(TIMEOUT)), 504)
        self.assertEqual(gateway.call("fake", rpc("ping"))[0], 200)  # the slots came back


class LabelBoundTest(unittest.TestCase):
    def test_bound_label(self):
        cases = [("tools/call", 10, "tools/call"), ("abcdefghijk", 10, "abcdefg..."), ("", 10, ""),
                 ("x" * (1 << 20), 128, "x" * 125 + "...")]
        for value, limit, expected in cases:
            with self.subTest(value=value[:20], limit=limit):
                self.assertEqual(gw.bound_label(value, limit), expected)

    def test_distinct_values_are_capped_per_attribute(self):
        labels = gw.LabelValues({"method": frozenset({"tools/call"})})
        labels.MAX_DISTINCT = 2
        steps = [("method", "a", "a"), ("method", "b", "b"), ("method", "c", "_other"), ("method", "a", "a"),
                 ("method", "tools/call", "tools/call"),  # a known value always passes
                 ("tool", "c", "c"), ("tool", "y" * 200, "y" * 125 + "..."), ("tool", "z" * 200, "_other")]
        for key, value, expected in steps:
            with self.subTest(key=key, value=value[:10]):
                self.assertEqual(labels.bound(key, value), expected)

    def test_huge_and_many_tool_names_keep_metrics_small(self):
        gateway = GatewayProcess(self, base_config([fake_server()]))
        gateway.wait_state("fake", "ready")
        conn = gateway.connect()
        names = ["n%d-" % n + "x" * (1 << 20) for n in range(20)] + ["tool-%d" % n for n in range(300)]
        for n, name in enumerate(names):
            status, _, reply = gateway.request("POST", "/fake/rpc", tool_call(name, n), conn=conn)
            self.assertEqual((status, reply["error"]["code"]), (200, -32602))  # the fake server knows none
        started = time.monotonic()
        status, _, text = gateway.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertLess(len(text), 1 << 20)
        self.assertLess(time.monotonic() - started, 2)
        self.assertIn(b'gen_ai_tool_name="_other"', text)
        self.assertNotIn(b"x" * 200, text)


class GeneratedDocTablesTest(unittest.TestCase):
    """docs/configuration.md holds the key tables exactly as config_tables_markdown() renders them from
    CONFIG_FIELDS and SERVER_FIELDS, so a field changed in the code without its doc fails here."""
    BEGIN = "<!-- generated by config_tables_markdown() in host_mcp_gateway.py; test_gateway.py checks it -->"
    END = "<!-- end of generated tables -->"

    def test_configuration_doc_holds_the_generated_tables(self):
        with open(os.path.join(HERE, "docs", "configuration.md"), encoding="utf-8") as f:
            doc = f.read()
        self.assertEqual((doc.count(self.BEGIN), doc.count(self.END)), (1, 1))
        block = doc.split(self.BEGIN)[1].split(self.END)[0]
        self.maxDiff = None
        self.assertEqual(block.strip("\n"), gw.config_tables_markdown().strip("\n"),
                         "paste the output of: python3 -c 'import host_mcp_gateway as g; "
                         "print(g.config_tables_markdown())' between the markers")

    def test_every_key_has_one_row_with_four_filled_cells(self):
        rows = [line for line in gw.config_tables_markdown().splitlines() if line.startswith("| `")]
        keys = [row.split("`")[1] for row in rows]
        self.assertEqual(keys, list(gw.CONFIG_FIELDS) + list(gw.SERVER_FIELDS))
        for row in rows:
            with self.subTest(row=row[:40]):
                cells = [cell.strip() for cell in row.replace("\\|", "").split("|")[1:-1]]
                self.assertEqual(len(cells), 4)
                self.assertTrue(all(cells))
