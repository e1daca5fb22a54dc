"""The leadership core: one pure function decides everything the elector does.

    step(core, event, now, rand) -> (core, actions)

No I/O and no clock reads here: the driver reads events (signals, key changes, renewals, the
watchdog's answers, timers), passes the lease clock's `now` and a random number for jitter,
performs the actions in order, and feeds each action's result back in as an event. `wake_at`
says when the driver must call again with `Tick` if nothing else happens.

The phase is one value carrying its own data. Exec mode (the command runs only while leader):

    Checking -> Campaigning -> Spawning -> Leading -> Stopping -> Campaigning (or Leaving)

Signal mode (the command runs on every candidate; only its *role* comes and goes):

    Checking -> Starting -> Campaigning -> Leading -> StandingDown -> Campaigning
                                                   (any phase) -> Stopping -> Leaving

In both, Leading means "the command holds the role": exec mode's command runs; signal mode's
was told it leads (Elect). What ends a term differs: exec mode stops the process (Stopping);
signal mode demotes it and waits for its acknowledgement (StandingDown), keeping the key until
then, and stops the process (Stopping) only on the way out. Either way the watchdog keeps the
lease promise: the leader work ends by the lease deadline, or the process is killed.

`Memory` is what outlives a phase: our session, the key as last seen, whether Consul answers,
the last other holder we followed, and in signal mode the command's pid. Losing the lock is an
ordinary event.
"""

from __future__ import annotations

import dataclasses
import enum
import logging

from . import config as defaults
from .config import Config
from .errors import (
    ConsulError, ConsulTLSError, ConsulUnavailable, ElectError, InternalError, LeadershipLost, LeadershipTimeout, NotAnElectKey,
    SessionGone, WatchdogFailed,
)
from .lock_key import KeyState, parse_identity, turn
from .state import CAMPAIGNING, DISCONNECTED, FOLLOWER, LEADER, STEPPING_DOWN
from .signals import SHUTDOWN_SIGNALS, name as signal_name
from .watchdog_protocol import REASON_LEASE_EXPIRED, REASON_NOT_ACKNOWLEDGED



class Reach(enum.Enum):
    NEVER = "never"       # Consul has not answered yet: patience is limited (STARTUP_PATIENCE)
    NEVER_FAILING = "never-failing"  # ... and the last attempt failed
    UP = "up"
    DOWN = "down"         # it answered once, and the last request failed: ride it out

    @property
    def answered(self) -> bool:
        return self in (Reach.UP, Reach.DOWN)

    @property
    def failing(self) -> bool:
        return self in (Reach.NEVER_FAILING, Reach.DOWN)


# -- events ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tick:
    """A timer from wake_at() came due (or the loop's periodic wake-up)."""


@dataclasses.dataclass(frozen=True)
class KeyRead:
    """The answer to CheckKey: the key as it is before we campaign (with --holders, *slot*'s)."""
    key: KeyState | None
    slot: int = 0


@dataclasses.dataclass(frozen=True)
class KeyChanged:
    """The key watcher's news; *index* is Consul's index of the answer. With --holders, the key
    is slot *slot* (slots.view picks it) and *before* its state when last seen held."""
    key: KeyState | None
    index: int
    slot: int = 0
    before: KeyState | None = None
    # How long the watcher held this news back already, for our turn after a clean release.
    waited: float = 0.0


@dataclasses.dataclass(frozen=True)
class WatchFailed:
    error: ConsulError


@dataclasses.dataclass(frozen=True)
class SessionOpened:
    session: str
    sent_at: float   # when the create was sent: the session's first proof of life


@dataclasses.dataclass(frozen=True)
class Acquired:
    token: int
    sent_at: float


@dataclasses.dataclass(frozen=True)
class AcquireRefused:
    """The key is held by another session, or a lock-delay is running."""


@dataclasses.dataclass(frozen=True)
class HolderChecked:
    session: str
    alive: bool


@dataclasses.dataclass(frozen=True)
class RequestFailed:
    """A request the driver made for an action failed (the error says how)."""
    error: ConsulError


@dataclasses.dataclass(frozen=True)
class Renewed:
    session: str
    sent_at: float
    latency: float = 0.0   # for the metrics only


@dataclasses.dataclass(frozen=True)
class RenewFailed:
    session: str
    error: ConsulError


@dataclasses.dataclass(frozen=True)
class SessionEnded:
    """Consul says the session no longer exists (destroyed, expired, its node gone)."""
    session: str


@dataclasses.dataclass(frozen=True)
class Spawned:
    pid: int


@dataclasses.dataclass(frozen=True)
class SpawnFailed:
    lease_expired: bool
    code: int | None
    error: str


@dataclasses.dataclass(frozen=True)
class ChildExited:
    pid: int | None
    status: int | None
    reason: str
    killed: bool
    confirmed: bool
    survivors: tuple = ()
    swept: bool = False   # it killed what the command left behind after exiting


@dataclasses.dataclass(frozen=True)
class GroupKilled:
    """The elector's own kill of the command's containment: *confirmed* once nothing is left."""
    confirmed: bool
    survivors: tuple = ()


@dataclasses.dataclass(frozen=True)
class Signal:
    signo: int


@dataclasses.dataclass(frozen=True)
class Elected:
    """Signal mode: the watchdog told the command it leads term *token* (role file, then signal)."""
    token: int


@dataclasses.dataclass(frozen=True)
class Demoted:
    """Signal mode: the watchdog told the command to stand down from *token*; *by_watchdog*: on
    its own, because the lease deadline came within the grace period without a renewal."""
    token: int
    by_watchdog: bool = False


@dataclasses.dataclass(frozen=True)
class Acked:
    """Signal mode: the command acknowledged that it stopped the leader work of *token*."""
    token: int


@dataclasses.dataclass(frozen=True)
class NotAcked:
    """Signal mode, the answer to CheckAck: the command has not acknowledged *token*."""
    token: int


@dataclasses.dataclass(frozen=True)
class WatchdogLost:
    """The watchdog process is gone (its socket closed)."""


@dataclasses.dataclass(frozen=True)
class WatchdogUnresponsive:
    """The watchdog answered no ping for WATCHDOG_ANSWER_TIMEOUT (frozen or wedged)."""


@dataclasses.dataclass(frozen=True)
class CommandStopped:
    """The command's main process was stopped (by the terminal, or Ctrl-Z) and does no work."""
    pid: int
    signo: int


@dataclasses.dataclass(frozen=True)
class ThreadFailed:
    """A worker thread hit an unexpected error and is gone; the process must fail visibly."""
    thread: str
    error: str


# -- actions --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckKey:
    """Read the key once (answer: KeyRead): refuse to campaign on another tool's data."""


@dataclasses.dataclass(frozen=True)
class OpenSession:
    """Create a session and start renewing it (answer: SessionOpened)."""


@dataclasses.dataclass(frozen=True)
class Acquire:
    """Try to lock the key. Exec mode: *lease_offer* is the lease deadline should the acquire
    succeed, for the watchdog to have before it answers (the spawn then needs one word)."""
    session: str
    lease_offer: float | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class CheckHolder:
    session: str


@dataclasses.dataclass(frozen=True)
class SetRenewInterval:
    seconds: float
    renew_now: bool = False


@dataclasses.dataclass(frozen=True)
class SendLease:
    """Give the watchdog the lease deadline (and the value to release the key with)."""
    session: str
    deadline: float


@dataclasses.dataclass(frozen=True)
class Spawn:
    token: int
    deadline: float


@dataclasses.dataclass(frozen=True)
class StartCommand:
    """Signal mode: start the command as a follower (answer: Spawned or SpawnFailed)."""


@dataclasses.dataclass(frozen=True)
class Elect:
    """Signal mode: tell the command it leads term *token* (answer: Elected)."""
    token: int


