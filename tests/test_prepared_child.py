"""The prepared child (supervisor.PreparedChild), with real processes and no Consul.

It waits as a shell (an exec from a small process reaches the command sooner than an exec from
the 30 MB watchdog), or as the fork itself where a shell would change the environment or the
outcome of the exec. Either way the command must see exactly what a plain exec would give it.
"""

import errno
import json
import os
import shutil
import signal
import sys
import time

import pytest

from consul_elect import clock, supervisor

# The command: writes what it sees (environment, open fds, argv[0]) to the file named first.
REPORT = (
    "import json, os, sys\n"
    "fds = {}\n"
    "for f in os.listdir('/proc/self/fd'):\n"
    "    try:\n"
    "        fds[int(f)] = os.readlink(f'/proc/self/fd/{f}')\n"
    "    except OSError:\n"
    "        pass  # the listing's own, closed by now\n"
    "json.dump({'env': dict(os.environ), 'fds': fds, 'argv0': sys.argv[0], 'pid': os.getpid()}, open(sys.argv[1], 'w'))\n"
)
TRICKY = "it's \"quoted\" $HOME `x` \\ and\na second line"


def wait_exit(pid: int, limit: float = 20.0) -> int:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return supervisor.exit_code(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"process {pid} did not exit within {limit}s")


def inheritable_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                fds.add(int(name))
        except OSError:
            pass  # the listing's own, closed by now
    return fds


@pytest.fixture
def environ(monkeypatch):
    """The environment the prepared child is forked with (restored after the test)."""
    monkeypatch.setenv("TRICKY_VALUE", TRICKY)
    monkeypatch.delenv("PWD", raising=False)
    return monkeypatch


def run_report(tmp_path, extra_env: dict[str, str] | None = None):
    out = tmp_path / "report.json"
    child = supervisor.PreparedChild([sys.executable, "-c", REPORT, str(out)])
    try:
        pid = child.launch(extra_env or {"CONSUL_ELECT_FENCING_TOKEN": "42", "CONSUL_ELECT_NAME": "a 'b'"},
                           clock.now() + 20)
    except BaseException:
        child.cancel()
        wait_exit(child.pid)
        raise
    assert wait_exit(pid) == 0
    return child, json.loads(out.read_text())


def marking_script(path, first_line: str):
    """An executable file that, when it runs, creates the returned marker."""
    marker = path.parent / "ran"
    path.write_text(f"{first_line}touch {marker}\n")
    path.chmod(0o755)
    return path, marker


def failed_launch(child) -> OSError:
    """Launch through the shell waiter, which must refuse with an OSError."""
    assert child.shell
    with pytest.raises(OSError) as e:
        child.launch({}, clock.now() + 20)
    return e.value


def test_the_command_sees_the_environment_unchanged_through_the_shell_waiter(environ, tmp_path):
    child, seen = run_report(tmp_path)
    assert child.shell, "this environment passes through a shell unchanged: the shell waiter is used"
    expected = {**os.environ, "CONSUL_ELECT_FENCING_TOKEN": "42", "CONSUL_ELECT_NAME": "a 'b'"}
    assert seen["env"] == expected  # no PWD added, quotes and newlines intact
    # Only what this process lets every child inherit: fd 3 (the waiter's orders) is closed.
    assert {int(fd) for fd in seen["fds"]} == inheritable_fds(), seen["fds"]
    assert seen["argv0"] == "-c"  # python's view of `python -c`: argv as given


def test_a_stale_pwd_reaches_the_command_as_it_was(environ, tmp_path):
    environ.setenv("PWD", "/no/such/place")
    child, seen = run_report(tmp_path)
    assert child.shell
    assert seen["env"]["PWD"] == "/no/such/place"


