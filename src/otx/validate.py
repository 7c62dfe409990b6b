"""Argument checks that end in one ``OTXConfigError`` line naming the argument and what it expects.

The command line gets types checked by its parser; the Python API gets them here, so that
``Engine(model=Padim)`` or ``engine.export(precision=16)`` say what is wrong instead of failing
deep inside with a traceback.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from otx.errors import OTXConfigError


def got(value: Any) -> str:
    """``got <value>`` for a one-line message: short values as they are, objects by their class.

    A torch module's repr is its whole layer tree (114 lines for anomalib's PADIM, pasted into one
    error before; a migrants bug bash), an array's is its values.
    """
    if isinstance(value, type):
        return f"got the class {value.__name__}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # an array or tensor: its kind, not its values
        return f"got a {type(value).__module__.split('.')[0]} array of shape {tuple(value.shape)}, {value.dtype}"
    text = repr(value)
    if "\n" in text or (text.startswith("<") and " object at 0x" in text):
        return f"got an object of class {type(value).__module__}.{type(value).__qualname__}"
    return f"got {text if len(text) <= 80 else text[:77] + '...'}"


def check_int(
    name: str, value: Any, minimum: int | None = None, optional: bool = False, maximum: int | None = None
) -> int | None:
    """An integer (not a bool; NumPy ints become ``int``) in ``[minimum, maximum]``; None passes when ``optional``."""
    if value is None and optional:
        return None
    bounds = f" from {minimum} to {maximum}" if minimum is not None and maximum is not None else _at_least(minimum)
    if not _integral(value):
        raise OTXConfigError(f"{name} must be an integer{bounds} ({got(value)})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise OTXConfigError(f"{name} must be an integer{bounds} ({got(value)})")
    return int(value)


SEED_MAX = 2**32 - 1  # NumPy's and Lightning's seeds are unsigned 32-bit integers


def _integral(value: Any) -> bool:
    """A whole number: ``int`` or another ``numbers.Integral`` (NumPy's ``int64`` ...), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | _numpy_bool())


def _numpy_bool() -> type:
    import numpy as np

    return np.bool_


def _at_least(minimum: int | None) -> str:
    return f" >= {minimum}" if minimum is not None else ""


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    optional: bool = False,
    open_interval: bool = False,
    above_low: bool = False,
) -> float | None:
    """A finite real number within ``[low, high]``.

    ``open_interval``: within ``(low, high)``; ``above_low``: within ``(low, high]``.
    """
    if value is None and optional:
        return None
    bounds = _bounds(low, high, open_interval, above_low)
    if isinstance(value, bool | _numpy_bool()) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise OTXConfigError(f"{name} must be a finite number{bounds} ({got(value)})")
    too_low = low is not None and (value <= low if open_interval or above_low else value < low)
    too_high = high is not None and (value >= high if open_interval else value > high)
    if too_low or too_high:
        raise OTXConfigError(f"{name} must be a number{bounds} ({got(value)})")
    return float(value)


def _bounds(low: float | None, high: float | None, open_interval: bool, above_low: bool = False) -> str:
    if low is not None and high is not None and above_low:
        return f" > {low} and <= {high}"
    if low is not None and high is not None:
        return f" strictly between {low} and {high}" if open_interval else f" between {low} and {high}"
    if low is not None:
        return f" {'>' if open_interval else '>='} {low}"
    if high is not None:
        return f" {'<' if open_interval else '<='} {high}"
    return ""


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (numbers and strings are refused: ``"false"`` is truthy)."""
    if not isinstance(value, bool):
        raise OTXConfigError(f"{name} must be True or False ({got(value)})")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str], case_insensitive: bool = True) -> str:
    """One of ``choices`` (strings; compared case-insensitively unless told otherwise)."""
    if isinstance(value, str):
        for choice in choices:
            if value == choice or (case_insensitive and value.lower() == choice.lower()):
                return choice
    raise OTXConfigError(f"{name} must be one of {', '.join(map(str, choices))} ({got(value)})")


def check_path(name: str, value: Any, optional: bool = False) -> Path | None:
    """A path given as ``str`` or ``os.PathLike`` (existence is checked where it is used)."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and not value.strip():  # an empty --source '' (a shell variable left unset)
        raise OTXConfigError(f"{name} is empty; pass a path")
    if not isinstance(value, str):
        raise OTXConfigError(f"{name} must be a path (str or pathlib.Path) ({got(value)})")
    return Path(value).expanduser()


def check_size(name: str, value: Any, minimum: int = 32) -> tuple[int, int]:
    """``[height, width]``: two integers, each at least ``minimum``."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise OTXConfigError(f"{name} must be [height, width], two integers >= {minimum} ({got(value)})")
    for side in value:
        if not _integral(side) or side < minimum:
            raise OTXConfigError(f"{name} must be [height, width], two integers >= {minimum} ({got(value)})")
    return int(value[0]), int(value[1])


def close_matches(word: str, known: Sequence[str], cutoff: float = 0.75, n: int = 2) -> list[str]:
    """``difflib``'s close matches of ``word`` (for "did you mean"), less those clearly farther than the closest.

    ``trainer.max_epoch``: ``trainer.max_epochs`` (0.97 alike), not also ``trainer.max_time`` (0.79).
    """
    import difflib

    # letter case aside (OTX's PADIM, anomalib's Patchcore; before: PADIM.yaml was "did you mean stfpm.yaml?")
    by_lower: dict[str, str] = {}
    for key in known:
        by_lower.setdefault(key.lower(), key)
    if word.lower() in by_lower and word not in by_lower.values():
        return [by_lower[word.lower()]]
    near = difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=cutoff)
    alike = [difflib.SequenceMatcher(None, word.lower(), key).ratio() for key in near]
    return [by_lower[key] for key, ratio in zip(near, alike, strict=True) if ratio >= alike[0] - 0.1]
