"""Network registry, contract, shapes, gradients, argument errors and the memory model."""
from __future__ import annotations

import json
import math

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from autoseg.errors import ConfigurationError
from autoseg.networks import (
    NETWORKS,
    SegmentationNetwork,
    build_network,
    check_patch_size,
    count_parameters,
    default_network_kwargs,
    estimate_training_memory,
    measure_peak_activation_bytes,
    network_names,
)
from autoseg.networks.config import COMMON_KEYS, network_preamble, stage_sizes
from autoseg.networks.shell import CoarseToFineDecoder, EncoderDecoderNetwork, plain_encoder

STRIDES_3D = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]  # total stride (2, 8, 8): z pooled late
KERNELS_3D = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
STRIDES_2D = [[1, 1], [2, 2], [2, 2]]


def kwargs_for(name: str, strides, kernels=None, base: int = 4, ds: bool = True) -> dict:
    n = len(strides)
    kernels = kernels or [[3] * len(strides[0])] * n
    return default_network_kwargs(name, n, [base * 2**i for i in range(n)], strides, kernels, ds)


def ds_shapes(batch: int, classes: int, patch, strides) -> list[tuple[int, ...]]:
    """Expected deep-supervision shapes: full resolution, then one per coarser decoder stage."""
    shapes, size = [], list(patch)
    for stride in strides[:-1]:
        size = [s // t for s, t in zip(size, stride)]
        shapes.append((batch, classes, *size))
    return shapes


# --- registry ----------------------------------------------------------------------------------

def test_registry_lists_the_networks():
    assert {"arunet", "plain_unet", "resenc_unet"} <= set(network_names())
    assert tuple(network_names()) == NETWORKS


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(ConfigurationError) as err:
        build_network("arunett", {}, 1, 2)
    message = str(err.value)
    assert "Did you mean 'arunet'" in message
    for name in NETWORKS:
        assert name in message
    with pytest.raises(ConfigurationError, match="Known: "):
        default_network_kwargs("vnet_xl", 3, [4, 8, 16], STRIDES_2D, [[3, 3]] * 3)


@pytest.mark.parametrize("name", NETWORKS)
def test_default_kwargs_are_json_and_complete(name):
    kw = kwargs_for(name, STRIDES_3D, KERNELS_3D)
    assert json.loads(json.dumps(kw)) == kw
    assert kw["n_stages"] == 4 and kw["strides"] == STRIDES_3D and kw["deep_supervision"] is True
    assert any(k.startswith("n_") and k.endswith("_decoder") for k in kw)  # network adds its own


# --- shapes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETWORKS)
def test_forward_3d_anisotropic_odd_patch(name):
    patch = (10, 40, 48)  # odd multiples of the total stride (2, 8, 8)
    net = build_network(name, kwargs_for(name, STRIDES_3D, KERNELS_3D), in_channels=2, num_classes=3)
    out = net(torch.randn(1, 2, *patch))
    assert isinstance(out, list)
    assert [tuple(o.shape) for o in out] == ds_shapes(1, 3, patch, STRIDES_3D)
    net.deep_supervision = False
    single = net(torch.randn(1, 2, *patch))
    assert isinstance(single, torch.Tensor) and tuple(single.shape) == (1, 3, *patch)


@pytest.mark.parametrize("name", NETWORKS)
def test_forward_2d_without_deep_supervision(name):
    net = build_network(name, kwargs_for(name, STRIDES_2D, ds=False), in_channels=1, num_classes=2)
    out = net(torch.randn(2, 1, 36, 20))
    assert tuple(out.shape) == (2, 2, 36, 20)
    net.deep_supervision = True
    assert [tuple(o.shape) for o in net(torch.randn(2, 1, 36, 20))] == ds_shapes(2, 2, (36, 20), STRIDES_2D)


def test_arunet_planner_strides_five_stages():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]  # total (4, 16, 16)
    net = build_network("arunet", kwargs_for("arunet", strides), 1, 3)
    out = net(torch.randn(1, 1, 12, 16, 48))
    assert [tuple(o.shape) for o in out] == ds_shapes(1, 3, (12, 16, 48), strides)


def test_arunet_rejects_input_not_divisible_by_total_stride():
    net = build_network("arunet", kwargs_for("arunet", STRIDES_3D, KERNELS_3D), 1, 2)
    with pytest.raises(ConfigurationError, match="total stride"):
        net(torch.randn(1, 1, 10, 40, 44))


@pytest.mark.parametrize("name", NETWORKS)
def test_meta_device_build_and_forward(name):
    with torch.device("meta"):
        net = build_network(name, kwargs_for(name, STRIDES_3D, KERNELS_3D, base=32), 1, 3)
        out = net(torch.empty(2, 1, 20, 64, 64))
    assert out[0].shape == (2, 3, 20, 64, 64) and out[0].device.type == "meta"


