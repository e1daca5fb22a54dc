"""What `consul-elect status` shows: who leads a key, its fencing token, and who is waiting.

Read straight from Consul, never from a candidate's status server, so it works when every
candidate is down. Two sources are enough:
  * the key: its value is the leader's identity (elector.Identity), its Session the leader's
    session, its ModifyIndex the fencing token the leader's child was given;
  * the session list: every candidate names its session `session_name(key, name)`, and a
    session dies with its candidate (TTL, or destroyed on exit), so the waiting candidates are
    exactly the live sessions named for the key, minus the leaders'.
With --holders N the locks are the slots under the key (slots.py), read with one more query:
each held slot is a holder with its own fencing token.
"""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Iterator

from . import config as defaults
from .blocking import BlockingQueryLoop
from .config import Connection
from .consul_api import ConsulClient
from .lock_key import KeyState
from .lock_key import parse_identity, session_name
from .slots import slot_number, slot_prefix
from .errors import ConsulError, ConsulUnavailable, NotAnElectKey


@dataclasses.dataclass(frozen=True)
class Leader:
    name: str | None
    host: str | None
    pid: int | None
    status_address: str | None
    since: str | None
    session: str
    node: str | None


@dataclasses.dataclass(frozen=True)
class Holder(Leader):
    """One holder with --holders N (or the leader): its slot (None: the key itself) and token."""
    slot: int | None = None
    fencing_token: int | None = None


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    session: str
    node: str | None


@dataclasses.dataclass(frozen=True)
class StatusReport:
    key: str
    leader: Leader | None
    # The key's ModifyIndex while held: the token the leader's child received. None when
    # nobody holds the key, because then no one is fenced by it.
    fencing_token: int | None
    # How many times the key has been acquired (None when the key does not exist).
    lock_index: int | None
    # Oldest session first: a clean handover names the first ones to take over, in this order
    # (a crash lets any of them win).
    candidates: tuple[Candidate, ...]
    # Everyone who leads: the leader, or with --holders N each slot's holder (then `leader` and
    # `fencing_token` are None: there is no one leader). `limit`: N (1 for the key itself).
    holders: tuple[Holder, ...] = ()
    limit: int = 1

    def to_dict(self) -> dict:
        """The --json document. Scripts depend on these names: add fields, never rename them."""
        return {**dataclasses.asdict(self), "candidates": [dataclasses.asdict(c) for c in self.candidates],
                "holders": [dataclasses.asdict(h) for h in self.holders]}


def _who(ident: dict, state: KeyState, nodes: dict) -> dict:
    """The Leader fields of whoever holds *state* (the key, or a slot) with identity *ident*."""
    return dict(name=ident.get("name"), host=ident.get("host"), pid=ident.get("pid"),
                status_address=ident.get("status_address"), since=ident.get("since"), session=state.session,
                node=nodes.get(state.session))


def _holder(ident: dict, state: KeyState, nodes: dict, slot: int | None) -> Holder:
    return Holder(**_who(ident, state, nodes), slot=slot, fencing_token=state.modify_index)


def build_report(key: str, kv: KeyState | None, sessions: list[dict],
                 slots: list[tuple[str, KeyState]] = ()) -> StatusReport:
    """The report for one reading of the key, the session list and the slots; NotAnElectKey if
    the key is not ours."""
    holder = parse_identity(kv.value) if kv is not None else None
    # A released key keeps an empty value (or the last leader's identity if its session
    # expired); anything else there, or any holder that did not write our identity, means
    # another tool uses this key and a "no leader" answer would be a lie.
    if kv is not None and holder is None and (kv.session or kv.value):
        held = f"held by session {kv.session}" if kv.session else "not held"
        raise NotAnElectKey(f"{key} is not a consul-elect key: its value is not a consul-elect identity ({held})")
    nodes = {s["ID"]: s.get("Node") for s in sessions}
    leader = None
    if kv is not None and kv.session:
        leader = Leader(**_who(holder, kv, nodes))
    holders, limit = [], 1
    if leader is not None:
        holders.append(_holder(holder, kv, nodes, None))
    for name, state in slots:
        ident = parse_identity(state.value)
        slot = slot_number(key, name)
        if ident is not None and isinstance(ident.get("holders"), int):
            limit = max(limit, ident["holders"])
        if state.session is not None and ident is not None and slot is not None:
            holders.append(_holder(ident, state, nodes, slot))
    if slots:
        limit = max(limit, len(slots))
    prefix = session_name(key, "")
    held = {h.session for h in holders}
    waiting = sorted((s for s in sessions if (s.get("Name") or "").startswith(prefix) and s["ID"] not in held),
                     key=lambda s: s.get("CreateIndex", 0))
    return StatusReport(
        key=key,
        leader=leader,
        fencing_token=kv.modify_index if leader else None,
        lock_index=kv.lock_index if kv is not None else None,
        candidates=tuple(Candidate(s["Name"][len(prefix):], s["ID"], s.get("Node")) for s in waiting),
        holders=tuple(sorted(holders, key=lambda h: -1 if h.slot is None else h.slot)),
        limit=limit,
    )


