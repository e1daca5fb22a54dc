"""`consul-elect run` against a real Consul dev agent: election, handover, exit codes, signals."""

import json
import shutil
import os
import signal
import subprocess
import sys
import time

import pytest
from harness import FAST, LEADER_CHILD, assert_no_overlap, pid_alive, read_lives, wait_for


def kv(agent, key):
    status, body = agent.request("GET", f"/v1/kv/{key}")
    return json.loads(body)[0] if status == 200 else None


def test_one_leader_among_three_candidates(consul_agent, candidates):
    cs = [candidates(consul_agent.http_addr, "svc/one", n) for n in ("a", "b", "c")]
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a leader's child")[0]
    time.sleep(1.5)
    lives = assert_no_overlap(candidates.events)
    assert len(lives) == 1, f"more than one child ran: {lives}"
    holder = kv(consul_agent, "svc/one")
    identity = json.loads(__import__("base64").b64decode(holder["Value"]))
    assert identity["name"] == first.name and identity["session"] == holder["Session"]
    assert first.token == holder["ModifyIndex"]
    assert first.env["CONSUL_ELECT_LEADER"] == "1" and first.env["CONSUL_LOCK_HELD"] == "true"
    assert first.env["CONSUL_ELECT_KEY"] == "svc/one"
    assert first.env["CONSUL_ELECT_SESSION"] == holder["Session"]
    session = json.loads(consul_agent.request("GET", f"/v1/session/info/{holder['Session']}")[1])[0]
    assert session["NodeChecks"] == [] and session["Behavior"] == "release"
    assert session["LockDelay"] == 2_000_000_000 and session["TTL"] == "3s"
    followers = [c for c in cs if c.name != first.name]
    for c in followers:
        assert f"following {first.name}" in c.log()
    for c in cs:
        c.send_signal(signal.SIGTERM)
    for c in cs:
        assert c.wait(10) == 0
    assert_no_overlap(candidates.events)


def test_graceful_handover_is_immediate_and_fencing_token_grows(consul_agent, candidates):
    a = candidates(consul_agent.http_addr, "svc/handover", "a")
    wait_for(lambda: read_lives(candidates.events), 10, what="a's child")
    b = candidates(consul_agent.http_addr, "svc/handover", "b")
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow a")
    a.send_signal(signal.SIGTERM)
    assert a.wait(10) == 0  # the child exits 0 on SIGTERM, and that status passes through
    lives = wait_for(lambda: len(read_lives(candidates.events)) == 2 and read_lives(candidates.events), 10,
                     what="b's child")
    lives = assert_no_overlap(candidates.events)
    old, new = lives
    assert old.events[-1] == "stop", "the old child was stopped with SIGTERM, not killed"
    # A release applies no lock-delay (2 s here): the standby starts well within it.
    assert new.start - old.end < 1.5, f"handover took {new.start - old.end:.3f}s"
    assert "released svc/handover" in a.log()


@pytest.mark.parametrize("script, expected", [
    ("exit 7", 7),
    ("exit 0", 0),
    ("kill -KILL $$", 128 + 9),
    ("kill -TERM $$", 128 + 15),
])
def test_child_exit_status_passes_through(consul_agent, candidates, script, expected):
    c = candidates(consul_agent.http_addr, "svc/status", "solo", command=["sh", "-c", script])
    assert c.wait(20) == expected
    assert kv(consul_agent, "svc/status").get("Session") is None, "the lock was not released"
    sessions = json.loads(consul_agent.request("GET", "/v1/session/list")[1])
    assert not [s for s in sessions if "svc/status" in s["Name"]], "session left behind"


