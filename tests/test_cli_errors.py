"""User mistakes end in one `error:` line, exit code 2, and nothing partial left behind."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import assert_one_line_error, run_fewsam


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["image"] = image.astype(np.float32)
        f["label"] = label.astype(np.uint8)


@pytest.fixture
def tiny_acdc(tmp_path) -> Path:
    """An ACDC/SSL4MIS-layout folder: 2 labelled slice files, 1 validation volume."""
    root = tmp_path / "acdc"
    (root / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    label = np.zeros((40, 48), np.uint8)
    label[10:20, 10:20], label[22:30, 10:20], label[10:30, 25:35] = 1, 2, 3
    names = ["patient001_frame01_slice_0", "patient001_frame01_slice_1"]
    for name in names:
        _write_h5(root / "data" / f"{name}.h5", rng.random((40, 48)), label)
    _write_h5(root / "data" / "patient002_frame01.h5", rng.random((2, 40, 48)), np.stack([label, label]))
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    (root / "val.list").write_text("patient002_frame01\n")
    return root



def fit_args(data: Path, run: Path, cache: Path, *extra: str) -> list[str]:
    return ["fit", "fewshot", "--data", str(data), "--out", str(run), "--cache", str(cache), "--quiet",
            "--steps", "2", "--views", "1", *extra]


def test_missing_data_folder(tmp_path):
    result = run_fewsam(*fit_args(tmp_path / "nope", tmp_path / "run", tmp_path / "c", "--labeled-slices", "1"),
                    cwd=tmp_path)
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "run").exists()


def test_empty_labelled_set(tiny_acdc, tmp_path):
    result = run_fewsam(*fit_args(tiny_acdc, tmp_path / "run", tmp_path / "c", "--labeled-slices", "0"), cwd=tmp_path)
    assert_one_line_error(result, "--labeled-slices must be at least 1, not 0")
    assert not (tmp_path / "run").exists()


def test_corrupt_file_leaves_no_run_folder(tiny_acdc, tmp_path):
    path = tiny_acdc / "data" / "patient001_frame01_slice_0.h5"
    path.write_bytes(path.read_bytes()[:100])
    result = run_fewsam(*fit_args(tiny_acdc, tmp_path / "run", tmp_path / "c", "--labeled-slices", "2"), cwd=tmp_path)
    assert_one_line_error(result, "patient001_frame01_slice_0")
    assert not (tmp_path / "run").exists()


def test_shape_mismatch(tiny_acdc, tmp_path):
    _write_h5(tiny_acdc / "data" / "patient001_frame01_slice_1.h5", np.zeros((40, 48)), np.zeros((40, 40)))
    result = run_fewsam(*fit_args(tiny_acdc, tmp_path / "run", tmp_path / "c", "--labeled-slices", "2"), cwd=tmp_path)
    assert_one_line_error(result, "shape")
    assert not (tmp_path / "run").exists()


def test_label_outside_class_map(tiny_acdc, tmp_path):
    label = np.zeros((40, 48), np.uint8)
    label[5:9, 5:9] = 7
    _write_h5(tiny_acdc / "data" / "patient001_frame01_slice_1.h5", np.zeros((40, 48)), label)
    result = run_fewsam(*fit_args(tiny_acdc, tmp_path / "run", tmp_path / "c", "--labeled-slices", "2"), cwd=tmp_path)
    assert_one_line_error(result, "7")
    assert not (tmp_path / "run").exists()


def test_cache_of_another_model_is_refused(tiny_acdc, tmp_path):
    from fewsam.models.registry import load_model

    from fewsam.cache import cache_folder

    model = load_model("litemedsam")
    folder = tmp_path / "c" / cache_folder(model)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"model": "sam_vit_h", "weights_sha256": "x", "preprocess": "y"}))
    result = run_fewsam(*fit_args(tiny_acdc, tmp_path / "run", tmp_path / "c", "--labeled-slices", "1", "--precision",
                              "fp32"), cwd=tmp_path)  # the fp32 folder: other precisions have folders of their own
    assert_one_line_error(result, "written by model sam_vit_h")


def test_sam_checkpoint_by_path_loads_through_the_cli(tmp_path):
    """Official SAM checkpoints load from a path through the same commands (random ViT-B weights here)."""
    import torch

    from fewsam.models.registry import build_model

    torch.manual_seed(0)
    checkpoint = tmp_path / "sam_vit_b_random.pth"
    torch.save(build_model("sam_vit_b").state_dict(), checkpoint)
    ok = run_fewsam("fit", "prompted", "--prompt", "box", "--model", "sam_vit_b", "--checkpoint", str(checkpoint),
                "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "sam_vit_b" and len(config["weights_sha256"]) == 64
    wrong = run_fewsam("fit", "prompted", "--model", "sam_vit_l", "--checkpoint", str(checkpoint),
                   "--out", str(tmp_path / "run2"), cwd=tmp_path)
    assert_one_line_error(wrong, "sam_vit_l")
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("option, value, pattern", [("--prompt-clicks", "many", "--prompt-clicks must be"),
                                                    ("--overlap", "union", "--overlap must be")])
def test_samatch_rule_options_are_checked_before_any_work(tiny_acdc, tmp_path, option, value, pattern):
    result = run_fewsam("fit", "samatch", "--data", str(tiny_acdc), "--out", str(tmp_path / "run"), "--labeled-cases", "1",
                    "--cache", str(tmp_path / "c"), "--quiet", option, value, cwd=tmp_path)
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--refine-with-sam", "--refine-if-better"])
def test_refine_with_sam_on_a_run_without_sam_is_one_clear_error(tiny_acdc, tmp_path, flag):
    fit = run_fewsam("fit", "supervised", "--data", str(tiny_acdc), "--out", str(tmp_path / "run"), "--labeled-cases",
                 "1", "--steps", "2", "--val-every", "2", "--image-size", "32", "--quiet", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    result = run_fewsam("predict", str(tmp_path / "run"), "--data", str(tiny_acdc), "--out", str(tmp_path / "pred"),
                    "--cache", str(tmp_path / "c"), flag, cwd=tmp_path)
    assert_one_line_error(result, "needs a SAM-Match run")
    assert not (tmp_path / "pred").exists()


def test_cavity_rule_naming_no_class_of_the_data(tiny_acdc, tmp_path):
    result = run_fewsam(*fit_args(tiny_acdc, tmp_path / "run", tmp_path / "c", "--labeled-slices", "1",
                                  "--cavity-rule", "Myo:LV:Aorta"), cwd=tmp_path)
    assert_one_line_error(result, "'Aorta' is not a class of this dataset (RV, Myo, LV)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, command", [(["fit", "fewshot", "--out"], "fewsam fit fewshot"),
                                           (["predict", "--out"], "fewsam predict"),
                                           (["--bogus"], "fewsam")])
def test_an_option_without_its_value_points_to_the_help_of_the_command_typed(args, command, monkeypatch, capsys):
    from fewsam import cli

    with pytest.raises(SystemExit) as ended:
        cli.run_app(args)
    assert ended.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: {command}: ") and line.endswith(f"(see '{command} --help')"), line
