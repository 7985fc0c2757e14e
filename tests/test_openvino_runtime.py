"""``predict --runtime openvino``: OpenVINO runs the networks on the CPU (autoseg.networks.openvino_runtime)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.networks import build_network, default_network_kwargs
from autoseg.networks.openvino_runtime import OpenVinoNetwork, for_openvino, openvino_available
from autoseg.sliding_window import WindowOptions, inference_network, predict_sliding_window

# openvino_available imports OpenVINO the way autoseg does, its telemetry hidden (importorskip would not)
pytestmark = pytest.mark.skipif(not openvino_available(),
                                reason="the OpenVINO runtime needs the openvino extra (pip install openvino)")

STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]


def _network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = default_network_kwargs("arunet", 3, [4, 8, 16], STRIDES, [[3, 3, 3]] * 3, deep_supervision=False)
    net = build_network("arunet", kwargs, 1, 3)
    return net.eval()


def test_fp32_logits_match_pytorch() -> None:
    net = _network()
    x = torch.randn(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
        got = OpenVinoNetwork(net, "fp32", 1, None)(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-3, rtol=1e-3), float((got - expected).abs().max())


def test_a_new_input_shape_compiles_again_and_weights_stay_untouched() -> None:
    """A smaller last batch is padded (no new compile); a new tile shape or a larger batch compiles."""
    net = _network()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ov = OpenVinoNetwork(net, "fp32", 1, None)
    compiled = []
    for shape in ((2, 1, 16, 32, 32), (1, 1, 16, 32, 32), (1, 1, 16, 32, 48), (3, 1, 16, 32, 32)):
        x = torch.randn(*shape)
        with torch.no_grad():
            got, expected = ov(x), net(x)
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-3, rtol=1e-3), shape
        compiled.append({k: v[0] for k, v in ov._compiled.items()})
    assert compiled == [{(1, 16, 32, 32): 2}, {(1, 16, 32, 32): 2}, {(1, 16, 32, 32): 2, (1, 16, 32, 48): 1},
                        {(1, 16, 32, 32): 3, (1, 16, 32, 48): 1}]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert list(ov.parameters()) == [], "the wrapped network is not a submodule (never trained or moved)"


def test_sliding_window_probabilities_match_the_torch_runtime() -> None:
    net = _network(3)
    data = np.random.default_rng(0).normal(size=(1, 24, 40, 36)).astype(np.float32)
    ov_opts = WindowOptions(precision="fp32", runtime="openvino")
    wrapped = inference_network(net, ov_opts)
    assert isinstance(wrapped, OpenVinoNetwork) and for_openvino(wrapped, "fp32", 1) is wrapped
    ref = predict_sliding_window(net, data, (16, 32, 32), 3, batch_size=2, precision="fp32")
    got = predict_sliding_window(wrapped, data, (16, 32, 32), 3, batch_size=2, precision="fp32")
    assert np.abs(got - ref).max() < 1e-3
    assert (got.argmax(0) == ref.argmax(0)).mean() > 0.999
    assert inference_network(net, WindowOptions(runtime="openvino", device="cuda")) is net, "GPU: torch"


def test_an_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown runtime"):
        inference_network(_network(), WindowOptions(runtime="tensorrt"))


def test_graphs_are_kept_in_the_cache_by_weights_and_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exported graph is written once per weights and input shape and read back for the same
    network; other weights get their own; nothing half-written is left."""
    x = torch.randn(2, 1, 16, 32, 32)
    first = OpenVinoNetwork(_network(5), "fp32", 1, tmp_path)
    with torch.no_grad():
        expected = first(x)
    graphs = sorted(p.name for p in tmp_path.iterdir())
    assert len(graphs) == 1 and sorted(p.name for p in (tmp_path / graphs[0]).iterdir()) == ["model.bin", "model.xml"]
    with monkeypatch.context() as patch:
        patch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("exported again"))
        with torch.no_grad():
            assert torch.equal(OpenVinoNetwork(_network(5), "fp32", 1, tmp_path)(x), expected)
    with torch.no_grad():
        OpenVinoNetwork(_network(6), "fp32", 1, tmp_path)(x)
    assert len(list(tmp_path.glob("*/model.xml"))) == 2 and not list(tmp_path.glob(".*"))


def test_a_damaged_cached_graph_is_exported_again_and_an_unwritable_cache_only_warns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        expected = OpenVinoNetwork(_network(7), "fp32", 1, tmp_path)(x)
    (xml,) = tmp_path.glob("*/model.xml")
    xml.write_text("<net>damaged")
    with torch.no_grad():
        assert torch.allclose(OpenVinoNetwork(_network(7), "fp32", 1, tmp_path)(x), expected, atol=1e-5)
    assert "cannot be read" in caplog.text and (xml.read_text().startswith("<?xml"))
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with torch.no_grad():
        assert torch.allclose(OpenVinoNetwork(_network(7), "fp32", 1, blocked)(x), expected, atol=1e-5)
    assert "could not keep the OpenVINO graph" in caplog.text


def test_openvino_telemetry_is_never_imported() -> None:
    """OpenVINO's usage telemetry sends data unless opted out: autoseg imports OpenVINO without it."""
    import subprocess
    import sys

    code = ("import sys\nfrom autoseg.networks.openvino_runtime import _openvino\nov = _openvino()\n"
            "ov.Core()\nimport openvino.tools.ovc\n"
            "print([m for m in sys.modules if m.startswith('openvino_telemetry') and sys.modules[m] is not None])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_fold_validation_on_openvino_gives_pytorchs_probabilities(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``train --validation-runtime openvino``: the same seeded fold validated by either runtime (fp32)
    writes the same probabilities within rounding, and its summary says what ran."""
    from autoseg.cli import main
    from autoseg.io import read_json
    from tests.workspaces import planned_workspace, use_workspace

    plan = ["plan_and_preprocess", "-d", "8", "--cpu-gflops", "20", "-j", "1", "--step-time", "0.3"]
    ws = use_workspace(planned_workspace(tmp_path / "ws", plan, num_training=5, seed=3), monkeypatch)
    validation = ws / "res" / "Task08_HepaticVessel" / "arunet" / "fold_0" / "validation"
    train = ["train", "-d", "8", "-f", "0", "--steps", "4", "--threads", "1", "-j", "0", "--seed", "0",
             "--precision", "fp32", "--device", "cpu", "--force"]
    summaries, probabilities = {}, {}
    for runtime in ("torch", "openvino"):
        assert main([*train, "--validation-runtime", runtime]) == 0
        summaries[runtime] = read_json(validation / "summary.json")
        probabilities[runtime] = {p.name: np.load(p)["probabilities"].astype(int)
                                  for p in sorted(validation.glob("*.pred.npz"))}
    assert [s["runtime"] for s in summaries.values()] == ["torch", "openvino"]
    assert probabilities["torch"].keys() == probabilities["openvino"].keys() and probabilities["torch"]
    for name, expected in probabilities["torch"].items():
        got = probabilities["openvino"][name]
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 2, name  # uint8 steps of 1/255
    assert summaries["torch"]["cases"].keys() == summaries["openvino"]["cases"].keys()
