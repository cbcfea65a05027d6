"""Train and test CLGNet the way fastmri's ``train_unet_demo.py`` trains its U-Net, and
fastmri's U-Net and VarNet baselines (``--model unet|varnet``) with their demos' defaults.

Run as ``clgnet-fastmri train ...`` or ``python -m clgnet_fastmri.train_clgnet_demo ...``.
The arguments mirror fastmri's demos (``--challenge``, ``--data_path``, ``--mask_type``,
``--center_fractions``, ``--accelerations``, ``--mode train|test``, the models' own options,
``--resume_from_checkpoint``, ``--gpus``) with Lightning 2's Trainer options spelled out,
since ``Trainer.from_argparse_args`` no longer exists.
Installed training extensions (``clgnet_fastmri.extensions``, e.g. ``--banding``) add
their options.

Every training run saves its resolved settings as ``config.yaml`` in its run folder;
``--config <run>/config.yaml`` repeats it (typed options override the file's values).
The work itself is ``clgnet_fastmri.training``'s library functions, one job each.

Without ``--data_path`` it is a self-contained demo: it generates the built-in synthetic
brain set (``DEMO_DATA``) into a cache folder, trains a short run, tests the best
checkpoint, and prints the official fastMRI metrics of the saved reconstructions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from . import cli
from .config import TrainConfig, resolve, write_config
from .config import add_arguments as add_arguments
from .data.checks import target_folder
from .data.fastmri_layout import TARGET_KEYS
from .data.mri_data import CheckedSliceDataset
from .data.transforms import CLGNetDataTransform
from .evaluate import EvaluationResult, format_comparison, score_folder, write_result
from .figures import collect_slices, save_figure
from .files import ensure_writable_dir, remove_partials, write_json
from .pl_modules.data_module import CLGNetDataModule
from .predict import reconstruct, write_volume
from .quiet import quiet_lightning
from .training import (
    best_checkpoint,
    build_data_module,
    build_module,
    build_trainer,
    check_resume,
    choose_threads,
    data_root,
    load_for_evaluation,
    resolve_vgg,
    resume_path,
    run_folder,
)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with quiet_lightning():
        return train_or_test(resolve(args))


def train_or_test(config: TrainConfig) -> int:
    """Train (``--mode train``; on the demo set, then test), validate or test one run."""
    pl.seed_everything(config.seed, workers=True)
    choose_threads(config)
    if config.mode == "train":
        config = dataclasses.replace(
            config, default_root_dir=run_folder(config.default_root_dir, config.resume))
    vgg = resolve_vgg(config) if config.mode == "train" else None
    data_module = build_data_module(config)
    trainer = build_trainer(config, vgg)
    if config.mode == "train":
        checkpoint = fit(config, trainer, data_module, vgg)
        if not config.demo:
            return 0
    else:
        checkpoint = config.checkpoint or best_checkpoint(config.default_root_dir / "checkpoints")
    module, record = load_for_evaluation(checkpoint, config.kind, config.challenge)
    if config.mode == "validate":
        validate(config, trainer, data_module, module, checkpoint)
    else:
        test(config, trainer, data_module, module, checkpoint, record)
    return 0


def fit(config: TrainConfig, trainer: pl.Trainer, data_module: CLGNetDataModule,
        vgg: Any) -> Path:
    """Train the run's module (resuming with ``--resume``); its best checkpoint (its last
    when none was validated: a run cut short by ``--max_steps``)."""
    checkpoints = config.default_root_dir / "checkpoints"
    remove_partials(checkpoints)  # a run killed while saving leaves its temporary file
    model = build_module(config, vgg)
    resume = resume_path(config, checkpoints)
    if resume is not None:
        check_resume(resume, model, config.kind, config.challenge)
    save_config(config)
    trainer.fit(model, datamodule=data_module, ckpt_path=resume, weights_only=True)
    callback = trainer.checkpoint_callback
    return Path(callback.best_model_path or callback.last_model_path)


@rank_zero_only
def save_config(config: TrainConfig) -> None:
    """``config.yaml`` in the run folder (one process of a distributed run writes it)."""
    ensure_writable_dir(config.default_root_dir)
    write_config(config, config.default_root_dir)


def validate(config: TrainConfig, trainer: pl.Trainer, data_module: CLGNetDataModule,
             module: pl.LightningModule, checkpoint: Path) -> None:
    """fastmri's validation metrics of a checkpoint (the same on 1 or N processes)."""
    metrics = trainer.validate(module, datamodule=data_module)[0]
    if trainer.is_global_zero:
        path = config.default_root_dir / "validation_metrics.json"
        write_json(path, {"checkpoint": str(checkpoint), **metrics})
        print(f"validation metrics written to {path}")


