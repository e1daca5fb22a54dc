"""Process primitives for the child: spawn in its own group, signal the group, decode exit statuses.

Used inside the watchdog process, which is the child's parent; and in the elector for the hooks
(spawn_awaited), whose statuses reap_all hands out, since it is the one place that reaps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import select
import signal
import stat
import sys
import threading

from . import clock, trace
from .containment import join_cgroup
from .errors import CommandNotExecutable, CommandNotFound
from .signals import CHILD_RESET

EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = None
# waitpid(-1) collects every child's status, whoever started it (CONSUL-NOTES "Processes"), so
# reap_all is the only reaper; it keeps the statuses of processes someone awaits (the hooks),
# and the lock makes "spawn, then register" atomic against it.
_reaping = threading.Lock()
_awaited: dict[int, int | None] = {}


def _prctl(option: int, arg: int) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc.prctl(option, arg, 0, 0, 0) == 0


def set_parent_death_signal(signo: int) -> bool:
    """Ask the kernel to send *signo* to this process when the thread that forked it dies."""
    return _prctl(_PR_SET_PDEATHSIG, signo)


def become_subreaper() -> bool:
    """Orphaned descendants of the child are re-parented to us, so we can reap and stop them."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def weaker_protections() -> list[str]:
    """What this platform lacks of the Linux protections, said once at start-up."""
    missing = []
    if not sys.platform.startswith("linux"):
        missing.append("no PR_SET_PDEATHSIG: if the watchdog process itself is killed, the command survives it")
        missing.append("no child subreaper: the command's orphans are not reaped or stopped by the watchdog")
    if not clock.HAVE_BOOTTIME:
        missing.append(f"lease clock is {clock.CLOCK_NAME}, which stops during suspend: a suspended leader "
                       "can overrun its lease")
    return missing


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128 + N for death by signal N."""
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def catches_signal(pid: int, signo: int) -> bool:
    """Has *pid* installed a handler for *signo*? (Linux: SigCgt in /proc; elsewhere, assume so.)

    A role signal sent before the command installed its handler would kill it (the default
    action of SIGUSR1 and SIGUSR2 is to terminate); a command that never handles it reads the
    role file instead.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signo - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


