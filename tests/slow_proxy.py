"""An HTTP proxy in front of a Consul agent that can delay the answers to session renewals.

It records when each renew request arrived (time.monotonic(), the same clock the test child
stamps its records with), so a test can check that the lease counts from send time.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time


class SlowRenewProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.renew_delay = 0.0
        self.renews: list[tuple[float, int]] = []   # (arrival, status returned)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream, timeout=700)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if self.path.startswith("/v1/session/renew/"):
                    proxy.renews.append((arrived, resp.status))
                    if proxy.renew_delay:
                        time.sleep(proxy.renew_delay)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowRenewProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
