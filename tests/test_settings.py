"""Settings in one place: CLGNetModule's signature as options, and every bad value refused
with one line naming the option, before any work."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest
import torch

from clgnet_fastmri.checkpoints import load_clgnet
from clgnet_fastmri.errors import UserError
from clgnet_fastmri.losses import PAPER_ALPHA
from clgnet_fastmri.models import CLGNet, layout
from clgnet_fastmri.models.registry import VARIANTS, build_network, networks
from clgnet_fastmri.pl_modules.clgnet_module import CLGNetModule
from clgnet_fastmri.settings import Rule, SettingError, check_output_dir, signature_defaults


def test_options_are_the_module_signature():
    params = inspect.signature(CLGNetModule.__init__).parameters
    parser = CLGNetModule.add_model_specific_args(argparse.ArgumentParser())
    parsed = vars(parser.parse_args(["--vgg_weights", "imagenet"]))
    assert set(CLGNetModule.RULES) == set(params) - {"self"} == set(parsed)
    for name, param in params.items():
        if name != "self":
            assert parsed[name] == param.default, name
    # The paper's settings (Sec. 4.1), stated once in the signature; its loss weight is
    # PAPER_ALPHA, reached with alpha=0.05, the default being L1 alone.
    paper = dict(chans=32, num_sfrir=4, num_sfrb=3, k_negatives=6)
    assert {k: signature_defaults(CLGNetModule)[k] for k in paper} == paper
    assert signature_defaults(CLGNetModule)["alpha"] == 0 and PAPER_ALPHA == 0.05
    # CLGNet's own defaults agree with the module's.
    network = signature_defaults(CLGNet)
    for name in CLGNetModule.NETWORK_HPARAMS:
        assert network[name] == params[name].default, name


def test_options_spell_none_and_the_ablation_switches():
    parser = CLGNetModule.add_model_specific_args(argparse.ArgumentParser())
    args = parser.parse_args(["--wavelet", "none", "--no_negatives", "--vgg_weights", "random",
                              "--global_module", "none", "--chans", "8", "--lr", "1e-4"])
    assert (args.wavelet, args.use_negatives, args.vgg_weights) == (None, False, None)
    assert (args.chans, args.lr, args.global_module) == (8, 1e-4, "none")
    assert parser.parse_args([]).vgg_weights == "auto"  # resolved by the training command


def test_rules_describe_their_range():
    rule = Rule(low=2, high=64)
    with pytest.raises(SettingError, match=r"--x: must be an integer in \[2, 64\], not 1"):
        rule.check("--x", 1, int)
    with pytest.raises(SettingError, match="must be an integer"):
        rule.check("--x", "8", int)  # a string is not a count, even a numeric one
    with pytest.raises(SettingError, match="must be an integer"):
        rule.check("--x", True, int)
    with pytest.raises(SettingError, match=r"in \(0, 1\]"):
        Rule(low=0, high=1, low_open=True).check("--f", float("nan"), float)
    Rule(low=1, special=(-1,)).check("--max_epochs", -1, int)


def test_registry_builds_each_variant_network():
    assert {"clgnet", "no-wavelet", "no-sfl", "sa", "tran", "unet"} <= set(networks())
    assert {"with-cl", "no-cl", "no-negative"}.isdisjoint(networks())  # CLGNet's network
    tiny = dict(chans=8, num_sfrir=1, num_sfrb=1)
    plain = repr(CLGNet(**tiny))
    for name in ("no-wavelet", "no-sfl", "sa", "tran"):
        built = repr(build_network(name, **tiny))
        assert built != plain and built == repr(CLGNet(**tiny, **VARIANTS[name].network)), name
    # The loss rows name their alpha, so that they keep their meaning whatever the default.
    assert VARIANTS["with-cl"].training == {"alpha": PAPER_ALPHA}
    assert VARIANTS["no-cl"].training == {"alpha": 0.0}
    assert VARIANTS["no-negative"].training == {"alpha": PAPER_ALPHA, "use_negatives": False}
    # Every CLGNet variant's arguments are CLGNetModule settings.
    for name, variant in VARIANTS.items():
        if variant.model == "clgnet":
            assert set(variant.kwargs) <= set(CLGNetModule.RULES), name




BAD_TRAIN = [
    (["--accelerations", "0"], "--accelerations"),
    (["--accelerations", "1"], "--accelerations"),
    (["--accelerations", "1000"], "--accelerations"),
    (["--center_fractions", "1.5"], "--center_fractions"),
    (["--center_fractions", "0"], "--center_fractions"),
    (["--center_fractions", "1"], "--center_fractions"),
    (["--accelerations", "4", "8"], "--center_fractions"),
    (["--batch_size", "0"], "--batch_size"),
    (["--max_epochs", "-5"], "--max_epochs"),
    (["--max_steps", "0"], "--max_steps"),
    (["--num_workers", "-1"], "--num_workers"),
    (["--check_val_every_n_epoch", "0"], "--check_val_every_n_epoch"),
    (["--crop_size", "0", "0"], "--crop_size"),
    (["--sample_rate", "2"], "--sample_rate"),
    (["--sample_rate", "0"], "--sample_rate"),
    (["--chans", "0"], "--chans"),
    (["--chans", "200000"], "--chans"),
    (["--num_sfrir", "0"], "--num_sfrir"),
    (["--k_negatives", "-1"], "--k_negatives"),
    (["--alpha", "-1"], "--alpha"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--wavelet", "bior1.3"], "--wavelet"),
    (["--wavelet", "nosuch"], "--wavelet"),
    (["--global_module", "cnn"], "--global_module"),
    (["--precision", "17"], "--precision"),
    (["--strategy", "nosuch"], "--strategy"),
    (["--mask_type", "spiral"], "--mask_type"),
    (["--accelerator", "quantum"], "--accelerator"),
    (["--lr_schedule", "linear"], "--lr_schedule"),
    (["--num_nodes", "0"], "--num_nodes"),
]


@pytest.mark.reliability
@pytest.mark.parametrize("argv, option", BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_train_values_are_one_line_errors_before_any_work(argv, option, refused_train):
    assert option in refused_train(argv)


@pytest.mark.reliability
def test_a_layout_variable_it_cannot_use_is_one_line_before_any_work(refused_train,
                                                                      monkeypatch):
    monkeypatch.setenv("CLGNET_LAYOUT", "rows")
    monkeypatch.setattr(layout, "_fixed", None)  # read the variable again
    assert "CLGNET_LAYOUT" in refused_train([])


BAD_OTHER = [
    (["bench", "quality", "--max-steps", "0"], "--max-steps"),
    (["bench", "quality", "--minutes", "0"], "--minutes"),
    (["bench", "quality", "--acceleration", "1"], "--acceleration"),
    (["bench", "quality", "--center-fraction", "1"], "--center-fraction"),
    (["bench", "quality", "--batch-size", "0"], "--batch-size"),
    (["bench", "quality", "--models", "clgnet:chans=0"], "chans"),
    (["bench", "quality", "--models", "clgnet:nosuch=1"], "nosuch"),
    (["bench", "speed", "--device", "tpu:0"], "--device"),
    (["bench", "speed", "--threads", "0"], "--threads"),
    (["predict", "--checkpoint", "x.ckpt", "--data_path", "d", "--output", "o",
      "--accelerations", "0", "--center_fractions", "0.08"], "--accelerations"),
    (["predict", "--checkpoint", "x.ckpt", "--data_path", "d", "--output", "o",
      "--batch_size", "0"], "--batch_size"),
]


@pytest.mark.reliability
@pytest.mark.parametrize("argv, option", BAD_OTHER, ids=[" ".join(a) for a, _ in BAD_OTHER])
def test_bad_values_of_other_commands_are_one_line_errors(argv, option, run_cli):
    code, lines = run_cli(argv)
    assert code == 2
    assert len(lines) == 1 and "error:" in lines[0] and option in lines[0], lines


@pytest.mark.reliability
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("argv, option", [
    (["train", "--accelerator", "gpu"], "--accelerator gpu"),
    (["train", "--accelerator", "cuda", "--devices", "2"], "--accelerator cuda"),
    (["bench", "speed", "--device", "cuda"], "--device cuda"),
    (["predict", "--checkpoint", "x.ckpt", "--data_path", "d", "--output", "o",
      "--device", "cuda:0"], "--device cuda:0"),
])
def test_a_missing_gpu_is_named(argv, option, run_cli):
    code, lines = run_cli(argv)
    assert code == 2 and len(lines) == 1 and option in lines[0] and "CUDA" in lines[0], lines


@pytest.mark.reliability
def test_output_folder_must_be_a_writable_folder(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(SettingError, match="is a file"):
        check_output_dir("--default_root_dir", afile)
    with pytest.raises(SettingError, match="not a writable folder"):
        check_output_dir("--default_root_dir", afile / "below")
    with pytest.raises(SettingError, match="not a writable folder"):
        check_output_dir("--default_root_dir", Path("/proc/clgnet-test"))
    check_output_dir("--default_root_dir", tmp_path / "new" / "deeper")  # can be created


def save_module_checkpoint(path, hparams, state) -> None:
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)


TINY = dict(chans=4, num_sfrir=1, num_sfrb=1)


@pytest.fixture(scope="module")
def tiny_state():
    return {f"clgnet.{k}": v for k, v in CLGNet(**TINY).state_dict().items()}


@pytest.mark.reliability
@pytest.mark.parametrize("hparams, message", [
    ({"chans": "8"}, "chans: must be an integer"),
    ({"chans": 200000}, r"chans: must be an integer in \[1, 1024\]"),
    ({"num_sfrir": 10**9}, "num_sfrir"),
    ({"wavelet": "bior1.3"}, "wavelet: must be an orthogonal PyWavelets wavelet"),
    ({"global_module": ["fourier"]}, "global_module"),
    ({"alpha": float("inf")}, "alpha"),
])
def test_crafted_checkpoint_hyperparameters_are_refused_before_building(
        hparams, message, tmp_path, tiny_state):
    path = tmp_path / "crafted.ckpt"
    save_module_checkpoint(path, {**TINY, "wavelet": "haar", "global_module": "fourier",
                                  **hparams}, tiny_state)
    with pytest.raises(UserError, match=message) as info:
        load_clgnet(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.reliability
def test_mismatched_weights_are_one_line_naming_both(tmp_path, tiny_state):
    path = tmp_path / "wide.ckpt"
    hparams = {**TINY, "chans": 8, "wavelet": "haar", "global_module": "fourier"}
    save_module_checkpoint(path, hparams, tiny_state)  # 4-channel weights, chans=8 stated
    with pytest.raises(UserError) as info:
        load_clgnet(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and "chans=8" in text
    assert "tensors of another shape" in text


@pytest.mark.reliability
def test_truncated_checkpoint_is_named(tmp_path, tiny_state):
    path = tmp_path / "cut.ckpt"
    save_module_checkpoint(path, {**TINY, "wavelet": "haar", "global_module": "fourier"},
                           tiny_state)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_clgnet(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


@pytest.mark.reliability
def test_malicious_checkpoint_refusal_does_not_depend_on_torch_wording(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(marker)}, path)
    real_load = torch.load

    def reworded(*args, **kwargs):
        try:
            return real_load(*args, **kwargs)
        except Exception as exc:
            raise type(exc)("Weights only load failed: unsupported GLOBAL somewhere") from None

    monkeypatch.setattr(torch, "load", reworded)
    with pytest.raises(UserError, match="refused to load.*pathlib") as info:
        load_clgnet(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


# -- --help -----------------------------------------------------------------------------------


def every_option():
    """``(command, action)`` of every option of every command and bench subcommand."""
    from clgnet_fastmri.cli import COMMANDS, command_parser

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            elif action.dest != "help":
                yield name, action

    for command in COMMANDS:
        yield from walk(command_parser(command), command)


def shown_help(action) -> str:
    from clgnet_fastmri.cli import HelpFormatter

    return HelpFormatter("prog")._expand_help(action)


OPTIONS = list(every_option())
MODEL_PREFIX = re.compile(r"\b(?:clgnet|unet|varnet): ")


@pytest.mark.parametrize("command, action", OPTIONS,
                         ids=[f"{c} {a.option_strings[-1] if a.option_strings else a.dest}"
                              for c, a in OPTIONS])
def test_every_option_says_what_it_does_and_its_default_once(command, action):
    text = shown_help(action)
    assert len(text.split()) >= 2, text  # a phrase, not a bare word
    assert "(default: None)" not in text
    if action.required:
        assert not re.search(r"\bdefault\b", text), text
    # Model options state each model's own default: one per model.
    for part in MODEL_PREFIX.split(text):
        assert len(re.findall(r"\bdefault\b", part, re.I)) <= 1, text


def test_help_states_the_allowed_values_validate_enforces():
    from clgnet_fastmri.settings import SHARED

    checked = 0
    for command, action in OPTIONS:
        if action.dest in SHARED and action.nargs != 0:
            if action.choices is not None and action.metavar is None:
                continue  # argparse lists them: {a,b,c}
            kind, rule = SHARED[action.dest]
            rule = getattr(action.type, "rule", rule)  # e.g. bench quality --max-steps >= 1
            allowed = ", ".join(map(str, action.choices or ())) or rule.describe(kind)
            assert allowed in shown_help(action), (command, action)
            checked += 1
    assert checked > 20
    chans = dict((a.dest, a) for c, a in OPTIONS if c == "train")["chans"]
    assert shown_help(chans).count("an integer in [1, 1024]") == 3  # CLGNet, U-Net, VarNet


# -- a run's configuration: config.yaml, --config, both spellings -----------------------------


def train_config(*argv: str):
    from clgnet_fastmri import cli
    from clgnet_fastmri.config import resolve

    return resolve(cli.parse(cli.command_parser("train"), argv))


ROUND_TRIP = ["--crop_size", "24", "24", "--no_negatives", "--wavelet", "none",
              "--vgg_weights", "random", "--accelerations", "4", "8", "--center_fractions",
              "0.08", "0.04", "--max_epochs", "3", "--gpus", "0"]


def test_config_file_reproduces_the_resolved_config(tmp_path):
    from clgnet_fastmri.config import write_config

    config = train_config("--data_path", str(tmp_path), "--default_root_dir",
                          str(tmp_path / "run"), *ROUND_TRIP)
    assert (config.accelerator, config.crop_size, config.model_args["wavelet"]) == \
        ("cpu", (24, 24), None)
    tmp_path.joinpath("run").mkdir()
    path = write_config(config, tmp_path / "run")
    assert train_config("--config", str(path)) == config
    # Typed options override the file's, in either spelling.
    again = train_config("--config", str(path), "--batch-size", "3", "--chans", "6")
    assert (again.batch_size, again.model_args["chans"]) == (3, 6)
    assert again.model_args["wavelet"] is None and again.accelerations == (4, 8)


def test_every_option_takes_both_spellings(tmp_path):
    from clgnet_fastmri import cli

    config = train_config("--data-path", str(tmp_path), "--skip-bad-files",
                          "--center-fractions", "0.1", "--num_sfrir=2")
    assert config.skip_bad_files and config.center_fractions == (0.1,)
    assert config.model_args["num_sfrir"] == 2
    convert = cli.command_parser("convert")
    args = convert.parse_args(["in", "out", "--format", "nifti", "--skip_bad_files",
                               "--center_fractions", "0.1", "0.05"])
    assert args.skip_bad_files and args.center_fractions == [0.1, 0.05]
    # Help shows the one spelling each option is defined with.
    assert "--skip-bad-files" in convert.format_help()
    assert "--skip_bad_files" not in convert.format_help()


@pytest.mark.reliability
@pytest.mark.parametrize("values, argv", [
    ("batch_size: 0\n", ["--batch_size", "0"]),
    ("chans: 0\n", ["--chans", "0"]),
    ("mask_type: spiral\n", ["--mask_type", "spiral"]),
    ("center-fractions: [1.5]\n", ["--center_fractions", "1.5"]),
])
def test_a_bad_config_value_is_the_same_line_as_the_option(values, argv, tmp_path,
                                                           refused_train):
    path = tmp_path / "config.yaml"
    path.write_text(values)
    assert refused_train(["--config", str(path)]) == refused_train(argv)


@pytest.mark.reliability
@pytest.mark.parametrize("text, words", [
    ("nosuch: 1\n", ["unknown option 'nosuch'"]),
    ("- a list\n", ["not a configuration"]),
    ("config: other.yaml\n", ["unknown option 'config'"]),
])
def test_a_config_file_that_is_not_one_is_one_line(text, words, tmp_path, refused_train):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    line = refused_train(["--config", str(path)])
    assert all(word in line for word in words), line
