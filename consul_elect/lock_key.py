"""The lock key's value: who holds it, written by `run` and read by `status` and by candidates.

The value is a JSON identity of the holder. Besides telling people who leads, it tells the
other candidates two things they need for safety:
- `lease_window` and `lock_delay`: how long the holder's command may outlive its last proof of
  life, and how long Consul holds the key after the holder's session is invalidated;
- `released`: present once the holder's command was confirmed dead and the key released by
  consul-elect itself. A key freed any other way (an operator's `kv delete` or `?release=`)
  applies no lock-delay while the old command may still run, so a candidate waits for the old
  session to end first.
- `next`: with `released`, the sessions the key is handed to, in turn (see queue_prefix).

The queue of candidates: each session that campaigns holds an entry `<key>/.candidates/<session>`
(acquired by that session, so a dead candidate's entry shows no session). The leader leaves
the queue when elected; a clean release names the oldest live entries in `next`, and only they
try the key at once: a handover costs the same few writes with two waiters or a hundred.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket

from . import __version__
from .clock import utc_now_iso

SESSION_NAME_PREFIX = "consul-elect"
# Marks a value as ours: a key holding anything else belongs to another tool.
IDENTITY_MARK = "consul_elect"


def session_name(key: str, name: str) -> str:
    """Sessions are named so `consul-elect status` can list the candidates waiting on a key."""
    return f"{SESSION_NAME_PREFIX} {key} {name}"


@dataclasses.dataclass(frozen=True)
class KeyState:
    """What the lock key holds right now."""

    session: str | None
    modify_index: int
    lock_index: int
    value: bytes | None


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who holds the lock, stored as the key's value."""

    name: str
    host: str
    pid: int
    started: str
    version: str
    lease_window: float
    lock_delay: float
    status_address: str | None = None
    # --holders: candidates that disagree would together allow more holders than either says.
    holders: int = 1

    @classmethod
    def of_this_process(cls, name: str, lease_window: float, lock_delay: float,
                        status_address: str | None = None, holders: int = 1) -> Identity:
        return cls(name, socket.gethostname(), os.getpid(), utc_now_iso(), __version__,
                   round(lease_window, 3), lock_delay, status_address, holders)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_value(self, session: str, since: str, released: bool = False, successors: tuple = ()) -> bytes:
        doc = {IDENTITY_MARK: 1, **dataclasses.asdict(self), "session": session, "since": since}
        if released:
            doc["released"] = True
            if successors:
                doc["next"] = list(successors)
        return json.dumps(doc, sort_keys=True).encode()


def queue_prefix(key: str) -> str:
    return f"{key}/.candidates/"


def queue_entry(key: str, session: str) -> str:
    return queue_prefix(key) + session


@dataclasses.dataclass(frozen=True)
class QueueEntry:
    """One candidacy: *session* is None once the candidate's session ended (a dead entry)."""

    key: str
    session: str | None
    create_index: int
    value: bytes | None


def _in_line(entries: list[QueueEntry]) -> list[str]:
    """The live candidacies' sessions, oldest first (a dead entry shows no session)."""
    return [e.session for e in sorted(entries, key=lambda e: e.create_index) if e.session]


def successors(entries: list[QueueEntry], own: str | None, count: int) -> tuple[str, ...]:
    """The live candidacies that come next, oldest first (never our own)."""
    return tuple(s for s in _in_line(entries) if s != own)[:count]


def place(entries: list[QueueEntry], own: str | None) -> int | None:
    """Our place among the live candidacies, oldest first (None: we have no entry)."""
    line = _in_line(entries)
    return line.index(own) if own in line else None


def turn(holder: dict | None, session: str | None) -> int:
    """Our place among the successors a clean release named: 0 for the first (or when it named
    none: every waiter may try, as before there was a queue), len(next) when we are not named."""
    if not holder or not holder.get("released") or session is None:
        return 0
    named = holder.get("next")
    if not isinstance(named, list) or not named:
        return 0
    return named.index(session) if session in named else len(named)

def parse_identity(value: bytes | None) -> dict | None:
    """The holder's identity, or None when the value is not one of ours."""
    if not value:
        return None
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get(IDENTITY_MARK) == 1 else None
