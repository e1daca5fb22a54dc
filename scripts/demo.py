#!/usr/bin/env python3
"""`make demo`: a Consul dev agent on loopback, the fenced ledger, and three candidates running the
demo API (examples/) under consul-elect; then failovers, watched live.

On a terminal it shows a live view: each candidate's state, the leader and its fencing token, the
ledger, and each failover's time; keys: k (kill -9 the leader's consul-elect), f (freeze the whole
leader, then thaw its command first), t (SIGTERM: a graceful handover), q (quit).
Without a terminal, or with ROUNDS=N, it runs N failovers (3 by default: SIGTERM, kill -9,
freeze) without asking, prints a summary, and exits 0. Either way it ends with `consul-elect
status` and one GET /status.

Everything it starts runs in its own session and is stopped on the way out, even on Ctrl-C.
Only consul-elect's public interface is used: its command line, its HTTP status endpoints, and
the identity it writes into the key.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
import urllib.request

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

REPO = pathlib.Path(__file__).resolve().parents[1]
KEY = "demo/leader"
NAMES = ("alpha", "bravo", "charlie")
# Short timings so that even the slow failover takes seconds; the dev agent accepts TTLs down to
# 1 s. Grace 0.5 s fits the lease: min(3, 2) x 0.99 - 0.25 > 0.5.
TTL, LOCK_DELAY, GRACE = 3, 2, 0.5
TIMINGS = ("--ttl", f"{TTL}s", "--lock-delay", f"{LOCK_DELAY}s", "--grace", f"{GRACE}s")
# A frozen leader releases nothing: the servers keep its session up to 2 x TTL, then the
# lock-delay runs (README, "Worst case").
WORST_FAILOVER = 2 * TTL + LOCK_DELAY
KINDS = ("terminate", "kill", "freeze")  # the order of the rounds without a terminal
TITLES = {"terminate": "SIGTERM", "kill": "kill -9", "freeze": "freeze"}
KEYS = {"k": "kill", "f": "freeze", "t": "terminate"}
REFRESH = 0.25  # seconds between two looks at the candidates


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 0.5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def wall(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def session_members(sid: int) -> list[int]:
    """Every process in session *sid*: a candidate, its watchdog and its command (in its own group)."""
    members = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[3]) == sid:
            members.append(int(entry.name))
    return members


def signal_all(pids: list[int], signo: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signo)
        except ProcessLookupError:
            pass


@dataclasses.dataclass
class Candidate:
    name: str
    process: subprocess.Popen
    status_port: int
    api_port: int
    frozen: bool = False


@dataclasses.dataclass
class Failover:
    kind: str
    old: str
    new: str
    seconds: float
    token: int
    note: str = ""


class Demo:
    def __init__(self, consul_bin: str, work: pathlib.Path) -> None:
        self.consul_bin = consul_bin
        self.work = work
        self.http = f"127.0.0.1:{free_port()}"
        self.ledger_url = f"http://127.0.0.1:{free_port()}"
        self.services: list[subprocess.Popen] = []  # the agent and the ledger
        self.candidates: dict[str, Candidate] = {}
        self.sessions: set[int] = set()  # of every candidate ever started, for the clean-up
        self.failovers: list[Failover] = []
        self.events: list[str] = []
        self.lock = threading.Lock()
        self.closed = False  # set by stop(): a failover still running must not start anything

    def event(self, text: str) -> None:
        with self.lock:
            self.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    # -- start and stop ---------------------------------------------------------------------------

    def start(self) -> None:
        port = int(self.http.split(":")[1])
        self.services.append(self._spawn("consul.log", [
            self.consul_bin, "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", f"-http-port={port}",
            "-dns-port=-1", "-grpc-port=-1", f"-serf-lan-port={free_port()}", f"-serf-wan-port={free_port()}",
            f"-server-port={free_port()}", "-hcl", 'session_ttl_min = "1s"']))
        self.services.append(self._spawn("ledger.log", [sys.executable, str(REPO / "examples" / "fenced_ledger.py")],
                                         LEDGER_PORT=self.ledger_url.rsplit(":", 1)[1]))
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                if get_json(f"http://{self.http}/v1/status/leader", timeout=1):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        time.sleep(0.5)  # the dev node registers itself just after it becomes leader
        for name in NAMES:
            self.spawn(name)

    def _spawn(self, log: str, argv: list[str], **env: str) -> subprocess.Popen:
        with open(self.work / log, "ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **env}, start_new_session=True)

    def spawn(self, name: str) -> None:
        status_port, api_port = free_port(), free_port()
        with self.lock:
            if self.closed:
                return
            process = self._spawn(f"{name}.log", [
                sys.executable, "-m", "consul_elect", "run", "--key", KEY, "--name", name, *TIMINGS,
                "--port", str(status_port), "--bind", "127.0.0.1", "--",
                sys.executable, str(REPO / "examples" / "demo_api.py")],
                CONSUL_HTTP_ADDR=self.http, DEMO_API_PORT=str(api_port), DEMO_LEDGER_URL=self.ledger_url)
            self.sessions.add(process.pid)
            self.candidates[name] = Candidate(name, process, status_port, api_port)

    def stop(self) -> None:
        """Thaw, stop gracefully, then kill whatever is left of every session started."""
        with self.lock:
            self.closed = True
            candidates = list(self.candidates.values())
        for sid in self.sessions:
            signal_all(session_members(sid), signal.SIGCONT)
        for candidate in candidates:
            if candidate.process.poll() is None:
                candidate.process.terminate()
        end = time.monotonic() + 3
        for candidate in candidates:
            try:
                candidate.process.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for sid in self.sessions:
            signal_all(session_members(sid), signal.SIGKILL)
        for candidate in candidates:
            candidate.process.wait()
        for service in reversed(self.services):
            service.terminate()
            try:
                service.wait(5)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()

    # -- what Consul and the candidates say ---------------------------------------------------------

    def leader(self) -> dict | None:
        """The key's holder, from Consul: the identity consul-elect wrote, and the fencing token."""
        try:
            kv = get_json(f"http://{self.http}/v1/kv/{KEY}")[0]
        except (OSError, ValueError):
            return None
        if not kv.get("Session"):
            return None
        return {**json.loads(base64.b64decode(kv["Value"])), "token": kv["ModifyIndex"]}

    def wait_leader(self, other_than: str | None = None, limit: float = 20) -> dict:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            who = self.leader()
            if who and who["name"] != other_than:
                return who
            time.sleep(0.05)
        raise RuntimeError(f"no leader other than {other_than} within {limit:.0f} s")

    def status(self, candidate: Candidate) -> dict | None:
        if candidate.frozen or candidate.process.poll() is not None:
            return None
        try:
            return get_json(f"http://127.0.0.1:{candidate.status_port}/status", timeout=0.3)
        except (OSError, ValueError):
            return None

    def ledger(self) -> dict | None:
        try:
            return get_json(self.ledger_url + "/")
        except (OSError, ValueError):
            return None

    # -- failovers --------------------------------------------------------------------------------

    def fail_over(self, kind: str) -> Failover:
        old = self.wait_leader()
        candidate = self.candidates[old["name"]]
        pid = candidate.process.pid
        t0 = time.time()
        if kind == "terminate":
            self.event(f"SIGTERM to {old['name']}'s consul-elect (pid {pid}): a graceful handover")
            candidate.process.terminate()
        elif kind == "kill":
            self.event(f"kill -9 of {old['name']}'s consul-elect (pid {pid}): its watchdog stops the "
                       "command and releases")
            candidate.process.kill()
        else:
            members = session_members(pid)
            self.event(f"freezing {old['name']} whole (SIGSTOP to consul-elect, watchdog, command): nothing "
                       f"on its side can release, up to 2 TTL + lock-delay = {WORST_FAILOVER} s")
            candidate.frozen = True
            signal_all(members, signal.SIGSTOP)
        new = self.wait_leader(other_than=old["name"])
        seconds = wall(new["since"]) - t0
        self.event(f"{new['name']} leads after {seconds:.2f} s (fencing token {new['token']})")
        if kind == "terminate":
            note = f"{old['name']} exited {candidate.process.wait(10)}: its command's status"
        elif kind == "kill":
            candidate.process.wait(10)
            note = "its watchdog released the key"
        else:
            note = self._thaw(old, new, candidate, members)
        failover = Failover(kind, old["name"], new["name"], seconds, new["token"], note)
        with self.lock:
            self.failovers.append(failover)
        if candidate.process.poll() is not None:
            self.spawn(old["name"])  # three candidates again for the next round
            self.event(f"{old['name']} started again: it campaigns and follows")
        return failover

    def _thaw(self, old: dict, new: dict, candidate: Candidate, members: list[int]) -> str:
        """Thaw the frozen leader's command first (as a scheduler may) so that it writes with its
        old token once its successor has written, then its consul-elect and watchdog."""
        command = [pid for pid in members if self._is_command(pid)]
        time.sleep(1.0)  # the new leader writes first
        self.event(f"thawing {old['name']}'s command first: it writes with token {old['token']}")
        signal_all(command, signal.SIGCONT)
        time.sleep(1.6)
        signal_all(members, signal.SIGCONT)
        candidate.frozen = False
        self.event(f"thawing {old['name']}'s consul-elect and watchdog: its lease has run out")
        end = time.monotonic() + 10
        while time.monotonic() < end and (self.status(candidate) or {}).get("state") != "follower":
            time.sleep(0.1)
        entries = get_json(self.ledger_url + "/entries")
        first_new = min((e["at"] for e in entries if e["token"] == new["token"] and e["accepted"]), default=0)
        late = [e for e in entries if e["writer"] == old["name"] and e["token"] == old["token"] and e["at"] > first_new]
        refused = sum(not e["accepted"] for e in late)
        accepted = len(late) - refused
        self.event(f"{old['name']} stood down; the ledger refused {refused} stale entries, accepted {accepted}")
        return f"{old['name']}'s stale entries: {refused} refused, {accepted} accepted"

    @staticmethod
    def _is_command(pid: int) -> bool:
        """The demo API itself, not consul-elect or its watchdog (whose argv names it too)."""
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return any(a.endswith(b"demo_api.py") for a in argv) and b"consul_elect" not in argv

    # -- views ------------------------------------------------------------------------------------

    def candidates_table(self) -> Table:
        table = Table(title=f"consul-elect run --key {KEY} {' '.join(TIMINGS)}", title_justify="left")
        for column in ("candidate", "state", "fencing token", "lease left", "pid", "status / API port"):
            table.add_column(column)
        with self.lock:
            candidates = list(self.candidates.values())
        for c in candidates:
            st = self.status(c)
            if c.frozen:
                state = Text("frozen (SIGSTOP)", style="bold cyan")
            elif c.process.poll() is not None:
                state = Text(f"exited {c.process.returncode}", style="dim")
            elif st is None:
                state = Text("starting", style="dim")
            else:
                state = Text(("★ " if st["is_leader"] else "") + st["state"],
                             style="bold green" if st["is_leader"] else "")
            lease = st.get("lease_deadline_in") if st else None
            table.add_row(c.name, state, str(st["fencing_token"]) if st and st["fencing_token"] else "",
                          f"{lease:.1f} s" if lease is not None else "", str(c.process.pid),
                          f"{c.status_port} / {c.api_port}")
        return table

    def failovers_table(self, title: str | None = "failovers") -> Table:
        table = Table(title=title, title_justify="left")
        for column in ("#", "how", "from", "to", "new leader after", "token", "notes"):
            table.add_column(column)
        with self.lock:
            failovers = list(self.failovers)
        for i, f in enumerate(failovers, 1):
            table.add_row(str(i), TITLES[f.kind], f.old, f.new, f"{f.seconds:.2f} s", str(f.token), f.note)
        return table

    def view(self, busy: str | None) -> Group:
        ledger = self.ledger()
        ledger_line = (Text(f"ledger: {ledger['count']} entries accepted, highest token {ledger['highest_token']}, "
                            f"{ledger['rejected']} stale entries refused") if ledger else Text("ledger: -"))
        with self.lock:
            events = self.events[-6:]
        keys = Text.assemble(("k", "bold"), " kill -9 the leader's consul-elect   ", ("f", "bold"),
                             " freeze the whole leader   ", ("t", "bold"), " SIGTERM   ", ("q", "bold"), " quit")
        return Group(self.candidates_table(), ledger_line, Text(""), self.failovers_table(),
                     Text("\n".join(events), style="dim"),
                     Text(f"busy: {busy} ...", style="yellow") if busy else keys)


