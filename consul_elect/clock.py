"""The one clock every lease deadline is read from.

CLOCK_BOOTTIME keeps counting while the machine is suspended; CLOCK_MONOTONIC does not, so a
suspended leader would wake up believing its lease still had time left. Where BOOTTIME is
missing (macOS) we fall back to MONOTONIC and say so at start-up.
"""

import time
from datetime import datetime, timezone

HAVE_BOOTTIME = hasattr(time, "CLOCK_BOOTTIME")
_CLOCK_ID = time.CLOCK_BOOTTIME if HAVE_BOOTTIME else time.CLOCK_MONOTONIC
CLOCK_NAME = "CLOCK_BOOTTIME" if HAVE_BOOTTIME else "CLOCK_MONOTONIC"


def now() -> float:
    """Seconds on the lease clock; comparable across processes on the same host."""
    return time.clock_gettime(_CLOCK_ID)


def utc_now_iso() -> str:
    """Wall-clock time for people (logs, /status, the key's identity); never used for a deadline."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
