#!/usr/bin/env python3
"""`make test-docker`: docker-compose.yml run for real, in a real Docker engine, and checked.

Three Consul servers, the ledger and three replicas of the demo API (examples/), each with
consul-elect as PID 1. Against the real containers it checks: exactly one replica leads;
`docker-compose stop` of the leader (next leader within a second, exit code the command's);
`docker kill -s KILL` and `docker pause` of the leader (next leader within the documented worst
case; on unpause the old one stands down); a leader frozen whose command wakes first (its stale
entries are refused by the ledger's fencing-token check); PID 1 and zombies; a Consul server
stopped. It prints a table of what it measured and tears everything down, always.

Timings: TTL 3s, lock-delay 2s, grace 0.5s (CONSUL_ELECT_* given to docker-compose.yml, whose
servers accept TTLs down to 1 s). Where no engine can run, one line "skipped: ..." and exit 0.

Environment: CONSUL_IMAGE / PYTHON_IMAGE use these images instead of the ones built offline;
TEST_DOCKER_REF=<git ref> builds consul-elect from that commit instead of the working tree.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from engine import REPO, Engine, Skip, consul_image, python_base_image, run

PROJECT = "consul-elect-test"
KEY = "demo/leader"
# Short timings, so that a failover nothing releases takes seconds: the compose file's servers
# accept session TTLs down to 1 s. Grace 0.5 s fits the lease: min(3, 2) x 0.99 - 0.25 > 0.5.
TTL, LOCK_DELAY, GRACE = 3.0, 2.0, 0.5
TIMINGS = {"CONSUL_ELECT_TTL": f"{TTL:g}s", "CONSUL_ELECT_LOCK_DELAY": f"{LOCK_DELAY:g}s",
           "CONSUL_ELECT_GRACE": f"{GRACE:g}s"}
# When a leader's elector and watchdog vanish or freeze together nothing releases the key: the
# servers keep an unrenewed session up to 2 x TTL, then the lock-delay runs (README, "Worst case").
WORST_FAILOVER = 2 * TTL + LOCK_DELAY
# A graceful stop releases the key, which applies no lock-delay: the promise.
HANDOVER_LIMIT = 1.0
# After the Raft leader among the servers is stopped: one session must hold the key for a whole
# worst-case failover within this time. Measured: 12-16 s, the surviving follower forwarding to
# the lost leader's address until its own 10 s dial timeout, and sessions expiring meanwhile.
STABLE_LIMIT = 30.0
# Polling, scheduling and Docker's own latency on top of a documented bound.
SLACK = 3.0
POLL = 0.05  # seconds between two looks at the key: the measurements are this coarse
REPLICAS = {"api1": (8081, 8001), "api2": (8082, 8002), "api3": (8083, 8003)}  # status, API ports
SERVERS = ("consul1", "consul2", "consul3")
PUBLISHED = [8500, 8090, *(p for ports in REPLICAS.values() for p in ports)]
LEDGER = "http://127.0.0.1:8090"
EXIT_LINE = re.compile(r"demo-api \S+: SIGTERM: .*; exit (\d+)")


def say(text: str) -> None:
    print(f"test-docker: {text}", flush=True)


class CheckFailed(Exception):
    """A check against the containers did not hold; the message says what was seen."""


class Unreachable(Exception):
    """No Consul server answered."""


def get_json(url: str, timeout: float = 1.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        # As docker-proxy binds: connections of an earlier run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wall(iso: str) -> float:
    """consul-elect's timestamps (UTC, ms) as seconds since the epoch."""
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, bool]] = []
        self.durations: list[tuple[str, float]] = []

    def row(self, check: str, expected: str, measured: str, ok: bool = True) -> None:
        self.rows.append((check, expected, measured, ok))
        say(f"{'ok  ' if ok else 'FAIL'} {check}: {measured}")
        if not ok:
            raise CheckFailed(f"{check}: expected {expected}, measured {measured}")

    def timed(self, label: str, t0: float) -> None:
        self.durations.append((label, time.monotonic() - t0))

    def print(self) -> None:
        if self.rows:
            widths = [max(len(r[i]) for r in self.rows + [("check", "expected", "measured", True)]) for i in range(3)]
            line = "  ".join("{:<%d}" % w for w in widths) + "  {}"
            print()
            print(line.format("check", "expected", "measured", "ok"))
            print(line.format(*("-" * w for w in widths), "--"))
            for check, expected, measured, ok in self.rows:
                print(line.format(check, expected, measured, "ok" if ok else "FAIL"))
        if self.durations:
            print("\n" + ", ".join(f"{label} {seconds:.0f} s" for label, seconds in self.durations), flush=True)


