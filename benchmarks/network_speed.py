"""CPU training-step time of the registered networks at the same topology, patch and batch.

Run: ``.venv/bin/python benchmarks/network_speed.py [--threads 2] [--repeats 2] [--networks arunet plain_unet]``

For each configuration every network gets one warm-up step, then the networks are timed in
alternation (A B A B ...) so that load from other processes hits them alike. A step is forward,
cross-entropy on every deep-supervision output, and backward. Reports the fastest and the median
wall seconds per step and the median process-CPU seconds, the ratios to the last network (the
reference, ``plain_unet``), parameters, FLOPs and the estimated activation memory. On a shared
machine other processes only ever slow a step down, and with two threads a descheduled thread
stalls the other at every barrier, so the fastest step is the figure to compare.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from autoseg.networks import build_network, count_parameters, default_network_kwargs, estimate_training_memory

CONFIGS = [  # (patch, base features, batch, strides) as the planner would produce them
    ((32, 96, 96), 8, 2, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]),
    ((48, 160, 160), 16, 2, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]),
]


def step(net: torch.nn.Module, x: torch.Tensor, targets: list[torch.Tensor]) -> tuple[float, float]:
    """Wall and process-CPU seconds of one forward + loss + backward pass."""
    t0, c0 = time.perf_counter(), time.process_time()
    net.zero_grad(set_to_none=True)
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    loss = sum(F.cross_entropy(o, t) for o, t in zip(outs, targets))
    loss.backward()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_config(names: list[str], patch, base: int, batch: int, strides, repeats: int) -> None:
    n, classes = len(strides), 3
    kernels = [[3, 3, 3]] * n
    features = [min(base * 2**i, 320) for i in range(n)]
    nets, kws = {}, {}
    for name in names:
        torch.manual_seed(0)
        kws[name] = default_network_kwargs(name, n, features, strides, kernels, True)
        nets[name] = build_network(name, kws[name], 1, classes).train()
    x = torch.randn(batch, 1, *patch)
    with torch.no_grad():
        shapes = [o.shape for o in nets[names[0]](x)]
    targets = [torch.randint(0, classes, (batch, *s[2:])) for s in shapes]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for name in names:
        step(nets[name], x, targets)  # warm-up
    for _ in range(repeats):
        for name in names:
            times[name].append(step(nets[name], x, targets))
    ref_min = min(t[0] for t in times[names[-1]])
    ref_cpu = statistics.median(t[1] for t in times[names[-1]])
    print(f"\npatch {list(patch)} features {features} batch {batch} "
          f"(load average now {os.getloadavg()[0]:.2f})")
    print(f"{'network':<12} {'params':>11} {'est. MiB':>9} {'GFLOP':>7} {'min s':>6} {'median s':>8} "
          f"{'cpu s':>6} {'ratio min':>9} {'ratio cpu':>9}  wall s of every run")
    for name in names:
        fastest = min(t[0] for t in times[name])
        median = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        est = estimate_training_memory(name, kws[name], 1, classes, patch, batch) / 2**20
        gflop = training_gflop(name, kws[name], classes, batch, patch)
        runs = " ".join(f"{t[0]:.2f}" for t in times[name])
        print(f"{name:<12} {count_parameters(nets[name]):>11,} {est:>9.0f} {gflop:>7.0f} {fastest:>6.2f} "
              f"{median:>8.2f} {cpu:>6.2f} {fastest / ref_min:>9.2f} {cpu / ref_cpu:>9.2f}  {runs}", flush=True)


def training_gflop(name: str, kwargs: dict, classes: int, batch: int, patch) -> float:
    """Forward + backward GFLOP (convolutions), counted on the meta device."""
    with torch.device("meta"):
        net = build_network(name, kwargs, 1, classes)
        x = torch.empty(batch, 1, *patch)
    counter = FlopCounterMode(display=False)
    with counter:
        sum(o.mean() for o in net(x)).backward()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--networks", nargs="+", default=["arunet", "plain_unet"],
                        help="the last one is the reference of the ratio column")
    parser.add_argument("--configs", type=int, nargs="+", default=list(range(len(CONFIGS))))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("command:", " ".join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    for i in args.configs:
        bench_config(args.networks, *CONFIGS[i], repeats=args.repeats)


if __name__ == "__main__":
    main()
