"""User-facing errors: each carries one line that says what is wrong and how to fix it."""

from __future__ import annotations

import re
from contextvars import ContextVar

# The line a stop prints (``cli._announce_stop``; ``otx.__main__`` while the command line loads)
STOP_LINE = "otx: {signal} received, stopping; earlier runs and latest.json stay as they were"


class OTXError(Exception):
    """An error caused by the user's input or environment, reported as one line, without traceback."""


class OTXDataError(OTXError):
    """The dataset is missing, empty, malformed or holds unreadable files."""


class OTXConfigError(OTXError):
    """The configuration (recipe, command line, Engine arguments) is invalid."""


class OTXWeightsError(OTXError):
    """Backbone weights could not be found or loaded."""


class OTXMemoryError(OTXError):
    """An allocation failed: the input size, batch size or images ask for more memory than there is."""


class OTXDiskError(OTXError):
    """A file could not be written: the disk (or the user's quota) is full."""


_NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|file write failed", re.IGNORECASE)
_TOO_LARGE = re.compile(r"File too large", re.IGNORECASE)  # EFBIG: a file system's or `ulimit -f`'s cap
# OpenVINO's serialiser words a failed write (a full disk, a file size limit) as its stream's error (a bug bash)
_STREAM_FAILED = re.compile(r"basic_ios::clear|iostream error")
# PyTorch's data-loading workers hand batches over in /dev/shm: a small one (a container's 64 MB) fails there
_SHARED_MEMORY = re.compile(  # PyTorch's words, not a path: a full --work_dir under /dev/shm is a full disk
    r"unable to allocate shared memory|out of shared memory|unable to resize file|unable to write to file </torch_",
    re.IGNORECASE,
)


def out_of_space(exc: BaseException, where: str | None = None) -> OTXDiskError | None:
    """``exc`` as one line when a write failed for want of space (``ENOSPC``, ``EDQUOT``), else None.

    A path too long for the file system (``ENAMETOOLONG``: a deep ``--work_dir``) is said the same way.

    Also when a library words it in an error of its own (PyTorch's "file write failed",
    OpenVINO's serialiser), or it is the cause of one. ``where``: the work dir, for the advice.
    """
    import errno

    seen: BaseException | None = exc
    found: BaseException | None = None
    while seen is not None and found is None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EFBIG):
            found = seen
        elif _NO_SPACE.search(str(seen)) or _TOO_LARGE.search(str(seen)) or _STREAM_FAILED.search(str(seen)):
            found = seen
        seen = seen.__cause__ or seen.__context__
    if found is None or _SHARED_MEMORY.search(str(found)):  # (shared_memory says that one)
        return None
    filename = getattr(found, "filename", None)
    kept = "earlier runs and latest.json are kept"
    what = f" writing '{filename}'" if filename else f" in '{where}'" if where else ""
    if (isinstance(found, OSError) and found.errno == errno.EFBIG) or _TOO_LARGE.search(str(found)):
        return OTXDiskError(  # (before: "internal error (OSError: [Errno 27] File too large); a bug in otx")
            for_caller(
                f"a file grew past the largest the file system or the shell's limit allows{what} (File too large); "
                f"pass --work_dir on another file system, or raise the limit (ulimit -f) ({kept})"
            )
        )
    if _STREAM_FAILED.search(str(found)) and not _NO_SPACE.search(str(found)):
        return OTXDiskError(  # (before: "internal error (RuntimeError: basic_ios::clear: iostream error)")
            for_caller(
                f"OpenVINO could not write the model{what} (its stream failed: the disk is full, or a file size "
                f"limit was reached); free some space there or pass --work_dir on another disk ({kept})"
            )
        )
    if isinstance(found, OSError) and found.errno == errno.ENAMETOOLONG:  # (before: an "internal error")
        shown = f"'...{str(filename)[-80:]}'" if filename and len(str(filename)) > 80 else f"'{filename}'"
        return OTXDiskError(
            for_caller(
                f"a path is too long for the file system ({len(str(filename or ''))} characters: {shown}); pass a "
                "shorter --work_dir (earlier runs and latest.json are kept)"
            )
        )
    return OTXDiskError(
        for_caller(
            f"no space left on the disk{what}; free some space there or pass --work_dir on another disk ({kept})"
        )
    )


