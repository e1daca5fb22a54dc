"""A thread that follows one Consul blocking query for as long as it runs.

Consul's rules for blocking queries, kept here once: send back the index of the last answer; an
answer does not prove a change; an index that goes backwards (snapshot restore, rebuilt servers)
means start over from 0, after a pause, since a read with index 0 does not block; and never spin
on errors.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from . import config as defaults
from .config import Connection
from .consul_api import ConsulClient
from .errors import ConsulError

Query = Callable[[ConsulClient, int], tuple[int, object]]


def _pause(backoff: float, error: ConsulError) -> float:
    """The wait before the next attempt: *backoff* spread by +-RETRY_JITTER, and no shorter than
    a Retry-After Consul sent (capped at WATCH_WAIT: a blocking query would have waited that long)."""
    pause = backoff * random.uniform(1 - defaults.RETRY_JITTER, 1 + defaults.RETRY_JITTER)
    retry_after = getattr(error, "retry_after", None)
    if retry_after:
        pause = max(pause, min(retry_after, defaults.WATCH_WAIT))
    return pause


class BlockingQueryLoop(threading.Thread):
    """Repeats *query(client, index)*; calls on_answer(index, result) or on_error(error) each time."""

    def __init__(self, name: str, connection: Connection, query: Query,
                 on_answer: Callable[[int, object], None], on_error: Callable[[ConsulError], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.client = ConsulClient(connection)
        self.query = query
        self.on_answer = on_answer
        self.on_error = on_error
        self.stopped = threading.Event()
        self._nudged = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        self._nudged.set()

    def retry_now(self) -> None:
        """Cut short a back-off after a failure: the caller knows Consul answers again."""
        self._nudged.set()

    def run(self) -> None:
        index = 0
        backoff = defaults.RECONNECT_BACKOFF_MIN
        while not self.stopped.is_set():
            try:
                new_index, result = self.query(self.client, index)
            except ConsulError as e:
                if not self.stopped.is_set():
                    self.on_error(e)
                self._nudged.wait(_pause(backoff, e))
                self._nudged.clear()
                backoff = min(backoff * 2, defaults.RECONNECT_BACKOFF_MAX)
                index = 0
                continue
            backoff = defaults.RECONNECT_BACKOFF_MIN
            if new_index < index:
                index = 0
                self.stopped.wait(defaults.RECONNECT_BACKOFF_MIN)
            else:
                index = new_index
            if not self.stopped.is_set():
                self.on_answer(new_index, result)
