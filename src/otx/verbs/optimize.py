"""``otx optimize``: INT8 with NNCF, calibrated on training images, decisions kept against FP32."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from otx.boxes import BoxSettings
from otx.checkpoint import latest_checkpoint, load_checkpoint
from otx.deploy.inferencer import is_exported_model
from otx.errors import OTXDataError, OTXError, for_caller
from otx.results import OptimizeResult, recorded_path
from otx.verbs.context import VerbContext, write_result
from otx.verbs.resolve import eval_data, one_sided_warning, unfinished_run, validation_set, warn_other_model
from otx.workdir import Run, WorkDir, run_order, training_checkpoint, training_data_root

log = logging.getLogger("otx")


FEW_CALIBRATION = 32  # calibration images below which a --subset_size (smaller than the training set) is warned


def source_model(workdir: WorkDir, checkpoint: str | Path | None) -> Path:
    """The model to quantise: the given one, else the newer of the latest IR export and training run.

    ONNX exports are passed over (INT8 takes the OpenVINO IR): the latest export run that finished
    and holds an ``exported_model.xml`` counts, whether or not it is the latest export. Runs that
    did not finish (interrupted: ``FAILED``, or without a result) and folders not named as otx
    names runs are not sources (before: the newest ``*-export*`` folder by name, an interrupted
    export's unchecked IR included; bug bash).
    """
    if checkpoint is not None:
        return Path(checkpoint).expanduser()
    train = workdir.latest("train")
    if train is None and workdir.pointer_problem("train"):
        # latest.json unreadable, or naming a run that is gone: one line naming the newest model trained there
        # (before: the newest export was quantised without a word, though a newer model may have been trained)
        return latest_checkpoint(workdir)
    if train is None and (trained := workdir.finished("train")):  # latest.json names no training run: the newest one
        train = trained[-1]
    exports = [
        run / "exported_model.xml"
        for run in workdir.finished("export")
        if (run / "exported_model.xml").is_file() and (run / "exported_model.bin").is_file()
    ]
    if exports:
        export = exports[-1]
        if train is None or run_order(export.parent.name) > run_order(train.name):
            return export
    return latest_checkpoint(workdir)


def run(
    ctx: VerbContext,
    run: Run,
    checkpoint: str | Path | None,
    subset_size: int | None,
    max_drop: float | None,
    weight_bits: str | int = "auto",
    fallback: bool = True,
) -> OptimizeResult:
    """Quantise; ``max_drop`` turns on NNCF's accuracy control on the validation split.

    ``weight_bits``: 7, 8 or ``auto`` (8 where this CPU has VNNI or AMX, else 7). ``fallback``:
    when the model's scheme does not keep the validation decisions, quantise again with the
    scheme's fallbacks (more of the model in float) and keep the first that does (or, if none
    does, the one whose decisions come closest); not with ``max_drop``.
    """
    import nncf

    from otx.data.datamodule import AnomalyDataset
    from otx.deploy.calibrate import with_raw_outputs
    from otx.deploy.export import export_model
    from otx.deploy.optimize import (
        attempt_record,
        attempt_text,
        best_attempt,
        choose_calibration,
        decision_warning,
        fell_beyond,
        margin_warning,
        max_drop_warning,
        read_exported,
        resolve_weight_bits,
        save_optimized,
        scheme_for,
    )

    bits = resolve_weight_bits(weight_bits)

    source = source_model(ctx.workdir, checkpoint)
    if message := unfinished_run(source):
        ctx.warn(message)
    data_record: dict[str, Any] = {}
    trained = None  # the training checkpoint the model comes from, where the runs say it
    if not is_exported_model(source):  # a checkpoint: export the FP32 IR first, into this run
        trained = Path(source)
        model, ckpt = load_checkpoint(source)
        data_record = ckpt.get("data") or {}
        ctx.console.print(f"checkpoint: {escape(str(source))} (exporting an FP32 IR first)")
        source = export_model(model, run.path, ctx.adapter(ckpt.get("task")).task.value, data=data_record)
    ov_model, info, source = read_exported(source)
    trained = trained or training_checkpoint(source)
    warn_other_model(ctx, source, info.model_name, info.backbone)
    # The model the INT8 one is checked against: an FP16 export's decisions were themselves checked
    # against FP32 (and its thresholds recalibrated) when it was exported, so name it as what it is.
    against = "FP32" if info.precision == "FP32" else f"{info.precision} IR"
    adapter = ctx.adapter(info.task)
    data_info = {**info.data_record(), "data_root": data_record.get("data_root") or training_data_root(source)}
    data = eval_data(ctx, data_info, purpose="check")
    if data is None:
        raise OTXDataError(
            "INT8 calibration needs the training images, and no run folder beside the model says where they "
            "are (a model copied out of its work directory); pass --data_root DIR (the folder with train/good)"
        )
    preprocess = info.preprocessor()  # masks at the map size; the graph pre-processes the images
    validation = validation_set(data, adapter.pixel_level, preprocess)
    train = data.splits["train"]
    scheme = scheme_for(info)
    if subset_size is None:  # the model's own default
        subset_size = scheme.calibration_images
    chosen = choose_calibration(train, subset_size, ctx.seed)
    if len(chosen) < min(FEW_CALIBRATION, len(train)):  # asked for: before, --subset_size 1 went without a word
        ctx.warn(
            f"calibrating on {len(chosen)} of the {len(train)} training images (--subset_size {subset_size}): "
            f"activation ranges from so few rarely hold on other images; {scheme.calibration_images} (this model's "
            "default) or all there are"
        )
    calibration = AnomalyDataset(chosen, preprocess, resize_images=False)
    val_labels = {s.label for s in validation.items.samples} if validation is not None else set()
    if max_drop is not None and not {0, 1} <= val_labels:
        raise OTXDataError(
            "accuracy control needs normal and anomalous validation images; add test/good and test/<defect> "
            "folders (or val/), or leave out --max_drop"
        )
    if message := one_sided_warning(validation, "INT8", data.data_root):
        ctx.warn(message)
    ctx.save_config(
        run,
        adapter.task.value,
        {"exported_model": str(source), "model_info": dict(info.raw)},
        {
            "checkpoint": str(source),
            **({"trained_checkpoint": recorded_path(trained)} if trained is not None else {}),
            "subset_size": subset_size,
            "max_drop": max_drop,
            "weight_bits": bits,
            "fallback": fallback,
        },
        data=data,
    )
    n_val = len(validation.items) if validation is not None else 0
    ctx.console.print(
        f"[bold]otx optimize[/]: {escape(f'{info.model_name} ({info.backbone}) from {source}')}, calibrating on "
        f"{len(chosen)} of {len(train)} train/good images"
        + (f" and the {n_val} validation images" if scheme.calibrate_with_validation and n_val else "")
        + (f", accuracy control (max drop {max_drop}) on {n_val} validation images" if max_drop else "")
        + f", {bits}-bit weights"
        + (" (auto: this CPU " + ("has" if bits == 8 else "lacks") + " VNNI)" if weight_bits == "auto" else "")
    )
    if max_drop is not None:  # NNCF ranks the quantised layers, then returns them to float one by one
        ctx.console.print(
            "note: accuracy control evaluates the model on the validation images once per layer it ranks and "
            "again after each layer it returns to float: it takes many times a plain optimize (a 30-image "
            "PatchCore: 16 s without, over 200 s with); NNCF's own bars show each pass"
        )
        if scheme.fallback is not None and fallback:
            ctx.console.print(
                for_caller(
                    f"note: with --max_drop NNCF chooses what stays float; {scheme.name}'s fallback scheme is not tried"
                )
            )
    if against != "FP32":
        ctx.console.print(
            f"note: {escape(source.name)} is an {against}; the INT8 model is checked against it, not against FP32 "
            "(for that, pass the model.ckpt or an FP32 export)"
        )
    reference = with_raw_outputs(ov_model)
    if validation is not None:
        start = time.perf_counter()
        validation.set_reference(reference, info.stats())
        log.info("%s outputs on %d validation images in %.1f s", against, n_val, time.perf_counter() - start)
    ladder = scheme.ladder() if max_drop is None and fallback else [scheme]
    attempts = quantize_ladder(ctx, reference, ladder, calibration, validation, max_drop, bits, info.stats(), against)
    quantized, record, decisions = attempts[best_attempt([a[2] for a in attempts])]
    if len(attempts) > 1:
        faster = ""
        if record["scheme"] != scheme.name:  # a fallback with more nodes float is slower; one with other ranges is not
            kept = next(s for s in ladder if s.name == record["scheme"])
            slower = kept.float_nodes(reference) > scheme.float_nodes(reference)
            why = "the first scheme's model is faster: " if slower else ""
            faster = f" ({why}--fallback false keeps it)"
        ctx.console.print(for_caller(f"kept: {record['scheme']}{faster}"))
    tried = [attempt_record(r, d) for _, r, d in attempts]
    quantization = record["scheme"] + ("+accuracy-control" if max_drop is not None else "")
    scheme_summary = record["scheme_summary"] + (
        f"; NNCF accuracy control, max drop {max_drop}" if max_drop is not None else ""
    )
    path = save_optimized(
        quantized,
        info,
        run.path,
        {
            "otx_quantization": quantization,
            "otx_quantization_summary": scheme_summary,
            "otx_calibration": f"{len(chosen)} of {len(train)} train/good images (seed {ctx.seed})"
            + (
                f" and the {with_val} validation images"
                if (with_val := record["validation_calibration_images"])
                else ""
            ),
            "otx_nncf_version": nncf.__version__,
            # with its run folder: every export is called exported_model.xml (a bug bash); not the whole path,
            # which would carry this machine's folders inside a model that is shipped
            "otx_quantized_from": f"{Path(source).parent.name}/{Path(source).name}",
            "otx_weight_bits": str(bits),
            # with the FP16 export's own moves, when the INT8 model starts from one (its thresholds are those)
            "otx_recalibrated": ",".join(dict.fromkeys([*info.recalibrated, *decisions.get("recalibrated", [])]))
            or "none",
            **({"otx_max_drop": str(max_drop)} if max_drop is not None else {}),
            **({"otx_int8_attempts": "; ".join(attempt_text(t) for t in tried)} if len(tried) > 1 else {}),
        },
        stats=decisions["stats"],
    )
    if max_drop is None and (warning := decision_warning(decisions)):
        ctx.warn(warning)
    elif max_drop is not None and (warning := max_drop_warning(decisions, max_drop)):
        ctx.warn(warning)
    if warning := margin_warning(decisions):
        ctx.warn(warning)
    if adapter.box_level and validation is not None and data.has_masks and 1 in val_labels:
        samples = list(validation.items.samples)
        boxes, retuned = box_check(ctx, adapter, data, samples, {against: Path(source), "INT8": path}, retune="INT8")
        decisions["boxes"] = boxes
        if retuned is not None:  # the INT8 model's own maps cut with settings chosen on them, as its thresholds
            write_box_settings(path, retuned)
            decisions["boxes_retuned"] = retuned.as_dict()
            before, after = info.box_settings().as_dict(), retuned.as_dict()
            moved = ", ".join(f"{key} {before[key]} -> {after[key]}" for key in after if after[key] != before[key])
            ctx.console.print(
                f"box settings re-chosen on the INT8 model's validation maps (as its thresholds): {moved}"
            )
        ctx.console.print(
            f"boxes on the {len(samples)} validation images ({against} -> INT8): "
            + ", ".join(f"{key} {boxes[against][key]:.3f} -> {boxes['INT8'][key]:.3f}" for key in boxes["INT8"])
        )
        if warning := box_warning(boxes, against, len(samples)):
            ctx.warn(warning)
    result = OptimizeResult(
        task=adapter.task.value,
        model=info.model_name,
        backbone=info.backbone,
        source_model=str(source),
        trained_checkpoint=str(trained) if trained is not None else None,
        scheme=quantization,
        scheme_summary=scheme_summary,
        calibration_images=len(chosen),
        validation_calibration_images=record["validation_calibration_images"],
        train_images=len(train),
        fake_quantize_nodes=record["fake_quantize_nodes"],
        image_quantizers=record["image_quantizers"],
        weight_bits=bits,
        decisions=decisions,
        thresholds=decisions["stats"],
        timing_s={
            "quantize_s": round(sum(r["quantize_s"] for _, r, _ in attempts), 1),
            "compile_check_s": round(sum(r["compile_check_s"] for _, r, _ in attempts), 1),
            "check_s": round(sum(d.get("check_s") or 0.0 for _, _, d in attempts), 1)
            if decisions.get("checked")
            else None,
        },
        nncf_version=nncf.__version__,
        max_drop=max_drop,
        max_drop_met=not fell_beyond(decisions, max_drop) if max_drop is not None else None,
        attempts=tried if len(tried) > 1 else None,
        optimized_model=str(path),
        warnings=list(ctx.warnings),
    )
    write_result(run, result)
    return result


BOX_KEYS = ("box_AP50", "box_AP25", "defect_recall")  # checked: each within DECISION_DROP of the reference's


def box_check(
    ctx: VerbContext,
    adapter: Any,
    data: Any,
    samples: list[Any],
    models: dict[str, Path],
    retune: str | None = None,
) -> tuple[dict[str, dict[str, float]], BoxSettings | None]:
    """Box metrics of each model on ``samples`` (the validation images), as ``otx test`` computes them.

    The label and pixel check compares the maps at the pixel threshold; boxes are cut at a level of
    their own and may shift where that does not (3:1 strips made from the sample data, PADIM: box AP50
    0.856 -> 0.540 with labels and pixels held). ``retune``: the model whose box settings are chosen
    again on its own maps first (``tune_boxes``, its settings kept unless others do better), returned
    when they changed: an INT8 model's recalibrated pixel range moves its map levels (carpet strips,
    PADIM: validation box AP50 0.871 with the FP32 model's settings, 1.0 re-chosen, test 0.871 -> 1.0).
    """
    from otx.deploy.inferencer import OpenVINOInferencer
    from otx.scoring import OpenVINOScorer
    from otx.verbs.inference import collect, drop_maps, evaluate, iter_predictions, pixel_range, tune_boxes

    figures, retuned = {}, None
    for name, model in models.items():
        scorer = OpenVINOScorer(OpenVINOInferencer(model, "CPU", "f32", task=adapter.task.value, raw_outputs=True))
        outputs, errors = collect(ctx, data, scorer, samples, f"boxes, {name}")
        if name == retune:  # (an unreadable validation image has stopped optimize before: collect raises)
            chosen, _ = tune_boxes(scorer, outputs, samples, scorer.boxes.refine, first=scorer.boxes)
            if chosen != scorer.boxes:
                scorer.boxes = retuned = chosen
        predictions = [drop_maps(p) for p in iter_predictions(adapter, scorer, outputs, samples, errors)]
        metrics, _ = evaluate(
            ctx,
            adapter,
            True,
            scorer.thresholds,
            outputs,
            samples,
            scorer.preprocessor,
            predictions=predictions,
            pixel_range=pixel_range(scorer),
        )
        keys = (*BOX_KEYS, "false_boxes_per_normal_image")
        figures[name] = {key: round(float(metrics[key]), 4) for key in keys if key in metrics}
    return figures, retuned


def write_box_settings(path: Path, settings: BoxSettings) -> None:
    """Rewrite the IR at ``path`` with ``settings`` as its box settings (``otx_box_*``), marked as re-chosen."""
    import openvino as ov

    from otx.deploy.export import save_ir
    from otx.deploy.metadata import box_entries, read_ir_info

    ov_model = ov.Core().read_model(str(path))
    meta = read_ir_info(ov_model)
    meta.update(box_entries(settings.as_dict()))
    meta["otx_boxes_retuned"] = "True"
    save_ir(ov_model, meta, path)


def box_warning(boxes: dict[str, dict[str, float]], reference: str, images: int) -> str | None:
    """One line when the INT8 model's boxes fall more than ``DECISION_DROP`` below the reference's."""
    from otx.deploy.optimize import DECISION_DROP

    before, after = boxes[reference], boxes["INT8"]
    fell = [
        f"{key.replace('_', ' ')} {before[key]:.3f} -> {after[key]:.3f}"
        for key in BOX_KEYS
        if key in before and key in after and before[key] - after[key] > DECISION_DROP
    ]
    if not fell:
        return None
    return (
        f"the INT8 model's boxes on the {images} validation images fall short of the {reference} model's: "
        + ", ".join(fell)
        + f" (otx expects a drop of at most {DECISION_DROP}); check them with otx test before deploying it, "
        f"or deploy the {reference} export"
    )


def quantize_ladder(
    ctx: VerbContext,
    reference: Any,
    ladder: list[Any],
    calibration: Any,
    validation: Any,
    max_drop: float | None,
    bits: int,
    stats: dict[str, float],
    against: str,
) -> list[tuple[Any, dict[str, Any], dict[str, Any]]]:
    """Quantise with each scheme of ``ladder`` in turn until one keeps the validation decisions.

    Returns ``(model, record, decisions)`` per scheme tried (``otx.deploy.optimize.quantize`` and
    ``keep_decisions``). Stops at the first model that keeps the decisions, or whose decisions
    cannot be checked (no validation images). A fallback that would keep the same nodes float with
    the same settings as a scheme tried before is passed over; one that fails (NNCF inserts no
    quantisers, say) is reported and passed over, so the models already made are kept. A scheme
    whose model OpenVINO crashes compiling (``CompileCrash``) is passed over with a warning, the
    first one too; when no scheme is left, an ``OTXError`` says so.
    """
    from otx.deploy.optimize import CompileCrash, attempt_line, decisions_held, keep_decisions, quantize

    attempts: list[tuple[Any, dict[str, Any], dict[str, Any]]] = []
    seen: list[tuple[frozenset[str], Any]] = []
    crashed: CompileCrash | None = None
    for step in ladder:
        # the nodes kept float, and every other setting (calibration, ranges): names and patterns aside
        settings = dataclasses.replace(step, name="", summary="", fallback=None, float_patterns=(), float_after=(),
                                       float_before=())  # fmt: skip
        key = (frozenset(step.float_nodes(reference)), settings)
        if seen:  # a fallback (the schemes before it were tried, or crashed compiling)
            if key in seen:
                log.warning(
                    "the fallback scheme %s keeps the same nodes float with the same settings as one tried before; "
                    "passed over",
                    step.name,
                )
                continue
            ctx.console.print(f"trying the fallback scheme {step.name}: {step.summary}")
        seen.append(key)
        try:
            quantized, record = quantize(reference, step, calibration, validation, max_drop, bits)
        except CompileCrash as exc:  # whichever scheme: the next one may compile
            crashed = exc
            if attempts or step is not ladder[-1]:  # else the error below says it
                ctx.warn(f"{step.name}: not used ({exc})")
            continue
        except OTXError as exc:
            if not attempts:
                raise
            ctx.console.print(escape(f"{step.name}: not used ({exc})"))
            continue
        quantized, decisions = keep_decisions(quantized, validation, stats, against)
        attempts.append((quantized, record, decisions))
        if len(ladder) > 1:
            ctx.console.print(attempt_line(step.name, decisions, against))
        if not decisions.get("checked") or decisions_held(decisions):
            break
    if not attempts and crashed is not None:
        which = "none of the model's INT8 schemes compiles here" if len(seen) > 1 else "it does not compile here"
        raise OTXError(f"{crashed}; {which}: deploy the FP32 or FP16 export, or try another OpenVINO version")
    return attempts
