"""Measured peak activation memory of one training step on the CPU.

Method: ``torch.profiler`` with ``profile_memory=True`` makes PyTorch's CPU allocator report every
allocation and free together with the running total of bytes it has handed out since profiling
began. The peak of that running total during one forward + loss + backward pass, minus its value at
the start, is the activation memory of the step: every tensor autograd saves for backward, the
gradients flowing backwards and every transient buffer an operator allocates (im2col columns,
oneDNN reorders, the loss) all go through that allocator. Parameters, their gradients and the batch
already exist before the profiled step (a warm-up step creates the ``.grad`` buffers), so they are
the baseline and are excluded, as the planner's memory estimate excludes them.

Why not ``saved_tensors_hooks``: they see what autograd saves but not the gradients and operator
workspaces alive at the moment of the peak, which add a sixth to a quarter to it.

Caveat: on the CPU, PyTorch picks the convolution algorithm by size (batch 1 with small planes uses
an im2col path with a large transient buffer), so measure with batch >= 2 to see the oneDNN path
that realistic training sizes take.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile


def _walk(events: Sequence) -> Iterator:
    for e in events:
        yield e
        yield from _walk(e.children)


def _peak_from_profile(prof: profile) -> int:
    """Peak of the allocator's running total above its value when profiling started."""
    from torch._C._profiler import _EventType

    results = prof.profiler.kineto_results if prof.profiler is not None else None
    if results is None:
        raise RuntimeError("the profiler holds no results: profile one step inside `with profile(...)` first")
    allocs = [e for e in _walk(results.experimental_event_tree())
              if e.tag == _EventType.Allocation and str(e.extra_fields.device) == "cpu"]
    if not allocs:
        return 0
    allocs.sort(key=lambda e: e.start_time_ns)
    first = allocs[0].extra_fields
    start = first.total_allocated - first.alloc_size
    return max(0, max(e.extra_fields.total_allocated for e in allocs) - start)


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _backward(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
    loss = sum(F.cross_entropy(o, t) for o, t in zip(outputs, targets))
    assert isinstance(loss, torch.Tensor)  # a network has at least one output, so not sum()'s 0
    loss.backward()


def measure_peak_activation_bytes(model: nn.Module, input_shape: Sequence[int], num_classes: int) -> int:
    """Peak bytes allocated above the baseline during one CPU training step of ``model``.

    ``input_shape`` is ``(N, C, *spatial)``. The step is forward, cross-entropy on every output
    (deep-supervision outputs against targets at their own resolution) and backward. One unmeasured
    warm-up step runs first. The model's gradients are set to ``None`` afterwards.
    """
    model.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(input_shape), generator=gen)
    outputs = _outputs(model, x)  # warm-up step: allocates .grad buffers, primes operator caches
    targets = [torch.randint(0, num_classes, (o.shape[0], *o.shape[2:]), generator=gen) for o in outputs]
    _backward(outputs, targets)
    del outputs
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _backward(_outputs(model, x), targets)
    model.zero_grad(set_to_none=True)
    return _peak_from_profile(prof)
