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
from typing import Dict, NoReturn, Optional, Sequence

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
    """argparse with its errors on one line: ``clgnet-fastmri CMD: error: ...`` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def _flags(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """``dest -> option string`` of a parser and its subcommands' parsers."""
    flags: Dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags.update(_flags(sub))
        elif action.option_strings:
            flags[action.dest] = max(action.option_strings, key=len)
    return flags


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
    settings = importlib.import_module("clgnet_fastmri.settings")
    args = parser.parse_args(rest)
    try:
        # Every command's values are checked here, before any of them is used.
        settings.validate(args, _flags(parser))
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"clgnet-fastmri {name}: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clgnet-fastmri {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
