"""Shared fixtures: tiny CT-like datasets in a temporary folder."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.synthetic import make_msd_task, make_nnunet_dataset


_RUN_CACHE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Plans made by tests calibrate into a cache of the test run, not the machine's ~/.cache."""
    if "AUTOSEG_CACHE" not in os.environ:
        _RUN_CACHE.append(tempfile.mkdtemp(prefix="autoseg-test-cache-"))
        os.environ["AUTOSEG_CACHE"] = _RUN_CACHE[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's own cache goes with the run (a cache the caller set is theirs to keep)."""
    for folder in _RUN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def msd_task(tmp_path: Path) -> Path:
    return make_msd_task(tmp_path / "raw")


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    return make_nnunet_dataset(tmp_path / "raw")
