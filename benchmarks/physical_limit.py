"""How far autoseg's network is from what this CPU can compute: the peak, and the share of it reached.

Run: ``.venv/bin/python benchmarks/physical_limit.py [--plans PATH] [--threads 2] [--repeats 5]``

1. **The peak.** The fastest of ``--repeats`` timings of large matrix products (``torch.mm``,
   2048 x 2048, oneDNN/MKL) and of one large 3x3x3 convolution (64 -> 64 channels on 32 x 64 x 64
   voxels, oneDNN), in fp32 and in bf16, on ``--threads`` threads. The better of the two in each
   precision is the peak the network is held against.
2. **The network.** The planned ARUNet (``--plans``, default: the demo's plan) at its patch and
   batch, in the plan's precision (bf16 autocast where the CPU has native bf16): a training step
   (forward, the deep-supervision loss, backward) and a prediction forward pass. FLOPs are counted
   by PyTorch's ``FlopCounterMode`` (convolutions and matrix products, forward and backward); the time
   in the convolutions is the convolution operators' own time in ``torch.profiler`` (the calling
   thread's wall time inside them; oneDNN's threads work within it), so the share inside the
   convolutions is their FLOPs over that time, over the peak; the share of the whole step is all FLOPs over the step's wall time,
   over the peak. The operators that take the most time are listed: where the rest goes. The prediction
   pass is measured twice: in PyTorch's default NCDHW layout, and as ``autoseg predict`` runs it on
   the CPU, a channels-last copy (``autoseg.networks.cpu_layout``).

Machines change between sessions (an AMD EPYC with ``avx512_bf16``, an Intel Xeon with AMX): the
CPU's model and flags are recorded. Results: ``benchmarks/results/physical_limit.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from bench_common import append_result
from autoseg.networks import build_network
from autoseg.networks.cpu_layout import for_cpu_inference
from autoseg.plans import Plans
from autoseg.precision import autocast, resolve_precision

REPO = Path(__file__).resolve().parent.parent
DEMO_PLANS = REPO / "demo_work" / "preprocessed" / "Task08_HepaticVessel" / "plans.json"
#: Profiler operator names of the convolutions (forward and backward) on the CPU.
CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
            "aten::slow_conv3d_forward", "aten::mkldnn_convolution_backward")


def cpu_info() -> dict[str, Any]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "fma")
    return {"model": model, "flags": [f for f in wanted if f in flags], "logical_cpus": os.cpu_count()}


def fastest(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (oneDNN picks and caches its kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak(repeats: int) -> dict[str, dict[str, float]]:
    """GFLOP/s of a large matrix product and a large 3D convolution, fp32 and bf16."""
    out: dict[str, dict[str, float]] = {}
    n = 2048
    conv_x = torch.randn(2, 64, 32, 64, 64)
    conv_w = torch.randn(64, 64, 3, 3, 3)
    conv_flops = 2 * conv_x.shape[0] * 64 * 64 * 27 * 32 * 64 * 64
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        x, w = conv_x.to(dtype), conv_w.to(dtype)
        with torch.no_grad():
            gemm = 2 * n**3 / fastest(lambda a=a, b=b: torch.mm(a, b), repeats)
            conv = conv_flops / fastest(lambda x=x, w=w: F.conv3d(x, w, padding=1), repeats)
        out[str(dtype).removeprefix("torch.")] = {"gemm_gflops": round(gemm / 1e9, 1), "conv3d_gflops": round(conv / 1e9, 1),
                                                  "peak_gflops": round(max(gemm, conv) / 1e9, 1)}
    return out


def _conv_cpu_seconds(prof: Any) -> float:
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in CONV_OPS) / 1e6


def measure(plans: Plans, threads: int, repeats: int, peaks: dict[str, dict[str, float]]) -> dict[str, Any]:
    precision = resolve_precision(plans.precision if hasattr(plans, "precision") else "auto", "cpu")
    net = build_network(plans.network.name, dict(plans.network.kwargs), plans.num_channels, plans.num_classes)
    x = torch.randn(plans.batch_size, plans.num_channels, *plans.patch_size)

    def train_step() -> None:
        net.zero_grad(set_to_none=True)
        with autocast("cpu", precision):
            out = net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(F.cross_entropy(o.float(), torch.zeros(o.shape[0], *o.shape[2:], dtype=torch.long)) for o in outs)
        loss.backward()

    def predict_pass() -> None:
        with torch.no_grad(), autocast("cpu", precision):
            net(x)

    fast = for_cpu_inference(net.eval())  # what autoseg predict slides on the CPU (autoseg.networks.cpu_layout)
    x_last = x.contiguous(memory_format=torch.channels_last_3d)

    def predict_pass_channels_last() -> None:
        with torch.no_grad(), autocast("cpu", precision):
            fast(x_last)

    peak_gflops = peaks["bfloat16" if precision == "bf16" else "float32"]["peak_gflops"]
    result: dict[str, Any] = {"precision": precision, "patch": list(plans.patch_size), "batch": plans.batch_size,
                              "network": plans.network.name, "peak_gflops_used": peak_gflops}
    for name, fn, mode in (("training_step", train_step, net.train), ("prediction_pass", predict_pass, net.eval),
                           ("prediction_pass_channels_last", predict_pass_channels_last, fast.eval)):
        mode()
        with FlopCounterMode(display=False) as counter:
            fn()
        flops = counter.get_total_flops()
        by_op = {str(k).split(".")[-1]: v for k, v in counter.get_flop_counts().get("Global", {}).items()}
        conv_flops = sum(v for k, v in by_op.items() if "convolution" in k)
        wall = fastest(fn, repeats)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        conv_s = _conv_cpu_seconds(prof)  # the calling thread's wall time in the operators (intra-op threads not summed)
        total_cpu = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
        top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
        result[name] = {
            "wall_s": round(wall, 3), "gflop": round(flops / 1e9, 2), "conv_gflop": round(conv_flops / 1e9, 2),
            "achieved_gflops": round(flops / wall / 1e9, 1),
            "share_of_peak_whole": round(flops / wall / 1e9 / peak_gflops, 3),
            "conv_seconds": round(conv_s, 3),
            "share_of_peak_in_convolutions": round(conv_flops / max(conv_s, 1e-9) / 1e9 / peak_gflops, 3),
            "convolution_share_of_cpu_time": round(_conv_cpu_seconds(prof) / max(total_cpu, 1e-9), 3),
            "top_operators_cpu_s": {e.key: round(e.self_cpu_time_total / 1e6, 3) for e in top},
        }
        print(name, json.dumps(result[name]), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=Path, default=DEMO_PLANS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "physical_limit.json")
    args = p.parse_args(argv)
    if not args.plans.is_file():
        raise SystemExit(f"{args.plans} is missing: run `make demo` first or pass --plans")
    torch.set_num_threads(args.threads)
    plans = Plans.load(args.plans)
    load = os.getloadavg()
    peaks = peak(args.repeats)
    print("peak", json.dumps(peaks), flush=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_info(),
              "threads": args.threads, "torch": torch.__version__, "plans": str(args.plans), "peak": peaks,
              "network": measure(plans, args.threads, args.repeats, peaks),
              "load_average": [load, os.getloadavg()]}
    append_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
