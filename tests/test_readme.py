"""The README's Usage section, run literally: every ```bash block, line by line, in order.

The blocks are a walk-through on tiny synthetic data, so the README cannot drift from the
code. Each command runs through bash in one temporary working directory with this
repository's code and the venv's ``clgnet-fastmri`` first on PATH; downloads are made to fail
at once (the VGG19 cache is an empty temporary folder and the HTTP(S) proxy a closed port).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def usage_commands(markdown: str) -> List[str]:
    """The commands of the ``## Usage`` section's ```bash blocks, in order.

    Backslash-continued lines are joined; blank lines and comment lines are skipped.
    """
    match = re.search(r"^## Usage\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    if match is None:
        raise ValueError("README has no '## Usage' section")
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", match.group(1), re.M | re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1].rstrip() + " "
                continue
            commands.append(" ".join((pending + line.strip()).split()))
            pending = ""
        if pending:
            raise ValueError(f"README Usage block ends inside a continued line: {pending!r}")
    return commands


def test_usage_parser_joins_continuations_and_skips_comments():
    text = (
        "# t\n\n## Usage\n\nprose\n\n```bash\n# a comment\ncmd one --x 1 \\\n"
        "    --y 2\n\ncmd two  # trailing\n```\n\n```python\nnot bash\n```\n\n"
        "### Sub\n\n```bash\ncmd three\n```\n\n## Other\n\n```bash\ncmd four\n```\n"
    )
    assert usage_commands(text) == ["cmd one --x 1 --y 2", "cmd two # trailing", "cmd three"]
    with pytest.raises(ValueError, match="continued line"):
        usage_commands("## Usage\n```bash\ncmd \\\n```\n")


def test_usage_is_a_complete_walk_through():
    commands = usage_commands(README.read_text())
    subcommands = [c.split()[1] for c in commands]
    assert all(c.startswith("clgnet-fastmri ") for c in commands)
    assert subcommands == ["make-data", "train", "train", "predict", "evaluate", "bench",
                           "bench"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def readme_env(workdir):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TORCH_HOME"] = str(workdir / ".torch")  # no ImageNet VGG19 cached
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[proxy] = "http://127.0.0.1:9"  # the discard port: a download fails at once
    for key in ("no_proxy", "NO_PROXY"):
        env.pop(key, None)
    env["MPLBACKEND"] = "Agg"
    return env


_failed: List[str] = []


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", usage_commands(README.read_text()), ids=lambda c: "-".join(c.split()[1:3])
)
def test_usage_command_runs_as_written(command, workdir, readme_env):
    if _failed:
        pytest.skip(f"an earlier README command failed: {_failed[0]}")
    result = subprocess.run(
        ["bash", "-c", command], cwd=workdir, env=readme_env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    output = result.stdout
    if result.returncode != 0:
        _failed.append(command)
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{output[-3000:]}"
