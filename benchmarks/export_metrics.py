"""Metrics of exported models against their checkpoints: PADIM and STFPM x 3 tasks on one dataset.

For each model: train once (segmentation recipe settings: EfficientNet-Lite0, 256x256, batch 16),
export an FP32 IR for each task (and an FP16 IR and an ONNX file for segmentation), then run
``Engine.test`` from the checkpoint (torch) and from each export (OpenVINO, CPU, f32 inference
precision) on the same test split, and report the metrics side by side with their differences.

Usage::

    .venv/bin/python benchmarks/export_metrics.py --data_root ../shared/data/magnetic_tile \
        --work_dir /tmp/export_metrics --stfpm_epochs 3 --out benchmarks/results/export_metrics.json
"""

from __future__ import annotations

# ruff: noqa: E402 - warnings are silenced before the noisy imports below.
import warnings

warnings.filterwarnings("ignore")

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from otx.data import AnomalyDataModule
from otx.engine import Engine
from otx.models import Padim, Stfpm

TASKS = ("classification", "detection", "segmentation")
METRICS = ("image_AUROC", "image_F1", "pixel_AUROC", "pixel_F1", "AUPRO", "box_AP", "box_AP50")
EXTRA_EXPORTS = (("OPENVINO", "FP16"), ("ONNX", "FP32"))  # for the segmentation task


def engine(args: argparse.Namespace, work_dir: Path, task: str, model: Any = None, device: str = "CPU") -> Engine:
    data = AnomalyDataModule(str(args.data_root), batch_size=16, num_workers=2)
    return Engine(
        model=model,
        data=data,
        task=task,
        work_dir=work_dir,
        max_epochs=args.stfpm_epochs if isinstance(model, Stfpm) else None,
        console=Console(stderr=True, quiet=not args.verbose),
        device=device,
    )


def run_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    work_dir = args.work_dir / name
    model = (Padim if name == "padim" else Stfpm)(backbone="efficientnet_lite0", input_size=(256, 256))
    start = time.perf_counter()
    checkpoint = engine(args, work_dir, "segmentation", model).train()["checkpoint"]
    print(f"{name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for task in TASKS:
        exports = [("OPENVINO", "FP32")] + (list(EXTRA_EXPORTS) if task == "segmentation" else [])
        start = time.perf_counter()
        reference = engine(args, work_dir, task).test(checkpoint=checkpoint)
        torch_s = time.perf_counter() - start
        for fmt, precision in exports:
            exported = engine(args, work_dir, task).export(checkpoint, export_format=fmt, precision=precision)
            start = time.perf_counter()
            result = engine(args, work_dir, task).test(checkpoint=exported["exported_model"])
            ov_s = time.perf_counter() - start
            row = {
                "model": name,
                "task": task,
                "format": fmt,
                "precision": precision,
                "inference_precision": result["runtime"]["inference_precision"],
                "checkpoint": {k: reference["metrics"].get(k) for k in METRICS if k in reference["metrics"]},
                "exported": {k: result["metrics"].get(k) for k in METRICS if k in result["metrics"]},
                "test_s": {"torch": round(torch_s, 1), "openvino": round(ov_s, 1)},
                "same_split": reference["splits"] == result["splits"],
            }
            row["max_abs_diff"] = max(abs(row["checkpoint"][k] - row["exported"][k]) for k in row["checkpoint"])
            rows.append(row)
            print(
                f"{name} {task} {fmt} {precision}: max |diff| {row['max_abs_diff']:.5f} "
                f"(torch test {torch_s:.0f} s, openvino test {ov_s:.0f} s)",
                flush=True,
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| model | task | export | " + " | ".join(f"{m} ckpt / IR" for m in METRICS) + " | max abs diff |"
    lines = [head, "|" + "---|" * (len(METRICS) + 4)]
    for r in rows:
        cells = []
        for m in METRICS:
            if m in r["checkpoint"]:
                cells.append(f"{r['checkpoint'][m]:.4f} / {r['exported'][m]:.4f}")
            else:
                cells.append("-")
        export = f"{r['format']} {r['precision']}"
        lines.append(
            f"| {r['model']} | {r['task']} | {export} | " + " | ".join(cells) + f" | {r['max_abs_diff']:.5f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", type=Path, required=True)
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/otx-export-metrics"))
    parser.add_argument("--models", nargs="+", default=["padim", "stfpm"], choices=["padim", "stfpm"])
    parser.add_argument("--stfpm_epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.getLogger("otx").setLevel(logging.WARNING)
    rows = [row for name in args.models for row in run_model(name, args)]
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"data_root": str(args.data_root), "machine": platform.processor() or platform.machine(), "rows": rows},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
