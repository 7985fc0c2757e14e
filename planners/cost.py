"""Cost model of a training step: FLOPs counted on the meta device, time calibrated on this machine.

Counting runs the network on ``torch.device("meta")`` under ``FlopCounterMode``: no memory is
allocated and no arithmetic is done. Time is modelled as ``(flops / throughput + voxels * c) /
speedup``: the arithmetic of the convolutions, plus a cost per voxel of the batch that does not grow
with the width of the network (normalisation, activations, the loss and deep supervision at full
resolution, memory traffic), on one thread; divided by what all the machine's cores gain over one
thread. A FLOPs-only model is wrong by a factor of 2-3 between 8 and 16 base features on a CPU:
doubling the features quadruples the FLOPs but not even doubles the time.

The calibration measures the bracket as the CPU time of real one-thread steps (8 base features at
a small and a medium patch, 16 at the small one; ``planner.CALIBRATION_POINTS``). CPU time on one
thread hardly depends on what else runs: beside a busy loop on the 2-core development machine it
stayed within 3 %, where the wall time of a two-thread step grew 20-fold (OpenMP threads spin). The
speedup of all threads is timed only while the machine is otherwise quiet; if it does not get quiet
within :data:`QUIET_WAIT_S`, an Amdahl speedup is assumed. The calibration is checked (no step
beyond any core's arithmetic, a fit that explains every point), cached once per machine and reused
by every later plan, so that the same command on the same machine gives the same plans whatever
the load. It runs in a short-lived subprocess so its memory is returned at once.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from autoseg.cpu_share import usable_cores
from autoseg.io import read_json, write_json
from autoseg.networks import build_network
from autoseg.precision import autocast

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 4  # 2: the per-voxel term (1 was overhead + flops); 3: FLOPs as 3x forward;
# 4: one-thread CPU time and the idle speedup of all threads (load-independent)


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


class StepTimer:
    """Real training steps (forward, backward, SGD update) of one network and batch, the forward
    pass under ``precision``'s autocast as training runs it; built once, stepped many times."""

    def __init__(self, name: str, kwargs: dict, in_channels: int, num_classes: int,
                 patch_size: tuple[int, ...], batch_size: int, device: str = "cpu", precision: str = "fp32"):
        self.device, self.precision = device, precision
        self.net = build_network(name, kwargs, in_channels, num_classes).to(device)
        self.net.train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        self.x = torch.randn((batch_size, in_channels, *patch_size), device=device)
        self.y = torch.randint(0, num_classes, (batch_size, *patch_size), device=device)

    def step(self) -> tuple[float, float]:
        """One step: (wall seconds, CPU seconds of this process)."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            out = self.net(self.x)
        outs = [o.float() for o in out] if isinstance(out, (list, tuple)) else [out.float()]
        loss = sum(torch.nn.functional.cross_entropy(o, torch.nn.functional.interpolate(
            self.y[:, None].float(), size=o.shape[2:]).squeeze(1).long()) for o in outs)
        assert isinstance(loss, torch.Tensor)  # a network has at least one output, so not sum()'s 0
        loss.backward()
        self.opt.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0


def measure_step_seconds(name: str, kwargs: dict, in_channels: int, num_classes: int,
                         patch_size: tuple[int, ...], batch_size: int, repeats: int = 3,
                         device: str = "cpu", precision: str = "fp32", clock: str = "wall") -> float:
    """Fastest of ``repeats`` real training steps after a warm-up, in wall seconds or (``clock="cpu"``)
    CPU seconds of this process.

    The minimum, not the median: other processes on the machine only ever add time, so the fastest
    step is the best estimate of what the plan costs on an idle machine."""
    timer = StepTimer(name, kwargs, in_channels, num_classes, patch_size, batch_size, device, precision)
    timer.step()  # warm-up: first-call allocations and kernel selection
    times = [timer.step()[0 if clock == "wall" else 1] for _ in range(repeats)]
    return float(min(times))


@dataclass
class CpuTimeModel:
    """``seconds = (flops / flops_per_s + voxels * seconds_per_voxel) / speedup`` for one training
    step on this machine (``voxels``: patch voxels times batch).

    The bracket is the step's CPU time on one thread, which other processes barely change (they take
    cores, not the work a core does: measured within 3 % beside a busy loop, docs/planning.md);
    ``speedup`` is what the machine's cores gain over one thread when idle."""

    flops_per_s: float
    seconds_per_voxel: float = 0.0
    source: str = "given"
    speedup: float = 1.0
    threads: int = 1

    def predict(self, flops: int, voxels: int = 0) -> float:
        return (flops / self.flops_per_s + voxels * self.seconds_per_voxel) / self.speedup

    def scaled(self, factor: float, source: str) -> "CpuTimeModel":
        """The same model ``factor`` times slower (a real step measured ``factor`` times the estimate)."""
        return CpuTimeModel(self.flops_per_s / factor, self.seconds_per_voxel * factor, source,
                            self.speedup, self.threads)

    def describe(self) -> str:
        if self.speedup == 1.0 and self.threads == 1:
            return (f"CPU model: {self.flops_per_s / 1e9:.1f} GFLOP/s + {self.seconds_per_voxel * 1e9:.0f} ns "
                    f"per voxel of the batch ({self.source})")
        return (f"CPU model: one thread {self.flops_per_s / 1e9:.1f} GFLOP/s + {self.seconds_per_voxel * 1e9:.0f} "
                f"ns per voxel of the batch, {self.speedup:.2f}x on {self.threads} threads ({self.source})")


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


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), fallback)
    except OSError:
        return fallback


