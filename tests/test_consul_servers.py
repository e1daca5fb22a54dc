"""The real-Consul fixtures themselves work (fast: ~10 s in all)."""

import json
import socket
import time

import pytest

from consul_servers import ConsulError, http_request, wait_until


def _json(resp):
    status, body = resp
    assert status == 200, (status, body)
    return json.loads(body)


def test_dev_agent_accepts_1s_session_and_kv_acquire(consul_agent):
    sid = _json(consul_agent.request("PUT", "/v1/session/create", {"TTL": "1s", "LockDelay": "0s"}))["ID"]
    info = _json(consul_agent.request("GET", f"/v1/session/info/{sid}"))
    assert info[0]["TTL"] == "1s"

    assert consul_agent.request("PUT", f"/v1/kv/elect/lock?acquire={sid}", b"me") == (200, b"true\n")
    other = _json(consul_agent.request("PUT", "/v1/session/create", {"TTL": "10s", "LockDelay": "0s"}))["ID"]
    assert consul_agent.request("PUT", f"/v1/kv/elect/lock?acquire={other}", b"you") == (200, b"false\n")
    assert _json(consul_agent.request("GET", "/v1/kv/elect/lock"))[0]["Session"] == sid

    # Nobody renews it: Consul invalidates a TTL session after at most 2*TTL, and frees the lock.
    def lock_free():
        return "Session" not in _json(consul_agent.request("GET", "/v1/kv/elect/lock"))[0]

    wait_until(lock_free, 6.0, interval=0.2, what="the 1s session to expire")
    assert _json(consul_agent.request("GET", f"/v1/session/info/{sid}")) in (None, [])


def test_dev_agent_freeze_thaw_restart(consul_agent):
    addr = consul_agent.http_addr
    consul_agent.freeze()
    with pytest.raises((socket.timeout, OSError)):
        consul_agent.request("GET", "/v1/status/leader", timeout=0.5)
    consul_agent.thaw()
    assert consul_agent.request("GET", "/v1/status/leader")[0] == 200

    consul_agent.restart()
    assert consul_agent.http_addr == addr
    assert consul_agent.request("PUT", "/v1/kv/after-restart", b"x") == (200, b"true\n")

    consul_agent.kill()
    assert not consul_agent.alive
    consul_agent.stop()  # idempotent after kill
    consul_agent.stop()


def test_acl_agent_denies_anonymous_and_accepts_master(acl_agent):
    status, body = acl_agent.request("PUT", "/v1/kv/acl/key", b"anon")
    assert status == 403, body
    assert acl_agent.request("PUT", "/v1/kv/acl/key", b"master", token=acl_agent.master_token) == (200, b"true\n")

    writer = acl_agent.create_token('key_prefix "acl/" { policy = "write" }')
    reader = acl_agent.create_token('key_prefix "acl/" { policy = "read" }')
    assert acl_agent.request("PUT", "/v1/kv/acl/key", b"w", token=writer) == (200, b"true\n")
    assert acl_agent.request("PUT", "/v1/kv/acl/key", b"r", token=reader)[0] == 403
    assert acl_agent.request("PUT", "/v1/kv/other", b"w", token=writer)[0] == 403
    assert acl_agent.request("GET", "/v1/kv/acl/key?raw", token=reader) == (200, b"w")
    assert acl_agent.request("GET", "/v1/kv/acl/key?raw")[0] == 403  # anonymous point read: 403, not 404


def test_cluster_reelects_after_leader_kill_and_rejoins(consul_cluster):
    c = consul_cluster
    old = c.leader_index()
    assert old in (0, 1, 2)
    for i in range(3):
        assert c.http_addr(i).startswith(f"127.0.0.{i + 2}:")
        assert sorted(_json(http_request("GET", c.url(i) + "/v1/status/peers"))) == sorted(
            c.rpc_addr(j) for j in range(3))

    c.kill_server(old)
    t0 = time.monotonic()
    new = c.wait_for_leader(exclude=old, timeout=15)
    elapsed = time.monotonic() - t0
    assert new != old and new in (0, 1, 2)
    assert elapsed < 15
    assert c.kv_put("cluster/while-down", b"2-of-3", i=new)

    c.start_server(old)  # waits until it follows the leader
    assert c.leader_index() == new
    # It caught up with what was written while it was down (stale read served locally).
    status, body = http_request("GET", c.url(old) + "/v1/kv/cluster/while-down?raw&stale")
    assert (status, body) == (200, b"2-of-3")
    with pytest.raises(ConsulError):
        c.wait_for_leader(exclude=(0, 1, 2), timeout=0.3)
