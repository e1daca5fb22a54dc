#!/usr/bin/env python3
"""Benchmark consul-elect against `consul lock` (same Consul binary, same dev agent, same run).

    CONSUL_BIN=... .venv/bin/python bench/run.py [--quick] [--only FIGURE[,FIGURE...]] [--keep]

Figures (see bench/README.md for the method of each):
  handover  graceful handover: SIGTERM to the leading wrapper, old child's stop -> new child's start
  idle      idle cost while leading (default flags): PSS, CPU time, requests/s to Consul
  kill9     kill -9 of the leading wrapper with a standby waiting
  freeze    SIGSTOP of the leading wrapper process only
  agent     the Consul agent killed under the leader, then restarted on the same ports

Every process started here runs in its own session/process group and is killed in a finally;
every wait is bounded. Prints a table and writes bench/results/latest.json. Goals are reported
in bench/README.md; this script measures and never asserts.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lib  # noqa: E402  (puts tests/ on sys.path)
from lib import (  # noqa: E402
    Child, CountingProxy, EventTail, LockHolder, children, classify, cpu_seconds, kill_owned, now, percentile,
    memory_kb, poll_until, resident_union_kb, sharing_exe,
)

from consul_servers import ConsulAgent, kill_all_tracked  # noqa: E402
from harness import FAST, Candidate, pid_alive, read_lives  # noqa: E402

FIGURES = ["handover", "idle", "kill9", "freeze", "agent"]
CE, CL = "consul-elect", "consul lock"
RESULTS = lib.BENCH / "results" / "latest.json"

START_WAIT = 20.0      # a wrapper's child must run within this after the wrapper starts
SETTLE = 0.5           # after a standby logs that it waits, let its blocking query get in place
IDLE_SETTLE = 3.0      # after both idle leaders run, let start-up work finish before the window
KILL9_CAP = 60.0
FREEZE_CAP = {CE: 15.0, CL: 30.0}
AGENT_STOP_CAP = 15.0
AGENT_BACK_CAP = 30.0
AFTER_THAW = 3.0
DEFAULTS = "--ttl 10s --lock-delay 6s --grace 2s"


class BenchError(RuntimeError):
    pass


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- bookkeeping


class Bench:
    """Owns everything started: wrappers, timing children, proxies, agents; close() kills it all."""

    def __init__(self, consul_bin: str, quick: bool, keep: bool) -> None:
        self.consul_bin = consul_bin
        self.quick = quick
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix="consul-elect-bench-"))
        self.child = Child(self.work)
        self.wrappers: list = []
        self.tails: list[EventTail] = []
        self.proxies: list[CountingProxy] = []
        self.agents: list[ConsulAgent] = []
        self.agent: ConsulAgent | None = None

    def dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=False)
        return path

    def tail(self, events: Path) -> EventTail:
        tail = EventTail(events)
        self.tails.append(tail)
        return tail

    def start_agent(self, base_dir: Path) -> ConsulAgent:
        # Every wrapper reaches the agent through one proxy, i.e. from one client address, and
        # each keeps up to three connections: Consul's default of 200 per client would refuse
        # a hundred wrappers (a real fleet spreads over many agents).
        agent = ConsulAgent(self.consul_bin, base_dir=str(base_dir),
                            extra_hcl=["limits { http_max_conns_per_client = 2000 }"])
        self.agents.append(agent)
        return agent.start()

    def proxy(self, upstream: str) -> CountingProxy:
        proxy = CountingProxy(upstream)
        self.proxies.append(proxy)
        return proxy.start()

    def started(self, wrapper):
        self.wrappers.append(wrapper)
        return wrapper.start()

    def release(self, *wrappers) -> None:
        for w in wrappers:
            if w is None:
                continue
            if w.proc is not None:
                w.cleanup()
            if w in self.wrappers:
                self.wrappers.remove(w)

    def sweep(self, tail: EventTail) -> list[int]:
        """Kill whatever timing child of this tail still runs (a survivor the wrapper left)."""
        return kill_owned(self.child, list(tail.poll().lives))

    def close(self) -> list[str]:
        leftovers = []
        for w in list(self.wrappers):
            try:
                self.release(w)
            except Exception as e:  # noqa: BLE001 - keep cleaning
                leftovers.append(f"wrapper {w.name}: {e}")
        for tail in self.tails:
            killed = self.sweep(tail)
            if killed:
                leftovers.append(f"killed leftover children {killed}")
        for proxy in self.proxies:
            try:
                proxy.stop()
            except Exception:  # noqa: BLE001
                pass
        for agent in self.agents:
            try:
                agent.thaw()
                agent.stop()
            except Exception as e:  # noqa: BLE001
                leftovers.append(f"agent: {e}")
        killed = kill_all_tracked()
        if killed:
            leftovers.append(f"killed leftover consul agents {killed}")
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return leftovers


class Tool:
    """How to start one wrapper of a tool, and how to tell that a standby is waiting."""

    def __init__(self, bench: Bench, label: str, options: list[str] | None = None, shell: bool = False) -> None:
        self.bench = bench
        self.label = label
        self.options = FAST if options is None else options
        self.shell = shell

    @property
    def is_elect(self) -> bool:
        return self.label == CE

    def describe(self) -> str:
        if self.is_elect:
            return "consul-elect " + (" ".join(self.options) or f"(defaults: {DEFAULTS})") + (" --shell" if self.shell else "")
        return "consul lock (defaults) " + ("-shell, SHELL=/bin/sh" if self.shell else "-shell=false")

    def key(self, figure: str) -> str:
        # consul lock takes a prefix and holds PREFIX/.lock; consul-elect holds the key itself.
        return f"bench/{figure}/{'elect' if self.is_elect else 'lock'}-{uuid.uuid4().hex[:8]}"

    def start(self, http_addr: str, key: str, name: str, wd: Path, events: Path, beat_ms: int = 10):
        argv = self.bench.child.argv(events, name, beat_ms)
        if self.is_elect:
            options = [*self.options, "--shell"] if self.shell else list(self.options)
            # Hot-path timestamps (consul_elect/trace.py) for the handover's split.
            env = {"CONSUL_ELECT_TRACE": str(wd / TRACE_FILE)}
            return self.bench.started(Candidate(http_addr, key, name, wd, argv, options, env))
        env = {"SHELL": "/bin/sh"} if self.shell else None
        return self.bench.started(LockHolder(self.bench.consul_bin, http_addr, key, name, wd, argv, self.shell, env))

    def waiting(self, wrapper, leader: str) -> bool:
        log = wrapper.log()
        return f"following {leader}" in log if self.is_elect else "Attempting lock acquisition" in log


def log_tail(wrapper, lines: int = 15) -> str:
    try:
        return "\n".join(wrapper.log().splitlines()[-lines:])
    except OSError as e:
        return f"<no log: {e}>"


def start_leader(tool: Tool, addr: str, key: str, name: str, wd: Path, events: Path, tail: EventTail, beat_ms=10):
    w = tool.start(addr, key, name, wd, events, beat_ms)
    life = poll_until(lambda: tail.named(name), START_WAIT, 0.02)
    if life is None:
        raise BenchError(f"{tool.label}: {name}'s child did not start within {START_WAIT:.0f}s\n{log_tail(w)}")
    return w, life


def start_standby(tool: Tool, addr: str, key: str, name: str, leader: str, wd: Path, events: Path):
    w = tool.start(addr, key, name, wd, events)
    if not poll_until(lambda: tool.waiting(w, leader), START_WAIT, 0.02):
        raise BenchError(f"{tool.label}: standby {name} did not start waiting within {START_WAIT:.0f}s\n{log_tail(w)}")
    time.sleep(SETTLE)
    return w


def lives_by_pid(events: Path) -> dict:
    return {life.pid: life for life in read_lives(events)}


# --------------------------------------------------------------------------- 1. graceful handover


def fig_handover(b: Bench, tool: Tool, reps: int, tag: str) -> dict:
    wd = b.dir(f"handover-{tag}")
    events = wd / "events.log"
    tail = b.tail(events)
    addr = b.agent.http_addr
    key = tool.key("handover")
    names = [f"h{i}" for i in range(reps + 1)]
    samples = []
    leader = standby = None
    try:
        leader, _ = start_leader(tool, addr, key, names[0], wd, events, tail)
        standby = start_standby(tool, addr, key, names[1], names[0], wd, events)
        for i in range(reps):
            old = tail.named(names[i])
            t_sig = now()
            leader.send_signal(signal.SIGTERM)
            new = poll_until(lambda: tail.named(names[i + 1]), 10.0, 0.005)
            if new is None:
                raise BenchError(f"{tool.label}: no handover to {names[i + 1]} within 10 s\n{log_tail(standby)}")
            # A stopped child is gone at once; one still alive 0.5 s after the new start survived.
            survived = poll_until(lambda: not pid_alive(old["pid"]), 0.5, 0.01) is None
            try:
                code = leader.wait(10)
            except subprocess.TimeoutExpired:
                code = None
            samples.append({"old_pid": old["pid"], "new_pid": new["pid"], "t_sigterm": t_sig,
                            "old_survived": survived, "wrapper_exit": code,
                            "old_wrapper": leader.pid, "new_wrapper": standby.pid})
            if survived:
                kill_owned(b.child, [old["pid"]])
            b.release(leader)
            leader, standby = standby, None
            if i + 1 < reps:
                standby = start_standby(tool, addr, key, names[i + 2], names[i + 1], wd, events)
    finally:
        b.release(leader, standby)
        b.sweep(tail)
    lives = lives_by_pid(events)
    for s in samples:
        old, new = lives[s["old_pid"]], lives[s["new_pid"]]
        s["old_last_event"] = old.events[-1]
        s["gap_s"] = new.start - old.end                  # old child's last record -> new child's start
        s["from_sigterm_s"] = new.start - s.pop("t_sigterm")
    clean = [s["gap_s"] for s in samples if not s["old_survived"] and s["gap_s"] >= 0]
    phases = elect_phases(wd, names, samples, lives) if tool.is_elect else None
    steps = trace_steps(wd / TRACE_FILE, samples, lives) if tool.is_elect else None
    return {
        "flags": tool.describe(),
        "n": len(samples),
        "median_s": percentile(clean, 0.5),
        "p90_s": percentile(clean, 0.9),
        "min_s": min(clean) if clean else None,
        "max_s": max(clean) if clean else None,
        "from_sigterm_median_s": percentile([s["from_sigterm_s"] for s in samples], 0.5),
        "old_child_survived": sum(s["old_survived"] for s in samples),
        "overlaps": sum(s["gap_s"] < 0 for s in samples),
        "phases_median_s": phases,
        "steps_median_s": steps,
        "samples": samples,
    }


# Wall-clock minus CLOCK_MONOTONIC, to place consul-elect's log lines (local wall time, ms,
# truncated) on the children's clock for a rough per-phase breakdown (+-1 ms).
WALL_OFFSET = time.time() - now()
# "<time> consul-elect[<pid>] <LEVEL> <name>: <message>" (older releases had no name field).
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) consul-elect\[\d+\] \w+ (?:[^ :]+: )?(.*)$")


def log_times(path: Path, prefix: str) -> list[float]:
    """CLOCK_MONOTONIC estimates of the consul-elect log lines whose message starts with `prefix`."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m and m.group(2).startswith(prefix):
            out.append(datetime.datetime.fromisoformat(m.group(1)).timestamp() - WALL_OFFSET)
    return out


