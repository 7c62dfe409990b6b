"""Fit time and fitted state with 1 and 2 processes (``--trainer.devices 2 --trainer.strategy ddp``).

Runs ``otx train`` for each model with one process and with two, alternated, ``--repeats`` times,
and prints the median wall time of the command, the fit time otx records, the validation
metrics and how far the two-process checkpoint's fitted state is from the one-process one::

    OTX_OFFLINE=1 .venv/bin/python benchmarks/scale.py --data_root ../shared/data/magnetic_tile \
        --models Padim Patchcore --repeats 1 --out benchmarks/results/scale_magnetic_tile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RECIPES = {"Padim": "padim", "Patchcore": "patchcore", "Stfpm": "stfpm"}
STATE = {"Padim": ("model.gaussian.mean", "model.gaussian.inv_covariance"), "Patchcore": ("model.memory_bank",)}


def train(model: str, data_root: str, work_dir: Path, processes: int) -> dict:
    """One ``otx train`` run; its wall time, recorded fit time, metrics and checkpoint."""
    recipe = f"recipe/anomaly_segmentation/{RECIPES[model]}.yaml"
    command = [sys.executable, "-m", "otx.cli", "train", "--config", recipe, "--data_root", data_root]
    command += ["--work_dir", str(work_dir), "--trainer.accelerator", "cpu", "--trainer.devices", str(processes)]
    if processes > 1:
        command += ["--trainer.strategy", "ddp"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{model} x{processes} failed: {result.stderr[-2000:]}")
    (run,) = sorted(work_dir.glob("*-train"))[-1:]
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "fit_s": metrics["timing_s"]["fit_s"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "validation": metrics["validation_metrics"],
        "checkpoint": str(run / "model.ckpt"),
    }


def state_difference(model: str, one: str, two: str) -> dict[str, float]:
    """Largest difference of each fitted tensor, relative to its largest magnitude."""
    a = torch.load(one, map_location="cpu", weights_only=True)
    b = torch.load(two, map_location="cpu", weights_only=True)
    out = {}
    for key in STATE.get(model, ()):
        x, y = a["state_dict"][key].double(), b["state_dict"][key].double()
        out[key] = float((x - y).abs().max() / x.abs().max()) if x.shape == y.shape else float("inf")
    for key, value in a["thresholds"].items():
        out[f"thresholds.{key}"] = abs(value - b["thresholds"][key]) / max(abs(value), 1e-12)
    return out


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--models", nargs="+", default=["Padim", "Patchcore"], choices=sorted(RECIPES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = {"data_root": args.data_root, "repeats": args.repeats, "command": " ".join(sys.argv), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            runs: dict[int, list[dict]] = {1: [], 2: []}
            for repeat in range(args.repeats):
                for processes in (1, 2) if repeat % 2 == 0 else (2, 1):  # alternated
                    run = train(model, args.data_root, Path(tmp) / f"{model}{processes}_{repeat}", processes)
                    runs[processes].append(run)
                    print(f"{model} x{processes}: wall {run['wall_s']} s, fit {run['fit_s']} s, {run['validation']}")
            entry = {}
            for processes, rows in runs.items():
                entry[f"processes_{processes}"] = {
                    "wall_s_median": statistics.median(r["wall_s"] for r in rows),
                    "fit_s_median": statistics.median(r["fit_s"] for r in rows),
                    "peak_memory_mb_rank0": max(r["peak_memory_mb"] for r in rows),
                    "validation": rows[0]["validation"],
                }
            entry["wall_ratio_2_over_1"] = round(
                entry["processes_2"]["wall_s_median"] / entry["processes_1"]["wall_s_median"], 3
            )
            entry["state_difference"] = state_difference(model, runs[1][0]["checkpoint"], runs[2][0]["checkpoint"])
            print(f"{model}: 2/1 wall ratio {entry['wall_ratio_2_over_1']}; difference {entry['state_difference']}")
            report["models"][model] = entry
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
