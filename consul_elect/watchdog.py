"""The watchdog: a small process that owns the command and keeps the lease promise on its own.

It is forked from consul-elect before any thread starts and becomes the command's parent (and a
child subreaper for the command's orphans). It holds the lease deadline and the session id, so
it keeps working when the elector cannot:

- elector killed (its end of the socket closes): SIGKILL everything of the command at once,
  confirm it gone, then release the key and destroy the session, so a standby takes over
  without lock-delay;
- elector frozen or cut off from Consul: SIGKILL everything of the command at the lease
  deadline, confirm it gone, then release the key (a release applies no lock-delay);
- the watchdog itself killed: the command has PR_SET_PDEATHSIG=SIGKILL (Linux), and the
  elector, a child subreaper too, kills the rest.

In signal mode the command runs on every candidate and only its *role* is leased: the watchdog
writes the role file and sends the elected and demoted signals, demotes the command on its own
at deadline - grace when no renewal came, and SIGKILLs it at the end of the grace period (never
later than the deadline) unless the command acknowledged the demotion (role_file.py). When the
elector dies it demotes the command at once, waits for the acknowledgement (at most the grace,
at most the deadline), releases the key, then stops the command as in exec mode, and exits 70.

The messages it speaks are defined in watchdog_protocol; it releases nothing unless the
command's containment (see containment.py) is confirmed empty.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable

from . import clock, containment, role_file, supervisor, trace
from . import watchdog_protocol as proto
from .config import ACK_POLL, CONTAIN_RETRY_WAIT, FOLLOWER_START_TIMEOUT, HOOK_ON_DEMOTED, KILL_WAIT, Config
from .exit_codes import SOFTWARE
from .hooks import Hooks
from .signals import WATCHDOG_IGNORED
# The standard library's HTTP only: the watchdog is forked before anything heavier is imported.
from .transport import put_once

log = logging.getLogger("consul_elect.watchdog")

# While a killed or exited command's processes are still going away, look again this often.
GROUP_POLL = 0.01
# The watchdog's own Consul requests (release, destroy) must not keep the process alive long
# after the elector is gone.
CLEANUP_TIMEOUT = 2.0
# After a run ends, the next prepared child (a fork of this 30 MB process: about 5 ms of CPU) is
# made this much later, not at once: a handover's successor needs the CPU just then, and a
# leader handing over on its way out needs no prepared child at all. A spawn before then
# prepares one on the spot.
PREPARE_DELAY = 0.3


@dataclasses.dataclass
class Run:
    """One run of the command, from exec to the confirmation that nothing of it is left."""

    pid: int
    containment: containment.Containment
    status: int | None = None       # the main process's exit code, once reaped
    reaped: bool = False
    kill_at: float | None = None    # when a graceful stop turns into SIGKILL
    reason: str | None = None
    killed: bool = False


@dataclasses.dataclass
class Term:
    """Signal mode: one term of leadership, as the command was told it."""

    token: int
    demoted_at: float | None = None  # when the demoted signal went out
    ack_by: float | None = None      # SIGKILL then, unless the command acknowledged
    by_watchdog: bool = False        # demoted on the watchdog's own initiative (no renewal came)
    acked: bool = False


class Watchdog:
    def __init__(self, sock: socket.socket, config: Config, lease_dir: str) -> None:
        self.sock = sock
        self.config = config
        self.session: str | None = None
        self.deadline: float | None = None
        self.release_value: str = ""
        self.release_key: str = config.key  # with --holders, the slot we hold (SetLease says)
        self.prepare_at: float | None = None  # when to make the next prepared child (PREPARE_DELAY)
        self.run: Run | None = None
        # What survived a run's SIGKILL (processes we may not signal): never forgotten until gone.
        self.leftover: containment.Containment | None = None
        self.argv = ["/bin/sh", "-c", " ".join(config.command)] if config.shell else list(config.command)
        self.prepared: supervisor.PreparedChild | None = None
        self.lease_dir = lease_dir
        self.lease_file = os.path.join(lease_dir, "lease-deadline")
        self.lease_file_says: float | None = None  # the deadline last written there
        self.cgroup: str | None = None
        self.role_path = config.role_file_path
        # What the role file says: (role, fencing token while leader, the term a demotion ended).
        self.role: tuple[str, int | None, int | None] = (role_file.FOLLOWER, None, None)
        self.leader_name: str | None = None
        self.demoted_hook_env: dict | None = None  # the --on-demoted hook owed (SetDemotedHook)
        self.role_written: tuple[int, int] | None = None  # role_file.identity() of our last write
        self.term: Term | None = None
        self.exit_code = 0

    # -- main loop -------------------------------------------------------------------------

    def serve(self) -> int:
        for s in WATCHDOG_IGNORED:
            signal.signal(s, signal.SIG_IGN)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        supervisor.become_subreaper()
        if self.config.cgroup:
            self.cgroup = containment.make_cgroup(f"consul-elect-{os.getpid()}")
        self.prepared = self._prepare()
        self._write_role(role_file.FOLLOWER)
        try:
            self._loop(wake_r)
        finally:
            if self.prepared is not None:
                self.prepared.cancel()
            self._remove_lease_file()
            try:
                os.rmdir(self.lease_dir)  # the elector removes it too, unless it was killed
            except OSError:
                pass
            if self.role_path is not None:
                # Only the file we wrote last: after a late owed hook, a restarted consul-elect
                # for the same key may already have written its own at the same path.
                role_file.remove(self.role_path, only=self.role_written)
            supervisor.reap_all()
            containment.remove_cgroup(self.cgroup)
        return self.exit_code

    def _loop(self, wake_r: int) -> None:
        buffered = b""
        while True:
            ready, _, _ = select.select([self.sock, wake_r], [], [], self._next_timeout())
            if wake_r in ready:
                _drain(wake_r)
            self._reap()
            if self.sock in ready:
                try:
                    data = self.sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self._elector_gone()
                    return
                buffered += data
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if self._handle(proto.decode(line)) is proto.Quit:
                        return
            self._check_timers()

    def _next_timeout(self) -> float | None:
        if self.run is None:
            return None if self.prepare_at is None else max(0.0, self.prepare_at - clock.now())
        now = clock.now()
        moments = [t for t in (self.deadline if self._leading() else None, self.run.kill_at) if t is not None]
        term = self.term
        if term is not None and not term.acked and self.deadline is not None:
            if term.demoted_at is None:
                moments.append(self.deadline - self.config.grace)
            else:
                moments += [term.ack_by, now + ACK_POLL]
        if self.run.reaped or self.run.kill_at is not None:
            moments.append(now + GROUP_POLL)
        return max(0.0, min(moments) - now) if moments else None

    def _leading(self) -> bool:
        """May the command be doing leader work now, so that the lease deadline binds it?

        Exec mode: whenever it runs. Signal mode: from the elected signal until the command
        acknowledged its demotion; a follower's command is not bound by any lease.
        """
        if self.run is None:
            return False
        if not self.config.signal_mode:
            return True
        return self.term is not None and not self.term.acked

    def _handle(self, msg):
        if isinstance(msg, proto.Ping):
            self._send(proto.Pong(msg.seq))
        elif isinstance(msg, proto.SetSession):
            self.session = msg.session
        elif isinstance(msg, proto.SetDemotedHook):
            self.demoted_hook_env = msg.env
        elif isinstance(msg, proto.SetLease):
            self.deadline, self.release_value = msg.deadline, msg.release_value
            self.release_key = msg.key or self.config.key
            if self.run is not None or not self.config.signal_mode:
                # Exec mode without a run: the lease an acquire in flight would give (it binds
                # nothing until a spawn), written now so that the spawn need not.
                self._write_lease_file()
            if self.role[0] == role_file.LEADER:
                self._write_role(*self.role)  # the new lease deadline
        elif isinstance(msg, proto.Spawn):
            self._spawn(msg.env, msg.token)
        elif isinstance(msg, proto.Start):
            self._start_follower(msg.env)
        elif isinstance(msg, proto.Elect):
            self._elect(msg.token)
        elif isinstance(msg, proto.Demote):
            self._demote(msg.token)
        elif isinstance(msg, proto.SetLeader):
            self.leader_name = msg.name
            if self.role[0] == role_file.FOLLOWER:
                self._write_role(*self.role)
        elif isinstance(msg, proto.ForwardSignal):
            if self.run is not None:
                containment.signal_group(self.run.pid, msg.signo)
        elif isinstance(msg, proto.Stop):
            self._begin_stop(msg.grace)
        elif isinstance(msg, proto.Quit):
            if self.run is not None:
                self.run.reason = self.run.reason or proto.REASON_STOPPED
                self._kill_and_finish()
            else:
                self._report_nothing_running(KILL_WAIT)
            return proto.Quit
        return None

    # -- the command -----------------------------------------------------------------------

    def _spawn(self, extra_env: dict[str, str], token: int | None) -> None:
        """Exec mode: start the command as leader, within the lease."""
        trace.mark("watchdog: spawn order in")
        if self.deadline is None or clock.now() >= self.deadline:
            self._send(proto.SpawnFailed(lease_expired=True, code=None, error="lease already expired"))
            return
        if self.lease_file_says != self.deadline:
            self._write_lease_file()
        self._write_role(role_file.LEADER, token)
        extra_env = {**extra_env, "CONSUL_ELECT_LEASE_FILE": self.lease_file}
        if not self._launch(extra_env, self.deadline, "exec did not finish within the lease", lease_expired=True):
            self._write_role(role_file.FOLLOWER)

    def _start_follower(self, extra_env: dict[str, str]) -> None:
        """Signal mode: start the command as a follower; it keeps running across terms."""
        self._launch(extra_env, clock.now() + FOLLOWER_START_TIMEOUT,
                     f"exec did not finish within {FOLLOWER_START_TIMEOUT:g}s", lease_expired=False)

    def _launch(self, extra_env: dict[str, str], until: float, too_slow: str, lease_expired: bool) -> bool:
        """Exec the prepared child; answer Spawned or SpawnFailed."""
        try:
            try:
                if self.prepared is None:
                    self.prepared = self._prepare()
                pid = self.prepared.launch(extra_env, until)
            except BrokenPipeError:  # the prepared process was killed meanwhile: start afresh
                self.prepared.cancel()
                self.prepared = self._prepare()
                pid = self.prepared.launch(extra_env, until)
        except TimeoutError:
            self.prepared = self._prepare()
            code = None if lease_expired else supervisor.EXIT_NOT_EXECUTABLE
            self._send(proto.SpawnFailed(lease_expired=lease_expired, code=code, error=too_slow))
            return False
        except OSError as e:
            self.prepared = self._prepare()
            self._send(proto.SpawnFailed(lease_expired=False, code=supervisor.spawn_error_exit_code(e),
                                         error=f"{self.argv[0]}: {e.strerror}"))
            return False
        trace.mark("watchdog: exec done")
        self.prepared = None
        self.run = Run(pid, containment.Containment(pid, self.cgroup, (os.getpid(),)))
        self._send(proto.Spawned(pid))
        return True

    # -- signal mode: the role ---------------------------------------------------------------

    def _elect(self, token: int) -> None:
        if self.run is None:
            return  # the command is gone; its Exited is on the way to the elector
        self.term = Term(token)
        role_file.clear_ack(self.role_path)
        self._write_role(role_file.LEADER, token)
        self._signal_role(self.config.elected_signal)
        self._send(proto.Elected(token))

    def _demote(self, token: int) -> None:
        """The elector's order. Idempotent: the watchdog may have demoted on its own already."""
        term = self.term
        if self.run is None:
            return  # its Exited is on the way
        if term is None or term.token != token or term.acked:
            # Over already (acknowledged), or never told: nothing to stand down from.
            self._send(proto.Acked(token))
        elif term.demoted_at is None:
            self._tell_demoted(by_watchdog=False)

    def _tell_demoted(self, by_watchdog: bool) -> None:
        """Role file first, then the signal; the command has the grace period (never past the
        lease deadline) to acknowledge before it is killed as exec mode kills it."""
        term, now = self.term, clock.now()
        term.demoted_at, term.by_watchdog = now, by_watchdog
        term.ack_by = now + self.config.grace
        if self.deadline is not None:
            term.ack_by = min(term.ack_by, self.deadline)
        self._write_role(role_file.FOLLOWER, demoted_from=term.token)
        self._signal_role(self.config.demoted_signal)
        self._send(proto.Demoted(term.token, by_watchdog))

    def _signal_role(self, signo: int) -> None:
        """Signal the command's group, unless its main process has no handler for *signo* yet:
        the default action would kill it, and the role file tells it the role in any case."""
        if supervisor.catches_signal(self.run.pid, signo):
            containment.signal_group(self.run.pid, signo)
        else:
            log.info("the command does not handle %s (yet): not sent; the role file says %s",
                     signal.Signals(signo).name, self.role[0])

    def _check_term(self, now: float) -> bool:
        """Signal mode's timers; True when the run was ended here."""
        term = self.term
        if self.run is None or term is None or term.acked:
            return False
        if term.demoted_at is None:
            if self.deadline is not None and now >= self.deadline - self.config.grace:
                # No renewal reached us in time (the elector is frozen or cut off): demote
                # without it, exactly when exec mode's graceful stop would begin.
                log.warning("no renewal of the lease reached the watchdog by deadline - grace: demoting the command")
                self._tell_demoted(by_watchdog=True)
            return False
        if role_file.acknowledged(self.role_path, term.token):
            term.acked = True
            self._send(proto.Acked(term.token))
            if term.by_watchdog:
                log.warning("the command stood down from term %d: releasing the key", term.token)
                self._release_key()  # the elector did not act: hand the key on now
            return False
        if now >= term.ack_by:
            self.run.reason = proto.REASON_NOT_ACKNOWLEDGED
            past_deadline = self.deadline is not None and now >= self.deadline
            if self._kill_and_finish() and (term.by_watchdog or past_deadline):
                self._release_key()
            return True
        return False

    def _write_role(self, role: str, token: int | None = None, demoted_from: int | None = None) -> None:
        self.role = (role, token, demoted_from)
        if self.role_path is None:
            return
        leader = self.config.name if role == role_file.LEADER else self.leader_name
        if role_file.write(self.role_path, role_file.document(role, leader, token, self.deadline, demoted_from,
                                                              self.role_path)):
            self.role_written = role_file.identity(self.role_path)

    def _role_ended(self) -> None:
        """The command no longer leads (stopped, killed, exited): say so before it is signalled."""
        if self.role[0] == role_file.LEADER:
            self._write_role(role_file.FOLLOWER, demoted_from=self.role[1])

    def _report_nothing_running(self, wait: float) -> None:
        """Answer a Stop or Quit when no run is current: confirmed only if no survivor of an
        earlier run is left (a "nothing running" must never read as "all gone")."""
        confirmed, survivors = self._leftovers_gone(wait)
        self._send(proto.Exited(None, None, proto.REASON_NOTHING, False, confirmed, survivors))

    def _leftovers_gone(self, wait: float) -> tuple[bool, tuple]:
        """Kill again what survived an earlier run's SIGKILL (EPERM); (gone, survivors)."""
        if self.leftover is None:
            return True, ()
        confirmed, survivors = self.leftover.kill_and_wait(wait, reap=self._reap)
        if confirmed:
            self.leftover = None
            if self.prepared is None:
                self.prepared = self._prepare()
        return confirmed, survivors

    def _begin_stop(self, grace: float) -> None:
        run = self.run
        if run is None:
            self._report_nothing_running(CONTAIN_RETRY_WAIT)
            return
        run.reason = run.reason or proto.REASON_STOPPED
        kill_at = clock.now() + grace
        if self._leading() and self.deadline is not None:
            kill_at = min(kill_at, self.deadline)
        self._role_ended()
        if run.kill_at is None:
            containment.signal_group(run.pid, signal.SIGTERM)
            # A stopped (SIGTSTP) command cannot act on SIGTERM until it is continued.
            containment.signal_group(run.pid, signal.SIGCONT)
        # A second stop order (a second Ctrl-C) can only bring the SIGKILL closer.
        run.kill_at = kill_at if run.kill_at is None else min(run.kill_at, kill_at)

    def _reap(self) -> None:
        for pid, status in supervisor.reap_all():
            if self.run is not None and pid == self.run.pid:
                trace.mark("watchdog: command reaped")
                self.run.reaped = True
                self.run.status = supervisor.exit_code(status)
        if self.run is not None and not self.run.reaped:
            self._check_stopped(self.run.pid)

    def _check_stopped(self, pid: int) -> None:
        """A command stopped by the terminal (SIGTTIN: it read stdin from its own process group,
        which is not the foreground) or by Ctrl-Z holds the lock doing nothing: say so."""
        try:
            got, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        except ChildProcessError:
            return
        if got != pid:
            return
        if os.WIFSTOPPED(status):
            self._send(proto.CommandStopped(pid, os.WSTOPSIG(status)))
        else:  # it exited between the sweep above and this look: this was its reaping
            self.run.reaped = True
            self.run.status = supervisor.exit_code(status)

    def _check_timers(self) -> None:
        run = self.run
        if run is None:
            if self.prepare_at is not None and clock.now() >= self.prepare_at:
                self.prepare_at = None
                if self.prepared is None and self.leftover is None:
                    self.prepared = self._prepare()
            return
        now = clock.now()
        if self._check_term(now):
            return
        if self._leading() and self.deadline is not None and now >= self.deadline and not run.killed:
            # The elector did not renew in time (frozen, cut off, slow): the lease promise is
            # kept here, without it; never hand the key on while the command might still run.
            run.reason = proto.REASON_LEASE_EXPIRED
            released = self._kill_and_finish()
            if released:
                self._release_key()
            log.error("no renewal by the lease deadline (consul-elect frozen, or cut off from Consul): the command "
                      "was killed%s", f" and {self.release_key} released" if released else
                      f", but some of its processes survive: {self.release_key} stays held")
            return
        if run.kill_at is not None and now >= run.kill_at and not run.killed:
            self._kill_and_finish()
            return
        if run.reaped:
            # The main process is gone; whatever it left behind must not keep doing leader work
            # without a leader.
            run.reason = run.reason or proto.REASON_EXITED
            self._kill_and_finish(kill=bool(run.containment.members()))

    def _kill_and_finish(self, kill: bool = True) -> bool:
        """SIGKILL what is left of the run (repeatedly), confirm it gone, and report; True if confirmed."""
        run = self.run
        self._role_ended()
        self._reap()
        killed_main = kill and not run.reaped
        run.killed = run.killed or killed_main
        spare = frozenset({self.prepared.pid}) if self.prepared else frozenset()
        run.containment.spare = spare
        if kill:
            confirmed, survivors = run.containment.kill_and_wait(KILL_WAIT, reap=self._reap)
        else:
            # Only from _check_timers, which has just found nothing of the run left (and
            # nothing can appear from nothing): that look is the confirmation, without a kill
            # pass or a second scan on a handover's path.
            confirmed, survivors = True, ()
        self._reap()
        trace.mark("watchdog: exited sent")
        self._send(proto.Exited(run.pid, run.status, run.reason, run.killed, confirmed, survivors,
                                swept=kill and not killed_main))
        self.run = None
        self.term = None
        if not confirmed:
            self.leftover = run.containment  # remembered until it is empty: see _leftovers_gone
        self._remove_lease_file()
        # The next prepared child joins the cgroup: only once nothing of this run is left in it,
        # or the next sweep would take it too (it is made on the next spawn otherwise).
        if confirmed and self.prepared is None:
            self.prepare_at = clock.now() + PREPARE_DELAY
        return confirmed

    def _prepare(self) -> supervisor.PreparedChild:
        return supervisor.PreparedChild(self.argv, self.cgroup)

    def _write_lease_file(self) -> None:
        # The command may check the deadline itself; rename makes each update atomic for readers.
        # A courtesy only: a tmp cleaner that removed the folder must not cost the lease.
        if self.deadline is None:
            return
        tmp = self.lease_file + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.lease_file), mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(f"{self.deadline:.3f}\n")
            os.replace(tmp, self.lease_file)
            self.lease_file_says = self.deadline
        except OSError as e:
            self.lease_file_says = None
            log.warning("cannot write the lease file %s: %s", self.lease_file, e)

    def _remove_lease_file(self) -> None:
        self.lease_file_says = None
        for path in (self.lease_file, self.lease_file + ".tmp"):
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- Consul clean-up on the elector's behalf -------------------------------------------

    def _release_key(self) -> None:
        if self.session is not None:
            put_once(self.config.connection, f"/v1/kv/{self.release_key}", CLEANUP_TIMEOUT,
                     params={"release": self.session}, body=self.release_value.encode())

    def _elector_gone(self) -> None:
        confirmed, released = True, False
        if self.run is not None and self.config.signal_mode:
            # The unit is dead and its supervisor will restart it: end the term properly (the
            # leader work stops, then the key goes), then stop the command as exec mode does.
            self.exit_code = SOFTWARE  # the unit failed: its supervisor must see it
            if self._leading():
                acked = self._stand_down_alone()
                log.error("the elector died: the command was demoted (%s)",
                          "it acknowledged" if acked else "no acknowledgement: killed")
                if acked and self.session is not None:
                    self._release_key()
                    released = True
            else:
                log.error("the elector died: stopping the command")
        ran = self.run is not None
        if ran:
            self.run.reason = proto.REASON_STOPPED
            confirmed = self._kill_and_finish()
        # Survivors of an earlier run (EPERM) keep the key held: its session is left to Consul.
        confirmed = confirmed and self._leftovers_gone(KILL_WAIT)[0]
        if confirmed and self.session is not None:
            if not released:
                self._release_key()
            put_once(self.config.connection, f"/v1/session/destroy/{self.session}", CLEANUP_TIMEOUT, params={})
        if ran and not self.config.signal_mode:
            log.error("consul-elect died: the command was stopped%s", "" if confirmed else
                      ", but some of its processes survive (its session is left to expire)")
        self._run_owed_demoted_hook(confirmed)

    def _run_owed_demoted_hook(self, released: bool) -> None:
        """The elector died within a term whose --on-demoted it had not run: run it here, after
        the stop and the release, as the elector would have (README "Hooks")."""
        env, command = self.demoted_hook_env, self.config.on_demoted
        self.demoted_hook_env = None
        if env is None or not command:
            return
        if not released:
            # The term is not over while processes of the command survive and the key stays
            # held: the elector would not run it either.
            log.error("the on-demoted hook is not run: %s stays held while processes of the command survive",
                      self.release_key)
            return
        hooks = Hooks(self.config.hook_timeout, lambda: None)
        hooks.start(HOOK_ON_DEMOTED, command, {**os.environ, **env})
        hooks.wait()

    def _stand_down_alone(self) -> bool:
        """Demote now (unless done), and wait for the acknowledgement until the term's ack_by."""
        term = self.term
        if term.demoted_at is None:
            self._tell_demoted(by_watchdog=True)
        while clock.now() < term.ack_by:
            self._reap()
            if role_file.acknowledged(self.role_path, term.token):
                term.acked = True
                return True
            if self.run.reaped:
                return False
            time.sleep(ACK_POLL)
        return False

    def _send(self, message) -> None:
        try:
            self.sock.sendall(proto.encode(message))
        except OSError:
            pass  # the elector is gone; the next recv tells us


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


