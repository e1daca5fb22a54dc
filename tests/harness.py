"""Run real consul-elect candidates and check, from their children's records, that leaders never overlap."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEADER_CHILD = str(HERE / "leader_child.py")
# Short lease timings so the suite stays fast: B = min(3, 2) * 0.99 - 0.25 = 1.73 s, renewals
# every (1.73 - 0.5) / 3 = 0.41 s. The dev agent fixture sets session_ttl_min = 1s.
FAST = ["--ttl", "3s", "--lock-delay", "2s", "--grace", "0.5s"]


def wait_for(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LoggedProcess:
    """A process in its own session (so its whole tree can be killed), its output in a log file."""

    def __init__(self, name: str, log_path: Path, argv: list[str], env: dict) -> None:
        self.name = name
        self.log_path = log_path
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True, cwd=HERE.parent)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send_signal(self, signo: int) -> None:
        os.kill(self.proc.pid, signo)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Candidate(LoggedProcess):
    """One `consul-elect run` process."""

    def __init__(self, http_addr: str, key: str, name: str, workdir: Path, command: list[str],
                 options: list[str] | None = None, env: dict | None = None) -> None:
        argv = [sys.executable, "-m", "consul_elect", "run", "--key", key, "--name", name,
                *(FAST if options is None else options), "--", *command]
        # TMPDIR: the watchdog's lease-file folder lands in the test's own directory, so a
        # watchdog killed with SIGKILL leaves nothing behind in /tmp.
        env = {**os.environ, "CONSUL_HTTP_ADDR": http_addr, "TMPDIR": str(workdir), **(env or {})}
        env.pop("CONSUL_HTTP_TOKEN", None)
        super().__init__(name, workdir / f"{name}.log", argv, env)

    def descendants(self) -> list[int]:
        """Pids of the watchdog and the child (the whole tree below the elector)."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            found += [int(k) for k in kids]
            todo += [int(k) for k in kids]
        return found

    def cleanup(self) -> None:
        """Whatever happened, leave nothing running: the elector's group, its watchdog, its child."""
        if self.proc is None:
            return
        pids = self.descendants()
        for target in (lambda: os.killpg(self.proc.pid, signal.SIGKILL),
                       *[(lambda p=p: os.killpg(p, signal.SIGKILL)) for p in pids],
                       *[(lambda p=p: os.kill(p, signal.SIGKILL)) for p in pids]):
            try:
                target()
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


@dataclasses.dataclass
class Life:
    """One child's life as seen in the events file."""

    pid: int
    name: str
    token: int
    start: float
    end: float
    events: list[str]
    env: dict


def read_lives(path: Path) -> list[Life]:
    lives: dict[int, Life] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        parts = line.split(" ", 5)
        if len(parts) < 5:
            continue
        t, pid, name, token, event = float(parts[0]), int(parts[1]), parts[2], parts[3], parts[4]
        rest = parts[5] if len(parts) > 5 else ""
        if pid not in lives:
            env = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv) if event == "start" else {}
            lives[pid] = Life(pid, name, int(token) if token.isdigit() else -1, t, t, [], env)
        life = lives[pid]
        life.end = max(life.end, t)
        life.events.append(event if not rest or event == "start" else f"{event} {rest}")
    return sorted(lives.values(), key=lambda life: life.start)


def assert_no_overlap(path: Path, tokens_grow: bool = True) -> list[Life]:
    """No two children's [start, last record] intervals overlap, and fencing tokens grow."""
    lives = read_lives(path)
    for before, after in zip(lives, lives[1:]):
        assert after.start > before.end, (
            f"two leaders at once: {before.name} (pid {before.pid}) recorded until {before.end:.3f}, "
            f"{after.name} (pid {after.pid}) started at {after.start:.3f}")
        assert not tokens_grow or after.token > before.token, f"fencing token did not grow: {before.token} -> {after.token}"
    return lives


def assert_at_most(path: Path, holders: int) -> list[Life]:
    """Never more than *holders* children's [start, last record] intervals at one time (the
    overlap checker for --holders N; assert_no_overlap is the case N = 1)."""
    lives = read_lives(path)
    moments = sorted([(life.start, 1, life) for life in lives] + [(life.end, 0, life) for life in lives],
                     key=lambda m: (m[0], m[1]))  # at equal times an end comes before a start
    running: list[Life] = []
    for _, starting, life in moments:
        if starting:
            running.append(life)
            assert len(running) <= holders, (
                f"{len(running)} holders at once, more than {holders}: " + ", ".join(
                    f"{r.name} (pid {r.pid}, token {r.token}, {r.start:.3f}-{r.end:.3f})" for r in running))
        else:
            running.remove(life)
    return lives


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return False
