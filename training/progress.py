"""Observability of a fold: ``log.jsonl`` (one line per epoch) and ``progress.png`` curves."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoseg.io import atomic_path


def write_log(path: Path, epochs: list[dict[str, Any]]) -> None:
    """Rewrite the whole log atomically, so after a resume it matches the checkpoint exactly."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(e) + "\n" for e in epochs))


def plot_progress(path: Path, epochs: list[dict[str, Any]], class_names: dict[int, str]) -> None:
    """Loss curves, per-class validation Dice and learning rate over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e["epoch"] for e in epochs]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 9), dpi=90, sharex=True)
    ax1.plot(x, [e["train_loss"] for e in epochs], label="train loss", color="#1f77b4")
    ax1.plot(x, [e["val_loss"] for e in epochs], label="validation loss", color="#d62728")
    ax1.set_ylabel("loss")
    ax1.legend(loc="upper right")
    for _, name in sorted(class_names.items()):
        ax2.plot(x, [e["val_dice"].get(name) for e in epochs], marker=".", label=f"{name} Dice")
    ax2.plot(x, [e["val_mean_dice"] for e in epochs], color="black", linestyle="--", label="mean foreground")
    ax2.set_ylabel("validation Dice")
    ax2.set_ylim(0, 1)
    ax2.legend(loc="lower right")
    ax3.plot(x, [e["lr"] for e in epochs], color="#2ca02c")
    ax3.set_ylabel("learning rate")
    ax3.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
