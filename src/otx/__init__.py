"""otx: OpenVINO-centric training toolkit for visual anomaly detection."""

import os
import sys

__version__ = "0.1.0"

TRUE_WORDS = ("1", "true", "yes", "on")  # as huggingface_hub reads its flags, in any case


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true word (``1``, ``true``, ``yes``, ``on``).

    ``0``, ``false``, ``no``, ``off`` and the empty string are false: before, ``OTX_DEBUG=0`` turned
    debugging on (any value did), and ``HF_HUB_OFFLINE=on`` left otx online where huggingface_hub
    was offline (a bug bash).
    """
    return os.environ.get(name, "").strip().lower() in TRUE_WORDS


def offline() -> bool:
    """Offline mode: ``OTX_OFFLINE`` or ``HF_HUB_OFFLINE`` set to a true word (no downloads, no telemetry)."""
    return env_flag("OTX_OFFLINE") or env_flag("HF_HUB_OFFLINE")


# Offline (OTX_OFFLINE=1 or HF_HUB_OFFLINE=1), OpenVINO's and NNCF's usage telemetry stays off: their
# export and quantisation calls otherwise fork a process that tries to reach an analytics server. Both
# fall back to their own no-op stand-in when the package cannot be imported (None in sys.modules makes
# its import fail); a process that imported it before otx keeps it.
if offline():
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
