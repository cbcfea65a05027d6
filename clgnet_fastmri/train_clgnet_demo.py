"""Train and test CLGNet the way fastmri's ``train_unet_demo.py`` trains its U-Net, and
fastmri's U-Net and VarNet baselines (``--model unet|varnet``) with their demos' defaults.

Run as ``clgnet-fastmri train ...`` or ``python -m clgnet_fastmri.train_clgnet_demo ...``.
The arguments mirror fastmri's demos (``--challenge``, ``--data_path``, ``--mask_type``,
``--center_fractions``, ``--accelerations``, ``--mode train|test``, the models' own options,
``--resume_from_checkpoint``, ``--gpus``) with Lightning 2's Trainer options spelled out,
since ``Trainer.from_argparse_args`` no longer exists.
Installed training extensions (``clgnet_fastmri.extensions``, e.g. ``--banding``) add
their options.

Without ``--data_path`` it is a self-contained demo: it generates the built-in synthetic
brain set (``DEMO_DATA``) into a cache folder, trains a short run, tests the best
checkpoint, and prints the official fastMRI metrics of the saved reconstructions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytorch_lightning as pl
import torch
from fastmri.data.subsample import create_mask_for_mask_type
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from torch import nn

from . import cli
from .checkpoints import (
    AtomicCheckpointIO,
    RecordRun,
    check_finite_weights,
    check_fits,
    describe,
    load_module,
    read_checkpoint,
    read_record,
)
from .data.checks import TARGET_KEYS, target_folder
from .data.mri_data import CheckedSliceDataset
from .data.synthetic import GENERATOR_VERSION, make_dataset
from .data.transforms import CLGNetDataTransform
from .divergence import DivergenceGuard
from .errors import UserError
from .evaluate import format_comparison, score_folder, write_json
from .extensions import enabled_extension, extensions
from .figures import collect_slices, save_figure
from .files import atomic_output, ensure_writable_dir, remove_partials
from .losses import VGG_WEIGHTS_CHOICES, VGG19Weights, resolve_vgg19_weights, weights_file
from .pl_modules.data_module import CLGNetDataModule
from .pl_modules.kinds import KINDS, ModelKind, model_settings
from .predict import reconstruct, write_volume
from .settings import (
    ACCELERATORS,
    MASK_TYPES,
    PRECISIONS,
    UNSET,
    SettingError,
    add_model_arguments,
    model_kwargs,
)

log = logging.getLogger(__name__)

# The built-in demo: CC-359-style brain (the paper's main data) at 64 px, small enough that
# a few minutes on 2 CPU cores visibly remove the aliasing (CLGNet's demo loss: kinds.py).
# Its test volumes are masked at the demo's training acceleration (fastmri's default 4x); a
# 4x/8x test split is ``make-data --accelerations 4 8`` with ``--data_path``.
DEMO_DATA = dict(anatomy="brain", size=64, num_slices=8, accelerations=(4,),
                 splits={"train": 24, "val": 2, "test": 2})
DEMO_DEFAULTS = dict(max_epochs=7, batch_size=4, mask_type="random", challenge="singlecoil")
# Real data (fastMRI knee, CC-359 brain): fastmri's demos' run length; the batch size is the
# model kind's (``ModelKind.data_defaults``).
DATA_DEFAULTS = dict(DEMO_DEFAULTS, max_epochs=50)
#: Precisions that convert the model's weights (no float32 master copy).
TRUE_PRECISIONS = ("bf16-true", "16-true")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode", choices=("train", "validate", "test"), default="train",
        help="train; validate a checkpoint on the val split (fastmri's metrics); or test: "
        "write reconstructions of the test split and score them when targets exist",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data_path", type=Path, default=None,
        help="fastMRI data root holding <challenge>_train/_val/_test; "
        "if omitted, the built-in synthetic brain demo set is generated and used, with the "
        "demo's defaults (CLGNet: L1 alone, --alpha 0, no BatchNorm refresh, "
        "--bn_stats_batches 0)",
    )
    data.add_argument("--challenge", choices=("singlecoil", "multicoil"), default=None,
                      help="default singlecoil (multicoil for --model varnet)")
    data.add_argument("--test_path", type=Path, default=None,
                      help="test folder, overriding <data_path>/<challenge>_<test_split>")
    data.add_argument("--test_split", choices=("val", "test", "challenge"), default="test",
                      help="which <challenge>_<split> folder --mode test reconstructs")
    data.add_argument("--mask_type", choices=MASK_TYPES, default=None,
                      help="default random (equispaced_fraction for --model varnet, as "
                      "fastmri's demo)")
    data.add_argument("--center_fractions", nargs="+", type=float, default=[0.08],
                      help="fraction of low-frequency k-space lines always kept, one per "
                      "acceleration")
    data.add_argument("--accelerations", nargs="+", type=int, default=[4],
                      help="undersampling factors; each volume is masked at one of them")
    data.add_argument("--crop_size", nargs=2, type=int, default=None, metavar=("H", "W"),
                      help="random training crops (validation and test use whole images)")
    for split, name in (("", "training"), ("val_", "validation")):
        data.add_argument(f"--{split}sample_rate", type=float, default=None,
                          help=f"fraction of the {name} slices to use (default: all)")
        data.add_argument(f"--{split}volume_sample_rate", type=float, default=None,
                          help=f"fraction of the {name} volumes to use, whole (default: all; "
                          f"not with --{split}sample_rate)")
    data.add_argument("--combine_train_val", action="store_true",
                      help="train on train+val (for a final leaderboard model)")
    data.add_argument("--batch_size", type=int, default=None,
                      help="per device; default 10 for clgnet, 1 for unet and varnet (fastmri's "
                      f"demos); {DEMO_DEFAULTS['batch_size']} on the built-in demo set "
                      "(varnet 1)")
    data.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                      help="data-loading processes beside the training one; 0 loads in it")
    data.add_argument("--skip_bad_files", action="store_true",
                      help="skip (and log) unreadable or non-finite files instead of stopping")

    add_model_arguments(
        parser, model_settings(), "clgnet",
        help="clgnet; or fastmri's baselines: unet (its U-Net) or varnet (End-to-End VarNet, "
        "multicoil), with the defaults of fastmri's train_unet_demo.py/train_varnet_demo.py",
    )

    trainer = parser.add_argument_group("trainer")
    trainer.add_argument("--accelerator", choices=ACCELERATORS, default="auto",
                         help="the device kind to train on; auto takes a GPU when there is one")
    trainer.add_argument("--devices", type=_devices, default="auto",
                         help="a count, a comma-separated list of indices, or auto")
    trainer.add_argument("--gpus", type=int, default=None,
                         help="fastmri's (Lightning 1's) name: --gpus N is --accelerator gpu "
                         "--devices N; --gpus 0 is --accelerator cpu")
    trainer.add_argument("--strategy", default="auto",
                         help="e.g. ddp for several GPUs (volumes are dispatched whole for "
                         "validation)")
    trainer.add_argument("--num_nodes", type=int, default=1,
                         help="machines to train on, each with --devices devices (SLURM: "
                         "see README)")
    trainer.add_argument("--precision", choices=PRECISIONS, default="32-true",
                         metavar="PRECISION",
                         help="Lightning's precision, e.g. bf16-mixed on recent GPUs; "
                         "bf16-true/16-true convert the model (CLGNet's FFTs stay float32)")
    trainer.add_argument("--max_epochs", type=int, default=None,
                         help="epochs to train (default: "
                         f"{DATA_DEFAULTS['max_epochs']} on --data_path, "
                         f"{DEMO_DEFAULTS['max_epochs']} on the built-in demo set; -1: no "
                         "limit)")
    trainer.add_argument("--max_steps", type=int, default=-1,
                         help="stop after this many optimiser steps; -1: no limit")
    trainer.add_argument("--limit_train_batches", type=float, default=None,
                         help="training batches per epoch: a fraction (<= 1) or a count "
                         "(default: all)")
    trainer.add_argument("--limit_val_batches", type=float, default=None,
                         help="validation batches per check: a fraction (<= 1) or a count; "
                         "0 skips validation (default: all)")
    trainer.add_argument("--check_val_every_n_epoch", type=int, default=1,
                         help="validate (and pick the best checkpoint) every N epochs")
    trainer.add_argument("--checkpoint_every_n_steps", type=int, default=None,
                         help="also checkpoint every N optimiser steps (last.ckpt)")
    trainer.add_argument("--threads", type=int, default=None,
                         help="torch CPU threads when training on the CPU (default: "
                         "OMP_NUM_THREADS if set, else the CPUs free of other work by the "
                         "1-minute load average)")
    trainer.add_argument("--seed", type=int, default=42,
                         help="seed of the weights, masks and data order")
    trainer.add_argument("--deterministic", action="store_true",
                         help="use only deterministic torch kernels (slower; bit-identical "
                         "reruns)")
    trainer.add_argument("--default_root_dir", type=Path, default=Path("clgnet_runs/demo"),
                         help="run folder (checkpoints, logs, reconstructions); training "
                         "into one that holds a run starts <folder>-2, -3, ... unless "
                         "--resume")
    trainer.add_argument("--logger", choices=("tensorboard", "csv"), default=None,
                         help="default: tensorboard if installed, else csv")
    trainer.add_argument("--log_every_n_steps", type=int, default=10,
                         help="log the training loss every N optimiser steps")
    trainer.add_argument("--no_progress_bar", action="store_true",
                         help="no progress bar (for log files)")
    trainer.add_argument(
        "--resume", nargs="?", const="last", default=None, metavar="CKPT",
        help="resume training from CKPT (default: <default_root_dir>/checkpoints/last.ckpt)",
    )
    trainer.add_argument("--checkpoint", type=Path, default=None,
                         help="model for --mode test (default: the best checkpoint)")
    trainer.add_argument("--resume_from_checkpoint", type=Path, default=None, metavar="CKPT",
                         help="fastmri's name: --resume CKPT with --mode train, --checkpoint "
                         "CKPT with --mode test/validate")

    for extension in extensions():
        extension.add_arguments(parser)


def default_args() -> argparse.Namespace:
    """The options of ``clgnet-fastmri train`` at their defaults."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = argparse.Namespace(**{a.dest: a.default for a in parser._actions if a.dest != "help"})
    for key in ("challenge", "mask_type"):  # defaults that follow --model: clgnet's
        setattr(args, key, DATA_DEFAULTS[key])
    return args


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with quiet_lightning():
        return train_or_test(args)


