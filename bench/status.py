#!/usr/bin/env python3
"""Status figures: `consul-elect status --json` cold start, and the /status endpoint under load.

    CONSUL_BIN=... .venv/bin/python bench/status.py [--quick]

1. Cold `consul-elect status --json` against a dev agent with one leader: wall time of a fresh
   process, median of 10 (goal <= 120 ms, issue 12; it was 250 ms before).
2. A leader with default flags serves /status on loopback while a load generator (separate
   processes, one connection per request, as the server speaks HTTP/1.0) hammers it: throughput
   and p99 latency (goals >= 1,000 req/s, p99 <= 20 ms), and the renew schedule's worst delay
   during the load, from the arrival times of renew requests at a counting proxy in front of the
   agent (the delay is the largest gap between renewals minus the configured interval).

Measures and prints; never asserts. Every process it starts is killed in a finally.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lib  # noqa: E402  (puts tests/ on sys.path)
from lib import CountingProxy, now, percentile  # noqa: E402

from consul_servers import ConsulAgent  # noqa: E402
from harness import Candidate, wait_for  # noqa: E402

CE = str(Path(sys.executable).with_name("consul-elect"))
KEY = "bench/status"
# Default flags: renewals every (min(10, 6) * 0.99 - 0.25 - 2) / 3 = 1.23 s.
RENEW_INTERVAL = (min(10, 6) * 0.99 - 0.25 - 2) / 3


def cold_status(addr: str, runs: int) -> list[float]:
    env = {**os.environ, "CONSUL_HTTP_ADDR": addr}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([CE, "status", "--key", KEY, "--json"], env=env, stdout=subprocess.DEVNULL, check=True,
                       timeout=30)
        times.append(time.perf_counter() - t0)
    return times


def _load_worker(url: str, seconds: float, out) -> None:
    import http.client
    host, port = url.removeprefix("http://").split(":")
    latencies, errors = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("GET", "/status")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
                if errors == 1:
                    print("load worker: HTTP", resp.status, file=sys.stderr)
        except OSError as e:
            errors += 1
            if errors == 1:
                print("load worker:", repr(e), file=sys.stderr)
    out.put((latencies, errors))


def load(url: str, seconds: float, workers: int) -> dict:
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_load_worker, args=(url, seconds, out)) for _ in range(workers)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 30) for _ in procs]
    for p in procs:
        p.join(10)
    elapsed = time.monotonic() - t0
    latencies = [x for lat, _ in results for x in lat]
    return {"requests": len(latencies), "errors": sum(e for _, e in results), "seconds": elapsed,
            "rps": len(latencies) / elapsed, "p50_ms": 1000 * percentile(latencies, 0.50),
            "p99_ms": 1000 * percentile(latencies, 0.99)}


def renew_delays(proxy: CountingProxy, start: float, end: float) -> float:
    arrivals = [t for t, method, path, _status in proxy.requests if path.startswith("/v1/session/renew/") and start <= t <= end]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return max(gaps) - RENEW_INTERVAL if gaps else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter load window")
    args = parser.parse_args()
    consul_bin = os.environ.get("CONSUL_BIN") or "consul"
    work = Path(tempfile.mkdtemp(prefix="consul-elect-bench-status-"))
    agent = ConsulAgent(consul_bin, base_dir=str(work / "agent")).start()
    proxy = CountingProxy(agent.http_addr).start()
    leader = None
    try:
        leader = Candidate(proxy.address, KEY, "leader", work, ["sleep", "600"],
                           options=["--port", "0", "--bind", "127.0.0.1"]).start()
        url = wait_for(lambda: re.search(r"serving status on (http://\S+)", leader.log()), 20,
                       what="the status server").group(1)
        wait_for(lambda: "started the command" in leader.log(), 20, what="leadership")
        cold = cold_status(agent.http_addr, 10)
        seconds = 5.0 if args.quick else 15.0
        quiet_from = now()
        time.sleep(seconds)
        quiet = renew_delays(proxy, quiet_from, now())
        load_from = now()
        result = load(url, seconds, workers=2)
        loaded = renew_delays(proxy, load_from, now())
        still_leader = "lost leadership" not in leader.log()
        print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        print(f"status --json cold, median of 10: {1000 * statistics.median(cold):.0f} ms "
              f"(min {1000 * min(cold):.0f}, max {1000 * max(cold):.0f})  [goal <= 120 ms]")
        print(f"/status under load ({result['seconds']:.1f} s, 2 client processes, a connection per request): "
              f"{result['rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
              f"{result['errors']} errors  [goal >= 1000 req/s, p99 <= 20 ms]")
        print(f"renew schedule, worst delay past the {RENEW_INTERVAL:.2f} s interval: quiet {1000 * quiet:.0f} ms, "
              f"under load {1000 * loaded:.0f} ms; still leader after the load: {still_leader}")
        lib.BENCH.joinpath("results").mkdir(exist_ok=True)
        lib.BENCH.joinpath("results", "status.json").write_text(json.dumps(
            {"cold_ms": [1000 * x for x in cold], "load": result, "renew_delay_quiet_ms": 1000 * quiet,
             "renew_delay_load_ms": 1000 * loaded, "still_leader": still_leader}, indent=2))
        return 0
    except Exception:
        if leader is not None:
            print(leader.log()[-3000:], file=sys.stderr)
        raise
    finally:
        if leader is not None:
            leader.send_signal(signal.SIGTERM)
            try:
                leader.wait(10)
            except subprocess.TimeoutExpired:
                pass
            leader.cleanup()
        proxy.stop()
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
