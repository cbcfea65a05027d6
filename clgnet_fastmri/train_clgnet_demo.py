"""Train and test CLGNet the way fastmri's ``train_unet_demo.py`` trains its U-Net.

Run as ``clgnet-fastmri train ...`` or ``python -m clgnet_fastmri.train_clgnet_demo ...``.
The arguments mirror fastmri's demo (``--challenge``, ``--data_path``, ``--mask_type``,
``--center_fractions``, ``--accelerations``, ``--mode train|test``, ...) with Lightning 2's
Trainer options spelled out, since ``Trainer.from_argparse_args`` no longer exists.

Without ``--data_path`` it is a self-contained demo: it generates the built-in synthetic
knee set into a cache folder, trains a short run, tests the best checkpoint, and prints the
official fastMRI metrics of the saved reconstructions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
from torch import nn
from fastmri.data.subsample import create_mask_for_mask_type
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

from .data.checks import TARGET_KEYS, target_folder
from .data.mri_data import CheckedSliceDataset
from .data.synthetic import GENERATOR_VERSION, make_dataset
from .data.transforms import CLGNetDataTransform
from .checkpoints import AtomicCheckpointIO, read_checkpoint
from .errors import UserError
from .files import atomic_output, ensure_writable_dir, remove_partials
from .evaluate import format_table, score_folder, write_json
from .figures import collect_slices, save_figure
from .predict import reconstruct, write_volume
from .losses import imagenet_weights_available, imagenet_weights_path
from .models import GLOBAL_MODULES
from .pl_modules.clgnet_module import LR_SCHEDULES, CLGNetModule
from .pl_modules.data_module import CLGNetDataModule

log = logging.getLogger(__name__)

# The built-in demo: small enough to train on 2 CPU cores in a few minutes.
DEMO_DATA = dict(anatomy="knee", size=128, num_slices=8, splits={"train": 8, "val": 2, "test": 2})
DEMO_DEFAULTS = dict(max_epochs=8, batch_size=4)
# Real data (fastMRI knee, CC-359 brain): the paper's batch size and a fastmri-like run length.
DATA_DEFAULTS = dict(max_epochs=50, batch_size=10)


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
        "if omitted, the built-in synthetic knee set is generated and used",
    )
    data.add_argument("--challenge", choices=("singlecoil", "multicoil"), default="singlecoil")
    data.add_argument("--test_path", type=Path, default=None,
                      help="test folder, overriding <data_path>/<challenge>_<test_split>")
    data.add_argument("--test_split", choices=("val", "test", "challenge"), default="test")
    data.add_argument("--mask_type", choices=("random", "equispaced", "equispaced_fraction",
                                              "magic", "magic_fraction"), default="random")
    data.add_argument("--center_fractions", nargs="+", type=float, default=[0.08])
    data.add_argument("--accelerations", nargs="+", type=int, default=[4])
    data.add_argument("--crop_size", nargs=2, type=int, default=None, metavar=("H", "W"),
                      help="random training crops (validation and test use whole images)")
    data.add_argument("--sample_rate", type=float, default=None)
    data.add_argument("--val_sample_rate", type=float, default=None)
    data.add_argument("--volume_sample_rate", type=float, default=None)
    data.add_argument("--val_volume_sample_rate", type=float, default=None)
    data.add_argument("--combine_train_val", action="store_true",
                      help="train on train+val (for a final leaderboard model)")
    data.add_argument("--batch_size", type=int, default=None,
                      help=f"per device; default {DATA_DEFAULTS['batch_size']} "
                      f"(demo {DEMO_DEFAULTS['batch_size']})")
    data.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1))
    data.add_argument("--skip_bad_files", action="store_true",
                      help="skip (and log) unreadable or non-finite files instead of stopping")

    model = parser.add_argument_group("model")
    model.add_argument("--chans", type=int, default=32)
    model.add_argument("--num_sfrir", type=int, default=4)
    model.add_argument("--num_sfrb", type=int, default=3)
    model.add_argument("--wavelet", default="haar",
                       help="any orthogonal PyWavelets wavelet, or 'none' for the "
                       "'w/o wavelet' ablation")
    model.add_argument("--global_module", choices=GLOBAL_MODULES, default="fourier",
                       help="'none' is the 'w/o SFL' ablation (local convolutions only); "
                       "'self_attention' and 'swin' are the paper's CLGNet_SA and CLGNet_Tran")

    loss = parser.add_argument_group("loss")
    loss.add_argument("--alpha", type=float, default=0.05,
                      help="weight of the contrastive loss; 0 = L1 only (skips VGG19)")
    loss.add_argument("--k_negatives", type=int, default=6)
    loss.add_argument("--no_negatives", action="store_true", help="'w/o negative' ablation")
    loss.add_argument("--cl_reduction", choices=("batch", "per_sample"), default="batch")
    loss.add_argument(
        "--vgg_weights", default="auto",
        help="'imagenet' (torchvision's weights; error if absent), 'random', a path to a "
        "VGG19 state dict, or 'auto': ImageNet weights when available locally or by "
        "download, otherwise random with a warning",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=1e-3,
                       help="Adam's peak learning rate, decayed by --lr_schedule (the paper's "
                       "1e-4 learns far slower at equal time; see README)")
    optim.add_argument("--weight_decay", type=float, default=0.0)
    optim.add_argument("--lr_schedule", choices=LR_SCHEDULES, default="cosine")
    optim.add_argument("--lr_step_size", type=int, default=40)
    optim.add_argument("--lr_gamma", type=float, default=0.1)

    trainer = parser.add_argument_group("trainer")
    trainer.add_argument("--accelerator", default="auto")
    trainer.add_argument("--devices", type=_devices, default="auto",
                         help="a count, a comma-separated list of indices, or auto")
    trainer.add_argument("--strategy", default="auto",
                         help="e.g. ddp for several GPUs (volumes are dispatched whole for "
                         "validation)")
    trainer.add_argument("--num_nodes", type=int, default=1)
    trainer.add_argument("--precision", default="32-true",
                         help="e.g. bf16-mixed on recent GPUs")
    trainer.add_argument("--max_epochs", type=int, default=None,
                         help=f"default {DATA_DEFAULTS['max_epochs']} "
                         f"(demo {DEMO_DEFAULTS['max_epochs']})")
    trainer.add_argument("--max_steps", type=int, default=-1)
    trainer.add_argument("--limit_train_batches", type=float, default=None)
    trainer.add_argument("--limit_val_batches", type=float, default=None)
    trainer.add_argument("--check_val_every_n_epoch", type=int, default=1)
    trainer.add_argument("--checkpoint_every_n_steps", type=int, default=None,
                         help="also checkpoint every N optimiser steps (last.ckpt)")
    trainer.add_argument("--seed", type=int, default=42)
    trainer.add_argument("--deterministic", action="store_true")
    trainer.add_argument("--default_root_dir", type=Path, default=Path("clgnet_runs/demo"))
    trainer.add_argument("--logger", choices=("tensorboard", "csv"), default=None,
                         help="default: tensorboard if installed, else csv")
    trainer.add_argument("--num_log_images", type=int, default=16)
    trainer.add_argument("--log_every_n_steps", type=int, default=10)
    trainer.add_argument("--no_progress_bar", action="store_true")
    trainer.add_argument(
        "--resume", nargs="?", const="last", default=None, metavar="CKPT",
        help="resume training from CKPT (default: <default_root_dir>/checkpoints/last.ckpt)",
    )
    trainer.add_argument("--checkpoint", type=Path, default=None,
                         help="model for --mode test (default: the best checkpoint)")

    # banding imports clgnet_fastmri, not the reverse: only the training command reaches it.
    from banding.module import add_banding_arguments

    add_banding_arguments(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The loss's VGG19 is frozen in eval mode on purpose; Lightning warns about it at every fit.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    demo = args.data_path is None
    for key, value in (DEMO_DEFAULTS if demo else DATA_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if demo:
        args.data_path = demo_dataset(args.challenge)
    pl.seed_everything(args.seed, workers=True)

    data_module = build_data_module(args)
    trainer = build_trainer(args)
    checkpoints = args.default_root_dir / "checkpoints"
    if args.mode == "train":
        remove_partials(checkpoints)  # a run killed while saving leaves its temporary file
        model = build_module(args)
        trainer.fit(model, datamodule=data_module, ckpt_path=resume_path(args, checkpoints),
                    weights_only=True)
        if not demo:
            return 0
        # A run cut short by --max_steps before its first validation has no best checkpoint.
        callback = trainer.checkpoint_callback
        args.checkpoint = Path(callback.best_model_path or callback.last_model_path)
    checkpoint = args.checkpoint or best_checkpoint(checkpoints)
    if args.mode == "validate":
        validate(args, data_module, trainer, checkpoint)
    else:
        test(args, data_module, trainer, checkpoint)
    return 0


def demo_dataset(challenge: str) -> Path:
    """The built-in demo set, generated once into the user's cache folder."""
    return cached_dataset(DEMO_DATA, challenge)


