"""Errors a user can cause. Each message names the file, what is wrong and what to do about it.

The CLI prints an :class:`AutosegError` without a traceback and exits with status 2.
"""
from __future__ import annotations

from pathlib import Path


class AutosegError(Exception):
    """Base class of every error caused by user input (data, arguments, files)."""

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None):
        self.path = Path(path) if path is not None else None
        self.fix = fix
        parts = [f"{path}: {message}" if path is not None else message]
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__("\n".join(parts))
        self._message = message

    def __reduce__(self) -> tuple[type[AutosegError], tuple[str, Path | None, str | None]]:
        # keep path and fix when raised in a worker process
        return (self.__class__, (self._message, self.path, self.fix))


class DatasetError(AutosegError):
    """A raw dataset folder, its dataset.json or one of its cases is unusable."""


class ImageReadError(AutosegError):
    """An image file or DICOM series cannot be read."""


class PlansError(AutosegError):
    """plans.json or fingerprint.json is missing, malformed or belongs to another dataset."""


class EvaluationError(AutosegError):
    """Predictions and references that cannot be compared, or results that cannot be summarised."""


class ConfigurationError(AutosegError):
    """An invalid argument: unknown registry name, impossible network configuration, bad flag value."""


def unknown_name(kind: str, name: str, known: list[str] | tuple[str, ...]) -> ConfigurationError:
    """Error for a registry lookup miss, with a 'did you mean' suggestion when one is close."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigurationError(
        f"unknown {kind} '{name}'.{hint} Known: {', '.join(sorted(known))}.",
        fix=f"use one of the known {kind} names",
    )
