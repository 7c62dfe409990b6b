"""Model cores. Each is a LightningModule subclass of ``AnomalyModel``; recipes name them by class_path.

A model is one module of this package (plus its three recipes): ``available_models`` finds every
``AnomalyModel`` subclass defined in the package's modules, so nothing else lists models.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings

with warnings.catch_warnings():  # anomalib's import warns about its own and timm's internals: nothing to act on
    warnings.filterwarnings(
        "ignore", message=r"Importing from timm\.models\.layers is deprecated", category=FutureWarning
    )
    warnings.filterwarnings("ignore", message=r"The anomalib\.models\.components\.dinov2", category=FutureWarning)
    import anomalib.models  # noqa: F401

from otx.errors import OTXConfigError
from otx.models.base import AnomalyModel
from otx.models.padim import Padim
from otx.models.patchcore import Patchcore
from otx.models.patchflow import Patchflow
from otx.models.stfpm import Stfpm
from otx.validate import close_matches

__all__ = ["AnomalyModel", "Padim", "Patchcore", "Patchflow", "Stfpm", "available_models", "model_class"]


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def available_models() -> dict[str, type[AnomalyModel]]:
    """Every model class by class name: those in this package's modules and any imported subclass."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return {cls.__name__: cls for cls in _subclasses(AnomalyModel) if _public(cls)}


def _public(cls: type) -> bool:
    return not cls.__name__.startswith("_") and "<locals>" not in cls.__qualname__


def model_class(name: str) -> type[AnomalyModel]:
    """The model class called ``name`` (``Padim``); an unknown name raises one line with the known ones."""
    models = available_models()
    if name in models:
        return models[name]
    for cls in _subclasses(AnomalyModel):  # also a class defined in a function (not listed)
        if cls.__name__ == name:
            return cls
    close = close_matches(name, list(models), cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise OTXConfigError(f"unknown model '{name}'; {hint}known models: {', '.join(models)} (`otx find --what models`)")


def __getattr__(name: str) -> type[AnomalyModel]:
    """``otx.models.<ClassName>`` for every model, also those not imported above."""
    models = available_models()
    if name in models:
        return models[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
