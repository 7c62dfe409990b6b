"""The backbones in NHWC (``channels_last``, otx's layout) against NCHW: ``otx train`` and ``otx test`` times.

otx stores each model's pretrained feature extractor in ``torch.channels_last``
(``AnomalyModel.__init__``), the layout oneDNN's CPU convolutions run fastest in. This script runs
each recipe's ``otx train`` then ``otx test`` through the CLI in its own process, once with the
shipped layout and once with the feature extractors put back to NCHW (``--child nchw``, this
script's child mode, which patches ``AnomalyModel`` before calling ``otx.cli.main``), alternating
the two layouts for ``--repeats`` rounds, and prints the median wall times, their ratio and the
test metrics of each layout (which should agree to the printed digits).

    OTX_OFFLINE=1 .venv/bin/python benchmarks/channels_last.py --data_root ../shared/data/magnetic_tile \\
        --work_dir /tmp/otx-layout --repeats 2 --out benchmarks/results/channels_last_magnetic_tile.json \\
        --recipes recipe/anomaly_segmentation/padim.yaml recipe/anomaly_segmentation/patchcore.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUTS = ("nhwc", "nchw")
METRICS = ("image_AUROC", "image_F1", "pixel_AUROC", "AUPRO", "pixel_AUROC_input", "AUPRO_input")


def child(layout: str, argv: list[str]) -> int:
    """``otx`` with the feature extractors in ``layout`` (``nchw``: put back to torch's default)."""
    import torch

    from otx.cli import main
    from otx.models.base import AnomalyModel

    if layout == "nchw":
        shipped = AnomalyModel.__init__

        def init(self: AnomalyModel, *args: object, **kwargs: object) -> None:
            shipped(self, *args, **kwargs)
            self._set_backbone_layout(torch.contiguous_format)

        AnomalyModel.__init__ = init  # type: ignore[method-assign]
    return main(argv)


def timed(cmd: list[str]) -> float:
    """Run one command; its wall time (s). Exits with its stderr if it fails."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{err.read().decode()[-2000:]}")
    return elapsed


def main() -> None:
    """Alternate the two layouts over the recipes; print and write the medians."""
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--recipes", nargs="+", required=True)
    parser.add_argument("--extra", default="", help="more otx train arguments, e.g. '--max_epochs 1'")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for recipe in args.recipes:
        times: dict[str, dict[str, list[float]]] = {layout: {"train_s": [], "test_s": []} for layout in LAYOUTS}
        metrics: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}  # every run's
        for repeat in range(args.repeats):
            for layout in LAYOUTS if repeat % 2 == 0 else LAYOUTS[::-1]:
                work = Path(args.work_dir) / Path(recipe).with_suffix("").as_posix().replace("/", "_") / layout
                otx = [sys.executable, __file__, "--child", layout]
                data = ["--data_root", args.data_root, "--work_dir", str(work)]
                times[layout]["train_s"].append(
                    timed([*otx, "train", "--config", recipe, *data, *shlex.split(args.extra)])
                )
                times[layout]["test_s"].append(timed([*otx, "test", *data]))
                tested = json.loads(sorted(work.glob("*-test/metrics.json"))[-1].read_text())["metrics"]
                metrics[layout].append({k: round(tested[k], 4) for k in METRICS if k in tested})
                print(recipe, layout, repeat, {k: round(v[-1], 1) for k, v in times[layout].items()}, flush=True)
        row = {"recipe": recipe, "extra": args.extra, "repeats": args.repeats}
        for layout in LAYOUTS:
            row[layout] = {k: round(statistics.median(v), 1) for k, v in times[layout].items()} | {
                "runs": times[layout],
                "metrics": metrics[layout][-1],
                "metrics_runs": metrics[layout],
            }
        row["nchw_over_nhwc"] = {
            k: round(row["nchw"][k] / row["nhwc"][k], 2)
            for k in ("train_s", "test_s")  # > 1: NHWC is faster
        }
        rows.append(row)
    print("| recipe | layout | `otx train` s | `otx test` s | " + " | ".join(METRICS) + " |")
    print("|---|---|---|---|" + "---|" * len(METRICS))
    for row in rows:
        for layout in LAYOUTS:
            r = row[layout]
            cells = [str(r["metrics"].get(k, "–")) for k in METRICS]
            print(f"| {row['recipe']} | {layout} | {r['train_s']} | {r['test_s']} | " + " | ".join(cells) + " |")
        ratio = row["nchw_over_nhwc"]
        print(f"| {row['recipe']} | NCHW / NHWC | {ratio['train_s']}x | {ratio['test_s']}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"data_root": args.data_root, "rows": rows}, indent=1) + "\n")
        os.sync()


if __name__ == "__main__":
    main()
