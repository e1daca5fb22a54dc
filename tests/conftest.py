"""Fixtures that run real Consul processes (see tests/consul_servers.py)."""

import os
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from consul_servers import ConsulAgent, ConsulCluster, kill_all_tracked  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def consul_bin():
    """Path of the consul binary: $CONSUL_BIN, else whatever scripts/fetch-consul.sh prints."""
    path = os.environ.get("CONSUL_BIN", "")
    if not path:
        try:
            out = subprocess.run([str(REPO / "scripts" / "fetch-consul.sh")], capture_output=True,
                                 text=True, timeout=300)
            path = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.fail(f"scripts/fetch-consul.sh failed: {e}", pytrace=False)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"no usable consul binary (CONSUL_BIN={os.environ.get('CONSUL_BIN')!r}, "
                    f"found {path!r}); set CONSUL_BIN or run `make consul`", pytrace=False)
    return path


@pytest.fixture(scope="session", autouse=True)
def _reap_consul_processes():
    """Safety net: at session end, SIGKILL any consul these fixtures started that is still alive."""
    yield
    leftover = kill_all_tracked()
    if leftover:
        warnings.warn(f"killed leftover consul processes: {leftover}")


@pytest.fixture
def consul_agent(consul_bin, tmp_path):
    """A fresh `consul agent -dev` on 127.0.0.1 (session_ttl_min 1s), stopped after the test."""
    agent = ConsulAgent(consul_bin, base_dir=str(tmp_path / "consul-agent"))
    try:
        yield agent.start()
    finally:
        agent.stop()


@pytest.fixture
def acl_agent(consul_bin, tmp_path):
    """Like consul_agent, with ACLs on (default deny); `.master_token`, `.create_token(rules)`."""
    agent = ConsulAgent(consul_bin, base_dir=str(tmp_path / "consul-acl-agent"), acl=True)
    try:
        yield agent.start()
    finally:
        agent.stop()


@pytest.fixture
def consul_cluster(consul_bin, tmp_path):
    """A fresh 3-server cluster on 127.0.0.2-4 with an elected leader, stopped after the test."""
    cluster = ConsulCluster(consul_bin, base_dir=str(tmp_path / "consul-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def candidates(tmp_path):
    """Factory for consul-elect candidates; every one (and its tree) is killed after the test."""
    from harness import Candidate

    made = []

    def make(http_addr, key, name, command=None, options=None, env=None, start=True):
        events = tmp_path / "events.log"
        cmd = command if command is not None else [sys.executable, str(Path(__file__).parent / "leader_child.py"),
                                                   str(events)]
        c = Candidate(http_addr, key, name, tmp_path, cmd, options, env)
        made.append(c)
        return c.start() if start else c

    make.events = tmp_path / "events.log"
    try:
        yield make
    finally:
        for c in made:
            c.cleanup()


@pytest.fixture
def tls_agent(consul_bin, tmp_path):
    """Like consul_agent, plus an HTTPS port demanding client certificates (mTLS), stopped after the test.

    `.https_addr`; certificates made offline by `consul tls`: `.ca_file`, `.client_cert`,
    `.client_key`, `.server_cert`, and `.other_ca_file` (a CA that signed nothing here).
    The server certificate names server.dc1.consul, localhost and 127.0.0.1.
    """
    agent = ConsulAgent(consul_bin, base_dir=str(tmp_path / "consul-tls-agent"), tls="mtls")
    try:
        yield agent.start()
    finally:
        agent.stop()


@pytest.fixture
def closing_port():
    """A loopback TCP server that accepts and closes at once: a port that is not HTTP."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                sock, _ = server.accept()
            except OSError:
                return
            sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=2)
