#!/usr/bin/env python3
"""A signal-mode command for the tests: it follows the README's protocol and records what it believes.

    role_child.py EVENTS [--no-ack] [--ignore-demotion] [--exit-after SECONDS CODE]

On either role signal it reads the role file (the authority), starts believing it leads when the
file says leader, stops when it says follower, and then acknowledges the demotion the file names
(`follower <demoted_from>` to the ack file) unless --no-ack. With --ignore-demotion it never stops
believing it leads (a command that ignores the protocol; only the kill stops it). Each line of EVENTS:
"<CLOCK_MONOTONIC seconds> <pid> <name> <event> [detail]", appended with O_APPEND. Events: start
(with its CONSUL_ELECT_* environment), signal <NAME>, lead-start <token>, lead
(every BEAT seconds while it believes it leads), lead-end <token>, ack <token>, stop (SIGTERM),
exit.
"""

import json
import os
import signal
import sys
import time

BEAT = 0.02

events = sys.argv[1]
ack = "--no-ack" not in sys.argv
ignore_demotion = "--ignore-demotion" in sys.argv
exit_after = None
if "--exit-after" in sys.argv:
    i = sys.argv.index("--exit-after")
    exit_after = (float(sys.argv[i + 1]), int(sys.argv[i + 2]))
fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
name = os.environ.get("CONSUL_ELECT_NAME", "?")
role_path = os.environ["CONSUL_ELECT_ROLE_FILE"]
leading = None  # the token of the term it believes it leads, or None
acked = set()
pending = busy = False


def record(event: str) -> None:
    os.write(fd, f"{time.clock_gettime(time.CLOCK_MONOTONIC):.6f} {os.getpid()} {name} {event}\n".encode())


def on_role_signal(signo, _frame):
    """Re-read the role file until it stops changing: a signal that arrives while this handler runs
    (Python may nest handlers) only asks for one more read, so no stale read is acted on."""
    global pending, busy
    record(f"signal {signal.Signals(signo).name}")
    pending = True
    if busy:
        return
    busy = True
    try:
        while pending:
            pending = False
            with open(role_path) as f:
                apply(json.load(f))
    finally:
        busy = False


def apply(doc):
    global leading
    if doc["role"] == "leader" and leading is None:
        leading = doc["fencing_token"]
        record(f"lead-start {leading}")
    elif doc["role"] == "follower":
        if leading is not None and not ignore_demotion:
            record(f"lead-end {leading}")  # leader work stops here, before the acknowledgement
            leading = None
        term = doc.get("demoted_from")
        if ack and term is not None and term not in acked:
            acked.add(term)
            with open(doc["ack_file"], "w") as f:
                f.write(f"follower {term}\n")
            record(f"ack {term}")


def on_term(signo, _frame):
    record("stop")
    os._exit(0)


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGUSR1, on_role_signal)
signal.signal(signal.SIGUSR2, on_role_signal)
record("start " + " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                           if k.startswith("CONSUL_ELECT_") and k != "CONSUL_HTTP_TOKEN"))
# Handlers first, then the file: a role given before the handlers existed is read here.
on_role_signal(signal.SIGCONT, None)
started = time.monotonic()
end = started + 120
while time.monotonic() < end:
    if exit_after is not None and time.monotonic() - started >= exit_after[0]:
        record("exit")
        sys.exit(exit_after[1])
    if leading is not None:
        record(f"lead {leading}")
    time.sleep(BEAT)
