"""Fits and run folders as users coming from other tools meet them: a budget that takes other slices
once the training split gained a case; a prompted run's predictions, which read
the labels; a relative --checkpoint that predict run from another folder
must still find; a folder of the user's with a config.json of its own given as --out or as a run;
a fit resumed or stopped early by --patience, said in the terminal too;
memory that runs out; bench's --json and --cache inside the dataset; the labelled budget given twice
under --labeled-images; a SAM model without its weights; and an empty --cache."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.config import FitOptions
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import DataError, FewsamError, ModelError, RunError
from fewsam.runs import LOCK, MANIFEST, prepare_run_dir
from tests.conftest import assert_one_line_error, main_raising, run_fewsam

QUIET = ["--quiet", "--precision", "fp32"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("r6") / "ph", n_train=3, n_val=1, slices=2, seed=1)


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _supervised(data: Path, run: Path) -> list[str]:
    return ["fit", "supervised", "--data", str(data), "--labeled-cases", "1", "--steps", "2", "--val-every", "2",
            "--batch-size", "2", "--image-size", "16", "--out", str(run), *QUIET]


# --- the training split gained a case ------------------------------------------------------------

def _add_first_training_case(data: Path, name: str = "aaa") -> None:
    """A new case at the head of the training split (copied from the first), as a user adds one."""
    shutil.copy(data / "imagesTr" / "phantom_000_0000.nii.gz", data / "imagesTr" / f"{name}_0000.nii.gz")
    shutil.copy(data / "labelsTr" / "phantom_000.nii.gz", data / "labelsTr" / f"{name}.nii.gz")
    splits = json.loads((data / "splits_final.json").read_text())
    splits[0]["train"].insert(0, name)
    (data / "splits_final.json").write_text(json.dumps(splits))


def test_a_budget_taking_other_slices_after_a_case_was_added_is_named_as_changed_data(phantom, tmp_path):
    """The rerun was refused as "a different configuration (labelled.refs: ...); rerun with its
    settings to resume", though the settings were the run's: only the data had changed."""
    data, run = tmp_path / "ph", tmp_path / "run"
    shutil.copytree(phantom, data)
    assert _invoke(*_supervised(data, run)).exit_code == 0
    (run / MANIFEST).unlink()  # stopped before it finished: the same command resumes it
    _add_first_training_case(data)
    rerun = _invoke(*_supervised(data, run))
    message = str(rerun.exception)
    assert isinstance(rerun.exception, RunError), rerun.output
    assert "training cases changed" in message and '"aaa:0"' in message
    assert "rerun with its settings" not in message


def test_another_budget_is_still_named_as_an_option_before_the_slices_it_takes(tmp_path):
    def config(cases: int, refs: list[str]) -> dict:
        return {"method": "supervised", "data": "/d", "labelled": {"cases": cases, "slices": None, "refs": refs}}

    prepare_run_dir(tmp_path / "run", config(1, ["a:0"]))
    with pytest.raises(RunError, match=r"different configuration \(labelled.cases: 1 -> 2\)"):
        prepare_run_dir(tmp_path / "run", config(2, ["a:0", "b:0"]))
    assert prepare_run_dir(tmp_path / "run", config(1, ["a:0"]))[1]  # the same budget, the same slices: resumes


# --- a relative --checkpoint ----------------------------------------------------------------------

def test_a_relative_checkpoint_is_found_by_predict_run_from_another_folder(phantom, tmp_path, monkeypatch):
    """config.json named the weights as typed ("weights/lite.pth"): predict, run from any other
    folder (a job script's), failed with "checkpoint weights/lite.pth ... does not exist", and
    predict has no --checkpoint to give them again."""
    from fewsam.models.registry import litemedsam_checkpoint

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "weights").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "weights" / "lite.pth").symlink_to(litemedsam_checkpoint())
    monkeypatch.chdir(project)
    fitted = _invoke("fit", "prompted", "--out", "run", "--checkpoint", "weights/lite.pth", "--quiet")
    assert fitted.exit_code == 0, fitted.output
    monkeypatch.chdir(elsewhere)
    predicted = _invoke("predict", str(project / "run"), "--data", str(phantom), "--out", "pred",
                        "--cache", str(tmp_path / "cache"), *QUIET)
    assert predicted.exit_code == 0, predicted.output
    assert len(list((elsewhere / "pred").rglob("*.nii.gz"))) == 1


