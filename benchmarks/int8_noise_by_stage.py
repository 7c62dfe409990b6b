"""Where PatchFlow's INT8 moves its image scores: each backbone stage kept in float in turn, then the whole backbone.

For one PatchFlow FP32 IR (EfficientNet-Lite0) each variant is the model's shipped INT8 scheme
with more of the backbone kept in float: the convolutions of one stage (at all three scales the
backbone runs at), all of its convolutions, its depthwise ones, its residual additions, or every
node upstream of the adaptor (paddings and the input's resizes to the smaller scales too: then
only the flow's subnet convolutions run in INT8); three more change one of the scheme's settings
(NNCF's fast bias correction, its default activation ranges, all 761 training images to calibrate).
``otx optimize`` quantises the FP32 IR for each variant (this process only; the shipped scheme is
untouched on disk), then the FP32 and the INT8 IR's raw image scores (the post-processor's inputs)
are read on the validation and test splits. Printed per variant and split: labels that differ at
the FP32 IR's own raw image threshold, and the spread (standard deviation) and mean of the INT8
score change over the images whose FP32 score lies within 0.02 of that threshold; also how many
FP32 scores lie within 0.005 and 0.02 of it. No recalibration is applied (``otx optimize`` may move
the written model's threshold; here both use the FP32 one), so the counts measure the noise alone.

The exported graph names the backbone's convolutions after their folded batch norms
(``Multiply_NNNN``), so they are found on the graph: every convolution upstream of the 1x1 adaptor,
in the graph's order, 48 per scale for Lite0, split by stage (stem and stage 0: 3, then 6, 6, 9,
9, 12, 3).

Usage::

    OTX_OFFLINE=1 .venv/bin/python benchmarks/int8_noise_by_stage.py --data_root ../shared/data/magnetic_tile \\
        --fp32_ir W/anomaly_segmentation_patchflow/<run>-export/exported_model.xml --work_dir /tmp/pf_noise \\
        --out benchmarks/results/int8_noise_by_stage_patchflow.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from image_score_share import outputs  # the sibling benchmark's raw outputs per split
from otx.cli import main as otx
from otx.data import AnomalyDataModule
from otx.deploy.metadata import read_model_info
from otx.models import Patchflow
from otx.models.quantization import Scheme, upstream_of

# EfficientNet-Lite0's convolutions per stage, in the graph's order (stem and stage 0 together)
STAGES = {"stem+0": 3, "1": 6, "2": 6, "3": 9, "4": 9, "5": 12, "6": 3}
PER_SCALE = sum(STAGES.values())
UPSTREAM = (-1,)  # positions meaning: every node upstream of the adaptor (residual additions, pads, resizes too)
RESIDUAL = (-2,)  # positions meaning: the backbone's residual additions (both inputs computed, not constants)
DEPTHWISE = (1, *(3 + 3 * block + 1 for block in range(15)))  # stage 0's and each inverted residual's middle one
# Variants that keep every backbone convolution of some of the input scales in float
SCALES: dict[str, tuple[int, ...]] = {"scale 1x float": (0,), "scales 0.5x and 0.25x float": (1, 2)}
# Variants that change one of the scheme's settings instead of keeping more in float
SETTINGS: dict[str, dict[str, Any]] = {
    "fast bias correction": {"fast_bias_correction": True},
    "NNCF's default activation ranges": {"activation_ranges": "default"},
    "761 calibration images (all)": {"calibration_images": 761},
}
SHIPPED = Patchflow.int8_scheme


def upstream_of_adaptor(ov_model: Any) -> set[str]:
    """Names of every node the 1x1 adaptor's convolutions are computed from."""
    return upstream_of(ov_model, (r".*feature_adaptor.*",))


def backbone_convolutions(ov_model: Any) -> list[str]:
    """Names of every convolution upstream of the adaptor's, in the graph's order."""
    upstream = upstream_of_adaptor(ov_model)
    return [
        op.get_friendly_name()
        for op in ov_model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution")
        and op.get_friendly_name() in upstream
        and "feature_adaptor" not in op.get_friendly_name()
    ]


@dataclasses.dataclass(frozen=True)
class WithFloatStages(Scheme):
    """The shipped scheme with the backbone convolutions at ``positions`` (per scale) in float as well."""

    positions: tuple[int, ...] = ()
    scales: tuple[int, ...] = ()  # instead of positions: every convolution of these runs (0: 1x, 1: 0.5x, 2: 0.25x)

    def float_nodes(self, ov_model: Any) -> set[str]:
        """The shipped scheme's float nodes and the chosen backbone convolutions at every scale."""
        if self.positions == UPSTREAM:
            return super().float_nodes(ov_model) | upstream_of_adaptor(ov_model)
        if self.positions == RESIDUAL:
            upstream = upstream_of_adaptor(ov_model)
            residual = {
                op.get_friendly_name()
                for op in ov_model.get_ordered_ops()
                if op.get_type_name() == "Add"
                and op.get_friendly_name() in upstream
                and all(v.get_source_output().get_node().get_type_name() != "Constant" for v in op.inputs())
            }
            return super().float_nodes(ov_model) | residual
        convolutions = backbone_convolutions(ov_model)
        if len(convolutions) % PER_SCALE:
            found = len(convolutions)
            raise SystemExit(f"{found} backbone convolutions: not EfficientNet-Lite0's {PER_SCALE} per scale")
        scales = len(convolutions) // PER_SCALE
        if self.scales:  # the graph runs the scales in order, largest first (checked: 256, 128, 64 inputs)
            return super().float_nodes(ov_model) | {
                convolutions[PER_SCALE * s + p] for s in self.scales for p in range(PER_SCALE)
            }
        chosen = {convolutions[PER_SCALE * s + p] for s in range(scales) for p in self.positions}
        if self.positions == DEPTHWISE:
            kinds = {op.get_friendly_name(): op.get_type_name() for op in ov_model.get_ordered_ops()}
            if {kinds[name] for name in chosen} != {"GroupConvolution"}:
                raise SystemExit("the depthwise positions are not EfficientNet-Lite0's depthwise convolutions")
        return super().float_nodes(ov_model) | chosen


