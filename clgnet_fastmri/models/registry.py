"""Named networks and the paper's variants of CLGNet, built by name (timm's registry, small).

``register_model`` records a network builder under its function name (timm's
``@register_model``); ``VARIANTS`` names each row of the paper's Tables 1, 3 and 4 as a
registered model plus the constructor arguments that make the variant. A variant's
``network`` arguments change the network (what ``bench speed`` times); its ``training``
arguments are ``CLGNetModule`` ones that change only the loss (``bench quality`` trains them),
so the loss ablations share CLGNet's network. ``register_variant`` adds a row.

Every variant trains with ``CLGNetModule``'s defaults unless its ``training`` says otherwise:
L1 alone, so ``clgnet`` is the paper's network under this package's recipe and the network
ablations are compared with it under the same loss. ``with-cl`` is the paper's loss (Eq. 10,
alpha 0.05) and ``no-negative`` its "w/o negative" form; ``no-cl`` pins alpha 0, so that it
names the "w/o L_CL" row whatever the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Tuple

from fastmri.models import Unet
from torch import nn

from .clgnet import CLGNet

#: name -> builder of a network, from ``@register_model``.
MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``builder`` (keyword arguments -> network) under its function name."""
    MODELS[builder.__name__] = builder
    return builder


@register_model
def clgnet(**kwargs: Any) -> CLGNet:
    """CLGNet with the paper's settings unless overridden (``CLGNet``'s arguments)."""
    return CLGNet(**kwargs)


#: fastmri's U-Net baseline as its ``train_unet_demo.py`` builds it.
UNET_KWARGS = dict(in_chans=1, out_chans=1, chans=32, num_pool_layers=4, drop_prob=0.0)


@register_model
def unet(**kwargs: Any) -> Unet:
    """fastmri's U-Net (``UNET_KWARGS`` unless overridden)."""
    return Unet(**{**UNET_KWARGS, **kwargs})


@dataclass(frozen=True)
class Variant:
    """A named row of the paper's tables: a registered model and its arguments."""

    label: str  # as in the paper's tables
    model: str = "clgnet"
    network: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kwargs(self) -> Dict[str, Any]:
        """Network and training arguments together (``CLGNetModule``'s, for CLGNet)."""
        return {**self.network, **self.training}

    def build(self, **overrides: Any) -> nn.Module:
        """The bare network (no loss, no Lightning)."""
        return MODELS[self.model](**{**self.network, **overrides})


#: name -> variant, in the order the benchmarks report them.
VARIANTS: Dict[str, Variant] = {}


def register_variant(name: str, variant: Variant) -> Variant:
    if variant.model not in MODELS:
        raise ValueError(f"variant {name!r}: no registered model {variant.model!r}")
    VARIANTS[name] = variant
    return variant


#: The paper's weight of L_CL in Eq. 10 (Sec. 4.1), for the variants that train with it and
#: for ``losses`` (which sits above this module in docs/design.md's module map).
PAPER_ALPHA = 0.05
UNET = "unet"
register_variant(UNET, Variant("U-Net (fastmri)", model="unet"))
register_variant("clgnet", Variant("CLGNet"))
register_variant("no-wavelet", Variant("w/o wavelet", network=dict(wavelet=None)))
register_variant("no-sfl", Variant("w/o SFL = CLGNet_non", network=dict(global_module="none")))
register_variant("with-cl", Variant("CLGNet + L_CL (paper's loss)",
                                    training=dict(alpha=PAPER_ALPHA)))
register_variant("no-cl", Variant("w/o L_CL", training=dict(alpha=0.0)))
register_variant("no-negative", Variant("w/o negative",
                                        training=dict(alpha=PAPER_ALPHA, use_negatives=False)))
register_variant("sa", Variant("CLGNet_SA", network=dict(global_module="self_attention")))
register_variant("tran", Variant("CLGNet_Tran", network=dict(global_module="swin")))


def networks() -> Tuple[str, ...]:
    """Variants with a network of their own (the loss ablations share CLGNet's)."""
    return tuple(name for name, v in VARIANTS.items() if not v.training)


def build_network(name: str, **overrides: Any) -> nn.Module:
    """The bare network of a registered variant."""
    return VARIANTS[name].build(**overrides)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
