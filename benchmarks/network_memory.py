"""Estimated vs measured peak activation memory of a CPU training step, per network and config.

Run: ``.venv/bin/python benchmarks/network_memory.py [--large]``

The estimate is ``estimate_training_memory`` (feature-map count x per-network factor x 4 bytes x
batch); the measurement is ``measure_peak_activation_bytes`` (allocator peak above the baseline
during forward + cross-entropy + backward, via ``torch.profiler``). ``--large`` adds two
configurations of realistic shape (a 6-stage 3D and a 7-stage 2D network, a few hundred MiB each).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from autoseg.networks import (
    NETWORKS,
    build_network,
    default_network_kwargs,
    estimate_training_memory,
    measure_peak_activation_bytes,
)

SMALL = [  # the configurations of tests/test_networks.py
    ((16, 32, 32), 8, 2, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]),
    ((8, 32, 48), 16, 2, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]),
    ((64, 64), 16, 2, [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]),
    ((96, 80), 8, 2, [[1, 1], [2, 2], [2, 2], [2, 2]]),
    ((128, 128), 16, 1, [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]]),
]
LARGE = [
    ((32, 96, 96), 8, 2, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]),
    ((256, 256), 32, 2, [[1, 1]] + [[2, 2]] * 6),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add two realistic-size configurations")
    parser.add_argument("--classes", type=int, default=3)
    args = parser.parse_args()
    print("command:", " ".join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| network | patch | features | batch | measured MiB | estimate MiB | error |")
    print("|---|---|---|---|---|---|---|")
    for patch, base, batch, strides in SMALL + (LARGE if args.large else []):
        n, dim = len(strides), len(patch)
        features = [min(base * 2**i, 320) for i in range(n)]
        for name in NETWORKS:
            torch.manual_seed(0)
            kw = default_network_kwargs(name, n, features, strides, [[3] * dim] * n, True)
            net = build_network(name, kw, 1, args.classes)
            measured = measure_peak_activation_bytes(net, (batch, 1, *patch), args.classes)
            estimate = estimate_training_memory(name, kw, 1, args.classes, patch, batch)
            print(f"| {name} | {'x'.join(map(str, patch))} | {base}..{features[-1]} | {batch} | "
                  f"{measured / 2**20:.1f} | {estimate / 2**20:.1f} | "
                  f"{100 * (estimate - measured) / measured:+.1f}% |", flush=True)


if __name__ == "__main__":
    main()
