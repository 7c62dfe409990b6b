"""Export a trained model to OpenVINO IR or ONNX, with pre- and post-processing inside the graph."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otx.checkpoint import class_path
from otx.deploy.graph import INPUT_NAME, OUTPUT_NAMES, ExportGraph, convert_model
from otx.deploy.metadata import build_model_info, write_ir_info, write_onnx_info
from otx.errors import OTXConfigError, OTXError
from otx.memory import return_freed_memory
from otx.models.base import AnomalyModel

log = logging.getLogger(__name__)

FORMATS = ("OPENVINO", "ONNX")
PRECISIONS = ("FP32", "FP16")
EXPORT_NAME = "exported_model"
ONNX_OPSET = 18  # Col2Im (tile mode stitches its maps with torch fold) needs 18
# Largest normalised score difference from torch an export may show on its check images before otx
# warns: FP32 at the parity the tests hold every model to (measured up to 4.4e-6, every model and mode
# on the sample data); FP16 weights round to 11 significant bits, measured up to 4.9e-3 (PatchFlow,
# bottle_like; PADIM on magnetic_tile 1.9e-3), so four times that. Within it, a label can differ
# only for a score within the tolerance of the threshold (0.5).
SCORE_TOLERANCE = {"FP32": 1e-3, "FP16": 2e-2}
# Largest share of map pixels whose mask may differ from torch's: the parity tests' mask IoU of 0.99 at most
MASK_TOLERANCE = 0.01


def check_export_args(export_format: str, precision: str) -> tuple[str, str]:
    """Normalise and validate ``format`` and ``precision``; one clear line when wrong."""
    if not isinstance(export_format, str):
        raise OTXConfigError(f"export_format must be one of {', '.join(FORMATS)} (got {export_format!r})")
    if not isinstance(precision, str):
        raise OTXConfigError(f"precision must be 'FP32' or 'FP16' (got {precision!r}); INT8 comes from `otx optimize`")
    fmt, prec = export_format.upper(), precision.upper()
    if fmt not in FORMATS:
        raise OTXConfigError(f"unknown export format '{export_format}'; choose one of {', '.join(FORMATS)}")
    if prec not in PRECISIONS:
        raise OTXConfigError(f"unknown precision '{precision}'; choose FP32 or FP16 (INT8 comes from `otx optimize`)")
    if fmt == "ONNX" and prec == "FP16":
        raise OTXConfigError(
            "FP16 applies to OpenVINO IR; export ONNX as FP32 (--precision FP32) or use --format OPENVINO"
        )
    return fmt, prec


def export_model(
    model: AnomalyModel,
    out_dir: Path,
    task: str,
    export_format: str = "OPENVINO",
    precision: str = "FP32",
    data: dict[str, Any] | None = None,
    trained_task: str | None = None,
) -> Path:
    """Write ``exported_model.xml/.bin`` (OPENVINO) or ``exported_model.onnx`` (ONNX) into ``out_dir``.

    The graph takes float32 RGB images in [0, 1] of any batch size and any height and width,
    resizes them as training did, normalises, runs the model and the post-processor, and
    returns ``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask``. Metadata for
    openvino-model-api and for otx goes under ``model_info`` (``data`` is the checkpoint's data
    record: fingerprint, validation split and seed; ``trained_task`` the checkpoint's task, when it
    is not ``task``). Returns the model file's path.
    """
    fmt, prec = check_export_args(export_format, precision)
    if not model.postprocessor.is_fitted:
        raise OTXError("the model has no thresholds yet; train it (otx train) before exporting")
    model = model.eval()
    info = build_model_info(
        model_name=type(model).__name__,
        class_path=class_path(model),
        backbone=model.spec.name,
        layers=list(model.layers),
        input_size=model.input_size,
        preprocess=model.preprocessor.config(),
        boxes=model.box_settings.as_dict(),
        task=task,
        stats=model.postprocessor.stats(),
        precision=prec,
        export_format=fmt,
        data=data,
        weights_source=model.weights_source,
        score_top_share=model.score_top_share,
        thresholds_given=model.given_thresholds(),
        trained_task=trained_task,
    )
    if fmt == "OPENVINO":
        path = save_ir(to_openvino(model), info, out_dir / f"{EXPORT_NAME}.xml", fp16=prec == "FP16")
    else:
        graph = ExportGraph(model).eval()
        height, width = model.input_size
        example = torch.rand(1, 3, height + height // 2, width + width // 2)  # larger: a real resize is traced
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            files = _export_onnx(graph, example, Path(tmp), info)
            for file in files:  # only complete exports reach out_dir
                shutil.move(str(file), out_dir / file.name)
        path = out_dir / files[0].name
    log.info("exported %s (%s, %s) to %s", type(model).__name__, fmt, prec, path)
    return path


def to_openvino(model: AnomalyModel) -> Any:
    """The traced ``ExportGraph`` of a trained model as an in-memory ``openvino.Model`` (no metadata)."""
    import openvino as ov

    graph = ExportGraph(model.eval()).eval()
    height, width = model.input_size
    # An example larger than the input size, so that tracing goes through a real resize.
    example = torch.rand(1, 3, height + height // 2, width + width // 2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Traced once, without torch's trace check (a second run of the graph compared with the
        # first: a third of STFPM's export time); the written file is checked against torch on an
        # image of another size instead (``compare_with_torch``), and the tests check every model.
        traced = torch.jit.trace(graph, example, check_trace=False)
        return_freed_memory()  # the trace's tensors, before OpenVINO's copy of the graph (a 192-tile export: -0.8 GB)
        ov_model = convert_model(traced, example_input=example, input=[(ov.PartialShape([-1, 3, -1, -1]), ov.Type.f32)])
    name_io(ov_model)
    return ov_model


def save_ir(ov_model: Any, info: dict[str, str], path: Path, fp16: bool = False) -> Path:
    """Write ``path`` (.xml) and its .bin with ``info`` as ``model_info``, through a temporary folder.

    The .bin is moved in first and the .xml last, so an .xml at ``path`` always has its .bin beside
    it (a stop between the two moves left an .xml without weights, before).
    """
    import openvino as ov

    write_ir_info(ov_model, info)
    if fp16:
        compress_weights(ov_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".save-") as tmp:
        xml = Path(tmp) / path.name
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        for file in (xml.with_suffix(".bin"), xml):
            shutil.move(str(file), path.parent / file.name)
    return path


FP16_SMALLEST_WEIGHTS = 17  # float32 constants of fewer elements stay float32 in an FP16 export
FP16_MAX = 65504.0


def compress_weights(ov_model: Any) -> None:
    """An FP16 export's weights: every float32 constant of at least ``FP16_SMALLEST_WEIGHTS`` values as float16.

    Each becomes a float16 constant and a ``Convert`` back to float32, as OpenVINO's ``compress_to_fp16``
    writes them; scalars and other small constants stay float32, and so do constants beyond float16's
    range. OpenVINO's pass rounded every constant, the post-processor's thresholds and value range
    included: a model whose validation scores span 0.0015 (PatchFlow on MobileNetV2, magnetic_tile,
    threshold -0.998928 rounded to -0.99902) normalised its scores 0.06 off the metadata's, and otx
    refused its own FP16 export as "edited or damaged" (``calibrate.check_postprocessor``; session 65).
    """
    import openvino as ov

    for op in list(ov_model.get_ordered_ops()):
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.f32:
            continue
        values = op.get_data()
        if values.size < FP16_SMALLEST_WEIGHTS or not np.all(np.abs(values) <= FP16_MAX):
            continue
        half = ov.opset13.convert(ov.opset13.constant(values.astype(np.float16)), ov.Type.f32)
        half.set_friendly_name(f"{op.get_friendly_name()}_fp16")
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(half.output(0))


def name_io(ov_model: Any) -> None:
    """Give an exported ``openvino.Model`` otx's input and output names and the NCHW input layout."""
    import openvino as ov

    for output, name in zip(ov_model.outputs, OUTPUT_NAMES, strict=True):
        output.get_tensor().set_names({name})
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.inputs[0].get_node().set_friendly_name(INPUT_NAME)
    ov_model.inputs[0].get_node().set_layout(ov.Layout("NCHW"))


