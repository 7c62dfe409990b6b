"""What limits detection boxes: box AP by tuning objective, and which defect regions a box can match.

Two steps. ``dump`` runs the otx CLI (``train`` or ``test``) and saves the maps box tuning sees:
the normalised maps at each image's own size, the predicted labels and the ground-truth boxes
(for ``train``: the validation split, as ``otx.boxes.tune`` receives it; for ``test``: the test
split, cut the same way):

    BOX_DUMP=/tmp/box/val.pkl OTX_OFFLINE=1 .venv/bin/python benchmarks/box_limits.py dump train \\
        --config recipe/anomaly_detection/patchcore.yaml --data_root ../shared/data/magnetic_tile --work_dir /tmp/box/pc
    BOX_DUMP=/tmp/box/test.pkl OTX_OFFLINE=1 .venv/bin/python benchmarks/box_limits.py dump test \\
        --work_dir /tmp/box/pc --data_root ../shared/data/magnetic_tile

``analyse`` then tunes the box settings on the validation maps by two objectives (the shipped
mean of box AP at IoU 0.1, 0.25 and 0.5, and AP50 alone), optionally with every box shrunk by a
fixed margin (a blurred map widens a group by about the blur on each side), reports each choice's
test box metrics, and the share of ground-truth regions (by size) that some box overlaps at IoU 0.5
(an upper bound of AP50) for the shipped choice, for the best single setting and for the best box
of every candidate setting at once. The maps are saved as float16: the tuning can choose another
of two near-tied settings than the run did. ``--box_score max`` scores boxes by their group's
maximum (otx before 2026-12-05) instead of its mean; ``--shrinks 0`` tries no shrinking. The
dumps hold no images, so boxes here are the map's own, never snapped to the image
(``BoxSettings.refine``, docs/input-modes.md "Boxes snapped to the image").

    OTX_OFFLINE=1 .venv/bin/python benchmarks/box_limits.py analyse --val /tmp/box/val.pkl --test /tmp/box/test.pkl \\
        --input_size 256 --out benchmarks/results/box_limits_magnetic_tile_patchcore.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

SIZE_BINS = ((0, 16), (16, 32), (32, 64), (64, 128), (128, None))  # sqrt of a region's box area, pixels
SHRINKS = (0, 2, 4, 8)  # box margin removed on each side, in pixels of the model's input


def dump(argv: list[str]) -> int:
    """Run the otx CLI with ``argv``, saving box tuning's inputs to ``$BOX_DUMP``."""
    import otx.verbs.inference as inference
    import otx.verbs.test as test_verb
    from otx.cli import main

    target = os.environ["BOX_DUMP"]
    original_tune = inference.tune

    def saving_tune(maps: list, labels: list, gt_boxes: list, on_normal: bool = False, images: Any = None) -> Any:
        with open(target, "wb") as f:  # float16 halves the file; the levels tried are far apart (images not kept)
            pickle.dump({"maps": [m.astype(np.float16) for m in maps], "labels": labels, "gt": gt_boxes}, f)
        return original_tune(maps, labels, gt_boxes, on_normal=on_normal, images=images)

    inference.tune = saving_tune
    scorers: list[Any] = []
    original_resolve, original_evaluate = test_verb.resolve_model, test_verb.evaluate

    def resolve(*args: Any, **kwargs: Any) -> Any:
        scorers.append(original_resolve(*args, **kwargs))
        return scorers[-1]

    def evaluate(
        ctx: Any, adapter: Any, has_masks: bool, thresholds: Any, outputs: Any, samples: list, *rest: Any, **kw: Any
    ) -> Any:
        inference.tune_boxes(scorers[-1].model, outputs, samples)  # the test maps, cut as for tuning
        return original_evaluate(ctx, adapter, has_masks, thresholds, outputs, samples, *rest, **kw)

    test_verb.resolve_model, test_verb.evaluate = resolve, evaluate
    return main(argv)


def _load(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        data = pickle.load(f)
    data["maps"] = [m.astype(np.float32) for m in data["maps"]]
    return data


def _shrunk(boxes: np.ndarray, shape: tuple[int, int], margin: float, input_size: int) -> np.ndarray:
    """``boxes`` with ``margin`` input pixels taken off each side (at least one input pixel stays)."""
    if margin == 0 or len(boxes) == 0:
        return boxes
    height, width = shape
    sx, sy = width / input_size, height / input_size
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half_w = np.maximum((boxes[:, 2] - boxes[:, 0]) / 2 - margin * sx, 0.5 * sx)
    half_h = np.maximum((boxes[:, 3] - boxes[:, 1]) / 2 - margin * sy, 0.5 * sy)
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).astype(np.float32)


