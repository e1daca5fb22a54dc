"""One chaos run: a 3-server Consul cluster, 3-5 consul-elect candidates, N rounds of faults, one verdict.

    cluster (tests/consul_servers.ConsulCluster, 127.0.0.2-4)
      <- one FaultProxy per candidate slot (tests/fault_proxy.py; slot i talks to server i % 3)
        <- consul-elect run --key chaos/leader (tests/harness.FAST) -- recorder.py EVENTS RESOURCE
             the recorder appends to EVENTS and writes to the FencedResource in this process

Each round: settle (every server up and agreeing on a Raft leader, the pool full, one leader
recording, every follower holding a session), draw and inject the fault(s), heal them when due,
wait for one leader again. Killed candidates are replaced (new name, same slot) before the next
round, after checking their processes are gone. At the end every candidate gets SIGTERM and must
exit and leave nothing behind; then the checker judges the whole history.

Which consul_elect runs: CONSUL_ELECT_SRC=DIR (PYTHONPATH=DIR, cwd outside the repo, so the
editable install's finder comes second), else the repo itself. Every process started here is
stopped in a finally, Ctrl-C and failed assertions included: candidates by process group and by a
tag in their environment (CHAOS_TAG) that their watchdog and command inherit, Consul servers by
the fixture's own stop. Candidates also get PR_SET_PDEATHSIG, so they die with the runner.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from consul_servers import ConsulCluster, ConsulError, http_request, kill_all_tracked
from fault_proxy import FaultProxy
from fenced_resource import FencedResource
from harness import FAST, Candidate

from . import nemesis
from .checker import Lease, Report, Violation, bound_table, check, format_summary, round_bound
from .history import History, RoundRecord

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RECORDER = HERE / "recorder.py"
KEY = "chaos/leader"
SLOTS = 5
POOL_SIZES = (3, 5)
# Chance per round that the pool's target size is drawn again (the pool then grows or shrinks).
POOL_CHANGE_CHANCE = 0.08
# A leader whose last record is older than this is not running now (the recorder beats every 20 ms).
FRESH = 0.25
# A new leader must be the only one recording for this long before a round counts as recovered.
STABLE = 0.5
SETTLE_TIMEOUT = 60.0
ROUND_TIMEOUT = 120.0
# A just-started candidate without a Consul session yet is given this long before it counts as a
# ready standby anyway (session names are the product's; this keeps a renamed session from hanging us).
STANDBY_GRACE = 5.0
# A dead elector's watchdog: KILL_WAIT 2 s to confirm the command gone, then a release and a
# destroy with a 2 s timeout each, plus a second of scheduling.
ORPHAN_WAIT = 7.0
# A SIGTERMed elector: --grace, then a release and a destroy (5 s request timeouts each).
EXIT_WAIT = 15.0
# Faults after which the target elector may exit: killed, told to, its watchdog killed, or its
# watchdog frozen for long enough that it gives up on it (exit 70, README "Why the child is stopped").
EXITING = ("kill9-elector", "sigterm-elector", "kill9-watchdog", "freeze-watchdog")

_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_runner() -> None:  # between fork and exec: nothing but a system call
    _LIBC.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class ChaosAbort(Exception):
    """The run cannot go on (no steady state, no leader, a Consul server that will not come back)."""


@dataclasses.dataclass
class Slot:
    index: int
    server: int
    upstream: str
    proxy: FaultProxy | None = None
    generation: int = 0
    candidate: ChaosCandidate | None = None

    @property
    def address(self) -> str:
        return self.proxy.address if self.proxy is not None else self.upstream


class ChaosCandidate(Candidate):
    """harness.Candidate started outside the repo (so PYTHONPATH picks the package) and tied to us."""

    def __init__(self, slot: Slot, name: str, workdir: Path, command: list[str], env: dict) -> None:
        super().__init__(slot.address, KEY, name, workdir, command, FAST, env)
        self.slot = slot
        self.server = slot.server
        self.proxy = slot.proxy
        self.tag = env["CHAOS_TAG"]
        self.cwd = workdir
        self.started_at = 0.0

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                     start_new_session=True, preexec_fn=_die_with_runner)
        self.started_at = time.monotonic()
        return self

    def watchdog_pid(self) -> int | None:
        """The elector's child in its own process group (the command and the prepared child have their own)."""
        try:
            kids = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return None
        for kid in map(int, kids):
            try:
                if os.getpgid(kid) == self.pid:
                    return kid
            except ProcessLookupError:
                continue
        return None


