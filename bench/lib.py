"""Helpers for bench/run.py: the timing child, `consul lock` processes, a counting proxy, /proc readers.

The Consul agent and the consul-elect candidates come from tests/ (consul_servers.ConsulAgent,
harness.Candidate, harness.read_lives, harness.pid_alive); run.py puts tests/ on sys.path.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TESTS = REPO / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fault_proxy import FaultProxy  # noqa: E402
from harness import LoggedProcess, pid_alive  # noqa: E402

now = time.monotonic  # CLOCK_MONOTONIC on Linux: the same clock the children stamp with
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- bounded waiting


def poll_until(predicate, timeout: float, interval: float = 0.01):
    """predicate()'s first truthy value, or None once `timeout` seconds passed (never raises)."""
    end = now() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if now() >= end:
            return None
        time.sleep(interval)


# --------------------------------------------------------------------------- statistics


def percentile(values, q: float):
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# --------------------------------------------------------------------------- the timing child


class Child:
    """The leader command: argv(events, name, beat_ms) -> list[str].

    Prefers bench/stamp.c compiled with the system C compiler (its start record is stamped by
    the first statement of main, about 1 ms after exec); falls back to bench/stamp.py run with
    `python -S` (same output, but its start stamp is ~15-25 ms late: interpreter start-up).
    """

    def __init__(self, workdir: Path) -> None:
        self.kind = "python"
        self.path = str(BENCH / "stamp.py")
        self.note = "bench/stamp.py under python -S: start stamps include ~20 ms of interpreter start-up"
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc:
            out = workdir / "stamp"
            try:
                r = subprocess.run([cc, "-O2", "-o", str(out), str(BENCH / "stamp.c")], capture_output=True,
                                   timeout=60)
                if r.returncode == 0:
                    self.kind, self.path = "c", str(out)
                    self.note = "bench/stamp.c (compiled with cc): start stamped by main's first statement"
                else:
                    self.note += f" (cc failed: {r.stderr.decode(errors='replace').strip()[:200]})"
            except (OSError, subprocess.TimeoutExpired) as e:
                self.note += f" (cc failed: {e})"

    def argv(self, events: Path, name: str, beat_ms: int = 10) -> list[str]:
        base = [self.path] if self.kind == "c" else [sys.executable, "-S", self.path]
        return [*base, str(events), name, str(beat_ms)]

    def owns(self, pid: int) -> bool:
        """Is `pid` (still) one of our timing children? Guards every kill by pid against reuse."""
        try:
            return self.path in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False


