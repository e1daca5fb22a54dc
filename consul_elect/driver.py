"""The one loop that performs what the leadership core decides.

It reads one event at a time from one queue (signals, the key watcher, the session keeper, the
watchdog's answers), waits no longer than the core's next timer, asks `leadership.step` what the
event means, and performs the actions in order; an action's result (a Consul answer) goes
straight back into the core. Every way out leaves through `run`'s finally, which stops the
command and confirms it gone, then releases the key, then destroys the session: every wait
there is bounded, and what was still running when a bound ran out is logged.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import random
import signal
import socket
import threading
import time

from . import clock, containment, leadership, role_file, supervisor, trace
from . import config as defaults
from . import watchdog_protocol as proto
from .clock import utc_now_iso
from .config import Config
from .consul_api import ConsulClient
from .elector import KeyWatcher, SessionKeeper, SideRequests, SlotsRead
from .errors import ConsulError, HoldersMismatch, PermissionDenied, UsageError
from .hooks import Hooks
from .leadership import (
    Acked, Acquire, Acquired, AcquireRefused, CheckAck, CheckHolder, CheckKey, ChildExited, Demote, Demoted, Elect,
    Elected, EndSession, Exit, Forward, GroupKilled, HolderChecked, KeyRead, KillGroup, KillWatchdog, LeaveQueue,
    Log, NotAcked, OpenSession, Publish, RequestFailed, RewatchNow, RunHook, SendLease, SessionOpened,
    SetRenewInterval, Spawn, Spawned, SpawnFailed, StartCommand, StopChild, TellLeader, Tick, WatchdogLost,
    WatchdogUnresponsive,
)
from . import lock_key
from .lock_key import Identity, parse_identity, session_name
from .slots import SlotView, conflict, parse_slots, slot_key, slot_prefix
from .signals import FORWARDED_SIGNALS, SHUTDOWN_SIGNALS
from .state import ElectionState
from .watchdog import WatchdogLink

log = logging.getLogger("consul_elect")


class _Pong:
    """The watchdog answered a ping (the driver's own bookkeeping; the core never sees it)."""

    def __init__(self, seq: int) -> None:
        self.seq = seq


class _Reap:
    """SIGCHLD: as PID 1 every orphan in the container is ours to reap."""


class Driver:
    def __init__(self, config: Config, watchdog: WatchdogLink) -> None:
        self.config = config
        self.watchdog = watchdog
        self.state = ElectionState(config.key, config.name)
        self.identity = Identity.of_this_process(config.name, config.lease_window, config.lock_delay,
                                                 holders=config.holders)
        # SimpleQueue.put is reentrant, so signal handlers may post to it safely.
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.client = ConsulClient(config.connection)
        self.keeper: SessionKeeper | None = None
        self.watcher: KeyWatcher | None = None
        self.status_server = None
        self.leader_since: str | None = None
        self.child_pid: int | None = None
        self.core: leadership.Core | None = None
        # Watchdog liveness: the ping not yet answered, and how long the loop has *waited for
        # events* since it was sent. Only waiting counts: an answer is read at once then, while
        # time spent frozen ourselves or performing a long action proves nothing against it.
        self.ping_seq = 0
        self.unanswered_waited: float | None = None
        self.next_ping_at = 0.0
        self.watchdog_reported = False
        self.hooks = Hooks(config.hook_timeout, self.state.hook_failed)
        self.owed_hook_told: int | None = None  # the term whose --on-demoted the watchdog holds
        # The queue of candidates (lock_key.queue_prefix): the session whose entry we hold, and
        # what a read of the queue found while our command stopped, for the release to name.
        self.queued: str | None = None
        self.elected_session: str | None = None
        # --holders: which slot the core sees (None: one holder, the key itself is the lock),
        # and the key we hold (the key, or our slot).
        self.slot_view = SlotView(config.holders) if config.holders > 1 else None
        self.elected_key: str | None = None
        self.successors: tuple[str, tuple[str, ...]] | None = None  # (for our session, who)
        self.successors_read: threading.Event | None = None  # set once that read is over
        self.side = SideRequests(config.connection)
        self.leaving = False
        self.dead_entries: tuple[str, ...] = ()

    # -- the one way in and out --------------------------------------------------------------

    def run(self) -> int:
        """Campaign and lead until the core says Exit; return the status or raise its error."""
        outcome: Exit | None = None
        try:
            self._start_services()
            core, actions = leadership.start(self.config, clock.now())
            self.core = core
            outcome = self._perform_all(actions)
            while outcome is None:
                event = self._next_event(leadership.wake_at(self.core))
                if event is None:
                    continue
                self.core, actions = leadership.step(self.core, event, clock.now(), random.random())
                self._tell_owed_hook()
                outcome = self._perform_all(actions)
        finally:
            self._close()
        if outcome.error is not None:
            raise outcome.error
        return outcome.status

    def _start_services(self) -> None:
        # First: if anything below fails, the way out must hear the watchdog's answers at once.
        self.watchdog.listen(self._on_watchdog_message, lambda: self.events.put(WatchdogLost()))
        role_path = self.config.role_file_path
        if role_path is not None and not os.access(os.path.dirname(role_path), os.W_OK | os.X_OK):
            raise UsageError(f"cannot write the role file {role_path}: its directory is missing or not writable "
                             "(give --role-file, or set TMPDIR)")
        if self.config.status_port is not None:
            from .status_server import StatusServer

            # Started after the fork, so the watchdog does not hold the port open.
            self.status_server = StatusServer(self.state, self.config.status_bind, self.config.status_port).start()
            self.identity = Identity.of_this_process(self.config.name, self.config.lease_window,
                                                     self.config.lock_delay, self._public_status_address(),
                                                     self.config.holders)
        self._install_signal_handlers()
        self.watcher = KeyWatcher(self.config, self.events.put, self._campaigning_session)
        self.watcher.start()
        self.side.start()

    def _campaigning_session(self) -> str | None:
        """For the key watcher's thread: our session while we campaign (the queue's turns and
        places are a waiter's business), None otherwise (a leader watches its key itself)."""
        core = self.core
        if core is None or not isinstance(core.phase, leadership.Campaigning):
            return None
        return core.memory.session

    def _close(self) -> None:
        """Stop the command and confirm it gone, then release the key, then destroy the session.

        On the normal paths the core has done all of this already and only the watchdog and the
        threads are left to stop; this is also the net for anything unexpected.
        """
        self._leaving()
        session = self.core.memory.session if self.core is not None else None
        confirmed = True
        if self.core is None or self._child_may_run():
            confirmed = self._stop_command_for_good()
        if session is not None:
            self._end_session(session, release=confirmed)
        # Hooks end by their own timeout; waited for while the role file (the watchdog's) is
        # still there for them to read, and so that none outlives us.
        self.hooks.wait()
        self._quit_watchdog()
        if self.watcher is not None:
            self.watcher.stop()
        if self.keeper is not None:
            self.keeper.stop()
        self.side.stop()
        if self.status_server is not None:
            self.status_server.stop()
        for s in (*SHUTDOWN_SIGNALS, *FORWARDED_SIGNALS, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        _remove_dir(self.watchdog.lease_dir)
        if self.config.role_file_path is not None:
            role_file.remove(self.config.role_file_path)  # the watchdog's job, unless it was killed

    def _leaving(self) -> None:
        """On the way out (the session ends for good): the key watch has nothing left to tell."""
        self.leaving = True
        if self.watcher is not None:
            # Stopped before our release, it does not wake into a new query: Consul's work on
            # the successor's path.
            self.watcher.stop()

    def _child_may_run(self) -> bool:
        return self.core.memory.command_pid is not None or isinstance(
            self.core.phase, (leadership.Starting, leadership.Spawning, leadership.Leading, leadership.StandingDown,
                              leadership.Stopping))

    def _stop_command_for_good(self) -> bool:
        """Ask the watchdog to kill everything and confirm; if it cannot answer, do it ourselves."""
        self.watchdog.send(proto.Quit())
        end = clock.now() + defaults.KILL_WAIT + 1.0
        while clock.now() < end:
            event = self._next_event(end)
            if isinstance(event, ChildExited):
                if event.confirmed:
                    return True
                break
            if isinstance(event, WatchdogLost):
                break
        confirmed, survivors = self._containment().kill_and_wait(defaults.KILL_WAIT, reap=supervisor.reap_all)
        if not confirmed:
            log.error("the command's processes %s could not be stopped: leaving the session to expire "
                      "instead of releasing %s", list(survivors), self.config.key)
        return confirmed

    def _quit_watchdog(self) -> None:
        """The watchdog exits on Quit (or when our end of its socket closes); wait for it, bounded."""
        self.watchdog.send(proto.Quit())
        self.watchdog.close()
        end = clock.now() + defaults.KILL_WAIT + 1.0
        while True:
            try:
                pid, _ = os.waitpid(self.watchdog.pid, os.WNOHANG)
            except ChildProcessError:
                return  # already reaped (as PID 1, by the SIGCHLD sweep)
            if pid != 0:
                return
            if clock.now() >= end:
                log.warning("the watchdog (pid %d) did not exit in time: killed", self.watchdog.pid)
                _kill(self.watchdog.pid)
                end = clock.now() + defaults.KILL_WAIT
            time.sleep(0.01)

    # -- events -------------------------------------------------------------------------------

    def _next_event(self, until: float | None):
        """The next event for the core, or a Tick when *until* (or the loop's wake-up) passes."""
        while True:
            now = clock.now()
            self.state.heartbeat()
            self._check_watchdog(now)
            waits = [defaults.LOOP_WAKE, self.next_ping_at - now]
            if until is not None:
                waits.append(until - now)
            timeout = max(0.0, min(waits))
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                self._waited(min(clock.now() - now, timeout))
                if until is not None and clock.now() >= until:
                    return Tick()
                continue
            self._waited(min(clock.now() - now, timeout))
            if isinstance(event, _Pong):
                if event.seq == self.ping_seq:
                    self.unanswered_waited = None
                continue
            if isinstance(event, _Reap):
                supervisor.reap_all()
                continue
            if isinstance(event, SlotsRead):
                session = self.core.memory.session if self.core is not None else None
                slot, state, before = self.slot_view.see(event.slots, session)
                event = leadership.KeyChanged(state, event.index, slot, before)
            if isinstance(event, leadership.Renewed):
                self.state.renewed(event.latency)
            if isinstance(event, Spawned):
                self.child_pid = event.pid
            elif isinstance(event, ChildExited) and event.confirmed and event.pid == self.child_pid:
                trace.mark("elector: exited in")
                self.child_pid = None  # its group id may be reused from now on
            elif isinstance(event, leadership.KeyChanged):
                trace.mark("elector: key news in")
            return event

    def _waited(self, seconds: float) -> None:
        if self.unanswered_waited is not None:
            self.unanswered_waited += seconds

    def _check_watchdog(self, now: float) -> None:
        """Ping the watchdog; post WatchdogUnresponsive when a ping stays unanswered too long."""
        if self.unanswered_waited is not None and self.unanswered_waited > self.config.watchdog_answer_timeout:
            if not self.watchdog_reported:
                self.watchdog_reported = True
                self.events.put(WatchdogUnresponsive())
            return
        if now >= self.next_ping_at:
            self.next_ping_at = now + defaults.WATCHDOG_PING_INTERVAL
            if self.unanswered_waited is None:
                self.ping_seq += 1
                self.unanswered_waited = 0.0
                self.watchdog.send(proto.Ping(self.ping_seq))

    def _on_watchdog_message(self, message) -> None:
        """Runs on the link's reader thread: translate the watchdog's answers into core events."""
        if isinstance(message, proto.Pong):
            self.events.put(_Pong(message.seq))
        elif isinstance(message, proto.Spawned):
            self.events.put(Spawned(message.pid))
        elif isinstance(message, proto.SpawnFailed):
            self.events.put(SpawnFailed(message.lease_expired, message.code, message.error))
        elif isinstance(message, proto.Exited):
            self.events.put(ChildExited(message.pid, message.status, message.reason, message.killed,
                                        message.confirmed, message.survivors, message.swept))
        elif isinstance(message, proto.Elected):
            self.events.put(Elected(message.token))
        elif isinstance(message, proto.Demoted):
            self.events.put(Demoted(message.token, message.by_watchdog))
        elif isinstance(message, proto.Acked):
            self.events.put(Acked(message.token))
        elif isinstance(message, proto.CommandStopped):
            self.events.put(leadership.CommandStopped(message.pid, message.signo))

    def _install_signal_handlers(self) -> None:
        def post(signo, _frame):
            self.events.put(leadership.Signal(signo))

        for s in (*SHUTDOWN_SIGNALS, *FORWARDED_SIGNALS):
            signal.signal(s, post)
        signal.signal(signal.SIGCHLD, lambda *_: self.events.put(_Reap()))

    # -- actions ------------------------------------------------------------------------------

    def _perform_all(self, actions: list) -> Exit | None:
        """Perform *actions* in order; results go back into the core, their actions queue behind."""
        todo = collections.deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, Exit):
                return action
            if isinstance(action, EndSession) and any(isinstance(a, Exit) for a in todo):
                self._leaving()
            result = self._perform(action)
            if result is not None:
                self.core, more = leadership.step(self.core, result, clock.now(), random.random())
                self._tell_owed_hook()
                todo.extend(more)
        return None

    def _perform(self, action):
        if isinstance(action, Spawn):
            # The hot path of a failover: the order goes out before anything is logged.
            self.watchdog.send(proto.Spawn(self._child_env(action.token, action.deadline), action.token))
            trace.mark("elector: spawn sent")
        elif isinstance(action, Elect):
            self.watchdog.send(proto.Elect(action.token))
        elif isinstance(action, Demote):
            self._read_successors(self.core.memory.session)
            self.watchdog.send(proto.Demote(action.token))
        elif isinstance(action, StartCommand):
            self.watchdog.send(proto.Start(self._role_env()))
        elif isinstance(action, TellLeader):
            self.watchdog.send(proto.SetLeader(action.name))
        elif isinstance(action, RunHook):
            if action.hook == defaults.HOOK_ON_DEMOTED and self.owed_hook_told is not None:
                # Paid now: told at the last moment, so that our death before this line
                # (a slow release, say) still leaves the watchdog to run it.
                self.watchdog.send(proto.SetDemotedHook(None))
                self.owed_hook_told = None
            self.hooks.start(action.hook, self.config.hook_command(action.hook), self._hook_env(action))
        elif isinstance(action, SendLease):
            value = self.identity.to_value(action.session, self.leader_since or utc_now_iso(), released=True)
            self.watchdog.send(proto.SetLease(action.deadline, value.decode(), self.elected_key or ""))
        elif isinstance(action, StopChild):
            self._read_successors(self.core.memory.session)
            self.watchdog.send(proto.Stop(action.grace))
        elif isinstance(action, Forward):
            self.watchdog.send(proto.ForwardSignal(action.signo))
        elif isinstance(action, Log):
            log.log(action.level, "%s", action.message)
        elif isinstance(action, Publish):
            self._publish(action.fields)
        elif isinstance(action, SetRenewInterval):
            if self.keeper is not None:
                self.keeper.reschedule(action.seconds, action.renew_now)
        elif isinstance(action, CheckAck):
            path = self.config.role_file_path
            acked = path is not None and role_file.acknowledged(path, action.token)
            return Acked(action.token) if acked else NotAcked(action.token)
        elif isinstance(action, KillGroup):
            confirmed, survivors = self._containment().kill_and_wait(action.wait, reap=supervisor.reap_all)
            return GroupKilled(confirmed, survivors)
        elif isinstance(action, RewatchNow):
            if self.watcher is not None:
                self.watcher.retry_now()
        elif isinstance(action, KillWatchdog):
            _kill(self.watchdog.pid)
        elif isinstance(action, EndSession):
            self._end_session(action.session, action.release)
        elif isinstance(action, LeaveQueue):
            self._leave_queue(action.session, wait=False)
        else:
            return self._consul(action)
        return None

    def _consul(self, action):
        """Actions that are one Consul request; the answer (or the failure) is the result."""
        c = self.config
        try:
            if isinstance(action, CheckKey):
                return self._check_key()
            if isinstance(action, OpenSession):
                sent_at = clock.now()
                session = self.client.create_session(session_name(c.key, c.name), c.ttl, c.lock_delay)
                self.watchdog.send(proto.SetSession(session))
                self.keeper = SessionKeeper(c, session, self.events.put, c.follower_renew_interval)
                self.keeper.start()
                self._join_queue(session)
                return SessionOpened(session, sent_at)
            if isinstance(action, Acquire):
                since = utc_now_iso()
                value = self.identity.to_value(action.session, since=since)
                key = c.key if self.slot_view is None else slot_key(c.key, self.core.memory.slot)
                if action.lease_offer is not None:
                    # The watchdog readies the lease (its file for the command) while Consul
                    # answers; a lease without a command binds nothing, so a refusal costs nothing.
                    released = self.identity.to_value(action.session, since, released=True)
                    self.watchdog.send(proto.SetLease(action.lease_offer, released.decode(), key))
                sent_at = clock.now()
                # An answer later than the lease window would be useless: expired on arrival.
                trace.mark("elector: acquire sent")
                token = self.client.acquire(key, action.session, value,
                                            timeout=min(defaults.REQUEST_TIMEOUT, c.lease_window))
                if token is None:
                    return AcquireRefused()
                trace.mark("elector: acquired")
                self.leader_since = since
                self.elected_session, self.elected_key = action.session, key
                return Acquired(token, sent_at)
            if isinstance(action, CheckHolder):
                return HolderChecked(action.session, self.client.session_info(action.session) is not None)
        except ConsulError as e:
            return RequestFailed(e)
        raise TypeError(f"unknown action {action!r}")

    def _end_session(self, session: str, release: bool) -> None:
        """Stop renewing; release (no lock-delay for the next leader) and destroy, or leave the
        session to expire when the command could not be confirmed gone."""
        # The release first: on a handover it is what the successor waits for, and nothing
        # below needs to come before it (a renewal meanwhile, or the watchdog releasing with a
        # session that no longer holds the key, changes nothing).
        if release and self._release(session) and self.leaving:
            # On the way out nothing below is urgent, while a successor (here, or on this
            # machine) is on its handover's path: its acquire, its command's exec. Tearing down
            # meanwhile (the session's destroy, a Raft write beside its acquire; our threads,
            # our watchdog, the interpreter) made that path ~1.5 ms slower here.
            time.sleep(defaults.HANDOVER_QUIET)
        if self.keeper is not None and self.keeper.session == session:
            self.keeper.stop()
            self.keeper = None
        self.watchdog.send(proto.SetSession(None))
        self.state.update(session=None)
        self._leave_queue(session)
        for entry in self.dead_entries:
            self._delete_quietly(entry)
        self.dead_entries = ()
        # Destroyed even when the release failed (a token without key write): otherwise the
        # session would hold on until its TTL.
        try:
            self.client.destroy_session(session, timeout=defaults.REQUEST_TIMEOUT)
        except ConsulError as e:
            log.warning("could not destroy session %s (Consul will expire it): %s", session, e)

    def _release(self, session: str) -> bool:
        """Release the key if we hold it; True when Consul says it did."""
        # The command is gone by now: waiting for the queue read costs no lease, only (at
        # worst) the names in the release.
        if self.successors_read is None and self.elected_session == session:
            self._read_successors(session)
        if self.successors_read is not None:
            self.successors_read.wait(defaults.SUCCESSORS_READ_WAIT)
            self.successors_read = None
        successors = self.successors[1] if self.successors is not None and self.successors[0] == session else ()
        self.successors = None
        key = self.elected_key if self.elected_session == session else self.config.key
        self.elected_session = self.elected_key = None
        if self.slot_view is not None and key == self.config.key:
            return False  # with --holders the key itself is nobody's lock: no slot of ours to release
        try:
            # Marked `released`: candidates know the command is confirmed gone and need not
            # wait; `next` says which of them try first.
            value = self.identity.to_value(session, self.leader_since or utc_now_iso(), released=True,
                                           successors=successors)
            trace.mark("elector: release sent")
            released = self.client.release(key, session, value, timeout=defaults.REQUEST_TIMEOUT)
            trace.mark("elector: released")
            if released:
                log.info("released %s", key)
            return released
        except ConsulError as e:
            log.warning("could not release %s (Consul will when the session ends): %s", key, e)
            return False

    def _check_key(self):
        """CheckKey: the key (or the slots) before we campaign, and candidates that disagree on
        --holders (together they would allow more holders than either says)."""
        c = self.config
        try:
            _, entries = self.client.read_prefix(slot_prefix(c.key))
        except PermissionDenied:
            if self.slot_view is not None:
                raise
            entries = []  # a token for the key alone (key-list ACLs): no slots to disagree with
        clash = conflict(c.key, entries, c.holders)
        _, kv = self.client.read_key(c.key, consistent=False)
        if self.slot_view is None:
            if clash is None:
                return KeyRead(kv)
        else:
            holder = parse_identity(kv.value) if kv is not None else None
            if clash is None and kv is not None and kv.session is not None and holder is not None:
                clash = f"{c.key} itself is held by {holder.get('name')}, a candidate with --holders 1"
            if clash is None:
                slot, state, _ = self.slot_view.see(parse_slots(c.key, entries, c.holders), None)
                return KeyRead(state, slot)
        return RequestFailed(HoldersMismatch(f"refusing to campaign: {clash}; every candidate of {c.key} must give "
                                             "the same --holders"))

    # -- the queue of candidates ----------------------------------------------------------------

    def _join_queue(self, session: str) -> None:
        """Best effort: a candidate without an entry (a token that may write only the key itself)
        campaigns as before, after the successors a release names."""
        value = self.identity.to_value(session, utc_now_iso())
        try:
            if self.client.join_queue(lock_key.queue_entry(self.config.key, session), session, value):
                self.queued = session
        except ConsulError as e:
            log.info("not in the queue of candidates (%s): a handover will name others first", e)

    def _leave_queue(self, session: str, wait: bool = True) -> None:
        """Delete our entry: at once when the session ends (no lease runs then); in the
        background when elected, since the loop must keep the lease's timers whatever Consul does."""
        if self.queued == session:
            self.queued = None
            entry = lock_key.queue_entry(self.config.key, session)
            if wait:
                self._delete_quietly(entry)
            else:
                def leave(client: ConsulClient) -> None:
                    time.sleep(defaults.QUEUE_LEAVE_DELAY)
                    _retried(lambda: client.delete_key(entry))

                self.side.submit("leave-queue", leave)

    def _read_successors(self, session: str | None) -> None:
        """While our command stops (in the background: the loop keeps the lease's timers, a
        backup kill among them): who the release will name, and whose entries are dead."""
        if session is None or self.elected_session != session:
            return

        done = threading.Event()

        def read(client: ConsulClient) -> None:
            try:
                _, entries = client.read_queue(lock_key.queue_prefix(self.config.key))
                self.dead_entries = tuple(e.key for e in entries if e.session is None)
                self.successors = (session, lock_key.successors(entries, session, defaults.HANDOVER_SUCCESSORS))
            finally:
                done.set()

        self.successors = None
        self.successors_read = done
        self.side.submit("read-queue", read)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.client.delete_key(key)
        except ConsulError as e:
            log.debug("could not delete %s: %s", key, e)

    def _containment(self) -> containment.Containment:
        """What the elector itself can reach of the command: its group, the watchdog's cgroup,
        and the orphans adopted by the watchdog or, once it is gone, by us."""
        cgroup = containment.find_cgroup(f"consul-elect-{self.watchdog.pid}")
        return containment.Containment(self.child_pid, cgroup, (self.watchdog.pid, os.getpid()),
                                       spare=frozenset({self.watchdog.pid}))

    def _publish(self, fields: dict) -> None:
        fields = dict(fields)
        if "consul_failed" in fields:
            self.state.consul_failed(fields.pop("consul_failed"))
        if fields.pop("consul_ok", False):
            self.state.consul_ok()
        if fields.pop("child_started", False):
            self.state.child_started()
        if fields.get("leader") == "self":
            fields["leader"] = {**self.identity.as_dict(), "session": self.core.memory.session,
                                "since": self.leader_since}
        if fields:
            self.state.update(**fields)

    def _child_env(self, token: int, deadline: float) -> dict[str, str]:
        env = {
            "CONSUL_ELECT_LEADER": "1",
            "CONSUL_ELECT_KEY": self.config.key,
            "CONSUL_ELECT_NAME": self.config.name,
            "CONSUL_ELECT_SESSION": self.core.memory.session,
            "CONSUL_ELECT_FENCING_TOKEN": str(token),
            "CONSUL_ELECT_LEASE_DEADLINE": f"{deadline:.3f}",
            "CONSUL_ELECT_LEASE_CLOCK": clock.CLOCK_NAME,
            "CONSUL_LOCK_HELD": "true",
        }
        if self.config.role_file_path is not None:
            env["CONSUL_ELECT_ROLE_FILE"] = self.config.role_file_path
        if self.slot_view is not None:
            # Which of the N holders this is: lets a pool of workers split the work.
            env["CONSUL_ELECT_SLOT"] = str(self.core.memory.slot)
            env["CONSUL_ELECT_HOLDERS"] = str(self.config.holders)
        return env

    def _role_env(self) -> dict[str, str]:
        """Signal mode's command, and every hook: what stays true across terms (the current
        term's fencing token and lease deadline are in the role file)."""
        env = {"CONSUL_ELECT_MODE": self.config.mode, "CONSUL_ELECT_KEY": self.config.key,
               "CONSUL_ELECT_NAME": self.config.name}
        if self.config.role_file_path is not None:
            env["CONSUL_ELECT_ROLE_FILE"] = self.config.role_file_path
        return env

    def _hook_env(self, action: RunHook) -> dict[str, str]:
        return {**os.environ, **self._hook_vars(action.hook, action.token)}

    def _hook_vars(self, hook: str, token: int) -> dict[str, str]:
        role = role_file.LEADER if hook == defaults.HOOK_ON_ELECTED else role_file.FOLLOWER
        return {**self._role_env(), "CONSUL_ELECT_HOOK": hook, "CONSUL_ELECT_ROLE": role,
                "CONSUL_ELECT_FENCING_TOKEN": str(token)}

    def _tell_owed_hook(self) -> None:
        """Tell the watchdog when a term begins that owes an --on-demoted, so that it runs the
        hook if we die before we do (the debt is cleared where we start the hook: RunHook)."""
        token = self.core.memory.hook_term
        if token is None or token == self.owed_hook_told or not self.config.on_demoted:
            return
        self.watchdog.send(proto.SetDemotedHook(self._hook_vars(defaults.HOOK_ON_DEMOTED, token)))
        self.owed_hook_told = token

    def _public_status_address(self) -> str:
        # A wildcard bind is no address for others to use: name this host instead.
        host, _, port = self.status_server.address.rpartition(":")
        if host in ("0.0.0.0", "[::]", ""):
            host = socket.gethostname()
        return f"{host}:{port}"


def _retried(request, attempts: int = 3, pause: float = 0.5) -> None:
    """A background request that matters (a leader left in the queue would keep the waiters
    far back blind to the key): a few tries, a pause between."""
    for attempt in range(attempts):
        try:
            request()
            return
        except ConsulError:
            if attempt == attempts - 1:
                raise
            time.sleep(pause)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _remove_dir(path: str) -> None:
    for name in ("lease-deadline", "lease-deadline.tmp"):
        try:
            os.unlink(os.path.join(path, name))
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass
