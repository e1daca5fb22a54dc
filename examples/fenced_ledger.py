#!/usr/bin/env python3
"""A ledger that fences stale leaders: the resource a leader-only job writes to (a database, a
queue) in the demo. It refuses an entry whose fencing token is lower than the highest it has
accepted, so a leader frozen past its lease cannot write after its successor has.

    POST /entries  {"token": 57, "writer": "api2", "seq": 3}
                   -> 201 {"accepted": true, "count": 12}  or  409 {"accepted": false, "highest": 61}
    GET  /         -> {"count", "highest_token", "rejected", "last": the last 5 entries}
    GET  /entries  -> every entry, accepted or not, with its time (the last 10 000)

Standard library only. Port: LEDGER_PORT (8090).
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("LEDGER_PORT", "8090"))
KEEP = 10_000  # entries kept for GET /entries: hours of a leader writing twice a second

entries: list[dict] = []
state = {"count": 0, "highest_token": -1, "rejected": 0}
lock = threading.Lock()


def append(entry: dict) -> dict:
    """Accept the entry unless its token is older than one already accepted: one atomic check."""
    with lock:
        accepted = entry["token"] >= state["highest_token"]
        if accepted:
            state["highest_token"] = entry["token"]
            state["count"] += 1
        else:
            state["rejected"] += 1
        entries.append({**entry, "accepted": accepted, "at": time.time()})
        del entries[:-KEEP]
        if accepted:
            return {"accepted": True, "count": state["count"]}
        return {"accepted": False, "highest": state["highest_token"]}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with lock:
            if self.path == "/":
                self.reply(200, {**state, "last": entries[-5:]})
            elif self.path == "/entries":
                self.reply(200, entries)
            else:
                self.reply(404, {"error": "not found"})

    def do_POST(self):
        try:
            entry = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            entry = {"token": int(entry["token"]), "writer": str(entry["writer"]), "seq": int(entry["seq"])}
        except (ValueError, KeyError, TypeError):
            return self.reply(400, {"error": "expected {token, writer, seq}"})
        if self.path != "/entries":
            return self.reply(404, {"error": "not found"})
        answer = append(entry)
        if not answer["accepted"]:
            print(f"ledger: refused {entry['writer']}'s entry {entry['seq']}: token {entry['token']} "
                  f"< {answer['highest']}", flush=True)
        self.reply(201 if answer["accepted"] else 409, answer)

    def reply(self, code: int, doc) -> None:
        body = json.dumps(doc).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # one line per refused entry is the interesting log


if __name__ == "__main__":
    # As a container's PID 1, SIGTERM would otherwise be ignored until Docker's SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print(f"ledger: listening on :{PORT}", flush=True)
    server.serve_forever()