def machine_key(network: str, precision: str = "fp32") -> str:
    """What a calibration depends on: processor, usable cores, torch version, network and the
    precision the steps run in."""
    key = f"{cpu_model()}|{len(usable_cores())}|{torch.__version__}|{network}|v{CALIBRATION_VERSION}"
    return key if precision == "fp32" else f"{key}|{precision}"


#: Arithmetic no CPU core exceeds: 5 GHz x 2048 FLOP a cycle (AMX bf16 tiles). A step timed faster
#: than this was not timed (a clock glitch, or work skipped), as the "293 TFLOP/s" of issue 19.
MAX_FLOPS_PER_CORE = 5e9 * 2048
#: A calibration whose fit misses one of its own points by more than this is not trusted.
MAX_FIT_ERROR = 0.35
#: Timed steps per calibration point (the fastest counts), after a warm-up step. Three gave one-thread
#: throughputs of 262-325 GFLOP/s and all-core speedups of 1.37-1.72 in five idle calibrations on the
#: 2-core AMD EPYC VM (benchmarks/plan_repro.py); five cost about 6 s more.
CALIBRATION_REPEATS = 5
#: Longest wait for a quiet machine before the idle speedup is assumed instead of measured.
QUIET_WAIT_S = 30.0
#: Cores other processes may keep busy while the idle speedup is timed.
QUIET_OTHERS = 0.25
#: Share of a step that does not run in parallel, for the speedup assumed when the machine never
#: got quiet (Amdahl). On the 2-core AMD EPYC development VM, 2 threads gained 1.37-1.72x on the
#: largest calibration step in eight quiet calibrations and 1.36-1.38x on planned steps (20x64x80
#: and 24x64x96, 16 features): 1/3 gives 1.5x on 2 cores. More cores gain less each.
SERIAL_SHARE = 1 / 3


def assumed_speedup(threads: int) -> float:
    return 1.0 / (SERIAL_SHARE + (1.0 - SERIAL_SHARE) / max(threads, 1))


def _measure_calibration(points: list[tuple[str, dict, int, int, tuple[int, ...], int]], precision: str,
                         threads: int, log_level: int) -> dict:
    """In a fresh process: each point's CPU seconds on one thread (fastest of 5 after a warm-up),
    and the idle speedup of ``threads`` threads on the largest point, timed only while other
    processes leave the cores alone (:data:`QUIET_OTHERS`), waiting at most :data:`QUIET_WAIT_S`."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    measured = []
    for p in points:
        seconds = measure_step_seconds(*p, repeats=CALIBRATION_REPEATS, precision=precision, clock="cpu")
        measured.append((training_flops(*p), math.prod(p[4]) * p[5], seconds))
        log.info("calibration: %.2f GFLOP, %d voxels: %.3f CPU s on one thread", measured[-1][0] / 1e9,
                 measured[-1][1], seconds)
    largest = max(range(len(points)), key=lambda i: measured[i][0])
    measured_speedup = _quiet_speedup(StepTimer(*points[largest], precision=precision), threads)
    speedup, source = ((measured_speedup, "measured") if measured_speedup
                       else (assumed_speedup(threads), "assumed"))
    return {"points": measured, "speedup": min(max(speedup, 1.0), float(threads)), "speedup_source": source}


def _quiet_speedup(timer: StepTimer, threads: int, wanted: int = CALIBRATION_REPEATS) -> float | None:
    """Wall time of a one-thread step over that of a ``threads``-thread step, each the fastest of
    ``wanted`` taken in turns while the machine was otherwise quiet, or None when it was not quiet
    for :data:`QUIET_WAIT_S` seconds (progress lines say so).

    The machine is looked at for half a second, idle, before each pair of steps, and a pair during
    which another process woke up is dropped: a step with every thread beside a busy process takes
    many times its idle time (OpenMP threads spin). Taking the two in turns cancels slow drifts of the
    machine's speed (other virtual machines on the host)."""
    from autoseg.cpu_share import others_busy_cores, sample_cpu

    if threads == 1:
        return None  # nothing to gain: the one-thread CPU time is the step
    cores = usable_cores()
    one: list[float] = []
    many: list[float] = []
    warm, start, said = False, time.monotonic(), time.monotonic()
    while len(many) < wanted and time.monotonic() - start < QUIET_WAIT_S:
        before = sample_cpu(cores)
        time.sleep(0.5)
        others = others_busy_cores(before, sample_cpu(cores))
        if others is None or others <= QUIET_OTHERS:
            if not warm:
                timer.step()  # warm-up: first-call allocations and kernel selection
                warm = True
            during = sample_cpu(cores)
            torch.set_num_threads(1)
            t1 = timer.step()[0]
            torch.set_num_threads(threads)
            tn = timer.step()[0]
            others = others_busy_cores(during, sample_cpu(cores))
            if others is None or others <= QUIET_OTHERS:
                one.append(t1)
                many.append(tn)
                continue
        if time.monotonic() - said > 5:
            said = time.monotonic()
            log.info("calibration: waiting for a quiet machine to time %d threads (other processes keep "
                     "%.1f cores busy; at most %.0f s more)", threads, others,
                     max(0.0, QUIET_WAIT_S - (said - start)))
    return min(one) / min(many) if many else None


