"""Judge the whole history of a chaos run against consul-elect's documented promises.

The promises, and the arithmetic every bound below derives from, are README's "Why the child is
always stopped in time" and consul_elect/config.py. They are restated here on purpose rather than
imported: the checker states what was promised, independently of the code it checks (which may be
half rewritten while it runs).

    T = --ttl, L = --lock-delay, g = --grace (tests/harness.FAST: 3 s, 2 s, 0.5 s)
    B = min(T, L) x (1 - 1 %) - 0.25 s         the lease window (1.73 s with FAST)
    a = send time of the last request that proved the session alive and holding the key
    the command is dead and reaped by a + B     (the promise; checked as "lease overrun")
    nobody else acquires before a + L after an invalidation, a + 2T + L after a TTL expiry

What is checked (each violation names the round it belongs to):
  overlap             two leaders' commands recorded at once, unless the older one could not be
                      stopped by anyone (its elector and its watchdog both frozen or gone: a
                      whole-group freeze); then every write it made after the newer leader's
                      first accepted write must have been rejected by the fenced resource
  stale-write-accepted  that fencing failed
  token               fencing tokens that do not grow from one leader to the next
  lease-overrun       the command recorded after a + B + EPS where a fault guarantees no proof of
                      life after some moment c (a frozen elector, a cut link, a dead server, a
                      destroyed session, lost quorum): a <= c
  slow-stop           the command outlived a kill -9 of its elector or watchdog, a SIGTERM, or an
                      operator's release, by more than the bound for that fault
  leaderless          no leader for longer than the bound for the round's fault(s) (table below)
  orphan, traceback, hung-exit, no-recovery, malformed-record: found by the runner / history
"""

from __future__ import annotations

import dataclasses
import statistics

from .history import FaultRecord, RoundRecord, Term

# --- the documented model (consul_elect/config.py; README "Why the child is always stopped in time")
CLOCK_RATE_ERROR = 0.01
SCHEDULING_SLACK = 0.25
RECONNECT_BACKOFF_MAX = 2.0   # a candidate cut off from Consul retries at least this often
# A key freed without lock-delay (an operator's release or delete) is taken only once the old
# holder's session ends (README "Campaign"); a healthy old leader ends it within its grace, so
# the bound allows its lease window plus this margin.
HOLDER_MARGIN = 1.0

# --- what this test bed adds, with the reason for each value
# From one leader's last record to the next leader's first: the standby's blocking query returns,
# its acquire commits through Raft, the watchdog execs the prepared child and the recorder's
# interpreter starts (measured 20-100 ms on an idle box); 1 s leaves room for a loaded 2-core one.
HANDOVER_SLACK = 1.0
# A Raft election after a server is killed, frozen or comes back (tests/consul_servers.py: 2.3-3.7 s
# measured, a second round is common; the tests wait 10 s). A new Raft leader re-arms every session
# timer at 2 x TTL, so a session that must expire does so only 2T after the election.
RAFT_ELECTION = 10.0
# How long a Raft leader that lost quorum keeps accepting session renewals (in-memory timers, not
# Raft writes): leader lease 0.5 s (raft_multiplier 1), checked every 0.5 s, plus scheduling.
RAFT_STEP_DOWN = 1.5
# Between the lease deadline and the command's last record: the watchdog's SIGKILL lands a few
# scheduling quanta late on a loaded box (tests/test_lease_safety.py allows B + 0.3 s too).
EPS = 0.3
# kill -9 of the elector or the watchdog: the watchdog / PR_SET_PDEATHSIG kill the command at once.
KILL_STOP = 1.0
# A pause longer than this in one command's records during a freeze of its group splits its term:
# it was not running then (beats come every 20 ms).
MIN_GAP = 0.25
# The last leader may have recorded this long before the run ended without having stopped.
FRESH_AT_END = 0.25
# The runner injects a fault only while the leader recorded within this long, so a gap that begins
# less than this before a round's first injection (a frozen command's last beat) belongs to that round.
FRESH_AT_INJECTION = 0.25


