"""Typed errors raised where problems arise; the CLI alone turns them into messages and exit codes."""


class ElectError(Exception):
    """Base class of every error consul-elect reports to the user."""


class UsageError(ElectError):
    """The user's input cannot work: a bad flag value, an unsafe combination, a bad key."""


class CommandNotFound(ElectError):
    """The command to run does not exist."""


class CommandNotExecutable(ElectError):
    """The command to run exists but cannot be executed."""


class ConsulError(ElectError):
    """Consul answered with an error we cannot treat as a normal election outcome."""


class ConsulUnavailable(ConsulError):
    """Consul could not be reached, timed out, answered garbage, or has no cluster leader: retry.

    *retry_after* is the wait Consul asked for (a 429's Retry-After), when it asked for one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConsulTLSError(ConsulError):
    """TLS cannot work as configured: wrong CA or server name, unreadable certificate files,
    or https spoken to a plain-HTTP port (and the reverse). Retrying will not fix it."""


class PermissionDenied(ConsulError):
    """Consul's ACLs refused a request (HTTP 403)."""


class SessionGone(ConsulError):
    """Our session no longer exists on the servers (destroyed, expired, or its node left)."""


class RejectedByConsul(ConsulError):
    """Consul refused a request as invalid (HTTP 400), e.g. a TTL below the server's minimum."""


class LeadershipTimeout(ElectError):
    """--timeout passed before this candidate became leader."""


class LeadershipLost(ElectError):
    """Leadership was lost and --exit-on-loss asked us to exit."""


class NotAnElectKey(ElectError):
    """The key exists but its value is not a consul-elect identity."""


class HoldersMismatch(NotAnElectKey):
    """Candidates of one key disagree on --holders: together they would allow more holders than either says."""


class InternalError(ElectError):
    """A part of consul-elect failed unexpectedly (a bug): the command was stopped, the process exits."""


class WatchdogFailed(ElectError):
    """The watchdog process died or stopped answering."""
