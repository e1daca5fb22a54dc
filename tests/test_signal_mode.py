"""Signal mode, the role file and the hooks against a real Consul agent and real processes.

Every command is tests/role_child.py: it records, on its own CLOCK_MONOTONIC, when it starts and
stops believing it leads (lead-start, lead beats, lead-end) and when it acknowledges. The check
that matters is on those beliefs: no two commands ever believe they lead at the same time.

Timings (harness.FAST): TTL 3 s, lock-delay 2 s, grace 0.5 s, lease window B = 1.73 s. Bounds
are generous margins around those, not measurements.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from harness import FAST, HERE, pid_alive, wait_for

ROLE_CHILD = str(HERE / "role_child.py")
B = min(3, 2) * 0.99 - 0.25
GRACE = 0.5


@dataclasses.dataclass
class Belief:
    """One stretch of time during which a command believed it led."""

    name: str
    pid: int
    token: int
    start: float
    end: float


@dataclasses.dataclass
class Record:
    t: float
    pid: int
    name: str
    event: str
    detail: str


def records(path: Path) -> list[Record]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split(" ", 4)
        if len(parts) >= 4:
            out.append(Record(float(parts[0]), int(parts[1]), parts[2], parts[3], parts[4] if len(parts) > 4 else ""))
    return out


def beliefs(path: Path) -> list[Belief]:
    """From lead-start to lead-end, or to the last record of a command that died believing."""
    found, open_ = [], {}
    for r in records(path):
        if r.event == "lead-start":
            open_[r.pid] = Belief(r.name, r.pid, int(r.detail), r.t, r.t)
        elif r.pid in open_:
            open_[r.pid].end = r.t
            if r.event == "lead-end":
                found.append(open_.pop(r.pid))
    return sorted(found + list(open_.values()), key=lambda b: b.start)


def assert_beliefs_never_overlap(path: Path) -> list[Belief]:
    held = beliefs(path)
    for before, after in zip(held, held[1:]):
        assert after.start > before.end, (
            f"two commands believed they led at once: {before.name} (pid {before.pid}, term {before.token}) until "
            f"{before.end:.3f}, {after.name} (pid {after.pid}, term {after.token}) from {after.start:.3f}")
        assert after.token > before.token, f"fencing token did not grow: {before.token} -> {after.token}"
    return held


def starts(path: Path) -> dict[str, Record]:
    return {r.name: r for r in records(path) if r.event == "start"}


def signal_options(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [*FAST, "--mode", "signal", "--role-file", str(tmp_path / f"{name}.role"), *extra]


def kv(agent, key):
    status, body = agent.request("GET", f"/v1/kv/{key}")
    return json.loads(body)[0] if status == 200 else None


def assert_role_files_agree(path: Path, tmp_path: Path, alive: list[str]) -> None:
    """Each live command's role file says what its last role signal (and its belief) says."""
    for name in alive:
        pid = starts(path)[name].pid
        mine = [r for r in records(path) if r.pid == pid]
        believes = any(r.event == "lead-start" for r in mine) and not mine[-1].event == "lead-end" and \
            [r.event for r in mine if r.event in ("lead-start", "lead-end")][-1] == "lead-start"
        doc = json.loads((tmp_path / f"{name}.role").read_text())
        assert doc["role"] == ("leader" if believes else "follower"), (name, doc, believes)
        told = [r.detail for r in mine if r.event == "signal" and r.detail in ("SIGUSR1", "SIGUSR2")]
        if told:
            assert doc["role"] == {"SIGUSR1": "leader", "SIGUSR2": "follower"}[told[-1]], (name, doc, told[-1])


def three_signal_candidates(consul_agent, candidates, tmp_path, key, extra=()):
    events = tmp_path / "events.log"
    made = {}
    for name in ("a", "b", "c"):
        made[name] = candidates(consul_agent.http_addr, key, name, command=[sys.executable, ROLE_CHILD, str(events)],
                                options=signal_options(tmp_path, name, *extra))
    wait_for(lambda: len(starts(events)) == 3 and beliefs(events), 15, what="three commands and a leader")
    leader = beliefs(events)[0].name
    for name, c in made.items():
        if name != leader:
            wait_for(lambda c=c: f"following {leader}" in c.log(), 10, what=f"{name} to follow {leader}")
    return events, made, leader


# -- three candidates, every way a term can end ---------------------------------------------------

DISRUPTIONS = ["session-destroyed", "key-deleted", "sigterm", "kill-9", "freeze"]


