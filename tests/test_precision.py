"""Precision (autocast) choices: the auto rule, refusals, and that bf16 is really what runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoseg import precision as prec
from autoseg.errors import ConfigurationError
from autoseg.networks import build_network, default_network_kwargs
from autoseg.planners.planner import PlannerOptions, plan
from autoseg.sliding_window import predict_sliding_window


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_takes_bf16_only_on_cpus_with_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                       expected: str) -> None:
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: native)
    assert prec.resolve_precision("auto", "cpu") == expected
    assert prec.resolve_precision("auto", "cuda") == "fp16"
    assert prec.resolve_precision("auto", "cuda:1") == "fp16"
    assert prec.resolve_precision("fp32", "cpu") == "fp32"


def test_refusals_name_the_fix(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match="known: auto, fp32, bf16, fp16"):
        prec.resolve_precision("half", "cpu")
    with pytest.raises(ConfigurationError, match="--precision bf16"):
        prec.resolve_precision("fp16", "cpu")
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert prec.resolve_precision("bf16", "cpu") == "bf16"  # allowed, with a warning
    assert "emulated" in caplog.text


def test_cpuinfo_flags_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The flag check looks at the ``flags`` line only (a model name mentioning bf16 does not count)."""
    import builtins

    real_open = builtins.open
    for text, expected in (("model name : bf16 amx_bf16 chip\nflags : fpu sse avx2\n", False),
                           ("flags : fpu avx512f avx512_bf16\n", True), ("flags : fpu amx_bf16 amx_tile\n", True)):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(builtins, "open", lambda f, *a, path=path, **k: real_open(
            path if f == "/proc/cpuinfo" else f, *a, **k))
        monkeypatch.setattr(prec.platform, "system", lambda: "Linux")
        prec.cpu_has_native_bf16.cache_clear()
        assert prec.cpu_has_native_bf16() is expected
    prec.cpu_has_native_bf16.cache_clear()


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = default_network_kwargs("arunet", n_stages=3, features_per_stage=[8, 16, 32],
                                    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                                    kernel_sizes=[[3, 3, 3]] * 3, deep_supervision=False)
    return build_network("arunet", kwargs, 1, 3).eval()


def test_sliding_window_runs_the_convolutions_in_bf16_and_returns_fp32() -> None:
    net = _net()
    seen: list[torch.dtype] = []
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    first_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    data = np.random.default_rng(0).normal(size=(1, 16, 32, 32)).astype(np.float32)
    p32 = predict_sliding_window(net, data, (16, 32, 32), 3, precision="fp32")
    assert seen == [torch.float32]
    p16 = predict_sliding_window(net, data, (16, 32, 32), 3, precision="bf16")
    assert seen[-1] == torch.bfloat16 and p16.dtype == np.float32
    np.testing.assert_allclose(p16.sum(0), 1.0, atol=1e-5)  # softmax in fp32 whatever the autocast
    assert np.abs(p16 - p32).max() < 0.05  # bf16 keeps 8 bits of mantissa: close, not equal
    assert np.abs(p16 - p32).max() > 0  # and it really ran in another precision


def test_planner_writes_the_precision_it_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_planner import fingerprint

    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert plan(fingerprint(), PlannerOptions(cpu_gflops=40.0)).recipe.precision == "bf16"
    assert plan(fingerprint(), PlannerOptions(cpu_gflops=40.0, precision="fp32")).recipe.precision == "fp32"
    assert plan(fingerprint(), PlannerOptions(device="cuda")).recipe.precision == "fp16"
    with pytest.raises(ConfigurationError, match="fp16 autocast is for CUDA"):
        plan(fingerprint(), PlannerOptions(cpu_gflops=40.0, precision="fp16"))


def test_device_auto_is_cuda_only_where_there_is_one() -> None:
    import torch

    assert prec.resolve_device("cpu") == "cpu"
    assert prec.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="no CUDA device") as err:
            prec.resolve_device("cuda")
        assert "--device cpu" in str(err.value)
        assert prec.resolve_device("cuda", computes=False) == "cuda"  # planning for a GPU needs none
    with pytest.raises(ConfigurationError, match="unknown device"):
        prec.resolve_device("tpu")


def test_a_gpu_plan_on_the_cpu_is_refused_naming_the_flags(caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses
    import logging

    from autoseg.training.run import check_plan_device
    from tests.test_plans import make_plans

    plans = make_plans()
    gpu = plans.replace(estimates=dataclasses.replace(plans.estimates, device="cuda", memory_budget_bytes=8 * 2**30))
    with pytest.raises(ConfigurationError, match="made for a GPU") as err:
        check_plan_device(gpu, "cpu", "Task08")
    assert "--device cuda" in str(err.value) and "plan_and_preprocess -d Task08 --device cpu" in str(err.value)
    check_plan_device(gpu, "cuda", "Task08")
    cpu = plans.replace(estimates=dataclasses.replace(plans.estimates, device="cpu"))
    with caplog.at_level(logging.WARNING):
        check_plan_device(cpu, "cuda", "Task08")
    assert "--device cuda --force" in caplog.text
