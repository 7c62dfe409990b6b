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

from optimize_int8 import alternating_speed, otx_timer  # noqa: I001 - the sibling benchmark's alternating loop
from otx.data.io import read_image


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
    images = [read_image(r["image"]) for r in json.loads(args.images_from.read_text())]
    timed = alternating_speed({name: otx_timer(path, images) for name, path in paths.items()}, args.repeats)
    base = next(iter(timed))
    first = timed[base]["throughput_img_s"]
    rows = {
        name: {
            "path": str(paths[name]),
            "throughput_img_s": round(r["throughput_img_s"], 1),
            "throughput_runs": r["throughput_runs"],
            "latency_ms_median": round(r["latency_ms_median"], 2),
            f"vs_{base}": round(r["throughput_img_s"] / first, 3),
        }
        for name, r in timed.items()
    }
    for name, row in rows.items():
        print(f"{name}: {row['throughput_img_s']} img/s ({row[f'vs_{base}']}x), runs {row['throughput_runs']}")
    if args.out:
        args.out.write_text(json.dumps({"images": len(images), "repeats": args.repeats, "irs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
