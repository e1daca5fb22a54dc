"""The election's state as others may read it (status server, metrics), behind one lock."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from . import clock
from .clock import utc_now_iso

# Published states (what /status, /metrics and the logs call them).
CAMPAIGNING = "campaigning"
LEADER = "leader"
FOLLOWER = "follower"
STEPPING_DOWN = "stepping-down"
DISCONNECTED = "disconnected"


@dataclasses.dataclass
class Snapshot:
    key: str
    name: str
    state: str = CAMPAIGNING
    since: str = dataclasses.field(default_factory=utc_now_iso)
    session: str | None = None
    fencing_token: int | None = None
    leader: dict | None = None
    lease_deadline: float | None = None
    consul_reachable: bool | None = None
    consul_last_error: str | None = None
    loop_heartbeat: float = dataclasses.field(default_factory=clock.now)
    last_renew: float | None = None
    transitions: int = 0
    consul_errors: int = 0
    child_starts: int = 0
    hook_failures: int = 0    # --on-elected / --on-demoted runs that failed, hung or could not start


class ElectionState:
    def __init__(self, key: str, name: str) -> None:
        self._lock = threading.Lock()
        self._s = Snapshot(key=key, name=name)
        self._renew_listeners: list[Callable[[float], None]] = []

    def snapshot(self) -> Snapshot:
        with self._lock:
            return dataclasses.replace(self._s)

    def update(self, **fields) -> None:
        with self._lock:
            if "state" in fields and fields["state"] != self._s.state:
                self._s.since = utc_now_iso()
                self._s.transitions += 1
            for k, v in fields.items():
                setattr(self._s, k, v)

    def consul_ok(self) -> None:
        """Consul answered: reachable, and the last outage's error is history."""
        with self._lock:
            self._s.consul_reachable = True
            self._s.consul_last_error = None

    def consul_failed(self, error: Exception | str) -> None:
        with self._lock:
            self._s.consul_reachable = False
            self._s.consul_last_error = str(error)
            self._s.consul_errors += 1

    def child_started(self) -> None:
        with self._lock:
            self._s.child_starts += 1

    def hook_failed(self) -> None:
        with self._lock:
            self._s.hook_failures += 1

    def heartbeat(self) -> None:
        with self._lock:
            self._s.loop_heartbeat = clock.now()

    def on_renew(self, listener: Callable[[float], None]) -> None:
        """Call *listener(latency_seconds)* after each successful session renewal."""
        self._renew_listeners.append(listener)

    def renewed(self, latency: float) -> None:
        with self._lock:
            self._s.last_renew = clock.now()
        for listener in self._renew_listeners:
            listener(latency)


def holds_lease(snapshot: Snapshot, now: float) -> bool:
    """True when the snapshot says leader AND its lease deadline is still ahead of *now*.

    Past the deadline the belief "I lead" may be stale (renewals failing, another instance may
    already hold the key), so nothing that reports leadership for others to act on says yes.
    """
    return snapshot.state == LEADER and snapshot.lease_deadline is not None and now < snapshot.lease_deadline
