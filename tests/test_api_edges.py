"""Mistakes made through the Python API and options at the edge of their range: each ends in one
FewsamError naming what to change, before any model is loaded or file written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import write_tiny_acdc
from fewsam.api import FitOptions, embed_dataset, fit, predict
from fewsam.errors import FewsamError

VAL = ["patient010_frame01"]


@pytest.fixture
def acdc(tmp_path) -> Path:
    return write_tiny_acdc(tmp_path / "acdc", VAL)


# --- devices through the Python API -------------------------------------------------------------

def _api_calls(acdc: Path, tmp_path: Path, device: str) -> dict:
    """Each API entry point that takes a device, given ``device``."""
    cache = str(tmp_path / "cache")
    return {
        "fit": lambda: fit("fewshot", FitOptions(data=acdc, run=tmp_path / "run", labeled_slices=1, device=device,
                                                 cache=cache, show_progress=False)),
        "predict": lambda: predict(tmp_path / "run", acdc, tmp_path / "pred", device=device, cache_root=cache,
                                   show_progress=False),
        "embed": lambda: embed_dataset(acdc, cache_root=cache, device=device, show_progress=False),
    }


@pytest.mark.parametrize("entry", ["fit", "predict", "embed"])
def test_the_api_refuses_a_device_that_is_not_one(acdc, tmp_path, entry):
    """Checked first, as the command line does: not torch's parser error from deep in model loading."""
    with pytest.raises(FewsamError, match="is not a device"):
        _api_calls(acdc, tmp_path, "gpu")[entry]()
    assert not (tmp_path / "pred").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("entry", ["fit", "embed"])
def test_the_api_refuses_cuda_without_cuda_in_one_line(acdc, tmp_path, entry):
    with pytest.raises(FewsamError, match="use --device cpu"):
        _api_calls(acdc, tmp_path, "cuda")[entry]()


# --- options at the edge of their range -------------------------------------------------------

def test_a_seed_too_large_for_the_generators_is_refused_naming_the_option(acdc, tmp_path):
    """torch seeds take 64 bits, and the loop adds the step to the seed: a larger --seed was an
    OverflowError traceback from torch.manual_seed after the run folder was prepared."""
    from typer.testing import CliRunner

    from fewsam.cli import app
    from fewsam.config import ConfigError

    result = CliRunner().invoke(app, ["fit", "fewshot", "--data", str(acdc), "--out", str(tmp_path / "run"),
                                      "--labeled-slices", "1", "--seed", str(2**64)])
    assert isinstance(result.exception, ConfigError), result.output
    assert "--seed must be at most" in str(result.exception)
    assert not (tmp_path / "run").exists()
    FitOptions(run=tmp_path / "run", data=acdc, seed=2**32 - 1)  # the largest seed still taken


@pytest.mark.parametrize("make", [
    lambda c: c.FewShotConfig(steps=2.5), lambda c: c.FewShotConfig(steps="400"), lambda c: c.FewShotConfig(lr="0.1"),
    lambda c: c.FitOptions(run="r", data="d", labeled_slices="2"), lambda c: c.FitOptions(run="r", seed=1.5),
    lambda c: c.FitOptions(run="r", labeled_cases=True)])
def test_a_python_caller_giving_an_option_of_the_wrong_type_gets_one_error_naming_it(make):
    """A TypeError from deep inside the fit (range(2.5), 400 // "400") named nothing the caller wrote."""
    from types import SimpleNamespace

    from fewsam.config import ConfigError
    from fewsam.methods.fewshot import FewShotConfig

    with pytest.raises(ConfigError, match=r"^--[a-z-]+ must be a (whole )?number, not "):
        make(SimpleNamespace(FewShotConfig=FewShotConfig, FitOptions=FitOptions))


def test_numbers_of_other_numeric_types_are_taken():
    import numpy as np

    from fewsam.methods.fewshot import FewShotConfig

    assert FewShotConfig(steps=np.int64(3), lr=1, ema=np.float32(0.5)).steps == 3


# --- links whose target is gone -----------------------------------------------------------------

def _png_folder(root: Path) -> Path:
    """images/cN.png + masks/cN.png, 0/255 masks."""
    import numpy as np

    from conftest import write_images_and_masks

    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    return write_images_and_masks(root, [f"c{i}" for i in range(5)], mask)


@pytest.mark.parametrize("gone", ["masks/c1.png", "images/c3.png"])
def test_a_png_image_or_mask_that_is_a_broken_link_is_named_not_dropped(tmp_path, gone):
    """Data linked in from a share that is not mounted: the image or mask was read as absent, so a
    case silently left the dataset (or was read as unlabelled) and every score was on fewer cases."""
    from fewsam.data import open_dataset
    from fewsam.errors import DataError

    root = _png_folder(tmp_path / "data")
    (root / gone).unlink()
    (root / gone).symlink_to(tmp_path / "share" / "c.png")
    with pytest.raises(DataError, match=f"{root / gone} is a link to .*share/c.png, which does not exist"):
        open_dataset(root).split("all")


def test_an_nnunet_label_that_is_a_broken_link_is_named_not_taken_for_unlabelled(tmp_path):
    from fewsam.data import open_dataset
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.errors import DataError

    root = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2)
    label = root / "labelsTr" / "phantom_001.nii.gz"
    label.unlink()
    label.symlink_to(tmp_path / "share" / "phantom_001.nii.gz")
    with pytest.raises(DataError, match="phantom_001.nii.gz is a link to .*, which does not exist"):
        open_dataset(root).load("phantom_001")
