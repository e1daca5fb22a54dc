#!/usr/bin/env python3
"""The command every chaos candidate runs while it leads: it records its life and writes to the fenced resource.

Usage: recorder.py EVENTS_FILE HOST:PORT

Each line of EVENTS_FILE: "<CLOCK_MONOTONIC s> <pid> <name> <fencing token> <event> [detail]" (the
format of tests/leader_child.py, so harness.read_lives reads it too), appended with O_APPEND in one
write(2), so lines of several children never interleave. Events:

    start MODE [CONSUL_*=...]   first statement after the interpreter is up; MODE is "exec"
    beat                        every BEAT seconds from the main thread: "I am running now"
    write SEQ VERDICT           a write to the fenced resource and its answer (accepted, rejected,
                                error), from a second thread, every WRITE_EVERY seconds
    stop                        on SIGTERM, just before exiting

A signal-mode variant (the command keeps running and is told its role) adds "role leader" /
"role follower" lines; history.py reads leadership from those when the start line says "signal".
"""

import os
import signal
import socket
import sys
import threading
import time

BEAT = 0.02
WRITE_EVERY = 0.05
# A write that takes longer is recorded as an error: a hung resource must not stall the writer forever.
WRITE_TIMEOUT = 0.5

events_path, resource = sys.argv[1], sys.argv[2]
host, _, port = resource.rpartition(":")
fd = os.open(events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
name = os.environ.get("CONSUL_ELECT_NAME", "?")
token = os.environ.get("CONSUL_ELECT_FENCING_TOKEN", "-")
pid = os.getpid()


def record(event: str) -> None:
    os.write(fd, f"{time.clock_gettime(time.CLOCK_MONOTONIC):.6f} {pid} {name} {token} {event}\n".encode())


def on_term(signo, _frame):
    record("stop")
    os._exit(0)


def write_forever() -> None:
    seq = 0
    while True:
        seq += 1
        try:
            with socket.create_connection((host, int(port)), timeout=WRITE_TIMEOUT) as s:
                s.sendall(f"{token} {pid} {seq}\n".encode())
                verdict = s.recv(64).decode().strip() or "error"
        except OSError:
            verdict = "error"
        record(f"write {seq} {verdict}")
        time.sleep(WRITE_EVERY)


signal.signal(signal.SIGTERM, on_term)
record("start exec " + " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                if k.startswith("CONSUL_ELECT_") or k == "CONSUL_LOCK_HELD"))
threading.Thread(target=write_forever, daemon=True).start()
while True:
    record("beat")
    time.sleep(BEAT)
