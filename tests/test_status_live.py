"""The status server of real candidates in a real election."""

import json
import re
import threading
import time
import urllib.error
import urllib.request

from harness import FAST, pid_alive, read_lives, wait_for


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def status_url(candidate):
    m = wait_for(lambda: re.search(r"serving status on (http://\S+)", candidate.log()), 10, what="status server")
    return m.group(1)


def test_leader_endpoint_routes_to_the_leader_only(consul_agent, candidates):
    opts = [*FAST, "--port", "0", "--bind", "127.0.0.1"]
    a = candidates(consul_agent.http_addr, "svc/http", "a", options=opts)
    wait_for(lambda: read_lives(candidates.events), 10, what="a's child")
    b = candidates(consul_agent.http_addr, "svc/http", "b", options=opts)
    wait_for(lambda: "following a" in b.log(), 10, what="b to follow")
    a_url, b_url = status_url(a), status_url(b)
    assert get(a_url + "/leader")[0] == 200
    assert get(b_url + "/leader")[0] == 503
    doc = json.loads(get(b_url + "/status")[1])
    assert doc["state"] == "follower" and doc["is_leader"] is False and doc["leader"]["name"] == "a"
    assert doc["fencing_token"] is None
    lead = json.loads(get(a_url + "/status")[1])
    assert lead["is_leader"] and lead["fencing_token"] == read_lives(candidates.events)[0].token
    assert 0 < lead["lease_deadline_in"] <= 1.73
    # The key's value tells others where the leader's status server is.
    status, body = consul_agent.request("GET", "/v1/kv/svc/http?raw")
    assert json.loads(body)["status_address"] == a_url.removeprefix("http://")
    assert get(a_url + "/health")[0] == 200
    metrics = get(a_url + "/metrics")[1].decode()
    assert 'consul_elect_is_leader{key="svc/http"} 1.0' in metrics
    assert "consul_elect_renew_latency_seconds_count" in metrics


def test_flood_on_the_status_port_does_not_cost_the_lease(consul_agent, candidates):
    a = candidates(consul_agent.http_addr, "svc/flood", "a", options=[*FAST, "--port", "0", "--bind", "127.0.0.1"])
    first = wait_for(lambda: read_lives(candidates.events), 10, what="a's child")[0]
    url = status_url(a)
    stop = time.monotonic() + 4.0
    served = []

    def flood():
        n = 0
        while time.monotonic() < stop:
            n += get(url + "/status")[0] == 200
        served.append(n)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # Renewals every 0.41 s with a 1.23 s margin: a starved loop would have stood down.
    assert sum(served) > 500, served
    assert "lost leadership" not in a.log()
    assert len(read_lives(candidates.events)) == 1 and pid_alive(first.pid)
    assert get(url + "/leader")[0] == 200