def read_status(connection: Connection, key: str) -> StatusReport:
    client = ConsulClient(connection)
    # The key first: the session list read after it then already holds the leader's session
    # (created before it acquired), so the leader's node is known.
    _, kv = client.read_key(key)
    _, slots = client.read_prefix(slot_prefix(key))
    _, sessions = client.list_sessions()
    return build_report(key, kv, sessions, slots)


def watch_status(connection: Connection, key: str) -> Iterator[StatusReport | ConsulUnavailable]:
    """Yield a report each time what it shows changes, following both sources with blocking queries.

    If Consul cannot be reached before the first report, raise ConsulUnavailable (a wrong
    address should fail, not wait forever). Later, yield the error once per outage and keep
    trying; the next report follows as soon as Consul answers again. Other errors (ACL denial,
    the key turning out not to be ours) end the watch. Close the generator to stop the queries.
    """
    events: queue.SimpleQueue = queue.SimpleQueue()
    def follow(source: str, query) -> BlockingQueryLoop:
        return BlockingQueryLoop(f"status-{source}", connection, query,
                                 lambda _index, result: events.put((source, result)),
                                 lambda error: events.put((source, error)))

    followers = [
        follow("key", lambda c, i: c.read_key(key, index=i, wait=defaults.WATCH_WAIT)),
        follow("sessions", lambda c, i: c.list_sessions(index=i, wait=defaults.WATCH_WAIT)),
        follow("slots", lambda c, i: c.read_prefix(slot_prefix(key), index=i, wait=defaults.WATCH_WAIT)),
    ]
    latest: dict = {}
    shown: StatusReport | None = None
    in_outage = False
    for follower in followers:
        follower.start()
    try:
        while True:
            source, result = events.get()
            if isinstance(result, ConsulUnavailable):
                if shown is None:
                    raise result
                if not in_outage:
                    in_outage = True
                    yield result
                continue
            if isinstance(result, ConsulError):
                raise result
            latest[source] = result
            if len(latest) < len(followers):
                continue
            report = build_report(key, latest["key"], latest["sessions"], latest["slots"])
            # After an outage the same report is news: it says the view is current again.
            if report != shown or in_outage:
                in_outage = False
                shown = report
                yield report
    finally:
        for follower in followers:
            follower.stop()


def render(report: StatusReport):
    """A compact rich table for people. rich is imported here so that --json never loads it."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if report.leader is not None:
        title = f"{report.key}: fencing token {report.fencing_token}, lock index {report.lock_index}"
    elif report.holders:
        title = f"{report.key}: {len(report.holders)} of {report.limit} holders"
    else:
        title = f"{report.key}: nobody leads"
    table = Table(title=Text(title, style="bold"), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False)
    table.add_column("ROLE", no_wrap=True)
    table.add_column("NAME", no_wrap=True)
    table.add_column("NODE", no_wrap=True)
    # Session IDs are UUIDs; 8 characters tell them apart on screen, --json has them whole.
    table.add_column("SESSION", no_wrap=True)
    table.add_column("DETAILS")
    if report.leader is not None:
        leader = report.leader
        details = [f"pid {leader.pid} on {leader.host}", f"since {leader.since}"]
        if leader.status_address:
            details.append(f"status {leader.status_address}")
        table.add_row(Text("leader", style="green"), Text(str(leader.name)), Text(leader.node or "?"),
                      leader.session[:8], Text("\n".join(details)))
    for holder in report.holders if report.leader is None else ():
        details = [f"slot {holder.slot}, fencing token {holder.fencing_token}", f"pid {holder.pid} on {holder.host}",
                   f"since {holder.since}"]
        if holder.status_address:
            details.append(f"status {holder.status_address}")
        table.add_row(Text("holder", style="green"), Text(str(holder.name)), Text(holder.node or "?"),
                      holder.session[:8], Text("\n".join(details)))
    for candidate in report.candidates:
        table.add_row("waiting", Text(candidate.name), Text(candidate.node or "?"), candidate.session[:8], "")
    if not report.holders and not report.candidates:
        table.add_row(Text("none", style="dim"), "", "", "", "")
    return table