def check_calibration(measured: list[tuple[int, int, float]], rate: float, per_voxel: float) -> list[str]:
    """Why a calibration cannot be trusted: a step faster than any core, or a fit that misses a point."""
    problems = []
    for flops, voxels, seconds in measured:
        if flops / max(seconds, 1e-9) > MAX_FLOPS_PER_CORE:
            problems.append(f"{flops / 1e9:.1f} GFLOP in {seconds:.3f} s is beyond any CPU core")
        fitted = flops / rate + voxels * per_voxel
        if abs(fitted - seconds) > MAX_FIT_ERROR * seconds:
            problems.append(f"the fit gives {fitted:.3f} s for a step measured at {seconds:.3f} s")
    return problems


def calibrate(points: list[tuple[str, dict, int, int, tuple[int, ...], int]], cache: Path | None,
              network: str, precision: str = "fp32", refresh: bool = False) -> CpuTimeModel:
    """Fit the time model to real steps of ``points`` in ``precision``, reusing a cached fit for
    this machine (every later plan on it uses the same one, so plans do not depend on the load);
    ``refresh`` measures again and replaces it. Plans made at the same time take turns (a lock beside
    the cache): the second reads what the first measured instead of timing steps beside it and
    losing its entry when both write the file."""
    if cache is None:
        return _calibrate_locked(points, None, network, precision, refresh)
    import fcntl

    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_name(cache.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process ends
        return _calibrate_locked(points, cache, network, precision, refresh)


def _calibrate_locked(points: list[tuple[str, dict, int, int, tuple[int, ...], int]], cache: Path | None,
                      network: str, precision: str, refresh: bool) -> CpuTimeModel:
    key = machine_key(network, precision)
    if cache is not None and cache.is_file() and not refresh:
        entry = read_json(cache).get(key)
        if entry:
            return CpuTimeModel(entry["flops_per_s"], entry["seconds_per_voxel"],
                                f"{precision}, speedup {entry['speedup_source']}, calibrated {entry['date']}, "
                                f"cached in {cache}", entry["speedup"], entry["threads"])
    threads = len(usable_cores())
    log.info("calibrating this CPU: %d training steps on one thread, then %d threads on an idle machine",
             (CALIBRATION_REPEATS + 1) * len(points), threads)
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:  # a fresh process: its memory goes back to the system when it ends
        result = pool.apply(_measure_calibration, (points, precision, threads, logging.getLogger().level))
    measured = [tuple(p) for p in result["points"]]
    rate, per_voxel = fit_time_model(measured)
    problems = check_calibration(measured, rate, per_voxel)
    date = time.strftime("%Y-%m-%d %H:%M")
    source = f"{precision}, speedup {result['speedup_source']}, calibrated {date}"
    model = CpuTimeModel(rate, per_voxel, source, result["speedup"], threads)
    if problems:
        log.warning("the CPU calibration is not trusted (%s); it is not cached, and the plan's step time may be "
                    "off: re-plan with --recalibrate, or give --cpu-gflops", "; ".join(problems))
        model.source += ", NOT TRUSTED: " + "; ".join(problems)
        return model
    if result["speedup_source"] == "assumed":
        log.warning("the machine was busy for %.0f s, so the speedup of %d threads over one is assumed "
                    "(%.2fx), not measured; it is cached like a measured one, so later plans on this machine "
                    "agree: re-plan with --recalibrate on an idle machine to measure it", QUIET_WAIT_S,
                    threads, result["speedup"])
    if cache is None:
        return model
    entries = read_json(cache) if cache.is_file() else {}
    entries[key] = {"flops_per_s": rate, "seconds_per_voxel": per_voxel, "speedup": result["speedup"],
                    "speedup_source": result["speedup_source"], "threads": threads, "date": date,
                    "points": [{"gflop": f / 1e9, "voxels": v, "cpu_seconds": s} for f, v, s in measured]}
    write_json(cache, entries)
    model.source += f", cached in {cache}"
    return model
