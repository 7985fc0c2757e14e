"""What a network module hands to the registry."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

#: At the peak of a training step (the start of backward through the finest decoder stage) every
#: saved map is still alive, plus the gradient buffers of about four finest-resolution maps (logit
#: gradient, block output and input gradients, the concatenation's gradient). The finest stage holds
#: most of the counted elements in 2D and 3D alike, so those buffers add about a fifth to the saved
#: maps. The same holds for every U-Net-shaped network.
PEAK_TRANSIENT = 0.2


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network.

    ``cls(in_channels, num_classes, **kwargs)`` builds it from JSON kwargs and raises
    ``ConfigurationError`` on bad ones. ``defaults(n_stages)`` returns the network's own kwargs
    (blocks per stage and the like) that complete the planner's topology. ``saved_per_count`` is
    how many elements autograd keeps for backward per element counted by
    ``compute_conv_feature_map_size``; each network module derives it from its layers.
    """

    name: str
    cls: Callable[..., nn.Module]
    defaults: Callable[[int], dict[str, Any]]
    saved_per_count: float
    summary: str
    paper: str

    @property
    def memory_factor(self) -> float:
        """Activation elements at the peak of a training step per counted feature-map element."""
        return self.saved_per_count * (1.0 + PEAK_TRANSIENT)
