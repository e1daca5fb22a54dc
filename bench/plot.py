"""Draw bench/run.py's results as one picture: bench/results/latest.png (needs the `bench` extra).

    .venv/bin/pip install -e '.[bench]'        # matplotlib, for this script only
    .venv/bin/python bench/plot.py [RESULTS_JSON] [-o PNG]

One panel per scenario, consul-elect beside `consul lock`; time axes are logarithmic wherever
milliseconds and tens of seconds meet in one panel. Missing or failed figures are drawn as "n/a",
so a partial run (--only, --quick) still gives a picture. The caption names the machine, the Consul
version, the flags and the run's mode, so a picture is never read without its conditions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "latest.json"
CE, CL = "consul-elect", "consul lock"
COLORS = {CE: "#2a7ab0", CL: "#c8553d"}
# Bars for a measurement that never happened within its cap are drawn at the cap, hatched.
CAPPED_HATCH = "//"


def human(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.1f} s"


def result(results: dict, figure: str, tool: str) -> dict | None:
    r = results.get(figure, {}).get(tool)
    return None if r is None or "error" in r else r


def bars(ax, groups: list[str], series: dict[str, list[tuple[float | None, bool, str]]], log: bool,
         unit: str) -> None:
    """Grouped bars: *series* maps a tool to one (value, capped, note) per group."""
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    values = [v for items in series.values() for v, _, _ in items if v]
    floor = min(values) / 3 if log and values else 0
    pending = []  # (x, text, colour) for groups without a bar, placed once the axis range is known
    for n, (tool, items) in enumerate(series.items()):
        offset = (n - (len(series) - 1) / 2) * width
        for i, (value, capped, note) in enumerate(items):
            pos = x[i] + offset
            if value is None:  # not measured, or nothing to draw ("never", "no clean handover")
                pending.append((pos, note or "n/a", COLORS[tool]))
                continue
            ax.bar(pos, value, width * 0.92, color=COLORS[tool], hatch=CAPPED_HATCH if capped else None,
                   edgecolor="white" if not capped else "black", label=tool if i == 0 else None)
            label = (">= " if capped else "") + (human(value) if unit == "s" else f"{value:.1f} {unit}")
            if note:
                label += "\n" + note
            ax.text(pos, value, label, ha="center", va="bottom", fontsize=7.5)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    if log and values:
        ax.set_yscale("log")
        ax.set_ylim(floor, max(values) * 8)
    elif values:
        ax.set_ylim(0, max(values) * 1.45)
    bottom, top = ax.get_ylim()
    for pos, text, colour in pending:
        y = (bottom * top) ** 0.5 if log else (bottom + top) / 4
        ax.text(pos, y, text, ha="center", va="center", fontsize=7.5, color=colour, wrap=True)
    ax.set_ylabel({"s": "seconds" + (" (log)" if log else ""), "MB": "MB", "ms": "milliseconds"}.get(unit, unit),
                  fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def panel_handover(ax, results: dict) -> None:
    groups, series = [], {CE: [], CL: []}
    for label, ce_key, cl_key in (("direct", CE, CL), ("via /bin/sh", CE + " --shell", CL + " -shell")):
        groups.append(label)
        for tool, key in ((CE, ce_key), (CL, cl_key)):
            r = result(results, "handover", key)
            note = ""
            if r and r.get("old_child_survived"):
                note = f"old child\nSURVIVED\n{r['old_child_survived']}/{r['n']}"
            elif r and r.get("overlaps"):
                note = f"OVERLAP {r['overlaps']}/{r['n']}"
            median = (r or {}).get("median_s")
            series[tool].append((None if median is None else median * 1e3, False, note))
    bars(ax, groups, series, log=False, unit="ms")
    ax.set_title("Graceful handover (SIGTERM):\nold child's stop -> new child's start, median", fontsize=9)


def panel_takeover(ax, results: dict, figure: str, title: str) -> None:
    series = {}
    for tool in (CE, CL):
        r = result(results, figure, tool)
        if r is None:
            series[tool] = [(None, False, ""), (None, False, "")]
            continue
        took = r.get("takeover_s")
        if took is not None:
            alive = r.get("old_child_alive_at_takeover")
        else:
            alive = r.get("old_child_alive_at_end", r.get("old_child_alive_at_cap_or_takeover"))
        overlap = r.get("overlap_s") or None
        # An old child still alive when the run ended never stopped on its own: the overlap shown is
        # only how long the benchmark waited before killing it.
        never_stopped = bool(r.get("old_child_alive_at_end"))
        series[tool] = [(took if took is not None else r.get("cap_s"), took is None,
                         "old child still running" if alive else ""),
                        (overlap, never_stopped, "old child never\nstopped: killed\nby the benchmark"
                         if never_stopped else "")
                        if overlap else (None, False, "never" if took is not None else "no takeover")]
    bars(ax, ["standby's child runs after", "two leaders for"], series, log=True, unit="s")
    ax.set_title(title, fontsize=9)


def panel_agent(ax, results: dict) -> None:
    series = {}
    for tool in (CE, CL):
        r = result(results, "agent", tool)
        if r is None:
            series[tool] = [(None, False, ""), (None, False, "")]
            continue
        back = r.get("child_again_after_s")
        note = "wrappers exited" if back is None and r.get("all_wrappers_exited") else ""
        series[tool] = [(r.get("child_stopped_after_s"), False, ""), (back, False, note)]
    bars(ax, ["child stopped after", "a child again after\nthe agent is back"], series, log=True, unit="s")
    ax.set_title("Consul agent killed under the leader", fontsize=9)


def panel_idle(ax, results: dict) -> None:
    series = {}
    for tool in (CE, CL):
        r = result(results, "idle", tool)
        if r is None:
            series[tool] = [(None, False, "")]
            continue
        note = f"CPU {r['cpu_percent_of_one_core']:.2f} %\n{r['requests_per_s']:.2f} req/s"
        series[tool] = [(r["pss_total_kb"] / 1024, False, note)]
    bars(ax, ["PSS while leading (child excluded)"], series, log=False, unit="MB")
    ax.set_title("Idle cost while leading", fontsize=9)


def caption(doc: dict) -> str:
    meta = doc.get("meta", {})
    m = meta.get("machine", {})
    parts = [f"{m.get('nproc', '?')} CPUs ({m.get('cpu', '?')}), Linux {m.get('kernel', '?')}, "
             f"Python {m.get('python', '?')}, {m.get('consul', 'Consul ?')}, consul-elect {m.get('consul_elect', '?')}",
             f"run {meta.get('started', '?')} ({'quick' if meta.get('quick') else 'full'} mode); consul-elect "
             "--ttl 3s --lock-delay 2s --grace 0.5s (handover also with its defaults and --shell); "
             "consul lock at its defaults (TTL 15 s, lock-delay 15 s); hatched: a lower bound (not within the cap, or cut short by the benchmark)",
             "made by `make bench` (bench/run.py, then bench/plot.py) from bench/results/latest.json"]
    return "\n".join(parts)


def draw(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = doc.get("results", {})
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    panel_handover(axes[0][0], results)
    panel_takeover(axes[0][1], results, "kill9", "kill -9 of the leading wrapper")
    panel_takeover(axes[0][2], results, "freeze", "SIGSTOP of the leading wrapper")
    panel_agent(axes[1][0], results)
    panel_idle(axes[1][1], results)
    legend = axes[1][2]
    legend.axis("off")
    legend.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=COLORS[t]) for t in (CE, CL)], labels=[CE, CL],
                  loc="upper left", fontsize=11, frameon=False)
    rows = doc.get("table", [])
    if rows:
        text = "\n".join(f"{a.strip()[:42]:<42} {b[:30]:<30} {c[:30]}" for a, b, c in rows[:18])
        legend.text(-0.08, 0.8, f"{'figure':<42} {CE:<30} {CL}\n" + text, family="monospace", fontsize=5.2,
                    va="top")
    fig.suptitle("consul-elect vs consul lock on the same Consul agent", fontsize=13)
    fig.text(0.01, 0.005, caption(doc), fontsize=7.5, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS)
    parser.add_argument("-o", "--out", type=Path, default=None, help="default: the JSON's name with .png")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("bench/plot.py: matplotlib is missing; install the bench extra: pip install -e '.[bench]'",
              file=sys.stderr)
        return 2
    doc = json.loads(args.results.read_text())
    out = args.out or args.results.with_suffix(".png")
    draw(doc, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
