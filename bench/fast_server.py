#!/usr/bin/env python3
"""A minimal, fast stdio MCP server for bench.py: newline-delimited JSON-RPC on stdin/stdout.

Answers initialize, ping, tools/list and tools/call (tool `echo`: returns its `text`) at once; other requests
get -32601; notifications are ignored. It is a handshake-era server: the `server/discover` probe the gateway
sends a new child first (child_protocol auto) gets -32601 at once, so the gateway falls back to initialize
without waiting out its probe timeout; a request's params._meta (revision 2026-07-28's envelope) is ignored. It reads whatever is available and answers every complete line in one
write, so requests the gateway sends back to back cost one read and one write here, not one per line.
Standard library only; exits when stdin closes.
"""
import json
import os

TOOLS = [{"name": "echo", "description": "Returns the text it is given.",
          "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}]


def result_for(method, params):
    if method == "tools/call":
        text = (params.get("arguments") or {}).get("text", "")
        return {"content": [{"type": "text", "text": text}]}
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "initialize":
        return {"protocolVersion": params.get("protocolVersion", "2025-06-18"), "capabilities": {"tools": {}},
                "serverInfo": {"name": "bench-fast-server", "version": "1"}}
    return None  # server/discover among them: answered -32601 (see the docstring)


def answer(line):
    """The reply bytes for one line, or b"" when nothing is due (notification, response, bad JSON)."""
    try:
        message = json.loads(line)
    except ValueError:
        return b""
    if not isinstance(message, dict) or "id" not in message or "method" not in message:
        return b""
    result = result_for(message["method"], message.get("params") or {})
    if result is None:
        reply = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "method not found"}}
    else:
        reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def main():
    pending = b""
    while True:
        data = os.read(0, 1 << 16)
        if not data:
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        out = b"".join(answer(line) for line in lines if line.strip())
        while out:  # a blocking pipe may still take a large write in parts
            out = out[os.write(1, out):]


if __name__ == "__main__":
    main()
