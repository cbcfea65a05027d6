"""Lightning module of CLGNet on fastmri's MriModule training loop."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from fastmri.data.transforms import UnetSample
from fastmri.pl_modules import MriModule
from fastmri.pl_modules import UnetModule as FastMriUnetModule
from torch import Tensor

from ..losses import CLGNetLoss, ContrastiveLoss, LossParts, VGG19Features
from ..models import CLGNet
from .bridge import Lightning2Bridge

LR_SCHEDULES = ("cosine", "step", "constant")


class CLGNetModule(Lightning2Bridge, MriModule):
    """CLGNet trained with ``L1 + alpha * L_CL`` (paper Eq. 10) on fastmri's ``MriModule``.

    Batches are ``UnetSample``s from ``CLGNetDataTransform`` (image, target, mean, std, ...).
    Validation and test reuse fastmri's ``UnetModule`` steps (denormalise, then fastmri's
    metrics and reconstruction saving), so the numbers are comparable with its U-Net baseline.

    Logged: ``train_loss``, ``train_l1``, ``train_contrastive``; ``validation_loss`` (L1 in the
    normalised space) and ``val_metrics/{nmse,psnr,ssim}`` (fastmri, per volume); validation
    images to TensorBoard.

    Args:
        chans, num_sfrir, num_sfrb, wavelet, global_module: The network (``CLGNet``);
            ``wavelet=None`` is the "w/o wavelet" ablation, ``global_module="none"`` the
            "w/o SFL" one.
        alpha: Weight of the contrastive loss (paper: 0.05); 0 trains with L1 only
            ("w/o L_CL") and skips VGG19 entirely.
        k_negatives, use_negatives, cl_reduction: The contrastive loss (``ContrastiveLoss``).
        vgg_weights: "imagenet", a path to a VGG19 state dict, or None for random init. Only
            read when fitting: evaluating or predicting with a checkpoint never needs VGG19.
        lr: Adam's peak learning rate. Default 1e-3, not the paper's 1e-4: at equal training
            time 1e-4 is far behind (BENCHMARKS.md, Quality: 25.7 vs 27.5 dB after 3 minutes
            on the synthetic knee set), and the cosine schedule still ends at 1e-5.
            ``lr=1e-4`` reproduces the paper's setting.
        weight_decay: Adam weight decay.
        lr_schedule: "cosine" (per step, from ``lr`` down to ``lr * lr_min_ratio`` at the last
            step of the run), "step" (fastmri's StepLR: ``lr_gamma`` every ``lr_step_size``
            epochs) or "constant" (the paper states no schedule).
        num_log_images: Validation images logged per epoch.
    """

    # fastmri's U-Net steps do what any image-domain model needs: run forward on the
    # normalised zero-filled image and undo the normalisation for metrics and saving.
    validation_step = FastMriUnetModule.validation_step
    test_step = FastMriUnetModule.test_step

    def __init__(
        self,
        chans: int = 32,
        num_sfrir: int = 4,
        num_sfrb: int = 3,
        wavelet: Optional[str] = "haar",
        global_module: str = "fourier",
        alpha: float = 0.05,
        k_negatives: int = 6,
        use_negatives: bool = True,
        cl_reduction: str = "batch",
        vgg_weights: Optional[str] = "imagenet",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "cosine",
        lr_min_ratio: float = 0.01,
        lr_step_size: int = 40,
        lr_gamma: float = 0.1,
        num_log_images: int = 16,
    ):
        super().__init__(num_log_images=num_log_images)
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {lr_schedule!r}")
        self.save_hyperparameters()
        self.clgnet = CLGNet(
            chans=chans,
            num_sfrir=num_sfrir,
            num_sfrb=num_sfrb,
            wavelet=wavelet,
            global_module=global_module,
        )
        self.loss: Optional[CLGNetLoss] = None

    def setup(self, stage: str) -> None:
        # Built here, not in __init__, so that loading a checkpoint for validation, testing or
        # prediction never needs the VGG19 weights (they are not stored in checkpoints).
        if stage == "fit" and self.loss is None:
            hp = self.hparams
            contrastive = None
            if hp.alpha > 0:
                contrastive = ContrastiveLoss(
                    k_negatives=hp.k_negatives,
                    use_negatives=hp.use_negatives,
                    reduction=hp.cl_reduction,
                    features=VGG19Features(hp.vgg_weights),
                )
            self.loss = CLGNetLoss(alpha=hp.alpha, contrastive=contrastive)

    def forward(self, image: Tensor) -> Tensor:
        """``B x H x W`` normalised zero-filled image -> ``B x H x W`` reconstruction."""
        return self.clgnet(image.unsqueeze(1)).squeeze(1)

    def training_step(self, batch: UnetSample, batch_idx: int) -> Tensor:
        output = self(batch.image)
        parts: LossParts = self.loss(output, batch.target, batch.image)
        self.log("train_loss", parts.total.detach(), prog_bar=True)
        self.log("train_l1", parts.l1.detach())
        self.log("train_contrastive", parts.contrastive.detach())
        return parts.total

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return optimizer
        if hp.lr_schedule == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, hp.lr_step_size, hp.lr_gamma)
            return [optimizer], [scheduler]
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("lr_schedule='cosine' needs max_epochs or max_steps to be set")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_factor(step, int(total), hp.lr_min_ratio)
        )
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]


def cosine_factor(step: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate factor that falls from 1 to ``min_ratio`` along half a cosine."""
    progress = min(step / max(total_steps, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