def cached_dataset(spec: dict, challenge: str) -> Path:
    """A built-in synthetic set (``make_dataset`` arguments), generated once into the cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clgnet_fastmri"
    splits = "-".join(f"{k}{v}" for k, v in spec["splits"].items())
    name = (
        f"synthetic-{spec['anatomy']}-{challenge}-{spec['size']}px-{spec['num_slices']}sl"
        f"-{splits}-g{GENERATOR_VERSION}"
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
    train_transform = CLGNetDataTransform
    if args.banding:
        from banding.augment import RandomTranspose as train_transform
    return CLGNetDataModule(
        data_path=args.data_path,
        challenge=args.challenge,
        train_transform=train_transform(args.challenge, mask, use_seed=False, crop_size=crop),
        val_transform=CLGNetDataTransform(args.challenge, mask),
        test_transform=CLGNetDataTransform(args.challenge, mask),
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


def build_module(args: argparse.Namespace) -> CLGNetModule:
    """``CLGNetModule``, or with ``--banding`` the module that adds the orientation adversary."""
    if not args.banding:
        return CLGNetModule(**module_kwargs(args))
    from banding.module import build_module as build_banding_module

    return build_banding_module(args, module_kwargs(args))


def module_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        chans=args.chans,
        num_sfrir=args.num_sfrir,
        num_sfrb=args.num_sfrb,
        wavelet=None if args.wavelet.lower() == "none" else args.wavelet,
        global_module=args.global_module,
        alpha=args.alpha,
        k_negatives=args.k_negatives,
        use_negatives=not args.no_negatives,
        cl_reduction=args.cl_reduction,
        vgg_weights=resolve_vgg_weights(args.vgg_weights) if args.alpha > 0 else None,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        lr_step_size=args.lr_step_size,
        lr_gamma=args.lr_gamma,
        num_log_images=args.num_log_images,
    )


def resolve_vgg_weights(choice: str) -> Optional[str]:
    """Turn ``--vgg_weights`` into ``VGG19Features``' argument ("imagenet", a path or None)."""
    if choice == "random":
        return None
    if choice != "auto":
        return choice
    if imagenet_weights_available():
        return "imagenet"
    log.warning(
        "WARNING: the ImageNet VGG19 weights are not in %s, so the contrastive loss uses a "
        "randomly initialised VGG19 (the paper uses ImageNet weights). To follow the paper, "
        "put vgg19-dcbb9e9d.pth there (or pass --vgg_weights PATH); --vgg_weights random "
        "silences this warning.",
        imagenet_weights_path(),
    )
    return None


