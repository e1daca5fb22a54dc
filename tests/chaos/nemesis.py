"""The nemesis: picks each round's fault(s) from a seeded generator, applies them, heals them.

Every fault records facts only (what was done, to whom, when, on the runner's CLOCK_MONOTONIC);
the checker decides what they imply. The world it acts on is the runner (see runner.ChaosRun):
`rng`, `lease`, `cluster`, `history`, `resource`, `candidates()` (the live ones), `consul(method,
path)` (an HTTP call through an answering server), `proxies` (each candidate talks to Consul
through its own fault proxy).

Per round: one fault, or (ROUND_PAIR_CHANCE) two at once, the second ROUND_PAIR_SPREAD seconds
after the first at most. Two faults never share a level on one candidate (a kill -9 and a SIGTERM of
the same elector would test nothing more), a whole-group freeze excludes the elector and watchdog
faults of its target, and a round has at most one Consul cluster fault and one operator action.
"""

from __future__ import annotations

import json
import os
import signal
import time

from fault_proxy import Fault as ProxyAction

from .checker import CLUSTER_KINDS, HANDOVER_SLACK, PROXY_MODES, RAFT_ELECTION
from .history import FaultRecord

ROUND_PAIR_CHANCE = 0.3
ROUND_PAIR_SPREAD = 1.5
# Weight of each kind in the draw; proxy kinds share PROXY_WEIGHT.
WEIGHTS = {
    "kill9-elector": 6, "sigterm-elector": 4, "kill9-watchdog": 3,
    "freeze-elector": 6, "freeze-watchdog": 5, "freeze-group": 4,
    "op-release": 3, "op-destroy": 3, "op-delete": 3,
    "kill-server": 3, "freeze-server": 3, "kill-raft-leader": 3, "freeze-raft-leader": 3, "quorum-loss": 4,
}
PROXY_WEIGHT = 12
LEVELS = {"kill9-elector": "elector", "sigterm-elector": "elector", "freeze-elector": "elector",
          "kill9-watchdog": "watchdog", "freeze-watchdog": "watchdog", "freeze-group": "group",
          "op-release": "operator", "op-destroy": "operator", "op-delete": "operator"}
# After a thaw, how long the stale command of a frozen group gets to try a write before its elector
# and watchdog are thawed too (it is thawed first so that the fencing is exercised every time).
STALE_WRITE_WAIT = 2.0


def level(kind: str) -> str:
    if kind.startswith("proxy-"):
        return "link"
    return "cluster" if kind in CLUSTER_KINDS else LEVELS[kind]


def _conflict(a: tuple[str, str | None], b: tuple[str, str | None]) -> bool:
    (ka, ta), (kb, tb) = a, b
    la, lb = level(ka), level(kb)
    if la == lb and la in ("cluster", "operator"):
        return True
    if ta is None or ta != tb:
        return False
    return la == lb or {la, lb} in ({"group", "elector"}, {"group", "watchdog"})


def _signal(pid: int | None, signo: int, group: bool = False) -> bool:
    """Send *signo*; False if the process (group) is already gone."""
    if pid is None:
        return False
    try:
        (os.killpg if group else os.kill)(pid, signo)
        return True
    except ProcessLookupError:
        return False


class Fault:
    """One fault: `inject()` returns its record; `ready()` says when `heal()` may run."""

    kind = ""

    def __init__(self, world, target) -> None:
        self.world = world
        self.target = target          # a runner.ChaosCandidate, or None
        self.record: FaultRecord | None = None
        self.hold = 0.0

    def start(self, **detail) -> FaultRecord:
        self.record = FaultRecord(self.kind, self.target.name if self.target else None, time.monotonic(),
                                  detail=detail)
        return self.record

    def inject(self) -> FaultRecord:
        raise NotImplementedError

    def ready(self, now: float) -> bool:
        return now >= self.record.injected + self.hold

    def heal(self) -> None:
        self.record.healed = time.monotonic()


class Kill9Elector(Fault):
    kind = "kill9-elector"

    def inject(self):
        rec = self.start(pid=self.target.pid)
        rec.detail["noop"] = not _signal(self.target.pid, signal.SIGKILL)
        return rec


class SigtermElector(Fault):
    kind = "sigterm-elector"

    def inject(self):
        rec = self.start(pid=self.target.pid)
        rec.detail["noop"] = not _signal(self.target.pid, signal.SIGTERM)
        return rec


class Kill9Watchdog(Fault):
    kind = "kill9-watchdog"

    def inject(self):
        watchdog = self.target.watchdog_pid()
        rec = self.start(pid=watchdog)
        rec.detail["noop"] = not _signal(watchdog, signal.SIGKILL)
        return rec


