"""Numeric precision of the networks' arithmetic: fp32, bf16 or fp16 autocast.

``auto`` means the fastest precision that is safe on the device: fp16 autocast (with gradient
scaling in training) on CUDA, as nnU-Net does; on a CPU, bf16 autocast where the processor has
native bf16 dot-product instructions (x86 ``avx512_bf16`` or ``amx_bf16``), else fp32. Where the
instructions are missing, oneDNN emulates bf16 and it is slower than fp32, so it is never chosen
there by ``auto`` (asking for it explicitly still works, with a warning).

Under autocast only convolutions and matrix products run in the low precision; weights, the
optimiser, normalisation statistics and the loss stay in fp32.
"""
from __future__ import annotations

import contextlib
import logging
import platform
from functools import lru_cache
from typing import Literal

from autoseg.errors import ConfigurationError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: ``--device`` values; ``auto``: CUDA when a CUDA device is there, else the CPU.
DEVICES = ("auto", "cpu", "cuda")
#: What may run a network on the CPU (``WindowOptions.runtime``, ``predict --runtime``).
RUNTIMES = ("torch", "openvino")
#: What ``auto`` resolves to, and what a model computes in.
Resolved = Literal["fp32", "bf16", "fp16"]
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 dot-product instructions (read from /proc/cpuinfo)."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(f in flags for f in _CPU_BF16_FLAGS)
    except OSError:
        pass
    return False


def resolve_device(device: str, computes: bool = True) -> Literal["cpu", "cuda"]:
    """The device ``--device`` names: ``auto`` is CUDA when one is available, else the CPU (as
    nnU-Net defaults to the GPU, a user with one need not remember the flag). ``cuda`` without a
    CUDA device is refused with the fix rather than failing inside torch, unless nothing ``computes``
    on it here (planning for a GPU needs none: plan on a workstation, train on a GPU machine)."""
    if device not in DEVICES:
        raise ConfigurationError(f"unknown device '{device}' (known: {', '.join(DEVICES)})")
    if device == "cpu":
        return "cpu"
    import torch  # here, so that the CLI can list DEVICES without loading torch

    if torch.cuda.is_available() or (device == "cuda" and not computes):
        return "cuda"
    if device == "cuda":
        raise ConfigurationError("--device cuda, but torch finds no CUDA device on this machine",
                                 fix="use --device cpu (or auto), or install a CUDA build of torch on a machine "
                                     "with an NVIDIA GPU")
    return "cpu"


def resolve_precision(precision: str, device: str) -> Resolved:
    """The concrete precision (``fp32``, ``bf16`` or ``fp16``) for ``precision`` on ``device``."""
    if precision not in PRECISIONS:
        raise ConfigurationError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    is_cuda = device.startswith("cuda")
    if precision == "auto":
        if is_cuda:
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and not is_cuda:
        raise ConfigurationError("fp16 autocast is for CUDA devices; on a CPU use bf16 or fp32",
                                 fix="pass --precision bf16 (CPUs with avx512_bf16/AMX) or --precision fp32")
    if precision == "bf16" and not is_cuda and not cpu_has_native_bf16():
        log.warning("this CPU has no native bf16 instructions (avx512_bf16/amx_bf16): bf16 is emulated "
                    "and likely slower than fp32")
        return "bf16"
    return "fp16" if precision == "fp16" else "bf16" if precision == "bf16" else "fp32"


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager[object]:
    """Autocast for a concrete ``precision`` on ``device`` (a no-op for fp32)."""
    import torch  # here, so that the CLI can list PRECISIONS without loading torch

    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