@dataclasses.dataclass(frozen=True)
class Demote:
    """Signal mode: tell the command to stand down from *token* (answers: Demoted, then Acked, or
    ChildExited when it did not acknowledge within the grace period and was killed)."""
    token: int


@dataclasses.dataclass(frozen=True)
class LeaveQueue:
    """Delete our entry in the queue of candidates: elected, we wait for nothing (no answer)."""
    session: str


@dataclasses.dataclass(frozen=True)
class CheckAck:
    """Signal mode: read the command's acknowledgement of *token* from the role file ourselves
    (answer: Acked or NotAcked), not trusting that the watchdog's news has reached us."""
    token: int


@dataclasses.dataclass(frozen=True)
class TellLeader:
    """Who leads, for the role file (None: nobody, or not known yet)."""
    name: str | None


@dataclasses.dataclass(frozen=True)
class RunHook:
    """Start hook *hook* (config.HOOK_ON_ELECTED or HOOK_ON_DEMOTED) for term *token*; nothing waits for it."""
    hook: str
    token: int


@dataclasses.dataclass(frozen=True)
class StopChild:
    grace: float


@dataclasses.dataclass(frozen=True)
class KillGroup:
    """The elector kills the command's containment itself (answer: GroupKilled), waiting at most
    *wait* seconds for it to go. Retries for survivors wait briefly: the loop must keep turning."""
    wait: float = defaults.KILL_WAIT


@dataclasses.dataclass(frozen=True)
class RewatchNow:
    """Tell the key watcher to retry at once instead of finishing its back-off: Consul answers."""


@dataclasses.dataclass(frozen=True)
class KillWatchdog:
    pass


@dataclasses.dataclass(frozen=True)
class Forward:
    signo: int


@dataclasses.dataclass(frozen=True)
class EndSession:
    """Stop renewing *session*; with *release*, release the key marked `released` and destroy
    the session. Without, leave it to expire (its TTL and lock-delay still protect the key)."""
    session: str
    release: bool


@dataclasses.dataclass(frozen=True)
class Publish:
    """Update the published snapshot (only the fields given)."""
    fields: dict


@dataclasses.dataclass(frozen=True)
class Log:
    level: int
    message: str


@dataclasses.dataclass(frozen=True)
class Exit:
    """Leave with the command's *status*, or raise *error* at the edge."""
    status: int = 0
    error: ElectError | None = None


# -- phases ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Checking:
    started_at: float
    next_at: float
    backoff: float = defaults.RECONNECT_BACKOFF_MIN


@dataclasses.dataclass(frozen=True)
class HolderWait:
    """A key freed without lock-delay while *session* (its holder) may still run its command.

    Waited on until that session ends, with no other bound: the old leader destroys it once its
    command is confirmed gone, its watchdog does if the elector died, and Consul expires it
    (2 x TTL) if both are gone. A lease-window bound would assume the old leader notices the
    loss in time, and one whose key watch stalls (while its renewals pass) does not."""
    session: str
    said: bool = False   # the wait was logged (once: only when the session is seen alive)


@dataclasses.dataclass(frozen=True)
class Campaigning:
    started_at: float
    # When to act next (open a session, acquire, check an old holder); None: wait for news.
    next_at: float | None
    backoff: float = defaults.RECONNECT_BACKOFF_MIN
    # Until then a refused acquire on a free key means a lock-delay: retry quickly.
    quick_retry_until: float = 0.0
    holder_wait: HolderWait | None = None
    lease_offer: float | None = None  # the last Acquire's (exec mode)


@dataclasses.dataclass(frozen=True)
class Starting:
    """Signal mode: the command is being started (as a follower); campaigning begins once it runs."""
    started_at: float


@dataclasses.dataclass(frozen=True)
class Spawning:
    token: int
    deadline: float


@dataclasses.dataclass(frozen=True)
class Leading:
    token: int
    deadline: float
    pid: int


class Then(enum.Enum):
    CAMPAIGN = "campaign"
    EXIT = "exit"


@dataclasses.dataclass(frozen=True)
class Stopping:
    reason: str
    then: Then
    deadline: float
    # None while the spawn has not been answered yet, or once the watchdog reported the exit.
    pid: int | None
    # Whether the key is still ours: only then do renewals extend the deadline.
    key_held: bool
    # The outcome once stopped: the exit status (None: take the command's), or an error.
    status: int | None = None
    error: ElectError | None = None
    # Set once the watchdog reported the command's run over: later reports are about nothing.
    reported: bool = False
    # Set once the command's run was reported over but something of it survived.
    survivors: tuple | None = None
    next_kill_at: float | None = None
    shutdown_signo: int | None = None  # the signal that asked us to leave (exit 128+N if no status)
    forced_by: int | None = None      # a second shutdown signal asked for SIGKILL now
    backup_killed: bool = False       # the elector's own SIGKILL at the deadline was sent
    watchdog_dead: bool = False


@dataclasses.dataclass(frozen=True)
class StandingDown:
    """Signal mode: the command was told to stand down from term *token* at *told_at* and has not
    acknowledged yet. The key is kept (renewed while *key_held*) until it does; the watchdog kills
    it if it has not by told_at + grace (or the lease deadline, if sooner). *then*: what follows
    the acknowledgement (campaign again, or release and stop the command on the way out)."""
    token: int
    deadline: float
    pid: int | None
    reason: str
    then: Then
    key_held: bool
    told_at: float
    shutdown_signo: int | None = None
    error: ElectError | None = None


@dataclasses.dataclass(frozen=True)
class Leaving:
    exit: Exit


Phase = Checking | Starting | Campaigning | Spawning | Leading | StandingDown | Stopping | Leaving


@dataclasses.dataclass(frozen=True)
class Holder:
    """Another candidate's session we followed, with its own timings (from its identity)."""
    session: str
    lease_window: float | None
    lock_delay: float | None


@dataclasses.dataclass(frozen=True)
class Memory:
    session: str | None = None
    key: KeyState | None = None
    consul: Reach = Reach.NEVER
    consul_error: ConsulError | None = None   # the last failure, while Consul is failing
    # False after the key watch failed, until it answers again: renewals prove the session,
    # not that the key is still ours, so they extend a lease only while the watch answers.
    watch_ok: bool = True
    # Send time of the latest request that proved our session alive (its create, or a renewal):
    # Consul's TTL timer runs from there, whatever an acquire proves about the key.
    session_proof: float | None = None
    holder: Holder | None = None
    # Our own earlier sessions: a key still held by one of them leads nobody (we could not
    # release it while Consul was down); it only blocks the key until Consul expires it.
    ended_sessions: tuple = ()
    # Signal mode: the command's pid while it runs (it outlives the terms).
    command_pid: int | None = None
    # The term whose on-elected hook ran and whose on-demoted hook has not: hooks come in pairs.
    hook_term: int | None = None
    # --holders: the slot `key` is (the one we campaign on, or hold).
    slot: int = 0


@dataclasses.dataclass(frozen=True)
class Core:
    config: Config
    phase: Phase
    memory: Memory = Memory()


Actions = list


def start(config: Config, now: float) -> tuple[Core, Actions]:
    core = Core(config, Checking(started_at=now, next_at=now))
    return core, [Publish({"state": CAMPAIGNING}),
                  Log(logging.INFO, f"campaigning for {config.key} as {config.name}")]


def wake_at(core: Core) -> float | None:
    """When step() must be called with Tick if no other event arrives first."""
    p, c = core.phase, core.config
    if isinstance(p, Checking):
        return min(p.next_at, _patience_end(core, p.started_at) or p.next_at)
    if isinstance(p, Campaigning):
        moments = [t for t in (p.next_at, _patience_end(core, p.started_at)) if t is not None]
        return min(moments) if moments else None
    if isinstance(p, Starting):
        return _patience_end(core, p.started_at)
    if isinstance(p, Spawning):
        return p.deadline - c.grace
    if isinstance(p, Leading):
        return p.deadline - c.grace
    if isinstance(p, StandingDown):
        return p.deadline
    if isinstance(p, Stopping):
        moments = [p.next_kill_at] if p.next_kill_at is not None else []
        if not p.backup_killed and p.survivors is None:
            moments.append(p.deadline)
        return min(moments) if moments else None
    return None


