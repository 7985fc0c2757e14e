"""Tests that need a package of one of autoseg's optional extras (pyproject.toml) skip, naming the
extra, when it is absent: `pip install -e '.[test]'` and then pytest passes, and the skip says what
to install for the rest. `make test` installs every extra these tests need.

    @requires_extra("distributed")      # a marker, on a test
    def test_ray(...): ...

    require_extra("export")             # a call, inside a test or fixture
"""
from __future__ import annotations

import importlib.util

import pytest

# The modules each extra provides that the tests use (the extras' lists are in pyproject.toml).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "export": ("onnx", "onnxruntime"),
    "distributed": ("ray",),
    "viewer-test": ("playwright",),
    "metrics-reference": ("surface_distance", "monai"),
}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be found (found but broken still fails the test)."""
    return [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]


def reason(extra: str) -> str:
    return f"needs the {extra} extra: pip install -e '.[{extra}]' (missing: {', '.join(missing(extra))})"


def requires_extra(extra: str) -> pytest.MarkDecorator:
    """Marker: skip the test unless every module of ``extra`` is installed."""
    absent = bool(missing(extra))
    return pytest.mark.skipif(absent, reason=reason(extra) if absent else "")


def require_extra(extra: str) -> None:
    """Skip the calling test (or every test of the calling fixture) unless ``extra`` is installed."""
    if missing(extra):
        pytest.skip(reason(extra))
