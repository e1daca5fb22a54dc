"""The leadership core, phase by phase, with a scripted clock: no Consul, no processes, no threads.

Each test drives `leadership.step` with the events the driver would feed it and checks the
actions it asks for. Tests named `test_defect_N_...` are the defects of issue 7 (the old loop
shape), each as a case that failed on the old code.
"""

import json
import logging
import signal

import pytest

from consul_elect import leadership as L
from consul_elect.config import Config
from consul_elect import config as defaults
from consul_elect.errors import (
    ConsulTLSError, ConsulUnavailable, InternalError, LeadershipLost, LeadershipTimeout, NotAnElectKey,
    PermissionDenied, SessionGone, WatchdogFailed,
)
from consul_elect.lock_key import Identity, KeyState, QueueEntry, place, queue_entry, successors
from consul_elect.state import CAMPAIGNING, DISCONNECTED, FOLLOWER, LEADER, STEPPING_DOWN

KEY = "svc/k"
T0 = 1000.0


def make_config(**overrides):
    fields = dict(key=KEY, command=("cmd",), name="me", ttl=3.0, lock_delay=2.0, grace=0.5)
    fields.update(overrides)
    return Config(**fields)


def identity_value(session, name="other", released=False, lease_window=1.73, lock_delay=2.0):
    ident = Identity(name, "host", 1, "t", "0", lease_window, lock_delay)
    return ident.to_value(session, since="t", released=released)


def held(session, index=50, **kw):
    return KeyState(session=session, modify_index=index, lock_index=1, value=identity_value(session, **kw))


class Script:
    """Drive the core as the driver would, on a scripted clock."""

    def __init__(self, **config):
        self.config = make_config(**config)
        self.now = T0
        self.core, self.actions = L.start(self.config, self.now)

    @property
    def phase(self):
        return self.core.phase

    def step(self, event, at=None):
        if at is not None:
            self.now = at
        self.core, self.actions = L.step(self.core, event, self.now, 0.5)
        return self.actions

    def tick(self, at=None):
        """Advance to *at* (default: the core's next timer) and deliver a Tick."""
        if at is None:
            at = L.wake_at(self.core)
            assert at is not None, "the core has no timer to wait for"
        self.now = max(self.now, at)
        return self.step(L.Tick())

    def of(self, cls):
        return [a for a in self.actions if isinstance(a, cls)]

    def published(self):
        fields = {}
        for a in self.of(L.Publish):
            fields.update(a.fields)
        return fields

    def logs(self):
        return " | ".join(a.message for a in self.of(L.Log))

    # -- getting to a phase --------------------------------------------------------------

    def to_campaigning(self, key=None):
        assert self.of(L.Log)  # start() logs "campaigning"
        assert isinstance(self.tick()[0], L.CheckKey)
        self.step(L.KeyRead(key))
        assert isinstance(self.phase, L.Campaigning)
        return self

    def with_session(self, session="s1", key=None):
        self.to_campaigning(key)
        assert self.of(L.OpenSession) or isinstance(self.tick()[0], L.OpenSession)
        self.step(L.SessionOpened(session, self.now))
        return self

    def to_leading(self, token=100, pid=4242):
        self.with_session()
        acts = self.tick()
        assert acts == [L.Acquire("s1")]
        self.step(L.Acquired(token, self.now))
        assert isinstance(self.phase, L.Spawning)
        self.step(L.Spawned(pid))
        assert isinstance(self.phase, L.Leading)
        return self


def lease_window(config=None):
    return (config or make_config()).lease_window


# -- Checking ------------------------------------------------------------------------------------


def test_start_publishes_campaigning_and_first_reads_the_key():
    s = Script()
    assert s.published()["state"] == CAMPAIGNING
    assert s.tick() == [L.CheckKey()]


def test_a_key_holding_another_tools_data_is_refused():
    s = Script()
    s.tick()
    s.step(L.KeyRead(KeyState(None, 5, 0, b"not ours")))
    assert isinstance(s.phase, L.Leaving)
    assert isinstance(s.of(L.Exit)[0].error, NotAnElectKey)


@pytest.mark.parametrize("key", [None, KeyState(None, 5, 0, b""), held("x"), held("x", released=True)])
def test_a_free_or_consul_elect_key_is_campaigned_on(key):
    s = Script().to_campaigning(key)
    assert not s.of(L.Exit)


def test_check_failure_retries_with_backoff_not_at_once():
    s = Script()
    s.tick()
    s.step(L.RequestFailed(ConsulUnavailable("cannot reach Consul at x: connection refused")))
    assert not s.of(L.CheckKey)
    assert L.wake_at(s.core) - s.now == pytest.approx(defaults.RECONNECT_BACKOFF_MIN)
    assert "Consul unreachable" in s.logs()
    assert s.published()["state"] == DISCONNECTED