def check_command(argv: tuple[str, ...], env_path: str | None) -> None:
    """Fail before campaigning when the command cannot possibly start."""
    try:
        exec_target(argv[0], env_path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise CommandNotFound(f"command not found: {argv[0]}") from None
        raise CommandNotExecutable(f"command not executable: {e.filename} ({e.strerror})") from None


# The prepared child waits as this shell, not as a fork of the watchdog: an exec from a 30 MB
# Python process must first unmap it, and reaches the command's first instruction ~1.5 ms later
# than an exec from a shell (measured here: 2.6 vs 1.2 ms), on every handover's path.
SHELL_WAITER = "/bin/sh"
# It reads its orders from a pipe on a free fd N in 3..9 (a shell names only one-digit fds), written
# in one piece, then closed: exports, then the go word. A pipe closed without one (cancel) runs
# nothing. Fd N is closed for the command.
_WAITER_SCRIPT = ('unset _consul_elect_go; . /proc/self/fd/{fd}; [ "$_consul_elect_go" = 1 ] || exit 0; '
                  'unset _consul_elect_go; exec "$@" {fd}<&-')
_GO = "_consul_elect_go=1\n"
# Only dash is known to pass the environment on as it got it, but for these (it resets them,
# and drops any name that is not an identifier): with any of them set, or another shell as
# /bin/sh (bash adds SHLVL, drops `_`, rewrites LINENO, obeys SHELLOPTS), the command is
# exec'd from Python.
_SHELL_SETS = frozenset({"IFS", "OPTIND", "PPID", "_consul_elect_go"})
_KNOWN_SHELLS = frozenset({"dash"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_shell_failed = False  # the waiter could not be exec'd once: the Python path from then on
# Executable formats the kernel runs itself; a shell would run anything else as a script where
# exec(2) fails with ENOEXEC, so those go the Python way and fail (or run) exactly as before.
_EXEC_MAGIC = (b"#!", b"\x7fELF")


def _shell_passes_on(environ: dict[str, str]) -> bool:
    """Does the environment reach the command unchanged through the shell waiter? (PWD, which
    the shell sets too, is put back by the orders; see _orders.)"""
    if _shell_failed or "PATH" not in environ or not os.access(SHELL_WAITER, os.X_OK):
        return False
    if os.path.basename(os.path.realpath(SHELL_WAITER)) not in _KNOWN_SHELLS:
        return False
    if not os.path.isdir("/proc/self/fd"):
        return False
    return not (_SHELL_SETS & environ.keys()) and all(_IDENTIFIER.match(name) for name in environ)


def _quoted(value: str) -> bytes:
    return b"'" + os.fsencode(value).replace(b"'", b"'\\''") + b"'"


def _orders(extra_env: dict[str, str]) -> bytes:
    lines = [b"export " + name.encode() + b"=" + _quoted(value) for name, value in extra_env.items()]
    # The shell set PWD to its own idea of the directory: give the command ours.
    pwd = os.environ.get("PWD")
    lines.append(b"export PWD=" + _quoted(pwd) if pwd is not None else b"unset PWD")
    return b"\n".join(lines) + b"\n" + _GO.encode()


def exec_target(prog: str, path: str | None) -> str:
    """The file exec would run for *prog* (a PATH search unless it has a slash); OSError as
    execvp would fail (ENOENT: nothing there; EACCES: found, but not an executable file)."""
    if "/" in prog:
        candidates = [prog]
    else:
        candidates = [os.path.join(d or ".", prog) for d in (path or os.defpath).split(os.pathsep)]
    failure, named = errno.ENOENT, prog
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR) and failure == errno.ENOENT:
                failure, named = e.errno, candidate  # EACCES, ELOOP, ...: exec fails so (126)
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        if failure == errno.ENOENT:
            failure, named = errno.EACCES, candidate
    raise OSError(failure, os.strerror(failure), named)


def _kernel_runs(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4).startswith(_EXEC_MAGIC)
    except OSError:
        return False


class PreparedChild:
    """A forked process, already in its own group and set up, waiting to exec the command.

    Forking a 30 MB Python process and preparing the child costs about 5 ms; done in advance,
    the failover path only pays for a pipe write and an exec. Create it from a single-threaded
    process: PR_SET_PDEATHSIG follows the forking thread.

    It waits as the shell waiter where the environment passes through a shell unchanged
    (_shell_passes_on), as the fork itself otherwise.
    """

    def __init__(self, argv: list[str], cgroup: str | None = None, shell: bool = True) -> None:
        self.argv = argv
        self.cgroup = cgroup
        self.order_fd = _free_order_fd() if shell and _shell_passes_on(os.environ) else None
        self.shell = self.order_fd is not None
        parent = os.getpid()
        go_r, self._go_w = os.pipe()
        self._err_r, err_w = os.pipe()  # close-on-exec by default: EOF means exec succeeded
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self._go_w)
                os.close(self._err_r)
                _become_child(parent)
                # Joined now, off the failover path: moving a process into a cgroup costs 5-15 ms
                # (measured here), about as much as the rest of a handover.
                join_cgroup(cgroup)
                if self.shell:
                    _exec_waiter(go_r, err_w, argv, self.order_fd)
                with os.fdopen(go_r, "rb") as go:
                    order = go.read()
                if not order:
                    os._exit(0)  # cancelled
                trace.mark("prepared child: exec")
                os.execvpe(argv[0], argv, {**os.environ, **json.loads(order)})
            except OSError as e:
                os.write(err_w, str(e.errno).encode())
            finally:
                os._exit(EXIT_NOT_FOUND)
        os.close(go_r)
        os.close(err_w)
        try:
            os.setpgid(self.pid, self.pid)
        except OSError:
            pass  # the child did it first: either way the group exists

    def launch(self, extra_env: dict[str, str], deadline: float) -> int:
        """Exec the command with os.environ plus *extra_env*; return its pid.

        Raises OSError when exec fails, TimeoutError (after killing it) when exec has not
        finished by *deadline* on the lease clock (a hung file system must not hold the lease).
        The shell waiter cannot report its exec: it is checked first that exec will find an
        executable file the kernel runs itself; what still fails (the file replaced meanwhile)
        is the command's exit, 126 or 127, with the shell's message on its stderr.
        """
        if self.shell:
            return self._launch_shell(extra_env, deadline)
        with os.fdopen(self._go_w, "wb") as go:
            go.write(json.dumps(extra_env).encode())
        trace.mark("watchdog: go sent")
        return self._exec_result(deadline, "exec did not finish within the lease")

    def _launch_shell(self, extra_env: dict[str, str], deadline: float) -> int:
        global _shell_failed
        try:
            target = exec_target(self.argv[0], os.environ.get("PATH"))
            python_way = not _kernel_runs(target)
            if not python_way:
                try:
                    self._exec_result(deadline, "the waiting shell did not start within the lease")
                except TimeoutError:
                    raise
                except OSError:
                    _shell_failed = True  # exec of the shell itself failed: not again
                    python_way = True
            if clock.now() >= deadline:
                # The checks above touch the file system, which may hang: never start late.
                raise TimeoutError("the checks before exec did not finish within the lease")
        except BaseException:
            self.cancel()
            raise
        if python_way:
            self.cancel()
            return PreparedChild(self.argv, self.cgroup, shell=False).launch(extra_env, deadline)
        with os.fdopen(self._go_w, "wb") as go:
            go.write(_orders(extra_env))
        trace.mark("watchdog: go sent")
        return self.pid

    def _exec_result(self, deadline: float, too_slow: str) -> int:
        """Wait for our exec to finish (EOF) or fail (an errno) on the error pipe."""
        with os.fdopen(self._err_r, "rb") as err:
            ready, _, _ = select.select([err], [], [], max(0.0, deadline - clock.now()))
            if not ready:
                os.kill(self.pid, signal.SIGKILL)
                raise TimeoutError(too_slow)
            data = err.read()
        if data:
            os.waitpid(self.pid, 0)
            code = int(data)
            raise OSError(code, os.strerror(code), self.argv[0])
        return self.pid

    def cancel(self) -> None:
        """Let the waiting process exit without running anything; the caller reaps it."""
        for fd in (self._go_w, self._err_r):
            try:
                os.close(fd)
            except OSError:
                pass


def _free_order_fd() -> int | None:
    """A one-digit fd the command would not inherit (closed, or close-on-exec), for the orders;
    None when the command inherits all of them (it then gets them all, from Python's exec)."""
    for fd in range(3, 10):
        try:
            if not os.get_inheritable(fd):
                return fd
        except OSError:
            return fd
    return None


def _exec_waiter(go_r: int, err_w: int, argv: list[str], order_fd: int) -> None:
    """In the prepared child: become the shell waiter, orders on *order_fd* (raises OSError if not)."""
    if err_w == order_fd:
        err_w = os.dup(err_w)  # keep it (close-on-exec) off the orders' fd
        os.close(order_fd)
    if go_r == order_fd:
        os.set_inheritable(go_r, True)
    else:
        os.dup2(go_r, order_fd, inheritable=True)
        os.close(go_r)
    script = _WAITER_SCRIPT.format(fd=order_fd)
    try:
        os.execve(SHELL_WAITER, [SHELL_WAITER, "-c", script, "consul-elect-waiter", *argv], os.environ)
    except OSError as e:
        os.write(err_w, str(e.errno).encode())
        os._exit(EXIT_NOT_FOUND)


def _become_child(parent: int) -> None:
    os.setpgid(0, 0)
    # Second line of defence: if the watchdog itself is killed, the child dies too.
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(EXIT_NOT_FOUND)
    signal.set_wakeup_fd(-1)
    for s in CHILD_RESET:
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def reap_all() -> list[tuple[int, int]]:
    """Collect every exited child without blocking; return their (pid, wait status) pairs."""
    reaped = []
    with _reaping:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return reaped
            if pid == 0:
                return reaped
            if pid in _awaited:
                _awaited[pid] = status
            reaped.append((pid, status))


def spawn_awaited(argv: list[str], env: dict[str, str], output_fd: int) -> int:
    """Start *argv* in a session of its own (so its whole tree can be killed), stdin from
    /dev/null, stdout and stderr to *output_fd*, with default signal dispositions; its exit code
    is kept for exit_status() whichever thread reaps it. Raises OSError when it cannot start."""
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, output_fd, 1), (os.POSIX_SPAWN_DUP2, output_fd, 2)]
    with _reaping:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True, setsigmask=(),
                             setsigdef=CHILD_RESET)
        _awaited[pid] = None
    return pid


def exit_status(pid: int) -> int | None:
    """The exit code (128 + N for signal N) of a spawn_awaited process once reaped, else None."""
    with _reaping:
        status = _awaited.get(pid)
        if status is None:
            return None
        del _awaited[pid]
    return exit_code(status)


def forget(pid: int) -> None:
    """Stop keeping *pid*'s status (its waiter gave up on it)."""
    with _reaping:
        _awaited.pop(pid, None)


def spawn_error_exit_code(e: OSError) -> int:
    return EXIT_NOT_FOUND if e.errno in (errno.ENOENT, errno.ENOTDIR) else EXIT_NOT_EXECUTABLE
