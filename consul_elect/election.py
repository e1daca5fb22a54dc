"""The election, from campaign to exit: campaign, lead, step down, campaign again or leave.

One thread (the caller's) decides everything, reading events from one queue: signals, key
changes (KeyWatcher), renewals (SessionKeeper), and child events (the watchdog). Every way out
goes through `run`'s finally: stop the child, then release the key, then destroy the session.
"""

from __future__ import annotations

import logging
import queue
import signal
import socket
from typing import TYPE_CHECKING

from . import clock, supervisor
from .clock import utc_now_iso
from . import config as defaults
from .config import Config
from .consul_api import ConsulClient, KeyState
from .elector import Identity, KeyWatcher, SessionKeeper, parse_identity, session_name
from .errors import (
    ConsulError, ConsulUnavailable, LeadershipLost, LeadershipTimeout, NotAnElectKey, SessionGone, WatchdogFailed,
)
from .state import CAMPAIGNING, DISCONNECTED, FOLLOWER, LEADER, STEPPING_DOWN, ElectionState
from .watchdog import KILL_WAIT, REASON_LEASE_EXPIRED, WatchdogLink

if TYPE_CHECKING:
    from .status_server import StatusServer

log = logging.getLogger("consul_elect")

# Until Consul has answered once, give up after this long (unless --timeout says otherwise):
# long enough for an agent started beside us in the same pod, short enough that a typo in
# CONSUL_HTTP_ADDR is reported rather than retried forever.
STARTUP_PATIENCE = 15.0
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Every catchable signal except those the runtime needs; all of them reach the child's group.
FORWARDED_SIGNALS = [s for s in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
                                 signal.SIGCONT, signal.SIGALRM, getattr(signal, "SIGPWR", None),
                                 getattr(signal, "SIGURG", None), getattr(signal, "SIGTSTP", None),
                                 getattr(signal, "SIGTTIN", None), getattr(signal, "SIGTTOU", None))
                     if s is not None]


class Lost(Exception):
    """Internal: leadership ended for *reason* (never leaves this module)."""