def test_a_run_that_recorded_its_checkpoint_as_typed_resumes_with_it_given_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {"method": "fewshot", "data": "/d", "checkpoint": "weights/sam.pth"}
    prepare_run_dir(tmp_path / "run", config)
    resolved = {**config, "checkpoint": str(tmp_path / "weights" / "sam.pth")}
    assert prepare_run_dir(tmp_path / "run", resolved)[1]
    with pytest.raises(RunError, match="checkpoint"):
        prepare_run_dir(tmp_path / "run", {**config, "checkpoint": "weights/other.pth"})


# --- the oracle-prompted baseline at predict time ------------------------------------------------

def test_a_prompted_run_predicts_with_prompts_from_the_labels(phantom, tmp_path):
    """predict read every case without its label (images are all a fitted model needs), so each case
    of a prompted run, whose prompts come from the label, was refused as having none."""
    import nibabel as nib

    run, pred = tmp_path / "run", tmp_path / "pred"
    assert _invoke("fit", "prompted", "--out", str(run), "--quiet").exit_code == 0
    result = _invoke("predict", str(run), "--data", str(phantom), "--out", str(pred),
                     "--cache", str(tmp_path / "cache"), *QUIET)
    assert result.exit_code == 0, result.output
    (written,) = pred.rglob("*.nii.gz")
    assert nib.load(written).get_fdata().any()  # boxed from the label's classes


# --- a folder of the user's with a config.json ----------------------------------------------------

def _model_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A downloaded model's folder: a config.json of its own beside its weights."""
    folder = tmp_path / "sam-hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "sam", "hidden_size": 256}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder, {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_folder_with_a_config_json_of_its_own_is_refused_as_out_not_told_to_be_deleted(phantom, tmp_path):
    folder, before = _model_folder(tmp_path)
    result = run_fewsam(*_supervised(phantom, folder), cwd=tmp_path)
    assert_one_line_error(result, f"{folder} exists and is not a fewsam run folder; choose another --out")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no lock file left in it either
    assert not (folder / LOCK).exists()


def test_a_folder_with_a_config_json_of_its_own_given_to_predict_is_named_as_no_run(phantom, tmp_path):
    folder, _ = _model_folder(tmp_path)
    result = run_fewsam("predict", str(folder), "--data", str(phantom), "--out", str(tmp_path / "pred"),
                        cwd=tmp_path)
    assert_one_line_error(result, f"{folder} is not a fewsam run folder")
    assert "delete" not in result.stderr


def test_a_run_whose_own_config_json_was_damaged_is_still_named_as_that(phantom, tmp_path):
    run = tmp_path / "run"
    assert _invoke(*_supervised(phantom, run)).exit_code == 0
    (run / "config.json").write_text("{")
    again = _invoke(*_supervised(phantom, run))
    assert isinstance(again.exception, RunError)
    assert "config.json is corrupt" in str(again.exception) and f"delete {run} and fit again" in str(again.exception)


# --- an empty --cache ----------------------------------------------------------------------------

def test_an_empty_cache_option_is_refused_not_taken_for_the_working_folder(phantom, tmp_path):
    """``--cache "$CACHE"`` with the variable unset filled the working folder with cache folders."""
    work = tmp_path / "work"
    work.mkdir()
    result = run_fewsam("embed", "--data", str(phantom), "--cache", "", "--split", "val", *QUIET, cwd=work)
    assert_one_line_error(result, "--cache is empty ('')")
    assert not any(work.iterdir())


# --- memory that runs out -------------------------------------------------------------------------