@dataclasses.dataclass(frozen=True)
class Lease:
    ttl: float
    lock_delay: float
    grace: float

    @classmethod
    def from_flags(cls, flags: list[str]) -> Lease:
        values = dict(zip(flags[::2], flags[1::2]))
        seconds = {k: float(v.removesuffix("s")) for k, v in values.items()}
        return cls(seconds["--ttl"], seconds["--lock-delay"], seconds["--grace"])

    @property
    def window(self) -> float:
        """B: how long after a proof of life the command may still run."""
        return min(self.ttl, self.lock_delay) * (1 - CLOCK_RATE_ERROR) - SCHEDULING_SLACK

    @property
    def ttl_path(self) -> float:
        """A session nobody renews or releases: invalidated at most 2 x TTL later, then the lock-delay."""
        return 2 * self.ttl + self.lock_delay


@dataclasses.dataclass(frozen=True)
class Bound:
    """Longest time without a leader a fault may cause, from the previous leader's last record;
    *after_heal*: for a fault that stops everyone from leading, from the moment it is healed."""

    from_gap_start: float | None
    after_heal: float | None
    formula: str
    reason: str


def bound_table(lease: Lease) -> dict[str, Bound]:
    T, L, S, E, R = lease.ttl, lease.lock_delay, HANDOVER_SLACK, RAFT_ELECTION, RECONNECT_BACKOFF_MAX
    release = Bound(S, None, "S", "the key is released at once (no lock-delay applies to a release): a standby's "
                    "blocking query wakes it and it acquires")
    ttl = Bound(lease.ttl_path + S, None, "2T + L + S",
                "neither the elector nor its watchdog can reach Consul (or run): the session lives until the "
                "servers' timer (armed at 2 x TTL after the last renew) fires, then the lock-delay")
    raft = Bound(E + lease.ttl_path + S, None, "E + 2T + L + S",
                 "a Raft election may happen (killed/frozen/returning server); the new Raft leader re-arms "
                 "every session timer at 2 x TTL, then the lock-delay")
    freed = Bound(lease.window + HOLDER_MARGIN + S, None, "B + 1 s + S",
                  "no lock-delay applies to a release or a delete, so a standby waits until the old holder's "
                  "session ends: its elector destroys it once the command is confirmed dead, within --grace "
                  "(well inside B + 1 s)")
    table = {
        "kill9-elector": dataclasses.replace(release, reason="the watchdog sees its socket close, SIGKILLs the "
                                             "command, confirms it gone, releases the key and destroys the session"),
        "sigterm-elector": dataclasses.replace(release, reason="SIGTERM: the command is stopped, then the key "
                                               "released: a graceful handover"),
        "kill9-watchdog": dataclasses.replace(ttl, reason="PR_SET_PDEATHSIG kills the command at once; the "
                                              "elector releases the key once its group is confirmed gone (its zombie "
                                              "reaped: by the elector as a subreaper, or by PID 1 where it is not "
                                              "one), and after KILL_WAIT (2 s) leaves the session to expire instead "
                                              "(2T + L)"),
        "freeze-elector": dataclasses.replace(release, reason="the watchdog SIGKILLs the command at the lease "
                                              "deadline (freeze + B at the latest) and releases the key"),
        "freeze-watchdog": dataclasses.replace(release, reason="the elector keeps renewing: the leader stays; "
                                               "after 3 s of unanswered pings it kills the watchdog and the command "
                                               "itself, releases and exits 70, and a standby takes over at once"),
        "freeze-group": dataclasses.replace(ttl, reason="nothing of the leader runs: its session expires (2 x TTL "
                                            "after the last renew) and the lock-delay runs out; the stale command "
                                            "is fenced when it wakes"),
        "op-release": freed,
        "op-delete": freed,
        "op-destroy": Bound(L + S, None, "L + S", "destroying the session invalidates it: the lock-delay applies"),
        "kill-server": raft,
        "freeze-server": raft,
        "kill-raft-leader": raft,
        "freeze-raft-leader": raft,
        "quorum-loss": Bound(None, E + lease.ttl_path + R + S, "heal + E + 2T + L + R + S",
                             "nobody can acquire without quorum; once it is back: a Raft election, the old "
                             "leader's session (its release failed) expires at 2 x TTL after it, the lock-delay, "
                             "and the candidates' reconnect back-off (R = 2 s)"),
    }
    for mode in PROXY_MODES:
        table[f"proxy-{mode}"] = dataclasses.replace(
            ttl, reason="the elector behind the proxy cannot prove its session alive (or its release does not get "
                        "through): as if its host were cut off")
    return table


