"""The watchdog: a small process that owns the child and keeps the lease promise on its own.

It is forked from consul-elect before any thread starts and becomes the child's parent. It holds
the lease deadline and the session id, so it keeps working when the elector cannot:

- elector killed (its end of the socket closes): SIGKILL the child's group at once, reap it,
  then release the key and destroy the session so a standby takes over without lock-delay;
- elector frozen or cut off from Consul: SIGKILL the child's group at the lease deadline, reap
  it, then release the key (a release applies no lock-delay);
- the watchdog itself killed: the child has PR_SET_PDEATHSIG=SIGKILL (Linux).

It speaks newline-delimited JSON over a socketpair; see WatchdogLink for the messages.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import select
import signal
import socket
import tempfile
import threading
from collections.abc import Callable

from . import clock, supervisor
from .config import Config, Connection

log = logging.getLogger("consul_elect.watchdog")

# While waiting for a signalled group to empty, look again this often.
GROUP_POLL = 0.01
# The watchdog's own Consul requests (release, destroy) must not keep the process alive long
# after the elector is gone.
CLEANUP_TIMEOUT = 2.0
# After SIGKILL, how long to wait for the kernel to let the group die before reporting anyway.
KILL_WAIT = 2.0
# Signals meant for the elector (terminal, service manager); the watchdog survives them so it
# can carry out the orderly stop the elector asks for.
IGNORED = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGWINCH, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU]

REASON_EXITED = "exited"
REASON_STOPPED = "stopped"
REASON_LEASE_EXPIRED = "lease-expired"


class Watchdog:
    def __init__(self, sock: socket.socket, config: Config) -> None:
        self.sock = sock
        self.config = config
        self.session: str | None = None
        self.deadline: float | None = None
        self.child: int | None = None          # main child pid while not yet reaped
        self.pgid: int | None = None           # the child's group while any member may live
        self.status: int | None = None         # main child's exit code once reaped
        self.kill_at: float | None = None      # when a graceful stop turns into SIGKILL
        self.reason: str | None = None
        self.killed = False
        self.argv = ["/bin/sh", "-c", " ".join(config.command)] if config.shell else list(config.command)
        self.prepared: supervisor.PreparedChild | None = None
        self.lease_file: str | None = None

    # -- main loop -------------------------------------------------------------------------

    def serve(self) -> None:
        for s in IGNORED:
            signal.signal(s, signal.SIG_IGN)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        supervisor.become_subreaper()
        self.lease_file = os.path.join(tempfile.mkdtemp(prefix="consul-elect-"), "lease-deadline")
        self.prepared = supervisor.PreparedChild(self.argv)
        try:
            self._loop(wake_r)
        finally:
            if self.prepared is not None:
                self.prepared.cancel()
            self._remove_lease_file()
            try:
                os.rmdir(os.path.dirname(self.lease_file))
            except OSError:
                pass

    def _loop(self, wake_r: int) -> None:
        buffered = b""
        while True:
            timeout = self._next_timeout()
            ready, _, _ = select.select([self.sock, wake_r], [], [], timeout)
            if wake_r in ready:
                _drain(wake_r)
            self._reap()
            if self.sock in ready:
                try:
                    data = self.sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self._elector_gone()
                    return
                buffered += data
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if self._handle(json.loads(line)) == "quit":
                        return
            self._check_timers()

    def _next_timeout(self) -> float | None:
        if self.pgid is None:
            return None
        moments = [t for t in (self.deadline, self.kill_at) if t is not None]
        if self.child is None or self.kill_at is not None:
            moments.append(clock.now() + GROUP_POLL)
        return max(0.0, min(moments) - clock.now()) if moments else None

    def _handle(self, msg: dict) -> str | None:
        op = msg["op"]
        if op == "session":
            self.session = msg["session"]
        elif op == "lease":
            self.deadline = msg["deadline"]
            self._write_lease_file()
        elif op == "spawn":
            self._spawn(msg["env"])
        elif op == "signal":
            if self.pgid is not None:
                supervisor.signal_group(self.pgid, msg["signo"])
        elif op == "stop":
            self._begin_stop(msg["grace"], REASON_STOPPED)
        elif op == "quit":
            self._kill_now()
            self._wait_dead(KILL_WAIT)
            return "quit"
        return None

    # -- the child -------------------------------------------------------------------------

    def _spawn(self, extra_env: dict[str, str]) -> None:
        if self.deadline is None or clock.now() >= self.deadline:
            self._send(ev="spawn_failed", lease_expired=True, code=None, error="lease already expired")
            return
        self._write_lease_file()
        extra_env = {**extra_env, "CONSUL_ELECT_LEASE_FILE": self.lease_file}
        try:
            try:
                pid = self.prepared.launch(extra_env, self.deadline)
            except BrokenPipeError:  # the prepared process was killed meanwhile: start afresh
                self.prepared = supervisor.PreparedChild(self.argv)
                pid = self.prepared.launch(extra_env, self.deadline)
        except TimeoutError:
            self.prepared = supervisor.PreparedChild(self.argv)
            self._send(ev="spawn_failed", lease_expired=True, code=None, error="exec did not finish within the lease")
            return
        except OSError as e:
            self.prepared = supervisor.PreparedChild(self.argv)
            self._send(ev="spawn_failed", lease_expired=False, code=supervisor.spawn_error_exit_code(e),
                       error=f"{self.argv[0]}: {e.strerror}")
            return
        self.prepared = None
        self.child, self.pgid, self.status, self.kill_at, self.reason, self.killed = pid, pid, None, None, None, False
        self._send(ev="spawned", pid=pid)

    def _begin_stop(self, grace: float, reason: str) -> None:
        if self.pgid is None:
            return  # it already exited, and that was reported
        if self.reason is None:
            self.reason = reason
        kill_at = clock.now() + grace
        if self.deadline is not None:
            kill_at = min(kill_at, self.deadline)
        if self.kill_at is None:
            supervisor.signal_group(self.pgid, signal.SIGTERM)
            # A stopped (SIGTSTP) child cannot act on SIGTERM until it is continued.
            supervisor.signal_group(self.pgid, signal.SIGCONT)
        # A second stop order (a second Ctrl-C) can only bring the SIGKILL closer.
        self.kill_at = kill_at if self.kill_at is None else min(self.kill_at, kill_at)

    def _kill_now(self) -> None:
        if self.pgid is not None:
            supervisor.signal_group(self.pgid, signal.SIGKILL)
            self.killed = True

    def _reap(self) -> None:
        for pid, status in supervisor.reap_all():
            if pid == self.child:
                self.child = None
                self.status = supervisor.exit_code(status)

    def _check_timers(self) -> None:
        if self.pgid is None:
            return
        now = clock.now()
        if self.deadline is not None and now >= self.deadline and not self.killed:
            # The elector did not renew in time (frozen, cut off, slow): the lease promise
            # is kept here, without it.
            self.reason = REASON_LEASE_EXPIRED
            self._kill_now()
            confirmed = self._wait_dead(KILL_WAIT)
            self._finish(confirmed)
            if confirmed:  # never hand the key on while the child might still run
                self._release_key()
            return
        if self.kill_at is not None and now >= self.kill_at and not self.killed:
            self._kill_now()
        if self.child is None:
            if self.reason is None:
                # The child ended on its own; whatever it left in its group must not keep
                # doing leader work without a leader.
                self.reason = REASON_EXITED
                self._kill_now()
            if self.killed or not supervisor.group_alive(self.pgid):
                self._finish(self._wait_dead(KILL_WAIT) if self.killed else True)

    def _wait_dead(self, limit: float) -> bool:
        """Block until the main child is reaped and its group is empty; False if *limit* passed first."""
        end = clock.now() + limit
        while True:
            self._reap()
            if self.child is None and (self.pgid is None or not supervisor.group_alive(self.pgid)):
                return True
            if clock.now() >= end:
                return False
            select.select([], [], [], GROUP_POLL / 2)

    def _finish(self, confirmed: bool) -> None:
        # Orphans that left the child's group (setsid) were re-parented to us: they go too.
        supervisor.kill_adopted(keep=set())
        self._send(ev="exited", pid=self.pgid, status=self.status, reason=self.reason, killed=self.killed,
                   confirmed=confirmed)
        self.pgid = self.child = self.kill_at = None
        self.killed = False
        self._remove_lease_file()
        self.prepared = supervisor.PreparedChild(self.argv)

    def _write_lease_file(self) -> None:
        # The child may check the deadline itself; rename makes each update atomic for readers.
        # A courtesy only: a tmp cleaner that removed the folder must not cost the lease.
        if self.deadline is None:
            return
        tmp = self.lease_file + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.lease_file), mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(f"{self.deadline:.3f}\n")
            os.replace(tmp, self.lease_file)
        except OSError as e:
            log.warning("cannot write the lease file %s: %s", self.lease_file, e)

    def _remove_lease_file(self) -> None:
        for path in (self.lease_file, self.lease_file + ".tmp"):
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- Consul clean-up on the elector's behalf -------------------------------------------

    def _release_key(self) -> None:
        if self.session is not None:
            _consul_put(self.config.connection, f"/v1/kv/{self.config.key}?release={self.session}")

    def _elector_gone(self) -> None:
        self._kill_now()
        confirmed = self._wait_dead(KILL_WAIT)
        supervisor.kill_adopted(keep={self.prepared.pid} if self.prepared else set())
        if confirmed and self.session is not None:
            self._release_key()
            _consul_put(self.config.connection, f"/v1/session/destroy/{self.session}")

    def _send(self, **msg) -> None:
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            pass  # the elector is gone; the next recv tells us


def _consul_put(conn: Connection, path: str) -> None:
    """One best-effort PUT with the standard library only.

    The watchdog is forked before py-consul and requests are imported, which keeps it small
    (and its forks for the command fast); these two clean-up calls are all it says to Consul.
    """
    import http.client
    import urllib.parse

    headers = {"X-Consul-Token": conn.token} if conn.token else {}
    client = http.client.HTTPConnection(conn.host, conn.port, timeout=CLEANUP_TIMEOUT)
    try:
        if conn.scheme == "https":
            import ssl

            context = ssl.create_default_context(cafile=conn.ca_cert)
            if not conn.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if conn.client_cert:
                context.load_cert_chain(conn.client_cert, conn.client_key)
            raw = socket.create_connection((conn.host, conn.port), CLEANUP_TIMEOUT)
            client.sock = context.wrap_socket(raw, server_hostname=conn.tls_server_name or conn.host)
        client.request("PUT", urllib.parse.quote(path, safe="/:?=&"), headers=headers)
        response = client.getresponse()
        response.read()
        if response.status != 200:
            log.warning("watchdog: Consul answered %s to PUT %s", response.status, path.split("?")[0])
    except (OSError, http.client.HTTPException) as e:
        log.warning("watchdog could not reach Consul for PUT %s: %s", path.split("?")[0], e)
    finally:
        client.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


class WatchdogLink:
    """The elector's end: send orders, receive child events on a reader thread.

    Orders: session(id), lease(deadline), spawn(env), signal(signo), stop(grace), quit.
    Events: spawned(pid), spawn_failed(lease_expired, code, error), exited(pid, status, reason,
    killed, confirmed), and
    watchdog_lost when the watchdog process disappears.
    """

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._lock = threading.Lock()

    @classmethod
    def start(cls, config: Config) -> WatchdogLink:
        """Fork the watchdog. Call before any thread exists."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Objects imported so far are shared copy-on-write with the watchdog; keep the garbage
        # collector from touching (and so copying) them in either process.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                Watchdog(theirs, config).serve()
            except BaseException:
                log.exception("watchdog failed")
                code = 70
            finally:
                os._exit(code)
        theirs.close()
        return cls(ours, pid)

    def listen(self, on_event: Callable[[dict], None]) -> None:
        def read() -> None:
            with self.sock.makefile("rb") as stream:
                while True:
                    try:
                        line = stream.readline()
                    except OSError:
                        line = b""
                    if not line.endswith(b"\n"):
                        on_event({"ev": "watchdog_lost"})
                        return
                    on_event(json.loads(line))

        threading.Thread(target=read, name="watchdog-link", daemon=True).start()

    def send(self, op: str, **fields) -> None:
        with self._lock:
            try:
                self.sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            except OSError:
                pass  # the reader thread reports the loss

    def close(self) -> None:
        self.sock.close()
