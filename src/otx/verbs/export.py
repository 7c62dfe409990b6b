"""``otx export``: a checkpoint to OpenVINO IR or ONNX with pre- and post-processing inside, checked against torch."""

from __future__ import annotations

import copy
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from otx.checkpoint import latest_checkpoint, load_checkpoint, model_entry
from otx.deploy.inferencer import is_exported_model
from otx.errors import OTXDataError, OTXError, for_caller
from otx.models.base import AnomalyModel
from otx.results import ExportResult
from otx.scoring import TorchScorer
from otx.verbs.context import VerbContext, write_result
from otx.verbs.resolve import config_notes, eval_data, one_sided_warning, untuned_boxes_of, validation_set
from otx.workdir import Run

log = logging.getLogger("otx")

PROBE_IMAGES = 8  # validation images the export is checked against torch on (half normal, half anomalous)
PROBE_PIXELS = 16_000_000  # at most this many pixels of them (one 4000x3000 image is 12 M)


def run(
    ctx: VerbContext, run: Run, checkpoint: str | Path | None, export_format: str, precision: str, demo_package: bool
) -> ExportResult:
    """Export; an FP16 IR's decisions are checked against FP32 on the validation split (and recalibrated)."""
    from otx.deploy.export import check_inferencer, check_warning, compare_with_torch, export_model
    from otx.deploy.optimize import decision_warning, margin_warning
    from otx.deploy.package import write_demo_package

    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(ctx.workdir)
    if is_exported_model(path):
        raise OTXError(f"'{path}' is already exported; pass the model.ckpt it came from")
    if path.suffix.lower() == ".bin":  # (load_checkpoint's advice, its .xml, is refused just above)
        raise OTXError(f"'{path}' is the weights file of an exported OpenVINO IR; pass the model.ckpt it came from")
    model, ckpt = load_checkpoint(path)
    config_notes(ctx, path, TorchScorer(model, path, ckpt.get("task"), ckpt.get("data")))
    adapter = ctx.adapter(ckpt.get("task"))
    task = adapter.task.value
    ctx.save_config(
        run,
        task,
        model_entry(model),
        {"checkpoint": str(path), "format": export_format, "precision": precision},
    )
    ctx.console.print(f"checkpoint: {escape(str(path))}")
    # Validation images check the export (and an FP16 IR's decisions); a bad data root stops before a file is written.
    record = ckpt.get("data") or {}
    try:
        data = eval_data(ctx, record, must_exist=True, purpose="check")
        if data is None:  # the recorded folder is gone (moved, or on another machine), or none was recorded
            recorded = record.get("data_root")
            gone = f"the training data '{recorded}' is gone" if recorded else "the checkpoint records no training data"
            raise OTXDataError(
                f"{gone}; pass --data_root DIR (the data the model was trained on)"
                + (": an FP16 export's decisions are checked on its validation split" if precision == "FP16" else "")
            )
        validation = validation_set(data, adapter.pixel_level, model.preprocessor)
        if precision == "FP16" and (message := one_sided_warning(validation, "FP16", data.data_root)):
            ctx.warn(message)
    except OTXDataError as exc:  # the recorded data gone or damaged since: an FP32 export does without it
        if precision == "FP16" or ctx.data.data_root is not None:
            raise
        ctx.warn(f"the export is checked against torch on noise only: the training data cannot be used ({exc})")
        data = validation = None
    start = time.perf_counter()
    if message := untuned_boxes_of(ckpt.get("task"), adapter, (ckpt.get("data") or {}).get("has_masks")):
        ctx.warn(message)  # before: an export for detection from another task's checkpoint said nothing
    exported = export_model(
        model, run.path, task, export_format, precision, data=ckpt.get("data"), trained_task=ckpt.get("task")
    )
    export_s = time.perf_counter() - start
    decisions = check_fp16(model, exported, validation, data is not None) if precision == "FP16" else None
    if decisions is not None:  # (before: recorded, never said; the summary pointed at a warning that did not exist)
        for message in (decision_warning(decisions, "FP16"), margin_warning(decisions, "FP16")):
            if message:
                ctx.warn(message)
    # Check the file that was written, through OpenVINO, against torch on real images at their own
    # size where the training data is at hand, and on one image of noise of another size.
    probes, probe = probe_images(model, validation)
    reference = model
    if decisions is not None and decisions.get("recalibrated"):  # the IR's thresholds moved on purpose: torch's too
        reference = copy.deepcopy(model)
        for name, value in decisions["stats"].items():
            getattr(reference.postprocessor, name).fill_(float(value))
        probe += " (torch with the recalibrated thresholds)"
    check = {"probe": probe, **compare_with_torch(reference, check_inferencer(exported), probes)}
    if message := check_warning(check, precision, reference.postprocessor.stats(), exported):
        ctx.warn(message)
    result = ExportResult(
        task=task,
        model=type(model).__name__,
        backbone=model.spec.name,
        checkpoint=str(path),
        format=export_format,
        precision=precision,
        exported_model=str(exported),
        check_against_torch=check,
        timing_s={"export_s": round(export_s, 2)},
        decisions=decisions,
        thresholds=decisions["stats"] if decisions is not None else None,
        demo_package=str(write_demo_package(exported, run.path / "demo_package.zip")) if demo_package else None,
        warnings=list(ctx.warnings),
    )
    write_result(run, result)
    return result