# Proxy faults: (mode, path-prefix match). "cut" modes keep the elector from receiving any proof of
# life through the proxy; the others (a hung watch, a garbled 200 body) do not.
PROXY_MODES = {
    "500": ("", True),
    "500-renew": ("/v1/session/renew", True),
    "delay": ("", True),          # 1-3 s, longer than the renew timeout (one renew interval)
    "hang": ("", True),
    "hang-kv": ("/v1/kv", False),
    "reset": ("", True),
    "trickle": ("", True),
    "garbage": ("", False),       # a 200 with an unparsable body: the server did renew
}
CLUSTER_KINDS = ("kill-server", "freeze-server", "kill-raft-leader", "freeze-raft-leader", "quorum-loss")


def round_bound(round_: RoundRecord, table: dict[str, Bound], lease: Lease) -> tuple[float | None, float | None]:
    """(from gap start, after heal) for a round: the largest of its faults' bounds; two faults at once
    may also cut one another's release path (a kill -9 whose watchdog cannot reach Consul), so they
    get at least the TTL path."""
    gaps = [table[f.kind].from_gap_start for f in round_.faults if table[f.kind].from_gap_start is not None]
    heals = [table[f.kind].after_heal for f in round_.faults if table[f.kind].after_heal is not None]
    from_gap = max(gaps) if gaps else None
    if len(round_.faults) > 1 and from_gap is not None:
        from_gap = max(from_gap, lease.ttl_path + HANDOVER_SLACK)
    return from_gap, (max(heals) if heals else None)


@dataclasses.dataclass
class Violation:
    kind: str
    round: int | None            # None: before the first fault (setup) or after the last round
    detail: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RoundResult:
    number: int
    label: str
    changed: bool                # another command took over
    failover: float | None       # first injection -> the next leader's first record
    longest_gap: float           # longest time without a leader attributed to this round
    bound: str
    stale_rejected: int
    overlaps: int
    violations: int


@dataclasses.dataclass
class Report:
    violations: list[Violation]
    rounds: list[RoundResult]
    summary: list[dict]          # one row per fault kind (single-fault rounds), then "two at once", "all"
    totals: dict

    @property
    def ok(self) -> bool:
        return not self.violations


class _Intervals:
    """When could nobody stop a candidate's command? Its elector out (frozen or killed) while its
    watchdog is frozen: README's "both frozen together", where fencing takes over."""

    def __init__(self, rounds: list[RoundRecord], run_end: float) -> None:
        self.elector_out: dict[str, list[tuple[float, float]]] = {}
        self.watchdog_frozen: dict[str, list[tuple[float, float]]] = {}
        self.command_frozen: dict[int, list[tuple[float, float]]] = {}
        for r in rounds:
            for f in r.faults:
                if f.target is None or f.detail.get("noop"):
                    continue
                healed = f.healed if f.healed is not None else run_end
                if f.kind in ("freeze-elector", "freeze-group"):
                    thawed = f.detail.get("thawed_all", healed)
                    self.elector_out.setdefault(f.target, []).append((f.injected, thawed))
                if f.kind == "kill9-elector":
                    self.elector_out.setdefault(f.target, []).append((f.injected, float("inf")))
                if f.kind in ("freeze-watchdog", "freeze-group"):
                    thawed = f.detail.get("thawed_all", healed)
                    self.watchdog_frozen.setdefault(f.target, []).append((f.injected, thawed))
                if f.kind == "freeze-group" and "command_pid" in f.detail:
                    thawed = f.detail.get("thawed_command", healed)
                    self.command_frozen.setdefault(f.detail["command_pid"], []).append((f.injected, thawed))

    def blind(self, name: str) -> list[tuple[float, float]]:
        out = []
        for e0, e1 in self.elector_out.get(name, []):
            for w0, w1 in self.watchdog_frozen.get(name, []):
                lo, hi = max(e0, w0), min(e1, w1)
                if lo < hi:
                    out.append((lo, hi))
        return out

    def excused(self, name: str, t: float) -> bool:
        """Blind at t, or woken from blindness less than HANDOVER_SLACK ago (the watchdog then kills at once)."""
        return any(b0 <= t <= b1 + HANDOVER_SLACK for b0, b1 in self.blind(name))