def step(core: Core, event, now: float, rand: float = 0.5) -> tuple[Core, Actions]:
    """Decide what *event* means in the current phase; return the next core and what to do."""
    if isinstance(core.phase, Leaving):
        return core, []
    core = _remember(core, event)
    common = _common(core, event, now)
    if common is not None:
        return common
    handler = _HANDLERS[type(core.phase)]
    return handler(core, core.phase, event, now, rand)


# -- events every phase treats alike ---------------------------------------------------------


def _remember(core: Core, event) -> Core:
    """What every event teaches about the session and the watch, whatever the phase."""
    m = core.memory
    if isinstance(event, WatchFailed) and m.watch_ok:
        return _with_memory(core, watch_ok=False)
    if isinstance(event, KeyChanged) and not m.watch_ok:
        return _with_memory(core, watch_ok=True)
    if isinstance(event, Renewed) and event.session == m.session:
        return _with_memory(core, session_proof=max(m.session_proof or event.sent_at, event.sent_at))
    if isinstance(event, SessionOpened):
        return _with_memory(core, session_proof=event.sent_at)
    return core



def _common(core: Core, event, now: float):
    m = core.memory
    if isinstance(event, (RenewFailed, WatchFailed)):
        core, actions = _consul_down(core, event.error)
        return core, actions + _published_state(core)
    if isinstance(event, CommandStopped):
        name = signal_name(event.signo)
        why = {"SIGTTIN": "it read from the terminal", "SIGTTOU": "it wrote to a terminal that forbids it",
               "SIGTSTP": "Ctrl-Z, or a SIGTSTP"}.get(name, f"it was sent {name}")
        return core, [Log(logging.WARNING, f"the command (pid {event.pid}) is stopped by {name} ({why}) and does no "
                                           "work while the lock is held: it runs in its own process group, not the "
                                           "terminal's foreground; run it with stdin from /dev/null, or continue "
                                           "it with SIGCONT (kill -CONT), or stop consul-elect with Ctrl-C")]
    if isinstance(event, ThreadFailed):
        error = InternalError(f"the {event.thread} thread failed: {event.error}")
        return _abort(core, now, error, f"internal error in the {event.thread} thread: {event.error}")
    if isinstance(event, SessionEnded) and event.session != m.session:
        return core, []  # an old session's news
    if isinstance(event, Renewed) and event.session != m.session:
        return core, []
    return None


def _consul_down(core: Core, error: ConsulError) -> tuple[Core, Actions]:
    """A request failed: say so once per outage, and count it."""
    actions: Actions = [Publish({"consul_failed": str(error)})]
    if not core.memory.consul.failing:
        patience = "" if core.memory.consul.answered or core.config.timeout is not None else \
            f"; retrying for up to {defaults.STARTUP_PATIENCE:g}s"
        actions.insert(0, Log(logging.WARNING, f"Consul unreachable: {error}{patience}"))
    reach = Reach.DOWN if core.memory.consul.answered else Reach.NEVER_FAILING
    return _with_memory(core, consul=reach, consul_error=error), actions


def _consul_up(core: Core) -> tuple[Core, Actions]:
    """Consul answered: note it, and say so once after an outage."""
    if core.memory.consul is Reach.UP:
        return core, []
    actions: Actions = [Publish({"consul_ok": True})]
    if core.memory.consul is Reach.DOWN:
        actions.insert(0, Log(logging.INFO, "Consul is reachable again"))
    elif core.memory.consul is Reach.NEVER_FAILING:
        actions.insert(0, Log(logging.INFO, "Consul answered"))
    if not core.memory.watch_ok:
        # Without its watch a leader could not extend its lease: get the watch back at once.
        actions.append(RewatchNow())
    core = _with_memory(core, consul=Reach.UP, consul_error=None)
    return core, actions + _published_state(core)


def _published_state(core: Core) -> Actions:
    """While not leading, the published state follows Consul's reachability and the key."""
    if not isinstance(core.phase, (Checking, Campaigning)):
        return []
    if core.memory.consul.failing:
        return [Publish({"state": DISCONNECTED})]
    return [Publish({"state": FOLLOWER if _other_holder(core) else CAMPAIGNING})]


def _other_holder(core: Core) -> bool:
    kv = core.memory.key
    return (kv is not None and kv.session is not None and kv.session != core.memory.session
            and kv.session not in core.memory.ended_sessions)


def _with_memory(core: Core, **fields) -> Core:
    return dataclasses.replace(core, memory=dataclasses.replace(core.memory, **fields))


def _retry_delay(core: Core, error: ConsulError, backoff: float, rand: float) -> float:
    if isinstance(error, ConsulUnavailable) and error.retry_after:
        return max(error.retry_after, defaults.RECONNECT_BACKOFF_MIN)
    return backoff * (1 + defaults.RETRY_JITTER * (2 * rand - 1))


def _next_backoff(backoff: float) -> float:
    return min(backoff * 2, defaults.RECONNECT_BACKOFF_MAX)


def _fatal(core: Core, error: ConsulError) -> bool:
    """Errors retrying cannot fix. A TLS failure after Consul once answered may be a certificate
    rotation in progress, so it is retried then; before, it is a wrong setting."""
    if isinstance(error, ConsulTLSError):
        return not core.memory.consul.answered
    return not isinstance(error, (ConsulUnavailable, SessionGone))


def _patience_end(core: Core, started_at: float) -> float | None:
    if core.config.timeout is not None:
        return started_at + core.config.timeout
    if not core.memory.consul.answered:
        return started_at + defaults.STARTUP_PATIENCE
    return None


def _out_of_patience(core: Core, started_at: float, now: float):
    end = _patience_end(core, started_at)
    if end is None or now < end:
        return None
    waited = now - started_at
    if core.memory.consul.failing or not core.memory.consul.answered:
        error = core.memory.consul_error or ConsulUnavailable("Consul did not answer")
        return _leave(core, now, Exit(error=ConsulUnavailable(f"{error} (gave up after {waited:.0f}s)")))
    return _leave(core, now, Exit(error=LeadershipTimeout(
        f"not elected leader of {core.config.key} within {waited:.1f}s")))


def _leave(core: Core, now: float, exit_: Exit, actions: Actions | None = None) -> tuple[Core, Actions]:
    """Leave while not leading: in signal mode stop the command first; then end the session
    (releasing if ours), and exit."""
    if _command_runs(core):
        return _stop_command(core, now, "leaving", error=exit_.error, actions=list(actions or []))
    return _leave_now(core, exit_, actions)


def _leave_now(core: Core, exit_: Exit, actions: Actions | None = None) -> tuple[Core, Actions]:
    """Leave while no command runs: end the session (releasing if ours), then exit."""
    actions = list(actions or [])
    if core.memory.session is not None:
        actions.append(EndSession(core.memory.session, release=True))
        core = _forget_session(core)
    return dataclasses.replace(core, phase=Leaving(exit_)), actions + [exit_]


def _forget_session(core: Core) -> Core:
    m = core.memory
    ended = (m.ended_sessions + (m.session,))[-8:] if m.session else m.ended_sessions
    return _with_memory(core, session=None, ended_sessions=ended)


def _abort(core: Core, now: float, error: ElectError, message: str) -> tuple[Core, Actions]:
    """Something the elector cannot work around: stop the command (if any) and leave with *error*."""
    p = core.phase
    log = Log(logging.ERROR, message)
    if isinstance(p, (Spawning, Leading)):
        core, actions = _step_down(core, now, message, Then.EXIT, key_held=True, error=error, log=False)
        return core, [log, *actions]
    if isinstance(p, (Stopping, StandingDown)):
        return dataclasses.replace(core, phase=dataclasses.replace(p, then=Then.EXIT, error=error)), [log]
    return _leave(core, now, Exit(error=error), [log])