def train_or_test(args: argparse.Namespace) -> int:
    demo = args.data_path is None
    kind = resolve_model(args, demo)
    if demo:
        args.data_path = demo_dataset(args.challenge)
    pl.seed_everything(args.seed, workers=True)
    choose_threads(args)
    if args.mode == "train":
        args.default_root_dir = run_folder(args.default_root_dir, args.resume)

    data_module = build_data_module(args)
    vgg = resolve_vgg(args) if args.mode == "train" else None
    trainer = build_trainer(args, vgg)
    checkpoints = args.default_root_dir / "checkpoints"
    if args.mode == "train":
        remove_partials(checkpoints)  # a run killed while saving leaves its temporary file
        model = build_module(args, vgg)
        resume = resume_path(args, checkpoints)
        if resume is not None:
            check_resume(resume, model, kind, args.challenge)
        trainer.fit(model, datamodule=data_module, ckpt_path=resume, weights_only=True)
        if not demo:
            return 0
        # A run cut short by --max_steps before its first validation has no best checkpoint.
        callback = trainer.checkpoint_callback
        args.checkpoint = Path(callback.best_model_path or callback.last_model_path)
    checkpoint = args.checkpoint or best_checkpoint(checkpoints)
    check_record(checkpoint, kind, args.challenge)
    if args.mode == "validate":
        validate(args, data_module, trainer, checkpoint)
    else:
        test(args, data_module, trainer, checkpoint)
    return 0


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's notes that say nothing about this run, hidden while it runs: the
    advertising tips, torch's ``LeafSpec`` deprecation that Lightning's own code triggers, the
    eval-mode warning about the contrastive loss's VGG19 (frozen in eval mode on purpose), and
    the warning about a checkpoint folder in use (``run_folder`` gives a new run a new one; a
    run that writes into a used one resumes it). Filters are restored afterwards, for the
    caller's own code."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`",
                                category=FutureWarning)
        loggers = [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]
        for logger in loggers:
            logger.addFilter(_no_tips)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(_no_tips)


