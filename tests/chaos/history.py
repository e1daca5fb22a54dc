"""The recorded history: what each leader's command wrote to the events file, read back as terms.

A *term* is one stretch of leadership as the command itself saw it. In exec mode (the only
mode today) a term is one process life of tests/chaos/recorder.py: from its "start" line to its
last line. A signal mode, where the command keeps running and is told its role, would open a term
at "role leader" and close it at "role follower"; `_apply` is the one place that would learn it.

Every time here is CLOCK_MONOTONIC seconds (time.monotonic() in the runner), so the records of
all children, the nemesis's own stamps and the fenced resource's log line up on one axis.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass
class Term:
    pid: int
    name: str            # the candidate that led (consul-elect --name)
    token: int           # CONSUL_ELECT_FENCING_TOKEN, -1 when missing or not a number
    mode: str
    env: dict
    start: float
    end: float           # the last record: a lower bound of when the command stopped
    times: list[float]   # every record's time, in order: the evidence that it was running
    writes: list[tuple[float, int, str]]  # (time recorded, seq, accepted/rejected/error)
    stopped: bool = False  # saw its own SIGTERM

    def records_between(self, after: float, before: float) -> list[float]:
        return [t for t in self.times if after < t < before]


class History:
    """Reads the events file incrementally (the runner polls it during the run) and in full."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self._terms: dict[int, Term] = {}
        self.malformed: list[str] = []

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._apply(line.decode(errors="replace"))

    def _apply(self, line: str) -> None:
        parts = line.split(" ", 5)
        try:
            t, pid, name, token, event = float(parts[0]), int(parts[1]), parts[2], parts[3], parts[4]
        except (IndexError, ValueError):
            self.malformed.append(line)
            return
        rest = parts[5] if len(parts) > 5 else ""
        term = self._terms.get(pid)
        if term is None:
            if event != "start":
                self.malformed.append(line)  # a record before the start line: the recorder is broken
                return
            mode, _, env_text = rest.partition(" ")
            env = dict(kv.split("=", 1) for kv in env_text.split() if "=" in kv)
            term = Term(pid, name, int(token) if token.isdigit() else -1, mode, env, t, t, [], [])
            self._terms[pid] = term
        term.times.append(t)
        term.end = max(term.end, t)
        if event == "write":
            seq, _, verdict = rest.partition(" ")
            term.writes.append((t, int(seq), verdict))
        elif event == "stop":
            term.stopped = True

    def terms(self) -> list[Term]:
        return sorted(self._terms.values(), key=lambda term: term.start)

    def current(self, now: float, fresh: float) -> Term | None:
        """The latest-started term with a record in the last *fresh* seconds (None: nobody is leading)."""
        running = [term for term in self._terms.values() if now - term.end <= fresh]
        return max(running, key=lambda term: term.start) if running else None


@dataclasses.dataclass
class FaultRecord:
    """One fault as the nemesis applied it: facts only; the checker decides what they imply."""

    kind: str
    target: str | None          # a candidate name, or None for cluster-wide faults
    injected: float
    healed: float | None = None
    # Facts the checker needs, e.g. "servers": [1, 2], "on_servers": names of the candidates whose
    # Consul address leads to those servers, "command_pid", "thawed_command", "mode", "match",
    # "hold", "noop" (the target was already gone).
    detail: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RoundRecord:
    number: int
    faults: list[FaultRecord]
    leader_before: str | None
    leader_pid_before: int | None
    started: float               # first injection
    recovered: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return " + ".join(f.kind for f in self.faults)
