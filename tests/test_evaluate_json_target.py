"""`fewsam evaluate --json` beside the predictions it scores.

- ``fewsam evaluate --json PRED/summary.json --overwrite`` replaced a file of the prediction folder
  that fewsam did not write (nnU-Net's summary.json among its predictions, or a prediction itself);
  refused, while an earlier evaluation JSON there is still replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import assert_one_line_error, run_fewsam, write_png_cases

SQUARE = np.zeros((16, 16), np.uint8)
SQUARE[4:10, 4:10] = 1


def _evaluate(data: Path, pred: Path, json_out: Path):
    return run_fewsam("evaluate", "--pred", str(pred), "--data", str(data), "--split", "test",
                      "--json", str(json_out), "--overwrite", "--quiet", cwd=data.parent)


def test_evaluate_json_never_replaces_another_tools_file_among_predictions(tmp_path):
    data, pred = write_png_cases(tmp_path, SQUARE, {"a": ({"sex": "F"}, SQUARE), "b": ({"sex": "M"}, SQUARE)})
    summary = pred / "summary.json"
    summary.write_text('{"foreground_mean": {"Dice": 1.0}}')
    result = _evaluate(data, pred, summary)
    assert_one_line_error(result, "did not write")
    assert json.loads(summary.read_text()) == {"foreground_mean": {"Dice": 1.0}}
    prediction = next(pred.rglob("*.png"))
    before = prediction.read_bytes()
    assert_one_line_error(_evaluate(data, pred, prediction), "did not write")
    assert prediction.read_bytes() == before
    ours = pred / "eval.json"
    for _ in range(2):  # written, then an earlier evaluation replaced
        assert _evaluate(data, pred, ours).returncode == 0
    assert json.loads(ours.read_text())["n_cases"] == 2


def test_a_json_made_while_evaluate_ran_is_not_replaced_without_overwrite(tmp_path, monkeypatch):
    """--json is checked before the evaluation starts (minutes on a large split) and written after it: a file
    made there meanwhile (a second evaluate started into the same --json, the user's own) was silently replaced."""
    from typer.testing import CliRunner

    from fewsam import evaluate as evaluation
    from fewsam.cli import app
    from fewsam.errors import FewsamError

    data, pred = write_png_cases(tmp_path, SQUARE, {"a": ({"sex": "F"}, SQUARE), "b": ({"sex": "M"}, SQUARE)})
    target = tmp_path / "eval.json"
    scored = evaluation.evaluate

    def evaluate_while_another_writes(*args, **kwargs):
        result = scored(*args, **kwargs)
        target.write_text('{"theirs": true}')  # what the other command wrote while this one scored
        return result

    monkeypatch.setattr(evaluation, "evaluate", evaluate_while_another_writes)
    command = ["evaluate", "--pred", str(pred), "--data", str(data), "--split", "test", "--json", str(target), "--quiet"]
    result = CliRunner().invoke(app, command)
    assert isinstance(result.exception, FewsamError)  # the command line's one error: line, exit code 2
    assert "was made by something else while this command ran" in str(result.exception)
    assert json.loads(target.read_text()) == {"theirs": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "eval.json", "pred"]  # no temporary left
    result = CliRunner().invoke(app, [*command, "--overwrite"])  # asked: replaced
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["n_cases"] == 2
