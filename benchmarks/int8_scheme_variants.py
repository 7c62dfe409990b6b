"""PatchFlow's INT8 scheme and variants of it on one FP32 IR: test-split labels, AUROCs, how close scores sit to 0.5.

For each variant the model class's ``int8_scheme`` is replaced in this process only (the shipped
scheme is untouched on disk), ``otx optimize`` quantises the FP32 IR (with the validation split's
decision check and recalibration, as a user gets it) and ``otx test`` evaluates the INT8 IR. The
FP32 IR is tested once. Printed per variant: test-split labels that differ from the FP32 IR's,
image AUROC / F1, pixel AUROC, the validation split's agreement that ``otx optimize`` reported, the
number of FakeQuantize nodes and the median absolute change of the normalised image score. Also
printed: how many FP32 test scores lie within 0.005, 0.01 and 0.02 of the threshold 0.5. With
``--speed_repeats N`` the FP32 IR and every variant's INT8 IR are timed on the test images
(``alternate_irs.speed_against_first``: CPU, f32, one latency and one throughput pass on a fresh
compilation, one pass of each per repeat in alternating order); medians and INT8 / FP32.

Usage::

    OTX_OFFLINE=1 .venv/bin/python benchmarks/int8_scheme_variants.py --data_root ../shared/data/magnetic_tile \
        --fp32_ir W/anomaly_segmentation_patchflow/...-export/exported_model.xml --work_dir /tmp/pf_variants \
        --speed_repeats 5 --out benchmarks/results/int8_scheme_variants_patchflow.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from alternate_irs import speed_against_first  # noqa: I001 - the sibling benchmark's alternating timing
from otx.cli import main as otx
from otx.models import Patchflow

SHIPPED = Patchflow.int8_scheme
ADAPTOR = r"^__module\.core\.feature_adaptor/.*"  # the 1x1 convolution(s) over the pooled features
DEEP = r".*feature_extractor\.blocks\.{}\.0\.bn1/.*"  # the first normalisation of a backbone stage, all scales
VARIANTS: dict[str, Any] = {
    "shipped": SHIPPED,
    # the scheme until 2026-12-03: the couplings' subnet convolutions float too
    "flow subnets float": dataclasses.replace(SHIPPED, int8_patterns=(), int8_next_convolution=()),
    "stages 5-6 float": dataclasses.replace(SHIPPED, float_after=(*SHIPPED.float_after, DEEP.format(5))),
    "stages 4-6 float": dataclasses.replace(SHIPPED, float_after=(*SHIPPED.float_after, DEEP.format(4))),
    "761 calibration images": dataclasses.replace(SHIPPED, calibration_images=761),
    "adaptor INT8": dataclasses.replace(SHIPPED, int8_patterns=(*SHIPPED.int8_patterns, ADAPTOR)),
}


def _test(checkpoint: Path, args: argparse.Namespace, work_dir: Path) -> tuple[dict[str, float], dict[Any, Any]]:
    assert otx(["test", "--checkpoint", str(checkpoint), "--data_root", str(args.data_root),
                "--work_dir", str(work_dir)]) == 0  # fmt: skip
    run = sorted(work_dir.glob("*-test"))[-1]
    records = json.loads((run / "predictions.json").read_text())
    return json.loads((run / "metrics.json").read_text())["metrics"], {
        Path(r["image"]).parts[-2:]: (r["label"], r["score"]) for r in records
    }


def alternated_speed(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput of the FP32 IR and each INT8 IR, one pass each per repeat, the order alternating."""
    run = sorted((args.work_dir / "fp32").glob("*-test"))[-1]
    paths = {"FP32 IR": args.fp32_ir, **{row["variant"]: Path(row["int8_ir"]) for row in rows}}
    speed = speed_against_first(paths, run / "predictions.json", args.speed_repeats)
    for name, row in speed.items():
        print(f"{name}: {row['img_s']:.1f} img/s, {row['ratio']:.2f}x the FP32 IR", flush=True)
    return speed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", type=Path, required=True)
    parser.add_argument("--fp32_ir", type=Path, required=True, help="a PatchFlow FP32 IR (`otx export`)")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/pf_variants"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--speed_repeats", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    _, reference = _test(args.fp32_ir, args, args.work_dir / "fp32")
    scores = [score for _, score in reference.values()]
    near = {d: sum(abs(s - 0.5) < d for s in scores) for d in (0.005, 0.01, 0.02)}
    print(f"FP32 IR: {len(scores)} test images; within 0.005 / 0.01 / 0.02 of 0.5: {near}", flush=True)
    rows = []
    for name in args.variants:
        Patchflow.int8_scheme = VARIANTS[name]
        work_dir = args.work_dir / name.replace(" ", "_")
        assert otx(["optimize", "--checkpoint", str(args.fp32_ir), "--data_root", str(args.data_root),
                    "--work_dir", str(work_dir), "--fallback", "false"]) == 0  # the variant alone  # fmt: skip
        summary = json.loads((sorted(work_dir.glob("*-optimize"))[-1] / "metrics.json").read_text())
        metrics, labels = _test(Path(summary["optimized_model"]), args, work_dir)
        row = {
            "variant": name,
            "differ": sum(labels[k][0] != v[0] for k, v in reference.items()),
            "image_AUROC": metrics["image_AUROC"],
            "image_F1": metrics["image_F1"],
            "pixel_AUROC": metrics.get("pixel_AUROC"),
            "val_image_agreement": summary["decisions"]["table"]["candidate"]["image_label_agreement"],
            "fake_quantize_nodes": summary["fake_quantize_nodes"],
            "median_score_change": statistics.median(abs(labels[k][1] - v[1]) for k, v in reference.items()),
            "int8_ir": summary["optimized_model"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    Patchflow.int8_scheme = SHIPPED
    speed = alternated_speed(args, rows) if args.speed_repeats else {}
    if args.out:
        results = {"fp32_ir": str(args.fp32_ir), "near_threshold": near, "rows": rows, "speed": speed}
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
