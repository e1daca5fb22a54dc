"""ConsulClient over the stdlib transport against real Consul agents: faults, wrong addresses, TLS.

Real agents wherever a server can produce the situation (wrong ports, TLS mistakes, mTLS, the
session_ttl_min floor, a token in ACLs); the fault proxy (tests/fault_proxy.py) for answers no
healthy Consul gives (429, garbage, trickles, hangs). The client is exercised in-process; the
end-to-end `consul-elect run` versions belong with the election core.
"""

from __future__ import annotations

import http.client
import os
import shutil
import time

import pytest
from consul_servers import ConsulAgent, free_port
from fault_proxy import Fault, FaultProxy

from consul_elect.config import Connection
from consul_elect.consul_api import ConsulClient
from consul_elect.errors import ConsulTLSError, ConsulUnavailable, PermissionDenied, RejectedByConsul
from consul_elect.transport import put_once

LIBRARY_WORDS = ("Traceback", "HTTPSConnectionPool", "HTTPConnectionPool", "Caused by", "Errno", "SSLError(",
                 "RemoteDisconnected(", "Max retries")


def connection(addr: str, **kwargs) -> Connection:
    host, port = addr.rsplit(":", 1)
    return Connection(host=host, port=int(port), **kwargs)


def mtls(agent, **kwargs) -> Connection:
    settings = dict(scheme="https", ca_cert=agent.ca_file, client_cert=agent.client_cert,
                    client_key=agent.client_key)
    settings.update(kwargs)
    return connection(agent.https_addr, **settings)


def assert_plain_sentence(text: str) -> None:
    assert "\n" not in text and text == text.strip(), text
    for words in LIBRARY_WORDS:
        assert words not in text, text


def leader_session(client: ConsulClient, key: str) -> str:
    session = client.create_session("transport-test", ttl=10, lock_delay=0)
    assert client.acquire(key, session, b"{}") is not None
    return session


# -- answers a healthy Consul does not give -------------------------------------------------

CALLS = {
    "acquire": lambda c, s: c.acquire("svc/leader", s, b"{}", timeout=2),
    "read_key": lambda c, s: c.read_key("svc/leader", timeout=2),
    "renew_session": lambda c, s: c.renew_session(s, timeout=2),
}


@pytest.mark.parametrize("call", CALLS)
def test_429_is_retryable_and_carries_retry_after(consul_agent, call):
    with FaultProxy(consul_agent.http_addr) as proxy:
        client = ConsulClient(connection(proxy.address))
        session = leader_session(client, "svc/leader")
        proxy.set_fault(Fault.status(429, b"too many connections", {"Retry-After": "7"}))
        with pytest.raises(ConsulUnavailable) as caught:
            CALLS[call](client, session)
        assert caught.value.retry_after == 7.0
        assert "429" in str(caught.value) and "retry after 7s" in str(caught.value)
        proxy.set_fault(None)
        CALLS[call](client, session)   # the same client carries on once Consul does
    assert [status for *_, status in proxy.requests][-2:] == [429, 200]


@pytest.mark.parametrize("garbage", [b"", b'{"Results": [{"KV": ', b"<html>oops</html>"],
                         ids=["empty", "truncated JSON", "HTML"])
@pytest.mark.parametrize("call", CALLS)
def test_garbage_200_answers_are_retryable_not_a_crash(consul_agent, call, garbage):
    with FaultProxy(consul_agent.http_addr) as proxy:
        client = ConsulClient(connection(proxy.address))
        session = leader_session(client, "svc/leader")
        proxy.set_fault(Fault.body(garbage))
        with pytest.raises(ConsulUnavailable) as caught:
            CALLS[call](client, session)
        assert_plain_sentence(str(caught.value))
        proxy.set_fault(None)
        CALLS[call](client, session)