#: The loggers of Lightning's ``rank_zero_info`` (whichever package was imported last).
LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero",
                          "lightning_fabric.utilities.rank_zero")


def _no_tips(record: logging.LogRecord) -> bool:
    return "Tip: " not in record.getMessage()


def choose_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads for a run on the CPU: ``--threads``, else ``OMP_NUM_THREADS``
    as the user set it, else the CPUs this process may use less those other work keeps busy
    (the 1-minute load average). On a shared machine more threads than free cores stall at
    every OpenMP barrier (BENCHMARKS.md: 2 threads on 2 busy cores made a 5-minute demo take
    58)."""
    if args.threads is None and ("OMP_NUM_THREADS" in os.environ or not runs_on_cpu(args)):
        return
    total = os.cpu_count() or 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    # The load average counts the whole machine; a process pinned to some of its CPUs (a
    # container, a SLURM job) sees its share of it.
    load = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0) * cpus / total
    threads = args.threads or free_cpus(cpus, load)
    torch.set_num_threads(threads)
    why = "--threads" if args.threads else (
        f"{cpus} CPUs, 1-minute load average {load:.1f}; --threads N or OMP_NUM_THREADS=N "
        "to choose")
    print(f"using {threads} CPU thread{'s' if threads > 1 else ''} ({why})")


def free_cpus(cpus: int, load: float) -> int:
    """The CPUs left when ``load`` of ``cpus`` are busy, at least 1."""
    return max(1, min(cpus, round(cpus - load)))


def runs_on_cpu(args: argparse.Namespace) -> bool:
    return args.accelerator == "cpu" or (args.accelerator == "auto" and
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


def resolve_model(args: argparse.Namespace, demo: bool) -> ModelKind:
    """The ``--model``'s kind; its options and the data options left unset filled in with
    its defaults (fastmri's demo values for the baselines), all checked."""
    kind = KINDS[args.model]
    model_kwargs(args, model_settings())  # checks the model's options before any work
    defaults = {**(DEMO_DEFAULTS if demo else DATA_DEFAULTS), **kind.defaults,
                **(kind.demo_defaults if demo else kind.data_defaults)}
    for key, value in defaults.items():
        if getattr(args, key) is None or getattr(args, key) is UNSET:
            setattr(args, key, value)
    if args.challenge not in kind.challenges:
        raise SettingError(f"--model {kind.name} --challenge {args.challenge}: {kind.title} "
                           f"needs {' or '.join(kind.challenges)} data (coil images); use "
                           f"--challenge multicoil, or --model clgnet/unet for singlecoil data")
    if kind.name != "clgnet" and enabled_extension(args) is not None:
        raise SettingError(f"--{enabled_extension(args).name} trains CLGNet, not "
                           f"--model {kind.name}; drop one of them")
    check_precision(args, kind)
    if kind.name != "clgnet" and args.crop_size:
        raise SettingError(f"--crop_size: crops are for --model clgnet, not {kind.name}; drop it")
    if kind.name == "clgnet":
        check_contrastive_settings(args)
    return kind


def check_precision(args: argparse.Namespace, kind: ModelKind) -> None:
    """Refuse the precisions Lightning accepts that cannot run or train ``kind``."""
    if args.precision.startswith("transformer-engine") and \
            importlib.util.find_spec("transformer_engine") is None:
        raise SettingError(f"--precision {args.precision}: needs NVIDIA's Transformer Engine "
                           "(the transformer_engine package), which is not installed; use "
                           "--precision bf16-mixed")
    if kind.name == "varnet" and args.precision in TRUE_PRECISIONS:
        raise SettingError(f"--precision {args.precision}: fastmri's VarNet runs its FFTs in "
                           "the weights' dtype, which cannot be bfloat16/float16; use "
                           "--precision bf16-mixed")
    if args.mode == "train" and args.precision == "16-true":
        # Lightning's 16-true has no float32 master weights and no loss scaling.
        raise SettingError(f"--precision 16-true: {kind.title} cannot be trained with its "
                           "weights and optimiser state in float16 (the optimiser's eps 1e-8 "
                           "is 0 in float16 and small updates are lost: NaN within a few "
                           "steps); use --precision 16-mixed or bf16-mixed (float32 weights)")


#: VGG19 pools four times before relu5_1: smaller images leave it nothing to pool.
MIN_CONTRASTIVE_SIDE = 16


def check_contrastive_settings(args: argparse.Namespace) -> None:
    """CLGNet's contrastive-loss options, checked whether or not ``--alpha`` uses them."""
    kwargs = model_kwargs(args, model_settings())
    if kwargs["vgg_weights"] not in (None, *VGG_WEIGHTS_CHOICES):
        weights_file(kwargs["vgg_weights"])
    if kwargs["alpha"] > 0 and args.crop_size and min(args.crop_size) < MIN_CONTRASTIVE_SIDE:
        raise SettingError(f"--crop_size {' '.join(map(str, args.crop_size))}: the contrastive "
                           f"loss's VGG19 needs crops of at least {MIN_CONTRASTIVE_SIDE}x"
                           f"{MIN_CONTRASTIVE_SIDE}; use larger crops, or --alpha 0 (L1 only)")


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


def build_data_module(args: argparse.Namespace) -> CLGNetDataModule:
    mask = create_mask_for_mask_type(args.mask_type, args.center_fractions, args.accelerations)
    # A seeded mask stream makes a run reproducible with num_workers=0 too (workers reseed).
    mask.rng.seed(args.seed)
    crop = tuple(args.crop_size) if args.crop_size else None
    transform = KINDS[args.model].transform
    extension = enabled_extension(args)
    train_transform = extension.train_transform(args) if extension else transform
    return CLGNetDataModule(
        data_path=args.data_path,
        challenge=args.challenge,
        train_transform=train_transform(args.challenge, mask, use_seed=False, crop_size=crop),
        val_transform=transform(args.challenge, mask),
        test_transform=transform(args.challenge, mask),
        combine_train_val=args.combine_train_val,
        test_split=args.test_split,
        test_path=args.test_path,
        sample_rate=args.sample_rate,
        val_sample_rate=args.val_sample_rate,
        volume_sample_rate=args.volume_sample_rate,
        val_volume_sample_rate=args.val_volume_sample_rate,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        distributed_sampler=_is_distributed(args),
        skip_bad_files=args.skip_bad_files,
    )


def build_module(args: argparse.Namespace,
                 vgg: Optional[VGG19Weights] = None) -> pl.LightningModule:
    """The ``--model``'s module (``CLGNetModule``, ``UnetModule``, ``VarNetModule``), or the
    module of the training extension the options enable (e.g. ``--banding``: the
    orientation adversary beside CLGNet)."""
    extension = enabled_extension(args)
    if extension is None:
        return KINDS[args.model].module(**module_kwargs(args, vgg))
    return extension.build_module(args, module_kwargs(args, vgg))


def module_kwargs(args: argparse.Namespace,
                  vgg: Optional[VGG19Weights] = None) -> dict:
    """The ``--model``'s module arguments from the parsed options; for CLGNet, the weights
    ``vgg`` (``resolve_vgg(args)`` when not given) as an argument that never downloads again,
    and no VGG19 at all when ``--alpha 0``."""
    kwargs = model_kwargs(args, model_settings())
    if args.model == "clgnet":
        vgg = vgg or resolve_vgg(args)
        kwargs["vgg_weights"] = None if vgg is None else vgg.argument
    return kwargs


def resolve_vgg(args: argparse.Namespace) -> Optional[VGG19Weights]:
    """The VGG19 weights of CLGNet's contrastive loss (``--vgg_weights``; ``auto`` may
    download them, or fall back to random weights with a warning); None without that loss."""
    if args.model != "clgnet" or model_kwargs(args, model_settings())["alpha"] == 0:
        return None
    return resolve_vgg19_weights(model_kwargs(args, model_settings())["vgg_weights"])


def _devices(text: str):
    return int(text) if text.isdigit() else text


def _is_distributed(args: argparse.Namespace) -> bool:
    return str(args.strategy).startswith("ddp") or args.num_nodes > 1


def build_trainer(args: argparse.Namespace,
                  vgg: Optional[VGG19Weights] = None) -> pl.Trainer:
    root = args.default_root_dir
    callbacks = [
        ModelCheckpoint(
            dirpath=root / "checkpoints",
            filename="best-{epoch}-{step}",
            monitor="val_metrics/ssim",
            mode="max",
            save_top_k=1,
            save_last=True,
            every_n_train_steps=args.checkpoint_every_n_steps,
        ),
        RecordRun(KINDS[args.model], args.challenge, None if vgg is None else vgg.record),
        DivergenceGuard(),
    ]
    optional = {
        "limit_train_batches": args.limit_train_batches,
        "limit_val_batches": args.limit_val_batches,
    }
    return pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        check_val_every_n_epoch=args.check_val_every_n_epoch,
        deterministic=args.deterministic,
        default_root_dir=root,
        logger=build_logger(args.logger, root),
        callbacks=callbacks,
        log_every_n_steps=args.log_every_n_steps,
        enable_progress_bar=not args.no_progress_bar,
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


def resume_path(args: argparse.Namespace, checkpoints: Path) -> Optional[Path]:
    if args.resume is None:
        return None
    path = checkpoints / "last.ckpt" if args.resume == "last" else Path(args.resume)
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


def check_record(path: Path, kind: ModelKind, challenge: str) -> None:
    """The checkpoint to validate or test was trained as ``kind`` for ``challenge``, and
    its weights are finite."""
    checkpoint = read_checkpoint(path)
    check_trained_for(path, read_record(path, checkpoint), kind, challenge)
    check_finite_weights(checkpoint.get("state_dict", {}), path)


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


def validate(
    args: argparse.Namespace, data_module: CLGNetDataModule, trainer: pl.Trainer, checkpoint: Path
) -> None:
    """fastmri's validation metrics of a checkpoint (the same on 1 or N processes)."""
    metrics = trainer.validate(load_module(checkpoint), datamodule=data_module)[0]
    if trainer.is_global_zero:
        path = args.default_root_dir / "validation_metrics.json"
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"checkpoint": str(checkpoint), **metrics}, indent=2))
        print(f"validation metrics written to {path}")