def elect_phases(wd: Path, names: list[str], samples: list[dict], lives: dict) -> dict | None:
    """Median split of a consul-elect handover: old child's stop -> old wrapper logs "released"
    -> new wrapper logs "elected leader" -> new child's start record."""
    parts = collections.defaultdict(list)
    for i, s in enumerate(samples):
        released = log_times(wd / f"{names[i]}.log", "released ")
        elected = log_times(wd / f"{names[i + 1]}.log", "elected leader ")
        if not released or not elected:
            continue
        old, new = lives[s["old_pid"]], lives[s["new_pid"]]
        parts["stop -> released"].append(released[-1] - old.end)
        parts["released -> elected"].append(elected[-1] - released[-1])
        parts["elected -> child start"].append(new.start - elected[-1])
    return {k: percentile(v, 0.5) for k, v in parts.items()} or None


TRACE_FILE = "trace.log"
# One handover, point by point (consul_elect/trace.py marks), as (point, whose): "old" the
# leader handing over (its elector or watchdog), "new" its successor's, "child" the new child.
TRACE_CHAIN = [
    ("watchdog: command reaped", "old"), ("watchdog: exited sent", "old"), ("elector: exited in", "old"),
    ("elector: release sent", "old"), ("watcher: key answer", "new"), ("elector: key news in", "new"),
    ("elector: acquire sent", "new"), ("elector: acquired", "new"), ("elector: spawn sent", "new"),
    ("watchdog: spawn order in", "new"), ("watchdog: go sent", "new"),
]


