"""Metrics checked against independent references: sklearn, anomalib, pycocotools-free AP, brute force."""

from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

import otx.metrics
from helpers import box_iou, reference_ap
from otx.metrics import (
    aupro,
    box_ap,
    f1_at,
    gt_boxes_from_mask,
    image_metrics,
    per_defect,
    pixel_metrics,
    roc_auc,
)
from otx.postprocess import f1_adaptive_threshold

# --------------------------------------------------------------------------- roc_auc


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pos_rate", [0.05, 0.5, 0.9])  # both lookup directions (fewer / more positives)
def test_roc_auc_random_matches_sklearn(seed: int, pos_rate: float) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(2000) < pos_rate
    scores = rng.normal(size=2000) + labels * rng.uniform(0, 2)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_heavy_ties_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    labels = rng.random(3000) < 0.3
    scores = rng.integers(0, 6, size=3000) + labels * rng.integers(0, 2, size=3000)  # integer scores, 7 values
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    # Same values as float32 torch tensors.
    got = roc_auc(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels))
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


@pytest.mark.parametrize("scale,offset", [(1e3, 0.0), (1e3, -5e3), (50.0, 250.0), (1e-4, -3.0)])
def test_roc_auc_raw_scores_far_outside_unit_interval(scale: float, offset: float) -> None:
    rng = np.random.default_rng(7)
    labels = rng.random(5000) < 0.2
    scores = (rng.normal(size=5000) + labels) * scale + offset
    expected = roc_auc_score(labels, scores)
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-9)
    # float32 maps as the models produce them: exact against sklearn on the same float32 values.
    s32 = scores.astype(np.float32)
    assert roc_auc(torch.from_numpy(s32), torch.from_numpy(labels)) == pytest.approx(
        roc_auc_score(labels, s32), abs=1e-9
    )
    assert roc_auc(s32, labels) == pytest.approx(expected, abs=1e-6)


