"""Keep an exported model's decisions when its arithmetic changes (INT8, FP16).

Quantisation keeps the ranking of the scores (AUROC) but may shift or stretch them: PADIM's INT8
Mahalanobis distances on the sample data moved enough that the normalised scores crossed the 0.5
boundary and most defective images became "normal" (image F1 0.857 -> 0.667) while AUROC held.
So every INT8 model, and every FP16 export, is checked on the validation split the thresholds
were learned on, against the FP32 model:

1. Both models run on the validation images; each reports its *raw* outputs (the inputs of its
   post-processor: anomaly map and image score, in the model's own units) besides the usual ones.
2. For image scores and for pixels apart, two sets of statistics are compared by how many
   decisions agree with the FP32 model's: the FP32 statistics as they are, and statistics
   recalibrated on the candidate's own raw outputs: min and max of its validation outputs (as
   training sets them) and the threshold that agrees best with the FP32 labels (among equally
   good ones, the nearest to where the FP32 threshold sits within the FP32 min-max range).
   Validation values that lie on the FP32 threshold (within 1e-4 of the value range: a manual
   threshold, or an F1-adaptive one learned before 2026-12-04 at the lowest score, can equal one) have no sure label, as
   even torch and the FP32 IR can disagree there by float rounding; they are left out of every
   agreement.
3. The recalibrated statistics are used only where they agree better (by one image, or by 0.01 %
   of the pixels), also in 5-fold cross-validation on the validation split: where the
   disagreements are per-image noise rather than a shift, a threshold fitted to them agrees worse
   on held-out images (on magnetic_tile, PADIM INT8: 278 against 284 of 292 validation images).
   The candidate's post-processor is then replaced by ``ExportHead`` traced with the statistics
   (the code of every export), spliced onto its raw outputs. (``otx.deploy.optimize``'s
   ``ValidationData.compare`` also keeps the FP32 statistics of a level where the recalibrated
   ones fall shorter of its F1 bar: agreement with many normal pixels can cost F1 on few defects.)

The labels are the FP32 model's, not the ground truth: the aim is the same decisions, and pixel
decisions can be checked even where the data has no masks. Ground truth enters only the figures
reported beside them (AUROC and F1 at the thresholds, per level).
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from otx.errors import OTXError
from otx.postprocess import STAT_KEYS, known_pixel_rows, normalize, stored_between

log = logging.getLogger(__name__)

RAW_MAP, RAW_SCORE = "otx_raw_map", "otx_raw_score"
# Post-processor nodes: ``__module.postprocessor/...`` in ExportGraph and ExportHead alike.
POSTPROCESSOR = re.compile(r"^(__module\.postprocessor\b|/postprocessor/)")  # from torch / from ONNX
PIXEL_SAMPLE = 2_000_000  # validation pixels compared per level (a seeded sample beyond that)
MARGIN = 1e-3  # of the value range: how far above a value a recalibrated threshold sits, at least
BOUNDARY = 1e-4  # of the FP32 value range: reference values this close to the threshold have no sure label
# Agreement a recalibration must add to be used: any image; for pixels 0.01 % (fewer is float noise).
MIN_GAIN = {"image": 0.0, "pixel": 1e-4}
FOLDS = 5  # cross-validation of a recalibration on the validation split


def postprocessor_inputs(ov_model: Any) -> tuple[Any, Any]:
    """The raw ``(anomaly_map, pred_score)`` outputs that feed an otx export's post-processor."""
    names = {op.get_friendly_name() for op in ov_model.get_ops() if POSTPROCESSOR.match(op.get_friendly_name())}
    sources: dict[tuple[str, int], Any] = {}
    constant: dict[str, bool] = {}  # computed from constants only (e.g. FP16 weights and their Convert)
    for op in ov_model.get_ordered_ops():
        name = op.get_friendly_name()
        inputs = [value.get_node().get_friendly_name() for value in op.input_values()]
        constant[name] = op.get_type_name() == "Constant" or (bool(inputs) and all(constant[i] for i in inputs))
        varying = [i for i in inputs if not constant[i]]
        if varying and all(i in names for i in varying):  # computed from the post-processor's values only: a
            names.add(name)  # part of it that OpenVINO named itself (ONNX's Clip becomes Maximum + Clip)
        if name not in names:
            continue
        for value in op.input_values():
            node = value.get_node()
            if not constant[node.get_friendly_name()] and node.get_friendly_name() not in names:
                sources[(node.get_friendly_name(), value.get_index())] = value
    by_rank = {value.get_partial_shape().rank.get_length(): value for value in sources.values()}
    score = by_rank.pop(1, None)
    if len(sources) != 2 or score is None or len(by_rank) != 1:
        raise OTXError(
            "cannot find the post-processor's inputs in this model (not an otx export, or made by an older "
            "otx); re-export it with `otx export`"
        )
    return next(iter(by_rank.values())), score


