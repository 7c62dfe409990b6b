"""Shared post-processing: normalisation around thresholds, labels, masks, boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from otx.postprocess import PostProcessor, mask_to_boxes, normalize


def fitted(image_threshold: float | None = None, pixel_threshold: float | None = None) -> PostProcessor:
    torch.manual_seed(0)
    scores = torch.cat([torch.rand(20) * 5, torch.rand(20) * 5 + 4])
    labels = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    maps = torch.rand(40, 16, 16) * 3
    maps[20:, 4:8, 4:8] += 5
    masks = torch.zeros(40, 16, 16, dtype=torch.bool)
    masks[20:, 4:8, 4:8] = True
    post = PostProcessor()
    post.fit(scores, labels, maps, masks, image_threshold, pixel_threshold)
    return post


def test_threshold_maps_to_half_and_labels_agree_with_raw_threshold() -> None:
    post = fitted()
    stats = post.stats()
    raw_scores = torch.linspace(stats["image_min"] - 1, stats["image_max"] + 1, 101)
    raw_maps = torch.linspace(stats["pixel_min"] - 1, stats["pixel_max"] + 1, 101).reshape(1, 101, 1).repeat(101, 1, 1)
    out = post(raw_maps, raw_scores)
    assert torch.equal(out["pred_label"], raw_scores >= stats["image_threshold"])
    assert torch.equal(out["pred_mask"], raw_maps >= stats["pixel_threshold"])
    at_threshold = post(torch.full((1, 1, 1), stats["pixel_threshold"]), torch.tensor([stats["image_threshold"]]))
    assert float(at_threshold["pred_score"]) == 0.5 and float(at_threshold["anomaly_map"]) == 0.5
    assert float(out["pred_score"].min()) == 0.0 and float(out["pred_score"].max()) == 1.0
    # Monotonic: normalisation never reorders scores.
    assert torch.all(out["pred_score"][1:] >= out["pred_score"][:-1])


def test_numpy_and_torch_normalisation_agree() -> None:
    values = np.linspace(-3, 9, 50, dtype=np.float32)
    np.testing.assert_allclose(
        normalize(values, 2.0, -1.0, 7.0), normalize(torch.from_numpy(values), 2.0, -1.0, 7.0).numpy(), atol=1e-7
    )


def _best_f1(values: np.ndarray, truth: np.ndarray) -> float:
    """The highest F1 any threshold reaches, by brute force over every distinct value (scikit-learn)."""
    return max(f1_score(truth, values >= t) for t in np.unique(values))


def test_adaptive_thresholds_are_the_f1_optima() -> None:
    post = fitted()
    torch.manual_seed(0)
    scores = torch.cat([torch.rand(20) * 5, torch.rand(20) * 5 + 4]).numpy()
    labels = np.r_[np.zeros(20), np.ones(20)].astype(bool)
    maps = (torch.rand(40, 16, 16) * 3).numpy()
    maps[20:, 4:8, 4:8] += 5
    masks = np.zeros((40, 16, 16), bool)
    masks[20:, 4:8, 4:8] = True
    stats = post.stats()
    assert f1_score(labels, scores >= stats["image_threshold"]) == pytest.approx(_best_f1(scores, labels))
    pixel_f1 = f1_score(masks.ravel(), maps.ravel() >= stats["pixel_threshold"])
    assert pixel_f1 == pytest.approx(_best_f1(maps.ravel()[::7], masks.ravel()[::7]), abs=0.02)  # on a subsample
    assert f1_score(masks.ravel(), maps.ravel() >= stats["pixel_threshold"]) >= max(
        f1_score(masks.ravel(), maps.ravel() >= t) for t in np.quantile(maps, np.linspace(0.5, 0.99, 50))
    )


def test_manual_thresholds_win_over_adaptive() -> None:
    post = fitted(image_threshold=3.25, pixel_threshold=1.5)
    assert post.stats()["image_threshold"] == 3.25 and post.stats()["pixel_threshold"] == 1.5


def test_no_masks_pixel_threshold_follows_image_threshold() -> None:
    post = PostProcessor()
    post.fit(torch.tensor([1.0, 2.0, 5.0, 6.0]), torch.tensor([0, 0, 1, 1]), torch.rand(4, 8, 8), None)
    assert post.stats()["pixel_threshold"] == post.stats()["image_threshold"] == 3.5  # between 2 and 5


def test_mask_to_boxes_scores_each_component_by_its_maximum() -> None:
    score_map = np.zeros((20, 30), np.float32)
    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:9] = True
    score_map[2:5, 3:9] = 0.6
    score_map[3, 4] = 0.9
    mask[10:18, 20:22] = True
    score_map[10:18, 20:22] = 0.7
    boxes, scores = mask_to_boxes(mask, score_map)
    order = np.argsort(boxes[:, 0])
    np.testing.assert_array_equal(boxes[order], [[3, 2, 9, 5], [20, 10, 22, 18]])
    np.testing.assert_allclose(scores[order], [0.9, 0.7])
    empty_boxes, empty_scores = mask_to_boxes(np.zeros((5, 5), bool))
    assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)


@pytest.mark.parametrize("anomalous", [True, False])
def test_one_class_thresholds_sit_where_the_warnings_say(anomalous: bool) -> None:
    from otx.checks import threshold_warnings

    scores = torch.tensor([3.0, 4.5, 7.25, 9.0])
    post = PostProcessor()
    post.fit(scores, torch.full((4,), int(anomalous)), torch.rand(4, 8, 8))
    threshold = post.stats()["image_threshold"]
    if anomalous:  # only defect images to learn from: just below the lowest, so each of them is anomalous
        assert 2.9 < threshold < 3.0
        said = "just below the lowest anomalous validation score, so only images scoring lower are called normal"
    else:  # only normal images: just above the highest, so each of them is normal
        assert 9.0 < threshold < 9.1
        said = "it sits just above the highest normal image score"
    (warning,) = threshold_warnings(scores.numpy(), np.full(4, anomalous), threshold, "image", "validation", True)
    assert said in warning


def test_an_infinite_validation_score_does_not_flatten_the_normalisation() -> None:
    # Before: image_max = inf, so every normalised score was 0.5 and every image "anomalous"
    scores = torch.tensor([0.1, 0.3, 0.8, float("inf")])
    labels = torch.tensor([0, 0, 1, 1])
    maps = torch.rand(4, 8, 8)
    maps[1, 0, 0] = -float("inf")
    post = PostProcessor()
    post.fit(scores, labels, maps, None)
    stats = post.stats()
    assert (stats["image_min"], stats["image_max"]) == pytest.approx((0.1, 0.8))  # the finite scores' range
    assert stats["pixel_min"] == pytest.approx(float(maps[torch.isfinite(maps)].min()))
    out = post(torch.zeros(4, 8, 8), torch.tensor([0.1, 0.3, 0.8, 5.0]))
    assert out["pred_label"].tolist() == [False, False, True, True]
    assert (torch.tensor([0.1, 0.3, 0.8, 5.0]) >= stats["image_threshold"]).tolist() == out["pred_label"].tolist()


def test_a_threshold_above_every_validation_score_is_said_not_learned() -> None:
    # Before: metrics.json and the report said "learned: the F1-best on the validation split" for the threshold
    # otx train had warned was not learned (a validation split of normal images only).
    from otx.postprocess import f1_adaptive_threshold, threshold_origin

    normal = np.array([3.0, 4.0, 5.0])
    stats = {"image_min": 3.0, "image_max": 5.0, "pixel_min": 0.0, "pixel_max": 9.0, "pixel_threshold": 6.0}
    alone = threshold_origin([], [], {**stats, "image_threshold": f1_adaptive_threshold(normal, np.zeros(3))})
    assert alone["image"].startswith("not learned: just above the highest validation score"), alone
    assert alone["image"].endswith("had no anomalous images to learn one from"), alone
    scores, labels = np.array([3.0, 4.0, 5.0, 8.0]), np.array([0, 0, 0, 1])
    learned = {**stats, "image_max": 8.0, "image_threshold": f1_adaptive_threshold(scores, labels)}
    assert threshold_origin([], [], learned)["image"] == "learned: the F1-best on the validation split"
    assert threshold_origin(["image"], [], {**stats, "image_threshold": 9.0})["image"] == "given (image_threshold)"


def test_a_pixel_threshold_above_every_test_pixel_says_the_masks_are_empty() -> None:
    from otx.checks import threshold_warnings

    said = threshold_warnings(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 1]), 1.0, "pixel", "test")
    assert any("flags nothing as anomalous at the pixel level (every mask is empty" in w for w in said), said
    said = threshold_warnings(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 1]), 1.0, "image", "test")
    assert any(w.endswith("this model flags nothing as anomalous") for w in said), said


def test_a_threshold_that_flags_half_the_normal_images_or_more_is_said() -> None:
    # Before: only a threshold that flagged every image was said; a bug bash's STFPM flagged 15 of 16 validation
    # and test images, and a PADIM half of the good test images, with no warning.
    from otx.checks import threshold_warnings

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.3, 0.8, 0.9, 1.0])  # AUROC 14 of 16 pairs: not near chance
    (said,) = threshold_warnings(scores, labels, 0.5, "image", "test")
    assert said.startswith("the image threshold (0.5) flags 2 of the 4 normal test images as anomalous (image AUROC")
    assert "(image AUROC 0.875)" in said and "more validation images (test/)" in said
    assert threshold_warnings(scores, labels, 0.65, "image", "test") == []  # one of four: no warning
    assert threshold_warnings(scores, labels, 0.5, "pixel", "test") == []  # pixels: thresholds mark a share
    every = threshold_warnings(scores, labels, 0.0, "image", "test")  # all flagged: that warning alone
    assert len(every) == 1 and "flags every image as anomalous" in every[0]
    # Set by hand (low, to miss no defect): what it finds, not advice to set one by hand (a bug bash)
    (said,) = threshold_warnings(scores, labels, 0.25, "image", "validation", given=True)
    assert said.startswith("the image threshold set by hand (0.25) flags 2 of the 4 normal validation images")
    assert "finds 4 of the 4 anomalous ones (image AUROC 0.875)" in said and "set by hand;" not in said
    (said,) = threshold_warnings(scores, labels, 0.5, "image", "validation", given=True)
    assert "finds 3 of the 4 anomalous ones" in said and "raise it for fewer false alarms" in said
