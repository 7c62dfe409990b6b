"""Metadata that travels inside exported models (IR ``rt_info`` and ONNX ``metadata_props``).

Everything lives under ``model_info``, the section openvino-model-api reads: its anomaly wrapper's
keys (``model_type``, ``task``, ``labels``, ``image_threshold``, ``pixel_threshold``,
``normalization_scale``, ``image_shape``, ``mean_values``, ``scale_values``, ``resize_type``, ...)
and otx's own (``otx_version``, ``otx_model``, ``otx_backbone``, ``input_size``, the post-processor's
statistics, a fingerprint of the training data, the precision and any quantisation). Values are
strings, lists joined by spaces, as model_api's ONNX adapter writes them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otx import __version__, newer_otx
from otx.boxes import LEGACY_SCORE, BoxSettings, unknown_saved
from otx.errors import OTXError
from otx.postprocess import STAT_KEYS, threshold_origin
from otx.preprocess import MODES, PreProcessor, saved_settings

SECTION = "model_info"
LABELS = ("Normal", "Anomaly")
# Keys every otx export carries; a model without them was not exported by otx.
REQUIRED = ("otx_version", "otx_model", "task", "input_size", *STAT_KEYS)  # (the six statistics: every otx export)
INPUT_CONTRACT = "float32 NCHW RGB in [0,1], any batch, height and width; bilinear antialiased resize inside"
# What else the graph does to the image, and what that asks of a consumer of its map (docs/deploy.md)
MODE_CONTRACT = {
    "keep_aspect": "; padded at the bottom or right (edge pixels repeated) to input_size's aspect ratio first: "
    "the map covers the padded image, resize it to that size and keep the image's top-left part",
    "tile": "; tiled inside, maps stitched: the map covers the image",
}


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def box_entries(boxes: dict[str, Any]) -> dict[str, str]:
    """``BoxSettings.as_dict()`` as ``model_info`` entries (``otx_box_*``, text as ``box_settings`` reads it)."""
    return {f"otx_box_{key}": _text(value) for key, value in boxes.items()}


def build_model_info(
    *,
    model_name: str,
    class_path: str,
    backbone: str,
    layers: list[str],
    input_size: tuple[int, int],
    preprocess: dict[str, Any] | None = None,
    boxes: dict[str, Any] | None = None,
    task: str,
    stats: dict[str, float],
    precision: str,
    export_format: str,
    data: dict[str, Any] | None,
    weights_source: str,
    score_top_share: float | None = None,
    thresholds_given: list[str] | None = None,
    trained_task: str | None = None,
) -> dict[str, str]:
    """The ``model_info`` entries for one export (all values as strings).

    ``data`` is the checkpoint's data record (fingerprint of the training files, validation split
    and seed), so that ``otx test`` on the exported model evaluates on the same unseen images.
    ``preprocess`` is the model's ``PreProcessor.config()`` (input mode and tiles), ``boxes`` its
    ``BoxSettings.as_dict()`` (how detection boxes are cut from the map), ``score_top_share``
    the model's image score (``AnomalyModel``), ``thresholds_given`` the thresholds set by hand,
    ``trained_task`` the task the checkpoint was trained for (its boxes are tuned only for detection).
    """
    data = data or {}
    preprocess = preprocess or {"mode": "resize"}
    info: dict[str, Any] = {
        # openvino-model-api's AnomalyDetection wrapper
        "model_type": "AnomalyDetection",
        "task": task,
        "otx_trained_task": trained_task or task,
        "labels": list(LABELS),
        "image_threshold": stats["image_threshold"],
        "pixel_threshold": stats["pixel_threshold"],
        "otx_thresholds_given": ",".join(thresholds_given or []) or "none",
        "normalization_scale": stats["image_max"] - stats["image_min"],
        "image_shape": list(input_size),
        "mean_values": [0, 0, 0],
        "scale_values": [255, 255, 255],  # the wrapper feeds uint8 pixels / 255, as the graph expects
        "reverse_input_channels": False,
        # model_api resizes nothing before a dynamic input like this one, and does not crop a keep_aspect
        # map's padding (docs/deploy.md); the key says how the graph fits the image
        "resize_type": "fit_to_window" if preprocess["mode"] == "keep_aspect" else "standard",
        # otx
        "otx_version": __version__,
        "otx_model": model_name,
        "otx_model_class": class_path,
        "otx_backbone": backbone,
        "otx_layers": list(layers),
        "input_size": list(input_size),
        "otx_input_mode": preprocess["mode"],
        **{f"otx_{key}": preprocess[key] for key in ("tile_size", "tile_stride") if key in preprocess},
        **box_entries(boxes or {}),
        # the image score: the model's own (none) or the mean of this share of the map's highest pixels
        "otx_score_top_share": "none" if score_top_share is None else score_top_share,
        "otx_input": INPUT_CONTRACT + MODE_CONTRACT.get(preprocess["mode"], ""),
        "otx_outputs": ["pred_score", "pred_label", "anomaly_map", "pred_mask"],
        "otx_precision": precision,
        "otx_format": export_format,
        "otx_quantization": "none",
        "image_min": stats["image_min"],
        "image_max": stats["image_max"],
        "pixel_min": stats["pixel_min"],
        "pixel_max": stats["pixel_max"],
        "data_fingerprint": data.get("fingerprint") or "unknown",
        # (a checkpoint's null split or seed: 0.5 and 42 as training's defaults; "None" was refused by otx's own check)
        "data_val_split": 0.5 if data.get("val_split") is None else data["val_split"],
        "data_seed": 42 if data.get("seed") is None else data["seed"],
        # the validation images (paths under the data root), JSON: otx test keeps them out of the test split
        "data_val_files": json.dumps(data["val_files"]) if data.get("val_files") is not None else "none",
        # whether training had masks to tune detection boxes on (exports before it: unknown)
        **({"data_has_masks": bool(data["has_masks"])} if data.get("has_masks") is not None else {}),
        **_profile_entries(data.get("profile")),
        "weights_source": weights_source,
    }
    return {key: _text(value) for key, value in info.items()}


def _profile_entries(profile: dict[str, Any] | None) -> dict[str, Any]:
    """The training images' channels and size range (``otx.checks.image_profile``) as metadata."""
    if not profile:
        return {}
    return {
        "otx_train_channels": profile["channels"],
        "otx_train_height": profile["height"],
        "otx_train_width": profile["width"],
    }


