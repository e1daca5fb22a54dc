"""The driver's bookkeeping of the --on-demoted hook a term owes: the watchdog is told when a
term begins that owes one, and untold only as the elector starts the hook itself, so that the
hook runs once per term whichever process is alive to run it (README "Hooks")."""

from __future__ import annotations

import dataclasses

from consul_elect import driver, leadership
from consul_elect import watchdog_protocol as proto
from consul_elect.config import HOOK_ON_DEMOTED, HOOK_ON_ELECTED, Config


class Recorder:
    """Stands in for the watchdog link and the hook runner: one ordered record of both."""

    def __init__(self) -> None:
        self.seen: list = []

    def send(self, message) -> None:
        self.seen.append(message)

    def start(self, name: str, command: str, env: dict) -> None:
        self.seen.append(("hook", name, env["CONSUL_ELECT_FENCING_TOKEN"]))


def make_driver(**config) -> tuple[driver.Driver, Recorder]:
    record = Recorder()
    d = driver.Driver(Config(key="svc/owed", command=["true"], name="a", **config), record)
    d.hooks = record
    d.core, _ = leadership.start(d.config, 0.0)
    return d, record


def in_term(d: driver.Driver, token: int | None) -> None:
    d.core = dataclasses.replace(d.core, memory=dataclasses.replace(d.core.memory, hook_term=token))


def test_a_term_that_owes_the_hook_is_told_to_the_watchdog_once():
    d, record = make_driver(on_demoted="echo bye")
    d._tell_owed_hook()
    assert record.seen == []
    in_term(d, 7)
    d._tell_owed_hook()
    d._tell_owed_hook()
    assert len(record.seen) == 1
    env = record.seen[0].env
    assert isinstance(record.seen[0], proto.SetDemotedHook)
    assert (env["CONSUL_ELECT_HOOK"], env["CONSUL_ELECT_ROLE"], env["CONSUL_ELECT_FENCING_TOKEN"]) == \
        (HOOK_ON_DEMOTED, "follower", "7")
    assert env["CONSUL_ELECT_KEY"] == "svc/owed" and "PATH" not in env  # the watchdog adds its environment


def test_the_debt_is_cleared_just_before_the_elector_starts_the_hook_itself():
    d, record = make_driver(on_demoted="echo bye", on_elected="echo hi")
    in_term(d, 7)
    d._tell_owed_hook()
    d._perform(leadership.RunHook(HOOK_ON_ELECTED, 7))
    in_term(d, None)  # the step that ends the term clears it, with RunHook(on-demoted) to perform
    d._tell_owed_hook()
    assert record.seen[1:] == [("hook", HOOK_ON_ELECTED, "7")], "nothing untold before the hook runs"
    d._perform(leadership.RunHook(HOOK_ON_DEMOTED, 7))
    assert record.seen[2:] == [proto.SetDemotedHook(None), ("hook", HOOK_ON_DEMOTED, "7")]
    in_term(d, 8)
    d._tell_owed_hook()
    assert record.seen[-1].env["CONSUL_ELECT_FENCING_TOKEN"] == "8"


def test_nothing_is_told_without_an_on_demoted_hook():
    d, record = make_driver(on_elected="echo hi")
    in_term(d, 7)
    d._tell_owed_hook()
    d._perform(leadership.RunHook(HOOK_ON_ELECTED, 7))
    assert record.seen == [("hook", HOOK_ON_ELECTED, "7")]