SIGNAL_RECORDER = """
import os, signal, sys, time
marks = sys.argv[1]
role = "parent"
if os.fork() == 0:
    role = "grandchild"
def record(signo, _):
    fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{role}-{signal.Signals(signo).name}\\n".encode())
    os.close(fd)
for s in (signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2):
    signal.signal(s, record)
record(signal.SIGCONT, None)  # "ready"
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_signals_are_forwarded_to_the_childs_process_group(consul_agent, candidates, tmp_path):
    marks = tmp_path / "marks"
    c = candidates(consul_agent.http_addr, "svc/signals", "solo",
                   command=[sys.executable, "-c", SIGNAL_RECORDER, str(marks)])
    wait_for(lambda: marks.exists() and {"parent-SIGCONT", "grandchild-SIGCONT"} <= set(marks.read_text().split()),
             10, what="the child and its grandchild")
    for s in (signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2):
        c.send_signal(s)
        time.sleep(0.1)
    expected = {f"{who}-{s}" for who in ("parent", "grandchild") for s in ("SIGUSR1", "SIGHUP", "SIGUSR2")}
    wait_for(lambda: expected <= set(marks.read_text().split()), 5,
             what=f"forwarded signals, got {marks.read_text().split()}")
    assert c.alive(), "SIGHUP/SIGUSR1/SIGUSR2 must be forwarded, not end consul-elect"
    tree = c.descendants()
    c.send_signal(signal.SIGTERM)
    assert c.wait(10) == 128 + 15  # the recorder does not handle SIGTERM and dies of it
    assert not any(pid_alive(p) for p in tree), "the grandchild must not outlive the stop"


def test_operator_destroying_the_session_stops_the_child(consul_agent, candidates):
    a = candidates(consul_agent.http_addr, "svc/destroy", "a")
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a's child")[0]
    b = candidates(consul_agent.http_addr, "svc/destroy", "b")
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow")
    session = kv(consul_agent, "svc/destroy")["Session"]
    t0 = time.monotonic()
    consul_agent.request("PUT", f"/v1/session/destroy/{session}")
    wait_for(lambda: not pid_alive(first.pid), 5, what="the child to stop")
    assert time.monotonic() - t0 < 3.0
    wait_for(lambda: len(read_lives(candidates.events)) >= 2, 15, what="a new leader")
    assert_no_overlap(candidates.events)
    assert "lost leadership of svc/destroy" in a.log()
    assert a.alive(), "a stays in the race"


def test_operator_deleting_the_key_stops_the_child(consul_agent, candidates):
    a = candidates(consul_agent.http_addr, "svc/delete", "a")
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a's child")[0]
    t0 = time.monotonic()
    consul_agent.request("DELETE", "/v1/kv/svc/delete")
    wait_for(lambda: not pid_alive(first.pid), 5, what="the child to stop")
    assert time.monotonic() - t0 < 3.0
    assert "the key was deleted" in a.log()
    # It campaigns again and leads again, with a larger token.
    lives = wait_for(lambda: len(read_lives(candidates.events)) >= 2 and read_lives(candidates.events), 15,
                     what="re-election")
    assert_no_overlap(candidates.events)
    assert lives[1].token > lives[0].token


def test_exit_on_loss_exits_75_after_stopping_the_child(consul_agent, candidates):
    a = candidates(consul_agent.http_addr, "svc/eol", "a", options=[*FAST, "--exit-on-loss"])
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a's child")[0]
    consul_agent.request("DELETE", "/v1/kv/svc/eol")
    assert a.wait(10) == 75
    assert not pid_alive(first.pid)
    assert "lost leadership" in a.log()


def test_command_not_found_is_reported_before_campaigning(consul_agent, candidates):
    c = candidates(consul_agent.http_addr, "svc/nocmd", "a", command=["no-such-command-xyz"])
    assert c.wait(10) == 127
    assert "command not found: no-such-command-xyz" in c.log()
    assert "Traceback" not in c.log()
    assert kv(consul_agent, "svc/nocmd") is None


def test_command_not_executable_exits_126(consul_agent, candidates, tmp_path):
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    c = candidates(consul_agent.http_addr, "svc/noexec", "a", command=[str(script)])
    assert c.wait(10) == 126
    assert "not executable" in c.log()


def test_shell_mode_runs_through_sh(consul_agent, candidates, tmp_path):
    out = tmp_path / "out"
    c = candidates(consul_agent.http_addr, "svc/shell", "a", options=[*FAST, "--shell"],
                   command=[f"echo $CONSUL_ELECT_KEY > {out} && exit 3"])
    assert c.wait(20) == 3
    assert out.read_text().strip() == "svc/shell"


def test_timeout_waiting_for_leadership_exits_124(consul_agent, candidates):
    candidates(consul_agent.http_addr, "svc/timeout", "a")
    wait_for(lambda: read_lives(candidates.events), 10, what="a's child")
    b = candidates(consul_agent.http_addr, "svc/timeout", "b", options=[*FAST, "--timeout", "1s"])
    assert b.wait(15) == 124
    assert "not elected leader" in b.log()


def test_unreachable_consul_exits_69_with_one_line(candidates):
    c = candidates("127.0.0.1:1", "svc/unreachable", "a", options=[*FAST, "--timeout", "1s"])
    assert c.wait(15) == 69
    err_lines = [line for line in c.log().splitlines() if line.startswith("consul-elect:")]
    assert len(err_lines) == 1 and "cannot reach Consul" in err_lines[0], c.log()
    assert "Traceback" not in c.log()


def test_acl_token_without_write_permission_is_a_clear_error(acl_agent, candidates):
    token = acl_agent.create_token('key_prefix "" { policy = "read" }')
    c = candidates(acl_agent.http_addr, "svc/acl", "a", env={"CONSUL_HTTP_TOKEN": token})
    c.env["CONSUL_HTTP_TOKEN"] = token
    assert c.wait(15) == 77
    assert "ACL denied" in c.log() and "Traceback" not in c.log()


def test_acl_token_with_write_permission_leads(acl_agent, candidates, tmp_path):
    token = acl_agent.create_token('key_prefix "svc/" { policy = "write" }\nsession_prefix "" { policy = "write" }')
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    c = candidates(acl_agent.http_addr, "svc/acl-ok", "a", options=[*FAST, "--token-file", str(token_file)],
                   command=["sh", "-c", "exit 5"])
    assert c.wait(15) == 5, c.log()


@pytest.mark.parametrize("args, message", [
    (["run", "--key", "svc/x"], "missing command"),
    (["run", "--", "true"], "Missing option '--key'"),
    (["run", "--key", "", "--", "true"], "key is empty"),
    (["run", "--key", "/abs", "--", "true"], "invalid key"),
    (["run", "--key", "svc/x", "--ttl", "ten", "--", "true"], "--ttl"),
    (["run", "--key", "svc/x", "--grace", "9s", "--", "true"], "5.69s"),
    (["run", "--key", "svc/x", "--bogus", "--", "true"], "No such option"),
    (["run", "--key", "svc/x", "--http-addr", "ftp://h:1", "--", "true"], "scheme"),
    (["run", "--key", "../x", "--", "true"], "'..' segments"),
    (["run", "--key", "svc/.", "--", "true"], "'..' segments"),
    (["run", "--key", "svc/x", "--ttl", "500ms", "--", "true"], "--ttl must be between 1s and 24h"),
    (["run", "--key", "svc/x", "--ttl", "1e3", "--", "true"], "--ttl"),
    (["run", "--key", "svc/x", "--ttl", "1s", "--", "true"], "raise --ttl"),
])
def test_bad_input_gets_one_line_and_exit_2(args, message):
    p = subprocess.run([sys.executable, "-m", "consul_elect", *args], capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if not k.startswith("CONSUL_ELECT")})
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_ttl_below_the_servers_minimum_is_a_usage_error(consul_bin, tmp_path, candidates):
    from consul_servers import ConsulAgent

    agent = ConsulAgent(consul_bin, base_dir=str(tmp_path / "agent"), session_ttl_min="10s").start()
    try:
        c = candidates(agent.http_addr, "svc/ttl", "a", options=["--ttl", "3s", "--lock-delay", "2s",
                                                                 "--grace", "0.5s"])
        assert c.wait(15) == 2
    finally:
        agent.stop()
    assert "session_ttl_min" in c.log() and "Traceback" not in c.log()


def _zombies_under(ancestor: int) -> list[int]:
    """Zombie processes anywhere in the tree below *ancestor* (host pids)."""
    zombies, todo = [], [ancestor]
    while todo:
        pid = todo.pop()
        try:
            kids = [int(k) for k in open(f"/proc/{pid}/task/{pid}/children").read().split()]
        except OSError:
            continue
        for k in kids:
            try:
                state = open(f"/proc/{k}/stat").read().split(") ", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z":
                zombies.append(k)
            todo.append(k)
    return zombies


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare")
                    or not shutil.which("nsenter"), reason="needs root and util-linux to make a PID namespace")
def test_as_pid1_it_reaps_every_orphan_and_stops_on_sigterm(consul_agent, tmp_path):
    events = tmp_path / "events.log"
    # The command orphans a short-lived grandchild (reaped by the watchdog, a child subreaper) ...
    script = f"(sleep 0.1 &); exec {sys.executable} {LEADER_CHILD} {events}"
    env = {**os.environ, "CONSUL_HTTP_ADDR": consul_agent.http_addr}
    log = open(tmp_path / "pid1.log", "wb")
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                              sys.executable, "-m", "consul_elect", "run", "--key", "svc/pid1", *FAST,
                              "--", "sh", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        pid1 = wait_for(lambda: [int(k) for k in open(f"/proc/{outer.pid}/task/{outer.pid}/children").read().split()],
                        10, what="consul-elect as PID 1")[0]
        assert "\t1\n" in [line for line in open(f"/proc/{pid1}/status") if line.startswith("NSpid")][0] + "\n"
        wait_for(lambda: read_lives(events), 10, what="the leader's child")
        # ... and a process entering the namespace from outside orphans another one, which the
        # kernel hands to PID 1: consul-elect itself.
        subprocess.run(["nsenter", "-t", str(pid1), "-p", "-m", "sh", "-c", "(sleep 0.1 &); true"], check=True,
                       timeout=10)
        time.sleep(1.0)
        assert _zombies_under(pid1) == [], "zombies left unreaped"
        os.kill(pid1, signal.SIGTERM)
        assert outer.wait(10) == 0  # the child exits 0 on SIGTERM; unshare passes the status on
        assert read_lives(events)[0].events[-1] == "stop"
    finally:
        try:
            os.killpg(outer.pid, signal.SIGKILL)
        except OSError:
            pass
        outer.wait(5)
        log.close()


def test_second_sigterm_kills_the_child_at_once(consul_agent, candidates, tmp_path):
    ready = tmp_path / "ready"
    c = candidates(consul_agent.http_addr, "svc/twice", "a",
                   options=["--ttl", "10s", "--lock-delay", "10s", "--grace", "8s"],
                   command=["sh", "-c", f"trap '' TERM INT; touch {ready}; while :; do sleep 0.05; done"])
    wait_for(lambda: ready.exists(), 10, what="the child")
    c.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    t0 = time.monotonic()
    c.send_signal(signal.SIGTERM)
    assert c.wait(10) == 128 + 9
    assert time.monotonic() - t0 < 3.0, "the second SIGTERM must not wait out the 8 s grace"
    assert "killed with SIGKILL" in c.log()


def test_a_stopped_child_still_gets_a_graceful_stop(consul_agent, candidates):
    c = candidates(consul_agent.http_addr, "svc/tstp", "a")
    first = wait_for(lambda: read_lives(candidates.events), 10, what="the child")[0]
    c.send_signal(signal.SIGTSTP)  # forwarded: the child's group stops
    wait_for(lambda: open(f"/proc/{first.pid}/stat").read().split(") ", 1)[1][0] == "T", 5, what="child stopped")
    c.send_signal(signal.SIGTERM)
    assert c.wait(10) == 0, "SIGCONT after SIGTERM lets the child run its handler and exit 0"
    assert read_lives(candidates.events)[0].events[-1] == "stop"


def test_a_key_holding_another_tools_data_is_refused_and_kept(consul_agent, candidates):
    consul_agent.request("PUT", "/v1/kv/svc/config", b"db=primary")
    c = candidates(consul_agent.http_addr, "svc/config", "a", command=["true"])
    assert c.wait(15) == 65
    assert "not a consul-elect identity" in c.log()
    assert consul_agent.request("GET", "/v1/kv/svc/config?raw")[1] == b"db=primary"


def test_removing_the_lease_file_folder_does_not_cost_the_lease(consul_agent, candidates):
    c = candidates(consul_agent.http_addr, "svc/leasefile", "a")
    first = wait_for(lambda: read_lives(candidates.events), 10, what="the child")[0]
    lease_file = first.env["CONSUL_ELECT_LEASE_FILE"]
    shutil.rmtree(os.path.dirname(lease_file))
    wait_for(lambda: os.path.exists(lease_file), 5, what="the lease file to be written again")
    assert float(open(lease_file).read()) > time.clock_gettime(time.CLOCK_BOOTTIME)
    assert c.alive() and pid_alive(first.pid)
    assert "watchdog" not in c.log().lower() or "cannot write" in c.log()
