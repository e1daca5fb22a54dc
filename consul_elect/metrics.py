"""The election's Prometheus metrics, in a registry of their own.

Gauges and counters are read from an `ElectionState` snapshot at scrape time, so they can never
disagree with /status; only renewal latency is recorded as it happens (a histogram needs every
observation). The registry is private rather than prometheus_client's global one, so nothing else
imported into the process adds series to our /metrics, and tests can build as many as they like.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import clock
from .state import ElectionState, holds_lease

# Renewals go to the local Consul agent and normally take a few milliseconds; the upper buckets
# exist because a renewal that takes seconds is eating into the TTL, and seeing how far it got
# matters more than resolution there.
RENEW_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# generate_latest writes the classic text format, and our names and labels need none of the
# UTF-8 escaping that format 1.0.0 adds, so we announce 0.0.4, the version every scraper knows.
# (Newer prometheus_client releases label the same bytes 1.0.0 in CONTENT_TYPE_LATEST; older
# ones do not know that version at all.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# A `_created` series per counter and histogram doubles the output and means nothing here
# (every series starts with the process); scrapers that want a start time have process metrics.
disable_created_metrics()


class ElectionCollector(Collector):
    """Leadership and event counts, read from the state's snapshot when Prometheus scrapes."""

    def __init__(self, state: ElectionState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        snapshot = self._state.snapshot()
        labels = [snapshot.key]

        is_leader = GaugeMetricFamily(
            "consul_elect_is_leader",
            "1 while this instance leads and its lease deadline has not passed, else 0.",
            labels=["key"],
        )
        is_leader.add_metric(labels, 1.0 if holds_lease(snapshot, clock.now()) else 0.0)
        yield is_leader

        for name, documentation, value in (
            ("consul_elect_transitions", "Changes of election state (campaigning, leader, ...).", snapshot.transitions),
            ("consul_elect_consul_errors", "Consul requests that failed or could not reach Consul.", snapshot.consul_errors),
            ("consul_elect_child_starts", "Times the command was started.", snapshot.child_starts),
            ("consul_elect_hook_failures", "Transition hooks that failed, hung (killed) or could not start.",
             snapshot.hook_failures),
        ):
            counter = CounterMetricFamily(name, documentation, labels=["key"])
            counter.add_metric(labels, value)
            yield counter


class ElectionMetrics:
    """Owns the registry; subscribes to the state's renewals as soon as it is built."""

    content_type = CONTENT_TYPE

    def __init__(self, state: ElectionState) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ElectionCollector(state))
        renew_latency = Histogram(
            "consul_elect_renew_latency_seconds",
            "Time a successful session renewal took.",
            labelnames=["key"],
            buckets=RENEW_LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(key=state.snapshot().key)
        state.on_renew(renew_latency.observe)

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)