@pytest.mark.parametrize("fault, rate", [(Fault.trickle(5), "5 B/s"), (Fault.hang(), "hang")], ids=["trickle", "hang"])
def test_a_slow_answer_is_cut_at_the_request_deadline(consul_agent, fault, rate):
    with FaultProxy(consul_agent.http_addr) as proxy:
        client = ConsulClient(connection(proxy.address))
        session = leader_session(client, "svc/leader")
        proxy.set_fault(fault)
        timings = {}
        for name, call in [("renew", lambda: client.renew_session(session, timeout=1.0)),
                           ("blocking read", lambda: client.read_key("svc/leader", index=1, wait=30, timeout=1.0))]:
            started = time.monotonic()
            with pytest.raises(ConsulUnavailable) as caught:
                call()
            timings[name] = time.monotonic() - started
            assert "did not answer within 1.0s" in str(caught.value)
    # A trickled answer is ~250 bytes: a per-read timeout would wait 50 s for it.
    for name, took in timings.items():
        assert 0.95 <= took < 1.5, f"{name} through a {rate} proxy took {took:.2f}s with a 1.0s deadline"


def test_a_reset_connection_is_a_retryable_plain_sentence(consul_agent):
    with FaultProxy(consul_agent.http_addr) as proxy:
        client = ConsulClient(connection(proxy.address))
        leader_session(client, "svc/leader")
        proxy.set_fault(Fault.reset())
        with pytest.raises(ConsulUnavailable) as caught:
            client.read_key("svc/leader", timeout=2)
        assert "closed the connection without an HTTP answer" in str(caught.value)
        assert_plain_sentence(str(caught.value))


def test_a_dropped_kept_alive_connection_is_reopened(consul_agent):
    client = ConsulClient(connection(consul_agent.http_addr))
    assert client.read_key("svc/leader")[1] is None
    consul_agent.restart()   # closes our kept-alive connection from the server side
    assert client.read_key("svc/leader")[1] is None


# -- the token ------------------------------------------------------------------------------

def test_a_token_with_a_trailing_newline_works_and_never_appears_in_errors(acl_agent):
    rules = 'key_prefix "svc/" { policy = "write" } session_prefix "" { policy = "write" }'
    token = acl_agent.create_token(rules) + "\n"   # a mounted secret read with its newline
    client = ConsulClient(connection(acl_agent.http_addr, token=token))
    session = leader_session(client, "svc/leader")   # sent stripped, as the consul CLI does
    with pytest.raises(PermissionDenied) as denied:
        client.acquire("other/leader", session, b"{}")
    with FaultProxy(acl_agent.http_addr) as proxy:
        echoed = f"rpc error: ACL not found: token {token.strip()!r} ({token!r})".encode()
        proxy.set_fault(Fault.status(500, echoed))
        with pytest.raises(PermissionDenied) as forced:
            ConsulClient(connection(proxy.address, token=token)).read_key("svc/leader")
    for error in (denied.value, forced.value):
        assert token.strip() not in str(error) and "ACL denied" in str(error)
        assert_plain_sentence(str(error))
    assert "<redacted>" in str(forced.value)


# -- wrong addresses (issue 13) -------------------------------------------------------------

WRONG_ADDRESSES = {
    "https to an http port": (ConsulTLSError, ["https was used", "speaks plain HTTP", "use http://",
                                               "enable TLS on the agent"]),
    "http to an https port": (ConsulTLSError, ["http was used", "speaks HTTPS", "use https://"]),
    "a non-HTTP port": (ConsulUnavailable, ["closed the connection without an HTTP answer",
                                            "is it a Consul HTTP port?"]),
    "a closed port": (ConsulUnavailable, ["connection refused"]),
    "a name that does not resolve": (ConsulUnavailable, ["no-such-host.invalid does not resolve"]),
}


@pytest.mark.parametrize("case", WRONG_ADDRESSES)
def test_wrong_addresses_are_named_in_plain_words(request, case):
    if case == "https to an http port":
        conn = connection(request.getfixturevalue("consul_agent").http_addr, scheme="https")
    elif case == "http to an https port":
        conn = connection(request.getfixturevalue("tls_agent").https_addr)
    elif case == "a non-HTTP port":
        conn = connection(request.getfixturevalue("closing_port"))
    elif case == "a closed port":
        conn = connection(f"127.0.0.1:{free_port()}")
    else:
        conn = Connection(host="no-such-host.invalid", port=8500)
    error_type, words = WRONG_ADDRESSES[case]
    started = time.monotonic()
    with pytest.raises(error_type) as caught:
        ConsulClient(conn).read_key("svc/leader", timeout=3)
    assert time.monotonic() - started < 2.5
    for word in words:
        assert word in str(caught.value), str(caught.value)
    assert_plain_sentence(str(caught.value))


