"""Training, as a library: build a run's data, module and trainer from its ``TrainConfig``.

``clgnet-fastmri train`` (``train_clgnet_demo``) is these functions in order; the benchmarks
(``bench quality``, ``bench curves``) build their runs with them too. Everything per model
comes from the run's ``ModelKind`` (``config.kind``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytorch_lightning as pl
import torch
from fastmri.data.subsample import create_mask_for_mask_type
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

from .checkpoints import (
    AtomicCheckpointIO,
    RecordRun,
    check_finite_weights,
    check_fits,
    describe,
    module_from_checkpoint,
    read_checkpoint,
    read_record,
)
from .config import TrainConfig
from .data.synthetic import GENERATOR_VERSION, make_dataset
from .divergence import DivergenceGuard
from .errors import UserError
from .extensions import extension_named
from .losses import VGG19Weights, resolve_vgg19_weights
from .pl_modules.data_module import CLGNetDataModule
from .pl_modules.kinds import ModelKind

log = logging.getLogger(__name__)

# The built-in demo: CC-359-style brain (the paper's main data) at 64 px, small enough that
# a few minutes on 2 CPU cores visibly remove the aliasing (CLGNet's demo loss: kinds.py).
# Its test volumes are masked at the demo's training acceleration (fastmri's default 4x); a
# 4x/8x test split is ``make-data --accelerations 4 8`` with ``--data_path``.
DEMO_DATA = dict(anatomy="brain", size=64, num_slices=8, accelerations=(4,),
                 splits={"train": 24, "val": 2, "test": 2})


def data_root(config: TrainConfig) -> Path:
    """The run's data: ``--data_path``, or the built-in demo set (generated once)."""
    return demo_dataset(config.challenge) if config.demo else config.data_path


def choose_threads(config: TrainConfig) -> None:
    """Set torch's CPU threads for a run on the CPU: ``--threads``, else ``OMP_NUM_THREADS``
    as the user set it, else the CPUs this process may use less those other work keeps busy
    (the 1-minute load average). On a shared machine more threads than free cores stall at
    every OpenMP barrier (BENCHMARKS.md: 2 threads on 2 busy cores made a 5-minute demo take
    58)."""
    if config.threads is None and ("OMP_NUM_THREADS" in os.environ or not runs_on_cpu(config)):
        return
    total = os.cpu_count() or 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    # The load average counts the whole machine; a process pinned to some of its CPUs (a
    # container, a SLURM job) sees its share of it.
    load = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0) * cpus / total
    threads = config.threads or free_cpus(cpus, load)
    torch.set_num_threads(threads)
    why = "--threads" if config.threads else (
        f"{cpus} CPUs, 1-minute load average {load:.1f}; --threads N or OMP_NUM_THREADS=N "
        "to choose")
    print(f"using {threads} CPU thread{'s' if threads > 1 else ''} ({why})")


def free_cpus(cpus: int, load: float) -> int:
    """The CPUs left when ``load`` of ``cpus`` are busy, at least 1."""
    return max(1, min(cpus, round(cpus - load)))


def runs_on_cpu(config: TrainConfig) -> bool:
    return config.accelerator == "cpu" or (config.accelerator == "auto" and
                                         not torch.cuda.is_available())


def run_folder(root: Path, resume: Optional[str]) -> Path:
    """Where a training run writes: ``root``, or when ``root`` holds an earlier run's
    checkpoints and this one does not ``--resume`` it, the first free ``root-2``,
    ``root-3``, ... (so that a new run never mixes its checkpoints with an old one's)."""
    if resume is not None:
        print(f"resuming the run in {root}")
        return root
    folder, number = root, 1
    while holds_run(folder):
        number += 1
        folder = root.with_name(f"{root.name}-{number}")
    if folder != root:
        print(f"{root} holds an earlier run (--resume continues it); this run goes to {folder}")
    return folder


def holds_run(folder: Path) -> bool:
    return any((folder / "checkpoints").glob("*.ckpt"))


