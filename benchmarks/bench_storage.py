"""Storage benchmark: what autoseg's preprocessed cases cost on disk, to write and to read a patch.

On an autoseg preprocessed dataset (by default the 10 phantoms of ``bench_preprocess.py``, made and
preprocessed here when missing) it reports, for the stored blosc2 arrays against the plain float32 /
uint8 ``.npy`` files autoseg wrote before preprocessing version 4 (re-created in a scratch folder
from the same arrays):

- bytes on disk (the ``.npy`` bytes are the arrays' own plus their headers);
- seconds to compress and write each case, and to ``np.save`` it;
- milliseconds to read one random training patch (the plans' patch grown for rotation and scaling,
  as the data loader reads it, image and labels), page cache warm, from each format;
- with ``--train-steps N``: a short training run of fold 0 on the stored data, and the share of its
  wall time the network waited for data (``data_wait_share`` in ``fold_0/log.jsonl``);
- with ``--codecs``: the image bytes, compression time and patch-read time of other codecs
  (:data:`CODECS`, lossy ones included) on the same arrays.

nnU-Net's bytes on the same data come from ``bench_preprocess.py`` (its ``output_bytes``); run both
for the ratio. Not run by CI. From the repository root::

    .venv/bin/python benchmarks/bench_storage.py --train-steps 30 --codecs
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model  # noqa: E402
from bench_preprocess import MSD_TASK, make_task  # noqa: E402

from autoseg.layout import PreprocessedDataset, ResultsDataset  # noqa: E402
from autoseg.plans import Plans  # noqa: E402
from autoseg.preprocessing import load_case  # noqa: E402
from autoseg.preprocessing.storage import chunk_shapes, write_case  # noqa: E402
from autoseg.training.data import crop_with_padding, initial_patch_size  # noqa: E402



def prepare(work: Path, cases: int, seed: int) -> Path:
    """The preprocessed dataset folder (made with ``autoseg plan_and_preprocess`` when missing)."""
    pre = work / "pre" / MSD_TASK
    if not PreprocessedDataset(pre).case_ids():
        root = make_task(work / "raw", cases, small=False, seed=seed)
        env = {**os.environ, "AUTOSEG_RAW": str(root.parent), "AUTOSEG_PREPROCESSED": str(work / "pre"),
               "AUTOSEG_RESULTS": str(work / "results")}
        subprocess.run([sys.executable, "-m", "autoseg", "plan_and_preprocess", "-d", "8", "-j", "2"],
                       env=env, check=True)
    return pre


def _read_patches(image: Any, labels: Any, size: tuple[int, ...], reads: int, seed: int) -> float:
    """Mean seconds to read one random patch of ``size`` (image and labels) from the two arrays."""
    rng = np.random.default_rng(seed)
    spatial = labels.shape
    t0 = time.perf_counter()
    for _ in range(reads):
        centre = np.array([rng.integers(0, s) for s in spatial])
        crop_with_padding(image, centre, size)
        crop_with_padding(labels, centre, size)
    return (time.perf_counter() - t0) / reads


def measure_case(pre: Path, case: str, scratch: Path, patch: tuple[int, ...], reads: int) -> dict[str, Any]:
    files = PreprocessedDataset(pre).case(case)
    image, labels, props = load_case(pre, case, lazy=False)
    row: dict[str, Any] = {"case": case, "shape": list(image.shape),
                           "b2nd_bytes": files.image.stat().st_size + files.labels.stat().st_size}
    npy_image, npy_labels = scratch / f"{case}.npy", scratch / f"{case}_seg.npy"
    t0 = time.perf_counter()
    np.save(npy_image, image)
    np.save(npy_labels, labels)
    row["npy_write_s"] = time.perf_counter() - t0
    row["npy_bytes"] = npy_image.stat().st_size + npy_labels.stat().st_size
    t0 = time.perf_counter()
    write_case(scratch / "again", case, image, labels, props, patch_size=patch)
    row["b2nd_write_s"] = time.perf_counter() - t0
    size = initial_patch_size(patch, in_plane_only=True)
    stored, stored_labels, _ = load_case(pre, case)
    _read_patches(stored, stored_labels, size, 3, 0)  # warm the page cache for both formats
    row["b2nd_patch_ms"] = 1000 * _read_patches(stored, stored_labels, size, reads, 1)
    mapped, mapped_labels = np.load(npy_image, mmap_mode="r"), np.load(npy_labels, mmap_mode="r")
    _read_patches(mapped, mapped_labels, size, 3, 0)
    row["npy_patch_ms"] = 1000 * _read_patches(mapped, mapped_labels, size, reads, 1)
    for path in (npy_image, npy_labels):
        path.unlink()
    return row


#: The codecs ``--codecs`` compares (name: cparams, and a dtype when the codec is lossy by casting).
CODECS: dict[str, tuple[dict[str, Any], Any]] = {
    "zstd1+shuffle (chosen)": ({"codec": blosc2.Codec.ZSTD, "clevel": 1, "filters": [blosc2.Filter.SHUFFLE]}, None),
    "zstd5+shuffle": ({"codec": blosc2.Codec.ZSTD, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE]}, None),
    "zstd8 (nnU-Net's)": ({"codec": blosc2.Codec.ZSTD, "clevel": 8, "filters": [blosc2.Filter.NOFILTER]}, None),
    "lz4-9+shuffle": ({"codec": blosc2.Codec.LZ4, "clevel": 9, "filters": [blosc2.Filter.SHUFFLE]}, None),
    "lz4hc9+shuffle": ({"codec": blosc2.Codec.LZ4HC, "clevel": 9, "filters": [blosc2.Filter.SHUFFLE]}, None),
    "float16 zstd5+shuffle (lossy)": ({"codec": blosc2.Codec.ZSTD, "clevel": 5,
                                       "filters": [blosc2.Filter.SHUFFLE]}, np.float16),
    "12 mantissa bits zstd5 (lossy)": ({"codec": blosc2.Codec.ZSTD, "clevel": 5,
                                        "filters": [blosc2.Filter.TRUNC_PREC, blosc2.Filter.SHUFFLE],
                                        "filters_meta": [12, 0]}, None),
}


def compare_codecs(pre: Path, patch: tuple[int, ...], scratch: Path, reads: int) -> dict[str, dict[str, float]]:
    """Image bytes, compression time and patch-read time of each codec in :data:`CODECS`, one thread."""
    size = initial_patch_size(patch, in_plane_only=True)
    out: dict[str, dict[str, float]] = {}
    for name, (cparams, dtype) in CODECS.items():
        total, write_s, read_s = 0, 0.0, 0.0
        for case in PreprocessedDataset(pre).case_ids():
            image = load_case(pre, case, lazy=False)[0]
            image = image.astype(dtype) if dtype is not None else image
            chunks, blocks = chunk_shapes(image.shape, patch)
            path = scratch / "codec.b2nd"
            t0 = time.perf_counter()
            blosc2.asarray(image, urlpath=str(path), mode="w", chunks=chunks, blocks=blocks,
                           cparams={**cparams, "nthreads": 1})
            write_s += time.perf_counter() - t0
            total += path.stat().st_size
            stored = blosc2.open(str(path), mode="r", mmap_mode="r", dparams={"nthreads": 1})
            rng = np.random.default_rng(1)
            t0 = time.perf_counter()
            for _ in range(reads):
                crop_with_padding(stored, np.array([rng.integers(0, s) for s in image.shape[1:]]), size)
            read_s += (time.perf_counter() - t0) / reads
        cases = len(PreprocessedDataset(pre).case_ids())
        out[name] = {"image_bytes": total, "write_s": round(write_s, 2), "patch_ms": round(1000 * read_s / cases, 2)}
        print(name, out[name], flush=True)
    return out


def train_wait(work: Path, steps: int) -> dict[str, Any]:
    """Train fold 0 for ``steps`` steps on the stored data; the data-wait share of each logged epoch."""
    results = work / "results"
    env = {**os.environ, "AUTOSEG_RAW": str(work / "raw"), "AUTOSEG_PREPROCESSED": str(work / "pre"),
           "AUTOSEG_RESULTS": str(results)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autoseg", "train", "-d", "8", "-f", "0", "--steps", str(steps),
                    "--force", "--iterations", str(max(10, steps // 3))], env=env, check=True)
    wall = time.perf_counter() - t0
    folder = ResultsDataset(results / MSD_TASK)
    logs = sorted(folder.root.glob("*/fold_0/log.jsonl"))
    records = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
    shares = [r["data_wait_share"] for r in records if "data_wait_share" in r]
    return {"steps": steps, "wall_s": round(wall, 1), "data_wait_share_per_epoch": [round(s, 4) for s in shares],
            "data_wait_share_max": round(max(shares), 4) if shares else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=BENCH / "work" / "storage")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reads", type=int, default=40, help="random patches read per case and format")
    p.add_argument("--train-steps", type=int, default=0, help="also train fold 0 this many steps")
    p.add_argument("--codecs", action="store_true", help="also compare the codecs of CODECS on the images")
    p.add_argument("--output", type=Path, default=BENCH / "results" / "storage.json")
    args = p.parse_args(argv)

    pre = prepare(args.work, args.cases, args.seed)
    plans = Plans.load(PreprocessedDataset(pre).plans)
    patch = tuple(plans.patch_size)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        for case in PreprocessedDataset(pre).case_ids():
            rows.append(measure_case(pre, case, Path(scratch), patch, args.reads))
            print(json.dumps(rows[-1]), flush=True)
    totals = {k: sum(r[k] for r in rows) for k in ("b2nd_bytes", "npy_bytes", "b2nd_write_s", "npy_write_s")}
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
        "cores": os.cpu_count(), "load_average_start": os.getloadavg(), "patch_size": list(patch),
        "read_patch_size": list(initial_patch_size(patch, in_plane_only=True)), "cases": rows,
        "total": {**totals, "ratio_b2nd_to_npy": totals["b2nd_bytes"] / totals["npy_bytes"],
                  "b2nd_patch_ms_median": statistics.median(r["b2nd_patch_ms"] for r in rows),
                  "npy_patch_ms_median": statistics.median(r["npy_patch_ms"] for r in rows)},
    }
    if args.codecs:
        with tempfile.TemporaryDirectory(dir=args.work) as scratch:
            result["codecs"] = compare_codecs(pre, patch, Path(scratch), args.reads)
    if args.train_steps:
        result["training"] = train_wait(args.work, args.train_steps)
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result["total"], indent=1))
    if "training" in result:
        print(json.dumps(result["training"]))
    append_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
