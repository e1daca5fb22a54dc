"""Hot-path timestamps, for the handover benchmark's split (bench/run.py).

With CONSUL_ELECT_TRACE=<file>, each `mark(point)` appends "<CLOCK_MONOTONIC> <pid> <point>" to
the file in one O_APPEND write (the same clock as the benchmark's child records, so one
handover can be laid out across the old leader, the new one and their watchdogs and children).
Unset, a mark costs one test of a module global: nothing is formatted or written.
"""

from __future__ import annotations

import os
import time

_PATH = os.environ.get("CONSUL_ELECT_TRACE") or None
_fd: int | None = None


def mark(point: str) -> None:
    global _fd
    if _PATH is None:
        return
    if _fd is None:
        try:
            _fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return
    try:
        os.write(_fd, f"{time.clock_gettime(time.CLOCK_MONOTONIC):.6f} {os.getpid()} {point}\n".encode())
    except OSError:
        pass