def test(config: TrainConfig, trainer: pl.Trainer, data_module: CLGNetDataModule,
         module: pl.LightningModule, checkpoint: Path, record: Mapping[str, Any]) -> None:
    """Reconstruct the test split with fastmri's saving code, then score it if targets exist:
    the metrics beside the zero-filled input's, ``metrics.json`` and a figure."""
    split = config.test_path or data_root(config) / f"{config.challenge}_{config.test_split}"
    # Before any reconstruction is written: a bad entry among the targets stops the run here.
    targets = target_folder(split, config.challenge)
    trainer.test(module, datamodule=data_module)
    if not trainer.is_global_zero:
        return
    reconstructions = config.default_root_dir / "reconstructions"
    if targets is None:
        print(f"reconstructions written to {reconstructions} (no targets to score them)")
        return
    dataset = image_dataset(config, split, data_module)
    result = score_folder(targets, reconstructions, config.challenge)
    baseline = score_zero_filled(config, dataset, targets)
    report(config, result, baseline, reconstructions, targets, record)
    write_result(result, config.default_root_dir / "metrics.json", checkpoint=str(checkpoint),
               model=config.model, challenge=config.challenge, targets=str(targets),
               zero_filled_mean=baseline, vgg_weights=record.get("vgg_weights"))
    figure(config, dataset, reconstructions, targets)


def image_dataset(config: TrainConfig, split: Path, data_module: CLGNetDataModule
                  ) -> CheckedSliceDataset:
    """The test split as the zero-filled image input, masked as the model's test input is
    (every kind's test transform has the same mask; VarNet's own input is k-space)."""
    transform = CLGNetDataTransform(config.challenge, data_module.test_transform.mask_func)
    return CheckedSliceDataset(split, config.challenge, transform=transform)


def score_zero_filled(config: TrainConfig, dataset: CheckedSliceDataset, targets: Path
                      ) -> Dict[str, float]:
    """The network's own input, scored the same way: what the training has to beat."""
    zero_filled = config.default_root_dir / "zero_filled"
    ensure_writable_dir(zero_filled)
    for fname, volume in reconstruct(nn.Identity(), dataset, progress=False):
        write_volume(zero_filled / fname, volume)
    return score_folder(targets, zero_filled, config.challenge).means()


def report(config: TrainConfig, result: EvaluationResult, baseline: Dict[str, float],
           reconstructions: Path, targets: Path, record: Mapping[str, Any]) -> None:
    """Print the test metrics beside the zero-filled input's."""
    count = len(result.volumes)
    print(f"\nOfficial fastMRI metrics of {reconstructions} against {targets}, mean of "
          f"{count} volume{'s' if count > 1 else ''} (each volume: "
          f"{config.default_root_dir / 'metrics.json'}):")
    print(format_comparison({config.kind.title: result.means(), "zero-filled input": baseline}))
    vgg_weights = record.get("vgg_weights")
    if vgg_weights is not None and vgg_weights["vgg_weights"] == "random":
        print("note: the contrastive loss was computed in a randomly initialised VGG19's "
              "feature space, not ImageNet's as in the paper (see --vgg_weights)")


def figure(config: TrainConfig, dataset: CheckedSliceDataset, reconstructions: Path,
           targets: Path) -> None:
    """Reconstructions beside their targets, as ``reconstructions.png``."""
    path = config.default_root_dir / "reconstructions.png"
    views = collect_slices(dataset, reconstructions, targets, TARGET_KEYS[config.challenge])
    save_figure(views, path, config.kind.title)
    print(f"figure: {path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
