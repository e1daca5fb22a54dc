"""Transition hooks (--on-elected, --on-demoted): run beside the election, never in its way.

A hook is a shell command line, run with `/bin/sh -c` in a session of its own, stdin from
/dev/null, with the command's environment plus:

    CONSUL_ELECT_HOOK            on-elected | on-demoted
    CONSUL_ELECT_ROLE            leader | follower (the role just taken)
    CONSUL_ELECT_FENCING_TOKEN   the term that began (on-elected) or ended (on-demoted)

Each run has a thread of its own: the driver only starts it, so a slow hook never delays a
demotion, a stop or a release. Its output is logged line by line under its name. When its
process exits, whatever it left in its session is killed; a hook still running after
--hook-timeout is killed with its session. A hook that exits non-zero, is killed, or cannot
start is logged and counted (hook_failures, consul_elect_hook_failures_total), never fatal.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import Callable

from . import clock, supervisor
from .config import HOOK_LINE_LIMIT, HOOK_SHELL

log = logging.getLogger("consul_elect")

# While a hook runs, its thread looks for its exit (and reads its output) this often.
POLL = 0.05


class Hooks:
    def __init__(self, timeout: float, on_failure: Callable[[], None]) -> None:
        self.timeout = timeout
        self.on_failure = on_failure
        self._threads: list[threading.Thread] = []

    def start(self, name: str, command: str, env: dict[str, str]) -> None:
        """Run *command* as hook *name* in its own thread; return at once."""
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=self._run, args=(name, command, env, clock.now() + self.timeout),
                                  name=f"hook-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def wait(self) -> None:
        """On the way out: let running hooks finish; each ends by its own timeout."""
        for thread in self._threads:
            thread.join(self.timeout + 1.0)

    def _run(self, name: str, command: str, env: dict[str, str], deadline: float) -> None:
        read_fd, write_fd = os.pipe()
        try:
            pid = supervisor.spawn_awaited([HOOK_SHELL, "-c", command], env, write_fd)
        except OSError as e:
            os.close(read_fd)
            self._failed(f"hook {name} could not start: {HOOK_SHELL}: {e.strerror}")
            return
        finally:
            os.close(write_fd)
        output = _Lines(name)
        status, open_ = None, True
        try:
            while True:
                supervisor.reap_all()
                status = supervisor.exit_status(pid)
                now = clock.now()
                if status is not None or now >= deadline:
                    break
                if open_ and select.select([read_fd], [], [], min(POLL, deadline - now))[0]:
                    chunk = os.read(read_fd, 1 << 16)
                    open_ = bool(chunk)
                    output.feed(chunk)
                elif not open_:
                    select.select([], [], [], min(POLL, deadline - now))
            # Its process is done (or out of time): take what it wrote, then kill what it left.
            while open_ and select.select([read_fd], [], [], 0)[0]:
                chunk = os.read(read_fd, 1 << 16)
                open_ = bool(chunk)
                output.feed(chunk)
            output.flush()
        finally:
            os.close(read_fd)
            _kill_session(pid)
        if status is None:
            supervisor.forget(pid)
            self._failed(f"hook {name} did not finish within {self.timeout:g}s: killed")
        elif status != 0:
            self._failed(f"hook {name} exited with status {status}")
        else:
            log.debug("hook %s finished", name)

    def _failed(self, message: str) -> None:
        log.warning("%s", message)
        self.on_failure()


class _Lines:
    """A hook's output, logged a line at a time under its name (long lines cut)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            self._log(line)
        if len(self.pending) > HOOK_LINE_LIMIT:
            self._log(self.pending)
            self.pending = b""

    def flush(self) -> None:
        if self.pending:
            self._log(self.pending)
            self.pending = b""

    def _log(self, line: bytes) -> None:
        log.info("hook %s: %s", self.name, line[:HOOK_LINE_LIMIT].decode(errors="replace").rstrip("\r"))


def _kill_session(pid: int) -> None:
    """The hook ran as a session (and process group) leader: kill whatever is left of it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
