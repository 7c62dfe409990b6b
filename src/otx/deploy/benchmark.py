"""``otx benchmark``: latency and throughput of one trained model in torch and in OpenVINO.

Every runtime gets the same images (the data's test images at their own sizes, or synthetic
images at the model's input size when no data is given), already decoded and converted to the
graph's input, so that what is timed is the model: resize, network, anomaly map and
post-processing. After ``warmup`` runs:

- **latency**: batch 1, one synchronous request at a time (OpenVINO ``LATENCY`` hint); median and
  95th percentile over the images, in milliseconds.
- **throughput**: the images through OpenVINO's asynchronous request queue (``THROUGHPUT`` hint,
  the device's optimal number of parallel requests, batch 1 each; on the CPU fewer for large
  inputs, one under the ``LATENCY`` hint past 8 million input pixels, as ``otx predict`` runs
  them: ``otx.deploy.inferencer.throughput_config``), repeated ``repeats`` times;
  the median of the repeats, in images per second. Torch runs one image at a time with all its
  intra-op threads: its throughput is the median of its ``repeats`` passes over the images as well
  (before: every image's time pooled, so one stall of a second in a busy machine took a third off
  the rate that its median latency gave; a bug bash). Each row keeps its passes' rates
  (``throughput_runs``); ``otx benchmark`` warns when they disagree.

Each OpenVINO row reports the inference precision the device actually used (``f32`` unless asked
otherwise; OpenVINO itself would run FP32 models in bf16 on CPUs with AMX or AVX-512 BF16).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from otx.deploy.inferencer import OpenVINOInferencer, to_input


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of durations in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(seconds, dtype=np.float64) * 1000.0, q))


def benchmark_openvino(
    path: str | Path,
    images: Sequence[np.ndarray],
    device: str = "AUTO",
    precision_hint: str = "f32",
    warmup: int = 10,
    repeats: int = 3,
) -> dict[str, Any]:
    """Latency (batch 1) and throughput (asynchronous requests) of an exported model."""
    latency_model = OpenVINOInferencer(path, device, precision_hint, num_requests=1, performance_hint="LATENCY")
    inputs = [latency_model.prepare(image) for image in images]
    durations = latency_pass(latency_model.compiled, inputs, warmup)
    row = {
        "runtime": "openvino",
        "device": latency_model.execution_devices,
        "inference_precision": latency_model.inference_precision,
        "model_precision": latency_model.info.precision,
        "quantization": latency_model.info.quantization,
        "latency_ms_median": statistics.median(durations) * 1000.0,
        "latency_ms_p95": percentile_ms(durations, 95),
    }
    del latency_model
    model = OpenVINOInferencer(path, device, precision_hint, performance_hint="THROUGHPUT")
    rates = throughput_passes(model.compiled, inputs, model.num_requests, warmup, repeats)
    row.update(
        throughput_img_s=statistics.median(rates),
        throughput_runs=[round(r, 2) for r in rates],
        requests=model.num_requests,
    )
    try:  # the CPU threads OpenVINO ran on, beside torch's (its "threads"); AUTO and other devices do not say
        row["threads"] = int(model.compiled.get_property("INFERENCE_NUM_THREADS"))
    except RuntimeError:
        pass
    return row


def latency_pass(compiled: Any, inputs: Sequence[np.ndarray], warmup: int) -> list[float]:
    """Seconds per input, one synchronous request at a time, after ``warmup`` untimed requests."""
    request = compiled.create_infer_request()
    for x in _cycle(inputs, warmup):
        request.infer({0: x})
    durations = []
    for x in inputs:
        start = time.perf_counter()
        request.infer({0: x})
        durations.append(time.perf_counter() - start)
    return durations


def throughput_passes(
    compiled: Any, inputs: Sequence[np.ndarray], requests: int, warmup: int, repeats: int
) -> list[float]:
    """Images per second of ``repeats`` passes over ``inputs`` through an asynchronous request queue."""
    import openvino as ov

    queue = ov.AsyncInferQueue(compiled, requests)  # no callback: outputs are not copied
    for x in _cycle(inputs, max(warmup, requests)):
        queue.start_async({0: x})
    queue.wait_all()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for x in inputs:
            queue.start_async({0: x})
        queue.wait_all()
        rates.append(len(inputs) / (time.perf_counter() - start))
    return rates


def benchmark_torch(model: Any, images: Sequence[np.ndarray], warmup: int = 10, repeats: int = 3) -> dict[str, Any]:
    """Latency of a trained model in torch on the export's graph (resize, model, post-processing), batch 1."""
    import torch

    from otx.deploy.graph import ExportGraph

    graph = ExportGraph(model.eval()).eval()
    inputs = [torch.from_numpy(to_input(image))[None] for image in images]
    durations: list[float] = []
    rates = []
    with torch.inference_mode():
        for x in _cycle(inputs, warmup):
            graph(x)
        for _ in range(repeats):
            passed = []
            for x in inputs:
                start = time.perf_counter()
                graph(x)
                passed.append(time.perf_counter() - start)
            durations += passed
            rates.append(len(passed) / sum(passed))
    return {
        "runtime": "torch",
        "device": "cpu",
        "inference_precision": "f32",  # otx's torch models run in float32
        "model_precision": "FP32",
        "quantization": "none",
        "latency_ms_median": statistics.median(durations) * 1000.0,
        "latency_ms_p95": percentile_ms(durations, 95),
        "throughput_img_s": statistics.median(rates),
        "throughput_runs": [round(r, 2) for r in rates],
        "requests": 1,
        "threads": torch.get_num_threads(),
    }


def synthetic_images(count: int, size_hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Random RGB ``uint8`` images at the model's input size (when no data is given)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8) for _ in range(count)]


def _cycle(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items, cycling through ``items``."""
    return [items[i % len(items)] for i in range(count)] if items else []
