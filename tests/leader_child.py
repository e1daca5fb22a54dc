#!/usr/bin/env python3
"""The command the tests run under consul-elect: it records its life in a shared events file.

Each line: "<CLOCK_MONOTONIC seconds> <pid> <name> <fencing token> <event> [detail]", appended
with O_APPEND so lines from several children never interleave. Events: start, beat (every
BEAT seconds), signal <name> (for forwarded signals), stop (on SIGTERM), exit.
"""

import os
import signal
import sys
import time

BEAT = 0.02

path = sys.argv[1]
exit_code = int(sys.argv[2]) if len(sys.argv) > 2 else None
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
name = os.environ.get("CONSUL_ELECT_NAME", "?")
token = os.environ.get("CONSUL_ELECT_FENCING_TOKEN", "-")


def record(event: str) -> None:
    os.write(fd, f"{time.clock_gettime(time.CLOCK_MONOTONIC):.6f} {os.getpid()} {name} {token} {event}\n".encode())


def on_term(signo, _frame):
    record("stop")
    os._exit(0)


def on_other(signo, _frame):
    record(f"signal {signal.Signals(signo).name}")


signal.signal(signal.SIGTERM, on_term)
for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
    signal.signal(s, on_other)
record("start " + " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("CONSUL_")
                          and k not in ("CONSUL_HTTP_TOKEN",)))
if exit_code is not None:
    time.sleep(0.2)
    record("exit")
    sys.exit(exit_code)
while True:
    record("beat")
    time.sleep(BEAT)
