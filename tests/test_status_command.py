"""`consul-elect status` against a real Consul: what it shows, how it exits, what it imports.

Candidates are real `consul-elect run` processes (the `candidates` fixture, harness.FAST
timings, `sleep 60` as the command); edge cases are written into Consul directly over HTTP.
Every expectation is checked against Consul's own answer, read over plain HTTP.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from consul_servers import ConsulError, wait_until

CONSUL_ELECT = str(Path(sys.executable).with_name("consul-elect"))
SLEEPER = ["sleep", "60"]


def status_env(http_addr: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_HTTP_", "CONSUL_ELECT_"))}
    return {**env, "CONSUL_HTTP_ADDR": http_addr, **extra}


def run_status(http_addr: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([CONSUL_ELECT, "status", *args], env=status_env(http_addr, **env),
                          capture_output=True, text=True, timeout=30)


def consul_view(agent, key: str) -> tuple[str | None, list[str], int | None]:
    """Consul's own answer: (name on the holder's session, names on the other sessions, ModifyIndex)."""
    status, body = agent.request("GET", f"/v1/kv/{key}")
    kv = json.loads(body)[0] if status == 200 else {}
    prefix = f"consul-elect {key} "
    names = {s["ID"]: s["Name"][len(prefix):] for s in json.loads(agent.request("GET", "/v1/session/list")[1])
             if s["Name"].startswith(prefix)}
    holder = kv.get("Session")
    return names.get(holder), sorted(n for sid, n in names.items() if sid != holder), kv.get("ModifyIndex")


def wait_for_view(agent, key: str, wanted, what: str, started) -> tuple:
    """Consul's view of `key` once `wanted(view)` holds; on timeout, fail with the candidates' logs."""
    def reached():
        view = consul_view(agent, key)
        return view if wanted(view) else None

    try:
        return wait_until(reached, 20, what=what)
    except ConsulError as e:
        logs = "".join(f"\n--- {c.name} ---\n{c.log()}" for c in started)
        pytest.fail(f"{e}{logs}", pytrace=False)


def status_when_settled(agent, key: str, started, *args: str):
    """Once Consul shows one candidate leading and the others waiting, run status while nothing changes."""
    for _ in range(5):
        before = wait_for_view(agent, key, lambda v: v[0] is not None and len(v[1]) == len(started) - 1,
                               f"a leader and {len(started) - 1} waiting on {key}", started)
        result = run_status(agent.http_addr, "--key", key, *args)
        # A hand-over between the two reads would make the comparison meaningless: try again.
        if consul_view(agent, key) == before:
            return before, result
    pytest.fail(f"leadership of {key} kept changing")


def assert_one_clear_line(result: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert words in result.stderr


def test_json_shows_leader_fencing_token_and_waiting_candidates(consul_agent, candidates):
    started = [candidates(consul_agent.http_addr, "svc/json", name, command=SLEEPER)
               for name in ("alpha", "bravo", "charlie")]

    (leader_name, waiting, modify_index), result = status_when_settled(consul_agent, "svc/json", started, "--json")

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    # Fields are only ever added (holders, limit: --holders), never renamed.
    assert list(doc) == ["key", "leader", "fencing_token", "lock_index", "candidates", "holders", "limit"]
    assert doc["key"] == "svc/json"
    leader = doc["leader"]
    assert list(leader) == ["name", "host", "pid", "status_address", "since", "session", "node"]
    assert leader["name"] == leader_name
    assert leader["pid"] == next(c.pid for c in started if c.name == leader_name)
    assert leader["node"] == consul_agent.node_name
    assert doc["fencing_token"] == modify_index
    assert doc["lock_index"] >= 1
    assert [list(c) for c in doc["candidates"]] == [["name", "session", "node"]] * 2
    assert sorted(c["name"] for c in doc["candidates"]) == waiting
    assert {c["node"] for c in doc["candidates"]} == {consul_agent.node_name}
    assert leader["session"] not in {c["session"] for c in doc["candidates"]}
    assert doc["holders"] == [{**leader, "slot": None, "fencing_token": modify_index}] and doc["limit"] == 1


def test_human_output_names_the_leader_of_the_key_from_the_environment(consul_agent, candidates):
    leader = candidates(consul_agent.http_addr, "svc/human", "the-leader", command=SLEEPER)
    wait_for_view(consul_agent, "svc/human", lambda v: v[0], "a leader", [leader])

    result = run_status(consul_agent.http_addr, CONSUL_ELECT_KEY="svc/human")

    assert result.returncode == 0, result.stderr
    assert "the-leader" in result.stdout and "svc/human" in result.stdout
    assert not result.stdout.lstrip().startswith("{")


STALE_IDENTITY = json.dumps({"consul_elect": 1, "name": "gone", "host": "h", "pid": 1, "session": "x"})


@pytest.mark.parametrize("value, held, code, words", [
    pytest.param(None, False, 3, "nobody leads", id="missing-key"),
    pytest.param("", False, 3, "nobody leads", id="empty-key"),
    pytest.param(STALE_IDENTITY, False, 3, "nobody leads", id="identity-left-by-an-expired-session"),
    pytest.param("max_connections=5", False, 65, "not a consul-elect key", id="someone-elses-value"),
    pytest.param("locked by another tool", True, 65, "not a consul-elect key", id="held-by-another-tool"),
])
def test_exit_status_follows_what_the_key_holds(consul_agent, value, held, code, words):
    key = "svc/edge"
    query = ""
    if held:
        status, body = consul_agent.request("PUT", "/v1/session/create", {"Name": "another tool", "TTL": "60s"})
        query = f"?acquire={json.loads(body)['ID']}"
    if value is not None:
        assert consul_agent.request("PUT", f"/v1/kv/{key}{query}", value.encode()) == (200, b"true\n")

    result = run_status(consul_agent.http_addr, "--key", key, "--json")

    assert_one_clear_line(result, code, words)
    if code == 3:
        assert json.loads(result.stdout)["leader"] is None


def test_unreachable_consul_exits_69():
    result = run_status("127.0.0.1:1", "--key", "svc/nowhere", "--json")

    assert_one_clear_line(result, 69, "cannot reach Consul at http://127.0.0.1:1")
    assert result.stdout == ""


def test_acl_denial_exits_77(acl_agent):
    result = run_status(acl_agent.http_addr, "--key", "svc/secret")

    assert_one_clear_line(result, 77, "ACL denied")


class Lines:
    """The lines a process writes to a pipe, readable with a timeout."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    def next_json(self, timeout: float) -> dict:
        return json.loads(self.lines.get(timeout=timeout))


