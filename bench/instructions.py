#!/usr/bin/env python3
"""What one tools/call costs the gateway in CPU instructions, legacy and modern, counted by valgrind's callgrind.

    python3 bench/instructions.py            # 300 calls per half, about 20 s
    python3 bench/instructions.py --calls 1000 --log-level warning

Instruction counts do not depend on the machine's load or clock, so unlike req/s they can be compared across
runs on a shared machine. The gateway runs under callgrind (its child does not); calls go one at a time on one
keep-alive connection, after a warm-up of both eras, in halves ordered legacy, modern, modern, legacy; each half's
count covers every thread of the gateway. Not counted: time in the kernel (the same system calls in both eras)
and waits. Needs valgrind (callgrind_control) on PATH; Linux or macOS with valgrind.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import bench

ORDER = (bench.LEGACY, bench.MODERN, bench.MODERN, bench.LEGACY)
WARMUP_CALLS = 100


def callgrind_control(pid, *args):
    done = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True,
                          timeout=bench.START_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError("callgrind_control %s failed: %s" % (" ".join(args), done.stdout + done.stderr))


def send_calls(target, protocol, count, first_id):
    """`count` tools/call of `protocol`, one at a time on one connection; each must be answered with the echo."""
    make = target.call_maker(protocol)
    with bench.connect(target.port) as sock:
        buf = bytearray()
        for n in range(first_id, first_id + count):
            status, _, body = bench.exchange(sock, make(n), buf)
            bench.check_echo(status, body, "%s (%s)" % (target.name, protocol))


def dumped_totals(pattern):
    """The instruction total of each callgrind dump, in the order dumped (file suffixes .1, .2, ...)."""
    totals = []
    for path in sorted(glob.glob(pattern), key=lambda p: int(p.rsplit(".", 1)[1])):
        with open(path) as f:
            totals.append(next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:"))))
    return totals


def measure(calls, log_level):
    workdir = tempfile.mkdtemp(prefix="hmg-instructions-")
    out = os.path.join(workdir, "callgrind.out")
    target = bench.GatewayTarget(workdir, bench.child_command("fast"), log_level,
                                 wrapper=("valgrind", "--tool=callgrind", "--callgrind-out-file=" + out))
    try:
        for protocol in bench.PROTOCOLS:
            send_calls(target, protocol, WARMUP_CALLS, 1)
        for half, protocol in enumerate(ORDER):
            callgrind_control(target.proc.pid, "--zero")
            send_calls(target, protocol, calls, 1000 + half * calls)
            callgrind_control(target.proc.pid, "--dump=%s" % protocol)
        totals = dumped_totals(out + ".*")
    finally:
        target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if len(totals) != len(ORDER):
        raise RuntimeError("callgrind wrote %d dumps, not %d" % (len(totals), len(ORDER)))
    per_call = {protocol: [] for protocol in bench.PROTOCOLS}
    for protocol, total in zip(ORDER, totals):
        per_call[protocol].append(total / calls)
    return {protocol: sum(values) / len(values) for protocol, values in per_call.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per half (default 300)")
    parser.add_argument("--log-level", default="info", help="the gateway's (default info, as bench.py)")
    args = parser.parse_args(argv)
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("valgrind (with callgrind_control) is not on PATH", file=sys.stderr)
        return 2
    result = measure(args.calls, args.log_level)
    for protocol in bench.PROTOCOLS:
        print("%-8s %9.0f instructions per tools/call" % (protocol, result[protocol]))
    print("modern / legacy  %.3fx" % (result[bench.MODERN] / result[bench.LEGACY]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
