"""`--holders N` (issue 12): at most N commands run at once, through handovers, crashes and
freezes; each holder is fenced by its slot's token; `status` shows the holders and the queue;
candidates that disagree on N are refused. Against a real Consul agent and real processes.

Overlap checks read the children's own CLOCK_MONOTONIC records (harness.assert_at_most).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from harness import FAST, HERE, assert_at_most, pid_alive, read_lives, wait_for

N = 2


def holders_options(n=N):
    return [*FAST, "--holders", str(n)]


def running(events):
    """Children that recorded within the last 0.3 s (beats come every 20 ms)."""
    now = time.clock_gettime(time.CLOCK_MONOTONIC)
    return [life for life in read_lives(events) if now - life.end < 0.3 and "stop" not in life.events
            and pid_alive(life.pid)]


def status_json(agent, key):
    out = subprocess.run([sys.executable, "-m", "consul_elect", "status", "--key", key, "--json"],
                         capture_output=True, text=True, timeout=30, cwd=HERE.parent,
                         env={"CONSUL_HTTP_ADDR": agent.http_addr, "PATH": "/usr/bin:/bin"})
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else None


def test_never_more_than_n_holders_through_handover_crash_and_freeze(consul_agent, candidates):
    key = "svc/holders"
    events = candidates.events
    made = {n: candidates(consul_agent.http_addr, key, n, options=holders_options()) for n in "abcde"}
    wait_for(lambda: len(running(events)) == N, 15, what=f"{N} holders")
    time.sleep(0.5)
    assert len(running(events)) == N, "no more than N, and a waiter does not lead"
    code, doc = status_json(consul_agent, key)
    assert code == 0 and doc["leader"] is None and doc["limit"] == N, doc
    assert sorted(h["slot"] for h in doc["holders"]) == [0, 1], doc
    assert {h["name"] for h in doc["holders"]} == {life.name for life in running(events)}
    assert len(doc["candidates"]) == 3, "the three others wait"
    frozen = None
    try:
        for how in ("sigterm", "kill-9", "freeze"):
            victim = running(events)[0]
            before = {life.pid for life in read_lives(events)}
            wrapper = made[victim.name]
            wrapper.send_signal({"sigterm": signal.SIGTERM, "kill-9": signal.SIGKILL, "freeze": signal.SIGSTOP}[how])
            if how == "freeze":
                frozen = wrapper
            wait_for(lambda: [life for life in running(events) if life.pid not in before], 15,
                     what=f"a waiter to take {victim.name}'s slot after {how}")
            wait_for(lambda: len(running(events)) == N, 10, what=f"{N} holders again after {how}")
            assert_at_most(events, N)
    finally:
        if frozen is not None:
            frozen.send_signal(signal.SIGCONT)
    time.sleep(1.0)
    lives = assert_at_most(events, N)
    assert len(lives) == N + 3, [(life.name, life.token) for life in lives]
    code, doc = status_json(consul_agent, key)
    tokens = {h["slot"]: h["fencing_token"] for h in doc["holders"]}
    for life in running(events):
        assert life.token in tokens.values(), "each holder's command got its slot's fencing token"
    firsts = {life.token for life in lives[:N]}
    assert all(t > max(firsts) for t in tokens.values() if t not in firsts), "a slot's token grows with each holder"
    for c in made.values():
        assert "Traceback" not in c.log()


def test_candidates_that_disagree_on_holders_are_refused(consul_agent, candidates):
    key = "svc/holders-mixed"
    a = candidates(consul_agent.http_addr, key, "a", options=holders_options(2))
    wait_for(lambda: read_lives(candidates.events), 15, what="a to hold a slot")
    more = candidates(consul_agent.http_addr, key, "b", options=holders_options(3))
    assert more.wait(15) == 65, more.log()
    assert "--holders 2, not 3" in more.log() and "Traceback" not in more.log()
    one = candidates(consul_agent.http_addr, key, "c", options=FAST)
    assert one.wait(15) == 65, one.log()
    assert "same --holders" in one.log()
    assert a.alive()


def test_holders_must_be_a_sensible_number(tmp_path):
    out = subprocess.run([sys.executable, "-m", "consul_elect", "run", "--key", "svc/x", "--holders", "0", "--",
                          "true"], capture_output=True, text=True, timeout=30, cwd=HERE.parent)
    assert out.returncode == 2 and "--holders must be between 1 and 64, got 0" in out.stderr
    assert "Traceback" not in out.stderr
