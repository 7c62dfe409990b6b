"""Models x input modes on one dataset through the ``otx`` CLI: accuracy at each image's size, boxes, times.

For each model and mode: ``otx train`` (detection recipe, so that box metrics are computed too),
``otx test`` (image AUROC; pixel AUROC, pixel F1 and AUPRO at each image's own size and at the
model's input size; box AP), and ``otx benchmark`` (IR throughput, FP32 at f32). Wall times are
measured around each command; peak memory is the command's own maximum resident set.

Usage::

    .venv/bin/python benchmarks/input_modes.py --data_root ../shared/data/magnetic_tile \\
        --work_dir /tmp/otx-modes --out benchmarks/results/input_modes_magnetic_tile.json \\
        [--models Padim Patchcore] [--modes resize auto keep_aspect tile]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run_recipes import train_test_benchmark  # noqa: E402 - the same subprocess timing as the recipe benchmark

# The settings of each mode (model init args). ``tile`` brings each image to 512x512 and cuts it into
# four 256-pixel tiles: the core sees the image at twice the resolution of ``resize``.
MODES: dict[str, list[str]] = {
    "resize": ["--model.init_args.input_size", "[256,256]", "--model.init_args.input_mode", "resize"],
    "auto": ["--model.init_args.input_size", "[256,256]", "--model.init_args.input_mode", "auto"],  # the recipes'
    "keep_aspect": ["--model.init_args.input_size", "[256,256]", "--model.init_args.input_mode", "keep_aspect"],
    "tile": [
        "--model.init_args.input_size",
        "[512,512]",
        "--model.init_args.input_mode",
        "tile",
        "--model.init_args.tile_size",
        "256",
    ],
}
METRICS = ("image_AUROC", "pixel_AUROC", "AUPRO", "pixel_AUROC_input", "AUPRO_input", "box_AP50", "box_AP")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--work_dir", default="/tmp/otx-modes")
    parser.add_argument("--models", nargs="+", default=["Padim", "Patchcore"])
    parser.add_argument("--modes", nargs="+", default=["resize", "keep_aspect", "tile"], choices=list(MODES))
    parser.add_argument("--num_images", type=int, default=40, help="images timed by otx benchmark")
    parser.add_argument("--out", default="benchmarks/results/input_modes.json")
    args = parser.parse_args()

    otx = [sys.executable, "-m", "otx.cli"]
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    for model in args.models:
        for mode in args.modes:
            recipe = f"recipe/anomaly_detection/{model.lower()}.yaml"
            work_dir = Path(args.work_dir) / f"{model.lower()}_{mode}"
            common = ["--data_root", args.data_root, "--work_dir", str(work_dir)]
            train = [*otx, "train", "--config", recipe, *common, *MODES[mode]]
            print(f"{model} {mode}: {shlex.join(train[2:])}", file=sys.stderr, flush=True)
            test = [*otx, "test", "--config", recipe, *common]
            bench = [*otx, "benchmark", *common, "--device", "CPU", "--num_images", str(args.num_images)]
            measured = train_test_benchmark(train, test, bench, work_dir)
            rows = [r for r in rows if (r["model"], r["mode"]) != (model, mode)]
            rows.append({"model": model, "mode": mode, "train_args": shlex.join(MODES[mode]), **measured})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=2))

    header = ["model", "mode", *METRICS, "train s", "test s", "IR img/s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{row['metrics'][m]:.3f}" if isinstance(row["metrics"].get(m), float) else "–" for m in METRICS]
        print(
            f"| {row['model']} | {row['mode']} | " + " | ".join(cells) + f" | {row['train_s']} | {row['test_s']} "
            f"| {row['ir_fp32_img_s']} |"
        )


if __name__ == "__main__":
    main()
