"""The status server under attack: slow and idle connection floods, HTTP/0.9 and junk, the connection cap.

A real StatusServer on 127.0.0.1 driven by an ElectionState (no Consul), as in test_status_server.
The attackers run on a thread of this process and compete with the server for the GIL, so every
latency measured here is a pessimistic one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import resource
import selectors
import socket
import statistics
import threading
import time

import pytest

from consul_elect.state import ElectionState
from consul_elect.status_server import MAX_CONNECTIONS, REQUEST_DEADLINE, SEND_DEADLINE, StatusServer
from test_status_server import KEY, NAME, host_port, request, status_code_of

ATTACK_SECONDS = 5.0
PROBE_EVERY = 0.1
# What a liveness probe with a one-second timeout needs.
HEALTH_WITHIN = 1.0
# The attacks the fault probe ran against the single-threaded server, which left /health
# unanswered for the whole attack: 200 connections sending a byte a second, or 2,000 idle ones.
SLOWLORIS_CONNECTIONS = 200
IDLE_CONNECTIONS = 2000
# Attackers open all their connections at once, then replace those the server closes at most this
# many a second: the server's connection cap twice a second, bounded for a shared machine (each
# connection the server closes leaves a socket in TIME_WAIT for a minute).
RECONNECTS_PER_SECOND = 500
ATTACK_TICK = 0.05
# The server closes what the attackers left within these deadlines (and at once for a client
# that hung up); one second more for a loaded machine.
SERVER_LETS_GO_WITHIN = REQUEST_DEADLINE + SEND_DEADLINE + 1.0


@pytest.fixture
def state():
    return ElectionState(KEY, NAME)


@pytest.fixture
def server(state):
    srv = StatusServer(state, "127.0.0.1", 0).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fds_for_the_idle_flood():
    """Raise the soft limit on open files for the flood's sockets and the server's, then restore it."""
    needed = IDLE_CONNECTIONS + MAX_CONNECTIONS + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the idle flood needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def server_side_peers(srv: StatusServer) -> list[int]:
    """Client ports of the connections the server holds open: sockets of this process whose local
    port is the server's, other than the listening one (read from the kernel, not the server).

    The process's sockets are listed before the kernel's table is read, so a socket counted was
    open at both moments: under churn this undercounts, but it never counts more than were open
    (by inode: the table, read in pieces while it changes, may list a socket twice).
    """
    port = host_port(srv)[1]
    needle = f":{port:04X} "
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    peers = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            if needle not in line:
                continue
            fields = line.split()
            local, remote, tcp_state, inode = fields[1], fields[2], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and tcp_state != "0A" and inode in inodes:  # 0A: LISTEN
                peers[inode] = int(remote.rsplit(":", 1)[1], 16)
    return list(peers.values())


def wait_until_server_lets_go(srv: StatusServer, fds_before: int) -> None:
    deadline = time.monotonic() + SERVER_LETS_GO_WITHIN
    while (held := len(server_side_peers(srv))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held == 0, f"the server still holds {held} connections {SERVER_LETS_GO_WITHIN:.0f} s after the attack"
    assert open_fds() == fds_before, "a socket of the attack is still open in this process"


class ConnectionFlood:
    """Keeps *count* connections open to *address* from one thread, replacing those the server closes.

    With trickle=True each connection sends a request one byte a second (slowloris); otherwise it
    sends nothing. Everything it opened is closed on leaving the `with` block.
    """

    def __init__(self, address: tuple[str, int], count: int, trickle: bool) -> None:
        self._address = address
        self._count = count
        self._trickle = trickle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-flood")
        self.opened = 0
        self.closed_by_server = 0
        self.open_now = 0
        self.failure: BaseException | None = None

    def __enter__(self) -> ConnectionFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the flood thread did not stop"
        if self.failure is not None and exc[0] is None:
            raise AssertionError("the flood thread failed") from self.failure

    def _run(self) -> None:
        request_bytes = b"GET /status HTTP/1.1\r\nHost: x\r\nX-a: b\r\n"
        selector = selectors.DefaultSelector()
        # socket -> (bytes sent so far, when the next byte is due)
        sockets: dict[socket.socket, tuple[int, float]] = {}

        def drop(sock: socket.socket) -> None:
            selector.unregister(sock)
            del sockets[sock]
            sock.close()

        hard_stop = time.monotonic() + ATTACK_SECONDS + 30  # even if nobody calls stop
        # All connections at once at first, then at most RECONNECTS_PER_SECOND (a tick's worth at a time).
        allowance, allowed_at = float(self._count), time.monotonic()
        try:
            while not self._stop.is_set() and time.monotonic() < hard_stop:
                now = time.monotonic()
                allowance = min(allowance + (now - allowed_at) * RECONNECTS_PER_SECOND,
                                max(allowance, RECONNECTS_PER_SECOND * ATTACK_TICK))
                allowed_at = now
                while len(sockets) < self._count and allowance >= 1:
                    allowance -= 1
                    sock = socket.socket()
                    sock.setblocking(False)
                    if sock.connect_ex(self._address) not in (0, errno.EINPROGRESS):
                        sock.close()
                        break
                    selector.register(sock, selectors.EVENT_READ)
                    sockets[sock] = (0, now)
                    self.opened += 1
                self.open_now = len(sockets)
                if self._trickle:
                    for sock, (sent, due) in list(sockets.items()):
                        if due <= now and sent < len(request_bytes):
                            try:
                                sock.send(request_bytes[sent:sent + 1])
                                sockets[sock] = (sent + 1, now + 1.0)
                            except (BlockingIOError, InterruptedError):
                                pass  # still connecting
                            except OSError:
                                self.closed_by_server += 1
                                drop(sock)
                # Readable means the server closed it (or, never expected, answered): replace it.
                for key, _ in selector.select(ATTACK_TICK):
                    self.closed_by_server += 1
                    drop(key.fileobj)
        except BaseException as e:
            self.failure = e
        finally:
            for sock in list(sockets):
                drop(sock)
            selector.close()


@dataclasses.dataclass
class Probes:
    latencies: list[float] = dataclasses.field(default_factory=list)
    server_connections: list[int] = dataclasses.field(default_factory=list)
    attacker_connections: list[int] = dataclasses.field(default_factory=list)


def probe_health_during(srv: StatusServer, flood: ConnectionFlood, seconds: float) -> Probes:
    """GET /health every PROBE_EVERY for *seconds*, each on a fresh connection as a liveness probe
    makes them; every half second, how many connections the server and the attacker hold."""
    probes = Probes()
    end = time.monotonic() + seconds
    next_sample = time.monotonic()
    while time.monotonic() < end:
        started = time.monotonic()
        status, _, _ = request(srv, "/health")
        probes.latencies.append(time.monotonic() - started)
        assert status == 200
        if time.monotonic() >= next_sample:
            probes.server_connections.append(len(server_side_peers(srv)))
            probes.attacker_connections.append(flood.open_now)
            next_sample += 0.5
        time.sleep(max(0.0, started + PROBE_EVERY - time.monotonic()))
    print(f"\n/health {len(probes.latencies)} probes, median {statistics.median(probes.latencies) * 1000:.1f} ms, "
          f"max {max(probes.latencies) * 1000:.1f} ms; connections held by the server "
          f"{min(probes.server_connections)}..{max(probes.server_connections)} (cap {MAX_CONNECTIONS}), by the "
          f"attacker {min(probes.attacker_connections)}..{max(probes.attacker_connections)}; the attacker opened "
          f"{flood.opened}, the server closed {flood.closed_by_server}")
    return probes


def test_health_answers_within_a_second_during_a_slowloris(server, state):
    state.heartbeat()
    fds_before = open_fds()
    with ConnectionFlood(host_port(server), SLOWLORIS_CONNECTIONS, trickle=True) as flood:
        time.sleep(0.5)  # let the flood build up
        probes = probe_health_during(server, flood, ATTACK_SECONDS)
    assert max(probes.latencies) < HEALTH_WITHIN
    # The attack was real: most of its connections were open at any time, and the server cut
    # them off at the request deadline (each lived through about 5 s of attack and 1 s deadlines).
    assert statistics.median(probes.server_connections) >= SLOWLORIS_CONNECTIONS * 0.75
    assert flood.closed_by_server >= SLOWLORIS_CONNECTIONS * 3
    wait_until_server_lets_go(server, fds_before)


def test_health_answers_within_a_second_during_an_idle_flood(server, state, fds_for_the_idle_flood, caplog):
    state.heartbeat()
    fds_before = open_fds()
    with ConnectionFlood(host_port(server), IDLE_CONNECTIONS, trickle=False) as flood:
        # Probing from the first burst on.
        probes = probe_health_during(server, flood, ATTACK_SECONDS)
    assert max(probes.latencies) < HEALTH_WITHIN
    # The attacker opened its thousands of connections and kept replacing them; the server held
    # no more than the cap, and shed the oldest to make room (it says so, once).
    assert flood.opened >= IDLE_CONNECTIONS + RECONNECTS_PER_SECOND * ATTACK_SECONDS / 2
    assert max(probes.server_connections) <= MAX_CONNECTIONS
    assert [r.levelname for r in caplog.records if "shedding the oldest" in r.getMessage()] == ["WARNING"]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and "shedding the oldest" not in r.getMessage()]
    wait_until_server_lets_go(server, fds_before)


def test_a_full_server_sheds_its_oldest_connections_for_new_ones(server):
    fds_before = open_fds()
    extra = 50
    clients: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS + extra):
            clients.append(socket.create_connection(host_port(server), timeout=5))
        # All accepted within milliseconds; well inside the request deadline of the newest.
        deadline = time.monotonic() + REQUEST_DEADLINE / 2
        while len(held := server_side_peers(server)) != MAX_CONNECTIONS and time.monotonic() < deadline:
            assert len(held) <= MAX_CONNECTIONS
            time.sleep(0.01)
        assert sorted(held) == sorted(c.getsockname()[1] for c in clients[extra:]), "not the newest that stayed"
        for shed in clients[:extra]:
            shed.settimeout(1.0)
            with contextlib.suppress(ConnectionResetError):
                assert shed.recv(1) == b""
        # A probe arriving now is served (and sheds the oldest of the rest).
        assert request(server, "/health")[0] == 200
    finally:
        for client in clients:
            client.close()
    wait_until_server_lets_go(server, fds_before)


def test_a_connection_shed_with_input_waiting_is_not_served_afterwards(server, caplog):
    # The race: one turn of the server's loop sees both new connections (whose accept sheds the
    # oldest) and input on those oldest; it must not then read from a connection it closed.
    fds_before = open_fds()
    opened: list[socket.socket] = []  # every client, for the cleanup; closing twice is harmless

    def connect_and_start_a_request() -> socket.socket:
        opened.append(socket.create_connection(host_port(server), timeout=5))
        opened[-1].sendall(b"G")
        return opened[-1]

    try:
        open_now = [connect_and_start_a_request() for _ in range(MAX_CONNECTIONS)]
        for _ in range(5):
            time.sleep(0.05)
            oldest, open_now = open_now[:64], open_now[64:] + [connect_and_start_a_request() for _ in range(64)]
            for client in oldest:
                with contextlib.suppress(OSError):
                    client.sendall(b"E")
        assert request(server, "/health")[0] == 200
    finally:
        for client in opened:
            client.close()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and "shedding the oldest" not in r.getMessage()]
    wait_until_server_lets_go(server, fds_before)


@pytest.mark.parametrize("what, data, expected", [
    ("HTTP/0.9 request", b"GET /status\r\n", 400),
    ("HTTP/0.9 request, bare LF", b"GET /status\n", 400),
    ("garbage request line", b"HELLO\r\n", 400),
    # No line end at all: refused from its first bytes, not after the request deadline.
    ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    ("HTTP/2 prior knowledge", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
])
def test_requests_that_cannot_be_http_1_are_refused_at_once_with_a_status_line(server, what, data, expected):
    with socket.create_connection(host_port(server), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(data)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
        took = time.monotonic() - started
    assert response.startswith(b"HTTP/1.0 %d " % expected), (what, response[:100])
    assert status_code_of(response) == expected
    assert b"status" not in response.split(b"\r\n\r\n", 1)[1], "the request must not be echoed back"
    # recv() returned b"": the server closed the connection, long before any deadline.
    assert took < REQUEST_DEADLINE / 4, f"{what}: answered after {took:.3f} s"
