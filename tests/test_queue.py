"""The queue of candidates (issue 12): a clean handover names who comes next, so it costs the same
few Consul writes with two waiters or many, and a dead or frozen successor costs one turn.

Against a real Consul agent, through the fault proxy (no fault) to count what reaches Consul.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path

from fault_proxy import Fault, FaultProxy
from harness import assert_no_overlap, pid_alive, read_lives, wait_for

from consul_elect import config as defaults

WAITERS = 6


def queue(agent, key):
    status, body = agent.request("GET", f"/v1/kv/{key}/.candidates/?recurse")
    return json.loads(body) if status == 200 else []


def key_value(agent, key):
    status, body = agent.request("GET", f"/v1/kv/{key}")
    return json.loads(base64.b64decode(json.loads(body)[0]["Value"])) if status == 200 else None


def lined_up(agent, candidates, http_addr, key, names):
    """Start *names* one after another, each following the first before the next starts: the
    queue's order is the start order."""
    made = {}
    for name in names:
        made[name] = candidates(http_addr, key, name)
        if len(made) == 1:
            wait_for(lambda: read_lives(candidates.events), 15, what=f"{name} to lead")
        else:
            wait_for(lambda: "following" in made[name].log(), 15, what=f"{name} to follow")
        wait_for(lambda: len(queue(agent, key)) == len(made) - 1, 10, what=f"{name}'s queue entry")
    return made


def writes(proxy, since):
    return [(m, p) for t, m, p, _ in proxy.requests if t >= since and m != "GET" and "/session/renew" not in p]


def test_a_clean_handover_goes_to_the_oldest_waiter_in_a_few_writes(consul_agent, candidates):
    key = "svc/queue"
    names = [f"c{i}" for i in range(WAITERS + 1)]
    with FaultProxy(consul_agent.http_addr) as proxy:
        made = lined_up(consul_agent, candidates, proxy.address, key, names)
        assert sorted(e["Session"] for e in queue(consul_agent, key)) == sorted(
            s["ID"] for s in json.loads(consul_agent.request("GET", "/v1/session/list")[1])
            if s["Name"].split()[-1] != "c0"), "one live entry per waiter, none for the leader"
        for old, new in zip(names, names[1:4]):
            time.sleep(0.3)
            t0 = time.monotonic()
            made[old].send_signal(signal.SIGTERM)
            wait_for(lambda: [life for life in read_lives(candidates.events) if life.name == new], 10,
                     what=f"{new} to take over from {old}")
            assert made[old].wait(10) == 0, made[old].log()
            time.sleep(1.0)  # every waiter's watch has answered and been re-issued
            done = writes(proxy, t0)
            assert len(done) <= 4, f"{len(done)} writes for one handover: {done}"
            assert sum(1 for m, p in done if p.startswith("/v1/txn")) == 1, f"one acquire, no herd: {done}"
            # Only the waiters a release can name watch the key itself; those further back wait
            # on the queue (which the new leader leaves once its command is started), then look
            # at the key once: each of them re-reads the queue after every handover.
            waiting = [n for n in names if names.index(n) > names.index(new)]
            far = max(0, len(waiting) - defaults.HANDOVER_SUCCESSORS)
            queue_reads = [t for t, m, p, _ in proxy.requests
                           if t >= t0 and m == "GET" and p == f"/v1/kv/{key}/.candidates/"]
            assert len(queue_reads) >= far, f"{len(queue_reads)} queue reads with {far} waiters far back"
            wait_for(lambda: all(f"following {new}" in made[n].log() for n in waiting), 10,
                     what=f"every waiter, near or far, to follow {new}")
        lives = assert_no_overlap(candidates.events)
        assert [life.name for life in lives] == names[:4], "the oldest waiter leads next, every time"
        for name in names[:3]:
            assert "released " + key in made[name].log()
        # Entries go with their candidacies: the remaining ones, when those candidates leave.
        for name in reversed(names[3:]):  # the leader (c3) last: nobody is elected on the way
            made[name].send_signal(signal.SIGTERM)
            assert made[name].wait(10) == 0, made[name].log()
    assert queue(consul_agent, key) == []