def postprocessor_disagrees(ov_model: Any, stats: dict[str, float], tolerance: float = 0.01) -> list[str]:
    """The levels (``image``, ``pixel``) whose statistics in the metadata are not those the graph computes with.

    The graph's post-processor alone (from its raw inputs to ``pred_score`` and ``anomaly_map``) is
    run on raw values a quarter of the range below, at and above each threshold of ``stats``; it
    must give 0.25, 0.5 and 0.75 (within ``tolerance``). ``otx test`` and ``otx optimize`` compute
    with the metadata's statistics, ``otx predict`` and the demo with the graph's: a hand-edited
    threshold had them disagree without a word (a bug bash). Empty when they agree, or when the
    post-processor cannot be taken out alone (an export by an older otx).
    """
    import openvino as ov

    if not set(STAT_KEYS) <= set(stats):
        return []
    model = ov_model.clone()
    try:
        raw_map, raw_score = postprocessor_inputs(model)
        parameters = []
        for value in (raw_map, raw_score):
            parameter = ov.opset13.parameter(value.get_partial_shape(), value.get_element_type())
            for target in list(value.get_target_inputs()):
                target.replace_source_output(parameter.output(0))
            parameters.append(parameter)
        head = compile_f32(ov.Model([model.output("pred_score"), model.output("anomaly_map")], parameters))
    except Exception as exc:  # noqa: BLE001 - not separable: nothing to compare
        log.info("the post-processor was not compared with the metadata (%s)", exc)
        return []
    steps = np.array([0.25, 0.5, 0.75], np.float32)

    def probe(level: str) -> np.ndarray:
        low, high = stats[f"{level}_min"], stats[f"{level}_max"]
        return np.float32(stats[f"{level}_threshold"] + (steps - 0.5) * (high - low))

    def slack(level: str) -> float:
        # float32 rounding, in normalised units: of the probes near the threshold, and of the graph's arithmetic
        # (OpenVINO computes x * (1 / range) + (0.5 - threshold / range), whose terms are |x| / range large). A
        # range of a few float32 steps of the threshold moved the answers past the tolerance (refused as edited)
        values = [abs(float(stats[f"{level}_{key}"])) for key in ("threshold", "min", "max")]
        span = max(float(stats[f"{level}_max"]) - float(stats[f"{level}_min"]), 1e-12)
        return 4.0 * float(np.spacing(np.float32(max(values)))) / span

    shape = [3] + [1 if d.is_dynamic else d.get_length() for d in raw_map.get_partial_shape()][1:]
    maps = np.broadcast_to(probe("pixel").reshape(3, *[1] * (len(shape) - 1)), shape)
    out = head([np.ascontiguousarray(maps, np.float32), probe("image")])
    given = {level: np.asarray(out[head.output(i)]).reshape(3, -1) for i, level in enumerate(("image", "pixel"))}
    # a level whose scores have no spread in float32 (image_min == image_max) is not compared: every value is at
    # its threshold, and which side a value lands on is rounding (the export's check names that case itself)
    spread = {level: bool(np.all(np.diff(probe(level)) > 0)) for level in given}
    return [
        level
        for level, values in given.items()
        if spread[level] and np.abs(values - steps[:, None]).max() > tolerance + slack(level)
    ]