def interactive(demo: Demo, console: Console) -> None:
    busy: list[str] = []

    def act(kind: str) -> None:
        try:
            demo.fail_over(kind)
        except Exception as e:  # shown in the view; the demo goes on
            demo.event(f"{TITLES[kind]} failed: {e}")
        finally:
            busy.clear()

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)  # keys without Enter; Ctrl-C still interrupts
    try:
        with Live(demo.view(None), console=console, screen=True, auto_refresh=False) as live:
            while True:
                ready, _, _ = select.select([fd], [], [], REFRESH)
                keys = os.read(fd, 64).decode(errors="ignore").lower() if ready else ""
                if "q" in keys:
                    break
                kind = next((KEYS[k] for k in keys if k in KEYS), None)
                if kind and not busy:
                    busy.append(TITLES[kind])
                    threading.Thread(target=act, args=(kind,), daemon=True).start()
                live.update(demo.view(busy[0] if busy else None), refresh=True)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def rounds(demo: Demo, count: int) -> None:
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        who = demo.wait_leader()
        print(f"\n== round {i + 1}/{count}: {TITLES[kind]}, {who['name']} leading (fencing token {who['token']})",
              flush=True)
        shown = len(demo.events)
        failover = demo.fail_over(kind)
        for line in demo.events[shown:]:
            print(f"   {line}", flush=True)
        print(f"-> {failover.new} leads after {failover.seconds:.2f} s; {failover.note}", flush=True)
        time.sleep(1.5)  # let the new leader write a few entries


