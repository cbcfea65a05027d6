"""Settings: constructor signatures as command-line arguments, and the checks all commands share.

A setting's default and type live in one constructor signature (``CLGNetModule.__init__``);
its allowed values and help live in a ``Rule`` beside it (``CLGNetModule.RULES``).
``add_signature_arguments`` turns the two into argparse arguments (``add_model_arguments``
for a command that trains several models), ``model_kwargs`` reads the chosen model's back,
and ``check_hparams`` applies the same rules to the hyperparameters stored in a checkpoint
before a network is built from them.

Options shared by several commands (masks, batch size, trainer, device, ...) are checked by
``validate``, which ``clgnet-fastmri`` runs on every command's arguments after parsing and
before any work (values from a ``--config`` file included: they are parsed as options). Every
failure is a one-line ``SettingError`` naming the option and the allowed values.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union, get_type_hints

import pywt
import torch
from pytorch_lightning.strategies import StrategyRegistry

from .data.fastmri_layout import MASK_TYPES, MAX_ACCELERATION, MIN_ACCELERATION
from .errors import UserError
from .files import writable


class SettingError(UserError):
    """A setting outside its allowed values; the message names the option and the range."""


#: ``Trainer(precision=...)`` values Lightning 2 accepts on the command line.
PRECISIONS = ("16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true",
              "transformer-engine", "transformer-engine-float16", "16", "32", "64", "bf16")
#: Precisions that convert the model's weights (no float32 master copy).
TRUE_PRECISIONS = ("bf16-true", "16-true")
#: Cap on network widths read from arguments or checkpoints: a crafted value cannot make the
#: loader allocate without bound (C = 1024 already means ~1e9 parameters).
MAX_CHANS = 1024
#: CPU-side accelerators and those Lightning can look for on this machine.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def orthogonal_wavelets() -> tuple:
    """PyWavelets' orthogonal discrete wavelets (the DWT layers need an orthogonal bank)."""
    return tuple(w for w in pywt.wavelist(kind="discrete") if pywt.Wavelet(w).orthogonal)


@dataclass(frozen=True)
class Rule:
    """Allowed values of one setting and its help text.

    ``low``/``high`` bound numbers (inclusive; ``low_open``/``high_open`` exclude them),
    ``what`` describes the allowed values where listing them would be too long, ``special``
    lists extra allowed numbers outside them (Lightning's -1 = unlimited), ``choices`` lists
    allowed values, ``none`` is how None is spelled on the command line, ``flag`` the switch
    of a boolean that defaults to True (it stores False), ``cli_default`` a command-line
    default that differs from the constructor's (resolved by the command).
    """

    help: str = ""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    special: Sequence[float] = ()
    choices: Optional[Union[Sequence[Any], Callable[[], Sequence[Any]]]] = None
    none: Optional[str] = None
    flag: Optional[str] = None
    cli_default: Any = inspect.Parameter.empty
    what: Optional[str] = None

    def allowed(self) -> Sequence[Any]:
        return self.choices() if callable(self.choices) else self.choices

    def describe(self, kind: type) -> str:
        """``"an integer in [2, 64]"``, ``"one of a, b"``, ..."""
        if self.what is not None:
            return self.what
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.allowed())
        noun = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "text")
        if self.low is None and self.high is None:
            return noun
        if self.high is None:
            bound = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.low is None:
            bound = f"<= {_num(self.high)}"
        else:
            bound = (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                     f"{')' if self.high_open else ']'}")
        extra = "".join(f" or {_num(s)}" for s in self.special)
        return f"{noun} {bound}{extra}"

    def check(self, name: str, value: Any, kind: type) -> None:
        """Raise ``SettingError("<name>: must be ..., not <value>")`` unless ``value`` fits."""
        if value is None and self.none is not None:
            return
        if not _is_kind(value, kind) or not self._fits(value):
            raise SettingError(f"{name}: must be {self.describe(kind)}, not {value!r}")

    def _fits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.allowed()
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True
        if value in self.special:
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is None:
            return True
        return value < self.high if self.high_open else value <= self.high

    def parser(self, kind: type, flag: str) -> Callable[[str], Any]:
        """argparse ``type=``: text -> value of ``kind`` within the rule (else a usage error)."""

        def parse(text: str) -> Any:
            if self.none is not None and text.lower() == self.none:
                return None
            try:
                value = _BOOLS[text.lower()] if kind is bool else kind(text)
            except (ValueError, KeyError):
                raise argparse.ArgumentTypeError(
                    f"must be {self.describe(kind)}, not {text!r}"
                ) from None
            try:
                self.check(flag, value, kind)
            except SettingError as exc:
                raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None
            return value

        parse.__name__ = kind.__name__  # argparse names the type in its messages
        parse.rule = self  # type: ignore[attr-defined]  # for the help: describe_allowed
        return parse


