"""Property tests: whatever bytes or arrays sit in a data folder, opening and loading it gives
valid Cases or a DataError, never another exception (and a valid Case's prediction round-trips)."""

from __future__ import annotations

import io
import tempfile
from functools import lru_cache
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from fewsam.data import Case, open_dataset, read_prediction, write_prediction
from fewsam.errors import DataError
from test_dicom import write_series

# Numeric warnings mean a reader passed garbage on instead of refusing it.
pytestmark = [pytest.mark.filterwarnings("error::RuntimeWarning"),
              pytest.mark.filterwarnings("error::numpy.exceptions.ComplexWarning")]
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PILLOW_FORMATS = {"png": "PNG", "jpg": "JPEG", "tif": "TIFF", "bmp": "BMP"}
FORMATS = [*PILLOW_FORMATS, "nii.gz", "h5", "npz", "dcm"]
DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float16,
          np.float32, np.float64, np.complex64]


def check_folder(root: Path) -> int:
    """Open and load every case: each is a valid Case (whose prediction round-trips) or a
    DataError; anything else fails the test. Returns how many cases loaded."""
    try:
        ds = open_dataset(root)
        ids = ds.split("all")
        ds.class_map  # noqa: B018 - label-scanning layouts read their labels here
    except DataError:
        return 0
    loaded = 0
    for cid in ids:
        try:
            case = ds.load(cid)
            slices = ds.num_slices(cid)
        except DataError:
            continue
        check_case(case)
        assert slices == case.num_slices
        pred = np.zeros(case.image.shape[:3], np.uint8)
        write_prediction(case, pred, root / "_pred")
        np.testing.assert_array_equal(read_prediction(case, root / "_pred"), pred)
        loaded += 1
    return loaded


def check_case(case: Case) -> None:
    assert isinstance(case, Case)
    assert case.image.dtype == np.float32 and case.image.size > 0
    assert case.image.ndim == 3 or (case.image.ndim == 4 and case.image.shape[-1] == 3)
    if case.label is not None:
        assert case.label.dtype == np.uint8 and case.label.shape == case.image.shape[:3]


# ---------------------------------------------------------------- valid files to damage


def pillow_bytes(fmt: str, array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=PILLOW_FORMATS[fmt])
    return buf.getvalue()


def nifti_bytes(array: np.ndarray) -> bytes:
    return nib.Nifti1Image(array, np.eye(4)).to_bytes()


def gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def h5_bytes(**datasets: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
    return buf.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@lru_cache(maxsize=None)
def valid_bytes(fmt: str, role: str) -> bytes:
    """A small valid file of ``fmt`` as the image or the label of a case."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    label = (rng.random((12, 10)) > 0.5).astype(np.uint8)
    if fmt in PILLOW_FORMATS:
        return pillow_bytes(fmt, image if role == "image" else label * 255)
    if fmt == "nii.gz":
        return gz(nifti_bytes(np.stack([image] * 2, -1).astype(np.float32) if role == "image"
                              else np.stack([label] * 2, -1)))
    if fmt == "h5":
        return h5_bytes(image=image.astype(np.float32), label=label)
    if fmt == "npz":
        return npz_bytes(slo_fundus=image, disc_cup_mask=-label.astype(np.int8))
    with tempfile.TemporaryDirectory() as tmp:
        write_series(Path(tmp), image[None].astype(np.int16))
        return (Path(tmp) / "slice1.dcm").read_bytes()


def place(root: Path, fmt: str, role: str, data: bytes) -> None:
    """Lay out one case of ``fmt`` with ``data`` as its image or label file (the other valid)."""
    other = "label" if role == "image" else "image"
    files = {role: data, other: valid_bytes(fmt, other)}
    if fmt in PILLOW_FORMATS:
        paths = {"image": f"images/a.{fmt}", "label": f"masks/a.{fmt}"}
    elif fmt == "nii.gz":
        paths = {"image": "images/a.nii.gz", "label": "labels/a.nii.gz"}
    elif fmt == "h5":
        paths, files = {"image": "data/a_frame01_slice_1.h5"}, {"image": data}
        (root / "train_slices.list").write_text("a_frame01_slice_1\n")
    elif fmt == "npz":
        paths, files = {"image": "a.npz"}, {"image": data}
    else:
        paths, files = {"image": "images/s1/slice1.dcm"}, {"image": data}
    for key, rel in paths.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(files[key])


# ---------------------------------------------------------------- properties


@FAST
@given(fmt=st.sampled_from(FORMATS), role=st.sampled_from(["image", "label"]), data=st.binary(max_size=600))
def test_random_bytes_give_a_case_or_a_data_error(fmt, role, data):
    with tempfile.TemporaryDirectory() as tmp:
        place(Path(tmp), fmt, role, data)
        check_folder(Path(tmp))


@FAST
@given(fmt=st.sampled_from(FORMATS), role=st.sampled_from(["image", "label"]),
       cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=4))
def test_truncated_or_damaged_files_give_a_case_or_a_data_error(fmt, role, cut, flips):
    good = bytearray(valid_bytes(fmt, role))
    for where, value in flips:
        good[int(where * (len(good) - 1))] = value
    with tempfile.TemporaryDirectory() as tmp:
        place(Path(tmp), fmt, role, bytes(good[: int(cut * len(good))] if cut < 1.0 else good))
        check_folder(Path(tmp))


def arrays(dtypes=DTYPES, max_dims: int = 4, max_side: int = 5):
    return hnp.arrays(st.sampled_from(dtypes), hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0,
                                                                 max_side=max_side))


@FAST
@given(image=arrays(), label=st.none() | arrays())
def test_random_h5_arrays(image, label):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        datasets = {"image": image} if label is None else {"image": image, "label": label}
        (root / "data" / "x_frame01.h5").write_bytes(h5_bytes(**datasets))
        (root / "val.list").write_text("x_frame01\n")
        check_folder(root)


@FAST
@given(image=arrays(), mask=st.none() | arrays(), age=st.none() | st.floats(allow_nan=True) | st.integers(-5, 10**6),
       race=st.none() | st.integers(-3, 9) | st.text(max_size=3))
def test_random_npz_arrays(image, mask, age, race):
    arrays_ = {"slo_fundus": image}
    if mask is not None:
        arrays_["disc_cup_mask"] = mask
    arrays_.update({k: np.asarray(v) for k, v in (("age", age), ("race", race)) if v is not None})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data_1.npz").write_bytes(npz_bytes(**arrays_))
        check_folder(Path(tmp))


NIFTI_DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float32, np.float64, np.complex64]


@FAST
@given(image=arrays(NIFTI_DTYPES, max_dims=5), label=st.none() | arrays(NIFTI_DTYPES, max_dims=5))
def test_random_nifti_arrays(image, label):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            files = {"images/v.nii.gz": gz(nifti_bytes(image))}
            if label is not None:
                files["labels/v.nii.gz"] = gz(nifti_bytes(label))
        except Exception:  # noqa: BLE001 - nibabel cannot write every shape; nothing to read then
            return
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        check_folder(root)


PILLOW_ARRAYS = st.one_of(
    hnp.arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6))),
    hnp.arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from([3, 4]))),
    hnp.arrays(np.uint16, st.tuples(st.integers(1, 6), st.integers(1, 6))),
    hnp.arrays(np.bool_, st.tuples(st.integers(1, 6), st.integers(1, 6))),
    hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 6))),
)


@FAST
@given(fmt=st.sampled_from(list(PILLOW_FORMATS)), image=PILLOW_ARRAYS, mask=st.none() | PILLOW_ARRAYS,
       classes=st.sampled_from([None, '{"1": "x"}', '{"1": {"name": "x", "min": 100}}',
                                '{"classes": {"1": "a", "2": "b"}, "pixel_values": {"1": 7, "2": 9}}']))
def test_random_2d_arrays_in_every_pillow_format(fmt, image, mask, classes):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, array in (("images/a", image), ("masks/a", mask)):
            if array is None:
                continue
            try:
                data = pillow_bytes(fmt, array)
            except (OSError, TypeError, ValueError, KeyError):  # a mode this format cannot store
                return
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / f"{rel}.{fmt}").write_bytes(data)
        if classes:
            (root / "classes.json").write_text(classes)
        check_folder(root)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=hnp.arrays(st.sampled_from([np.uint8, np.int16, np.uint16]),
                        st.tuples(st.integers(1, 3), st.integers(2, 6), st.integers(1, 6))),
       spacing=st.tuples(*[st.floats(0.1, 5.0)] * 3), label=st.booleans())
def test_random_dicom_series(array, spacing, label):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref = write_series(root / "images" / "s", array, spacing=spacing)
        if label:
            lab = sitk.GetImageFromArray((array % 3).astype(np.uint8))
            lab.CopyInformation(ref)
            (root / "labels").mkdir()
            sitk.WriteImage(lab, str(root / "labels" / "s.nii.gz"))
        assert check_folder(root) == 1


PREDICTION_FILES = {"png": "a.png", "nifti": "a.nii.gz", "h5": "a.h5", "npz": "a.npz", "dicom": "a"}


@FAST
@given(fmt=st.sampled_from(list(PREDICTION_FILES)), data=st.binary(max_size=600), cut=st.floats(0.0, 1.0))
def test_damaged_prediction_files_give_an_array_or_a_data_error(fmt, data, cut):
    """Random bytes, or a valid prediction cut short, where evaluate looks for a prediction."""
    case = Case("a", np.zeros((1, 3, 4), np.float32), None, fmt, PREDICTION_FILES[fmt])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_prediction(case, np.ones((1, 3, 4), np.uint8), Path(tmp))
        valid = path.read_bytes()
        for damaged in (data, valid[: int(cut * len(valid))]):
            path.write_bytes(damaged)
            try:
                pred = read_prediction(case, Path(tmp))
            except DataError:
                continue
            assert pred.dtype == np.uint8 and pred.shape == (1, 3, 4)


@pytest.mark.parametrize("fmt", [*PILLOW_FORMATS, "nii.gz"])
def test_a_damaged_label_file_leaves_the_image_readable_without_it(fmt, tmp_path):
    place(tmp_path, fmt, "label", valid_bytes(fmt, "label")[:20])
    dataset = open_dataset(tmp_path)
    cid = dataset.split("all")[0]
    case = dataset.load(cid, with_label=False)
    check_case(case)
    assert case.label is None
    with pytest.raises(DataError):
        dataset.load(cid)


@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_an_image_only_load_of_a_labelled_file_leaves_out_its_label(fmt, tmp_path):
    place(tmp_path, fmt, "image", valid_bytes(fmt, "image"))
    dataset = open_dataset(tmp_path)
    cid = dataset.split("all")[0]
    assert dataset.load(cid).label is not None
    assert dataset.load(cid, with_label=False).label is None
