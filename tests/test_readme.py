"""The README's commands are real: the two opening ones are what CI and the demo test run,
and every flag of every command line in the guide exists in that command's ``--help``."""

from __future__ import annotations

import re
import shlex
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = ROOT / ".venv" / "bin"


def bash_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]


@cache
def help_text(*command: str) -> str:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, (command, result.stderr)
    return result.stdout


def test_the_two_opening_commands_are_what_ci_and_the_demo_test_run():
    first, second = bash_lines()[:2]
    assert first == "bash scripts/install.sh && .venv/bin/ringcache-demo"
    assert second == "bash scripts/test.sh"
    assert "bash scripts/install.sh" in (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_flag_in_the_guide_exists():
    checked = 0
    for line in bash_lines()[2:]:
        if not line:
            continue
        words = shlex.split(line)
        program = words[0]
        assert program in ("cachenode", "mountd", "cachectl", "s3gate"), line
        command = [program]
        if program == "cachectl":
            # The sub-command (and action) is the first word that is neither a flag nor
            # a flag's value; every flag of these lines takes a value.
            positional = [
                w for i, w in enumerate(words[1:], 1)
                if not w.startswith("-") and not words[i - 1].startswith("--")
            ]  # fmt: skip
            command.append(positional[0])
            if positional[0] in ("token", "config"):
                command.append(positional[1])
        text = help_text(*command)
        for word in words[1:]:
            if word.startswith("--"):
                flag = word.split("=")[0]
                known = text if program != "cachectl" else text + help_text("cachectl")
                assert re.search(rf"{re.escape(flag)}\b", known), (line, flag)
                checked += 1
    assert checked > 20
