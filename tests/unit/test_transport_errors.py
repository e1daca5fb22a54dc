"""The transport's classification of answers and failures, its scrubbing and its wording.

No Consul here (these run without a consul binary): answers come from tiny in-process servers
on loopback that say exactly what a test needs, including what no Consul would say.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from consul_elect.blocking import _pause
from consul_elect.config import RECONNECT_BACKOFF_MIN, RETRY_JITTER, WATCH_WAIT, Connection
from consul_elect.consul_api import ConsulClient
from consul_elect.errors import (
    ConsulError, ConsulTLSError, ConsulUnavailable, ElectError, PermissionDenied, RejectedByConsul, SessionGone,
    UsageError,
)
from consul_elect.transport import Transport, answer_error, one_line, put_once, retry_after_seconds, scrub

LIBRARY_WORDS = ("Traceback", "HTTPSConnectionPool", "HTTPConnectionPool", "Caused by", "Errno", "SSLError(",
                 "RemoteDisconnected(", "Max retries")
TOKEN = "5e1f0a3c-7d1b-4c8e-9f00-secret-token"


def assert_plain_sentence(text: str) -> None:
    assert "\n" not in text and text == text.strip(), text
    for words in LIBRARY_WORDS:
        assert words not in text, text


class FakeServer:
    """A loopback TCP server running *handler(sock)* on each connection, in its own thread."""

    def __init__(self, handler):
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.sockets = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while not self.stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.sockets.append(sock)
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock):
        try:
            self.handler(sock)
        except OSError:
            pass
        finally:
            sock.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.thread.join(timeout=2)

    def connection(self, **kwargs) -> Connection:
        return Connection(host="127.0.0.1", port=self.port, **kwargs)


def read_request(sock) -> bytes:
    """The request head (and a Content-Length body), or b"" when the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            while len(body) < length:
                body += sock.recv(65536)
    return head


