"""The one place that reads the environment: folder locations for raw, preprocessed and results, and
the machine's cache (the CPU calibration)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class Settings:
    """Where autoseg reads raw datasets and writes its outputs.

    Read once at the CLI from ``AUTOSEG_RAW``, ``AUTOSEG_PREPROCESSED`` and ``AUTOSEG_RESULTS``;
    each defaults to a folder under the current directory so that a first run never fails on a
    missing variable. Under ``torchrun`` its ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are read too.
    """

    raw: Path
    preprocessed: Path
    results: Path
    #: This process's place in a ``torchrun`` launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: What autoseg keeps per machine, whatever the dataset or working folder: the CPU calibration.
    #: ``AUTOSEG_CACHE``, else ``$XDG_CACHE_HOME/autoseg``, else ``~/.cache/autoseg``.
    cache: Path = Path.home() / ".cache" / "autoseg"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> "Settings":
        env = os.environ if env is None else env
        base = Path.cwd() if cwd is None else cwd

        def pick(var: str, default: str) -> Path:
            value = env.get(var)
            return Path(value).expanduser().resolve() if value else (base / default).resolve()

        return cls(
            raw=pick("AUTOSEG_RAW", "autoseg_raw"),
            preprocessed=pick("AUTOSEG_PREPROCESSED", "autoseg_preprocessed"),
            results=pick("AUTOSEG_RESULTS", "autoseg_results"),
            rank=int(env.get("RANK", 0)),
            world_size=int(env.get("WORLD_SIZE", 1)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            cache=_cache_dir(env),
        )


def _cache_dir(env: Mapping[str, str]) -> Path:
    if env.get("AUTOSEG_CACHE"):
        return Path(env["AUTOSEG_CACHE"]).expanduser().resolve()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return (base / "autoseg").resolve()
