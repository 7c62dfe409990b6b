"""``otx optimize``'s fallback schemes: validation and test decisions of the first scheme and of the ladder.

For each FP32 IR (with the data it was trained on): ``otx test`` of the FP32 IR, ``otx optimize
--fallback false`` (the model's first scheme alone) and ``otx optimize`` (its ladder: the first
scheme, then its fallbacks until one keeps the validation decisions), each INT8 IR tested. Printed
per IR: each scheme tried with its validation label agreement and largest drop (``attempts``), the
scheme kept, and on the test split the labels that differ from the FP32 IR's, image AUROC / F1
and pixel AUROC. When the first scheme keeps the decisions the ladder stops there and is not run
again (the same seed and calibration images give the same model).

``--candidate NAME`` replaces the model's fallback with one of ``CANDIDATES`` in this process
(nothing on disk changes), to measure a fallback before it ships. With ``--speed_repeats N`` the
FP32 IR and both INT8 IRs are timed on the test images (``alternate_irs.speed_against_first``).

Usage::

    OTX_OFFLINE=1 .venv/bin/python benchmarks/int8_fallback.py --work_dir /tmp/int8_fallback \
        --runs DATA_ROOT=W/...-export/exported_model.xml [DATA_ROOT=...] --speed_repeats 5 \
        --out benchmarks/results/int8_fallback.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from alternate_irs import speed_against_first  # noqa: I001 - the sibling benchmark's alternating timing
from otx.cli import main as otx
from otx.deploy.metadata import read_model_info
from otx.models import model_class

_STFPM, _PATCHCORE = model_class("Stfpm").int8_scheme, model_class("Patchcore").int8_scheme
CANDIDATES: dict[str, tuple[str, Any]] = {
    # the small student (the convolutions its head is computed from, and the head) in float, the teacher INT8
    "stfpm_student_float": (
        "Stfpm",
        dataclasses.replace(
            _STFPM,
            name="stfpm-int8-teacher",
            summary="teacher INT8; student, feature distances, anomaly map, score and post-processing float",
            float_patterns=(*_STFPM.float_patterns, r"^__module\.core\.student_model.*"),
            float_before=(r"^__module\.core\.student_model\.heads.*",),
        ),
    ),
    # the nearest-neighbour search's product in float, the backbone INT8
    "patchcore_search_float": (
        "Patchcore",
        dataclasses.replace(
            _PATCHCORE,
            name="patchcore-int8-backbone",
            summary="backbone INT8; the search, distances, map, score and post-processing float",
            int8_patterns=(),
        ),
    ),
}


def _test(model: Path, data_root: Path, work_dir: Path) -> tuple[dict[str, float], dict[Any, Any], Path]:
    assert otx(["test", "--checkpoint", str(model), "--data_root", str(data_root), "--work_dir", str(work_dir)]) == 0
    run = sorted(work_dir.glob("*-test"))[-1]
    records = json.loads((run / "predictions.json").read_text())
    labels = {Path(r["image"]).parts[-2:]: r["label"] for r in records}
    return json.loads((run / "metrics.json").read_text())["metrics"], labels, run


def _optimize(fp32: Path, data_root: Path, work_dir: Path, fallback: bool) -> dict[str, Any]:
    argv = ["optimize", "--checkpoint", str(fp32), "--data_root", str(data_root), "--work_dir", str(work_dir)]
    assert otx([*argv, "--fallback", str(fallback).lower()]) == 0
    return json.loads((sorted(work_dir.glob("*-optimize"))[-1] / "metrics.json").read_text())


def _figures(metrics: dict[str, float], labels: dict[Any, Any], fp32_labels: dict[Any, Any]) -> dict[str, Any]:
    keys = ("image_AUROC", "image_F1", "pixel_AUROC", "AUPRO")
    differ = sum(labels[k] != v for k, v in fp32_labels.items())
    return {"test_labels_differ": differ, **{k: round(metrics[k], 4) for k in keys if k in metrics}}


def measure(data_root: Path, fp32: Path, work_dir: Path, speed_repeats: int) -> dict[str, Any]:
    """One FP32 IR: the first scheme alone and the ladder, validation and test decisions (and speed)."""
    info = read_model_info(fp32)
    fp32_metrics, fp32_labels, fp32_run = _test(fp32, data_root, work_dir / "fp32")
    row: dict[str, Any] = {
        "data_root": str(data_root),
        "fp32_ir": str(fp32),
        "model": info.model_name,
        "test_images": len(fp32_labels),
        "fp32": _figures(fp32_metrics, fp32_labels, fp32_labels),
    }
    irs = {"fp32": fp32}
    for name, fallback in (("first", False), ("ladder", True)):
        summary = _optimize(fp32, data_root, work_dir / name, fallback)
        if name == "ladder" and "attempts" not in summary:  # the first scheme held: the same model
            row["ladder"] = {**row["first"], "attempts": None}
            break
        metrics, labels, _ = _test(Path(summary["optimized_model"]), data_root, work_dir / name)
        validation = summary["decisions"]["table"]["candidate"] if summary["decisions"].get("checked") else {}
        row[name] = {
            "scheme": summary["scheme"],
            "attempts": summary.get("attempts"),
            "validation_label_agreement": validation.get("image_label_agreement"),
            "validation_drop": summary["decisions"].get("drop"),
            **_figures(metrics, labels, fp32_labels),
        }
        irs[name] = Path(summary["optimized_model"])
    if speed_repeats:
        row["speed"] = speed_against_first(irs, fp32_run / "predictions.json", speed_repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="DATA_ROOT=FP32_IR pairs")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/int8_fallback"))
    parser.add_argument("--candidate", choices=list(CANDIDATES), default=None, help="a fallback to measure")
    parser.add_argument("--speed_repeats", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines, one per IR (appended)")
    args = parser.parse_args()
    if args.candidate:
        name, scheme = CANDIDATES[args.candidate]
        cls = model_class(name)
        cls.int8_scheme = dataclasses.replace(cls.int8_scheme, fallback=scheme)
    for index, pair in enumerate(args.runs):
        data_root, fp32 = (Path(p) for p in pair.split("=", 1))
        row = measure(data_root, fp32, args.work_dir / str(index), args.speed_repeats)
        row["candidate"] = args.candidate
        print(json.dumps(row))
        if args.out:
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