# -- Checking: is the key ours to campaign on? -----------------------------------------------


def _checking(core: Core, p: Checking, event, now: float, rand: float):
    if isinstance(event, Tick):
        gave_up = _out_of_patience(core, p.started_at, now)
        if gave_up:
            return gave_up
        if now >= p.next_at:
            # Re-armed on failure; a success moves on to Campaigning.
            return dataclasses.replace(core, phase=dataclasses.replace(p, next_at=now + 3600)), [CheckKey()]
        return core, []
    if isinstance(event, KeyRead):
        core, actions = _consul_up(core)
        core = _with_memory(core, slot=event.slot)
        kv = event.key
        if kv is not None and kv.value and parse_identity(kv.value) is None:
            return _leave(core, now, Exit(error=NotAnElectKey(
                f"refusing to campaign on {core.config.key}: it holds {len(kv.value)} bytes that are not a "
                "consul-elect identity (another tool's data?); use another key")), actions)
        if core.config.signal_mode:
            # The command runs on every candidate: start it before campaigning.
            core = _with_memory(core, key=kv)
            return _set_phase(core, Starting(started_at=p.started_at)), [StartCommand(), *actions]
        core = dataclasses.replace(core, phase=Campaigning(started_at=p.started_at, next_at=now))
        core, seen = _see_key(core, kv, now)
        return core, actions + seen
    if isinstance(event, RequestFailed):
        if _fatal(core, event.error):
            return _leave(core, now, Exit(error=event.error))
        core, actions = _consul_down(core, event.error)
        gave_up = _out_of_patience(core, p.started_at, now)
        if gave_up:
            return gave_up[0], actions + gave_up[1]
        delay = _retry_delay(core, event.error, p.backoff, rand)
        phase = dataclasses.replace(p, next_at=now + delay, backoff=_next_backoff(p.backoff))
        return dataclasses.replace(core, phase=phase), actions + _published_state(core)
    if isinstance(event, KeyChanged):
        return _with_memory(core, key=event.key, slot=event.slot), []
    return _not_leading(core, event, now)


def _not_leading(core: Core, event, now: float) -> tuple[Core, Actions]:
    """Events any non-leading phase handles the same way."""
    if isinstance(event, Signal):
        name = signal_name(event.signo)
        if event.signo in SHUTDOWN_SIGNALS:
            if _command_runs(core):
                return _stop_command(core, now, f"received {name}", signo=event.signo, actions=[
                    Log(logging.INFO, f"received {name} while not leading: leaving the race")])
            return _leave_now(core, Exit(status=0),
                              [Log(logging.INFO, f"received {name} while not leading: leaving the race")])
        if core.memory.command_pid is not None:
            return core, [Forward(event.signo)]
        return core, [Log(logging.INFO, f"received {name} while not leading: no command to forward it to")]
    if isinstance(event, (WatchdogLost, WatchdogUnresponsive)):
        if _command_runs(core):
            return _watchdog_gone(core, event, now)
        what = "died" if isinstance(event, WatchdogLost) else "stopped answering"
        actions = [KillWatchdog()] if isinstance(event, WatchdogUnresponsive) else []
        return _leave_now(core, Exit(error=WatchdogFailed(f"the watchdog process {what}; leaving")),
                          [Log(logging.ERROR, f"the watchdog process {what}; leaving"), *actions])
    if isinstance(event, Renewed):
        core, actions = _consul_up(core)
        return core, actions + _published_state(core)
    return core, []


# -- Campaigning -----------------------------------------------------------------------------


def _campaigning(core: Core, p: Campaigning, event, now: float, rand: float):
    c, m = core.config, core.memory
    if isinstance(event, Tick):
        gave_up = _out_of_patience(core, p.started_at, now)
        if gave_up:
            return gave_up
        if p.next_at is None or now < p.next_at:
            return core, []
        if m.session is None:
            return _set(core, p, next_at=None), [OpenSession()]
        if p.holder_wait is not None:
            return _set(core, p, next_at=None), [CheckHolder(p.holder_wait.session)]
        # Exec mode: the lease counts from now, a moment before the acquire is sent (so never
        # later than the send): the watchdog gets it with the acquire, not after it.
        offer = None if c.signal_mode else _lease_deadline(core, now)
        return _set(core, p, next_at=None, lease_offer=offer), [Acquire(m.session, lease_offer=offer)]
    if isinstance(event, SessionOpened):
        core, actions = _consul_up(core)
        core = _with_memory(core, session=event.session)
        actions += [SetRenewInterval(c.follower_renew_interval), Publish({"session": event.session}),
                    Log(logging.DEBUG, f"session {event.session} created (ttl {c.ttl:g}s, lock-delay {c.lock_delay:g}s)")]
        # Someone else leads: wait for the key to change. Otherwise act at once.
        following = _other_holder(core) and p.holder_wait is None
        return _set(core, core.phase, next_at=None if following else now,
                    backoff=defaults.RECONNECT_BACKOFF_MIN), actions
    if isinstance(event, Acquired):
        core, actions = _consul_up(core)
        return _elected(core, event, now, actions)
    if isinstance(event, AcquireRefused):
        core, actions = _consul_up(core)
        p = core.phase
        if _other_holder(core):
            return _set(core, p, next_at=None, backoff=defaults.RECONNECT_BACKOFF_MIN), actions
        # Free but refused: a lock-delay is running (quickly retried while one can be), or our
        # view of the key is stale (the watch will tell; meanwhile, back off).
        if now < p.quick_retry_until:
            return _set(core, p, next_at=now + defaults.LOCK_DELAY_RETRY), actions
        delay = p.backoff * (1 + defaults.RETRY_JITTER * (2 * rand - 1))
        return _set(core, p, next_at=now + delay, backoff=_next_backoff(p.backoff)), actions
    if isinstance(event, HolderChecked):
        if p.holder_wait is None or event.session != p.holder_wait.session:
            return core, []
        core, actions = _consul_up(core)
        if not event.alive:
            return _set(core, core.phase, holder_wait=None, next_at=now), actions
        if not p.holder_wait.said:
            actions.append(Log(logging.WARNING, f"{core.config.key} was freed without Consul's lock-delay while "
                                                f"session {event.session} held it, and that session still lives "
                                                "(its command may still be finishing): waiting for it to end"))
        return _set(core, core.phase, next_at=now + defaults.HOLDER_POLL,
                    holder_wait=dataclasses.replace(p.holder_wait, said=True)), actions
    if isinstance(event, RequestFailed):
        error = event.error
        if isinstance(error, SessionGone) and m.session is not None:
            core = _forget_session(core)
            return _set(core, p, next_at=now), [EndSession(m.session, release=False)]
        if _fatal(core, error):
            return _leave(core, now, Exit(error=error))
        core, actions = _consul_down(core, error)
        gave_up = _out_of_patience(core, p.started_at, now)
        if gave_up:
            return gave_up[0], actions + gave_up[1]
        delay = _retry_delay(core, error, p.backoff, rand)
        core = _set(core, p, next_at=now + delay, backoff=_next_backoff(p.backoff))
        return core, actions + _published_state(core)
    if isinstance(event, SessionEnded):
        core = _forget_session(core)
        return _set(core, p, next_at=now), [
            Log(logging.WARNING, f"session {event.session} was invalidated; opening a new one"),
            EndSession(event.session, release=False), Publish({"session": None})]
    if isinstance(event, KeyChanged):
        core, actions = _consul_up(core)
        if event.slot != m.slot:
            core = _switch_slot(core, event)
        core, seen = _see_key(core, event.key, now, event.waited)
        return core, actions + seen
    if isinstance(event, ChildExited) and m.command_pid is not None and event.pid in (m.command_pid, None):
        return _command_ended(core, event, now)
    return _not_leading(core, event, now)


