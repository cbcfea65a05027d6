"""fastmri's MriModule loop on Lightning 2: CLGNetModule and fastmri's own baselines.

The metrics the bridge logs come from fastmri's MriModule code, per volume: NMSE and PSNR
from the volume's mean squared error (PSNR with the file's ``max`` attribute as peak), SSIM
as the mean over slices with that peak. ``fastmri.evaluate`` computes the same quantities
from whole saved volumes (peak = the target volume's maximum, which is what ``max`` holds).
One difference remains, and it is fastmri's: during validation the target is the one
``UnetDataTransform`` returns, clamped to 6 standard deviations of the zero-filled image, while
``evaluate`` reads the raw target. The few clamped pixels move the numbers by well under 1 %.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import VarNetDataTransform
from fastmri.evaluate import evaluate
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from clgnet_fastmri.data.transforms import CLGNetDataTransform
from clgnet_fastmri.pl_modules.bridge import BridgedUnetModule, BridgedVarNetModule
from clgnet_fastmri.pl_modules.clgnet_module import CLGNetModule, cosine_factor
from clgnet_fastmri.pl_modules.data_module import CLGNetDataModule
from clgnet_fastmri.training import build_logger


def data_module(
    root: Path, challenge: str = "singlecoil", transform=CLGNetDataTransform, batch_size: int = 2
):
    """Validation and test both read the val split with the same seeded masks, so the saved
    test reconstructions are exactly the validation outputs."""
    mask = RandomMaskFunc([0.08], [4], seed=0)
    make = (lambda m, seed: transform(challenge, m, use_seed=seed)) if transform is \
        CLGNetDataTransform else (lambda m, seed: transform(m, use_seed=seed))
    return CLGNetDataModule(
        data_path=root,
        challenge=challenge,
        train_transform=make(mask, False),
        val_transform=make(mask, True),
        test_transform=make(mask, True),
        test_split="val",
        batch_size=batch_size,
        num_workers=0,
    )


def official(target_dir: Path, recon_dir: Path, key: str) -> dict:
    args = argparse.Namespace(
        target_path=target_dir, predictions_path=recon_dir, acquisition=None, acceleration=None
    )
    return evaluate(args, key).means()


def assert_bridge_metrics_are_official(logged: dict, target_dir: Path, recon_dir: Path, key):
    means = official(target_dir, recon_dir, key)
    assert logged["val_metrics/nmse"] == pytest.approx(means["NMSE"], rel=5e-3)
    assert logged["val_metrics/psnr"] == pytest.approx(means["PSNR"], abs=0.05)
    assert logged["val_metrics/ssim"] == pytest.approx(float(np.squeeze(means["SSIM"])), abs=5e-3)


@pytest.mark.parametrize("kind", ["clgnet", "fastmri-unet"])
def test_fit_validate_test_and_metrics_equal_fastmri_evaluate(
    knee_data, tmp_path, kind, make_trainer, tiny
):
    pl.seed_everything(0)
    model = (CLGNetModule(**tiny) if kind == "clgnet"
             else BridgedUnetModule(chans=4, num_pool_layers=2))
    dm = data_module(knee_data)
    run = make_trainer(tmp_path, logger=CSVLogger(tmp_path, name="logs"))
    run.fit(model, datamodule=dm)
    assert run.global_step == 3  # 2 train volumes x 3 slices, batch 2

    logged = run.validate(model, datamodule=dm)[0]
    run.test(model, datamodule=dm)
    recon_dir = tmp_path / "reconstructions"
    assert sorted(p.name for p in recon_dir.iterdir()) == sorted(
        p.name for p in (knee_data / "singlecoil_val").iterdir()
    )
    assert_bridge_metrics_are_official(
        logged, knee_data / "singlecoil_val", recon_dir, "reconstruction_esc"
    )
    metrics_csv = (Path(run.logger.log_dir) / "metrics.csv").read_text()
    assert "val_metrics/ssim" in metrics_csv


def test_clgnet_logs_loss_parts(knee_data, tmp_path, make_trainer, tiny):
    """Each step logs finite parts that add up: train_loss = train_l1 + alpha *
    train_contrastive (paper Eq. 10)."""
    model = CLGNetModule(**tiny)
    run = make_trainer(tmp_path, logger=CSVLogger(tmp_path, name="logs"))
    run.fit(model, datamodule=data_module(knee_data))
    with open(Path(run.logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert "validation_loss" in rows[0]
    steps = [r for r in rows if r["train_loss"]]
    assert len(steps) == run.global_step == 3
    alpha = model.hparams.alpha
    assert alpha > 0
    for row in steps:
        total, l1, contrastive = (float(row[k]) for k in
                                  ("train_loss", "train_l1", "train_contrastive"))
        assert all(math.isfinite(v) for v in (total, l1, contrastive)), row
        assert l1 > 0 and contrastive > 0
        assert total == pytest.approx(l1 + alpha * contrastive, rel=1e-5)


def test_varnet_baseline_trains_through_bridge(multicoil_data, tmp_path, make_trainer):
    model = BridgedVarNetModule(num_cascades=1, pools=2, chans=4, sens_pools=2, sens_chans=4)
    # fastmri's VarNet takes one slice per batch.
    dm = data_module(multicoil_data, "multicoil", transform=VarNetDataTransform, batch_size=1)
    run = make_trainer(tmp_path, logger=CSVLogger(tmp_path, name="logs"))
    run.fit(model, datamodule=dm)
    logged = run.validate(model, datamodule=dm)[0]
    run.test(model, datamodule=dm)
    assert_bridge_metrics_are_official(
        logged, multicoil_data / "multicoil_val", tmp_path / "reconstructions",
        "reconstruction_rss",
    )


def test_tensorboard_logger_gets_validation_images(knee_data, tmp_path, make_trainer, tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = CLGNetModule(**tiny, num_log_images=2)
    run = make_trainer(tmp_path, logger=TensorBoardLogger(tmp_path, name="tb"))
    run.fit(model, datamodule=data_module(knee_data))
    events = EventAccumulator(run.logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    images = events.Tags()["images"]
    assert any(tag.endswith("/reconstruction") for tag in images)
    assert any(tag.endswith("/error") for tag in images)
    assert "val_metrics/psnr" in events.Tags()["scalars"]


def test_csv_logger_path_runs_without_tensorboard(
    knee_data, tmp_path, monkeypatch, make_trainer, tiny
):
    # Make "import tensorboard" fail, as on a machine without it.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    logger = build_logger(None, tmp_path)
    assert isinstance(logger, CSVLogger)
    model = CLGNetModule(**tiny, num_log_images=4)
    run = make_trainer(tmp_path, logger=logger)
    run.fit(model, datamodule=data_module(knee_data))
    assert "val_metrics/nmse" in (Path(logger.log_dir) / "metrics.csv").read_text()


def test_checkpoint_holds_no_vgg_and_loads_safely(knee_data, tmp_path, make_trainer, tiny):
    model = CLGNetModule(**tiny)
    run = make_trainer(tmp_path, logger=False, enable_checkpointing=True)
    run.fit(model, datamodule=data_module(knee_data))
    path = tmp_path / "model.ckpt"
    run.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not [key for key in state if key.startswith("loss")]
    loaded = CLGNetModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.loss is None  # no VGG needed to evaluate or predict
    image = torch.randn(1, 32, 32)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(image), model(image))


def test_cosine_schedule_ends_at_min_ratio():
    assert cosine_factor(0, 100, 0.01) == pytest.approx(1.0)
    assert cosine_factor(50, 100, 0.01) == pytest.approx(0.505)
    assert cosine_factor(100, 100, 0.01) == pytest.approx(0.01)
    assert cosine_factor(150, 100, 0.01) == pytest.approx(0.01)


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_fourier_units_train_at_their_own_learning_rate(tiny, scale):
    model = CLGNetModule(**{**tiny, "lr": 2e-3, "lr_schedule": "constant"},
                         global_lr_scale=scale)
    optimizer = model.configure_optimizers()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(lr_of)  # each once
    assert lr_of.keys() == {id(p) for p in model.parameters()}
    for name, p in model.clgnet.named_parameters():
        in_unit = ".fourier." in name
        assert lr_of[id(p)] == pytest.approx(2e-3 * scale if in_unit else 2e-3), name
    assert len(optimizer.param_groups) == (1 if scale == 1 else 2)


def test_test_waits_for_every_rank_to_write_its_reconstructions(
    knee_data, tmp_path, make_trainer, tiny, monkeypatch
):
    """Under DDP each rank writes its own volumes and rank 0 scores the folder when
    ``trainer.test`` returns: a barrier after the writes is what makes the folder complete."""
    model = CLGNetModule(**tiny)
    run = make_trainer(tmp_path, logger=False)
    recon_dir = tmp_path / "reconstructions"
    seen = []
    monkeypatch.setattr(run.strategy, "barrier", lambda name=None: seen.append(
        sorted(p.name for p in recon_dir.iterdir()) if recon_dir.is_dir() else []))
    run.test(model, datamodule=data_module(knee_data))
    written = sorted(p.name for p in recon_dir.iterdir())
    assert written and seen and seen[-1] == written


def _batchnorm_inputs(model: CLGNetModule, images: torch.Tensor) -> list:
    """Each BatchNorm layer's input in one train-mode forward pass over ``images``."""
    seen, hooks = [], []
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        hooks.append(bn.register_forward_hook(lambda m, args, out: seen.append(args[0])))
    model.train()
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return seen