_BOOLS = {"true": True, "false": False}


def _num(x: float) -> str:
    return f"{x:g}"


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


# -- signatures -------------------------------------------------------------------------------


def signature_settings(cls: type) -> Dict[str, tuple]:
    """``{name: (default, type)}`` of ``cls.__init__``'s keyword parameters (Optional[X] -> X)."""
    hints = get_type_hints(cls.__init__)
    out = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        untyped = str if param.default in (None, param.empty) else type(param.default)
        kind = hints.get(name, untyped)
        args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
        out[name] = (param.default, args[0] if args else kind)
    return out


def signature_defaults(cls: type) -> Dict[str, Any]:
    """The defaults of ``cls.__init__``: where the paper's settings are stated."""
    return {name: default for name, (default, _) in signature_settings(cls).items()}


def add_signature_arguments(
    parser: Union[argparse.ArgumentParser, argparse._ArgumentGroup],
    cls: type,
    rules: Mapping[str, Rule],
) -> None:
    """One ``--name`` per ``cls.__init__`` parameter: its default and type from the signature,
    allowed values and help from ``rules`` (which must cover every parameter)."""
    settings = signature_settings(cls)
    if set(settings) != set(rules):
        raise TypeError(f"{cls.__name__}: rules {sorted(rules)} do not match the signature "
                        f"{sorted(settings)}")
    for name, (default, kind) in settings.items():
        rule = rules[name]
        if kind is bool:
            flag = rule.flag or f"--{name}"
            action = "store_false" if default else "store_true"
            parser.add_argument(flag, dest=name, action=action, default=default, help=rule.help)
            continue
        if rule.cli_default is not inspect.Parameter.empty:
            default = rule.cli_default
        flag = f"--{name}"
        parser.add_argument(flag, type=rule.parser(kind, flag), default=default,
                            metavar=name.upper(), help=rule.help)


class _Unset:
    """Default of an option whose default depends on another option (``--model``)."""

    def __repr__(self) -> str:
        return "the model's"


#: Value of a model option the user did not give; ``model_kwargs`` puts the model's default.
UNSET = _Unset()


def add_model_arguments(
    parser: argparse.ArgumentParser,
    models: Mapping[str, tuple],
    default: str,
    help: str = "",
) -> None:
    """``--model`` and the union of the models' options, for one command that trains several.

    ``models`` maps each ``--model`` value to ``(cls, rules)`` as ``add_signature_arguments``
    takes them. An option two models share (``--chans``, ``--lr``, ...) is one argument whose
    default and allowed values follow ``--model``: every option defaults to ``UNSET``, and
    ``model_kwargs`` puts the chosen model's default and checks its rule.
    """
    parser.add_argument("--model", choices=tuple(models), default=default, help=help)
    group = parser.add_argument_group("model (defaults and allowed values follow --model)")
    owners: Dict[str, list] = {}
    for model, (cls, rules) in models.items():
        settings = signature_settings(cls)
        if set(settings) != set(rules):
            raise TypeError(f"{cls.__name__}: rules {sorted(rules)} do not match the "
                            f"signature {sorted(settings)}")
        for name, (default_value, kind) in settings.items():
            owners.setdefault(name, []).append((model, kind, rules[name], default_value))
    for name, owned in owners.items():
        kinds = {kind for _, kind, _, _ in owned}
        if len(kinds) > 1:
            raise TypeError(f"--{name}: the models disagree on its type ({kinds})")
        kind = kinds.pop()
        text = "; ".join(f"{model}: {rule.help}" + _default_and_range(rule, value, kind)
                         for model, _, rule, value in owned)
        if kind is bool:
            (model, _, rule, value), = owned  # a switch belongs to one model
            parser_flag = rule.flag or f"--{name}"
            group.add_argument(parser_flag, dest=name, action="store_const", const=not value,
                               default=UNSET, help=text)
            continue
        # Values are checked against the chosen model's rule by model_kwargs; one model's rule
        # already applies while parsing.
        rule = owned[0][2] if len(owned) == 1 else Rule()
        group.add_argument(f"--{name}", type=rule.parser(kind, f"--{name}"), default=UNSET,
                           metavar=name.upper(), help=text)


