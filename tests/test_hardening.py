"""The two-leader paths, crashes and leaks a fault probe found (issue 8), and the defects of the old
loop that need real processes to show (issue 7): each against a real Consul agent.

Overlap checks read the children's own CLOCK_MONOTONIC records (harness.read_lives).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
from fault_proxy import Fault, FaultProxy
from harness import FAST, HERE, LoggedProcess, assert_no_overlap, pid_alive, read_lives, wait_for

B = min(3, 2) * 0.99 - 0.25  # the lease window of harness.FAST


def kv(agent, key):
    status, body = agent.request("GET", f"/v1/kv/{key}")
    return json.loads(body)[0] if status == 200 else None


def sessions_named(agent, key):
    return [s for s in json.loads(agent.request("GET", "/v1/session/list")[1]) if f" {key} " in s["Name"]]


def watchdog_of(candidate) -> int:
    return int(Path(f"/proc/{candidate.pid}/task/{candidate.pid}/children").read_text().split()[0])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- 8.1: containment is total -------------------------------------------------------------

DAEMON_WITH_WORKER = r"""
import os, signal, sys, time
events, role = sys.argv[1], "main"
name, token = os.environ["CONSUL_ELECT_NAME"], os.environ["CONSUL_ELECT_FENCING_TOKEN"]
def record(event):
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{time.clock_gettime(time.CLOCK_MONOTONIC):.6f} {os.getpid()} {name}-{role} {token} {event}\n".encode())
    os.close(fd)
if os.fork() == 0:
    os.setsid()                                   # leaves the command's process group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and ignores the graceful stop
    role = "daemon"
    if os.fork() == 0:
        role = "worker"                           # orphaned the moment its daemon dies
record("start")
end = time.monotonic() + 60
while time.monotonic() < end:
    record("beat")
    time.sleep(0.02)
"""


@pytest.mark.parametrize("containment", ["--cgroup", "--no-cgroup"])
@pytest.mark.parametrize("ending", ["sigterm", "key-deleted"])
def test_a_setsid_daemons_worker_never_outlives_leadership(consul_agent, candidates, tmp_path, containment, ending):
    events = tmp_path / "events.log"
    cmd = [sys.executable, "-c", DAEMON_WITH_WORKER, str(events)]
    a = candidates(consul_agent.http_addr, "svc/daemon", "a", command=cmd, options=[*FAST, containment])
    wait_for(lambda: {life.name for life in read_lives(events)} >= {"a-main", "a-daemon", "a-worker"}, 10,
             what="a's command, daemon and worker")
    b = candidates(consul_agent.http_addr, "svc/daemon", "b", command=cmd, options=[*FAST, containment])
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow a")
    a_pids = [life.pid for life in read_lives(events)]
    if ending == "sigterm":
        a.send_signal(signal.SIGTERM)
    else:
        consul_agent.request("DELETE", "/v1/kv/svc/daemon")
    first_token = read_lives(events)[0].token
    # After a delete, a may win the key back: any command of a later term counts.
    wait_for(lambda: any(life.token != first_token for life in read_lives(events)), 15, what="a next leader")
    lives = read_lives(events)
    last_of_first = max(life.end for life in lives if life.token == first_token)
    first_of_next = min(life.start for life in lives if life.token != first_token)
    assert first_of_next > last_of_first, f"the first term's processes ran {last_of_first - first_of_next:.3f}s " \
                                          "into the next leader's"
    wait_for(lambda: not any(pid_alive(p) for p in a_pids), 3, what="every process of a's command to be gone")


# -- 8.2: a key freed without lock-delay ---------------------------------------------------

SLOW_STOPPER = r"""
import os, signal, sys, time
events = sys.argv[1]
name, token = os.environ["CONSUL_ELECT_NAME"], os.environ["CONSUL_ELECT_FENCING_TOKEN"]
def record(event):
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{time.clock_gettime(time.CLOCK_MONOTONIC):.6f} {os.getpid()} {name} {token} {event}\n".encode())
    os.close(fd)
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.monotonic()))
record("start")
while not stopping or time.monotonic() - stopping[0] < 0.35:   # finishes its work within the grace
    record("beat")
    time.sleep(0.02)
