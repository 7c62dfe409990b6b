"""``OpenVINOInferencer``: run an exported otx model (IR or ONNX) through OpenVINO.

Example::

    from otx.deploy import OpenVINOInferencer

    inferencer = OpenVINOInferencer("otx-workspace/<run>-export/exported_model.xml", device="CPU")
    for prediction in inferencer.predict("images/"):   # a file, a folder, a glob or numpy arrays
        print(prediction.image_path, prediction.label_name, prediction.pred_score)

Predictions are the same ``Prediction`` objects as torch inference returns, finished by the same
task adapters (full-size map and mask for segmentation, boxes for detection).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from otx.deploy.metadata import read_ir, read_model_info
from otx.errors import COMMAND_LINE, OTXConfigError, OTXDataError, OTXError
from otx.preprocess import padded_size
from otx.tasks import Prediction, TaskAdapter, get_adapter

log = logging.getLogger(__name__)
_PRECISION_SAID: set[tuple[str, str, str]] = set()  # (device, asked, actual) of the precision warnings given

MODEL_SUFFIXES = (".xml", ".onnx")
DEVICES = ("AUTO", "CPU", "GPU", "NPU")
PRECISION_HINTS = ("f32", "bf16", "f16", "default")
PERFORMANCE_HINTS = ("THROUGHPUT", "LATENCY")
CHUNK = 32  # images decoded ahead of the request queue by ``predict``
# ... fewer for a model of large inputs: a chunk's images, outputs and maps are held together
# (32 images of 3000x4000 through a tiled PADIM IR: 7.9 GB in one chunk and two requests, 4.7 GB now,
# 1.9 GB of it the predictions returned)
CHUNK_PIXELS = 64_000_000
# Input pixels the THROUGHPUT hint's parallel requests hold at once when their number is left to otx:
# each request (a stream) keeps its own buffers, which grow with the model's input (about 1.3 GB for
# a 3000x4000 tiled PADIM), so a model of large inputs runs fewer, wider requests (docs/input-modes.md).
PIXELS_IN_FLIGHT = 8_000_000


VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO")


def physical_devices(device: str, available: Sequence[str]) -> list[str]:
    """The devices ``device`` runs on: itself, or those an ``AUTO:``/``MULTI:``/``HETERO:`` list names.

    OpenVINO's list syntax: ``AUTO:GPU,CPU``, ``MULTI:CPU(4),GPU(2)`` (request counts), ``AUTO:-CPU``
    (every device but CPU). ``AUTO`` alone, or with exclusions only, is every available device left.
    """
    virtual, _, listed = device.upper().partition(":")
    if virtual not in VIRTUAL_DEVICES:
        return [device.upper()]
    names = [re.sub(r"\(\d*\)$", "", name.strip()) for name in listed.split(",") if name.strip()]
    excluded = {name[1:] for name in names if name.startswith("-")}
    wanted = [name for name in names if not name.startswith("-")]
    if wanted:
        return wanted
    return [d for d in available if d not in excluded and d.split(".")[0] not in excluded]


def check_device(core: Any, device: str) -> None:
    """Raise one ``OTXError`` line when OpenVINO cannot run on ``device`` (any case) here (``AUTO``: on no device)."""
    device = device.upper()
    available = core.available_devices
    names = {d for d in available} | {d.split(".")[0] for d in available}
    if device.partition(":")[0] in VIRTUAL_DEVICES and not available:
        raise OTXError("OpenVINO finds no inference device on this machine")
    # a device this machine lacks, also one listed after AUTO: (before: OpenVINO's plugin error for AUTO:GPU)
    physical = physical_devices(device, available)
    missing = [d for d in physical if d not in names]
    if missing or not physical:
        option = "--device" if COMMAND_LINE.get() else "device="  # (OpenVINOInferencer, Engine: device=)
        raise OTXError(
            f"device '{missing[0] if missing else device}' is not available on this machine (available: "
            f"{', '.join(available)}); give one of them or AUTO as the device ({option})"
        )


def is_exported_model(path: str | Path) -> bool:
    """True for paths that name an IR (.xml) or ONNX file."""
    return Path(path).suffix.lower() in MODEL_SUFFIXES


def check_model_path(path: str | Path) -> Path:
    """Refuse, with one line each, a missing file, an unknown suffix and an .xml without its .bin."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(path.glob("*.xml")) + sorted(path.glob("*.onnx"))
        example = f" (e.g. {inside[0]})" if inside else ""
        raise OTXError(f"model '{path}' is a folder; pass the .xml or .onnx file in it{example}")
    if not path.is_file():
        from otx.checkpoint import missing_file

        raise OTXError(f"model '{path}' {missing_file(path)}; pass the .xml or .onnx written by `otx export`")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise OTXError(f"'{path}' is not an exported model; pass an OpenVINO .xml or an .onnx file")
    if suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise OTXError(
            f"'{path}' has no weights file '{path.with_suffix('.bin').name}' beside it; copy the .bin with the .xml"
        )
    return path