def _default_and_range(rule: Rule, default: Any, kind: type) -> str:
    """`` (default 32, an integer in [1, 1024])``; nothing for a switch."""
    if kind is bool:
        return ""
    return f" (default {_model_default(rule, default)!r}, {rule.describe(kind)})"


def _model_default(rule: Rule, default: Any) -> Any:
    return default if rule.cli_default is inspect.Parameter.empty else rule.cli_default


def model_kwargs(values: Mapping[str, Any], models: Mapping[str, tuple], model: str
                 ) -> Dict[str, Any]:
    """``model``'s constructor arguments from parsed options (``values``) that
    ``add_model_arguments`` added: the given values checked against its rules, the others at
    its defaults. An option of another model only is refused (it would be ignored)."""
    cls, rules = models[model]
    settings = signature_settings(cls)
    for other_model, (other, other_rules) in models.items():
        for name in signature_settings(other):
            if name not in settings and values.get(name, UNSET) is not UNSET:
                flag = other_rules[name].flag or f"--{name}"
                raise SettingError(f"{flag}: an option of --model {other_model}, not of "
                                   f"--model {model}; drop it or choose --model {other_model}")
    out = {}
    for name, (default, kind) in settings.items():
        value = values.get(name, UNSET)
        if value is UNSET:
            value = _model_default(rules[name], default)
        else:
            rules[name].check(rules[name].flag or f"--{name}", value, kind)
        out[name] = value
    return out


