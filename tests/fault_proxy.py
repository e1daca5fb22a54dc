"""An HTTP proxy in front of a real Consul agent, with faults a real server cannot produce.

    with FaultProxy(agent.http_addr) as proxy:
        proxy.set_fault(Fault.status(429, headers={"Retry-After": "3"}), match="/v1/txn")
        ...                                   # point the client under test at proxy.address
        proxy.set_fault(None)                 # healthy again

Faults:
    Fault.status(code, body, headers)  answer this instead of forwarding
    Fault.body(data)                   forward, but replace the body of a 200 answer
    Fault.delay(seconds)               forward, then hold the answer this long
    Fault.hang()                       never answer, until the fault is cleared (the request is
                                       then forwarded) or the proxy stops (connection closed)
    Fault.reset()                      close the connection with a TCP RST, no answer
    Fault.trickle(bytes_per_second)    forward, then send the whole answer (status line,
                                       headers, body) that slowly

``set_fault(fault, match)`` applies *fault* to the requests whose path (without the query)
starts with *match* ("" = every request), replacing whatever fault was set before: there is one
fault at a time. ``set_fault(None)`` clears it. Requests that do not match are forwarded.

``requests`` records every request once: ``(arrival, method, path, status)``, where arrival is
``time.monotonic()`` when its head was read, path has no query string, and status is the
answer's status, 0 for a hang or a reset, 502 when the upstream could not be reached. A
request is recorded when that is decided: a forwarded one when the upstream has answered
(before any delay or trickle), a hung or reset one on arrival (a hung request that is released
by clearing the fault is then forwarded, and not recorded again). So a test can wait for a
record to know that a request got that far.

One thread per client connection, HTTP/1.1 keep-alive, chunked request bodies decoded, answers
re-framed with Content-Length; blocking queries are forwarded with a long upstream timeout.
``stop()`` closes every client and upstream connection, hung ones included. Loopback only.
"""

from __future__ import annotations

import dataclasses
import http.client
import socket
import struct
import threading
import time

# Consul caps a blocking query's wait at 10 min and adds up to wait/16: the upstream read must
# outlast that, and stop() closes the socket anyway.
_UPSTREAM_TIMEOUT = 700.0
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
               "proxy-connection", "te", "trailer", "upgrade"}
_MAX_HEAD = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    code: int = 0
    data: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    bytes_per_second: float = 0.0

    @classmethod
    def status(cls, code: int, body: bytes = b"", headers: dict | None = None) -> Fault:
        return cls("status", code=code, data=body, headers=tuple((headers or {}).items()))

    @classmethod
    def body(cls, data: bytes) -> Fault:
        return cls("body", data=data)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", seconds=seconds)

    @classmethod
    def hang(cls) -> Fault:
        return cls("hang")

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def trickle(cls, bytes_per_second: float) -> Fault:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0")
        return cls("trickle", bytes_per_second=bytes_per_second)


