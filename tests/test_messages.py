"""What a new user reads (issue 13): one-line messages that say what to do, attributable logs,
exit codes in --help, and output without padding. Real agents; no output may carry a traceback
or a library's internals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from harness import FAST, read_lives, wait_for

LEAKS = ("Traceback", "HTTPSConnectionPool", "Caused by", "urllib3", "requests.exceptions")


def cli(*args, env_extra=None, timeout=30):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_ELECT", "CONSUL_HTTP"))}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "consul_elect", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_clean_line(stderr: str, *words: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("consul-elect:")]
    assert len(lines) == 1, stderr
    for word in words:
        assert word in lines[0], stderr
    for leak in LEAKS:
        assert leak not in stderr, stderr


def test_wrong_addresses_are_said_plainly(consul_agent, tls_agent, closing_port):
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    table = [
        (f"https://{consul_agent.http_addr}", 78, ["https was used", "speaks plain HTTP", "use http://"]),
        (f"http://{tls_agent.https_addr}", 78, ["speaks HTTPS", "https://"]),
        (closing_port, 69, ["closed the connection without an HTTP answer"]),
        (f"127.0.0.1:{closed_port}", 69, ["connection refused"]),
        ("no-such-host.invalid:8500", 69, ["does not resolve"]),
    ]
    for addr, code, words in table:
        p = cli("status", "--key", "svc/x", "--json", "--http-addr", addr)
        assert p.returncode == code, (addr, p.stderr)
        assert_one_clean_line(p.stderr, *words)


def test_a_ttl_below_a_stock_agents_floor_says_what_to_pass(consul_bin, tmp_path, candidates):
    from consul_servers import ConsulAgent

    agent = ConsulAgent(consul_bin, base_dir=str(tmp_path / "agent"), session_ttl_min="10s").start()
    try:
        c = candidates(agent.http_addr, "svc/ttl5", "a", options=["--ttl", "5s", "--lock-delay", "2s",
                                                                  "--grace", "0.5s"])
        assert c.wait(15) == 2
    finally:
        agent.stop()
    assert_one_clean_line(c.log(), "session_ttl_min is 10s", "--ttl 10s")


def test_every_log_line_names_the_candidate_and_json_lines_parse(consul_agent, candidates):
    a = candidates(consul_agent.http_addr, "svc/named", "alice")
    wait_for(lambda: read_lives(candidates.events), 10, what="alice to lead")
    b = candidates(consul_agent.http_addr, "svc/named", "bob", options=[*FAST, "--log-format", "json"])
    wait_for(lambda: "following alice" in b.log(), 10, what="bob to follow")
    lines = [line for line in a.log().splitlines() if " consul-elect[" in line]
    assert lines and all(" alice: " in line for line in lines), a.log()
    docs = [json.loads(line) for line in b.log().splitlines() if line.startswith("{")]
    assert docs and all(d["name"] == "bob" and d["pid"] == b.pid and d["level"] for d in docs)
    assert any(d["message"].startswith("following alice") for d in docs)


def test_json_logs_end_with_the_exit_code_on_every_way_out(consul_agent, candidates):
    c = candidates(consul_agent.http_addr, "svc/json-exit", "a", command=["sh", "-c", "exit 4"],
                   options=[*FAST, "--log-format", "json"])
    assert c.wait(15) == 4
    docs = [json.loads(line) for line in c.log().splitlines() if line.startswith("{")]
    assert docs[-1]["exit_code"] == 4 and docs[-1]["level"] == "info", docs[-3:]
    assert sum("exit_code" in d for d in docs) == 1


def test_the_command_line_is_logged_once_as_a_shell_would_quote_it(consul_agent, candidates):
    c = candidates(consul_agent.http_addr, "svc/quoted", "a", command=["sh", "-c", "exit 3", "it's"])
    assert c.wait(15) == 3
    assert c.log().count("command: sh -c 'exit 3' 'it'\"'\"'s'") == 1, c.log()


def test_no_arguments_is_a_usage_error_and_run_help_lists_exit_codes():
    bare = cli()
    assert bare.returncode == 2 and "Usage:" in bare.stderr
    helped = cli("run", "--help")
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    for code in ("2 usage", "69 Consul unreachable", "70 internal failure", "75 lost", "77 ACL denied",
                 "78 TLS misconfigured", "124", "126", "127"):
        assert code in text, code


def test_plain_status_output_has_no_padding_at_line_ends(consul_agent, candidates):
    candidates(consul_agent.http_addr, "svc/table", "a")
    wait_for(lambda: read_lives(candidates.events), 10, what="a to lead")
    p = cli("status", "--key", "svc/table", env_extra={"CONSUL_HTTP_ADDR": consul_agent.http_addr})
    assert p.returncode == 0 and "leader" in p.stdout, p.stderr
    assert all(line == line.rstrip() for line in p.stdout.splitlines()), repr(p.stdout)


def test_a_stopped_command_is_reported_within_a_second_or_two(consul_agent, candidates):
    c = candidates(consul_agent.http_addr, "svc/stopped", "a")
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a's command")[0]
    c.send_signal(signal.SIGTSTP)  # forwarded to the command's group, as a Ctrl-Z would be
    wait_for(lambda: "is stopped by SIGTSTP" in c.log(), 3, what="the stop to be reported")
    assert "kill -CONT" in c.log()
    c.send_signal(signal.SIGTERM)
    assert c.wait(10) == 0 and not os.path.exists(f"/proc/{first.pid}/stat")