@pytest.mark.parametrize("disruption", DISRUPTIONS)
def test_three_candidates_never_two_believing_leaders(consul_agent, candidates, tmp_path, disruption):
    key = f"svc/sig-{disruption}"
    events, made, leader = three_signal_candidates(consul_agent, candidates, tmp_path, key)
    time.sleep(0.5)
    assert len(starts(events)) == 3, "every command runs, leader or not"
    assert [b.name for b in beliefs(events)] == [leader], "exactly one command was told it leads"
    first = beliefs(events)[0]
    old = made[leader]
    old_pid = starts(events)[leader].pid
    elector_pid = old.pid
    try:
        if disruption == "session-destroyed":
            consul_agent.request("PUT", f"/v1/session/destroy/{kv(consul_agent, key)['Session']}")
        elif disruption == "key-deleted":
            consul_agent.request("DELETE", f"/v1/kv/{key}")
        elif disruption == "sigterm":
            old.send_signal(signal.SIGTERM)
        elif disruption == "kill-9":
            old.send_signal(signal.SIGKILL)
        else:
            old.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        new = wait_for(lambda: [b for b in beliefs(events) if b.token != first.token], 15, what="a new term")[0]
        if disruption == "freeze":
            # The watchdog demoted the command on its own, at deadline - grace: within B of the freeze.
            assert first.end - t0 < B + 0.3, f"{leader}'s command believed it led {first.end - t0:.2f}s into the freeze"
            time.sleep(1.0)
            old.send_signal(signal.SIGCONT)
            wait_for(lambda: "campaigning for" in old.log().split("elected leader")[-1], 10,
                     what=f"the thawed {leader} to campaign again")
        if disruption in ("sigterm", "kill-9"):
            # An acknowledging command hands over well within exec mode's handover budget.
            assert new.start - first.end < 1.5, f"handover took {new.start - first.end:.3f}s"
        time.sleep(1.0)
    finally:
        if disruption == "freeze":
            os.kill(elector_pid, signal.SIGCONT)
    assert_beliefs_never_overlap(events)
    if disruption == "sigterm":
        assert old.wait(10) == 0, old.log()  # role_child exits 0 on SIGTERM: its status passes through
        assert "released " + key in old.log()
    if disruption == "kill-9":
        wait_for(lambda: not pid_alive(old_pid), 5, what="the dead elector's command to be stopped by its watchdog")
        assert "ack" in [r.event for r in records(events) if r.pid == old_pid], "it was demoted before it was stopped"
    alive = [n for n, c in made.items() if c.alive() and pid_alive(starts(events)[n].pid)]
    if disruption in ("session-destroyed", "key-deleted", "freeze"):
        assert leader in alive, f"{leader} stays in the race, its command still running"
    assert_role_files_agree(events, tmp_path, alive)
    for c in made.values():
        assert "Traceback" not in c.log()


# -- the acknowledgement -------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["sigterm", "kill-9", "freeze"])
def test_a_command_that_ignores_its_demotion_is_killed_before_anyone_else_leads(consul_agent, candidates, tmp_path,
                                                                               ending):
    """It never acknowledges and keeps believing it leads: the key is kept for --grace (never past
    the lease deadline), then the command is killed, and only then released. Its belief never
    overlaps the next leader's, however its elector went."""
    events = tmp_path / "events.log"
    a = candidates(consul_agent.http_addr, "svc/noack", "a", options=signal_options(tmp_path, "a"),
                   command=[sys.executable, ROLE_CHILD, str(events), "--no-ack", "--ignore-demotion"])
    wait_for(lambda: beliefs(events), 10, what="a to lead")
    a_command = starts(events)["a"].pid
    b = candidates(consul_agent.http_addr, "svc/noack", "b", options=signal_options(tmp_path, "b"),
                   command=[sys.executable, ROLE_CHILD, str(events)])
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow a")
    a.send_signal({"sigterm": signal.SIGTERM, "kill-9": signal.SIGKILL, "freeze": signal.SIGSTOP}[ending])
    try:
        new = wait_for(lambda: len(beliefs(events)) == 2 and beliefs(events)[1], 10, what="b to lead")
        assert_beliefs_never_overlap(events)
        assert not pid_alive(a_command), "a's command was killed before b was told"
        told = [r.t for r in records(events) if r.name == "a" and r.event == "signal" and r.detail == "SIGUSR2"][0]
        waited = new.start - told
        assert GRACE - 0.05 <= waited < GRACE + 1.5, f"b was told {waited:.3f}s after a was demoted (grace {GRACE}s)"
    finally:
        if ending == "freeze":
            a.send_signal(signal.SIGCONT)
    if ending != "kill-9":
        assert a.wait(10) == 128 + signal.SIGKILL, a.log()
        assert "did not acknowledge its demotion within 0.5s" in a.log()


