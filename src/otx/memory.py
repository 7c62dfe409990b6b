"""Giving freed memory back to the system between large steps on the CPU.

glibc keeps the pages of freed blocks of up to 32 MB in its heap for later allocations, so a
process that computed a large image's tiles stays as large as its peak, and what it allocates next
(another chunk's tensors, OpenVINO's buffers) comes on top. ``return_freed_memory`` hands the
heap's free pages back (``malloc_trim(0)``); measured in ``docs/input-modes.md`` ("A 4000x3000 image").
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any

import torch


@functools.cache
def _malloc_trim() -> Any:
    """The C library's ``malloc_trim`` (glibc); None elsewhere (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl, or a C library without it
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def return_freed_memory(device: torch.device | str = "cpu") -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim(0)``) when ``device`` is the CPU.

    Between the chunks of a tiled training step (``AnomalyModel.training_loss``): each chunk's
    short-lived tensors and the long-lived autograd records interleave in the heap, and without
    this PatchFlow's step over 192 tiles of 256 pixels peaked at 3.0 GB resident with only one
    chunk's tensors alive, 1.45 GB with it. In ``otx export``, after tracing and after the torch
    side of the check against the IR, before OpenVINO allocates its own. Tensors on an accelerator
    are not in that heap.
    """
    if torch.device(device).type == "cpu" and (trim := _malloc_trim()) is not None:
        trim(0)
