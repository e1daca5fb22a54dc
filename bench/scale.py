#!/usr/bin/env python3
"""Many candidates on one key: the cost of a graceful handover as the number of waiters grows.

    CONSUL_BIN=... .venv/bin/python bench/scale.py [--sizes 2,10,40,100] [--handovers 10] [--tool both]

For each size N, N wrappers of one tool campaign on one key through a counting proxy in front of
one dev agent (bench/run.py's Bench, Tool and child). Once a leader runs and every other wrapper
waits, the leader gets SIGTERM, and again with the next leader, `--handovers` times. Per handover:
the gap from the old child's last record to the new child's start, and the Consul requests that
arrived from the SIGTERM until one second after the new child started, split into Raft writes
(session create/destroy, KV writes and txn: what loads the servers), renewals (an in-memory timer
reset on the leader server, not a Raft write) and reads (GETs, blocking queries included). It
prints medians per size and writes bench/results/scale.json. It measures and never asserts.

Each tool runs with its defaults, as a fleet would: consul-elect's follower renewals then come
every 3.3 s (`--ttl 10s`), `consul lock`'s every 7.5 s. `--elect-flags fast` runs consul-elect with
the test suite's `--ttl 3s --lock-delay 2s --grace 0.5s` (bench/run.py's handover figure) instead:
its hundred waiters then renew once a second each, and on one 2-core machine that background
is most of what grows with N.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib import percentile, poll_until  # noqa: E402
from run import CE, CL, Bench, BenchError, Tool, lives_by_pid, log_tail, now, say  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# How long after the new child's start the herd is still counted: every waiter's blocking query
# returns on the change and is re-issued within milliseconds; a second is ample.
AFTER = 1.0
# Handovers per size: the median of 4 put N = 100 at 1.09x to 1.31x of N = 2 from one run to the
# next on a 2-core machine (each sample swings by a few ms when a hundred co-located candidates'
# renewals land in it); 10 keeps a size under about 40 s for consul-elect.
HANDOVERS = 10


def kind(method: str, path: str) -> str:
    if path.startswith("/v1/session/renew"):
        return "renew"
    return "read" if method == "GET" else "write"


def one_size(b: Bench, tool: Tool, size: int, handovers: int) -> dict:
    wd = b.dir(f"scale-{tool.label.replace(' ', '-')}-{size}")
    events = wd / "events.log"
    tail = b.tail(events)
    proxy = b.proxy(b.agent.http_addr)
    key = tool.key(f"scale{size}")
    names = [f"w{i:03d}" for i in range(size)]
    wrappers = {}
    samples = []
    try:
        for name in names:
            wrappers[name] = tool.start(proxy.address, key, name, wd, events)
        leader = poll_until(lambda: next(iter(tail.poll().lives.values()), None), 60 + 2 * size, 0.05)
        if leader is None:
            raise BenchError(f"{tool.label} x{size}: no leader within 60 s\n{log_tail(wrappers[names[0]])}")
        for _ in range(handovers):
            # Settled: one child beating now and every other wrapper waiting. A start-up storm on
            # a loaded machine can change leaders a few times first (leases run out), so the
            # leader is read again once everyone waits, and once more before the SIGTERM.
            def settled():
                lives = tail.poll().lives.values()
                beating = max(lives, key=lambda life: life["end"])
                if now() - beating["end"] > 0.5:
                    return None
                ok = all(_waiting_any(tool, w) for n, w in wrappers.items() if n != beating["name"])
                return beating if ok else None
            current = poll_until(settled, 60 + 2 * size, 0.05)
            if current is None:
                idle = [n for n, w in wrappers.items() if not _waiting_any(tool, w)]
                raise BenchError(f"{tool.label} x{size}: no settled leader with every other wrapper waiting; "
                                 "not waiting: " + ", ".join(idle[:10]))
            time.sleep(1.0)
            current = settled() or current
            t_sig = now()
            wrappers[current["name"]].send_signal(signal.SIGTERM)
            new = poll_until(lambda: next((life for life in tail.poll().lives.values()
                                           if life["start"] > t_sig), None), 15, 0.005)
            if new is None:
                raise BenchError(f"{tool.label} x{size}: no handover within 15 s\n"
                                 + "\n".join(log_tail(w, 6) for w in wrappers.values()))
            time.sleep(AFTER + 0.2)
            counts = {"write": 0, "renew": 0, "read": 0}
            for arrived, method, path in proxy.between(t_sig, new["start"] + AFTER):
                counts[kind(method, path)] += 1
            b.release(wrappers.pop(current["name"]))
            # Keep N: the stopped wrapper's place is taken by a fresh one, which waits.
            fresh = f"w{size + len(samples):03d}"
            wrappers[fresh] = tool.start(proxy.address, key, fresh, wd, events)
            samples.append({"old_pid": current["pid"], "new_pid": new["pid"], "from_sigterm_s": new["start"] - t_sig,
                            **counts})
    finally:
        b.release(*wrappers.values())
        b.sweep(tail)
        proxy.stop()
    lives = lives_by_pid(events)
    for s in samples:
        s["gap_s"] = lives[s["new_pid"]].start - lives[s["old_pid"]].end
    return {"size": size, "samples": samples,
            "gap_median_ms": 1000 * statistics.median(s["gap_s"] for s in samples),
            "gap_p90_ms": 1000 * percentile([s["gap_s"] for s in samples], 0.9),
            "writes_median": statistics.median(s["write"] for s in samples),
            "reads_median": statistics.median(s["read"] for s in samples),
            "renews_median": statistics.median(s["renew"] for s in samples)}


def _waiting_any(tool: Tool, wrapper) -> bool:
    log = wrapper.log()
    return "following" in log if tool.is_elect else "Attempting lock acquisition" in log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,10,40,100")
    parser.add_argument("--handovers", type=int, default=HANDOVERS)
    parser.add_argument("--tool", choices=("both", "elect", "lock"), default="both")
    parser.add_argument("--elect-flags", choices=("defaults", "fast"), default="defaults")
    args = parser.parse_args()
    consul_bin = os.environ.get("CONSUL_BIN")
    if not consul_bin:
        sys.exit("set CONSUL_BIN (make bench does)")
    sizes = [int(s) for s in args.sizes.split(",")]
    b = Bench(consul_bin, quick=False, keep=False)
    results = []
    try:
        b.agent = b.start_agent(b.dir("agent"))
        labels = {"both": (CE, CL), "elect": (CE,), "lock": (CL,)}[args.tool]
        for label in labels:
            tool = Tool(b, label, options=[] if args.elect_flags == "defaults" else None)
            say(f"scale: {tool.describe()}")
            for size in sizes:
                say(f"scale: {label} x{size} ...")
                started = now()
                row = one_size(b, tool, size, args.handovers)
                results.append({"tool": label, "flags": tool.describe(), **row})
                say(f"scale: {label} x{size} done in {now() - started:.1f} s")
    finally:
        leftovers = b.close()
        if leftovers:
            say(f"cleaned up: {leftovers}")
    print(f"{'tool':14} {'N':>4} {'handover median / p90':>24} {'writes':>7} {'reads':>6} {'renews':>7}  (per handover, medians)")
    for r in results:
        print(f"{r['tool']:14} {r['size']:>4} {r['gap_median_ms']:>12.1f} / {r['gap_p90_ms']:.1f} ms "
              f"{r['writes_median']:>7.0f} {r['reads_median']:>6.0f} {r['renews_median']:>7.0f}")
    for label in dict.fromkeys(r["tool"] for r in results):
        rows = sorted((r for r in results if r["tool"] == label), key=lambda r: r["size"])
        if len(rows) > 1:
            first, last = rows[0], rows[-1]
            print(f"{label}: handover median at N = {last['size']} is {last['gap_median_ms'] / first['gap_median_ms']:.2f}x "
                  f"that at N = {first['size']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