def test_an_acknowledging_command_hands_over_within_the_exec_budget(consul_agent, candidates, tmp_path):
    events = tmp_path / "events.log"
    cmd = [sys.executable, ROLE_CHILD, str(events)]
    a = candidates(consul_agent.http_addr, "svc/ack", "a", options=signal_options(tmp_path, "a"), command=cmd)
    wait_for(lambda: beliefs(events), 10, what="a to lead")
    b = candidates(consul_agent.http_addr, "svc/ack", "b", options=signal_options(tmp_path, "b"), command=cmd)
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow a")
    a.send_signal(signal.SIGTERM)
    old, new = wait_for(lambda: len(beliefs(events)) == 2 and beliefs(events), 10, what="b to lead")
    # test_run's exec-mode handover budget: the standby starts within 1.5 s of the old child's end.
    assert new.start - old.end < 1.5, f"handover took {new.start - old.end:.3f}s"
    assert old.end < new.start
    acked = [r.t for r in records(events) if r.name == "a" and r.event == "ack"][0]
    assert acked < new.start
    assert "stood down from term" in a.log() and a.wait(10) == 0


# -- the command's own exit, the default role file ----------------------------------------------


def test_the_command_exiting_ends_the_race_with_its_status(consul_agent, candidates, tmp_path):
    events = tmp_path / "events.log"
    a = candidates(consul_agent.http_addr, "svc/sigexit", "a", options=signal_options(tmp_path, "a"),
                   command=[sys.executable, ROLE_CHILD, str(events), "--exit-after", "1.0", "5"])
    b = candidates(consul_agent.http_addr, "svc/sigexit", "b", options=signal_options(tmp_path, "b"),
                   command=[sys.executable, ROLE_CHILD, str(events), "--exit-after", "2.5", "6"])
    assert a.wait(15) == 5, a.log()
    assert b.wait(15) == 6, b.log()
    assert kv(consul_agent, "svc/sigexit").get("Session") is None, "the key was not released"
    assert not [s for s in json.loads(consul_agent.request("GET", "/v1/session/list")[1]) if "svc/sigexit" in s["Name"]]
    assert_beliefs_never_overlap(events)
    assert not list(tmp_path.glob("*.role*")), "role files are removed on exit"


def test_the_default_role_file_is_per_key_in_tmpdir_and_removed_on_exit(consul_agent, candidates, tmp_path):
    events = tmp_path / "events.log"
    a = candidates(consul_agent.http_addr, "svc/deep/role", "a", options=[*FAST, "--mode", "signal"],
                   command=[sys.executable, ROLE_CHILD, str(events)])
    wait_for(lambda: beliefs(events), 10, what="a to lead")
    path = tmp_path / "consul-elect-svc_deep_role.role"  # the harness sets TMPDIR to tmp_path
    env = dict(kv.split("=", 1) for kv in starts(events)["a"].detail.split())
    assert env == {"CONSUL_ELECT_KEY": "svc/deep/role", "CONSUL_ELECT_MODE": "signal", "CONSUL_ELECT_NAME": "a",
                   "CONSUL_ELECT_ROLE_FILE": str(path)}
    doc = json.loads(path.read_text())
    session = kv(consul_agent, "svc/deep/role")
    assert doc["role"] == "leader" and doc["leader"] == "a" and doc["fencing_token"] == session["ModifyIndex"]
    assert doc["lease_clock"] in ("CLOCK_BOOTTIME", "CLOCK_MONOTONIC") and doc["lease_deadline"] > 0
    clock_id = getattr(time, doc["lease_clock"])
    assert 0 < doc["lease_deadline"] - time.clock_gettime(clock_id) <= B + 0.1
    a.send_signal(signal.SIGTERM)
    assert a.wait(10) == 0
    assert not path.exists()


