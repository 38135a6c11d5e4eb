"""What an error line advises fits the command that met the error: it names only options that command has."""

import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
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


# --- the class scan of label files ---------------------------------------------------------------

def _nifti_folder(root: Path, labels: dict[str, np.ndarray | bytes]) -> Path:
    """images/ and labels/ of one NIfTI volume per case, no class names: the classes are scanned."""
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for case, label in labels.items():
        nib.save(nib.Nifti1Image(np.ones((6, 5, 2), np.float32), np.eye(4)), root / "images" / f"{case}.nii.gz")
        if isinstance(label, bytes):
            (root / "labels" / f"{case}.nii.gz").write_bytes(label)
        else:
            nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labels" / f"{case}.nii.gz")
    return root


def _label(value: int) -> np.ndarray:
    label = np.zeros((6, 5, 2), np.int32)
    label[1:3, 1:3] = value
    return label


def test_a_label_with_values_beyond_16_bits_stops_the_class_scan(tmp_path):
    """It was left out of the scan with a log line: the dataset opened without its classes, and the
    error came only when a fit loaded that label."""
    from fewsam.data import open_dataset
    from fewsam.errors import DataError

    dataset = open_dataset(_nifti_folder(tmp_path / "data", {"a": _label(1), "b": _label(70000)}))
    with pytest.raises(DataError, match=r"label values 70000 in .*b\.nii\.gz are not class values 0-65535"):
        dataset.class_map


def test_a_damaged_label_is_still_left_out_of_the_class_scan(tmp_path):
    """Only the commands that read that case's label need it whole (fit, evaluate): they say why."""
    from fewsam.data import open_dataset

    dataset = open_dataset(_nifti_folder(tmp_path / "data", {"a": _label(1), "b": b"not a nifti file"}))
    assert dataset.class_map.names == {1: "class1"}


def test_a_label_with_values_beyond_16_bits_is_one_error_line_when_the_dataset_opens(monkeypatch, capsys,
                                                                                     tmp_path):
    from fewsam import cli

    data = _nifti_folder(tmp_path / "data", {"a": _label(1), "b": _label(70000)})
    for setup in ("_tune_allocator", "_show_notes", "_stop_on_signals"):
        monkeypatch.setattr(cli, setup, lambda: None)
    monkeypatch.setattr(sys, "argv", ["fewsam", "info", str(data)])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: label values 70000 in ") and "relabel the classes you need" in lines[0]
