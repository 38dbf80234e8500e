"""Errors a user can cause: a bad config, dataset, image, checkpoint or curation input.

They share one base class, `UserError`, so the command line prints any of them as one line naming the input
and exits 2, whichever command met it; anything else is a bug and keeps its traceback. Internal invariants
are asserts, not these.
"""
from __future__ import annotations


class UserError(ValueError):
    """An input a user gave is unusable; the message names the input and what to do."""


class ConfigError(UserError):
    """A config value a user wrote is wrong; the message names the field and what to do."""


class DataError(UserError):
    """A dataset file or record is unusable; the message names the file, the line or record, and why."""


class ImageError(UserError):
    """An image file exists but can't be opened or decoded; the message names the file."""


class CheckpointError(UserError):
    """A checkpoint cannot be loaded; the message names the file (and field or tensor) at fault."""


class CurationError(UserError):
    """Input a user gave is unusable (or, under --strict, imperfect); the message names file and record."""


class SampleDropped(UserError):
    """A sample can't be encoded within `max_length`; `reason` is the short form the Collator counts."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def one_line(error: Exception) -> str:
    """An error's message on one line (a multi-line message's lines joined by '; ')."""
    text = ""
    for line in (line.strip() for line in str(error).splitlines() if line.strip()):
        text += (" " if text.endswith(":") else "; ") + line if text else line
    return text