@pytest.mark.parametrize("name", NETWORKS)
def test_he_initialisation_on_cpu_none_on_meta(name, monkeypatch):
    """Real builds get He-initialised convolutions; meta builds (the planner's) skip it."""
    import dynamic_network_architectures.initialization.weight_init as wi

    kwargs = kwargs_for(name, STRIDES_3D, KERNELS_3D, base=8)
    torch.manual_seed(0)
    net = build_network(name, kwargs, 1, 3)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.weight[0].numel() >= 200]
    assert convs
    for conv in convs:  # kaiming_normal_ with a=0.01, fan_in: std = sqrt(2 / (1 + a^2) / fan_in)
        expected = math.sqrt(2.0 / (1 + 1e-4) / conv.weight[0].numel())
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.25)
    calls = []
    monkeypatch.setattr(wi.nn.init, "kaiming_normal_", lambda tensor, *a, **k: calls.append(tensor))
    with torch.device("meta"):
        build_network(name, kwargs, 1, 3)
    assert calls == []


@pytest.mark.parametrize("name", NETWORKS)
def test_weights_load_with_deep_supervision_switched_off(name):
    trained = build_network(name, kwargs_for(name, STRIDES_2D, ds=True), 1, 2)
    inference = build_network(name, kwargs_for(name, STRIDES_2D, ds=False), 1, 2)
    inference.load_state_dict(trained.state_dict())  # strict: identical parameter names
    trained.eval().deep_supervision = False
    x = torch.randn(1, 1, 16, 24)
    with torch.no_grad():
        assert torch.equal(trained(x), inference.eval()(x))


def test_attention_gate_scales_the_skip_between_zero_and_one():
    from autoseg.networks.arunet import AttentionGate
    from autoseg.networks.config import ops_for_dim

    gate = AttentionGate(ops_for_dim(3), skip_channels=4, gate_channels=8, stride=(1, 2, 2))
    x, g = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 8, 4, 4, 4)
    with torch.no_grad():
        assert gate(x, g).shape == x.shape
        gate.psi.bias.fill_(-50.0)  # coefficients ~0: the skip is suppressed
        assert gate(x, g).abs().max() < 1e-6
        gate.psi.bias.fill_(50.0)  # coefficients ~1: the skip passes unchanged
        assert torch.allclose(gate(x, g), x, atol=1e-6)


# --- gradients and the contract ----------------------------------------------------------------

@pytest.mark.parametrize("name", NETWORKS)
def test_every_parameter_gets_a_finite_gradient(name):
    torch.manual_seed(0)
    net = build_network(name, kwargs_for(name, STRIDES_3D, KERNELS_3D), 1, 3)
    outs = net(torch.randn(2, 1, 4, 16, 16))
    loss = sum(torch.nn.functional.cross_entropy(o, torch.randint(0, 3, (2, *o.shape[2:]))) for o in outs)
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    if name == "arunet":  # the attention gates are trained, not bypassed
        gate_grads = [p.grad.abs().sum() for n, p in net.named_parameters() if ".gates." in n]
        assert gate_grads and all(g > 0 for g in gate_grads)


@pytest.mark.parametrize("name", NETWORKS)
def test_protocol_is_satisfied(name):
    net = build_network(name, kwargs_for(name, STRIDES_3D, KERNELS_3D), 3, 4)
    assert isinstance(net, SegmentationNetwork)
    assert (net.input_channels, net.num_classes) == (3, 4)
    assert net.conv_op is torch.nn.Conv3d and net.norm_op is torch.nn.InstanceNorm3d
    assert net.nonlin is torch.nn.LeakyReLU
    net2d = build_network(name, kwargs_for(name, STRIDES_2D), 1, 2)
    assert net2d.conv_op is torch.nn.Conv2d and net2d.norm_op is torch.nn.InstanceNorm2d


@pytest.mark.parametrize("name", NETWORKS)
def test_feature_map_size_scales_with_the_patch(name):
    net = build_network(name, kwargs_for(name, STRIDES_3D, KERNELS_3D), 1, 2)
    size = net.compute_conv_feature_map_size((4, 16, 16))
    assert isinstance(size, int) and size > 0
    assert net.compute_conv_feature_map_size((8, 16, 16)) == 2 * size
    with pytest.raises(ConfigurationError):
        net.compute_conv_feature_map_size((1, 4, 16, 16))