def test_roc_auc_2d_maps_and_edge_cases() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((3, 16, 16)) < 0.1
    maps = rng.normal(size=(3, 16, 16)).astype(np.float32) + 2.0 * masks
    assert roc_auc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert roc_auc([0.1, 0.9, 0.4], [1, 0, 1]) == pytest.approx(roc_auc_score([1, 0, 1], [0.1, 0.9, 0.4]), abs=1e-12)
    assert roc_auc([1.0, 2.0, 3.0], [1, 0, 1]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([1.0, 2.0], [1, 1]))  # one class
    assert math.isnan(roc_auc([1.0, 2.0], [0, 0]))
    assert roc_auc([5.0, 5.0, 5.0, 5.0], [0, 1, 0, 1]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        roc_auc([1.0, float("nan")], [0, 1])


# --------------------------------------------------------------------------- F1


@pytest.mark.parametrize("seed", range(5))
def test_f1_at_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.3
    pred = rng.random(500) < 0.3 + 0.4 * labels
    expected = f1_score(labels, pred, zero_division=0)
    assert f1_at(pred, labels) == pytest.approx(expected, abs=1e-12)
    assert f1_at(torch.from_numpy(pred), torch.from_numpy(labels.astype(np.int64))) == pytest.approx(
        expected, abs=1e-12
    )


def test_f1_at_degenerate_cases_follow_sklearn_zero_division_0() -> None:
    for pred, labels in [([0, 0, 0], [0, 0, 0]), ([1, 1, 0], [0, 0, 0]), ([0, 0, 0], [1, 0, 0]), ([1, 1], [1, 1])]:
        assert f1_at(pred, labels) == pytest.approx(f1_score(labels, pred, zero_division=0), abs=1e-12)


def test_reported_f1_is_na_where_nothing_is_there_and_nothing_is_found() -> None:
    # scikit-learn's zero_division=np.nan is the reference for the reported figures (before: pixel_F1 0.0 on a
    # test split of good parts that were all passed, while image_F1 read n/a)
    maps = np.random.default_rng(0).random((3, 8, 8))
    nothing = np.zeros((3, 8, 8), bool)
    for pred in (nothing, maps > 0.9):
        reported = otx.metrics.pixel_metrics(maps, nothing, pred)["pixel_F1"]
        expected = f1_score(nothing.ravel(), pred.ravel(), zero_division=np.nan)
        assert (math.isnan(reported) and math.isnan(expected)) or reported == expected == 0.0
    for pred, labels in [([0, 0], [0, 0]), ([1, 0], [0, 0]), ([0, 0], [1, 0])]:
        reported = otx.metrics.image_metrics([0.1, 0.2], labels, pred)["image_F1"]
        expected = f1_score(labels, pred, zero_division=np.nan)
        assert (math.isnan(reported) and math.isnan(expected)) or reported == expected


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_f1_adaptive_threshold_is_best_over_all_candidates(seed: int, ties: bool, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.25
    scores = rng.normal(size=300) * 10 + 8 * labels
    if ties:
        scores = np.round(scores / 4)
    scores = scores.astype(dtype)  # maps are float32: the threshold is the same function of the values
    best = max(f1_score(labels, scores >= t, zero_division=0) for t in np.unique(scores))
    threshold = f1_adaptive_threshold(torch.from_numpy(scores), torch.from_numpy(labels))
    assert f1_score(labels, scores >= threshold, zero_division=0) == pytest.approx(best, abs=1e-12)
    # The middle of the optimal interval: halfway between the two distinct scores around it, as the
    # float32 the post-processor stores
    above, below = scores[scores >= threshold].min(), scores[scores < threshold].max()
    assert threshold == float(np.float32((float(above) + float(below)) / 2))


def test_f1_adaptive_threshold_leaves_a_margin_on_both_sides() -> None:
    # Separable classes: every threshold in (0.4, 0.9] has F1 1; the middle of that gap is the one
    # a slightly less anomalous image or a little arithmetic noise does not flip.
    scores = np.array([0.1, 0.2, 0.4, 0.9, 1.3, 2.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert f1_adaptive_threshold(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(0.65)
    # When the optimum keeps every image, no lower score exists: just below the lowest score (1 % of the
    # range), not on it, where float noise (torch against an IR) decided that image's label.
    assert f1_adaptive_threshold(torch.tensor([0.5, 0.7]), torch.tensor([1, 1])) == pytest.approx(0.498)
    # Nothing anomalous: just above the largest score (1 % of the range), so every image is normal under >=.
    assert f1_adaptive_threshold(torch.tensor([0.5, 0.7]), torch.tensor([0, 0])) == pytest.approx(0.702)


def test_f1_adaptive_threshold_with_infinite_scores_and_float32_neighbours() -> None:
    def best_f1(scores: np.ndarray, labels: np.ndarray) -> float:  # brute force over every cut
        cuts = np.concatenate([np.unique(scores), [np.inf]])
        return max(f1_score(labels, scores >= c, zero_division=0) for c in cuts)

    cases = [
        (np.array([-np.inf, 0.2, 0.9], np.float32), np.array([0, 1, 1])),  # before: -inf (the midpoint), F1 0.8
        (np.array([0.1, 0.2, np.inf], np.float32), np.array([0, 0, 1])),  # before: +inf, not a usable threshold
        (np.array([1.0, np.nextafter(np.float32(1), np.float32(2))], np.float32), np.array([0, 1])),
    ]
    for scores, labels in cases:
        threshold = f1_adaptive_threshold(torch.from_numpy(scores), torch.from_numpy(labels))
        assert np.isfinite(threshold)
        stored = np.float32(threshold)  # as the post-processor's float32 buffers hold it (before: on a score,
        # F1 0.67 for the adjacent floats: their float64 midpoint rounds to the lower one)
        assert f1_score(labels, scores >= stored) == best_f1(scores, labels) == 1.0


# --------------------------------------------------------------------------- AUPRO


def _blob_data(seed: int, n: int = 4, size: int = 64, quantize: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Smooth noise maps with bumps inside a few disc/rectangle masks (some images normal)."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        noise = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 2.5)
        mask = np.zeros((size, size), np.uint8)
        if i != n - 1:  # the last image stays normal
            for _ in range(int(rng.integers(1, 4))):
                cx, cy = (int(v) for v in rng.integers(6, size - 6, 2))
                if rng.random() < 0.5:
                    cv2.circle(mask, (cx, cy), int(rng.integers(2, 8)), 1, -1)
                else:
                    cv2.rectangle(mask, (cx - 3, cy - 2), (cx + int(rng.integers(0, 6)), cy + 4), 1, -1)
        bump = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)
        maps[i] = noise + float(rng.uniform(0.3, 1.2)) * bump
        masks[i] = mask > 0
    if quantize is not None:
        maps = (np.round(maps / quantize) * quantize).astype(np.float32)
    return maps, masks


def _anomalib_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    from anomalib.metrics import AUPRO

    metric = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=fpr_limit)
    metric.update(SimpleNamespace(anomaly_map=torch.from_numpy(maps), gt_mask=torch.from_numpy(masks).int()))
    return float(metric.compute())


def _brute_force_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """PRO curve evaluated threshold by threshold (float64), regions from scipy (8-connectivity)."""
    regions = []
    for m, mask in zip(maps, masks, strict=True):
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [m[lab == r].astype(np.float64) for r in range(1, n + 1)]
    normal = maps[~masks].astype(np.float64)
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fpr.append(float(np.mean(normal >= t)))
        pro.append(float(np.mean([np.mean(r >= t) for r in regions])))
    fpr_a, pro_a = np.array(fpr), np.array(pro)
    keep = fpr_a <= fpr_limit
    x = np.append(fpr_a[keep], fpr_limit)
    y = np.append(pro_a[keep], np.interp(fpr_limit, fpr_a, pro_a))
    return float(np.trapezoid(y, x)) / fpr_limit


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed: int, fpr_limit: float) -> None:
    # Quantised maps: many ties and few enough distinct thresholds for the O(thresholds x pixels) loop.
    maps, masks = _blob_data(seed, quantize=0.02)
    assert aupro(maps, masks, fpr_limit) == pytest.approx(_brute_force_aupro(maps, masks, fpr_limit), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3])
@pytest.mark.parametrize("quantize", [None, 0.1])
def test_aupro_matches_anomalib(seed: int, fpr_limit: float, quantize: float | None) -> None:
    # anomalib's AUPRO (exact mode, OpenCV 8-connected components, curve points at distinct
    # scores, linear interpolation at the limit) computes the same quantity; the only difference
    # is that it accumulates FPR and PRO in float32 (cumsum over all pixels), which costs it
    # ~1e-7 here (the largest seen over these cases is 1.5e-7). 1e-5 leaves room for that
    # rounding and still catches any real difference in the definition (ties, connectivity,
    # interpolation), which would show up at 1e-3 or more.
    maps, masks = _blob_data(seed, quantize=quantize)
    assert aupro(maps, masks, fpr_limit) == pytest.approx(_anomalib_aupro(maps, masks, fpr_limit), abs=1e-5)


@pytest.mark.parametrize("fpr_limit", [0.05, 1.0])
def test_aupro_in_blocks_of_normal_pixels_matches_brute_force(
    monkeypatch: pytest.MonkeyPatch, fpr_limit: float
) -> None:
    # magnetic_tile's millions of normal pixels are summed in blocks; blocks of 7 pixels here, so
    # that block edges fall inside runs of tied scores
    monkeypatch.setattr(otx.metrics, "_BLOCK", 7)
    maps, masks = _blob_data(5, quantize=0.02)
    assert aupro(maps, masks, fpr_limit) == pytest.approx(_brute_force_aupro(maps, masks, fpr_limit), abs=1e-9)


def test_pixel_metrics_from_rows_the_caller_holds_equal_those_from_the_maps() -> None:
    maps, masks = _blob_data(6)
    sizes = [(64, 64), (40, 64), (64, 50)]  # own sizes differ: rows of all pixels, image after image
    map_list = [m[:h, :w] for m, (h, w) in zip(maps, sizes, strict=False)]
    mask_list = [m[:h, :w] for m, (h, w) in zip(masks, sizes, strict=False)]
    rows = (np.concatenate([m.ravel() for m in map_list]), np.concatenate([m.ravel() for m in mask_list]))
    threshold = float(np.quantile(rows[0], 0.9))
    expected = pixel_metrics(map_list, mask_list, [m >= threshold for m in map_list])
    assert pixel_metrics(map_list, mask_list, rows[0] >= threshold, flat=rows) == expected
    with pytest.raises(ValueError, match="flat must hold"):  # rows that are not these maps' pixels
        pixel_metrics(map_list, mask_list, rows[0][:-1] >= threshold, flat=(rows[0][:-1], rows[1][:-1]))
    assert expected["pixel_AUROC"] == pytest.approx(roc_auc_score(rows[1], rows[0]))


def test_aupro_diagonal_regions_are_one_region_like_anomalib() -> None:
    maps, masks = _blob_data(11)
    masks[:] = False
    masks[:, 10:14, 10:14] = True
    masks[:, 14:18, 14:18] = True  # touches the first square only at a corner
    masks[:, 40:44, 5:30] = True
    expected = _brute_force_aupro(np.round(maps, 2), masks, 0.3)
    assert aupro(np.round(maps, 2), masks) == pytest.approx(expected, abs=1e-9)
    assert aupro(maps, masks) == pytest.approx(_anomalib_aupro(maps, masks, 0.3), abs=1e-5)


def test_aupro_perfect_and_degenerate_maps() -> None:
    _, masks = _blob_data(5)
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(torch.from_numpy(perfect * 300.0 - 7.0), torch.from_numpy(masks)) == pytest.approx(1.0, abs=1e-12)
    assert aupro(-perfect, masks) == pytest.approx(0.0, abs=1e-12)  # regions ranked last
    # A constant map is one tie: the curve is the diagonal (0, 0)-(1, 1), area 0.3**2 / 2, divided by 0.3.
    assert aupro(np.zeros_like(perfect), masks) == pytest.approx(0.15, abs=1e-12)
    assert math.isnan(aupro(perfect, np.zeros_like(masks)))  # no region
    assert math.isnan(aupro(perfect, np.ones_like(masks)))  # no normal pixel
    with pytest.raises(ValueError):
        aupro(perfect, masks, fpr_limit=0.0)


# --------------------------------------------------------------------------- aggregate dicts


def test_image_and_pixel_metric_dicts() -> None:
    maps, masks = _blob_data(2)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    labels = masks.reshape(len(masks), -1).any(axis=1)
    img = image_metrics(torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(scores > 1.0))
    assert set(img) == {"image_AUROC", "image_F1"}
    assert img["image_F1"] == pytest.approx(f1_score(labels, scores > 1.0, zero_division=0))
    pix = pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks), torch.from_numpy(maps > 0.5))
    assert set(pix) == {"pixel_AUROC", "pixel_F1", "AUPRO"}
    assert pix["pixel_AUROC"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert pix["pixel_F1"] == pytest.approx(f1_score(masks.ravel(), (maps > 0.5).ravel()), abs=1e-12)
    assert pix["AUPRO"] == pytest.approx(aupro(maps, masks), abs=1e-12)


def test_per_defect_scores_each_type_against_the_good_images() -> None:
    maps, masks = _blob_data(4, n=9)
    kinds = np.array(["spot"] * 3 + ["band"] * 3 + ["good"] * 3)
    masks[6:] = False  # normal images (their bumps are false positives)
    masks[3:6, 20:44, :] = True  # a band: large regions that decide the pooled pixel metrics
    maps[3:6, 20:44, :] += 0.3
    scores = maps.reshape(9, -1).max(axis=1)
    predicted = scores > np.median(scores)
    got = per_defect(kinds.tolist(), torch.from_numpy(scores), predicted, list(maps), list(masks))
    assert set(got) == {"spot", "band", "good"}
    assert got["good"] == {"images": 3, "flagged": pytest.approx(predicted[6:].mean())}
    for kind in ("spot", "band"):
        mine, pick = kinds == kind, (kinds == kind) | (kinds == "good")
        expected = {
            "images": 3,
            "detected": pytest.approx(predicted[mine].mean()),
            "image_AUROC": pytest.approx(roc_auc_score(mine[pick], scores[pick]), abs=1e-12),
            "pixel_AUROC": pytest.approx(roc_auc_score(masks[pick].ravel(), maps[pick].ravel()), abs=1e-9),
            "AUPRO": pytest.approx(_anomalib_aupro(maps[pick], masks[pick], 0.3), abs=1e-5),
            "defect_pixel_share": pytest.approx(masks[mine].sum() / masks.sum(), abs=1e-12),
        }
        assert got[kind] == expected
    assert got["band"]["defect_pixel_share"] > 0.9  # the case per_defect exists for
    # Boxes: each type's ground truth against its own and the good images' boxes (hand-written AP).
    rng = np.random.default_rng(0)
    truth = [gt_boxes_from_mask(m) for m in masks]
    boxes = [np.concatenate([g + rng.uniform(-3, 3, g.shape), [[1.0, 1.0, 9.0, 9.0]]]) for g in truth]
    box_scores = [rng.uniform(0.2, 1.0, len(b)) for b in boxes]
    boxed = per_defect(kinds, scores, predicted, maps, masks, boxes, box_scores)
    for kind in ("spot", "band"):
        pick = np.flatnonzero((kinds == kind) | (kinds == "good"))
        for iou in (0.5, 0.25, 0.1):
            ref = reference_ap([truth[i] for i in pick], [boxes[i] for i in pick], [box_scores[i] for i in pick], iou)
            assert boxed[kind][f"box_AP{int(iou * 100)}"] == pytest.approx(ref, abs=1e-9)
        assert boxed[kind]["defect_recall"] == 1.0  # every region has a box on it
    images_only = per_defect(kinds, scores, predicted)  # without maps: image metrics only
    assert set(images_only["spot"]) == {"images", "detected", "image_AUROC"}
    assert math.isnan(per_defect(["spot", "spot"], [0.2, 0.4], [0, 1])["spot"]["image_AUROC"])  # no good image
    with pytest.raises(ValueError, match="one entry per image"):
        per_defect(["spot"], [0.2, 0.4], [0, 1])
    with pytest.raises(ValueError, match="one entry per image"):  # one map too many
        per_defect(kinds, scores, predicted, list(maps) + [maps[0]], list(masks) + [masks[0]])


# --------------------------------------------------------------------------- box AP

_COCO_IOUS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)


