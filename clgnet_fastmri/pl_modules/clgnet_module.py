"""Lightning module of CLGNet on fastmri's MriModule training loop."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from fastmri.data.transforms import UnetSample
from fastmri.pl_modules import MriModule
from fastmri.pl_modules import UnetModule as FastMriUnetModule
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from ..losses import CLGNetLoss, ContrastiveLoss, LossParts, VGG19Features
from ..losses.contrastive import REDUCTIONS
from ..models import GLOBAL_MODULES, CLGNet, ReferenceFourierUnit
from ..settings import MAX_CHANS, Rule, orthogonal_wavelets
from .batchnorm import has_batchnorm, refresh_batchnorm_statistics
from .bridge import BridgedUnetModule, Lightning2Bridge

LR_SCHEDULES = ("cosine", "step", "constant")


class CLGNetModule(Lightning2Bridge, MriModule):
    """CLGNet trained with ``L1 + alpha * L_CL`` (paper Eq. 10) on fastmri's ``MriModule``.

    Batches are ``UnetSample``s from ``CLGNetDataTransform`` (image, target, mean, std, ...).
    Validation and test reuse fastmri's ``UnetModule`` steps (denormalise, then fastmri's
    metrics and reconstruction saving), so the numbers are comparable with its U-Net baseline;
    prediction reuses the bridge's U-Net ``predict_step`` (``bridge.predict_images``).

    Logged: ``train_loss``, ``train_l1``, ``train_contrastive``; ``validation_loss`` (L1 in the
    normalised space) and ``val_metrics/{nmse,psnr,ssim}`` (fastmri, per volume); validation
    images to TensorBoard.

    The signature's defaults are the paper's settings (Sec. 4.1), except ``lr`` and ``alpha``,
    and ``global_init``, which the paper leaves open;
    ``RULES`` holds each argument's allowed values and help, and ``add_model_specific_args``
    makes the two into command-line options (fastmri's ``UnetModule`` convention).

    Args:
        chans, num_sfrir, num_sfrb, wavelet, global_module: The network (``CLGNet``);
            ``wavelet=None`` is the "w/o wavelet" ablation, ``global_module="none"`` the
            "w/o SFL" one.
        global_init: Initial scale of the SFLs' fuse weights on the Fourier unit's output
            (``CLGNet``); initialisation only, so not among ``NETWORK_HPARAMS``. 0, not
            PyTorch's default (1): each SFL starts as its local path and learns how much of
            its Fourier unit to add, which at 256 x 256 learns faster per step on both
            built-in anatomies (BENCHMARKS.md, *256 x 256, sixth session*).
        global_lr_scale: The Fourier units' parameters (their Conv1x1 and BatchNorm) train
            at ``lr * global_lr_scale``, every other parameter at ``lr``; same schedule.
        alpha: Weight of the contrastive loss; 0 (the default) trains with L1 only ("w/o
            L_CL") and never builds VGG19. Not the paper's 0.05 (``PAPER_ALPHA``): with it a
            step costs about twice as much, for a per-step gain small beside that cost at
            256 x 256 on both built-in anatomies (and 0.13 dB in the paper's Table 3), so at
            equal training time L1 alone is ahead (BENCHMARKS.md, *256 x 256, fifth
            session*). ``alpha=0.05`` reproduces the paper's loss.
        k_negatives, use_negatives, cl_reduction: The contrastive loss (``ContrastiveLoss``).
        vgg_weights: "imagenet", a path to a VGG19 state dict, or None for random init. Only
            read when fitting: evaluating or predicting with a checkpoint never needs VGG19.
        lr: Adam's peak learning rate. 1e-3, not the paper's 1e-4: at equal training time
            1e-4 learns far slower (see BENCHMARKS.md, Quality), and the cosine schedule
            still ends at ``lr * lr_min_ratio``. ``lr=1e-4`` reproduces the paper's setting.
        weight_decay: Adam weight decay.
        lr_schedule: "cosine" (per step, from ``lr`` down to ``lr * lr_min_ratio`` at the last
            step of the run), "step" (fastmri's StepLR: ``lr_gamma`` every ``lr_step_size``
            epochs) or "constant" (the paper states no schedule).
        bn_stats_batches: Before each validation during training, the Fourier units'
            BatchNorm running statistics are recomputed as the average over this many
            training batches under the current weights (``refresh_batchnorm_statistics``),
            so that validation, checkpoints and the final network use them instead of the
            lagging running averages; 0 keeps PyTorch's running averages (momentum 0.1).
        num_log_images: Validation images logged per epoch.
    """

    # fastmri's U-Net steps do what any image-domain model needs: run forward on the
    # normalised zero-filled image and undo the normalisation for metrics and saving.
    validation_step = FastMriUnetModule.validation_step
    test_step = FastMriUnetModule.test_step
    predict_step = BridgedUnetModule.predict_step

    #: Allowed values and help of each ``__init__`` argument (defaults: the signature).
    RULES: Dict[str, Rule] = {
        "chans": Rule("channels C of the branch bodies", low=1, high=MAX_CHANS),
        "num_sfrir": Rule("SFRIRs per branch", low=1, high=64),
        "num_sfrb": Rule("SFRBs per SFRIR", low=1, high=64),
        "wavelet": Rule("any orthogonal PyWavelets wavelet, or 'none' for the 'w/o wavelet' "
                        "ablation", choices=orthogonal_wavelets, none="none",
                        what="an orthogonal PyWavelets wavelet (haar, db2, sym4, coif1, ...)"),
        "global_module": Rule("'none' is the 'w/o SFL' ablation (local convolutions only); "
                              "'self_attention' and 'swin' are the paper's CLGNet_SA and "
                              "CLGNet_Tran", choices=GLOBAL_MODULES),
        "global_init": Rule("initial scale of each SFL's fuse weights on its Fourier unit's "
                            "output (1 = PyTorch's initialisation, 0 = each SFL starts local)",
                            low=0, high=10),
        "global_lr_scale": Rule("learning rate of the Fourier units' Conv1x1 and BatchNorm as a "
                                "multiple of --lr", low=0, low_open=True, high=100),
        "alpha": Rule("weight of the contrastive loss; 0 = L1 only, no VGG19 (the paper's "
                      "0.05 doubles a step's time for a small gain per step; see README)",
                      low=0, high=1e3),
        "k_negatives": Rule("negatives per sample in the contrastive loss", low=1, high=64),
        "use_negatives": Rule("'w/o negative' ablation", flag="--no_negatives"),
        "cl_reduction": Rule("how the contrastive ratio is averaged", choices=REDUCTIONS),
        "vgg_weights": Rule(
            "VGG19 of the contrastive loss: 'auto' takes torchvision's ImageNet weights from "
            "the torch-hub cache, else downloads them, else uses random weights with a "
            "warning; 'imagenet' the same but stops instead of random; 'random'; or a VGG19 "
            "state dict file", none="random", cli_default="auto",
            what="one of auto, imagenet, random, or a file path"),
        "lr": Rule("Adam's peak learning rate, decayed by --lr_schedule (the paper's 1e-4 "
                   "learns far slower at equal time; see README)", low=0, low_open=True,
                   high=10),
        "weight_decay": Rule("Adam weight decay", low=0),
        "lr_schedule": Rule("learning-rate schedule", choices=LR_SCHEDULES),
        "lr_min_ratio": Rule("final/peak learning rate of the cosine schedule", low=0, high=1),
        "lr_step_size": Rule("epochs between decays of the step schedule", low=1),
        "lr_gamma": Rule("decay factor of the step schedule", low=0, high=1, low_open=True),
        "bn_stats_batches": Rule("training batches over which BatchNorm statistics are "
                                 "recomputed before each validation; 0 = running averages",
                                 low=0),
        "num_log_images": Rule("validation images logged per epoch", low=0),
    }
    #: The arguments that define the network (``CLGNet``'s), as stored in checkpoints.
    NETWORK_HPARAMS = ("chans", "num_sfrir", "num_sfrb", "wavelet", "global_module")

    def __init__(
        self,
        chans: int = 32,
        num_sfrir: int = 4,
        num_sfrb: int = 3,
        wavelet: Optional[str] = "haar",
        global_module: str = "fourier",
        global_init: float = 0.0,
        global_lr_scale: float = 1.0,
        alpha: float = 0.0,
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
        bn_stats_batches: int = 16,
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
            global_init=global_init,
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

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        trainer = self.trainer
        if (trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
                and self.hparams.bn_stats_batches and has_batchnorm(self.clgnet)):
            # Seeded by the step, not by a random draw: every DDP rank computes the same
            # statistics, and the run's own random streams are left as they were.
            weight = next(self.clgnet.parameters())
            refresh_batchnorm_statistics(
                self.clgnet, trainer.train_dataloader, self.hparams.bn_stats_batches,
                self.global_step,
                lambda batch: self.training_images(batch).unsqueeze(1).to(weight.device,
                                                                          weight.dtype),
            )

    def forward(self, image: Tensor) -> Tensor:
        """``B x H x W`` normalised zero-filled image -> ``B x H x W`` reconstruction."""
        return self.clgnet(image.unsqueeze(1)).squeeze(1)

    def training_images(self, batch: Any) -> Tensor:
        """The network's input in a training batch: ``B x H x W`` normalised images."""
        return batch.image

    def training_step(self, batch: UnetSample, batch_idx: int) -> Tensor:
        output = self(self.training_images(batch))
        parts: LossParts = self.loss(output, batch.target, batch.image)
        self.log("train_loss", parts.total.detach(), prog_bar=True)
        self.log("train_l1", parts.l1.detach())
        self.log("train_contrastive", parts.contrastive.detach())
        return parts.total

    def parameter_groups(self) -> List[Dict[str, Any]]:
        """The optimiser's parameter groups: the Fourier units' at ``lr * global_lr_scale``
        (when that is not 1), then all others at ``lr``."""
        hp = self.hparams
        fourier = [] if hp.global_lr_scale == 1 else [
            p for unit in self.clgnet.modules()
            if isinstance(unit, ReferenceFourierUnit) and unit.spectral
            for p in unit.parameters()]
        chosen = {id(p) for p in fourier}
        rest = [p for p in self.parameters() if id(p) not in chosen]
        groups = [{"params": rest}]
        if fourier:
            groups.insert(0, {"params": fourier, "lr": hp.lr * hp.global_lr_scale})
        return groups

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameter_groups(), lr=hp.lr,
                                     weight_decay=hp.weight_decay)
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
