"""What an error line advises fits the command that met the error: it names only options that command has."""

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

CUDA_OOM = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)")


def _raise_oom(*args, **kwargs):
    raise CUDA_OOM


def _folders(tmp_path: Path) -> dict[str, str]:
    names = {"data": tmp_path / "data", "run": tmp_path / "run", "pred": tmp_path / "pred",
             "cache": tmp_path / "cache", "out": tmp_path / "new_run"}
    for name in ("data", "run", "pred", "cache"):
        names[name].mkdir()
    return {name: str(path) for name, path in names.items()}


# (the command's words, the function it runs that runs out of memory, its arguments from _folders)
COMMANDS = [
    (["predict"], "fewsam.predict.predict", ["{run}", "--data", "{data}", "--out", "{out}", "--cache", "{cache}"]),
    (["embed"], "fewsam.api.embed_dataset", ["--data", "{data}", "--cache", "{cache}"]),
    (["evaluate"], "fewsam.evaluate.evaluate", ["--pred", "{pred}", "--data", "{data}"]),
    (["fit", "fewshot"], "fewsam.api.fit", ["--data", "{data}", "--out", "{out}", "--cache", "{cache}"]),
]


def out_of_memory_line(monkeypatch, capsys, tmp_path: Path, words: list[str], target: str, args: list[str]) -> str:
    """The one ``error:`` line of ``fewsam WORDS ARGS`` whose work runs out of GPU memory."""
    from fewsam import cli

    for setup in ("_tune_allocator", "_show_notes", "_stop_on_signals"):
        monkeypatch.setattr(cli, setup, lambda: None)
    monkeypatch.setattr(target, _raise_oom)
    folders = _folders(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fewsam", *words, *(a.format(**folders) for a in args)])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: out of memory ("), lines
    return lines[0]


def help_of(words: list[str]) -> str:
    from fewsam.cli import app

    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("words, target, args", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_out_of_memory_advises_only_options_the_command_has(monkeypatch, capsys, tmp_path, words, target, args):
    """predict, embed and evaluate were told to lower --batch-size or --image-size, which they do not take."""
    line = out_of_memory_line(monkeypatch, capsys, tmp_path, words, target, args)
    advice = line.split(");", 1)[1]
    named = set(re.findall(r"--[a-z][a-z-]*", advice))
    offered = set(re.findall(r"--[a-z][a-z-]*", help_of(words)))
    assert named <= offered, (named - offered, line)
    assert "free memory" in advice


def test_out_of_memory_in_predict_points_to_another_device(monkeypatch, capsys, tmp_path):
    """predict takes its model and slice size from the run: moving to another device is what it can change."""
    line = out_of_memory_line(monkeypatch, capsys, tmp_path, *COMMANDS[0][:1], *COMMANDS[0][1:])
    assert line.endswith("); use another --device, or free memory (a GPU's: close other jobs on it), then run the "
                         "same command again"), line


def test_out_of_memory_in_a_fit_keeps_its_advice(monkeypatch, capsys, tmp_path):
    line = out_of_memory_line(monkeypatch, capsys, tmp_path, *COMMANDS[3][:1], *COMMANDS[3][1:])
    assert line.endswith("); lower --batch-size, choose a smaller --model, or free memory (a GPU's: close other "
                         "jobs on it), then run the same command again (a fit resumes from its last checkpoint)"), line
