#!/usr/bin/env python3
"""A small HTTP API with a leader-only job, run under consul-elect:

    consul-elect run --key demo/leader -- python3 demo_api.py

consul-elect starts it only in the replica that leads, and stops it when that replica stops leading.

GET /  says who it is, whether it still leads (its lease deadline is ahead), its fencing token
       and how its job is going.
Job:   every 0.5 s it appends an entry carrying its fencing token to the ledger (fenced_ledger.py),
       which refuses tokens older than one it has accepted. The job does not consult its lease
       before writing: the ledger's fence is what keeps a leader frozen past its lease (a paused
       container, a long GC pause) from writing after its successor, and the demo shows it doing so.

On SIGTERM it finishes the entry in flight, says so and exits 143 (128 + SIGTERM, as a shell
reports a job stopped that way), which consul-elect passes on as its own exit status.

Settings: DEMO_API_PORT (8000), DEMO_LEDGER_URL (http://127.0.0.1:8090); the rest comes from
consul-elect: CONSUL_ELECT_NAME, CONSUL_ELECT_FENCING_TOKEN, CONSUL_ELECT_LEASE_FILE (and _CLOCK).
"""

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("CONSUL_ELECT_NAME", "?")
TOKEN = int(os.environ.get("CONSUL_ELECT_FENCING_TOKEN", "0"))
LEDGER = os.environ.get("DEMO_LEDGER_URL", "http://127.0.0.1:8090").rstrip("/") + "/entries"
PORT = int(os.environ.get("DEMO_API_PORT", "8000"))
WRITE_EVERY = 0.5  # seconds between two ledger entries: a visible, steady leader-only job
EXIT_ON_SIGTERM = 143

progress = {"accepted": 0, "rejected": 0, "ledger_count": None}
stopping = threading.Event()


def say(text: str) -> None:
    print(f"demo-api {NAME}: {text}", flush=True)


def lease_left() -> float | None:
    """Seconds until our lease ends, from the deadline consul-elect rewrites at each renewal."""
    clock = getattr(time, os.environ.get("CONSUL_ELECT_LEASE_CLOCK", ""), time.CLOCK_MONOTONIC)
    try:
        with open(os.environ["CONSUL_ELECT_LEASE_FILE"]) as f:
            return float(f.read()) - time.clock_gettime(clock)
    except (KeyError, OSError, ValueError):
        return None


def append_entry(seq: int) -> None:
    body = json.dumps({"token": TOKEN, "writer": NAME, "seq": seq}).encode()
    request = urllib.request.Request(LEDGER, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            answer = json.load(r)
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise
        answer = json.load(e)
    if answer["accepted"]:
        progress["accepted"] += 1
        progress["ledger_count"] = answer["count"]
    else:
        progress["rejected"] += 1
        say(f"entry {seq} refused by the ledger: our token {TOKEN} < {answer['highest']} (a newer leader wrote)")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/":
            return self.reply(404, {"error": "not found"})
        left = lease_left()
        self.reply(200, {"name": NAME, "leader": left is not None and left > 0, "fencing_token": TOKEN,
                         "lease_left": None if left is None else round(left, 3), **progress})

    def reply(self, code: int, doc: dict) -> None:
        body = json.dumps(doc).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    say(f"leading with fencing token {TOKEN}; serving on :{PORT}; appending to {LEDGER} every {WRITE_EVERY} s")
    seq = 0
    while not stopping.is_set():
        seq += 1
        try:
            append_entry(seq)
        except (OSError, ValueError, KeyError) as e:
            say(f"entry {seq} not written: {e}")
        stopping.wait(WRITE_EVERY)
    say(f"SIGTERM: stopped after {progress['accepted']} accepted entries; exit {EXIT_ON_SIGTERM}")
    return EXIT_ON_SIGTERM


if __name__ == "__main__":
    sys.exit(main())
