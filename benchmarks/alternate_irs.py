"""Time exported models against each other, alternated, on the images of an ``otx test`` run.

Each repeat runs one timing pass of every IR (order reversed on odd repeats), so slow phases of a
noisy machine hit every model alike; medians over the repeats are printed and written as JSON.
The same loop as ``optimize_int8.py``, for IRs that already exist (e.g. INT8 schemes side by side):

    OTX_OFFLINE=1 .venv/bin/python benchmarks/alternate_irs.py \\
        --images_from W/<run>-test/predictions.json --repeats 5 \\
        --ir fp32=W/<run>-export/exported_model.xml --ir int8=W/<run>-optimize/optimized_model.xml \\
        --out results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from optimize_int8 import alternating_speed, otx_timer  # noqa: I001 - the sibling benchmark's alternating loop
from otx.data.io import read_image


def speed_against_first(paths: dict[str, Path], predictions: Path, repeats: int) -> dict[str, dict[str, Any]]:
    """Each IR timed alternately on the images of an ``otx test`` run (its ``predictions.json``).

    Returns per IR the median throughput ``img_s``, the passes' ``runs``, the median ``latency_ms``
    and the ``ratio`` of its throughput to the first IR's.
    """
    images = [read_image(r["image"]) for r in json.loads(predictions.read_text())]
    timed = alternating_speed({name: otx_timer(path, images) for name, path in paths.items()}, repeats)
    first = next(iter(timed.values()))["throughput_img_s"]
    return {
        name: {
            "img_s": r["throughput_img_s"],
            "runs": r["throughput_runs"],
            "latency_ms": r["latency_ms_median"],
            "ratio": r["throughput_img_s"] / first,
        }
        for name, r in timed.items()
    }


def main() -> None:
    """Parse the arguments, time the IRs alternately, print and write the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ir", action="append", required=True, help="NAME=PATH of an exported .xml (repeatable)")
    parser.add_argument("--images_from", type=Path, required=True, help="predictions.json of an otx test run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    paths = {}
    for item in args.ir:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"--ir takes NAME=PATH of an existing .xml (got {item!r})")
        paths[name] = Path(path)
    speed = speed_against_first(paths, args.images_from, args.repeats)
    for name, row in speed.items():
        print(f"{name}: {row['img_s']:.1f} img/s ({row['ratio']:.3f}x the first), runs {row['runs']}")
    if args.out:
        irs = {name: {"path": str(paths[name]), **row} for name, row in speed.items()}
        images = len(json.loads(args.images_from.read_text()))
        args.out.write_text(json.dumps({"images": images, "repeats": args.repeats, "irs": irs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
