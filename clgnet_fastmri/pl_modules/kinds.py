"""The model kinds ``clgnet-fastmri train --model`` trains and ``predict`` runs.

A kind names a Lightning module (its signature and ``RULES`` are the command's options), the
attribute that holds its network, the data transform that feeds it, the challenges it can
read and the defaults of fastmri's demo script for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from fastmri.data.subsample import MaskFunc

from ..data.fastmri_layout import CHALLENGES
from ..data.transforms import CLGNetDataTransform, KspaceTransform
from .bridge import BridgedUnetModule, BridgedVarNetModule
from .clgnet_module import CLGNetModule

INSTANCE_NORM = ("instance: zero-filled magnitude image (RSS over coils for multicoil) "
                 "normalised by its mean and std, clamped to +-6 (fastmri UnetDataTransform)")
KSPACE_INPUT = "none: masked multicoil k-space as stored (fastmri VarNetDataTransform)"


@dataclass(frozen=True)
class ModelKind:
    """One ``--model``: its module, network attribute, transform and demo defaults.

    ``transform(challenge, mask_func, use_seed, crop_size)`` builds the data transform;
    ``defaults`` are the values of options left unset (``--batch_size``, ``--mask_type``,
    ``--challenge``, ...) that differ from the command's, ``data_defaults`` more of them for
    real data and ``demo_defaults`` for the built-in demo set (model options included).
    ``contrastive``: it trains with CLGNet's contrastive loss (its VGG19 options are checked,
    its weights resolved and recorded); ``crops``: its training may use random crops;
    ``extensible``: training extensions (``--banding``) may replace its module;
    ``no_true_precision``: why its weights cannot be converted to bfloat16/float16 (None when
    they can); ``timed_run_args``: module arguments of a run bounded by
    wall-clock time rather than steps (``bench``).
    """

    name: str
    title: str
    module: type
    network: str
    transform: Callable[..., Callable]
    normalisation: str
    challenges: Tuple[str, ...] = CHALLENGES
    defaults: Mapping[str, Any] = field(default_factory=dict)
    data_defaults: Mapping[str, Any] = field(default_factory=dict)
    demo_defaults: Mapping[str, Any] = field(default_factory=dict)
    contrastive: bool = False
    crops: bool = False
    extensible: bool = False
    no_true_precision: Optional[str] = None
    timed_run_args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> tuple:
        """``(cls, rules)`` for ``settings.add_model_arguments``."""
        return self.module, self.module.RULES

    def describe(self, hparams: Mapping[str, Any]) -> str:
        """``CLGNet(chans=32, ...)``: the network its hyperparameters make."""
        args = ", ".join(f"{n}={hparams.get(n)!r}" for n in self.module.NETWORK_HPARAMS)
        return f"{self.title}({args})"

    def challenge_problem(self, challenge: str) -> Optional[str]:
        """``"VarNet needs multicoil data"`` when this kind cannot read ``challenge`` data."""
        if challenge in self.challenges:
            return None
        return f"{self.title} needs {' or '.join(self.challenges)} data"


def _image_transform(challenge: str, mask_func: Optional[MaskFunc] = None,
                     use_seed: bool = True, crop_size: Optional[tuple] = None
                     ) -> CLGNetDataTransform:
    return CLGNetDataTransform(challenge, mask_func, use_seed=use_seed, crop_size=crop_size)


def _kspace_transform(challenge: str, mask_func: Optional[MaskFunc] = None,
                      use_seed: bool = True, crop_size: Optional[tuple] = None
                      ) -> KspaceTransform:
    # VarNet's data consistency needs the whole k-space: no crops.
    return KspaceTransform(mask_func, use_seed)


_VARNET_DEMO = {"challenge": "multicoil", "mask_type": "equispaced_fraction", "batch_size": 1}
KINDS: Dict[str, ModelKind] = {
    # Real data: the paper's batch size (CLGNet), fastmri's demos' per-device 1 (baselines).
    # The CPU demo skips the BatchNorm refresh: a demo epoch is a few dozen batches, and its
    # cosine schedule ends with the weights still, where the running averages are right.
    "clgnet": ModelKind("clgnet", "CLGNet", CLGNetModule, "clgnet", _image_transform,
                        INSTANCE_NORM, data_defaults={"batch_size": 10},
                        demo_defaults={"bn_stats_batches": 0},
                        contrastive=True, crops=True, extensible=True,
                        # A wall-clock budget has no known step count for the cosine schedule.
                        timed_run_args={"lr_schedule": "constant", "num_log_images": 0}),
    "unet": ModelKind("unet", "Unet", BridgedUnetModule, "unet", _image_transform, INSTANCE_NORM,
                      data_defaults={"batch_size": 1}),
    # fastmri's VarNet demo: multicoil only, equispaced_fraction masks, one slice per batch.
    "varnet": ModelKind("varnet", "VarNet", BridgedVarNetModule, "varnet", _kspace_transform,
                        KSPACE_INPUT, challenges=("multicoil",), defaults=_VARNET_DEMO,
                        no_true_precision="fastmri's VarNet runs its FFTs in the weights' "
                        "dtype, which cannot be bfloat16/float16"),
}


def model_settings() -> Dict[str, tuple]:
    """``{--model value: (cls, rules)}`` for ``settings.add_model_arguments``."""
    return {name: kind.settings for name, kind in KINDS.items()}