def check_postprocessor(ov_model: Any, stats: dict[str, float], path: Any) -> None:
    """One line when the metadata's thresholds are not the graph's (``postprocessor_disagrees``)."""
    if differ := postprocessor_disagrees(ov_model, stats):
        raise OTXError(
            f"'{path}' computes with other {' and '.join(differ)} thresholds than its metadata says (the .xml was "
            "edited or damaged, or is an FP16 export of otx before 2026-12-07, which rounded them), so otx test and "
            "otx predict would disagree; export the model again"
        )


def with_raw_outputs(ov_model: Any) -> Any:
    """A copy of an export with two more outputs, ``otx_raw_map`` and ``otx_raw_score``."""
    model = ov_model.clone()
    raw_map, raw_score = postprocessor_inputs(model)
    for value, name in ((raw_map, RAW_MAP), (raw_score, RAW_SCORE)):
        output = model.add_outputs([value])[0]
        output.get_tensor().add_names({name})
    return model


@dataclass
class RawOutputs:
    """A model's raw validation outputs, with the items' ground truth.

    ``scores [N]`` and ``maps [N, h, w]`` (float32), ``labels [N]`` and ``masks [N, h, w]`` (bool),
    each item's index in its dataset (``indices [N]``) and whether its mask is its truth (``known
    [N]``: not for an anomalous image without a mask file).
    """

    scores: np.ndarray
    maps: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    indices: np.ndarray
    known: np.ndarray

    def take(self, indices: np.ndarray) -> RawOutputs:
        """The outputs of the items with these dataset indices, in that order."""
        position = {int(index): i for i, index in enumerate(self.indices)}
        rows = np.array([position[int(index)] for index in indices], dtype=np.int64)
        return RawOutputs(
            self.scores[rows],
            self.maps[rows],
            self.labels[rows],
            self.masks[rows],
            self.indices[rows],
            self.known[rows],
        )


def raw_outputs(compiled: Any, items: Any) -> RawOutputs:
    """Run a compiled model with raw outputs (``with_raw_outputs``) over dataset items."""
    scores, maps, labels, masks, indices, known = [], [], [], [], [], []
    for item in items:
        if item["error"]:
            raise OTXError(item["error"])
        out = compiled(item["image"].numpy()[None])
        scores.append(float(np.asarray(out[RAW_SCORE]).reshape(-1)[0]))
        raw_map = np.asarray(out[RAW_MAP], dtype=np.float32)
        maps.append(raw_map.reshape(raw_map.shape[-2:]))
        labels.append(int(item["label"]) == 1)
        masks.append(np.asarray(item["mask"], dtype=bool).reshape(maps[-1].shape))
        indices.append(int(item["index"]))
        known.append(bool(item.get("pixel_known", True)))
    return RawOutputs(
        np.asarray(scores, np.float32),
        np.stack(maps),
        np.asarray(labels),
        np.stack(masks),
        np.asarray(indices),
        np.asarray(known, dtype=bool),
    )


def compile_f32(ov_model: Any) -> Any:
    """Compile for the CPU at f32 inference precision (what the comparison must see)."""
    import openvino as ov

    from otx._signal_stack import repair_signal_stack

    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    repair_signal_stack()  # OpenVINO's CPU plugin can leave it unmapped (otx._signal_stack)
    return compiled


