"""Stop a training run that diverged, before it saves NaN weights or reports success.

A non-finite training loss, non-finite validation metrics or non-finite weights about to be
checkpointed end ``trainer.fit`` with a ``Diverged`` error (one line: the step, the quantity,
what to try, and the last checkpoint, which is finite because no other is ever written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn

from .checkpoints import check_finite_weights, read_checkpoint
from .errors import UserError

#: What usually brings a diverged run back.
_TRY = ("try a lower --lr, --precision 32-true (or bf16-mixed), or check --vgg_weights and "
        "the data")


class Diverged(UserError):
    """Training produced NaN or Inf; the message names the step, the quantity and the fix."""


class DivergenceGuard(Callback):
    """Raise ``Diverged`` when the training loss, a validation metric or a weight about to be
    saved is not finite.

    Every process takes part in the decision (``reduce_boolean_decision``), so under DDP all
    of them stop together instead of the others waiting for one that left. Lightning runs
    ``ModelCheckpoint`` after the other callbacks, so a diverged validation is never saved as
    a checkpoint.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if torch.is_tensor(loss):
            self._check(trainer, {"the training loss": loss.detach()})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # --mode validate: it reports the checkpoint's metrics, whatever they are
        self._check(trainer, {f"the validation metric {name}": value for name, value
                              in sorted(trainer.callback_metrics.items())
                              if name.startswith("val")})

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: Dict[str, Any]) -> None:
        self._check(trainer, {f"weight {name} (not saved)": tensor for name, tensor
                              in checkpoint["state_dict"].items() if tensor.is_floating_point()})

    def _check(self, trainer: pl.Trainer, quantities: Mapping[str, torch.Tensor]) -> None:
        """Raise for the first quantity that is not finite here or on any other process
        (one collective call however many quantities)."""
        bad = next(((what, value) for what, value in quantities.items()
                    if not bool(torch.isfinite(value).all())), None)
        if trainer.strategy.reduce_boolean_decision(bad is None, all=True):
            return
        what = "a quantity is not finite on another process" if bad is None else \
            f"{bad[0]} is {_shown(bad[1])}"
        kept = last_finite_checkpoint(trainer)
        where = (f"the last checkpoint, {kept}, is finite and kept (--resume {kept})"
                 if kept else "no checkpoint was written before")
        raise Diverged(f"step {trainer.global_step}: {what}, the training diverged; {where}; "
                       f"{_TRY}")


def _shown(value: torch.Tensor) -> str:
    if value.numel() == 1:
        return str(float(value))
    return "NaN" if bool(torch.isnan(value).any()) else "Inf"


def last_finite_checkpoint(trainer: pl.Trainer) -> Optional[Path]:
    """The newest checkpoint the run's ``ModelCheckpoint`` callbacks know of whose weights
    are finite (one from before this run, e.g. resumed, is read to tell), if any."""
    paths = {Path(path) for callback in trainer.checkpoint_callbacks
             for path in (callback.last_model_path, callback.best_model_path) if path}
    for path in sorted((p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime,
                       reverse=True):
        try:
            check_finite_weights(read_checkpoint(path).get("state_dict", {}), path)
        except UserError:
            continue
        return path
    return None