def variants() -> dict[str, tuple[int, ...]]:
    """Per variant, the per-scale positions of the convolutions kept in float besides the scheme's."""
    result: dict[str, tuple[int, ...]] = {"shipped": ()}
    start = 0
    for stage, count in STAGES.items():
        result[f"stage {stage} float"] = tuple(range(start, start + count))
        start += count
    result["every backbone convolution float"] = tuple(range(PER_SCALE))
    result["every depthwise backbone convolution float"] = DEPTHWISE
    result["the backbone's residual additions float"] = RESIDUAL
    result["everything upstream of the adaptor float (only the flow's subnets INT8)"] = UPSTREAM
    return result | {name: () for name in (*SETTINGS, *SCALES)}


VARIANTS = variants()


def compare(fp32: np.ndarray, int8: np.ndarray, threshold: float) -> dict[str, Any]:
    """Labels that differ at the FP32 threshold, and the score change near it."""
    change = int8 - fp32
    near = np.abs(fp32 - threshold) < 0.02
    return {
        "labels_differ": int(((int8 >= threshold) != (fp32 >= threshold)).sum()),
        "images": len(fp32),
        "near_threshold_change_std": float(change[near].std()),
        "near_threshold_change_mean": float(change[near].mean()),
        "median_abs_change": float(np.median(np.abs(change))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", type=Path, required=True)
    parser.add_argument("--fp32_ir", type=Path, required=True, help="a PatchFlow (Lite0) FP32 IR (`otx export`)")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/pf_noise"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    info = read_model_info(args.fp32_ir)
    threshold = float(info.raw["image_threshold"])
    data = AnomalyDataModule(
        str(args.data_root), val_split=float(info.raw["data_val_split"]), seed=int(info.raw["data_seed"])
    )
    data.setup()
    reference = {split: raw.scores for split, (raw, _) in outputs(args.fp32_ir, data, info.preprocessor()).items()}
    near = {
        split: {width: int((np.abs(s - threshold) < width).sum()) for width in (0.005, 0.02)}
        for split, s in reference.items()
    }
    print(f"raw image threshold {threshold:.4f}; FP32 scores within 0.005 / 0.02 of it: {near}", flush=True)
    rows = []
    for name in args.variants:
        fields = {f.name: getattr(SHIPPED, f.name) for f in dataclasses.fields(SHIPPED)} | SETTINGS.get(name, {})
        positions = VARIANTS[name]
        Patchflow.int8_scheme = WithFloatStages(**fields, positions=positions, scales=SCALES.get(name, ()))
        work_dir = args.work_dir / name.split(" (")[0].replace(" ", "_").replace("+", "").replace("'", "")
        assert otx(["optimize", "--checkpoint", str(args.fp32_ir), "--data_root", str(args.data_root),
                    "--work_dir", str(work_dir), "--fallback", "false"]) == 0  # the variant alone  # fmt: skip
        summary = json.loads((sorted(work_dir.glob("*-optimize"))[-1] / "metrics.json").read_text())
        int8_ir = Path(summary["optimized_model"])
        quantisers = sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(int8_ir)).get_ops())
        scores = {split: raw.scores for split, (raw, _) in outputs(int8_ir, data, info.preprocessor()).items()}
        count = {UPSTREAM: PER_SCALE, RESIDUAL: 0}.get(positions, len(positions))
        row = {"variant": name, "float_convolutions_per_scale": count}
        row["quantisers"] = quantisers
        row |= {split: compare(reference[split], scores[split], threshold) for split in reference}
        row["int8_ir"] = str(int8_ir)
        rows.append(row)
        print(json.dumps(row), flush=True)
    Patchflow.int8_scheme = SHIPPED
    if args.out:  # rows an earlier run wrote for the same FP32 IR and other variants are kept
        earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
        if earlier.get("fp32_ir") == str(args.fp32_ir):
            kept = [r for r in earlier["rows"] if r["variant"] not in args.variants and r["variant"] in VARIANTS]
            rows = kept + rows
            rows.sort(key=lambda r: list(VARIANTS).index(r["variant"]))
        record = {"fp32_ir": str(args.fp32_ir), "raw_image_threshold": threshold, "near_threshold": near}
        args.out.write_text(json.dumps({**record, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
