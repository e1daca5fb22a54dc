"""Settings arithmetic, durations, addresses, the key's value, the status report, the signal table,
the watchdog protocol and the exit codes: pure functions, no Consul."""

import signal
import subprocess
import sys

import pytest

from consul_elect import exit_codes
from consul_elect import watchdog_protocol as proto
from consul_elect.config import Config, parse_address
from consul_elect.durations import format_duration, parse_duration
from consul_elect.errors import (
    ConsulTLSError, ConsulUnavailable, ElectError, LeadershipTimeout, NotAnElectKey, PermissionDenied, UsageError,
)
from consul_elect.lock_key import Identity, KeyState, parse_identity, session_name
from consul_elect.signals import CHILD_RESET, FORWARDED_SIGNALS, SHUTDOWN_SIGNALS, WATCHDOG_IGNORED
from consul_elect.status_report import build_report


@pytest.mark.parametrize("ttl, lock_delay, grace, window, renew", [
    (10, 6, 2, 6 * 0.99 - 0.25, (6 * 0.99 - 0.25 - 2) / 3),
    (3, 2, 0.5, 2 * 0.99 - 0.25, (2 * 0.99 - 0.25 - 0.5) / 3),
    (2, 15, 0.2, 2 * 0.99 - 0.25, (2 * 0.99 - 0.25 - 0.2) / 3),
])
def test_lease_window_and_renew_interval_arithmetic(ttl, lock_delay, grace, window, renew):
    c = Config(key="a/b", command=("x",), ttl=ttl, lock_delay=lock_delay, grace=grace)
    assert c.lease_window == pytest.approx(window)
    assert c.renew_interval == pytest.approx(renew)
    assert c.follower_renew_interval == pytest.approx(max(ttl / 3, renew))


@pytest.mark.parametrize("fields, words", [
    (dict(grace=10), "unsafe --grace 10s"),
    (dict(lock_delay=0), "no safe lease"),
    (dict(ttl=0.5), "--ttl must be between"),
    (dict(lock_delay=61), "--lock-delay must be between"),
    (dict(timeout=0), "--timeout must be greater than 0"),
    (dict(status_port=70000), "--port must be between"),
    (dict(command=()), "missing command"),
    (dict(name=" "), "--name must not be empty"),
])
def test_unsafe_or_invalid_settings_are_refused_with_the_reason(fields, words):
    with pytest.raises(UsageError, match=words):
        Config(**{"key": "a/b", "command": ("x",), **fields})


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "a b", "a/../b", "./a", "a\x01b"])
def test_bad_keys_are_refused(key):
    with pytest.raises(UsageError):
        Config(key=key, command=("x",))