def answering(status: int, body: bytes = b"", headers: dict | None = None, requests: list | None = None):
    """A handler that answers every request on the connection with the same canned answer."""
    def handler(sock):
        while True:
            head = read_request(sock)
            if not head:
                return
            if requests is not None:
                requests.append(head.decode("latin-1"))
            lines = [f"HTTP/1.1 {status} Canned", f"Content-Length: {len(body)}"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return handler


# -- answers --------------------------------------------------------------------------------

@pytest.mark.parametrize("status, headers, body, error_type, words", [
    (429, {"retry-after": "7"}, b"Your IP is issuing too many concurrent connections", ConsulUnavailable,
     ["limiting requests", "429", "retry after 7s"]),
    (429, {}, b"", ConsulUnavailable, ["limiting requests"]),
    (500, {}, b"Invalid Session TTL '5000000000', must be between [10s=24h0m0s]", RejectedByConsul,
     ["session_ttl_min is 10s", "--ttl 10s or more", "up to 24h", "lower session_ttl_min"]),
    (403, {}, b"Permission denied", PermissionDenied, ["ACL denied", "Permission denied", "403"]),
    (403, {}, b"ACL not found", PermissionDenied, ["ACL denied", "ACL not found"]),
    (500, {}, b"rpc error making call: Permission denied", PermissionDenied, ["ACL denied"]),
    (404, {}, b"Session id '4b0c' not found", SessionGone, ["not found"]),
    (500, {}, b"invalid session \"4b0c\"", SessionGone, ["invalid session"]),
    (500, {}, b"No cluster leader", ConsulUnavailable, ["HTTP 500", "No cluster leader"]),
    (500, {}, b"rpc error making call: Missing node registration", ConsulUnavailable, ["Missing node"]),
    (502, {}, b"", ConsulUnavailable, ["HTTP 502", "no details"]),
    (503, {}, b"<html>\n<body>\nService Unavailable</body></html>", ConsulUnavailable, ["HTTP 503"]),
    (400, {}, b"Request decode failed: unexpected EOF", RejectedByConsul, ["rejected", "decode failed"]),
    (405, {}, b"method GET not allowed", RejectedByConsul, ["HTTP 405"]),
    (302, {}, b"", ConsulUnavailable, ["HTTP 302", "not an answer"]),
])
def test_every_status_is_classified_into_a_typed_error(status, headers, body, error_type, words):
    error = answer_error(status, headers, body, "http://127.0.0.1:8500")
    assert type(error) is error_type
    for word in words:
        assert word in str(error)
    assert_plain_sentence(str(error))
    assert error.retry_after == 7.0 if headers.get("retry-after") else getattr(error, "retry_after", None) is None


@pytest.mark.parametrize("value, expected", [
    ("7", 7.0), (" 0.5 ", 0.5), ("-3", 0.0), ("86400", 300.0), ("soon", None), ("", None), (None, None),
    ("nan", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_retry_after_accepts_seconds_and_dates_and_refuses_garbage(value, expected):
    assert retry_after_seconds(value) == expected


def test_retry_after_date_in_the_future_counts_from_now():
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 28 <= retry_after_seconds(when) <= 31


def test_long_bodies_are_cut_at_a_word_on_one_line():
    body = ("word " * 100 + "\nsecond line\r\n").encode()
    text = str(answer_error(500, {}, body, "http://x:1"))
    assert "\n" not in text and text.endswith("...")
    assert all(part == "word" for part in text.split(": ", 1)[1][:-3].split())
    assert one_line("abc\x00def\tghi") == "abc def ghi"
    assert one_line("x" * 300, 50) == "x" * 47 + "..."


# -- scrubbing ------------------------------------------------------------------------------

def test_scrub_removes_the_token_in_every_form_it_could_be_printed_in():
    bare = "Zm9v+YmFy/secret=="   # characters that URL-encoding changes
    token = bare + "\n"
    text = (f"raw {token} stripped {bare}. repr {token!r} escaped {bare}\\n "
            f"url {urllib.parse.quote(token, safe='')} form {urllib.parse.quote_plus(token)} header b'{bare}\\n'")
    clean = scrub(text, [token, None, ""])
    assert "secret" not in clean, clean
    assert clean.count("<redacted>") == 7 and "\\n" not in clean and "%0A" not in clean, clean
    assert scrub("nothing to hide", [None]) == "nothing to hide"


def test_a_token_echoed_by_the_server_never_reaches_the_message():
    echo = f"rpc error: ACL not found for token {TOKEN}".encode()
    with FakeServer(answering(403, echo)) as server:
        client = ConsulClient(server.connection(token=TOKEN + "\n"))
        with pytest.raises(PermissionDenied) as caught:
            client.read_key("svc/leader")
    assert TOKEN not in str(caught.value) and "<redacted>" in str(caught.value)
    assert_plain_sentence(str(caught.value))


def test_a_token_with_a_line_break_inside_is_refused_without_showing_it():
    with FakeServer(answering(200, b"[]", {"X-Consul-Index": "1"})) as server:
        client = ConsulClient(server.connection(token=f"{TOKEN}\ninjected: header"))
        with pytest.raises(UsageError) as caught:
            client.read_key("svc/leader")
    assert TOKEN not in str(caught.value) and "injected" not in str(caught.value)
    assert "line break" in str(caught.value)
    assert server.connections == 0, "nothing may be sent with a broken token"


def test_the_token_is_sent_stripped_and_the_datacenter_as_dc():
    requests = []
    with FakeServer(answering(404, b"", {"X-Consul-Index": "3"}, requests)) as server:
        client = ConsulClient(server.connection(token=TOKEN + "\n", datacenter="east 1"))
        assert client.read_key("svc/lead?er", index=2, wait=1.5, timeout=2) == (3, None)
    line, *headers = requests[0].split("\r\n")
    assert line.startswith("GET /v1/kv/svc/lead%3Fer?")
    assert "index=2" in line and "wait=1500ms" in line and "consistent" in line and "dc=east%201" in line
    assert f"X-Consul-Token: {TOKEN}" in headers


# -- answers that are not what Consul sends -------------------------------------------------

CALLS = {
    "create_session": lambda c: c.create_session("n", 10, 0, timeout=2),
    "renew_session": lambda c: c.renew_session("s", timeout=2),
    "destroy_session": lambda c: c.destroy_session("s", timeout=2),
    "list_sessions": lambda c: c.list_sessions(),
    "session_info": lambda c: c.session_info("s"),
    "acquire": lambda c: c.acquire("svc/leader", "s", b"{}", timeout=2),
    "release": lambda c: c.release("svc/leader", "s", timeout=2),
    "read_key": lambda c: c.read_key("svc/leader", timeout=2),
}
BAD_ANSWERS = {
    "empty 200": (200, b"", {"X-Consul-Index": "5"}),
    "invalid JSON": (200, b'{"Results": [', {"X-Consul-Index": "5"}),
    "HTML": (200, b"<html><body>hello</body></html>", {}),
    "wrong shape object": (200, b'{"Errors": 3, "ID": 4}', {"X-Consul-Index": "5"}),
    "wrong shape list": (200, b'[1, "x", null]', {"X-Consul-Index": "5"}),
    "no index header": (200, b"[]", {}),
    "bad base64": (200, b'[{"ModifyIndex": 1, "Value": "!!!"}]', {"X-Consul-Index": "5"}),
    "409 garbage": (409, b"conflict", {}),
    "429": (429, b"", {"Retry-After": "2"}),
    "418": (418, b"I'm a teapot", {}),
}


@pytest.mark.parametrize("answer", BAD_ANSWERS)
@pytest.mark.parametrize("call", CALLS)
def test_no_answer_escapes_as_anything_but_a_typed_error(call, answer):
    status, body, headers = BAD_ANSWERS[answer]
    with FakeServer(answering(status, body, headers)) as server:
        client = ConsulClient(server.connection())
        try:
            CALLS[call](client)
        except ConsulError as e:
            assert_plain_sentence(str(e))
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{call} let {type(e).__name__} escape on {answer}: {e}")


@pytest.mark.parametrize("answer", ["empty 200", "invalid JSON"])
@pytest.mark.parametrize("call", ["acquire", "read_key", "renew_session", "create_session"])
def test_empty_or_invalid_answers_are_retryable(call, answer):
    status, body, headers = BAD_ANSWERS[answer]
    with FakeServer(answering(status, body, headers)) as server:
        with pytest.raises(ConsulUnavailable) as caught:
            CALLS[call](ConsulClient(server.connection()))
    assert ("empty answer" if answer == "empty 200" else "not JSON") in str(caught.value)


# -- connections that fail ------------------------------------------------------------------

def close_at_once(sock):
    pass


def speak_ssh(sock):
    sock.sendall(b"SSH-2.0-OpenSSH_9.0\r\nProtocol mismatch.\r\n")
    time.sleep(0.2)


def plain_http_400(sock):
    # What a plain-HTTP Consul answers to a TLS ClientHello.
    if sock.recv(4096):
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                     b"400 Bad Request")


def trickle(sock):
    read_request(sock)
    answer = b"HTTP/1.1 200 OK\r\nX-Consul-Index: 1\r\nContent-Length: 2\r\n\r\n[]"
    for byte in answer * 10:
        sock.sendall(bytes([byte]))
        time.sleep(0.1)


def hang(sock):
    read_request(sock)
    time.sleep(5)


@pytest.mark.parametrize("handler, scheme, error_type, words", [
    (close_at_once, "http", ConsulUnavailable, ["closed the connection without an HTTP answer",
                                                "is it a Consul HTTP port?"]),
    (speak_ssh, "http", ConsulUnavailable, ["did not answer in HTTP", "is it a Consul HTTP port?"]),
    (plain_http_400, "https", ConsulTLSError, ["https was used", "speaks plain HTTP", "use http://",
                                               "enable TLS on the agent"]),
    (close_at_once, "https", ConsulUnavailable, ["closed the connection during the TLS handshake"]),
])
def test_servers_that_do_not_speak_our_protocol_are_named_in_plain_words(handler, scheme, error_type, words):
    with FakeServer(handler) as server:
        with pytest.raises(error_type) as caught:
            ConsulClient(server.connection(scheme=scheme)).read_key("svc/leader", timeout=2)
    text = str(caught.value)
    for word in words:
        assert word in text
    assert f"127.0.0.1:{server.port}" in text
    assert_plain_sentence(text)


def test_closed_port_and_unknown_host_are_plain_sentences():
    with FakeServer(close_at_once) as server:
        port = server.port
    with pytest.raises(ConsulUnavailable) as refused:
        ConsulClient(Connection(host="127.0.0.1", port=port)).read_key("k", timeout=2)
    assert "connection refused" in str(refused.value)
    with pytest.raises(ConsulUnavailable) as unknown:
        ConsulClient(Connection(host="no-such-host.invalid", port=8500)).read_key("k", timeout=3)
    assert "no-such-host.invalid does not resolve" in str(unknown.value)
    for e in (refused.value, unknown.value):
        assert_plain_sentence(str(e))


@pytest.mark.parametrize("handler", [trickle, hang])
def test_a_slow_answer_is_cut_at_the_request_deadline(handler):
    with FakeServer(handler) as server:
        client = ConsulClient(server.connection())
        started = time.monotonic()
        with pytest.raises(ConsulUnavailable) as caught:
            client.read_key("svc/leader", timeout=0.8)
        took = time.monotonic() - started
    assert "did not answer within 0.8s" in str(caught.value)
    # A per-read timeout would let the trickle run for its whole 9 s answer.
    assert 0.75 <= took < 1.2, f"the request took {took:.2f}s with a 0.8s deadline"


def test_a_kept_alive_connection_the_server_closed_is_retried_once():
    answered = []

    def one_answer_per_connection(sock):
        if read_request(sock):
            answered.append(1)
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nX-Consul-Index: 9\r\nContent-Length: 0\r\n\r\n")
            time.sleep(0.1)   # then close silently, as an idle keep-alive timeout would

    with FakeServer(one_answer_per_connection) as server:
        client = ConsulClient(server.connection())
        assert client.read_key("k", timeout=2) == (9, None)
        time.sleep(0.3)
        assert client.read_key("k", timeout=2) == (9, None)
    assert server.connections == 2 and len(answered) == 2


# -- TLS settings that cannot work ----------------------------------------------------------

def test_missing_or_unusable_certificate_files_are_named(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases = [
        (dict(ca_cert=str(tmp_path / "nope-ca.pem")), ["CA file", "nope-ca.pem", "CONSUL_CACERT", "no such file"]),
        (dict(ca_cert=str(junk)), ["CA file", "junk.pem", "not usable"]),
        (dict(ca_path=str(tmp_path / "nope-dir")), ["CA directory", "nope-dir", "CONSUL_CAPATH"]),
        (dict(ca_path=str(empty_dir)), ["CA directory", "holds no files"]),
        (dict(client_cert=str(tmp_path / "nope-cert.pem"), client_key=str(junk)),
         ["client certificate", "nope-cert.pem", "CONSUL_CLIENT_CERT", "no such file"]),
        (dict(client_cert=str(junk), client_key=str(tmp_path / "nope-key.pem")),
         ["client key", "nope-key.pem", "CONSUL_CLIENT_KEY", "no such file"]),
        (dict(client_cert=str(junk), client_key=str(junk)), ["client certificate", "junk.pem"]),
    ]
    for settings, words in cases:
        # Port 9 on loopback: nothing listens, and nothing may be tried before the files are read.
        client = ConsulClient(Connection(host="127.0.0.1", port=9, scheme="https", **settings))
        with pytest.raises(ConsulTLSError) as caught:
            client.read_key("k", timeout=1)
        for word in words:
            assert word in str(caught.value), (settings, str(caught.value))
        assert_plain_sentence(str(caught.value))


# -- the watchdog's one-shot PUT ------------------------------------------------------------

def test_put_once_never_raises_and_logs_nothing_secret(caplog):
    caplog.set_level(logging.WARNING)
    with FakeServer(close_at_once) as server:
        port = server.port
    assert put_once(Connection(host="127.0.0.1", port=port, token=TOKEN), "/v1/session/destroy/s", 1.0) is None
    assert put_once(Connection(host="127.0.0.1", port=port, token=TOKEN + "\nx"), "/v1/session/destroy/s", 1.0) is None
    requests = []
    with FakeServer(answering(403, f"bad token {TOKEN}".encode(), requests=requests)) as server:
        conn = Connection(host="127.0.0.1", port=server.port, token=TOKEN)
        assert put_once(conn, "/v1/kv/svc/leader?release=abc", 1.0) == 403
    assert requests[0].startswith("PUT /v1/kv/svc/leader?release=abc HTTP/1.1")
    assert len(caplog.records) == 3
    assert TOKEN not in caplog.text and "release=abc" not in caplog.text
    assert "connection refused" in caplog.text and "ACL denied" in caplog.text


def test_transport_returns_statuses_and_raises_only_for_no_answer():
    with FakeServer(answering(404, b"nope", {"X-Consul-Index": "1"})) as server:
        transport = Transport(server.connection())
        status, headers, body = transport.request("GET", "/v1/kv/x", timeout=2)
    assert (status, headers["x-consul-index"], body) == (404, "1", b"nope")
    with pytest.raises(ElectError):
        transport.request("GET", "/v1/kv/x", timeout=1)


def test_the_transport_imports_nothing_but_the_standard_library_and_its_package():
    # The watchdog is forked before py-consul and requests are imported, and uses this module.
    code = ("import sys, consul_elect.transport; "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
            "('requests', 'consul', 'urllib3', 'click', 'rich', 'prometheus_client')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_blocking_loop_backs_off_with_jitter_and_honours_retry_after():
    pauses = [_pause(RECONNECT_BACKOFF_MIN, ConsulUnavailable("down")) for _ in range(200)]
    assert min(pauses) >= RECONNECT_BACKOFF_MIN * (1 - RETRY_JITTER)
    assert max(pauses) <= RECONNECT_BACKOFF_MIN * (1 + RETRY_JITTER)
    assert len(set(pauses)) > 100, "a fleet must not retry in step"
    assert _pause(RECONNECT_BACKOFF_MIN, ConsulUnavailable("429", retry_after=7.0)) == 7.0
    assert _pause(RECONNECT_BACKOFF_MIN, ConsulUnavailable("429", retry_after=3600.0)) == WATCH_WAIT
