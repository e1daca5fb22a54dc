"""Read-only HTTP view of the election: /status, /health, /leader and /metrics.

Every answer is built from one `ElectionState.snapshot()`; the server holds no other state and
cannot change the election's. Nothing but snapshot fields is ever shown, so ACL tokens and the
child's environment, which the snapshot does not carry, cannot leak through here.

GET and HEAD are served (HEAD is GET without the body, so `curl -I` and probes that use it work);
other HTTP methods get 405 with an Allow header, unknown methods 501, unknown paths 404. A request
line that is not `METHOD TARGET HTTP/x.y` (HTTP/0.9's `GET /path` included) gets an immediate 400
with a status line, a version other than 1.x 505, and so does junk from its first bytes on.

One thread runs a non-blocking event loop over every connection: it accepts connections as they
come, reads each request as its bytes arrive and answers as soon as the request's head is
complete, so a client that is silent, slow or hostile holds one of MAX_CONNECTIONS slots for at
most REQUEST_DEADLINE, never the thread. When every slot is taken, a new connection sheds the
oldest one. One request per connection (HTTP/1.0): the clients are probes and scrapers asking
once every few seconds, for whom a kept-alive connection saves nothing, and with nothing kept
alive no connection is ever idle between requests, so the request deadline is the only idle limit.
"""

from __future__ import annotations

import email.utils
import errno
import json
import logging
import re
import selectors
import socket
import threading
from collections import OrderedDict
from http import HTTPStatus
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

# A connection must deliver its whole request head (request line and headers) within this long of
# being accepted, or it is closed unanswered. A real client sends its few hundred bytes in one
# packet; a per-read timeout alone would let a client trickling a byte at a time keep its
# connection forever. The loop never waits on a client, so this bounds how long a connection holds
# a slot, not how long it delays anyone else.
REQUEST_DEADLINE = 1.0

# The client must take its answer within this long of it being ready. An answer is a few KiB at
# most, which the kernel's send buffer takes at once, so only a client that stops reading ever
# gets near this; it cannot hold its slot longer.
SEND_DEADLINE = 1.0

# Connections open at once, at most. Probes and scrapers need a handful; 256 leaves most of the
# usual soft limit of 1024 file descriptors to the rest of the process (Consul connections, the
# watchdog's pipe) and bounds request buffers to 256 * MAX_REQUEST_HEAD = 2 MiB. When all are taken,
# a new connection sheds the oldest one still sending its request (else the oldest still taking
# its answer): a probe sends its request within a round trip of connecting, so a connection
# that has not after 256 newer ones arrived is a slow or silent one. Refusing new connections
# instead would let whoever holds the slots shut every probe out for as long as they reconnect.
MAX_CONNECTIONS = 256

# The largest request head (request line and headers), in bytes. Answers depend on the method and
# path alone, and probes and scrapers send a few hundred bytes. A request whose request line runs
# past this gets 414, one whose headers do 431, as soon as the byte past it arrives.
MAX_REQUEST_HEAD = 8192

# More header lines than this get 431, whatever their size (http.server's limit, kept).
MAX_HEADERS = 100

# Connections the kernel completes before the loop accepts them. When this queue is full the
# kernel drops new SYNs, and the client's retransmit comes a second later: the very delay a probe
# must not see. The loop accepts (and sheds) some tens of thousands a second, but a burst opened
# faster than that (2,000 idle connections opened at once, say) must fit here. The kernel caps
# it at net.core.somaxconn (4096 since Linux 5.4, 128 before); queued connections cost kernel
# memory only.
LISTEN_BACKLOG = 4096

# Connections accepted per turn of the loop, so a flood of connections cannot starve the reading
# of those already open.
ACCEPTS_PER_TURN = 64

# Input still unread once the answer is sent (a request body, say) is read and thrown away, up to
# this much within SEND_DEADLINE, before closing: closing a socket with unread input makes the
# kernel send a reset, which can destroy the answer before the client has read it.
DRAIN_LIMIT = 65536