def test_box_ap_perfect_predictions() -> None:
    gts = [
        np.array([[10, 10, 30, 40], [50, 5, 60, 20]], np.float32),
        np.zeros((0, 4), np.float32),  # normal image, nothing predicted
        np.array([[0, 0, 8, 8]], np.float32),
    ]
    scores = [np.array([0.9, 0.8]), np.zeros(0), np.array([0.7])]
    res = box_ap(gts, [g.copy() for g in gts], scores)
    assert res == dict.fromkeys(("box_AP", "box_AP50", "box_AP25", "box_AP10"), pytest.approx(1.0))
    res_t = box_ap(
        [torch.from_numpy(g) for g in gts], [torch.from_numpy(g) for g in gts], [torch.tensor(s) for s in scores]
    )
    assert res_t == res


def test_box_ap_shift_between_iou_050_and_055() -> None:
    gt = np.array([[10.0, 10.0, 20.0, 20.0]])
    pred = gt + np.array([3.0, 0.0, 3.0, 0.0])  # overlap 7 x 10, union 130 -> IoU 7/13 = 0.538
    iou = box_iou(pred[0], gt[0])
    assert 0.5 < iou < 0.55
    # One GT, one detection: AP is 1 at every IoU threshold the match passes and 0 elsewhere.
    expected_ap = float(np.mean([1.0 if iou >= t else 0.0 for t in _COCO_IOUS]))
    assert expected_ap == pytest.approx(0.1)
    res = box_ap([gt], [pred], [np.array([0.5])])
    assert res["box_AP50"] == res["box_AP25"] == res["box_AP10"] == pytest.approx(1.0)
    assert res["box_AP"] == pytest.approx(expected_ap, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_box_ap50_matches_hand_written_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gts, dets, scores = [], [], []
    for i in range(8):
        n_gt = 0 if i % 4 == 3 else int(rng.integers(1, 4))
        xy = rng.uniform(0, 80, (n_gt, 2))
        g = np.concatenate([xy, xy + rng.uniform(8, 30, (n_gt, 2))], axis=1)
        hits = g[rng.random(n_gt) < 0.8]
        hits = hits + rng.normal(0, 2.5, hits.shape)  # jittered detections, some below IoU 0.5
        fxy = rng.uniform(0, 80, (int(rng.integers(0, 3)), 2))
        false = np.concatenate([fxy, fxy + rng.uniform(5, 20, fxy.shape)], axis=1)
        d = np.concatenate([hits, false])
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1.0)
        gts.append(g)
        dets.append(d)
        scores.append(rng.random(len(d)))
    res = box_ap(gts, dets, scores)
    assert 0.0 < res["box_AP50"] < 1.0
    assert res["box_AP50"] == pytest.approx(reference_ap(gts, dets, scores, 0.5), abs=1e-9)
    ap_all = np.mean([reference_ap(gts, dets, scores, t) for t in _COCO_IOUS])
    assert res["box_AP"] == pytest.approx(ap_all, abs=1e-9)
    for iou in (0.25, 0.1):  # the low IoUs anomaly boxes are judged at
        assert res[f"box_AP{int(iou * 100)}"] == pytest.approx(reference_ap(gts, dets, scores, iou), abs=1e-9)
    assert res["box_AP10"] >= res["box_AP25"] >= res["box_AP50"]