def test_ttl_below_session_ttl_min_says_the_floor_and_what_to_pass(consul_bin, tmp_path):
    agent = ConsulAgent(consul_bin, base_dir=str(tmp_path / "stock"), session_ttl_min="10s")
    try:
        agent.start()
        with pytest.raises(RejectedByConsul) as caught:
            ConsulClient(connection(agent.http_addr)).create_session("n", ttl=5, lock_delay=0)
    finally:
        agent.stop()
    text = str(caught.value)
    assert text.startswith("Consul's session_ttl_min is 10s: pass --ttl 10s or more"), text
    assert "lower session_ttl_min on the servers" in text
    assert "5000000000" not in text and "=24h0m0s" not in text
    assert_plain_sentence(text)


def test_datacenter_is_sent_and_an_unknown_one_is_named(consul_agent):
    assert ConsulClient(connection(consul_agent.http_addr, datacenter="dc1")).read_key("svc/leader")[1] is None
    with pytest.raises(ConsulUnavailable) as caught:
        ConsulClient(connection(consul_agent.http_addr, datacenter="nowhere")).read_key("svc/leader")
    assert "datacenter nowhere" in str(caught.value)


# -- TLS ------------------------------------------------------------------------------------

def test_mtls_session_lock_and_release_end_to_end(tls_agent):
    client = ConsulClient(mtls(tls_agent))
    session = client.create_session("mtls", ttl=10, lock_delay=0)
    token = client.acquire("svc/leader", session, b'{"name": "a"}')
    _, state = client.read_key("svc/leader")
    assert state.session == session and state.modify_index == token and state.value == b'{"name": "a"}'
    client.renew_session(session, timeout=2)
    assert client.session_info(session)["ID"] == session
    assert client.release("svc/leader", session) is True
    client.destroy_session(session)
    assert client.session_info(session) is None
    # A CA directory, as CONSUL_CAPATH: every file in it.
    ca_dir = tls_agent.tls_dir + "/ca-dir"
    os.makedirs(ca_dir)
    shutil.copy(tls_agent.ca_file, ca_dir)
    assert ConsulClient(mtls(tls_agent, ca_cert=None, ca_path=ca_dir)).read_key("svc/leader")[0] > 0


@pytest.mark.parametrize("mistake, words", [
    (dict(ca_cert="other"), ["certificate verify failed for host 127.0.0.1", "wrong CA (CONSUL_CACERT)",
                             "CONSUL_TLS_SERVER_NAME", "unable to get local issuer"]),
    (dict(tls_server_name="consul.example.org"), ["certificate verify failed for host consul.example.org",
                                                  "wrong CONSUL_TLS_SERVER_NAME", "not valid for"]),
    (dict(client_cert=None, client_key=None), ["requires a client certificate", "CONSUL_CLIENT_CERT"]),
], ids=["wrong CA", "wrong server name", "no client certificate"])
def test_tls_mistakes_fail_at_once_with_what_to_change(tls_agent, mistake, words):
    if mistake.get("ca_cert") == "other":
        mistake = dict(ca_cert=tls_agent.other_ca_file)
    started = time.monotonic()
    with pytest.raises(ConsulTLSError) as caught:
        ConsulClient(mtls(tls_agent, **mistake)).read_key("svc/leader", timeout=3)
    assert time.monotonic() - started < 1.0, "a TLS mistake is reported at once, not retried"
    for word in words:
        assert word in str(caught.value), str(caught.value)
    assert_plain_sentence(str(caught.value))
    assert ConsulClient(mtls(tls_agent)).read_key("svc/leader")[0] > 0, "configured right, the agent answers"


def test_the_right_server_name_is_accepted(tls_agent):
    assert ConsulClient(mtls(tls_agent, tls_server_name="server.dc1.consul")).read_key("svc/leader")[0] > 0


