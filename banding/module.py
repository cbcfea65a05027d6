"""Adversarial banding removal (Defazio et al., NeurIPS 2020) for CLGNet and fastmri's U-Net.

Each training step, on a batch from ``RandomTranspose`` (``OrientedSample``):

1. the reconstruction network runs once; its output is reoriented (``reorient``) so that every
   anatomy is upright and only the phase-encoding direction depends on the label;
2. adversary update: ``OrientationAdversary`` on the *detached* reoriented output, binary
   cross-entropy against the label, one Adam step of the adversary alone;
3. reconstruction update: the network's own loss (CLGNet: ``L1 + alpha * L_CL``) plus
   ``adversary_strength * C`` from epoch ``adversary_warmup_epochs`` on, one step of the
   network's optimiser alone. ``C`` is the binary cross-entropy of the (just updated)
   adversary's logits against the uncertain target 1/2, minus log 2: the KL divergence from
   the "cannot tell" guess to the adversary's guess, 0 when the adversary is at chance.
   The adversary runs here with its parameters detached (``torch.func.functional_call``), so
   the gradient reaches the reconstruction through the adversary's input only.

Choices (fastMRI's ``banding_removal`` code takes one summed step of both losses, with one
optimiser and batch size 1): the updates alternate, adversary first, so the reconstruction is
penalised by an adversary that has seen the current output; each has its own optimiser (the
adversary's Adam at a constant ``adversary_lr``, the network's optimiser and learning-rate
schedule those of the base module); the uncertain target 1/2 is fastMRI's default. During
the warm-up the adversary trains and the network does not see it, which plays the role of
fastMRI's pre-training with the orientation augmentation before the adversarial phase.

Lightning notes. Manual optimisation: every backward is ``self.manual_backward``, every step
the ``LightningOptimizer``'s, so precision plugins (the fp16 gradient scaler) and DDP see both
updates. Lightning refuses ``Trainer(gradient_clip_val=...)`` and ``accumulate_grad_batches``
under manual optimisation: clipping is the module's ``gradient_clip_val`` instead, applied in
``on_before_optimizer_step``, where the fp16 scaler has already unscaled the gradients. Each
backward reaches only one of the two parameter sets, so under DDP the reducer must be told
that the others are unused: train with ``strategy="ddp_find_unused_parameters_true"``
(``on_fit_start`` refuses plain DDP, which would fail at the second step).
``trainer.global_step`` counts optimiser steps, so it grows by 2 per batch (Lightning's rule
with two optimisers): ``max_steps`` and ``ModelCheckpoint(every_n_train_steps=...)`` count in
those units, and a run bounded by ``max_steps`` rather than ``max_epochs`` stops half way
through CLGNet's cosine schedule (which Lightning sizes as ``max_steps`` batches): bound
adversarial runs by epochs. The learning-rate schedulers of the base module are stepped here
(Lightning leaves that to manual optimisation): "step" ones every ``frequency`` batches,
"epoch" ones at the end of an epoch.

Checkpoints hold the network under its usual prefix (``clgnet.`` for CLGNet, so
``clgnet_fastmri.checkpoints.load_clgnet`` and ``clgnet-fastmri predict`` load them as they
load a ``CLGNetModule``'s), the adversary under ``adversary.``, both optimisers' states and
plain hyperparameters (``torch.load(weights_only=True)`` reads them).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from clgnet_fastmri.errors import UserError
from clgnet_fastmri.pl_modules.bridge import BridgedUnetModule
from clgnet_fastmri.pl_modules.clgnet_module import CLGNetModule
from clgnet_fastmri.settings import Rule, add_signature_arguments, signature_settings

from .adversary import OrientationAdversary
from .augment import OrientedSample, reorient


class OrientationAdversarialMixin(pl.LightningModule):
    """Adds the orientation adversary to a reconstruction ``LightningModule``.

    Put it first among the bases: ``class M(OrientationAdversarialMixin, Base)``. The base
    must map a ``B x H x W`` image to a ``B x H x W`` reconstruction in ``forward``, build
    one optimiser over ``self.parameters()`` in ``configure_optimizers`` (the adversary's
    parameters are taken out of it before any step and get their own Adam), and the class
    must define ``reconstruction_loss``. Training batches must be ``OrientedSample``s (wrap
    the training transform in ``banding.augment.RandomTranspose``); validation and test are
    the base's, on unwrapped samples.

    Logged: ``train_<part>`` for each part of ``reconstruction_loss`` (``train_loss`` is the
    network's own loss, without the adversarial term, so it compares with the base's),
    ``train_confusion`` (``C``, once the warm-up is over), ``adversary_loss`` (binary
    cross-entropy) and ``adversary_accuracy`` (fraction of the batch whose orientation the
    adversary guessed before its update; 0.5 is chance).

    Args:
        adversary_strength: Weight of ``C`` in the reconstruction loss (0 trains the
            adversary as a probe without ever penalising the network).
        adversary_warmup_epochs: Epochs during which the adversary trains but ``C`` is not
            in the reconstruction loss.
        adversary_lr: Adam learning rate of the adversary; None = the base's ``lr``.
        adversary_chans: Width of ``OrientationAdversary``.
        gradient_clip_val: If given, each update clips the gradient norm of its own
            parameters (network or adversary) to this value.
        **kwargs: The base module's arguments.
    """

    def __init__(
        self,
        adversary_strength: float = 0.1,
        adversary_warmup_epochs: int = 1,
        adversary_lr: Optional[float] = None,
        adversary_chans: int = 16,
        gradient_clip_val: Optional[float] = None,
        **kwargs: Any,
    ):
        # The base's save_hyperparameters() collects this frame's arguments too (Lightning
        # walks the __init__ frames of LightningModule subclasses), so they are checkpointed.
        super().__init__(**kwargs)
        if not adversary_strength >= 0:
            raise ValueError(f"adversary_strength must be >= 0, not {adversary_strength}")
        if int(adversary_warmup_epochs) != adversary_warmup_epochs or adversary_warmup_epochs < 0:
            raise ValueError(
                f"adversary_warmup_epochs must be an integer >= 0, not {adversary_warmup_epochs}"
            )
        if adversary_lr is not None and not adversary_lr > 0:
            raise ValueError(f"adversary_lr must be > 0, not {adversary_lr}")
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ValueError(f"gradient_clip_val must be > 0, not {gradient_clip_val}")
        self.automatic_optimization = False
        self.adversary = OrientationAdversary(chans=adversary_chans)

    def reconstruction_loss(self, output: Tensor, sample: Any) -> Dict[str, Tensor]:
        """The network's own loss as named parts; ``"loss"`` is the total to minimise."""
        raise NotImplementedError

    def adversary_loss(self, seen: Tensor, transposed: Tensor) -> Tuple[Tensor, Tensor]:
        """Binary cross-entropy and accuracy of the adversary on reoriented outputs ``seen``
        (B x H x W); the input is detached, so no gradient reaches the network."""
        logits = self.adversary(seen.detach()).float()
        labels = transposed.to(device=logits.device, dtype=logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        accuracy = ((logits > 0) == (labels > 0.5)).float().mean()
        return loss, accuracy

    def confusion_loss(self, seen: Tensor) -> Tensor:
        """``C``: KL divergence from the uniform guess to the adversary's, averaged over the
        batch. The adversary's parameters are detached: no gradient reaches them."""
        frozen = {name: p.detach() for name, p in self.adversary.named_parameters()}
        logits = torch.func.functional_call(self.adversary, frozen, (seen,)).float()
        uncertain = torch.full_like(logits, 0.5)
        return F.binary_cross_entropy_with_logits(logits, uncertain) - math.log(2.0)

    def adversarial_term_active(self) -> bool:
        hp = self.hparams
        return hp.adversary_strength > 0 and self.current_epoch >= hp.adversary_warmup_epochs

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The base's checks read the network's input, which here sits inside the sample.
        sample = batch.sample if isinstance(batch, OrientedSample) else batch
        super().on_train_batch_start(sample, batch_idx)

    def training_images(self, batch: OrientedSample) -> Tensor:
        # What CLGNetModule's BatchNorm refresh feeds the network.
        return batch.sample.image

    def training_step(self, batch: OrientedSample, batch_idx: int) -> None:
        if not isinstance(batch, OrientedSample):
            raise TypeError(
                "orientation adversarial training needs OrientedSample batches: wrap the "
                "training transform in banding.augment.RandomTranspose"
            )
        sample, transposed = batch
        recon_opt, adversary_opt = self.optimizers()
        output = self(sample.image)
        seen = reorient(output, transposed)

        adv_loss, accuracy = self.adversary_loss(seen, transposed)
        adversary_opt.zero_grad()
        self.manual_backward(adv_loss)
        adversary_opt.step()

        parts = self.reconstruction_loss(output, sample)
        objective = parts["loss"]
        if self.adversarial_term_active():
            confusion = self.confusion_loss(seen)
            objective = objective + self.hparams.adversary_strength * confusion
            self.log("train_confusion", confusion.detach())
        recon_opt.zero_grad()
        self.manual_backward(objective)
        recon_opt.step()
        self._step_schedulers("step", batch_idx)

        self.log("train_loss", parts["loss"].detach(), prog_bar=True)
        for name, value in parts.items():
            if name != "loss":
                self.log(f"train_{name}", value.detach())
        self.log("adversary_loss", adv_loss.detach())
        self.log("adversary_accuracy", accuracy, prog_bar=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self.hparams.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val,
                                gradient_clip_algorithm="norm")

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._step_schedulers("epoch", self.current_epoch)

    def _step_schedulers(self, interval: str, index: int) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval and (index + 1) % config.frequency == 0:
                config.scheduler.step()

    def configure_optimizers(self) -> Any:
        optimizers, schedulers = _split_optimizer_config(super().configure_optimizers())
        if len(optimizers) != 1:
            raise TypeError(
                f"{type(self).__name__}: the base module must configure one optimiser, "
                f"not {len(optimizers)}"
            )
        recon_opt = optimizers[0]
        adversary_ids = {id(p) for p in self.adversary.parameters()}
        for group in recon_opt.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in adversary_ids]
        hp = self.hparams
        adversary_opt = torch.optim.Adam(
            self.adversary.parameters(), lr=hp.lr if hp.adversary_lr is None else hp.adversary_lr
        )
        return [recon_opt, adversary_opt], schedulers

    def on_fit_start(self) -> None:
        super().on_fit_start()
        model = self.trainer.model
        if isinstance(model, DistributedDataParallel) and not model.find_unused_parameters:
            raise UserError(
                "orientation adversarial training under DDP needs find_unused_parameters "
                "(each of its two backward passes reaches only one of the two networks); "
                "use strategy='ddp_find_unused_parameters_true'"
            )