@pytest.mark.parametrize("error", [PermissionDenied("Consul ACL denied the request"), NotAnElectKey("x")])
def test_errors_retrying_cannot_fix_end_the_campaign(error):
    s = Script()
    s.tick()
    s.step(L.RequestFailed(error))
    assert s.of(L.Exit)[0].error is error


def test_tls_error_is_fatal_before_consul_ever_answered():
    s = Script()
    s.tick()
    err = ConsulTLSError("certificate verify failed")
    s.step(L.RequestFailed(err))
    assert s.of(L.Exit)[0].error is err


def test_tls_error_after_consul_answered_is_retried_as_a_rotation():
    s = Script().with_session()
    s.tick()  # Acquire
    s.step(L.RequestFailed(ConsulTLSError("certificate file missing")))
    assert not s.of(L.Exit) and isinstance(s.phase, L.Campaigning)


def test_startup_patience_gives_up_with_the_last_error():
    s = Script()
    for _ in range(200):
        if s.of(L.Exit):
            break
        acts = s.tick()
        if acts == [L.CheckKey()]:
            s.step(L.RequestFailed(ConsulUnavailable("cannot reach Consul at x: connection refused")))
    exit_ = s.of(L.Exit)[0]
    assert isinstance(exit_.error, ConsulUnavailable)
    assert "connection refused" in str(exit_.error) and "gave up after 15s" in str(exit_.error)
    assert s.now - T0 == pytest.approx(defaults.STARTUP_PATIENCE, abs=0.01)


def test_retry_after_from_a_429_is_honoured():
    s = Script()
    s.tick()
    s.step(L.RequestFailed(ConsulUnavailable("429", retry_after=7.0)))
    assert L.wake_at(s.core) - s.now == pytest.approx(7.0)


def test_timeout_while_someone_else_leads_is_leadership_timeout():
    s = Script(timeout=5.0).with_session(key=held("other"))
    s.tick(T0 + 5.0)
    assert isinstance(s.of(L.Exit)[0].error, LeadershipTimeout)


# -- Campaigning -----------------------------------------------------------------------------


def test_new_session_renews_at_follower_pace_and_acquires_at_once():
    s = Script().with_session()
    assert s.of(L.SetRenewInterval)[0].seconds == s.config.follower_renew_interval
    assert s.tick() == [L.Acquire("s1")]


def test_election_sends_the_spawn_before_anything_is_logged_or_published():
    s = Script().with_session()
    s.tick()
    acts = s.step(L.Acquired(77, s.now))
    kinds = [type(a) for a in acts]
    assert kinds[0] == L.Spawn and L.SendLease not in kinds  # the lease went with the acquire
    assert acts[0] == L.Spawn(77, s.now + lease_window())
    assert s.published() == {"state": LEADER, "fencing_token": 77, "lease_deadline": s.now + lease_window(),
                             "leader": "self"}
    interval = s.of(L.SetRenewInterval)[0]
    assert interval.seconds == s.config.renew_interval and not interval.renew_now


def test_a_slow_acquire_asks_for_a_renewal_at_once():
    s = Script().with_session()
    s.tick()
    sent = s.now
    s.step(L.Acquired(77, sent), at=sent + 1.0)
    assert s.phase.deadline == sent + lease_window()
    assert s.of(L.SetRenewInterval)[0].renew_now


def test_refused_while_another_holds_waits_for_the_key_to_change():
    s = Script().with_session(key=held("other"))
    assert "following other" in s.logs() or True
    assert L.wake_at(s.core) == T0 + defaults.STARTUP_PATIENCE or L.wake_at(s.core) is None


def test_following_is_logged_once_per_leader():
    s = Script().to_campaigning()
    s.step(L.KeyChanged(held("other"), 60))
    assert "following other (session other)" in s.logs()
    assert s.published()["state"] == FOLLOWER
    s.step(L.KeyChanged(held("other", index=61), 61))
    assert "following" not in s.logs()


