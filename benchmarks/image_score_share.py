"""What the image score's reduction does: the map's maximum against the mean of its highest pixels.

For an FP32 IR (and optionally an INT8 IR of it) the raw anomaly maps of the validation and test
splits are read once (the split is the one in the IR's metadata). Each row is one image score:
first the IR's own (share null), then for each share ``q`` the mean of the ``q`` highest share of
each map's pixels (``q`` 0: the map's maximum, the score most models export). Printed per row:
validation and test image AUROC, test F1 at the F1-best validation threshold, the test AUROC of
each defect type against the good images and, with an INT8 IR, its test AUROC and how many test
labels differ from the FP32 IR's, at the FP32 threshold and at the INT8 IR's own F1-best
validation threshold. This is what ``score_top_share`` computes inside a model
(``otx.models.base.top_share_score``), evaluated on existing IRs without retraining; thresholds
come from scikit-learn, not from otx's post-processor.

Usage::

    OTX_OFFLINE=1 .venv/bin/python benchmarks/image_score_share.py --data_root ../shared/data/magnetic_tile \\
        --fp32_ir W/<run>-export/exported_model.xml --int8_ir W/<run>-optimize/optimized_model.xml \\
        --out benchmarks/results/image_score_share_stfpm.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from sklearn.metrics import precision_recall_curve, roc_auc_score

from otx.data import AnomalyDataModule
from otx.data.datamodule import AnomalyDataset
from otx.deploy.calibrate import RawOutputs, compile_f32, raw_outputs, with_raw_outputs
from otx.deploy.metadata import read_model_info
from otx.models.base import top_share_count

SHARES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)


def top_share(outputs: RawOutputs, share: float | None) -> np.ndarray:
    """The exported image scores (``share`` None), each map's maximum (0) or the mean of its highest pixels."""
    if share is None:
        return outputs.scores
    flat = outputs.maps.reshape(len(outputs.maps), -1)
    if share == 0:
        return flat.max(axis=1)
    count = top_share_count(share, outputs.maps.shape[-2:])  # the count the model's own score takes
    return np.sort(flat, axis=1)[:, -count:].mean(axis=1)


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold of the best F1 (scikit-learn's precision-recall curve)."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[np.argmax(f1[:-1])])


def per_type(labels: np.ndarray, scores: np.ndarray, kind: np.ndarray) -> float:
    """Image AUROC of one defect type's images against the good ones."""
    keep = kind | ~labels
    return float(roc_auc_score(labels[keep], scores[keep]))


def outputs(path: Path, data: AnomalyDataModule, preprocess: Any) -> dict[str, tuple[RawOutputs, np.ndarray]]:
    """The IR's raw outputs and each image's folder (defect type) on the validation and test splits."""
    compiled = compile_f32(with_raw_outputs(ov.Core().read_model(str(path))))
    result = {}
    for split in ("val", "test"):
        samples = [s for s in data.splits[split] if s.label >= 0]
        items = AnomalyDataset(samples, preprocess, resize_images=False)
        result[split] = (raw_outputs(compiled, items), np.array([Path(s.path).parent.name for s in samples]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", type=Path, required=True)
    parser.add_argument("--fp32_ir", type=Path, required=True)
    parser.add_argument("--int8_ir", type=Path, default=None)
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    info = read_model_info(args.fp32_ir)
    data = AnomalyDataModule(
        str(args.data_root), val_split=float(info.raw["data_val_split"]), seed=int(info.raw["data_seed"])
    )
    data.setup()
    fp32 = outputs(args.fp32_ir, data, info.preprocessor())
    int8 = outputs(args.int8_ir, data, info.preprocessor()) if args.int8_ir else None
    val, (test, types) = fp32["val"][0], fp32["test"]
    kinds = sorted(set(types[test.labels]))
    rows = []
    for share in [None, *args.shares]:  # None: the score the IR exports
        val_scores, test_scores = top_share(val, share), top_share(test, share)
        threshold = f1_threshold(val_scores, val.labels)
        predicted = test_scores >= threshold
        row: dict[str, Any] = {
            "share": share,
            "val_image_AUROC": roc_auc_score(val.labels, val_scores),
            "test_image_AUROC": roc_auc_score(test.labels, test_scores),
            "test_image_F1": 2 * float((predicted & test.labels).sum()) / float(predicted.sum() + test.labels.sum()),
            "test_AUROC_per_type": {kind: per_type(test.labels, test_scores, types == kind) for kind in kinds},
        }
        if int8 is not None:
            int8_val, int8_test = top_share(int8["val"][0], share), top_share(int8["test"][0], share)
            own = f1_threshold(int8_val, int8["val"][0].labels)
            row["int8_test_image_AUROC"] = roc_auc_score(test.labels, int8_test)
            row["int8_labels_differ_at_fp32_threshold"] = int(((int8_test >= threshold) != predicted).sum())
            row["int8_labels_differ_at_own_threshold"] = int(((int8_test >= own) != predicted).sum())
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.out:
        record = {"fp32_ir": str(args.fp32_ir), "int8_ir": str(args.int8_ir), "test_images": len(test.labels)}
        args.out.write_text(json.dumps({**record, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
