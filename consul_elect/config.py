"""Validated, frozen settings, and every default and timing constant with the reason for its value.

The safety arithmetic (see README "Why the child is always stopped in time"):

    a   = lease clock time read just *before sending* the latest request that proved our session
          alive and holding the key (the acquire, or a successful renew)
    B   = min(TTL, lock_delay) * (1 - CLOCK_RATE_ERROR) - SCHEDULING_SLACK      (the lease window)
    deadline = a + B

No other candidate can acquire before a + lock_delay after an invalidation (destroy, failed
check) nor before a + TTL + lock_delay after a TTL expiry, and when the servers lose the
lock-delay (it lives only in the Raft leader's memory) TTL still bounds the expiry; so a child
that is dead and reaped by the deadline never overlaps its successor.

The elector begins a graceful stop (SIGTERM) at deadline - grace; the watchdog process kills
the child's group with SIGKILL at the deadline itself even if the elector is frozen or dead.
Renewals are spaced so that RENEWS_PER_WINDOW attempts fit before the graceful stop begins.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket

from .errors import UsageError

# Consul refuses session TTLs below its session_ttl_min, 10 s unless the operator lowers it.
# A longer TTL only matters when the elector and its watchdog both vanish (host lost): the
# session then lives up to 2 x TTL on the servers, plus the lock-delay.
DEFAULT_TTL = 10.0
# How long Consul keeps the key from being re-acquired after our session is invalidated.
# It is the upper bound of the lease window: 6 s gives B = 5.69 s, so a frozen leader is
# replaced within about 6 s while a healthy one renews about every 1.2 s.
DEFAULT_LOCK_DELAY = 6.0
# SIGTERM-to-SIGKILL time for the child; must fit inside the lease window (see validate()).
DEFAULT_GRACE = 2.0
# Allowed rate difference between our clock and the Consul servers' clocks.
CLOCK_RATE_ERROR = 0.01
# Time we allow for scheduling, the SIGKILL itself and reaping the child.
SCHEDULING_SLACK = 0.25
# How many renew attempts fit between a proof of life and the start of a graceful stop,
# so one slow or failed renew never costs a healthy leader its lease.
RENEWS_PER_WINDOW = 3
# Below this, renewals would come so fast that the margin is eaten by request latency.
MIN_RENEW_INTERVAL = 0.1
# Cap on any single Consul request that is not a blocking query: Consul 1.8 agents can hang a
# request forever on a dead server link, and nothing else bounds it.
REQUEST_TIMEOUT = 5.0
# Blocking queries wait at most this long; the client timeout adds Consul's wait/16 jitter.
WATCH_WAIT = 30.0
# After it reports the key free, the key watcher waits this long before its next query: the
# driver's acquire and spawn (about 3 ms here) then run without this thread taking the GIL and
# a CPU. Nothing is missed: the next query answers at once with whatever changed meanwhile.
WATCH_QUIET = 0.005
# Retry interval for an acquire refused while a lock-delay is in effect: short enough that the
# lock-delay, not this interval, sets the failover time. Only while a lock-delay can still be
# running (the old holder's lock-delay after we saw the key freed, plus LOCK_DELAY_MARGIN);
# after that a refusal backs off like any failure, so an unreadable key is no hot loop.
LOCK_DELAY_RETRY = 0.05
LOCK_DELAY_MARGIN = 1.0
# Consul's upper bound on a lock-delay: the longest a holder we know nothing about can block.
MAX_LOCK_DELAY = 60.0
# Back-off between attempts while Consul is unreachable or refuses: quick first, then gentle.
# Each wait is spread by +-RETRY_JITTER so that a fleet that lost Consul together does not
# come back in step.
RECONNECT_BACKOFF_MIN = 0.2
RECONNECT_BACKOFF_MAX = 2.0
RETRY_JITTER = 0.2
# Until Consul has answered once, give up after this long (unless --timeout says otherwise):
# long enough for an agent started beside us in the same pod, short enough that a typo in
# CONSUL_HTTP_ADDR is reported rather than retried forever.
STARTUP_PATIENCE = 15.0
# A key freed without lock-delay (an operator's delete or release) while its holder's session
# lives: check that session this often until it ends (no other bound: see leadership.HolderWait).
HOLDER_POLL = 0.1
# A clean release names up to HANDOVER_SUCCESSORS waiters, oldest candidacy first: the first
# acquires at once, each next one HANDOVER_TURN later if the key is still free, every other
# waiter after them all. One write instead of a failed acquire (a Raft write) per waiter; the
# turn is long enough for a live successor's acquire under load, short enough that a dead one
# costs little.
HANDOVER_SUCCESSORS = 3
HANDOVER_TURN = 0.2
# A new leader leaves the queue this long after its command was started (Spawned comes as the
# exec begins): every waiter far back wakes on that change and reads the key, and a hundred of
# them on one machine would take the CPU from the command's exec (~1.5 ms here). Only their view
# of the leader waits for it.
QUEUE_LEAVE_DELAY = 0.05
# The release waits this long at most for the queue read begun when the command was told to
# stop (usually long done); after it, the release names no one rather than wait for Consul.
SUCCESSORS_READ_WAIT = 0.5
# A leader on its way out pauses this long after its release before the rest of its way out
# (session destroy, threads, watchdog, interpreter): a successor on the same machine, and the
# Consul agent answering it, then have the CPU for its acquire and its command's exec (about
# 5 ms here). Shutdown takes this much longer; nothing is held meanwhile.
HANDOVER_QUIET = 0.02
# --holders: one holder is the classic leader election (the key itself is the lock); more are
# slots of their own (see slots.py). Each holder keeps a session and a blocking query, and every
# candidate follows all the slots: past a few dozen, one key is no longer the right tool.
DEFAULT_HOLDERS = 1
MAX_HOLDERS = 64
# After SIGKILL, how long to wait for the kernel to let the command's processes die before
# reporting them as survivors.
KILL_WAIT = 2.0
# A command whose processes survive SIGKILL (EPERM: a setuid helper) keeps the key held by our
# session, renewed, until they are gone; we try again this often.
CONTAIN_RETRY = 1.0
CONTAIN_RETRY_WAIT = 0.1
# The elector pings the watchdog this often and declares it unresponsive (frozen, wedged) when
# no answer came for WATCHDOG_ANSWER_TIMEOUT; it then kills the command's group itself.
WATCHDOG_PING_INTERVAL = 1.0
WATCHDOG_ANSWER_TIMEOUT = 3.0
# The elector's loop turns at least this often, so /health sees a live loop.
LOOP_WAKE = 1.0

# -- signal mode, the role file and transition hooks (README "Signal mode") -------------------
# exec: the command runs only while this candidate leads. signal: it runs on every candidate
# and is told by signal when it becomes leader and when it must stand down.
MODE_EXEC = "exec"
MODE_SIGNAL = "signal"
MODES = (MODE_EXEC, MODE_SIGNAL)
DEFAULT_MODE = MODE_EXEC
# The two user signals have no meaning of their own, so a command cannot mistake them for a
# request to stop (SIGTERM) or to reload (SIGHUP, by convention).
DEFAULT_ELECTED_SIGNAL = signal.SIGUSR1
DEFAULT_DEMOTED_SIGNAL = signal.SIGUSR2
# Signals a command cannot handle, or that would stop it rather than tell it something.
UNUSABLE_ROLE_SIGNALS = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD})
# The command acknowledges a demotion by writing "follower <fencing token>" to the role file's
# path plus this suffix; the watchdog looks for it this often while a demotion awaits one, so a
# well-behaved command hands over in about 10 ms and the poll costs nothing the rest of the time.
ACK_SUFFIX = ".ack"
ACK_POLL = 0.01
# Starting the command as a follower needs no lease, but a hung exec (a dead NFS mount) must not
# keep the watchdog from answering the elector's pings for WATCHDOG_ANSWER_TIMEOUT.
FOLLOWER_START_TIMEOUT = 2.0
# The two transition hooks, by the names their flags and log lines use.
HOOK_ON_ELECTED = "on-elected"
HOOK_ON_DEMOTED = "on-demoted"
# A hook is a side job (tell a load balancer, page someone): it must never hold up an election,
# so it runs beside it and is killed after this long.
DEFAULT_HOOK_TIMEOUT = 10.0
# Hooks are run with /bin/sh -c, like a crontab line, so that a flag can hold a pipeline.
HOOK_SHELL = "/bin/sh"
# A hook's output is logged line by line; a longer line is cut so a hook cannot flood the log.
HOOK_LINE_LIMIT = 1000

DEFAULT_CONSUL_ADDR = "127.0.0.1:8500"
# The status server listens on every interface, so a container's published port reaches it.
DEFAULT_STATUS_BIND = "0.0.0.0"
# A Consul key is a path; we refuse forms Consul rejects or silently rewrites.
_KEY_RE = re.compile(r"^[^/\s][^\s]*$")


@dataclasses.dataclass(frozen=True)
class Connection:
    """How to reach Consul: the same settings as the `consul` CLI's CONSUL_HTTP_* variables."""

    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"
    token: str | None = None
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True
    tls_server_name: str | None = None
    # A directory of PEM CA certificates (CONSUL_CAPATH), read like the consul CLI reads it:
    # every file under it; ca_cert wins when both are set.
    ca_path: str | None = None
    # Sessions and keys live per datacenter: sent as ?dc= on every request when set.
    datacenter: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(addr: str, use_ssl: bool | None = None) -> tuple[str, str, int]:
    """Parse CONSUL_HTTP_ADDR forms: host:port, host, http://host:port, https://host:port."""
    text = addr.strip()
    scheme = "http"
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise UsageError(f"invalid Consul address {addr!r}: scheme must be http or https")
    text = text.rstrip("/")
    if use_ssl is not None:
        scheme = "https" if use_ssl else "http"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host or "/" in host or " " in host:
        raise UsageError(f"invalid Consul address {addr!r}: expected host:port or a URL")
    if not port_text:
        # As the consul CLI reads it (Go's URL rules): no port is the scheme's own, not 8500.
        return scheme, host, 443 if scheme == "https" else 80
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"invalid Consul address {addr!r}: port must be a number from 1 to 65535")
    return scheme, host, int(port_text)