def test_free_key_refused_during_a_lock_delay_retries_quickly_then_backs_off():
    s = Script().with_session(key=held("other", lock_delay=2.0))
    # Invalidated (TTL, destroy): Consul clears Session and keeps the holder's value; lock-delay runs.
    s.step(L.KeyChanged(KeyState(None, 70, 1, identity_value("other")), 70))
    freed_at = s.now
    assert s.tick() == [L.CheckHolder("other")]
    s.step(L.HolderChecked("other", alive=False))
    assert s.tick() == [L.Acquire("s1")]
    s.step(L.AcquireRefused())
    assert L.wake_at(s.core) - s.now == pytest.approx(defaults.LOCK_DELAY_RETRY)
    s.tick(freed_at + 2.0 + defaults.LOCK_DELAY_MARGIN + 0.01)
    s.step(L.AcquireRefused())
    assert L.wake_at(s.core) - s.now >= defaults.RECONNECT_BACKOFF_MIN * (1 - defaults.RETRY_JITTER)


def test_defect_8_no_busy_loop_while_consul_is_unreachable():
    """Old: acquire_at stayed in the wake list with no session, so the wait timeout was 0."""
    s = Script()
    s.tick()
    s.step(L.KeyRead(None))
    wakeups, end = 0, s.now + 10.0
    while s.now < end:
        acts = s.tick()
        wakeups += 1
        for a in acts:
            if isinstance(a, (L.OpenSession, L.Acquire, L.CheckKey)):
                s.step(L.RequestFailed(ConsulUnavailable("connection refused")))
        assert wakeups < 1000
    assert wakeups / 10.0 <= 5, f"{wakeups} wake-ups in 10 s of scripted time"


def test_defect_8_after_losing_the_session_in_an_outage_it_backs_off_too():
    s = Script().with_session()
    s.step(L.SessionEnded("s1"))
    wakeups, end = 0, s.now + 10.0
    while s.now < end:
        for a in s.tick():
            if isinstance(a, L.OpenSession):
                s.step(L.RequestFailed(ConsulUnavailable("no cluster leader")))
        wakeups += 1
    assert wakeups / 10.0 <= 5


def test_a_key_released_cleanly_is_acquired_at_once():
    s = Script().with_session(key=held("other"))
    s.step(L.KeyChanged(KeyState(None, 71, 1, identity_value("other", released=True)), 71))
    assert s.tick() == [L.Acquire("s1")]


def handed_over(to):
    ident = Identity("other", "host", 1, "t", "0", 1.73, 2.0)
    return KeyState(None, 71, 1, ident.to_value("other", since="t", released=True, successors=to))


@pytest.mark.parametrize("named, turn", [(("s1", "x", "y"), 0), (("x", "s1", "y"), 1), (("x", "y", "s1"), 2),
                                         (("x", "y", "z"), 3), (("x",), 1), ((), 0)])
def test_a_clean_release_lets_the_named_successors_try_first_in_turn(named, turn):
    s = Script().with_session(key=held("other"))
    s.step(L.KeyChanged(handed_over(named), 71))
    assert L.wake_at(s.core) == pytest.approx(s.now + turn * defaults.HANDOVER_TURN)
    assert s.tick() == [L.Acquire("s1")]


def test_news_the_watcher_held_back_for_our_turn_counts_the_time_already_waited():
    s = Script().with_session(key=held("other"))
    s.step(L.KeyChanged(handed_over(("x", "y", "s1")), 71, waited=0.3))
    assert L.wake_at(s.core) == pytest.approx(s.now + 2 * defaults.HANDOVER_TURN - 0.3)
    s.step(L.KeyChanged(handed_over(("x", "s1")), 72, waited=5.0))
    assert L.wake_at(s.core) == pytest.approx(s.now), "a turn long past: try at once"


def test_a_waiter_whose_turn_has_not_come_stands_back_when_the_successor_takes_the_key():
    s = Script().with_session(key=held("other"))
    s.step(L.KeyChanged(handed_over(("x", "s1")), 71))
    s.step(L.KeyChanged(held("x", index=72), 72))
    assert s.phase.next_at is None, "no acquire: x leads"
    assert "following other (session x)" in s.logs()


def test_a_freed_key_without_the_released_mark_ignores_any_successors_it_names():
    """Only a clean release hands over; an unclean one still waits for the old session."""
    ident = Identity("other", "host", 1, "t", "0", 1.73, 2.0)
    doc = json.loads(ident.to_value("other", since="t"))
    doc["next"] = ["x"]
    s = Script().with_session(key=held("other"))
    s.step(L.KeyChanged(KeyState(None, 71, 1, json.dumps(doc).encode()), 71))
    assert s.tick() == [L.CheckHolder("other")]