def tagged_processes(prefix: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live (not zombie) process whose environment has CHAOS_TAG=<prefix>..."""
    needle = f"CHAOS_TAG={prefix}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if not any(var.startswith(needle) for var in f.read().split(b"\0")):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(") ", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((int(entry), cmdline))
    return found


def kill_tagged(prefix: str) -> list[tuple[int, str]]:
    """SIGCONT then SIGKILL every process tagged *prefix* (ours, found by their environment)."""
    found = tagged_processes(prefix)
    for pid, _ in found:
        for signo in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(pid, signo)
            except OSError:
                pass
    return found


def describe_source(src: Path) -> dict:
    """Which consul_elect the candidates run: the directory, its git commit if it has one, a digest."""
    digest = hashlib.sha256()
    for path in sorted((src / "consul_elect").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    info = {"path": str(src), "sha256": digest.hexdigest()[:16]}
    stamp = src / "COMMIT"  # a snapshot (git archive) may say which commit it was taken from
    if stamp.exists():
        info["commit"] = stamp.read_text().strip()[:12] + " (snapshot)"
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0 and Path(src, ".git").exists():
            dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "consul_elect"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            info["commit"] = commit.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def consul_version(consul_bin: str) -> str:
    try:
        out = subprocess.run([consul_bin, "version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


class ChaosRun:
    def __init__(self, consul_bin: str, workdir: Path, seed: int, rounds: int, max_seconds: float | None = None,
                 src: Path | None = None, proxies: bool = True, only: list[str] | None = None, say=print) -> None:
        self.consul_bin = consul_bin
        self.workdir = Path(workdir)
        self.seed = seed
        self.rounds_wanted = rounds
        self.max_seconds = max_seconds
        self.src = Path(src) if src else REPO
        self.use_proxies = proxies
        self.only = only
        self.say = say
        self.rng = random.Random(seed)
        self.lease = self.lease_for_flags()
        self.key = KEY
        self.tag = f"{os.getpid()}-{seed}-{time.time_ns() % 10**9}"
        self.events = self.workdir / "events.log"
        self.history = History(self.events)
        self.cluster: ConsulCluster | None = None
        self.resource: FencedResource | None = None
        self.slots: list[Slot] = []
        self.proxies: list[FaultProxy] = []
        self.pool_size = POOL_SIZES[0]
        self.pool_sizes_seen: set[int] = set()
        self.rounds: list[RoundRecord] = []
        self.active: list[nemesis.Fault] = []
        self.findings: list[Violation] = []
        self.retired: list[ChaosCandidate] = []
        self.exits: list[dict] = []
        self.log_samples: list[tuple[int, dict[str, int]]] = []
        self.notes: list[str] = []
        self.run_end: float | None = None
        self.began = 0.0

    @staticmethod
    def lease_for_flags() -> Lease:
        return Lease.from_flags(FAST)

    # -- the world the nemesis acts on --------------------------------------------------------

    def candidates(self) -> list[ChaosCandidate]:
        return [s.candidate for s in self.slots if s.candidate is not None and s.candidate.alive()]

    def consul(self, method: str, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
        """One HTTP call through an answering server (the Raft leader when there is one)."""
        leader = self.cluster.leader_index()
        order = ([leader] if leader is not None else []) + [i for i in range(len(self.cluster)) if i != leader]
        last: Exception | None = None
        for i in order:
            if not self.cluster.servers[i].answering:
                continue
            try:
                return http_request(method, self.cluster.url(i) + path, timeout=timeout)
            except OSError as e:
                last = e
        raise ChaosAbort(f"no Consul server answered {method} {path}: {last}")

    @property
    def current_round(self) -> int | None:
        return self.rounds[-1].number if self.rounds else None

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> tuple[Report, dict]:
        self.began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        source = describe_source(self.src)
        self._check_source()
        try:
            with FencedResource() as resource:
                self.resource = resource
                try:
                    self._setup()
                    for n in range(1, self.rounds_wanted + 1):
                        if self.max_seconds and time.monotonic() - self.began > self.max_seconds:
                            self.notes.append(f"time budget of {self.max_seconds:.0f}s spent after {n - 1} rounds")
                            break
                        self._round(n)
                    self.run_end = time.monotonic()
                    self._shutdown()
                except (ChaosAbort, ConsulError) as e:
                    self.run_end = self.run_end or time.monotonic()
                    self.findings.append(Violation("aborted", self.current_round, str(e)))
                    self.say(f"ABORTED: {e}")
                finally:
                    self._teardown()
                resource_log = resource.entries()
        finally:
            kill_tagged(self.tag + ":")
            kill_all_tracked()
        self.history.poll()
        self.findings += [Violation("malformed-record", None, line) for line in self.history.malformed[:5]]
        self.findings += self._tracebacks()
        report = check(self.history.terms(), resource_log, self.rounds, self.findings, self.lease,
                       self.run_end or time.monotonic())
        info = {
            "seed": self.seed, "rounds_wanted": self.rounds_wanted, "rounds_done": len(self.rounds),
            "duration_s": round(time.monotonic() - self.began, 1), "source": source,
            "consul": consul_version(self.consul_bin), "flags": FAST, "lease_window_s": round(self.lease.window, 3),
            "pool_sizes": sorted(self.pool_sizes_seen), "proxies": bool(self.proxies), "notes": self.notes,
            "workdir": str(self.workdir), "only": self.only,
            "exits": self.exits,
            "faults": [{"round": r.number, "leader_before": r.leader_before,
                        "recovered_after_s": None if r.recovered is None else round(r.recovered - r.started, 3),
                        "faults": [{"kind": f.kind, "target": f.target, "at_s": round(f.injected - self.began, 3),
                                    "held_s": None if f.healed is None else round(f.healed - f.injected, 3),
                                    "detail": f.detail} for f in r.faults]} for r in self.rounds],
        }
        return report, info

    def _check_source(self) -> None:
        """Make sure `python -m consul_elect` from the candidates' cwd imports the package we mean."""
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        out = subprocess.run([sys.executable, "-c", "import consul_elect; print(consul_elect.__file__)"],
                             cwd=self.workdir, env=env, capture_output=True, text=True, timeout=30)
        where = Path(out.stdout.strip() or "?").resolve()
        if out.returncode != 0 or not where.is_relative_to(self.src.resolve()):
            raise ChaosAbort(f"consul_elect from {self.src} does not import: {out.stdout}{out.stderr}")

    def _setup(self) -> None:
        self.say(f"chaos: seed {self.seed}, {self.rounds_wanted} rounds, consul_elect from {self.src}, "
                 f"work dir {self.workdir}")
        self.cluster = ConsulCluster(self.consul_bin, base_dir=str(self.workdir / "consul")).start()
        if self.use_proxies:
            for i in range(SLOTS):
                self.proxies.append(FaultProxy(self.cluster.http_addr(i % len(self.cluster))).start())
        self.slots = [Slot(i, i % len(self.cluster), self.cluster.http_addr(i % len(self.cluster)),
                           self.proxies[i] if self.proxies else None) for i in range(SLOTS)]
        self.pool_size = self.rng.randint(*POOL_SIZES)
        self._settle()

    def _round(self, n: int) -> None:
        if self.rng.random() < POOL_CHANGE_CHANCE:
            self.pool_size = self.rng.randint(*POOL_SIZES)
        leader, term = self._settle()
        plan = nemesis.draw(self, leader, term, self.only)
        self.log_samples.append((n, {str(c.log_path): c.log_path.stat().st_size for c in self.candidates()}))
        record = RoundRecord(n, [], leader.name, term.pid, time.monotonic())
        self.rounds.append(record)
        self.active = []
        t0 = time.monotonic()
        pending = list(plan)
        while pending or any(f.record.healed is None for f in self.active):
            now = time.monotonic()
            for item in [p for p in pending if now >= t0 + p[0]]:
                pending.remove(item)
                fault = item[1]
                rec = fault.inject()
                if not record.faults:
                    record.started = rec.injected
                record.faults.append(rec)
                self.active.append(fault)
            for fault in self.active:
                if fault.record.healed is None and fault.ready(now):
                    fault.heal()
            if now - t0 > ROUND_TIMEOUT:
                raise ChaosAbort(f"round {n} did not finish its faults within {ROUND_TIMEOUT:.0f}s")
            self.history.poll()
            time.sleep(0.02)
        record.recovered = self._await_recovery(record)
        new = self.history.current(time.monotonic(), FRESH)
        took = (f"{new.name} leads after {new.start - record.started:.2f}s" if new and new.pid != term.pid
                else f"{leader.name} still leads")
        targets = ", ".join(f"{f.kind}({f.target or f.detail.get('servers')})" + (" no-op" if f.detail.get("noop")
                                                                               else "") for f in record.faults)
        self.say(f"round {n:3d}: {targets}: {took}")

    def _await_recovery(self, record: RoundRecord) -> float:
        """Wait until exactly one live candidate's command records, for STABLE seconds; return when that began."""
        from_gap, after_heal = round_bound(record, bound_table(self.lease), self.lease)
        healed = max(f.healed for f in record.faults)
        limit = healed + max(from_gap or 0.0, after_heal or 0.0) + 5.0
        stable_since = None
        while time.monotonic() < limit:
            self.history.poll()
            now = time.monotonic()
            running = [t for t in self.history.terms() if now - t.end <= FRESH]
            alive = {c.name for c in self.candidates()}
            if len(running) == 1 and running[0].name in alive:
                if stable_since is None or stable_since[1] != running[0].pid:
                    stable_since = (now, running[0].pid)
                if now - stable_since[0] >= STABLE:
                    return stable_since[0]
            else:
                stable_since = None
            time.sleep(0.05)
        raise ChaosAbort(f"round {record.number} ({record.label}): no single leader {limit - healed:.1f}s after "
                         "the faults were healed")

    # -- steady state and the pool ------------------------------------------------------------

    def _settle(self):
        """Wait for the steady state every round starts from; return (leader candidate, its term)."""
        end = time.monotonic() + SETTLE_TIMEOUT
        why = ""
        while time.monotonic() < end:
            self._maintain_pool()
            found, why = self._steady()
            if found:
                return found
            time.sleep(0.05)
        raise ChaosAbort(f"no steady state within {SETTLE_TIMEOUT:.0f}s: {why}")

    def _steady(self):
        for s in self.cluster.servers:
            if not s.answering:
                return None, f"server {s.index} is not running"
        if self.cluster.leader_index() is None:
            return None, "the servers do not agree on a Raft leader"
        self.history.poll()
        now = time.monotonic()
        running = [t for t in self.history.terms() if now - t.end <= FRESH]
        if len(running) != 1:
            return None, f"{len(running)} commands recording"
        term = running[0]
        by_name = {c.name: c for c in self.candidates()}
        leader = by_name.get(term.name)
        if leader is None:
            return None, f"the recording command's elector {term.name} is not alive"
        if len(by_name) < self.pool_size:
            return None, f"{len(by_name)} of {self.pool_size} candidates alive"
        try:
            status, body = self.consul("GET", "/v1/session/list")
        except ChaosAbort as e:
            return None, str(e)
        with_session = {word for s in (json.loads(body) if status == 200 else []) for word in s["Name"].split()}
        waiting = [c.name for c in by_name.values() if c.name not in with_session
                   and now - c.started_at < STANDBY_GRACE]
        if waiting:
            return None, f"standbys without a session yet: {waiting}"
        return (leader, term), ""

    def _maintain_pool(self) -> None:
        leader = self.history.current(time.monotonic(), FRESH)
        for slot in self.slots:
            c = slot.candidate
            if c is not None and not c.alive():
                self._retire(slot, expected=self._expected_exit(c.name))
                c = None
            wanted = slot.index < self.pool_size
            if c is None and wanted:
                self._spawn(slot)
            elif c is not None and not wanted and (leader is None or leader.name != c.name):
                c.send_signal(signal.SIGTERM)  # the pool shrinks by a follower leaving cleanly
                try:
                    c.wait(EXIT_WAIT)
                except subprocess.TimeoutExpired:
                    self.findings.append(Violation("hung-exit", self.current_round,
                                                   f"{c.name} did not exit within {EXIT_WAIT:.0f}s of SIGTERM"))
                self._retire(slot, expected=True)
        self.pool_sizes_seen.add(len(self.candidates()))

    def _expected_exit(self, name: str) -> bool:
        return any(f.target == name and f.kind in EXITING for r in self.rounds[-2:] for f in r.faults)

    def _spawn(self, slot: Slot) -> None:
        slot.generation += 1
        name = f"s{slot.index}g{slot.generation}"
        command = [sys.executable, "-S", str(RECORDER), str(self.events), f"127.0.0.1:{self.resource.port}"]
        env = {"PYTHONPATH": str(self.src), "CHAOS_TAG": f"{self.tag}:{name}"}
        slot.candidate = ChaosCandidate(slot, name, self.workdir, command, env).start()

    def _retire(self, slot: Slot, expected: bool) -> None:
        """A candidate has exited: note its status, make sure its watchdog and command went with it."""
        c = slot.candidate
        code = c.proc.poll()
        self.exits.append({"round": self.current_round, "name": c.name, "code": code, "expected": expected})
        if not expected:
            tail = "\n".join(c.log().splitlines()[-8:])
            self.findings.append(Violation("unexpected-exit", self.current_round,
                                           f"{c.name} exited with {code} without being told to:\n{tail}"))
        end = time.monotonic() + ORPHAN_WAIT
        left = tagged_processes(c.tag)
        while left and time.monotonic() < end:
            time.sleep(0.05)
            left = tagged_processes(c.tag)
        if left:
            self.findings.append(Violation("orphan", self.current_round,
                                           f"{c.name} exited ({code}) {ORPHAN_WAIT:.0f}s ago and left {left}"))
            kill_tagged(c.tag)
        c.cleanup()
        slot.candidate = None
        self.retired.append(c)

    # -- the end ------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """SIGTERM every candidate: each must exit and leave no process behind."""
        for c in self.candidates():
            c.send_signal(signal.SIGTERM)
        for slot in self.slots:
            c = slot.candidate
            if c is None:
                continue
            try:
                c.wait(EXIT_WAIT)
            except subprocess.TimeoutExpired:
                self.findings.append(Violation("hung-exit", None, f"{c.name} did not exit within {EXIT_WAIT:.0f}s "
                                               "of the final SIGTERM"))
            self._retire(slot, expected=True)
        left = tagged_processes(self.tag + ":")
        if left:
            self.findings.append(Violation("orphan", None, f"left after every candidate exited: {left}"))

    def _teardown(self) -> None:
        """Whatever happened: thaw and stop everything this run started."""
        for fault in self.active:
            if fault.record is not None and fault.record.healed is None:
                try:
                    fault.heal()
                except Exception as e:  # noqa: BLE001 - teardown goes on; the kill below is the backstop
                    self.notes.append(f"healing {fault.kind} at teardown failed: {e}")
        for slot in self.slots:
            if slot.candidate is not None:
                slot.candidate.cleanup()
                self.retired.append(slot.candidate)
                slot.candidate = None
        kill_tagged(self.tag + ":")
        for proxy in self.proxies:
            proxy.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def _tracebacks(self) -> list[Violation]:
        found = []
        for c in self.retired:
            try:
                text = c.log_path.read_bytes()
            except OSError:
                continue
            offset = text.find(b"Traceback (most recent call last)")
            while offset >= 0:
                lines = text[offset:].decode(errors="replace").splitlines()[:30]
                # The frames are indented; the first line that is not ends the traceback.
                end = next((i for i, line in enumerate(lines[1:], 1) if not line.startswith(" ")), len(lines) - 1)
                excerpt = lines[:end + 1]
                found.append(Violation("traceback", self._round_of_offset(str(c.log_path), offset),
                                       f"{c.name} ({c.log_path.name} byte {offset}):\n" + "\n".join(excerpt)))
                offset = text.find(b"Traceback (most recent call last)", offset + 1)
        return found

    def _round_of_offset(self, path: str, offset: int) -> int | None:
        """The round during which a log grew past *offset* (logs are sampled at every injection)."""
        seen = [(n, sizes[path]) for n, sizes in self.log_samples if path in sizes]
        before = [n for n, size in seen if size <= offset]
        if before:
            return before[-1]
        return (seen[0][0] - 1 or None) if seen else self.current_round


def write_json(path: Path, report: Report, info: dict, lease: Lease) -> None:
    table = bound_table(lease)
    doc = {**info, "ok": report.ok, "totals": report.totals, "summary": report.summary,
           "violations": [v.as_dict() for v in report.violations],
           "rounds": [dataclasses.asdict(r) for r in report.rounds],
           "bounds": {kind: {"from_gap_start_s": b.from_gap_start, "after_heal_s": b.after_heal,
                             "formula": b.formula, "reason": b.reason} for kind, b in table.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def summary_text(report: Report, info: dict) -> str:
    src = info["source"]
    header = (f"consul-elect chaos: seed {info['seed']}, {info['rounds_done']}/{info['rounds_wanted']} rounds in "
              f"{info['duration_s']:.0f}s; consul_elect {src.get('commit', '')} from {src['path']} "
              f"(sha256 {src['sha256']}); {info['consul']}; flags {' '.join(info['flags'])} "
              f"(B = {info['lease_window_s']}s); pool sizes {info['pool_sizes']}"
              + (f"; notes: {'; '.join(info['notes'])}" if info["notes"] else ""))
    return format_summary(report, header)