def _switch_slot(core: Core, event: KeyChanged) -> Core:
    """--holders: we now look at another slot. Its holder as last seen is the previous holder (a
    slot freed without the `released` mark is waited on as the single key is); a wait about the
    other slot's holder does not bind this one."""
    before = event.before
    holder = None
    if before is not None and before.session is not None and before.session != core.memory.session:
        holder = _holder_of(before)
    core = _with_memory(core, slot=event.slot, key=before, holder=holder)
    return _set(core, core.phase, holder_wait=None)


def _set(core: Core, phase, **fields) -> Core:
    return dataclasses.replace(core, phase=dataclasses.replace(phase, **fields))


def _see_key(core: Core, kv: KeyState | None, now: float, waited: float = 0.0) -> tuple[Core, Actions]:
    """Follow who leads while we campaign, and decide when it is safe to try the key."""
    p: Campaigning = core.phase
    m = core.memory
    previous = m.holder
    core = _with_memory(core, key=kv)
    if _other_holder(core):
        holder = parse_identity(kv.value) or {}
        followed = _holder_of(kv)
        actions: Actions = []
        if previous is None or previous.session != kv.session:
            leader_name = holder.get("name") or "a non-consul-elect holder"
            actions.append(Log(logging.INFO, f"following {leader_name} (session {kv.session})"))
            if leader_name == core.config.name:
                actions.append(Log(logging.WARNING, f"another candidate is named {leader_name!r} too (the host name, "
                                                    "by default?): logs and `status` cannot tell them apart; give "
                                                    "each its own --name (CONSUL_ELECT_NAME)"))
            actions += _tell_leader(core, holder.get("name") if isinstance(holder.get("name"), str) else None)
        core = _with_memory(core, holder=followed)
        leader = {**holder, "name": holder.get("name"), "session": kv.session}
        core = _set(core, p, next_at=None if m.session is not None else p.next_at, holder_wait=None)
        return core, actions + [Publish({"leader": leader}), *_published_state(core)]
    core = _with_memory(core, holder=None)
    actions = [Publish({"leader": None}), *_published_state(core)]
    if previous is not None:
        actions += _tell_leader(core, None)
    wait = _unclean_release(core, kv, previous, p.holder_wait)
    lock_delay = (previous.lock_delay if previous and previous.lock_delay is not None else defaults.MAX_LOCK_DELAY)
    quick_until = now + lock_delay + defaults.LOCK_DELAY_MARGIN if previous is not None else p.quick_retry_until
    if m.session is not None:
        # A clean release names who comes next: the others let them try first (no herd).
        ours = turn(parse_identity(kv.value) if kv is not None else None, m.session) * defaults.HANDOVER_TURN
        next_at = now + max(0.0, ours - waited)
    else:
        next_at = now if p.next_at is None else p.next_at
    core = _set(core, p, holder_wait=wait, quick_retry_until=quick_until, next_at=next_at)
    return core, actions


def _unclean_release(core: Core, kv: KeyState | None, previous: Holder | None,
                     waiting: HolderWait | None) -> HolderWait | None:
    """The key is free: was it freed by consul-elect after its command died, or some other way?

    Released with the `released` mark: the holder's command is confirmed gone. Freed any other
    way (deleted, released by hand, or its session invalidated, which keeps the holder's
    identity in the value), the holder's command may still run and no lock-delay may protect
    us: wait until the holder's session is gone (a lock-delay, where one applies, then refuses
    the acquire on its own). An identity names its session, whether or not we saw it hold the
    key (we may have started, or our watch may have folded changes, after the fact); without one
    (deleted, or an empty value written by a bare `?release=`), only a holder we saw can be
    named. A wait already running is kept while the key stays free (a later answer about the
    same free key is no news), unless the value says that session released it cleanly.
    """
    holder = parse_identity(kv.value) if kv is not None else None
    named = holder.get("session") if holder is not None and isinstance(holder.get("session"), str) else None
    released = holder is not None and bool(holder.get("released"))
    if waiting is not None and not (released and named == waiting.session):
        return waiting
    if released:
        return None
    session = named or (previous.session if previous is not None else None)
    if session is None or session == core.memory.session or session in core.memory.ended_sessions:
        return None
    return HolderWait(session)


def _holder_of(kv: KeyState) -> Holder:
    """Whom we follow while *kv* is held: its session, and the bounds its identity states."""
    ident = parse_identity(kv.value) or {}
    return Holder(kv.session, _number(ident.get("lease_window")), _number(ident.get("lock_delay")))


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _lease_deadline(core: Core, sent_at: float) -> float:
    """The lease an acquire sent at *sent_at* gives: the acquire proves the key ours as of its
    send time, but Consul's TTL timer runs from the session's last renewal (or its creation):
    if renewals were failing before, that is sooner."""
    c, m = core.config, core.memory
    deadline = sent_at + c.lease_window
    if m.session_proof is not None:
        deadline = min(deadline, m.session_proof + c.ttl_window)
    return deadline


def _elected(core: Core, event: Acquired, now: float, actions: Actions) -> tuple[Core, Actions]:
    c, m = core.config, core.memory
    offer = core.phase.lease_offer if isinstance(core.phase, Campaigning) else None
    # The spawn (signal mode: the elected signal) goes first: nothing else stands between the
    # acquire and the command's start.
    if c.signal_mode:
        deadline = _lease_deadline(core, event.sent_at)
        spawn_first = [SendLease(m.session, deadline), Elect(event.token)]
        phase = Leading(event.token, deadline, m.command_pid)
    elif offer is not None:
        deadline = offer  # the watchdog has it already (sent with the acquire)
        spawn_first = [Spawn(event.token, deadline)]
        phase = Spawning(event.token, deadline)
    else:
        deadline = _lease_deadline(core, event.sent_at)
        spawn_first = [SendLease(m.session, deadline), Spawn(event.token, deadline)]
        phase = Spawning(event.token, deadline)
    core = dataclasses.replace(core, phase=phase, memory=dataclasses.replace(m, holder=None))
    # A leader whose key watch is down cannot extend its lease: get the watch back at once.
    rewatch = [] if m.watch_ok else [RewatchNow()]
    return core, spawn_first + rewatch + [
        # The lease counts from when the acquire was sent; if Consul took long to answer, most
        # of it is gone: get a fresh proof at once.
        SetRenewInterval(c.renew_interval, renew_now=now - event.sent_at > c.renew_interval),
        Publish({"state": LEADER, "fencing_token": event.token, "lease_deadline": deadline, "leader": "self"}),
        Log(logging.INFO, f"elected leader of {c.key} ({f'slot {m.slot}, ' if c.holders > 1 else ''}"
                          f"fencing token {event.token})"),
        *actions,
    ]


# -- Spawning, Leading -------------------------------------------------------------------------


def _loss(core: Core, event, token: int) -> str | None:
    """Why this event means the key is no longer ours (None: it does not)."""
    m = core.memory
    if isinstance(event, KeyChanged):
        if event.index < token:
            return None  # posted before our acquire: history, not news
        if event.key is None:
            return "the key was deleted"
        if event.key.session != m.session:
            return "the key was released" if event.key.session is None else f"the key is held by session {event.key.session}"
        return None
    if isinstance(event, SessionEnded) and event.session == m.session:
        return "our session was invalidated"
    return None


def _spawning(core: Core, p: Spawning, event, now: float, rand: float):
    c = core.config
    if isinstance(event, Spawned):
        core = _with_memory(_set_phase(core, Leading(p.token, p.deadline, event.pid)), hook_term=p.token)
        # Leaving the queue wakes the waiters far back in it (they look at the key then): only
        # now that the command runs, so that they do not compete with its start for the CPU.
        return core, [LeaveQueue(core.memory.session), Publish({"child_started": True}),
                      Log(logging.INFO, f"started the command (pid {event.pid})"),
                      *_hook(core, defaults.HOOK_ON_ELECTED, p.token)]
    if isinstance(event, SpawnFailed):
        if event.lease_expired:
            return _lost_without_child(core, now, "the lease ran out before the command could start")
        return _leave_now(core, Exit(status=event.code or 0), [Log(logging.ERROR, event.error)])
    return _holding(core, p, event, now)