@dataclass(frozen=True)
class ModelInfo:
    """The parsed ``model_info`` of an otx export."""

    raw: dict[str, str]

    @classmethod
    def parse(cls, raw: dict[str, str], source: str | Path) -> ModelInfo:
        """Check that ``raw`` is otx metadata; raise one clear line otherwise."""
        missing = [key for key in REQUIRED if key not in raw]
        if missing:
            raise OTXError(
                f"'{source}' has no otx metadata (missing model_info {', '.join(missing)}); "
                "export it with `otx export` (models from other tools cannot be used here)"
            )
        info = cls(dict(raw))
        info.check(source)
        return info

    def check(self, source: str | Path) -> None:
        """One line naming the first value that otx cannot use (an edited or damaged file), else nothing.

        Before, a text where a number goes was "internal error (ValueError ...)" in the verb that
        read it, and a NaN threshold labelled every image normal (a bug bash of foreign files). An
        export from a newer otx (``otx_version``; a mode or a value this otx does not know) is told to
        upgrade, as a newer checkpoint is, not that it was damaged.
        """
        found = self._problem()
        if found is None:
            return
        value, advice = found
        if newer_otx(self.raw.get("otx_version")):
            raise OTXError(
                f"'{source}' was exported by a newer otx ({self.raw['otx_version']}) than this one ({__version__}), "
                f"which cannot use its metadata ({value}); upgrade otx to the version that exported it"
            )
        raise OTXError(f"'{source}' {advice}")

    def _problem(self) -> tuple[str, str] | None:
        """The first metadata problem: (the value, the line's words after the file), or None."""
        raw = self.raw
        numbers = [key for key in raw if key in _STATISTICS or key.startswith("otx_source_")]
        numbers += [f"otx_box_{key}" for key in ("threshold", "merge", "min_area", "peak")]
        checks: dict[str, Any] = {key: _finite for key in numbers}
        checks |= {"data_val_split": lambda text: 0.0 < float(text) < 1.0, "data_seed": lambda text: int(text) >= 0}
        checks |= {"input_size": _size, "image_shape": _size, "otx_train_height": _span, "otx_train_width": _span}
        checks |= {"otx_tile_size": _positive, "otx_tile_stride": _positive, "otx_input_mode": MODES.__contains__}
        checks |= {"otx_score_top_share": lambda text: text == "none" or 0.0 < float(text) <= 1.0}
        for key, valid in checks.items():
            if key in raw and not _passes(valid, raw[key]):
                value = f"model_info {key}={raw[key][:40]!r}"
                advice = "the file was edited or damaged; export the model again with `otx export`"
                return value, f"has a damaged metadata value ({value}): {advice}"
        profile = {"otx_train_channels", "otx_train_height", "otx_train_width"}
        if (given := sorted(profile & set(raw))) and len(given) < len(profile):  # (otx test and predict: KeyError)
            value = f"model_info {', '.join(given)} without {', '.join(sorted(profile - set(raw)))}"
            return value, f"has incomplete metadata ({value}): the file was edited; export the model again"
        if raw.get("otx_input_mode") == "tile" and not {"otx_tile_size", "otx_tile_stride"} <= set(raw):
            return "tiled, no tile size", "is tiled but its metadata names no tile size; export the model again"
        try:
            self.preprocessor()
        except (OTXError, ValueError) as exc:
            return str(exc), f"has metadata otx cannot use ({exc}); export the model again"
        return None

    @property
    def task(self) -> str:
        """``classification``, ``detection`` or ``segmentation``."""
        return self.raw["task"]

    @property
    def trained_task(self) -> str | None:
        """The task the model was trained for (its boxes are tuned for detection only); None in older exports."""
        return self.raw.get("otx_trained_task")

    @property
    def model_name(self) -> str:
        """The model core (``Padim``, ``Stfpm``)."""
        return self.raw["otx_model"]

    @property
    def backbone(self) -> str:
        """The backbone name."""
        return self.raw.get("otx_backbone", "unknown")

    def data_record(self) -> dict[str, Any]:
        """The training data the metadata carries: validation split, seed, files' fingerprint, validation images.

        The validation images are paths under the data root (``data_val_files``), never absolute paths.
        """
        return {
            "val_split": self.raw.get("data_val_split"),
            "seed": self.raw.get("data_seed"),
            "fingerprint": self.raw.get("data_fingerprint"),
            "val_files": self.val_files,
            "has_masks": {"True": True, "False": False}.get(self.raw.get("data_has_masks", "")),
        }

    @property
    def val_files(self) -> list[str] | None:
        """The training run's validation images (paths under its data root); None for exports from before."""
        text = self.raw.get("data_val_files", "none")
        if text == "none":
            return None
        try:
            names = json.loads(text)
        except json.JSONDecodeError:
            return None
        return [str(n) for n in names] if isinstance(names, list) else None

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` the graph resizes to."""
        height, width = (int(v) for v in self.raw["input_size"].split())
        return height, width

    def preprocessor(self) -> PreProcessor:
        """The model's pre-processor (input mode, size and tiles), for masks and restoring maps."""
        config: dict[str, Any] = {"input_size": self.input_size, "mode": self.raw.get("otx_input_mode", "resize")}
        for key in ("tile_size", "tile_stride"):
            if f"otx_{key}" in self.raw:
                config[key] = int(self.raw[f"otx_{key}"])
        with saved_settings():
            return PreProcessor.from_config(config)

    def box_settings(self) -> BoxSettings:
        """How detection boxes are cut from the map (the defaults for exports made before box tuning).

        Exports before the box score scored boxes by their maximum, those before box refinement did
        not refine; a score or refinement this otx does not know is one line.
        """
        default = BoxSettings()
        score = self.raw.get("otx_box_score", LEGACY_SCORE)
        refine = self.raw.get("otx_box_refine", default.refine)
        unknown = unknown_saved({"score": score, "refine": refine})
        if unknown:
            raise OTXError(f"the model's metadata asks for {unknown}")
        return BoxSettings(
            threshold=float(self.raw.get("otx_box_threshold", default.threshold)),
            merge=float(self.raw.get("otx_box_merge", default.merge)),
            min_area=float(self.raw.get("otx_box_min_area", default.min_area)),
            on_normal=self.raw.get("otx_box_on_normal", "False") == "True",
            peak=float(self.raw.get("otx_box_peak", default.peak)),  # exports before it: 0
            score=score,
            refine=refine,
        )

    @property
    def quantization(self) -> str:
        """``none`` for FP32/FP16 exports, otherwise the quantisation scheme."""
        return self.raw.get("otx_quantization", "none")

    def threshold_origin(self) -> dict[str, str]:
        """How the thresholds were set (``otx.postprocess.threshold_origin``)."""
        given = self.raw.get("otx_thresholds_given")  # None: an export from before it was recorded
        return threshold_origin(
            None if given is None else _names(given), self.recalibrated, self.source_stats(), self.precision
        )

    @property
    def recalibrated(self) -> list[str]:
        """The thresholds (``image``, ``pixel``) moved to keep an FP16 or INT8 model's decisions."""
        return _names(self.raw.get("otx_recalibrated", "none"))

    @property
    def precision(self) -> str:
        """``FP32``, ``FP16`` or ``INT8``."""
        return self.raw.get("otx_precision", "FP32")

    @property
    def profile(self) -> dict[str, Any] | None:
        """The training images' channels and size range, as ``otx.checks.image_profile`` gives them."""
        if "otx_train_channels" not in self.raw:
            return None
        height = [int(v) for v in self.raw["otx_train_height"].split()]
        width = [int(v) for v in self.raw["otx_train_width"].split()]
        return {"channels": self.raw["otx_train_channels"], "height": height, "width": width}

    def source_stats(self) -> dict[str, float]:
        """The trained model's statistics: those before any recalibration (INT8, FP16), else ``stats()``."""
        stats = self.stats()
        return {key: float(self.raw.get(f"otx_source_{key}", value)) for key, value in stats.items()}

    def stats(self) -> dict[str, float]:
        """Raw thresholds and normalisation statistics, as in a checkpoint's ``thresholds``."""
        return {key: float(self.raw[key]) for key in STAT_KEYS if key in self.raw}


_STATISTICS = (*STAT_KEYS, "normalization_scale")


def _passes(valid: Any, text: str) -> bool:
    try:
        return bool(valid(text))
    except (TypeError, ValueError):
        return False


def _finite(text: str) -> bool:
    return math.isfinite(float(text))


def _positive(text: str) -> bool:
    return int(text) > 0


def _size(text: str) -> bool:
    """Two positive integers (``height width``)."""
    values = [int(v) for v in text.split()]
    return len(values) == 2 and min(values) > 0


def _span(text: str) -> bool:
    """Two non-negative integers, the smaller first (the training images' range of a side)."""
    values = [int(v) for v in text.split()]
    return len(values) == 2 and 0 <= values[0] <= values[1]


def _names(text: str) -> list[str]:
    """A metadata list (``image,pixel``; ``none`` for an empty one) as its names."""
    return [name for name in text.split(",") if name and name != "none"]


def with_stats(raw: dict[str, str], stats: dict[str, float]) -> dict[str, str]:
    """``model_info`` entries with new thresholds and statistics (and model_api's normalisation scale)."""
    updated = dict(raw)
    for key in stats:  # the trained model's own values stay on record (they identify it)
        if key in raw:
            updated.setdefault(f"otx_source_{key}", raw[key])
    updated.update({key: _text(float(value)) for key, value in stats.items()})
    updated["normalization_scale"] = _text(float(stats["image_max"]) - float(stats["image_min"]))
    return updated


def write_ir_info(ov_model: Any, info: dict[str, str]) -> None:
    """Store ``info`` in an ``openvino.Model``'s ``rt_info`` under ``model_info``."""
    for key, value in info.items():
        ov_model.set_rt_info(value, [SECTION, key])


def read_ir_info(ov_model: Any) -> dict[str, str]:
    """``model_info`` of an ``openvino.Model`` as plain strings (empty when absent)."""
    if not ov_model.has_rt_info([SECTION]):
        return {}
    try:
        keys = list(ov_model.get_rt_info([SECTION]).astype(dict).keys())
        return {key: str(ov_model.get_rt_info([SECTION, key]).astype(str)) for key in keys}
    except RuntimeError:  # a model_info that is a value, not a section (an edited file): no otx metadata
        return {}


def write_onnx_info(onnx_model: Any, info: dict[str, str]) -> None:
    """Store ``info`` in ONNX ``metadata_props`` as ``"model_info <key>"`` (model_api's ONNX form)."""
    for key, value in info.items():
        entry = onnx_model.metadata_props.add()
        entry.key = f"{SECTION} {key}"
        entry.value = value


def read_onnx_info(path: str | Path) -> dict[str, str]:
    """``model_info`` of an ONNX file, read without loading its weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and the like: one line, as read_ir's
        text = " ".join(str(exc).split())[:300] or exc.__class__.__name__
        raise OTXError(f"cannot read the ONNX file '{path}' ({text}); re-export it") from exc
    prefix = f"{SECTION} "
    return {p.key[len(prefix) :]: p.value for p in model.metadata_props if p.key.startswith(prefix)}


def read_model_info(path: str | Path, ov_model: Any | None = None) -> ModelInfo:
    """The checked ``model_info`` of an exported ``.xml`` (its ``rt_info``) or ``.onnx``.

    Pass ``ov_model`` when the IR is already read, to avoid reading it twice.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return ModelInfo.parse(read_onnx_info(path), path)
    return ModelInfo.parse(read_ir_info(read_ir(path) if ov_model is None else ov_model), path)


def read_ir(path: str | Path, core: Any | None = None) -> Any:
    """``openvino.Core().read_model`` of an exported file; one line when OpenVINO cannot read it (damaged)."""
    import openvino as ov

    try:
        return (core or ov.Core()).read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable model becomes one line
        text = " ".join(str(exc).split())[:300] or exc.__class__.__name__
        raise OTXError(f"OpenVINO cannot read '{path}' ({text}); re-export it") from exc