def trace_steps(path: Path, samples: list[dict], lives: dict) -> dict | None:
    """Median time of each step from the old child's last record to the new child's start
    record, both processes' marks on one clock. Marks are matched by pid where the pid is
    known (the electors, the new child) and by name in the handover's window otherwise (the
    watchdogs)."""
    try:
        marks = [line.split(" ", 2) for line in path.read_text().splitlines()]
    except OSError:
        return None
    marks = [(float(t), int(pid), point) for t, pid, point in (m for m in marks if len(m) == 3)]
    steps = collections.defaultdict(list)
    for s in samples:
        old, new = lives[s["old_pid"]], lives[s["new_pid"]]
        window = [m for m in marks if old.end - 0.05 <= m[0] <= new.start]
        times = [old.end]
        for point, whose in TRACE_CHAIN:
            pid = {"old": s["old_wrapper"], "new": s["new_wrapper"], "child": s["new_pid"]}[whose]
            found = [t for t, p, name in window if name == point and (p == pid or point.startswith("watchdog"))
                     and t >= times[-1] - 0.0005]
            if not found:
                break
            times.append(found[0])
        else:
            times.append(new.start)
            names = ["child exit"] + [p for p, _ in TRACE_CHAIN] + ["child start"]
            for a, b, t0, t1 in zip(names, names[1:], times, times[1:]):
                steps[f"{a} -> {b}"].append(t1 - t0)
    return {k: percentile(v, 0.5) for k, v in steps.items()} or None