def _leading(core: Core, p: Leading, event, now: float, rand: float):
    c = core.config
    if isinstance(event, ChildExited) and event.pid == p.pid:
        if event.reason == REASON_LEASE_EXPIRED and not c.signal_mode:
            reason = "lease expired: the watchdog killed the command"
            core = _set_phase(core, _stopping_from(p, reason, Then.CAMPAIGN, key_held=False))
            core, actions = _child_over(core, event, now)
            return core, [Publish({"state": STEPPING_DOWN, "fencing_token": None, "lease_deadline": None}),
                          Log(logging.WARNING, f"lost leadership of {c.key}: {reason}"), *actions]
        core = _set_phase(core, _stopping_from(p, "the command exited", Then.EXIT, key_held=True))
        core, actions = _child_over(core, event, now)
        status = f"with status {event.status}" if event.status is not None else "(status unknown)"
        return core, [Publish({"state": STEPPING_DOWN, "fencing_token": None, "lease_deadline": None}),
                      Log(logging.INFO, f"the command exited {status}; releasing {c.key}"), *actions]
    if isinstance(event, Signal) and event.signo not in SHUTDOWN_SIGNALS:
        return core, [Forward(event.signo)]
    if isinstance(event, KeyChanged) and _loss(core, event, p.token) is None and event.index >= p.token:
        return _with_memory(core, key=event.key), []
    if isinstance(event, Elected) and event.token == p.token:
        # As in exec mode, the queue is left once the command was told (see _spawning).
        return _with_memory(core, hook_term=p.token), [LeaveQueue(core.memory.session),
                                                       *_hook(core, defaults.HOOK_ON_ELECTED, p.token)]
    if isinstance(event, Demoted) and event.token == p.token:
        # The watchdog demoted the command on its own: no renewal reached it before
        # deadline - grace (one may have reached us just too late). The term is over either way.
        core, actions = _stand_down(core, now, "the lease ran out before a renewal reached the watchdog, "
                                               "which demoted the command", Then.CAMPAIGN, key_held=True, told=True)
        core, hook = _term_over(core)
        return core, actions + hook
    return _holding(core, p, event, now)


def _holding(core: Core, p: Spawning | Leading, event, now: float):
    """What Spawning and Leading share: renewals, loss, shutdown, the lease running out."""
    c = core.config
    if isinstance(event, Tick):
        if now >= p.deadline - c.grace:
            # Measured from the last proof, not the threshold: after a freeze the gap is longer.
            silent = now - (p.deadline - c.lease_window)
            return _step_down(core, now, f"lease running out: Consul has not confirmed our session for "
                                         f"{silent:.2f}s", Then.CAMPAIGN, key_held=True)
        return core, []
    if isinstance(event, Renewed):
        core, actions = _consul_up(core)
        if not core.memory.watch_ok:
            return core, actions
        deadline = max(p.deadline, event.sent_at + c.lease_window)
        return _set(core, p, deadline=deadline), actions + [
            SendLease(core.memory.session, deadline), Publish({"lease_deadline": deadline})]
    reason = _loss(core, event, p.token)
    if reason is not None:
        if isinstance(event, KeyChanged):
            core = _with_memory(core, key=event.key)
        return _step_down(core, now, reason, Then.CAMPAIGN, key_held=False)
    if isinstance(event, Signal) and event.signo in SHUTDOWN_SIGNALS:
        return _step_down(core, now, None, Then.EXIT, key_held=True, signo=event.signo)
    if isinstance(event, (WatchdogLost, WatchdogUnresponsive)):
        return _watchdog_gone(core, event, now)
    if isinstance(event, KeyChanged):
        return core, []
    if isinstance(event, Signal):
        return core, [Log(logging.INFO, f"received {signal_name(event.signo)} before the command started: not forwarded")]
    return core, []


def _set_phase(core: Core, phase) -> Core:
    return dataclasses.replace(core, phase=phase)


def _stopping_from(p: Spawning | Leading, reason: str, then: Then, key_held: bool, **fields) -> Stopping:
    return Stopping(reason=reason, then=then, deadline=p.deadline, pid=getattr(p, "pid", None), key_held=key_held,
                    **fields)


def _step_down(core: Core, now: float, reason: str | None, then: Then, key_held: bool, signo: int | None = None,
               error: ElectError | None = None, log: bool = True) -> tuple[Core, Actions]:
    """The term ends: exec mode stops the command; signal mode demotes it."""
    if core.config.signal_mode and isinstance(core.phase, Leading):
        return _stand_down(core, now, reason, then, key_held, signo, error, log)
    return _begin_stop(core, now, reason, then, key_held, signo, error, log)


def _begin_stop(core: Core, now: float, reason: str | None, then: Then, key_held: bool, signo: int | None = None,
                error: ElectError | None = None, log: bool = True) -> tuple[Core, Actions]:
    """Stop the command (SIGTERM, SIGKILL after the grace) and publish that we no longer lead."""
    c, p = core.config, core.phase
    actions: Actions = [StopChild(c.grace),
                        Publish({"state": STEPPING_DOWN, "fencing_token": None, "lease_deadline": None})]
    if signo is not None:
        reason = f"received {signal_name(signo)}"
        actions.append(Log(logging.INFO, f"{reason}: stopping the command (grace {c.grace:g}s)"))
    elif log:
        actions.append(Log(logging.WARNING, f"lost leadership of {c.key}: {reason}"))
        actions.append(Log(logging.INFO, f"stepping down: stopping the command (grace {c.grace:g}s)"))
    stopping = _stopping_from(p, reason, then, key_held, error=error, shutdown_signo=signo)
    return _set_phase(core, stopping), actions


def _lost_without_child(core: Core, now: float, reason: str) -> tuple[Core, Actions]:
    """Leadership ended with no command running: release, then campaign again (or exit 75)."""
    c = core.config
    actions: Actions = [Publish({"state": STEPPING_DOWN, "fencing_token": None, "lease_deadline": None}),
                        Log(logging.WARNING, f"lost leadership of {c.key}: {reason}")]
    return _after_stop(core, Then.CAMPAIGN, reason, None, None, now, actions)


def _after_stop(core: Core, then: Then, reason: str, status: int | None, error: ElectError | None, now: float,
                actions: Actions, signo: int | None = None) -> tuple[Core, Actions]:
    """The leader work is confirmed over (exec mode: the command is gone; signal mode: it stood
    down): end the session (releasing), then campaign or leave (in signal mode, leaving stops
    the command first: the release comes before, so the next leader need not wait for that)."""
    c, m = core.config, core.memory
    if m.session is not None:
        actions.append(EndSession(m.session, release=True))
        core = _forget_session(core)
    core, hook = _term_over(core)
    actions += hook
    if then is Then.EXIT:
        if _command_runs(core):
            return _stop_command(core, now, reason, error=error, signo=signo, actions=actions)
        exit_ = Exit(status=status if status is not None else 0, error=error)
        return dataclasses.replace(core, phase=Leaving(exit_)), actions + [exit_]
    if c.exit_on_loss:
        lost = LeadershipLost(f"lost leadership of {c.key}: {reason}")
        if _command_runs(core):
            return _stop_command(core, now, reason, error=lost, actions=actions)
        exit_ = Exit(error=lost)
        return dataclasses.replace(core, phase=Leaving(exit_)), actions + [exit_]
    core = _set_phase(core, Campaigning(started_at=now, next_at=now))
    core, seen = _see_key(core, m.key, now)
    actions += [Publish({"state": CAMPAIGNING, "session": None}),
                Log(logging.INFO, f"campaigning for {c.key} as {c.name}"), *_tell_leader(core, None), *seen]
    return core, actions


