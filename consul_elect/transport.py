"""The one HTTP transport to Consul: standard library only, an overall deadline, typed errors.

Standard library only because the watchdog, forked before anything heavy is imported, uses it
too (put_once). One Transport per thread: it keeps one HTTP/1.1 connection alive and opens a
new one after any failure.

Deadlines. A per-read timeout lets a server that trickles one byte a second hold a request
forever, so every request has one deadline for everything: name resolution, connect, TLS
handshake, sending, and reading the whole answer. Sockets re-arm their timeout to "deadline
minus now" before each blocking call (_DeadlineSocket, _DeadlineSSLSocket).

Errors. Whatever happens ends as an ElectError subclass (errors.py) with a one-line message in
plain words: which address, what went wrong, and what to change when the fix is on our side
(https to a plain-HTTP port, a CA that does not match). Messages never carry a header value,
and the ACL token is scrubbed from every one of them as a last line of defence.

TLS. The SSL context is built when first needed and rebuilt when a CA, client certificate or
key file changes (size, mtime or inode), so rotated certificates are used without a restart;
after a certificate verification failure it is rebuilt once more and the request retried,
in case a rotation kept the files' stamps.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import logging
import math
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable

from . import config as defaults
from .config import Connection
from .errors import (
    ConsulError, ConsulTLSError, ConsulUnavailable, ElectError, PermissionDenied, RejectedByConsul, SessionGone,
    UsageError,
)

log = logging.getLogger(__name__)

# Consul's answers to our requests are a few kilobytes; a session list of a busy cluster may be
# a few megabytes. Anything bigger is not an answer we asked for, and must not eat our memory.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
# Messages quote at most this much of what the server said (cut at a word, never mid-word).
MESSAGE_LIMIT = 200
REDACTED = "<redacted>"
# Requests get at least this long, as a timeout of zero could not even connect on loopback.
MIN_TIMEOUT = 0.05
# settimeout() refuses values that overflow a C timeval; no request waits a week.
_LONGEST_WAIT = 7 * 86400.0
# Retry-After values we believe: a proxy asking for an hour is wrong, and the caller's own
# back-off cap applies anyway.
MAX_RETRY_AFTER = 300.0

# What Go's TLS server answers to plain HTTP (Consul's HTTPS port).
_GO_HTTPS_ANSWER = "client sent an http request to an https server"
# OpenSSL's reasons for "the peer does not speak TLS": what a plain-HTTP answer to a ClientHello
# looks like from the TLS side.
_NOT_TLS_REASONS = {"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
                    "HTTP_REQUEST", "HTTPS_PROXY_REQUEST"}
# Alerts with which a server refuses our client certificate (or our lack of one).
_CLIENT_CERT_REFUSED = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE",
                        "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_UNKNOWN_CA",
                        "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED",
                        "TLSV1_ALERT_ACCESS_DENIED"}
_X509_V_ERR_CERT_HAS_EXPIRED = 10
# Failures on a kept-alive connection that the server may have closed while it was idle: the
# request is sent once more on a fresh connection. Every request we make is safe to repeat
# (reads, renew, release, destroy, a lock by the same session); a repeated session create
# would leave one unused session behind, which its TTL ends.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
          ssl.SSLEOFError, ssl.SSLZeroReturnError)


# -- messages -------------------------------------------------------------------------------


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """*text* with every secret (as given, stripped, escaped, or URL-encoded) replaced by <redacted>."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        for form in (secret, secret.strip(), secret.encode("unicode_escape").decode("ascii", "replace"),
                     repr(secret)[1:-1], urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)):
            if form:
                forms.add(form)
    for form in sorted(forms, key=len, reverse=True):   # longest first: "tok\\n" before "tok"
        text = text.replace(form, REDACTED)
    return text


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """*text* on one line, without control characters, at most *limit* characters, cut at a word."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 3)
    return (text[:cut] if cut > limit // 2 else text[:limit - 3]).rstrip(" ,;:") + "..."


def _body_text(body: bytes) -> str:
    return one_line(body.decode("utf-8", "replace"))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _ttl_floor_message(body: str) -> str | None:
    """Consul 1.8: 500 "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"."""
    low = body.lower()
    if "invalid session ttl" not in low:
        return None
    start = body.find("[")
    end = body.find("]", start)
    bounds = body[start + 1:end].split("=") if 0 <= start < end else []
    if len(bounds) != 2:
        return ("Consul refused the session TTL (outside its session_ttl_min to 24h range): pass --ttl 10s or "
                "more, or lower session_ttl_min on the servers")
    low_bound, high_bound = (_go_duration_words(b) for b in bounds)
    return (f"Consul's session_ttl_min is {low_bound}: pass --ttl {low_bound} or more (up to {high_bound}), "
            "or lower session_ttl_min on the servers")


def _go_duration_words(text: str) -> str:
    """Go prints 10s, 1m0s, 24h0m0s: drop the zero parts ("1m", "24h")."""
    text = text.strip()
    for zero in ("0s", "0m"):
        if len(text) > len(zero) and text.endswith(zero) and not text[-len(zero) - 1].isdigit():
            text = text[:-len(zero)]
    return text


def answer_error(status: int, headers: dict[str, str], body: bytes, where: str) -> ConsulError:
    """The typed error for an HTTP answer that is not a success. *where* names the server, e.g. a URL.

    Consul says what went wrong in its body (plain text); the body decides where the status
    alone would be ambiguous (Consul 1.8 answers 500 for a TTL below session_ttl_min).
    """
    text = _body_text(body)
    low = text.lower()
    if status == 429:
        retry_after = retry_after_seconds(headers.get("retry-after"))
        wait = f": retry after {retry_after:g}s" if retry_after is not None else ""
        return ConsulUnavailable(f"Consul at {where} is limiting requests (HTTP 429){wait}", retry_after=retry_after)
    ttl = _ttl_floor_message(text)
    if ttl:
        return RejectedByConsul(ttl)
    if status == 403 or "permission denied" in low or "acl not found" in low:
        return PermissionDenied(f"Consul ACL denied the request: {text or 'permission denied'} (HTTP {status})")
    if "invalid session" in low or "session not found" in low or ("session id" in low and "not found" in low):
        return SessionGone(text)
    if status >= 500:
        return ConsulUnavailable(f"Consul at {where} answered HTTP {status}: {text or 'no details'}")
    if status == 400:
        return RejectedByConsul(f"Consul rejected the request: {text or 'bad request'}")
    if 400 <= status < 500:
        return RejectedByConsul(f"Consul at {where} answered HTTP {status}: {text or 'no details'}")
    return ConsulUnavailable(f"Consul at {where} answered HTTP {status}, which is not an answer to our request")


def _file_error(kind: str, path: str, origin: str, e: Exception) -> ConsulTLSError:
    if isinstance(e, FileNotFoundError):
        why = "no such file"
    elif isinstance(e, PermissionError):
        why = "permission denied"
    elif isinstance(e, IsADirectoryError):
        why = "it is a directory"
    elif isinstance(e, ssl.SSLError):
        why = f"not usable ({(e.reason or 'invalid PEM').lower().replace('_', ' ')})"
    elif isinstance(e, OSError):
        why = (e.strerror or type(e).__name__).lower()
    else:
        why = type(e).__name__
    return ConsulTLSError(f"cannot use the {kind} {path} ({origin}): {why}")


# -- sockets that keep one deadline -----------------------------------------------------------


class _Deadline:
    """Mixed into a socket class: every blocking call times out at `deadline`, not per call."""

    deadline = math.inf

    def _arm(self) -> None:
        """Give the next blocking call what is left until the deadline (time.monotonic())."""
        if self.deadline == math.inf:
            self.settimeout(None)
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.settimeout(min(left, _LONGEST_WAIT))

    def recv_into(self, *args, **kwargs):
        self._arm()
        return super().recv_into(*args, **kwargs)

    def recv(self, *args, **kwargs):
        self._arm()
        return super().recv(*args, **kwargs)

    def send(self, *args, **kwargs):
        self._arm()
        return super().send(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        # A plain socket's timeout bounds its whole sendall (since Python 3.5); SSLSocket.sendall
        # loops over send(), so there each chunk re-arms too.
        self._arm()
        return super().sendall(*args, **kwargs)


class _DeadlineSocket(_Deadline, socket.socket):
    def connect(self, address) -> None:
        self._arm()
        super().connect(address)


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    def do_handshake(self, *args, **kwargs):
        self._arm()
        return super().do_handshake(*args, **kwargs)

    def read(self, *args, **kwargs):
        self._arm()
        return super().read(*args, **kwargs)


class _ResolveTimeout(TimeoutError):
    """The host name did not resolve before the request's deadline."""