# --------------------------------------------------------------------------- 2. idle cost


def fig_idle(b: Bench, window: float) -> dict:
    wd = b.dir("idle")
    events = wd / "events.log"
    tail = b.tail(events)
    ce_tool, cl_tool = Tool(b, CE, options=[]), Tool(b, CL)
    proxies = {CE: b.proxy(b.agent.http_addr), CL: b.proxy(b.agent.http_addr)}
    ce = cl = None
    try:
        # Both lead at the same time, each on its own key and its own counting proxy; a slow
        # 1 s beat keeps the (excluded) children quiet.
        ce = ce_tool.start(proxies[CE].address, ce_tool.key("idle"), "idle-ce", wd, events, beat_ms=1000)
        cl = cl_tool.start(proxies[CL].address, cl_tool.key("idle"), "idle-cl", wd, events, beat_ms=1000)
        for name, w in (("idle-ce", ce), ("idle-cl", cl)):
            if not poll_until(lambda: tail.named(name), START_WAIT, 0.05):
                raise BenchError(f"idle: {name}'s child did not start\n{log_tail(w)}")
        time.sleep(IDLE_SETTLE)
        ce_child = tail.named("idle-ce")["pid"]
        watchdogs = [p for p in children(ce.pid) if p != ce_child]
        pids = {CE: {"consul-elect": ce.pid, **{f"watchdog {p}": p for p in watchdogs}}, CL: {"consul lock": cl.pid}}
        cpu0 = {pid: cpu_seconds(pid) for group in pids.values() for pid in group.values()}
        t0 = now()
        time.sleep(window)
        t1 = now()
        cpu1 = {pid: cpu_seconds(pid) for pid in cpu0}
        out = {}
        for tool, group in pids.items():
            reqs = proxies[tool].between(t0, t1)
            cpu = sum((cpu1[p] or 0) - (cpu0[p] or 0) for p in group.values())
            mem = {label: memory_kb(p) or {} for label, p in group.items()}
            pss = {label: m.get("pss") for label, m in mem.items()}
            out[tool] = {
                "flags": (ce_tool if tool == CE else cl_tool).describe(),
                "window_s": t1 - t0,
                "pss_kb": pss,
                "pss_total_kb": sum(v or 0 for v in pss.values()),
                "rss_kb": {label: m.get("rss") for label, m in mem.items()},
                "uss_kb": {label: m.get("uss") for label, m in mem.items()},
                "rss_total_kb": sum(m.get("rss") or 0 for m in mem.values()),
                "uss_total_kb": sum(m.get("uss") or 0 for m in mem.values()),
                "alone_kb": resident_union_kb(group.values()),
                "processes_running_same_executable": sharing_exe(next(iter(group.values()))),
                "cpu_s": cpu,
                "cpu_percent_of_one_core": 100 * cpu / (t1 - t0),
                "requests": len(reqs),
                "requests_per_s": len(reqs) / (t1 - t0),
                "requests_by_kind": dict(collections.Counter(classify(m, p) for _, m, p in reqs)),
                "still_leading": all(pid_alive(p) for p in group.values())
                and pid_alive(tail.named("idle-ce" if tool == CE else "idle-cl")["pid"]),
            }
        out[CE]["watchdog_pids"] = watchdogs
        return out
    finally:
        b.release(ce, cl)
        b.sweep(tail)


# --------------------------------------------------------------------------- 3. kill -9