def shared_memory(exc: BaseException) -> OTXMemoryError | None:
    """``exc`` as one line when data-loading workers ran out of shared memory (``/dev/shm``), else None.

    A container's ``/dev/shm`` is 64 MB unless it is given more; PyTorch's error reads "unable to
    allocate shared memory ... No space left on device", which was said as out of memory with advice
    to lower the input size (a bug bash).
    """
    seen: BaseException | None = exc
    while seen is not None:
        if _SHARED_MEMORY.search(str(seen)):
            return OTXMemoryError(
                for_caller(
                    "the data-loading workers ran out of shared memory (/dev/shm is too small: a container's is 64 MB "
                    "unless given more); pass --data.num_workers 0 (no workers), or give /dev/shm more space "
                    "(docker run --shm-size 2g); earlier runs and latest.json are kept"
                )
            )
        seen = seen.__cause__ or seen.__context__
    return None


# How PyTorch's allocators and NumPy word running out of memory (CPU, CUDA, XPU); a data-loading
# worker's error carries the worker's message in its text.
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|not enough memory|out of memory|Unable to allocate", re.IGNORECASE)
_ASKED_BYTES = re.compile(r"allocate (\d+) bytes|allocate ([\d.]+) ([KMGT]i?B)")


def out_of_memory(exc: BaseException) -> OTXMemoryError | None:
    """``exc`` as one line when it is a failed allocation (``MemoryError``, PyTorch's allocators), else None."""
    if not isinstance(exc, MemoryError) and not _OUT_OF_MEMORY.search(str(exc)):
        return None
    asked, found = "", _ASKED_BYTES.search(str(exc))
    if found:
        asked = f": {int(found[1]) / 2**30:.1f} GiB asked for" if found[1] else f": {found[2]} {found[3]} asked for"
    return OTXMemoryError(
        for_caller(
            f"out of memory{asked}; lower --model.init_args.input_size or --data.batch_size, or use input_mode "
            "tile for large images (already tiled: a larger --model.init_args.tile_stride gives fewer tiles per "
            "image; the run's otx.log has the details; earlier runs and latest.json are kept)"
        )
    )


class OTXInstallError(OTXError):
    """The Python environment lacks a package otx needs, or holds builds that do not work together."""


# Import names whose package is installed under another name.
_PACKAGE_OF = {"cv2": "opencv-python-headless", "yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn"}
_TORCHVISION_OPS = re.compile(r"operator torchvision::\w+ does not exist|Couldn't load custom C\+\+ ops")


def broken_install(exc: BaseException) -> OTXInstallError | None:
    """``exc`` as one line when the environment is not set up for otx, else None.

    A missing package, or a torchvision built for another torch. Before: "internal error (...); a
    bug in otx", pointing at a run log that was never written (a packaging bug bash: a pip install
    without ``python -m otx._torchvision_fix``, or with matplotlib removed).
    """
    seen: BaseException | None = exc
    while seen is not None:  # the error and what it was raised from, not what it arose while handling
        if isinstance(seen, ModuleNotFoundError) and seen.name and not seen.name.startswith("otx"):
            top = seen.name.split(".")[0]
            if _importable(top):  # a module inside an installed package: not a missing package
                return None
            package = _PACKAGE_OF.get(top, top)
            return OTXInstallError(
                f"the Python package '{top}' is missing from this environment, and otx needs it: pip install "
                f"{package} (with the constraints otx was installed with), or reinstall otx"
            )
        if _TORCHVISION_OPS.search(str(seen)):
            import importlib.metadata as metadata

            def version(name: str) -> str:
                try:
                    return metadata.version(name)
                except metadata.PackageNotFoundError:
                    return "not installed"

            return OTXInstallError(
                f"torchvision cannot load its operators on this torch (torch {version('torch')}, torchvision "
                f"{version('torchvision')}: builds that do not match); run python -m otx._torchvision_fix (a CUDA "
                "torchvision on a CPU torch), or install the torchvision build that matches torch (docs/install.md)"
            )
        seen = seen.__cause__
    return None