def check_hparams(hparams: Mapping[str, Any], settings: Mapping[str, tuple],
                  rules: Mapping[str, Rule], source: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``settings`` (``{name: (default, type)}``, see ``signature_settings``) read from
    ``hparams`` (e.g. a checkpoint's), each checked against its rule and type; a missing one
    takes its default. Raises ``UserError`` naming ``source`` and the setting."""
    out = {}
    for name, (default, kind) in settings.items():
        value = hparams.get(name, default)
        try:
            rules[name].check(name, value, kind)
        except SettingError as exc:
            raise UserError(f"{source}: hyperparameter {exc}; the file is damaged or was not "
                            "written by clgnet-fastmri train") from None
        out[name] = value
    return out


# -- options shared by the commands -----------------------------------------------------------

_COUNT = Rule(low=1)
_FRACTION = Rule(low=0, high=1, low_open=True)
#: Rules of options several commands share, by argparse ``dest``; ``validate`` applies them
#: to whichever of these a command has (list values element by element).
SHARED: Dict[str, tuple] = {
    "accelerations": (int, Rule(low=MIN_ACCELERATION, high=MAX_ACCELERATION)),
    "acceleration": (int, Rule(low=MIN_ACCELERATION, high=MAX_ACCELERATION)),
    "center_fractions": (float, Rule(low=0, high=1, low_open=True, high_open=True)),
    "center_fraction": (float, Rule(low=0, high=1, low_open=True, high_open=True)),
    "mask_type": (str, Rule(choices=MASK_TYPES)),
    "batch_size": (int, _COUNT),
    "num_workers": (int, Rule(low=0)),
    "crop_size": (int, _COUNT),
    "sample_rate": (float, _FRACTION),
    "val_sample_rate": (float, _FRACTION),
    "volume_sample_rate": (float, _FRACTION),
    "val_volume_sample_rate": (float, _FRACTION),
    "max_epochs": (int, Rule(low=1, special=(-1,))),
    "max_steps": (int, Rule(low=1, special=(-1,))),
    "limit_train_batches": (float, Rule(low=0, low_open=True)),
    "limit_val_batches": (float, Rule(low=0)),
    "check_val_every_n_epoch": (int, _COUNT),
    "checkpoint_every_n_steps": (int, _COUNT),
    "log_every_n_steps": (int, _COUNT),
    "num_nodes": (int, _COUNT),
    "threads": (int, _COUNT),
    "precision": (str, Rule(choices=PRECISIONS)),
    "accelerator": (str, Rule(choices=ACCELERATORS)),
    "gpus": (int, Rule(low=0, special=(-1,))),
}


def describe_allowed(parser: argparse.ArgumentParser) -> None:
    """Add to the help of each option ``SHARED`` checks (subcommands' included) the values it
    allows, as ``validate``'s errors state them, and to an option whose metavar hides its
    choices the choices (argparse shows the others' in braces)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                describe_allowed(sub)
        elif action.choices is not None and action.metavar is not None:
            action.help = f"{action.help} (one of {', '.join(map(str, action.choices))})"
        elif action.dest in SHARED and action.choices is None and action.nargs != 0:
            kind, rule = SHARED[action.dest]
            rule = getattr(action.type, "rule", rule)  # an option's own, stricter rule
            each = "each " if action.nargs not in (None, "?") else ""
            action.help = f"{action.help} ({each}{rule.describe(kind)})"


def check_layout_environment() -> None:
    """``CLGNET_LAYOUT``, when set, names layouts ``models.layout`` knows."""
    if os.environ.get("CLGNET_LAYOUT"):
        from .models import layout

        try:
            layout.fixed_choices()
        except ValueError as err:
            raise SettingError(str(err)) from None


def validate(args: argparse.Namespace, flags: Mapping[str, str]) -> None:
    """Check a command's parsed arguments before it does any work.

    ``flags`` maps each ``dest`` to the option as the user typed it (for the messages).
    Raises ``SettingError`` for the first value out of range or inconsistent with another.
    """
    values = vars(args)
    for dest, (kind, rule) in SHARED.items():
        value = values.get(dest)
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            rule.check(flags.get(dest, f"--{dest}"), item, kind)
    # A contradicting synonym first (it explains the checks below), which then see what the
    # synonyms stand for: ``--gpus 2`` is checked as ``--accelerator gpu --devices 2``.
    values = {**values, **resolve_synonyms(values)}
    check_layout_environment()
    accelerations, fractions = values.get("accelerations"), values.get("center_fractions")
    if accelerations is not None and fractions is not None and \
            len(accelerations) != len(fractions):
        raise SettingError(
            f"{flags.get('accelerations')} and {flags.get('center_fractions')}: give one "
            f"center fraction per acceleration, not {len(fractions)} for {len(accelerations)}"
        )
    if values.get("strategy") is not None:
        check_strategy(flags.get("strategy", "--strategy"), values["strategy"])
    if values.get("accelerator") is not None:
        check_accelerator(flags.get("accelerator", "--accelerator"), values["accelerator"],
                          values.get("devices"))
    if isinstance(values.get("device"), str):
        check_device(flags.get("device", "--device"), values["device"])
    if values.get("default_root_dir") is not None:
        check_output_dir(flags.get("default_root_dir"), Path(values["default_root_dir"]))


def resolve_synonyms(values: Mapping[str, Any]) -> Dict[str, Any]:
    """The options that fastmri's (Lightning 1's) option names among ``values`` stand for.

    ``--gpus N`` is ``--accelerator gpu --devices N`` (``--gpus 0``: ``--accelerator cpu``);
    ``--resume_from_checkpoint PATH`` is ``--resume PATH`` for ``--mode train`` and
    ``--checkpoint PATH`` for ``--mode test/validate``. A synonym that contradicts the option
    it stands for is refused (``--gpus 2 --devices 4``), never guessed. Returns
    ``{option: value}`` to use instead of the given ones (nothing when no synonym is given).
    """
    out: Dict[str, Any] = {}
    gpus = values.get("gpus")
    if gpus is not None:
        accelerator, devices = values.get("accelerator", "auto"), values.get("devices", "auto")
        wanted = "cpu" if gpus == 0 else "gpu"
        if accelerator not in ("auto", wanted) and not (wanted == "gpu" and accelerator == "cuda"):
            raise SettingError(f"--gpus {gpus} and --accelerator {accelerator} contradict each "
                               "other; give one of them")
        if gpus != 0 and devices not in ("auto", gpus):
            raise SettingError(f"--gpus {gpus} and --devices {devices} contradict each other; "
                               "give one of them")
        if gpus != 0 and _gpu_count() == 0:
            raise SettingError(f"--gpus {gpus}: no CUDA GPU on this machine; use --gpus 0 "
                               "(the CPU)")
        out["accelerator"] = wanted if accelerator == "auto" else accelerator
        if gpus != 0:
            out["devices"] = gpus
    path = values.get("resume_from_checkpoint")
    if path is not None:
        if values.get("mode", "train") == "train":
            resume = values.get("resume")
            if resume == "last":
                resume = Path(values["default_root_dir"]) / "checkpoints" / "last.ckpt"
            _same_file("--resume", resume, path)
            out["resume"] = str(path)
        else:
            _same_file("--checkpoint", values.get("checkpoint"), path)
            out["checkpoint"] = Path(path)
    return out


def _same_file(flag: str, given: Any, path: Any) -> None:
    if given is not None and Path(given).resolve() != Path(path).resolve():
        raise SettingError(f"--resume_from_checkpoint {path} and {flag} {given} name different "
                           "checkpoints; give one of them")


def check_strategy(flag: str, strategy: str) -> None:
    known = ("auto", *StrategyRegistry.available_strategies())
    if strategy not in known:
        raise SettingError(f"{flag}: must be one of auto, ddp, ddp_spawn, "
                           f"ddp_find_unused_parameters_true, fsdp, ... (Lightning's "
                           f"strategies), not {strategy!r}")


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_accelerator(flag: str, accelerator: str, devices: Any = None) -> None:
    """The accelerator exists on this machine, with at least ``devices`` devices."""
    if accelerator in ("gpu", "cuda") and _gpu_count() == 0:
        mps = accelerator == "gpu" and torch.backends.mps.is_available()
        if not mps:
            raise SettingError(f"{flag} {accelerator}: no CUDA GPU on this machine; use "
                               "--accelerator cpu (or auto)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise SettingError(f"{flag} mps: no Apple MPS device on this machine; use cpu")
    if accelerator == "tpu":
        raise SettingError(f"{flag} tpu: TPUs are not supported by clgnet-fastmri; use gpu "
                           "or cpu")
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and \
            devices > max(_gpu_count(), 1):
        raise SettingError(f"--devices {devices}: this machine has {_gpu_count()} GPU(s)")
    if isinstance(devices, int) and devices < 1 and devices != -1:
        raise SettingError(f"--devices: must be >= 1, -1 (all) or auto, not {devices}")


def check_device(flag: str, device: str) -> None:
    """A ``torch.device`` string that names a device this machine has."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise SettingError(f"{flag}: must be cpu, cuda or cuda:N, not {device!r}") from None
    if parsed.type == "cuda":
        count = _gpu_count()
        if count == 0:
            raise SettingError(f"{flag} {device}: CUDA is not available on this machine; use "
                               "--device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise SettingError(f"{flag} {device}: this machine has {count} GPU(s) (cuda:0 to "
                               f"cuda:{count - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise SettingError(f"{flag} {device}: no Apple MPS device on this machine; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise SettingError(f"{flag}: must be cpu, cuda or cuda:N, not {device!r}")


def check_output_dir(flag: Optional[str], path: Path) -> None:
    """``path`` is (or can be created as) a writable folder."""
    flag = flag or "--default_root_dir"
    if path.exists() and not path.is_dir():
        raise SettingError(f"{flag} {path}: is a file, not a folder; give a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not writable(existing):
        raise SettingError(f"{flag} {path}: {existing} is not a writable folder; give a folder "
                           "you can write to")