def _resolve(host: str, port: int, deadline: float) -> list:
    """getaddrinfo within the deadline (it has no timeout of its own: a dead resolver blocks it)."""
    try:
        ipaddress.ip_address(host)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except ValueError:
        pass
    result: list = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            result.append(e)

    # A daemon thread: if the resolver hangs past the deadline, it is left to finish on its own.
    resolver = threading.Thread(target=lookup, name="consul-elect resolve", daemon=True)
    resolver.start()
    resolver.join(max(0.0, deadline - time.monotonic()))
    if not result:
        raise _ResolveTimeout()
    if isinstance(result[0], OSError):
        raise result[0]
    return result[0]


def _connect(host: str, port: int, deadline: float) -> _DeadlineSocket:
    last: OSError | None = None
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = _DeadlineSocket(family, kind, proto)
        sock.deadline = deadline
        try:
            sock.connect(address)
        except OSError as e:
            sock.close()
            last = e
            if isinstance(e, TimeoutError):
                break
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last or OSError("no address to connect to")


# -- TLS --------------------------------------------------------------------------------------


_TLS_SETTINGS: dict = {}
_TLS_SETTINGS_LOCK = threading.Lock()


def _tls_for(conn: Connection) -> _TLS:
    """One _TLS per Connection in the process, shared by every thread's transport: a client
    made during a certificate rotation (a new session keeper) inherits the last good settings."""
    with _TLS_SETTINGS_LOCK:
        tls = _TLS_SETTINGS.get(conn)
        if tls is None:
            tls = _TLS_SETTINGS[conn] = _TLS(conn)
        return tls


