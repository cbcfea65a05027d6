"""Adversarial banding removal: metric, augmentation, adversary and the Lightning module."""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import fastmri
import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import tomllib
import torch
from fastmri.data import transforms as T
from fastmri.data.subsample import RandomMaskFunc
from pytorch_lightning.loggers import CSVLogger

from banding import (
    BandingCLGNetModule,
    BandingUnetModule,
    OrientationAdversary,
    RandomTranspose,
    banding_score,
    reorient,
)
from banding.extension import EXTENSION
from clgnet_fastmri import cli, extensions, train_clgnet_demo, training
from clgnet_fastmri.checkpoints import load_clgnet, load_module
from clgnet_fastmri.config import TrainConfig, resolve
from clgnet_fastmri.data.synthetic import make_volume
from clgnet_fastmri.data.transforms import CLGNetDataTransform
from clgnet_fastmri.errors import UserError
from clgnet_fastmri.evaluate import evaluate_folder
from clgnet_fastmri.pl_modules.clgnet_module import CLGNetModule
from clgnet_fastmri.pl_modules.data_module import CLGNetDataModule

# The installed package declares the extension as an entry point (pyproject.toml); register it
# directly too, so these tests run against a checkout whose install predates the declaration.
extensions.register(EXTENSION)


def _scaled(pattern: np.ndarray, rms: float) -> np.ndarray:
    return pattern * rms / np.sqrt(np.mean(pattern**2))


def _streaks(rng: np.random.Generator, shape, rms: float) -> np.ndarray:
    """Streaks along the width (the phase-encoding direction): random per row, fading out
    towards the left and right edges."""
    slices, height, width = shape
    pattern = rng.standard_normal((slices, height, 1)) * np.hanning(width)[None, None, :]
    return _scaled(pattern, rms)


# --- metric ----------------------------------------------------------------------------------


def test_metric_streaks_score_above_isotropic_noise_of_equal_energy():
    target = make_volume("knee", size=64, num_slices=3, seed=0).target.astype(np.float64)
    rng = np.random.default_rng(0)
    rms = 0.05 * target.std()
    streaks = _streaks(rng, target.shape, rms)
    noise = _scaled(rng.standard_normal(target.shape), rms)
    assert np.sum(streaks**2) == pytest.approx(np.sum(noise**2))

    banded = banding_score(target, target + streaks)
    isotropic = banding_score(target, target + noise)
    assert banded > 20.0
    assert abs(isotropic) < 1.0
    # Direction matters: the same streaks across the phase-encoding direction score negative.
    assert banding_score(target, target + streaks.transpose(0, 2, 1)) < -20.0
    assert banding_score(target, target) == 0.0
    # A column of fastmri.evaluate's scale-free kind: scaling both volumes changes nothing.
    assert banding_score(3 * target, 3 * (target + streaks)) == pytest.approx(banded)


def _zero_filled(kspace: np.ndarray, crop) -> np.ndarray:
    """|IFFT| of k-space undersampled by fastmri's 4x random mask, centre-cropped."""
    masked, mask, _ = T.apply_mask(T.to_tensor(kspace), RandomMaskFunc([0.08], [4]), seed=0)
    assert mask.squeeze().shape == (kspace.shape[-1],)  # fastmri masks the columns
    image = fastmri.complex_abs(fastmri.ifft2c(masked))
    return T.center_crop(image, crop).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_direction_on_zero_filled_knee_data(seed):
    """The phase-encoding direction is checked, not assumed: fastmri's Cartesian masks drop
    k-space columns, so the zero-filled error (aliasing) is coherent along the rows, across
    the phase-encoding direction: negative BANDING. Dropping rows instead (the k-space
    transposed, the image turned back) puts it along the phase-encoding direction: positive."""
    volume = make_volume("knee", size=64, num_slices=4, seed=seed)
    crop = volume.target.shape[-2:]
    along_columns = _zero_filled(volume.kspace, crop)
    along_rows = _zero_filled(np.swapaxes(volume.kspace, -1, -2), crop).swapaxes(-1, -2)
    assert banding_score(volume.target, along_columns) < -3.0
    assert banding_score(volume.target, along_rows) > 3.0


def _streaked_predictions(target_dir: Path, out: Path) -> None:
    rng = np.random.default_rng(1)
    recons = {}
    for path in sorted(target_dir.glob("*.h5")):
        with h5py.File(path, "r") as hf:
            target = hf["reconstruction_esc"][()]
        recons[path.name] = (target + _streaks(rng, target.shape, 0.05 * target.std())).astype(
            np.float32
        )
    fastmri.save_reconstructions(recons, out)


