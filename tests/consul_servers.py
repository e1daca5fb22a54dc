"""Real Consul processes for tests: a single dev agent and a 3-server cluster.

No mocks. Every process binds loopback addresses only, on private free ports,
is tracked in ``TRACKED`` (so a test session can always reap it) and, on Linux,
dies with the Python process that started it (PR_SET_PDEATHSIG). Every wait is
bounded in time. HTTP goes through plain ``urllib`` (never through the package
under test, never through a proxy).

Timings measured on the 2-core dev box (Consul 1.8.7, Python 3.11, 2026-11):
  * dev agent ``start()`` (spawn -> leader, node in catalog, KV write OK):
    0.22 s, with or without ACLs; ``restart()`` ~0.7 s (SIGTERM shutdown ~0.5 s).
  * 3-server cluster ``start()`` (spawn -> same leader on all 3, 3 Raft peers,
    3 nodes in the catalog, KV write OK): 1.2-2.0 s (-retry-interval=1s matters:
    the default 30 s would stall a server that starts before its peers).
  * re-election after SIGKILL of the Raft leader (kill -> both survivors agree
    on a new leader): 2.3-3.7 s over 8 runs, also ~3.6 s after SIGSTOP of the
    leader. With raft_multiplier = 1 the heartbeat/election timeouts are 1 s
    (randomised up to 2 s), and the first candidate is often refused ("rejecting
    vote request since we have a leader") by the survivor that has not timed out
    yet, so a second election round is common. Use timeouts >= 10 s.
  * ``start_server(i)`` of a killed server until it follows the leader and has
    applied a fresh write: 0.1-0.25 s.
  * ``stop()`` of the whole cluster (SIGTERM in parallel): ~0.5 s.

Consul 1.8.7 behaviour these helpers account for (or tests should know about):
  * A leader exists before the node is in the catalog: session create then
    fails with 500 "Missing node registration". ``start()`` waits for the catalog.
  * A follower reports the leader on its first heartbeat, before it has applied
    the entries it missed; ``start_server()`` waits on a fresh write instead.
  * KV PUT answers ``true\n`` / ``false\n`` (with a newline).
  * ACL ``default_policy = "deny"``: an anonymous KV write *and* point read get
    403. Creating a session needs ``session_prefix "" { policy = "write" }`` (or
    ``session "<node>"``) besides the key rules. The ``acl { tokens { master } }``
    block works on 1.8.7 (``master`` was renamed only in 1.11); we also make it
    the agent token so the agent's own catalog sync is not blocked.
  * ``-dev`` accepts ``-data-dir`` but keeps Raft/KV in memory (only node-id
    is written), so a dev agent restart has an empty KV. ``-dev`` also listens
    on gRPC 8502 unless ``-grpc-port=-1``.
  * SIGTERM makes consul exit with status 1 (not 0); servers do not leave the
    Raft configuration on SIGTERM (leave_on_terminate defaults to false).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

__all__ = [
    "ConsulError",
    "ConsulAgent",
    "ConsulCluster",
    "TRACKED",
    "free_port",
    "http_request",
    "kill_all_tracked",
    "wait_until",
]

#: Every consul process ever started by this module (subprocess.Popen objects).
TRACKED: list[subprocess.Popen] = []

# No proxy, ever: a proxy from the environment must not see 127.0.0.x traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ConsulError(RuntimeError):
    """A Consul process did not come up (or behave) within its bounded wait."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free for both TCP and UDP on ``host`` (a loopback address).

    Bound to port 0 and released, so another process could still grab it before
    Consul binds it; ``ConsulAgent.start()`` retries with fresh ports if that happens.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            try:  # serf and DNS also listen on UDP with the same number
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((host, port))
            except OSError:
                continue
            return port
    raise ConsulError(f"no free TCP+UDP port found on {host}")


def free_ports(host: str, names) -> dict:
    """One free port per name, all different: a port just released can be handed out again by
    the next bind to port 0 (CI once gave the same one to HTTP and DNS: the agent refused)."""
    ports: dict = {}
    for name in names:
        for _ in range(50):
            port = free_port(host)
            if port not in ports.values():
                ports[name] = port
                break
        else:
            raise ConsulError(f"no distinct free port found on {host}")
    return ports


