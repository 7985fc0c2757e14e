"""Checkpoints: model, optimiser, schedule state, RNG states and the epoch log, written atomically
and loaded with ``weights_only=True`` so that a model file can never run code."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.errors import AutosegError
from autoseg.io import atomic_path


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": json.dumps(random.getstate())}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AutosegError("checkpoint not found", path, "train this fold first (autoseg train)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise AutosegError(f"checkpoint cannot be loaded ({type(exc).__name__}: {str(exc)[:200]})", path,
                           "delete it and retrain the fold, or restore it from a backup") from None