def test_rotated_ca_file_is_picked_up_without_a_new_client(tls_agent, tmp_path):
    ca = tmp_path / "ca.pem"
    shutil.copy(tls_agent.other_ca_file, ca)
    client = ConsulClient(mtls(tls_agent, ca_cert=str(ca)))
    with pytest.raises(ConsulTLSError):
        client.read_key("svc/leader", timeout=2)
    shutil.copy(tls_agent.ca_file, ca)   # the operator installs the right CA
    assert client.read_key("svc/leader", timeout=2)[0] > 0

    ca.unlink()   # mid-rotation: the process keeps its last good settings for new connections,
    client.close()  # in this client and in any client made meanwhile (a new session keeper) ...
    assert client.read_key("svc/leader", timeout=2)[0] > 0
    assert ConsulClient(mtls(tls_agent, ca_cert=str(ca))).read_key("svc/leader", timeout=2)[0] > 0
    # ... while settings never seen working name the missing file (a process starting now).
    with pytest.raises(ConsulTLSError) as missing:
        ConsulClient(mtls(tls_agent, ca_cert=str(ca), tls_server_name="localhost")).read_key("svc/leader", timeout=2)
    assert f"cannot use the CA file {ca}" in str(missing.value) and "no such file" in str(missing.value)
    shutil.copy(tls_agent.ca_file, ca)   # restored
    assert ConsulClient(mtls(tls_agent, ca_cert=str(ca))).read_key("svc/leader", timeout=2)[0] > 0


# -- the watchdog's clean-up PUTs -----------------------------------------------------------

def test_put_once_releases_and_destroys_over_mtls_and_never_raises(tls_agent):
    client = ConsulClient(mtls(tls_agent))
    session = leader_session(client, "svc/leader")
    assert put_once(mtls(tls_agent), f"/v1/kv/svc/leader?release={session}", 2.0, body=b'{"released": 1}') == 200
    state = client.read_key("svc/leader")[1]
    assert state.session is None and state.value == b'{"released": 1}'
    assert put_once(mtls(tls_agent), f"/v1/session/destroy/{session}", 2.0) == 200
    assert client.session_info(session) is None
    assert put_once(mtls(tls_agent, ca_cert=tls_agent.other_ca_file), "/v1/session/destroy/x", 2.0) is None
    assert put_once(connection(f"127.0.0.1:{free_port()}"), "/v1/session/destroy/x", 2.0) is None


# -- the fault proxy itself (other suites rely on it) ---------------------------------------

def test_fault_proxy_forwards_chunked_bodies_and_blocking_queries_and_stops_hung_connections(consul_agent):
    proxy = FaultProxy(consul_agent.http_addr).start()
    hung = http.client.HTTPConnection(proxy.address, timeout=5)
    try:
        plain = http.client.HTTPConnection(proxy.address, timeout=5)
        plain.request("PUT", "/v1/kv/svc/chunked", body=iter([b"ab", b"cd"]), encode_chunked=True)
        assert plain.getresponse().read() == b"true\n"
        plain.request("GET", "/v1/kv/svc/chunked?raw")
        assert plain.getresponse().read() == b"abcd"
        plain.request("GET", "/v1/kv/svc/chunked")
        answer = plain.getresponse()
        answer.read()
        index = answer.getheader("X-Consul-Index")
        started = time.monotonic()
        plain.request("GET", f"/v1/kv/svc/chunked?index={index}&wait=1s")
        assert plain.getresponse().read() and time.monotonic() - started >= 0.9, "the agent held the query"
        proxy.set_fault(Fault.delay(0.5), match="/v1/kv/svc/slow")
        started = time.monotonic()
        plain.request("GET", "/v1/kv/svc/chunked")   # no match: forwarded at once
        assert plain.getresponse().read() and time.monotonic() - started < 0.4
        proxy.set_fault(Fault.hang())
        hung.request("GET", "/v1/kv/svc/chunked")
        deadline = time.monotonic() + 5
        while len(proxy.requests) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stopping = time.monotonic()
        proxy.stop()
    assert time.monotonic() - stopping < 1.0, "stop() closes hung connections"
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        hung.getresponse()
    assert [(method, path, status) for _, method, path, status in proxy.requests] == [
        ("PUT", "/v1/kv/svc/chunked", 200), ("GET", "/v1/kv/svc/chunked", 200), ("GET", "/v1/kv/svc/chunked", 200),
        ("GET", "/v1/kv/svc/chunked", 200), ("GET", "/v1/kv/svc/chunked", 200), ("GET", "/v1/kv/svc/chunked", 0)]
