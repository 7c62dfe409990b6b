"""How far each tool's INT8 IR is from its own FP32 IR, and whether otx's INT8 AUROC is measurably below anomalib's.

Takes the four segmentation IRs that ``benchmarks/optimize_int8.py`` wrote for one model (otx's
FP32 export and ``otx optimize`` output, anomalib 2.7's FP32 and ``INT8_PTQ`` exports of the same
weights) and runs each on the same test images (otx's test half of ``--data_root``), otx's IRs
through ``otx.deploy.OpenVINOInferencer`` and anomalib's through anomalib's inferencer, all at f32
inference precision on the CPU. Reports:

- **fidelity**: per tool, INT8 against FP32 on the same image: mean and maximum absolute
  difference of the normalised image score and of the normalised anomaly map (each tool
  normalises so that 0.5 is its threshold), and how many images change label;
- **paired bootstrap** of ``AUROC(otx INT8) - AUROC(anomalib INT8)`` (image and pixel level):
  ``--resamples`` resamples of the test images (with replacement, the same resample for both
  IRs, so the difference is paired), the point estimate, the 2.5 / 97.5 percentiles and the share
  of resamples in which otx's is at least anomalib's. Pixel AUROC per resample is computed from
  per-image histograms of the anomaly maps (``--bins`` equal bins from the smallest to the largest
  map value: anomalib's INT8 PADIM maps span 2.4e-6 in all); the full-set value from
  the histograms is printed beside the exact one;
- with ``--speed_repeats N``: the four IRs timed in one alternating loop
  (``optimize_int8.head_to_head``), with otx's INT8 throughput over anomalib's INT8 pass by pass.

Usage (paths as ``optimize_int8.py`` printed them)::

    .venv/bin/python benchmarks/int8_fidelity.py --data_root ../shared/data/magnetic_tile \
        --otx_fp32 W/stfpm/...-export/exported_model.xml --otx_int8 W/stfpm/...-optimize/optimized_model.xml \
        --anomalib_fp32 W/stfpm/anomalib/fp32/weights/openvino/model.xml \
        --anomalib_int8 W/stfpm/anomalib/int8_ptq/weights/openvino/model.xml --speed_repeats 11 --out results.json
"""

from __future__ import annotations

# ruff: noqa: E402 - warnings are silenced before the noisy imports below.
import warnings

warnings.filterwarnings("ignore")

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import compare_anomalib as cmp  # noqa: I001 - sibling benchmarks: the split and anomalib's inferencer
import optimize_int8 as oi

from otx.deploy.inferencer import OpenVINOInferencer
from otx.metrics import roc_auc


