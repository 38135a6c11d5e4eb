"""The user documentation quotes command lines a reader copies: each must name a real command and
only options that command takes, so a renamed or removed option cannot outlive its description."""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import typer

from fewsam.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs"
# Placeholders and optional-part brackets a documented line may hold beside real tokens.
NOT_TOKENS = {"...", "[", "]", "|"}
FEWSAM_AT = re.compile(r"(?:^|\s)(?:python -m |-m )?fewsam\s")
LAUNCHER = "fewsam.distributed.launch"


def code_blocks(markdown: str) -> list[str]:
    """The text of every fenced (```) block and every indented (4-space) block of a Markdown page."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M)
    unfenced = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.S | re.M)
    blocks += ["\n".join(line[4:] for line in m.group(0).splitlines())
               for m in re.finditer(r"(?:^(?: {4}|\t)[^\n]*\n?)+", unfenced, flags=re.M)]
    return blocks


def command_lines(block: str) -> list[str]:
    """The fewsam command lines of a block (continuations joined, comments dropped), each from the
    word after ``fewsam``, or from ``fit`` for the torchrun launcher."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        if LAUNCHER in line and " fit " in line:
            lines.append(line[line.index(" fit ") + 1:])
            continue
        found = FEWSAM_AT.search(line)
        if found and "=" not in line[:found.start()] and "pip install" not in line:
            lines.append(line[found.end():])
    return lines


def documented_commands() -> list[tuple[str, str]]:
    """(page name, command line) for every fewsam command quoted in docs/*.md."""
    return [(page.name, line) for page in sorted(DOCS.glob("*.md"))
            for block in code_blocks(page.read_text()) for line in command_lines(block)]


@lru_cache(maxsize=1)
def root_command() -> Any:
    return typer.main.get_command(app)


def option_names(command: Any) -> set[str]:
    return {name for p in command.params for name in (*p.opts, *p.secondary_opts)} | {"--help"}


def problems_of(line: str) -> list[str]:
    """What in a documented command line fewsam would refuse: an unknown command or option."""
    tokens = [t for t in shlex.split(line.replace("[", " [ ").replace("]", " ] ")) if t not in NOT_TOKENS]
    ctx = typer.Context(root_command())
    command = root_command()
    while tokens and hasattr(command, "list_commands"):
        name = tokens.pop(0)
        sub = command.get_command(ctx, name)
        if sub is None:
            return [f"no command {name!r}"]
        command = sub
    known = option_names(command)
    options = [t.split("=")[0] for t in tokens if t.startswith("--")]
    return [f"no option {o} in {command.name}" for o in options if o not in known]


def test_the_docs_quote_fewsam_commands() -> None:
    """The extraction finds the commands of every page that shows them, so an empty list cannot pass."""
    pages = {page for page, _ in documented_commands()}
    assert {"fairness.md", "scaling.md"} <= pages
    assert any(line.startswith("fit fewshot") for _, line in documented_commands())


@pytest.mark.parametrize("page,line", documented_commands())
def test_a_documented_command_line_parses(page: str, line: str) -> None:
    assert problems_of(line) == [], f"{page}: fewsam {line}"


@pytest.mark.parametrize("line,problem", [
    ("evaluate --pred P --data D --made-up-option 3", "no option --made-up-option in evaluate"),
    ("fit fewshot --data D --out R --steps 5 --teleport", "no option --teleport in fewshot"),
    ("fit nosuchmethod --data D", "no command 'nosuchmethod'"),
    ("summon --data D", "no command 'summon'"),
])
def test_the_check_refuses_what_fewsam_refuses(line: str, problem: str) -> None:
    assert problems_of(line) == [problem]


def test_launcher_and_comments_are_read_as_the_fit_they_run() -> None:
    block = ("python -m fewsam.distributed.launch --nnodes 2 --rdzv-id x fit fewshot \\\n"
             "    --data D --out R   # a comment --not-an-option\n")
    assert command_lines(block) == ["fit fewshot      --data D --out R"]
