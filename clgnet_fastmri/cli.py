"""The ``clgnet-fastmri`` command: one entry point, one module per subcommand.

Each subcommand lives in the module that does its work; that module provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
subcommand is used, so ``clgnet-fastmri --help`` answers without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence

from .errors import UserError, user_message

# name -> (module, one-line help)
COMMANDS = {
    "make-data": (
        "clgnet_fastmri.data.synthetic",
        "write a synthetic dataset in the fastMRI HDF5 layout",
    ),
    "convert": (
        "clgnet_fastmri.data.convert",
        "convert CC-359 raw k-space or NIfTI volumes into a fastMRI dataset (train/val/test)",
    ),
    "train": (
        "clgnet_fastmri.train_clgnet_demo",
        "train or test CLGNet (fastmri's train_unet_demo.py, for CLGNet on Lightning 2)",
    ),
    "predict": (
        "clgnet_fastmri.predict",
        "reconstruct a test/challenge folder into a checked leaderboard submission (+ zip)",
    ),
    "evaluate": (
        "clgnet_fastmri.evaluate",
        "score reconstructions with the official fastMRI metrics (NMSE, PSNR, SSIM)",
    ),
    "bench": ("clgnet_fastmri.bench", "speed and quality benchmarks against fastmri's U-Net"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: ``clgnet-fastmri CMD: error: ...`` (exit 2), and
    every long option in both spellings: ``--a_b`` also as ``--a-b`` and the other way round
    (fastmri's scripts use ``_``, most command-line tools ``-``); help shows the one it
    defines. Subcommands' parsers (``bench speed``, ...) are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _parse_optional(self, arg_string: str):  # argparse's one lookup of an option string
        return super()._parse_optional(self._defined_spelling(arg_string))

    def _defined_spelling(self, arg_string: str) -> str:
        """``--a-b[=v]`` as ``--a_b[=v]`` when that is the option defined (or vice versa)."""
        option, sep, value = arg_string.partition("=")
        if not option.startswith("--") or option in self._option_string_actions:
            return arg_string
        body = option[2:]
        for spelling in (body.replace("-", "_"), body.replace("_", "-")):
            if f"--{spelling}" in self._option_string_actions:
                return f"--{spelling}{sep}{value}"
        return arg_string


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help, then its default once: not where the help states it already, and
    not for required options, switches or options that default to nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or action.nargs == 0 or action.default in (None, argparse.SUPPRESS)
                or re.search(r"\bdefault\b", text, re.I)):
            return text
        return f"{text} (default: {_shown(action.default)})"


def _shown(default: object) -> str:
    """A default as it is typed: ``4 8``, not ``[4, 8]``; ``%`` escaped for argparse."""
    if isinstance(default, (list, tuple)):
        default = " ".join(str(item) for item in default)
    return str(default).replace("%", "%%")


def option_flags(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """``dest -> option string`` of a parser and its subcommands' parsers."""
    flags: Dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags.update(option_flags(sub))
        elif action.option_strings:
            flags[action.dest] = max(action.option_strings, key=len)
    return flags


def config_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Optional[Path]:
    """The ``--config FILE`` among ``argv``, for a command that has that option."""
    if "config" not in option_flags(parser):
        return None
    pre = _Parser(prog=parser.prog, add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    return pre.parse_known_args(list(argv))[0].config


def config_argv(parser: argparse.ArgumentParser, values: Mapping[str, Any],
                source: str) -> List[str]:
    """``values`` (``{option: value}``, either spelling, as a run's ``config.yaml`` holds them)
    as the command-line options that give them: put before the typed options, which override
    them, they go through the same parsing and checks, so a bad value in a file is refused
    with the same line as on the command line. ``source`` names the file in the errors."""
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    argv: List[str] = []
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest == "config":
            raise UserError(f"{source}: unknown option {key!r} (not an option of {parser.prog})")
        argv += _option_argv(actions[dest], value, source)
    return argv


def _option_argv(action: argparse.Action, value: Any, source: str) -> List[str]:
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:  # a switch: given when the value is the one it stores
        if not isinstance(value, bool):
            raise UserError(f"{source}: {flag}: must be true or false, not {value!r}")
        return [flag] if value == action.const else []
    if value is None:
        none = getattr(getattr(action.type, "rule", None), "none", None)
        if none is not None:
            return [f"{flag}={none}"]
        if action.default is None:
            return []
        raise UserError(f"{source}: {flag}: must be given a value, not null")
    if isinstance(value, (list, tuple)):
        return [flag, *map(str, value)]
    return [f"{flag}={value}"]


def _top_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clgnet-fastmri",
        description="CLGNet for fastMRI: data, training, submission export and scoring.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from . import __version__

    return f"clgnet-fastmri {__version__}"


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``: its module's options, each with its allowed values."""
    module_name, help_text = COMMANDS[name]
    parser = _Parser(prog=f"clgnet-fastmri {name}", description=help_text,
                     formatter_class=HelpFormatter)
    importlib.import_module(module_name).add_arguments(parser)
    importlib.import_module("clgnet_fastmri.settings").describe_allowed(parser)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """A command's options: a ``--config`` file's values first, the typed options overriding
    them, all checked (``settings.validate``) before any of them is used."""
    argv = list(argv)
    config = config_file(parser, argv)
    if config is not None:
        values = importlib.import_module("clgnet_fastmri.config").read_config(config)
        argv = [*config_argv(parser, values, f"--config {config}"), *argv]
    args = parser.parse_args(argv)
    importlib.import_module("clgnet_fastmri.settings").validate(args, option_flags(parser))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        _top_parser().print_help(sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        _top_parser().parse_args(argv)  # --help, --version, or an error naming the command
        return 2
    name, rest = argv[0], argv[1:]
    parser = command_parser(name)
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.run(parse(parser, rest)) or 0)
    except UserError as exc:
        print(f"clgnet-fastmri {name}: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clgnet-fastmri {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