def test_watch_prints_a_frame_when_leadership_changes_and_ends_cleanly_on_ctrl_c(consul_agent, candidates):
    first = candidates(consul_agent.http_addr, "svc/watch", "first", command=SLEEPER)
    wait_for_view(consul_agent, "svc/watch", lambda v: v[0] == "first", "first to lead", [first])
    second = candidates(consul_agent.http_addr, "svc/watch", "second", command=SLEEPER)
    wait_for_view(consul_agent, "svc/watch", lambda v: v[1] == ["second"], "second to wait", [first, second])

    watch = subprocess.Popen([CONSUL_ELECT, "status", "--key", "svc/watch", "--watch", "--json"],
                             env=status_env(consul_agent.http_addr), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        frames = Lines(watch.stdout)
        frame = frames.next_json(timeout=10)
        assert (frame["leader"]["name"], [c["name"] for c in frame["candidates"]]) == ("first", ["second"])
        first_token = frame["fencing_token"]

        os.kill(first.pid, signal.SIGTERM)  # a clean hand-over: release, then destroy the session
        # first releases, then destroys its session: a frame may show it as still waiting
        # in between, until its session is gone.
        while not (frame["leader"] and frame["leader"]["name"] == "second" and frame["candidates"] == []):
            frame = frames.next_json(timeout=15)
        assert frame["fencing_token"] > first_token

        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
        assert watch.stderr.read() == ""
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGKILL)
            watch.wait()


# Runs the CLI in-process, then reports which heavy modules it loaded (on stderr, after its output).
IMPORT_PROBE = """
import sys
from consul_elect.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(m for m in ("rich", "consul", "requests") if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"]], ids=["help", "status-help"])
def test_help_loads_neither_consul_nor_rich(args):
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *args], capture_output=True, text=True, timeout=30)

    assert "Usage:" in result.stdout
    assert result.stderr.splitlines()[-1] == "", result.stderr


def test_status_json_never_loads_rich(consul_agent):
    args = ["status", "--key", "svc/fast", "--json"]
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *args], env=status_env(consul_agent.http_addr),
                            capture_output=True, text=True, timeout=30)

    assert json.loads(result.stdout.splitlines()[0])["key"] == "svc/fast"
    # Not rich, and since the transport is the standard library's, not py-consul or requests either.
    assert result.stderr.splitlines()[-1] == "", result.stderr
