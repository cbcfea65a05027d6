"""A training run's configuration: ``clgnet-fastmri train``'s options, resolved once.

``add_arguments`` defines the options; ``resolve`` turns the parsed options into a
``TrainConfig``: the defaults that follow ``--model`` and the data (``DEMO_DEFAULTS``,
``DATA_DEFAULTS``, the kind's own) filled in, fastmri's synonyms translated, the chosen
model's options checked against its rules, and the settings that depend on each other checked.
Nothing changes it afterwards (it is frozen). ``write_config`` saves it in the run folder as
``config.yaml``; ``--config FILE`` reads it back (``read_config``): its values are parsed as
options (``cli.config_argv``), so they are checked exactly as typed ones, and typed options
override them. ``parse_config`` does the same for a library caller (``bench``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import yaml

from . import cli
from .data.fastmri_layout import CHALLENGES, MASK_TYPES
from .errors import UserError
from .extensions import enabled_extension, extensions
from .files import atomic_output
from .losses import VGG_WEIGHTS_CHOICES, weights_file
from .pl_modules.kinds import KINDS, ModelKind, model_settings
from .settings import (
    ACCELERATORS,
    PRECISIONS,
    TRUE_PRECISIONS,
    UNSET,
    SettingError,
    add_model_arguments,
    model_kwargs,
    resolve_synonyms,
)

#: Defaults on the built-in demo set (``--data_path`` omitted) of options left unset.
DEMO_DEFAULTS = dict(max_epochs=7, batch_size=4, mask_type="random", challenge="singlecoil")
#: Real data (fastMRI knee, CC-359 brain): fastmri's demos' run length; the batch size is the
#: model kind's (``ModelKind.data_defaults``).
DATA_DEFAULTS = dict(DEMO_DEFAULTS, max_epochs=50)
#: VGG19 pools four times before relu5_1: smaller images leave it nothing to pool.
MIN_CONTRASTIVE_SIDE = 16
#: Name of the configuration file in every run folder.
CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one ``clgnet-fastmri train`` run, resolved and checked.

    The fields are the command's options by name (``data_path`` None: the built-in demo set),
    except the model's and the extension's: ``model_args`` are the chosen ``--model``'s module
    arguments (its options, defaults filled in), ``extension`` the enabled training
    extension's name (or None) and ``extension_args`` its settings.
    """

    mode: str
    data_path: Optional[Path]
    challenge: str
    test_path: Optional[Path]
    test_split: str
    mask_type: str
    center_fractions: Tuple[float, ...]
    accelerations: Tuple[int, ...]
    crop_size: Optional[Tuple[int, int]]
    sample_rate: Optional[float]
    val_sample_rate: Optional[float]
    volume_sample_rate: Optional[float]
    val_volume_sample_rate: Optional[float]
    combine_train_val: bool
    batch_size: int
    num_workers: int
    skip_bad_files: bool
    model: str
    accelerator: str
    devices: Union[int, str]
    strategy: str
    num_nodes: int
    precision: str
    max_epochs: int
    max_steps: int
    limit_train_batches: Optional[float]
    limit_val_batches: Optional[float]
    check_val_every_n_epoch: int
    checkpoint_every_n_steps: Optional[int]
    threads: Optional[int]
    seed: int
    deterministic: bool
    default_root_dir: Path
    logger: Optional[str]
    log_every_n_steps: int
    no_progress_bar: bool
    resume: Optional[str]
    checkpoint: Optional[Path]
    model_args: Mapping[str, Any] = field(default_factory=dict)
    extension: Optional[str] = None
    extension_args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> ModelKind:
        return KINDS[self.model]

    @property
    def demo(self) -> bool:
        """Whether the run uses the built-in demo set."""
        return self.data_path is None

    @property
    def distributed(self) -> bool:
        return str(self.strategy).startswith("ddp") or self.num_nodes > 1

    def options(self) -> Dict[str, Any]:
        """``{option: value}`` as ``config.yaml`` holds them: what ``--config`` reads back."""
        values: Dict[str, Any] = {}
        for item in dataclasses.fields(self):
            if item.name not in ("model_args", "extension", "extension_args"):
                values[item.name] = _plain(getattr(self, item.name))
        values.update(_plain(self.model_args))
        if self.extension is not None:
            values[self.extension] = True
            values.update(_plain(self.extension_args))
        return values