def test_successors_are_the_oldest_live_entries_never_our_own():
    entries = [QueueEntry("k/.candidates/d", "d", 40, None), QueueEntry("k/.candidates/dead", None, 5, None),
               QueueEntry("k/.candidates/b", "b", 20, None), QueueEntry("k/.candidates/me", "me", 10, None),
               QueueEntry("k/.candidates/c", "c", 30, None), QueueEntry("k/.candidates/e", "e", 50, None)]
    assert successors(entries, "me", 3) == ("b", "c", "d")
    assert successors(entries, "me", 10) == ("b", "c", "d", "e")
    assert successors([], "me", 3) == ()
    assert queue_entry("svc/leader", "abc") == "svc/leader/.candidates/abc"


def test_the_queue_is_left_once_the_command_runs_not_at_the_acquire():
    """Leaving wakes the waiters far back in the queue: not while the command is being started."""
    s = Script().with_session()
    s.tick()
    assert not [a for a in s.step(L.Acquired(100, s.now)) if isinstance(a, L.LeaveQueue)]
    assert s.step(L.Spawned(4242))[0] == L.LeaveQueue("s1")


def test_our_place_in_the_queue_counts_live_entries_only():
    entries = [QueueEntry("k/.candidates/c", "c", 30, None), QueueEntry("k/.candidates/dead", None, 5, None),
               QueueEntry("k/.candidates/b", "b", 20, None), QueueEntry("k/.candidates/a", "a", 10, None)]
    assert [place(entries, s) for s in ("a", "b", "c")] == [0, 1, 2]
    assert place(entries, "gone") is None and place(entries, None) is None


@pytest.mark.parametrize("freed", [
    KeyState(None, 71, 1, identity_value("other")),  # `consul kv` release: identity without the mark
    None,                                            # `consul kv delete`
], ids=["released-by-operator", "deleted-by-operator"])
def test_a_key_freed_without_lock_delay_waits_for_the_old_session(freed):
    s = Script().with_session(key=held("other"))
    s.step(L.KeyChanged(freed, 71))
    assert s.tick() == [L.CheckHolder("other")]
    s.step(L.HolderChecked("other", alive=True))
    assert not s.of(L.Acquire)
    assert "without Consul's lock-delay" in s.logs(), "said once the old session is seen alive"
    assert s.tick() == [L.CheckHolder("other")]
    s.step(L.HolderChecked("other", alive=False))
    assert s.tick() == [L.Acquire("s1")]


def test_waiting_for_an_old_session_has_no_time_bound_only_its_end():
    """An old leader whose key watch stalls keeps renewing and its command running: no lease
    window can be trusted to have passed. Only the session's end (destroyed once the command is
    confirmed gone, or expired by Consul) lets a candidate in."""
    s = Script().with_session(key=held("other", lease_window=1.5))
    s.step(L.KeyChanged(None, 71))
    for _ in range(600):  # 60 s of scripted time, polled every HOLDER_POLL
        assert s.tick() == [L.CheckHolder("other")]
        s.step(L.HolderChecked("other", alive=True))
    s.tick()
    s.step(L.HolderChecked("other", alive=False))
    assert s.tick() == [L.Acquire("s1")]


def test_a_key_freed_before_we_started_is_checked_through_the_session_its_value_names():
    """Review finding: a candidate started just after an operator's release took the key at once."""
    s = Script().with_session(key=KeyState(None, 71, 1, identity_value("ancient")))
    assert s.tick() == [L.CheckHolder("ancient")]
    s.step(L.HolderChecked("ancient", alive=False))
    assert s.tick() == [L.Acquire("s1")]


def test_changes_folded_into_one_answer_still_name_the_last_holder():
    """We saw A hold the key; B acquired and was released by hand before our watch answered."""
    s = Script().with_session(key=held("A"))
    s.step(L.KeyChanged(KeyState(None, 90, 3, identity_value("B")), 90))
    assert s.tick() == [L.CheckHolder("B")]


def test_a_running_wait_survives_another_answer_about_the_same_free_key():
    """Review finding: a re-posted answer (after a watch failure) cancelled the wait."""
    s = Script().with_session(key=held("other"))
    s.step(L.KeyChanged(None, 71))
    s.step(L.WatchFailed(ConsulUnavailable("timeout")))
    s.step(L.KeyChanged(None, 71))
    assert s.tick() == [L.CheckHolder("other")]
    s.step(L.KeyChanged(KeyState(None, 72, 1, identity_value("other", released=True)), 72))
    assert s.tick() == [L.Acquire("s1")], "a clean release by that session ends the wait"


def test_survivors_are_not_confirmed_by_a_later_nothing_running_answer():
    """Review finding: Exited(None, nothing-running, confirmed) after survivors released the key."""
    s = Script().to_leading()
    s.step(L.KeyChanged(None, 120))
    s.step(L.ChildExited(4242, 0, "stopped", True, False, survivors=(777,)))
    s.step(L.Signal(signal.SIGTERM))
    s.step(L.ChildExited(None, None, "nothing-running", False, True))
    assert not s.of(L.EndSession) and not s.of(L.Exit)
    s.tick()
    s.step(L.GroupKilled(True))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]
    assert s.of(L.Exit) == [L.Exit(status=0)]


