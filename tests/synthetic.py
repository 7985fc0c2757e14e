"""Tiny CT-like volumes written as MSD and nnU-Net v2 raw folders, for tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autoseg.io import Geometry, write_image

SHARED_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def tiny_ct(seed: int, shape: tuple[int, int, int] = (12, 40, 48)) -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like volume (air, body, liver blob) and labels (1 vessel-ish tube, 2 tumour blob)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    image = np.full(shape, -1000.0)
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    image[body] = 40
    liver = ((y - 0.1) / 0.45) ** 2 + ((x + 0.3) / 0.4) ** 2 + (z / 1.2) ** 2 < 1
    image[liver] = 90
    labels = np.zeros(shape, np.uint8)
    vessel = liver & ((y - 0.1) ** 2 + (x + 0.3) ** 2 < 0.01)
    tumour = liver & ((y - 0.2) ** 2 + (x + 0.45) ** 2 + z**2 < 0.03)
    image[vessel] = 180
    image[tumour] = 30
    labels[vessel] = 1
    labels[tumour] = 2
    image += rng.normal(0, 10, shape)
    return image.astype(np.int16), labels


def write_case(folder: Path, name: str, array: np.ndarray, spacing=(2.5, 0.8, 0.8)) -> Path:
    geometry = Geometry(size=tuple(reversed(array.shape)), spacing=tuple(reversed(spacing)),
                        origin=(-10.0, 5.0, 20.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    path = folder / name
    write_image(path, array, geometry)
    return path


def make_msd_task(root: Path, n: int = 3, name: str = "Task08_HepaticVessel",
                  spacings: list | None = None) -> Path:
    task = root / name
    for i in range(n):
        image, labels = tiny_ct(i)
        spacing = spacings[i] if spacings else (2.5, 0.8, 0.8)
        write_case(task / "imagesTr", f"hepaticvessel_{i:03d}.nii.gz", image, spacing)
        write_case(task / "labelsTr", f"hepaticvessel_{i:03d}.nii.gz", labels, spacing)
    meta = {"name": "HepaticVessel", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "vessel", "2": "tumour"}, "numTraining": n,
            "training": [{"image": f"./imagesTr/hepaticvessel_{i:03d}.nii.gz",
                          "label": f"./labelsTr/hepaticvessel_{i:03d}.nii.gz"} for i in range(n)]}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def make_nnunet_dataset(root: Path, n: int = 3, name: str = "Dataset008_HepaticVessel") -> Path:
    ds = root / name
    for i in range(n):
        image, labels = tiny_ct(i)
        write_case(ds / "imagesTr", f"hv_{i:03d}_0000.nii.gz", image)
        write_case(ds / "labelsTr", f"hv_{i:03d}.nii.gz", labels)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "vessel": 1, "tumour": 2},
            "numTraining": n, "file_ending": ".nii.gz"}
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds


