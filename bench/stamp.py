"""Fallback for bench/stamp.c when no C compiler is found: same arguments, same records.

usage: python -S stamp.py EVENTS_FILE NAME [BEAT_MS]
The start stamp is taken as early as Python allows, but interpreter start-up (~15-25 ms on a
small machine) already passed by then, so handover figures come out that much too long.
"""

import time

t0 = time.clock_gettime(time.CLOCK_MONOTONIC)

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
name = sys.argv[2]
beat = (int(sys.argv[3]) if len(sys.argv) > 3 else 10) / 1000
token = os.environ.get("CONSUL_ELECT_FENCING_TOKEN") or "-"


def record(event, t=None):
    t = time.clock_gettime(time.CLOCK_MONOTONIC) if t is None else t
    os.write(fd, f"{t:.6f} {os.getpid()} {name} {token} {event}\n".encode())


signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
record("start", t0)
while True:
    if signal.sigtimedwait([signal.SIGTERM], beat) is not None:
        record("stop")
        sys.exit(0)
    record("beat")
