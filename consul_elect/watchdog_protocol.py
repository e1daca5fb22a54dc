"""The messages between the elector and its watchdog, defined once for both ends.

Newline-delimited JSON over a stream socketpair: `{"type": "<class name>", ...fields}`.
Every order that changes what runs gets an answer: `Spawn` and `Start` -> `Spawned` or
`SpawnFailed`; `Stop` and `Quit` -> `Exited` (also when nothing was running); `Ping` -> `Pong`.
The elector releases the key only on an `Exited` whose `confirmed` is true: the command's process
group, its cgroup (where there is one) and every orphan the watchdog adopted are gone.

Signal mode (the command runs on every candidate): `Elect` -> `Elected` once the role file says
leader and the elected signal was sent; `Demote` -> `Demoted` once it says follower and the
demoted signal was sent (the watchdog also demotes on its own at deadline - grace, and says so
with `Demoted`), then `Acked` when the command acknowledges that term, or `Exited` (reason
`not-acknowledged`) when it did not within the grace period (or by the lease deadline).
"""

from __future__ import annotations

import dataclasses
import json

# -- orders (elector -> watchdog) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SetSession:
    """The session to destroy if the elector dies (None: nothing to clean up)."""
    session: str | None


@dataclasses.dataclass(frozen=True)
class SetLease:
    """Kill the command's group at *deadline* (lease clock) unless a later lease arrives.

    *release_value* is what the watchdog writes when it releases the key on the elector's
    behalf: the holder's identity marked `released`, so candidates know the command is dead.
    """
    deadline: float
    release_value: str
    key: str = ""  # the key (with --holders, the slot) to release; "" for the configured key


@dataclasses.dataclass(frozen=True)
class SetDemotedHook:
    """The --on-demoted hook owed for the term that began (*env*: what the hook gets on top of
    the environment), or None once the elector ran it: if the elector dies first, the watchdog
    runs it after the command is stopped and the key released."""
    env: dict | None


@dataclasses.dataclass(frozen=True)
class Spawn:
    """Exec mode: start the command as leader of term *token* (it needs a lease)."""
    env: dict
    token: int | None = None


@dataclasses.dataclass(frozen=True)
class Start:
    """Signal mode: start the command as a follower; it needs no lease, and runs across terms."""
    env: dict


@dataclasses.dataclass(frozen=True)
class Elect:
    """Signal mode: write the role file (leader of term *token*), then send the elected signal."""
    token: int


@dataclasses.dataclass(frozen=True)
class Demote:
    """Signal mode: write the role file (follower), send the demoted signal, and wait for the
    command's acknowledgement of *token*; SIGKILL it if none came within the grace period (or by
    the lease deadline, if sooner)."""
    token: int


@dataclasses.dataclass(frozen=True)
class SetLeader:
    """Who leads, for the role file's `leader` field (None: nobody, or unknown)."""
    name: str | None


@dataclasses.dataclass(frozen=True)
class ForwardSignal:
    signo: int


@dataclasses.dataclass(frozen=True)
class Stop:
    """SIGTERM the group now, SIGKILL it after *grace* (or at the lease deadline, if sooner)."""
    grace: float


@dataclasses.dataclass(frozen=True)
class Quit:
    """Kill whatever runs, confirm it gone, answer `Exited`, and exit."""


@dataclasses.dataclass(frozen=True)
class Ping:
    seq: int


# -- events (watchdog -> elector) -----------------------------------------------------------

REASON_EXITED = "exited"            # the command ended on its own
REASON_STOPPED = "stopped"          # the elector asked (Stop or Quit)
REASON_LEASE_EXPIRED = "lease-expired"  # the watchdog killed it at the lease deadline
REASON_NOTHING = "nothing-running"  # answer to Stop/Quit when no command ran
REASON_NOT_ACKNOWLEDGED = "not-acknowledged"  # signal mode: killed for not standing down in time


@dataclasses.dataclass(frozen=True)
class Spawned:
    pid: int


@dataclasses.dataclass(frozen=True)
class SpawnFailed:
    lease_expired: bool
    code: int | None
    error: str


@dataclasses.dataclass(frozen=True)
class Exited:
    """The command's run ended. *status* is its exit code (128+N for signal N), None if unknown.

    *confirmed*: the whole containment is empty. *survivors*: pids still seen when not.
    *killed*: the watchdog had to SIGKILL the command itself (after the grace, at the deadline,
    or on Quit); *swept*: it killed processes the command left behind after it exited.
    """
    pid: int | None
    status: int | None
    reason: str
    killed: bool
    confirmed: bool
    survivors: tuple = ()
    swept: bool = False


@dataclasses.dataclass(frozen=True)
class CommandStopped:
    """The command's main process was stopped by *signo* (SIGTTIN, SIGTSTP, ...)."""
    pid: int
    signo: int


@dataclasses.dataclass(frozen=True)
class Pong:
    seq: int


@dataclasses.dataclass(frozen=True)
class Elected:
    """The command was told it leads term *token* (role file written, then the signal sent)."""
    token: int


@dataclasses.dataclass(frozen=True)
class Demoted:
    """The command was told to stand down from term *token*; *by_watchdog*: on the watchdog's own
    initiative, because the lease deadline came within the grace period without a renewal."""
    token: int
    by_watchdog: bool


@dataclasses.dataclass(frozen=True)
class Acked:
    """The command acknowledged that it stopped the leader work of term *token*."""
    token: int


_TYPES = {cls.__name__: cls for cls in (SetSession, SetLease, SetDemotedHook, Spawn, Start, Elect, Demote, SetLeader,
                                         ForwardSignal, Stop, Quit, Ping, Spawned, SpawnFailed, Exited, Pong, Elected,
                                         Demoted, Acked, CommandStopped)}


def encode(message) -> bytes:
    return json.dumps({"type": type(message).__name__, **dataclasses.asdict(message)}).encode() + b"\n"


def decode(line: bytes):
    """The message on one line; ValueError for anything that is not one."""
    doc = json.loads(line)
    cls = _TYPES.get(doc.pop("type", None)) if isinstance(doc, dict) else None
    if cls is None:
        raise ValueError(f"not a watchdog message: {line[:80]!r}")
    if cls is Exited:
        doc["survivors"] = tuple(doc.get("survivors") or ())
    return cls(**doc)