class FreezeElector(Fault):
    """SIGSTOP of the elector process only (its threads with it; not its watchdog), beyond its lease."""

    kind = "freeze-elector"

    def __init__(self, world, target):
        super().__init__(world, target)
        self.hold = world.lease.window + world.rng.uniform(0.3, 2.5)

    def inject(self):
        rec = self.start(pid=self.target.pid, hold=round(self.hold, 3))
        rec.detail["noop"] = not _signal(self.target.pid, signal.SIGSTOP)
        return rec

    def heal(self):
        _signal(self.target.pid, signal.SIGCONT)
        super().heal()


class FreezeWatchdog(Fault):
    kind = "freeze-watchdog"

    def __init__(self, world, target):
        super().__init__(world, target)
        self.hold = world.rng.uniform(0.5, 4.0)
        self.pid = None

    def inject(self):
        self.pid = self.target.watchdog_pid()
        rec = self.start(pid=self.pid, hold=round(self.hold, 3))
        rec.detail["noop"] = not _signal(self.pid, signal.SIGSTOP)
        return rec

    def heal(self):
        _signal(self.pid, signal.SIGCONT)
        super().heal()


class FreezeGroup(Fault):
    """SIGSTOP of the whole leader: elector and watchdog (one process group) and the command's group,
    as a paused VM would. Held until another leader has written to the fenced resource; then the
    stale command is thawed first, so that it tries to write with its old token, and then the rest."""

    kind = "freeze-group"

    def __init__(self, world, target, term):
        super().__init__(world, target)
        self.term = term
        self.cap = world.lease.ttl_path + HANDOVER_SLACK + RAFT_ELECTION + 3.0

    def inject(self):
        rec = self.start(command_pid=self.term.pid, elector_pid=self.target.pid, token=self.term.token)
        alive = _signal(self.target.pid, signal.SIGSTOP, group=True)
        _signal(self.term.pid, signal.SIGSTOP, group=True)
        rec.detail["noop"] = not alive
        return rec

    def ready(self, now):
        if self.record.detail["noop"] or now >= self.record.injected + self.cap:
            return True
        newer = {term.token for term in self.world.history.terms()
                 if term.start > self.record.injected and term.name != self.target.name}
        return any(verdict == "accepted" and token in newer for _, verdict, token in self.world.resource.entries())

    def heal(self):
        rec = self.record
        rec.detail["thawed_command"] = time.monotonic()
        _signal(self.term.pid, signal.SIGCONT, group=True)
        end = time.monotonic() + STALE_WRITE_WAIT
        while time.monotonic() < end:
            self.world.history.poll()
            if any(t > rec.detail["thawed_command"] for t, _, _ in self.term.writes):
                break
            time.sleep(0.02)
        rec.detail["thawed_all"] = time.monotonic()
        _signal(self.target.pid, signal.SIGCONT, group=True)
        super().heal()


class Operator(Fault):
    """What an operator can do with the HTTP API: release the lock, destroy the session, delete the key."""

    def inject(self):
        key = self.world.key
        status, body = self.world.consul("GET", f"/v1/kv/{key}")
        session = (json.loads(body)[0].get("Session") if status == 200 else None) or None
        rec = self.start(session=session)
        if session is None and self.kind != "op-delete":
            rec.detail["noop"] = True  # nobody holds the key just now
            return rec
        path, method = {"op-release": (f"/v1/kv/{key}?release={session}", "PUT"),
                        "op-destroy": (f"/v1/session/destroy/{session}", "PUT"),
                        "op-delete": (f"/v1/kv/{key}", "DELETE")}[self.kind]
        status, body = self.world.consul(method, path)
        rec.detail["answer"] = f"{status} {body.decode(errors='replace').strip()}"
        rec.detail["noop"] = status != 200
        return rec


class OpRelease(Operator):
    kind = "op-release"


class OpDestroy(Operator):
    kind = "op-destroy"


class OpDelete(Operator):
    kind = "op-delete"


class ProxyFault(Fault):
    """A fault on the link between one elector and its Consul server (tests/fault_proxy.py)."""

    def __init__(self, world, target, mode):
        super().__init__(world, target)
        self.kind = f"proxy-{mode}"
        self.mode = mode
        self.hold = world.rng.uniform(1.0, 5.0)
        rng = world.rng
        self.action = {"500": lambda: ProxyAction.status(500, b"chaos: injected 500"),
                       "500-renew": lambda: ProxyAction.status(500, b"chaos: injected 500"),
                       "delay": lambda: ProxyAction.delay(round(rng.uniform(1.0, 3.0), 2)),
                       "hang": ProxyAction.hang, "hang-kv": ProxyAction.hang, "reset": ProxyAction.reset,
                       "trickle": lambda: ProxyAction.trickle(rng.choice([5, 20, 50])),
                       "garbage": lambda: ProxyAction.body(b"\x00chaos{not json")}[mode]()

    def inject(self):
        match = PROXY_MODES[self.mode][0]
        rec = self.start(match=match, fault=repr(self.action), hold=round(self.hold, 3))
        self.target.proxy.set_fault(self.action, match=match)
        return rec

    def heal(self):
        self.target.proxy.set_fault(None)
        super().heal()