def fig_kill9(b: Bench, tool: Tool) -> dict:
    wd = b.dir(f"kill9-{'elect' if tool.is_elect else 'lock'}")
    events = wd / "events.log"
    tail = b.tail(events)
    addr = b.agent.http_addr
    key = tool.key("kill9")
    a = s = None
    try:
        a, first = start_leader(tool, addr, key, "a", wd, events, tail)
        s = start_standby(tool, addr, key, "b", "a", wd, events)
        old = first["pid"]
        helpers = [p for p in children(a.pid) if p != old]  # consul-elect: the watchdog
        t0 = now()
        os.kill(a.pid, signal.SIGKILL)
        died_at = alive_2s = new = alive_at_takeover = None
        while True:
            t = now()
            if died_at is None and not pid_alive(old):
                died_at = t
            if alive_2s is None and t >= t0 + 2.0:
                alive_2s = pid_alive(old)
            if new is None:
                new = tail.named("b")
                if new is not None:
                    alive_at_takeover = pid_alive(old)
            if (new is not None and alive_2s is not None) or t >= t0 + KILL9_CAP:
                break
            time.sleep(0.002 if t < t0 + 2.0 else 0.02)
        if new is not None:
            time.sleep(0.5)
        alive_end = pid_alive(old)
        lives = lives_by_pid(events)
        result = {
            "flags": tool.describe(),
            "cap_s": KILL9_CAP,
            "takeover_s": lives[new["pid"]].start - t0 if new else None,
            "old_child_died_after_s": died_at - t0 if died_at else None,
            "old_child_alive_2s": alive_2s,
            "old_child_alive_at_takeover": alive_at_takeover,
            "old_child_alive_at_end": alive_end,
            "overlap_s": max(0.0, lives[old].end - lives[new["pid"]].start) if new else None,
            "helpers_alive_at_end": [p for p in helpers if pid_alive(p)],
            "standby_wrapper_alive": s.alive(),
        }
    finally:
        b.release(a, s)
        killed = b.sweep(tail)
    result["survivors_killed_by_bench"] = killed
    return result


# --------------------------------------------------------------------------- 4. freeze


def fig_freeze(b: Bench, tool: Tool) -> dict:
    wd = b.dir(f"freeze-{'elect' if tool.is_elect else 'lock'}")
    events = wd / "events.log"
    tail = b.tail(events)
    addr = b.agent.http_addr
    key = tool.key("freeze")
    cap = FREEZE_CAP[tool.label]
    a = s = None
    try:
        a, first = start_leader(tool, addr, key, "a", wd, events, tail)
        s = start_standby(tool, addr, key, "b", "a", wd, events)
        old = first["pid"]
        t0 = now()
        os.kill(a.pid, signal.SIGSTOP)  # the wrapper process only: consul-elect's watchdog keeps running
        try:
            died_at = new = alive_at_takeover = None
            while True:
                t = now()
                if died_at is None and not pid_alive(old):
                    died_at = t
                new = tail.named("b")
                if new is not None:
                    alive_at_takeover = pid_alive(old)
                    break
                if t >= t0 + cap:
                    break
                time.sleep(0.005)
            if new is not None:
                time.sleep(0.3)
            alive_at_end = pid_alive(old)
            lives = lives_by_pid(events)
        finally:
            for fn in (lambda: os.kill(a.pid, signal.SIGCONT), lambda: os.killpg(a.pid, signal.SIGCONT)):
                try:
                    fn()
                except OSError:
                    pass
        frozen_for = now() - t0
        time.sleep(AFTER_THAW)
        log = a.log()
        after = lives_by_pid(events)
        result = {
            "flags": tool.describe(),
            "cap_s": cap,
            "frozen_for_s": frozen_for,
            "takeover_s": lives[new["pid"]].start - t0 if new else None,
            "old_child_last_record_after_s": lives[old].end - t0,
            "old_child_died_after_s": died_at - t0 if died_at else None,
            "old_child_alive_at_takeover": alive_at_takeover,
            "old_child_alive_at_cap_or_takeover": alive_at_end,
            "gap_s": lives[new["pid"]].start - lives[old].end if new else None,
            "overlap_s": max(0.0, lives[old].end - lives[new["pid"]].start) if new else None,
            "after_thaw": {
                "wrapper_alive": a.alive(),
                "wrapper_exit": a.proc.poll(),
                "old_child_alive": pid_alive(old),
                "children_alive": sorted(lf.name for lf in after.values() if pid_alive(lf.pid)),
                "lives": [lf.name for lf in after.values()],
                "stood_down": "lost leadership" in log,
                "lock_lost": "Lock lost" in log,
                "following_b": "following b" in log,
            },
        }
    finally:
        b.release(a, s)
        killed = b.sweep(tail)
    result["survivors_killed_by_bench"] = killed
    return result


# --------------------------------------------------------------------------- 5. Consul agent killed


