"""otx's warnings on stderr: always in the CLI, and in the Python API when nothing else shows them.

otx logs to the ``otx`` logger; each run folder's ``otx.log`` takes everything. The CLI adds a
``StderrHandler`` once per process; ``Engine`` adds one for the length of a verb unless a handler
of the caller's (``logging.basicConfig``, pytest's capture) already shows the warnings.
``make_console`` makes the rich consoles the CLI and ``Engine`` print their summaries to.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console

PIPED_WIDTH = 200  # columns of otx's output into a file or pipe (rich's own default there is 80)


def make_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    """A rich console as wide as the terminal, or ``PIPED_WIDTH`` columns into a file or pipe.

    Rich lays out for 80 columns when it cannot ask a terminal, which cut the tables of
    ``otx find`` and ``otx benchmark`` (timm names, model paths) when they were piped or logged.
    ``COLUMNS`` in the environment still decides where it is set.
    """
    console = Console(stderr=stderr, quiet=quiet)
    if not console.is_terminal and not console.is_jupyter and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH
    return console


class StderrHandler(logging.StreamHandler):
    """``LEVEL: message`` lines on whatever ``sys.stderr`` is when a record arrives (not file-only records)."""

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__()
        self.setLevel(level)
        self.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        self.addFilter(lambda record: not getattr(record, "file_only", False))

    @property
    def stream(self) -> Any:  # type: ignore[override]
        """The current ``sys.stderr`` (pytest and notebooks replace it)."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        del value


def shows_warnings(logger: logging.Logger) -> bool:
    """Whether a handler other than a log file shows ``logger``'s warnings (its own or an ancestor's)."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                if handler.level <= logging.WARNING:
                    return True
        if not current.propagate and not any(getattr(h, "forwards_to_ancestors", False) for h in current.handlers):
            break
        current = current.parent
    return False


@contextlib.contextmanager
def warnings_shown(level: int = logging.WARNING) -> Iterator[None]:
    """Show the warnings otx logs on stderr while the block runs, unless a handler already shows them."""
    logger = logging.getLogger("otx")
    if shows_warnings(logger):
        yield
        return
    handler = StderrHandler(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


# the reader has gone: a closed pipe, or a terminal that hung up (a dropped SSH session: EIO; a review)
READER_GONE = (errno.EPIPE, errno.EIO, errno.ENXIO)


class PipeSafe:
    """A text stream that outlives its reader: once a pipe's reader has gone, output is dropped, not fatal.

    ``otx train ... | grep -m1 'otx train'`` (or ``| head -1``) closed the pipe after its first line,
    and the next progress line raised ``BrokenPipeError``, which rich turns into ``SystemExit(1)``:
    the training stopped unfinished, marked failed, with nothing said (a bug bash of otx under
    automation). The stream's descriptor is pointed at ``os.devnull`` the first time, the run's log
    says so, and the command goes on to write its files. Everything else is the wrapped stream's.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        """Write ``text``; after the reader has gone, drop it."""
        if self.gone:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as exc:
            if exc.errno not in READER_GONE:
                raise
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        """Flush; after the reader has gone, nothing."""
        if self.gone:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            if exc.errno not in READER_GONE:
                raise
            self._reader_gone()

    def writelines(self, lines: Any) -> None:
        """Write each line (``write``'s care for a reader that has gone)."""
        for line in lines:
            self.write(line)

    def _reader_gone(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError, ValueError):  # what is still buffered goes nowhere, without an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        logging.getLogger("otx").info(
            "the output's reader has gone (a closed pipe): the rest of the console output is dropped, the command "
            "goes on",
            extra={"file_only": True},
        )

    def __getattr__(self, name: str) -> Any:
        if name == "_stream" or name.startswith("__"):  # (a copy being made has no _stream yet: no recursion)
            raise AttributeError(name)
        return getattr(self._stream, name)


def pipe_safe_stdout() -> None:
    """Make ``sys.stdout`` a ``PipeSafe`` stream (the console script's whole process; once)."""
    if not isinstance(sys.stdout, PipeSafe) and sys.stdout is not None:
        sys.stdout = PipeSafe(sys.stdout)
    if not isinstance(sys.stderr, PipeSafe) and sys.stderr is not None:  # (a hung-up terminal: both go)
        sys.stderr = PipeSafe(sys.stderr)
