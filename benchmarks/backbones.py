"""Models x backbones on one dataset through the ``otx`` CLI: accuracy, fit time, peak memory, IR throughput.

For each model and backbone, at the segmentation recipe's defaults and the model's default layers
for that backbone: ``otx train``, ``otx test`` (test split) and ``otx benchmark`` (FP32 IR
throughput at f32 on the CPU). Wall times are measured around each command; peak memory is the
command's own maximum resident set (``run_recipes.run``). With ``--deploy``, each then goes on as
``run_recipes.py --deploy`` does: export, ``otx optimize`` (the model's INT8 scheme), ``otx test`` of
both IRs, the share of test labels the INT8 IR keeps, and FP32 / INT8 IR throughput.

Usage::

    .venv/bin/python benchmarks/backbones.py --data_root ../shared/data/magnetic_tile \\
        --work_dir /tmp/otx-backbones --out benchmarks/results/backbones_magnetic_tile.json \\
        [--models Padim Patchcore] [--backbones efficientnet_lite0 efficientnet_lite1 ...] [--deploy]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from otx.models import model_class  # noqa: E402
from otx.models.backbones import BACKBONES  # noqa: E402
from run_recipes import deploy, train_test_benchmark  # noqa: E402 - the same subprocess timing as the recipes

METRICS = ("image_AUROC", "image_F1", "pixel_AUROC", "AUPRO")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--work_dir", default="/tmp/otx-backbones")
    parser.add_argument("--models", nargs="+", default=["Padim", "Patchcore"])
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"],
        choices=list(BACKBONES),
    )
    parser.add_argument("--num_images", type=int, default=40, help="images timed by otx benchmark")
    parser.add_argument("--out", default="benchmarks/results/backbones.json")
    parser.add_argument("--deploy", action="store_true", help="also export, quantise, test both IRs and time them")
    args = parser.parse_args()

    otx = [sys.executable, "-m", "otx.cli"]
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    for backbone in args.backbones:  # backbone-major: the models of one backbone run back to back
        for model in args.models:
            recipe = f"recipe/anomaly_segmentation/{model.lower()}.yaml"
            work_dir = Path(args.work_dir) / f"{model.lower()}_{backbone}"
            common = ["--data_root", args.data_root, "--work_dir", str(work_dir)]
            train = [*otx, "train", "--config", recipe, *common, "--model.init_args.backbone", backbone]
            print(f"{model} {backbone}: {shlex.join(train[2:])}", file=sys.stderr, flush=True)
            test = [*otx, "test", *common]
            bench = [*otx, "benchmark", *common, "--device", "CPU", "--num_images", str(args.num_images)]
            measured = train_test_benchmark(train, test, bench, work_dir)
            rows = [r for r in rows if (r["model"], r["backbone"]) != (model, backbone)]
            layers = list(model_class(model).layers_by_backbone[backbone])
            rows.append({"model": model, "backbone": backbone, "layers": layers, **measured})
            if args.deploy:
                rows[-1]["deploy"] = deploy(otx, work_dir, args.data_root)
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=2))

    header = ["model", "backbone", "layers", *METRICS, "train s", "train peak MB", "IR FP32 img/s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{row['metrics'][m]:.3f}" for m in METRICS]
        print(
            f"| {row['model']} | {row['backbone']} | `{','.join(row['layers'])}` | "
            + " | ".join(cells)
            + f" | {row['train_s']} | {row['train_peak_mb']:,} | {row['ir_fp32_img_s']} |"
        )
    deployed = [row for row in rows if "deploy" in row]
    if deployed:
        print(
            "\n| model | backbone | image AUROC FP32 IR / INT8 | pixel AUROC FP32 IR / INT8 | INT8 labels = FP32 IR "
            "| IR img/s FP32 / INT8 | INT8 / FP32 | optimize s |"
        )
        print("|" + "---|" * 8)
        for row in deployed:
            d = row["deploy"]
            pair = [
                " / ".join(f"{d[ir][m]:.4f}" for ir in ("fp32_ir", "int8_ir")) for m in ("image_AUROC", "pixel_AUROC")
            ]
            print(
                f"| {row['model']} | {row['backbone']} | {' | '.join(pair)} | {d['int8_labels_equal']:.1%} "
                f"({d['int8_labels_differ']} differ) | {d['ir_fp32_img_s']} / {d['ir_int8_img_s']} | "
                f"{d['ir_int8_img_s'] / d['ir_fp32_img_s']:.2f}x | {d['optimize_s']} |"
            )


if __name__ == "__main__":
    main()