def _round_of(rounds: list[RoundRecord], t: float) -> RoundRecord | None:
    found = None
    for r in rounds:
        if r.started <= t:
            found = r
        else:
            break
    return found


def _coverage(terms: list[Term], intervals: _Intervals) -> list[tuple[float, float]]:
    """Stretches of time during which some leader's command was running (frozen stretches cut out)."""
    segments = []
    for term in terms:
        frozen = intervals.command_frozen.get(term.pid, [])
        seg_start = prev = term.times[0]
        for t in term.times[1:]:
            if t - prev > MIN_GAP and any(f0 <= t and prev <= f1 for f0, f1 in frozen):
                segments.append((seg_start, prev))
                seg_start = t
            prev = t
        segments.append((seg_start, prev))
    return sorted(segments)


def _stops(f: FaultRecord, round_: RoundRecord, lease: Lease) -> list[tuple[str, float, str, str]]:
    """(candidate, time after which its command must not record, violation kind, why) implied by a fault."""
    if f.detail.get("noop"):
        return []
    same_target = [g.kind for g in round_.faults if g is not f and g.target == f.target]
    watchdog_held = any(k in ("freeze-watchdog", "freeze-group") for k in same_target)
    out = []
    cut_at, cut_names = None, []
    if f.kind in ("freeze-elector", "freeze-group", "op-destroy"):
        cut_at, cut_names = f.injected, [f.target]
    elif f.kind.startswith("proxy-") and PROXY_MODES[f.kind[len("proxy-"):]][1]:
        cut_at, cut_names = f.injected, [f.target]
    elif f.kind in ("kill-server", "freeze-server", "kill-raft-leader", "freeze-raft-leader"):
        cut_at, cut_names = f.injected, f.detail.get("on_servers", [])
    elif f.kind == "quorum-loss":
        cut_at, cut_names = f.injected + RAFT_STEP_DOWN, f.detail.get("on_servers", [])
    # A destroyed session stays destroyed; other cuts count only if they outlasted the lease.
    lasting = f.kind == "op-destroy" or (f.healed is not None and f.healed >= (cut_at or 0) + lease.window + EPS)
    if cut_at is not None and lasting:
        why = f"no proof of life after {cut_at:.3f} ({f.kind}), so the command must be gone by then + B + EPS"
        out += [(name, cut_at + lease.window + EPS, "lease-overrun", why) for name in cut_names]
    if f.kind in ("kill9-elector", "kill9-watchdog") and not same_target:
        out.append((f.target, f.injected + KILL_STOP, "slow-stop", f"{f.kind}: the command must die at once"))
    if f.kind == "sigterm-elector" and not watchdog_held:
        out.append((f.target, f.injected + lease.grace + EPS, "slow-stop",
                    "SIGTERM: the command is stopped within --grace"))
    if f.kind in ("op-release", "op-delete") and not watchdog_held:
        out.append((f.target, f.injected + lease.grace + HANDOVER_SLACK, "slow-stop",
                    f"{f.kind}: the leader notices within milliseconds and stops the command within --grace"))
    return out


