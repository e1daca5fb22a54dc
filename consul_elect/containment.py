"""Everything a command run may leave behind, and how to be sure it is gone.

A command's processes can escape its process group (a daemon calls setsid) and outlive their
parent (orphans). Three nets catch them, strongest first:
- a cgroup of its own (Linux, where one can be made: cgroup v2 `cgroup.kill` is one atomic
  kill of every member; cgroup v1 `pids` or `freezer` lists them); the command joins it just
  before exec, so it and everything it forks stay inside whatever they do;
- its process group;
- the orphans re-parented to a child subreaper (the watchdog, and the elector behind it):
  killing one orphan may orphan its own children, so the sweep repeats until nothing is left.

A process that exists but cannot be signalled (EPERM: another user's, e.g. a setuid helper)
is alive: nothing here ever reports such a run as gone.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from . import clock

# While waiting for killed processes to disappear, look again this often.
POLL = 0.01
_CGROUP_V2_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
# cgroup v1 hierarchies whose cgroup.procs lists a group's members; any one will do.
_CGROUP_V1_CONTROLLERS = ("pids", "freezer", "cpu,cpuacct", "cpu", "memory")


def make_cgroup(name: str) -> str | None:
    """Create a cgroup named *name* beside this process's own; None where none can be made."""
    for path in _candidate_parents():
        target = os.path.join(path, name)
        try:
            os.mkdir(target)
        except FileExistsError:
            return target
        except OSError:
            continue
        if os.access(os.path.join(target, "cgroup.procs"), os.W_OK):
            return target
        remove_cgroup(target)
    return None


def find_cgroup(name: str) -> str | None:
    """The cgroup *name* made by make_cgroup (in this process's own cgroup), if it exists."""
    for path in _candidate_parents():
        if os.path.isdir(os.path.join(path, name)):
            return os.path.join(path, name)
    return None


def _candidate_parents() -> list[str]:
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    own = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        own[controllers] = path
    parents = []
    if "" in own:  # cgroup v2 (or the v2 part of a hybrid setup)
        for root in _CGROUP_V2_ROOTS:
            if os.path.exists(os.path.join(root, "cgroup.kill")) or os.path.exists(os.path.join(root, "cgroup.procs")):
                parents.append(root.rstrip("/") + own[""].rstrip("/"))
    for controller in _CGROUP_V1_CONTROLLERS:
        if controller in own:
            parents.append(os.path.join("/sys/fs/cgroup", controller) + own[controller].rstrip("/"))
    return [p for p in parents if os.path.isdir(p)]


def join_cgroup(path: str | None) -> None:
    """Move the calling process into *path* (called by the command just before exec)."""
    if path is None:
        return
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write("0")
    except OSError:
        pass  # the other nets still hold


def remove_cgroup(path: str | None) -> None:
    if path is not None:
        try:
            os.rmdir(path)
        except OSError:
            pass


class Containment:
    """One command run: its process group, its cgroup, and the orphans adopted by *reapers*."""

    def __init__(self, pgid: int | None, cgroup: str | None, reapers: tuple[int, ...], spare: frozenset = frozenset()):
        self.pgid = pgid
        self.cgroup = cgroup
        self.reapers = reapers
        self.spare = spare  # pids that are not the command's (the prepared child, the watchdog)

    def members(self) -> set[int]:
        """Pids of the run still alive (zombies are dead); -1 stands for "some we cannot list"."""
        found = set(_cgroup_procs(self.cgroup))
        for reaper in self.reapers:
            found |= set(_children(reaper))
        # The cheap test first: only a group that still exists is worth a scan of /proc.
        if self.pgid is not None and _group_exists(self.pgid):
            in_group = _group_members(self.pgid)
            found |= in_group if in_group is not None else {-1}
        return {p for p in found - self.spare if p == -1 or not _is_zombie(p)}

    def kill(self) -> None:
        """SIGKILL everything of the run we can see (EPERM is left for members() to report)."""
        if self.pgid is not None:
            _signal_group(self.pgid, signal.SIGKILL)
        if self.cgroup is not None and not _write(os.path.join(self.cgroup, "cgroup.kill"), "1"):
            for pid in _cgroup_procs(self.cgroup):
                _signal(pid, signal.SIGKILL)
        for reaper in self.reapers:
            for pid in _children(reaper):
                if pid not in self.spare:
                    _signal(pid, signal.SIGKILL)

    def kill_and_wait(self, limit: float, reap=None) -> tuple[bool, tuple[int, ...]]:
        """Kill until nothing is left or *limit* seconds pass: (confirmed, survivors).

        Killing an orphan can orphan its children, so each pass kills what appeared since the
        last; *reap* (the reaper's own waitpid sweep) lets zombies go.
        """
        end = clock.now() + limit
        while True:
            self.kill()
            if reap is not None:
                reap()
            left = self.members()
            if not left:
                return True, ()
            if clock.now() >= end:
                return False, tuple(sorted(left))
            time.sleep(POLL)


def signal_group(pgid: int, signo: int) -> bool:
    """Send *signo* to the group; False when no member exists or none may be signalled."""
    return _signal_group(pgid, signo)


def _signal_group(pgid: int, signo: int) -> bool:
    try:
        os.killpg(pgid, signo)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _signal(pid: int, signo: int) -> None:
    try:
        os.kill(pid, signo)
    except OSError:
        pass


def _group_exists(pgid: int) -> bool:
    """EPERM means a member exists that we may not signal: alive (kill(2))."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _group_members(pgid: int) -> set[int] | None:
    """Pids whose process group is *pgid*, from /proc; None where /proc cannot tell."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members = set()
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None and stat[2] == pgid:
            members.add(int(entry))
    return members


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of *pid*, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def _is_zombie(pid: int) -> bool:
    stat = _stat(pid)
    if stat is not None:
        return stat[0] in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _cgroup_procs(path: str | None) -> list[int]:
    if path is None:
        return []
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.EROFS):
            raise
        return False
