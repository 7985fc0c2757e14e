"""The examples in the library's docstrings run, and say what they show (``python -m doctest``
would not find the stage folders' modules, which are installed inside the autoseg namespace)."""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("planners", "preprocessing", "training", "inference")


def modules_with_examples() -> list[str]:
    found = []
    paths = sorted((ROOT / "autoseg").rglob("*.py")) + [p for s in STAGES for p in sorted((ROOT / s).rglob("*.py"))]
    for path in paths:
        if ">>> " not in path.read_text():
            continue
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts) if rel.parts[0] == "autoseg" else ["autoseg", *rel.parts]
        if parts[-1] == "__init__":
            parts.pop()
        found.append(".".join(parts))
    return found


def test_the_library_has_examples() -> None:
    assert len(modules_with_examples()) >= 3


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