def _importable(name: str) -> bool:
    """Whether the top-level module ``name`` is installed (``None`` in ``sys.modules`` counts as absent)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ValueError, ImportError):  # sys.modules[name] is None, or a broken parent
        return False


COMMAND_LINE: ContextVar[bool] = ContextVar("otx_command_line", default=False)
"""True while ``otx`` (the command line) runs: messages keep its option spellings."""

_VERBS = "train|test|predict|export|optimize|benchmark"
_VERB = re.compile(rf"`otx ({_VERBS})`|(?<![`\w])otx ({_VERBS})\b(?! -)")
_VALUE = r"(?:[ =](?P<value>[A-Z][A-Z0-9_]*\b|\d+\b|true\b|false\b|null\b))?"
_ARG_NAMES = {"data_root": "data", "format": "export_format"}  # the Engine's name where it differs
_SPELLINGS = (
    (
        re.compile(r"--model\.init_args\.(\w+)" + _VALUE),
        lambda m: f"the model's {m.group(1)}" + (f"={_python_value(m.group('value'))}" if m.group("value") else ""),
    ),
    (re.compile(r"--trainer\.(\w+)"), lambda m: f'trainer["{m.group(1)}"]'),
    (
        re.compile(
            r"--(checkpoint|source|models|data_root|format|precision|max_drop|weight_bits|fallback|subset_size|resume|"
            r"max_epochs|task|device|devices|num_nodes|work_dir|inference_precision|num_images)\b" + _VALUE
        ),
        lambda m: (
            _ARG_NAMES.get(m.group(1), m.group(1)) + (f"={_python_value(m.group('value'))}" if m.group("value") else "")
        ),
    ),
    (_VERB, lambda m: f"Engine.{m.group(1) or m.group(2)}()"),
)


def _python_value(value: str) -> str:
    if value in ("true", "false"):
        return value.capitalize()
    if value == "null":
        return "None"
    return value if value.isdigit() or value in ("PATH", "DIR", "FILE", "N") else repr(value)


def for_caller(message: str) -> str:
    """``message`` as the caller spells options: the command line's, or the Python API's (``python_spelling``)."""
    return message if COMMAND_LINE.get() else python_spelling(message)


def python_spelling(message: str) -> str:
    """``message`` with the Python API's names for the command-line options it names.

    otx's messages are written for the command line (``pass --checkpoint PATH``); raised through
    ``otx.engine.Engine`` they name the argument a Python caller passes (``checkpoint=PATH``,
    ``data=DIR``, ``Engine.train()``). Options that only the command line has stay as they are.
    """
    parts = re.split(_KEPT, message)
    for i, part in enumerate(parts):
        if i % 2 == 0:
            spellings = _SPELLINGS
        elif part.startswith("`"):  # a quoted command keeps its options: `otx export --format OPENVINO`
            spellings = ((_VERB, _SPELLINGS[-1][1]),)
        else:  # a path: '/data/cam--source/otx test sets' is a folder's name, not options
            continue
        for pattern, spell in spellings:
            part = pattern.sub(spell, part)
        parts[i] = part
    return "".join(parts)


# What python_spelling leaves alone: quoted commands, quoted paths and unquoted ones (a / or \ inside).
_KEPT = re.compile(r"(`[^`]*`|'[^'\n]*[/\\][^'\n]*'|[^\s'`(]*[/\\][^\s'`),;]*)")