def fig_agent(b: Bench, tool: Tool) -> dict:
    tag = "elect" if tool.is_elect else "lock"
    wd = b.dir(f"agent-{tag}")
    events = wd / "events.log"
    tail = b.tail(events)
    a = s = agent = None
    try:
        agent = b.start_agent(wd / "consul")  # a fresh agent of its own: this one gets killed
        key = tool.key("agent")
        a, first = start_leader(tool, agent.http_addr, key, "a", wd, events, tail)
        s = start_standby(tool, agent.http_addr, key, "b", "a", wd, events)
        old = first["pid"]
        t0 = now()
        agent.kill()
        died_at = poll_until(lambda: now() if not pid_alive(old) else None, AGENT_STOP_CAP, 0.005)
        time.sleep(1.0)  # Consul stays down a moment longer: nobody may lead meanwhile
        led_while_down = [lf["name"] for lf in tail.started_after(t0)]
        alive_down = {"leader": a.alive(), "standby": s.alive()}
        t_restart = now()
        agent.restart()
        t_back = now()
        new = None
        end = t_back + AGENT_BACK_CAP
        while now() < end:
            fresh = tail.started_after(t0)
            if fresh:
                new = fresh[0]
                break
            if not a.alive() and not s.alive():
                break
            time.sleep(0.01)
        if new is not None:
            time.sleep(1.5)
        lives = lives_by_pid(events)
        result = {
            "flags": tool.describe(),
            "child_stopped_after_s": died_at - t0 if died_at else None,
            "child_last_record_after_s": lives[old].end - t0,
            "child_last_event": lives[old].events[-1],
            "child_alive_at_restart": pid_alive(old),
            "led_while_down": led_while_down,
            "wrappers_alive_while_down": alive_down,
            "agent_down_s": t_restart - t0,
            "agent_restart_s": t_back - t_restart,
            "child_again_after_s": new["start"] - t_back if new else None,
            "new_leader": new["name"] if new else None,
            "children_alive_at_end": sorted(lf.name for lf in lives.values() if pid_alive(lf.pid)),
            "wrappers_alive_at_end": {"leader": a.alive(), "standby": s.alive()},
            "wrapper_exit": {"leader": a.proc.poll(), "standby": s.proc.poll()},
            "all_wrappers_exited": not a.alive() and not s.alive(),
        }
    finally:
        b.release(a, s)
        killed = b.sweep(tail)
        if agent is not None:
            agent.stop()
    result["survivors_killed_by_bench"] = killed
    return result


# --------------------------------------------------------------------------- the table


def ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def sec(x) -> str:
    return "-" if x is None else f"{x:.2f} s"


def yn(x) -> str:
    return "-" if x is None else ("yes" if x else "no")


def cell(results: dict, figure: str, tool: str, render) -> str:
    r = results.get(figure, {}).get(tool)
    if r is None:
        return "-"
    if "error" in r:
        return "ERROR (see JSON)"
    try:
        return render(r)
    except Exception as e:  # noqa: BLE001 - a table cell must not sink the report
        return f"? ({type(e).__name__})"


def handover_cell(r: dict) -> str:
    if r["median_s"] is None:
        text = "no clean handover"
    else:
        text = f"{r['median_s'] * 1e3:.1f} / {r['p90_s'] * 1e3:.1f} ms"
    if r["old_child_survived"]:
        text += f", old child SURVIVED {r['old_child_survived']}/{r['n']}"
    elif r["overlaps"]:
        text += f", {r['overlaps']}/{r['n']} OVERLAP"
    return text


