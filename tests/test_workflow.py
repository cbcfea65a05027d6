"""A fastmri user's workflow on one command: ``train --model clgnet|unet|varnet`` with fastmri's
demo defaults, fastmri's option names, checkpoints that record what they were trained for,
``predict``/``evaluate`` on every kind, and pure low precision."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fastmri.pl_modules import VarNetModule as FastMriVarNetModule

from clgnet_fastmri import cli, settings
from clgnet_fastmri.checkpoints import RECORD_KEY, load_recorded, run_record
from clgnet_fastmri.config import add_arguments, resolve
from clgnet_fastmri.pl_modules.bridge import BridgedUnetModule
from clgnet_fastmri.pl_modules.clgnet_module import CLGNetModule
from clgnet_fastmri.pl_modules.kinds import KINDS
from clgnet_fastmri.settings import signature_defaults

COMMON = ["--num_workers", "0", "--no_progress_bar", "--logger", "csv"]
TINY = {
    "unet": ["--model", "unet", "--chans", "4", "--num_pool_layers", "2", "--batch_size", "2"],
    "varnet": ["--model", "varnet", "--num_cascades", "1", "--chans", "4", "--pools", "2",
               "--sens_chans", "4", "--sens_pools", "2"],
}


def parse_train(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


# -- defaults follow --model ------------------------------------------------------------------


def test_each_model_gets_fastmri_demo_defaults():
    varnet = resolve(parse_train("--model", "varnet", "--data_path", "data"))
    # train_varnet_demo.py: multicoil, equispaced_fraction masks, batch 1, 8 cascades, Adam 1e-3
    assert (varnet.challenge, varnet.mask_type, varnet.batch_size, varnet.max_epochs) == \
        ("multicoil", "equispaced_fraction", 1, 50)
    assert varnet.model_args == {**signature_defaults(FastMriVarNetModule),
                                 "num_cascades": 8, "lr": 1e-3}
    unet = resolve(parse_train("--model", "unet", "--data_path", "data"))
    # train_unet_demo.py: random masks, batch 1, and UnetModule's signature (32 chans, 4 pools)
    assert (unet.challenge, unet.mask_type, unet.batch_size) == ("singlecoil", "random", 1)
    assert unet.model_args == signature_defaults(BridgedUnetModule)
    assert unet.model_args["chans"] == 32  # not fastmri's add_model_specific_args' 1
    clgnet = resolve(parse_train("--data_path", "data", "--vgg_weights", "random"))
    assert clgnet.batch_size == 10
    assert clgnet.model_args == {**signature_defaults(CLGNetModule), "vgg_weights": None}
    # A shared name (--chans) takes the chosen model's meaning.
    assert resolve(parse_train("--model", "varnet", "--chans", "6")).model_args["chans"] == 6


@pytest.mark.parametrize("argv, demo, alpha, bn_batches, batch_size", [
    (["--vgg_weights", "random"], True, 0.0, 0, 4),  # the CPU demo: L1 alone, no BN refresh
    (["--vgg_weights", "random", "--alpha", "0.05", "--bn_stats_batches", "4"], True, 0.05, 4,
     4),  # explicit values win
    (["--vgg_weights", "random"], False, 0.0, 16, 10),  # real data: L1 alone, paper's batch
    (["--alpha", "0.05"], False, 0.05, 16, 10),  # the paper's loss
    (["--model", "unet"], True, None, None, 4),  # U-Net has no contrastive loss, no BatchNorm
])
def test_demo_and_data_defaults_fill_only_unset_options(argv, demo, alpha, bn_batches,
                                                        batch_size):
    config = resolve(parse_train(*argv, *([] if demo else ["--data_path", "data"])))
    assert config.model_args.get("alpha") == alpha
    assert config.model_args.get("bn_stats_batches") == bn_batches
    assert config.batch_size == batch_size


@pytest.mark.reliability
@pytest.mark.parametrize("argv, words", [
    (["--model", "varnet", "--challenge", "singlecoil"], ["--challenge singlecoil", "multicoil"]),
    (["--model", "unet", "--num_cascades", "2"], ["--num_cascades", "--model varnet"]),
    (["--model", "varnet", "--chans", "0"], ["--chans"]),
    (["--model", "unet", "--in_chans", "2"], ["--in_chans"]),
    (["--model", "varnet", "--precision", "bf16-true"], ["bf16-mixed"]),
    (["--gpus", "2", "--devices", "4"], ["--gpus 2", "--devices 4"]),
    (["--gpus", "0", "--accelerator", "gpu"], ["--gpus 0", "--accelerator gpu"]),
    (["--gpus", "-2"], ["--gpus"]),
    (["--resume", "a.ckpt", "--resume_from_checkpoint", "b.ckpt"], ["--resume a.ckpt"]),
    (["--resume", "--resume_from_checkpoint", "b.ckpt"], ["last.ckpt"]),
    (["--mode", "test", "--checkpoint", "a.ckpt", "--resume_from_checkpoint", "b.ckpt"],
     ["--checkpoint a.ckpt"]),
])
def test_bad_model_options_and_conflicting_synonyms_are_refused(argv, words, refused_train):
    line = refused_train(argv)
    assert all(word in line for word in words), line


@pytest.mark.reliability
def test_gpus_is_checked_as_what_it_stands_for(refused_train, monkeypatch):
    # --gpus 2 is --accelerator gpu --devices 2: refused before any work on a 1-GPU machine.
    monkeypatch.setattr(settings, "_gpu_count", lambda: 1)
    line = refused_train(["--gpus", "2"])
    assert "--devices 2" in line and "1 GPU" in line, line


def test_synonyms_translate_to_our_options():
    config = resolve(parse_train("--gpus", "0", "--resume_from_checkpoint", "x.ckpt"))
    assert (config.accelerator, config.devices, config.resume) == ("cpu", "auto", "x.ckpt")
    test = resolve(parse_train("--mode", "test", "--resume_from_checkpoint", "x.ckpt",
                               "--checkpoint", "./x.ckpt"))  # the same file twice: no conflict
    assert test.checkpoint == Path("x.ckpt")


# -- round trips ------------------------------------------------------------------------------


def train_run(root: Path, data: Path, model: str, *extra: str) -> Path:
    argv = ["train", *TINY[model], *COMMON, "--data_path", str(data),
            "--default_root_dir", str(root), *extra]
    assert cli.main(argv) == 0
    return root


@pytest.fixture(scope="module")
def unet_run(knee_data, tmp_path_factory) -> Path:
    # --gpus 0: fastmri's way of asking for the CPU.
    return train_run(tmp_path_factory.mktemp("unet"), knee_data, "unet", "--max_epochs", "1",
                     "--gpus", "0")


@pytest.fixture(scope="module")
def varnet_run(multicoil_data, tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("varnet"), multicoil_data, "varnet",
                     "--max_epochs", "1")


def check_round_trip(run: Path, data: Path, model: str, challenge: str, tmp_path, capsys
                     ) -> None:
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint[RECORD_KEY] == run_record(KINDS[model], challenge)
    assert checkpoint["hyper_parameters"]["chans"] == 4

    # test mode: the reconstructions of the test split, scored
    assert cli.main(["train", *TINY[model], *COMMON, "--data_path", str(data),
                     "--default_root_dir", str(run), "--mode", "test",
                     "--resume_from_checkpoint", str(last)]) == 0
    assert json.loads((run / "metrics.json").read_text())["model"] == model

    out = tmp_path / "submission"
    test_dir = data / f"{challenge}_test"
    assert cli.main(["predict", "--checkpoint", str(last), "--data_path", str(test_dir),
                     "--output", str(out), "--challenge", challenge, "--quiet"]) == 0
    for source in sorted(test_dir.iterdir()):
        with h5py.File(source) as hf_in, h5py.File(out / source.name) as hf, \
                h5py.File(run / "reconstructions" / source.name) as tested:
            recons = hf["reconstruction"][()]
            assert recons.shape == (hf_in["kspace"].shape[0], 32, 32)
            # predict runs the same network on the same input as the test mode
            np.testing.assert_allclose(recons, tested["reconstruction"][()], rtol=1e-4,
                                       atol=1e-6 * float(np.abs(recons).max()))
    capsys.readouterr()
    metrics = tmp_path / "m.json"
    assert cli.main(["evaluate", "--target-path", str(data / f"{challenge}_test_gt"),
                     "--predictions-path", str(out), "--challenge", challenge,
                     "--output", str(metrics)]) == 0
    scores = json.loads(metrics.read_text())
    assert scores["num_volumes"] == 2 and np.isfinite(scores["mean"]["PSNR"])


@pytest.mark.slow
def test_unet_singlecoil_trains_tests_predicts_and_scores(unet_run, knee_data, tmp_path,
                                                          capsys):
    check_round_trip(unet_run, knee_data, "unet", "singlecoil", tmp_path, capsys)


@pytest.mark.slow
def test_varnet_multicoil_trains_tests_predicts_and_scores(varnet_run, multicoil_data,
                                                           tmp_path, capsys):
    check_round_trip(varnet_run, multicoil_data, "varnet", "multicoil", tmp_path, capsys)
    assert torch.load(varnet_run / "checkpoints" / "last.ckpt",
                      weights_only=True)["global_step"] == 6  # 6 slices, batch 1


@pytest.mark.slow
@pytest.mark.reliability
def test_resume_from_checkpoint_continues_at_the_saved_step(unet_run, knee_data, tmp_path):
    root = tmp_path / "resumed"
    last = unet_run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3  # 6 slices, batch 2
    train_run(root, knee_data, "unet", "--max_epochs", "2", "--resume_from_checkpoint",
              str(last))
    resumed = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert (resumed["global_step"], resumed["epoch"]) == (6, 1)


@pytest.mark.reliability
def test_resume_or_test_with_another_kind_is_refused(tmp_path, run_cli):
    path = save_checkpoint(BridgedUnetModule(chans=4, num_pool_layers=2), "unet", "singlecoil",
                           tmp_path / "u.ckpt")
    code, lines = run_cli(["train", "--data_path", str(tmp_path), "--mode", "test",
                           "--default_root_dir", str(tmp_path / "run"),
                           "--resume_from_checkpoint", str(path)])
    assert code == 2 and len(lines) == 1 and "pass --model unet" in lines[0], lines


# -- challenge checks in predict --------------------------------------------------------------


def save_checkpoint(module, model: str, challenge, path: Path) -> Path:
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    if challenge is not None:
        checkpoint[RECORD_KEY] = run_record(KINDS[model], challenge)
    torch.save(checkpoint, path)
    return path


@pytest.mark.reliability
def test_predict_refuses_the_other_challenge_unless_told(multicoil_data, tmp_path, run_cli):
    torch.manual_seed(0)
    path = save_checkpoint(BridgedUnetModule(chans=4, num_pool_layers=2), "unet", "singlecoil",
                           tmp_path / "sc.ckpt")
    argv = ["predict", "--checkpoint", str(path), "--data_path",
            str(multicoil_data / "multicoil_test"), "--challenge", "multicoil", "--quiet"]
    code, lines = run_cli([*argv, "--output", str(tmp_path / "refused")])
    assert code == 2 and len(lines) == 1, lines
    assert "trained on singlecoil data" in lines[0] and "--allow_challenge_mismatch" in lines[0]
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "allowed"
    assert cli.main([*argv, "--output", str(out), "--allow_challenge_mismatch"]) == 0
    assert len(list(out.glob("*.h5"))) == 2


@pytest.mark.reliability
def test_old_checkpoint_without_record_loads_as_clgnet_for_any_challenge(tmp_path, caplog):
    module = CLGNetModule(chans=4, num_sfrir=1, num_sfrb=1, vgg_weights=None)
    path = save_checkpoint(module, "clgnet", None, tmp_path / "old.ckpt")
    loaded, record = load_recorded(path)
    assert record == {"model_kind": "clgnet", "challenge": None, "normalisation": None}
    assert "does not record" in caplog.text
    image = torch.randn(1, 32, 32)
    torch.testing.assert_close(loaded.eval()(image), module.eval()(image))


@pytest.mark.reliability
def test_varnet_checkpoint_on_singlecoil_data_is_refused(knee_data, tmp_path, run_cli):
    module = FastMriVarNetModule(num_cascades=1, pools=2, chans=4, sens_pools=2, sens_chans=4)
    path = save_checkpoint(module, "varnet", "multicoil", tmp_path / "v.ckpt")
    code, lines = run_cli(["predict", "--checkpoint", str(path), "--data_path",
                           str(knee_data / "singlecoil_test"), "--output", str(tmp_path / "o"),
                           "--allow_challenge_mismatch"])
    assert code == 2 and len(lines) == 1 and "needs multicoil data" in lines[0], lines


# -- pure low precision -----------------------------------------------------------------------


@pytest.mark.slow
def test_bf16_true_trains_and_predicts_on_cpu(knee_data, tmp_path):
    root = train_run(tmp_path / "bf16", knee_data, "unet", "--max_epochs", "1",
                     "--precision", "bf16-true")
    last = root / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert {v.dtype for k, v in state.items() if k.startswith("unet.")} == {torch.bfloat16}
    outputs = {}
    for precision in ("bf16-true", "32"):
        out = tmp_path / precision
        assert cli.main(["predict", "--checkpoint", str(last), "--data_path",
                         str(knee_data / "singlecoil_test"), "--output", str(out), "--quiet",
                         "--precision", precision]) == 0
        with h5py.File(out / "file_knee_test_0000.h5") as hf:
            outputs[precision] = hf["reconstruction"][()]
    assert outputs["bf16-true"].dtype == np.float32
    # the same bfloat16 weights, run in bfloat16 and in float32: bfloat16's 8-bit mantissa
    scale = np.abs(outputs["32"]).max()
    np.testing.assert_allclose(outputs["bf16-true"], outputs["32"], atol=0.05 * scale)


@pytest.mark.slow
def test_clgnet_bf16_true_trains_and_predicts_on_cpu(knee_data, tmp_path):
    root = tmp_path / "run"
    assert cli.main(["train", "--chans", "4", "--num_sfrir", "1", "--num_sfrb", "1",
                     "--alpha", "0", "--batch_size", "2", *COMMON, "--data_path", str(knee_data),
                     "--default_root_dir", str(root), "--max_epochs", "1",
                     "--precision", "bf16-true"]) == 0
    last = root / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert state["clgnet.net_pre.weight"].dtype == torch.bfloat16
    out = tmp_path / "sub"
    assert cli.main(["predict", "--checkpoint", str(last), "--data_path",
                     str(knee_data / "singlecoil_test"), "--output", str(out), "--quiet",
                     "--precision", "bf16-true"]) == 0
    with h5py.File(out / "file_knee_test_0000.h5") as hf:
        recons = hf["reconstruction"][()]
    assert recons.shape == (3, 32, 32) and np.isfinite(recons).all()


# -- a run's folder, threads and output -------------------------------------------------------


def test_a_new_run_never_reuses_a_folder_that_holds_a_run(tmp_path, capsys):
    from clgnet_fastmri.training import run_folder

    root = tmp_path / "demo"
    assert run_folder(root, None) == root  # nothing there yet
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.ckpt").touch()
    assert run_folder(root, None) == tmp_path / "demo-2"
    assert "demo holds an earlier run" in capsys.readouterr().out
    (tmp_path / "demo-2" / "checkpoints").mkdir(parents=True)
    (tmp_path / "demo-2" / "checkpoints" / "best-epoch=0-step=1.ckpt").touch()
    assert run_folder(root, None) == tmp_path / "demo-3"
    assert run_folder(root, "last") == root  # --resume continues it
    assert "resuming the run in" in capsys.readouterr().out


@pytest.mark.parametrize("cpus, load, threads", [(2, 0.1, 2), (2, 1.2, 1), (2, 2.8, 1),
                                                 (16, 4.0, 12), (16, 0.0, 16)])
def test_threads_are_the_cpus_other_work_leaves(cpus, load, threads):
    from clgnet_fastmri.training import free_cpus

    assert free_cpus(cpus, load) == threads


def test_thread_choice_respects_the_user(monkeypatch, capsys):
    from clgnet_fastmri.training import choose_threads

    before = torch.get_num_threads()
    try:
        args = parse_train("--accelerator", "cpu", "--threads", "1")
        choose_threads(args)
        assert torch.get_num_threads() == 1 and "using 1 CPU thread (--threads)" in \
            capsys.readouterr().out
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        choose_threads(parse_train("--accelerator", "cpu"))
        assert torch.get_num_threads() == 1 and capsys.readouterr().out == ""
    finally:
        torch.set_num_threads(before)


def test_lightning_noise_is_hidden_only_inside_our_runs(caplog):
    import logging
    import warnings

    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    from clgnet_fastmri.quiet import quiet_lightning

    def noise():
        warnings.warn("Found 1 module(s) in eval mode at the start of training.")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)
        warnings.warn("Checkpoint directory /x/checkpoints exists and is not empty.")
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("a note about this run")

    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_lightning():
            noise()
        assert not caught and [r.getMessage() for r in caplog.records] == \
            ["a note about this run"]
        noise()  # the caller's own code still sees everything
        assert len(caught) == 3 and len(caplog.records) == 3