def _watchdog_gone(core: Core, event, now: float) -> tuple[Core, Actions]:
    """The watchdog died or froze while a command may run: kill the command's group ourselves,
    confirm it gone, and only then give up the lease."""
    what = "died" if isinstance(event, WatchdogLost) else "stopped answering"
    p = core.phase
    error = WatchdogFailed(f"the watchdog process {what}; the command was stopped")
    actions: Actions = [Log(logging.ERROR, f"the watchdog process {what}: killing the command's group and leaving"),
                        Publish({"state": STEPPING_DOWN, "fencing_token": None, "lease_deadline": None})]
    if isinstance(event, WatchdogUnresponsive):
        actions.append(KillWatchdog())
    actions.append(KillGroup())
    if isinstance(p, Stopping):
        stopping = dataclasses.replace(p, then=Then.EXIT, error=error, watchdog_dead=True, backup_killed=True,
                                       next_kill_at=None)
    elif isinstance(p, (Spawning, Leading)):
        stopping = _stopping_from(p, f"the watchdog {what}", Then.EXIT, key_held=True, error=error,
                                  watchdog_dead=True, backup_killed=True)
    else:  # signal mode: Starting, Campaigning (the command runs as a follower), StandingDown
        stopping = Stopping(reason=f"the watchdog {what}", then=Then.EXIT, deadline=getattr(p, "deadline", now),
                            pid=getattr(p, "pid", core.memory.command_pid), key_held=getattr(p, "key_held", False),
                            error=error, watchdog_dead=True, backup_killed=True)
    return _set_phase(core, stopping), actions


# -- Stopping ------------------------------------------------------------------------------------


def _stopping(core: Core, p: Stopping, event, now: float, rand: float):
    c = core.config
    if isinstance(event, Spawned):
        # The spawn was answered after we began to stop: the Stop order follows it, so the
        # watchdog stops this command next.
        return _set(core, p, pid=event.pid), [Publish({"child_started": True})]
    if isinstance(event, SpawnFailed):
        return _child_over(core, ChildExited(None, event.code, "spawn-failed", False, True), now)
    if isinstance(event, ChildExited) and not p.reported and (p.pid is None or event.pid == p.pid):
        # Only the report of this run counts: once it was reported (survivors included), a later
        # "nothing running" answer to another order confirms nothing.
        return _child_over(core, event, now)
    if isinstance(event, GroupKilled):
        if event.confirmed:
            if p.survivors is not None or p.watchdog_dead:
                return _finished(core, p, p.status, now, [])
            return core, []
        return _set(core, p, survivors=tuple(event.survivors) or p.survivors or (),
                    next_kill_at=now + defaults.CONTAIN_RETRY), _survivors_log(p, event.survivors)
    if isinstance(event, Tick):
        if p.next_kill_at is not None and now >= p.next_kill_at:
            return _set(core, p, next_kill_at=None), [KillGroup(defaults.CONTAIN_RETRY_WAIT)]
        if not p.backup_killed and p.survivors is None and now >= p.deadline:
            # The watchdog kills at the deadline; if it is frozen, we must. Twice is harmless.
            return _set(core, p, backup_killed=True), [KillGroup()]
        return core, []
    if isinstance(event, Renewed):
        core, actions = _consul_up(core)
        if not p.key_held or not core.memory.watch_ok:
            return core, actions
        deadline = max(p.deadline, event.sent_at + c.lease_window)
        return _set(core, p, deadline=deadline), actions + [SendLease(core.memory.session, deadline)]
    if isinstance(event, KeyChanged):
        core = _with_memory(core, key=event.key)
        if p.key_held and (event.key is None or event.key.session != core.memory.session):
            return _set(core, p, key_held=False), []
        return core, []
    if isinstance(event, SessionEnded):
        return _set(core, p, key_held=False), []
    if isinstance(event, Signal):
        if event.signo not in SHUTDOWN_SIGNALS:
            return core, [Forward(event.signo)]
        name = signal_name(event.signo)
        if p.shutdown_signo is None:
            # The first shutdown signal during a stop we began ourselves (a lost key): leave
            # once it is done, without cutting the command's grace short.
            return _set(core, p, then=Then.EXIT, shutdown_signo=event.signo), [
                Log(logging.INFO, f"received {name}: leaving once the command has stopped")]
        if p.watchdog_dead or p.survivors is not None:
            return _set(core, p, then=Then.EXIT, forced_by=event.signo), [KillGroup(defaults.CONTAIN_RETRY_WAIT)]
        return _set(core, p, then=Then.EXIT, forced_by=event.signo), [
            Log(logging.WARNING, f"second signal ({name}): killing the command now"), StopChild(0.0)]
    if isinstance(event, (WatchdogLost, WatchdogUnresponsive)):
        if p.watchdog_dead:
            return core, []
        return _watchdog_gone(core, event, now)
    return core, []


def _survivors_log(p: Stopping, survivors) -> Actions:
    if p.survivors is not None:
        return []  # said once; the retries are quiet
    pids = ", ".join(str(s) for s in survivors) or "unknown"
    return [Log(logging.ERROR, f"processes of the command survive SIGKILL (pids {pids}; another user's, e.g. "
                               f"setuid?): keeping the key held and renewed until they are gone")]


def _child_over(core: Core, event: ChildExited, now: float) -> tuple[Core, Actions]:
    """The watchdog reports the command's run over."""
    p: Stopping = core.phase
    actions: Actions = []
    if event.killed:
        if p.forced_by is not None:
            actions.append(Log(logging.WARNING, f"the command was killed with SIGKILL at your second "
                                                f"{signal_name(p.forced_by)}"))
        elif event.reason == REASON_NOT_ACKNOWLEDGED:
            actions.append(Log(logging.ERROR, f"the command did not acknowledge its demotion within "
                                              f"{core.config.grace:g}s (or by the lease deadline): killed with SIGKILL"))
        elif event.reason != REASON_LEASE_EXPIRED:
            actions.append(Log(logging.WARNING, "the command did not stop within the grace period: "
                                                "killed with SIGKILL"))
    elif event.swept:
        actions.append(Log(logging.INFO, "killed what the command left running (its group, cgroup or orphans)"))
    status = p.status
    if status is None and event.status is not None:
        status = event.status
    if status is None and p.shutdown_signo is not None:
        status = 128 + p.shutdown_signo
    p = dataclasses.replace(p, status=status, pid=None, reported=True)
    core = _with_memory(_set_phase(core, p), command_pid=None)
    if not event.confirmed:
        core = _set_phase(core, dataclasses.replace(p, survivors=tuple(event.survivors),
                                                    next_kill_at=now + defaults.CONTAIN_RETRY))
        return core, actions + _survivors_log(p, event.survivors)
    return _finished(core, p, status, now, actions)


def _finished(core: Core, p: Stopping, status: int | None, now: float, actions: Actions) -> tuple[Core, Actions]:
    if status is None and p.shutdown_signo is not None:
        status = 128 + p.shutdown_signo
    if p.survivors:
        actions = actions + [Log(logging.INFO, "the command's last processes are gone")]
    core = _with_memory(core, command_pid=None)
    return _after_stop(core, p.then, p.reason, status, p.error, now, actions)


# -- signal mode: Starting, StandingDown, and the command that outlives the terms ---------------


def _starting(core: Core, p: Starting, event, now: float, rand: float):
    if isinstance(event, Spawned):
        core = _with_memory(core, command_pid=event.pid)
        core = _set_phase(core, Campaigning(started_at=p.started_at, next_at=now))
        core, seen = _see_key(core, core.memory.key, now)
        return core, [Publish({"child_started": True}),
                      Log(logging.INFO, f"started the command as a follower (pid {event.pid})"), *seen]
    if isinstance(event, SpawnFailed):
        return _leave_now(core, Exit(status=event.code or 0), [Log(logging.ERROR, event.error)])
    if isinstance(event, Tick):
        return _out_of_patience(core, p.started_at, now) or (core, [])
    if isinstance(event, KeyChanged):
        return _with_memory(core, key=event.key, slot=event.slot), []
    return _not_leading(core, event, now)