def test_box_ap_degenerate_cases() -> None:
    empty = np.zeros((0, 4))
    res = box_ap([empty, empty], [np.array([[0, 0, 5, 5]]), empty], [np.array([0.9]), np.zeros(0)])
    assert math.isnan(res["box_AP"]) and math.isnan(res["box_AP50"])  # no GT at all
    res = box_ap([np.array([[0, 0, 5, 5]]), empty], [empty, empty], [np.zeros(0), np.zeros(0)])
    assert res == dict.fromkeys(("box_AP", "box_AP50", "box_AP25", "box_AP10"), 0.0)  # GT, nothing predicted
    gt = np.array([[0.0, 0.0, 10.0, 10.0]])
    res = box_ap([gt, empty], [gt, np.array([[20.0, 20.0, 30.0, 30.0]])], [np.array([0.5]), np.array([0.9])])
    assert res["box_AP50"] == pytest.approx(
        reference_ap([gt, empty], [gt, gt + 20], [np.array([0.5]), np.array([0.9])], 0.5)
    )


# --------------------------------------------------------------------------- GT boxes


def test_gt_boxes_from_mask_joins_diagonal_neighbours() -> None:
    mask = np.zeros((32, 40), bool)
    mask[2:5, 3:8] = True  # rectangle
    mask[20:25, 20:30] = True  # rectangle
    mask[10:12, 10:12] = True  # two squares touching only at a corner: one 8-connected region
    mask[12:14, 12:14] = True
    expected = {(3.0, 2.0, 8.0, 5.0), (20.0, 20.0, 30.0, 25.0), (10.0, 10.0, 14.0, 14.0)}
    for m in (mask, torch.from_numpy(mask), mask.astype(np.uint8)):
        boxes = gt_boxes_from_mask(m)
        assert boxes.shape == (3, 4)
        assert {tuple(float(v) for v in b) for b in boxes} == expected
    assert gt_boxes_from_mask(np.zeros((8, 8), bool)).shape == (0, 4)