class Project:
    """The compose project of docker-compose.yml with the test's images and timings."""

    def __init__(self, images: dict[str, str]) -> None:
        self.env = {**os.environ, **images, **TIMINGS, "COMPOSE_PROJECT_NAME": PROJECT}
        self.ids: dict[str, str] = {}
        self.stopped_pids: set[int] = set()
        self.teardown_seconds = 0.0

    def compose(self, *args: str, timeout: float = 600) -> str:
        return run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), *args],
                   env=self.env, cwd=REPO, timeout=timeout).stdout

    def __enter__(self) -> Project:
        self.compose("down", "--volumes", "--remove-orphans", "-t", "2")  # a run killed earlier
        # A project just removed may hold its ports for a moment (docker-proxy exiting).
        end = time.monotonic() + 10
        while busy := [port for port in PUBLISHED if not port_free(port)]:
            if time.monotonic() > end:
                raise CheckFailed(f"127.0.0.1:{busy[0]} is in use, and docker-compose.yml publishes it")
            time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        t0 = time.monotonic()
        for pid in self.stopped_pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        for cid in self.ids.values():
            subprocess.run(["docker", "unpause", cid], capture_output=True)
        self.compose("down", "--volumes", "--remove-orphans", "-t", "5")
        self.teardown_seconds = time.monotonic() - t0

    def up(self) -> None:
        self.compose("up", "-d", "--no-build")
        for service in (*SERVERS, "ledger", *REPLICAS):
            self.ids[service] = self.compose("ps", "-q", service).strip()

    def logs(self) -> str:
        return subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), "logs", "--no-color",
                               "--tail", "25"], env=self.env, cwd=REPO, capture_output=True, text=True).stdout

    def ip(self, service: str) -> str | None:
        out = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                              self.ids[service]], capture_output=True, text=True).stdout.strip()
        return out or None

    def docker(self, *args: str) -> str:
        return run(["docker", *args], timeout=120).stdout

    def event_time(self, service: str, action: str, since: float) -> float:
        """When the engine did *action* to the container (its own event log), in epoch seconds."""
        out = self.docker("events", "--since", f"{since:.3f}", "--until", f"{time.time() + 0.5:.3f}",
                          "--filter", f"container={self.ids[service]}", "--filter", f"event={action}",
                          "--format", "{{.TimeNano}}")
        stamps = [int(x) / 1e9 for x in out.split()]
        if not stamps:
            raise CheckFailed(f"no '{action}' event for {service} in the engine's log")
        return stamps[0]

    # -- what the candidates and Consul say -----------------------------------------------------

    def status(self, replica: str) -> dict | None:
        """consul-elect's /status in that replica, through its published port."""
        try:
            return get_json(f"http://127.0.0.1:{REPLICAS[replica][0]}/status")
        except (OSError, ValueError):
            return None

    def holder(self, strict: bool = False) -> dict | None:
        """The key's holder as Consul has it (any live server): identity + fencing token, or None;
        when no server answers, None too, or Unreachable if *strict*."""
        for server in SERVERS:
            ip = self.ip(server)
            if not ip:
                continue
            try:
                kv = get_json(f"http://{ip}:8500/v1/kv/{KEY}")[0]
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                continue
            except (OSError, ValueError):
                continue
            if not kv.get("Session"):
                return None
            return {**json.loads(base64.b64decode(kv["Value"])), "token": kv["ModifyIndex"]}
        if strict:
            raise Unreachable()
        return None

    def wait_leader(self, limit: float, other_than: str | None = None) -> dict:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            who = self.holder()
            if who and who["name"] != other_than:
                return who
            time.sleep(POLL)
        raise CheckFailed(f"no leader{f' other than {other_than}' if other_than else ''} within {limit:.1f} s")

    def wait_state(self, replica: str, states: tuple[str, ...], limit: float) -> dict:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            st = self.status(replica)
            if st and st["state"] in states:
                return st
            time.sleep(POLL)
        raise CheckFailed(f"{replica} not {'/'.join(states)} within {limit:.0f} s (last: {self.status(replica)})")

    def restart(self, replica: str) -> None:
        self.compose("start", replica)
        self.wait_state(replica, ("follower",), 30)

    def entries(self) -> list[dict]:
        return get_json(f"{LEDGER}/entries", timeout=5)

    def stale_entries(self, old: dict, new: dict) -> tuple[int, int]:
        """Entries the old leader sent after its successor's first accepted one: (accepted, refused)."""
        entries = self.entries()
        first_new = min((e["at"] for e in entries if e["token"] == new["token"] and e["accepted"]), default=None)
        if first_new is None:
            raise CheckFailed(f"the new leader {new['name']} wrote nothing to the ledger")
        late = [e for e in entries if e["writer"] == old["name"] and e["token"] == old["token"] and e["at"] > first_new]
        return sum(e["accepted"] for e in late), sum(not e["accepted"] for e in late)


