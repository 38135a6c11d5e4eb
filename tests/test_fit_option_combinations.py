"""Fit options combined as users combine them: distill without --teacher refused, stopped and resumed;
an unlabelled split that names no unlabelled training case; fair scaling on a column the labelled
cases lack or hold one group of; a cavity rule refused before FewMatch encodes its pool; Python
callers giving None or text for an option; a nested fit's log header; and --help as written."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.text import Text

from fewsam import api, progress
from fewsam.config import ConfigError, FitOptions, cli_fields
from fewsam.data import open_dataset, select_labelled, select_unlabelled
from fewsam.data.phantom import write_phantom_dataset
from fewsam.data.types import SliceRef
from fewsam.errors import DataError, FewsamError, Stopped
from fewsam.fairness import fair_groups_for
from fewsam.methods import all_methods, distill, fewmatch
from fewsam.methods.distill import DistillConfig
from fewsam.methods.fewmatch import FewMatchConfig
from fewsam.methods.fewshot import FewShotConfig
from fewsam.runs import LAST, MANIFEST, TEXT_LOG, RunFolder

TINY_TEACHER = FewShotConfig(augmented_views=0, steps=2, val_every=2, batch_size=2, views=1, test_mirroring=False, sam_refinement=False)
TINY_STUDENT = DistillConfig(steps=2, val_every=2, batch_size=2, unlabeled_batch=2, image_size=32,
                             teacher_blend=False, test_mirroring=False)


@pytest.fixture(autouse=True)
def one_thread_fresh_notices(monkeypatch):
    monkeypatch.setattr(progress, "_said", {})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """3 training cases of 2 slices, 1 validation case."""
    return write_phantom_dataset(tmp_path_factory.mktemp("r5fit") / "ph", n_train=3, n_val=1, slices=2, seed=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("r5cache")


def _options(data: Path, run: Path, cache: Path, **extra) -> FitOptions:
    return FitOptions(**{"data": data, "run": run, "labeled_cases": 1, "cache": str(cache), "precision": "fp32",
                         "show_progress": False, **extra})


# --- distill without --teacher ------------------------------------------------------------------

def _no_teacher_fit():
    raise AssertionError("the teacher was fitted before the student's own checks")


@pytest.mark.parametrize("budget, student, says", [
    ({"labeled_cases": 3}, {}, "no unlabelled training slices are left"),
    ({}, {"cavity_rule": "Myo:LV:Aorta"}, "'Aorta' is not a class of this dataset"),
])
def test_distill_without_a_teacher_refuses_what_the_student_refuses_before_fitting_the_teacher(
        phantom, cache, tmp_path, monkeypatch, budget, student, says):
    """The teacher (few-shot SAM's default recipe: 400 steps, 8 views, mirroring, SAM refinement) was
    fitted first, then thrown away with the run when the student refused an empty pool or a cavity rule."""
    monkeypatch.setattr(distill, "own_teacher_config", _no_teacher_fit)
    run = tmp_path / "run"
    with pytest.raises(DataError, match=says):
        api.fit("distill", _options(phantom, run, cache, **budget), replace(TINY_STUDENT, **student))
    assert not run.exists()


def test_a_distill_stopped_after_its_own_teacher_keeps_it_and_resumes_without_fitting_it_again(
        phantom, cache, tmp_path, monkeypatch):
    """Stopped before the student's first checkpoint, the fit removed its whole folder, the finished
    teacher in RUN/teacher_fit included, although the stop said the same command resumes."""
    monkeypatch.setattr(distill, "own_teacher_config", lambda: TINY_TEACHER)
    real_train = distill.train

    def stopped(*args, **kwargs):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(distill, "train", stopped)
    run = tmp_path / "run"
    with pytest.raises(Stopped):
        api.fit("distill", _options(phantom, run, cache), TINY_STUDENT)
    teacher = run / distill.OWN_TEACHER
    assert (teacher / MANIFEST).exists()
    fitted = (teacher / "checkpoint_best.pt").read_bytes()

    monkeypatch.setattr(distill, "train", real_train)
    result = api.fit("distill", _options(phantom, run, cache), TINY_STUDENT)
    assert result.steps_run == 2 and (run / MANIFEST).exists()
    assert (teacher / "checkpoint_best.pt").read_bytes() == fitted
    assert (teacher / TEXT_LOG).read_text().count("host:") == 1  # fitted once, not again


def test_a_new_run_stopped_after_a_stage_below_it_checkpointed_is_kept(tmp_path):
    """SAM-Match checkpoints its SAM decoder in RUN/sam/ before the student's first checkpoint."""
    run = tmp_path / "run"
    with pytest.raises(Stopped):
        with RunFolder(run) as folder:
            folder.prepare({"method": "samatch"})
            (run / "sam").mkdir()
            (run / "sam" / LAST).write_bytes(b"resume state")
            raise Stopped(signal.SIGINT)
    assert (run / "sam" / LAST).exists() and (run / "config.json").exists()

    other = tmp_path / "other"  # nothing resumable yet: removed as before
    with pytest.raises(Stopped):
        with RunFolder(other) as folder:
            folder.prepare({"method": "samatch"})
            raise Stopped(signal.SIGINT)
    assert not other.exists()


def test_a_fit_inside_another_writes_its_header_to_its_own_log_alone(tmp_path):
    """distill's own teacher logs its progress into both logs; its header (command, host, the notices
    so far) repeated the outer fit's in the outer log, the notice said twice."""
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    inner.mkdir(parents=True)
    with api.fit_log(outer, "distill"):
        progress.say_once("no --teacher given: a notice")
        with api.fit_log(inner, "fewshot"):
            progress.record("inner progress")
    outer_log, inner_log = (outer / TEXT_LOG).read_text(), (inner / TEXT_LOG).read_text()
    assert outer_log.count("host:") == 1 and outer_log.count("no --teacher given") == 1
    assert outer_log.count("fit distill from Python") == 1 and "fit fewshot" not in outer_log
    assert "inner progress" in outer_log
    assert inner_log.count("host:") == 1 and inner_log.count("no --teacher given") == 1
    assert "fit fewshot from Python" in inner_log and "inner progress" in inner_log


# --- the unlabelled pool ------------------------------------------------------------------------

def test_an_unlabeled_split_naming_no_unlabelled_training_case_says_why(phantom):
    """--unlabeled-split val (or a list of the labelled cases) emptied the pool, and the fit said to
    use fewer labelled cases, which changes nothing."""
    dataset = open_dataset(phantom)
    labelled = select_labelled(dataset, n_cases=1)
    with pytest.raises(DataError, match=r"--unlabeled-split 'val' names no training case outside the labelled "
                                        r"budget \(its 1 case\(s\), phantom_003: 1 not in the training split\)"):
        select_unlabelled(dataset, labelled, None, 0, "val")
    (phantom / "labelled.list").write_text("phantom_000\n")
    with pytest.raises(DataError, match=r"phantom_000: 1 labelled for training"):
        select_unlabelled(dataset, labelled, None, 0, "labelled.list")

    (phantom / "mixed.list").write_text("phantom_000\nphantom_001\nphantom_003\n")
    pool = select_unlabelled(dataset, labelled, None, 0, "mixed.list")
    select_unlabelled(dataset, labelled, None, 0, "mixed.list")
    assert {ref.case_id for ref in pool} == {"phantom_001"}
    notices = [m for m in progress.said() if "--unlabeled-split" in m]
    assert notices == ["2 of the 3 cases of --unlabeled-split 'mixed.list' (phantom_000, phantom_003) are left out "
                       "of the unlabelled pool: 1 labelled for training and 1 not in the training split"]
    assert select_unlabelled(dataset, labelled, None, 0, "train") == select_unlabelled(dataset, labelled, None, 0)


def test_fewmatch_refuses_a_cavity_rule_before_encoding_its_unlabelled_pool(phantom, cache, tmp_path, monkeypatch):
    """The whole pool (hundreds of slices, seconds each on a CPU) was encoded before the rule was read."""
    def no_pool(*args, **kwargs):
        raise AssertionError("the unlabelled pool was encoded")

    monkeypatch.setattr(fewmatch, "CachedPool", no_pool)
    config = FewMatchConfig(steps=2, val_every=2, batch_size=2, unlabeled_batch=2, views=1, test_mirroring=False,
                            sam_refinement=False, cavity_rule="Myo:LV:Aorta")
    with pytest.raises(DataError, match="'Aorta' is not a class of this dataset"):
        api.fit("fewmatch", _options(phantom, tmp_path / "run", cache), config)
    assert not (tmp_path / "run").exists()


# --- fair scaling -------------------------------------------------------------------------------

def _attributes(values: dict[str, dict]) -> SimpleNamespace:
    return SimpleNamespace(format="nifti", attributes_of=lambda case_id: values.get(case_id, {}))


def test_fair_scaling_on_one_group_of_labelled_cases_is_refused_not_run_unscaled():
    """Every labelled case in one group (or without a value): every weight is 1, so the fit was the
    unscaled one while its run recorded fair scaling."""
    data = _attributes({"a": {"sex": "F"}, "b": {"sex": "F"}, "c": {}, "d": {"sex": "M"}})
    labelled = [SliceRef(c, 0) for c in ("a", "b", "c")]
    with pytest.raises(DataError, match=r"every labelled case with a value is in group 'F' \(2 of 3; the others "
                                        r"have no value\), so the loss would not be scaled"):
        fair_groups_for("sex", 1.0, None, data, labelled)
    assert fair_groups_for("sex", 0.0, None, data, labelled) is not None  # unscaled by name: taken
    assert fair_groups_for("sex", 1.0, None, data, [*labelled, SliceRef("d", 0)]).record["groups"] == ["F", "M"]


def test_a_fair_column_only_unlabelled_cases_have_is_named_as_missing_from_the_labelled_cases():
    """"no case has a value for attribute 'site'; available attributes: sex" while the CSV has a site
    column: only the labelled cases were looked at."""
    data = _attributes({"a": {"sex": "F"}, "b": {"sex": "M"}, "c": {"sex": "M", "site": "x"}})
    with pytest.raises(FewsamError, match=r"no labelled case has a value for attribute 'site', and fair scaling "
                                          r"groups the labelled cases; available attributes of the labelled "
                                          r"cases: sex"):
        fair_groups_for("site", 1.0, None, data, [SliceRef("a", 0), SliceRef("b", 0)])


# --- options from Python --------------------------------------------------------------------------

@pytest.mark.parametrize("given, says", [
    ({"seed": None}, "--seed must be a whole number, not None"),
    ({"cache": None}, "--cache must be text, not None"),
    ({"val_split": 3}, "--val-split must be text, not 3"),
    ({"run": None}, r"run \(--out\) must be a path, not None"),
    ({"precision": None}, "--precision must be auto, fp32"),
    ({"show_progress": "no"}, "^show_progress must be True or False, not 'no'"),
])
def test_a_python_caller_giving_none_or_the_wrong_kind_for_an_option_gets_one_error_naming_it(given, says):
    """FitOptions(seed=None) or (val_split=3) passed every check and failed deep in the fit with a
    TypeError or AttributeError."""
    with pytest.raises(ConfigError, match=says):
        FitOptions(**{"run": Path("r"), "data": Path("d"), "labeled_cases": 1, **given})


def test_options_that_take_none_or_paths_still_do():
    options = FitOptions(run="r", data=None, cache=Path("c"), val_split=Path("val.list"), checkpoint=None)
    assert options.data is None and options.cache == "c"  # a text option given a Path is recorded as its text
    assert DistillConfig(teacher=Path("t"), cavity_rule=None).teacher == "t"


# --- help ---------------------------------------------------------------------------------------------

def test_every_fit_option_help_is_shown_as_written():
    """Help is rich markup: "[default: ...]" in distill's --teacher help was read as a tag and
    dropped, leaving "... pseudo-labels ." with no word of the teacher it fits by default."""
    for name, method in all_methods().items():
        for f in cli_fields(FitOptions) + cli_fields(method.config):
            shown = Text.from_markup(f.metadata["help"]).plain
            assert shown == f.metadata["help"], f"fit {name} {f.name}: {shown!r}"


@pytest.mark.parametrize("args, says", [
    (["fit", "supervised", "--model", "litemedsam"], "fewsam fit supervised: supervised takes no --model (it loads "
                                                     "no SAM model: its network learns from pixels alone)"),
    (["fit", "supervised", "--checkpoint=w.pth"], "fewsam fit supervised: supervised takes no --checkpoint"),
    (["fit", "prompted", "--data", "d"], "fewsam fit prompted: prompted takes no --data (it fits nothing"),
    (["fit", "fewshot", "--modle", "x"], "fewsam fit fewshot: No such option: --modle (Possible options: --model)"),
])
def test_a_fit_option_the_method_does_not_take_is_named_as_such(args, says, capsys):
    """click guessed at a near spelling: "No such option: --model (Possible options: --help)"."""
    from fewsam.cli import run_app

    with pytest.raises(SystemExit) as stop:
        run_app([*args, "--out", "r"])
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), lines


def test_a_u_net_fit_given_sam_weights_says_it_does_not_use_them(tmp_path, caplog, monkeypatch):
    """`fit samatch --no-sam --model sam_vit_b --checkpoint W` trains a U-Net only: said once."""
    import logging

    from fewsam import progress
    from fewsam.config import FitOptions
    from fewsam.fitting import say_unused_model

    monkeypatch.setattr(progress, "_said", {})
    with caplog.at_level(logging.INFO, logger="fewsam"):
        say_unused_model(FitOptions(run=tmp_path / "r", data=tmp_path, labeled_cases=1))
        assert not caplog.records
        say_unused_model(FitOptions(run=tmp_path / "r", data=tmp_path, labeled_cases=1, model="sam_vit_b",
                                    checkpoint=tmp_path / "w.pth"))
    assert [r.getMessage() for r in caplog.records] == [
        f"--model sam_vit_b --checkpoint {tmp_path / 'w.pth'} is not used: this fit trains a U-Net on pixels alone "
        "and loads no SAM"]