def _devices(text: str):
    return int(text) if text.isdigit() else text


def _is_distributed(args: argparse.Namespace) -> bool:
    return str(args.strategy).startswith("ddp") or args.num_nodes > 1


def build_trainer(args: argparse.Namespace) -> pl.Trainer:
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
        )
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


def resume_path(args: argparse.Namespace, checkpoints: Path) -> Optional[str]:
    if args.resume is None:
        return None
    path = checkpoints / "last.ckpt" if args.resume == "last" else Path(args.resume)
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint to resume from; train without --resume first")
    return str(path)


def best_checkpoint(checkpoints: Path) -> Path:
    found = sorted(checkpoints.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(
            f"{checkpoints}: no best-*.ckpt checkpoint; train first or pass --checkpoint"
        )
    return found[-1]


def load_module(checkpoint: Path) -> CLGNetModule:
    # read_checkpoint gives a clear error for a missing, unreadable or unsafe file.
    state = read_checkpoint(checkpoint).get("state_dict", {})
    module_class = CLGNetModule
    if any(key.startswith("adversary.") for key in state):
        # Written with --banding: the same CLGNetModule, with the orientation adversary beside
        # the network, so it loads whether or not --banding is given again.
        from banding.module import BandingCLGNetModule as module_class
    return module_class.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)


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
    trainer.test(load_module(checkpoint), datamodule=data_module)
    if not trainer.is_global_zero:
        return
    root = args.default_root_dir
    reconstructions = root / "reconstructions"
    split = args.test_path or args.data_path / f"{args.challenge}_{args.test_split}"
    targets = target_folder(split, args.challenge)
    if targets is None:
        print(f"reconstructions written to {reconstructions} (no targets to score them)")
        return
    result = score_folder(targets, reconstructions, args.challenge)
    print(f"\nOfficial fastMRI metrics of {reconstructions} against {targets}:")
    print(format_table(result))
    dataset = CheckedSliceDataset(split, args.challenge, transform=data_module.test_transform)
    # The network's own input, scored the same way: what the training has to beat.
    zero_filled = root / "zero_filled"
    ensure_writable_dir(zero_filled)
    for fname, volume in reconstruct(nn.Identity(), dataset, progress=False):
        write_volume(zero_filled / fname, volume)
    baseline = score_folder(targets, zero_filled, args.challenge).means()
    means = result.means()
    print(
        f"mean PSNR {means['PSNR']:.2f} dB, SSIM {means['SSIM']:.4f} "
        f"(zero-filled input: {baseline['PSNR']:.2f} dB, {baseline['SSIM']:.4f})"
    )
    write_json(result, root / "metrics.json", checkpoint=str(checkpoint),
               challenge=args.challenge, targets=str(targets), zero_filled_mean=baseline)
    views = collect_slices(dataset, reconstructions, targets, TARGET_KEYS[args.challenge])
    save_figure(views, root / "reconstructions.png")
    print(f"figure: {root / 'reconstructions.png'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