def test_metric_is_an_evaluate_folder_column(knee_data, tmp_path):
    target_dir = knee_data / "singlecoil_val"
    _streaked_predictions(target_dir, tmp_path / "recons")
    result = evaluate_folder(
        target_dir, tmp_path / "recons", "singlecoil", extra_metrics={"BANDING": banding_score}
    )
    assert set(result.volumes) == {p.name for p in target_dir.glob("*.h5")}
    assert all(values["BANDING"] > 10.0 for values in result.volumes.values())
    assert "PSNR" in result.means()


def test_evaluate_command_reports_banding(knee_data, tmp_path, capsys):
    target_dir = knee_data / "singlecoil_val"
    _streaked_predictions(target_dir, tmp_path / "recons")
    output = tmp_path / "metrics.json"
    assert cli.main(["evaluate", "--target-path", str(target_dir), "--predictions-path",
                     str(tmp_path / "recons"), "--challenge", "singlecoil",
                     "--output", str(output)]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header == ["volume", "MSE", "NMSE", "PSNR", "SSIM", "BANDING"]
    saved = json.loads(output.read_text())
    expected = evaluate_folder(target_dir, tmp_path / "recons", "singlecoil",
                               extra_metrics={"BANDING": banding_score})
    assert saved["mean"]["BANDING"] == pytest.approx(expected.means()["BANDING"])
    assert saved["mean"]["BANDING"] > 10.0


# --- augmentation ----------------------------------------------------------------------------


def test_transpose_acts_on_kspace_before_undersampling():
    volume = make_volume("knee", size=32, num_slices=5, seed=3)
    kspace, target = volume.kspace[2], volume.target[2]
    attrs = dict(volume.attrs)

    # Fully sampled: the flipped sample is the plain sample transposed, pixel for pixel.
    plain = CLGNetDataTransform("singlecoil")(kspace, None, target, attrs, "a.h5", 2)
    flipped = RandomTranspose("singlecoil", p=1.0)(kspace, None, target, attrs, "a.h5", 2)
    assert flipped.transposed is True
    torch.testing.assert_close(flipped.sample.image, plain.image.T)
    torch.testing.assert_close(flipped.sample.target, plain.target.T)
    kept = RandomTranspose("singlecoil", p=0.0)(kspace, None, target, attrs, "a.h5", 2)
    assert kept.transposed is False
    torch.testing.assert_close(kept.sample.image, plain.image)

    # Undersampled: the mask still takes columns of the (transposed) k-space, so the
    # zero-filled error is structured across the width (negative BANDING) for both labels.
    for p in (0.0, 1.0):
        transform = RandomTranspose("singlecoil", RandomMaskFunc([0.08], [4], seed=0), False,
                                    p=p)
        samples = [transform(volume.kspace[s], None, volume.target[s], attrs, "a.h5", s).sample
                   for s in range(1, 4)]
        images = np.stack([s.image.numpy() for s in samples])
        targets = np.stack([s.target.numpy() for s in samples])
        assert banding_score(targets, images) < -2.0


def test_transpose_refuses_undersampled_kspace_and_labels_are_balanced():
    volume = make_volume("knee", size=32, num_slices=1, seed=0)
    transform = RandomTranspose("singlecoil")
    with pytest.raises(ValueError, match="already undersampled"):
        transform(volume.kspace[0], np.ones(volume.kspace.shape[-1], bool), None, {}, "a.h5", 0)
    torch.manual_seed(0)
    flips = [transform(volume.kspace[0], None, volume.target[0], dict(volume.attrs), "a.h5", 0)
             .transposed for _ in range(200)]
    assert 70 < sum(flips) < 130


def test_reorient_turns_back_only_flagged_images():
    images = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 3, 3)
    out = reorient(images, torch.tensor([False, True]))
    torch.testing.assert_close(out[0], images[0])
    torch.testing.assert_close(out[1], images[1].T)
    with pytest.raises(ValueError, match="square"):
        reorient(torch.zeros(2, 3, 4), torch.tensor([False, True]))


