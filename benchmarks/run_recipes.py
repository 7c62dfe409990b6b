"""Train and test shipped recipes on one dataset through the ``otx`` CLI; print a markdown table.

Each recipe runs as ``otx train`` then ``otx test`` in its own subprocess, exactly as a user would
type them; wall times are measured around each command, and peak memory is the command's own maximum
resident set (``wait4``; the largest of the process and its data-loading workers, not their sum).

With ``--deploy``, each recipe then goes on as a user shipping it would: ``otx export`` (FP32 IR),
``otx optimize`` (INT8 IR, the model's scheme and defaults), ``otx test`` of both IRs on the test
split (OpenVINO at f32), the share of test images whose label the INT8 IR keeps from the FP32 IR
(from both runs' ``predictions.json``), and ``otx benchmark`` (the checkpoint, the FP32 IR and the
INT8 IR in turn, 40 test images, median of 5 passes: single passes, not alternated; the INT8
speed claims come from ``benchmarks/optimize_int8.py``, which alternates).

Usage::

    .venv/bin/python benchmarks/run_recipes.py --data_root ../shared/data/magnetic_tile \\
        --work_dir /tmp/otx-recipes --out benchmarks/results/recipes_magnetic_tile.json \\
        [--recipes recipe/anomaly_segmentation/padim.yaml ...] [--extra "--max_epochs 3"] [--deploy]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from otx.cli import list_recipes

IRS = ("fp32_ir", "int8_ir")
METRICS = ("image_AUROC", "image_F1", "pixel_AUROC", "pixel_F1", "AUPRO", "box_AP", "box_AP50")


def run(cmd: list[str]) -> tuple[float, float]:
    """Run one command; return its wall time (s) and peak resident memory (MB), its workers included."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{err.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


def train_test_benchmark(train: list[str], test: list[str], benchmark: list[str], work_dir: Path) -> dict:
    """Run the three commands; return the test metrics, wall times, peak memory and FP32 IR throughput."""
    train_s, train_mb = run(train)
    test_s, test_mb = run(test)
    run(benchmark)
    tested = json.loads(sorted(work_dir.glob("*-test/metrics.json"))[-1].read_text())
    timed = json.loads(sorted(work_dir.glob("*-benchmark/metrics.json"))[-1].read_text())
    ir = next(r for r in timed["rows"] if r["model"] == "OpenVINO FP32")
    return {
        "metrics": tested["metrics"],
        "train_s": round(train_s, 1),
        "test_s": round(test_s, 1),
        "train_peak_mb": round(train_mb),
        "test_peak_mb": round(test_mb),
        "ir_fp32_img_s": round(ir["throughput_img_s"], 2),
    }


def latest(work_dir: Path, pattern: str) -> Path:
    """The newest file matching ``pattern`` under ``work_dir`` (run folders sort by their time stamp)."""
    return sorted(work_dir.glob(pattern), key=lambda p: p.parent.name)[-1]


