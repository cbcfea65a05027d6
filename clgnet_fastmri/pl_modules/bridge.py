"""Run fastmri 0.3.0's ``MriModule`` training loop on Lightning 2, without forking it.

fastmri's ``MriModule`` (and so ``UnetModule`` and ``VarNetModule``) aggregates validation
metrics in ``validation_step_end``/``validation_epoch_end`` and saves test reconstructions in
``test_epoch_end``. Lightning 2 removed those hooks and refuses a model that defines them
(fastMRI issue #308). ``Lightning2Bridge`` hides the three names from Lightning and calls
fastmri's own validation implementations from the Lightning 2 hooks, so the metric code
(NMSE, PSNR and SSIM per volume, summed across DDP ranks) stays fastmri's. Test
reconstructions are gathered as fastmri's ``test_epoch_end`` does, but written by
``files.save_reconstructions`` instead of ``fastmri.save_reconstructions``: each file
atomically and verified, so a full disk or a kill never leaves a broken file under its name.
It also fixes the two places where the legacy code assumes Lightning 1 objects:
``trainer.val_dataloaders[0]`` and a TensorBoard-only ``log_image``, and hands fastmri's
metric and saving code float32 tensors under ``precision="bf16-true"``/``"16-true"`` (it
converts them to numpy, which has no bfloat16).

Prediction (``Trainer.predict``, run by ``clgnet-fastmri predict``) has no fastmri
counterpart: each module's ``predict_step`` returns ``SlicePredictions``, the float32
reconstruction of each slice under its file name and slice index, as its ``test_step``
computes it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
from fastmri import pl_modules as fastmri_modules
from fastmri.data.transforms import UnetSample, VarNetSample, center_crop
from fastmri.models import Unet, VarNet
from fastmri.pl_modules import MriModule
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn

from ..errors import UserError
from ..files import save_reconstructions
from ..settings import MAX_CHANS, Rule, add_signature_arguments


class Lightning2Bridge:
    """Mixin that makes an ``MriModule`` subclass trainable on Lightning 2.

    Put it first among the bases, e.g. ``class M(Lightning2Bridge, MriModule)``.
    """

    # Lightning 2 raises if these are callable; the hooks below call fastmri's versions.
    validation_step_end = None
    validation_epoch_end = None
    test_epoch_end = None

    #: Allowed values and help of each ``__init__`` argument (defaults: the signature).
    RULES: Dict[str, Rule] = {}
    #: The arguments that define the network, as stored in checkpoints.
    NETWORK_HPARAMS: tuple = ()

    @classmethod
    def add_model_specific_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add one ``--name`` option per ``__init__`` argument (defaults from the signature,
        or from ``RULES`` where fastmri's demo script sets another)."""
        add_signature_arguments(parser.add_argument_group(cls.__name__), cls, cls.RULES)
        return parser

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # float32 out of a bfloat16/float16 model: fastmri's steps call .numpy() on outputs.
        return super().forward(*args, **kwargs).float()

    def check_batch(self, batch: Any, *args: Any) -> None:
        """One line for a batch the network cannot take, before it fails deep inside."""
        for network in self.children():
            check_pooling(network, batch)

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = check_batch
    on_predict_batch_start = check_batch

    def on_validation_epoch_start(self) -> None:
        self._val_logs: List[Dict[str, Any]] = []
        if self.val_log_indices is None:
            # fastmri reads len(trainer.val_dataloaders[0]); in Lightning 2 it is the loader.
            loaders = self.trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            self.val_log_indices = list(
                np.random.permutation(len(loader))[: self.num_log_images]
            )

    def on_validation_batch_end(
        self, outputs: Dict[str, Any], batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        outputs = {key: value.float() if torch.is_tensor(value) and value.is_floating_point()
                   else value for key, value in outputs.items()}
        self._val_logs.append(MriModule.validation_step_end(self, outputs))

    def on_validation_epoch_end(self) -> None:
        MriModule.validation_epoch_end(self, self._val_logs)
        self._val_logs = []

    def on_test_epoch_start(self) -> None:
        self._test_logs: List[Dict[str, Any]] = []

    def on_test_batch_end(
        self, outputs: Dict[str, Any], batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._test_logs.append(outputs)

    def on_test_epoch_end(self) -> None:
        """``MriModule.test_epoch_end`` with an atomic, verified writer."""
        # A dict per file: DDP padding can repeat slices.
        outputs: Dict[str, Dict[int, np.ndarray]] = defaultdict(dict)
        for log in self._test_logs:
            for i, (fname, slice_num) in enumerate(zip(log["fname"], log["slice"])):
                outputs[fname][int(slice_num)] = log["output"][i]
        self._test_logs = []
        volumes = {
            fname: np.stack([out for _, out in sorted(slices.items())])
            for fname, slices in outputs.items()
        }
        save_path = Path(self.trainer.default_root_dir) / "reconstructions"
        self.print(f"Saving reconstructions to {save_path}")
        save_reconstructions(volumes, save_path)
        # Under DDP each rank writes its own volumes; rank 0 scores the folder as soon as
        # ``trainer.test`` returns, so no rank may leave before every file is written.
        self.trainer.strategy.barrier("reconstructions_saved")

    def log_image(self, name: str, image: torch.Tensor) -> None:
        """Log a 1 x H x W image in [0, 1] to every logger that takes images.

        fastmri assumes a TensorBoard logger; a CSV logger (or none) simply gets no images.
        """
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(name, image, global_step=self.global_step)
            elif callable(getattr(logger, "log_image", None)):
                logger.log_image(key=name, images=[image], step=self.global_step)


class SlicePredictions(NamedTuple):
    """What ``predict_step`` returns for a batch of B slices, on the module's device."""

    #: The input file of each slice.
    fname: Sequence[str]
    #: Each slice's index in its file (a B tensor).
    slice_num: Tensor
    #: Each slice's float32 H x W reconstruction (a B x H x W tensor, or a list where the
    #: slices' sizes may differ).
    images: Sequence[Tensor]


def predict_images(network: Callable[[Tensor], Tensor], batch: UnetSample) -> SlicePredictions:
    """The reconstructions of an image-domain network (``UnetSample`` batches): its output on
    the normalised zero-filled image (B x H x W in and out), in float32, un-normalised with each
    slice's mean and std as fastmri's ``UnetModule.test_step`` does."""
    output = network(batch.image).float()
    return SlicePredictions(batch.fname, batch.slice_num,
                            output * batch.std[:, None, None] + batch.mean[:, None, None])


def recon_size(image: Tensor, crop_size: Tuple[int, int]) -> Tuple[int, int]:
    """The size a VarNet reconstruction is cropped to: the header's reconSpace size
    (``crop_size``), or a square of the image's width where that is narrower (fastmri's FLAIR
    203 case, as in ``VarNetModule.test_step``)."""
    if image.shape[-1] < crop_size[1]:
        return image.shape[-1], image.shape[-1]
    return crop_size


def max_pools(height: int, width: int) -> int:
    """How many times a fastmri U-Net can pool a height x width image: each level halves it
    (rounding down), and the InstanceNorm at the bottom needs more than one pixel."""
    pools = 0
    while (height >> (pools + 1)) * (width >> (pools + 1)) >= 2:
        pools += 1
    return pools


def check_pooling(network: nn.Module, batch: Any) -> None:
    """Refuse a batch too small for the pooling levels of a fastmri ``Unet`` or ``VarNet``
    (whose U-Nets see the k-space grid padded to a multiple of 16) with one line, instead of
    a pooling error deep inside the network. Other networks pass."""
    if isinstance(network, Unet):
        height, width = batch.image.shape[-2:]
        levels = {"--num_pool_layers": network.num_pool_layers}
    elif isinstance(network, VarNet) and isinstance(batch, VarNetSample):
        height, width = (-(-size // 16) * 16 for size in batch.masked_kspace.shape[-3:-1])
        levels = {"--pools": network.cascades[0].model.unet.num_pool_layers,
                  "--sens_pools": network.sens_net.norm_unet.unet.num_pool_layers}
    else:
        return
    allowed = max_pools(height, width)
    for flag, pools in levels.items():
        if pools > allowed:
            raise UserError(
                f"{batch.fname[0]}: its {height}x{width} images are too small for {flag} "
                f"{pools} (each pooling level halves them); use {flag} {allowed} or fewer "
                "for images this size"
            )


_LR = dict(low=0, low_open=True, high=10)
_POOLS = dict(low=1, high=8)


class BridgedUnetModule(Lightning2Bridge, fastmri_modules.UnetModule):
    """fastmri's ``UnetModule`` (the fastMRI U-Net baseline), trainable on Lightning 2.

    Its signature's defaults are those of fastmri's ``train_unet_demo.py`` (RMSprop,
    lr 1e-3, StepLR every 40 epochs by 0.1, 32 channels, 4 pooling levels).
    """

    RULES = {
        "in_chans": Rule("U-Net input channels (the magnitude image)", choices=(1,)),
        "out_chans": Rule("U-Net output channels (the magnitude image)", choices=(1,)),
        "chans": Rule("channels of the first U-Net level", low=1, high=MAX_CHANS),
        "num_pool_layers": Rule("U-Net pooling levels", **_POOLS),
        "drop_prob": Rule("U-Net dropout probability", low=0, high=1, high_open=True),
        "lr": Rule("RMSprop learning rate", **_LR),
        "lr_step_size": Rule("epochs between learning-rate decays (StepLR)", low=1),
        "lr_gamma": Rule("learning-rate decay factor", low=0, high=1, low_open=True),
        "weight_decay": Rule("RMSprop weight decay", low=0),
    }
    NETWORK_HPARAMS = ("in_chans", "out_chans", "chans", "num_pool_layers", "drop_prob")

    def predict_step(self, batch: UnetSample, batch_idx: int, dataloader_idx: int = 0
                     ) -> SlicePredictions:
        """``predict_images`` of this module (shared by every image-domain module)."""
        return predict_images(self, batch)


class BridgedVarNetModule(Lightning2Bridge, fastmri_modules.VarNetModule):
    """fastmri's ``VarNetModule`` (End-to-End VarNet baseline), trainable on Lightning 2.

    Command-line defaults are those of fastmri's ``train_varnet_demo.py``: 8 cascades and
    Adam at lr 1e-3 (the signature says 12 and 3e-4), the
    other values as in the signature.
    """

    RULES = {
        "num_cascades": Rule("VarNet cascades (unrolled iterations)", low=1, high=64,
                             cli_default=8),
        "pools": Rule("pooling levels of each cascade's U-Net", **_POOLS),
        "chans": Rule("channels of each cascade's U-Net", low=1, high=MAX_CHANS),
        "sens_pools": Rule("pooling levels of the sensitivity-map U-Net", **_POOLS),
        "sens_chans": Rule("channels of the sensitivity-map U-Net", low=1, high=MAX_CHANS),
        "lr": Rule("Adam learning rate", cli_default=1e-3, **_LR),
        "lr_step_size": Rule("epochs between learning-rate decays (StepLR)", low=1),
        "lr_gamma": Rule("learning-rate decay factor", low=0, high=1, low_open=True),
        "weight_decay": Rule("Adam weight decay", low=0),
    }
    NETWORK_HPARAMS = ("num_cascades", "pools", "chans", "sens_pools", "sens_chans")

    def predict_step(self, batch: VarNetSample, batch_idx: int, dataloader_idx: int = 0
                     ) -> SlicePredictions:
        """VarNet's output on the masked k-space, each slice cropped to its own ``recon_size``
        as fastmri's ``test_step`` crops its one slice."""
        output = self(batch.masked_kspace, batch.mask, batch.num_low_frequencies)
        heights, widths = batch.crop_size
        return SlicePredictions(batch.fname, batch.slice_num, [
            center_crop(image, recon_size(image, (int(height), int(width))))
            for image, height, width in zip(output, heights, widths)
        ])