@pytest.mark.parametrize("name", ["odd-name", "IFS", "OPTIND"])
def test_an_environment_a_shell_would_change_is_exec_d_from_python(environ, tmp_path, name):
    environ.setenv(name, "kept as is")
    child, seen = run_report(tmp_path)
    assert not child.shell
    assert seen["env"][name] == "kept as is"
    assert seen["env"]["TRICKY_VALUE"] == TRICKY and seen["env"]["CONSUL_ELECT_FENCING_TOKEN"] == "42"


def test_a_script_without_a_shebang_fails_as_exec_fails(environ, tmp_path):
    """A shell would run it as a shell script; exec(2) refuses it (ENOEXEC), and so do we."""
    script, marker = marking_script(tmp_path / "no-shebang", "")
    child = supervisor.PreparedChild([str(script)])
    e = failed_launch(child)
    assert e.errno == errno.ENOEXEC
    assert wait_exit(child.pid) == 0  # the waiter was let go without running anything
    assert not marker.exists()


@pytest.mark.parametrize("problem, code", [("removed", errno.ENOENT), ("not executable", errno.EACCES)])
def test_a_command_gone_bad_after_the_prepare_fails_the_launch(environ, tmp_path, problem, code):
    command, marker = marking_script(tmp_path / "cmd", "#!/bin/sh\n")
    child = supervisor.PreparedChild([str(command)])
    if problem == "removed":
        command.unlink()
    else:
        command.chmod(0o644)
    e = failed_launch(child)
    assert e.errno == code
    assert supervisor.spawn_error_exit_code(e) == (127 if code == errno.ENOENT else 126)
    assert wait_exit(child.pid) == 0
    assert not marker.exists()


def test_a_cancelled_waiter_exits_without_running_the_command(environ, tmp_path):
    marker = tmp_path / "ran"
    child = supervisor.PreparedChild(["/bin/sh", "-c", f"touch {marker}"])
    assert child.shell
    child.cancel()
    assert wait_exit(child.pid) == 0
    assert not marker.exists()


def test_the_waiter_is_in_its_own_process_group_and_the_command_keeps_it(environ, tmp_path):
    out = tmp_path / "pgid"
    child = supervisor.PreparedChild(["/bin/sh", "-c", f"ps -o pgid= -p $$ > {out}"])
    assert os.getpgid(child.pid) == child.pid
    pid = child.launch({}, clock.now() + 20)
    assert pid == child.pid and wait_exit(pid) == 0
    assert int(out.read_text()) == child.pid


def test_an_inherited_low_fd_reaches_the_command_and_the_orders_use_another(environ, tmp_path):
    """The orders' pipe takes a one-digit fd the command would not inherit anyway."""
    fd = next(fd for fd in range(3, 10) if fd not in inheritable_fds())
    saved = os.dup(fd) if _open(fd) else None  # pytest's own, put back after
    log = tmp_path / "inherited"
    opened = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
    os.dup2(opened, fd, inheritable=True)
    os.close(opened)
    try:
        child, seen = run_report(tmp_path)
        assert child.shell and child.order_fd != fd
        assert seen["fds"][str(fd)] == str(log)
    finally:
        if saved is None:
            os.close(fd)
        else:
            os.dup2(saved, fd, inheritable=False)
            os.close(saved)


def test_the_go_word_in_the_environment_never_starts_a_cancelled_waiter(environ, tmp_path):
    environ.setenv("_consul_elect_go", "1")
    marker = tmp_path / "ran"
    child = supervisor.PreparedChild(["/bin/sh", "-c", f"touch {marker}"])
    child.cancel()
    assert wait_exit(child.pid) == 0
    assert not marker.exists()


def test_a_shell_other_than_dash_is_not_trusted_with_the_environment(environ, tmp_path, monkeypatch):
    bash = shutil.which("bash")
    assert bash and os.path.basename(os.path.realpath(bash)) == "bash", "this test needs bash"
    monkeypatch.setattr(supervisor, "SHELL_WAITER", bash)
    child, seen = run_report(tmp_path)
    assert not child.shell
    assert "SHLVL" not in seen["env"] or seen["env"].get("SHLVL") == os.environ.get("SHLVL")


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