def _split_optimizer_config(config: Any) -> Tuple[List[torch.optim.Optimizer], List[Any]]:
    """``(optimisers, schedulers)`` of the ``configure_optimizers`` forms the bases use: an
    optimiser, ``([optimisers], [schedulers or scheduler dicts])``, or a dict with
    ``"optimizer"`` and optionally ``"lr_scheduler"``."""
    if isinstance(config, torch.optim.Optimizer):
        return [config], []
    if isinstance(config, dict) and "optimizer" in config:
        scheduler = config.get("lr_scheduler")
        return [config["optimizer"]], [] if scheduler is None else [scheduler]
    if isinstance(config, (list, tuple)) and len(config) == 2 and all(
        isinstance(part, (list, tuple)) for part in config
    ):
        return list(config[0]), list(config[1])
    raise TypeError(f"unsupported configure_optimizers() result: {type(config).__name__}")


class BandingCLGNetModule(OrientationAdversarialMixin, CLGNetModule):
    """``CLGNetModule`` trained with the orientation adversary (``OrientationAdversarialMixin``).

    Same arguments as ``CLGNetModule`` plus the adversary's; same network (``self.clgnet``),
    loss, validation, test and learning-rate schedule. ``train_loss``, ``train_l1`` and
    ``train_contrastive`` mean what they mean for ``CLGNetModule``.
    """

    def reconstruction_loss(self, output: Tensor, sample: Any) -> Dict[str, Tensor]:
        parts = self.loss(output, sample.target, sample.image)
        return {"loss": parts.total, "l1": parts.l1, "contrastive": parts.contrastive}


