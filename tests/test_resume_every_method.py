"""Every method that trains keeps the run folder's promise (README: `fit` into an existing run with the
same configuration resumes it "to identical weights, also after Ctrl-C"), on the tiny-SAM phantom:

1. one seed, two fits: the same saved weights and the same predictions;
2. a fit stopped by Ctrl-C between two checkpoints, then the same command again, ends with every file
   an uninterrupted fit writes (weights, optimiser, weight average and generator states, the metrics
   log, post-processing, prompt bank, pseudo-labels, SAM's stages) equal to the last bit;
3. the same command once more, on the finished run, trains nothing, changes no file and says so.

The SAM-side fits take seconds per step on a CPU, so their same-seed pair is left to the stop/resume
test (whose uninterrupted and resumed fits are two fits of one seed, compared file by file) and to
test_fewshot (fit, predict and evaluate twice), test_fewmatch and test_determinism.
"""

from __future__ import annotations

import signal
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fewsam import cli, train
from fewsam.cli import app
from fewsam.errors import Stopped
from fewsam.methods import all_methods
from fewsam.methods.samatch import refresh
from fewsam.runs import LOCK, MANIFEST, TEXT_LOG
from tests.conftest import fit_twice_identically

TRAINED = [name for name, method in all_methods().items() if method.fit is not None]
REFERENCE = ["--quiet", "--precision", "fp32"]  # the bit-identical path, and no encoder conversion per fit
# checkpoints at steps 2 and 3: Ctrl-C once step 3 is logged loses it, and the resumed fit redoes it from step 2
SHORT = ["--steps", "3", "--val-every", "2"]
STOP_AFTER_STEP = 3
DECODER = [*SHORT, "--views", "1", "--batch-size", "1"]
STUDENT = [*SHORT, "--batch-size", "2", "--image-size", "32"]
POOL = ["--unlabeled-batch", "2"]
RECIPES: dict[str, list[str]] = {  # each method's tiny recipe, with every stage it has switched on
    "fewshot": DECODER,
    "fewmatch": [*DECODER, "--unlabeled-batch", "1", "--warmup-steps", "1", "--ramp-steps", "1", "--threshold", "0"],
    # SAM's stage 1; at step 2 SAM learns from the student and refreshes the pseudo-labels step 3 trains on
    "samatch": [*STUDENT, *POOL, "--warmup-steps", "2", "--refresh-every", "2", "--ramp-steps", "1",
                "--sam-steps", "1", "--sam-batch", "1", "--sam-val-slices", "1", "--sam-round-steps", "1",
                "--threshold", "0"],
    "supervised": STUDENT,
    "distill": [*STUDENT, *POOL],
}
TEACHER = ["fit", "fewshot", "--views", "1", "--augmented-views", "0", "--steps", "1", "--val-every", "1", "--batch-size", "1",
           "--no-test-mirroring", "--no-sam-refinement"]
NOT_COMPARED = {TEXT_LOG, LOCK}  # fit.log holds the wall-clock time of each line; .lock is the flock's file


def test_every_method_that_trains_has_a_recipe_here():
    """A method added to the registry is held to the same promise once it has its tiny recipe above."""
    assert sorted(RECIPES) == sorted(TRAINED)


def fit_command(method: str, data: Path, tmp_path: Path) -> list[str]:
    """``fewsam fit METHOD`` on the phantom with the method's tiny recipe (``--out`` left to the caller);
    distill learns from a tiny few-shot teacher, fitted here first."""
    common = ["--data", str(data), "--labeled-slices", "2", *REFERENCE]
    if "--cache" in options_of(method):  # the U-Net alone loads no SAM, so it has no cache to take
        common += ["--cache", str(tmp_path / "cache")]
    teacher: list[str] = []
    if method == "distill":
        teacher_run = tmp_path / "teacher"
        if not teacher_run.exists():
            invoke([*TEACHER, *common, "--out", str(teacher_run)])
        teacher = ["--teacher", str(teacher_run)]
    return ["fit", method, *common, *RECIPES[method], *teacher]