# -- the checks ---------------------------------------------------------------------------------

def check_one_leader(p: Project, r: Report, up_at: float) -> None:
    leader = p.wait_leader(60)
    elected_after = wall(leader["since"]) - up_at
    end = time.monotonic() + 15
    while True:
        states = {name: p.status(name) for name in REPLICAS}
        leaders = [n for n, st in states.items() if st and st["is_leader"]]
        agree = all(st and (st["leader"] or {}).get("name") == leader["name"] for st in states.values())
        if leaders == [leader["name"]] and agree:
            break
        if time.monotonic() > end:
            r.row("one leader", "exactly 1 of 3, all agree", f"leading: {leaders}; statuses: {states}", False)
        time.sleep(POLL)
    served = {}
    for name, (_, api_port) in REPLICAS.items():
        try:
            served[name] = get_json(f"http://127.0.0.1:{api_port}/")
        except (OSError, ValueError):
            served[name] = None
    api = served[leader["name"]]
    ok = (api is not None and api["leader"] and api["fencing_token"] == leader["token"]
          and all(doc is None for name, doc in served.items() if name != leader["name"]))
    r.row("one leader", "exactly 1 of 3; only its API answers",
          f"{leader['name']} (token {leader['token']}) {elected_after:.1f} s after up; only its API answers", ok)


def proc_stats(p: Project, replica: str) -> list[tuple[int, str, str, int]]:
    """(pid, command name, state, parent pid) of every process in the replica's container."""
    out = p.docker("exec", p.ids[replica], "sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null")
    procs = []
    for line in out.splitlines():
        head, _, rest = line.rpartition(")")
        pid, _, comm = head.partition(" (")
        state, ppid = rest.split()[:2]
        procs.append((int(pid), comm, state, int(ppid)))
    return procs


# Long enough for `docker exec` to find the orphan alive on a loaded 2-core machine.
ORPHAN_LIFE = 3.0