class _ClientGone(Exception):
    """The client closed its connection (or the proxy is stopping)."""


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[float, str, str, int]] = []
        self._fault: tuple[Fault, str] | None = None
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._sockets: set[socket.socket] = set()   # client and upstream sockets, closed by stop()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)   # accept() polls so stop() is noticed within 0.1 s
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"fault-proxy {self.address}",
                                          daemon=True)

    # -- control ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with self._changed:
            self._changed.notify_all()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=2)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            _close(s)
        for t in list(self._threads):
            t.join(timeout=2)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_fault(self, fault: Fault | None, match: str = "") -> None:
        with self._changed:
            self._fault = None if fault is None else (fault, match)
            self._changed.notify_all()

    def _fault_for(self, path: str) -> Fault | None:
        current = self._fault
        if current is None or not path.startswith(current[1]):
            return None
        return current[0]

    # -- serving ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self._track(client)
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.add(s)
        if self._stopped.is_set():
            _close(s)

    def _untrack(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)
        _close(s)

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        upstream: http.client.HTTPConnection | None = None
        reset = False
        try:
            while not self._stopped.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                method, target, headers, body, keep_alive = request
                arrived = time.monotonic()
                path = target.split("?", 1)[0]
                fault = self._fault_for(path)
                hung = fault is not None and fault.kind == "hang"
                if hung:
                    self.requests.append((arrived, method, path, 0))
                    fault = self._wait_while_hung(path)
                    if self._stopped.is_set():
                        return
                if fault is not None and fault.kind == "reset":
                    self.requests.append((arrived, method, path, 0))
                    # Linger 0 makes close() send RST; a shutdown() first would send FIN.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    reset = True
                    return
                if fault is not None and fault.kind == "status":
                    status, reason, out_headers, data = fault.code, "Fault", list(fault.headers), fault.data
                else:
                    upstream, answer = self._forward(upstream, method, target, headers, body)
                    status, reason, out_headers, data = answer
                    if fault is not None and fault.kind == "body" and status == 200:
                        data = fault.data
                if not hung:
                    self.requests.append((arrived, method, path, status))
                if fault is not None and fault.kind == "delay":
                    if self._stopped.wait(fault.seconds):
                        return
                wire = _response_bytes(status, reason, out_headers, data, method, keep_alive)
                if fault is not None and fault.kind == "trickle":
                    self._trickle(client, wire, fault.bytes_per_second)
                else:
                    client.sendall(wire)
                if not keep_alive:
                    return
        except (_ClientGone, OSError):
            return
        finally:
            if upstream is not None and upstream.sock is not None:
                self._untrack(upstream.sock)
            reader.close()
            if reset:
                with self._lock:
                    self._sockets.discard(client)
                client.close()
            else:
                self._untrack(client)

    def _wait_while_hung(self, path: str) -> Fault | None:
        """Block until the fault on *path* is no longer a hang (or the proxy stops); the new fault."""
        with self._changed:
            while not self._stopped.is_set():
                fault = self._fault_for(path)
                if fault is None or fault.kind != "hang":
                    return fault
                self._changed.wait(0.5)
        return None

    def _forward(self, upstream, method, target, headers, body):
        """Send the request upstream (reconnecting once if a kept-alive link went stale)."""
        out = {k: v for k, v in headers if k.lower() not in _HOP_BY_HOP}
        for attempt in (1, 2):
            if upstream is None:
                upstream = http.client.HTTPConnection(self.upstream, timeout=_UPSTREAM_TIMEOUT)
            try:
                upstream.request(method, target, body=body if body or method in ("PUT", "POST") else None,
                                 headers=out)
                if upstream.sock is not None:
                    self._track(upstream.sock)
                resp = upstream.getresponse()
                data = resp.read()
                kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
                if resp.will_close:
                    upstream.close()
                    upstream = None
                return upstream, (resp.status, resp.reason, kept, data)
            except (OSError, http.client.HTTPException):
                if upstream.sock is not None:
                    self._untrack(upstream.sock)
                upstream.close()
                upstream = None
                if self._stopped.is_set() or attempt == 2:
                    return None, (502, "Bad Gateway", [("Content-Type", "text/plain")],
                                  b"fault proxy: upstream unreachable")
        raise AssertionError("unreachable")

    def _trickle(self, client: socket.socket, wire: bytes, rate: float) -> None:
        # Whole bytes at most every 10 ms, so slow rates send one byte at a time.
        step = max(1, int(rate * 0.01))
        start = time.monotonic()
        sent = 0
        while sent < len(wire):
            due = start + sent / rate
            if self._stopped.wait(max(0.0, due - time.monotonic())):
                raise _ClientGone()
            client.sendall(wire[sent:sent + step])
            sent += step


def _read_request(reader):
    """(method, target, headers, body, keep_alive) of the next request, or None at end of stream."""
    line = reader.readline(_MAX_HEAD)
    while line in (b"\r\n", b"\n"):   # tolerate stray blank lines between requests
        line = reader.readline(_MAX_HEAD)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise _ClientGone()
    method, target, version = parts
    headers = []
    size = 0
    while True:
        h = reader.readline(_MAX_HEAD)
        size += len(h)
        if not h or size > _MAX_HEAD:
            raise _ClientGone()
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lower = {k.lower(): v for k, v in headers}
    if "chunked" in lower.get("transfer-encoding", "").lower():
        body = _read_chunked(reader)
    else:
        length = int(lower.get("content-length") or 0)
        body = reader.read(length) if length else b""
        if len(body) != length:
            raise _ClientGone()
    connection = lower.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return method, target, headers, body, keep_alive


def _read_chunked(reader) -> bytes:
    body = bytearray()
    while True:
        size_line = reader.readline(_MAX_HEAD)
        if not size_line:
            raise _ClientGone()
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while reader.readline(_MAX_HEAD) not in (b"\r\n", b"\n", b""):   # trailers
                pass
            return bytes(body)
        chunk = reader.read(size)
        reader.readline(_MAX_HEAD)
        if len(chunk) != size:
            raise _ClientGone()
        body += chunk


def _response_bytes(status, reason, headers, data, method, keep_alive) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP]
    lines.append(f"Content-Length: {len(data)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if method == "HEAD" else head + data


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
