"""Load a trained network (CLGNet, U-Net, VarNet) from a Lightning checkpoint, safely and
with clear errors.

Besides Lightning's ``hyper_parameters``, a checkpoint of ``clgnet-fastmri train`` records
under ``RECORD_KEY`` the model kind, the challenge and the input normalisation it was trained
for. The record sits beside the hyperparameters, not among them, so that Lightning's and
fastmri's ``load_from_checkpoint`` still take the hyperparameters as they are. Checkpoints
written before the record existed are CLGNet ones of an unknown challenge.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn

from .data.fastmri_layout import CHALLENGES
from .errors import UserError
from .files import atomic_output
from .models import CLGNet
from .pl_modules.kinds import KINDS, ModelKind
from .settings import check_hparams, signature_settings

log = logging.getLogger(__name__)

RECORD_KEY = "clgnet_fastmri"
#: What a checkpoint without a record was: ``clgnet-fastmri train`` trained only CLGNet then.
UNRECORDED = {"model_kind": "clgnet", "challenge": None, "normalisation": None}


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


def check_finite_weights(state: Mapping[str, Any], checkpoint: Union[str, os.PathLike]) -> None:
    """Refuse a checkpoint whose weights (``state``) hold NaN or Inf, naming one."""
    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and \
                not torch.isfinite(tensor).all():
            raise UserError(
                f"{checkpoint}: weight {name} holds NaN or Inf values (the training "
                "diverged); use an earlier checkpoint"
            )


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


def run_record(kind: ModelKind, challenge: str,
               vgg_weights: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """What a checkpoint records about its training: model kind, challenge, normalisation,
    and for a contrastive loss the VGG19 weights it used (``VGG19Weights.record``: imagenet,
    random or file, with the file's path and SHA-256)."""
    record: Dict[str, Any] = {"model_kind": kind.name, "challenge": challenge,
                              "normalisation": kind.normalisation}
    if vgg_weights is not None:
        record["vgg_weights"] = dict(vgg_weights)
    return record


class RecordRun(Callback):
    """Write ``run_record(...)`` into every checkpoint the trainer saves."""

    def __init__(self, kind: ModelKind, challenge: str,
                 vgg_weights: Optional[Mapping[str, Any]] = None):
        self.record = run_record(kind, challenge, vgg_weights)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: Dict[str, Any]) -> None:
        checkpoint[RECORD_KEY] = dict(self.record)


def read_record(path: Union[str, os.PathLike], checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The checkpoint's record (``run_record``); ``UNRECORDED`` with a note for a checkpoint
    written before records existed."""
    record = checkpoint.get(RECORD_KEY)
    if record is None:
        log.warning("%s: the checkpoint does not record its model kind or challenge (written by "
                 "an older clgnet-fastmri); loading it as CLGNet", path)
        return dict(UNRECORDED)
    kind = record.get("model_kind") if isinstance(record, Mapping) else None
    challenge = record.get("challenge") if isinstance(record, Mapping) else None
    if kind not in KINDS or challenge not in CHALLENGES:
        raise UserError(f"{path}: damaged {RECORD_KEY} record ({record!r}); use a checkpoint "
                        "written by clgnet-fastmri train")
    return {**UNRECORDED, **record}


def describe(hparams: Mapping[str, Any], state: Mapping[str, Any] = {},
             kind: ModelKind = KINDS["clgnet"]) -> str:
    """``CLGNet(chans=32, ...)`` from a module's hyperparameters, ``+ part`` for each other
    top-level part of its weights (e.g. a training extension's)."""
    parts = sorted({key.split(".")[0] for key in state} - {kind.network, "loss"})
    return kind.describe(hparams) + "".join(f" + {part}" for part in parts)


def checked_hparams(path: Union[str, os.PathLike], checkpoint: Mapping[str, Any],
                    kind: ModelKind = KINDS["clgnet"]) -> Dict[str, Any]:
    """The module's arguments stored in a checkpoint, each checked against the module's
    ``RULES`` (types, ranges, size caps) before anything is built from them."""
    hparams = checkpoint.get("hyper_parameters", {})
    state = checkpoint.get("state_dict", {})
    prefix = kind.network + "."
    if not isinstance(hparams, Mapping) or not isinstance(state, Mapping) or \
            not any(key.startswith(prefix) for key in state) or \
            not all(name in hparams for name in kind.module.NETWORK_HPARAMS):
        raise UserError(
            f"{path}: not a {kind.title} checkpoint (no {kind.title} weights or "
            "hyperparameters); use a checkpoint written by clgnet-fastmri train"
        )
    return check_hparams(hparams, signature_settings(kind.module), kind.module.RULES, path)


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


def load_module(path: Union[str, os.PathLike]) -> pl.LightningModule:
    """The Lightning module of a checkpoint, of the kind it records (CLGNet when it records
    none), for validation, testing or prediction: its checked hyperparameters and network
    weights (other parts, e.g. a training extension's, are not needed there and are left
    out)."""
    return load_recorded(path)[0]


def load_recorded(path: Union[str, os.PathLike]) -> Tuple[pl.LightningModule, Dict[str, Any]]:
    """``load_module(path)`` and the checkpoint's record (``read_record``)."""
    checkpoint = read_checkpoint(path)
    record = read_record(path, checkpoint)
    return module_from_checkpoint(path, checkpoint, record), record


def module_from_checkpoint(path: Union[str, os.PathLike], checkpoint: Mapping[str, Any],
                           record: Mapping[str, Any]) -> pl.LightningModule:
    """The module of a checkpoint already read (``read_checkpoint``) with its ``record``:
    ``load_module`` for a caller that reads the checkpoint for more than the module."""
    kind = KINDS[record["model_kind"]]
    hparams = checked_hparams(path, checkpoint, kind)
    module = kind.module(**hparams)
    prefix = kind.network + "."
    state = {
        key[len(prefix):]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    network = getattr(module, kind.network)
    described = kind.describe(hparams)
    check_fits(path, network, state, trained_as=f"weights that are not {described}",
               asked=f"the {described} its hyperparameters describe")
    network.load_state_dict(state)
    return module


def load_clgnet(path: Union[str, os.PathLike]) -> CLGNet:
    """The CLGNet of a ``CLGNetModule`` checkpoint (or of any module that stores the network
    under ``clgnet.`` with CLGNet's hyperparameters), in eval mode on the CPU."""
    module, record = load_recorded(path)
    if record["model_kind"] != "clgnet":
        raise UserError(f"{path}: a {record['model_kind']} checkpoint, not a CLGNet one; "
                        "load it with load_module")
    return module.clgnet.eval()


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