def check_processes(p: Project, r: Report, when: str) -> None:
    """PID 1 is consul-elect, not root, and an orphan reparented to it is reaped."""
    uids, orphan_parents, zombies = set(), set(), {}
    for name in REPLICAS:
        cid = p.ids[name]
        argv = p.docker("exec", cid, "cat", "/proc/1/cmdline").split("\0")
        if not any(a.endswith("consul-elect") for a in argv):
            r.row(f"PID 1 ({when})", "consul-elect", f"{name}: {' '.join(argv)}", False)
        uids.add(p.docker("exec", cid, "grep", "^Uid:", "/proc/1/status").split()[1])
        # sh exits at once: its sleep is orphaned, reparented to PID 1, and must be reaped by it.
        p.docker("exec", cid, "sh", "-c", f"sleep {ORPHAN_LIFE:g} & exit 0")
        orphan_parents |= {ppid for _, comm, _, ppid in proc_stats(p, name) if comm == "sleep"}
    time.sleep(ORPHAN_LIFE + 0.5)
    for name in REPLICAS:
        zombies[name] = [(pid, comm) for pid, comm, state, _ in proc_stats(p, name) if state == "Z"]
    count = sum(len(z) for z in zombies.values())
    r.row(f"PID 1, zombies ({when})", "consul-elect, not root; orphans reaped",
          f"consul-elect (uid {', '.join(sorted(uids))}) in 3/3; orphans' parent: PID "
          f"{', '.join(map(str, sorted(orphan_parents)))}; {count} zombies" + (f": {zombies}" if count else ""),
          count == 0 and "0" not in uids and orphan_parents == {1})


def check_health(p: Project, r: Report) -> None:
    """The Dockerfile's HEALTHCHECK (GET /health every 10 s) reports each replica healthy."""
    t0 = time.monotonic()
    health = {}
    while time.monotonic() - t0 < 30:
        health = {name: p.docker("inspect", "-f", "{{.State.Health.Status}}", p.ids[name]).strip() for name in REPLICAS}
        if set(health.values()) == {"healthy"}:
            break
        time.sleep(1)
    r.row("HEALTHCHECK", "healthy in 3/3", ", ".join(f"{n} {h}" for n, h in health.items()),
          set(health.values()) == {"healthy"})


def check_stop(p: Project, r: Report, label: str = "docker-compose stop leader") -> None:
    old = p.wait_leader(5)
    t0 = time.time()
    p.compose("stop", old["name"])
    new = p.wait_leader(5, other_than=old["name"])
    handover = wall(new["since"]) - p.event_time(old["name"], "kill", t0 - 1)
    code = json.loads(p.docker("inspect", "-f", "{{json .State.ExitCode}}", p.ids[old["name"]]))
    said = EXIT_LINE.findall(subprocess.run(["docker", "logs", p.ids[old["name"]]], capture_output=True,
                                            text=True).stdout)
    command_code = int(said[-1]) if said else None
    r.row(label, f"next < {HANDOVER_LIMIT:.0f} s; exit = command's",
          f"{old['name']} -> {new['name']} in {handover:.2f} s; exit {code}, the command's {command_code}",
          handover < HANDOVER_LIMIT and code == command_code)
    p.restart(old["name"])


def check_kill(p: Project, r: Report) -> None:
    old = p.wait_leader(5)
    t0 = time.time()
    p.docker("kill", "-s", "KILL", p.ids[old["name"]])
    new = p.wait_leader(WORST_FAILOVER + SLACK + 5, other_than=old["name"])
    failover = wall(new["since"]) - p.event_time(old["name"], "kill", t0 - 1)
    r.row("docker kill -s KILL leader", f"next <= {WORST_FAILOVER:.0f} s (2 TTL + lock-delay)",
          f"{old['name']} -> {new['name']} in {failover:.2f} s", failover <= WORST_FAILOVER + SLACK)
    p.restart(old["name"])


def check_pause(p: Project, r: Report) -> None:
    old = p.wait_leader(5)
    t0 = time.time()
    p.docker("pause", p.ids[old["name"]])
    new = p.wait_leader(WORST_FAILOVER + SLACK + 5, other_than=old["name"])
    failover = wall(new["since"]) - p.event_time(old["name"], "pause", t0 - 1)
    r.row("docker pause leader", f"next <= {WORST_FAILOVER:.0f} s (2 TTL + lock-delay)",
          f"{old['name']} -> {new['name']} in {failover:.2f} s", failover <= WORST_FAILOVER + SLACK)
    time.sleep(1.0)  # the successor writes to the ledger before the old leader thaws
    t1 = time.time()
    p.docker("unpause", p.ids[old["name"]])
    st = p.wait_state(old["name"], ("follower",), 10)
    stood_down = wall(st["since"]) - p.event_time(old["name"], "unpause", t1 - 1)
    time.sleep(1.0)  # any entry the thawed command still sends reaches the ledger
    accepted, refused = p.stale_entries(old, new)
    r.row("docker unpause", "old stands down; stale entries refused",
          f"{old['name']} following after {stood_down:.2f} s; "
          + (f"stale entries {refused} refused, {accepted} accepted" if refused or accepted
             else "no stale entry sent (its command was killed first)"),
          accepted == 0)