def channels_first(shape: tuple[int, ...]) -> bool:
    """Whether a 3-d image array of this shape is ``3 x H x W`` rather than ``H x W x C``.

    ``H x W x C`` wins where both fit: an array whose last axis is 1, 3 or 4 long is ``H x W`` with
    that many channels (grayscale, RGB, RGBA), so a ``3 x H x W`` image 1, 3 or 4 pixels wide must
    be passed channel-last. ``to_input`` and ``image_hw`` read shapes alike by this rule.
    """
    return len(shape) == 3 and shape[0] == 3 and shape[2] not in (1, 3, 4)


def gray_first(shape: tuple[int, ...]) -> bool:
    """Whether a 3-d image array of this shape is ``1 x H x W`` grayscale (by the rule of ``channels_first``)."""
    return len(shape) == 3 and shape[0] == 1 and shape[2] not in (1, 3, 4)


def to_input(image: np.ndarray) -> np.ndarray:
    """An image as the graph's input: float32 ``[3, H, W]`` RGB in [0, 1].

    Accepts ``H x W x 3`` RGB (as ``otx.data.io.read_image`` returns; ``H x W x 4`` RGBA, its
    alpha dropped), ``H x W`` or ``H x W x 1`` grayscale arrays, or ``3 x H x W``
    (``channels_first`` says which a shape is). Floats already in [0, 1] are the graph's own
    input and pass as they are, not rounded. Other arrays are read as image files are
    (``otx.data.io.to_uint8``, rounded to the 256 levels a file holds): ``uint8`` over 0-255,
    ``uint16`` over its full range, other floats and integers as 0-255 (others raise
    ``OTXDataError``).
    """
    array = np.asarray(image)
    if np.iscomplexobj(array):  # (before: the imaginary part dropped, with NumPy's warning only)
        raise OTXDataError(f"an image array must hold real pixel values, not complex numbers (dtype {array.dtype})")
    if gray_first(array.shape):
        array = array[0]
    if array.dtype == np.bool_:
        raise OTXDataError(
            "an image array must hold pixel values, not booleans (a mask?); pass array.astype(np.uint8) * 255"
        )
    if array.ndim == 3 and channels_first(array.shape):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[2] == 1:  # H x W x 1: grayscale
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3:
        raise OTXDataError(f"an image must be H x W x 3 (RGB) or H x W; got shape {array.shape}")
    if array.shape[2] not in (3, 4):
        raise OTXDataError(f"an image must have 3 channels (RGB); got shape {array.shape}")
    chw = array[..., :3].transpose(2, 0, 1)
    if 0 in chw.shape[1:]:  # before: OpenVINO's MatMul error, and every later request failed with it
        raise OTXDataError(f"an image must have pixels; got an empty array of shape {array.shape}")
    if chw.dtype == np.uint8:
        return np.ascontiguousarray(chw, dtype=np.float32) / np.float32(255.0)
    if np.issubdtype(chw.dtype, np.floating) and chw.size and 0.0 <= float(chw.min()) and float(chw.max()) <= 1.0:
        return np.ascontiguousarray(chw, dtype=np.float32)  # the graph's own input: not rounded to 8-bit levels
    from otx.data.io import to_uint8

    try:
        levels = to_uint8(np.asarray(chw))
    except ValueError as exc:
        raise OTXDataError(f"image array: {exc}") from None
    return np.ascontiguousarray(levels, dtype=np.float32) / np.float32(255.0)


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An image array in any layout ``to_input`` accepts as ``H x W x 3`` RGB ``uint8`` (its 256 levels)."""
    return np.round(to_input(image).transpose(1, 2, 0) * np.float32(255.0)).astype(np.uint8)


def _image_array(item: Any) -> np.ndarray | None:
    """``item`` as an image array when it is one: an array, a PIL image or a torch tensor; else None."""
    if isinstance(item, np.ndarray):
        return item
    if type(item).__module__.startswith("PIL.") and hasattr(item, "mode") and hasattr(item, "convert"):
        try:
            if item.mode in ("L", "RGB", "F") or item.mode.startswith("I"):  # their values as they are
                return np.asarray(item)
            return np.asarray(item.convert("RGB"))  # palette, RGBA, CMYK, YCbCr, 1-bit ...
        except (ValueError, OSError, AttributeError, AssertionError) as exc:  # a closed image: Pillow asserts
            raise OTXDataError(
                f"cannot read the pixels of a PIL image ({type(exc).__name__}: {exc}); was its file closed before "
                "they were loaded? call image.load() (or image.copy()) inside the `with Image.open(...)` block"
            ) from None
    if type(item).__name__ == "Tensor" and hasattr(item, "detach"):
        tensor = item.detach()
        if str(tensor.device) == "meta":
            raise OTXDataError("a tensor on the meta device holds no values; pass a tensor with its pixels")
        tensor = tensor.cpu()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            tensor = tensor.float()  # (numpy has no such type)
        return tensor.numpy()
    return None


def _as_array(item: Any) -> Any:
    """An image array, PIL image or tensor as an array; anything else as it is (``to_input`` names it)."""
    array = _image_array(item)
    return item if array is None else array


def requests_limit(input_hw: tuple[int, int] | list[int], asked: int = 0) -> int:
    """The most parallel requests (and streams) the THROUGHPUT hint may compile for a model of input ``input_hw``.

    ``asked`` when given (> 0); else as many as keep ``PIXELS_IN_FLIGHT`` input pixels in flight, at
    least one: a 256x256 model keeps the device's own number, a 3000x4000 one runs one request on
    the CPU's cores (measured on 2 cores: 2.5 s an image and 3.0 GB, against 2.3 s and 4.6 GB for two
    requests of one thread each). The count is of the model's input size; a resize-mode graph takes
    larger images and resizes them inside.
    """
    return asked if asked > 0 else max(1, PIXELS_IN_FLIGHT // (int(input_hw[0]) * int(input_hw[1])))


def throughput_config(input_hw: tuple[int, int] | list[int], asked: int, devices: list[str]) -> dict[str, Any]:
    """OpenVINO's compile settings for the THROUGHPUT hint on ``devices`` (the physical ones) and a model's input.

    On the CPU, at most ``requests_limit`` requests (``PERFORMANCE_HINT_NUM_REQUESTS``), and for one
    request the LATENCY hint: one stream on the CPU's cores (the throughput hint's single stream can
    get fewer threads on CPUs with hyper-threads or efficient cores). Other devices keep their own
    number: their requests' buffers are not the host's memory. (The demo package's ``predict.py``
    repeats this.)
    """
    if not devices or not all(device.split(".")[0].upper() == "CPU" for device in devices):
        return {"PERFORMANCE_HINT": "THROUGHPUT"}
    limit = requests_limit(input_hw, asked)
    if limit == 1:
        return {"PERFORMANCE_HINT": "LATENCY"}
    return {"PERFORMANCE_HINT": "THROUGHPUT", "PERFORMANCE_HINT_NUM_REQUESTS": limit}


def image_hw(image: np.ndarray) -> tuple[int, int]:
    """``(height, width)`` of an image array in any layout ``to_input`` accepts."""
    shape = np.shape(image)
    if channels_first(shape) or gray_first(shape):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


class OpenVINOInferencer:
    """Load an exported otx model and run it on a device with an asynchronous request queue.

    Args:
        path: the exported ``.xml`` (with its ``.bin``) or ``.onnx``.
        device: ``AUTO``, ``CPU``, ``GPU`` (or ``GPU.1``), ``NPU``.
        precision_hint: inference precision: ``f32`` (default: reproduces the trained model;
            OpenVINO would otherwise run FP32 models in bf16 on CPUs with AMX or AVX-512 BF16), ``bf16``, ``f16``,
            or ``default`` for the device's own choice.
        num_requests: parallel inference requests; 0 takes the device's optimal number, on the CPU fewer
            for a model of large inputs (``requests_limit``). Under the THROUGHPUT hint the CPU
            compiles as many streams as requests at most (``throughput_config``), so each request
            runs on its share of the threads; one request there runs under the LATENCY hint.
        task: override the task stored in the model (``classification``, ``detection``, ``segmentation``).
        performance_hint: OpenVINO's ``THROUGHPUT`` (parallel requests; the default) or ``LATENCY``.
        raw_outputs: also return the raw score and map that feed the graph's post-processor
            (``infer``'s ``raw_score`` and ``raw_map``), in the units of the metadata's thresholds:
            what metrics are computed on (the normalised map clips to 0 far below the threshold).
            The attribute ``raw_outputs`` says whether it could: not for an export by an older otx
            whose post-processor or statistics cannot be found.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "AUTO",
        precision_hint: str = "f32",
        num_requests: int = 0,
        task: str | None = None,
        performance_hint: str = "THROUGHPUT",
        raw_outputs: bool = False,
    ) -> None:
        import openvino as ov

        self.path = check_model_path(path)
        if not isinstance(device, str):
            raise OTXConfigError(f"device must be a device name such as 'CPU', 'GPU' or 'AUTO'; got {device!r}")
        self.device = device.upper()
        from otx.validate import check_int

        num_requests = check_int("num_requests", num_requests, minimum=0)  # (before: OpenVINO's TypeError)
        precision_hint = precision_hint.lower() if isinstance(precision_hint, str) else precision_hint  # as device
        performance_hint = performance_hint.upper() if isinstance(performance_hint, str) else performance_hint
        if precision_hint not in PRECISION_HINTS:
            raise OTXConfigError(
                f"unknown precision hint '{precision_hint}'; choose one of {', '.join(PRECISION_HINTS)}"
            )
        self.core = ov.Core()
        self._check_device()
        self.model = read_ir(self.path, self.core)
        self.info = read_model_info(self.path, self.model)
        self._check_weight_bits()
        self.preprocessor = self.info.preprocessor()  # the input mode: restores maps to each image's size
        self.adapter: TaskAdapter = get_adapter(task or self.info.task)
        self.box_settings = self.info.box_settings()  # (a score or refinement this otx does not know: said here)
        from otx.deploy.calibrate import check_postprocessor, with_raw_outputs

        stats = self.info.stats()
        check_postprocessor(self.model, stats, self.path)
        self.raw_outputs = raw_outputs and len(stats) == 6
        if self.raw_outputs:
            try:
                self.model = with_raw_outputs(self.model)
            except OTXError as exc:  # an export by an older otx: its normalised outputs only
                log.info("no raw outputs from %s (%s); its normalised outputs are used", self.path, exc)
                self.raw_outputs = False
        # NPUs compile static shapes only (also when AUTO:NPU names them alone)
        self.static_input = all(d.startswith("NPU") for d in self._physical_devices())
        if self.static_input:
            self.model.reshape({0: [1, 3, *self.info.input_size]})
        if performance_hint not in PERFORMANCE_HINTS:
            raise OTXConfigError(
                f"unknown performance hint '{performance_hint}'; choose one of {', '.join(PERFORMANCE_HINTS)}"
            )
        config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint}
        if performance_hint == "THROUGHPUT":  # (before: two requests of 3000x4000 tiles held 4.4 GB; one asked for
            # ran on one thread of two)
            config = throughput_config(self.info.input_size, num_requests, self._physical_devices())
        if precision_hint != "default":
            for dev in self._physical_devices():
                if "INFERENCE_PRECISION_HINT" not in self.core.get_property(dev, "SUPPORTED_PROPERTIES"):
                    continue
                try:
                    self.core.set_property(dev, {"INFERENCE_PRECISION_HINT": precision_hint})
                except Exception as exc:  # noqa: BLE001 - e.g. bf16 on a device without it
                    raise OTXConfigError(
                        f"{dev} cannot run at inference precision {precision_hint} ({_first_line(exc)}); "
                        "choose f32 or default"
                    ) from exc
        try:
            self.compiled = self.core.compile_model(self.model, self.device, config)
        except Exception as exc:  # noqa: BLE001
            raise OTXError(f"OpenVINO cannot compile '{self.path}' for {self.device} ({_first_line(exc)})") from exc
        from otx._signal_stack import repair_signal_stack

        repair_signal_stack()  # OpenVINO's CPU plugin can leave it unmapped (otx._signal_stack)
        actual = self.inference_precision
        said = (self.device, precision_hint, actual)
        if precision_hint not in ("default", actual) and actual != "unknown" and said not in _PRECISION_SAID:
            _PRECISION_SAID.add(said)  # once a process (a benchmark compiles each model twice); a bug bash: f16 -> bf16
            log.warning(
                "%s runs inference precision %s where %s was asked: the device has no %s; %s is what the figures are "
                "of (f32 runs as otx checked the model)",
                self.device,
                actual,
                precision_hint,
                precision_hint,
                actual,
            )
        names = {"pred_score": "pred_score", "anomaly_map": "anomaly_map"}
        if self.raw_outputs:
            from otx.deploy.calibrate import RAW_MAP, RAW_SCORE

            names |= {"raw_score": RAW_SCORE, "raw_map": RAW_MAP}
        self.output_index = {key: self._output_position(name) for key, name in names.items()}
        optimal = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if num_requests <= 0 else 0
        self.num_requests = max(1, num_requests or optimal)
        # Images handed over at once (otx test/predict's batches): the requests asked for, else the device's,
        # at most the pixel budget's on any device: the images are host memory (a GPU's requests are not capped).
        self.parallel_images = num_requests or min(self.num_requests, requests_limit(self.info.input_size))
        self._results: dict[int, dict[str, np.ndarray]] = {}
        self.queue = self._new_queue()
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread inside infer

    def _new_queue(self) -> Any:
        """A request queue whose callback keeps each request's outputs in ``self._results``."""
        import openvino as ov

        queue = ov.AsyncInferQueue(self.compiled, self.num_requests)
        # A plain function holding the results dict, not a bound method: a queue whose callback
        # references the inferencer forms a cycle that keeps the compiled model (weights and
        # request buffers) alive until Python's cycle collector happens to run.
        queue.set_callback(functools.partial(_store_outputs, self._results, self.output_index))
        return queue

    def _settle_queue(self) -> None:
        """Wait for the queued requests after an error; replace the queue if one of them failed.

        A queue whose request failed raises that error on every later ``wait_all``, so one bad
        image would fail every later call.
        """
        failed = False
        for request in self.queue:  # each one: wait_all() raises at the failed request, before the later ones
            try:
                request.wait()
            except RuntimeError:
                failed = True
        if failed:
            self._results = {}  # the new queue's own: nothing of the old one's lands in it
            self.queue = self._new_queue()
        self._results.clear()

    # --- set-up -----------------------------------------------------------------------------
    def _check_weight_bits(self) -> None:
        if self.info.raw.get("otx_weight_bits") != "8" or not self.device.startswith(("CPU", "AUTO")):
            return
        from otx.deploy.optimize import host_has_vnni

        if not host_has_vnni():
            log.warning(
                "%s has 8-bit INT8 weights and this CPU has no VNNI: its int16 sums can saturate and move "
                "decisions; re-run otx optimize with --weight_bits 7 for this CPU",
                self.path.name,
            )

    def _physical_devices(self) -> list[str]:
        available = [d for d in self.core.available_devices if not d.startswith("GNA")]
        return physical_devices(self.device, available)

    def _check_device(self) -> None:
        check_device(self.core, self.device)

    def _output_position(self, name: str) -> int:
        for i, output in enumerate(self.compiled.outputs):
            if name in output.get_names():
                return i
        raise OTXError(f"'{self.path}' has no output '{name}'; it was not exported by otx, re-export it")

    @property
    def inference_precision(self) -> str:
        """The precision the device actually runs (e.g. ``f32``, ``bf16``), or ``unknown``."""
        try:
            return _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # noqa: BLE001 - AUTO and some plugins do not report it
            for dev in self._physical_devices():
                try:
                    return _type_name(self.core.get_property(dev, "INFERENCE_PRECISION_HINT"))
                except Exception:  # noqa: BLE001
                    continue
        return "unknown"

    @property
    def execution_devices(self) -> str:
        """The device(s) the model actually runs on (what ``AUTO`` chose), e.g. ``CPU``."""
        try:
            return ",".join(str(d) for d in self.compiled.get_property("EXECUTION_DEVICES"))
        except Exception:  # noqa: BLE001 - plugins without the property
            return self.device

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` the model resizes images to."""
        return self.info.input_size

    @property
    def images_per_chunk(self) -> int:
        """Image files ``predict`` decodes and infers together: ``CHUNK``, fewer for large inputs.

        As many as hold ``CHUNK_PIXELS`` input pixels (the model's input size: a tiled model's is
        the full image; a resize-mode model's images can be larger), at least ``parallel_images``.
        """
        height, width = self.info.input_size
        return max(self.parallel_images, min(CHUNK, CHUNK_PIXELS // (height * width)))

    def release_memory(self) -> None:
        """Let the device free its intermediate buffers until the next inference (``CompiledModel.release_memory``).

        Where the device or the OpenVINO version cannot, nothing happens.
        """
        with self._lock:  # (not while a call of another thread is in flight)
            try:
                self.compiled.release_memory()
            except Exception as exc:  # noqa: BLE001 - an older OpenVINO or a device without it: kept
                log.debug("release_memory: %s", _first_line(exc))

    # --- inference ----------------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> np.ndarray:
        """An image as this model's input tensor ``[1, 3, H, W]`` (host resize only for static-shape devices)."""
        tensor = to_input(image)
        if self.static_input and tensor.shape[1:] != self.info.input_size:
            import cv2

            height, width = self.info.input_size
            if self.preprocessor.mode == "keep_aspect":  # the graph's edge padding, on the host
                full_h, full_w = padded_size(*tensor.shape[1:], (height, width))
                pad = ((0, 0), (0, full_h - tensor.shape[1]), (0, full_w - tensor.shape[2]))
                tensor = np.pad(tensor, pad, mode="edge")
            hwc = cv2.resize(tensor.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_AREA)
            tensor = np.ascontiguousarray(hwc.transpose(2, 0, 1))
        return tensor[None]

    def infer(self, images: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
        """Normalised outputs for images of any size, one request each, run asynchronously.

        Returns ``pred_score [N]``, ``pred_label [N]``, ``anomaly_map [N, h, w]`` and
        ``pred_mask [N, h, w]`` at the model's input size, in the order of ``images``; with
        ``raw_outputs``, also ``raw_score [N]`` and ``raw_map [N, h, w]``. ``images`` is a list
        (or any iterable) of images, or one array of ``N`` images (4-d); one image alone is refused
        (iterating over it would give one answer per row). Calls from several threads run one after
        the other: the requests of one call run in parallel.
        """
        if isinstance(images, str | os.PathLike) or (
            isinstance(images, list | tuple) and images and all(isinstance(i, str | os.PathLike) for i in images)
        ):  # before: a path walked one character at a time ("got shape ()")
            raise OTXDataError("infer takes images (arrays, PIL images, tensors); for image files use predict(paths)")
        if isinstance(images, np.ndarray) and images.dtype == object:  # an array of images of several sizes
            images = list(images)
        single = _image_array(images)
        if single is None and not hasattr(images, "__iter__"):
            raise OTXDataError(
                f"infer takes a list of images (arrays, PIL images, tensors); got {type(images).__name__}"
            )
        if (single is not None and single.ndim < 4) or type(images).__module__.startswith("PIL."):
            raise OTXDataError(
                f"infer takes a list of images, got one image (a {len(np.shape(single))}-d array is one image, "
                f"shape {np.shape(single)}); pass [image] or an N x H x W x C array (or use predict(image))"
            )
        # tensors and PIL images as the arrays they hold (a tensor that requires grad, or on a GPU)
        items = list(single) if single is not None else (_as_array(item) for item in images)
        total = len(items) if isinstance(items, list) else len(images) if hasattr(images, "__len__") else None
        if self._owner == threading.get_ident():  # the images' own iteration called back in: it would wait forever
            raise OTXError("infer was called again while iterating over the images of a call in progress")
        with self._lock:  # one queue and one results dict per inferencer: other threads' calls wait
            self._owner = threading.get_ident()
            try:
                return self._infer(items, total)
            finally:
                self._owner = None

    def _infer(self, images: Iterable[np.ndarray], total: int | None = None) -> dict[str, np.ndarray]:
        """``infer`` of images already checked; ``total``: how many (None: unknown), for a refused image's message."""
        self._results.clear()
        count = 0
        try:
            for index, image in enumerate(images):
                try:
                    prepared = self.prepare(image)
                except OTXDataError as exc:  # which one, in a list (before: only what was wrong)
                    which = f"image {index + 1}" + (f" of {total}" if total else "")  # counted from 1
                    raise OTXDataError(str(exc) if total == 1 else f"{which}: {exc}") from None
                self.queue.start_async({0: prepared}, userdata=index)  # (copied into the request)
                del prepared  # (not held while the next image is prepared: 144 MB for a 3000x4000 image)
                count += 1
            self.queue.wait_all()
        except RuntimeError as exc:
            self._settle_queue()
            raise OTXError(f"OpenVINO failed on an image ({_first_line(exc)})") from exc
        except BaseException:  # e.g. OTXDataError from prepare, or Ctrl-C: the queued requests finish first
            self._settle_queue()
            raise
        if count == 0:
            height, width = self.info.input_size
            empty = {key: (0, height, width) if "map" in key else (0,) for key in self.output_index}
            stacked = {key: np.zeros(shape, np.float32) for key, shape in empty.items()}
        else:
            stacked = {key: np.concatenate([self._results[i][key] for i in range(count)]) for key in self.output_index}
        self._results.clear()
        # Label and mask are recomputed from score and map exactly as the graph does (>= 0.5).
        scores, maps = stacked["pred_score"], stacked["anomaly_map"]
        return {**stacked, "pred_label": scores >= 0.5, "pred_mask": maps >= 0.5}

    def predict(
        self, source: str | Path | np.ndarray | Sequence[np.ndarray] | Sequence[str | Path]
    ) -> list[Prediction]:
        """Predict on a file, a folder, a glob, one image array, a list of arrays or a list of paths.

        A file that cannot be decoded gets no decision: its ``Prediction`` has ``label_name``
        ``"error"``, ``pred_label`` None and the reason in ``error``; the others are predicted.
        Arrays are RGB (see ``to_input``); PIL images and torch tensors (``3 x H x W`` or
        ``H x W x 3``) are taken as the arrays they hold.
        """
        if isinstance(source, np.ndarray) and source.dtype == object:  # an array of images of several sizes
            source = list(source)
        if isinstance(source, list | tuple):
            kinds = {
                "array" if _image_array(item) is not None else "path" if isinstance(item, str | os.PathLike) else "x"
                for item in source
            }
            if len(kinds) > 1 or "x" in kinds:
                raise OTXDataError(
                    "a list to predict on must hold only images (arrays, PIL images, tensors) or only image paths "
                    f"(got {', '.join(sorted({type(item).__name__ for item in source}))})"
                )
        elif _image_array(source) is None and not isinstance(source, str | os.PathLike):
            raise OTXDataError(
                "source must be an image path, a folder, a glob, an image (array, PIL image, tensor) or a list "
                f"of them (got {type(source).__name__})"
            )
        single = _image_array(source)
        if single is not None or (isinstance(source, list | tuple) and source and kinds == {"array"}):
            if single is not None:  # one image, or a batch of them (N x H x W x C or N x C x H x W)
                arrays = list(single) if single.ndim == 4 else [single]
            else:
                arrays = [_image_array(item) for item in source]
            names = [f"array_{i}" for i in range(len(arrays))]
            # the arrays are checked (a refused one named by its place: infer) before their warnings
            # are looked for (before: a 1-d array was an IndexError there, a 2-channel one unnamed)
            predictions = self._predict_arrays(names, arrays)
            self._input_warnings(arrays=arrays)
            return predictions
        from otx.data.datamodule import PixelBatches, samples_from_source
        from otx.data.io import header_pixels

        missing: dict[str, str] = {}  # a listed file that is not there: its error record, as an unreadable one's
        if isinstance(source, list | tuple):  # image files, each as ``source`` would be one
            paths = []
            for item in source:
                try:
                    paths += [s.path for s in samples_from_source(str(item))]
                except OTXDataError as exc:
                    if not str(item).strip() or Path(item).expanduser().exists() or any(c in str(item) for c in "*?["):
                        raise  # an empty entry, a folder without images, a pattern that matches none
                    log.warning("not predicted: %s", exc)
                    missing[str(item)] = str(exc)
                    paths.append(str(item))
        else:
            paths = [s.path for s in samples_from_source(str(source))]
        self._input_warnings(paths=[p for p in paths if p not in missing], source=source)
        predictions: list[Prediction] = []
        # chunks of at most CHUNK_PIXELS decoded pixels too (a resize-mode model's photos are larger than its input)
        pixels = [0 if p in missing else header_pixels(p) for p in paths]
        for chunk in PixelBatches(range(len(paths)), pixels, self.images_per_chunk, self.parallel_images, CHUNK_PIXELS):
            predictions.extend(self._predict_paths([paths[i] for i in chunk], missing))
        return predictions

    def _input_warnings(
        self, paths: list[str] | None = None, arrays: list[np.ndarray] | None = None, source: Any = None
    ) -> None:
        """Log what ``otx predict`` warns of its inputs.

        Images unlike the training images (colour, size, orientation), 16-bit files of 12 bits or
        fewer, several pages, an EXIF orientation (before: only ``otx predict`` and the demo
        package said these; a caller of this API got the scores alone).
        """
        from otx.checks import array_profile_warnings, input_file_warnings

        profile = self.info.profile
        if paths:
            folder = Path(source).expanduser() if isinstance(source, str | os.PathLike) else None
            root = folder if folder is not None and folder.is_dir() else None
            found = input_file_warnings(profile, paths, root)
        elif arrays:
            sizes = [(np.ndim(a) == 2 or gray_first(np.shape(a)) or np.shape(a)[-1] == 1, *image_hw(a)) for a in arrays]
            found = array_profile_warnings(profile, sizes, lambda i: _rgb_uint8(arrays[i]), "input")
        else:
            found = []
        for message in found:
            log.warning(message)

    def _predict_paths(self, paths: list[str], missing: dict[str, str] | None = None) -> list[Prediction]:
        from otx.data.io import read_image

        images: list[np.ndarray] = []
        errors: dict[int, str] = {}
        for i, path in enumerate(paths):
            if missing and path in missing:
                errors[i] = missing[path]
                continue
            try:
                images.append(read_image(path))
            except OTXDataError as exc:
                log.warning("not predicted: %s", exc)
                errors[i] = str(exc)
        good = [p for i, p in enumerate(paths) if i not in errors]
        done = iter(self._predict_arrays(good, images, as_read=True))
        return [Prediction.unreadable(p, errors[i]) if i in errors else next(done) for i, p in enumerate(paths)]

    def _predict_arrays(self, names: list[str], arrays: list[np.ndarray], as_read: bool = False) -> list[Prediction]:
        """Predictions for images in memory (``as_read``: RGB ``uint8`` as ``read_image`` returns them)."""
        outputs = self.infer(arrays)
        sizes = np.array([image_hw(a) for a in arrays], dtype=np.int64).reshape(-1, 2)
        boxes = self.box_settings
        images = None
        if self.adapter.box_level and boxes.refine != "none":  # boxes snapped to the image: as the graph saw it
            images = arrays if as_read else [_rgb_uint8(a) for a in arrays]
        return list(self.adapter.iter_predictions(outputs, names, sizes, self.preprocessor, boxes, images))


def _store_outputs(
    results: dict[int, dict[str, np.ndarray]], index: dict[str, int], request: Any, userdata: int
) -> None:
    """Request-queue callback: keep a copy of the scores ``[1]`` and maps ``[1, h, w]`` of request ``userdata``."""
    kept = {}
    for key, position in index.items():
        data = request.get_output_tensor(position).data
        kept[key] = data.reshape(data.shape[0], *data.shape[-2:]).copy() if "map" in key else data.reshape(-1).copy()
    results[userdata] = kept


def _type_name(value: Any) -> str:
    """``f32`` for ``openvino.Type.f32`` (and plain strings unchanged)."""
    return value.to_string() if hasattr(value, "to_string") else str(value)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else exc.__class__.__name__
