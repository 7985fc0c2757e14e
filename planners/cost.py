"""Cost model of a training step: FLOPs counted on the meta device, time measured on this machine.

Counting runs the network on ``torch.device("meta")`` under ``FlopCounterMode``: no memory is
allocated and no arithmetic is done, so the planner can price dozens of candidate patches in a
second. Seconds per FLOP are measured once per planning run with a real forward+backward+update
step, because CPU throughput differs between machines by an order of magnitude.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from autoseg.networks import build_network

log = logging.getLogger(__name__)


def training_flops(name: str, kwargs: dict, in_channels: int, num_classes: int,
                   patch_size: tuple[int, ...], batch_size: int) -> int:
    """FLOPs of one forward and backward pass (convolutions and matrix products)."""
    with torch.device("meta"):
        net = build_network(name, kwargs, in_channels, num_classes)
        x = torch.empty((batch_size, in_channels, *patch_size), requires_grad=False)
    counter = FlopCounterMode(display=False)
    with counter:
        out = net(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        out.float().mean().backward()
    return int(counter.get_total_flops())


def measure_step_seconds(name: str, kwargs: dict, in_channels: int, num_classes: int,
                         patch_size: tuple[int, ...], batch_size: int, repeats: int = 2,
                         device: str = "cpu") -> float:
    """Fastest of ``repeats`` real training steps (forward, backward, SGD update) after a warm-up.

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
        out = net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = torch.nn.functional.cross_entropy(outs[0], y)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return float(min(times))


@dataclass
class CpuTimeModel:
    """Predicts CPU step time as ``seconds_per_flop * flops``, calibrated by real measurements."""

    seconds_per_flop: float

    def predict(self, flops: int) -> float:
        return self.seconds_per_flop * flops

    def update(self, flops: int, measured_s: float) -> None:
        """Recalibrate from a measurement of the candidate itself (the most relevant one)."""
        self.seconds_per_flop = measured_s / max(flops, 1)


def calibrate_cpu(name: str, kwargs: dict, in_channels: int, num_classes: int,
                  patch_size: tuple[int, ...], batch_size: int) -> tuple[CpuTimeModel, float, int]:
    """Measure one configuration and return the model, the measured seconds and its FLOPs."""
    flops = training_flops(name, kwargs, in_channels, num_classes, patch_size, batch_size)
    seconds = measure_step_seconds(name, kwargs, in_channels, num_classes, patch_size, batch_size)
    log.info("calibration: patch %s batch %d: %.2f s/step, %.2f GFLOP", patch_size, batch_size,
             seconds, flops / 1e9)
    return CpuTimeModel(seconds / max(flops, 1)), seconds, flops
