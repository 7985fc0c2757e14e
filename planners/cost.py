"""Cost model of a training step: FLOPs counted on the meta device, time calibrated on this machine.

Counting runs the network on ``torch.device("meta")`` under ``FlopCounterMode``: no memory is
allocated and no arithmetic is done. Time is modelled as ``flops / throughput + voxels * c``: the
arithmetic of the convolutions, plus a cost per voxel of the batch that does not grow with the
width of the network (normalisation, activations, the loss and deep supervision at full
resolution, memory traffic). A FLOPs-only model is wrong by a factor of 2-3 between 8 and 16 base
features on a CPU: doubling the features quadruples the FLOPs but not even doubles the time. Both
constants are fitted to three real training steps (8 base features at a small and a medium patch,
16 at the small one; ``planner.CALIBRATION_POINTS``) measured once per machine and cached, so that planning is quick and the same command on
the same machine gives the same plans. The calibration runs in a short-lived subprocess so its
memory is returned at once.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from autoseg.io import read_json, write_json
from autoseg.networks import build_network
from autoseg.precision import autocast

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 3  # 2: the per-voxel term (1 was overhead + flops); 3: FLOPs as 3x forward


#: A training step's FLOPs per forward FLOP. The backward pass of a convolution or matrix product
#: costs two of its forward passes (the gradient of the input and of the weights). Counting the
#: backward pass too, on the meta device, agreed within 0.3 % for the convolutional networks (16..256
#: features at 40x64x80; 1 % at small patches) and within 3 % for TransUNet, and took 2-3x as long
#: as the forward pass alone.
TRAINING_FLOPS_PER_FORWARD = 3


@lru_cache(maxsize=512)
def _flops_cached(name: str, kwargs_json: str, in_channels: int, num_classes: int,
                  patch_size: tuple[int, ...], batch_size: int) -> int:
    with torch.device("meta"):
        net = build_network(name, json.loads(kwargs_json), in_channels, num_classes)
        x = torch.empty((batch_size, in_channels, *patch_size))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return TRAINING_FLOPS_PER_FORWARD * int(counter.get_total_flops())


def training_flops(name: str, kwargs: dict, in_channels: int, num_classes: int,
                   patch_size: tuple[int, ...], batch_size: int) -> int:
    """FLOPs of one training step (forward and backward pass of the convolutions and matrix
    products), counted on the meta device, memoised."""
    return _flops_cached(name, json.dumps(kwargs, sort_keys=True), in_channels, num_classes,
                         tuple(patch_size), batch_size)


def measure_step_seconds(name: str, kwargs: dict, in_channels: int, num_classes: int,
                         patch_size: tuple[int, ...], batch_size: int, repeats: int = 3,
                         device: str = "cpu", precision: str = "fp32") -> float:
    """Fastest of ``repeats`` real training steps (forward, backward, SGD update) after a warm-up,
    the forward pass under ``precision``'s autocast as training runs it.

    The minimum, not the median: other processes on the machine only ever add time, so the fastest
    step is the best estimate of what the plan costs on an idle machine."""
    net = build_network(name, kwargs, in_channels, num_classes).to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x = torch.randn((batch_size, in_channels, *patch_size), device=device)
    y = torch.randint(0, num_classes, (batch_size, *patch_size), device=device)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            out = net(x)
        outs = [o.float() for o in out] if isinstance(out, (list, tuple)) else [out.float()]
        loss = sum(torch.nn.functional.cross_entropy(o, torch.nn.functional.interpolate(
            y[:, None].float(), size=o.shape[2:]).squeeze(1).long()) for o in outs)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return float(min(times))


@dataclass
class CpuTimeModel:
    """``seconds = flops / flops_per_s + voxels * seconds_per_voxel`` for one training step on
    this machine (``voxels``: patch voxels times batch)."""

    flops_per_s: float
    seconds_per_voxel: float = 0.0
    source: str = "given"

    def predict(self, flops: int, voxels: int = 0) -> float:
        return flops / self.flops_per_s + voxels * self.seconds_per_voxel

    def scaled(self, factor: float, source: str) -> "CpuTimeModel":
        """The same model ``factor`` times slower (a real step measured ``factor`` times the estimate)."""
        return CpuTimeModel(self.flops_per_s / factor, self.seconds_per_voxel * factor, source)

    def describe(self) -> str:
        return (f"CPU model: {self.flops_per_s / 1e9:.1f} GFLOP/s + {self.seconds_per_voxel * 1e9:.0f} ns "
                f"per voxel of the batch ({self.source})")


def fit_time_model(measured: list[tuple[int, int, float]]) -> tuple[float, float]:
    """Least squares of ``seconds = flops * a + voxels * b`` over (flops, voxels, seconds), relative
    errors weighted equally, with ``a > 0`` and ``b >= 0``: (flops_per_s, seconds_per_voxel).

    Where the two-term fit is not physical (timings disturbed by a busy machine can make either
    coefficient come out negative), the FLOPs-only fit is used: it is always positive."""
    import numpy as np

    a = np.array([[f / s, v / s] for f, v, s in measured], dtype=float)
    y = np.ones(len(measured))
    flops_only = np.array([float(a[:, 0] @ y / (a[:, 0] @ a[:, 0])), 0.0])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    best = coef if coef[0] > 0 and coef[1] >= 0 else flops_only
    return 1.0 / float(best[0]), float(best[1])


def machine_key(network: str, precision: str = "fp32") -> str:
    """What a calibration depends on: processor, core count, threads, torch version, network and
    the precision the steps run in."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), cpu)
    except OSError:
        pass
    key = f"{cpu}|{os.cpu_count()}|{torch.get_num_threads()}|{torch.__version__}|{network}|v{CALIBRATION_VERSION}"
    return key if precision == "fp32" else f"{key}|{precision}"  # fp32 keys as before, caches stay valid


