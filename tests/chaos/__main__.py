"""`make chaos`: python -m chaos [--rounds N] [--seed S] (with tests/ on PYTHONPATH)."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .checker import format_bounds
from .runner import REPO, ChaosAbort, ChaosRun, summary_text, write_json


def consul_binary() -> str:
    """$CONSUL_BIN, else what scripts/fetch-consul.sh finds (as the test fixtures do)."""
    path = os.environ.get("CONSUL_BIN", "")
    if not path:
        out = subprocess.run([str(REPO / "scripts" / "fetch-consul.sh")], capture_output=True, text=True, timeout=300)
        path = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
    if not path or not os.access(path, os.X_OK):
        sys.exit("chaos: no usable consul binary; set CONSUL_BIN or run `make consul`")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a fresh seed, printed)")
    parser.add_argument("--max-minutes", type=float, default=90.0, help="stop starting rounds after this long")
    parser.add_argument("--out", type=Path, default=None, help="JSON summary (default bench/results/chaos-SEED.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, events) even without violations")
    parser.add_argument("--no-proxy", action="store_true", help="candidates talk to their servers directly")
    parser.add_argument("--bounds", action="store_true", help="print the bound table and exit")
    parser.add_argument("--only", default=None, metavar="KIND[+KIND]",
                        help="every round applies this combination to the leader, e.g. freeze-watchdog+op-destroy")
    args = parser.parse_args()
    if args.bounds:
        print(format_bounds(ChaosRun.lease_for_flags()))
        return 0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    src = os.environ.get("CONSUL_ELECT_SRC")
    # Ctrl-C and SIGTERM (a CI timeout, `kill`) unwind through the runner's finally blocks, even
    # when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix=f"consul-elect-chaos-{seed}-"))
    run = ChaosRun(consul_binary(), workdir, seed, args.rounds, max_seconds=args.max_minutes * 60,
                   src=Path(src).resolve() if src else None, proxies=not args.no_proxy,
                   only=args.only.split("+") if args.only else None)
    try:
        report, info = run.run()
    except ChaosAbort as e:  # before anything started, e.g. CONSUL_ELECT_SRC does not import
        shutil.rmtree(workdir, ignore_errors=True)
        sys.exit(f"chaos: {e}")
    except BaseException:  # Ctrl-C, SIGTERM: everything is stopped by now; no verdict, no logs kept
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    out = args.out or REPO / "bench" / "results" / f"chaos-{seed}.json"
    write_json(out, report, info, run.lease)
    print()
    print(summary_text(report, info))
    print(f"\nJSON: {out}")
    if report.ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and events kept in {workdir}")
    print(f"replay: make chaos ROUNDS={args.rounds} SEED={seed}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
