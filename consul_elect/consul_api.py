"""The boundary to Consul: py-consul underneath, a client-side timeout on every request, typed errors.

One ConsulClient per thread (requests sessions are not shared across threads).
"""

from __future__ import annotations

import base64
import dataclasses
import json

import consul
import consul.std
import requests
import requests.adapters
from consul.callback import CB
from consul.exceptions import ACLPermissionDenied, BadRequest, ConsulException, NotFound

from . import config as defaults
from .config import Connection
from .durations import format_duration
from .errors import ConsulError, ConsulUnavailable, PermissionDenied, RejectedByConsul, SessionGone


@dataclasses.dataclass(frozen=True)
class KeyState:
    """What the lock key holds right now."""

    session: str | None
    modify_index: int
    lock_index: int
    value: bytes | None


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """Checks the server certificate against CONSUL_TLS_SERVER_NAME instead of the host we dial."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        return super().init_poolmanager(*args, **kwargs)


class _HTTPClient(consul.std.HTTPClient):
    """py-consul's client with a timeout chosen per request rather than once per client."""

    request_timeout: float = defaults.REQUEST_TIMEOUT

    def timeout(self, params):
        return self.request_timeout


class _Consul(consul.Consul):
    def http_connect(self, host, port, scheme, verify=True, cert=None):
        return _HTTPClient(host, port, scheme, verify, cert)


class ConsulClient:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        verify: bool | str = conn.ca_cert if (conn.verify and conn.ca_cert) else conn.verify
        cert = (conn.client_cert, conn.client_key) if conn.client_cert and conn.client_key else conn.client_cert
        self._c = _Consul(host=conn.host, port=conn.port, scheme=conn.scheme, verify=verify, cert=cert)
        # py-consul lets CONSUL_HTTP_TOKEN override an explicit token; our flags must win.
        self._c.token = conn.token
        if conn.tls_server_name and conn.scheme == "https":
            self._c.http.session.mount("https://", _ServerNameAdapter(conn.tls_server_name))

    def _call(self, timeout: float, fn, *args, **kwargs):
        self._c.http.request_timeout = max(0.05, timeout)
        try:
            return fn(*args, **kwargs)
        except ACLPermissionDenied as e:
            raise PermissionDenied(f"Consul ACL denied the request: {_body(e) or 'permission denied'}") from None
        except NotFound as e:
            raise SessionGone(_body(e) or "not found") from None
        except BadRequest as e:
            raise _classify_400(_body(e)) from None
        except ConsulException as e:
            raise _classify(str(e)) from None
        except requests.exceptions.Timeout:
            raise ConsulUnavailable(f"Consul at {self.conn.url} did not answer within {timeout:.1f}s") from None
        except requests.exceptions.SSLError as e:
            raise ConsulUnavailable(f"TLS error talking to Consul at {self.conn.url}: {_short(e)}") from None
        except requests.exceptions.RequestException as e:
            raise ConsulUnavailable(f"cannot reach Consul at {self.conn.url}: {_short(e)}") from None

    # -- sessions --------------------------------------------------------------------------

    def create_session(self, name: str, ttl: float, lock_delay: float, timeout: float = defaults.REQUEST_TIMEOUT) -> str:
        # Sent raw: py-consul asserts TTL >= 10 s (the server's session_ttl_min decides) and
        # omits a zero LockDelay, which Consul then reads as its 15 s default (consul#4508).
        body = {
            "Name": name,
            "TTL": format_duration(ttl),
            "LockDelay": format_duration(lock_delay),
            "Behavior": "release",
            # No serfHealth check: a gossip flap must not invalidate the session at a moment
            # only the (best-effort, in-memory) lock-delay would cover. TTL alone bounds it.
            "NodeChecks": [],
        }
        return self._call(
            timeout,
            self._c.http.put,
            CB.json(is_id=True),
            "/v1/session/create",
            data=json.dumps(body),
            headers=self._c.prepare_headers(),
        )

    def renew_session(self, session: str, timeout: float) -> None:
        result = self._call(timeout, self._c.session.renew, session)
        if not result:
            raise SessionGone(f"session {session} no longer exists")

    def destroy_session(self, session: str, timeout: float = defaults.REQUEST_TIMEOUT) -> None:
        self._call(timeout, self._c.session.destroy, session)

    def list_sessions(self, index: int | None = None, wait: float | None = None) -> tuple[int, list[dict]]:
        timeout = _blocking_timeout(wait) if index else defaults.REQUEST_TIMEOUT
        idx, sessions = self._call(
            timeout, self._c.session.list, index=index or None, wait=format_duration(wait) if wait else None
        )
        return int(idx), sessions or []

    def session_info(self, session: str) -> dict | None:
        _, info = self._call(defaults.REQUEST_TIMEOUT, self._c.session.info, session)
        return info

    # -- the lock key ----------------------------------------------------------------------

    def acquire(self, key: str, session: str, value: bytes, timeout: float = defaults.REQUEST_TIMEOUT) -> int | None:
        """Lock *key* for *session*; return the fencing token, or None when the lock is refused.

        A one-operation transaction does what ?acquire= does (lock-delay included) and also
        answers with the key's ModifyIndex after the write: the fencing token, without the
        second round trip a read would cost during a failover.
        """
        op = [{"KV": {"Verb": "lock", "Key": key, "Value": base64.b64encode(value).decode(), "Session": session}}]
        code, body = self._call(timeout, self._c.http.put, lambda r: (r.code, r.body), "/v1/txn",
                                data=json.dumps(op), headers=self._c.prepare_headers())
        if code == 200:
            return int(json.loads(body)["Results"][0]["KV"]["ModifyIndex"])
        if code == 409:
            why = " ".join(e.get("What", "") for e in json.loads(body).get("Errors") or [])
            low = why.lower()
            if "permission denied" in low:
                raise PermissionDenied(f"Consul ACL denied the request: {why}")
            if "invalid session" in low or "session lookup" in low:
                raise SessionGone(why)
            return None  # held by another session, or a lock-delay is running
        if code == 403:
            raise PermissionDenied(f"Consul ACL denied the request: {_body(Exception(body))}")
        raise _classify(f"{code} {body}")

    def release(self, key: str, session: str, timeout: float = defaults.REQUEST_TIMEOUT) -> bool:
        return bool(self._call(timeout, self._c.kv.put, key, None, release=session))

    def read_key(
        self, key: str, index: int = 0, wait: float | None = None, consistent: bool = True,
        timeout: float | None = None,
    ) -> tuple[int, KeyState | None]:
        """A (blocking, when index > 0) read of the key; returns Consul's index and the key's state."""
        if timeout is None:
            timeout = _blocking_timeout(wait) if index else defaults.REQUEST_TIMEOUT
        idx, kv = self._call(
            timeout,
            self._c.kv.get,
            key,
            index=index or None,
            wait=format_duration(wait) if (index and wait) else None,
            consistency="consistent" if consistent else "default",
        )
        if kv is None:
            return int(idx), None
        return int(idx), KeyState(
            session=kv.get("Session") or None,
            modify_index=int(kv["ModifyIndex"]),
            lock_index=int(kv.get("LockIndex", 0)),
            value=kv.get("Value"),
        )