class _TLS:
    """The SSL context for a Connection, rebuilt when its files change."""

    def __init__(self, conn: Connection) -> None:
        self._lock = threading.Lock()
        self.conn = conn
        self.server_name = conn.tls_server_name or conn.host
        self._context: ssl.SSLContext | None = None
        self._stamp: tuple | None = None
        self.built_at = -math.inf

    def _files(self) -> list[tuple[str, str, str]]:
        """(kind, path, origin) of every file the context is built from."""
        c = self.conn
        files = []
        if c.verify and c.ca_cert:
            files.append(("CA file", c.ca_cert, "--ca-file / CONSUL_CACERT"))
        if c.client_cert:
            files.append(("client certificate", c.client_cert, "--client-cert / CONSUL_CLIENT_CERT"))
        if c.client_key:
            files.append(("client key", c.client_key, "--client-key / CONSUL_CLIENT_KEY"))
        return files

    def _ca_path_files(self) -> list[str]:
        paths = []
        for root, dirs, names in os.walk(self.conn.ca_path, onerror=_raise):
            dirs.sort()
            paths += [os.path.join(root, n) for n in sorted(names)]
        return paths

    def _current_stamp(self) -> tuple:
        stamp = []
        paths = [p for _, p, _ in self._files()]
        if self.uses_ca_path():
            try:
                paths += [self.conn.ca_path] + self._ca_path_files()
            except OSError:
                paths.append(self.conn.ca_path)
        for path in paths:
            try:
                st = os.stat(path)
                stamp.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError as e:
                stamp.append((path, type(e).__name__))
        return tuple(stamp)

    def uses_ca_path(self) -> bool:
        # As in the consul CLI (go-rootcerts), a CA file wins over a CA path.
        return bool(self.conn.verify and self.conn.ca_path and not self.conn.ca_cert)

    def context(self) -> ssl.SSLContext:
        with self._lock:
            return self._current_context()

    def _current_context(self) -> ssl.SSLContext:
        stamp = self._current_stamp()
        if self._context is not None and stamp == self._stamp:
            return self._context
        try:
            context = self._build()
        except ConsulTLSError as e:
            if self._context is None:
                raise
            # Mid-rotation (a file briefly missing or half written): the last good context
            # still works for as long as the server accepts it; we try again next time.
            log.warning("keeping the previous TLS settings: %s", e)
            return self._context
        self._context, self._stamp, self.built_at = context, stamp, time.monotonic()
        return context

    def invalidate(self) -> None:
        self._context = None

    def _build(self) -> ssl.SSLContext:
        c = self.conn
        # Not create_default_context(): it trusts the system's CAs as well as ours, and a
        # configured CA must be the only one trusted (as with the consul CLI).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # verifies the certificate and host name
        context.sslsocket_class = _DeadlineSSLSocket
        if c.verify and not c.ca_cert and not c.ca_path:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if not c.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif c.ca_cert:
            try:
                context.load_verify_locations(cafile=c.ca_cert)
            except (OSError, ValueError) as e:
                raise _file_error("CA file", c.ca_cert, "--ca-file / CONSUL_CACERT", e) from None
        elif c.ca_path:
            try:
                paths = self._ca_path_files()
            except OSError as e:
                raise _file_error("CA directory", c.ca_path, "--ca-path / CONSUL_CAPATH", e) from None
            if not paths:
                raise ConsulTLSError(f"cannot use the CA directory {c.ca_path} (--ca-path / CONSUL_CAPATH): "
                                     "it holds no files")
            for path in paths:
                try:
                    context.load_verify_locations(cafile=path)
                except (OSError, ValueError) as e:
                    raise _file_error("CA file", path, "in --ca-path / CONSUL_CAPATH", e) from None
        if c.client_cert:
            for kind, path, origin in self._files():
                if kind == "CA file":
                    continue
                try:   # load_cert_chain's own error would not say which of the two files
                    open(path, "rb").close()
                except OSError as e:
                    raise _file_error(kind, path, origin, e) from None
            try:
                context.load_cert_chain(c.client_cert, c.client_key or None)
            except (OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or type(e).__name__
                raise ConsulTLSError(
                    f"cannot use the client certificate {c.client_cert} with the key "
                    f"{c.client_key or '(in the same file)'} (CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY): "
                    f"{reason.lower().replace('_', ' ')}") from None
        return context


def _raise(e: OSError) -> None:
    raise e


# -- the transport ----------------------------------------------------------------------------


class _HTTPConnection(http.client.HTTPConnection):
    """http.client over our deadline sockets; connect() is only ever called by Transport."""

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport.conn.host, transport.conn.port)
        self.transport = transport

    def connect(self) -> None:
        self.sock = self.transport._open_socket()