def _plain(value: Any) -> Any:
    """``value`` as YAML's plain types: paths as text, tuples as lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``clgnet-fastmri train``'s options (an installed training extension's included)."""
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE",
        help="a run's config.yaml (every run folder holds one): its values, overridden by the "
        "options given, so a run can be repeated exactly",
    )
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
        "demo's defaults (CLGNet: no BatchNorm refresh, --bn_stats_batches 0)",
    )
    data.add_argument("--challenge", choices=CHALLENGES, default=None,
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
                         help="run folder (checkpoints, logs, reconstructions, config.yaml); "
                         "training "
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


def _devices(text: str) -> Union[int, str]:
    return int(text) if text.isdigit() else text


def resolve(args: argparse.Namespace) -> TrainConfig:
    """The run's ``TrainConfig`` from the parsed options (``args`` is left as it is)."""
    values = {**vars(args), **resolve_synonyms(vars(args))}
    kind = KINDS[values["model"]]
    demo = values["data_path"] is None
    defaults = {**(DEMO_DEFAULTS if demo else DATA_DEFAULTS), **kind.defaults,
                **(kind.demo_defaults if demo else kind.data_defaults)}
    for key, value in defaults.items():
        if values.get(key) is None or values.get(key) is UNSET:
            values[key] = value
    extension = enabled_extension(args)
    names = {item.name for item in dataclasses.fields(TrainConfig)}
    config = TrainConfig(
        **{key: _frozen(value) for key, value in values.items() if key in names},
        model_args=model_kwargs(values, model_settings(), kind.name),
        extension=None if extension is None else extension.name,
        extension_args={} if extension is None else extension.settings(args),
    )
    check(config)
    return config


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def check(config: TrainConfig) -> None:
    """Refuse settings that contradict each other or the chosen model kind."""
    kind = config.kind
    problem = kind.challenge_problem(config.challenge)
    if problem is not None:
        raise SettingError(f"--model {kind.name} --challenge {config.challenge}: {problem} "
                           f"(coil images); use --challenge {kind.challenges[0]}, or another "
                           f"--model for {config.challenge} data")
    if config.extension is not None and not kind.extensible:
        raise SettingError(f"--{config.extension} trains CLGNet, not --model {kind.name}; drop "
                           "one of them")
    check_precision(config)
    if config.crop_size and not kind.crops:
        raise SettingError(f"--crop_size: crops are not for --model {kind.name}; drop it")
    if kind.contrastive:
        check_contrastive_settings(config)


def check_precision(config: TrainConfig) -> None:
    """Refuse the precisions Lightning accepts that cannot run or train the model."""
    precision, kind = config.precision, config.kind
    if precision.startswith("transformer-engine") and \
            importlib.util.find_spec("transformer_engine") is None:
        raise SettingError(f"--precision {precision}: needs NVIDIA's Transformer Engine "
                           "(the transformer_engine package), which is not installed; use "
                           "--precision bf16-mixed")
    if kind.no_true_precision is not None and precision in TRUE_PRECISIONS:
        raise SettingError(f"--precision {precision}: {kind.no_true_precision}; use "
                           "--precision bf16-mixed")
    if config.mode == "train" and precision == "16-true":
        # Lightning's 16-true has no float32 master weights and no loss scaling.
        raise SettingError(f"--precision 16-true: {kind.title} cannot be trained with its "
                           "weights and optimiser state in float16 (the optimiser's eps 1e-8 "
                           "is 0 in float16 and small updates are lost: NaN within a few "
                           "steps); use --precision 16-mixed or bf16-mixed (float32 weights)")


def check_contrastive_settings(config: TrainConfig) -> None:
    """The contrastive loss's options, checked whether or not ``--alpha`` uses them."""
    args, crop = config.model_args, config.crop_size
    if args["vgg_weights"] not in (None, *VGG_WEIGHTS_CHOICES):
        weights_file(args["vgg_weights"])
    if args["alpha"] > 0 and crop and min(crop) < MIN_CONTRASTIVE_SIDE:
        raise SettingError(f"--crop_size {' '.join(map(str, crop))}: the contrastive "
                           f"loss's VGG19 needs crops of at least {MIN_CONTRASTIVE_SIDE}x"
                           f"{MIN_CONTRASTIVE_SIDE}; use larger crops, or --alpha 0 (L1 only)")


def parser() -> argparse.ArgumentParser:
    """``clgnet-fastmri train``'s parser (both spellings of every option, one-line errors)."""
    return cli.command_parser("train")


def parse_config(values: Mapping[str, Any]) -> TrainConfig:
    """The ``TrainConfig`` of ``{option: value}`` (what ``config.yaml`` holds; the others at
    their defaults), parsed and checked as the command's options are."""
    train = parser()
    return resolve(cli.parse(train, cli.config_argv(train, values, "the training settings")))


def read_config(path: Path) -> Dict[str, Any]:
    """``{option: value}`` of a ``config.yaml`` (``--config``)."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UserError(f"--config {path}: cannot be read ({reason}); give a config.yaml "
                        "from a run folder") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: not a configuration (a mapping of option: value); "
                        "give a config.yaml from a run folder")
    return values


def write_config(config: TrainConfig, folder: Path) -> Path:
    """Save ``config`` as ``<folder>/config.yaml`` (atomically: never half a file)."""
    path = folder / CONFIG_FILE
    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.options(), sort_keys=False))
    return path