def _blocking_timeout(wait: float | None) -> float:
    # Consul adds up to wait/16 of jitter to a blocking query; a shorter timeout would cut
    # healthy queries off.
    wait = wait if wait is not None else 300.0
    return wait + wait / 16 + defaults.REQUEST_TIMEOUT


def _body(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def _short(e: Exception) -> str:
    text = str(e)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "Failed to resolve" in text:
        return "host name not found"
    return _body(e)


def _classify(text: str) -> ConsulError:
    body = _body(Exception(text))
    low = body.lower()
    if "missing index header" in low:
        return ConsulUnavailable("the server answered, but not like a Consul agent (no X-Consul-Index): "
                                 "check the address")
    if "invalid session ttl" in low:
        return RejectedByConsul(f"Consul refused the session TTL (its session_ttl_min sets the floor): {body}")
    if "invalid session" in low or "session not found" in low:
        return SessionGone(body)
    if "permission denied" in low or "acl not found" in low:
        return PermissionDenied(f"Consul ACL denied the request: {body}")
    if low.startswith("5") or "no cluster leader" in low or "rpc error" in low:
        return ConsulUnavailable(f"Consul error: {body}")
    return ConsulError(f"Consul error: {body}")


def _classify_400(body: str) -> ConsulError:
    if "invalid session" in body.lower():
        return SessionGone(body)
    return RejectedByConsul(f"Consul rejected the request: {body}")
