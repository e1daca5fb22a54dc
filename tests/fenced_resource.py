"""A resource that rejects writes carrying a fencing token lower than the highest it has seen.

This is how a protected resource defends itself against a leader that was paused past its lease
(a GC pause, a frozen VM): timing alone cannot stop a process that is not running to be stopped.
"""

from __future__ import annotations

import socketserver
import threading
import time


class FencedResource:
    def __init__(self) -> None:
        self.highest = -1
        self.log: list[tuple[float, str, int]] = []  # (time.monotonic(), "accepted"/"rejected", token)
        self._lock = threading.Lock()
        resource = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline().decode().split()
                if not line:
                    return
                token = int(line[0])
                with resource._lock:
                    verdict = "accepted" if token >= resource.highest else "rejected"
                    if verdict == "accepted":
                        resource.highest = token
                    resource.log.append((time.monotonic(), verdict, token))
                self.wfile.write(verdict.encode() + b"\n")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FencedResource:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def entries(self) -> list[tuple[float, str, int]]:
        with self._lock:
            return list(self.log)