def http_request(method, url, body=None, token=None, timeout=2.0):
    """One HTTP call. Returns ``(status, body_bytes)``; HTTP errors are returned, not raised.

    ``body`` may be bytes, str, or anything JSON-serialisable. Connection errors
    (refused, timeout) raise ``OSError`` (``urllib.error.URLError`` is one).
    """
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("X-Consul-Token", token)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def wait_until(predicate, timeout, interval=0.1, what="condition"):
    """Call ``predicate()`` until it returns something truthy (returned) or ``timeout`` s pass.

    Exceptions from the predicate count as "not yet". Raises ``ConsulError`` on timeout.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - "not ready yet"
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise ConsulError(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


def kill_all_tracked() -> list[int]:
    """SIGKILL every tracked consul process still alive; returns their pids."""
    killed = []
    for proc in TRACKED:
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            killed.append(proc.pid)
    return killed


def _die_with_parent():  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the session safety net still reaps
        pass


def _log_tail(path, lines=40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(text.splitlines()[-lines:])


class _Process:
    """One consul process: spawn, SIGTERM/SIGKILL/SIGSTOP/SIGCONT, log file."""

    def __init__(self, consul_bin, name, log_path):
        self.consul_bin = consul_bin
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def spawn(self, args):
        if self.alive:
            raise ConsulError(f"{self.name} is already running (pid {self.proc.pid})")
        argv = [self.consul_bin, "agent", *args]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        TRACKED.append(self.proc)
        self.frozen = False

    def signal(self, sig):
        if self.alive:
            self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        """SIGTERM (and SIGCONT, in case it is frozen), wait, SIGKILL fallback. Idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.send_signal(signal.SIGCONT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.frozen = False

    def kill(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL can't be ignored
                pass
        self.frozen = False

    def freeze(self):
        if not self.alive:
            raise ConsulError(f"{self.name} is not running")
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self):
        if self.alive:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def log_tail(self, lines=40) -> str:
        return _log_tail(self.log_path, lines)

    def addr_in_use(self) -> bool:
        return "address already in use" in self.log_tail(60)


def _hcl(*parts) -> list[str]:
    return [f"-hcl={p}" for p in parts]


def _leader_of(base_url, timeout=1.0) -> str:
    """Raft leader as seen by the agent at base_url: "ip:server_port", or "" if none."""
    status, body = http_request("GET", base_url + "/v1/status/leader", timeout=timeout)
    if status != 200:
        return ""
    return json.loads(body or b'""') or ""


def _kv_put_ok(base_url, token=None, timeout=2.0) -> bool:
    key = f"consul-elect-tests/ready/{uuid.uuid4().hex}"
    status, body = http_request("PUT", f"{base_url}/v1/kv/{key}", b"ok", token=token, timeout=timeout)
    if status != 200 or body.strip() != b"true":
        return False
    http_request("DELETE", f"{base_url}/v1/kv/{key}", token=token, timeout=timeout)
    return True


# --------------------------------------------------------------------------- dev agent


class ConsulAgent:
    """A single ``consul agent -dev`` on one loopback address.

    Dev mode keeps Raft/KV state in memory: ``restart()`` gives an empty store
    (same node name, same ports). With ``acl=True``: ACLs on, ``default_policy =
    "deny"``, token persistence off, and ``.master_token`` is also the agent token.
    """

    def __init__(self, consul_bin, base_dir=None, host="127.0.0.1", acl=False,
                 master_token=None, node_name=None, start_timeout=20.0, session_ttl_min="1s", tls=None,
                 extra_hcl=()):
        if tls not in (None, "tls", "mtls"):
            raise ValueError(f"tls must be None, 'tls' or 'mtls', not {tls!r}")
        self.consul_bin = consul_bin
        self.tls = tls
        self.tls_dir = self.ca_file = self.other_ca_file = None   # set by _make_certificates()
        self.server_cert = self.server_key = self.client_cert = self.client_key = None
        self.session_ttl_min = session_ttl_min
        self.extra_hcl = tuple(extra_hcl)
        self.host = host
        self.acl = acl
        self.master_token = (master_token or str(uuid.uuid4())) if acl else None
        self.node_name = node_name or f"consul-elect-test-{uuid.uuid4().hex[:8]}"
        self.start_timeout = start_timeout
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="consul-elect-agent-")
        self.data_dir = os.path.join(self.base_dir, "data")
        self.log_path = os.path.join(self.base_dir, "consul.log")
        self._proc = _Process(consul_bin, self.node_name, self.log_path)
        self._ports_fixed = False  # once started, restarts must keep the same ports
        self._pick_ports()

    def _pick_ports(self):
        names = ("http", "dns", "serf_lan", "serf_wan", "server") + (("https",) if self.tls else ())
        self.ports = free_ports(self.host, names)

    # --- TLS (tls="tls": an HTTPS port beside the plain one; "mtls": it also demands client certificates)
    def _make_certificates(self):
        """A CA, a server certificate and a client certificate, made offline by `consul tls`.

        Files: ``ca_file``, ``server_cert``/``server_key`` (names server.dc1.consul, localhost,
        127.0.0.1), ``client_cert``/``client_key``; and ``other_ca_file``, a second CA that
        signed nothing here (for wrong-CA tests). The plain HTTP port stays open for the
        fixtures' own readiness checks and helpers; only ``https_addr`` speaks TLS.
        """
        self.tls_dir = os.path.join(self.base_dir, "tls")
        other_dir = os.path.join(self.tls_dir, "other-ca")
        os.makedirs(other_dir, exist_ok=True)
        for cwd, args in ((self.tls_dir, ["ca", "create"]), (other_dir, ["ca", "create"]),
                          (self.tls_dir, ["cert", "create", "-server"]),
                          (self.tls_dir, ["cert", "create", "-client"])):
            done = subprocess.run([self.consul_bin, "tls", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=30)
            if done.returncode != 0:
                raise ConsulError(f"consul tls {' '.join(args)} failed: {done.stdout}{done.stderr}")
        d = self.tls_dir
        self.ca_file = os.path.join(d, "consul-agent-ca.pem")
        self.other_ca_file = os.path.join(other_dir, "consul-agent-ca.pem")
        self.server_cert = os.path.join(d, "dc1-server-consul-0.pem")
        self.server_key = os.path.join(d, "dc1-server-consul-0-key.pem")
        self.client_cert = os.path.join(d, "dc1-client-consul-0.pem")
        self.client_key = os.path.join(d, "dc1-client-consul-0-key.pem")
        for path in (self.ca_file, self.other_ca_file, self.server_cert, self.server_key, self.client_cert,
                     self.client_key):
            if not os.path.exists(path):
                raise ConsulError(f"consul tls did not write {path}")

    @property
    def https_addr(self) -> str:
        if not self.tls:
            raise ConsulError("https_addr needs ConsulAgent(tls='tls' or 'mtls')")
        return f"{self.host}:{self.ports['https']}"

    # --- addresses
    @property
    def http_addr(self) -> str:
        return f"{self.host}:{self.ports['http']}"

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    @property
    def rpc_addr(self) -> str:
        return f"{self.host}:{self.ports['server']}"

    @property
    def pid(self):
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.alive

    @property
    def frozen(self) -> bool:
        return self._proc.frozen

    def _args(self):
        p, h = self.ports, self.host
        args = [
            "-dev", f"-node={self.node_name}", f"-data-dir={self.data_dir}",
            f"-bind={h}", f"-client={h}", f"-advertise={h}",
            f"-http-port={p['http']}", f"-dns-port={p['dns']}",
            f"-serf-lan-port={p['serf_lan']}", f"-serf-wan-port={p['serf_wan']}",
            f"-server-port={p['server']}", "-grpc-port=-1",
            *_hcl(f'session_ttl_min = "{self.session_ttl_min}"', "disable_update_check = true", *self.extra_hcl),
        ]
        if self.acl:
            t = self.master_token
            args += _hcl(
                'acl { enabled = true default_policy = "deny" down_policy = "extend-cache" '
                f'enable_token_persistence = false tokens {{ master = "{t}" agent = "{t}" }} }}'
            )
        if self.tls:
            args += _hcl(
                f'ports {{ https = {p["https"]} }}', f'ca_file = "{self.ca_file}"',
                f'cert_file = "{self.server_cert}"', f'key_file = "{self.server_key}"',
                f'verify_incoming_https = {"true" if self.tls == "mtls" else "false"}',
                "verify_incoming_rpc = false", "verify_outgoing = false",
            )
        return args

    # --- lifecycle
    def start(self):
        """Start and wait (bounded) until there is a leader and a KV PUT succeeds."""
        os.makedirs(self.data_dir, exist_ok=True)
        if self.tls and self.ca_file is None:
            self._make_certificates()
        for attempt in range(3):
            self._proc.spawn(self._args())
            try:
                wait_until(self._ready, self.start_timeout, what=f"dev agent {self.http_addr}")
            except ConsulError as e:
                died = not self._proc.alive
                self._proc.kill()
                if died and not self._ports_fixed and self._proc.addr_in_use() and attempt < 2:
                    self._pick_ports()  # lost a race for a port: try fresh ones
                    continue
                raise ConsulError(f"{e}\n--- {self.log_path} (tail) ---\n{self._proc.log_tail()}") from None
            self._ports_fixed = True
            return self

    def _ready(self):
        if not self._proc.alive:
            raise ConsulError("consul exited")
        if not _leader_of(self.url):
            return False
        # The leader registers the node in the catalog a moment after the election;
        # until then, session create fails with 500 "Missing node registration".
        status, body = self.request("GET", f"/v1/catalog/node/{self.node_name}",
                                    token=self.master_token, timeout=2.0)
        if status != 200 or not json.loads(body or b"null"):
            return False
        return _kv_put_ok(self.url, self.master_token)

    def stop(self, timeout=10.0):
        """SIGTERM, wait, SIGKILL fallback. Idempotent. Removes the temp dir if we created it."""
        self._proc.stop(timeout)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def kill(self):
        """SIGKILL, no goodbye."""
        self._proc.kill()

    def freeze(self):
        """SIGSTOP: the process stays, answers nothing (HTTP calls to it time out)."""
        self._proc.freeze()

    def thaw(self):
        """SIGCONT."""
        self._proc.thaw()

    def restart(self):
        """Stop (if running) and start again on the same ports; dev-mode state is lost."""
        self._proc.stop()
        return self.start()

    def log_tail(self, lines=40) -> str:
        return self._proc.log_tail(lines)

    # --- HTTP conveniences
    def request(self, method, path, body=None, token=None, timeout=5.0):
        """``(status, body_bytes)`` of ``method`` on ``self.url + path``."""
        return http_request(method, self.url + path, body, token=token, timeout=timeout)

    def create_token(self, rules_hcl, description="consul-elect test token") -> str:
        """ACL agents only: a new policy with ``rules_hcl`` and a token bound to it; its SecretID."""
        if not self.acl:
            raise ConsulError("create_token() needs ConsulAgent(acl=True)")
        name = f"test-{uuid.uuid4().hex[:12]}"
        status, body = self.request("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules_hcl},
                                    token=self.master_token)
        if status != 200:
            raise ConsulError(f"policy create failed: {status} {body!r}")
        policy_id = json.loads(body)["ID"]
        status, body = self.request("PUT", "/v1/acl/token",
                                    {"Description": description, "Policies": [{"ID": policy_id}]},
                                    token=self.master_token)
        if status != 200:
            raise ConsulError(f"token create failed: {status} {body!r}")
        return json.loads(body)["SecretID"]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<ConsulAgent {self.node_name} {self.http_addr} pid={self.pid} acl={self.acl} tls={self.tls}>"


# --------------------------------------------------------------------------- 3-server cluster


class _Server:
    """Bookkeeping for one cluster member."""

    def __init__(self, consul_bin, index, host, base_dir, node_name):
        self.index = index
        self.host = host
        self.node_name = node_name
        self.dir = os.path.join(base_dir, f"server{index}")
        self.data_dir = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "consul.log")
        os.makedirs(self.data_dir, exist_ok=True)
        self.ports = free_ports(host, ("http", "dns", "serf_lan", "serf_wan", "server"))
        self.proc = _Process(consul_bin, node_name, self.log_path)

    @property
    def url(self):
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def rpc_addr(self):
        return f"{self.host}:{self.ports['server']}"

    @property
    def serf_lan_addr(self):
        return f"{self.host}:{self.ports['serf_lan']}"

    @property
    def answering(self):
        return self.proc.alive and not self.proc.frozen