class Transport:
    """request(method, path, params, body, timeout) -> (status, headers, body) against one Consul.

    *headers* has lower-case names. Non-2xx statuses are returned, not raised (their meaning
    depends on the endpoint: answer_error() gives the generic one); every failure to get an
    answer at all raises a ConsulError subclass (UsageError for an unusable token).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.secrets = tuple(s for s in (conn.token, (conn.token or "").strip()) if s)
        self.hostport = f"[{conn.host}]:{conn.port}" if ":" in conn.host else f"{conn.host}:{conn.port}"
        self._tls = _tls_for(conn) if conn.scheme == "https" else None
        self._http: _HTTPConnection | None = None
        self._answered_on_this_connection = False
        self._deadline = math.inf
        self._phase = "connect"
        self._base_headers = self._make_headers()

    def _make_headers(self) -> dict[str, str] | None:
        token = (self.conn.token or "").strip()
        if not token:
            return {}
        if not all(" " <= ch <= "~" for ch in token):
            return None   # refused at request time, without ever showing the value
        return {"X-Consul-Token": token}

    # -- public -------------------------------------------------------------------------------

    def request(self, method: str, path: str, params: dict | list | None = None, body: bytes | None = None,
                timeout: float = defaults.REQUEST_TIMEOUT) -> tuple[int, dict[str, str], bytes]:
        if self._base_headers is None:
            raise UsageError("the ACL token contains a line break or another character HTTP headers cannot carry: "
                             "check CONSUL_HTTP_TOKEN / the token file")
        started = time.monotonic()
        timeout = max(MIN_TIMEOUT, timeout)
        deadline = started + timeout
        target = self._target(path, params)
        headers = dict(self._base_headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            reused = self._http is not None and self._answered_on_this_connection
            try:
                status, answer_headers, data = self._exchange(method, target, body, headers, deadline)
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.close()
                if attempt == 1 and reused and isinstance(e, _STALE):
                    continue
                if (attempt == 1 and isinstance(e, ssl.SSLCertVerificationError) and self._tls is not None
                        and self._tls.built_at < started):
                    self._tls.invalidate()   # rotated files with unchanged stamps: read them again
                    continue
                raise self._error_for(e, timeout, method, path) from None
            except ConsulError as e:
                self.close()
                raise self._scrubbed(e) from None
            if status == 400 and _GO_HTTPS_ANSWER in data.decode("latin-1").lower():
                self.close()
                raise self.error(ConsulTLSError, f"http was used, but the server at {self.hostport} speaks HTTPS: "
                                                 "use https:// in the address (or CONSUL_HTTP_SSL=true)")
            return status, answer_headers, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self._http = None
        self._answered_on_this_connection = False

    def error(self, cls: type[ConsulError], message: str, **kwargs) -> ConsulError:
        """An error of *cls* with *message* scrubbed of our secrets."""
        return cls(scrub(message, self.secrets), **kwargs)

    def answer_error(self, status: int, headers: dict[str, str], body: bytes) -> ConsulError:
        if self.conn.datacenter and b"no path to datacenter" in body.lower():
            return self.error(ConsulUnavailable, f"Consul at {self.conn.url} has no route to datacenter "
                                                 f"{self.conn.datacenter} (--datacenter / CONSUL_DATACENTER): "
                                                 "is the name right, and is the WAN link up?")
        return self._scrubbed(answer_error(status, headers, body, self.conn.url))

    # -- internals ----------------------------------------------------------------------------

    def _target(self, path: str, params: dict | list | None) -> str:
        items = list(params.items() if isinstance(params, dict) else params or [])
        if self.conn.datacenter:
            items.append(("dc", self.conn.datacenter))
        query = "&".join(urllib.parse.quote(str(k), safe="") if v is None
                         else f"{urllib.parse.quote(str(k), safe='')}={urllib.parse.quote(str(v), safe='')}"
                         for k, v in items)
        quoted = urllib.parse.quote(path, safe="/:")
        return f"{quoted}?{query}" if query else quoted

    def _exchange(self, method, target, body, headers, deadline):
        self._deadline = deadline
        if self._http is None:
            self._http = _HTTPConnection(self)
        if self._http.sock is None:
            self._http.connect()
        else:
            self._http.sock.deadline = deadline
        self._phase = "send"
        self._http.request(method, target, body=body, headers=headers)
        self._phase = "answer"
        response = self._http.getresponse()
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > MAX_ANSWER_BYTES:
            raise ConsulUnavailable(f"the answer from {self.conn.url} is too large ({int(length)} bytes)")
        data = response.read(MAX_ANSWER_BYTES + 1)
        if len(data) > MAX_ANSWER_BYTES:
            raise ConsulUnavailable(f"the answer from {self.conn.url} is too large (over {MAX_ANSWER_BYTES} bytes)")
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        if response.will_close or not response.isclosed():
            self.close()
        else:
            self._answered_on_this_connection = True
        return response.status, answer_headers, data

    def _open_socket(self) -> socket.socket:
        # The TLS settings first: a missing certificate file is reported without touching the network.
        context = self._tls.context() if self._tls is not None else None
        self._phase = "connect"
        sock = _connect(self.conn.host, self.conn.port, self._deadline)
        if context is None:
            return sock
        try:
            self._phase = "handshake"
            tls = context.wrap_socket(sock, server_hostname=self._tls.server_name, do_handshake_on_connect=False)
            tls.deadline = self._deadline
            tls.do_handshake()
        except BaseException:
            sock.close()
            raise
        return tls

    def _scrubbed(self, e: ElectError) -> ElectError:
        text = str(e)
        clean = scrub(text, self.secrets)
        if clean == text:
            return e
        copy = type(e)(clean)
        copy.__dict__.update(e.__dict__)
        return copy

    def _error_for(self, e: BaseException, timeout: float, method: str, path: str) -> ConsulError:
        url, where, phase = self.conn.url, self.hostport, self._phase
        tls = self._tls
        if isinstance(e, _ResolveTimeout):
            return self.error(ConsulUnavailable, f"cannot reach Consul at {url}: the host name {self.conn.host} "
                                                 f"did not resolve within {timeout:.1f}s")
        if isinstance(e, TimeoutError):
            if phase == "connect":
                return self.error(ConsulUnavailable, f"could not connect to Consul at {url} within {timeout:.1f}s")
            return self.error(ConsulUnavailable, f"Consul at {url} did not answer within {timeout:.1f}s")
        if isinstance(e, ssl.SSLCertVerificationError):
            name = tls.server_name if tls else self.conn.host
            detail = (e.verify_message or e.reason or "").rstrip(".")
            if e.verify_code == _X509_V_ERR_CERT_HAS_EXPIRED:
                return self.error(ConsulTLSError, f"certificate verify failed for host {name}: the server's "
                                                  "certificate has expired")
            ca = "CONSUL_CAPATH" if tls and tls.uses_ca_path() else "CONSUL_CACERT"
            return self.error(ConsulTLSError, f"certificate verify failed for host {name}: wrong CA ({ca}) "
                                              f"or wrong CONSUL_TLS_SERVER_NAME ({one_line(detail)})")
        if isinstance(e, ssl.SSLError) and not isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            reason = e.reason or ""
            if reason in _NOT_TLS_REASONS:
                return self.error(ConsulTLSError, f"https was used (an https:// address or CONSUL_HTTP_SSL=true), but the server at {where} "
                                                  "speaks plain HTTP: "
                                                  "use http:// or enable TLS on the agent")
            if reason in _CLIENT_CERT_REFUSED:
                if self.conn.client_cert:
                    return self.error(ConsulTLSError, f"the server at {where} refused our client certificate "
                                                      f"{self.conn.client_cert} ({_words(reason)}): it must be "
                                                      "signed by a CA the agent trusts (CONSUL_CLIENT_CERT)")
                return self.error(ConsulTLSError, f"the server at {where} requires a client certificate "
                                                  f"({_words(reason)}): set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY")
            return self.error(ConsulTLSError, f"TLS with the server at {where} failed: {_words(reason or str(e))}")
        if phase == "handshake" and isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
            return self.error(ConsulUnavailable, f"the server at {where} closed the connection during the TLS "
                                                 "handshake: is it a Consul HTTPS port?")
        if isinstance(e, socket.gaierror):
            return self.error(ConsulUnavailable, f"cannot reach Consul at {url}: the host name {self.conn.host} "
                                                 "does not resolve")
        if isinstance(e, ConnectionRefusedError):
            return self.error(ConsulUnavailable, f"cannot reach Consul at {url}: connection refused "
                                                 "(is an agent listening there?)")
        if isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                          ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return self.error(ConsulUnavailable, f"the server at {where} closed the connection without an HTTP "
                                                 "answer: is it a Consul HTTP port?")
        if isinstance(e, http.client.IncompleteRead):
            return self.error(ConsulUnavailable, f"the answer from Consul at {url} was cut short")
        if isinstance(e, http.client.HTTPException):
            return self.error(ConsulUnavailable, f"the server at {where} did not answer in HTTP: "
                                                 "is it a Consul HTTP port?")
        if isinstance(e, ValueError):
            # http.client refusing a header or the path; its message would quote the value.
            return self.error(ConsulError, f"{method} {one_line(path)}: the request could not be sent "
                                           "(a header or the path holds characters HTTP does not allow)")
        strerror = getattr(e, "strerror", None) or type(e).__name__
        return self.error(ConsulUnavailable, f"cannot reach Consul at {url}: {one_line(strerror).lower()}")


def _words(reason: str) -> str:
    return one_line(reason.replace("_", " ").lower())


def put_once(conn: Connection, path: str, timeout: float, params: dict | None = None,
             body: bytes | None = None) -> int | None:
    """One PUT on a fresh connection; the HTTP status, or None when no answer came. Never raises.

    For the watchdog's clean-up on the elector's behalf (release the key, destroy the session).
    A query may be given as *params* or, when *params* is None, after a '?' in *path*; *body*
    is sent as is (a KV PUT with ?release= also writes it as the key's value). Logs a warning
    (without the token, the query, the body, or any header) when Consul did not answer 200.
    """
    if params is None and "?" in path:
        path, _, query = path.partition("?")
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    transport = None
    try:
        transport = Transport(conn)
        status, headers, answer = transport.request("PUT", path, params, body, timeout)
        if status != 200:
            log.warning("Consul answered PUT %s with: %s", path, transport.answer_error(status, headers, answer))
        return status
    except ElectError as e:
        log.warning("PUT %s did not reach Consul: %s", path, e)
    except Exception as e:  # noqa: BLE001 - the watchdog's clean-up must never raise
        log.warning("PUT %s failed: %s", path, scrub(one_line(f"{type(e).__name__}: {e}"), (conn.token,)))
    finally:
        if transport is not None:
            transport.close()
    return None
