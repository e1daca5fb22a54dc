"""`--holders N`: at most N candidates lead one key at once, each in a slot of its own.

With one holder (the default) the key itself is the lock. With N > 1 each of the N keys
`<key>/.slots/0` .. `<key>/.slots/<N-1>` is a lock held, released and fenced exactly as the
single key is (lock-delay, the `released` mark, the successors a clean release names), so every
lease-safety property holds slot by slot, and N slots never have more than N holders. The
fencing token is the slot key's ModifyIndex: a Raft index, so it grows in every slot (and across
them).

A candidate follows all the slots with one blocking query on their prefix. The leadership core
still sees one key: `view` picks the slot it looks at (the one we hold, else the best free one,
else one that is held), and `SlotView` remembers who each slot's holder was, so that a slot freed
without the `released` mark is waited on exactly as a freed single key is.
"""

from __future__ import annotations

import dataclasses

from .lock_key import KeyState, parse_identity, turn

SLOTS_DIR = ".slots"


def slot_prefix(key: str) -> str:
    return f"{key}/{SLOTS_DIR}/"


def slot_key(key: str, slot: int) -> str:
    return f"{slot_prefix(key)}{slot}"


def parse_slots(key: str, entries: list[tuple[str, KeyState]], holders: int) -> dict[int, KeyState | None]:
    """The prefix read as {slot: state} for slots 0..holders-1 (None: the key does not exist);
    keys beyond our count (another candidate's larger --holders) are left out here and caught by
    `conflict`."""
    slots: dict[int, KeyState | None] = {i: None for i in range(holders)}
    for name, state in entries:
        slot = slot_number(key, name)
        if slot is not None and slot < holders:
            slots[slot] = state
    return slots


def conflict(key: str, entries: list[tuple[str, KeyState]], holders: int) -> str | None:
    """Why these slots were made by candidates that disagree with our --holders (None: they agree)."""
    for name, state in entries:
        slot = slot_number(key, name)
        if slot is not None and slot >= holders and state.session is not None:
            return f"slot {slot} of {key} is held: another candidate runs with --holders above {holders}"
        ident = parse_identity(state.value)
        theirs = ident.get("holders") if ident is not None else None
        if state.session is not None and isinstance(theirs, int) and theirs != holders:
            return f"{name} is held by a candidate with --holders {theirs}, not {holders}"
    return None


def slot_number(key: str, name: str) -> int | None:
    """The slot a key under slot_prefix(key) is (None: not a slot key). ASCII digits only:
    "²".isdigit() is true, and int() refuses it."""
    prefix = slot_prefix(key)
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isascii() and rest.isdigit() else None


@dataclasses.dataclass
class SlotView:
    """The slots as the watcher last saw them, and the slot the core looks at."""

    holders: int
    current: int = 0
    # The last state seen of each slot while someone held it: a slot freed without the
    # `released` mark names whose session to wait for, even if the core was looking elsewhere.
    last_held: dict = dataclasses.field(default_factory=dict)

    def see(self, slots: dict[int, KeyState | None], session: str | None) -> tuple[int, KeyState | None, KeyState | None]:
        """Record *slots*; return (slot, its state, its last held state) for the core to see."""
        for i, state in slots.items():
            if state is not None and state.session is not None:
                self.last_held[i] = state
        self.current = view(slots, session, self.current, self.last_held)
        return self.current, slots.get(self.current), self.last_held.get(self.current)


def view(slots: dict[int, KeyState | None], session: str | None, current: int, last_held: dict | None = None) -> int:
    """The slot the core should look at.

    One we hold, first (the core watches its own lease there). Else a free slot: the one where
    our turn comes soonest (a clean release naming us first), then one that needs no wait for an
    old holder's session (released cleanly, or never held), keeping the current one on a tie so
    that a wait about it is not cut short by a switch. Else every slot is held: keep the current
    one (the core follows its holder), or the lowest.
    """
    last_held = last_held or {}
    for i in sorted(slots):
        state = slots[i]
        if state is not None and session is not None and state.session == session:
            return i
    free = [i for i in sorted(slots) if slots[i] is None or slots[i].session is None]
    if free:
        def rank(i: int) -> tuple[int, int, int, int]:
            state = slots[i]
            ident = parse_identity(state.value) if state is not None else None
            clean = bool(ident and ident.get("released")) or (ident is None and i not in last_held)
            return turn(ident, session), 0 if clean else 1, 0 if i == current else 1, i
        return min(free, key=rank)
    return current if current in slots else min(slots)