class ConsulCluster:
    """Three Consul servers (``-server -bootstrap-expect=3``, not dev mode), one per loopback address.

    Servers are indexed 0..2 (127.0.0.2, .3, .4 by default). Each has its own
    data dir, so ``start_server(i)`` after ``stop_server(i)``/``kill_server(i)``
    rejoins with the same node ID and Raft state. ``autopilot.cleanup_dead_servers``
    is off so a dead server stays a voter until it comes back (as after a crash).
    """

    def __init__(self, consul_bin, base_dir=None, hosts=("127.0.0.2", "127.0.0.3", "127.0.0.4"),
                 start_timeout=30.0):
        self.consul_bin = consul_bin
        self.start_timeout = start_timeout
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="consul-elect-cluster-")
        tag = uuid.uuid4().hex[:6]
        self._barrier_key = None
        self.servers = [_Server(consul_bin, i, h, self.base_dir, f"consul-elect-srv{i}-{tag}")
                        for i, h in enumerate(hosts)]

    def __len__(self):
        return len(self.servers)

    # --- addresses
    def http_addr(self, i) -> str:
        s = self.servers[i]
        return f"{s.host}:{s.ports['http']}"

    def url(self, i) -> str:
        return self.servers[i].url

    def rpc_addr(self, i) -> str:
        return self.servers[i].rpc_addr

    @property
    def http_addrs(self) -> list[str]:
        return [self.http_addr(i) for i in range(len(self.servers))]

    def pid(self, i):
        return self.servers[i].proc.pid

    def is_running(self, i) -> bool:
        return self.servers[i].proc.alive

    def _args(self, s: _Server):
        p, h = s.ports, s.host
        args = [
            "-server", f"-bootstrap-expect={len(self.servers)}",
            f"-node={s.node_name}", f"-data-dir={s.data_dir}", "-disable-host-node-id",
            f"-bind={h}", f"-client={h}", f"-advertise={h}",
            f"-http-port={p['http']}", f"-dns-port={p['dns']}",
            f"-serf-lan-port={p['serf_lan']}", f"-serf-wan-port={p['serf_wan']}",
            f"-server-port={p['server']}", "-grpc-port=-1",
            "-log-level=info", "-retry-interval=1s",
            *_hcl('session_ttl_min = "1s"', "disable_update_check = true",
                  "performance { raft_multiplier = 1 }",
                  "autopilot { cleanup_dead_servers = false }"),
        ]
        for other in self.servers:
            if other is not s:
                args.append(f"-retry-join={other.serf_lan_addr}")
        return args

    # --- lifecycle
    def start(self):
        """Start all servers; wait (bounded) for one leader seen by all, 3 Raft peers, and a KV write."""
        try:
            for s in self.servers:
                if not s.proc.alive:
                    s.proc.spawn(self._args(s))
            wait_until(self._formed, self.start_timeout, what="cluster formation")
        except ConsulError as e:
            self.stop()
            raise ConsulError(f"{e}\n{self.logs_tail()}") from None
        return self

    def _formed(self):
        for s in self.servers:
            if not s.proc.alive:
                raise ConsulError(f"server {s.index} exited")
        leader = self.leader_index()
        if leader is None:
            return False
        for s in self.servers:
            status, body = http_request("GET", s.url + "/v1/status/peers", timeout=1.0)
            if status != 200 or len(json.loads(body)) != len(self.servers):
                return False
        # All nodes in the catalog (else session create there: 500 "Missing node registration").
        status, body = http_request("GET", self.url(leader) + "/v1/catalog/nodes", timeout=1.0)
        names = {n["Node"] for n in json.loads(body)} if status == 200 else set()
        if not names >= {s.node_name for s in self.servers}:
            return False
        return _kv_put_ok(self.servers[leader].url)

    def stop(self, timeout=10.0):
        """Stop every server (SIGTERM, SIGKILL fallback). Idempotent."""
        for s in self.servers:  # SIGTERM all first so they shut down in parallel
            if s.proc.alive:
                s.proc.signal(signal.SIGTERM)
                s.proc.signal(signal.SIGCONT)
        for s in self.servers:
            s.proc.stop(timeout)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def stop_server(self, i, timeout=10.0):
        """SIGTERM server i (SIGKILL fallback). It does not leave the Raft configuration."""
        self.servers[i].proc.stop(timeout)

    def kill_server(self, i):
        """SIGKILL server i."""
        self.servers[i].proc.kill()

    def freeze_server(self, i):
        """SIGSTOP server i."""
        self.servers[i].proc.freeze()

    def thaw_server(self, i):
        """SIGCONT server i."""
        self.servers[i].proc.thaw()

    def start_server(self, i, wait=True, timeout=20.0):
        """(Re)start server i with its data dir; by default wait until it follows the cluster leader."""
        s = self.servers[i]
        s.proc.spawn(self._args(s))
        self._barrier_key = None
        if wait:
            try:
                wait_until(lambda: self._rejoined(i), timeout, what=f"server {i} to rejoin")
            except ConsulError as e:
                raise ConsulError(f"{e}\n{self.logs_tail()}") from None

    def _rejoined(self, i):
        """Server i follows the agreed leader and has applied a write made through it.

        Following the leader is not enough: its first heartbeat arrives before the
        missed log entries are applied, so a stale read there could still miss them.
        """
        if not self.servers[i].proc.alive:
            raise ConsulError(f"server {i} exited")
        leader = self.leader_index()
        if leader is None or _leader_of(self.url(i)) != self.rpc_addr(leader):
            return False
        if self._barrier_key is None:
            self._barrier_key = f"consul-elect-tests/rejoin/{uuid.uuid4().hex}"
            if not self.kv_put(self._barrier_key, b"1", i=leader, timeout=2.0):
                self._barrier_key = None
                return False
        status, _ = http_request("GET", f"{self.url(i)}/v1/kv/{self._barrier_key}?stale", timeout=1.0)
        return status == 200

    # --- leadership
    def leader_index(self, timeout=1.0):
        """Index of the Raft leader, if every running, unfrozen server agrees on one; else None.

        Each server is asked ``GET /v1/status/leader``; the answer ("ip:server_port")
        is matched against the servers' RPC addresses. A server that does not answer
        within ``timeout`` makes the result None.
        """
        seen = set()
        for s in self.servers:
            if not s.answering:
                continue
            try:
                seen.add(_leader_of(s.url, timeout=timeout))
            except OSError:
                return None
        if len(seen) != 1:
            return None
        addr = seen.pop()
        for s in self.servers:
            if s.rpc_addr == addr:
                return s.index
        return None

    def wait_for_leader(self, exclude=(), timeout=15.0):
        """Wait (bounded) until all running, unfrozen servers agree on a leader not in ``exclude``."""
        exclude = {exclude} if isinstance(exclude, int) else set(exclude)

        def check():
            i = self.leader_index()
            return (i,) if i is not None and i not in exclude else None

        return wait_until(check, timeout, what=f"a leader not in {sorted(exclude)}")[0]

    def kv_put(self, key, value, i=None, timeout=5.0) -> bool:
        """PUT a key through server i (default: the current leader). True if Consul said true."""
        if i is None:
            i = self.wait_for_leader(timeout=timeout)
        status, body = http_request("PUT", f"{self.url(i)}/v1/kv/{key}", value, timeout=timeout)
        return status == 200 and body.strip() == b"true"

    def logs_tail(self, lines=25) -> str:
        return "\n".join(f"--- server {s.index} {s.log_path} (tail) ---\n{s.proc.log_tail(lines)}"
                         for s in self.servers)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<ConsulCluster {self.http_addrs}>"
