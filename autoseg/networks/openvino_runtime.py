"""OpenVINO as the CPU runtime of the sliding window (``predict --runtime openvino``, issue 23).

PyTorch runs a network's operators one at a time: on an Intel Xeon with AMX, channels-last bf16
convolutions reach about 60 % of the chip's peak, but the group norms, additions, activations and
gate products between them are separate passes over memory and take two thirds of a prediction
(``docs/benchmarks.md``, "The physical limit"). OpenVINO, the runtime of the fast entries of FLARE's
laptop-CPU track, compiles the whole network into fused kernels for the CPU it runs on, in bf16
where the CPU has it.

A network is exported to ONNX in memory (``torch.onnx.export``, about 2 s for a 16-feature ARUNet)
and read by OpenVINO's runtime; the graph is kept in the machine's cache
(``$AUTOSEG_CACHE/openvino/<digest>/model.xml`` and ``.bin``, the digest of the network's structure,
weights, input shape and the OpenVINO and torch versions), so later cases and later runs only read
and compile it (about 0.2 s a fold and case). The threads are fixed when a network is compiled:
OpenVINO does not follow :class:`autoseg.cpu_share.CoreShare` between batches as PyTorch does.
OpenVINO's Python converter (``openvino.convert_model``) is not used: it took 8 s a network, and
importing it starts OpenVINO's usage telemetry, which sends data unless the user opted out.
:func:`_openvino` imports OpenVINO with that telemetry package hidden, so OpenVINO falls back to its
own no-op stub: autoseg never sends anything anywhere.

The probabilities are those of the same weights up to the rounding of the precision asked for
(``tests/test_openvino_runtime.py`` checks fp32 against PyTorch); what it does to Dice and time is
measured in ``docs/benchmarks.md``. ``openvino`` is an optional dependency (``pip install
'autoseg[openvino]'``).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg.errors import ConfigurationError

log = logging.getLogger(__name__)

#: OpenVINO's name for each precision autoseg resolves to (``autoseg.precision``); fp16 is a GPU precision.
_PRECISION_HINT = {"bf16": "bf16", "fp32": "f32", "fp16": "f32"}
#: ONNX opset of the in-memory export.
_OPSET = 17


def _openvino() -> Any:
    """The ``openvino`` module, imported with its telemetry package hidden (module docstring)."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # ImportError: the stub
    try:
        import openvino
    except ImportError as exc:
        raise ConfigurationError(f"the OpenVINO runtime needs the openvino package, and importing it failed: {exc}",
                                 fix="pip install openvino (or pip install -e '.[openvino]' in the autoseg "
                                     "checkout), or run the networks with PyTorch (predict --runtime torch, "
                                     "train --validation-runtime torch)") from None
    return openvino


def require_openvino() -> None:
    """Raise the :class:`ConfigurationError` of a missing or broken OpenVINO now, before any case is
    read or trained (``predict --runtime openvino``, ``train --validation-runtime openvino``)."""
    _openvino()


def require_runtime(runtime: str, device: str) -> None:
    """:func:`require_openvino` where ``runtime`` is OpenVINO on the CPU (on other devices the
    networks run in PyTorch); nothing for the other runtimes."""
    if runtime == "openvino" and device == "cpu":
        require_openvino()


def openvino_available() -> bool:
    try:
        require_openvino()
    except ConfigurationError:
        return False
    return True