# --- adversary -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _knee_slices(count: int, seed: int) -> np.ndarray:
    """``count`` 32 x 32 synthetic knee slices (4 central slices per volume), unit std."""
    slices = np.concatenate([
        make_volume("knee", size=32, num_slices=6, seed=(seed, i)).target[1:5]
        for i in range(math.ceil(count / 4))
    ])[:count].astype(np.float64)
    slices /= slices.std(axis=(1, 2), keepdims=True)
    slices.flags.writeable = False
    return slices


def _orientation_task(kind: str, count: int, seed: int):
    """Reoriented-frame images: anatomy upright, label 1 = phase encoding along the rows."""
    rng = np.random.default_rng(seed)
    slices = _knee_slices(count, seed)
    labels = rng.random(count) < 0.5
    if kind == "streaks":
        artefact = _streaks(rng, slices.shape, 0.15)
        artefact[labels] = artefact[labels].transpose(0, 2, 1)
    else:
        artefact = _scaled(rng.standard_normal(slices.shape), 0.15)
    images = torch.tensor(slices + artefact, dtype=torch.float32)
    return images, torch.tensor(labels)


def _train_adversary(kind: str) -> float:
    torch.manual_seed(0)
    images, labels = _orientation_task(kind, 192, seed=0)
    test_images, test_labels = _orientation_task(kind, 128, seed=1)
    adversary = OrientationAdversary(chans=8)
    optimizer = torch.optim.Adam(adversary.parameters(), lr=3e-3)
    for step in range(200):
        index = torch.randint(0, len(images), (32,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            adversary(images[index]), labels[index].float()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        guesses = adversary(test_images) > 0
    return (guesses == test_labels).float().mean().item()


@pytest.mark.slow
def test_adversary_tells_streak_orientation():
    # Faint streaks (RMS 0.15 of the image's standard deviation), held-out images.
    assert _train_adversary("streaks") > 0.85


@pytest.mark.slow
def test_adversary_is_at_chance_on_isotropic_artefacts():
    # 128 held-out images: chance accuracy has a standard deviation of 0.044.
    assert abs(_train_adversary("noise") - 0.5) < 0.15


def test_adversary_shapes_and_scale_invariance():
    adversary = OrientationAdversary(chans=4, num_downs=2).eval()
    images = torch.randn(3, 24, 24)
    logits = adversary(images)
    assert logits.shape == (3,)
    torch.testing.assert_close(adversary(images.unsqueeze(1)), logits)
    torch.testing.assert_close(adversary(5 * images + 2), logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        adversary(torch.zeros(2, 2, 8, 8))


# --- Lightning module ------------------------------------------------------------------------


def banding_data(root: Path, batch_size: int = 2) -> CLGNetDataModule:
    mask = RandomMaskFunc([0.08], [4], seed=0)
    return CLGNetDataModule(
        data_path=root,
        challenge="singlecoil",
        train_transform=RandomTranspose("singlecoil", mask, use_seed=False),
        val_transform=CLGNetDataTransform("singlecoil", mask),
        test_transform=CLGNetDataTransform("singlecoil", mask),
        test_split="val",
        batch_size=batch_size,
        num_workers=0,
    )


def _logged(run: pl.Trainer) -> dict:
    import csv

    with open(Path(run.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = {}
    for row in rows:
        for key, value in row.items():
            if value != "":
                columns.setdefault(key, []).append((int(row["epoch"]), float(value)))
    return columns


@pytest.mark.slow
def test_adversarial_fit_logs_finite_losses_and_checkpoint_loads(
    knee_data, tmp_path, make_trainer, tiny
):
    pl.seed_everything(0)
    model = BandingCLGNetModule(**tiny, adversary_warmup_epochs=1, adversary_strength=1.0)
    run = make_trainer(tmp_path, max_epochs=2, logger=CSVLogger(tmp_path, name="logs"))
    run.fit(model, datamodule=banding_data(knee_data))
    # 2 volumes x 3 slices, batch 2: 3 batches an epoch, two optimiser steps each.
    assert run.global_step == 2 * 3 * 2

    logged = _logged(run)
    for name in ("train_loss", "train_l1", "train_contrastive", "train_confusion",
                 "adversary_loss", "adversary_accuracy", "val_metrics/ssim"):
        assert name in logged, name
        assert all(math.isfinite(value) for _, value in logged[name]), name
    # The warm-up epoch trains the adversary without the adversarial term.
    assert {epoch for epoch, _ in logged["train_confusion"]} == {1}
    assert {epoch for epoch, _ in logged["adversary_loss"]} == {0, 1}

    path = tmp_path / "banding.ckpt"
    run.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert {key.split(".")[0] for key in checkpoint["state_dict"]} == {"clgnet", "adversary"}
    assert len(checkpoint["optimizer_states"]) == 2
    network = load_clgnet(path)
    image = torch.randn(1, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(image.unsqueeze(1)).squeeze(1), model(image))
    # --mode test/validate load the network whether or not --banding is given again.
    loaded = load_module(path)
    torch.testing.assert_close(loaded.clgnet.state_dict(), model.clgnet.state_dict())


@pytest.mark.slow
def test_resume_restores_both_optimisers_and_the_schedule(knee_data, tmp_path, make_trainer, tiny):
    pl.seed_everything(0)
    first = make_trainer(tmp_path, max_epochs=1)
    first.fit(BandingCLGNetModule(**tiny, adversary_warmup_epochs=0),
              datamodule=banding_data(knee_data))
    path = tmp_path / "epoch1.ckpt"
    first.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)

    restored = {}

    class Capture(pl.Callback):
        def on_train_start(self, trainer, module):
            # Deep copies: Adam updates its state tensors in place as training goes on.
            restored["optimizers"] = copy.deepcopy(
                [opt.state_dict() for opt in trainer.optimizers]
            )
            restored["schedulers"] = copy.deepcopy(
                [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
            )

    second = make_trainer(tmp_path, max_epochs=2, callbacks=[Capture()])
    second.fit(BandingCLGNetModule(**tiny, adversary_warmup_epochs=0),
               datamodule=banding_data(knee_data), ckpt_path=path, weights_only=True)
    assert len(restored["optimizers"]) == 2
    for now, then in zip(restored["optimizers"], saved["optimizer_states"]):
        assert now["state"].keys() == then["state"].keys() and now["state"]
        for index, state in then["state"].items():
            assert int(now["state"][index]["step"]) == int(state["step"]) == 3
            torch.testing.assert_close(now["state"][index]["exp_avg"], state["exp_avg"])
    assert restored["schedulers"][0]["last_epoch"] == saved["lr_schedulers"][0]["last_epoch"] == 3
    assert second.global_step == 2 * 3 * 2


def _max_abs(tensors) -> float:
    return max(t.abs().max().item() for t in tensors)


def test_updates_are_isolated_from_each_other(tiny):
    model = BandingCLGNetModule(**tiny)
    recon = list(model.clgnet.parameters())
    adversary = list(model.adversary.parameters())
    image = torch.randn(2, 16, 16)
    seen = reorient(model(image), torch.tensor([False, True]))

    adv_loss, _ = model.adversary_loss(seen, torch.tensor([False, True]))
    to_recon = torch.autograd.grad(adv_loss, recon, allow_unused=True, retain_graph=True)
    assert all(g is None for g in to_recon)
    assert _max_abs(torch.autograd.grad(adv_loss, adversary)) > 0

    confusion = model.confusion_loss(seen)
    to_adversary = torch.autograd.grad(confusion, adversary, allow_unused=True, retain_graph=True)
    assert all(g is None for g in to_adversary)
    assert _max_abs(g for g in torch.autograd.grad(confusion, recon, allow_unused=True)
                    if g is not None) > 0


def test_training_step_never_mixes_the_two_updates(knee_data, tmp_path, make_trainer, tiny):
    """In the real training loop: the adversary's backward adds nothing to the network's
    gradients, the network's backward adds nothing to the adversary's, and the network's
    step leaves the adversary's weights as its own step left them."""
    model = BandingCLGNetModule(**tiny, adversary_warmup_epochs=0, adversary_strength=1.0)
    recon = list(model.clgnet.parameters())
    adversary = list(model.adversary.parameters())
    seen = {"adversary_steps": 0, "recon_steps": 0}

    def grads(params):
        return [None if p.grad is None else p.grad.clone() for p in params]

    def same(a, b):
        return all((x is None and y is None) or (x is not None and y is not None and
                                                  torch.equal(x, y)) for x, y in zip(a, b))

    class Check(pl.Callback):
        def on_train_start(self, trainer, module):
            recon_opt, adversary_opt = trainer.optimizers
            recon_ids = {id(p) for group in recon_opt.param_groups for p in group["params"]}
            adversary_ids = {id(p) for group in adversary_opt.param_groups
                             for p in group["params"]}
            assert recon_ids == {id(p) for p in recon}
            assert adversary_ids == {id(p) for p in adversary}

            def adversary_pre(opt, args, kwargs):
                assert same(grads(recon), seen.get("recon_grads", [None] * len(recon)))

            def adversary_post(opt, args, kwargs):
                seen["adversary_steps"] += 1
                seen["adversary_grads"] = grads(adversary)
                seen["adversary_weights"] = [p.detach().clone() for p in adversary]

            def recon_pre(opt, args, kwargs):
                assert same(grads(adversary), seen["adversary_grads"])
                assert _max_abs(g for g in grads(recon) if g is not None) > 0

            def recon_post(opt, args, kwargs):
                seen["recon_steps"] += 1
                seen["recon_grads"] = grads(recon)
                assert all(torch.equal(p, q) for p, q in zip(adversary,
                                                             seen["adversary_weights"]))

            adversary_opt.register_step_pre_hook(adversary_pre)
            adversary_opt.register_step_post_hook(adversary_post)
            recon_opt.register_step_pre_hook(recon_pre)
            recon_opt.register_step_post_hook(recon_post)

    run = make_trainer(tmp_path, callbacks=[Check()], limit_val_batches=0)
    run.fit(model, datamodule=banding_data(knee_data))
    assert seen["adversary_steps"] == seen["recon_steps"] == 3


def test_training_needs_oriented_batches(knee_data, tmp_path, make_trainer, tiny):
    dm = banding_data(knee_data)
    dm.train_transform = CLGNetDataTransform("singlecoil", RandomMaskFunc([0.08], [4]), False)
    with pytest.raises(TypeError, match="RandomTranspose"):
        make_trainer(tmp_path, limit_val_batches=0).fit(
            BandingCLGNetModule(**tiny), datamodule=dm
        )


def test_unet_baseline_trains_with_the_adversary(knee_data, tmp_path, make_trainer):
    model = BandingUnetModule(chans=4, num_pool_layers=2, adversary_warmup_epochs=0)
    run = make_trainer(tmp_path, logger=CSVLogger(tmp_path, name="logs"), limit_val_batches=0)
    run.fit(model, datamodule=banding_data(knee_data))
    logged = _logged(run)
    for name in ("train_loss", "train_confusion", "adversary_accuracy"):
        assert all(math.isfinite(value) for _, value in logged[name]), name
    rmsprop = run.optimizers[0]
    assert {id(p) for g in rmsprop.param_groups for p in g["params"]} == {
        id(p) for p in model.unet.parameters()
    }


def _demo_config(*argv: str) -> TrainConfig:
    """``clgnet-fastmri train``'s settings, resolved as ``run`` resolves them."""
    parser = argparse.ArgumentParser()
    train_clgnet_demo.add_arguments(parser)
    return resolve(parser.parse_args(argv))


def test_demo_banding_option_builds_the_module_and_the_augmentation(knee_data, tiny, tiny_argv):
    config = _demo_config(*tiny_argv, "--data_path", str(knee_data), "--banding",
                          "--adversary_strength", "0.5", "--adversary_warmup_epochs", "3",
                          "--crop_size", "24", "24")
    model = training.build_module(config)
    assert isinstance(model, BandingCLGNetModule)
    assert (model.hparams.adversary_strength, model.hparams.adversary_warmup_epochs) == (0.5, 3)
    assert model.hparams.chans == 4
    transform = training.build_data_module(config).train_transform
    assert isinstance(transform, RandomTranspose) and transform.crop_size == (24, 24)

    plain = _demo_config(*tiny_argv, "--data_path", str(knee_data))
    assert type(training.build_module(plain)) is CLGNetModule
    assert type(training.build_data_module(plain).train_transform) is \
        CLGNetDataTransform

    with pytest.raises(UserError, match="square"):
        training.build_module(dataclasses.replace(config, crop_size=(32, 48)))
    with pytest.raises(ValueError):
        BandingCLGNetModule(**tiny, adversary_strength=-1.0)


def test_gradient_clipping_applies_to_each_update(knee_data, tmp_path, make_trainer, tiny):
    """Lightning refuses Trainer(gradient_clip_val) under manual optimisation; the module's
    own option clips the norm of each update's gradients before its step."""
    clip = 1e-3
    model = BandingCLGNetModule(**tiny, adversary_warmup_epochs=0, gradient_clip_val=clip)
    norms = []

    class Record(pl.Callback):
        def on_train_start(self, trainer, module):
            for optimizer in trainer.optimizers:
                def record(opt, args, kwargs):
                    grads = [p.grad for g in opt.param_groups for p in g["params"]
                             if p.grad is not None]
                    norms.append(torch.linalg.vector_norm(torch.stack(
                        [torch.linalg.vector_norm(g) for g in grads])).item())
                optimizer.register_step_post_hook(record)

    make_trainer(tmp_path, callbacks=[Record()], limit_val_batches=0).fit(
        model, datamodule=banding_data(knee_data))
    assert len(norms) == 2 * 3
    assert max(norms) <= clip * 1.0001
    assert min(norms) > clip * 0.5  # clipped, not vanished: unclipped norms are far above


DDP_SCRIPT = '''
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from fastmri.data.subsample import RandomMaskFunc

from banding import BandingCLGNetModule, RandomTranspose
from clgnet_fastmri.data.transforms import CLGNetDataTransform
from clgnet_fastmri.pl_modules.data_module import CLGNetDataModule

data, strategy, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
torch.set_num_threads(1)
pl.seed_everything(0)
mask = RandomMaskFunc([0.08], [4], seed=0)
dm = CLGNetDataModule(
    data_path=data, challenge="singlecoil",
    train_transform=RandomTranspose("singlecoil", mask, use_seed=False),
    val_transform=CLGNetDataTransform("singlecoil", mask),
    test_transform=CLGNetDataTransform("singlecoil", mask),
    batch_size=1, num_workers=0, distributed_sampler=True,
)
model = BandingCLGNetModule(chans=4, num_sfrir=1, num_sfrb=1, vgg_weights=None, k_negatives=1,
                            adversary_warmup_epochs=0, adversary_strength=1.0, lr=1e-2,
                            adversary_lr=1e-2)
torch.save(model.state_dict(), out / "init.pt")


class Dump(pl.Callback):
    def on_train_end(self, trainer, module):
        params = {n: p.detach().clone() for n, p in module.named_parameters()}
        torch.save(params, out / f"rank{trainer.global_rank}.pt")


pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=1, logger=False,
           enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
           limit_val_batches=0, use_distributed_sampler=False, callbacks=[Dump()]).fit(model, dm)
'''


def _ddp_run(knee_data: Path, tmp_path: Path, strategy: str) -> subprocess.CompletedProcess:
    script = tmp_path / "ddp_banding.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script), str(knee_data), strategy, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.reliability
def test_ddp_keeps_both_networks_in_step_across_ranks(knee_data, tmp_path):
    """Two CPU processes, one slice each: after 3 steps every parameter of the network and of
    the adversary is the same on both ranks (both updates' gradients were averaged), and
    both networks moved. Plain DDP is refused before the first step, with the fix."""
    done = _ddp_run(knee_data, tmp_path, "ddp_find_unused_parameters_true")
    assert done.returncode == 0, done.stderr[-3000:]
    init = torch.load(tmp_path / "init.pt")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for name, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], value, rtol=0, atol=0)
    for prefix in ("clgnet.", "adversary."):
        assert any(not torch.equal(value, init[name]) for name, value in ranks[0].items()
                   if name.startswith(prefix)), prefix

    refused = _ddp_run(knee_data, tmp_path, "ddp")
    assert refused.returncode != 0
    assert "ddp_find_unused_parameters_true" in refused.stderr
    assert "UserError" in refused.stderr


def test_banding_is_a_declared_training_extension(monkeypatch):
    """pyproject.toml declares the entry point the training command discovers; discovery
    from it alone (as after ``pip install``) enables ``--banding``."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"][extensions.GROUP]
    assert declared == {"banding": "banding.extension:EXTENSION"}
    point = EntryPoint("banding", declared["banding"], extensions.GROUP)
    monkeypatch.setattr(extensions, "entry_points",
                        lambda group: [point] if group == extensions.GROUP else [])
    monkeypatch.setattr(extensions, "_registered", {})
    monkeypatch.setattr(extensions, "_discovered", False)
    assert extensions.extensions() == [EXTENSION]
    parser = argparse.ArgumentParser()
    train_clgnet_demo.add_arguments(parser)
    assert extensions.enabled_extension(parser.parse_args(["--banding"])) is EXTENSION
    assert extensions.enabled_extension(parser.parse_args([])) is None


def test_clgnet_fastmri_never_imports_banding():
    package = Path(__file__).parents[1] / "clgnet_fastmri"
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n.split(".")[0] == "banding" for n in names), path
