"""Fake MCP server used by the test-suite, spoken to over stdio.

Protocol: newline-delimited JSON-RPC 2.0 on stdin/stdout. Every request is
handled in its own daemon thread, so slow calls never block others and answers
may arrive out of order. Exits with code 0 when stdin reaches EOF.

Flags:
  --exit-at-start CODE  print "exiting at start" to stderr and exit with CODE
  --handshake MODE      ok (default) | hang (never answer initialize) |
                        die (exit 3 on initialize) | error (-32603 "handshake refused")
  --protocol VERSION    protocolVersion to answer with (default: echo the client's)
  --stderr-at-start N   write N lines "startup line i" to stderr before serving
  --name NAME           serverInfo.name (default "fake")
  --stubborn            ignore SIGTERM, and keep running after stdin ends (only SIGKILL stops it)
  --list-changed-burst N  after answering initialize, send notifications/tools/list_changed N times
  --era ERA             legacy (default: the handshake; server/discover is unknown) | modern (revision
                        2026-07-28 only: initialize gets -32022) | dual (the first message fixes the era)

In the modern era every request must carry params._meta with the revision (else -32602); results carry
resultType; `ask` answers input_required (inputRequests {"answer": ...}, requestState "fake-state") until a
retry brings inputResponses.answer; subscriptions/listen acknowledges and then gets `notify`'s list_changed and
resources/updated notifications, tagged with its id, until cancelled; `received` also reports the last _meta.

Methods: initialize, ping, tools/list, tools/call, resources/list,
resources/subscribe, resources/unsubscribe, prompts/list; anything else is
-32601. Notifications are recorded; responses to server requests feed `ask`.

Tools (tools/call):
  echo {text}                 text back; structuredContent also carries params._meta
  add {a, b}                  the sum
  sleep {seconds}             sleeps, then answers "slept"
  hang {}                     never answers
  crash {code, stderr?}       optional stderr line, then os._exit(code)
  kill_self {signal}          sends itself the signal (number or name like "SIGTERM")
  garbage {text}              writes `text` raw to stdout, then answers "ok"
  flood_stderr {bytes}        writes that many bytes to stderr, answers "flooded"
  big {bytes}                 answers with "a" * bytes
  pid {}                      {"pid": ..., "initializes": ...}
  notify {method, params}     writes that notification to stdout, answers "notified"
  progress {steps, delay?}    notifications/progress for params._meta.progressToken
  ask {method, params?, timeout?}  server-to-client request, answers with the response
  received {}                 recorded notifications, subscriptions and the last initialize's params
  spawn_grandchild {}         starts `sleep 1000`, answers with its pid
  stop_reading {seconds}      answers, then reads nothing more from stdin for that long
  located {region, zone?}     echoes its arguments; both are marked x-mcp-header (Region, Zone)
Unknown tools give -32602 "unknown tool: X".
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

_out_lock = threading.Lock()
_err_lock = threading.Lock()
_state = threading.Condition()  # guards everything below
_notifications: list = []
_subscriptions: list = []
_responses: dict = {}
_counters = {"initializes": 0, "asks": 0}
ARGS = argparse.Namespace()


def write_raw(line: str) -> None:
    with _out_lock:
        sys.stdout.buffer.write(line.encode("utf-8") + b"\n")
        sys.stdout.buffer.flush()


def send(msg: dict) -> None:
    write_raw(json.dumps(msg, separators=(",", ":")))


def to_stderr(text: str) -> None:
    with _err_lock:
        sys.stderr.write(text)
        sys.stderr.flush()


def notify(method: str, params: Any) -> None:
    send({"jsonrpc": "2.0", "method": method, "params": params})


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


MODERN = "2026-07-28"
_listeners: set = set()  # ids of open subscriptions/listen requests (modern era)
LISTENED = ("notifications/tools/list_changed", "notifications/prompts/list_changed",
            "notifications/resources/list_changed", "notifications/resources/updated")


def text_result(text: str, structured: Any = None) -> dict:
    return {"content": [{"type": "text", "text": text}],
            "structuredContent": structured if structured is not None else {}}


def _obj(props: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": props, "required": list(required)}


_S, _N, _I, _O = ({"type": t} for t in ("string", "number", "integer", "object"))
TOOLS = [
    ("echo", "Echo the text back.", _obj({"text": _S}, ("text",))),
    ("add", "Add two numbers.", _obj({"a": _N, "b": _N}, ("a", "b"))),
    ("sleep", "Sleep, then answer.", _obj({"seconds": _N}, ("seconds",))),
    ("hang", "Never answer.", _obj({})),
    ("crash", "Exit the process.", _obj({"code": _I, "stderr": _S}, ("code",))),
    ("kill_self", "Send a signal to itself.", _obj({"signal": {}}, ("signal",))),
    ("garbage", "Write a non-JSON line to stdout.", _obj({"text": _S}, ("text",))),
    ("flood_stderr", "Write many bytes to stderr.", _obj({"bytes": _I}, ("bytes",))),
    ("big", "Answer with a large text.", _obj({"bytes": _I}, ("bytes",))),
    ("pid", "Report pid and initialize count.", _obj({})),
    ("notify", "Send a notification.", _obj({"method": _S, "params": _O}, ("method",))),
    ("progress", "Send progress notifications.",
     _obj({"steps": _I, "delay": _N}, ("steps",))),
    ("ask", "Send a request to the client and wait for the response.",
     _obj({"method": _S, "params": _O, "timeout": _N}, ("method",))),
    ("received", "Report recorded notifications and subscriptions.", _obj({})),
    ("spawn_grandchild", "Start a long-running child process.", _obj({})),
    ("stop_reading", "Stop reading stdin for a while.", _obj({"seconds": _N}, ("seconds",))),
    ("located", "Echo a region that HTTP clients mirror into the Mcp-Param-Region header.",
     _obj({"region": {"type": "string", "x-mcp-header": "Region"}, "zone": {"type": "integer", "x-mcp-header": "Zone"}},
          ("region",))),
]


def call_tool(params: dict) -> dict | None:
    """Run one tool; None means "do not answer"."""
    name, args = params.get("name"), params.get("arguments") or {}
    meta = params.get("_meta")
    if name == "echo":
        return text_result(args["text"], {"text": args["text"], "meta": meta})
    if name == "add":
        total = args["a"] + args["b"]
        return text_result(str(total), {"sum": total})
    if name == "sleep":
        time.sleep(float(args["seconds"]))
        return text_result("slept")
    if name == "hang":
        return None
    if name == "crash":
        if args.get("stderr") is not None:
            to_stderr(str(args["stderr"]) + "\n")
        os._exit(int(args["code"]))
    if name == "kill_self":
        sig = args["signal"]
        os.kill(os.getpid(), getattr(signal, sig) if isinstance(sig, str) else int(sig))
        return text_result("killed")  # only reached for signals that do not kill
    if name == "garbage":
        write_raw(args["text"])
        return text_result("ok")
    if name == "flood_stderr":
        full, rest = divmod(int(args["bytes"]), 1000)
        for _ in range(full):
            to_stderr("x" * 999 + "\n")
        if rest:
            to_stderr("x" * (rest - 1) + "\n")
        return text_result("flooded")
    if name == "big":
        return text_result("a" * int(args["bytes"]), {"length": int(args["bytes"])})
    if name == "pid":
        with _state:
            count = _counters["initializes"]
        return text_result(str(os.getpid()), {"pid": os.getpid(), "initializes": count})
    if name == "notify":
        params = args.get("params") or {}
        with _state:
            listeners = list(_listeners) if _counters.get("era") == "modern" and args["method"] in LISTENED else None
        if listeners is None:
            notify(args["method"], params)
        for listener in listeners or ():
            notify(args["method"], dict(params, _meta={"io.modelcontextprotocol/subscriptionId": listener}))
        return text_result("notified")
    if name == "progress":
        token, steps = (meta or {}).get("progressToken"), int(args["steps"])
        for i in range(1, steps + 1):
            if i > 1 and args.get("delay"):
                time.sleep(float(args["delay"]))
            if token is not None:
                notify("notifications/progress", {"progressToken": token, "progress": i,
                                                  "total": steps, "message": f"step {i}"})
        return text_result("done")
    if name == "ask":
        with _state:
            _counters["asks"] += 1
            rid = "srv-%d" % _counters["asks"]
        send({"jsonrpc": "2.0", "id": rid, "method": args["method"],
              "params": args.get("params") or {}})
        with _state:
            _state.wait_for(lambda: rid in _responses, float(args.get("timeout", 30)))
            response = _responses.pop(rid, None)
        return text_result("asked", {"response": response})
    if name == "received":
        with _state:
            data = {"notifications": list(_notifications),
                    "subscriptions": list(_subscriptions),
                    "initialize": _counters.get("initialize_params"), "meta": _counters.get("last_meta")}
        return text_result("received", data)
    if name == "located":
        return text_result(args["region"], args)
    if name == "stop_reading":
        with _state:
            _counters["reading_resumes_at"] = time.monotonic() + float(args["seconds"])
        return text_result("stopped reading")
    if name == "spawn_grandchild":
        child = subprocess.Popen(["sleep", "1000"])
        return text_result(str(child.pid), {"pid": child.pid})
    raise RpcError(-32602, "unknown tool: %s" % name)


def handle_request(method: str, params: dict) -> Any:
    """Return the result; None means "do not answer"."""
    if method == "initialize":
        with _state:
            _counters["initializes"] += 1
            _counters["initialize_params"] = params
        if ARGS.handshake == "hang":
            return None
        if ARGS.handshake == "die":
            to_stderr("dying during handshake\n")
            os._exit(3)
        if ARGS.handshake == "error":
            raise RpcError(-32603, "handshake refused")
        return {"protocolVersion": ARGS.protocol or params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": True},
                                 "resources": {"subscribe": True, "listChanged": True},
                                 "prompts": {"listChanged": True}, "logging": {}},
                "serverInfo": {"name": ARGS.name, "version": "1.0.0"},
                "instructions": "fake server for tests"}
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": [{"name": n, "description": d, "inputSchema": s}
                          for n, d, s in TOOLS]}
    if method == "tools/call":
        return call_tool(params)
    if method in ("resources/subscribe", "resources/unsubscribe"):
        with _state:
            _subscriptions.append({"method": method, "uri": params.get("uri")})
        return {}
    if method == "prompts/list":
        return {"prompts": []}
    if method == "resources/list":
        return {"resources": [{"uri": "fake://a", "name": "a"}]}
    raise RpcError(-32601, "method not found: %s" % method)


def settle_era(method: str) -> str:
    """The era of this process: a dual-era server takes the one of its first message."""
    with _state:
        if "era" not in _counters:
            _counters["era"] = ARGS.era if ARGS.era != "dual" else ("legacy" if method == "initialize" else "modern")
        return _counters["era"]


def handle_modern(msg: dict) -> Any:
    """A request in the modern era; None means "do not answer (yet)"."""
    method, params = msg["method"], msg.get("params") or {}
    if method == "initialize":
        raise RpcError(-32022, "this server speaks only revision " + MODERN,
                       {"supported": [MODERN], "requested": params.get("protocolVersion")})
    meta = params.get("_meta") or {}
    if meta.get("io.modelcontextprotocol/protocolVersion") != MODERN:
        raise RpcError(-32602, "params._meta must name revision " + MODERN)
    with _state:
        _counters["last_meta"] = meta
    if method == "server/discover":
        legacy = handle_request("initialize", {"protocolVersion": "2025-11-25"})
        return {"supportedVersions": [MODERN], "capabilities": legacy["capabilities"],
                "instructions": legacy["instructions"], "_meta": {"io.modelcontextprotocol/serverInfo":
                                                                  legacy["serverInfo"]}}
    if method in ("ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"):
        raise RpcError(-32601, "method not found: %s" % method)
    if method == "subscriptions/listen":
        with _state:
            _listeners.add(msg["id"])
        notify("notifications/subscriptions/acknowledged", {
            "_meta": {"io.modelcontextprotocol/subscriptionId": msg["id"]}, "notifications": params.get("notifications")})
        return None
    if method == "tools/call" and params.get("name") == "ask":
        answer = (params.get("inputResponses") or {}).get("answer")
        if answer is None:
            return {"resultType": "input_required", "requestState": "fake-state",
                    "inputRequests": {"answer": {"method": params["arguments"]["method"],
                                                 "params": params["arguments"].get("params") or {}}}}
        if params.get("requestState") != "fake-state":
            raise RpcError(-32602, "requestState tampered")
        return text_result("asked", {"response": {"result": answer}})
    return handle_request(method, params)


def serve_request(msg: dict) -> None:
    reply: dict = {"jsonrpc": "2.0", "id": msg["id"]}
    try:
        if settle_era(msg["method"]) == "modern":
            result = handle_modern(msg)
            if result is not None:
                result.setdefault("resultType", "complete")
        else:
            result = handle_request(msg["method"], msg.get("params") or {})
        if result is None:
            return
        reply["result"] = result
    except RpcError as exc:
        reply["error"] = {"code": exc.code, "message": exc.message}
        if exc.data is not None:
            reply["error"]["data"] = exc.data
    except Exception as exc:  # a bad argument, say
        reply["error"] = {"code": -32603, "message": "%s: %s" % (type(exc).__name__, exc)}
    send(reply)
    if msg["method"] == "initialize":
        for _ in range(ARGS.list_changed_burst):  # what a server re-registering its tools one by one sends
            notify("notifications/tools/list_changed", {})


def dispatch(line: bytes) -> None:
    try:
        msg = json.loads(line.decode("utf-8", "replace"))
    except ValueError:
        to_stderr("fake server: ignoring non-JSON line\n")
        return
    if not isinstance(msg, dict):
        return
    if "method" in msg and "id" in msg:
        threading.Thread(target=serve_request, args=(msg,), daemon=True).start()
    elif "method" in msg:
        with _state:
            _notifications.append({"method": msg["method"], "params": msg.get("params")})
            if msg["method"] == "notifications/cancelled":  # the end of a subscriptions/listen, among others
                _listeners.discard((msg.get("params") or {}).get("requestId"))
    elif "id" in msg:
        with _state:
            _responses[msg["id"]] = msg
            _state.notify_all()


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description="Fake MCP server for tests.")
    parser.add_argument("--exit-at-start", type=int, default=None, metavar="CODE")
    parser.add_argument("--handshake", choices=("ok", "hang", "die", "error"), default="ok")
    parser.add_argument("--protocol", default=None, metavar="VERSION")
    parser.add_argument("--stderr-at-start", type=int, default=0, metavar="N")
    parser.add_argument("--name", default="fake")
    parser.add_argument("--stubborn", action="store_true")
    parser.add_argument("--list-changed-burst", type=int, default=0, metavar="N")
    parser.add_argument("--era", choices=("legacy", "modern", "dual"), default="legacy")
    ARGS = parser.parse_args()
    if ARGS.stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if ARGS.exit_at_start is not None:
        to_stderr("exiting at start\n")
        sys.exit(ARGS.exit_at_start)
    for i in range(1, ARGS.stderr_at_start + 1):
        to_stderr("startup line %d\n" % i)
    for line in sys.stdin.buffer:
        if line.strip():
            dispatch(line)
        while time.monotonic() < _counters.get("reading_resumes_at", 0):  # stop_reading
            time.sleep(0.05)
    while ARGS.stubborn:
        time.sleep(1)
    with _out_lock:  # no half-written line; daemon threads die with the process
        sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
