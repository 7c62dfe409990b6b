"""``otx test``: metrics on the test split (unreadable images listed, not scored) and the HTML report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from otx import distributed
from otx.checks import mask_coverage_warning, profile_warnings, threshold_warnings, unmasked_warning
from otx.data.dataset import Sample, narrow_sixteen_bit_warning
from otx.errors import OTXDataError, OTXError
from otx.metrics import image_decisions
from otx.report import ReportInput, write_report
from otx.results import TestResult, recorded_path
from otx.scoring import OpenVINOScorer
from otx.tasks import Prediction
from otx.verbs.context import VerbContext, peak_memory_mb, write_result
from otx.verbs.inference import (
    collect,
    drop_maps,
    evaluate,
    iter_predictions,
    marks_nothing,
    metric_divisor,
    pixel_range,
    prediction_counts,
    to_predictions,
    unmarked_note,
    verb_pixel_budget,
)
from otx.verbs.resolve import eval_data, require_data, resolve_model, untuned_boxes
from otx.workdir import Run

log = logging.getLogger("otx")


def unread_types(samples: list[Sample], errors: list[str], scored: list[Sample]) -> dict[str, int]:
    """Labelled types (folders) none of whose images could be read, with how many images each has.

    They have no row in the per-defect table (before, such a type vanished from it without a word).
    """
    read = {s.defect for s in scored}
    counts: dict[str, int] = {}
    for sample, error in zip(samples, errors, strict=True):
        if error and sample.label >= 0 and sample.defect not in read:
            counts[sample.defect] = counts.get(sample.defect, 0) + 1
    return counts


def truth(sample: Sample) -> dict[str, str]:
    """An image's ground truth in ``otx test``'s predictions.json: ``true_label`` and ``defect`` (its folder)."""
    if sample.label < 0:  # test/unknown/: scored, no truth
        return {"true_label": "unknown", "defect": sample.defect}
    return {"true_label": "anomalous" if sample.label == 1 else "normal", "defect": sample.defect}


def run(ctx: VerbContext, run: Run, checkpoint: str | Path | None, devices: int = 1, num_nodes: int = 1) -> TestResult:
    """Evaluate a checkpoint or exported model on the test split; write metrics.json, predictions.json, report.

    With ``devices`` x ``num_nodes`` > 1 the test images are split between that many processes
    (``otx.distributed.launch``); rank 0 computes the metrics on all outputs and writes the files.
    """
    scorer = resolve_model(ctx, checkpoint, raw_outputs=True)  # a missing model: reported before other processes start
    distributed.launch(devices, num_nodes)
    adapter = ctx.adapter(scorer.task)
    if message := untuned_boxes(scorer, adapter):
        ctx.warn(message)
    if isinstance(scorer, OpenVINOScorer) and not scorer.inferencer.raw_outputs:
        ctx.warn(
            f"{scorer.source} was exported by an older otx: its metrics come from its normalised outputs, which "
            "tie scores half a range beyond the thresholds (pixel metrics can read lower); re-export it for exact ones"
        )
    data = require_data(eval_data(ctx, scorer.data_info), "no data to test on")
    ctx.save_config(run, adapter.task.value, scorer.model_entry(), {"checkpoint": str(scorer.source)}, data=data)
    test = data.splits["test"]
    if not any(s.label >= 0 for s in test):
        raise OTXError("no labelled test images (test/good, test/<defect>); nothing to evaluate")
    if narrow := narrow_sixteen_bit_warning([s.path for s in test], data.data_root, "test"):
        ctx.warn(narrow)
    start = time.perf_counter()
    outputs, errors = collect(ctx, data, scorer, test, "test", skip_errors=True)
    infer_s = time.perf_counter() - start
    if isinstance(scorer, OpenVINOScorer):  # inference is over: its buffers are not held through the metrics
        scorer.inferencer.release_memory()
    predictions, unmarked = [], []
    for prediction in iter_predictions(adapter, scorer, outputs, test, errors):
        if marks_nothing(adapter, prediction):
            unmarked.append(prediction)
        # (840 MB for 14 images of 3000x4000; the report makes again the few it draws: full_prediction)
        predictions.append(drop_maps(prediction))
    if unmarked:
        defects = {s.path for s in test if s.label == 1}
        missed = sum(p.image_path in defects for p in unmarked)  # (normal images labelled anomalous are false alarms)
        boxes = missed and adapter.box_level
        more = f"; the box metrics count the defects of {missed} of them as missed" if boxes else ""
        ctx.console.print(unmarked_note(adapter, unmarked, more))
    # an unreadable image: no decision (Prediction.unreadable), left out of the metrics (listed in metrics.json, report)
    for error in filter(None, errors):
        log.warning("not scored: %s", error)
    for message in profile_warnings(scorer.data_info.get("profile"), [s.path for s in test], "test"):
        ctx.warn(message)
    readable = [s for s, error in zip(test, errors, strict=True) if not error]  # (the unreadable are said above)
    if data.has_masks and adapter.pixel_level and (message := unmasked_warning(readable, "test")):
        ctx.warn(message)
    if not data.has_masks and adapter.pixel_level:  # in metrics.json and the report: why their rows are missing
        ctx.warn(
            f"the data has no ground_truth/ folder: pixel{' and box' if adapter.box_level else ''} metrics are "
            "unavailable, image metrics only (masks go in ground_truth/<defect>/<name>_mask.png)"
        )
    keep = np.array([s.label >= 0 and not e for s, e in zip(test, errors, strict=True)])
    if not keep.any():
        raise OTXDataError(
            f"none of the labelled test images could be read (first: {next(e for e in errors if e)}); "
            "replace or remove the files"
        )
    scored = [s for s, k in zip(test, keep, strict=True) if k]
    scored_predictions = [p for p, k in zip(predictions, keep, strict=True) if k]
    # every image read (the usual case): the outputs as they are, not a copy (76 MB of maps on magnetic_tile)
    scored_outputs = outputs if keep.all() else {k: v[torch.from_numpy(keep)] for k, v in outputs.items()}

    def full_prediction(i: int) -> Prediction:
        """Scored image ``i``'s prediction with its full-size map and mask, as made above."""
        one = {key: value[i : i + 1] for key, value in scored_outputs.items()}
        return to_predictions(adapter, scorer, one, [scored[i]])[0]

    start = time.perf_counter()
    metrics, per_type = evaluate(
        ctx,
        adapter,
        data.has_masks,
        scorer.thresholds,
        scored_outputs,
        scored,
        scorer.preprocessor,
        predictions=scored_predictions,
        by_defect=True,
        pixel_range=pixel_range(scorer),
    )
    metrics_s = time.perf_counter() - start
    labels = scored_outputs["labels"].numpy() == 1
    image_threshold = scorer.thresholds[0]
    decisions = image_decisions(scored_outputs["scores"].numpy(), labels, image_threshold)
    origin = scorer.threshold_origin()  # (metrics.json, the report, and whether the image threshold was given)
    given = origin.get("image", "").startswith("given")
    for message in threshold_warnings(
        scored_outputs["scores"].numpy(), labels, image_threshold, "image", "test", given=given
    ):
        ctx.warn(message)
    if data.has_masks and adapter.pixel_level:
        known = [s.mask_path is not None for s in scored]
        covered = mask_coverage_warning(scored_outputs["masks"].numpy(), labels, known, "test")
        if covered:
            ctx.warn(covered)
        # pixels of normal images and of masked defect images, at the map size, as training checks validation
        usable = torch.tensor([not label or has for label, has in zip(labels, known, strict=True)])
        if labels[usable.numpy()].any():  # (before: only the image level was checked here)
            maps, masks = scored_outputs["maps"], scored_outputs["masks"]
            if not usable.all():  # a copy only then
                maps, masks = maps[usable], masks[usable]
            # the AUROC of these pixels is evaluate's pixel_AUROC_input (the same rows): not sorted again;
            # without it (more pixels than the metrics' budget) every step-th row and column is checked
            auroc = metrics.get("pixel_AUROC_input")
            step = 1 if auroc is not None else metric_divisor(maps.numel(), verb_pixel_budget(ctx))
            found = threshold_warnings(
                maps.numpy()[..., ::step, ::step],
                masks.numpy()[..., ::step, ::step],
                scorer.thresholds[1],
                "pixel",
                "test",
                auroc=auroc,
            )
            for message in found:
                ctx.warn(message)
    errors_list = [{"image": p.image_path, "error": p.error} for p in predictions if p.error]
    splits = data.split_summary()
    if errors_list:  # files of the test split (counted above under their folder) that could not be read
        splits["test"] = {**splits["test"], "unreadable": len(errors_list)}
    report = write_report(
        run.path,
        ReportInput(
            task=adapter.task.value,
            model=scorer.name,
            backbone=scorer.backbone,
            source=recorded_path(scorer.source),  # readable on its own, as the data root
            runtime=scorer.runtime_info(),
            metrics=metrics,
            per_defect=per_type,
            splits=splits,
            samples=scored,
            predictions=scored_predictions,
            full_prediction=full_prediction,
            scores=scored_outputs["scores"].numpy(),
            errors=errors_list,
            warnings=list(ctx.warnings),
            thresholds=scorer.stats(),
            threshold_origin=origin,
            data_root=str(Path(data.data_root).expanduser().resolve())
            if data.data_root
            else "",  # (read without its folder)
            validation=data.validation_record(),
            input_mode=scorer.preprocessor.describe(),
            boxes=scorer.boxes.as_dict() if adapter.box_level else None,
            date=time.strftime("%Y-%m-%d %H:%M %Z"),
            unread_types=unread_types(test, errors, scored),
            decisions=decisions,
        ),
    )
    result = TestResult(
        task=adapter.task.value,
        model=scorer.name,
        backbone=scorer.backbone,
        checkpoint=str(scorer.source),
        runtime=scorer.runtime_info(),
        metrics=metrics,
        per_defect=per_type,
        splits=splits,
        thresholds=scorer.stats(),
        threshold_origin=origin,
        counts=prediction_counts(predictions),
        errors=errors_list,
        timing_s={"inference_s": round(infer_s, 2), "metrics_s": round(metrics_s, 2)},
        peak_memory_mb=peak_memory_mb(),
        warnings=list(ctx.warnings),
        report=str(report),
        boxes=scorer.boxes.as_dict() if adapter.box_level else None,
        input=scorer.preprocessor.config(),
        validation=data.validation_record(),
        decisions=decisions,
    )
    write_result(run, result)
    # with each image's truth: its folder under test/ (good: normal), so misses and false alarms are listed
    run.write_json("predictions.json", [p.to_json() | truth(s) for p, s in zip(predictions, test, strict=True)])
    return result
