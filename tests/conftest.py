"""Shared fixtures: tiny CT-like datasets in a temporary folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import make_msd_task, make_nnunet_dataset


@pytest.fixture
def msd_task(tmp_path: Path) -> Path:
    return make_msd_task(tmp_path / "raw")


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    return make_nnunet_dataset(tmp_path / "raw")
