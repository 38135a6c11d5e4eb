"""One source of defaults: each method's config dataclass, the options of `fewsam fit METHOD`, and
the RUN/config.json of a fit without options agree; limits are checked before any work; the
registry is the only place a method has to be added."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fewsam import api, methods
from fewsam.cli import app
from fewsam.config import Config, ConfigError, FitOptions, UnlabelledPoolConfig, cli_fields, option
from fewsam.data.phantom import write_phantom_dataset
from fewsam.methods import REGISTRY, Method, get_method
from fewsam.methods.fewmatch import FewMatchConfig
from fewsam.methods.fewshot import FewShotConfig
from fewsam.methods.prompted import PromptedConfig
from fewsam.methods.samatch import SamMatchConfig
from fewsam.methods.supervised import SupervisedConfig
from fewsam.train import TrainResult


def fit_command_defaults(method: str) -> dict[str, object]:
    """The defaults `fewsam fit METHOD --help` shows: those of the click command's options."""
    group = typer.main.get_command(app)
    command = group.commands["fit"].get_command(None, method)
    return {p.name: p.default for p in command.params if p.name != "quiet"}


@pytest.mark.parametrize("method", list(REGISTRY))
def test_fit_options_are_the_config_fields_with_their_defaults(method):
    spec = get_method(method)
    shown = fit_command_defaults(method)
    own = {f.name: getattr(spec.config(), f.name) for f in cli_fields(spec.config)}
    shared = {f.name: None if f.metadata.get("required") else f.default  # required: no default to show
              for f in cli_fields(FitOptions) if f.name in spec.fit_options}
    assert shown == {**shared, **own}
    hidden = {f.name for f in fields(spec.config)} - set(own)  # in config.json and Python only
    student_architecture = {"channels", "num_res_units", "rotate_deg", "scale_range", "flip"}
    assert hidden == (student_architecture if method in ("samatch", "supervised", "distill") else set())