record("stop")
"""


@pytest.mark.parametrize("free", ["delete", "release"])
def test_a_key_freed_by_an_operator_is_not_taken_while_the_old_command_finishes(consul_agent, candidates,
                                                                               tmp_path, free):
    events = tmp_path / "events.log"
    cmd = [sys.executable, "-c", SLOW_STOPPER, str(events)]
    a = candidates(consul_agent.http_addr, "svc/opfree", "a", command=cmd)
    wait_for(lambda: read_lives(events), 10, what="a's command")
    b = candidates(consul_agent.http_addr, "svc/opfree", "b", command=cmd)
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow a")
    if free == "delete":
        consul_agent.request("DELETE", "/v1/kv/svc/opfree")
    else:
        session = kv(consul_agent, "svc/opfree")["Session"]
        consul_agent.request("PUT", f"/v1/kv/svc/opfree?release={session}")
    lives = wait_for(lambda: len(read_lives(events)) >= 2 and read_lives(events), 15, what="a new leader")
    assert_no_overlap(events, tokens_grow=False)
    assert lives[0].events[-1] == "stop", "a's command finished its work"
    assert "without Consul's lock-delay" in b.log() or "without Consul's lock-delay" in a.log()


# -- 8.3: a frozen watchdog ----------------------------------------------------------------


def test_frozen_watchdog_the_elector_stops_the_command_itself(consul_agent, candidates):
    a = candidates(consul_agent.http_addr, "svc/wdfreeze", "a")
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a's command")[0]
    b = candidates(consul_agent.http_addr, "svc/wdfreeze", "b")
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow a")
    watchdog = watchdog_of(a)
    os.kill(watchdog, signal.SIGSTOP)
    try:
        session = kv(consul_agent, "svc/wdfreeze")["Session"]
        t0 = time.monotonic()
        consul_agent.request("PUT", f"/v1/kv/svc/wdfreeze?release={session}")
        wait_for(lambda: not pid_alive(first.pid), B + 2, what="a's command to be killed by a's elector")
        assert time.monotonic() - t0 < B + 1.0
        assert a.wait(15) == 70, a.log()
        wait_for(lambda: len(read_lives(candidates.events)) == 2, 10, what="b to lead")
        assert_no_overlap(candidates.events)
        assert "watchdog process stopped answering" in a.log()
    finally:
        try:
            os.kill(watchdog, signal.SIGCONT)
        except OSError:
            pass


def test_sigterm_with_a_frozen_watchdog_does_not_hang(consul_agent, candidates):
    a = candidates(consul_agent.http_addr, "svc/wdterm", "a")
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a's command")[0]
    watchdog = watchdog_of(a)
    os.kill(watchdog, signal.SIGSTOP)
    try:
        a.send_signal(signal.SIGTERM)
        assert a.wait(15) == 70, a.log()
        assert not pid_alive(first.pid)
        assert kv(consul_agent, "svc/wdterm").get("Session") is None, "the key was not released"
        assert not sessions_named(consul_agent, "svc/wdterm")
    finally:
        try:
            os.kill(watchdog, signal.SIGCONT)
        except OSError:
            pass


# -- 8.4: the token never leaks ------------------------------------------------------------


def test_a_token_with_a_trailing_newline_works_and_never_appears_in_output(acl_agent, candidates, tmp_path):
    good = acl_agent.create_token('key_prefix "svc/" { policy = "write" }\nsession_prefix "" { policy = "write" }')
    seen = tmp_path / "seen"
    a = candidates(acl_agent.http_addr, "svc/tok", "a", start=False,
                   command=["sh", "-c", f'echo "${{CONSUL_HTTP_TOKEN:-none}}" > {seen}; exit 4'])
    a.env["CONSUL_HTTP_TOKEN"] = good + "\n"
    assert a.start().wait(20) == 4, a.log()
    assert seen.read_text().strip() == good, "by default the command inherits the token (as with consul lock)"
    bad = acl_agent.create_token('key_prefix "" { policy = "read" }')
    b = candidates(acl_agent.http_addr, "svc/tok", "b", start=False, command=["true"])
    b.env["CONSUL_HTTP_TOKEN"] = bad + "\n"
    assert b.start().wait(20) == 77
    assert bad not in b.log() and "Traceback" not in b.log()


def test_withhold_token_keeps_it_from_the_command(acl_agent, candidates, tmp_path):
    token = acl_agent.create_token('key_prefix "svc/" { policy = "write" }\nsession_prefix "" { policy = "write" }')
    seen = tmp_path / "seen"
    a = candidates(acl_agent.http_addr, "svc/tok2", "a", start=False, options=[*FAST, "--withhold-token"],
                   command=["sh", "-c", f'echo "${{CONSUL_HTTP_TOKEN:-none}}" > {seen}'])
    a.env["CONSUL_HTTP_TOKEN"] = token
    assert a.start().wait(20) == 0, a.log()
    assert seen.read_text().strip() == "none"


def test_a_token_without_key_write_destroys_its_session_on_the_way_out(acl_agent, candidates):
    token = acl_agent.create_token('key_prefix "" { policy = "read" }\nsession_prefix "" { policy = "write" }')
    c = candidates(acl_agent.http_addr, "svc/nowrite", "a", start=False, command=["true"])
    c.env["CONSUL_HTTP_TOKEN"] = token
    assert c.start().wait(20) == 77
    listed = json.loads(acl_agent.request("GET", "/v1/session/list", token=acl_agent.master_token)[1])
    assert not [s for s in listed if "svc/nowrite" in s["Name"]], "session left to expire"


# -- 8.5, 8.7, 8.8: answers no server gives, through the fault proxy --------------------------


def test_garbage_answers_and_429s_crash_nobody(consul_agent, candidates):
    with FaultProxy(consul_agent.http_addr) as proxy:
        proxy.set_fault(Fault.body(b"{not json"), match="/v1/txn")
        cs = [candidates(proxy.address, "svc/garbage", n) for n in ("a", "b")]
        time.sleep(2.0)
        proxy.set_fault(Fault.status(429, b"rate limited", {"Retry-After": "1"}), match="/v1/txn")
        time.sleep(1.5)
        assert all(c.alive() for c in cs), [c.log() for c in cs]
        assert not read_lives(candidates.events), "nobody can have believed a garbage or 429 acquire"
        proxy.set_fault(Fault.body(b""), match="/v1/")  # every answer empty, renewals included
        time.sleep(1.5)
        assert all(c.alive() for c in cs), [c.log() for c in cs]
        proxy.set_fault(None)
        wait_for(lambda: read_lives(candidates.events), 15, what="a leader once Consul answers properly")
    for c in cs:
        assert "Traceback" not in c.log()


def test_a_trickling_consul_does_not_delay_sigterm_unboundedly(consul_agent, candidates):
    with FaultProxy(consul_agent.http_addr) as proxy:
        proxy.set_fault(Fault.trickle(1))
        c = candidates(proxy.address, "svc/trickle", "a")
        time.sleep(1.0)
        t0 = time.monotonic()
        c.send_signal(signal.SIGTERM)
        assert c.wait(15) == 0, c.log()
        assert time.monotonic() - t0 < 8.0, "a request's deadline bounds how long a signal waits"


def test_an_agent_without_servers_is_not_hammered(consul_agent, candidates):
    with FaultProxy(consul_agent.http_addr) as proxy:
        proxy.set_fault(Fault.status(500, b"No cluster leader"))
        c = candidates(proxy.address, "svc/noleader", "a", options=[*FAST, "--timeout", "30s"])
        wait_for(lambda: proxy.requests, 10, what="the first request")
        time.sleep(0.5)
        before, cpu0, t0 = len(proxy.requests), cpu_seconds(c.pid), time.monotonic()
        time.sleep(4.0)
        rate = (len(proxy.requests) - before) / (time.monotonic() - t0)
        cpu = cpu_seconds(c.pid) - cpu0
        assert rate < 10, f"{rate:.1f} requests/s while Consul answers 500 (backs off to 1 per 2 s)"
        assert cpu < 0.5, f"{cpu:.2f} CPU seconds in 4 s"
        assert c.alive()


def test_defect_8_a_candidate_pointed_at_a_closed_port_is_idle(candidates):
    c = candidates("127.0.0.1:1", "svc/closed", "a", options=[*FAST, "--timeout", "60s"])
    time.sleep(1.5)  # interpreter start-up is not what is measured
    watchdog = watchdog_of(c)
    cpu0 = cpu_seconds(c.pid) + cpu_seconds(watchdog)
    time.sleep(5.0)
    used = cpu_seconds(c.pid) + cpu_seconds(watchdog) - cpu0
    assert used < 0.5, f"{used:.2f} CPU seconds in 5 s (the old loop burned a whole core)"
    assert c.alive()


# -- 8.11: nothing left behind ------------------------------------------------------------


def test_a_killed_elector_leaves_no_lease_folder_behind(consul_agent, candidates, tmp_path):
    a = candidates(consul_agent.http_addr, "svc/leasedir9", "a")
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a's command")[0]
    folder = Path(first.env["CONSUL_ELECT_LEASE_FILE"]).parent
    watchdog = watchdog_of(a)
    os.kill(a.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(watchdog), 10, what="the watchdog to finish")
    assert not folder.exists(), "the watchdog removes the folder when the elector cannot"


def test_a_killed_watchdog_leaves_no_lease_folder_behind(consul_agent, candidates, tmp_path):
    a = candidates(consul_agent.http_addr, "svc/leasedir", "a")
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a's command")[0]
    folder = Path(first.env["CONSUL_ELECT_LEASE_FILE"]).parent
    assert folder.is_dir()
    os.kill(watchdog_of(a), signal.SIGKILL)
    assert a.wait(10) == 70
    assert not folder.exists()


# -- issue 7 defect 1: EPERM is alive ------------------------------------------------------

SETUID_HELPER = r"""
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (setuid(0) != 0) { perror("setuid"); return 1; }   /* now nobody may signal us */
    FILE *f = fopen(argv[1], "w"); fprintf(f, "%d\n", getpid()); fclose(f);
    for (int i = 0; i < 600; i++) sleep(1);
    return 0;
}
"""


def _interpreter_for(user: str, group: str) -> str:
    """A Python the unprivileged user can run: ours if it can, else the system's of the same version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}"):
        probe = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", candidate,
                                "-c", "pass"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return candidate
    pytest.fail(f"no {version} that the user {user} can run (ours is {sys.executable})", pytrace=False)