# When accept() fails for want of file descriptors, the loop stops accepting for this long rather
# than spin on a listening socket that stays readable.
ACCEPT_PAUSE = 0.1

# Shed connections and accept failures are logged as a warning at most this often, with a count:
# a flood would otherwise write a line per connection.
FLOOD_WARNING_INTERVAL = 60.0

# Fields of the holder's identity shown under "leader". The identity is JSON another instance
# wrote into the key; showing only these keeps anything else that found its way there unpublished.
LEADER_FIELDS = ("name", "session", "host", "pid", "since", "version", "status_address")

ENDPOINTS = ("/status", "/health", "/leader", "/metrics")

# Methods HTTP defines that this read-only server refuses with 405; anything else gets 501.
REFUSED_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
# What a request line may start with while its end has not arrived: a method (a token), then a
# space. Anything else (a TLS ClientHello, binary junk) is refused at once, not after the deadline.
_REQUEST_LINE_START = re.compile(_TOKEN + rb"*(?: |\r?\Z)")
_METHOD = re.compile(_TOKEN.decode() + r"+")
_HTTP_VERSION = re.compile(r"HTTP/(\d)\.\d")


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

    One thread, deliberately: Python threads share the GIL, so a thread per connection would let
    a flood claim many slices of the interpreter against the few threads that renew the session
    and run the main loop (and cost a stack per connection). On one thread a flood competes as a
    single thread, and since that thread never waits on a client, the slowest client delays no
    other; MAX_CONNECTIONS, REQUEST_DEADLINE and MAX_REQUEST_HEAD bound what any client can hold.
    """

    def __init__(self, state: ElectionState, bind: str, port: int) -> None:
        self._state = state
        self._bind = bind
        self._port = port
        self._loop: _EventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StatusServer:
        """Bind and start serving; raise UsageError when the address cannot be bound."""
        if self._loop is not None:
            raise RuntimeError("status server already started")
        # Imported here so `consul-elect --help` does not pay for prometheus_client.
        from .metrics import ElectionMetrics

        endpoints = _Endpoints(self._state, ElectionMetrics(self._state))
        try:
            listener = _listen(self._bind, self._port)
        except OSError as e:
            reason = (e.strerror or str(e)).lower()
            hint = " (another candidate on this host? give each its own --port, or 0 for any free port)" \
                if e.errno == errno.EADDRINUSE else ""
            raise UsageError(f"cannot serve status on {_host_port(self._bind, self._port)}: {reason}{hint}") from None
        try:
            self._loop = _EventLoop(listener, endpoints)
        except BaseException:
            listener.close()
            raise
        self._thread = threading.Thread(target=self._loop.run, name="status-server", daemon=True)
        self._thread.start()
        log.info("serving status on http://%s", self.address)
        return self

    @property
    def address(self) -> str:
        """The bound "host:port" (the real port when 0 was asked for); only once started."""
        if self._loop is None:
            raise RuntimeError("status server not started")
        host, port = self._loop.address[:2]
        return _host_port(host, port)

    def stop(self) -> None:
        """Stop serving and close every socket; safe to call more than once."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        self._loop = self._thread = None
        loop.stop()
        if thread is not None:
            thread.join()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(bind: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As http.server does: a restarted elector can bind its port while connections of the one
        # before are still in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Endpoints:
    """Routes a parsed request to its answer: (status, body, content type, extra headers)."""

    def __init__(self, state: ElectionState, metrics: ElectionMetrics) -> None:
        self._state = state
        self._metrics = metrics

    def answer(self, method: str, target: str) -> tuple[int, dict | bytes, str, dict[str, str]]:
        if method not in ("GET", "HEAD"):
            if method in REFUSED_METHODS:
                return (HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{method} not allowed; this server is read-only"},
                        "application/json", {"Allow": "GET, HEAD"})
            return _refusal(HTTPStatus.NOT_IMPLEMENTED)
        path = target.partition("?")[0]
        if path.startswith("//"):
            # As http.server does, so "//status" is not read as a network path.
            path = "/" + path.lstrip("/")
        if path == "/metrics":
            return HTTPStatus.OK, self._metrics.render(), self._metrics.content_type, {}
        snapshot, now = self._state.snapshot(), clock.now()
        if path == "/status":
            code, body = HTTPStatus.OK, status_document(snapshot, now)
        elif path == "/health":
            code, body = health_document(snapshot, now)
        elif path == "/leader":
            code, body = leader_document(snapshot, now)
        else:
            code, body = HTTPStatus.NOT_FOUND, {"error": "not found", "endpoints": list(ENDPOINTS)}
        return code, body, "application/json", {}


def _refusal(code: int) -> tuple[int, dict, str, dict[str, str]]:
    # The status phrase only: never any part of the request, which may be hostile.
    return code, {"error": HTTPStatus(code).phrase}, "application/json", {}


def _encode_answer(code: int, body: dict | bytes, content_type: str, extra_headers: dict[str, str],
                   send_body: bool) -> bytes:
    payload = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
    lines = [
        f"HTTP/1.0 {int(code)} {HTTPStatus(code).phrase}",
        # The name alone: the version of Python or of this program is nobody's business.
        "Server: consul-elect",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(payload)}",
        # Every answer is a live reading; a cached one could say "leader" after leadership is gone.
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in extra_headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (payload if send_body else b"")


def _parse_request_line(line: bytes) -> tuple[str, str] | int:
    """(method, target) of a request line, or the status that refuses it."""
    words = line.decode("latin-1").split()
    if len(words) != 3:
        # HTTP/0.9 ("GET /status") or garbage. Answered with a status line all the same: an
        # HTTP/0.9 answer is a bare body that a client cannot tell from success.
        return HTTPStatus.BAD_REQUEST
    method, target, version = words
    match = _HTTP_VERSION.fullmatch(version)
    if match is None or not _METHOD.fullmatch(method):
        return HTTPStatus.BAD_REQUEST
    if match[1] != "1":
        return HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
    return method, target


# The phases of a connection, in order.
_READING, _SENDING, _DRAINING, _CLOSED = "reading the request", "sending the answer", "draining input", "closed"


class _Connection:
    """One client connection: the request head read so far and, once answered, what is left to send."""

    __slots__ = ("sock", "peer", "deadline", "phase", "head", "scanned", "header_lines", "request_line", "request",
                 "unsent", "drained")

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline = deadline
        self.phase = _READING
        self.head = bytearray()
        self.scanned = 0  # bytes of head already split into complete lines
        self.header_lines = 0
        self.request_line: bytes | None = None
        self.request: tuple[str, str] | None = None
        self.unsent = memoryview(b"")
        self.drained = 0

    def parse(self) -> tuple[str, str] | int | None:
        """The request as (method, target) once its head is complete, a refusal status, or None for more."""
        head = self.head
        while (end := head.find(b"\n", self.scanned)) >= 0:
            line = bytes(head[self.scanned:end]).rstrip(b"\r")
            self.scanned = end + 1
            if self.scanned > MAX_REQUEST_HEAD:
                return self._too_large()
            if self.request_line is None:
                if not line:
                    continue  # RFC 9112 section 2.2: ignore empty lines before the request line
                self.request_line = line
                request = _parse_request_line(line)
                if isinstance(request, int):
                    return request
                self.request = request
            elif not line:
                return self.request
            else:
                self.header_lines += 1
                if self.header_lines > MAX_HEADERS:
                    return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        if len(head) > MAX_REQUEST_HEAD:
            return self._too_large()
        if self.request_line is None and not _REQUEST_LINE_START.match(head, self.scanned):
            return HTTPStatus.BAD_REQUEST
        return None

    def _too_large(self) -> int:
        if self.request_line is None:
            return HTTPStatus.REQUEST_URI_TOO_LONG
        return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


class _EventLoop:
    """Accepts, reads, answers and closes connections on one thread, until stop()."""

    def __init__(self, listener: socket.socket, endpoints: _Endpoints) -> None:
        self._listener = listener
        self.address = listener.getsockname()
        self._endpoints = endpoints
        self._selector = selectors.DefaultSelector()
        # stop() writes a byte here to end the loop's wait at once.
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._stopping = threading.Event()
        # Connections in the order they entered their phase, which is also the order of their
        # deadlines (each phase adds a fixed time), so the oldest is first and expiring them looks
        # at the expired ones only.
        self._reading: OrderedDict[_Connection, None] = OrderedDict()
        self._finishing: OrderedDict[_Connection, None] = OrderedDict()
        self._accepting_again_at: float | None = None
        self._floods_unreported = 0
        self._flood_reported_at: float | None = None
        self._selector.register(listener, selectors.EVENT_READ, self._listener)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, self._wakeup_r)

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._wakeup_w.send(b"\0")
        except OSError:
            pass  # the loop has already ended and closed it, or a wake-up byte is already waiting

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._turn()
                except Exception:
                    # A bug in the loop itself, not in answering one request (that is contained
                    # per connection). The connections' bookkeeping may be wrong, so drop them all
                    # and go on; the pause keeps a bug that repeats from spinning.
                    log.error("status server failed; dropping its connections", exc_info=True)
                    self._close_connections()
                    self._stopping.wait(ACCEPT_PAUSE)
        finally:
            self._close_connections()
            self._selector.close()
            for sock in (self._listener, self._wakeup_r, self._wakeup_w):
                sock.close()

    def _turn(self) -> None:
        events = self._selector.select(self._time_to_next_deadline())
        now = clock.now()
        for key, _ in events:
            if key.data is self._listener:
                self._accept(now)
            elif key.data is self._wakeup_r:
                self._wakeup_r.recv(64)
            else:
                self._serve(key.data, now)
        self._expire(now)

    def _time_to_next_deadline(self) -> float | None:
        deadlines = [next(iter(queue)).deadline for queue in (self._reading, self._finishing) if queue]
        if self._accepting_again_at is not None:
            deadlines.append(self._accepting_again_at)
        return max(0.0, min(deadlines) - clock.now()) if deadlines else None

    def _accept(self, now: float) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._report_flood(now, f"cannot accept connections: {(e.strerror or str(e)).lower()}")
                    self._selector.unregister(self._listener)
                    self._accepting_again_at = now + ACCEPT_PAUSE
                    return
                log.debug("status server: accept failed: %s", e)  # that client gave up; the next may not
                continue
            sock.setblocking(False)
            if len(self._reading) + len(self._finishing) >= MAX_CONNECTIONS:
                self._close(next(iter(self._reading or self._finishing)))
                self._report_flood(now, f"all {MAX_CONNECTIONS} connections in use: shedding the oldest")
            conn = _Connection(sock, peer[0], now + REQUEST_DEADLINE)
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._reading[conn] = None

    def _report_flood(self, now: float, what: str) -> None:
        self._floods_unreported += 1
        last = self._flood_reported_at
        if last is None:
            log.warning("status server: %s (reported at most every %.0f s from now on)", what, FLOOD_WARNING_INTERVAL)
        elif now - last >= FLOOD_WARNING_INTERVAL:
            log.warning("status server: %s (%d times in the last %.0f s)", what, self._floods_unreported, now - last)
        else:
            return
        self._floods_unreported = 0
        self._flood_reported_at = now

    def _serve(self, conn: _Connection, now: float) -> None:
        if conn.phase is _CLOSED:
            return  # shed by an accept earlier in this turn, after the selector reported it ready
        try:
            if conn.phase is _READING:
                self._read(conn, now)
            elif conn.phase is _SENDING:
                self._send(conn)
            else:
                self._drain(conn)
        except BlockingIOError:
            pass  # woken for nothing; the selector will say when there is something
        except OSError as e:
            # A client that hung up or reset is routine.
            log.debug("status %s: %s while %s", conn.peer, e, conn.phase)
            self._close(conn)
        except Exception:
            log.warning("status %s: failed while %s", conn.peer, conn.phase, exc_info=True)
            self._close(conn)

    def _read(self, conn: _Connection, now: float) -> None:
        data = conn.sock.recv(MAX_REQUEST_HEAD + 1 - len(conn.head))
        if not data:
            log.debug("status %s: closed before sending a whole request", conn.peer)
            self._close(conn)
            return
        conn.head += data
        request = conn.parse()
        if request is None:
            return
        answer = self._answer(conn, request)
        del self._reading[conn]
        conn.phase, conn.deadline, conn.unsent = _SENDING, now + SEND_DEADLINE, memoryview(answer)
        self._finishing[conn] = None
        self._send(conn)

    def _answer(self, conn: _Connection, request: tuple[str, str] | int) -> bytes:
        method = None
        if isinstance(request, int):
            answer = _refusal(request)
        else:
            method, target = request
            try:
                answer = self._endpoints.answer(method, target)
            except Exception:
                # A bug in building an answer costs that request a 500, never the server.
                log.warning("status %s: answering %s failed", conn.peer,
                            ascii(conn.request_line[:200].decode("latin-1")), exc_info=True)
                answer = _refusal(HTTPStatus.INTERNAL_SERVER_ERROR)
        if log.isEnabledFor(logging.DEBUG):
            # ascii() and the cut keep control characters and the bulk of a hostile request out of the log.
            line = conn.request_line if conn.request_line is not None else bytes(conn.head)
            log.debug("status %s: %s %d", conn.peer, ascii(line[:200].decode("latin-1")), answer[0])
        return _encode_answer(*answer, send_body=method != "HEAD")

    def _send(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.unsent)
        except BlockingIOError:
            sent = 0
        conn.unsent = conn.unsent[sent:]
        if conn.unsent:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        try:
            unread = conn.sock.recv(MAX_REQUEST_HEAD)
        except BlockingIOError:
            unread = b""  # nothing unread: the usual case
        if not unread:
            self._close(conn)
            return
        # The client sent more than its request head. Say we are done, and read until the client
        # closes too, so the close does not turn into a reset.
        conn.sock.shutdown(socket.SHUT_WR)
        conn.phase, conn.drained = _DRAINING, len(unread)
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drain(self, conn: _Connection) -> None:
        data = conn.sock.recv(MAX_REQUEST_HEAD)
        conn.drained += len(data)
        if not data or conn.drained > DRAIN_LIMIT:
            self._close(conn)

    def _expire(self, now: float) -> None:
        for queue in (self._reading, self._finishing):
            while queue and (conn := next(iter(queue))).deadline <= now:
                log.debug("status %s: deadline passed while %s", conn.peer, conn.phase)
                self._close(conn)
        if self._accepting_again_at is not None and self._accepting_again_at <= now:
            self._accepting_again_at = None
            self._selector.register(self._listener, selectors.EVENT_READ, self._listener)

    def _close(self, conn: _Connection) -> None:
        del (self._reading if conn.phase is _READING else self._finishing)[conn]
        conn.phase = _CLOSED
        self._selector.unregister(conn.sock)
        conn.sock.close()

    def _close_connections(self) -> None:
        # Also used after a bug in the loop, so it trusts neither the queues nor the selector alone.
        registered = {key.data for key in self._selector.get_map().values() if isinstance(key.data, _Connection)}
        for conn in {*registered, *self._reading, *self._finishing}:
            if conn in registered:
                self._selector.unregister(conn.sock)
            conn.phase = _CLOSED
            conn.sock.close()
        self._reading.clear()
        self._finishing.clear()