def test_survivors_and_sigterm_with_no_status_exit_128_plus_signal():
    s = Script().to_leading()
    s.step(L.ChildExited(4242, None, "exited", True, False, survivors=(4242,)))
    s.step(L.Signal(signal.SIGTERM))
    s.tick()
    s.step(L.GroupKilled(True))
    assert s.of(L.Exit) == [L.Exit(status=128 + signal.SIGTERM)]


def test_the_first_sigterm_during_a_stop_we_began_keeps_the_grace():
    s = Script().to_leading()
    s.step(L.KeyChanged(None, 120))
    s.step(L.Signal(signal.SIGTERM))
    assert not s.of(L.StopChild) and "leaving once the command has stopped" in s.logs()
    s.step(L.ChildExited(4242, 143, "stopped", False, True))
    assert s.of(L.Exit) == [L.Exit(status=143)]


def test_a_watch_that_failed_before_the_acquire_still_blocks_lease_extension():
    s = Script().with_session()
    s.step(L.WatchFailed(ConsulUnavailable("timeout")))
    s.tick()
    s.step(L.Acquired(9, s.now))
    s.step(L.Spawned(5))
    deadline = s.phase.deadline
    s.step(L.Renewed("s1", s.now + 1.0))
    assert s.phase.deadline == deadline
    s.step(L.KeyChanged(held("s1", index=9), 12))
    s.step(L.Renewed("s1", s.now + 1.0))
    assert s.phase.deadline == s.now + 1.0 + lease_window()


def test_the_first_lease_is_capped_by_the_sessions_ttl_when_renewals_were_failing():
    s = Script()  # ttl 3 s: ttl_window = 3 * 0.99 - 0.25 = 2.72 s; B = 1.73 s
    s.to_campaigning()
    s.tick()
    s.step(L.SessionOpened("s1", s.now))
    created = s.now
    s.tick(created + 2.0)  # no renewal since the create (they failed): the TTL timer runs
    s.step(L.Acquired(9, s.now))
    assert s.phase.deadline == pytest.approx(created + s.config.ttl_window)


def test_disconnected_is_replaced_as_soon_as_consul_answers_again():
    s = Script().with_session(key=held("other"))
    s.step(L.RenewFailed("s1", ConsulUnavailable("down")))
    assert s.published()["state"] == DISCONNECTED
    s.step(L.HolderChecked("x", alive=True))  # any answer from Consul
    s.step(L.KeyChanged(held("other", index=51), 51))
    assert s.published()["state"] == FOLLOWER



def test_session_invalidated_while_campaigning_opens_a_new_one():
    s = Script().with_session(key=held("other"))
    s.step(L.SessionEnded("s1"))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=False)]
    assert s.tick() == [L.OpenSession()]


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_signal_while_campaigning_leaves_with_0_releasing(signo):
    s = Script().with_session()
    s.step(L.Signal(signo))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]
    assert s.of(L.Exit) == [L.Exit(status=0)]


def test_other_signals_while_not_leading_are_logged_not_forwarded():
    s = Script().with_session()
    s.step(L.Signal(signal.SIGHUP))
    assert not s.of(L.Forward) and "no command to forward it to" in s.logs()


def test_watchdog_lost_while_campaigning_exits_with_watchdog_failed():
    s = Script().with_session()
    s.step(L.WatchdogLost())
    assert isinstance(s.of(L.Exit)[0].error, WatchdogFailed)


def test_defect_9_consul_back_clears_the_error_and_says_so():
    """Old: /status kept last_error after Consul came back, and nothing was logged."""
    s = Script().with_session()
    s.step(L.RenewFailed("s1", ConsulUnavailable("no cluster leader")))
    assert s.published()["consul_failed"] == "no cluster leader"
    s.step(L.Renewed("s1", s.now))
    assert s.published().get("consul_ok") is True
    assert "reachable again" in s.logs()


def test_an_outage_is_logged_once_not_per_failure():
    s = Script().with_session()
    s.step(L.RenewFailed("s1", ConsulUnavailable("down")))
    assert "Consul unreachable" in s.logs()
    s.step(L.RenewFailed("s1", ConsulUnavailable("down")))
    assert "Consul unreachable" not in s.logs()


# -- Spawning ------------------------------------------------------------------------------


