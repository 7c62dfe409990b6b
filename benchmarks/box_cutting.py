"""Time of cutting detection boxes from a large map: otx (``boxes_from_map``) and the demo package (``boxes_of``).

A synthetic normalised map of ``--size`` (default a 3000x4000 board camera) with ``--groups``
square defects of 8x8 pixels at random places, cut at a box threshold of 0.55, without merging and
with ``--merge`` (a share of the longer side; 0.05 is the largest that tuning tries). How components
within the merge distance are joined is timed on its own too: the exact distance transform otx uses
(``otx.boxes.grown``) against ``cv2.dilate`` with an elliptical kernel of the same radius (what otx
used before 2026-12-07). Medians of ``--repeats`` runs, each in this process, the calls alternated.

Usage::

    .venv/bin/python benchmarks/box_cutting.py [--size 3000 4000] [--groups 150] [--merge 0.05] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import demo_package  # noqa: E402 - the demo's script as a module
from otx.boxes import BoxSettings, boxes_from_map, grown  # noqa: E402


def seconds(call: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    """Print and optionally write the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[3000, 4000], metavar=("H", "W"))
    parser.add_argument("--groups", type=int, default=150)
    parser.add_argument("--merge", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    height, width = args.size
    rng = np.random.default_rng(0)
    amap = np.zeros((height, width), np.float32)
    for _ in range(args.groups):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        amap[y : y + 8, x : x + 8] = 0.6 + 0.3 * rng.random()
    demo = demo_package()
    mask = (amap >= 0.55).astype(np.uint8)
    radius = int(round(args.merge * max(height, width)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    calls: dict[str, Callable[[], object]] = {}
    for merge in (0.0, args.merge):
        settings = BoxSettings(threshold=0.55, merge=merge)
        calls[f"otx boxes_from_map, merge {merge}"] = lambda s=settings: boxes_from_map(amap, True, s)
        calls[f"demo boxes_of, merge {merge}"] = lambda s=settings: demo.boxes_of(amap, True, s.as_dict())
    calls[f"grown (distance transform), radius {radius}"] = lambda: grown(mask, radius)
    calls[f"cv2.dilate, elliptical kernel, radius {radius}"] = lambda: cv2.dilate(mask, kernel)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            times[name].append(seconds(call))
    result = {name: statistics.median(values) for name, values in times.items()}
    for name, value in result.items():
        print(f"{name:48s} {value:8.3f} s")
    if args.out:
        record = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": result}
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
