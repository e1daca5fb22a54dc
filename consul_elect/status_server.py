"""Read-only HTTP view of the election: /status, /health, /leader and /metrics.

Every answer is built from one `ElectionState.snapshot()`; the server holds no other state and
cannot change the election's. Nothing but snapshot fields is ever shown, so ACL tokens and the
child's environment, which the snapshot does not carry, cannot leak through here.

GET and HEAD are served (HEAD is GET without the body, so `curl -I` and probes that use it work);
other HTTP methods get 405 with an Allow header, unknown methods 501, unknown paths 404.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import socketserver
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING

from . import clock
from . import config as defaults
from .errors import UsageError
from .state import LEADER, ElectionState, Snapshot, holds_lease

if TYPE_CHECKING:
    from .metrics import ElectionMetrics

log = logging.getLogger(__name__)

# /health turns 503 when the main loop has not turned for this long. The loop wakes at least once
# a second, but one campaign turn may wait on three Consul requests in a row (create session,
# acquire, consistent read), each capped at REQUEST_TIMEOUT: 1 + 3 * 5 = 16 s is a slow but live
# loop. 4 s more covers scheduling on a loaded host, so a slow Consul does not get a healthy
# process restarted, while a hung loop is still reported within 20 s.
LOOP_STALL_AFTER = 1.0 + 3 * defaults.REQUEST_TIMEOUT + 4.0

# The whole request (line and headers) must arrive within this long of the connection's accept.
# A real client sends its few hundred bytes in one packet; a per-read timeout alone would let a
# client trickling one byte at a time hold the single server thread forever. A stalled client
# costs other probes at most this much delay.
REQUEST_DEADLINE = 1.0

# Connections the kernel queues while the one server thread is busy: a burst of probes beyond
# socketserver's default of 5 would otherwise wait for a SYN retransmit (1 s and more).
LISTEN_BACKLOG = 64

# How often the idle server checks whether stop() was called: stop() waits at most this long.
POLL_INTERVAL = 0.1

# Fields of the holder's identity shown under "leader". The identity is JSON another instance
# wrote into the key; showing only these keeps anything else that found its way there unpublished.
LEADER_FIELDS = ("name", "session", "host", "pid", "since", "version", "status_address")

ENDPOINTS = ("/status", "/health", "/leader", "/metrics")


def status_document(snapshot: Snapshot, now: float) -> dict:
    leading = holds_lease(snapshot, now)
    believes_leader = snapshot.state == LEADER and snapshot.lease_deadline is not None
    leader = snapshot.leader
    return {
        "key": snapshot.key,
        "name": snapshot.name,
        "state": snapshot.state,
        "is_leader": leading,
        "session": snapshot.session,
        "fencing_token": snapshot.fencing_token if leading else None,
        "leader": {f: leader.get(f) for f in LEADER_FIELDS if f in leader} if leader else None,
        "since": snapshot.since,
        "lease_deadline_in": round(snapshot.lease_deadline - now, 3) if believes_leader else None,
        "consul": {"reachable": snapshot.consul_reachable, "last_error": snapshot.consul_last_error},
    }


def health_document(snapshot: Snapshot, now: float) -> tuple[int, dict]:
    age = now - snapshot.loop_heartbeat
    live = age < LOOP_STALL_AFTER
    return (200 if live else 503), {
        "status": "ok" if live else "stalled",
        "state": snapshot.state,
        "loop_heartbeat_age": round(age, 3),
        "stall_after": LOOP_STALL_AFTER,
    }


def leader_document(snapshot: Snapshot, now: float) -> tuple[int, dict]:
    if holds_lease(snapshot, now):
        return 200, {"is_leader": True, "key": snapshot.key, "fencing_token": snapshot.fencing_token,
                     "lease_deadline_in": round(snapshot.lease_deadline - now, 3)}
    if snapshot.state != LEADER:
        reason = f"state is {snapshot.state}"
    else:
        reason = "lease deadline passed" if snapshot.lease_deadline is not None else "no lease deadline known"
    return 503, {"is_leader": False, "key": snapshot.key, "reason": reason}


class StatusServer:
    """Serves the election's state over HTTP from one daemon thread until stop().

    One thread, deliberately: Python threads share the GIL, so a thread per request would let a
    flood of requests claim many slices of the interpreter against the few threads that renew the
    session and run the main loop. Serving one request at a time, a flood competes as a single
    thread, and REQUEST_DEADLINE bounds how long any one client can occupy it.
    """

    def __init__(self, state: ElectionState, bind: str, port: int) -> None:
        self._state = state
        self._bind = bind
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StatusServer:
        """Bind and start serving; raise UsageError when the address cannot be bound."""
        if self._httpd is not None:
            raise RuntimeError("status server already started")
        # Imported here so `consul-elect --help` does not pay for prometheus_client.
        from .metrics import ElectionMetrics

        metrics = ElectionMetrics(self._state)
        try:
            httpd = _Server(self._bind, self._port, self._state, metrics)
        except OSError as e:
            reason = (e.strerror or str(e)).lower()
            raise UsageError(f"cannot serve status on {_host_port(self._bind, self._port)}: {reason}") from None
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                                        name="status-server", daemon=True)
        self._thread.start()
        log.info("serving status on http://%s", self.address)
        return self

    @property
    def address(self) -> str:
        """The bound "host:port" (the real port when 0 was asked for); only once started."""
        if self._httpd is None:
            raise RuntimeError("status server not started")
        host, port = self._httpd.server_address[:2]
        return _host_port(host, port)

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call more than once."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Server(HTTPServer):
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, bind: str, port: int, state: ElectionState, metrics: ElectionMetrics) -> None:
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.state = state
        self.metrics = metrics
        super().__init__((bind, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the bind address to a host name (getfqdn), which
        # can hang on a broken resolver; nothing here uses that name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        # socketserver prints these to stderr. A client that hung up is routine; anything else
        # is a bug in a handler, worth a traceback but not worth stopping the server for.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("status request from %s: %s", client_address[0], error)
        else:
            log.warning("status request from %s failed", client_address[0], exc_info=True)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that fail with TimeoutError once the connection's deadline has passed."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._deadline - clock.now()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: one request per connection, so a client cannot keep the single thread busy with
    # a kept-alive connection, and REQUEST_DEADLINE covers each request whole.
    protocol_version = "HTTP/1.0"
    # A request line too malformed to name its version is assumed to be HTTP/1.0, not 0.9, so
    # the 400 sent back carries a status line: an HTTP/0.9 answer is a bare body that a client
    # cannot tell from success.
    default_request_version = "HTTP/1.0"
    # The default Server header would advertise the exact Python version.
    server_version = "consul-elect"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version  # the base class appends " " + sys_version

    def setup(self) -> None:
        # Replaces StreamRequestHandler.setup: reads go through the deadline, writes are tiny.
        self.connection = self.request
        self.connection.settimeout(REQUEST_DEADLINE)
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, clock.now() + REQUEST_DEADLINE))
        self.wfile = self.connection.makefile("wb", buffering=0)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _refuse_method(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{self.command} not allowed; this server is read-only"},
                    extra_headers={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def _answer(self, send_body: bool) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._reply(HTTPStatus.OK, self.server.metrics.render(), send_body,
                        content_type=self.server.metrics.content_type)
            return
        snapshot, now = self.server.state.snapshot(), clock.now()
        if path == "/status":
            self._reply(HTTPStatus.OK, status_document(snapshot, now), send_body)
        elif path == "/health":
            self._reply(*health_document(snapshot, now), send_body)
        elif path == "/leader":
            self._reply(*leader_document(snapshot, now), send_body)
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "not found", "endpoints": list(ENDPOINTS)}, send_body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (malformed request line 400, too long 414, headers 431,
        # unknown method 501) arrive here. Answer in JSON like everything else, and never echo
        # the offending request back.
        self.close_connection = True
        self._reply(code, {"error": HTTPStatus(code).phrase}, self.command != "HEAD")

    def _reply(self, code: int, body: dict | bytes, send_body: bool = True, content_type: str = "application/json",
               extra_headers: dict[str, str] | None = None) -> None:
        payload = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        # Every answer is a live reading; a cached one could say "leader" after leadership is gone.
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:
        # http.server writes an access log line per request to stderr; a probe every second
        # would drown the child's output. ascii() keeps control characters from a hostile
        # request line out of the log.
        log.debug("status %s: %s", self.client_address[0], ascii(format % args))