@pytest.mark.parametrize("method", list(REGISTRY))
def test_config_json_of_a_fit_without_options_holds_the_defaults(method, tmp_path, monkeypatch):
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=0)
    spec = get_method(method)
    monkeypatch.setitem(methods._loaded, method, replace(spec, fit=None if spec.fit is None else
                                                         lambda ctx, cfg, run_dir: TrainResult(0.5, 1, 1, 0.0)))
    args = ["fit", method, "--out", str(tmp_path / "run"), "--quiet"]
    if "data" in spec.fit_options:
        args += ["--data", str(data), "--labeled-slices", "1"]
    if "cache" in spec.fit_options:
        args += ["--cache", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["method"] == method
    assert config[method] == json.loads(json.dumps(asdict(spec.config())))


@pytest.mark.parametrize("make, message", [
    (lambda: FewShotConfig(steps=0), "--steps must be at least 1, not 0"),
    (lambda: FewShotConfig(lr=0.0), "--lr must be greater than 0.0"),
    (lambda: FewShotConfig(views=9), "--views must be at most 8"),
    (lambda: FewShotConfig(shot_dropout=1.5), "--shot-dropout must be at most 1.0"),
    (lambda: FewShotConfig(ema=float("nan")), "--ema must be a finite number"),
    (lambda: SupervisedConfig(batch_size=0), "--batch-size must be at least 1"),
    (lambda: SupervisedConfig(optimizer="lion"), "--optimizer must be adamw or sgd"),
    (lambda: SamMatchConfig(refresh_every=0), "--refresh-every must be at least 1"),
    (lambda: SamMatchConfig(threshold=-0.1), "--threshold must be at least 0.0"),
    (lambda: FewMatchConfig(threshold=1.5), "--threshold must be at most 1.0"),
    (lambda: SamMatchConfig(prompt_clicks="many"), "--prompt-clicks must be none, positive or contrast"),
    (lambda: SamMatchConfig(unlabeled_limit=0), "--unlabeled-limit must be at least 1"),
    (lambda: PromptedConfig(prompt="scribble"), "--prompt must be points or box"),
    (lambda: FitOptions(run="r", labeled_cases=0), "--labeled-cases must be at least 1"),
    (lambda: FitOptions(run="r", fair_gamma=-1.0), "--fair-gamma must be at least 0.0"),
    (lambda: FitOptions(run="r", labeled_cases=1, labeled_images=1), "not both"),
])
def test_limits_are_checked_when_a_config_is_made(make, message):
    with pytest.raises(ConfigError if "not both" not in message else Exception, match=message):
        make()


@pytest.mark.parametrize("python_call, python_name, cli_args, flag", [
    (lambda: FitOptions(data="d", run=3), r"run \(--out\) must be a path", None, None),
    (lambda: SamMatchConfig(use_sam="no"), r"use_sam \(--sam\) must be True or False", None, None),
    (lambda: SupervisedConfig(channels=(8, 0)), "channels must be at least 1", None, None),
    (lambda: FitOptions(data="d", run="r", labeled_cases=0), "--labeled-cases must be at least 1",
     ["--labeled-cases", "0"], "--labeled-cases must be at least 1"),
])
def test_python_callers_read_the_names_they_wrote_and_the_command_line_its_flags(tmp_path, python_call, python_name,
                                                                                 cli_args, flag):
    """``FitOptions(run=3)`` was told "--out must be a path" and ``SupervisedConfig(channels=...)`` "--channels",
    flags a Python caller never wrote (the second exists nowhere); the command line names its flags, and a
    Python call after a command names fields again."""
    if cli_args is not None:
        result = CliRunner().invoke(app, ["fit", "fewshot", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                          *cli_args])
        assert isinstance(result.exception, ConfigError) and str(result.exception).startswith(flag), result.output
    with pytest.raises(ConfigError, match=f"^{python_name}"):
        python_call()


def test_a_new_method_is_one_registry_entry(tmp_path, monkeypatch):
    """A method the package does not know: config + fit + predictor, registered by one entry."""

    @dataclass(frozen=True)
    class ConstantConfig(Config):
        value: int = option(1, "The label every voxel gets.", min=0)

    def fit(ctx, cfg, run_dir):
        (run_dir / "constant.json").write_text(json.dumps(cfg.value))
        return TrainResult(1.0, 1, 1, 0.0)

    class ConstantPredictor:
        def __init__(self, run_dir):
            self.value = json.loads((run_dir / "constant.json").read_text())

        def predict_case(self, case, slices):
            return np.full(case.image.shape[:3], self.value, np.uint8)

    module = types.ModuleType("constant_method")
    module.METHOD = Method("constant", ConstantConfig, fit,
                           lambda run_dir, config, model, device, values: ConstantPredictor(run_dir),
                           needs_sam=lambda cfg: False, pixels_only=True)
    monkeypatch.setitem(sys.modules, "constant_method", module)
    monkeypatch.setitem(REGISTRY, "constant", ("constant_method", "Every voxel one class."))  # the one line
    monkeypatch.delitem(methods._loaded, "constant", raising=False)
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=0)
    options = FitOptions(data=data, run=tmp_path / "run", labeled_slices=1, show_progress=False)
    assert api.fit("constant", options, ConstantConfig(value=2)).best_score == 1.0
    written = api.predict(tmp_path / "run", data, tmp_path / "pred", show_progress=False)
    assert len(written) == 1
    with pytest.raises(Exception, match="takes a ConstantConfig"):
        api.fit("constant", replace(options, run=tmp_path / "run2"), FewShotConfig())


def test_semi_supervised_methods_share_one_pool_definition():
    """FewMatch, SAM-Match and distill read their unlabelled pool from the same two options, with
    the same defaults and help, so `--unlabeled-split LIST` means one thing for all three."""
    pool = {f.name: f for f in fields(UnlabelledPoolConfig)}
    assert set(pool) == {"unlabeled_limit", "unlabeled_split"}
    for name in ("fewmatch", "samatch", "distill"):
        config = get_method(name).config
        mine = {f.name: f for f in fields(config)}
        for field_name, f in pool.items():
            assert mine[field_name].default == f.default, (name, field_name)
            assert mine[field_name].metadata == f.metadata, (name, field_name)
        assert fit_command_defaults(name)["unlabeled_split"] is None


@pytest.mark.parametrize("field", ["tokens_per_class", "steps", "batch_size"])
def test_a_whole_number_numpy_cannot_hold_is_refused_by_name(field):
    """--tokens-per-class 99999999999999999999 passed every limit and ended in numpy's OverflowError."""
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be at most 9223372036854775807"):
        FewShotConfig(**{field: 10**20})