def _export_onnx(graph: ExportGraph, example: torch.Tensor, tmp_dir: Path, info: dict[str, str]) -> list[Path]:
    import onnx

    from otx.models.base import equal_tile_chunks

    path = tmp_dir / f"{EXPORT_NAME}.onnx"
    with torch.no_grad(), equal_tile_chunks():  # a batch of images splits into equal tile chunks
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, dynamic axes as given
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
            opset_version=ONNX_OPSET,
        )
    onnx_model = onnx.load(str(path))
    write_onnx_info(onnx_model, info)
    onnx.save(onnx_model, str(path))
    return [path]


def check_inferencer(path: Path) -> Any:
    """The ``OpenVINOInferencer`` that ``compare_with_torch`` checks a written IR with: one request, several threads.

    One request under the latency hint runs each kernel on several threads (the CPU's physical
    cores), as a larger CPU's requests do. Under the throughput hint this project's 2-core CPU ran one thread per
    request, where an OpenVINO Gather that goes wrong on two or more threads passed the check
    (``otx.preprocess._gather_lines``). And one request holds one image's buffers at a time
    (with ``malloc_trim`` after tracing, a 192-tile export: 5.6 -> 3.8 GB, ``docs/input-modes.md``).
    """
    from otx.deploy.inferencer import OpenVINOInferencer

    return OpenVINOInferencer(path, device="CPU", num_requests=1, performance_hint="LATENCY")