def best_threshold(values: np.ndarray, reference: np.ndarray, prior: float) -> tuple[float, float]:
    """The threshold ``t`` on ``values`` whose labels ``values >= t`` agree best with ``reference``.

    Returns ``(t, agreement)``. Every threshold in ``(v[k-1], v[k]]`` (consecutive distinct sorted
    values) gives the same labels; among the intervals with the best agreement, ``t`` is the point
    nearest to ``prior``, or, where ``prior`` lies below an interval, a little above its lower end
    (``MARGIN`` of the value range, at most half the interval), so that no value sits on it.
    """
    order = np.argsort(values, kind="stable")
    v, ref = values[order].astype(np.float64), reference[order].astype(bool)
    n = v.size
    # Threshold in (v[k-1], v[k]] (k = 0..n-1) labels v[k:] anomalous; k = n labels nothing anomalous.
    normal_below = np.concatenate([[0], np.cumsum(~ref)])  # reference-normal among v[:k]
    anomalous_from = np.concatenate([np.cumsum(ref[::-1])[::-1], [0]])  # reference-anomalous among v[k:]
    agree = normal_below + anomalous_from
    valid = np.ones(n + 1, bool)  # only the first of a run of equal values starts an interval
    valid[1:n] = v[1:] != v[:-1]
    span = max(float(v[-1] - v[0]), 1e-12)
    lower = np.concatenate([[v[0] - span], v])  # interval k is (lower[k], upper[k]]
    upper = np.concatenate([v, [v[-1] + span]])
    best = agree[valid].max()
    ties = np.flatnonzero(valid & (agree == best))
    picks = []
    for k in ties:
        lo, hi = lower[k], upper[k]
        if prior > hi:
            picks.append(hi)
        elif prior > lo:
            picks.append(prior)
        else:
            picks.append(lo + min(MARGIN * span, 0.5 * (hi - lo)))
    nearest = int(np.argmin(np.abs(np.asarray(picks) - prior)))
    k = int(ties[nearest])
    # as the float32 the graph stores, kept above the interval's lower end (its value labelled normal): rounded,
    # a pick a few float32 steps above it landed on it and labelled that value anomalous (a review)
    threshold = stored_between(float(lower[k]), float(upper[k]), float(picks[nearest]))
    if not lower[k] < threshold <= upper[k]:  # values float32 does not hold (float64 ones): the pick as it is
        threshold = float(picks[nearest])
    return threshold, float(best) / n


def cross_validated(
    values: np.ndarray, reference: np.ndarray, threshold: float, prior: float, folds: int = FOLDS
) -> tuple[float, float]:
    """Held-out agreement with ``reference`` of the kept ``threshold`` and of ``best_threshold``.

    The items are split into ``folds`` seeded parts; each part is labelled by the threshold that
    ``best_threshold`` fits on the others. A threshold moved to agree with a few flips that float
    noise made (as many images pushed one way as the other, on other images next time) agrees
    worse on held-out items than the kept one; a shift of all scores carries over.
    """
    n = values.size
    parts = np.array_split(np.random.default_rng(0).permutation(n), min(folds, n))
    kept = recalibrated = 0
    for part in parts:
        rest = np.setdiff1d(np.arange(n), part, assume_unique=True)
        fitted = best_threshold(values[rest], reference[rest], prior)[0] if rest.size else threshold
        kept += int(np.sum((values[part] >= threshold) == reference[part]))
        recalibrated += int(np.sum((values[part] >= fitted) == reference[part]))
    return kept / n, recalibrated / n


def _sample_pixels(maps: np.ndarray, limit: int) -> np.ndarray:
    """The seeded pixel sample every comparison of maps of this size uses (drawn once per size)."""
    return _pixel_indices(int(maps.size), limit)


@functools.lru_cache(maxsize=4)
def _pixel_indices(size: int, limit: int) -> np.ndarray:
    if size <= limit:
        return np.arange(size)
    indices = np.sort(np.random.default_rng(0).choice(size, size=limit, replace=False))
    indices.flags.writeable = False  # shared between callers
    return indices


@dataclass
class Decisions:
    """The outcome of ``calibrate_decisions``: the statistics to use and what they were chosen on."""

    stats: dict[str, float]
    recalibrated: list[str] = field(default_factory=list)  # "image", "pixel": levels whose statistics changed
    agreement_kept: dict[str, float] = field(default_factory=dict)  # per level, with the FP32 statistics
    agreement: dict[str, float] = field(default_factory=dict)  # per level, with the chosen statistics
    cross_validated: dict[str, dict[str, float]] = field(default_factory=dict)  # held-out agreement, per level