# -- hooks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["signal", "exec"])
def test_hooks_run_at_each_transition_with_the_right_environment(consul_agent, candidates, tmp_path, mode):
    out = tmp_path / "hooks"
    out.mkdir()
    events = tmp_path / "events.log"
    hook = (f'f={out}/$CONSUL_ELECT_HOOK-$CONSUL_ELECT_NAME-$CONSUL_ELECT_FENCING_TOKEN; '
            'env | grep ^CONSUL_ELECT_ | sort > $f.env; cat "$CONSUL_ELECT_ROLE_FILE" > $f.role; echo hook-said-hello')
    cmd = [sys.executable, ROLE_CHILD, str(events)] if mode == "signal" else ["sleep", "60"]
    cs = {}
    for name in ("a", "b"):
        cs[name] = candidates(consul_agent.http_addr, "svc/hooks", name, command=cmd, options=[
            *FAST, "--mode", mode, "--role-file", str(tmp_path / f"{name}.role"), "--on-elected", hook,
            "--on-demoted", hook])
        if name == "a":
            wait_for(lambda: list(out.glob("on-elected-a-*.env")), 10, what="a's on-elected hook")
    wait_for(lambda: "following a" in cs["b"].log(), 10, what="b to follow a")
    cs["a"].send_signal(signal.SIGTERM)
    cs["a"].wait(10)
    wait_for(lambda: list(out.glob("on-elected-b-*.env")), 10, what="b's on-elected hook")
    elected_a = next(out.glob("on-elected-a-*.env"))
    token_a = int(elected_a.name.split("-")[-1].split(".")[0])
    token_b = int(next(out.glob("on-elected-b-*.env")).name.split("-")[-1].split(".")[0])
    assert token_b > token_a

    def env_of(path):
        return dict(line.split("=", 1) for line in path.read_text().splitlines())

    common = {"CONSUL_ELECT_KEY": "svc/hooks", "CONSUL_ELECT_MODE": mode}
    assert env_of(elected_a) == {**common, "CONSUL_ELECT_NAME": "a", "CONSUL_ELECT_HOOK": "on-elected",
                                 "CONSUL_ELECT_ROLE": "leader", "CONSUL_ELECT_FENCING_TOKEN": str(token_a),
                                 "CONSUL_ELECT_ROLE_FILE": str(tmp_path / "a.role")}
    demoted_a = out / f"on-demoted-a-{token_a}.env"
    assert env_of(demoted_a)["CONSUL_ELECT_ROLE"] == "follower"
    # The role file was rewritten before each hook ran.
    assert json.loads(Path(f"{elected_a}".replace(".env", ".role")).read_text())["role"] == "leader"
    assert json.loads((out / f"on-demoted-a-{token_a}.role").read_text())["role"] == "follower"
    assert "hook on-elected: hook-said-hello" in cs["a"].log()
    assert "hook on-demoted: hook-said-hello" in cs["a"].log()


def hooks_dir(tmp_path: Path) -> tuple[Path, Path]:
    """Where the hooks write, and the role child's events file."""
    out = tmp_path / "hooks"
    out.mkdir()
    return out, tmp_path / "events.log"


# What an on-demoted hook saw: its role, and whether the command still ran and a still held the
# key when it ran (one line per run, appended, so a second run for one term shows).
OWED_HOOK = """
import base64, json, os, sys, urllib.request
out, pidfile = sys.argv[1], sys.argv[2]
try:
    os.kill(int(open(pidfile).read()), 0)
    command = "running"
except ProcessLookupError:
    command = "gone"
url = "http://" + os.environ["CONSUL_HTTP_ADDR"] + "/v1/kv/svc/owed"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
entry = json.load(opener.open(url, timeout=5))[0]
holder = json.loads(base64.b64decode(entry["Value"]))["name"] if entry.get("Session") else None
key = "held-by-a" if holder == "a" else "released"
with open(os.path.join(out, "on-demoted-" + os.environ["CONSUL_ELECT_FENCING_TOKEN"]), "a") as f:
    f.write(" ".join((os.environ["CONSUL_ELECT_ROLE"], command, key)) + "\\n")
print("ran-after-the-stop")
"""