@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)"),
    MemoryError("Unable to allocate 37.3 GiB for an array with shape (10000, 1000000)"),
])
def test_memory_that_runs_out_is_one_error_line_saying_what_to_lower(monkeypatch, capsys, error):
    """A --batch-size or --image-size larger than the machine holds ended in torch's traceback."""
    code, lines = main_raising(monkeypatch, capsys, error)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: out of memory (") and "--batch-size" in lines[0]


def test_a_runtime_error_that_is_not_memory_is_not_reported_as_memory(monkeypatch, capsys):
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main_raising(monkeypatch, capsys, RuntimeError("shape mismatch"))


def test_torch_running_out_of_memory_mid_fit_is_one_error_line(phantom, tmp_path):
    """An --image-size whose first batch cannot be allocated (a 100000 x 100000 slice)."""
    run = tmp_path / "run"
    args = [a if a != "16" else "100000" for a in _supervised(phantom, run)]
    result = run_fewsam(*args, cwd=tmp_path)
    assert_one_line_error(result, "out of memory (")
    assert not run.exists()


# --- what changes a fit's course is said in the terminal ------------------------------------------

class FallingTask:
    """A task whose validation scores only fall after the first: a fit --patience stops early."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = torch.nn.Linear(2, 1)
        self.validations = 0

    def training_loss(self, rng, step):
        return (self.module(torch.ones(4, 2)) ** 2).mean(), {}

    def validate(self):
        self.validations += 1
        return {"score": 1.0 / self.validations}


def test_a_fit_stopped_early_or_resumed_says_so_in_the_terminal_too(tmp_path, caplog):
    """Both were written to RUN/fit.log alone: the terminal showed a progress bar ending at step 4
    of 10 (or starting at step 2), and then the best score, with no word why."""
    from fewsam.train import TrainConfig, train

    class Stop(Exception):
        pass

    def stop_at_2(step: int) -> None:
        if step == 2:
            raise Stop

    cfg = TrainConfig(steps=10, lr=0.1, val_every=2, warmup_steps=1, patience=1)
    caplog.set_level(logging.INFO, logger="fewsam")
    with pytest.raises(Stop):
        train(FallingTask(), cfg, tmp_path, show_progress=False, on_checkpoint=stop_at_2)
    assert train(FallingTask(), cfg, tmp_path, show_progress=False).steps_run == 4
    told = [r.getMessage() for r in caplog.records if r.name == "fewsam"]
    assert told == ["resumed at step 2 of 10", "no better validation score in 1 validation: stopped at step 4 of 10 "
                                                "(--patience); the best, step 2, is kept"]


# --- bench --------------------------------------------------------------------------------------

@pytest.fixture
def no_bench(monkeypatch):
    import fewsam.bench

    def measured(*args, **kwargs):
        raise AssertionError("the bench ran")

    monkeypatch.setattr(fewsam.bench, "run_bench", measured)


def test_bench_json_never_replaces_a_file_of_the_dataset(phantom, tmp_path, no_bench):
    before = (phantom / "dataset.json").read_bytes()
    result = _invoke("bench", "--data", str(phantom), "--json", str(phantom / "dataset.json"), "--overwrite",
                     "--cache", str(tmp_path / "scratch"))
    assert isinstance(result.exception, FewsamError) and "in the dataset" in str(result.exception)
    assert (phantom / "dataset.json").read_bytes() == before


def test_bench_scratch_cache_is_not_put_inside_the_dataset(phantom, no_bench):
    result = _invoke("bench", "--data", str(phantom), "--cache", str(phantom / "bench_cache"))
    assert "inside the data folder" in str(result.exception)
    assert not (phantom / "bench_cache").exists()


# --- options ------------------------------------------------------------------------------------

def test_labeled_images_with_labeled_slices_names_the_options_given():
    """The refusal named --labeled-cases, which the command did not hold, and came only after the
    dataset was opened."""
    with pytest.raises(DataError, match="not both --labeled-images and --labeled-slices"):
        FitOptions(run="r", data="d", labeled_images=2, labeled_slices=3)
    with pytest.raises(DataError, match="not both --labeled-cases and --labeled-slices"):
        FitOptions(run="r", data="d", labeled_cases=2, labeled_slices=3)


def test_a_sam_model_without_weights_says_which_option_takes_them():
    from fewsam.models.registry import load_model

    with pytest.raises(ModelError, match="pass --checkpoint PATH"):
        load_model("sam_vit_b")

