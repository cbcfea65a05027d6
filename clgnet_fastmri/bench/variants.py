"""The models the benchmarks compare: fastmri's U-Net, CLGNet and its paper variants.

One table serves both benchmarks. Each CLGNet variant is a set of ``CLGNetModule`` keyword
arguments: network ones (``wavelet``, ``global_module``; what ``bench speed`` times) and loss
ones (``alpha``, ``use_negatives``; only ``bench quality`` trains them). Rows are named as in
the paper's Tables 3 and 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

from fastmri.models import Unet
from torch import nn

from ..models import CLGNet

UNET = "unet"
# fastmri's U-Net baseline as its train_unet_demo.py builds it (7.76 M parameters).
UNET_KWARGS = dict(in_chans=1, out_chans=1, chans=32, num_pool_layers=4, drop_prob=0.0)
_NETWORK_KEYS = ("wavelet", "global_module")


@dataclass(frozen=True)
class Variant:
    label: str  # as in the paper's tables
    kwargs: Dict[str, Any] = field(default_factory=dict)

    @property
    def network_kwargs(self) -> Dict[str, Any]:
        return {k: v for k, v in self.kwargs.items() if k in _NETWORK_KEYS}


VARIANTS: Dict[str, Variant] = {
    UNET: Variant("U-Net (fastmri)"),
    "clgnet": Variant("CLGNet"),
    "no-wavelet": Variant("w/o wavelet", dict(wavelet=None)),
    "no-sfl": Variant("w/o SFL = CLGNet_non", dict(global_module="none")),
    "no-cl": Variant("w/o L_CL", dict(alpha=0.0)),
    "no-negative": Variant("w/o negative", dict(use_negatives=False)),
    "sa": Variant("CLGNet_SA", dict(global_module="self_attention")),
    "tran": Variant("CLGNet_Tran", dict(global_module="swin")),
}
#: Variants with a network of their own (the loss ablations share CLGNet's).
NETWORKS: Tuple[str, ...] = tuple(k for k, v in VARIANTS.items()
                                  if k == UNET or v.network_kwargs or k == "clgnet")


def build_network(name: str) -> nn.Module:
    """The bare network of a variant (no loss, no Lightning)."""
    if name == UNET:
        return Unet(**UNET_KWARGS)
    return CLGNet(**VARIANTS[name].network_kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