@pytest.mark.parametrize("mode", ["signal", "exec"])
def test_a_killed_elector_owes_its_term_an_on_demoted_hook_and_the_watchdog_runs_it_once(
        consul_agent, candidates, tmp_path, mode):
    out, events = hooks_dir(tmp_path)
    script = tmp_path / "owed_hook.py"
    script.write_text(OWED_HOOK)
    pidfile = tmp_path / "a.pid"
    inner = f"{sys.executable} {ROLE_CHILD} {events}" if mode == "signal" else "sleep 60"
    cmd = ["sh", "-c", f"echo $$ > {pidfile}; exec {inner}"]
    a = candidates(consul_agent.http_addr, "svc/owed", "a", command=cmd, options=[
        *FAST, "--mode", mode, "--role-file", str(tmp_path / "a.role"),
        "--on-demoted", f"{sys.executable} {script} {out} {pidfile}"])
    wait_for(lambda: "elected leader" in a.log() and pidfile.exists(), 10, what="a to lead")
    b = candidates(consul_agent.http_addr, "svc/owed", "b", command=["sleep", "60"] if mode == "exec" else
                   [sys.executable, ROLE_CHILD, str(events)],
                   options=[*FAST, "--mode", mode, "--role-file", str(tmp_path / "b.role")])
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow a")
    time.sleep(0.3)  # past the step that told the watchdog which term owes its hook
    os.kill(a.pid, signal.SIGKILL)
    wait_for(lambda: list(out.glob("on-demoted-*")), 10, what="the watchdog to run on-demoted")
    wait_for(lambda: "elected leader" in b.log(), 10, what="b to lead")
    time.sleep(0.5)
    runs = {p.name: p.read_text() for p in out.glob("on-demoted-*")}
    assert list(runs.values()) == ["follower gone released\n"], runs
    assert "hook on-demoted: ran-after-the-stop" in a.log(), a.log()
    if mode == "exec":
        assert "consul-elect died: the command was stopped" in a.log(), a.log()


@pytest.mark.parametrize("mode", ["signal", "exec"])
def test_an_on_demoted_hook_the_elector_ran_is_not_run_again_when_it_is_killed_in_its_next_term(
        consul_agent, candidates, tmp_path, mode):
    out, events = hooks_dir(tmp_path)
    hook = f'echo "$CONSUL_ELECT_ROLE" >> {out}/on-demoted-$CONSUL_ELECT_FENCING_TOKEN'
    cmd = [sys.executable, ROLE_CHILD, str(events)] if mode == "signal" else ["sleep", "60"]
    a = candidates(consul_agent.http_addr, "svc/paid", "a", command=cmd, options=[
        *FAST, "--mode", mode, "--role-file", str(tmp_path / "a.role"), "--on-demoted", hook])
    wait_for(lambda: "elected leader" in a.log(), 10, what="a to lead")
    # The key deleted under a: its first term ends and it runs that term's hook itself; alone,
    # it wins the key again, which opens a second term.
    consul_agent.request("DELETE", "/v1/kv/svc/paid")
    wait_for(lambda: list(out.glob("on-demoted-*")), 10, what="a's own on-demoted")
    wait_for(lambda: a.log().count("elected leader") == 2, 15, what="a's second term")
    time.sleep(0.3)  # past the step that told the watchdog which term owes its hook
    below = a.descendants()  # its watchdog (and prepared child): they outlive it a moment
    assert below
    os.kill(a.pid, signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in below), 10, what="a's watchdog to finish")
    runs = sorted(p.read_text() for p in out.glob("on-demoted-*"))
    # One run per term: the first by a itself, the second by its watchdog; never the first twice.
    assert runs == ["follower\n", "follower\n"], runs


def test_a_hung_hook_is_killed_at_the_timeout_and_the_election_goes_on(consul_agent, candidates, tmp_path):
    events = tmp_path / "events.log"
    cmd = [sys.executable, ROLE_CHILD, str(events)]
    pidfile = tmp_path / "hook.pid"
    hang = f"echo $$ > {pidfile}; exec sleep 60"
    a = candidates(consul_agent.http_addr, "svc/hang", "a", command=cmd,
                   options=signal_options(tmp_path, "a", "--on-elected", hang, "--on-demoted", hang,
                                          "--hook-timeout", "0.5s"))
    wait_for(lambda: beliefs(events), 10, what="a to lead")
    hook_pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, what="the hook"))
    b = candidates(consul_agent.http_addr, "svc/hang", "b", command=cmd, options=signal_options(tmp_path, "b"))
    wait_for(lambda: "hook on-elected did not finish within 0.5s: killed" in a.log(), 5, what="the hook's timeout")
    wait_for(lambda: not pid_alive(hook_pid), 2, what="the hung hook to be killed")
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow a")
    a.send_signal(signal.SIGTERM)
    old, new = wait_for(lambda: len(beliefs(events)) == 2 and beliefs(events), 10, what="b to lead")
    assert new.start - old.end < 1.5, "a hanging on-demoted hook delays nothing"
    assert a.wait(10) == 0
    assert_beliefs_never_overlap(events)
