"""consul-elect's own exit codes, in one place.

The command's own status passes through unchanged (128 + N when signal N killed it); these are
chosen from the sysexits range and the conventions of timeout(1) and the shell so they rarely
collide with a command's codes.
"""

from .errors import (
    CommandNotExecutable, CommandNotFound, ConsulTLSError, ConsulUnavailable, ElectError, LeadershipLost,
    LeadershipTimeout, NotAnElectKey, PermissionDenied, RejectedByConsul, UsageError,
)

OK = 0
USAGE = 2                  # bad flag, value or combination (also: no command given)
NO_LEADER = 3              # status: nobody holds the key
NOT_AN_ELECT_KEY = 65      # the key's value is not a consul-elect identity
CONSUL_UNAVAILABLE = 69    # Consul unreachable (past --timeout, or at start-up)
SOFTWARE = 70              # internal failure (the watchdog died or froze, a thread failed)
LOST_LEADERSHIP = 75       # --exit-on-loss and leadership was lost (the command was stopped)
PERMISSION_DENIED = 77     # Consul ACL refused a request (HTTP 403)
CONFIG = 78                # TLS cannot work as configured (wrong CA, server name, cert files, http/https)
TIMEOUT = 124              # --timeout passed before becoming leader (as timeout(1))
NOT_EXECUTABLE = 126       # the command exists but cannot be executed (as the shell)
NOT_FOUND = 127            # the command does not exist (as the shell)
INTERRUPTED = 130          # Ctrl-C at a prompt-like moment (status --watch ends with 0 instead)

# Most specific first: the first class the error is an instance of gives its code.
_BY_ERROR = [
    (UsageError, USAGE),
    (RejectedByConsul, USAGE),
    (CommandNotFound, NOT_FOUND),
    (CommandNotExecutable, NOT_EXECUTABLE),
    (PermissionDenied, PERMISSION_DENIED),
    (ConsulTLSError, CONFIG),
    (ConsulUnavailable, CONSUL_UNAVAILABLE),
    (LeadershipTimeout, TIMEOUT),
    (LeadershipLost, LOST_LEADERSHIP),
    (NotAnElectKey, NOT_AN_ELECT_KEY),
    (ElectError, SOFTWARE),
]


def for_error(error: ElectError) -> int:
    return next(code for cls, code in _BY_ERROR if isinstance(error, cls))