def probe_images(model: AnomalyModel, validation: Any) -> tuple[list[np.ndarray], str]:
    """Images to compare the export with torch on, and a line saying which.

    Up to ``PROBE_IMAGES // 2`` normal and as many anomalous validation images, at their own size
    (their scores lie on both sides of the threshold, where a difference changes decisions), and
    one image of noise of another size than the input size (a real resize in the graph). Noise
    alone proves little about scores: every model scores it far above the threshold, clipped to 1.
    """
    height, width = model.input_size
    noise = np.random.default_rng(0).random((3, height + 37, width + 21), dtype=np.float32)
    if validation is None:
        return [noise], "1 noise image (no validation images at hand)"
    samples = validation.items.samples
    normal = [i for i, s in enumerate(samples) if s.label == 0][: PROBE_IMAGES // 2]
    anomalous = [i for i, s in enumerate(samples) if s.label == 1][: PROBE_IMAGES // 2]
    # alternately, so that a pixel budget reached early still leaves both kinds
    chosen = [i for pair in itertools.zip_longest(normal, anomalous) for i in pair if i is not None]
    images: list[np.ndarray] = []
    pixels = 0
    for index in chosen:
        item = validation.items[index]
        if item["error"]:
            raise OTXError(item["error"])
        image = item["image"].numpy()
        pixels += image.shape[1] * image.shape[2]
        if images and pixels > PROBE_PIXELS:  # large images (tile mode): a few are enough, all are held at once
            break
        images.append(image)
    return [*images, noise], f"{len(images)} validation images and 1 noise image"


def check_fp16(model: AnomalyModel, path: Path, validation: Any, data_at_hand: bool) -> dict[str, Any]:
    """Check an FP16 IR's decisions against the FP32 model's on the validation split; recalibrate it."""
    import openvino as ov

    from otx.deploy.calibrate import with_raw_outputs
    from otx.deploy.export import save_ir, to_openvino
    from otx.deploy.metadata import read_ir_info, with_stats
    from otx.deploy.optimize import keep_decisions

    stats = model.postprocessor.stats()
    if not data_at_hand:
        message = "the FP16 model's decisions were not checked: the training data is not at hand; pass --data_root DIR"
        log.warning(for_caller(message))
        return {"checked": False, "reason": "no data", "stats": stats}
    if validation is not None:
        validation.set_reference(with_raw_outputs(to_openvino(model)), stats)
    fp16 = ov.Core().read_model(str(path))
    info = read_ir_info(fp16)
    final, record = keep_decisions(with_raw_outputs(fp16), validation, stats)
    if record.get("recalibrated"):  # rewrite the IR with the recalibrated post-processor
        meta = with_stats(info, record["stats"])
        meta["otx_recalibrated"] = ",".join(record["recalibrated"])
        save_ir(final, meta, path, fp16=True)
    return record
