"""Time and memory of bringing a ``keep_aspect`` map back to a long image's size (``PreProcessor.restore``).

Each run is a fresh process (peak resident memory is the process's), with this checkout's ``src``
or with ``--before_src`` (another checkout's), alternated, ``--repeats`` times; the medians, and
how much memory the returned map holds alive (the array itself, or the one it is a view of).

Usage::

    git worktree add /tmp/oldtree <rev>
    .venv/bin/python benchmarks/restore_map.py --before_src /tmp/oldtree/src [--size 300 12000] [--input 256 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
import numpy as np
from otx.preprocess import PreProcessor
input_hw, size_hw = tuple(json.loads(sys.argv[1])), tuple(json.loads(sys.argv[2]))
pre = PreProcessor(input_hw, "keep_aspect")
small = np.random.default_rng(0).random(input_hw, dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
restored = pre.restore(small, size_hw)
seconds = time.perf_counter() - start
held = restored if restored.base is None else restored.base
print(json.dumps({"s": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": before, "map_mb": restored.nbytes / 1e6, "held_mb": held.nbytes / 1e6}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before_src", default=None, help="another checkout's src, run in turn with this one's")
    parser.add_argument("--size", nargs=2, type=int, default=[300, 12000], help="the image's height and width")
    parser.add_argument("--input", nargs=2, type=int, default=[256, 256], help="the model's input height and width")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sources = {"now": str(Path(__file__).resolve().parents[1] / "src")}
    if args.before_src:
        sources = {"before": args.before_src, **sources}
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    for _ in range(args.repeats):
        for name, src in sources.items():
            env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, "-c", CHILD, json.dumps(args.input), json.dumps(args.size)]
            done = subprocess.run(cmd, env=env, capture_output=True, check=True, text=True)
            runs[name].append(json.loads(done.stdout))
    for name, rows in runs.items():
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(
            f"{name}: restore {median['s']:.3f} s, peak {median['peak_mb']:,.0f} MB ({median['before_mb']:,.0f} MB "
            f"before), map {median['map_mb']:.1f} MB holding {median['held_mb']:.1f} MB"
        )


if __name__ == "__main__":
    main()