def otx_outputs(xml: Path, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``pred_score [N]`` and ``anomaly_map [N, h, w]`` of one of otx's IRs."""
    out = OpenVINOInferencer(xml, "CPU", "f32").infer(images)
    return out["pred_score"].astype(np.float64), out["anomaly_map"].astype(np.float32)


def fidelity(fp32: tuple[np.ndarray, np.ndarray], int8: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """INT8 against FP32 outputs of the same tool on the same images."""
    score_diff = np.abs(int8[0] - fp32[0])
    map_diff = np.abs(int8[1] - fp32[1])
    return {
        "score_mean_abs_diff": float(score_diff.mean()),
        "score_max_abs_diff": float(score_diff.max()),
        "map_mean_abs_diff": float(map_diff.mean()),
        "map_max_abs_diff": float(map_diff.max()),
        "labels_changed": int(((int8[0] >= 0.5) != (fp32[0] >= 0.5)).sum()),
    }


def histograms(maps: np.ndarray, masks: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image counts of defect and normal pixels per map-value bin: two ``[N, bins]`` arrays.

    The bins split ``[min, max]`` of all maps evenly (a monotone mapping, so ranks are kept up
    to ties within one bin).
    """
    low, high = float(maps.min()), float(maps.max())
    scaled = (maps.reshape(len(maps), -1).astype(np.float64) - low) / max(high - low, 1e-12)
    index = np.clip((scaled * bins).astype(np.int64), 0, bins - 1)
    flat = masks.reshape(len(masks), -1)
    pos = np.stack([np.bincount(i[m], minlength=bins) for i, m in zip(index, flat, strict=True)])
    neg = np.stack([np.bincount(i[~m], minlength=bins) for i, m in zip(index, flat, strict=True)])
    return pos.astype(np.float64), neg.astype(np.float64)


def auroc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each row's binned scores (``[R, bins]`` counts; ties within a bin count one half)."""
    below = np.cumsum(neg, axis=1) - neg  # normal pixels in lower bins
    pairs = (pos * (below + 0.5 * neg)).sum(axis=1)
    return pairs / (pos.sum(axis=1) * neg.sum(axis=1))


def paired_bootstrap(
    ours: tuple[np.ndarray, np.ndarray],
    theirs: tuple[np.ndarray, np.ndarray],
    labels: np.ndarray,
    masks: np.ndarray,
    resamples: int,
    bins: int,
    seed: int = 0,
) -> dict[str, Any]:
    """``AUROC(ours) - AUROC(theirs)`` over image resamples, image and pixel level."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    picks = rng.integers(0, n, (resamples, n))
    counts = np.stack([np.bincount(p, minlength=n) for p in picks]).astype(np.float64)  # [R, N]
    result: dict[str, Any] = {}
    image_diffs = np.array(
        [roc_auc(ours[0][p], labels[p]) - roc_auc(theirs[0][p], labels[p]) for p in picks], dtype=np.float64
    )
    result["image_AUROC"] = _summary(roc_auc(ours[0], labels) - roc_auc(theirs[0], labels), image_diffs)
    hist = {name: histograms(out[1], masks, bins) for name, out in (("ours", ours), ("theirs", theirs))}
    binned = {name: float(auroc_from_histograms(p.sum(0)[None], q.sum(0)[None])[0]) for name, (p, q) in hist.items()}
    pixel_diffs = np.concatenate(
        [
            auroc_from_histograms(c @ hist["ours"][0], c @ hist["ours"][1])
            - auroc_from_histograms(c @ hist["theirs"][0], c @ hist["theirs"][1])
            for c in np.array_split(counts, max(1, resamples // 50))
        ]
    )
    exact = {name: roc_auc(out[1], masks) for name, out in (("ours", ours), ("theirs", theirs))}
    result["pixel_AUROC"] = {
        **_summary(exact["ours"] - exact["theirs"], pixel_diffs),
        "exact": exact,
        "binned": binned,
    }
    return result


def _summary(point: float, diffs: np.ndarray) -> dict[str, Any]:
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {
        "difference": float(point),
        "ci95": [float(low), float(high)],
        "share_ours_at_least_theirs": float((diffs >= 0).mean()),
    }


def speed(args: argparse.Namespace, images: list[np.ndarray], auroc: dict[str, dict]) -> dict[str, Any]:
    """``optimize_int8.head_to_head`` of the four IRs, with the INT8 throughput ratio of each pass.

    The passes of one repeat run back to back, so the per-pass ratio pairs timings taken in the
    same phase of the machine.
    """
    ours = {"fp32": args.otx_fp32, "int8": args.otx_int8}
    theirs = {"fp32": args.anomalib_fp32, "int8_ptq": args.anomalib_int8}
    ran = {"fp32": auroc["anomalib_fp32"], "int8_ptq": auroc["anomalib_int8"]}
    rows = oi.head_to_head(ours, theirs, ran, images, args.speed_repeats)
    pairs = zip(rows["otx_int8"]["throughput_runs"], rows["anomalib_int8_ptq"]["throughput_runs"], strict=True)
    ratios = [a / b for a, b in pairs]
    return {
        **{
            name: {k: row[k] for k in ("throughput_img_s", "throughput_runs", "latency_ms_median")}
            for name, row in rows.items()
        },
        "int8_throughput_ratio_per_pass": [round(r, 3) for r in ratios],
        "int8_throughput_ratio_median": float(np.median(ratios)),
        "passes_otx_int8_faster": int(sum(r > 1 for r in ratios)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", type=Path, required=True)
    for name in ("otx_fp32", "otx_int8", "anomalib_fp32", "anomalib_int8"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--bins", type=int, default=1 << 16)
    parser.add_argument(
        "--speed_repeats", type=int, default=0, help="also time the four IRs, alternating, this many passes each"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    for name in ("otx_fp32", "otx_int8", "anomalib_fp32", "anomalib_int8"):
        if not getattr(args, name).is_file():
            parser.error(f"--{name}: no file {getattr(args, name)} (pass the .xml that optimize_int8.py wrote)")
    s = cmp.split_settings(args.data_root, Path("/tmp/otx-int8-fidelity"), 10)
    images, samples = oi.test_images(s)
    labels = np.array([sample.label for sample in samples], dtype=bool)
    masks = oi.test_masks(images, samples, cmp.INPUT_SIZE)
    outputs = {
        "otx_fp32": otx_outputs(args.otx_fp32, images),
        "otx_int8": otx_outputs(args.otx_int8, images),
        "anomalib_fp32": oi.anomalib_outputs(args.anomalib_fp32, images, cmp.INPUT_SIZE),
        "anomalib_int8": oi.anomalib_outputs(args.anomalib_int8, images, cmp.INPUT_SIZE),
    }
    result: dict[str, Any] = {
        "data_root": str(args.data_root),
        "test_images": len(images),
        "auroc": {
            name: {"image_AUROC": roc_auc(out[0], labels), "pixel_AUROC": roc_auc(out[1], masks)}
            for name, out in outputs.items()
        },
        "fidelity": {tool: fidelity(outputs[f"{tool}_fp32"], outputs[f"{tool}_int8"]) for tool in ("otx", "anomalib")},
        "int8_otx_minus_anomalib": paired_bootstrap(
            outputs["otx_int8"], outputs["anomalib_int8"], labels, masks, args.resamples, args.bins
        ),
        "resamples": args.resamples,
        "models": {name: str(getattr(args, name)) for name in outputs},
    }
    if args.speed_repeats:
        result["speed"] = speed(args, images, result["auroc"])
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