def deploy(otx: list[str], work_dir: Path, data_root: str) -> dict:
    """Export, quantise, test both IRs and time them; the figures of each step."""
    data = ["--work_dir", str(work_dir), "--data_root", data_root]
    export_s, _ = run([*otx, "export", *data])
    fp32 = latest(work_dir, "*-export/exported_model.xml")
    optimize_s, optimize_mb = run([*otx, "optimize", *data, "--checkpoint", str(fp32)])
    int8 = Path(json.loads(latest(work_dir, "*-optimize/metrics.json").read_text())["optimized_model"])
    tested, labels = {}, {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        run([*otx, "test", *data, "--checkpoint", str(path), "--inference_precision", "f32"])
        folder = latest(work_dir, "*-test/metrics.json").parent
        tested[name] = json.loads((folder / "metrics.json").read_text())["metrics"]
        labels[name] = {r["image"]: r["label"] for r in json.loads((folder / "predictions.json").read_text())}
    agree = [labels["int8"][image] == label for image, label in labels["fp32"].items()]
    run([*otx, "benchmark", *data, "--inference_precision", "f32", "--num_images", "40"])
    timed = json.loads(latest(work_dir, "*-benchmark/metrics.json").read_text())["rows"]
    speed = {row["model"]: row["throughput_img_s"] for row in timed}
    fp32_speed = next(v for k, v in speed.items() if k == "OpenVINO FP32")
    int8_speed = next(v for k, v in speed.items() if "INT8" in k)
    return {
        "fp32_ir": tested["fp32"],
        "int8_ir": tested["int8"],
        "int8_labels_equal": round(sum(agree) / len(agree), 4),
        "int8_labels_differ": len(agree) - sum(agree),
        "export_s": round(export_s, 1),
        "optimize_s": round(optimize_s, 1),
        "optimize_peak_mb": round(optimize_mb),
        "ir_fp32_img_s": round(fp32_speed, 2),
        "ir_int8_img_s": round(int8_speed, 2),
        "throughput": speed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--work_dir", default="/tmp/otx-recipes")
    parser.add_argument("--recipes", nargs="*", default=None, help="default: all shipped recipes")
    parser.add_argument("--extra", default="", help="extra CLI arguments for every train, e.g. '--max_epochs 3'")
    parser.add_argument("--stfpm_extra", default="", help="extra train arguments for STFPM recipes only")
    parser.add_argument("--out", default="benchmarks/results/recipes.json")
    parser.add_argument("--deploy", action="store_true", help="also export, quantise, test both IRs and time them")
    args = parser.parse_args()

    otx = [sys.executable, "-m", "otx.cli"]
    rows = []
    for recipe in args.recipes or list_recipes():
        name = recipe.removeprefix("recipe/").removesuffix(".yaml")
        work_dir = Path(args.work_dir) / name.replace("/", "_")
        extra = shlex.split(args.extra) + (shlex.split(args.stfpm_extra) if "stfpm" in name else [])
        train = [*otx, "train", "--config", recipe, "--data_root", args.data_root, "--work_dir", str(work_dir), *extra]
        test = [*otx, "test", "--config", recipe, "--work_dir", str(work_dir)]
        print(f"{name}: {shlex.join(train[2:])}", file=sys.stderr, flush=True)
        train_s, train_mb = run(train)
        test_s, test_mb = run(test)
        result = json.loads(sorted(work_dir.glob("*-test/metrics.json"))[-1].read_text())
        train_info = json.loads(sorted(work_dir.glob("*-train/metrics.json"))[-1].read_text())
        rows.append(
            {
                "recipe": recipe,
                "train_args": shlex.join(extra),
                "epochs": train_info["epochs"],
                "metrics": result["metrics"],
                "splits": result["splits"],
                "train_s": round(train_s, 1),
                "test_s": round(test_s, 1),
                "train_peak_mb": round(train_mb),
                "test_peak_mb": round(test_mb),
            }
        )
        if args.deploy:
            rows[-1]["deploy"] = deploy(otx, work_dir, args.data_root)
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "splits"}), file=sys.stderr, flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))  # after every recipe: a stopped run keeps what it measured

    header = ["recipe", "epochs", *METRICS, "train s", "test s", "train peak MB", "test peak MB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        values = [row["metrics"].get(m) for m in METRICS]
        cells = [f"{v:.3f}" if isinstance(v, float) else "–" for v in values]
        print(
            f"| {row['recipe'].removeprefix('recipe/')} | {row['epochs']} | "
            + " | ".join(cells)
            + f" | {row['train_s']} | {row['test_s']} | {row['train_peak_mb']} | {row['test_peak_mb']} |"
        )
    if args.deploy:
        print(
            "\n| recipe | image AUROC FP32 IR / INT8 | image F1 FP32 IR / INT8 | pixel AUROC FP32 IR / INT8 "
            "| INT8 labels = FP32 IR | IR img/s FP32 / INT8 | export s | optimize s |"
        )
        print("|" + "---|" * 8)
        for row in rows:
            d = row["deploy"]
            pair = [
                " / ".join(f"{d[ir][m]:.4f}" if isinstance(d[ir].get(m), float) else "–" for ir in IRS)
                for m in ("image_AUROC", "image_F1", "pixel_AUROC")
            ]
            print(
                f"| {row['recipe'].removeprefix('recipe/')} | {' | '.join(pair)} | {d['int8_labels_equal']:.2%} "
                f"({d['int8_labels_differ']} differ) | {d['ir_fp32_img_s']} / {d['ir_int8_img_s']} | "
                f"{d['export_s']} | {d['optimize_s']} |"
            )


if __name__ == "__main__":
    main()