class WatchdogLink:
    """The elector's end: send orders, receive the watchdog's answers on a reader thread."""

    def __init__(self, sock: socket.socket, pid: int, lease_dir: str) -> None:
        self.sock = sock
        self.pid = pid
        self.lease_dir = lease_dir
        self._lock = threading.Lock()

    @classmethod
    def start(cls, config: Config, lease_dir: str) -> WatchdogLink:
        """Fork the watchdog. Call before any thread exists."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Objects imported so far are shared copy-on-write with the watchdog; keep the garbage
        # collector from touching (and so copying) them in either process.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                code = Watchdog(theirs, config, lease_dir).serve()
            except BaseException:
                log.exception("watchdog failed")
                code = 70
            finally:
                os._exit(code)
        theirs.close()
        return cls(ours, pid, lease_dir)

    def listen(self, on_message: Callable[[object], None], on_lost: Callable[[], None]) -> None:
        """Call on_message for each answer, on_lost once when the watchdog is gone."""
        def read() -> None:
            with self.sock.makefile("rb") as stream:
                while True:
                    try:
                        line = stream.readline()
                    except OSError:
                        line = b""
                    if not line.endswith(b"\n"):
                        on_lost()
                        return
                    on_message(proto.decode(line))

        threading.Thread(target=read, name="watchdog-link", daemon=True).start()

    def send(self, message) -> None:
        with self._lock:
            try:
                self.sock.sendall(proto.encode(message))
            except OSError:
                pass  # the reader thread reports the loss

    def send_quit_and_forget(self) -> None:
        """For a start-up that failed before the driver existed."""
        self.send(proto.Quit())
        self.close()

    def close(self) -> None:
        self.sock.close()
