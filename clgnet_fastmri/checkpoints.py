"""Load a trained CLGNet from a Lightning checkpoint, safely and with clear errors."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .errors import UserError
from .files import atomic_output
from .models import CLGNet

# The CLGNetModule hyperparameters that define the network (CLGNet's constructor arguments).
MODEL_HPARAMS = ("chans", "num_sfrir", "num_sfrb", "wavelet", "global_module")
MODEL_PREFIX = "clgnet."


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.

    A checkpoint is a pickle; ``weights_only`` refuses anything but tensors and primitive
    types, so a crafted file cannot run code. Every failure names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; check the path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch raises UnpicklingError both for content weights_only refuses (a class or
        # function to import) and for bytes that are no pickle at all; only the message differs.
        if "Unsupported global" in str(exc):
            raise UserError(
                f"{path}: refused to load: the checkpoint holds objects other than tensors "
                "and plain values, which could run code; use a checkpoint written by "
                "clgnet-fastmri train"
            ) from None
        raise _unreadable(path) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError):
        raise _unreadable(path) from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _unreadable(path: Path) -> UserError:
    return UserError(
        f"{path}: not a readable PyTorch checkpoint (truncated or another format); "
        "use a .ckpt written by clgnet-fastmri train"
    )


def load_clgnet(path: Union[str, os.PathLike]) -> CLGNet:
    """The CLGNet of a ``CLGNetModule`` checkpoint (or of any module that stores the network
    under ``clgnet.`` with CLGNet's hyperparameters), in eval mode on the CPU."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    state = {
        key[len(MODEL_PREFIX):]: value
        for key, value in checkpoint.get("state_dict", {}).items()
        if key.startswith(MODEL_PREFIX)
    }
    if not state or not all(name in hparams for name in MODEL_HPARAMS):
        raise UserError(
            f"{path}: not a CLGNet checkpoint (no CLGNet weights or hyperparameters); "
            "use a checkpoint written by clgnet-fastmri train"
        )
    model = CLGNet(**{name: hparams[name] for name in MODEL_HPARAMS})
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path}: the weights do not fit the network they describe: {exc}") from None
    return model.eval()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, writing each checkpoint atomically and reading it safely.

    Lightning stages a checkpoint in the system temp folder and moves it into place; across
    file systems (the usual case on clusters, where /tmp is a local disk) that move is a copy,
    and a job killed during it leaves a truncated ``last.ckpt``. Here the file is written
    under a temporary name in its own folder and renamed (``files.atomic_output``), and it is
    read with ``torch.load(weights_only=True)`` unless the caller asks otherwise.
    """

    def save_checkpoint(
        self, checkpoint: Dict[str, Any], path: Union[str, os.PathLike],
        storage_options: Optional[Any] = None,
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote storage
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self,
        path: Union[str, os.PathLike],
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> Dict[str, Any]:
        return super().load_checkpoint(
            path, map_location, weights_only=True if weights_only is None else weights_only
        )
