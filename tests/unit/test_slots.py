"""`--holders N`: which slot the core looks at, how slots are read, and disagreeing candidates."""

import pytest

from consul_elect.lock_key import Identity, KeyState
from consul_elect.slots import SlotView, conflict, parse_slots, slot_key, slot_prefix, view

ME = "me"


def value(session, released=False, successors=(), holders=3):
    ident = Identity("n-" + session, "host", 1, "t", "0", 1.73, 2.0, holders=holders)
    return ident.to_value(session, since="t", released=released, successors=successors)


def held(session, index=10, holders=3):
    return KeyState(session, index, 1, value(session, holders=holders))


def freed(by, clean=True, successors=(), index=20):
    return KeyState(None, index, 1, value(by, released=clean, successors=successors))


def test_slot_keys_live_under_the_key():
    assert slot_prefix("svc/x") == "svc/x/.slots/"
    assert slot_key("svc/x", 2) == "svc/x/.slots/2"


def test_the_slot_we_hold_comes_first():
    assert view({0: freed("a"), 1: held(ME), 2: None}, ME, current=0) == 1


def test_a_free_slot_where_our_turn_comes_first_wins():
    slots = {0: freed("a", successors=("x", ME)), 1: freed("b", successors=(ME,)), 2: held("c")}
    assert view(slots, ME, current=0) == 1


def test_a_slot_needing_no_wait_beats_one_freed_without_the_released_mark():
    slots = {0: freed("a", clean=False), 1: None, 2: held("c")}
    assert view(slots, ME, current=0, last_held={0: held("a")}) == 1
    # a deleted slot whose holder we saw is no clean slot either
    assert view({0: None, 1: freed("b", clean=False)}, ME, current=1, last_held={0: held("a")}) == 1


def test_on_a_tie_the_current_slot_is_kept():
    assert view({0: None, 1: None, 2: None}, ME, current=2) == 2


def test_all_held_keeps_following_the_current_slot():
    assert view({0: held("a"), 1: held("b")}, ME, current=1) == 1
    assert view({0: held("a"), 1: held("b")}, ME, current=5) == 0


def test_slot_view_remembers_each_slots_last_holder():
    v = SlotView(holders=2)
    assert v.see({0: held("a"), 1: held("b")}, ME) == (0, held("a"), held("a"))
    # slot 1 is deleted by an operator while we look at slot 0: its last holder is still known
    slot, state, before = v.see({0: held("a"), 1: None}, ME)
    assert (slot, state, before) == (1, None, held("b"))


def test_the_prefix_is_read_into_our_slots_only():
    entries = [("svc/x/.slots/0", held("a")), ("svc/x/.slots/2", freed("b")), ("svc/x/.slots/7", freed("z")),
               ("svc/x/.slots/junk", held("q")), ("svc/x/.slots/\u00b2", held("q"))]
    assert parse_slots("svc/x", entries, 3) == {0: held("a"), 1: None, 2: freed("b")}
    assert conflict("svc/x", [("svc/x/.slots/\u00b2", held("q", holders=3))], 3) is None, "no crash on '²'"


@pytest.mark.parametrize("entries, words", [
    ([("svc/x/.slots/0", held("a", holders=2))], "--holders 2, not 3"),
    ([("svc/x/.slots/4", held("a", holders=5))], "slot 4"),
])
def test_candidates_that_disagree_on_holders_are_named(entries, words):
    assert words in conflict("svc/x", entries, 3)


def test_agreeing_or_free_slots_are_no_conflict():
    assert conflict("svc/x", [("svc/x/.slots/0", held("a")), ("svc/x/.slots/5", freed("b"))], 3) is None


# -- the core across slots -----------------------------------------------------------------------

from consul_elect import leadership as L  # noqa: E402

from test_leadership import Script  # noqa: E402


def on_slot(slot, state, index, before=None):
    return L.KeyChanged(state, index, slot, before)


def test_a_slot_deleted_while_its_holder_lived_is_waited_on_as_the_single_key_is():
    s = Script(holders=3).with_session(key=held("a"))
    s.step(on_slot(1, None, 60, before=held("b")))
    assert s.core.memory.slot == 1
    assert s.tick() == [L.CheckHolder("b")], "b's command may still run: wait for its session to end"


def test_a_wait_about_one_slot_does_not_hold_back_a_clean_one():
    s = Script(holders=3).with_session(key=held("a"))
    s.step(on_slot(1, freed("b", clean=False), 60, before=held("b")))
    assert s.tick() == [L.CheckHolder("b")]
    s.step(L.HolderChecked("b", alive=True))
    s.step(on_slot(2, None, 61))
    assert s.core.memory.slot == 2 and s.phase.holder_wait is None
    assert s.tick() == [L.Acquire("s1")]


def test_a_leader_sees_its_own_slot_only_and_loses_it_like_the_key():
    s = Script(holders=3).with_session(key=held("a"))
    s.step(on_slot(2, None, 61))
    s.tick()
    s.step(L.Acquired(70, s.now))
    assert s.core.memory.slot == 2
    s.step(on_slot(0, freed("a"), 80))  # a view of another slot after our acquire: ours is gone
    assert isinstance(s.phase, L.Stopping)