def _measure_points(points: list[tuple[str, dict, int, int, tuple[int, ...], int]],
                    precision: str = "fp32") -> list[tuple[int, int, float]]:
    import math

    return [(training_flops(*p), math.prod(p[4]) * p[5], measure_step_seconds(*p, precision=precision))
            for p in points]


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall, busy CPU seconds of the whole machine, CPU seconds of this process and its children)."""
    import resource

    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return time.monotonic(), busy, own


def _others_cores(before: tuple[float, float, float] | None, after: tuple[float, float, float] | None) -> float:
    """Cores kept busy by other processes between two snapshots (0 where /proc is absent)."""
    if before is None or after is None:
        return 0.0
    wall = max(after[0] - before[0], 1e-6)
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / wall)


def calibrate(points: list[tuple[str, dict, int, int, tuple[int, ...], int]], cache: Path | None,
              network: str, precision: str = "fp32") -> CpuTimeModel:
    """Fit the time model to real steps of ``points`` in ``precision``, reusing a cached fit for
    this machine."""
    key = machine_key(network, precision)
    if cache is not None and cache.is_file():
        entry = read_json(cache).get(key)
        if entry:
            return CpuTimeModel(entry["flops_per_s"], entry["seconds_per_voxel"],
                                f"{precision}, calibrated {entry['date']}, cached in {cache}")
    before = _cpu_snapshot()
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:  # a fresh process: its memory goes back to the system when it ends
        measured = pool.apply(_measure_points, (points, precision))
    others = _others_cores(before, _cpu_snapshot())
    busy = others > 0.25 * (os.cpu_count() or 1)
    rate, per_voxel = fit_time_model(measured)
    for flops, voxels, seconds in measured:
        log.info("calibration: %.2f GFLOP, %d voxels in %.3f s", flops / 1e9, voxels, seconds)
    date = time.strftime("%Y-%m-%d %H:%M")
    if busy:
        log.warning("other processes kept %.1f of %d cores busy while calibrating: the plan may be "
                    "smaller than this machine can do; the calibration is not cached, re-plan with "
                    "--force when the machine is idle", others, os.cpu_count() or 1)
    if cache is None or busy:
        return CpuTimeModel(rate, per_voxel, f"{precision}, calibrated {date}" + (" on a busy machine" if busy else ""))
    entries = read_json(cache) if cache.is_file() else {}
    entries[key] = {"flops_per_s": rate, "seconds_per_voxel": per_voxel, "date": date,
                    "points": [{"gflop": f / 1e9, "voxels": v, "seconds": s} for f, v, s in measured]}
    write_json(cache, entries)
    return CpuTimeModel(rate, per_voxel, f"{precision}, calibrated {date}, cached in {cache}")