def test(
    args: argparse.Namespace, data_module: CLGNetDataModule, trainer: pl.Trainer, checkpoint: Path
) -> None:
    """Reconstruct the test split with fastmri's saving code, then score it if targets exist."""
    split = args.test_path or args.data_path / f"{args.challenge}_{args.test_split}"
    # Before any reconstruction is written: a bad entry among the targets stops the run here.
    targets = target_folder(split, args.challenge)
    trainer.test(load_module(checkpoint), datamodule=data_module)
    if not trainer.is_global_zero:
        return
    root = args.default_root_dir
    reconstructions = root / "reconstructions"
    if targets is None:
        print(f"reconstructions written to {reconstructions} (no targets to score them)")
        return
    result = score_folder(targets, reconstructions, args.challenge)
    transform = data_module.test_transform
    if not isinstance(transform, CLGNetDataTransform):
        # The zero-filled baseline and the figure need the image input (VarNet's is k-space).
        transform = CLGNetDataTransform(args.challenge, transform.mask_func)
    dataset = CheckedSliceDataset(split, args.challenge, transform=transform)
    # The network's own input, scored the same way: what the training has to beat.
    zero_filled = root / "zero_filled"
    ensure_writable_dir(zero_filled)
    for fname, volume in reconstruct(nn.Identity(), dataset, progress=False):
        write_volume(zero_filled / fname, volume)
    baseline = score_folder(targets, zero_filled, args.challenge).means()
    title = KINDS[args.model].title
    count = len(result.volumes)
    print(f"\nOfficial fastMRI metrics of {reconstructions} against {targets}, mean of "
          f"{count} volume{'s' if count > 1 else ''} (each volume: {root / 'metrics.json'}):")
    print(format_comparison({title: result.means(), "zero-filled input": baseline}))
    vgg_weights = read_record(checkpoint, read_checkpoint(checkpoint)).get("vgg_weights")
    if vgg_weights is not None and vgg_weights["vgg_weights"] == "random":
        print("note: the contrastive loss was computed in a randomly initialised VGG19's "
              "feature space, not ImageNet's as in the paper (see --vgg_weights)")
    write_json(result, root / "metrics.json", checkpoint=str(checkpoint),
               model=args.model, challenge=args.challenge, targets=str(targets),
               zero_filled_mean=baseline, vgg_weights=vgg_weights)
    views = collect_slices(dataset, reconstructions, targets, TARGET_KEYS[args.challenge])
    save_figure(views, root / "reconstructions.png", title)
    print(f"figure: {root / 'reconstructions.png'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
