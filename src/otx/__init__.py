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


def newer_otx(version: object) -> bool:
    """Whether ``version`` (the ``otx_version`` a checkpoint or an export records) is a later otx than this one."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(version)) > Version(__version__)
    except InvalidVersion:
        return False


def offline() -> bool:
    """Offline mode: ``OTX_OFFLINE`` or ``HF_HUB_OFFLINE`` set to a true word (no downloads, no telemetry)."""
    return env_flag("OTX_OFFLINE") or env_flag("HF_HUB_OFFLINE")


def _writable_matplotlib_dir() -> None:
    """``MPLCONFIGDIR`` in a private temporary folder where matplotlib could not write its own (Linux).

    In a container with a read-only home, matplotlib wrote two lines to stderr on every otx command
    (its own temporary folder, and advice to set ``MPLCONFIGDIR``), which broke the one-line error
    (a bug bash). Matplotlib's folders on Linux: ``$XDG_CONFIG_HOME`` (``~/.config``) and
    ``$XDG_CACHE_HOME`` (``~/.cache``), each ``/matplotlib``; each must be writable, or made where
    its nearest existing parent is. Nothing is made here. A value the user set is kept.
    """
    if os.environ.get("MPLCONFIGDIR") or not sys.platform.startswith("linux"):
        return
    from pathlib import Path

    def writable(folder: Path) -> bool:
        while not folder.exists():  # made by matplotlib under its nearest existing parent
            if folder.parent == folder:
                return False
            folder = folder.parent
        return folder.is_dir() and os.access(folder, os.W_OK)

    try:
        home = Path.home()
        config, cache = os.environ.get("XDG_CONFIG_HOME"), os.environ.get("XDG_CACHE_HOME")
        bases = (config or home / ".config", cache or home / ".cache")
        if all(writable(Path(base) / "matplotlib") for base in bases):
            return
    except (OSError, RuntimeError):  # (RuntimeError: no home to expand)
        pass
    import atexit
    import shutil
    import tempfile

    os.environ["MPLCONFIGDIR"] = folder = tempfile.mkdtemp(prefix="otx-matplotlib-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # (as matplotlib removes its own)


_writable_matplotlib_dir()

# Offline (OTX_OFFLINE=1 or HF_HUB_OFFLINE=1), OpenVINO's and NNCF's usage telemetry stays off: their
# export and quantisation calls otherwise fork a process that tries to reach an analytics server. Both
# fall back to their own no-op stand-in when the package cannot be imported (None in sys.modules makes
# its import fail); a process that imported it before otx keeps it.
if offline():
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
