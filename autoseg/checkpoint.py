"""Checkpoints: model, optimiser, schedule state, RNG states and the epoch log, written atomically
and loaded with ``weights_only=True`` so that a model file can never run code.

Integrity: PyTorch does not check the zip CRCs of a checkpoint, so flipped bits in a weight tensor
load silently and the model predicts garbage (all background). :func:`save_checkpoint` therefore
stores a SHA-256 of the payload's contents inside the payload, under :data:`DIGEST_KEY`, and
:func:`load_checkpoint` recomputes it. The digest lives *inside* the file rather than in a sidecar
``<name>.sha256`` because a sidecar cannot be replaced in the same atomic rename as the checkpoint:
a crash between the two renames leaves a sound checkpoint beside a wrong digest (a false alarm), and
copying ``checkpoint_final.pt`` alone drops the check. The digest covers every tensor's dtype, shape
and bytes and every other value's ``repr``, in a fixed key order, so it is independent of how torch
lays out the zip. Backward compatibility: a checkpoint without the key (written before this check)
loads with a logged warning; older autoseg versions ignore the extra key.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from autoseg.errors import AutosegError
from autoseg.io import atomic_path

log = logging.getLogger(__name__)

DIGEST_KEY = "autoseg_sha256"  # the payload key holding the contents digest
DAMAGED_FIX = "retrain the fold (autoseg train), or restore the checkpoint from a backup"


def rng_state() -> dict[str, Any]:
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))  # ("MT19937", keys, pos, ...)
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": json.dumps(random.getstate())}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def contents_digest(payload: Any) -> str:
    """SHA-256 of a checkpoint payload's contents (tensors by dtype, shape and bytes; other values
    by ``repr``), walking dicts in sorted key order; the same before saving and after loading."""
    h = hashlib.sha256()
    _digest_into(h, payload)
    return h.hexdigest()


def _digest_into(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        h.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=repr):
            h.update(f"{key!r}=".encode())
            _digest_into(h, value[key])
    elif isinstance(value, (list, tuple)):  # both: a sequence's type may not survive every loader
        h.update(f"S{len(value)}:".encode())
        for item in value:
            _digest_into(h, item)
    else:
        h.update(f"V{value!r};".encode())


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with its contents digest, atomically (see the module docstring); a full
    disk is an :class:`AutosegError` naming the folder."""
    body = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # through a Python file: a full disk is then an OSError (ENOSPC) that atomic_path reports
        # naming the folder; torch's own writer says only "basic_ios::clear" or "unexpected pos"
        torch.save({**body, DIGEST_KEY: contents_digest(body)}, fh)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely and verify its contents digest; the payload comes back without it."""
    if not path.is_file():
        raise AutosegError("checkpoint not found", path, "train this fold first (autoseg train)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise AutosegError(f"checkpoint cannot be loaded ({type(exc).__name__}: {str(exc)[:200]})", path,
                           "delete it and " + DAMAGED_FIX) from None
    if not isinstance(payload, dict):
        raise AutosegError(f"checkpoint holds a {type(payload).__name__}, not an autoseg checkpoint", path,
                           DAMAGED_FIX)
    stored = payload.pop(DIGEST_KEY, None)
    if stored is None:
        log.warning("%s: checkpoint has no SHA-256 digest (written before autoseg checked them); loading it "
                    "unverified. Save it again (e.g. continue training) to add one", path)
    elif stored != contents_digest(payload):
        raise AutosegError("checkpoint is damaged: its contents do not match the SHA-256 digest stored when "
                           "it was written (flipped bits in the file)", path, DAMAGED_FIX)
    return payload