def check_frozen_command_first(p: Project, r: Report) -> None:
    """The whole leader frozen past its lease, and its command thawed before consul-elect: the
    order a scheduler may pick after a pause. Only the ledger's fence stands between its writes
    and the data; `docker pause` cannot choose the order, SIGSTOP/SIGCONT from the host can."""
    if os.geteuid() != 0:
        r.row("frozen, command thawed first", "its stale entries refused",
              "not run: signalling the containers' processes needs root")
        return
    old = p.wait_leader(5)
    top = p.docker("top", p.ids[old["name"]], "-eo", "pid,args").splitlines()[1:]
    procs = {int(line.split(None, 1)[0]): line.split(None, 1)[1] for line in top}
    command = [pid for pid, args in procs.items() if "demo_api.py" in args and "consul-elect" not in args]
    if len(command) != 1:
        r.row("frozen, command thawed first", "one command process", f"processes: {procs}", False)
    for pid in procs:
        p.stopped_pids.add(pid)
        os.kill(pid, signal.SIGSTOP)
    new = p.wait_leader(WORST_FAILOVER + SLACK + 5, other_than=old["name"])
    time.sleep(1.0)  # the successor writes first
    os.kill(command[0], signal.SIGCONT)
    time.sleep(1.6)  # three entries' worth of stale writing
    for pid in procs:
        os.kill(pid, signal.SIGCONT)
    p.stopped_pids.clear()
    p.wait_state(old["name"], ("follower",), 10)
    accepted, refused = p.stale_entries(old, new)
    r.row("frozen, command thawed first", "its stale entries refused",
          f"{old['name']} (token {old['token']}) after {new['name']} ({new['token']}): "
          f"{refused} refused, {accepted} accepted; stood down", accepted == 0 and refused > 0)


def check_consul_server_stopped(p: Project, r: Report) -> None:
    """Stop the Raft leader among the servers, the hardest one to lose: no write succeeds until a
    new Raft leader is elected, and requests to or through the lost server hang until a timeout
    (consul-elect's, or the surviving servers' own dial to the old leader). With the test's 3 s
    TTL the leader may lose its lease; the election must go on, without two leaders at once."""
    raft_leader = None
    for server in SERVERS:
        try:
            address = get_json(f"http://{p.ip(server)}:8500/v1/status/leader")
        except (OSError, ValueError):
            continue
        raft_leader = next((s for s in SERVERS if address.startswith(f"{p.ip(s)}:")), None)
        break
    if raft_leader is None:
        r.row("Consul server stopped", "a Raft leader to stop", "none found", False)
    before = p.wait_leader(5)
    refused_before = get_json(LEDGER + "/")["rejected"]
    t0 = time.time()
    p.compose("stop", raft_leader)
    stopped_at = p.event_time(raft_leader, "kill", t0 - 1)
    # Follow the key until one session has held it for a whole worst-case failover.
    leaders, session, held_from = [before["name"]], before["session"], stopped_at
    end = time.monotonic() + STABLE_LIMIT
    while time.monotonic() < end:
        try:
            who = p.holder(strict=True)
        except Unreachable:
            time.sleep(POLL)
            continue
        now = time.time()
        if (who or {}).get("session") != session:
            session, held_from = (who or {}).get("session"), now
            if who:
                leaders.append(who["name"])
        if who and now - held_from >= WORST_FAILOVER:
            break
        time.sleep(POLL)
    stable = session is not None and time.time() - held_from >= WORST_FAILOVER
    refused = get_json(LEDGER + "/")["rejected"] - refused_before
    # No leader at work, whoever holds the key: the longest silence in the ledger (one entry per
    # 0.5 s while a leader runs).
    written = [stopped_at] + sorted(e["at"] for e in p.entries() if e["accepted"] and e["at"] > stopped_at)
    silence = max(b - a for a, b in zip(written, written[1:])) if len(written) > 1 else float("inf")
    r.row(f"Consul server stopped ({raft_leader}: Raft leader)",
          f"a stable leader within {STABLE_LIMIT:.0f} s; 0 entries refused",
          f"{' -> '.join(leaders)}, the last from +{held_from - stopped_at:.1f} s; no entry for "
          f"{silence:.1f} s; {refused} refused", stable and refused == 0)
    check_stop(p, r, label="then docker-compose stop leader")
    p.compose("start", raft_leader)


