"""Fit, evaluate and launch options that conflict, are silently ignored, or are out of range: each is
refused with one `error:` line (exit 2) before any work, and a run recorded before a check existed
still loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_fewsam
from fewsam.config import ConfigError


def test_patience_that_cannot_stop_the_fit_is_refused_before_any_work(tmp_path: Path) -> None:
    """--patience 3 with --val-every >= --steps: too few validations for a plateau to ever end the fit,
    which ran every step with no word said."""
    result = run_fewsam("fit", "fewshot", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "none"),
                        "--labeled-cases", "1", "--steps", "100", "--val-every", "100", "--patience", "3",
                        cwd=tmp_path)
    assert_one_line_error(result, "--patience 3 can never stop this fit early")
    assert "lower --val-every to 24 or less" in result.stderr
    assert not (tmp_path / "run").exists()


def test_patience_counts_from_the_warm_up_of_semi_supervised_fits() -> None:
    """FewMatch and SAM-Match judge a plateau only after --warmup-steps + --ramp-steps: a patience that
    fits the steps but not after the ramp is as idle; one that can stop is accepted."""
    from fewsam.methods.fewmatch import FewMatchConfig
    from fewsam.methods.fewshot import FewShotConfig
    from fewsam.methods.supervised import SupervisedConfig

    with pytest.raises(ConfigError, match=r"after step 150 \(--warmup-steps \+ --ramp-steps\)"):
        FewMatchConfig(steps=300, val_every=50, patience=3)
    with pytest.raises(ConfigError, match="give more --steps"):
        SupervisedConfig(steps=3, val_every=1, patience=2)
    assert FewMatchConfig(steps=400, val_every=50, patience=3).patience == 3  # can stop at step 350
    assert FewShotConfig(steps=101, val_every=25, patience=3).patience == 3  # can stop at step 100
    # a run recorded before the check still predicts and resumes
    assert FewShotConfig.from_json({"steps": 100, "val_every": 100, "patience": 3}).patience == 3


def test_box_margin_with_point_prompts_is_refused(tmp_path: Path) -> None:
    """`fit prompted --prompt points --box-margin 5` recorded a margin no prompt used."""
    from fewsam.methods.prompted import PromptedConfig

    result = run_fewsam("fit", "prompted", "--out", str(tmp_path / "run"), "--prompt", "points",
                        "--box-margin", "5", cwd=tmp_path)
    assert_one_line_error(result, "--box-margin widens the box prompt, and --prompt points draws no box")
    assert not (tmp_path / "run").exists()
    assert PromptedConfig(prompt="box", box_margin=5).box_margin == 5
    assert PromptedConfig.from_json({"prompt": "points", "box_margin": 5.0}).prompt == "points"  # older runs
