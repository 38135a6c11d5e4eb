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
        if found and "pip install" not in line:
            lines.append(line[found.end():])
    return lines


def documented_commands() -> list[tuple[str, str]]:
    """(page name, command line) for every fewsam command quoted in README.md and docs/*.md."""
    return [(page.name, line) for page in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]
            for block in code_blocks(page.read_text(encoding="utf-8")) for line in command_lines(block)]


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


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fewsam"
ARCHITECTURE = DOCS / "architecture.md"


def package_table() -> list[tuple[str, str]]:
    """(first cell, whole row) of each row of architecture.md's table of the package."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    table = text[text.index("## The package"):text.index("## Adding a method")]
    return [(row.split("|")[1], row) for row in table.splitlines() if row.startswith("| `")]


def named_paths(cell: str) -> list[str]:
    """The module files (``x.py``) and folders (``x/``) a piece of the table names in backticks."""
    return re.findall(r"`([\w/]+(?:\.py|/))`", cell)


def test_every_module_the_architecture_names_exists() -> None:
    """A name resolves from the package root or from a folder its row's first cell names
    (the studio row's ``app.py`` is ``studio/app.py``)."""
    missing = []
    for first, row in package_table():
        bases = [""] + [p if p.endswith("/") else str(Path(p).parent) + "/" for p in named_paths(first)]
        missing += [name for name in named_paths(row) if not any((PACKAGE / (base + name)).exists() for base in bases)]
    assert missing == []


def test_the_architecture_covers_every_package_folder() -> None:
    folders = {str(p.parent.relative_to(PACKAGE)) + "/" for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    folders |= {str(p.relative_to(PACKAGE)) + "/" for p in (PACKAGE / "studio").glob("static")}
    named = {name for first, row in package_table() for name in named_paths(row)}
    named |= {first_path.rstrip("/") + "/" + name for first, row in package_table()
              for first_path in named_paths(first) if first_path.endswith("/") for name in named_paths(row)}
    methods = {str(p.relative_to(PACKAGE)) for p in (PACKAGE / "methods").glob("*.py") if p.name != "__init__.py"}
    assert sorted(f for f in folders if not any(name.startswith(f) for name in named)) == []
    assert sorted(methods - named) == []


METHOD_SECTIONS = {"## 1. ": "fewshot", "## 1b. ": "fewmatch", "## 1c. ": "distill", "## 2. ": "samatch"}
# A value the text gives an option as its default: `--views 8`, `--threshold` (0.9), (`--unlabeled-batch`,
# default 4), `--opt` steps (default 50), 800 steps (`--steps`), 0.95 (`--threshold`).
OPTION_THEN_VALUE = re.compile(r"`(--[a-z-]+)(?: ([0-9][0-9.]*)`|`,? (?:\w+ )?\((?:default )?([0-9][0-9.]*)[,)]"
                               r"|`, default ([0-9][0-9.]*))")
VALUE_THEN_OPTION = re.compile(r"([0-9][0-9.]*)(?: \w+)? \(`(--[a-z-]+)`[,)]")


def method_sections() -> dict[str, str]:
    """method name -> the text of its section of methods.md."""
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    sections = re.split(r"^(?=## )", text, flags=re.M)
    return {method: s for s in sections for heading, method in METHOD_SECTIONS.items() if s.startswith(heading)}


def documented_defaults(section: str) -> list[tuple[str, str]]:
    found = [(m.group(1), next(v for v in m.groups()[1:] if v)) for m in OPTION_THEN_VALUE.finditer(section)]
    return found + [(m.group(2), m.group(1)) for m in VALUE_THEN_OPTION.finditer(section)]


def fit_default(method: str, option: str) -> Any:
    fit = root_command().get_command(typer.Context(root_command()), "fit")
    command = fit.get_command(typer.Context(fit), method)
    return next(p.default for p in command.params if option in p.opts)


def test_the_defaults_methods_md_states_are_the_fit_commands_defaults() -> None:
    sections = method_sections()
    assert sorted(sections) == sorted(METHOD_SECTIONS.values())
    stated = [(method, option, value) for method, text in sections.items()
              for option, value in documented_defaults(text)]
    assert len(stated) >= 10  # the patterns still find the defaults the page states
    wrong = [(m, o, v, fit_default(m, o)) for m, o, v in stated if float(v) != float(fit_default(m, o))]
    assert wrong == []


def test_the_few_shot_defaults_line_matches_fit_fewshot() -> None:
    """methods.md's "**Defaults** (`fewsam fit fewshot --help`): ..." sentence, phrase by phrase."""
    line = re.search(r"\*\*Defaults\*\* \(`fewsam fit fewshot --help`\):(.*?)\.\n", method_sections()["fewshot"],
                     flags=re.S).group(1)
    phrases = {r"([0-9]+) steps": "--steps", r"lr ([0-9.e-]+)": "--lr", r"batch ([0-9]+)": "--batch-size",
               r"([0-9]+) tokens per class": "--tokens-per-class", r"shot dropout ([0-9.]+)": "--shot-dropout",
               r"([0-9]+) views": "--views", r"EMA ([0-9.]+)": "--ema", r"every ([0-9]+) steps": "--val-every"}
    for phrase, option in phrases.items():
        value = re.search(phrase, line.replace("\n", " "))
        assert value is not None, phrase
        assert float(value.group(1)) == float(fit_default("fewshot", option)), option
