"""One table of the signals consul-elect handles; every other set of signals is derived from it.

The elector and its watchdog share a process group (a terminal's Ctrl-C, or `kill -- -PGID`,
reaches both), and the command runs in a group of its own. So each signal has one job:
- SHUTDOWN: the elector stops the command in order, then leaves; the watchdog ignores it (the
  elector's orderly stop needs the watchdog alive).
- FORWARD: the elector passes it to the command's group; the watchdog ignores it too, since a
  default action of "terminate" would take the watchdog (and the lease promise) down.
"""

import signal

SHUTDOWN = "shutdown"
FORWARD = "forward"

_TABLE = {
    "SIGTERM": SHUTDOWN,
    "SIGINT": SHUTDOWN,
    "SIGHUP": FORWARD,
    "SIGQUIT": FORWARD,
    "SIGUSR1": FORWARD,
    "SIGUSR2": FORWARD,
    "SIGWINCH": FORWARD,
    "SIGCONT": FORWARD,
    "SIGALRM": FORWARD,
    "SIGPWR": FORWARD,
    "SIGURG": FORWARD,
    "SIGTSTP": FORWARD,
    "SIGTTIN": FORWARD,
    "SIGTTOU": FORWARD,
}
# Only the signals this platform has (SIGPWR is Linux-only).
_KNOWN = {getattr(signal, name): job for name, job in _TABLE.items() if hasattr(signal, name)}

SHUTDOWN_SIGNALS = frozenset(s for s, job in _KNOWN.items() if job == SHUTDOWN)
FORWARDED_SIGNALS = frozenset(s for s, job in _KNOWN.items() if job == FORWARD)
# Everything the elector handles; SIGCONT is harmless to the watchdog but ignoring it costs nothing.
WATCHDOG_IGNORED = SHUTDOWN_SIGNALS | FORWARDED_SIGNALS
# Dispositions the command must get back at exec: the watchdog's ignored set, plus what the
# Python runtime itself changed (SIGPIPE and SIGXFSZ ignored, SIGCHLD handled). An ignored
# signal stays ignored across exec.
CHILD_RESET = WATCHDOG_IGNORED | {signal.SIGPIPE, signal.SIGCHLD} | (
    {signal.SIGXFSZ} if hasattr(signal, "SIGXFSZ") else set())


def name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"