def _identity(network: nn.Module, shape: tuple[int, ...]) -> str:
    """A digest of the network's class, structure, weights and buffers and of the input shape."""
    digest = hashlib.blake2b(digest_size=20)
    # a graph is read back by the OpenVINO that wrote it, from the torch export that made it
    versions = f"{_openvino().__version__}|{torch.__version__}|{_OPSET}"
    digest.update(f"{type(network).__module__}.{type(network).__qualname__}|{network!r}|{shape}|{versions}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class OpenVinoNetwork(nn.Module):
    """``network`` run by OpenVINO on the CPU: ``forward`` takes and returns float32 tensors like the
    network (logits, no deep supervision), computing in ``precision`` (``bf16`` or ``fp32``) on
    ``threads`` threads. One compiled model per input shape, made on the first batch of that shape
    from the graph in ``cache`` (a folder; None: exported again in every process)."""

    deep_supervision = False

    def __init__(self, network: nn.Module, precision: str, threads: int, cache: Path | None) -> None:
        super().__init__()
        self._ov = _openvino()
        self._core = self._ov.Core()
        self._config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINT.get(precision, "f32"),
                        "INFERENCE_NUM_THREADS": max(1, int(threads)), "PERFORMANCE_HINT": "LATENCY"}
        self._network: list[nn.Module] = [network.eval()]  # not a submodule: never trained or moved
        self._cache = cache
        #: By the input's shape after the batch axis: the batch size compiled for, the compiled model
        #: and its request.
        self._compiled: dict[tuple[int, ...], tuple[int, Any, Any]] = {}

    def _graph(self, x: torch.Tensor) -> Any:
        """The network's OpenVINO graph for inputs shaped like ``x``: from the cache, else exported
        and kept there (:meth:`_keep`); a cached graph OpenVINO cannot read is exported again."""
        network = self._network[0]
        folder = None
        if self._cache is not None:
            folder = self._cache / _identity(network, tuple(x.shape))
            if (folder / "model.xml").is_file():
                try:
                    return self._core.read_model(str(folder / "model.xml"))
                except RuntimeError as exc:
                    log.warning("the cached OpenVINO graph %s cannot be read (%s); exporting it again", folder, exc)
                    shutil.rmtree(folder, ignore_errors=True)
        buffer = io.BytesIO()
        with torch.no_grad(), torch.autocast("cpu", enabled=False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape checks that are constant per input shape
            torch.onnx.export(network, (x.float().contiguous(),), buffer,  # type: ignore[arg-type]  # a file object is fine
                              dynamo=False, opset_version=_OPSET,
                              input_names=["image"], output_names=["logits"])
        model = self._core.read_model(buffer.getvalue(), b"")
        if folder is not None:
            self._keep(model, folder)
        return model

    def _keep(self, model: Any, folder: Path) -> None:
        """Write ``model`` as ``folder/model.xml`` and ``.bin``: both into a folder of this thread's own,
        renamed into place in one step, so a reader sees the whole pair or nothing, and a concurrent
        writer's pair is kept whole. A cache that cannot be written costs the export next time, nothing
        more."""
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            self._ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
            os.rename(tmp, folder)
        except (OSError, RuntimeError) as exc:
            if not (folder / "model.xml").is_file():  # not another writer's pair, finished first
                log.warning("could not keep the OpenVINO graph in %s (%s); it is exported again next time",
                            folder.parent, exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _compile(self, x: torch.Tensor) -> tuple[int, Any, Any]:
        compiled = self._core.compile_model(self._graph(x), "CPU", self._config)
        log.debug("OpenVINO compiled the network for input %s (%s)", tuple(x.shape), self._config)
        return int(x.shape[0]), compiled, compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x``; a batch smaller than the one compiled for its shape (the last batch of a
        sliding window) is padded with zeros rather than compiled again: the samples of a batch are
        independent in inference."""
        key, n = tuple(x.shape[1:]), int(x.shape[0])
        if key not in self._compiled or self._compiled[key][0] < n:
            self._compiled[key] = self._compile(x)
        batch, compiled, request = self._compiled[key]
        data = np.zeros((batch, *key), dtype=np.float32)
        data[:n] = x.detach().float().cpu().numpy()
        out = request.infer({0: data})
        return torch.from_numpy(np.array(out[compiled.output(0)][:n], dtype=np.float32, copy=True))


def for_openvino(network: nn.Module, precision: str, threads: int, cache: Path | None = None) -> nn.Module:
    """``network`` behind OpenVINO, its graphs kept in ``cache``; a network without parameters of its
    own (an ONNX Runtime session, a network already behind OpenVINO) is returned as it is."""
    if isinstance(network, OpenVinoNetwork) or not any(True for _ in network.parameters()):
        return network
    return OpenVinoNetwork(network, precision, threads, cache)


__all__ = ["OpenVinoNetwork", "for_openvino", "openvino_available", "require_openvino", "require_runtime"]
