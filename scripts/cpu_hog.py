#!/usr/bin/env python3
"""Busy-loop processes that keep cores busy, to check that the node keeps up on a loaded machine
(not part of CI).

    python scripts/cpu_hog.py 2                  # two busy processes until Ctrl-C
    python scripts/cpu_hog.py 2 --seconds 600    # ... for ten minutes

Each hog is a separate process spinning in pure Python at normal priority, so on a 2-core machine
two hogs take about one core's worth of time from anything else running. The parent only waits;
Ctrl-C or SIGTERM to it stops all of them.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import time


def spin() -> None:
    """Burn CPU until killed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("n", type=int, nargs="?", default=2, help="busy processes (default 2)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    args = p.parse_args(argv)
    hogs = [mp.Process(target=spin, daemon=True) for _ in range(max(1, args.n))]
    for h in hogs:
        h.start()
    print(f"{len(hogs)} busy-loop process(es): {' '.join(str(h.pid) for h in hogs)} "
          f"(parent {os.getpid()})", flush=True)

    def stop(*_):
        for h in hogs:
            h.terminate()
        for h in hogs:
            h.join(5)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    end = time.monotonic() + args.seconds if args.seconds > 0 else None
    while end is None or time.monotonic() < end:
        time.sleep(0.5)
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