@pytest.mark.parametrize("text, seconds", [
    ("10", 10.0), ("1.5", 1.5), ("500ms", 0.5), ("15s", 15.0), ("1m30s", 90.0), ("2h", 7200.0), ("250us", 0.00025),
])
def test_durations_in_consuls_notation(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten", "5x", "1m30", "-1s", "s"])
def test_bad_durations_name_the_accepted_forms(text):
    with pytest.raises(UsageError, match="use a number of seconds"):
        parse_duration(text, what="--ttl")


@pytest.mark.parametrize("seconds, text", [(10, "10s"), (1.5, "1500ms"), (0, "0s"), (0.25, "250ms")])
def test_durations_are_formatted_for_consul(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("addr, expected", [
    ("127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
    ("consul", ("http", "consul", 80)),   # as the consul CLI: no port is the scheme's own
    ("http://consul:18500", ("http", "consul", 18500)),
    ("https://consul", ("https", "consul", 443)),
    ("https://consul:8501/", ("https", "consul", 8501)),
    ("[::1]:8500", ("http", "::1", 8500)),
])
def test_consul_addresses_as_the_consul_cli_reads_them(addr, expected):
    assert parse_address(addr) == expected


@pytest.mark.parametrize("addr", ["ftp://x", "x:0", "x:99999", "x:port", ":8500"])
def test_bad_addresses_are_usage_errors(addr):
    with pytest.raises(UsageError, match="invalid Consul address"):
        parse_address(addr)


def test_consul_http_ssl_switches_the_scheme():
    assert parse_address("consul:8501", use_ssl=True)[0] == "https"
    assert parse_address("consul", use_ssl=True) == ("https", "consul", 443)


def test_identity_round_trip_and_release_mark():
    ident = Identity("a", "h", 1, "t", "0.1", 1.73, 2.0)
    doc = parse_identity(ident.to_value("sid", "since"))
    assert doc["name"] == "a" and doc["session"] == "sid" and doc["lease_window"] == 1.73 and "released" not in doc
    assert parse_identity(ident.to_value("sid", "since", released=True))["released"] is True


@pytest.mark.parametrize("value", [None, b"", b"plain", b"[1]", b'{"consul_elect": 2}', b"\xff\xfe"])
def test_values_that_are_not_ours_parse_to_none(value):
    assert parse_identity(value) is None


def _value(name, session):
    return Identity(name, "h", 7, "t", "0.1", 1.73, 2.0, "h:8080").to_value(session, "since")


def test_status_report_names_leader_token_and_waiting_candidates_oldest_first():
    kv = KeyState("s-a", 55, 3, _value("a", "s-a"))
    sessions = [
        {"ID": "s-c", "Name": session_name("k/x", "c"), "Node": "n3", "CreateIndex": 30},
        {"ID": "s-a", "Name": session_name("k/x", "a"), "Node": "n1", "CreateIndex": 10},
        {"ID": "s-b", "Name": session_name("k/x", "b"), "Node": "n2", "CreateIndex": 20},
        {"ID": "s-z", "Name": session_name("other/key", "z"), "Node": "n9", "CreateIndex": 5},
    ]
    report = build_report("k/x", kv, sessions)
    assert report.leader.name == "a" and report.leader.node == "n1" and report.fencing_token == 55
    assert [c.name for c in report.candidates] == ["b", "c"]
    assert report.to_dict()["lock_index"] == 3


def test_status_report_of_a_released_key_has_no_leader_and_no_token():
    report = build_report("k/x", KeyState(None, 56, 3, _value("a", "s-a")), [])
    assert report.leader is None and report.fencing_token is None


def test_status_report_refuses_a_key_holding_another_tools_data():
    with pytest.raises(NotAnElectKey):
        build_report("k/x", KeyState(None, 5, 0, b"foreign"), [])


def test_signal_table_derives_disjoint_jobs():
    assert SHUTDOWN_SIGNALS == {signal.SIGTERM, signal.SIGINT}
    assert not SHUTDOWN_SIGNALS & FORWARDED_SIGNALS
    assert signal.SIGCHLD not in FORWARDED_SIGNALS and signal.SIGKILL not in FORWARDED_SIGNALS
    # Whatever the elector forwards, the watchdog (in the same process group) must survive.
    assert FORWARDED_SIGNALS <= WATCHDOG_IGNORED
    assert {signal.SIGALRM, signal.SIGPWR} <= WATCHDOG_IGNORED
    assert WATCHDOG_IGNORED | {signal.SIGPIPE} <= CHILD_RESET


@pytest.mark.parametrize("message", [
    proto.SetSession("s"), proto.SetSession(None), proto.SetLease(12.5, '{"a": 1}'), proto.Spawn({"A": "1"}),
    proto.SetDemotedHook({"CONSUL_ELECT_FENCING_TOKEN": "7"}), proto.SetDemotedHook(None),
    proto.ForwardSignal(1), proto.Stop(0.5), proto.Quit(), proto.Ping(3), proto.Spawned(9),
    proto.SpawnFailed(False, 127, "x: not found"), proto.Exited(9, 0, "exited", False, True, (1, 2)), proto.Pong(3),
])
def test_watchdog_messages_round_trip(message):
    line = proto.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert proto.decode(line) == message


@pytest.mark.parametrize("line", [b"{}", b"[]", b'{"type": "Nope"}'])
def test_unknown_watchdog_messages_are_refused(line):
    with pytest.raises(ValueError):
        proto.decode(line)


@pytest.mark.parametrize("error, code", [
    (UsageError("x"), 2), (NotAnElectKey("x"), 65), (ConsulUnavailable("x"), 69), (ElectError("x"), 70),
    (PermissionDenied("x"), 77), (ConsulTLSError("x"), 78), (LeadershipTimeout("x"), 124),
])
def test_exit_codes_in_one_place(error, code):
    assert exit_codes.for_error(error) == code


@pytest.mark.parametrize("module", ["consul_elect.state", "consul_elect.config", "consul_elect.clock",
                                    "consul_elect.leadership", "consul_elect.lock_key", "consul_elect.cli"])
def test_light_modules_load_neither_py_consul_nor_requests(module):
    code = (f"import sys, {module}; heavy = [m for m in sys.modules if m.split('.')[0] in ('consul', 'requests', "
            "'urllib3', 'rich')]; print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_package_imports_have_no_cycle():
    import ast
    import pathlib

    import consul_elect

    pkg = pathlib.Path(consul_elect.__file__).parent
    graph = {}
    for f in pkg.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps |= {a.name for a in node.names}
        graph[f.stem] = {d for d in deps if (pkg / f"{d}.py").exists()}

    def reach(start, seen):
        for d in graph.get(start, ()):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    cycles = [m for m in graph if m in reach(m, set())]
    assert not cycles, f"import cycles through {cycles}"


def test_metrics_export_no_created_series():
    from consul_elect.metrics import ElectionMetrics
    from consul_elect.state import ElectionState

    text = ElectionMetrics(ElectionState("a/b", "n")).render().decode()
    assert "consul_elect_renew_latency_seconds_bucket" in text
    assert "_created" not in text