def validate_key(key: str) -> str:
    if not key or not key.strip():
        raise UsageError("the key is empty: give --key like svc/leader")
    if not _KEY_RE.match(key) or "//" in key or key.endswith("/"):
        raise UsageError(
            f"invalid key {key!r}: use a path like svc/leader (no leading or trailing '/', no '//', no spaces)"
        )
    if any(part in (".", "..") for part in key.split("/")):
        raise UsageError(f"invalid key {key!r}: '.' and '..' segments are not allowed (Consul rewrites or rejects them)")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise UsageError(f"invalid key {key!r}: control characters are not allowed")
    return key


@dataclasses.dataclass(frozen=True)
class Config:
    key: str
    command: tuple[str, ...]
    connection: Connection = Connection()
    name: str = dataclasses.field(default_factory=socket.gethostname)
    ttl: float = DEFAULT_TTL
    lock_delay: float = DEFAULT_LOCK_DELAY
    grace: float = DEFAULT_GRACE
    timeout: float | None = None
    exit_on_loss: bool = False
    shell: bool = False
    status_port: int | None = None
    status_bind: str = DEFAULT_STATUS_BIND
    # The command inherits our environment, CONSUL_HTTP_TOKEN included (as with `consul lock`),
    # unless this is set.
    withhold_token: bool = False
    # Put the command in a cgroup of its own where one can be made (Linux): the strongest net
    # for processes that leave its process group. Off: process group and subreaper sweep only.
    cgroup: bool = True
    # exec or signal (see MODE_* above).
    mode: str = DEFAULT_MODE
    elected_signal: int = DEFAULT_ELECTED_SIGNAL
    demoted_signal: int = DEFAULT_DEMOTED_SIGNAL
    # Where the role file lives (None: none in exec mode, default_role_file() in signal mode).
    role_file: str | None = None
    # Shell commands run at each transition (None: none), killed after hook_timeout.
    on_elected: str | None = None
    on_demoted: str | None = None
    hook_timeout: float = DEFAULT_HOOK_TIMEOUT
    # How many candidates may lead at once (see slots.py).
    holders: int = DEFAULT_HOLDERS

    def __post_init__(self) -> None:
        validate_key(self.key)
        if not self.command or not self.command[0]:
            raise UsageError("missing command: put it after --, e.g. consul-elect run --key svc/leader -- mycmd")
        if not self.name.strip():
            raise UsageError("--name must not be empty")
        if not 1 <= self.ttl <= 86400:
            raise UsageError(f"--ttl must be between 1s and 24h (Consul's limits), got {self.ttl:g}s")
        if not 0 <= self.lock_delay <= 60:
            raise UsageError(f"--lock-delay must be between 0s and 60s (Consul's limits), got {self.lock_delay:g}s")
        if self.lease_window <= 0:
            raise UsageError(
                f"no safe lease: min(ttl {self.ttl:g}s, lock-delay {self.lock_delay:g}s) x {1 - CLOCK_RATE_ERROR:g}"
                f" - {SCHEDULING_SLACK:g}s slack = {self.lease_window:.2f}s; raise {self._binding_limit}"
            )
        if self.grace + RENEWS_PER_WINDOW * MIN_RENEW_INTERVAL > self.lease_window:
            raise UsageError(
                f"unsafe --grace {self.grace:g}s: the child must be dead within the lease window "
                f"min(ttl {self.ttl:g}s, lock-delay {self.lock_delay:g}s) x {1 - CLOCK_RATE_ERROR:g} - "
                f"{SCHEDULING_SLACK:g}s = {self.lease_window:.2f}s, and {self.grace:g}s grace + "
                f"{RENEWS_PER_WINDOW} renewal attempts x {MIN_RENEW_INTERVAL:g}s does not fit; use --grace "
                f"{self._max_grace:.2f}s or less, or raise --ttl and --lock-delay to at least "
                f"{self._window_source_for(self.grace):.2f}s"
            )
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError("--timeout must be greater than 0")
        if self.status_port is not None and not 0 <= self.status_port < 65536:
            raise UsageError(f"--port must be between 0 and 65535, got {self.status_port}")
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for flag, signo in (("--elected-signal", self.elected_signal), ("--demoted-signal", self.demoted_signal)):
            if signo in UNUSABLE_ROLE_SIGNALS or signo not in signal.valid_signals():
                raise UsageError(f"{flag} cannot be {_signal_name(signo)}: the command must be able to handle it")
        if self.elected_signal == self.demoted_signal:
            raise UsageError(f"--elected-signal and --demoted-signal are both {_signal_name(self.elected_signal)}: "
                             "the command could not tell becoming leader from standing down")
        if self.role_file is not None and (not self.role_file.strip() or self.role_file.endswith("/")):
            raise UsageError(f"--role-file must name a file, got {self.role_file!r}")
        if not self.hook_timeout > 0:
            raise UsageError(f"--hook-timeout must be greater than 0, got {self.hook_timeout:g}s")
        if not 1 <= self.holders <= MAX_HOLDERS:
            raise UsageError(f"--holders must be between 1 and {MAX_HOLDERS}, got {self.holders}")

    @property
    def signal_mode(self) -> bool:
        return self.mode == MODE_SIGNAL

    @property
    def has_role_file(self) -> bool:
        return self.role_file is not None or self.signal_mode

    def hook_command(self, hook: str) -> str | None:
        return self.on_elected if hook == HOOK_ON_ELECTED else self.on_demoted

    @property
    def role_file_path(self) -> str | None:
        """The role file: --role-file, else (signal mode only) default_role_file(key)."""
        if self.role_file is not None:
            return os.path.abspath(self.role_file)
        return default_role_file(self.key) if self.signal_mode else None

    @property
    def _max_grace(self) -> float:
        return self.lease_window - RENEWS_PER_WINDOW * MIN_RENEW_INTERVAL

    @staticmethod
    def _window_source_for(grace: float) -> float:
        """The min(ttl, lock-delay) whose lease window fits *grace* and the renew attempts."""
        return (grace + RENEWS_PER_WINDOW * MIN_RENEW_INTERVAL + SCHEDULING_SLACK) / (1 - CLOCK_RATE_ERROR)

    @property
    def _binding_limit(self) -> str:
        """The flag that sets the lease window, for advice in error messages."""
        return "--ttl" if self.ttl < self.lock_delay else "--lock-delay"

    @property
    def lease_window(self) -> float:
        """B: how long after a proof of life the child may still run (module docstring)."""
        return min(self.ttl, self.lock_delay) * (1 - CLOCK_RATE_ERROR) - SCHEDULING_SLACK

    @property
    def renew_interval(self) -> float:
        """Spacing of renewals while leading: RENEWS_PER_WINDOW attempts before the graceful stop."""
        return (self.lease_window - self.grace) / RENEWS_PER_WINDOW

    @property
    def follower_renew_interval(self) -> float:
        """A waiting candidate only needs its session to outlive the TTL."""
        return max(self.ttl / 3, self.renew_interval)

    @property
    def ttl_window(self) -> float:
        """How long after a session's last proof of life Consul may expire it (TTL alone, in case
        the servers lost the lock-delay), with the same clock-rate error and slack as B."""
        return self.ttl * (1 - CLOCK_RATE_ERROR) - SCHEDULING_SLACK

    @property
    def watchdog_answer_timeout(self) -> float:
        """The watchdog may legitimately be busy until a lease deadline (a slow exec is bounded by
        it), so silence shorter than that plus a second is no sign of a frozen watchdog."""
        return max(WATCHDOG_ANSWER_TIMEOUT, self.lease_window + 1.0)


def default_role_file(key: str) -> str:
    """$TMPDIR/consul-elect-<key with / as _>.role: one per key on a host (README "Signal mode")."""
    import tempfile  # here, not at the top: `status` never needs it, and it costs a cold start 3 ms

    return os.path.join(tempfile.gettempdir(), f"consul-elect-{key.replace('/', '_')}.role")


def _signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"