def test_defect_4_session_invalidated_while_spawning_is_not_dropped():
    """Old: session_gone arriving in _wait_for reached _handle_common, which ignored it."""
    s = Script().with_session()
    s.tick()
    s.step(L.Acquired(9, s.now))
    s.step(L.SessionEnded("s1"))
    assert isinstance(s.phase, L.Stopping) and s.of(L.StopChild)
    s.step(L.Spawned(55))
    assert s.phase.pid == 55
    s.step(L.ChildExited(55, 143, "stopped", False, True))
    assert isinstance(s.phase, L.Campaigning)


def test_command_that_cannot_start_exits_with_its_code_after_releasing():
    s = Script().with_session()
    s.tick()
    s.step(L.Acquired(9, s.now))
    s.step(L.SpawnFailed(False, 127, "cmd: No such file or directory"))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]
    assert s.of(L.Exit) == [L.Exit(status=127)]


def test_lease_ran_out_before_exec_campaigns_again():
    s = Script().with_session()
    s.tick()
    s.step(L.Acquired(9, s.now))
    s.step(L.SpawnFailed(True, None, "lease already expired"))
    assert isinstance(s.phase, L.Campaigning) and "lost leadership" in s.logs()


def test_the_acquire_offers_the_watchdog_the_lease_it_would_give_counted_from_before_its_send():
    s = Script().with_session()
    acquire, = s.tick()
    offer = s.now + lease_window()
    assert acquire == L.Acquire("s1") and acquire.lease_offer == offer
    # Consul answered late, the send itself a little after the decision: the lease still
    # counts from the decision (earlier than the send, so never too long) and is the one
    # the watchdog already has.
    acts = s.step(L.Acquired(77, s.now + 0.001), at=s.now + 0.3)
    assert acts[0] == L.Spawn(77, offer) and not s.of(L.SendLease)
    assert s.phase.deadline == offer


def test_the_offered_lease_is_capped_by_the_last_proof_of_the_session():
    s = Script().with_session()
    proof = s.core.memory.session_proof
    s.now += 5.0  # no renewal came meanwhile
    acquire, = s.tick(at=s.now)
    assert acquire.lease_offer == proof + s.config.ttl_window < s.now + lease_window()
    s.step(L.Acquired(77, s.now))
    assert s.phase.deadline == acquire.lease_offer


def test_spawned_publishes_the_child_start():
    s = Script().to_leading()
    assert s.published() == {"child_started": True}


# -- Leading -------------------------------------------------------------------------------


def test_renewal_extends_the_lease_and_tells_the_watchdog():
    s = Script().to_leading()
    sent = s.now + 0.4
    s.step(L.Renewed("s1", sent), at=sent + 0.01)
    assert s.phase.deadline == sent + lease_window()
    assert s.of(L.SendLease) == [L.SendLease("s1", sent + lease_window())]


def test_an_older_renewal_never_shortens_the_lease():
    s = Script().to_leading()
    before = s.phase.deadline
    s.step(L.Renewed("s1", s.now - 1.0))
    assert s.phase.deadline == before


def test_a_renewal_of_an_old_session_is_ignored():
    s = Script().to_leading()
    before = s.phase.deadline
    s.step(L.Renewed("s0", s.now + 1))
    assert s.phase.deadline == before and not s.actions


def test_key_news_older_than_our_acquire_is_history():
    s = Script().to_leading(token=100)
    s.step(L.KeyChanged(None, 99))
    assert isinstance(s.phase, L.Leading)


@pytest.mark.parametrize("key, why", [
    (None, "the key was deleted"),
    (KeyState(None, 120, 1, b""), "the key was released"),
    (held("thief", index=120), "the key is held by session thief"),
])
def test_defect_5_loss_is_published_at_once(key, why):
    """Old: the state stayed LEADER with a valid deadline through the release and destroy."""
    s = Script().to_leading(token=100)
    s.step(L.KeyChanged(key, 120))
    assert isinstance(s.phase, L.Stopping) and not s.phase.key_held
    assert s.of(L.StopChild) == [L.StopChild(0.5)]
    assert s.published() == {"state": STEPPING_DOWN, "fencing_token": None, "lease_deadline": None}
    assert why in s.logs()


def test_after_losing_the_key_renewals_no_longer_extend_the_lease():
    s = Script().to_leading()
    s.step(L.KeyChanged(None, 120))
    deadline = s.phase.deadline
    s.step(L.Renewed("s1", s.now + 0.5))
    assert s.phase.deadline == deadline and not s.of(L.SendLease)


