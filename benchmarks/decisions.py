"""Do exported and quantised models keep the FP32 model's decisions? FP32, FP16 and INT8 IRs per model and task.

Per model (trained once with its segmentation recipe, or given with --padim_ckpt / --stfpm_ckpt) and
per task: ``otx export`` FP32 and FP16 (the FP16 export checks and, where needed, recalibrates its
thresholds on the validation split), ``otx optimize`` of the FP32 IR (INT8, recalibrated), and the
same INT8 IR with the FP32 thresholds put back (what `otx optimize` wrote before recalibration).
Each is tested with ``Engine.test`` on the test split; the table gives image AUROC and F1 at the
thresholds, pixel AUROC and F1 (detection, segmentation), and the share of test images (and
pixels of the predicted masks) whose label equals the FP32 IR's.

    .venv/bin/python benchmarks/decisions.py --data_root ../shared/data/magnetic_tile \
        --work_dir /tmp/decisions --out benchmarks/results/decisions_magnetic_tile.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import openvino as ov

from otx.data import AnomalyDataModule
from otx.deploy.calibrate import replace_postprocessor
from otx.deploy.export import save_ir
from otx.deploy.metadata import read_ir_info, read_model_info
from otx.engine import Engine
from otx.models import model_class

TASKS = ("classification", "detection", "segmentation")


def engine(data_root: str, work_dir: Path, task: str | None = None, model=None, epochs: int | None = None) -> Engine:
    return Engine(
        model=model,
        data=AnomalyDataModule(data_root, num_workers=2),
        task=task,
        work_dir=work_dir,
        max_epochs=epochs,
    )


def test(data_root: str, work_dir: Path, path: Path) -> tuple[dict, dict[str, str]]:
    """Test an IR; its metrics.json and the label of each test image."""
    result = engine(data_root, work_dir).test(checkpoint=path)
    records = json.loads((Path(result["report"]).parent / "predictions.json").read_text())
    return result, {r["image"]: r["label"] for r in records}


def with_fp32_thresholds(int8: Path, fp32: Path, out: Path) -> Path:
    """The INT8 IR with the FP32 IR's statistics (what optimize wrote before recalibration)."""
    stats = read_model_info(fp32).stats()
    model = ov.Core().read_model(str(int8))
    info = read_ir_info(model)
    info.update({key: str(value) for key, value in stats.items()}, otx_recalibrated="none (FP32 thresholds)")
    return save_ir(replace_postprocessor(model, stats), info, out / "int8_fp32_thresholds.xml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--work_dir", default="/tmp/decisions")
    parser.add_argument("--models", nargs="+", default=["padim", "stfpm"], help="padim, stfpm, patchcore")
    parser.add_argument("--padim_ckpt", default=None)
    parser.add_argument("--stfpm_ckpt", default=None)
    parser.add_argument("--patchcore_ckpt", default=None)
    parser.add_argument("--stfpm_epochs", type=int, default=None, help="default: the recipe's (10)")
    parser.add_argument("--out", default="benchmarks/results/decisions.json")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows, details = [], {}
    for name in args.models:
        ckpt = getattr(args, f"{name}_ckpt")
        if ckpt is None:
            core = model_class({"padim": "Padim", "stfpm": "Stfpm", "patchcore": "Patchcore"}[name])()
            epochs = args.stfpm_epochs if name == "stfpm" else None
            start = time.perf_counter()
            summary = engine(args.data_root, work / name, "segmentation", core, epochs).train()
            ckpt = summary["checkpoint"]
            details[f"{name}_train"] = {"checkpoint": ckpt, "train_s": round(time.perf_counter() - start, 1)}
        for task in TASKS:
            folder = work / name / task
            shutil.rmtree(folder, ignore_errors=True)
            fp32 = Path(engine(args.data_root, folder, task).export(ckpt)["exported_model"])
            fp16_summary = engine(args.data_root, folder, task).export(ckpt, precision="FP16")
            fp16 = Path(fp16_summary["exported_model"])
            opt = engine(args.data_root, folder, task).optimize(checkpoint=fp32)
            int8 = Path(opt["optimized_model"])
            int8_kept = with_fp32_thresholds(int8, fp32, folder / "int8_fp32_thresholds")
            details[f"{name}_{task}"] = {
                "fp16_decisions": fp16_summary["decisions"],
                "int8_decisions": opt["decisions"],
            }
            reference = None
            for label, path in (("FP32", fp32), ("FP16", fp16), ("INT8", int8), ("INT8, FP32 thresholds", int8_kept)):
                result, labels = test(args.data_root, folder / "tests", path)
                if reference is None:
                    reference = labels
                metrics = result["metrics"]
                row = {
                    "model": name,
                    "task": task,
                    "ir": label,
                    "image_AUROC": metrics["image_AUROC"],
                    "image_F1": metrics["image_F1"],
                    "pixel_AUROC": metrics.get("pixel_AUROC"),
                    "pixel_F1": metrics.get("pixel_F1"),
                    "label_agreement": float(np.mean([labels[k] == v for k, v in reference.items()])),
                    "recalibrated": {
                        "FP16": ",".join(fp16_summary["decisions"].get("recalibrated", [])) or "none",
                        "INT8": ",".join(opt["decisions"].get("recalibrated", [])) or "none",
                    }.get(label, "-"),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps({"rows": rows, "details": details}, indent=1))
    print("\n| model | task | IR | image AUROC | image F1 | pixel AUROC | pixel F1 | labels = FP32 IR | recalibrated |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r[k], float) else "-" for k in ("image_AUROC", "image_F1")]
        cells += [f"{r[k]:.4f}" if isinstance(r[k], float) else "-" for k in ("pixel_AUROC", "pixel_F1")]
        print(
            f"| {r['model']} | {r['task']} | {r['ir']} | {' | '.join(cells)} | {r['label_agreement']:.4f} | "
            f"{r['recalibrated']} |"
        )


if __name__ == "__main__":
    main()