class EventTail:
    """Incremental reader of a children's events file (format of tests/leader_child.py).

    Polling with harness.read_lives would re-parse the whole file every few ms and steal CPU
    from the processes being timed on a 2-core box; this reads only what was appended.
    Final figures are computed with harness.read_lives.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buf = b""
        self.lives: dict[int, dict] = {}
        self.by_name: dict[str, dict] = {}

    def poll(self) -> EventTail:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self
        self.offset += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            parts = raw.decode(errors="replace").split(" ", 5)
            if len(parts) < 5:
                continue
            t, pid, name, event = float(parts[0]), int(parts[1]), parts[2], parts[4]
            life = self.lives.get(pid)
            if life is None:
                life = self.lives[pid] = {"pid": pid, "name": name, "start": t, "end": t, "last": event}
                self.by_name.setdefault(name, life)
            life["end"] = max(life["end"], t)
            life["last"] = event
        return self

    def named(self, name: str) -> dict | None:
        return self.poll().by_name.get(name)

    def started_after(self, t: float) -> list[dict]:
        return sorted((lf for lf in self.poll().lives.values() if lf["start"] > t), key=lambda lf: lf["start"])


# --------------------------------------------------------------------------- `consul lock`


class LockHolder(LoggedProcess):
    """One `consul lock` process in its own session, with the interface of harness.Candidate.

    shell=False passes -shell=false (the child is exec'd directly, as consul-elect does);
    shell=True is consul lock's default: `$SHELL -c "<args joined>"`, with SHELL from `env`.
    """

    def __init__(self, consul_bin: str, http_addr: str, prefix: str, name: str, workdir: Path,
                 command: list[str], shell: bool = False, env: dict | None = None) -> None:
        argv = [consul_bin, "lock", f"-http-addr={http_addr}", f"-name={name}", "-verbose",
                *([] if shell else ["-shell=false"]), prefix, *command]
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        super().__init__(name, workdir / f"{name}.log", argv, {**clean_env, **(env or {})})

    def cleanup(self) -> None:
        """SIGKILL the whole group (consul lock and any child it left there, even after it died)."""
        if self.proc is None:
            return
        for signo in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.killpg(self.proc.pid, signo)  # the group id cannot be reused while members live
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._log:
            self._log.close()


# --------------------------------------------------------------------------- counting proxy


class CountingProxy(FaultProxy):
    """tests/fault_proxy.FaultProxy with no fault set, read as a request counter."""

    def between(self, t0: float, t1: float) -> list[tuple[float, str, str]]:
        """(arrival, method, path) of the requests that arrived in [t0, t1) (time.monotonic())."""
        return [(t, method, path) for t, method, path, _status in list(self.requests) if t0 <= t < t1]


def classify(method: str, path: str) -> str:
    if path.startswith("/v1/session/renew/"):
        return "session renew"
    if path.startswith("/v1/kv/"):
        return f"kv {method}"
    if path.startswith("/v1/session/"):
        return f"session {path.split('/')[3]}"
    return f"{method} {path}"


# --------------------------------------------------------------------------- /proc


def memory_kb(pid: int) -> dict | None:
    """Pss, Rss and Uss (Private_Clean + Private_Dirty) of a process from /proc/PID/smaps_rollup, in kB.

    Pss splits each shared page among the processes mapping it, so it depends on what else runs:
    the consul binary's text is shared with every consul agent on the machine, the Python
    interpreter's with every process of the same python.
    """
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    except OSError:
        return None
    return {"pss": fields.get("Pss"), "rss": fields.get("Rss"),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def resident_union_kb(pids) -> int | None:
    """Size of the union of the physical pages resident in `pids` (from /proc/PID/pagemap).

    That is what the processes cost together on a host where nothing else maps their files:
    their PSS sum if they were alone. Needs CAP_SYS_ADMIN to see page frame numbers (None
    otherwise). Pages are counted at the base page size.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    frames: set[int] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm:
                for line in maps:
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    if line.rstrip().endswith("[vsyscall]"):
                        continue
                    pm.seek(lo // page * 8)
                    data = pm.read((hi - lo) // page * 8)
                    for (entry,) in struct.iter_unpack("<Q", data):
                        if entry >> 63:  # present
                            pfn = entry & ((1 << 55) - 1)
                            if pfn == 0:
                                return None  # frame numbers hidden from us
                            frames.add(pfn)
        except (OSError, ValueError):
            return None
    return len(frames) * page // 1024


def sharing_exe(pid: int) -> int:
    """How many processes on the machine run the same executable as `pid` (itself included)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return 0
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.readlink(f"/proc/{entry}/exe") == exe
            except OSError:
                pass
    return count


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the whole process (all threads), in seconds (resolution 1/CLK_TCK)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except OSError:
        return None
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """Direct children of every thread of `pid`."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found += [int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return sorted(set(found))


# --------------------------------------------------------------------------- the machine


def machine(consul_bin: str) -> dict:
    try:
        version = subprocess.run([consul_bin, "version"], capture_output=True, text=True, timeout=20).stdout
        consul_version = version.splitlines()[0].strip() if version else "?"
    except (OSError, subprocess.TimeoutExpired) as e:
        consul_version = f"? ({e})"
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        rev = rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        rev = "?"
    try:
        from consul_elect import __version__ as ce_version
    except Exception:  # noqa: BLE001 - informational only
        ce_version = "?"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "consul": consul_version,
        "consul_elect": f"{ce_version} ({rev})",
        "loadavg_at_start": os.getloadavg(),
        "sh": os.path.realpath("/bin/sh"),
    }


def kill_owned(child: Child, pids) -> list[int]:
    """SIGKILL each pid (and its group) that is still one of our timing children; returns those killed."""
    killed = []
    for pid in pids:
        if pid_alive(pid) and child.owns(pid):
            for fn in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    fn()
                except OSError:
                    pass
            killed.append(pid)
    return killed