def demo_dataset(challenge: str) -> Path:
    """The built-in demo set, generated once into the user's cache folder."""
    return cached_dataset(DEMO_DATA, challenge)


def cached_dataset(spec: dict, challenge: str) -> Path:
    """A built-in synthetic set (``make_dataset`` arguments), generated once into the cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clgnet_fastmri"
    splits = "-".join(f"{k}{v}" for k, v in spec["splits"].items())
    accelerations = "".join(f"-{a}x" for a in spec.get("accelerations", ()))
    name = (
        f"synthetic-{spec['anatomy']}-{challenge}-{spec['size']}px-{spec['num_slices']}sl"
        f"-{splits}{accelerations}-g{GENERATOR_VERSION}"
    )
    root = cache / name
    done = root / ".complete"
    if not done.exists():
        log.info("generating the built-in synthetic dataset into %s", root)
        make_dataset(root, challenge=challenge, overwrite=True, **spec)
        done.touch()
    return root


def build_data_module(config: TrainConfig) -> CLGNetDataModule:
    """fastmri's data module of the run: its masks, the kind's transforms (the extension's
    for training, when one is enabled), its splits and loaders."""
    mask = create_mask_for_mask_type(config.mask_type, list(config.center_fractions),
                                     list(config.accelerations))
    # A seeded mask stream makes a run reproducible with num_workers=0 too (workers reseed).
    mask.rng.seed(config.seed)
    transform = config.kind.transform
    train_transform = transform if config.extension is None else \
        extension_named(config.extension).train_transform(config)
    return CLGNetDataModule(
        data_path=data_root(config),
        challenge=config.challenge,
        train_transform=train_transform(config.challenge, mask, use_seed=False,
                                        crop_size=config.crop_size),
        val_transform=transform(config.challenge, mask),
        test_transform=transform(config.challenge, mask),
        combine_train_val=config.combine_train_val,
        test_split=config.test_split,
        test_path=config.test_path,
        sample_rate=config.sample_rate,
        val_sample_rate=config.val_sample_rate,
        volume_sample_rate=config.volume_sample_rate,
        val_volume_sample_rate=config.val_volume_sample_rate,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        distributed_sampler=config.distributed,
        skip_bad_files=config.skip_bad_files,
    )


def build_module(config: TrainConfig, vgg: Optional[VGG19Weights] = None) -> pl.LightningModule:
    """The ``--model``'s module (``CLGNetModule``, ``UnetModule``, ``VarNetModule``), or the
    enabled training extension's (e.g. ``--banding``: the orientation adversary beside
    CLGNet). ``vgg``: the contrastive loss's weights (``resolve_vgg(config)`` when not given),
    passed as an argument that never downloads again."""
    kwargs = dict(config.model_args)
    if config.kind.contrastive:
        vgg = vgg or resolve_vgg(config)
        kwargs["vgg_weights"] = None if vgg is None else vgg.argument
    if config.extension is None:
        return config.kind.module(**kwargs)
    return extension_named(config.extension).build_module(config, kwargs)


def resolve_vgg(config: TrainConfig) -> Optional[VGG19Weights]:
    """The VGG19 weights of the contrastive loss (``--vgg_weights``; ``auto`` may download
    them, or fall back to random weights with a warning); None without that loss."""
    if not config.kind.contrastive or config.model_args["alpha"] == 0:
        return None
    return resolve_vgg19_weights(config.model_args["vgg_weights"])


def record_run(config: TrainConfig, vgg: Optional[VGG19Weights] = None) -> RecordRun:
    """The callback that writes into each checkpoint what the run trained: its model kind,
    challenge and, with a contrastive loss, the VGG19 weights (``resolve_vgg(config)``)."""
    return RecordRun(config.kind, config.challenge, None if vgg is None else vgg.record)


def build_trainer(config: TrainConfig, vgg: Optional[VGG19Weights] = None) -> pl.Trainer:
    """The run's Lightning trainer: best (by SSIM) and last checkpoints recording what they
    were trained as, the divergence guard, the logger, the trainer options."""
    root = config.default_root_dir
    callbacks = [
        ModelCheckpoint(
            dirpath=root / "checkpoints",
            filename="best-{epoch}-{step}",
            monitor="val_metrics/ssim",
            mode="max",
            save_top_k=1,
            save_last=True,
            every_n_train_steps=config.checkpoint_every_n_steps,
        ),
        record_run(config, vgg),
        DivergenceGuard(),
    ]
    optional = {
        "limit_train_batches": config.limit_train_batches,
        "limit_val_batches": config.limit_val_batches,
    }
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=config.precision,
        max_epochs=config.max_epochs,
        max_steps=config.max_steps,
        check_val_every_n_epoch=config.check_val_every_n_epoch,
        deterministic=config.deterministic,
        default_root_dir=root,
        logger=build_logger(config.logger, root),
        callbacks=callbacks,
        log_every_n_steps=config.log_every_n_steps,
        enable_progress_bar=not config.no_progress_bar,
        # Keep fastmri's VolumeSampler for val/test under DDP (whole volumes per rank).
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        **{key: value for key, value in optional.items() if value is not None},
    )


def build_logger(kind: Optional[str], root: Path) -> Logger:
    if kind is None:
        try:
            import tensorboard  # noqa: F401

            kind = "tensorboard"
        except ImportError:
            kind = "csv"
    if kind == "tensorboard":
        return TensorBoardLogger(save_dir=root, name="logs")
    return CSVLogger(save_dir=root, name="logs")


def resume_path(config: TrainConfig, checkpoints: Path) -> Optional[Path]:
    """The checkpoint ``--resume`` continues, or None."""
    if config.resume is None:
        return None
    path = checkpoints / "last.ckpt" if config.resume == "last" else Path(config.resume)
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint to resume from; train without --resume first")
    return path


def check_resume(path: Path, model: pl.LightningModule, kind: ModelKind, challenge: str
                 ) -> None:
    """The checkpoint is of ``kind`` and ``challenge`` and holds weights of ``model``'s
    shapes (else one line saying what it was trained as)."""
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("state_dict", {})
    hparams = checkpoint.get("hyper_parameters", {})
    if not isinstance(state, dict) or not isinstance(hparams, dict):
        raise UserError(f"{path}: not a Lightning checkpoint (no state_dict); resume from a "
                        "checkpoint written by clgnet-fastmri train")
    check_trained_for(path, read_record(path, checkpoint), kind, challenge)
    check_fits(path, model, state, trained_as=describe(hparams, state, kind),
               asked=describe(model.hparams, model.state_dict(), kind))
    check_finite_weights(state, path)


def load_for_evaluation(path: Path, kind: ModelKind, challenge: str
                        ) -> Tuple[pl.LightningModule, Dict[str, Any]]:
    """The module of the checkpoint to validate or test (read once) and its record, after
    checking that it was trained as ``kind`` for ``challenge`` and its weights are finite."""
    checkpoint = read_checkpoint(path)
    record = read_record(path, checkpoint)
    check_trained_for(path, record, kind, challenge)
    check_finite_weights(checkpoint.get("state_dict", {}), path)
    return module_from_checkpoint(path, checkpoint, record), record


def check_trained_for(path: Path, record: dict, kind: ModelKind, challenge: str) -> None:
    if record["model_kind"] != kind.name:
        raise UserError(f"{path}: a --model {record['model_kind']} checkpoint, not "
                        f"--model {kind.name}; pass --model {record['model_kind']}")
    if record["challenge"] not in (None, challenge):
        raise UserError(f"{path}: trained on {record['challenge']} data, not {challenge}; "
                        f"pass --challenge {record['challenge']}")


def best_checkpoint(checkpoints: Path) -> Path:
    found = sorted(checkpoints.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(
            f"{checkpoints}: no best-*.ckpt checkpoint; train first or pass --checkpoint"
        )
    return found[-1]