def calibrate_decisions(
    reference: RawOutputs, candidate: RawOutputs, stats: dict[str, float], pixel_level: bool = True
) -> Decisions:
    """Statistics for ``candidate`` whose validation decisions agree best with ``reference``'s.

    ``stats`` are the reference's raw thresholds and min/max (``PostProcessor.stats()``);
    ``pixel_level`` False (classification: no masks or boxes are drawn) checks the image level only.
    """
    chosen = dict(stats)
    result = Decisions(stats=chosen)
    levels = {"image": (reference.scores, candidate.scores)}
    if pixel_level:
        pixels = _sample_pixels(reference.maps, PIXEL_SAMPLE)
        levels["pixel"] = (reference.maps.reshape(-1)[pixels], candidate.maps.reshape(-1)[pixels])
    for level, (ref, cand) in levels.items():
        threshold, vmin, vmax = (stats[f"{level}_{key}"] for key in ("threshold", "min", "max"))
        ref_labels, sure = sure_labels(ref, stats, level)
        kept = _agreement(cand >= threshold, ref_labels, sure)
        result.agreement_kept[level] = kept
        result.agreement[level] = kept
        if not sure.any() or kept == 1.0:
            continue
        finite = cand[np.isfinite(cand)]  # the min-max of the finite values, as training takes it (PostProcessor.fit)
        if not finite.size:
            continue  # nothing finite to normalise by: the statistics stay (the check says how the labels moved)
        cmin, cmax = float(finite.min()), float(finite.max())
        ref_labels, cand = ref_labels[sure], cand[sure]
        prior = cmin + (threshold - vmin) / max(vmax - vmin, 1e-12) * (cmax - cmin)
        cv_kept, cv_recalibrated = cross_validated(cand, ref_labels, threshold, prior)
        result.cross_validated[level] = {"kept": cv_kept, "recalibrated": cv_recalibrated}
        if cv_recalibrated - cv_kept <= MIN_GAIN[level]:
            continue  # the disagreements are noise: a threshold fitted to them does not carry over
        new_threshold, agreement = best_threshold(cand, ref_labels, prior)
        if agreement - kept > MIN_GAIN[level]:
            chosen.update({f"{level}_threshold": new_threshold, f"{level}_min": cmin, f"{level}_max": cmax})
            result.recalibrated.append(level)
            result.agreement[level] = agreement
    return result


def replace_postprocessor(ov_model: Any, stats: dict[str, float]) -> Any:
    """A new model: ``ov_model``'s raw outputs followed by ``ExportHead`` with ``stats``.

    ``ov_model`` is an otx export (with or without ``with_raw_outputs``); the result has exactly
    the four outputs of an export, named as ``otx export`` names them (metadata is the caller's).
    """
    import openvino as ov

    from otx.deploy.export import name_io
    from otx.deploy.graph import ExportHead, convert_model
    from otx.postprocess import PostProcessor

    model = ov_model.clone()
    raw_map, raw_score = postprocessor_inputs(model)
    post = PostProcessor()
    for key in STAT_KEYS:
        getattr(post, key).fill_(float(stats[key]))
    rank = raw_map.get_partial_shape().rank.get_length()
    example = (torch.rand(1, *([1] if rank == 4 else []), 8, 8), torch.rand(1))
    with torch.no_grad():
        head = convert_model(
            ExportHead(post).eval(),
            example_input=example,
            input=[ov.PartialShape([-1] * rank), ov.PartialShape([-1])],
        )
    for parameter, source in zip(head.get_parameters(), (raw_map, raw_score), strict=True):
        for target in parameter.output(0).get_target_inputs():
            target.replace_source_output(source)
    spliced = ov.Model(head.get_results(), model.get_parameters(), model.get_friendly_name())
    name_io(spliced)
    return spliced


