"""Load a trained CLGNet from a Lightning checkpoint, safely and with clear errors."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn

from .errors import UserError
from .files import atomic_output
from .models import CLGNet
from .pl_modules.clgnet_module import CLGNetModule
from .settings import check_hparams, signature_settings

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
    except pickle.UnpicklingError:
        # Raised both for content weights_only refuses and for bytes that are no pickle; the
        # file's own list of imports (read without running them) tells which.
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UserError(
                f"{path}: refused to load: the checkpoint imports {', '.join(unsafe[:3])}, "
                "which could run code; use a checkpoint written by clgnet-fastmri train"
            ) from None
        raise _unreadable(path) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError):
        raise _unreadable(path) from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _unsafe_globals(path: Path) -> List[str]:
    """The classes and functions a checkpoint's pickle imports beyond torch's allowlist."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            zipfile.BadZipFile):  # not a torch.save file at all: nothing unsafe to name
        return []


def _unreadable(path: Path) -> UserError:
    return UserError(
        f"{path}: not a readable PyTorch checkpoint (truncated or another format); "
        "use a .ckpt written by clgnet-fastmri train"
    )


def describe(hparams: Mapping[str, Any], state: Mapping[str, Any] = {}) -> str:
    """``CLGNet(chans=32, ...)`` from a module's hyperparameters, ``+ part`` for each other
    top-level part of its weights (e.g. a training extension's)."""
    args = ", ".join(f"{name}={hparams.get(name)!r}" for name in CLGNetModule.NETWORK_HPARAMS)
    parts = sorted({key.split(".")[0] for key in state} - {MODEL_PREFIX.rstrip(".")})
    return f"CLGNet({args})" + "".join(f" + {part}" for part in parts)


def checked_hparams(path: Union[str, os.PathLike], checkpoint: Mapping[str, Any]
                    ) -> Dict[str, Any]:
    """``CLGNetModule``'s arguments stored in a checkpoint, each checked against
    ``CLGNetModule.RULES`` (types, ranges, size caps) before anything is built from them."""
    hparams = checkpoint.get("hyper_parameters", {})
    state = checkpoint.get("state_dict", {})
    if not isinstance(hparams, Mapping) or not isinstance(state, Mapping) or \
            not any(key.startswith(MODEL_PREFIX) for key in state) or \
            not all(name in hparams for name in CLGNetModule.NETWORK_HPARAMS):
        raise UserError(
            f"{path}: not a CLGNet checkpoint (no CLGNet weights or hyperparameters); "
            "use a checkpoint written by clgnet-fastmri train"
        )
    return check_hparams(hparams, signature_settings(CLGNetModule), CLGNetModule.RULES, path)


def check_fits(path: Union[str, os.PathLike], module: nn.Module, state: Mapping[str, Any],
               trained_as: str, asked: str) -> None:
    """Raise one line naming the checkpoint, what it was trained as and what was asked
    unless ``state`` has exactly ``module``'s tensors and shapes (never one line per tensor)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and
             (not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)]
    if missing or unexpected or wrong:
        first = (wrong or missing or unexpected)[0]
        raise UserError(
            f"{path}: the weights do not fit: trained as {trained_as}, asked for {asked} "
            f"({len(wrong)} tensors of another shape, {len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {first}); give the options it was trained "
            "with, or another checkpoint"
        )


def load_module(path: Union[str, os.PathLike]) -> CLGNetModule:
    """The ``CLGNetModule`` of a checkpoint, for validation, testing or prediction: its checked
    hyperparameters and network weights (other parts, e.g. a training extension's, are not
    needed there and are left out)."""
    checkpoint = read_checkpoint(path)
    hparams = checked_hparams(path, checkpoint)
    module = CLGNetModule(**hparams)
    state = {
        key[len(MODEL_PREFIX):]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }
    described = describe(hparams)
    check_fits(path, module.clgnet, state, trained_as=f"weights that are not {described}",
               asked=f"the {described} its hyperparameters describe")
    module.clgnet.load_state_dict(state)
    return module


def load_clgnet(path: Union[str, os.PathLike]) -> CLGNet:
    """The CLGNet of a ``CLGNetModule`` checkpoint (or of any module that stores the network
    under ``clgnet.`` with CLGNet's hyperparameters), in eval mode on the CPU."""
    return load_module(path).clgnet.eval()


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
