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
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(app, ["embed", "--data", str(tmp_path / "data"), "--cache", str(cache), "--quiet"])
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


def test_ctrl_c_while_the_encoder_is_converted_stops_the_command(tmp_path):
    """OpenVINO's converter calls back into Python: a stop raised there came out as its own traceback."""
    import signal

    import torch

    from fewsam.cli import _stop_on_signals
    from fewsam.errors import Stopped
    from fewsam.models.precision import EncoderPrecision, OpenVinoEncoder

    class Converter:
        """Stands in for OpenVINO: a Ctrl-C met in its frontend becomes its own error, as there."""

        def convert_model(self, module, example_input):
            try:
                signal.raise_signal(signal.SIGINT)
                return "model"
            except BaseException as err:  # noqa: BLE001 - as OpenVINO's C++ frontend does
                raise RuntimeError(f"Model wasn't fully converted: {err!r}") from None

    ir = tmp_path / "cache" / "tiny-openvino-ir"
    encoder = OpenVinoEncoder(torch.nn.Conv2d(3, 4, 3, padding=1), 8, EncoderPrecision("fp32", "openvino"), ir)
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    _stop_on_signals()
    try:
        with pytest.raises(Stopped):
            encoder._convert(Converter())
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert not ir.exists()


@pytest.mark.parametrize("mode, dtype", [("F", "float32"), ("I;16", "uint16"), ("I", "int32")])
def test_a_high_bit_image_reads_as_an_array_of_its_own(tmp_path, mode, dtype):
    """A float TIFF read as Pillow's read-only buffer made torch warn on stderr in every fit and predict."""
    import warnings

    import numpy as np
    from PIL import Image

    from fewsam.data.readers.png_folder import read_image
    from fewsam.methods.student import student_image

    path = tmp_path / "x.tif"
    Image.fromarray(np.arange(40 * 30).reshape(40, 30).astype(dtype)).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    image = read_image(path, rgb=False)
    assert image.flags.writeable and image.shape == (40, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student_image(image, 16)


def test_unlabelled_images_for_a_run_of_other_classes_are_told_how_to_name_them(tmp_path):
    """A folder of unlabelled PNGs reads as one 'foreground' class; a run of three classes then needs a
    classes.json, and the message says so instead of only that the classes differ."""
    from fewsam.errors import DataError
    from fewsam.predict import _check_class_map

    run = {"class_map": {"1": "RV", "2": "Myo", "3": "LV"}}
    with pytest.raises(DataError, match=r'no labels to name its classes: add a classes.json naming the run\'s, '
                                        r'\{"1": "RV", "2": "Myo", "3": "LV"\}'):
        _check_class_map(run, {"1": "foreground"}, tmp_path, labelled=False)
    with pytest.raises(DataError) as labelled:
        _check_class_map(run, {"1": "foreground"}, tmp_path, labelled=True)
    assert "classes.json" not in str(labelled.value)


def test_two_files_of_one_case_are_named_not_blamed_on_a_split_file(tmp_path):
    """a.nii.gz beside a.nii: one was never read, and the error named a splits_final.json that is not there."""
    import nibabel as nib
    import numpy as np

    root = tmp_path / "data"
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    image = nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 2)).astype(np.float32), np.eye(4))
    for case in ("a", "b"):
        nib.save(image, root / "images" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(np.ones((8, 8, 2), np.uint8), np.eye(4)), root / "labels" / f"{case}.nii.gz")
    nib.save(image, root / "images" / "a.nii")
    assert_one_line_error(run_fewsam("info", str(root), cwd=tmp_path),
                          f"{root / 'images' / 'a.nii'} and {root / 'images' / 'a.nii.gz'} are both case 'a'")


def test_labels_of_background_alone_are_refused_before_any_work(tmp_path):
    """Every label all 0 and nothing naming a class: the fit said its labelled slices lacked the classes
    '[]' (the U-Net) or first encoded the slices (few-shot SAM); it says what is wrong, before encoding."""
    import nibabel as nib
    import numpy as np

    root = tmp_path / "data"
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in ("a", "b", "c"):
        nib.save(nib.Nifti1Image(rng.random((16, 16, 2)).astype(np.float32), np.eye(4)),
                 root / "images" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.uint8), np.eye(4)), root / "labels" / f"{case}.nii.gz")
    result = run_fewsam("fit", "supervised", "--data", str(root), "--labeled-cases", "1", "--steps", "1",
                        "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert_one_line_error(result, "hold no class but the background")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command, lock", [(("fit", "supervised", "--data", "data", "--labeled-cases", "1", "--steps", "1",
                                             "--out", "run"), "run/.lock"),
                                           (("studio", "--data", "data", "--project", "project", "--port", "8779"),
                                            "project/studio.lock")])
def test_a_folder_in_place_of_a_lock_file_is_named_not_a_traceback(tmp_path, command, lock):
    """A run's or a studio project's lock file is fewsam's; a folder of that name (made by hand or by a sync
    tool) ended the fit or the studio in IsADirectoryError's traceback."""
    from fewsam.data.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2)
    (tmp_path / lock).mkdir(parents=True)
    result = run_fewsam(*command, cwd=tmp_path)
    assert_one_line_error(result, f"{lock} is a folder where fewsam keeps a lock file; move it away")


@pytest.mark.parametrize("name", ["config.json", "checkpoint_best.pt", "manifest.json"])
def test_a_runs_own_file_is_no_output_even_with_overwrite(tmp_path, name):
    """`evaluate --json RUN/config.json --overwrite` replaced the run's configuration with scores, leaving a
    run that neither predict nor a resumed fit could read; a user's other JSON there is still theirs."""
    from fewsam.cli import check_output_file
    from fewsam.errors import FewsamError

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "fewshot"}), encoding="utf-8")
    (run / "checkpoint_best.pt").write_bytes(b"weights")
    (run / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FewsamError, match=f"--json {run / name} is a file of the fewsam run {run}"):
        check_output_file(run / name, "--json", overwrite=True)
    (run / "scores.json").write_text("{}", encoding="utf-8")
    check_output_file(run / "scores.json", "--json", overwrite=True)
    plain = tmp_path / "mine"
    plain.mkdir()
    (plain / "config.json").write_text("{}", encoding="utf-8")
    check_output_file(plain / "config.json", "--json", overwrite=True)