def _cut(data: dict[str, Any], settings: Any, margin: float, input_size: int) -> tuple[list, list]:
    from otx.boxes import boxes_from_map

    boxes, scores = [], []
    for amap, label in zip(data["maps"], data["labels"], strict=True):
        found, found_scores = boxes_from_map(amap, label, settings)
        boxes.append(_shrunk(found, amap.shape, margin, input_size))
        scores.append(found_scores)
    return boxes, scores


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _best_iou(gt: list[np.ndarray], boxes: list[np.ndarray]) -> np.ndarray:
    """Each ground-truth region's best IoU with a box of its image (0 without a box)."""
    best = []
    for truth, found in zip(gt, boxes, strict=True):
        if len(truth):
            best.extend(_iou(truth, found).max(1) if len(found) else np.zeros(len(truth)))
    return np.asarray(best)


def _by_size(gt: list[np.ndarray], best: np.ndarray) -> list[dict[str, Any]]:
    sides = np.concatenate([np.sqrt((t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])) for t in gt if len(t)])
    rows = []
    for low, high in SIZE_BINS:
        chosen = (sides >= low) & (sides < (high if high is not None else np.inf))
        rows.append(
            {
                "region_side_px": f"{low}-{high}" if high is not None else f"{low}+",
                "regions": int(chosen.sum()),
                "iou50_share": float(np.mean(best[chosen] >= 0.5)) if chosen.any() else float("nan"),
                "mean_best_iou": float(best[chosen].mean()) if chosen.any() else float("nan"),
            }
        )
    return rows


def analyse(args: argparse.Namespace) -> None:
    """Tune on the validation dump by each objective, score on the test dump, print and save."""
    from otx.boxes import TUNED_IOUS, candidates
    from otx.metrics import box_ap

    val, test = _load(args.val), _load(args.test)
    settings_list = [replace(s, score=args.box_score) for s in candidates(max(float(m.max()) for m in val["maps"]))]
    objectives = {
        "mean AP10/25/50 (shipped)": lambda m: float(np.nanmean([m[f"box_AP{int(i * 100)}"] for i in TUNED_IOUS])),
        "AP50 alone": lambda m: m["box_AP50"],
    }
    scored = []  # (settings, margin, validation metrics)
    for settings in settings_list:
        for margin in args.shrinks:
            scored.append((settings, margin, box_ap(val["gt"], *_cut(val, settings, margin, args.input_size))))
        print(f"tried {settings}", flush=True)
    result: dict[str, Any] = {
        "val": args.val,
        "test": args.test,
        "input_size": args.input_size,
        "box_score": args.box_score,
        "choices": [],
    }
    for name, objective in objectives.items():
        for shrink in (False, True) if any(args.shrinks) else (False,):
            pool = [row for row in scored if shrink or row[1] == 0]
            settings, margin, val_metrics = max(pool, key=lambda row: objective(row[2]))
            boxes, scores = _cut(test, settings, margin, args.input_size)
            entry = {
                "objective": name,
                "shrink_tried": shrink,
                "settings": asdict(settings),
                "shrink_px": margin,
                "val": val_metrics,
                "test": box_ap(test["gt"], boxes, scores),
            }
            if name.endswith("(shipped)") and not shrink:
                entry["test_regions_by_size"] = _by_size(test["gt"], _best_iou(test["gt"], boxes))
            result["choices"].append(entry)
            print(json.dumps({k: v for k, v in entry.items() if k != "test_regions_by_size"}), flush=True)
    # AP50 is at most the share of regions a box matches at IoU 0.5 (precision 1 all the way):
    # the best single setting's share bounds what any ranking of its boxes reaches; the best box of
    # every candidate at once bounds any one setting
    best_ious = [_best_iou(test["gt"], _cut(test, s, 0, args.input_size)[0]) for s in settings_list]
    shares = [float(np.mean(ious >= 0.5)) for ious in best_ious]
    top = int(np.argmax(shares))
    result["best_single_setting_iou50_share"] = {"share": shares[top], "settings": asdict(settings_list[top])}
    union = np.max(best_ious, axis=0)
    result["any_candidate_regions_by_size"] = _by_size(test["gt"], union)
    result["any_candidate_iou50_share"] = float(np.mean(union >= 0.5))
    for key in ("best_single_setting_iou50_share", "any_candidate_iou50_share", "any_candidate_regions_by_size"):
        print(key, json.dumps(result[key]))
    print("shipped choice, regions by size:", json.dumps(result["choices"][0]["test_regions_by_size"]))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def cli() -> int:
    """Entry point: ``dump <otx arguments>`` or ``analyse ...``."""
    if len(sys.argv) > 1 and sys.argv[1] == "dump":
        return dump(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dump", help="otx CLI arguments follow (BOX_DUMP=path.pkl)")
    parse = sub.add_parser("analyse")
    parse.add_argument("--val", required=True, help="dump of `otx train` (validation maps)")
    parse.add_argument("--test", required=True, help="dump of `otx test` (test maps)")
    parse.add_argument("--input_size", type=int, default=256, help="the model's input side (shrink margins' unit)")
    parse.add_argument(
        "--box_score", choices=("mean", "max"), default="mean", help="how boxes are scored (BoxSettings.score)"
    )
    parse.add_argument(
        "--shrinks", type=int, nargs="+", default=list(SHRINKS), help="box margins to try (input pixels; 0: none)"
    )
    parse.add_argument("--out", help="JSON file to write")
    analyse(parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(cli())