def epilogue(demo: Demo, console: Console) -> None:
    """What a newcomer can look at next: the summary, `consul-elect status`, and one GET /status."""
    console.print("summary")  # not as the table's title, which rich pads with spaces
    console.print(demo.failovers_table(title=None))
    ledger = demo.ledger()
    if ledger:
        console.print(f"ledger: {ledger['count']} entries accepted, highest token {ledger['highest_token']}, "
                      f"{ledger['rejected']} stale entries refused")
    console.print(f"\n$ consul-elect status --key {KEY} --http-addr {demo.http}")
    result = subprocess.run([sys.executable, "-m", "consul_elect", "status", "--key", KEY, "--http-addr", demo.http],
                            capture_output=True, text=True, timeout=30)
    print(result.stdout + result.stderr, end="", flush=True)
    leader = demo.leader()
    if leader:
        port = demo.candidates[leader["name"]].status_port
        console.print(f"\n$ curl -s 127.0.0.1:{port}/status")
        if shutil.which("curl"):
            print(subprocess.run(["curl", "-s", f"127.0.0.1:{port}/status"], capture_output=True, text=True,
                                 timeout=10).stdout.strip(), flush=True)
        else:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
                print(r.read().decode().strip(), flush=True)


def main() -> int:
    consul = os.environ.get("CONSUL_BIN") or "consul"
    rounds_wanted = os.environ.get("ROUNDS")
    on_terminal = sys.stdin.isatty() and sys.stdout.isatty() and not rounds_wanted
    # Without a terminal rich would wrap the summary at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    work = pathlib.Path(tempfile.mkdtemp(prefix="consul-elect-demo-"))
    failed = False
    demo = Demo(consul, work)
    # Ctrl-C is KeyboardInterrupt; make a SIGTERM to the demo leave through the same clean-up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        print(f"== Consul dev agent on {demo.http}, the ledger on {demo.ledger_url}, three candidates "
              f"running examples/demo_api.py ({' '.join(TIMINGS)}); logs in {work} (kept only if the demo fails)",
              flush=True)
        demo.start()
        first = demo.wait_leader()
        demo.event(f"{first['name']} leads (fencing token {first['token']})")
        if on_terminal:
            interactive(demo, console)
        else:
            print(f"== {first['name']} leads (fencing token {first['token']})", flush=True)
            time.sleep(1.5)
            rounds(demo, int(rounds_wanted or len(KINDS)))
        print()
        epilogue(demo, console)
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception:
        failed = True
        raise
    finally:
        demo.stop()
        if failed:
            print(f"== the logs are kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
        print("== stopped everything the demo started", flush=True)


if __name__ == "__main__":
    sys.exit(main())