def check(terms: list[Term], resource_log: list[tuple[float, str, int]], rounds: list[RoundRecord],
          findings: list[Violation], lease: Lease, run_end: float) -> Report:
    """*run_end*: when the final shutdown began (leaderless time after it is expected)."""
    table = bound_table(lease)
    violations: list[Violation] = list(findings)
    intervals = _Intervals(rounds, run_end)
    number = {id(r): r.number for r in rounds}

    def round_no(t: float) -> int | None:
        r = _round_of(rounds, t)
        return number[id(r)] if r else None

    per_round = {r.number: {"stale": 0, "overlaps": 0, "gap": 0.0} for r in rounds}

    # fencing tokens grow from one leader to the next
    for before, after in zip(terms, terms[1:]):
        if after.token <= before.token:
            violations.append(Violation("token", round_no(after.start),
                                        f"{before.name} (pid {before.pid}) token {before.token} -> {after.name} "
                                        f"(pid {after.pid}) token {after.token}"))

    # overlapping leadership
    first_accepted = {}
    for t, verdict, token in resource_log:
        if verdict == "accepted":
            first_accepted.setdefault(token, t)
    for i, older in enumerate(terms):
        for newer in terms[i + 1:]:
            if newer.start >= older.end:
                break
            shared = older.records_between(newer.start, newer.end + 1e-9) or [older.end]
            r = round_no(newer.start)
            if all(intervals.excused(older.name, t) for t in shared):
                fenced_from = first_accepted.get(newer.token)
                stale = [(t, v) for t, v, token in resource_log
                         if token == older.token and fenced_from is not None and t > fenced_from]
                accepted = [t for t, v in stale if v == "accepted"]
                if accepted:
                    violations.append(Violation("stale-write-accepted", r,
                                                f"{older.name} token {older.token} wrote at {accepted[0]:.3f} after "
                                                f"{newer.name} token {newer.token} first wrote at {fenced_from:.3f}"))
                if r is not None:
                    per_round[r]["stale"] += sum(1 for _, v in stale if v == "rejected")
                continue
            if r is not None:
                per_round[r]["overlaps"] += 1
            violations.append(Violation(
                "overlap", r, f"{older.name} (pid {older.pid}, token {older.token}) recorded until {older.end:.3f}, "
                f"{newer.name} (pid {newer.pid}, token {newer.token}) started at {newer.start:.3f}: "
                f"{min(older.end, newer.end) - newer.start:.3f}s of two leaders"))

    # the command stops in time
    for r in rounds:
        for f in r.faults:
            for name, limit, kind, why in _stops(f, r, lease):
                for term in terms:
                    if term.name != name or term.start > f.injected:
                        continue
                    late = [t for t in term.records_between(limit, float("inf"))
                            if not intervals.excused(name, t)]
                    if late:
                        violations.append(Violation(kind, r.number,
                                                    f"{name} (pid {term.pid}) recorded until {late[-1]:.3f}, "
                                                    f"{late[-1] - limit:.3f}s past {limit:.3f}: {why}"))

    # time without a leader
    segments = _coverage(terms, intervals)
    covered_to = segments[0][1] if segments else None
    gaps = []
    for s0, s1 in segments[1:]:
        if s0 > covered_to:
            gaps.append((covered_to, min(s0, run_end)))
        covered_to = max(covered_to, s1)
    if covered_to is not None and run_end > covered_to + FRESH_AT_END:
        gaps.append((covered_to, run_end))
    for g0, g1 in gaps:
        r = _round_of(rounds, g0 + FRESH_AT_INJECTION)
        if r is None or g0 >= run_end:
            continue
        per_round[r.number]["gap"] = max(per_round[r.number]["gap"], g1 - g0)
        from_gap, after_heal = round_bound(r, table, lease)
        allowed = []
        if from_gap is not None:
            allowed.append(g0 + from_gap)
        if after_heal is not None:
            heals = [f.healed for f in r.faults if table[f.kind].after_heal is not None and f.healed is not None]
            allowed.append((max(heals) if heals else run_end) + after_heal)
        if g1 > max(allowed):
            violations.append(Violation("leaderless", r.number,
                                        f"no leader from {g0:.3f} to {g1:.3f} ({g1 - g0:.2f}s; the bound for "
                                        f"{r.label} allows until {max(allowed):.3f})"))

    results = []
    for r in rounds:
        nxt = next((term for term in terms if term.start >= r.started and term.pid != r.leader_pid_before), None)
        changed = nxt is not None and (r.recovered is None or nxt.start <= r.recovered + 1e-9)
        from_gap, after_heal = round_bound(r, table, lease)
        bound = " / ".join(x for x in (f"{from_gap:.1f}s" if from_gap is not None else "",
                                      f"heal+{after_heal:.1f}s" if after_heal is not None else "") if x)
        results.append(RoundResult(
            r.number, r.label, changed, (nxt.start - r.started) if changed else None,
            round(per_round[r.number]["gap"], 3), bound, per_round[r.number]["stale"],
            per_round[r.number]["overlaps"], sum(1 for v in violations if v.round == r.number)))
    return Report(violations, results, _summary(rounds, results, table, violations),
                  {"violations": len(violations),
                   "by_kind": _count(v.kind for v in violations),
                   "stale_writes_rejected": sum(x.stale_rejected for x in results),
                   "terms": len(terms)})


def _count(items) -> dict:
    out: dict = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    return (statistics.median(values), max(values)) if values else (None, None)


