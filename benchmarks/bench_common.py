"""What the newer benchmarks share: the CPU they ran on, and a results file that keeps every run."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


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