def test_curves_match_scikit_learn() -> None:
    from sklearn.metrics import precision_recall_curve, roc_curve

    from otx.metrics import curves

    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.3
    scores = np.round(rng.normal(labels * 1.5, 1.0), 1)  # rounding makes ties
    got = curves(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(got["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(got["tpr"], tpr, atol=1e-12)
    precision, recall, _ = precision_recall_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(got["precision"], precision, atol=1e-12)
    np.testing.assert_allclose(got["recall"], recall, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_reports_operating_point_matches_sklearn(seed: int) -> None:
    from sklearn.metrics import confusion_matrix

    from otx.report import operating_point

    rng = np.random.default_rng(seed)
    labels = rng.random(50) < 0.4
    predicted = rng.random(50) < 0.5
    tn, fp, fn, tp = confusion_matrix(labels, predicted).ravel()
    assert operating_point(labels, predicted) == pytest.approx((fp / (fp + tn), tp / (tp + fn), tp / (tp + fp)))
    assert operating_point(labels, np.zeros(50, bool)) == (0.0, 0.0, 1.0)  # nothing flagged: no false positive


def test_image_decisions_match_scikit_learns_confusion_matrix() -> None:
    # The decisions at the threshold in an inspector's words (found/missed, passed/flagged) and the rates: against
    # scikit-learn's confusion matrix, precision and recall, with scores on the threshold itself (anomalous).
    from sklearn.metrics import confusion_matrix, precision_score, recall_score

    from otx.metrics import image_decisions

    rng = np.random.default_rng(3)
    labels = rng.random(200) < 0.4
    scores = np.round(rng.normal(labels * 1.5, 1.0), 1)  # rounded: many scores equal the threshold
    threshold = 0.7
    assert (scores == threshold).sum() > 2
    got = image_decisions(torch.from_numpy(scores), labels.astype(np.int64), threshold)
    predicted = scores >= threshold
    (tn, fp), (fn, tp) = confusion_matrix(labels, predicted)
    assert (got["found"], got["missed"], got["flagged"], got["passed"]) == (tp, fn, fp, tn)
    assert (got["anomalous"], got["normal"]) == (labels.sum(), (~labels).sum())
    assert got["recall"] == pytest.approx(recall_score(labels, predicted))
    assert got["precision"] == pytest.approx(precision_score(labels, predicted))
    assert got["false_alarm_rate"] == pytest.approx(fp / (fp + tn))
    assert got["threshold"] == threshold
    # one class: the rates that divide by nothing are None (null in metrics.json), not 0
    normal_only = image_decisions(scores[~labels], np.zeros((~labels).sum()), threshold)
    assert normal_only["recall"] is None and normal_only["anomalous"] == 0
    assert normal_only["false_alarm_rate"] == pytest.approx(fp / (fp + tn))
    assert image_decisions([0.1, 0.2], [1, 1], 5.0)["precision"] is None  # nothing labelled anomalous