def options_of(method: str) -> set[str]:
    """The options ``fewsam fit METHOD`` takes, as its command line defines them."""
    import typer

    root = typer.main.get_command(app)
    fit = root.get_command(typer.Context(root), "fit")
    command = fit.get_command(typer.Context(fit), method)
    return {option for parameter in command.params for option in parameter.opts}


def invoke(args: list[str]) -> str:
    """The command line in this process (where the tiny SAM is patched in); its output. It must succeed."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@contextmanager
def ctrl_c_when(should_stop: Callable[[Path, dict[str, Any]], bool]) -> Iterator[None]:
    """A real SIGINT, turned into ``Stopped`` by the command line's own handler, delivered once the
    training loop has logged a record for which ``should_stop(run_dir, record)`` holds."""
    write_log = train._log

    def log_then_interrupt(run_dir: Path, record: dict[str, Any]) -> None:
        write_log(run_dir, record)
        if should_stop(Path(run_dir), record):
            signal.raise_signal(signal.SIGINT)

    with handled_signals():
        train._log = log_then_interrupt
        try:
            yield
        finally:
            train._log = write_log


@contextmanager
def handled_signals() -> Iterator[None]:
    """Ctrl-C handled as ``fewsam`` handles it (``cli.main`` installs the handler), then as before."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    cli._stop_on_signals()
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def after_training_step(run: Path, step: int) -> Callable[[Path, dict[str, Any]], bool]:
    """Stop once training step ``step`` of the fit in ``run`` (not of a stage below it) is logged."""
    return lambda run_dir, record: run_dir == run and record.get("step") == step and "loss" in record


def stop_then_resume(command: list[str], run: Path, stop: AbstractContextManager[None]) -> None:
    """``command`` into ``run``, stopped by ``stop``, then the same command again."""
    with stop, pytest.raises(Stopped):
        CliRunner().invoke(app, [*command, "--out", str(run)])
    assert not (run / MANIFEST).exists()  # an unfinished run, which predict refuses
    invoke([*command, "--out", str(run)])


def run_files(run: Path) -> dict[str, Any]:
    """Every file of a run folder by relative path: checkpoints loaded, to be compared tensor by tensor
    (weights, optimiser, weight average, generator states), the rest as bytes."""
    files = {}
    for path in sorted(p for p in run.rglob("*") if p.is_file() and p.name not in NOT_COMPARED):
        name = str(path.relative_to(run))
        files[name] = torch.load(path, weights_only=False) if path.suffix == ".pt" else path.read_bytes()
    return files


def assert_same(a: Any, b: Any, where: str) -> None:
    """Equal to the last bit: tensors by dtype and value, containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and np.array_equal(a, b), where
    else:
        assert a == b, where


def assert_same_runs(a: Path, b: Path) -> None:
    files_a, files_b = run_files(a), run_files(b)
    assert files_a.keys() == files_b.keys()
    for name in sorted(files_a, key=lambda name: name == MANIFEST):  # the manifest, which hashes the rest, last
        assert_same(files_a[name], files_b[name], name)


def predictions(run: Path, data: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    """``fewsam predict`` of the validation cases with ``run``: each case's label array."""
    out = tmp_path / f"pred_{run.name}"
    invoke(["predict", str(run), "--data", str(data), "--split", "val", "--out", str(out),
            "--cache", str(tmp_path / "cache"), *REFERENCE])
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*.nii.gz"))}


SAM_SIDE = {"fewshot", "fewmatch", "samatch"}  # decoder steps on the tiny SAM's 64x64 embeddings: seconds each