class Election:
    def __init__(self, config: Config, watchdog: WatchdogLink) -> None:
        self.config = config
        self.watchdog = watchdog
        self.state = ElectionState(config.key, config.name)
        self.identity = Identity.of_this_process(config, status_address=None)
        # SimpleQueue.put is reentrant, so signal handlers may post to it safely.
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.client = ConsulClient(config.connection)
        self.session: str | None = None
        self.keeper: SessionKeeper | None = None
        self.key_state: KeyState | None = None
        self.deadline: float | None = None
        self.fencing_token: int | None = None
        self.child_pid: int | None = None
        self.child_alive = False
        self.ended_sessions: list[str] = []
        self.watchdog_alive = True
        self.spawn_pending = False
        self.child_confirmed_dead = True
        self.key_checked = False
        self.shutdown_signal: int | None = None
        self.reached_consul = False
        self.watcher: KeyWatcher | None = None
        self.status_server: StatusServer | None = None

    # -- the one way in and out ------------------------------------------------------------

    def run(self) -> int:
        try:
            if self.config.status_port is not None:
                from .status_server import StatusServer

                # Started after the fork, so the watchdog does not hold the port open.
                self.status_server = StatusServer(self.state, self.config.status_bind, self.config.status_port).start()
                self.identity = Identity.of_this_process(self.config, self._public_status_address())
            self.watchdog.listen(lambda msg: self.events.put((msg.pop("ev"), msg)))
            self._install_signal_handlers()
            self.watcher = KeyWatcher(self.config, self.events.put)
            self.watcher.start()
            while True:
                self._campaign()
                if self.shutdown_signal is not None:
                    return 0
                code = self._lead()
                if code is not None:
                    return code
                # Leadership lost and the child stopped: stay in the race.
        finally:
            self._close()

    def _close(self) -> None:
        """Stop the child, then release the key, then destroy the session. Always, in that order."""
        try:
            if self.child_alive and self.watchdog_alive:
                self.watchdog.send("stop", grace=self.config.grace)
                self._await_child_exit(self.config.grace + KILL_WAIT + 1)
        except WatchdogFailed:
            pass
        if self.child_alive or self.spawn_pending:
            # A child not seen to exit, or one the watchdog was just told to start: the watchdog
            # kills whatever is still running on "quit"; wait for it to go, make sure, and only
            # then release the key.
            self.watchdog.send("quit")
            self._await_watchdog_exit(KILL_WAIT + 1)
            if self.child_alive and not supervisor.kill_group_and_wait(self.child_pid, KILL_WAIT, reap=True):
                # Only a child whose exit was never reported: its pid cannot have been reused yet.
                self.child_confirmed_dead = False
            self._end_session()
        else:
            # Nothing runs: release first, so a standby takes over without waiting for us.
            self._end_session()
            self.watchdog.send("quit")
        self.watchdog.close()
        if self.watcher is not None:
            self.watcher.stop()
        if self.status_server is not None:
            self.status_server.stop()
        for s in (*SHUTDOWN_SIGNALS, *FORWARDED_SIGNALS, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)

    # -- campaigning -----------------------------------------------------------------------

    def _campaign(self) -> None:
        """Return once leader, or when a shutdown signal arrived; raise when giving up."""
        self._set_state(CAMPAIGNING)
        log.info("campaigning for %s as %s", self.config.key, self.config.name)
        if self.key_state is not None:
            self._observe_key(self.key_state)
        started = clock.now()
        give_up_at = started + self.config.timeout if self.config.timeout else None
        retry_at = started
        acquire_at: float | None = started
        backoff = defaults.RECONNECT_BACKOFF_MIN
        last_error: ConsulError | None = None
        while self.shutdown_signal is None:
            now = clock.now()
            patience_end = give_up_at or (None if self.reached_consul else started + STARTUP_PATIENCE)
            if patience_end is not None and now >= patience_end:
                if isinstance(last_error, ConsulUnavailable):
                    raise ConsulUnavailable(f"{last_error} (gave up after {now - started:.0f}s)")
                raise LeadershipTimeout(f"not elected leader of {self.config.key} within {now - started:.1f}s")
            try:
                if not self.key_checked:
                    self._refuse_foreign_key()
                if self.session is None and now >= retry_at:
                    self._open_session()
                    acquire_at = now
                if self.session is not None and acquire_at is not None and now >= acquire_at:
                    acquire_at = None
                    if self._try_acquire():
                        return
                    if self.key_state is None or self.key_state.session is None:
                        # Free but refused: a lock-delay is running. Ask again soon.
                        acquire_at = now + defaults.LOCK_DELAY_RETRY
                    backoff = defaults.RECONNECT_BACKOFF_MIN
                    last_error = None
            except SessionGone:
                self._drop_session()
                retry_at = now
                continue
            except ConsulUnavailable as e:
                last_error = e
                self._consul_failed(e)
                retry_at = now + backoff
                if self.session is not None:
                    acquire_at = now + backoff
                backoff = min(backoff * 2, defaults.RECONNECT_BACKOFF_MAX)
            wake = [t for t in (retry_at if self.session is None else None, acquire_at, patience_end) if t is not None]
            event = self._next_event(min(wake) if wake else None)
            if event is None:
                continue
            kind = event[0]
            if kind == "key":
                self._observe_key(event[1])
                if self.session is not None and (event[1] is None or event[1].session is None):
                    acquire_at = clock.now()
            elif kind == "session_gone" and event[1] == self.session:
                log.warning("session %s was invalidated; opening a new one", self.session)
                self._drop_session()
                retry_at = clock.now()
            else:
                self._handle_common(event)

    def _refuse_foreign_key(self) -> None:
        """Never take over a key that holds another tool's data: releasing it would wipe that data."""
        _, kv = self.client.read_key(self.config.key, consistent=False)
        self._consul_reached()
        if kv is not None and kv.value and parse_identity(kv.value) is None:
            raise NotAnElectKey(f"refusing to campaign on {self.config.key}: it holds {len(kv.value)} bytes that are "
                                "not a consul-elect identity (another tool's data?); use another key")
        self.key_checked = True

    def _open_session(self) -> None:
        self.session = self.client.create_session(
            session_name(self.config.key, self.config.name), self.config.ttl, self.config.lock_delay
        )
        self._consul_reached()
        self.watchdog.send("session", session=self.session)
        self.keeper = SessionKeeper(self.config, self.session, self.events.put, self._renew_interval)
        self.keeper.start()
        self.state.update(session=self.session)
        log.debug("session %s created (ttl %gs, lock-delay %gs)", self.session, self.config.ttl, self.config.lock_delay)

    def _renew_interval(self) -> float:
        return self.config.renew_interval if self.deadline is not None else self.config.follower_renew_interval

    def _try_acquire(self) -> bool:
        value = self.identity.to_value(self.session, since=utc_now_iso())
        sent_at = clock.now()
        # An answer later than the lease window would be useless: it would be expired on arrival.
        token = self.client.acquire(self.config.key, self.session, value,
                                    timeout=min(defaults.REQUEST_TIMEOUT, self.config.lease_window))
        self._consul_reached()
        if token is None:
            return False
        self.deadline = sent_at + self.config.lease_window
        self.fencing_token = token
        self.watchdog.send("lease", deadline=self.deadline)
        # The lease counts from when the acquire was sent; if Consul took long to answer
        # (a stall, a new Raft leader), most of it is gone: get a fresh proof at once.
        self.keeper.reschedule(renew_now=clock.now() - sent_at > self.config.renew_interval)
        return True

    def _observe_key(self, kv: KeyState | None) -> None:
        """Follow who leads while we do not (the leader's own loop judges key changes itself)."""
        self.key_state = kv
        # A session of ours that we could not release (Consul was down) leads nobody: it only
        # blocks the key until Consul expires it.
        if kv is None or kv.session is None or kv.session in self.ended_sessions:
            self.state.update(leader=None, state=CAMPAIGNING)
        elif kv.session != self.session:
            holder = parse_identity(kv.value) or {}
            leader = {**holder, "name": holder.get("name"), "session": kv.session}
            if self.state.snapshot().leader != leader:
                log.info("following %s (session %s)", leader["name"] or "a non-consul-elect holder", kv.session)
            self.state.update(leader=leader, state=FOLLOWER)

    # -- leading ---------------------------------------------------------------------------

    def _lead(self) -> int | None:
        """Run the child while leader. Return an exit code to leave, or None to campaign again."""
        token = self.fencing_token
        self.child_pid = None
        self.spawn_pending = True
        self.watchdog.send("spawn", env=self._child_env(token))
        log.info("elected leader of %s (fencing token %d)", self.config.key, token)
        self._set_state(LEADER, fencing_token=token, lease_deadline=self.deadline,
                        leader={**self.identity.as_dict(), "session": self.session})
        started = self._wait_for("spawned", "spawn_failed")
        self.spawn_pending = False
        if started[0] == "spawn_failed":
            if started[1]["lease_expired"]:
                return self._step_down("the lease ran out before the command could start")
            log.error("%s", started[1]["error"])
            return started[1]["code"]
        self.child_alive = True
        self.child_pid = started[1]["pid"]
        self.state.child_started()
        log.info("started %s (pid %d)", " ".join(self.config.command), started[1]["pid"])
        try:
            return self._supervise_leader()
        except Lost as lost:
            return self._step_down(str(lost))

    def _supervise_leader(self) -> int:
        """Wait for the child to exit or leadership to end (raises Lost)."""
        while True:
            if self.shutdown_signal is not None:
                return self._stop_child_for_shutdown(self.shutdown_signal)
            stand_down_at = self.deadline - self.config.grace
            if clock.now() >= stand_down_at:
                raise Lost(f"lease running out: no proof of life for {self.config.lease_window - self.config.grace:.2f}s")
            event = self._next_event(stand_down_at)
            if event is None:
                continue
            kind = event[0]
            if kind == "key":
                kv, index = event[1], event[2]
                if index < self.fencing_token:
                    continue  # posted before our acquire: history, not news
                self.key_state = kv
                if kv is None:
                    raise Lost("the key was deleted")
                if kv.session != self.session:
                    raise Lost("the key was released" if kv.session is None else f"the key is held by session {kv.session}")
            elif kind == "session_gone" and event[1] == self.session:
                raise Lost("our session was invalidated")
            elif kind == "exited" and event[1]["pid"] == self.child_pid:
                self.child_alive = False
                info = event[1]
                if info["reason"] == REASON_LEASE_EXPIRED:
                    raise Lost("lease expired: the watchdog killed the child")
                log.info("child exited with status %s; releasing %s", info["status"], self.config.key)
                return info["status"]
            elif kind == "signal" and event[1] in SHUTDOWN_SIGNALS:
                return self._stop_child_for_shutdown(event[1])
            else:
                self._handle_common(event)

    def _stop_child_for_shutdown(self, signo: int) -> int:
        self.shutdown_signal = signo
        log.info("received %s: stopping the child (grace %gs)", signal.Signals(signo).name, self.config.grace)
        self._set_state(STEPPING_DOWN)
        self.watchdog.send("stop", grace=self.config.grace)
        info = self._await_child_exit(None)
        return info["status"] if info and info["status"] is not None else 128 + signo

    def _step_down(self, reason: str) -> int | None:
        log.warning("lost leadership of %s: %s", self.config.key, reason)
        self._set_state(STEPPING_DOWN, fencing_token=None, lease_deadline=None)
        if self.child_alive:
            log.info("stepping down: stopping the child (grace %gs)", self.config.grace)
            self.watchdog.send("stop", grace=self.config.grace)
            self._await_child_exit(None)
        self.deadline = None
        self._observe_key(self.key_state)
        self._end_session()
        if self.shutdown_signal is not None:
            return 0
        if self.config.exit_on_loss:
            raise LeadershipLost(f"lost leadership of {self.config.key}: {reason}")
        return None

    def _await_child_exit(self, limit: float | None) -> dict | None:
        """Wait for the watchdog's "exited"; a second shutdown signal turns the stop into SIGKILL."""
        end = clock.now() + limit if limit is not None else None
        while self.child_alive:
            if end is not None and clock.now() >= end:
                return None
            event = self._next_event(end)
            if event is None:
                continue
            if event[0] == "exited" and event[1]["pid"] == self.child_pid:
                self.child_alive = False
                if not event[1]["confirmed"]:
                    self.child_confirmed_dead = False
                if event[1]["killed"]:
                    log.warning("the child did not stop within the grace period: killed with SIGKILL")
                return event[1]
            if event[0] == "signal" and event[1] in SHUTDOWN_SIGNALS:
                log.warning("second %s: killing the child now", signal.Signals(event[1]).name)
                self.shutdown_signal = event[1]
                self.watchdog.send("stop", grace=0)
            else:
                self._handle_common(event)
        return None

    def _await_watchdog_exit(self, limit: float) -> None:
        end = clock.now() + limit
        while self.watchdog_alive and clock.now() < end:
            event = self._next_event(end)
            if event is not None and event[0] == "watchdog_lost":
                self.watchdog_alive = False

    def _child_env(self, token: int) -> dict[str, str]:
        return {
            "CONSUL_ELECT_LEADER": "1",
            "CONSUL_ELECT_KEY": self.config.key,
            "CONSUL_ELECT_NAME": self.config.name,
            "CONSUL_ELECT_SESSION": self.session,
            "CONSUL_ELECT_FENCING_TOKEN": str(token),
            "CONSUL_ELECT_LEASE_DEADLINE": f"{self.deadline:.3f}",
            "CONSUL_ELECT_LEASE_CLOCK": clock.CLOCK_NAME,
            "CONSUL_LOCK_HELD": "true",
        }

    # -- sessions --------------------------------------------------------------------------

    def _drop_session(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()
        self.keeper = None
        self.session = None
        self.watchdog.send("session", session=None)
        self.state.update(session=None)

    def _end_session(self) -> None:
        """Release (no lock-delay for the next leader), then destroy. Best effort: TTL is the backstop."""
        session = self.session
        if session is None:
            return
        if not self.child_confirmed_dead:
            # Releasing would let a standby start beside a command we could not see die;
            # the session's TTL and lock-delay still protect the key.
            log.error("the command (pid %s) was not confirmed dead: leaving session %s to expire "
                      "instead of releasing %s", self.child_pid, session, self.config.key)
            self._drop_session()
            return
        self.ended_sessions.append(session)
        del self.ended_sessions[:-8]
        self._drop_session()
        try:
            if self.client.release(self.config.key, session, timeout=defaults.REQUEST_TIMEOUT):
                log.info("released %s", self.config.key)
            self.client.destroy_session(session, timeout=defaults.REQUEST_TIMEOUT)
        except ConsulError as e:
            log.warning("could not release %s / destroy session %s (Consul will expire it): %s",
                        self.config.key, session, e)

    # -- events ----------------------------------------------------------------------------

    def _next_event(self, until: float | None) -> tuple | None:
        self.state.heartbeat()
        # Wake at least once a second so the status server's liveness check sees a live loop.
        timeout = 1.0 if until is None else max(0.0, min(1.0, until - clock.now()))
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _wait_for(self, *kinds: str) -> tuple:
        # Key changes are kept for the caller's own loop: a loss seen here must not be lost.
        deferred = []
        try:
            while True:
                event = self._next_event(None)
                if event is None:
                    continue
                if event[0] in kinds:
                    return event
                if event[0] == "key":
                    deferred.append(event)
                elif event[0] == "signal" and event[1] in SHUTDOWN_SIGNALS:
                    self.shutdown_signal = event[1]
                else:
                    self._handle_common(event)
        finally:
            for event in deferred:
                self.events.put(event)

    def _handle_common(self, event: tuple) -> None:
        kind = event[0]
        if kind == "signal":
            signo = event[1]
            if signo in SHUTDOWN_SIGNALS:
                log.info("received %s while not leading: leaving the race", signal.Signals(signo).name)
                self.shutdown_signal = signo
            elif self.child_alive:
                self.watchdog.send("signal", signo=signo)
            else:
                log.info("received %s while not leading: no command to forward it to", signal.Signals(signo).name)
        elif kind == "sigchld":
            self._reap_orphans()
        elif kind == "key":
            if self.deadline is None:
                self._observe_key(event[1])
            else:
                self.key_state = event[1]  # judged by the leader's own loop; remembered for after
        elif kind == "renewed":
            self._consul_reached()
            self.state.renewed(event[3])
            if event[1] == self.session and self.deadline is not None:
                # Whatever the loop is waiting for (a spawn, a stop), a proof of life counts.
                self.deadline = max(self.deadline, event[2] + self.config.lease_window)
                self.watchdog.send("lease", deadline=self.deadline)
                self.state.update(lease_deadline=self.deadline)
        elif kind in ("renew_failed", "watch_failed"):
            self._consul_failed(event[-1])
        elif kind == "watchdog_lost":
            self.watchdog_alive = False
            raise WatchdogFailed("the watchdog process died; stopping the command and leaving")

    def _reap_orphans(self) -> None:
        # As PID 1 every orphan in the container is ours to reap. The watchdog is our only own
        # child and its loss is reported by its socket, so any status collected here is spare.
        supervisor.reap_all()

    def _install_signal_handlers(self) -> None:
        def post(signo, _frame):
            self.events.put(("signal", signo))

        for s in (*SHUTDOWN_SIGNALS, *FORWARDED_SIGNALS):
            signal.signal(s, post)
        signal.signal(signal.SIGCHLD, lambda *_: self.events.put(("sigchld",)))

    def _public_status_address(self) -> str:
        # A wildcard bind is no address for others to use: name this host instead.
        host, _, port = self.status_server.address.rpartition(":")
        if host in ("0.0.0.0", "[::]", ""):
            host = socket.gethostname()
        return f"{host}:{port}"

    def _set_state(self, state: str, **fields) -> None:
        self.state.update(state=state, **fields)

    def _consul_reached(self) -> None:
        self.reached_consul = True
        self.state.consul_ok()
        if self.state.snapshot().state == DISCONNECTED:
            self._set_state(CAMPAIGNING)

    def _consul_failed(self, error: Exception) -> None:
        if self.state.snapshot().consul_reachable is not False:
            log.warning("Consul unreachable: %s", error)
        self.state.consul_failed(error)
        if self.deadline is None:
            self._set_state(DISCONNECTED)
