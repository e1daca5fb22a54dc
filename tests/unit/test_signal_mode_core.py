"""Signal mode, the role file and the transition hooks, with no Consul: the core phase by phase on a
scripted clock (each new phase against each event it must handle), then the settings, the role
file's format, the hook runner and the metric.

Signal mode's phases: Checking -> Starting -> Campaigning -> Leading -> StandingDown ->
Campaigning, and Stopping (the process) on the way out.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_leadership import KEY, T0, Script, held, identity_value

from consul_elect import config as defaults
from consul_elect import leadership as L
from consul_elect import role_file, supervisor
from consul_elect import watchdog_protocol as proto
from consul_elect.config import Config
from consul_elect.errors import InternalError, LeadershipLost, LeadershipTimeout, PermissionDenied, UsageError
from consul_elect.hooks import Hooks
from consul_elect.lock_key import KeyState
from consul_elect.metrics import ElectionMetrics
from consul_elect.state import CAMPAIGNING, LEADER, STEPPING_DOWN, ElectionState
from consul_elect.watchdog_protocol import REASON_EXITED, REASON_NOT_ACKNOWLEDGED, REASON_STOPPED

PID = 4242
ELECTED, DEMOTED = defaults.HOOK_ON_ELECTED, defaults.HOOK_ON_DEMOTED


class SignalScript(Script):
    """Script in signal mode: the command starts (as a follower) before the campaign."""

    def __init__(self, **config):
        super().__init__(mode="signal", **config)

    def to_starting(self, key=None):
        assert self.tick() == [L.CheckKey()]
        acts = self.step(L.KeyRead(key))
        assert isinstance(self.phase, L.Starting) and acts[0] == L.StartCommand()
        return self

    def to_following(self, key=None, pid=PID):
        self.to_starting(key)
        self.step(L.Spawned(pid))
        assert isinstance(self.phase, L.Campaigning) and self.core.memory.command_pid == pid
        assert self.tick() == [L.OpenSession()]
        self.step(L.SessionOpened("s1", self.now))
        return self

    def to_leading(self, token=100, pid=PID):
        self.to_following(pid=pid)
        assert self.tick() == [L.Acquire("s1")]
        self.step(L.Acquired(token, self.now))
        assert isinstance(self.phase, L.Leading) and self.phase.pid == pid
        self.step(L.Elected(token))
        return self

    def to_standing_down(self, token=100, event=None):
        self.to_leading(token)
        self.step(event or L.KeyChanged(None, token + 20))
        assert isinstance(self.phase, L.StandingDown)
        return self


# -- Checking -> Starting ------------------------------------------------------------------------


def test_the_command_starts_after_the_key_check_and_before_any_session():
    s = SignalScript().to_starting()
    assert not s.of(L.OpenSession) and not s.of(L.Acquire)
    assert L.wake_at(s.core) is None, "nothing to do until the watchdog answers"


def test_a_key_holding_another_tools_data_is_refused_before_the_command_starts():
    s = SignalScript()
    s.tick()
    s.step(L.KeyRead(KeyState(None, 5, 0, b"not ours")))
    assert not s.of(L.StartCommand) and s.of(L.Exit)


# -- Starting ------------------------------------------------------------------------------------


def test_starting_spawned_begins_the_campaign_as_a_follower():
    s = SignalScript().to_starting()
    s.step(L.Spawned(PID))
    assert s.published() == {"child_started": True, "leader": None, "state": CAMPAIGNING}
    assert "started the command as a follower (pid 4242)" in s.logs()
    assert s.tick() == [L.OpenSession()]


def test_starting_key_news_is_kept_and_followed_once_the_command_runs():
    s = SignalScript().to_starting()
    s.step(L.KeyChanged(held("other"), 60))
    assert not s.actions
    s.step(L.Spawned(PID))
    assert "following other" in s.logs() and s.of(L.TellLeader) == [L.TellLeader("other")]


def test_starting_spawn_failure_exits_with_its_code_and_nothing_to_stop():
    s = SignalScript().to_starting()
    s.step(L.SpawnFailed(False, 127, "cmd: No such file or directory"))
    assert s.of(L.Exit) == [L.Exit(status=127)] and not s.of(L.StopChild)


def test_starting_sigterm_stops_the_command_being_started():
    s = SignalScript().to_starting()
    s.step(L.Signal(signal.SIGTERM))
    assert s.of(L.StopChild) == [L.StopChild(0.5)] and isinstance(s.phase, L.Stopping)
    s.step(L.Spawned(PID))  # the Stop follows the Start in the watchdog's queue
    s.step(L.ChildExited(PID, None, REASON_STOPPED, False, True))
    assert s.of(L.Exit) == [L.Exit(status=128 + signal.SIGTERM)]


def test_starting_other_signals_have_no_command_yet():
    s = SignalScript().to_starting()
    s.step(L.Signal(signal.SIGHUP))
    assert not s.of(L.Forward) and "no command to forward it to" in s.logs()


def test_starting_watchdog_lost_kills_the_group_and_exits_70():
    s = SignalScript().to_starting()
    s.step(L.WatchdogLost())
    assert s.of(L.KillGroup)
    s.step(L.GroupKilled(True))
    assert isinstance(s.of(L.Exit)[0].error, L.WatchdogFailed)


def test_starting_timeout_stops_the_command_then_exits_124():
    s = SignalScript(timeout=5.0).to_starting()
    assert L.wake_at(s.core) == T0 + 5.0
    s.tick()
    assert s.of(L.StopChild)
    s.step(L.Spawned(PID))
    s.step(L.ChildExited(PID, 143, REASON_STOPPED, False, True))
    assert isinstance(s.of(L.Exit)[0].error, LeadershipTimeout)


def test_starting_thread_failure_stops_the_command_and_exits_70():
    s = SignalScript().to_starting()
    s.step(L.ThreadFailed("key-watcher", "boom"))
    assert s.of(L.StopChild)


# -- Campaigning with the command running ------------------------------------------------------


def test_elected_tells_the_running_command_first_and_spawns_nothing():
    s = SignalScript().to_following()
    s.tick()
    acts = s.step(L.Acquired(77, s.now))
    assert acts[:2] == [L.SendLease("s1", s.now + s.config.lease_window), L.Elect(77)]
    assert not s.of(L.Spawn) and s.phase == L.Leading(77, s.now + s.config.lease_window, PID)
    assert s.published()["state"] == LEADER and s.published()["fencing_token"] == 77


def test_following_forwards_signals_to_the_running_command():
    s = SignalScript().to_following()
    assert s.step(L.Signal(signal.SIGHUP)) == [L.Forward(signal.SIGHUP)]


@pytest.mark.parametrize("status, expected", [(0, 0), (None, 128 + signal.SIGTERM)])
def test_following_sigterm_stops_the_command_and_exits_with_its_status(status, expected):
    s = SignalScript().to_following()
    s.step(L.Signal(signal.SIGTERM))
    assert s.of(L.StopChild) == [L.StopChild(0.5)] and not s.of(L.Exit)
    s.step(L.ChildExited(PID, status, REASON_STOPPED, False, True))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]
    assert s.of(L.Exit) == [L.Exit(status=expected)]


def test_following_the_command_exiting_on_its_own_ends_the_race_with_its_status():
    s = SignalScript().to_following(key=held("other"))
    s.step(L.ChildExited(PID, 3, REASON_EXITED, False, True))
    assert "the command exited with status 3" in s.logs()
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)] and s.of(L.Exit) == [L.Exit(status=3)]


def test_following_watchdog_lost_kills_the_group_itself():
    s = SignalScript().to_following()
    s.step(L.WatchdogUnresponsive())
    assert s.of(L.KillWatchdog) and s.of(L.KillGroup)
    s.step(L.GroupKilled(True))
    assert isinstance(s.of(L.Exit)[0].error, L.WatchdogFailed)


def test_following_a_fatal_consul_error_stops_the_command_before_leaving():
    s = SignalScript().to_following()
    s.tick()
    error = PermissionDenied("Consul ACL denied the request")
    s.step(L.RequestFailed(error))
    assert s.of(L.StopChild) and not s.of(L.Exit)
    s.step(L.ChildExited(PID, 0, REASON_STOPPED, False, True))
    assert s.of(L.Exit)[0].error is error


def test_following_timeout_stops_the_command_then_exits_124():
    s = SignalScript(timeout=5.0).to_following(key=held("other"))
    s.tick(T0 + 5.0)
    s.step(L.ChildExited(PID, 0, REASON_STOPPED, False, True))
    assert isinstance(s.of(L.Exit)[0].error, LeadershipTimeout)


def test_the_role_file_learns_who_leads():
    s = SignalScript().to_following()
    s.step(L.KeyChanged(held("other"), 60))
    assert s.of(L.TellLeader) == [L.TellLeader("other")]
    s.step(L.KeyChanged(KeyState(None, 61, 1, identity_value("other", released=True)), 61))
    assert s.of(L.TellLeader) == [L.TellLeader(None)]


# -- Leading (the command was told it leads) -------------------------------------------------------


def test_elected_answer_runs_the_on_elected_hook_only_when_there_is_one():
    s = SignalScript().to_following()
    s.tick()
    s.step(L.Acquired(100, s.now))
    assert s.step(L.Elected(100)) == [L.LeaveQueue("s1")], "the command was told: the queue is left"
    h = SignalScript(on_elected="notify").to_following()
    h.tick()
    h.step(L.Acquired(100, h.now))
    assert h.step(L.Elected(100)) == [L.LeaveQueue("s1"), L.RunHook(ELECTED, 100)]


def test_lease_running_out_demotes_grace_before_the_deadline_keeping_the_key():
    s = SignalScript().to_leading()
    deadline = s.phase.deadline
    acts = s.tick()
    assert s.now == pytest.approx(deadline - 0.5)
    assert acts[0] == L.Demote(100) and not s.of(L.StopChild) and not s.of(L.EndSession)
    assert s.phase.key_held and s.phase.then is L.Then.CAMPAIGN
    assert s.published() == {"state": STEPPING_DOWN, "fencing_token": None, "lease_deadline": None}


@pytest.mark.parametrize("event", [
    L.KeyChanged(None, 120),
    L.KeyChanged(KeyState(None, 120, 1, b""), 120),
    L.KeyChanged(held("thief", index=120), 120),
    L.SessionEnded("s1"),
], ids=["deleted", "released", "taken", "session-invalidated"])
def test_losing_the_key_demotes_at_once(event):
    s = SignalScript().to_leading()
    acts = s.step(event)
    assert acts[0] == L.Demote(100) and isinstance(s.phase, L.StandingDown) and not s.phase.key_held
    assert "lost leadership" in s.logs()


def test_sigterm_while_leading_demotes_first_and_keeps_the_key():
    s = SignalScript().to_leading()
    acts = s.step(L.Signal(signal.SIGTERM))
    assert acts[0] == L.Demote(100) and not s.of(L.StopChild) and not s.of(L.EndSession)
    assert s.phase.then is L.Then.EXIT and s.phase.key_held and s.phase.shutdown_signo == signal.SIGTERM


def test_the_watchdogs_own_demotion_is_taken_as_the_end_of_the_term():
    """The watchdog demoted at deadline - grace (a renewal came too late, or we were frozen)."""
    s = SignalScript(on_demoted="notify").to_leading()
    s.step(L.Renewed("s1", s.now + 0.4))  # even with a fresher lease, the command was told
    acts = s.step(L.Demoted(100, by_watchdog=True))
    assert isinstance(s.phase, L.StandingDown) and not s.of(L.Demote)
    assert L.RunHook(DEMOTED, 100) in acts and "which demoted the command" in s.logs()


def test_the_command_exiting_while_leading_releases_and_exits_with_its_status():
    s = SignalScript().to_leading()
    s.step(L.ChildExited(PID, 9, REASON_EXITED, False, True))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)] and s.of(L.Exit) == [L.Exit(status=9)]


def test_leading_renewals_extend_the_lease_as_in_exec_mode():
    s = SignalScript().to_leading()
    sent = s.now + 0.4
    s.step(L.Renewed("s1", sent))
    assert s.of(L.SendLease) == [L.SendLease("s1", sent + s.config.lease_window)]


def test_leading_forwards_other_signals():
    s = SignalScript().to_leading()
    assert s.step(L.Signal(signal.SIGWINCH)) == [L.Forward(signal.SIGWINCH)]


def test_leading_watchdog_lost_kills_the_group():
    s = SignalScript().to_leading()
    s.step(L.WatchdogLost())
    assert s.of(L.KillGroup)
    s.step(L.GroupKilled(True))
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)]
    assert isinstance(s.of(L.Exit)[0].error, L.WatchdogFailed)


def test_leading_thread_failure_stands_down_then_stops_then_exits_70():
    s = SignalScript().to_leading()
    s.step(L.ThreadFailed("session-keeper", "boom"))
    assert s.of(L.Demote) and s.phase.then is L.Then.EXIT
    s.step(L.Acked(100))
    assert s.of(L.StopChild)
    s.step(L.ChildExited(PID, 0, REASON_STOPPED, False, True))
    assert isinstance(s.of(L.Exit)[0].error, InternalError)


# -- StandingDown ------------------------------------------------------------------------------


def test_acknowledged_loss_releases_and_campaigns_with_the_command_still_running():
    s = SignalScript().to_standing_down()
    s.step(L.Acked(100), at=s.now + 0.01)
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)] and not s.of(L.StopChild)
    assert isinstance(s.phase, L.Campaigning) and s.core.memory.command_pid == PID
    assert "stood down from term 100 (0.010s after it was told)" in s.logs()
    assert s.published()["state"] == CAMPAIGNING and not s.of(L.Exit)
    assert s.tick() == [L.OpenSession()], "a new session, as after any release"


def test_acknowledged_sigterm_releases_before_the_command_is_stopped():
    s = SignalScript().to_standing_down(event=L.Signal(signal.SIGTERM))
    acts = s.step(L.Acked(100))
    kinds = [type(a) for a in acts]
    assert kinds.index(L.EndSession) < kinds.index(L.StopChild), "the next leader must not wait for our stop"
    assert not s.of(L.Exit)
    s.step(L.ChildExited(PID, None, REASON_STOPPED, False, True))
    assert s.of(L.Exit) == [L.Exit(status=128 + signal.SIGTERM)]


def test_an_acknowledgement_of_another_term_does_not_count():
    s = SignalScript().to_standing_down(token=100)
    assert s.step(L.Acked(99)) == [] and isinstance(s.phase, L.StandingDown)


def test_acknowledged_with_exit_on_loss_stops_the_command_and_exits_75():
    s = SignalScript(exit_on_loss=True).to_standing_down()
    s.step(L.Acked(100))
    assert s.of(L.StopChild)
    s.step(L.ChildExited(PID, 0, REASON_STOPPED, False, True))
    assert isinstance(s.of(L.Exit)[0].error, LeadershipLost)


def test_a_command_killed_for_not_acknowledging_is_released_and_its_status_returned():
    s = SignalScript().to_standing_down(event=L.Signal(signal.SIGTERM))
    s.step(L.ChildExited(PID, 137, REASON_NOT_ACKNOWLEDGED, True, True))
    assert "did not acknowledge its demotion within 0.5s" in s.logs()
    assert s.of(L.EndSession) == [L.EndSession("s1", release=True)] and s.of(L.Exit) == [L.Exit(status=137)]


def test_a_command_killed_for_not_acknowledging_a_loss_ends_the_race():
    s = SignalScript().to_standing_down()
    s.step(L.ChildExited(PID, 137, REASON_NOT_ACKNOWLEDGED, True, True))
    assert s.of(L.Exit) == [L.Exit(status=137)]


def test_standing_down_with_the_key_renewals_keep_it():
    s = SignalScript().to_standing_down(event=L.Signal(signal.SIGTERM))
    sent = s.now + 0.3
    s.step(L.Renewed("s1", sent))
    assert s.phase.deadline == sent + s.config.lease_window and s.of(L.SendLease)


def test_standing_down_after_a_loss_renewals_extend_nothing():
    s = SignalScript().to_standing_down()
    deadline = s.phase.deadline
    s.step(L.Renewed("s1", s.now + 0.3))
    assert s.phase.deadline == deadline and not s.of(L.SendLease)


@pytest.mark.parametrize("event", [L.KeyChanged(None, 130), L.SessionEnded("s1")])
def test_standing_down_the_key_can_still_be_lost(event):
    s = SignalScript().to_standing_down(event=L.Signal(signal.SIGTERM))
    s.step(event)
    assert not s.phase.key_held


def test_standing_down_the_elector_kills_at_the_deadline_if_the_command_has_not_acknowledged():
    s = SignalScript().to_standing_down()
    deadline = s.phase.deadline
    assert L.wake_at(s.core) == deadline
    assert s.tick() == [L.CheckAck(100)] and s.now == deadline
    acts = s.step(L.NotAcked(100))
    assert acts[-1] == L.KillGroup() and isinstance(s.phase, L.Stopping) and s.phase.backup_killed
    assert "has not acknowledged its demotion from term 100 by the lease deadline" in s.logs()


def test_a_thawed_elector_finds_the_acknowledgement_the_watchdogs_news_had_not_brought_yet():
    """Frozen past its deadline while leading: the watchdog demoted the command on its own, the
    command acknowledged, the watchdog released the key. The elector thaws and its timers fire
    before the watchdog's Demoted and Acked are read: it must not kill the command that stood
    down, but find the acknowledgement and campaign again with it running (a CI failure)."""
    s = SignalScript().to_leading()
    s.tick(at=s.phase.deadline + 1.0)
    assert isinstance(s.phase, L.StandingDown)
    assert s.tick() == [L.CheckAck(100)]
    acts = s.step(L.Acked(100))
    assert not s.of(L.KillGroup) and not s.of(L.StopChild) and not s.of(L.Exit)
    assert L.EndSession("s1", release=True) in acts and isinstance(s.phase, L.Campaigning)
    assert s.core.memory.command_pid == PID
    for late in (L.Demoted(100, by_watchdog=True), L.Acked(100)):
        assert not s.step(late) or not s.of(L.KillGroup)
        assert isinstance(s.phase, L.Campaigning)


def test_an_acknowledgement_of_another_term_read_at_the_deadline_does_not_count():
    s = SignalScript().to_standing_down()
    s.tick()
    s.step(L.NotAcked(99))
    assert isinstance(s.phase, L.StandingDown) and not s.of(L.KillGroup)


def test_sigterm_while_standing_down_leaves_after_it_and_a_second_kills_now():
    s = SignalScript().to_standing_down()
    s.step(L.Signal(signal.SIGTERM))
    assert s.phase.then is L.Then.EXIT and not s.of(L.StopChild)
    s.step(L.Signal(signal.SIGINT))
    assert s.of(L.StopChild) == [L.StopChild(0.0)] and "second signal" in s.logs()


def test_standing_down_forwards_other_signals():
    s = SignalScript().to_standing_down()
    assert s.step(L.Signal(signal.SIGHUP)) == [L.Forward(signal.SIGHUP)]


def test_standing_down_watchdog_lost_kills_the_group():
    s = SignalScript().to_standing_down()
    s.step(L.WatchdogLost())
    assert s.of(L.KillGroup)


def test_hooks_come_in_pairs_one_per_term():
    s = SignalScript(on_elected="up", on_demoted="down").to_following()
    s.tick()
    s.step(L.Acquired(100, s.now))
    assert s.step(L.Elected(100)) == [L.LeaveQueue("s1"), L.RunHook(ELECTED, 100)]
    s.step(L.KeyChanged(None, 120))
    assert not s.of(L.RunHook), "on-demoted runs once the command was told"
    assert s.step(L.Demoted(100)) == [L.RunHook(DEMOTED, 100)]
    s.step(L.Acked(100))
    assert not s.of(L.RunHook)


def test_a_demotion_ordered_before_the_elected_answer_still_pairs_the_hooks():
    s = SignalScript(on_elected="up", on_demoted="down").to_following()
    s.tick()
    s.step(L.Acquired(100, s.now))
    s.step(L.Signal(signal.SIGTERM))  # before the watchdog's Elected came back
    assert s.step(L.Elected(100)) == [L.RunHook(ELECTED, 100)]
    assert s.step(L.Demoted(100)) == [L.RunHook(DEMOTED, 100)]


@pytest.mark.parametrize("event", [L.Elected(100), L.Demoted(100), L.Acked(100)])
def test_late_role_answers_of_an_ended_term_are_ignored(event):
    s = SignalScript(on_elected="up", on_demoted="down").to_standing_down()
    s.step(L.Demoted(100))
    s.step(L.Acked(100))
    assert isinstance(s.phase, L.Campaigning)
    assert s.step(event) == [] and isinstance(s.phase, L.Campaigning)


def test_an_acknowledgement_without_a_demoted_answer_still_runs_on_demoted_once():
    s = SignalScript(on_demoted="down").to_standing_down()
    s.step(L.Acked(100))
    assert s.of(L.RunHook) == [L.RunHook(DEMOTED, 100)]


# -- exec mode: hooks and the role file, exec behaviour otherwise unchanged -------------------------


def test_exec_mode_hooks_run_after_the_start_and_after_the_stop():
    s = Script(on_elected="up", on_demoted="down").to_leading(token=100, pid=PID)
    assert s.of(L.RunHook) == [L.RunHook(ELECTED, 100)]
    s.step(L.KeyChanged(None, 120))
    assert not s.of(L.RunHook)
    acts = s.step(L.ChildExited(PID, 143, REASON_STOPPED, False, True))
    kinds = [type(a) for a in acts]
    assert s.of(L.RunHook) == [L.RunHook(DEMOTED, 100)] and kinds.index(L.EndSession) < kinds.index(L.RunHook)


def test_exec_mode_spawn_failure_runs_no_hook():
    s = Script(on_elected="up", on_demoted="down").with_session()
    s.tick()
    s.step(L.Acquired(9, s.now))
    s.step(L.SpawnFailed(True, None, "lease already expired"))
    assert not s.of(L.RunHook)


def test_exec_mode_with_a_role_file_tells_it_the_leader():
    s = Script(role_file="/run/r.role").to_campaigning()
    s.step(L.KeyChanged(held("other"), 60))
    assert s.of(L.TellLeader) == [L.TellLeader("other")]
    plain = Script().to_campaigning()
    plain.step(L.KeyChanged(held("other"), 60))
    assert not plain.of(L.TellLeader)


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, words", [
    (dict(mode="magic"), "--mode must be one of exec, signal"),
    (dict(elected_signal=signal.SIGUSR2), "both SIGUSR2"),
    (dict(demoted_signal=signal.SIGKILL), "--demoted-signal cannot be SIGKILL"),
    (dict(elected_signal=signal.SIGSTOP), "--elected-signal cannot be SIGSTOP"),
    (dict(hook_timeout=0), "--hook-timeout must be greater than 0"),
    (dict(role_file="dir/"), "--role-file must name a file"),
])
def test_bad_signal_mode_settings_are_refused(fields, words):
    with pytest.raises(UsageError, match=words):
        Config(key="a/b", command=("x",), **fields)


def test_the_default_role_file_is_per_key_in_tmpdir(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert Config(key="svc/a/b", command=("x",), mode="signal").role_file_path == str(tmp_path / "consul-elect-svc_a_b.role")
    assert Config(key="svc/a", command=("x",)).role_file_path is None, "exec mode: only when asked"
    assert Config(key="svc/a", command=("x",), role_file="r.role").role_file_path == os.path.abspath("r.role")


@pytest.mark.parametrize("args, words", [
    (["--elected-signal", "SIGFOO"], "unknown signal 'SIGFOO'"),
    (["--mode", "signal", "--demoted-signal", "usr1"], "both SIGUSR1"),
    (["--mode", "telepathy"], "'telepathy' is not one of"),
    (["--hook-timeout", "soon"], "--hook-timeout"),
])
def test_bad_flags_are_one_line_and_exit_2(args, words):
    proc = subprocess.run([sys.executable, "-m", "consul_elect", "run", "--key", "a/b", *args, "--", "true"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr


def test_signal_names_numbers_and_short_forms_are_accepted():
    from consul_elect.cli import SIGNAL

    assert SIGNAL.convert("SIGHUP", None, None) == SIGNAL.convert("hup", None, None) == SIGNAL.convert("1", None, None)


# -- the role file -----------------------------------------------------------------------------


@pytest.mark.parametrize("message", [
    proto.Spawn({"A": "1"}, 7), proto.Start({"A": "1"}), proto.Elect(7), proto.Demote(7), proto.SetLeader("b"),
    proto.SetLeader(None), proto.Elected(7), proto.Demoted(7, True), proto.Acked(7),
])
def test_the_signal_mode_messages_round_trip(message):
    assert proto.decode(proto.encode(message)) == message


def test_role_file_documents_and_acknowledgements(tmp_path):
    path = str(tmp_path / "r.role")
    assert role_file.write(path, role_file.document("leader", "me", 156, 81234.5181, path=path))
    doc = json.loads(open(path).read())
    assert doc["role"] == "leader" and doc["fencing_token"] == 156 and doc["lease_deadline"] == 81234.518
    assert doc["leader"] == "me" and doc["lease_clock"] and doc["since"] and doc["ack_file"] == path + ".ack"
    role_file.write(path, role_file.document("follower", "other", 156, 81234.5, demoted_from=156, path=path))
    doc = json.loads(open(path).read())
    assert doc["fencing_token"] is None and doc["lease_deadline"] is None and doc["demoted_from"] == 156
    assert not os.path.exists(path + ".tmp")
    assert not role_file.acknowledged(path, 156)
    for text in ("follower 155\n", "follow", "leader 156", "follower 1560", ""):
        open(path + ".ack", "w").write(text)
        assert not role_file.acknowledged(path, 156), text
    open(path + ".ack", "w").write("follower 156\n")
    assert role_file.acknowledged(path, 156)
    role_file.remove(path)
    assert os.listdir(tmp_path) == []


def test_an_unwritable_role_file_is_a_warning_not_a_crash(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="consul_elect"):
        assert not role_file.write(str(tmp_path / "missing" / "r.role"), role_file.document("follower", None))
    assert "cannot write the role file" in caplog.text


def test_catches_signal_reads_the_handlers_of_a_process():
    handler = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                "signal.signal(signal.SIGUSR1, lambda *a: None); print(1, flush=True); time.sleep(30)"],
                               stdout=subprocess.PIPE)
    plain = subprocess.Popen(["sleep", "30"])
    try:
        handler.stdout.readline()
        assert supervisor.catches_signal(handler.pid, signal.SIGUSR1)
        assert not supervisor.catches_signal(handler.pid, signal.SIGUSR2)
        assert not supervisor.catches_signal(plain.pid, signal.SIGUSR1)
    finally:
        for p in (handler, plain):
            p.kill()
            p.wait()


# -- hooks -------------------------------------------------------------------------------------


def run_hook(command, timeout=5.0, env=None):
    failures = []
    hooks = Hooks(timeout, lambda: failures.append(1))
    hooks.start("on-elected", command, {**os.environ, **(env or {})})
    hooks.wait()
    return failures


def test_a_hook_runs_with_the_environment_and_its_output_is_logged_under_its_name(caplog):
    with caplog.at_level(logging.INFO, logger="consul_elect"):
        failures = run_hook('echo "role=$CONSUL_ELECT_ROLE"; echo oops >&2', env={"CONSUL_ELECT_ROLE": "leader"})
    assert not failures
    assert "hook on-elected: role=leader" in caplog.text and "hook on-elected: oops" in caplog.text


def test_a_failing_hook_is_counted_and_logged_with_its_status(caplog):
    with caplog.at_level(logging.WARNING, logger="consul_elect"):
        assert run_hook("exit 3") == [1]
    assert "hook on-elected exited with status 3" in caplog.text


def test_a_hung_hook_is_killed_at_the_timeout_with_what_it_started(caplog, tmp_path):
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="consul_elect"):
        failures = run_hook(f"sleep 60 & echo $! > {pidfile}; wait", timeout=0.5)
    assert failures == [1] and time.monotonic() - t0 < 3.0
    assert "did not finish within 0.5s: killed" in caplog.text
    background = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and os.path.exists(f"/proc/{background}") and \
            open(f"/proc/{background}/stat").read().split(") ")[1][0] != "Z":
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{background}") or \
        open(f"/proc/{background}/stat").read().split(") ")[1][0] == "Z", "the hook's sleep survived"


def test_a_hooks_status_is_right_whichever_thread_reaps_it():
    """PID 1 reaps every child with waitpid(-1): the hook's status must not be lost to it."""
    stop = threading.Event()

    def reaper():
        while not stop.is_set():
            supervisor.reap_all()
            time.sleep(0.001)

    thread = threading.Thread(target=reaper, daemon=True)
    thread.start()
    try:
        assert run_hook("sleep 0.1; exit 4") == [1]
        assert run_hook("sleep 0.1; exit 0") == []
    finally:
        stop.set()
        thread.join()


def test_hook_failures_are_a_metric():
    state = ElectionState(KEY, "me")
    state.hook_failed()
    text = ElectionMetrics(state).render().decode()
    assert f'consul_elect_hook_failures_total{{key="{KEY}"}} 1.0' in text
