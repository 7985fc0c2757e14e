"""Check the architecture: the import-linter layers contract, mypy and ruff (run by ``make lint``
and ``.ci/run``).

The stage folders at the repository root (``planners/``, ``preprocessing/``, ``training/``,
``inference/``) are installed inside the ``autoseg`` namespace with ``package_dir``. import-linter
and mypy read a package from one folder on disk and do not run the editable install's import hook,
so this script first copies the package as it is installed (``autoseg/`` with the stage folders
inside it) into a temporary folder, checks that copy, and prints every finding with its path in
the repository.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("planners", "preprocessing", "training", "inference")
CHECKS = ("layers", "mypy", "ruff")


def staged_package(into: Path) -> Path:
    """A copy of the installed layout: ``into/autoseg`` with the stage folders inside it."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "autoseg", into / "autoseg", ignore=ignore)
    for stage in STAGES:
        shutil.copytree(ROOT / stage, into / "autoseg" / stage, ignore=ignore)
    return into


def repository_path(text: str, staged: Path) -> str:
    """Findings name the copied files; name the repository's instead."""
    for stage in STAGES:
        text = text.replace(str(staged / "autoseg" / stage) + os.sep, stage + os.sep)
        text = text.replace(f"autoseg{os.sep}{stage}{os.sep}", stage + os.sep)
    return text.replace(str(staged) + os.sep, "")


def run(command: list[str], cwd: Path, staged: Path | None = None) -> int:
    env = dict(os.environ, PYTHONPATH=str(staged) if staged else os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    out = (done.stdout + done.stderr).strip()
    if out:
        print(repository_path(out, staged) if staged else out)
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checks", nargs="*", choices=[*CHECKS, []], help=f"default: all of {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    args.checks = args.checks or list(CHECKS)
    bin_dir = Path(sys.executable).parent
    failed = []
    with tempfile.TemporaryDirectory(prefix="autoseg-lint-") as tmp:
        staged = staged_package(Path(tmp))
        if "layers" in args.checks:
            print("== import-linter (layers contract in .importlinter)")
            if run([str(bin_dir / "lint-imports"), "--no-cache", str(ROOT / ".importlinter")], staged, staged):
                failed.append("layers")
        if "mypy" in args.checks:
            print("== mypy (mypy.ini)")
            if run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini"), "-p", "autoseg"],
                   staged, staged):
                failed.append("mypy")
    if "ruff" in args.checks:
        print("== ruff (ruff.toml)")
        if run([sys.executable, "-m", "ruff", "check", "--config", str(ROOT / "ruff.toml"),
                "autoseg", *STAGES, "tests", "benchmarks", "tools"], ROOT):
            failed.append("ruff")
    print("lint: " + (f"FAILED ({', '.join(failed)})" if failed else "passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
