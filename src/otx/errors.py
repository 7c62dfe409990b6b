"""User-facing errors: each carries one line that says what is wrong and how to fix it."""

from __future__ import annotations


class OTXError(Exception):
    """An error caused by the user's input or environment, reported as one line, without traceback."""


class OTXDataError(OTXError):
    """The dataset is missing, empty, malformed or holds unreadable files."""


class OTXConfigError(OTXError):
    """The configuration (recipe, command line, Engine arguments) is invalid."""


class OTXWeightsError(OTXError):
    """Backbone weights could not be found or loaded."""