def test_the_release_names_the_successors_in_turn(consul_agent, candidates):
    key = "svc/queue-named"
    made = lined_up(consul_agent, candidates, consul_agent.http_addr, key, ["a", "b", "c", "d", "e"])
    # Hold b back (frozen: its session lives on for the TTL, so the release still names it).
    made["b"].send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        made["a"].send_signal(signal.SIGTERM)
        wait_for(lambda: [life for life in read_lives(candidates.events) if life.name != "a"], 10,
                 what="someone to take over from a")
        took = time.monotonic() - t0
        assert [life.name for life in read_lives(candidates.events)] == ["a", "c"], "the next in turn took it"
        assert took < defaults.HANDOVER_TURN + 2.0, f"a frozen successor cost {took:.2f}s, more than one turn"
        assert "released " + key in made["a"].log()
    finally:
        made["b"].send_signal(signal.SIGCONT)
    value = key_value(consul_agent, key)
    assert value["name"] == "c"
    assert sum("elected leader" in made[n].log() for n in "de") == 0, "d and e waited their turns"
    wait_for(lambda: "following c" in made["b"].log(), 10, what="the thawed b to follow c")
    assert_no_overlap(candidates.events)


def test_a_crashed_waiters_entry_is_cleared_at_the_next_handover(consul_agent, candidates):
    key = "svc/queue-dead"
    made = lined_up(consul_agent, candidates, consul_agent.http_addr, key, ["a", "b", "c"])
    made["c"].send_signal(signal.SIGKILL)  # its watchdog follows it; its session expires
    wait_for(lambda: any(not e.get("Session") for e in queue(consul_agent, key)), 15,
             what="c's entry to lose its session")
    made["a"].send_signal(signal.SIGTERM)
    assert made["a"].wait(10) == 0, made["a"].log()
    wait_for(lambda: [life.name for life in read_lives(candidates.events)] == ["a", "b"], 10, what="b to lead")
    wait_for(lambda: queue(consul_agent, key) == [], 10, what="the dead entry to be deleted")


def test_a_hung_queue_request_never_holds_up_the_leaders_lease_timers(consul_agent, candidates):
    """The queue's requests run beside the loop, never on it: a new leader whose queue delete
    hangs, whose watchdog is then frozen and whose renewals hang, still stops its command by the
    lease deadline (the loop's own backup kill). Found by `make chaos`: the delete was made on
    the loop, which sat in it for the request timeout (5 s) while the lease ran out."""
    key = "svc/queue-hung"
    B = min(3, 2) * 0.99 - 0.25  # harness.FAST's lease window
    with FaultProxy(consul_agent.http_addr) as proxy:
        made = lined_up(consul_agent, candidates, proxy.address, key, ["a", "b"])
        proxy.set_fault(Fault.hang(), match="/.candidates/")
        made["a"].send_signal(signal.SIGTERM)
        wait_for(lambda: [life for life in read_lives(candidates.events) if life.name == "b"], 15, what="b to lead")
        watchdog = int(Path(f"/proc/{made['b'].pid}/task/{made['b'].pid}/children").read_text().split()[0])
        os.kill(watchdog, signal.SIGSTOP)
        try:
            proxy.set_fault(Fault.hang(), match="/v1/")
            t_fault = time.monotonic()
            wait_for(lambda: "stepping down" in made["b"].log(), 10, what="b to step down")
            time.sleep(B + 1.0)
            last = [life for life in read_lives(candidates.events) if life.name == "b"][-1]
            assert last.end <= t_fault + B + 0.3, f"b's command ran {last.end - t_fault:.2f}s past its last proof"
            assert not pid_alive(last.pid)
        finally:
            os.kill(watchdog, signal.SIGCONT)
            proxy.set_fault(None)