def table(results: dict, meta: dict) -> list[tuple[str, str, str]]:
    rows = []

    def row(label, figure, ce_render, cl_render, ce_key=CE, cl_key=CL):
        if figure in results:
            rows.append((label, cell(results, figure, ce_key, ce_render), cell(results, figure, cl_key, cl_render)))

    n = results.get("handover", {}).get(CE, {}).get("n", "?")
    row(f"graceful handover median / p90 (n={n})", "handover", handover_cell, handover_cell)
    row("  same, consul-elect default flags", "handover", handover_cell, lambda r: "-",
        ce_key=CE + " defaults", cl_key="-")
    row("  same, command run via /bin/sh", "handover", handover_cell, handover_cell,
        ce_key=CE + " --shell", cl_key=CL + " -shell")
    row("  SIGTERM -> new child start, median", "handover", lambda r: ms(r["from_sigterm_median_s"]),
        lambda r: ms(r["from_sigterm_median_s"]))
    row("  split: stop>released>elected>child start", "handover",
        lambda r: " / ".join(f"{v * 1e3:.1f}" for v in r["phases_median_s"].values()) + " ms",
        lambda r: "-")
    window = results.get("idle", {}).get(CE, {}).get("window_s")
    row("idle PSS, child excluded", "idle",
        lambda r: f"{r['pss_total_kb'] / 1024:.1f} MB (" + " + ".join(f"{(v or 0) / 1024:.1f}" for v in r["pss_kb"].values()) + ")",
        lambda r: f"{r['pss_total_kb'] / 1024:.1f} MB")
    row("  RSS / USS (private pages)", "idle",
        lambda r: f"{r['rss_total_kb'] / 1024:.1f} / {r['uss_total_kb'] / 1024:.1f} MB",
        lambda r: f"{r['rss_total_kb'] / 1024:.1f} / {r['uss_total_kb'] / 1024:.1f} MB")
    row("  footprint alone (union of resident pages)", "idle",
        lambda r: "-" if r["alone_kb"] is None else f"{r['alone_kb'] / 1024:.1f} MB",
        lambda r: "-" if r["alone_kb"] is None else f"{r['alone_kb'] / 1024:.1f} MB")
    row(f"idle CPU over {window or 0:.0f} s", "idle",
        lambda r: f"{r['cpu_s'] * 1e3:.0f} ms ({r['cpu_percent_of_one_core']:.2f} %)",
        lambda r: f"{r['cpu_s'] * 1e3:.0f} ms ({r['cpu_percent_of_one_core']:.2f} %)")
    row("idle requests to Consul", "idle", lambda r: f"{r['requests_per_s']:.2f}/s ({r['requests']})",
        lambda r: f"{r['requests_per_s']:.2f}/s ({r['requests']})")

    def takeover(r):
        return sec(r["takeover_s"]) if r["takeover_s"] is not None else f"> {r['cap_s']:.0f} s"

    row("kill -9: standby's child runs after", "kill9", takeover, takeover)

    def kill9_old(r):
        died = f" (died after {ms(r['old_child_died_after_s'])})" if r["old_child_died_after_s"] is not None else ""
        return f"{yn(r['old_child_alive_2s'])} / {yn(r['old_child_alive_at_takeover'])}{died}"

    row("kill -9: old child alive at +2 s / at takeover", "kill9", kill9_old, kill9_old)
    row("freeze: standby's child runs after", "freeze", takeover, takeover)

    def freeze_old(r):
        if r["takeover_s"] is None:
            state = "still running" if r["old_child_alive_at_cap_or_takeover"] else "stopped"
            return f"{state} at {r['cap_s']:.0f} s / n/a"
        stop = sec(r["old_child_last_record_after_s"]) if not r["old_child_alive_at_takeover"] else "still running"
        return f"{stop} / {'none' if not r['overlap_s'] else ms(r['overlap_s'])} (gap {ms(r['gap_s'])})"

    row("freeze: old child stopped after / overlap", "freeze", freeze_old, freeze_old)

    def thaw(r):
        t = r["after_thaw"]
        if t["wrapper_alive"]:
            what = "stood down" if t["stood_down"] else "alive"
            what += ", follows b" if t["following_b"] else ""
        else:
            what = f"exited {t['wrapper_exit']}" + (" (lock lost)" if t["lock_lost"] else "")
        return f"{what}; old child {'RUNNING' if t['old_child_alive'] else 'stopped'}"

    row("freeze: after thaw", "freeze", thaw, thaw)

    def agent_stop(r):
        if r["child_stopped_after_s"] is None:
            return f"not within {AGENT_STOP_CAP:.0f} s"
        return sec(r["child_stopped_after_s"])

    row("agent killed: child stopped after", "agent", agent_stop, agent_stop)

    def agent_back(r):
        if r["child_again_after_s"] is not None:
            return f"{sec(r['child_again_after_s'])} ({r['new_leader']})"
        return "never: wrappers exited" if r["all_wrappers_exited"] else f"> {AGENT_BACK_CAP:.0f} s"

    row("agent back: a child runs again after", "agent", agent_back, agent_back)

    def agent_alive(r):
        w = r["wrappers_alive_at_end"]
        return f"{yn(w['leader'])} / {yn(w['standby'])}"

    row("agent: wrappers alive (leader / standby)", "agent", agent_alive, agent_alive)
    return rows