CHECK_ERRORS = (CheckFailed, subprocess.CalledProcessError, subprocess.TimeoutExpired)


def explain(e: Exception) -> None:
    detail = getattr(e, "stderr", None)
    say(f"FAILED: {e}" + (f"\n{detail.strip()}" if detail else ""))


def build_wheels(work: pathlib.Path) -> pathlib.Path:
    """The wheelhouse the Dockerfile installs from: build/wheels, from the tree or TEST_DOCKER_REF."""
    source = REPO
    ref = os.environ.get("TEST_DOCKER_REF")
    if ref:
        source = work / "source"
        source.mkdir()
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", ref], stdout=subprocess.PIPE)
        run(["tar", "-x", "-C", str(source)], stdin=archive.stdout)
        if archive.wait() != 0:
            raise CheckFailed(f"git archive {ref} failed")
    wheels = REPO / "build" / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(source)], timeout=600)
    return wheels


def exercise(project: Project, report: Report, work: pathlib.Path) -> None:
    """Build the image, bring the project up and run every check, in order."""
    t0 = time.monotonic()
    say(f"building the image from {os.environ.get('TEST_DOCKER_REF') or 'the working tree'}")
    build_wheels(work)
    project.compose("build", "api1")  # one image, consul-elect-demo, for all four
    report.timed("image build", t0)
    t0 = time.monotonic()
    say(f"docker-compose up ({', '.join(f'{k}={v}' for k, v in TIMINGS.items())})")
    up_at = time.time()
    project.up()
    check_one_leader(project, report, up_at)
    check_processes(project, report, "start")
    check_health(project, report)
    check_stop(project, report)
    check_kill(project, report)
    check_pause(project, report)
    check_frozen_command_first(project, report)
    check_consul_server_stopped(project, report)
    check_processes(project, report, "end")
    report.timed("checks", t0)


def main() -> int:
    # A CI timeout's SIGTERM must still run the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.monotonic()
    report = Report()
    work = pathlib.Path(tempfile.mkdtemp(prefix="consul-elect-test-docker-"))
    failed = None
    try:
        t0 = time.monotonic()
        with Engine(work, say) as engine:
            done = [f"installed {' '.join(engine.installed)}"] if engine.installed else []
            done += ["dockerd started"] if engine.started_daemon_in else []
            report.timed("engine" + (f" ({'; '.join(done)})" if done else ""), t0)
            t0 = time.monotonic()
            images = {"CONSUL_IMAGE": os.environ.get("CONSUL_IMAGE") or consul_image(say),
                      "PYTHON_IMAGE": os.environ.get("PYTHON_IMAGE") or python_base_image(say)}
            report.timed("base images", t0)
            project = Project(images)
            try:
                with project:
                    try:
                        exercise(project, report, work)
                    except CHECK_ERRORS as e:
                        failed = e
                        explain(e)
                        print(project.logs(), flush=True)  # before the containers are removed
            except CHECK_ERRORS as e:  # setting up or tearing down the project
                failed = e
                explain(e)
            report.durations.append(("teardown", project.teardown_seconds))
    except Skip as e:
        print(f"test-docker skipped: {e}")
        return 0
    except KeyboardInterrupt:
        print("test-docker: interrupted; the containers are removed", flush=True)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.timed("in all", t_start)
    report.print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