def level_metrics(
    outputs: RawOutputs,
    stats: dict[str, float],
    reference_labels: dict[str, np.ndarray],
    use_masks: bool,
    pixel_level: bool = True,
) -> dict[str, float]:
    """AUROC, F1 at the thresholds and agreement with the reference labels, image and pixel level.

    ``reference_labels`` holds the FP32 model's ``image`` labels ``[N]`` and ``pixel`` labels (of
    the pixels ``_sample_pixels`` picks). AUROC and F1 need normal and anomalous images (pixels).
    ``pixel_level`` False: the image level alone (classification).
    """
    from otx.metrics import f1_at, roc_auc

    image_pred = outputs.scores >= stats["image_threshold"]
    figures = {}
    if outputs.labels.any() and not outputs.labels.all():
        figures["image_AUROC"] = roc_auc(outputs.scores, outputs.labels)
        figures["image_F1"] = f1_at(image_pred, outputs.labels)
    figures["image_label_agreement"] = _agreement(image_pred, *reference_labels["image"])
    figures.update(image_margins(outputs.scores, outputs.labels, stats))
    if not pixel_level:
        return figures
    pixels = _sample_pixels(outputs.maps, PIXEL_SAMPLE)
    pixel_pred = outputs.maps.reshape(-1)[pixels] >= stats["pixel_threshold"]
    # ground truth: the images whose mask is their truth (as otx test and the validation threshold)
    maps, masks = outputs.maps, outputs.masks
    if (rows := known_pixel_rows(outputs.known, outputs.labels.astype(int))) is not None:
        maps, masks = maps[rows], masks[rows]
    if use_masks and masks.any() and not masks.all():
        figures["pixel_AUROC"] = roc_auc(maps, masks)
        figures["pixel_F1"] = f1_at(maps >= stats["pixel_threshold"], masks)
    figures["pixel_label_agreement"] = _agreement(pixel_pred, *reference_labels["pixel"])
    return figures


def image_margins(scores: np.ndarray, labels: np.ndarray, stats: dict[str, float]) -> dict[str, float]:
    """How far the images of each kind lie from the threshold, as users see scores (normalised, 0.5 the threshold).

    ``image_margin_anomalous``: the median normalised score of the anomalous images minus 0.5;
    ``image_margin_normal``: 0.5 minus that of the normal ones (each only where there are such
    images). A converted model that keeps every label can still squeeze the images of a kind onto
    the threshold, where new images of that kind fall on the wrong side (``margin_warning``).
    """
    normalised = normalize(scores, *(stats[f"image_{key}"] for key in ("threshold", "min", "max")))
    labels = labels.astype(bool)
    margins = {}
    if labels.any():
        margins["image_margin_anomalous"] = float(np.median(normalised[labels])) - 0.5
    if not labels.all():
        margins["image_margin_normal"] = 0.5 - float(np.median(normalised[~labels]))
    return margins


def _agreement(predicted: np.ndarray, reference: np.ndarray, sure: np.ndarray) -> float:
    """Share of the items with a sure reference label (``sure_labels``) whose labels agree."""
    return float(np.mean(predicted[sure] == reference[sure])) if sure.any() else 1.0


def sure_labels(values: np.ndarray, stats: dict[str, float], level: str) -> tuple[np.ndarray, np.ndarray]:
    """A reference model's labels of ``values`` at ``level`` (``image``/``pixel``), and which are sure.

    Values on the threshold (a manual threshold may equal a validation score) get either label from
    float noise alone, even between FP32 runtimes: within ``BOUNDARY`` of the value range of the
    threshold, a label is not sure and is left out of every agreement.
    """
    threshold, vmin, vmax = (stats[f"{level}_{key}"] for key in ("threshold", "min", "max"))
    return values >= threshold, np.abs(values - threshold) > BOUNDARY * max(vmax - vmin, 1e-12)


def reference_labels(outputs: RawOutputs, stats: dict[str, float]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The reference model's image labels and sampled pixel labels, with which are sure (``sure_labels``)."""
    pixels = _sample_pixels(outputs.maps, PIXEL_SAMPLE)
    return {
        "image": sure_labels(outputs.scores, stats, "image"),
        "pixel": sure_labels(outputs.maps.reshape(-1)[pixels], stats, "pixel"),
    }