@pytest.mark.parametrize("method", [name for name in TRAINED if name not in SAM_SIDE])
def test_one_seed_twice_gives_the_same_weights_and_predictions(method, tiny_sam_phantom, tmp_path):
    run_a, run_b = fit_twice_identically(fit_command(method, tiny_sam_phantom, tmp_path), tmp_path)
    pred_a, pred_b = predictions(run_a, tiny_sam_phantom, tmp_path), predictions(run_b, tiny_sam_phantom, tmp_path)
    assert pred_a and pred_a.keys() == pred_b.keys()
    for name in pred_a:
        assert np.array_equal(pred_a[name], pred_b[name]), name


@pytest.mark.parametrize("method", TRAINED)
def test_a_fit_stopped_by_ctrl_c_resumes_to_the_uninterrupted_fit_and_then_stays_as_it_is(method, tiny_sam_phantom,
                                                                                         tmp_path, monkeypatch):
    command = fit_command(method, tiny_sam_phantom, tmp_path)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    invoke([*command, "--out", str(straight)])
    stop_then_resume(command, stopped, ctrl_c_when(after_training_step(stopped, STOP_AFTER_STEP)))
    assert_same_runs(straight, stopped)
    assert_finished_run_is_left_as_it_is([*command, "--out", str(stopped)], stopped, monkeypatch)


@contextmanager
def ctrl_c_once_pseudo_labels_are_saved() -> Iterator[None]:
    """Ctrl-C as soon as SAM-Match's refresh has saved its pseudo-labels (RUN/pseudo_labels/)."""
    save = refresh.atomic_torch_save

    def save_then_interrupt(obj: Any, path: Path) -> None:
        save(obj, path)
        signal.raise_signal(signal.SIGINT)

    with handled_signals():
        refresh.atomic_torch_save = save_then_interrupt
        try:
            yield
        finally:
            refresh.atomic_torch_save = save


def test_a_samatch_fit_stopped_as_its_refresh_ends_resumes_to_the_uninterrupted_fit(tiny_sam_phantom, tmp_path):
    """A resumed fit reads a saved refresh instead of making it again: what else the refresh writes (its
    pseudo-label quality record) must then be there too."""
    command = fit_command("samatch", tiny_sam_phantom, tmp_path)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    invoke([*command, "--out", str(straight)])
    stop_then_resume(command, stopped, ctrl_c_once_pseudo_labels_are_saved())
    assert_same_runs(straight, stopped)


def assert_finished_run_is_left_as_it_is(command: list[str], run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``command`` again on its finished ``run``: no training step, no file written or touched, and the
    command says that the run had finished and nothing was changed."""
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}

    def no_training_step(run_dir: Path, record: dict[str, Any]) -> None:
        raise AssertionError(f"a finished run trained again: {run_dir} step {record.get('step')}")

    with monkeypatch.context() as patched:
        patched.setattr(train, "_log", no_training_step)
        output = invoke(command)
    assert "finished already" in output and "nothing was changed" in output, output
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == before


def test_a_resumed_weight_average_stays_on_the_device_of_the_weights():
    """A resume checkpoint is read onto the CPU; the average it restores must live where the module's
    weights do, or a GPU fit fails at its first step after resuming (GPU weights added into a CPU
    average). The meta device stands in for a GPU, so that CPU-only hosts check it too."""
    module = nn.Linear(3, 2, device="meta")
    average = train.WeightAverage(module, 0.99)
    saved = {"updates": 7, "shadow": {name: torch.ones(value.shape) for name, value in average.shadow.items()}}
    average.load_state_dict(saved)
    assert average.updates == 7
    assert {value.device.type for value in average.shadow.values()} == {"meta"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_gpu_fit_with_a_weight_average_resumes(tiny_sam_phantom, tmp_path):
    command = [*fit_command("supervised", tiny_sam_phantom, tmp_path), "--device", "cuda"]
    run = tmp_path / "run"
    stop_then_resume(command, run, ctrl_c_when(after_training_step(run, STOP_AFTER_STEP)))
    assert (run / MANIFEST).exists()