def _standing_down(core: Core, p: StandingDown, event, now: float, rand: float):
    c = core.config
    if isinstance(event, Acked) and event.token == p.token:
        return _stood_down(core, p, now)
    if isinstance(event, Elected) and event.token == p.token:
        # The demotion was ordered before the watchdog's answer to Elect arrived.
        return _with_memory(core, hook_term=p.token), _hook(core, defaults.HOOK_ON_ELECTED, p.token)
    if isinstance(event, Demoted) and event.token == p.token:
        return _term_over(core)
    if isinstance(event, ChildExited) and event.pid in (p.pid, None):
        # Killed for not acknowledging in time, or it ended on its own: either way it is gone.
        core = _set_phase(core, Stopping(reason=p.reason, then=Then.EXIT, deadline=p.deadline, pid=p.pid,
                                         key_held=p.key_held, error=p.error, shutdown_signo=p.shutdown_signo))
        return _child_over(core, event, now)
    if isinstance(event, Tick):
        if now >= p.deadline:
            # The watchdog kills at the end of the grace period, yet has not reported. Either
            # it is frozen, or its news is still on the way to us (we may be the one that was
            # frozen: then it demoted the command on its own long ago). The acknowledgement
            # itself decides, read where the command wrote it: a command that stood down must
            # go on running as a follower.
            return core, [CheckAck(p.token)]
        return core, []
    if isinstance(event, NotAcked) and event.token == p.token:
        return _set_phase(core, Stopping(reason=p.reason, then=Then.EXIT, deadline=p.deadline, pid=p.pid,
                                         key_held=p.key_held, error=p.error, shutdown_signo=p.shutdown_signo,
                                         backup_killed=True)), [
            Log(logging.ERROR, f"the command has not acknowledged its demotion from term {p.token} by the lease "
                               "deadline and the watchdog has not reported: killing it (SIGKILL)"), KillGroup()]
    if isinstance(event, Renewed):
        core, actions = _consul_up(core)
        if not p.key_held or not core.memory.watch_ok:
            return core, actions
        deadline = max(p.deadline, event.sent_at + c.lease_window)
        return _set(core, p, deadline=deadline), actions + [SendLease(core.memory.session, deadline)]
    if isinstance(event, KeyChanged):
        core = _with_memory(core, key=event.key)
        if p.key_held and (event.key is None or event.key.session != core.memory.session):
            return _set(core, p, key_held=False), []
        return core, []
    if isinstance(event, SessionEnded):
        return _set(core, p, key_held=False), []
    if isinstance(event, Signal):
        name = signal_name(event.signo)
        if event.signo not in SHUTDOWN_SIGNALS:
            return core, [Forward(event.signo)]
        if p.shutdown_signo is None:
            return _set(core, p, then=Then.EXIT, shutdown_signo=event.signo), [
                Log(logging.INFO, f"received {name}: leaving once the command has stood down")]
        return _set_phase(core, Stopping(reason=p.reason, then=Then.EXIT, deadline=p.deadline, pid=p.pid,
                                         key_held=p.key_held, error=p.error, shutdown_signo=p.shutdown_signo,
                                         forced_by=event.signo)), [
            Log(logging.WARNING, f"second signal ({name}): killing the command now"), StopChild(0.0)]
    if isinstance(event, (WatchdogLost, WatchdogUnresponsive)):
        return _watchdog_gone(core, event, now)
    return core, []


def _stand_down(core: Core, now: float, reason: str | None, then: Then, key_held: bool, signo: int | None = None,
                error: ElectError | None = None, log: bool = True, told: bool = False) -> tuple[Core, Actions]:
    """Signal mode: tell the command to stand down (unless the watchdog *told* it already), keep
    the key until it acknowledges, and publish at once that we no longer lead."""
    c, p = core.config, core.phase
    actions: Actions = [] if told else [Demote(p.token)]
    actions.append(Publish({"state": STEPPING_DOWN, "fencing_token": None, "lease_deadline": None}))
    how = f"demoting the command ({signal_name(c.demoted_signal)}; it has {c.grace:g}s to acknowledge)"
    if signo is not None:
        reason = f"received {signal_name(signo)}"
        actions.append(Log(logging.INFO, f"{reason}: {how}, then releasing {c.key} and stopping it"))
    elif log:
        actions.append(Log(logging.WARNING, f"lost leadership of {c.key}: {reason}"))
        actions.append(Log(logging.INFO, f"standing down: {how}"))
    standing = StandingDown(token=p.token, deadline=p.deadline, pid=p.pid, reason=reason, then=then,
                            key_held=key_held, told_at=now, shutdown_signo=signo, error=error)
    return _set_phase(core, standing), actions


def _stood_down(core: Core, p: StandingDown, now: float) -> tuple[Core, Actions]:
    """The command acknowledged: the leader work is over, so the key can go."""
    actions: Actions = [Log(logging.INFO, f"the command stood down from term {p.token} "
                                          f"({now - p.told_at:.3f}s after it was told)")]
    return _after_stop(core, p.then, p.reason, None, p.error, now, actions, signo=p.shutdown_signo)


def _command_runs(core: Core) -> bool:
    """Signal mode: is the command running (or being started) while we do not lead?"""
    return core.memory.command_pid is not None or isinstance(core.phase, Starting)


def _stop_command(core: Core, now: float, reason: str, error: ElectError | None = None, signo: int | None = None,
                  actions: Actions = ()) -> tuple[Core, Actions]:
    """Signal mode, on the way out: stop the command (SIGTERM, SIGKILL after the grace); no
    lease binds a follower's command, so the elector's own kill waits for the watchdog's."""
    c = core.config
    stopping = Stopping(reason=reason, then=Then.EXIT, deadline=now + c.grace + defaults.KILL_WAIT,
                        pid=core.memory.command_pid, key_held=False, error=error, shutdown_signo=signo)
    return _set_phase(core, stopping), [*actions, StopChild(c.grace),
                                        Log(logging.INFO, f"stopping the command (grace {c.grace:g}s)")]


def _command_ended(core: Core, event: ChildExited, now: float) -> tuple[Core, Actions]:
    """Signal mode: the command exited while following. Leave with its status."""
    c = core.config
    core = _set_phase(core, Stopping(reason="the command exited", then=Then.EXIT,
                                     deadline=now + c.grace + defaults.KILL_WAIT, pid=core.memory.command_pid,
                                     key_held=False))
    core, actions = _child_over(core, event, now)
    status = f"with status {event.status}" if event.status is not None else "(status unknown)"
    return core, [Log(logging.INFO, f"the command exited {status}; leaving the race for {c.key}"), *actions]


def _term_over(core: Core) -> tuple[Core, Actions]:
    """The on-demoted hook of the term whose on-elected hook ran (once)."""
    token = core.memory.hook_term
    if token is None:
        return core, []
    return _with_memory(core, hook_term=None), _hook(core, defaults.HOOK_ON_DEMOTED, token)


def _hook(core: Core, hook: str, token: int) -> Actions:
    return [RunHook(hook, token)] if core.config.hook_command(hook) else []


def _tell_leader(core: Core, name: str | None) -> Actions:
    return [TellLeader(name)] if core.config.has_role_file else []


def _leaving(core, p, event, now, rand):
    return core, []


_HANDLERS = {
    Checking: _checking,
    Starting: _starting,
    Campaigning: _campaigning,
    Spawning: _spawning,
    Leading: _leading,
    StandingDown: _standing_down,
    Stopping: _stopping,
    Leaving: _leaving,
}
