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
``trainer.val_dataloaders[0]`` and a TensorBoard-only ``log_image``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from fastmri.pl_modules import MriModule, UnetModule, VarNetModule
from pytorch_lightning.loggers import TensorBoardLogger

from ..files import save_reconstructions


class Lightning2Bridge:
    """Mixin that makes an ``MriModule`` subclass trainable on Lightning 2.

    Put it first among the bases, e.g. ``class M(Lightning2Bridge, MriModule)``.
    """

    # Lightning 2 raises if these are callable; the hooks below call fastmri's versions.
    validation_step_end = None
    validation_epoch_end = None
    test_epoch_end = None

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

    def log_image(self, name: str, image: torch.Tensor) -> None:
        """Log a 1 x H x W image in [0, 1] to every logger that takes images.

        fastmri assumes a TensorBoard logger; a CSV logger (or none) simply gets no images.
        """
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(name, image, global_step=self.global_step)
            elif callable(getattr(logger, "log_image", None)):
                logger.log_image(key=name, images=[image], step=self.global_step)


class UnetModule(Lightning2Bridge, UnetModule):
    """fastmri's ``UnetModule`` (the fastMRI U-Net baseline), trainable on Lightning 2."""


class VarNetModule(Lightning2Bridge, VarNetModule):
    """fastmri's ``VarNetModule`` (End-to-End VarNet baseline), trainable on Lightning 2."""