def test_validation_uses_batchnorm_statistics_of_the_current_weights(
    knee_data, tmp_path, make_trainer, tiny
):
    """With one refresh batch holding every training slice, each BatchNorm's running mean
    and (unbiased) variance are exactly that batch's statistics under the trained weights."""
    mask = RandomMaskFunc([0.08], [4], seed=0)
    transform = CLGNetDataTransform("singlecoil", mask, use_seed=True)
    dm = CLGNetDataModule(data_path=knee_data, challenge="singlecoil", batch_size=6,
                          train_transform=transform, val_transform=transform,
                          test_transform=transform, num_workers=0)
    model = CLGNetModule(**tiny, bn_stats_batches=1)
    make_trainer(tmp_path, max_epochs=2).fit(model, datamodule=dm)
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    images = torch.stack([train[i].image for i in range(len(train))])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    inputs = _batchnorm_inputs(model, images)
    assert len(bns) == len(inputs) > 0
    for bn, x in zip(bns, inputs):
        torch.testing.assert_close(bn.running_mean, x.mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(bn.running_var, x.var((0, 2, 3)), rtol=1e-4, atol=1e-6)


def test_batchnorm_refresh_leaves_the_training_run_unchanged(
    knee_data, tmp_path, make_trainer, tiny
):
    """The refresh draws its own batches: training masks, crops and data order, and so the
    trained weights, are those of a run without it; only the BN statistics differ."""
    def fit(bn_stats_batches: int) -> dict:
        pl.seed_everything(0)
        mask = RandomMaskFunc([0.08], [4], seed=0)
        dm = CLGNetDataModule(
            data_path=knee_data, challenge="singlecoil", batch_size=2, num_workers=0,
            train_transform=CLGNetDataTransform("singlecoil", mask, False, crop_size=(24, 24)),
            val_transform=CLGNetDataTransform("singlecoil", mask),
            test_transform=CLGNetDataTransform("singlecoil", mask),
        )
        model = CLGNetModule(**tiny, bn_stats_batches=bn_stats_batches)
        make_trainer(tmp_path / str(bn_stats_batches), max_epochs=3).fit(model, datamodule=dm)
        return model.state_dict()

    plain, refreshed = fit(0), fit(2)
    stats = [key for key in plain if key.endswith(("running_mean", "running_var"))]
    assert stats
    for key in plain:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        torch.testing.assert_close(refreshed[key], plain[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(refreshed[key], plain[key]) for key in stats)