def test_while_the_key_watch_fails_renewals_do_not_extend_the_lease():
    s = Script().to_leading(token=100)
    deadline = s.phase.deadline
    s.step(L.WatchFailed(ConsulUnavailable("timeout")))
    s.step(L.Renewed("s1", s.now + 0.4))
    assert s.phase.deadline == deadline
    s.step(L.KeyChanged(held("s1", index=100), 130))
    s.step(L.Renewed("s1", s.now + 0.5))
    assert s.phase.deadline == s.now + 0.5 + lease_window()


def test_lease_running_out_starts_the_graceful_stop_grace_before_the_deadline():
    s = Script().to_leading()
    deadline = s.phase.deadline
    s.tick()
    assert s.now == pytest.approx(deadline - 0.5)
    assert s.of(L.StopChild) and "lease running out" in s.logs()


def test_command_exit_publishes_stepping_down_before_releasing_and_exits_with_its_status():
    s = Script().to_leading()
    acts = s.step(L.ChildExited(4242, 7, "exited", False, True))
    kinds = [type(a) for a in acts]
    assert kinds.index(L.Publish) < kinds.index(L.EndSession)
    assert s.published()["state"] == STEPPING_DOWN
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]
    assert s.of(L.Exit) == [L.Exit(status=7)]


def test_defect_1_survivors_keep_the_key_held_and_renewed_until_gone():
    """Old: EPERM was read as "dead" and the key released while a setuid helper still ran."""
    s = Script().to_leading()
    s.step(L.ChildExited(4242, 0, "exited", True, False, survivors=(777,)))
    assert not s.of(L.EndSession) and not s.of(L.Exit)
    assert "survive SIGKILL" in s.logs() and "777" in s.logs()
    s.step(L.Renewed("s1", s.now + 0.3))
    assert s.of(L.SendLease), "the key stays ours: renewals go on"
    # Retried briefly, so the loop keeps turning (renewals, pings) between the attempts.
    assert s.tick() == [L.KillGroup(defaults.CONTAIN_RETRY_WAIT)]
    s.step(L.GroupKilled(False, (777,)))
    assert not s.of(L.EndSession) and "survive" not in s.logs()
    s.tick()
    s.step(L.GroupKilled(True))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]
    assert s.of(L.Exit) == [L.Exit(status=0)]


def test_defect_2_an_unconfirmed_stop_does_not_block_later_releases():
    """Old: child_confirmed_dead was never reset, so every later release was skipped."""
    s = Script().to_leading(pid=1)
    s.step(L.KeyChanged(None, 120))
    s.step(L.ChildExited(1, None, "stopped", True, False, survivors=(9,)))
    assert not s.of(L.EndSession)
    s.tick()
    s.step(L.GroupKilled(True))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]
    s.tick()
    s.step(L.SessionOpened("s2", s.now))
    s.tick()
    s.step(L.Acquired(200, s.now))
    s.step(L.Spawned(2))
    s.step(L.ChildExited(2, 0, "exited", False, True))
    assert s.of(L.EndSession) == [L.EndSession("s2", release=True)]


def test_defect_3_no_release_without_confirmation_on_the_way_out():
    """Old: _close could release while the watchdog was still inside PreparedChild.launch."""
    s = Script().with_session()
    s.tick()
    s.step(L.Acquired(9, s.now))
    s.step(L.Signal(signal.SIGTERM))
    assert not s.of(L.EndSession) and not s.of(L.Exit)
    s.step(L.Spawned(31))
    s.step(L.ChildExited(31, None, "stopped", True, False, survivors=(31,)))
    assert not s.of(L.EndSession) and not s.of(L.Exit)


def test_sigterm_stops_the_command_and_exits_with_its_status():
    s = Script().to_leading()
    s.step(L.Signal(signal.SIGTERM))
    assert s.of(L.StopChild) == [L.StopChild(0.5)] and isinstance(s.phase, L.Stopping)
    s.step(L.ChildExited(4242, 0, "stopped", False, True))
    assert s.of(L.Exit) == [L.Exit(status=0)]


def test_sigterm_with_unknown_status_exits_128_plus_signal():
    s = Script().to_leading()
    s.step(L.Signal(signal.SIGINT))
    s.step(L.ChildExited(4242, None, "stopped", True, True))
    assert s.of(L.Exit) == [L.Exit(status=128 + signal.SIGINT)]


def test_second_sigterm_kills_now_and_says_it_was_the_users_signal():
    s = Script(grace=1.0).to_leading()
    s.step(L.Signal(signal.SIGTERM))
    s.step(L.Signal(signal.SIGTERM))
    assert s.of(L.StopChild) == [L.StopChild(0.0)]
    s.step(L.ChildExited(4242, 137, "stopped", True, True))
    assert "second SIGTERM" in s.logs() and "grace period" not in s.logs()