def _summary(rounds: list[RoundRecord], results: list[RoundResult], table: dict[str, Bound],
             violations: list[Violation]) -> list[dict]:
    rows = []
    faults_by_kind = _count(f.kind for r in rounds for f in r.faults)

    def row(label: str, picked: list[RoundResult], faults: int, bound: str) -> dict:
        failovers = [x.failover for x in picked if x.failover is not None]
        gaps = [x.longest_gap for x in picked]
        numbers = {x.number for x in picked}
        return {"kind": label, "faults": faults, "rounds": len(picked),
                "leader_changes": sum(1 for x in picked if x.changed),
                "failover_median": _stats(failovers)[0], "failover_max": _stats(failovers)[1],
                "gap_median": _stats(gaps)[0], "gap_max": _stats(gaps)[1], "bound": bound,
                "overlaps": sum(x.overlaps for x in picked),
                "stale_rejected": sum(x.stale_rejected for x in picked),
                "violations": sum(1 for v in violations if v.round in numbers)}

    by_number = {x.number: x for x in results}
    for kind in sorted(faults_by_kind):
        single = [by_number[r.number] for r in rounds if len(r.faults) == 1 and r.faults[0].kind == kind]
        rows.append(row(kind, single, faults_by_kind[kind], table[kind].formula))
    double = [by_number[r.number] for r in rounds if len(r.faults) > 1]
    rows.append(row("two at once", double, sum(len(r.faults) for r in rounds if len(r.faults) > 1),
                    "max(each, 2T + L + S)"))
    rows.append(row("all", results, sum(faults_by_kind.values()), ""))
    return rows


def format_summary(report: Report, header: str) -> str:
    def sec(x):
        return "-" if x is None else f"{x:.2f}"

    lines = [header, "",
             f"{'fault kind':<20} {'faults':>6} {'rounds':>6} {'changes':>7} {'failover med/max s':>19} "
             f"{'no-leader med/max s':>20} {'bound':<24} {'overlaps':>8} {'stale rej':>9} {'viol':>5}"]
    for x in report.summary:
        lines.append(f"{x['kind']:<20} {x['faults']:>6} {x['rounds']:>6} {x['leader_changes']:>7} "
                     f"{sec(x['failover_median']) + ' / ' + sec(x['failover_max']):>19} "
                     f"{sec(x['gap_median']) + ' / ' + sec(x['gap_max']):>20} {x['bound']:<24} "
                     f"{x['overlaps']:>8} {x['stale_rejected']:>9} {x['violations']:>5}")
    t = report.totals
    found = t["by_kind"]
    lines += ["", f"violations: {t['violations']} {found or ''}",
              f"overlaps: {found.get('overlap', 0)}   stale writes rejected: {t['stale_writes_rejected']} "
              f"(accepted: {found.get('stale-write-accepted', 0)})   lease overruns: {found.get('lease-overrun', 0)}   "
              f"orphans: {found.get('orphan', 0)}   tracebacks: {found.get('traceback', 0)}   "
              f"unexpected exits: {found.get('unexpected-exit', 0)}   leader terms: {t['terms']}"]
    for v in report.violations:
        lines.append(f"  VIOLATION {v.kind} (round {v.round}): {v.detail}")
    return "\n".join(lines)


def format_bounds(lease: Lease) -> str:
    """The bound table, with the values for *lease* and the reason for each."""
    lines = [f"bounds on time without a leader (T={lease.ttl:g}s L={lease.lock_delay:g}s g={lease.grace:g}s "
             f"B={lease.window:.2f}s S={HANDOVER_SLACK:g}s E={RAFT_ELECTION:g}s R={RECONNECT_BACKOFF_MAX:g}s; "
             "from the last leader's last record unless 'heal +'):"]
    for kind, b in bound_table(lease).items():
        value = f"{b.from_gap_start:.1f}s" if b.from_gap_start is not None else f"heal + {b.after_heal:.1f}s"
        lines.append(f"  {kind:<20} {b.formula:<26} {value:>12}  {b.reason}")
    lines.append(f"  {'two at once':<20} {'max(each, 2T + L + S)':<26} "
                 f"{lease.ttl_path + HANDOVER_SLACK:>11.1f}s  one fault may cut the other's release path")
    return "\n".join(lines)