def render(rows, meta: dict) -> str:
    m = meta["machine"]
    lines = [
        f"machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, {m['consul']}, "
        f"consul-elect {m['consul_elect']}, /bin/sh -> {m['sh']}",
        f"load average at start {' '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}, at end "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_at_end'])}; mode: {'quick' if meta['quick'] else 'full'}; "
        f"child: {meta['child']}",
        "consul-elect: handover/kill9/freeze/agent with " + " ".join(FAST) + f"; idle with defaults ({DEFAULTS}); "
        "consul lock: its defaults (session TTL 15s, lock-delay 15s, monitor-retry 3), -shell=false unless noted",
        "",
    ]
    w0 = max([len("figure")] + [len(r[0]) for r in rows]) + 2
    w1 = max([len(CE)] + [len(r[1]) for r in rows]) + 2
    lines.append(f"{'figure':<{w0}}{CE:<{w1}}{CL}")
    lines += [f"{a:<{w0}}{b:<{w1}}{c}" for a, b, c in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def consul_binary() -> str:
    path = os.environ.get("CONSUL_BIN") or shutil.which("consul") or ""
    if not path:
        local = lib.REPO / "tools" / "consul" / "usr" / "bin" / "consul"
        path = str(local) if local.exists() else ""
    if not path or not os.access(path, os.X_OK):
        sys.exit(f"bench: no consul binary (CONSUL_BIN={os.environ.get('CONSUL_BIN')!r}); run `make bench`")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a shorter idle window")
    parser.add_argument("--only", metavar="NAME", help=f"comma-separated subset of: {', '.join(FIGURES)}")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, events files)")
    args = parser.parse_args(argv)
    only = FIGURES
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in only if x not in FIGURES]
        if bad:
            parser.error(f"unknown figure(s) {', '.join(bad)}; choose from {', '.join(FIGURES)}")

    def on_term(signo, _frame):
        raise SystemExit(128 + signo)

    signal.signal(signal.SIGTERM, on_term)
    consul_bin = consul_binary()
    reps = 5 if args.quick else 15
    variant_reps = 2 if args.quick else 5
    window = 10.0 if args.quick else 20.0
    meta = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick, "only": only, "machine": lib.machine(consul_bin), "consul_bin": consul_bin}
    bench = Bench(consul_bin, args.quick, args.keep)
    meta["child"] = bench.child.note
    meta["workdir"] = str(bench.work) if args.keep else None
    results: dict = {}
    t_start = now()

    def attempt(figure: str, tool_label: str, fn):
        say(f"{figure}: {tool_label} ...")
        t = now()
        try:
            results.setdefault(figure, {})[tool_label] = fn()
        except (Exception, subprocess.TimeoutExpired) as e:  # noqa: BLE001 - report, go on
            traceback.print_exc()
            results.setdefault(figure, {})[tool_label] = {"error": f"{type(e).__name__}: {e}"}
        say(f"{figure}: {tool_label} done in {now() - t:.1f} s")

    try:
        if set(only) & {"handover", "idle", "kill9", "freeze"}:
            bench.agent = bench.start_agent(bench.work / "consul-shared")
            say(f"dev agent on {bench.agent.http_addr}")
        if "handover" in only:
            attempt("handover", CE, lambda: fig_handover(bench, Tool(bench, CE), reps, "elect"))
            attempt("handover", CL, lambda: fig_handover(bench, Tool(bench, CL), reps, "lock"))
            attempt("handover", CE + " defaults",
                    lambda: fig_handover(bench, Tool(bench, CE, options=[]), variant_reps, "elect-defaults"))
            attempt("handover", CE + " --shell",
                    lambda: fig_handover(bench, Tool(bench, CE, shell=True), variant_reps, "elect-shell"))
            attempt("handover", CL + " -shell",
                    lambda: fig_handover(bench, Tool(bench, CL, shell=True), variant_reps, "lock-shell"))
        if "idle" in only:
            say(f"idle: both tools at once, {window:.0f} s window ...")
            t = now()
            try:
                results["idle"] = fig_idle(bench, window)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                results["idle"] = {CE: {"error": f"{type(e).__name__}: {e}"}, CL: {"error": f"{type(e).__name__}: {e}"}}
            say(f"idle: done in {now() - t:.1f} s")
        for figure, fn in (("kill9", fig_kill9), ("freeze", fig_freeze), ("agent", fig_agent)):
            if figure in only:
                for label in (CE, CL):
                    attempt(figure, label, lambda fn=fn, label=label: fn(bench, Tool(bench, label)))
    finally:
        leftovers = bench.close()
        if leftovers:
            say("clean-up: " + "; ".join(leftovers))
    meta["loadavg_at_end"] = os.getloadavg()
    meta["duration_s"] = now() - t_start
    rows = table(results, meta)
    text = render(rows, meta)
    print(text)
    steps = results.get("handover", {}).get(CE, {}).get("steps_median_s")
    if steps:
        print(f"\n{CE} handover, step by step (medians, both processes on CLOCK_MONOTONIC; consul_elect/trace.py):")
        for step, seconds in steps.items():
            print(f"  {seconds * 1e3:7.2f} ms  {step}")
        print(f"  {sum(steps.values()) * 1e3:7.2f} ms  in all (the sum of medians)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "table": rows, "results": results}, indent=2, default=str) + "\n")
    print(f"\n(wrote {RESULTS.relative_to(lib.REPO)}; took {meta['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
