"""Shared fixtures: tiny CT-like datasets in a temporary folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.synthetic import make_msd_task, make_nnunet_dataset


def pytest_configure(config: pytest.Config) -> None:
    """Plans made by tests calibrate into a cache of the test run, not the machine's ~/.cache."""
    os.environ.setdefault("AUTOSEG_CACHE", tempfile.mkdtemp(prefix="autoseg-test-cache-"))


@pytest.fixture
def msd_task(tmp_path: Path) -> Path:
    return make_msd_task(tmp_path / "raw")


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    return make_nnunet_dataset(tmp_path / "raw")
