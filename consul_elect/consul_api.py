"""The boundary to Consul: the few endpoints consul-elect uses, each answer turned into a result or
a typed error where it enters.

The requests are built here directly over transport.Transport (standard library HTTP with an
overall deadline per request) rather than through py-consul: we use eight endpoints, two of
which py-consul cannot send as we need them (a session with a TTL below 10 s or an explicit
zero lock-delay, a one-operation txn lock), and each answer must be checked for its exact
shape (an empty or non-JSON 200 is a Consul problem to retry, not a crash).

One ConsulClient per thread: its transport keeps one connection alive.
"""

from __future__ import annotations

import base64
import binascii
import json

from . import config as defaults
from .config import Connection
from .durations import format_duration
from .errors import ConsulUnavailable, PermissionDenied, SessionGone
from .lock_key import KeyState, QueueEntry
from .transport import Transport, one_line

# Errors parsing an answer whose JSON has the wrong shape.
_SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, binascii.Error)


class ConsulClient:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._t = Transport(conn)

    def close(self) -> None:
        """Close the kept-alive connection (the next request opens a new one)."""
        self._t.close()

    # -- sessions --------------------------------------------------------------------------

    def create_session(self, name: str, ttl: float, lock_delay: float, timeout: float = defaults.REQUEST_TIMEOUT) -> str:
        body = {
            "Name": name,
            "TTL": format_duration(ttl),
            # Sent even when zero: Consul reads a missing LockDelay as its 15 s default (consul#4508).
            "LockDelay": format_duration(lock_delay),
            "Behavior": "release",
            # No serfHealth check: a gossip flap must not invalidate the session at a moment
            # only the (best-effort, in-memory) lock-delay would cover. TTL alone bounds it.
            "NodeChecks": [],
        }
        _, _, data = self._request("PUT", "/v1/session/create", body=json.dumps(body).encode(), timeout=timeout)
        answer = self._json(data, "session create")
        try:
            session = answer["ID"]
            if not isinstance(session, str) or not session:
                raise ValueError("no session ID")
        except _SHAPE_ERRORS as e:
            raise self._bad_answer("session create", e) from None
        return session

    def renew_session(self, session: str, timeout: float) -> None:
        status, _, data = self._request("PUT", f"/v1/session/renew/{session}", timeout=timeout, ok=(200, 404))
        if status == 404 or not self._json(data, "session renew"):
            raise self._t.error(SessionGone, f"session {session} no longer exists")

    def destroy_session(self, session: str, timeout: float = defaults.REQUEST_TIMEOUT) -> None:
        self._request("PUT", f"/v1/session/destroy/{session}", timeout=timeout)

    def list_sessions(self, index: int | None = None, wait: float | None = None) -> tuple[int, list[dict]]:
        timeout = _blocking_timeout(wait) if index else defaults.REQUEST_TIMEOUT
        params = _blocking_params(index, wait)
        _, headers, data = self._request("GET", "/v1/session/list", params, timeout=timeout)
        sessions = self._json(data, "session list") or []
        if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
            raise self._bad_answer("session list", TypeError("not a list of sessions"))
        return self._index(headers, "session list"), sessions

    def session_info(self, session: str) -> dict | None:
        status, _, data = self._request("GET", f"/v1/session/info/{session}", ok=(200, 404))
        info = self._json(data, "session info") if status == 200 else None
        if info is None or info == []:
            return None
        if not isinstance(info, list) or not isinstance(info[0], dict):
            raise self._bad_answer("session info", TypeError("not a list of sessions"))
        return info[0]

    # -- the lock key ----------------------------------------------------------------------

    def acquire(self, key: str, session: str, value: bytes, timeout: float = defaults.REQUEST_TIMEOUT) -> int | None:
        """Lock *key* for *session*; return the fencing token, or None when the lock is refused.

        A one-operation transaction does what ?acquire= does (lock-delay included) and also
        answers with the key's ModifyIndex after the write: the fencing token, without the
        second round trip a read would cost during a failover.
        """
        op = [{"KV": {"Verb": "lock", "Key": key, "Value": base64.b64encode(value).decode(), "Session": session}}]
        status, _, data = self._request("PUT", "/v1/txn", body=json.dumps(op).encode(), timeout=timeout,
                                        ok=(200, 409))
        answer = self._json(data, "txn lock")
        try:
            if status == 200:
                return int(answer["Results"][0]["KV"]["ModifyIndex"])
            why = " ".join(str(e.get("What", "")) for e in answer.get("Errors") or [])
        except _SHAPE_ERRORS as e:
            raise self._bad_answer("txn lock", e) from None
        low = why.lower()
        if "permission denied" in low or "acl not found" in low:
            raise self._t.error(PermissionDenied, f"Consul ACL denied the request: {one_line(why)}")
        if "invalid session" in low or "session lookup" in low:
            raise self._t.error(SessionGone, one_line(why))
        return None  # held by another session, or a lock-delay is running

    def release(self, key: str, session: str, value: bytes = b"", timeout: float = defaults.REQUEST_TIMEOUT) -> bool:
        """Release *key* held by *session*, writing *value* (a release also writes the body)."""
        _, _, data = self._request("PUT", f"/v1/kv/{key}", {"release": session}, body=value, timeout=timeout)
        answer = self._json(data, "release")
        if not isinstance(answer, bool):
            raise self._bad_answer("release", TypeError("not true or false"))
        return answer

    # -- the queue of candidates (lock_key.queue_prefix) ------------------------------------

    def join_queue(self, entry: str, session: str, value: bytes, timeout: float = defaults.REQUEST_TIMEOUT) -> bool:
        """Create our entry, held by *session* so that it shows when the session ends."""
        _, _, data = self._request("PUT", f"/v1/kv/{entry}", {"acquire": session}, body=value, timeout=timeout)
        return self._json(data, "queue entry") is True

    def read_queue(self, prefix: str, index: int = 0, wait: float | None = None,
                   timeout: float | None = None) -> tuple[int, list[QueueEntry]]:
        """The queue's entries (a blocking read when index > 0) and Consul's index."""
        if timeout is None:
            timeout = _blocking_timeout(wait) if index else defaults.REQUEST_TIMEOUT
        params = {**_blocking_params(index, wait), "recurse": None}
        status, headers, data = self._request("GET", f"/v1/kv/{prefix}", params, timeout=timeout, ok=(200, 404))
        consul_index = self._index(headers, "queue read")
        if status == 404:
            return consul_index, []
        try:
            return consul_index, [QueueEntry(kv["Key"], kv.get("Session") or None, int(kv["CreateIndex"]),
                                             base64.b64decode(kv["Value"]) if kv.get("Value") else None)
                                  for kv in self._json(data, "queue read")]
        except _SHAPE_ERRORS as e:
            raise self._bad_answer("queue read", e) from None

    def delete_key(self, key: str, timeout: float = defaults.REQUEST_TIMEOUT) -> None:
        self._request("DELETE", f"/v1/kv/{key}", timeout=timeout)

    def read_key(
        self, key: str, index: int = 0, wait: float | None = None, consistent: bool = True,
        timeout: float | None = None,
    ) -> tuple[int, KeyState | None]:
        """A (blocking, when index > 0) read of the key; returns Consul's index and the key's state."""
        if timeout is None:
            timeout = _blocking_timeout(wait) if index else defaults.REQUEST_TIMEOUT
        params = _blocking_params(index, wait)
        if consistent:
            params["consistent"] = None
        status, headers, data = self._request("GET", f"/v1/kv/{key}", params, timeout=timeout, ok=(200, 404))
        consul_index = self._index(headers, "key read")
        if status == 404:
            return consul_index, None
        entries = self._json(data, "key read")
        try:
            return consul_index, _key_state(entries[0])
        except _SHAPE_ERRORS as e:
            raise self._bad_answer("key read", e) from None

    def read_prefix(self, prefix: str, index: int = 0, wait: float | None = None,
                    timeout: float | None = None) -> tuple[int, list[tuple[str, KeyState]]]:
        """Like read_key, for every key under *prefix* (--holders: the slots)."""
        if timeout is None:
            timeout = _blocking_timeout(wait) if index else defaults.REQUEST_TIMEOUT
        params = {**_blocking_params(index, wait), "recurse": None, "consistent": None}
        status, headers, data = self._request("GET", f"/v1/kv/{prefix}", params, timeout=timeout, ok=(200, 404))
        consul_index = self._index(headers, "prefix read")
        if status == 404:
            return consul_index, []
        try:
            return consul_index, [(kv["Key"], _key_state(kv)) for kv in self._json(data, "prefix read")]
        except _SHAPE_ERRORS as e:
            raise self._bad_answer("prefix read", e) from None

    # -- answers ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, params: dict | None = None, body: bytes | None = None,
                 timeout: float = defaults.REQUEST_TIMEOUT, ok: tuple[int, ...] = (200,)):
        status, headers, data = self._t.request(method, path, params, body, timeout)
        if status not in ok:
            raise self._t.answer_error(status, headers, data)
        return status, headers, data

    def _json(self, data: bytes, what: str):
        if not data.strip():
            raise self._t.error(ConsulUnavailable, f"Consul at {self.conn.url} sent an empty answer to {what}")
        try:
            return json.loads(data)
        except ValueError:
            raise self._t.error(ConsulUnavailable, f"Consul at {self.conn.url} sent an answer to {what} that is not "
                                                   f"JSON: {one_line(data.decode('utf-8', 'replace'), 60)}") from None

    def _bad_answer(self, what: str, e: Exception) -> ConsulUnavailable:
        detail = f"{type(e).__name__} {one_line(str(e), 60)}".strip()
        return self._t.error(ConsulUnavailable, f"Consul at {self.conn.url} sent an answer to {what} that is not "
                                                f"what Consul sends ({detail})")

    def _index(self, headers: dict[str, str], what: str) -> int:
        text = headers.get("x-consul-index", "")
        if not text.isdigit():
            raise self._t.error(ConsulUnavailable, f"the server at {self.conn.url} answered the {what} without a valid "
                                                   "X-Consul-Index, unlike a Consul agent: check the address")
        return int(text)


def _key_state(kv: dict) -> KeyState:
    value = kv.get("Value")
    return KeyState(
        session=kv.get("Session") or None,
        modify_index=int(kv["ModifyIndex"]),
        lock_index=int(kv.get("LockIndex", 0)),
        value=base64.b64decode(value, validate=True) if value is not None else None,
    )


def _blocking_params(index: int | None, wait: float | None) -> dict:
    if not index:
        return {}
    params: dict = {"index": index}
    if wait:
        params["wait"] = format_duration(wait)
    return params


def _blocking_timeout(wait: float | None) -> float:
    # Consul adds up to wait/16 of jitter to a blocking query; a shorter timeout would cut
    # healthy queries off.
    wait = wait if wait is not None else 300.0
    return wait + wait / 16 + defaults.REQUEST_TIMEOUT
