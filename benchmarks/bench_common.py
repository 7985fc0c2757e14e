"""What the newer benchmarks share: the CPU they ran on, a results file that keeps every run, and
autoseg commands run the way a user runs them."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_autoseg(args: list[str], env: dict[str, str], log: Path) -> float:
    """Run one autoseg command in a fresh process, its command line and output appended to ``log``;
    returns its wall time. A failing command raises ``CalledProcessError``."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ autoseg {' '.join(args)}\n")
        f.flush()
        subprocess.run([sys.executable, "-m", "autoseg", *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                       check=True)
    return time.perf_counter() - t0


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def append_result(path: Path, result: dict[str, Any]) -> None:
    """Add ``result`` to the list of runs in the JSON file ``path`` (created when missing)."""
    history = json.loads(path.read_text()) if path.is_file() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*history, result], indent=1, default=float) + "\n")