def test_baselines_are_the_library_classes():
    assert isinstance(build_network("plain_unet", kwargs_for("plain_unet", STRIDES_2D), 1, 2), PlainConvUNet)
    assert isinstance(build_network("resenc_unet", kwargs_for("resenc_unet", STRIDES_2D), 1, 2),
                      ResidualEncoderUNet)


def test_count_parameters():
    net = build_network("arunet", kwargs_for("arunet", STRIDES_2D), 1, 2)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters()) > 0
    next(net.parameters()).requires_grad_(False)
    assert count_parameters(net) < count_parameters(net, trainable_only=False)


# --- argument errors ---------------------------------------------------------------------------

def _bad(kw: dict, **changes) -> dict:
    return {**kw, **changes}


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("change, words", [
    ({"features_per_stage": [4, 8]}, "features_per_stage"),
    ({"strides": [[1, 1], [2, 2]]}, "strides"),
    ({"strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}, "strides"),
    ({"kernel_sizes": [[3, 3], [3, 3], [3, 3, 3]]}, "kernel_sizes"),
    ({"kernel_sizes": [[3, 3], [2, 2], [3, 3]]}, "odd"),
    ({"strides": [[2, 2], [2, 2], [2, 2]]}, "first stage"),
    ({"n_stages": 1}, "n_stages"),
    ({"deep_supervision": "yes"}, "deep_supervision"),
    ({"features_per_stage": [4, 0, 16]}, "features_per_stage"),
    ({"feature_per_stage": [4, 8, 16]}, "does not accept"),
])
def test_bad_arguments_raise_configuration_error(name, change, words):
    kw = _bad(kwargs_for(name, STRIDES_2D), **change)
    with pytest.raises(ConfigurationError, match=words):
        build_network(name, kw, 1, 2)


@pytest.mark.parametrize("change", [{"strides": [[2, 2], [2, 2], [2, 2]]}, {"n_stages": 1},
                                    {"kernel_sizes": [[3, 3], [2, 2], [3, 3]]}, {"deep_supervision": 1}])
def test_every_network_reports_a_bad_topology_in_the_same_words(change):
    """The shared preamble checks the topology before anything network-specific."""
    messages = set()
    for name in NETWORKS:
        with pytest.raises(ConfigurationError) as err:
            build_network(name, _bad(kwargs_for(name, STRIDES_2D), **change), 1, 2)
        messages.add(str(err.value))
    assert len(messages) == 1


@pytest.mark.parametrize("name", NETWORKS)
def test_missing_network_specific_kwargs_take_the_planned_defaults(name):
    """A plans file with only the common keys builds the same network as the planner's full kwargs."""
    kw = kwargs_for(name, STRIDES_3D, KERNELS_3D)
    common = {k: kw[k] for k in ("n_stages", "features_per_stage", "strides", "kernel_sizes", "deep_supervision")}
    assert len(common) < len(kw)
    full, bare = build_network(name, kw, 1, 2), build_network(name, common, 1, 2)
    assert {k: v.shape for k, v in full.state_dict().items()} == {k: v.shape for k, v in bare.state_dict().items()}
    assert full.compute_conv_feature_map_size((4, 16, 16)) == bare.compute_conv_feature_map_size((4, 16, 16))


def test_stage_sizes_follow_the_strides():
    assert stage_sizes((8, 32, 32), STRIDES_3D) == [[8, 32, 32], [8, 16, 16], [4, 8, 8], [4, 4, 4]]
    assert stage_sizes((32, 32), STRIDES_2D) == [[32, 32], [16, 16], [8, 8]]


class _SkipSumDecoder(CoarseToFineDecoder):
    """A decoder written on the shell in a few lines: upsample, add the skip."""

    def __init__(self, encoder, ops, num_classes, deep_supervision):
        super().__init__(encoder, num_classes, deep_supervision)
        feats = list(encoder.output_channels)
        self.upsample = torch.nn.ModuleList(ops.transp_op(feats[-s], feats[-(s + 1)], self.strides[-s],
                                                          self.strides[-s]) for s in range(1, len(feats)))
        self.seg_layers = torch.nn.ModuleList(self.head(ops, c) for c in self.skip_channels)

    def step(self, s, x, skip):
        return self.upsample[s](x) + skip

    def step_map_size(self, s, size):
        return self.skip_channels[s] * math.prod(size)


class _SkipSumNet(EncoderDecoderNetwork):
    def __init__(self, in_channels, num_classes, **kwargs):
        super().__init__()
        topo, ops = network_preamble(self, "skip_sum", COMMON_KEYS, in_channels, num_classes, kwargs)
        self.encoder = plain_encoder(in_channels, topo, ops, [1] * topo.n_stages)
        self.decoder = _SkipSumDecoder(self.encoder, ops, num_classes, topo.deep_supervision)


def test_a_network_on_the_shell_gets_the_walk_heads_and_memory_count():
    kw = {"n_stages": 3, "features_per_stage": [4, 8, 16], "strides": STRIDES_2D,
          "kernel_sizes": [[3, 3]] * 3, "deep_supervision": True}
    net = _SkipSumNet(1, 3, **kw)
    assert isinstance(net, SegmentationNetwork)
    outputs = net(torch.randn(2, 1, 32, 32))
    assert [tuple(o.shape) for o in outputs] == ds_shapes(2, 3, (32, 32), STRIDES_2D)
    with_ds = net.compute_conv_feature_map_size((32, 32))
    net.deep_supervision = False
    assert tuple(net(torch.randn(2, 1, 32, 32)).shape) == (2, 3, 32, 32)
    without = net.compute_conv_feature_map_size((32, 32))
    encoder = int(net.encoder.compute_conv_feature_map_size([32, 32]))
    # decoder: the upsampled maps (8 x 16 x 16, 4 x 32 x 32) and the heads that run (3 classes)
    assert without == encoder + 8 * 16 * 16 + 4 * 32 * 32 + 3 * 32 * 32
    assert with_ds == without + 3 * 16 * 16
    with pytest.raises(ConfigurationError, match="divisible"):
        net(torch.randn(1, 1, 30, 32))


@pytest.mark.parametrize("name", NETWORKS)
def test_bad_channels_and_classes(name):
    kw = kwargs_for(name, STRIDES_2D)
    with pytest.raises(ConfigurationError, match="num_classes"):
        build_network(name, kw, 1, 0)
    with pytest.raises(ConfigurationError, match="in_channels"):
        build_network(name, kw, 0, 2)


def test_kwargs_must_be_a_dict():
    with pytest.raises(ConfigurationError, match="dict"):
        build_network("arunet", [3, 4], 1, 2)


def test_network_specific_list_lengths_are_checked():
    kw = kwargs_for("arunet", STRIDES_2D)
    with pytest.raises(ConfigurationError, match="n_blocks_per_stage_decoder"):
        build_network("arunet", {**kw, "n_blocks_per_stage_decoder": [1, 1, 1]}, 1, 2)
    kw = kwargs_for("plain_unet", STRIDES_2D)
    with pytest.raises(ConfigurationError, match="n_conv_per_stage"):
        build_network("plain_unet", {**kw, "n_conv_per_stage": [2, 2]}, 1, 2)


def test_check_patch_size():
    kw = kwargs_for("arunet", STRIDES_3D, KERNELS_3D)
    check_patch_size(kw, (20, 40, 48))
    with pytest.raises(ConfigurationError, match=r"not divisible.*\[2, 8, 8\]"):
        check_patch_size(kw, (20, 40, 44))
    with pytest.raises(ConfigurationError, match="3D network"):
        check_patch_size(kw, (40, 48))
    with pytest.raises(ConfigurationError):
        estimate_training_memory("arunet", kw, 1, 2, (21, 40, 48), 2)


# --- memory model ------------------------------------------------------------------------------

def test_estimate_is_linear_in_batch():
    kw = kwargs_for("arunet", STRIDES_3D, KERNELS_3D)
    one = estimate_training_memory("arunet", kw, 1, 3, (20, 40, 48), 1)
    assert estimate_training_memory("arunet", kw, 1, 3, (20, 40, 48), 3) == pytest.approx(3 * one, rel=1e-6)


MEMORY_CASES = [  # (patch, base features, batch, strides); batch 2 or large planes: oneDNN convs
    ((16, 32, 32), 8, 2, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]),
    ((8, 32, 48), 16, 2, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]),
    ((64, 64), 16, 2, [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]),
    ((96, 80), 8, 2, [[1, 1], [2, 2], [2, 2], [2, 2]]),
    ((128, 128), 16, 1, [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]]),  # planes large enough for oneDNN
]


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("patch, base, batch, strides", MEMORY_CASES)
def test_memory_estimate_within_25_percent_of_measured_peak(name, patch, base, batch, strides):
    torch.manual_seed(0)
    kw = kwargs_for(name, strides, base=base)
    net = build_network(name, kw, 1, 3)
    measured = measure_peak_activation_bytes(net, (batch, 1, *patch), 3)
    estimate = estimate_training_memory(name, kw, 1, 3, patch, batch)
    assert measured > 0
    assert abs(estimate - measured) / measured < 0.25, (estimate, measured)
    # the measurement is of real activations: far above one input patch, far below the gross total
    assert measured > 10 * batch * math.prod(patch) * 4
