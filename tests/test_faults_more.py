"""More user mistakes and odd-but-valid inputs: one `error:` line (exit 2) or a correct result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import assert_one_line_error, run_fewsam
from fewsam.cli import app


@pytest.mark.parametrize("name", ["no[/b]pe", "no[bold]pe"])
def test_an_error_naming_a_path_with_brackets_is_one_line_that_names_it(tmp_path, name):
    result = run_fewsam("info", str(tmp_path / name), cwd=tmp_path)
    assert_one_line_error(result, f"{tmp_path / name} does not exist")


def test_printed_json_stays_one_line_when_piped(tmp_path, monkeypatch):
    """embed's statistics are one JSON line however long its cache path: a script reads it."""
    import fewsam.api

    cache = tmp_path / ("a cache folder with a long name, " * 3).strip()
    stats = {"cases": 1, "encoded": 2, "cache": str(cache / "litemedsam-[/b]")}
    monkeypatch.setattr(fewsam.api, "embed_dataset", lambda *args, **kwargs: stats)
    result = CliRunner().invoke(app, ["embed", "--data", str(tmp_path), "--cache", str(cache), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1]) == stats


@pytest.mark.parametrize("key, value, says", [
    ("labels", ["background", "RV"], "'labels' must be an object"),
    ("training", ["imagesTr/phantom_000_0000.nii.gz"], "'training' entry 'imagesTr/phantom_000_0000.nii.gz'"),
    ("training", [{"label": "./labelsTr/phantom_000.nii.gz"}], "'training' entry"),
    ("training", "imagesTr", "'training' must be a list"),
    ("test", [5], "'test' entry 5"),
])
def test_a_hand_written_dataset_json_of_the_wrong_shape_is_named(tmp_path, key, value, says):
    from fewsam.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=1)
    spec = json.loads((root / "dataset.json").read_text())
    if key == "test":
        spec["training"] = [{"image": "./imagesTr/phantom_000_0000.nii.gz", "label": "./labelsTr/phantom_000.nii.gz"}]
    spec[key] = value
    (root / "dataset.json").write_text(json.dumps(spec))
    assert_one_line_error(run_fewsam("info", str(root), cwd=tmp_path), says)
