"""The threads that talk to Consul while the driver decides: they post events, never decide.

- SessionKeeper renews one session and reports each proof of life with the time read just
  before the request was sent (the lease counts from send time, never from receive time).
- SideRequests performs the requests the driver's loop must not wait for (the queue's).
- KeyWatcher follows the lock key with consistent blocking queries (with --holders, all the
  slots with one query on their prefix: the driver picks the slot the core sees).

Neither may die silently: an unexpected error is posted as ThreadFailed, which stops the
command and ends the process visibly (exit 70), and /health turns 503 meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from . import clock, trace
from . import config as defaults
from .blocking import BlockingQueryLoop
from .config import Config
from .consul_api import ConsulClient
from .errors import ConsulError, PermissionDenied, SessionGone
from .leadership import KeyChanged, RenewFailed, Renewed, SessionEnded, ThreadFailed, WatchFailed
from .lock_key import parse_identity, place, queue_prefix, turn
from .slots import parse_slots, slot_prefix

Post = Callable[[object], None]
log = logging.getLogger("consul_elect")


class SessionKeeper(threading.Thread):
    """Renews one session every `interval` seconds (set by the driver, never read from it)."""

    def __init__(self, config: Config, session: str, post: Post, interval: float) -> None:
        super().__init__(name="session-keeper", daemon=True)
        self.client = ConsulClient(config.connection)
        self.session = session
        self.post = post
        self.interval = interval
        self.stopped = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._renew_now = False

    def stop(self) -> None:
        self.stopped.set()
        self._wake.set()

    def reschedule(self, interval: float, renew_now: bool = False) -> None:
        """Start a new wait with *interval*, or renew at once: a new leader must not wait out
        the slower follower interval, and one whose acquire was slow needs a fresh proof."""
        with self._lock:
            self.interval = interval
            self._renew_now = renew_now
        self._wake.set()

    def run(self) -> None:
        try:
            self._renew_until_stopped()
        except Exception as e:  # a bug must not leave the leader without renewals, unseen
            self.post(ThreadFailed(self.name, f"{type(e).__name__}: {e}"))

    def _renew_until_stopped(self) -> None:
        # Renewals are spaced from send to send, and each one's timeout ends when the next is
        # due, so a slow renew is overtaken rather than delaying all the ones after it.
        next_at = clock.now() + self.interval
        while True:
            if self._wake.wait(max(0.0, next_at - clock.now())):
                self._wake.clear()
                if self.stopped.is_set():
                    return
                with self._lock:
                    renew_now, self._renew_now = self._renew_now, False
                    interval = self.interval
                if not renew_now:
                    next_at = clock.now() + interval
                    continue
            with self._lock:
                interval = self.interval
            sent_at = clock.now()
            next_at = sent_at + interval
            try:
                self.client.renew_session(self.session, timeout=interval)
            except SessionGone:
                self.post(SessionEnded(self.session))
                return
            except ConsulError as e:
                if not self.stopped.is_set():
                    self.post(RenewFailed(self.session, e))
                continue
            if not self.stopped.is_set():
                self.post(Renewed(self.session, sent_at, clock.now() - sent_at))


class SideRequests(threading.Thread):
    """Requests the driver's loop must not wait for (a hung one would hold up the lease's
    timers): the queue's reads and deletes, in the order given, on one kept-alive connection,
    so that the read begun when the command is told to stop is answered before it is gone.
    A failure costs only what the request was for."""

    def __init__(self, connection) -> None:
        super().__init__(name="side-requests", daemon=True)
        self.client = ConsulClient(connection)
        self._todo: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, name: str, work: Callable[[ConsulClient], None]) -> None:
        self._todo.put((name, work))

    def stop(self) -> None:
        self._todo.put(None)

    def run(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                self.client.close()
                return
            name, work = item
            try:
                work(self.client)
            except ConsulError as e:
                log.debug("%s: %s", name, e)
            except Exception as e:  # noqa: BLE001 - a bug here costs one queue request, said loudly
                log.error("internal error in the %s request: %s: %s", name, type(e).__name__, e)


class SlotsRead:
    """--holders: every slot as the watcher read it ({slot: state or None}); the driver turns
    it into the KeyChanged the core sees."""

    def __init__(self, slots: dict, index: int) -> None:
        self.slots, self.index = slots, index


class KeyWatcher(BlockingQueryLoop):
    """Follows the key; posts KeyChanged on each change (and on the first answer after a
    failure, so the leader knows its watch is back) and WatchFailed on errors.

    A clean release that names other successors before us is held back for our turn: neither
    the driver nor (with the next query) this thread wakes again until then, so a handover
    among many waiters wakes each of them once, briefly, and the named successor is left the
    CPU it needs. *session* says whose turn to look for (the driver's current session).
    """

    def __init__(self, config: Config, post: Post, session: Callable[[], str | None] = lambda: None) -> None:
        self._last: object = object()
        self._failed = False
        self._post = post
        self._session = session
        self._held: tuple[float, float] | None = None  # (since, for how long) a release was held back
        # Far in the queue (see _far): which session our place was read for, the place, and the
        # queue's index to block on; off for good when the token may not read the queue.
        self._placed_for: str | None = None
        self._place: int | None = None
        self._queue_index = 0
        self._queue_readable = True
        self._prefix = queue_prefix(config.key)
        self._slots = config.holders > 1
        if self._slots:
            def fetch(client, index):
                index, entries = client.read_prefix(slot_prefix(config.key), index=index, wait=defaults.WATCH_WAIT)
                return index, parse_slots(config.key, entries, config.holders)
        else:
            def fetch(client, index):
                if self._held is not None:
                    # Our turn has come: what is the key now? (A blocking query would not
                    # answer if the key stayed as it was: free, the successors gone.)
                    since, hold = self._held
                    self.stopped.wait(max(0.0, since + hold - clock.now()))
                    index = 0
                elif self._far(client):
                    # Far back in the queue: every change of leader changes the queue too (the
                    # new leader leaves it), after the new command started; only then look at
                    # the key, once. A handover wakes only the few that come next. After a
                    # failure, no blocking on an index from before it.
                    entries = self._read_queue(client, 0 if self._failed else self._queue_index,
                                               defaults.WATCH_WAIT)
                    if entries is not None:
                        self._place = place(entries, self._placed_for)
                    return client.read_key(config.key)
                return client.read_key(config.key, index=index, wait=defaults.WATCH_WAIT)
        super().__init__("key-watcher", config.connection, fetch, self._answer, self._error)

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:
            self._post(ThreadFailed(self.name, f"{type(e).__name__}: {e}"))

    def _far(self, client) -> bool:
        """Are we past the first HANDOVER_SUCCESSORS waiters, so that no clean release names us?
        Not campaigning (the session callable then says None: a leader watches its key), without
        an entry, or without a queue we may read: no, we watch the key itself."""
        session = self._session()
        if session is None or not self._queue_readable:
            return False
        if session != self._placed_for:
            entries = self._read_queue(client)
            if entries is None:
                return False
            self._placed_for, self._place = session, place(entries, session)
        return self._place is not None and self._place >= defaults.HANDOVER_SUCCESSORS

    def _read_queue(self, client, index: int = 0, wait: float | None = None):
        """The queue's entries (keeping its index to block on), or None, for good, once the
        token may not read it: we then watch the key itself."""
        try:
            self._queue_index, entries = client.read_queue(self._prefix, index=index, wait=wait)
        except PermissionDenied:
            self._queue_readable = False
            return None
        return entries

    def _error(self, error: ConsulError) -> None:
        self._failed = True
        self._post(WatchFailed(error))

    def _answer(self, index: int, state) -> None:
        trace.mark("watcher: key answer")
        if self._slots:
            if state != self._last or self._failed:
                self._last, self._failed = state, False
                self._post(SlotsRead(state, index))
            return
        waited = 0.0
        if self._held is not None:
            since, hold = self._held
            self._held, waited = None, clock.now() - since
        elif state is not None and state.session is None and not self._failed:
            hold = turn(parse_identity(state.value), self._session()) * defaults.HANDOVER_TURN
            if hold > 0:
                self._held = (clock.now(), hold)
                return
        if state != self._last or self._failed or waited:
            self._last, self._failed = state, False
            self._post(KeyChanged(state, index, waited=waited))
            if state is None or state.session is None:
                self.stopped.wait(defaults.WATCH_QUIET)  # a handover's hot path follows
            else:
                time.sleep(0)  # let the driver have the GIL now
