"""What ``Engine`` runs images through: a torch model (checkpoint) or an exported model (OpenVINO).

Both give the Engine the same things: outputs per batch, how to normalise them, the thresholds in
the outputs' units and a description for metrics.json. A torch model returns raw scores (metrics
are computed on them); an exported model returns the same raw outputs when its inferencer was
built with ``raw_outputs`` (``otx test``: metrics like the checkpoint's, whatever the input mode),
else the normalised scores its graph computes, with 0.5 as the threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from otx.checkpoint import model_entry
from otx.deploy.inferencer import OpenVINOInferencer
from otx.models.base import AnomalyModel
from otx.postprocess import normalize, threshold_origin


class TorchScorer:
    """A trained ``AnomalyModel`` (from training or a checkpoint)."""

    runtime = "torch"
    resize_in_loader = True  # the data loader resizes; the model takes batches at input_size
    raw_scores = True  # ``run`` returns the model's raw scores
    parallel_images = 1  # images ``run`` computes side by side (a batch holds at least these)

    def __init__(
        self,
        model: AnomalyModel,
        source: Path | None = None,
        task: str | None = None,
        data_info: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.source = source
        self.task = task
        self.data_info = dict(data_info or {})  # the checkpoint's data record (root, split, fingerprint)
        self.name = type(model).__name__
        self.backbone = model.spec.name
        self.input_size = model.input_size
        self.preprocessor = model.preprocessor
        self.boxes = model.box_settings

    def run(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(maps [B, h, w], scores [B])``."""
        self.model.eval()  # training leaves the model in train mode
        with torch.inference_mode():
            maps, scores = self.model(images)
        return maps.float(), scores.float()

    def normalize(self, maps: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised score, label, map and mask (the post-processor)."""
        with torch.inference_mode():
            return self.model.postprocessor(maps, scores)

    @property
    def thresholds(self) -> tuple[float, float]:
        """Image and pixel thresholds in the units ``run`` returns."""
        post = self.model.postprocessor
        return float(post.image_threshold), float(post.pixel_threshold)

    def stats(self) -> dict[str, float]:
        """Thresholds and normalisation statistics (raw units)."""
        return self.model.postprocessor.stats()

    def threshold_origin(self) -> dict[str, str]:
        """How the image and pixel thresholds were set, in words."""
        return threshold_origin(self.model.given_thresholds(), [], self.model.postprocessor.stats())

    def runtime_info(self) -> dict[str, str]:
        """Where the model ran (for metrics.json and the report)."""
        return {"runtime": self.runtime, "device": "cpu"}

    def model_entry(self) -> dict[str, Any]:
        """The ``model`` entry of config.yaml."""
        return model_entry(self.model)


class OpenVINOScorer:
    """An exported model (IR or ONNX) run by ``OpenVINOInferencer``."""

    runtime = "openvino"
    resize_in_loader = False  # images go in at their own size; the graph resizes them

    def __init__(self, inferencer: OpenVINOInferencer) -> None:
        self.inferencer = inferencer
        self.source = inferencer.path
        self.task = inferencer.info.task
        self.trained_task = inferencer.info.trained_task  # (None: an export from before it was recorded)
        # the training data record carried in the metadata (a data root is added by who knows the run folders)
        self.data_info = {**inferencer.info.data_record(), "profile": inferencer.info.profile}
        self.name = inferencer.info.model_name
        self.backbone = inferencer.info.backbone
        self.input_size = inferencer.info.input_size
        self.preprocessor = inferencer.info.preprocessor()  # masks and maps: the graph pre-processes images itself
        self.boxes = inferencer.info.box_settings()

    @property
    def parallel_images(self) -> int:
        """Images ``run`` computes side by side, one a request: a smaller batch leaves requests idle.

        (Before: a batch of the ``tile`` mode held one large image, which ran on one of the
        THROUGHPUT hint's streams and its share of the threads.) At most the inferencer's pixel
        budget's worth on any device (``OpenVINOInferencer.parallel_images``).
        """
        return self.inferencer.parallel_images

    def run(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps [B, h, w], scores [B])`` for images of any size: raw with ``raw_outputs``, else normalised."""
        # channel-last, so that no image's layout is guessed from its shape (a 3 x H x 3 tensor is both)
        out = self.inferencer.infer([image.permute(1, 2, 0).numpy() for image in images])
        if self.inferencer.raw_outputs:
            return torch.from_numpy(out["raw_map"]), torch.from_numpy(out["raw_score"])
        return torch.from_numpy(out["anomaly_map"]), torch.from_numpy(out["pred_score"])

    @property
    def raw_scores(self) -> bool:
        """Whether ``run`` returns raw scores (``raw_outputs``) rather than the graph's normalised ones."""
        return self.inferencer.raw_outputs

    def normalize(self, maps: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised score, label, map and mask: the graph's post-processor (raw outputs), or as they are."""
        if self.inferencer.raw_outputs:
            stats = self.stats()
            score = normalize(scores, stats["image_threshold"], stats["image_min"], stats["image_max"])
            maps = normalize(maps, stats["pixel_threshold"], stats["pixel_min"], stats["pixel_max"])
            scores = score
        return {"pred_score": scores, "pred_label": scores >= 0.5, "anomaly_map": maps, "pred_mask": maps >= 0.5}

    @property
    def thresholds(self) -> tuple[float, float]:
        """The raw thresholds of the metadata (raw outputs), else 0.5 for both (normalised outputs)."""
        if self.inferencer.raw_outputs:
            stats = self.stats()
            return stats["image_threshold"], stats["pixel_threshold"]
        return 0.5, 0.5

    def stats(self) -> dict[str, float]:
        """Raw thresholds and statistics from the model's metadata."""
        return self.inferencer.info.stats()

    def threshold_origin(self) -> dict[str, str]:
        """How the image and pixel thresholds were set, in words (an FP16 or INT8 model's may have moved)."""
        return self.inferencer.info.threshold_origin()

    def runtime_info(self) -> dict[str, str]:
        """Where the model ran: OpenVINO, the device asked for, the model's precision and INT8 scheme, what ran it."""
        inf = self.inferencer
        quantization = inf.info.quantization
        return {
            "runtime": self.runtime,
            "device": inf.device,
            "model_precision": inf.info.precision,  # FP32, FP16, INT8 (before: only the inference precision, f32)
            # the INT8 scheme otx optimize wrote (a fallback's name when it fell back: patchflow-int8-flow)
            **({"quantization": quantization} if quantization not in ("", "none") else {}),
            "execution_devices": inf.execution_devices,  # what AUTO chose (before: only "AUTO" was recorded)
            "inference_precision": inf.inference_precision,
        }

    def model_entry(self) -> dict[str, Any]:
        """The ``model`` entry of config.yaml: the exported file and its metadata."""
        return {
            "exported_model": str(self.source),
            "device": self.inferencer.device,
            "inference_precision": self.inferencer.inference_precision,
            "model_info": dict(self.inferencer.info.raw),
        }


Scorer = TorchScorer | OpenVINOScorer


def as_numpy(outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Tensors to numpy arrays (for the task adapters)."""
    return {key: value.numpy() for key, value in outputs.items()}
