"""Shared test set-up: a planned phantom workspace with its AUTOSEG_* folders, and a lock held by
another process (as a second autoseg run would hold it)."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from autoseg.cli import main
from autoseg.phantom import write_task

SMALL_SPACINGS = ((4.0, 3.5, 3.5), (5.0, 4.0, 4.0))


def autoseg_env(root: Path) -> dict[str, str]:
    """The three AUTOSEG_* folders of a workspace under ``root``."""
    return {"AUTOSEG_RAW": str(root / "raw"), "AUTOSEG_PREPROCESSED": str(root / "pre"),
            "AUTOSEG_RESULTS": str(root / "res")}


def planned_workspace(root: Path, plan_argv: list[str], num_training: int, seed: int,
                      num_test: int = 0) -> Path:
    """A Task08 phantom task under ``root/raw``, planned and preprocessed with ``plan_argv``."""
    write_task(root / "raw", task="Task08", num_training=num_training, num_test=num_test, seed=seed,
               spacing_range=SMALL_SPACINGS)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in autoseg_env(root).items():
            mp.setenv(k, v)
        assert main(plan_argv) == 0
    return root


def use_workspace(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the AUTOSEG_* variables at ``root`` for one test."""
    for k, v in autoseg_env(root).items():
        monkeypatch.setenv(k, v)
    return root


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from autoseg.locks import folder_lock
with folder_lock(Path(sys.argv[1]), "held by a test", "wait"):
    print("held", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def lock_held_elsewhere(folder: Path) -> Iterator[subprocess.Popen]:
    """Another process holds ``folder``'s autoseg lock for the block, then dies by SIGKILL."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
