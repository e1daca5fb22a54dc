#!/usr/bin/env python3
"""`make demo`: a Consul dev agent on loopback, three candidates, two failovers, then clean-up.

Everything it starts runs in its own process group and is killed on the way out, even on Ctrl-C.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

KEY = "demo/leader"
WORK = "while :; do echo \"[$CONSUL_ELECT_NAME] doing the leader-only work (fencing token $CONSUL_ELECT_FENCING_TOKEN)\"; sleep 1; done"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def leader(http: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://{http}/v1/kv/{KEY}", timeout=2) as r:
            kv = json.load(r)[0]
    except Exception:
        return None
    if not kv.get("Session"):
        return None
    return {**json.loads(base64.b64decode(kv["Value"])), "token": kv["ModifyIndex"]}


def wait_leader(http: str, other_than: str | None = None, timeout: float = 20) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        who = leader(http)
        if who and who["name"] != other_than:
            return who
        time.sleep(0.05)
    raise SystemExit("demo: no leader appeared in time")


def fail_over(http: str, leader: dict, signo: int, title: str) -> dict:
    """Send *signo* to the leading consul-elect and show who takes over, and how fast."""
    say(title)
    t0 = time.monotonic()
    os.kill(leader["pid"], signo)
    successor = wait_leader(http, other_than=leader["name"])
    print(f"-> {successor['name']} leads after {1000 * (time.monotonic() - t0):.0f} ms "
          f"(fencing token {successor['token']})", flush=True)
    time.sleep(2.5)
    return successor


def main() -> int:
    consul = os.environ.get("CONSUL_BIN") or "consul"
    tmp = tempfile.mkdtemp(prefix="consul-elect-demo-")
    http_port = free_port()
    http = f"127.0.0.1:{http_port}"
    procs: list[subprocess.Popen] = []
    try:
        say(f"starting a Consul dev agent on {http}")
        agent = subprocess.Popen(
            [consul, "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", f"-http-port={http_port}",
             "-dns-port=-1", "-grpc-port=-1", f"-serf-lan-port={free_port()}", f"-serf-wan-port={free_port()}",
             f"-server-port={free_port()}", "-hcl", 'session_ttl_min = "1s"'],
            stdout=open(os.path.join(tmp, "consul.log"), "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(agent)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://{http}/v1/status/leader", timeout=1) as r:
                    if json.load(r):
                        break
            except Exception:
                pass
            time.sleep(0.1)
        time.sleep(0.5)  # the node registers itself just after the leader appears

        env = {**os.environ, "CONSUL_HTTP_ADDR": http}
        say("starting three candidates: consul-elect run --key demo/leader -- <work loop>")
        for name in ("alpha", "bravo", "charlie"):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "consul_elect", "run", "--key", KEY, "--name", name, "--ttl", "3s",
                 "--lock-delay", "2s", "--grace", "0.5s", "--", "sh", "-c", WORK],
                env=env, start_new_session=True))
            time.sleep(0.2)
        first = wait_leader(http)
        time.sleep(2.5)
        say(f"{first['name']} leads (pid {first['pid']}, fencing token {first['token']})")

        second = fail_over(http, first, signal.SIGTERM, f"graceful handover: SIGTERM to {first['name']}")
        fail_over(http, second, signal.SIGKILL, f"crash: kill -9 of {second['name']}'s consul-elect "
                                               "(its watchdog stops the child and releases)")
        say("done: stopping everything")
        return 0
    finally:
        for p in reversed(procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                    p.wait(5)
                    break
                except (OSError, subprocess.TimeoutExpired):
                    continue
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
