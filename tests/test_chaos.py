"""Proof under chaos (issue 10): the checker catches what it must, and a short seeded run finds nothing.

The long run is `make chaos` (200 rounds); this is its smoke test inside `make test`: about 12
rounds of the same nemesis against a real 3-server cluster, within a ~60 s budget for starting
rounds. CONSUL_ELECT_SRC=DIR runs the candidates from DIR instead of the repo.
"""

import os
from pathlib import Path

from chaos.checker import EPS, HANDOVER_SLACK, Lease, check
from chaos.history import FaultRecord, RoundRecord, Term
from chaos.runner import ChaosRun, summary_text, write_json
from harness import FAST

LEASE = Lease.from_flags(FAST)
# A seed whose first rounds mix the fault families: an operator destroy, a hung link, kill -9,
# quorum loss, a frozen elector, a whole-group freeze (fenced), SIGTERM, a frozen watchdog, pairs.
SMOKE_SEED = 154
SMOKE_ROUNDS = 12
SMOKE_BUDGET = 60.0


def term(pid, name, token, start, end, writes=(), beat=0.02):
    n = int(round((end - start) / beat))
    times = [start + i * beat for i in range(n)] + [end]
    return Term(pid, name, token, "exec", {}, start, end, times, list(writes))


def one_round(number, kind, target, injected, healed=None, leader_pid=1, **detail):
    fault = FaultRecord(kind, target, injected, injected if healed is None else healed, detail)
    return RoundRecord(number, [fault], target, leader_pid, injected, recovered=None)


def kinds(report):
    return sorted({v.kind for v in report.violations})


def test_checker_reports_two_leaders_at_once():
    a, b = term(1, "a", 10, 0.0, 5.0), term(2, "b", 20, 4.0, 8.0)
    report = check([a, b], [], [one_round(1, "op-release", "a", 3.9)], [], LEASE, run_end=8.0)
    assert "overlap" in kinds(report)


def test_checker_accepts_a_frozen_group_overlap_only_while_fencing_rejects_its_writes():
    # a is frozen whole at 1 s; b takes over at 9 s (2T + L later) and writes; a's command is thawed
    # at 12 s and writes once with its old token; its elector and watchdog thaw at 12.5 s and kill it.
    a = term(1, "a", 10, 0.0, 1.0)
    a.times += [12.0, 12.05, 12.6]
    a.end = 12.6
    b = term(2, "b", 20, 9.0, 20.0)
    freeze = RoundRecord(1, [FaultRecord("freeze-group", "a", 1.0, 12.5,
                                         {"command_pid": 1, "thawed_command": 12.0, "thawed_all": 12.5})],
                         "a", 1, 1.0)
    fenced = [(0.5, "accepted", 10), (9.1, "accepted", 20), (12.05, "rejected", 10)]
    report = check([a, b], fenced, [freeze], [], LEASE, run_end=20.0)
    assert report.ok, report.violations
    assert report.totals["stale_writes_rejected"] == 1

    broken = [(0.5, "accepted", 10), (9.1, "accepted", 20), (12.05, "accepted", 10)]
    assert "stale-write-accepted" in kinds(check([a, b], broken, [freeze], [], LEASE, run_end=20.0))
    # The same overlap without the freeze is two leaders.
    alone = RoundRecord(1, [FaultRecord("freeze-elector", "a", 1.0, 12.5)], "a", 1, 1.0)
    assert "overlap" in kinds(check([a, b], fenced, [alone], [], LEASE, run_end=20.0))


def test_checker_reports_fencing_tokens_that_do_not_grow():
    a, b = term(1, "a", 20, 0.0, 3.0), term(2, "b", 20, 3.1, 6.0)
    assert "token" in kinds(check([a, b], [], [one_round(1, "kill9-elector", "a", 2.99)], [], LEASE, 6.0))


def test_checker_holds_each_fault_to_its_own_leaderless_bound():
    a = term(1, "a", 10, 0.0, 10.0)
    quick, slow = term(2, "b", 20, 10.0 + HANDOVER_SLACK / 2, 20.0), term(2, "b", 20, 12.5, 20.0)
    kill = one_round(1, "kill9-elector", "a", 10.0)
    assert check([a, quick], [], [kill], [], LEASE, 20.0).ok
    assert "leaderless" in kinds(check([a, slow], [], [kill], [], LEASE, 20.0))
    # A destroyed session is followed by the lock-delay: 2.5 s is within L + S.
    assert check([a, slow], [], [one_round(1, "op-destroy", "a", 10.0)], [], LEASE, 20.0).ok
    # Without quorum nobody leads; the bound counts from the heal.
    late = term(2, "b", 20, 30.0, 40.0)
    quorum = one_round(1, "quorum-loss", None, 10.0, healed=25.0, on_servers=[])
    assert check([a, late], [], [quorum], [], LEASE, 40.0).ok


def test_checker_reports_a_command_running_past_its_lease():
    freeze = one_round(1, "freeze-elector", "a", 10.0, healed=14.0)
    on_time = term(1, "a", 10, 0.0, 10.0 + LEASE.window)
    late = term(1, "a", 10, 0.0, 10.0 + LEASE.window + EPS + 0.1)
    successor = term(2, "b", 20, 12.5, 20.0)
    assert check([on_time, successor], [], [freeze], [], LEASE, 20.0).ok
    assert "lease-overrun" in kinds(check([late, successor], [], [freeze], [], LEASE, 20.0))


def test_seeded_chaos_rounds_leave_no_violation(consul_bin, tmp_path, capsys):
    src = os.environ.get("CONSUL_ELECT_SRC")
    run = ChaosRun(consul_bin, tmp_path / "chaos", SMOKE_SEED, SMOKE_ROUNDS, max_seconds=SMOKE_BUDGET,
                   src=Path(src).resolve() if src else None)
    report, info = run.run()
    write_json(tmp_path / f"chaos-{SMOKE_SEED}.json", report, info, run.lease)
    summary = summary_text(report, info)
    with capsys.disabled():  # the table belongs in `make test`'s output, passed or not
        print("\n" + summary)
    assert info["rounds_done"] >= 5, summary
    assert report.ok, f"{summary}\n(logs in {tmp_path / 'chaos'}; replay: make chaos ROUNDS={SMOKE_ROUNDS} " \
                      f"SEED={SMOKE_SEED})"