class ServerFault(Fault):
    """Kill (then restart) or freeze (then thaw) Consul servers: one, the Raft leader, or two (quorum)."""

    def __init__(self, world, kind):
        super().__init__(world, None)
        self.kind = kind
        rng, cluster = world.rng, world.cluster
        self.method = "kill" if kind.startswith("kill") else "freeze"
        if kind == "quorum-loss":
            self.method = rng.choice(["kill", "freeze"])
            self.servers = sorted(rng.sample(range(len(cluster)), 2))
            self.hold = rng.uniform(2.0, 6.0)
        else:
            self.servers = [rng.randrange(len(cluster))]
            self.hold = rng.uniform(1.0, 5.0)
        self.raft_leader_target = kind.endswith("raft-leader")

    def inject(self):
        cluster = self.world.cluster
        if self.raft_leader_target:
            leader = cluster.leader_index()
            if leader is not None:
                self.servers = [leader]
        on = [c.name for c in self.world.candidates()
              if self.kind == "quorum-loss" or c.server in self.servers]
        rec = self.start(servers=self.servers, method=self.method, raft_leader=cluster.leader_index(),
                         on_servers=on, hold=round(self.hold, 3))
        for i in self.servers:
            (cluster.kill_server if self.method == "kill" else cluster.freeze_server)(i)
        return rec

    def heal(self):
        cluster = self.world.cluster
        for i in self.servers:
            if self.method == "kill":
                cluster.start_server(i, wait=False)
            else:
                cluster.thaw_server(i)
        super().heal()


def draw(world, leader, term, only: list[str] | None = None) -> list[tuple[float, Fault]]:
    """This round's faults with their start offsets (seconds after the first).

    *only*: a fixed combination (e.g. ["freeze-watchdog", "op-destroy"]) aimed at the leader, to
    replay one scenario many times; holds and offsets still come from the seed."""
    rng = world.rng
    if only:
        return [(0.0 if n == 0 else round(rng.uniform(0.0, ROUND_PAIR_SPREAD), 3), make(world, kind, leader, term))
                for n, kind in enumerate(only)]
    kinds = list(WEIGHTS) + ([f"proxy-{m}" for m in PROXY_MODES] if world.proxies else [])
    weights = list(WEIGHTS.values()) + ([PROXY_WEIGHT / len(PROXY_MODES)] * len(PROXY_MODES) if world.proxies else [])
    followers = [c for c in world.candidates() if c is not leader]
    picked: list[tuple[str, object]] = []
    for _ in range(2 if rng.random() < ROUND_PAIR_CHANCE else 1):
        for _attempt in range(20):
            kind = rng.choices(kinds, weights)[0]
            target = None
            if level(kind) in ("elector", "watchdog", "group", "operator", "link"):
                # Mostly the leader (where safety is at stake); followers for freezes and links too.
                target = leader
                if kind in ("freeze-elector", "freeze-watchdog") or kind.startswith("proxy-"):
                    if followers and rng.random() < 0.3:
                        target = rng.choice(followers)
            if not any(_conflict((kind, target and target.name), (k, t and t.name)) for k, t in picked):
                picked.append((kind, target))
                break
    out = []
    for n, (kind, target) in enumerate(picked):
        offset = 0.0 if n == 0 else round(rng.uniform(0.0, ROUND_PAIR_SPREAD), 3)
        out.append((offset, make(world, kind, target, term)))
    return out


def make(world, kind: str, target, term) -> Fault:
    if kind.startswith("proxy-"):
        return ProxyFault(world, target, kind[len("proxy-"):])
    if kind in CLUSTER_KINDS:
        return ServerFault(world, kind)
    if kind == "freeze-group":
        return FreezeGroup(world, target, term)
    return {"kill9-elector": Kill9Elector, "sigterm-elector": SigtermElector, "kill9-watchdog": Kill9Watchdog,
            "freeze-elector": FreezeElector, "freeze-watchdog": FreezeWatchdog, "op-release": OpRelease,
            "op-destroy": OpDestroy, "op-delete": OpDelete}[kind](world, target)