class BandingUnetModule(OrientationAdversarialMixin, BridgedUnetModule):
    """fastmri's U-Net baseline (``UnetModule``, L1 loss) with the orientation adversary."""

    def reconstruction_loss(self, output: Tensor, sample: Any) -> Dict[str, Tensor]:
        return {"loss": F.l1_loss(output, sample.target)}


@dataclass(frozen=True)
class BandingSettings:
    """The options of ``clgnet-fastmri train --banding`` (``OrientationAdversarialMixin``'s
    arguments of the same names): defaults here, allowed values and help in ``RULES``."""

    adversary_strength: float = 0.1
    adversary_warmup_epochs: int = 1
    adversary_lr: Optional[float] = None

    RULES: ClassVar[Dict[str, Rule]] = {
        "adversary_strength": Rule("weight of the adversarial term in the reconstruction loss",
                                   low=0),
        "adversary_warmup_epochs": Rule("epochs that train the adversary before its term "
                                        "enters the reconstruction loss", low=0),
        "adversary_lr": Rule("Adam learning rate of the adversary; unset, that of --lr",
                             low=0, low_open=True),
    }


def add_banding_arguments(parser: argparse.ArgumentParser) -> None:
    """The training command's ``--banding`` options."""
    group = parser.add_argument_group("banding removal (adversarial, Defazio et al. 2020)")
    group.add_argument("--banding", action="store_true",
                       help="train with the orientation adversary against banding; the "
                       "training slices are transposed at random (square crops only; under "
                       "DDP use --strategy ddp_find_unused_parameters_true; --max_steps and "
                       "--checkpoint_every_n_steps count two optimiser steps per batch)")
    add_signature_arguments(group, BandingSettings, BandingSettings.RULES)


def banding_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The ``BandingSettings`` among the parsed options (each checked by its rule)."""
    return {name: getattr(args, name) for name in signature_settings(BandingSettings)}


def build_module(config: Any, module_kwargs: Mapping[str, Any]) -> BandingCLGNetModule:
    """The module ``clgnet-fastmri train --banding`` trains: a ``BandingCLGNetModule`` with
    the run's ``CLGNetModule`` arguments and its ``BandingSettings`` (``config`` is the run's
    ``clgnet_fastmri.config.TrainConfig``)."""
    crop = config.crop_size
    if crop and crop[0] != crop[1]:
        raise UserError(
            f"--banding needs square training images, not a {crop[0]}x{crop[1]} --crop_size; "
            "give equal sizes"
        )
    return BandingCLGNetModule(**config.extension_args, **module_kwargs)