def test_defect_1_a_process_we_cannot_signal_keeps_the_key_held(consul_agent, candidates):
    """consul-elect runs unprivileged; its command starts a setuid-root helper it cannot signal.
    The key must stay held (renewed) while the helper lives, and be released once it is gone."""
    if os.geteuid() != 0 or not shutil.which("cc") or not shutil.which("setpriv"):
        pytest.fail("this test builds a setuid-root helper: it needs root, cc and setpriv", pytrace=False)
    work = Path(tempfile.mkdtemp(prefix="ce-eperm-", dir="/tmp"))
    proc = None
    try:
        os.chmod(work, 0o777)
        (work / "helper.c").write_text(SETUID_HELPER)
        subprocess.run(["cc", "-o", str(work / "helper"), str(work / "helper.c")], check=True, timeout=60)
        os.chown(work / "helper", 0, 0)
        os.chmod(work / "helper", 0o4755)
        pidfile = work / "helper.pid"
        python = _interpreter_for("nobody", "nogroup")
        site = sysconfig.get_paths()["purelib"]
        env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(work), "CONSUL_HTTP_ADDR": consul_agent.http_addr,
               "PYTHONPATH": f"{HERE.parent}:{site}"}
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-m", "consul_elect",
                "run", "--key", "svc/eperm", "--name", "a", *FAST, "--",
                "sh", "-c", f"{work / 'helper'} {pidfile} & exec sleep 60"]
        proc = LoggedProcess("a", work / "a.log", argv, env)
        proc.start()
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 15, what="the setuid helper")
        helper = int(pidfile.read_text())
        session = wait_for(lambda: (kv(consul_agent, "svc/eperm") or {}).get("Session"), 10, what="a to lead")
        b = candidates(consul_agent.http_addr, "svc/eperm", "b")
        wait_for(lambda: "following a" in b.log(), 10, what="b to follow")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "survive SIGKILL" in proc.log(), 10, what="a to see the survivor")
        time.sleep(3 * B)  # several lease windows: an unrenewed lease would have run out
        assert kv(consul_agent, "svc/eperm").get("Session") == session, "released while the helper lives"
        assert not read_lives(candidates.events), "b started beside a process of a's command"
        assert proc.alive()
        os.kill(helper, signal.SIGKILL)
        assert proc.wait(10) == 128 + signal.SIGTERM, proc.log()
        wait_for(lambda: read_lives(candidates.events), 10, what="b to lead once the helper is gone")
        assert "Traceback" not in proc.log()
    finally:
        if proc is not None:
            if proc.alive():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            proc._log.close()
        if (work / "helper.pid").exists():
            try:
                os.kill(int((work / "helper.pid").read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        shutil.rmtree(work, ignore_errors=True)


# -- 8.6, 8.10: TLS end to end ---------------------------------------------------------------


def _tls_env(agent, ca_file=None):
    return {"CONSUL_HTTP_ADDR": f"https://{agent.https_addr}", "CONSUL_CACERT": ca_file or agent.ca_file,
            "CONSUL_CLIENT_CERT": agent.client_cert, "CONSUL_CLIENT_KEY": agent.client_key}


def test_a_ca_file_missing_for_a_moment_costs_no_lease_and_kills_no_thread(tls_agent, candidates, tmp_path):
    ca = tmp_path / "ca.pem"
    shutil.copy(tls_agent.ca_file, ca)
    env = _tls_env(tls_agent, str(ca))
    a = candidates(tls_agent.https_addr, "svc/rotate", "a", env=env)
    first = wait_for(lambda: read_lives(candidates.events), 15, what="a's command over mTLS")[0]
    b = candidates(tls_agent.https_addr, "svc/rotate", "b", env=env)
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow a")
    ca.rename(tmp_path / "ca.pem.away")
    time.sleep(1.5)
    (tmp_path / "ca.pem.away").rename(ca)
    time.sleep(2 * B)  # long enough for a leader whose renewals died to lose its lease
    assert pid_alive(first.pid) and len(read_lives(candidates.events)) == 1, a.log()
    a.send_signal(signal.SIGTERM)
    assert a.wait(10) == 0
    wait_for(lambda: len(read_lives(candidates.events)) == 2, 10, what="b to take over: its threads are alive")
    for c in (a, b):
        assert "Traceback" not in c.log() and "thread failed" not in c.log()


@pytest.mark.parametrize("setting, words", [
    ("wrong-ca", "certificate verify failed"),
    ("missing-ca", "no such file"),
])
def test_tls_mistakes_at_start_up_are_reported_at_once_with_exit_78(tls_agent, candidates, tmp_path, setting, words):
    ca = tls_agent.other_ca_file if setting == "wrong-ca" else str(tmp_path / "nope.pem")
    c = candidates(tls_agent.https_addr, "svc/tlsbad", "a", env=_tls_env(tls_agent, ca))
    t0 = time.monotonic()
    assert c.wait(15) == 78, c.log()
    assert time.monotonic() - t0 < 5.0, "not retried as 'unreachable'"
    lines = [line for line in c.log().splitlines() if line.startswith("consul-elect:")]
    assert len(lines) == 1 and words in lines[0], c.log()
    assert "Traceback" not in c.log()
