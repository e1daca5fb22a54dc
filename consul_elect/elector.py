"""Consul session, lock and monitor. Losing the lock is an event, not an exception.

The threads here never decide anything: they post events to the app's queue.
- SessionKeeper renews one session and reports each proof of life with the time read just
  before the request was sent (the lease counts from send time, never from receive time).
- KeyWatcher follows the lock key with consistent blocking queries.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
from collections.abc import Callable

from . import __version__, clock
from .clock import utc_now_iso
from . import config as defaults
from .blocking import BlockingQueryLoop
from .config import Config
from .consul_api import ConsulClient, KeyState
from .errors import ConsulError, SessionGone

Post = Callable[[tuple], None]

SESSION_NAME_PREFIX = "consul-elect"


def session_name(key: str, name: str) -> str:
    """Sessions are named so `consul-elect status` can list the candidates waiting on a key."""
    return f"{SESSION_NAME_PREFIX} {key} {name}"


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who holds the lock, stored as the key's value."""

    name: str
    host: str
    pid: int
    started: str
    version: str
    status_address: str | None = None

    @classmethod
    def of_this_process(cls, config: Config, status_address: str | None) -> Identity:
        return cls(config.name, socket.gethostname(), os.getpid(), utc_now_iso(), __version__, status_address)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_value(self, session: str, since: str) -> bytes:
        doc = {"consul_elect": 1, **dataclasses.asdict(self), "session": session, "since": since}
        return json.dumps(doc, sort_keys=True).encode()


def parse_identity(value: bytes | None) -> dict | None:
    """The holder's identity, or None when the value is not one of ours."""
    if not value:
        return None
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("consul_elect") == 1 else None


class SessionKeeper(threading.Thread):
    """Renews one session; posts ("renewed", sid, sent_at), ("renew_failed", sid, error), ("session_gone", sid)."""

    def __init__(self, config: Config, session: str, post: Post, interval: Callable[[], float]) -> None:
        super().__init__(name="session-keeper", daemon=True)
        self.client = ConsulClient(config.connection)
        self.session = session
        self.post = post
        self.interval = interval
        self.stopped = threading.Event()
        self._wake = threading.Event()
        self._renew_now = False

    def stop(self) -> None:
        self.stopped.set()
        self._wake.set()

    def reschedule(self, renew_now: bool = False) -> None:
        """Start a new wait with the current interval, or renew at once: a new leader must not
        wait out the slower follower interval, and one whose acquire was slow needs a fresh proof."""
        self._renew_now = renew_now
        self._wake.set()

    def run(self) -> None:
        # Renewals are spaced from send to send, and each one's timeout ends when the next is
        # due, so a slow renew is overtaken rather than delaying all the ones after it.
        next_at = clock.now() + self.interval()
        while True:
            if self._wake.wait(max(0.0, next_at - clock.now())):
                self._wake.clear()
                if self.stopped.is_set():
                    return
                if not self._renew_now:
                    next_at = clock.now() + self.interval()
                    continue
                self._renew_now = False
            interval = self.interval()
            sent_at = clock.now()
            next_at = sent_at + interval
            try:
                self.client.renew_session(self.session, timeout=interval)
            except SessionGone:
                self.post(("session_gone", self.session))
                return
            except ConsulError as e:
                if not self.stopped.is_set():
                    self.post(("renew_failed", self.session, e))
                continue
            if not self.stopped.is_set():
                self.post(("renewed", self.session, sent_at, clock.now() - sent_at))


class KeyWatcher(BlockingQueryLoop):
    """Follows the key; posts ("key", KeyState | None, index) on each change and ("watch_failed", error)."""

    def __init__(self, config: Config, post: Post) -> None:
        self._last: KeyState | None | str = "unknown"
        self._post = post
        super().__init__("key-watcher", config.connection,
                         lambda client, index: client.read_key(config.key, index=index, wait=defaults.WATCH_WAIT),
                         self._answer, lambda e: post(("watch_failed", e)))

    def _answer(self, index: int, state: KeyState | None) -> None:
        if state != self._last:
            self._last = state
            self._post(("key", state, index))