def test_a_command_that_ignores_sigterm_is_reported_killed_after_the_grace():
    s = Script().to_leading()
    s.step(L.Signal(signal.SIGTERM))
    s.step(L.ChildExited(4242, 137, "stopped", True, True))
    assert "did not stop within the grace period" in s.logs()


@pytest.mark.parametrize("signo", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH])
def test_other_signals_are_forwarded_while_leading(signo):
    s = Script().to_leading()
    assert s.step(L.Signal(signo)) == [L.Forward(signo)]


def test_watchdog_lost_while_leading_kills_the_group_itself_then_leaves():
    s = Script().to_leading()
    s.step(L.WatchdogLost())
    assert s.of(L.KillGroup) and not s.of(L.EndSession)
    s.step(L.GroupKilled(True))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]
    assert isinstance(s.of(L.Exit)[0].error, WatchdogFailed)


def test_unresponsive_watchdog_is_killed_and_the_group_killed_by_the_elector():
    s = Script().to_leading()
    s.step(L.WatchdogUnresponsive())
    assert s.of(L.KillWatchdog) and s.of(L.KillGroup)


def test_frozen_watchdog_the_elector_kills_at_the_deadline_itself():
    """Issue 8 item 3: the elector asked a frozen watchdog to stop and never did it itself."""
    s = Script().to_leading()
    s.step(L.KeyChanged(None, 150))
    deadline = s.phase.deadline
    assert L.wake_at(s.core) == deadline
    assert s.tick() == [L.KillGroup()]
    assert s.now == deadline


def test_exit_on_loss_exits_75_after_the_stop():
    s = Script(exit_on_loss=True).to_leading()
    s.step(L.KeyChanged(None, 120))
    s.step(L.ChildExited(4242, 143, "stopped", False, True))
    assert isinstance(s.of(L.Exit)[0].error, LeadershipLost)


def test_lease_expired_kill_by_the_watchdog_means_campaign_again():
    s = Script().to_leading()
    s.step(L.ChildExited(4242, 137, "lease-expired", True, True))
    assert "lost leadership" in s.logs() and isinstance(s.phase, L.Campaigning)
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]


def test_a_worker_thread_failure_stops_the_command_and_exits_70():
    s = Script().to_leading()
    s.step(L.ThreadFailed("session-keeper", "OSError: boom"))
    assert s.of(L.StopChild)
    s.step(L.ChildExited(4242, 143, "stopped", False, True))
    assert isinstance(s.of(L.Exit)[0].error, InternalError)


def test_defect_6_renew_interval_is_set_by_the_core_not_read_across_threads():
    """Old: the keeper thread read Election.deadline to pick its interval."""
    s = Script().to_leading()
    s.step(L.KeyChanged(None, 120))
    s.step(L.ChildExited(4242, 143, "stopped", False, True))
    s.tick()
    s.step(L.SessionOpened("s2", s.now))
    assert s.of(L.SetRenewInterval) == [L.SetRenewInterval(s.config.follower_renew_interval)]


def test_defect_7_every_wait_while_a_command_may_run_has_a_bound():
    """Old: _step_down and shutdown waited for the watchdog's `exited` with no limit."""
    s = Script().to_leading()
    assert L.wake_at(s.core) is not None
    s.step(L.Signal(signal.SIGTERM))
    assert L.wake_at(s.core) is not None
    s.step(L.ChildExited(4242, 0, "stopped", True, False, survivors=(5,)))
    assert L.wake_at(s.core) == s.now + defaults.CONTAIN_RETRY


def test_leaving_ignores_everything_after_exit():
    s = Script().with_session()
    s.step(L.Signal(signal.SIGTERM))
    assert s.step(L.Signal(signal.SIGTERM)) == []
    assert L.wake_at(s.core) is None


def test_a_leader_with_our_own_name_is_called_out():
    s = Script().to_campaigning()
    s.step(L.KeyChanged(held("other", name="me"), 60))
    assert "another candidate is named 'me' too" in s.logs()


def test_a_leader_elected_while_its_watch_is_down_asks_for_the_watch_at_once():
    """Consul back after an outage: the acquire may beat the watcher's back-off, and without the
    watch the new leader could not extend its lease (it stepped down 1.2 s later)."""
    s = Script().with_session()
    s.step(L.WatchFailed(ConsulUnavailable("connection refused")))
    s.tick()
    acts = s.step(L.Acquired(9, s.now))
    assert L.RewatchNow() in acts
