"""The architecture's rules that a linter does not check (docs/architecture.md): one owner of every
file name, no private names imported across modules, the preprocessing facade, and a layers
contract that knows every core module. The contract itself is checked by ``make lint``."""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("planners", "preprocessing", "training", "inference")
LAYOUT = ROOT / "autoseg" / "layout.py"

#: Names (or fragments of names) of files autoseg writes and hands on: only autoseg/layout.py may
#: spell them.
ARTEFACT_NAMES = (
    "plans.json", "fingerprint.json", "slices.png", "splits.json", "fold.json", "log.jsonl", "progress.png",
    "summary.json", "cv_summary.json", "best.json", "postprocessing.json", "ensemble.json", "manifest.json",
    "checkpoint_", "dataset.json", "phantom.json", "metrics.json", "metrics.csv", "status.json", "report.json",
    "cpu_calibration.json", "calibration.json", "upload.part", ".pred.npz", ".probabilities.npz", "fold_{", "_seg",
)


def library_files() -> list[Path]:
    files = sorted((ROOT / "autoseg").rglob("*.py"))
    for stage in STAGES:
        files += sorted((ROOT / stage).rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def string_constants(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal and f-string piece that is not a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def test_every_artefact_name_is_spelled_in_layout() -> None:
    text = LAYOUT.read_text(encoding="utf-8")
    assert [n for n in ARTEFACT_NAMES if n not in text] == []


def test_no_library_file_outside_layout_spells_an_artefact_name() -> None:
    """A literal without whitespace that holds an artefact name is a file name or a path piece
    (``"plans.json"``, the ``".pred.npz"`` of ``f"{case}.pred.npz"``); prose that names a file for a
    person (an error message, a ``--help`` text) has spaces and may."""
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
             for path in library_files() if path != LAYOUT
             for line, text in string_constants(path) if not any(c.isspace() for c in text)
             for name in ARTEFACT_NAMES if name in text]
    assert found == [], "file names belong to autoseg/layout.py:\n" + "\n".join(found)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
    return out


def test_no_private_name_is_imported_across_modules() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: from {module} import {name}"
             for path in library_files() for line, module, names in _imports(path)
             if module.startswith("autoseg") for name in names
             if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))]  # __version__ is public
    assert found == []


def _stage_of(path: Path) -> str | None:
    rel = path.relative_to(ROOT).parts
    return rel[0] if rel[0] in STAGES else None


def test_other_stages_use_the_preprocessing_facade() -> None:
    """Preprocessing's public API is ``autoseg.preprocessing`` itself; its modules are its own."""
    found = [f"{path.relative_to(ROOT)}:{line}: {module}"
             for path in library_files() if _stage_of(path) != "preprocessing"
             for line, module, _ in _imports(path) if module.startswith("autoseg.preprocessing.")]
    assert found == []


def test_the_layers_contract_places_every_module_of_autoseg() -> None:
    """A new module in ``autoseg/`` must be given its layer, or the contract would not check it."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"]
    placed = {m.strip() for line in layers.splitlines() for m in line.replace("|", ":").split(":") if m.strip()}
    modules = {f"autoseg.{p.stem}" for p in (ROOT / "autoseg").glob("*.py") if p.stem != "__init__"}
    modules |= {f"autoseg.{p.parent.name}" for p in (ROOT / "autoseg").glob("*/__init__.py")}
    modules |= {f"autoseg.{s}" for s in STAGES}
    assert sorted(modules - placed) == []
    assert sorted(placed - modules) == []



def test_every_package_folder_is_installed() -> None:
    """pyproject.toml lists the packages (the stage folders are mapped into autoseg); one missing
    from the list would be left out of a wheel and fail only on a user's machine."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = config["package-dir"]
    listed = set(config["packages"])
    found = {"autoseg." + ".".join(p.parent.relative_to(ROOT / "autoseg").parts) if p.parent != ROOT / "autoseg"
             else "autoseg" for p in (ROOT / "autoseg").rglob("__init__.py")}
    for stage in STAGES:
        assert folders[f"autoseg.{stage}"] == stage
        found |= {".".join(["autoseg", *p.parent.relative_to(ROOT).parts]) for p in (ROOT / stage).rglob("__init__.py")}
    assert sorted(found - listed) == [] and sorted(listed - found) == []