def compare_with_torch(model: AnomalyModel, exported: Any, images: list[np.ndarray]) -> dict[str, Any]:
    """Largest differences between torch and an ``OpenVINOInferencer`` on float ``[3, H, W]`` images of any size.

    ``label_agreement`` is the share of images labelled alike, ``labels_differ`` their number.
    ``otx export`` passes an inferencer of one request under the latency hint (``check_inferencer``).
    """
    graph = ExportGraph(model).eval()
    scores, labels, maps = [], [], []
    with torch.no_grad():
        for image in images:
            score, label, anomaly_map, _ = (t.numpy() for t in graph(torch.from_numpy(image)[None]))
            scores.append(score)
            labels.append(label)
            maps.append(anomaly_map[:, 0])
    return_freed_memory()  # torch's freed tensors, before OpenVINO's buffers
    got = exported.infer([image.transpose(1, 2, 0) for image in images])  # channel-last: no layout guessed
    same = got["pred_label"] == np.concatenate(labels)
    torch_maps = np.concatenate(maps)
    return {
        "max_score_diff": float(np.abs(got["pred_score"] - np.concatenate(scores)).max()),
        "max_map_diff": float(np.abs(got["anomaly_map"] - torch_maps).max()),
        # the share of map pixels whose mask (map >= 0.5) differs: what the maps decide
        "mask_pixels_differ": float(np.mean((got["anomaly_map"] >= 0.5) != (torch_maps >= 0.5))),
        "label_agreement": float(np.mean(same)),
        "labels_differ": int((~same).sum()),
    }


def check_warning(check: dict[str, Any], precision: str, stats: dict[str, float], exported: Path) -> str | None:
    """A warning when the check against torch (``compare_with_torch``) is beyond ``SCORE_TOLERANCE``, else None.

    Scores within the tolerance can only change a label at the threshold, so the scores alone are
    judged; the labels that differ are counted in the message. ``stats``: the post-processor's
    statistics, to name the cause when the validation scores had no spread (every normalised score
    is then 0 or 1, and rounding that torch and OpenVINO do differently moves it across the threshold).
    """
    tolerance = SCORE_TOLERANCE[precision]
    if check["max_score_diff"] <= tolerance:
        # the maps judged by their masks (before: never judged, a review): more than MASK_TOLERANCE of the pixels
        if (share := check.get("mask_pixels_differ", 0.0)) > MASK_TOLERANCE:
            return (
                f"the exported model's masks do not match torch on its check images ({check['probe'].split(' (')[0]}): "
                f"{share:.1%} of their pixels differ (maps by up to {check['max_map_diff']:.3g}; otx expects at most "
                f"{MASK_TOLERANCE:.0%}); compare `otx test --checkpoint {exported}` with the checkpoint's pixel "
                "metrics before shipping it"
            )
        return None
    images = check["probe"].split(" (")[0]
    message = (
        f"the exported model does not match torch on its check images ({images}): normalised scores differ "
        f"by up to {check['max_score_diff']:.3g} (the {precision} tolerance is {tolerance:g}) and "
        f"{check['labels_differ']} label(s) differ"
    )
    low, high = stats.get("image_min", float("nan")), stats.get("image_max", float("nan"))
    if np.isfinite(low) and np.isfinite(high) and high - low <= 1e-6 * max(abs(high), 1.0):
        return (
            f"{message}: every validation image scored {high:.6g} (image_min == image_max), so normalised "
            "scores are 0 or 1 and float rounding moves them across the threshold; train with more, and more "
            "varied, validation images (more test images or a val/ folder)"
        )
    return f"{message}; compare `otx test --checkpoint {exported}` with the checkpoint's metrics before shipping it"
