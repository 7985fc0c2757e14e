"""Data-parallel training of one fold over several processes (``torchrun``), one GPU each.

Launched as ``torchrun --nproc_per_node N -m autoseg train ...`` (or ``autoseg train --gpus N``,
which runs exactly that). Every process builds the same network from the same seed, wraps it in
``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU) and draws its own patches (the data seed is
offset by the rank), so one step sees ``N x batch_size`` patches. What must be identical on every
rank is made so explicitly:

- the schedule: rank 0's training seconds are broadcast before every step, so the learning rate,
  the time-budget end and the number of steps agree (a rank that stopped early would hang the
  others in the gradient all-reduce);
- the validation patches are the same on every rank, so a plateau schedule sees the same score;
- at every epoch end the replicas' parameters are compared with rank 0's (an all-gather), and a
  difference stops training with an error rather than silently training N different models.

Only rank 0 writes checkpoints, logs, curves and the fold-end validation.
"""
from __future__ import annotations

import datetime
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from autoseg.errors import AutosegError, ConfigurationError


@dataclass(frozen=True)
class DistContext:
    """This process's place in a ``torchrun`` launch (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device of this rank: ``cuda:<local_rank>`` when CUDA was asked for."""
        if self.enabled and requested.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return requested

    def init(self, device: str) -> None:
        """Join the process group (idempotent)."""
        if not self.enabled or dist.is_initialized():
            return
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                timeout=datetime.timedelta(minutes=60))

    def wrap(self, network: nn.Module, device: str) -> nn.Module:
        """``network`` in ``DistributedDataParallel`` when distributed, else itself."""
        if not self.enabled:
            return network
        ids = [self.local_rank] if device.startswith("cuda") else None
        return nn.parallel.DistributedDataParallel(network, device_ids=ids)

    def broadcast_float(self, value: float, device: str) -> float:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def mean_float(self, value: float, device: str) -> float:
        """Mean of ``value`` over the ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def check_replicas(self, network: nn.Module, device: str) -> float:
        """Largest absolute parameter difference between any rank and rank 0; raises if not 0."""
        if not self.enabled:
            return 0.0
        flat = torch.cat([p.detach().reshape(-1).float() for p in network.parameters()]).to(device)
        gathered = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(gathered, flat)
        diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
        if diff != 0.0:
            raise AutosegError(f"data-parallel replicas diverged (max parameter difference {diff:.3g})", None,
                               "report this as a bug; train without torchrun meanwhile")
        return diff

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def launch_torchrun(gpus: int, argv: list[str]) -> int:
    """Re-run this ``autoseg train`` command under ``torchrun`` with ``gpus`` processes on CUDA."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 1 or gpus > available:
        raise ConfigurationError(f"--gpus {gpus} asked for, but this machine has {available} CUDA GPU(s)",
                                 fix="give --gpus between 1 and the number of GPUs, or train on one device "
                                     "without --gpus")
    rest = _without_option(argv, "--gpus")
    rest = _without_option(rest, "--device") + ["--device", "cuda"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", "autoseg", *rest]
    return subprocess.call(cmd)


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` or ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out
