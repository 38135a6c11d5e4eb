"""Readers: real ACDC/BUSI/multisite files from ../shared/data, generated NIfTI/npz/PNG folders."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import shared_data
from fewsam.data import open_dataset
from fewsam.data.readers import acdc_h5, fairseg_npz
from fewsam.errors import DataError

# ---------------------------------------------------------------- generators (used by other tests)


def make_nnunet(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray | None]],
                zooms=(1.5, 1.25, 4.0), labels=None, test: dict[str, np.ndarray] | None = None) -> Path:
    """nnU-Net v2 raw folder from (z, y, x) arrays; NIfTI files hold (x, y, z)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 2.5]
    for name, (image, label) in cases.items():
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), affine), root / "imagesTr" / f"{name}_0000.nii.gz")
        if label is not None:
            nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), affine), root / "labelsTr" / f"{name}.nii.gz")
    for name, image in (test or {}).items():
        (root / "imagesTs").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), affine), root / "imagesTs" / f"{name}_0000.nii.gz")
    spec = {"channel_names": {"0": "MRI"}, "labels": labels or {"background": 0, "RV": 1, "LV": 2},
            "numTraining": len(cases), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def volume(rng: np.random.Generator, shape=(4, 12, 10), classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    return rng.random(shape, dtype=np.float32), rng.integers(0, classes + 1, shape).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_npz(path: Path, image_key="slo_fundus", mask_key="disc_cup_mask", shape=(20, 16), **attrs) -> np.ndarray:
    """A FairSeg-style file; returns the class-index mask (0 bg, 1 rim, 2 cup)."""
    rng = np.random.default_rng(len(path.name))
    classes = rng.integers(0, 3, shape)
    coded = np.select([classes == 1, classes == 2], [-1, -2], 0).astype(np.int8)
    data = {image_key: rng.integers(0, 256, shape).astype(np.uint8), **attrs}
    if mask_key:
        data[mask_key] = coded
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in data.items()})
    return classes.astype(np.uint8)


# ---------------------------------------------------------------- ACDC (real files)


@pytest.fixture(scope="module")
def acdc():
    return open_dataset(shared_data("acdc"))


def test_acdc_layout_splits_and_classes(acdc):
    assert acdc.layout == "acdc-h5"
    assert acdc.class_map.names == {1: "RV", 2: "Myo", 3: "LV"}
    train, val = acdc.split("train"), acdc.split("val")
    assert len(train) == 1312 and train[0] == "patient099_frame01_slice_15"
    assert len(val) == 20 and val[0] == "patient028_frame01"
    assert acdc.split("val.list") == val


def test_acdc_slice_and_volume_cases(acdc):
    case = acdc.load("patient099_frame01_slice_15")
    assert case.image.ndim == 3 and case.image.shape[0] == 1 and case.image.dtype == np.float32
    assert case.label.shape == case.image.shape and case.label.dtype == np.uint8
    assert set(np.unique(case.label)) <= {0, 1, 2, 3}
    assert case.format == "h5" and case.rel_path == "patient099_frame01_slice_15.h5"
    assert case.spacing is None
    vol = acdc.load("patient028_frame01")
    assert vol.image.shape == vol.label.shape and vol.image.shape[0] > 1
    assert acdc.num_slices("patient028_frame01") == vol.image.shape[0]


def test_acdc_subjects_and_attributes(acdc):
    assert acdc.subject_of("patient099_frame01_slice_15") == "patient099"
    assert acdc.subject_of("patient028_frame02") == "patient028"
    attrs = acdc.load("patient002_frame01").attributes
    assert attrs["group"] == "DCM" and attrs["bmi"] == pytest.approx(27.34)


def test_acdc_budget_order_is_train_slices_list(acdc):
    order = acdc.labelled_budget_order()
    lines = (shared_data("acdc") / "train_slices.list").read_text().split()
    assert [r.case_id for r in order] == lines and all(r.z == 0 for r in order)


def test_acdc_missing_volumes_and_unknown_split(acdc):
    with pytest.raises(DataError, match="train.list names 140 case"):
        acdc.split("train_volumes")
    with pytest.raises(DataError, match="unknown split 'nope'.*train, val"):
        acdc.split("nope")
    with pytest.raises(DataError, match="list file .*missing.list not found"):
        acdc.split("missing.list")
    with pytest.raises(DataError, match="no case 'patient999'"):
        acdc.load("patient999")


def _acdc_copy(tmp_path: Path, files: list[str]) -> Path:
    src = shared_data("acdc")
    (tmp_path / "data").mkdir()
    for name in files:
        (tmp_path / "data" / f"{name}.h5").write_bytes((src / "data" / f"{name}.h5").read_bytes())
    (tmp_path / "train_slices.list").write_text("\n".join(files) + "\n")
    return tmp_path


def test_acdc_custom_list_and_bad_files(tmp_path):
    root = _acdc_copy(tmp_path, ["patient099_frame01_slice_15", "patient099_frame01_slice_11"])
    (root / "mine.list").write_text("patient099_frame01_slice_11\n")
    (root / "empty.list").write_text("\n")
    ds = open_dataset(root)
    assert ds.split("mine.list") == ["patient099_frame01_slice_11"]
    with pytest.raises(DataError, match="empty"):
        ds.split("empty.list")
    path = root / "data" / "patient099_frame01_slice_15.h5"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match="patient099_frame01_slice_15.h5.*truncated"):
        ds.load("patient099_frame01_slice_15")


def test_acdc_label_values_and_shapes_checked(tmp_path):
    root = _acdc_copy(tmp_path, [])
    with h5py.File(root / "data" / "a_frame01_slice_1.h5", "w") as f:
        f["image"] = np.zeros((8, 8), np.float32)
        f["label"] = np.full((8, 8), 5, np.uint8)
    with h5py.File(root / "data" / "b_frame01_slice_1.h5", "w") as f:
        f["image"] = np.zeros((8, 8), np.float32)
        f["label"] = np.zeros((8, 9), np.uint8)
    ds = open_dataset(root)
    with pytest.raises(DataError, match=r"label values \[5\] in .*a_frame01_slice_1.h5"):
        ds.load("a_frame01_slice_1")
    with pytest.raises(DataError, match="shapes differ"):
        ds.load("b_frame01_slice_1")


def test_open_is_lazy(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("open_dataset read an image")

    monkeypatch.setattr(acdc_h5.h5py, "File", refuse)
    monkeypatch.setattr(Image, "open", refuse)
    monkeypatch.setattr(nib, "load", refuse)
    monkeypatch.setattr(fairseg_npz.np, "load", refuse)
    open_dataset(shared_data("acdc"))
    open_dataset(shared_data("busi"))
    open_dataset(shared_data("multisite") / "Fundus")


# ---------------------------------------------------------------- PNG folders (real files)


@pytest.fixture(scope="module")
def busi():
    return open_dataset(shared_data("busi"))


def test_busi_splits_leave_normal_out(busi):
    train, val = busi.split("train"), busi.split("val")
    assert len(train) == 48 and len(val) == 12
    assert val[:6] == [f"benign/benign ({i})" for i in range(25, 31)]
    assert val[6:] == [f"malignant/malignant ({i})" for i in range(25, 31)]
    assert not any(c.startswith("normal") for c in train + val)
    assert len(busi.split("normal")) == 50 and len(busi.split("all")) == 110


def test_busi_labelled_budget_is_stratified(busi):
    from fewsam.data import select_labelled, unlabelled_pool

    labelled = select_labelled(busi, n_cases=30)
    ids = [r.case_id for r in labelled]
    assert sum(c.startswith("benign/") for c in ids) == 15 and sum(c.startswith("malignant/") for c in ids) == 15
    assert ids[:4] == ["benign/benign (1)", "malignant/malignant (1)", "benign/benign (2)", "malignant/malignant (2)"]
    pool = unlabelled_pool(busi, labelled)
    assert len(pool) == 18 and not set(ids) & {r.case_id for r in pool}


def test_busi_case_greyscale_and_merged_masks(busi):
    case = busi.load("benign/benign (25)")
    root = shared_data("busi")
    m0 = np.asarray(Image.open(root / "benign/benign (25)_mask.png").convert("L")) > 0
    m1 = np.asarray(Image.open(root / "benign/benign (25)_mask_1.png").convert("L")) > 0
    assert case.image.shape == (1, *m0.shape) and case.image.dtype == np.float32
    np.testing.assert_array_equal(case.label[0], (m0 | m1).astype(np.uint8))
    assert case.rel_path == "benign/benign (25).png"
    assert case.attributes["pathology"] == "benign"
    # BUSI ships benign (4)_mask_1.png at another size: it is left out, and said so.
    odd = busi.load("benign/benign (4)")
    assert odd.meta["skipped_masks"][0].endswith("benign (4)_mask_1.png")
    assert busi.class_map.names == {1: "lesion"}
    normal = busi.load("normal/normal (1)")
    assert normal.label is not None and not normal.label.any()


def test_fundus_task_folder_rgb_and_coding():
    ds = open_dataset(shared_data("multisite") / "Fundus")
    assert ds.class_map.names == {1: "rim", 2: "cup"}
    cid = "Domain1/test/ROIs/image/gdrishtiGS_001"
    case = ds.load(cid)
    raw = np.asarray(Image.open(ds.root / "Domain1/test/ROIs/mask/gdrishtiGS_001.png").convert("L"))
    assert case.image.shape == (1, *raw.shape, 3)
    np.testing.assert_array_equal(case.label[0], np.select([raw == 0, raw == 128], [2, 1], 0))
    assert case.attributes["site"] == "Domain1" and case.attributes["split"] == "test"
    assert len(ds.split("train")) == 12 and len(ds.split("test")) == 12


def test_prostate_task_folder_and_unlabelled_image():
    ds = open_dataset(shared_data("multisite") / "ProstateSlice")
    assert ds.class_map.names == {1: "prostate"}
    case = ds.load("I2CVB/train/image/00_03")
    assert case.label is None and case.image.shape == (1, 384, 384)
    assert set(np.unique(ds.load("BIDMC/train/image/00_00").label)) <= {0, 1}


def test_prostate_masks_are_inverted_prostate_is_black():
    """The multisite prostate masks store the prostate as 0 and background as 255."""
    ds = open_dataset(shared_data("multisite") / "ProstateSlice")
    raw = np.asarray(Image.open(ds.root / "BMC/test/mask/00_01.png").convert("L"))
    label = ds.load("BMC/test/image/00_01").label[0]
    np.testing.assert_array_equal(label, (raw == 0).astype(np.uint8))
    assert 0.0 < label.mean() < 0.1  # a prostate covers a few percent of a slice, not 96%


def test_multisite_root_asks_for_a_task_folder():
    with pytest.raises(DataError, match="several tasks.*open one task folder.*Fundus"):
        open_dataset(shared_data("multisite"))


# ---------------------------------------------------------------- PNG folders (generated)


def test_generic_image_mask_folders_and_every_fifth_val(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        save_png(tmp_path / "images" / f"img{i:02d}.png", rng.integers(0, 256, (6, 7), dtype=np.uint8))
        save_png(tmp_path / "masks" / f"img{i:02d}.png", (rng.random((6, 7)) > 0.5).astype(np.uint8) * 255)
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "foreground"}
    assert ds.split("val") == ["images/img04", "images/img09"]
    assert len(ds.split("train")) == 8
    case = ds.load("images/img03")
    assert case.image.shape == (1, 6, 7) and case.label.max() <= 1


def test_masks_named_after_their_image_with_a_suffix(tmp_path):
    blank = np.zeros((6, 7), np.uint8)
    for name, mask in (("a", "a_mask.png"), ("b", "b_segmentation.png"), ("c", "c_gt.bmp"), ("d", None)):
        save_png(tmp_path / "images" / f"{name}.jpg", blank)
        if mask:
            save_png(tmp_path / "masks" / mask, np.pad(np.full((2, 2), 255, np.uint8), ((2, 2), (2, 3))))
    save_png(tmp_path / "masks" / "a.png", np.full((6, 7), 255, np.uint8))  # the plain stem comes first
    ds = open_dataset(tmp_path)
    assert {cid: e.label.name if e.label else None for cid, e in ds.entries.items()} == {
        "images/a": "a.png", "images/b": "b_segmentation.png", "images/c": "c_gt.bmp", "images/d": None}
    assert ds.load("images/b").label.sum() == 4 and ds.load("images/a").label.sum() == 42


def test_busi_style_pairs_classes_json_and_bad_values(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((5, 5, 3), np.uint8))
    save_png(tmp_path / "a_mask.png", np.array([[0, 40, 80, 0, 0]] * 5, np.uint8))
    save_png(tmp_path / "b.png", np.zeros((5, 5, 3), np.uint8))
    save_png(tmp_path / "b_mask.png", np.full((5, 5), 99, np.uint8))
    (tmp_path / "classes.json").write_text(json.dumps(
        {"classes": {"1": "liver", "2": "tumour"}, "pixel_values": {"1": 40, "2": 80}}))
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "liver", 2: "tumour"}
    np.testing.assert_array_equal(ds.load("a").label[0, 0], [0, 1, 2, 0, 0])
    with pytest.raises(DataError, match=r"mask values \[99\] in .*b_mask.png"):
        ds.load("b")
    with pytest.raises(DataError) as grey:
        ds.load("b")
    assert "colour" not in str(grey.value)


def test_a_colour_mask_outside_the_coding_says_masks_are_grey(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((5, 5), np.uint8))
    blue = np.zeros((5, 5, 3), np.uint8)
    blue[1:3, 1:3, 2] = 255
    save_png(tmp_path / "a_mask.png", blue)
    with pytest.raises(DataError, match=r"mask values \[29\] in .*a_mask.png.*in colour.*one grey value per class"):
        open_dataset(tmp_path).load("a")


def test_truncated_png_and_size_mismatch(tmp_path):
    save_png(tmp_path / "images" / "x.png", np.zeros((40, 40), np.uint8))
    save_png(tmp_path / "masks" / "x.png", np.zeros((40, 41), np.uint8))
    save_png(tmp_path / "images" / "y.png", np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    save_png(tmp_path / "masks" / "y.png", np.zeros((40, 40), np.uint8))
    y = tmp_path / "images" / "y.png"
    y.write_bytes(y.read_bytes()[:200])
    ds = open_dataset(tmp_path)
    with pytest.raises(DataError, match="shapes differ"):
        ds.load("images/x")
    with pytest.raises(DataError, match="y.png.*truncated"):
        ds.load("images/y")


# ---------------------------------------------------------------- NIfTI (generated)


def test_nnunet_v2_folder(tmp_path):
    rng = np.random.default_rng(1)
    cases = {f"c{i}": volume(rng) for i in range(5)}
    root = make_nnunet(tmp_path, cases, test={"t0": volume(rng)[0]})
    ds = open_dataset(root)
    assert ds.layout == "nifti" and ds.class_map.names == {1: "RV", 2: "LV"}
    assert ds.split("val") == ["c4"] and ds.split("train") == ["c0", "c1", "c2", "c3"]
    assert ds.split("test") == ["t0"] and ds.load("t0").label is None
    case = ds.load("c2")
    np.testing.assert_allclose(case.image, cases["c2"][0])
    np.testing.assert_array_equal(case.label, cases["c2"][1])
    assert case.spacing == pytest.approx((4.0, 1.25, 1.5))
    assert case.rel_path == "c2.nii.gz" and case.format == "nifti"
    assert np.allclose(case.meta["affine"][:3, 3], [-10.0, 5.0, 2.5])
    assert ds.num_slices("c2") == 4
    assert len(ds.labelled_budget_order()) == 16


def test_splits_final_json_and_label_errors(tmp_path):
    rng = np.random.default_rng(2)
    image, label = volume(rng)
    bad = label.copy()
    bad[0, 0, 0] = 7
    root = make_nnunet(tmp_path, {"a": (image, label), "b": (image, bad), "c": (image, label[:, :, :-1])})
    (root / "splits_final.json").write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}]))
    ds = open_dataset(root)
    assert ds.split("train") == ["a", "b"] and ds.split("val") == ["c"]
    with pytest.raises(DataError, match=r"label values \[7\] in .*b.nii.gz"):
        ds.load("b")
    with pytest.raises(DataError, match="shapes differ"):
        ds.load("c")
    path = root / "imagesTr" / "a_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError, match="a_0000.nii.gz"):
        ds.load("a")


def test_msd_v1_4d_image_uses_channel_0(tmp_path):
    rng = np.random.default_rng(3)
    image4d = rng.random((6, 5, 3, 2), dtype=np.float32)  # (x, y, z, channel)
    label = rng.integers(0, 2, (6, 5, 3)).astype(np.uint8)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(image4d, np.eye(4)), tmp_path / "imagesTr" / "pros_01.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "labelsTr" / "pros_01.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "prostate"},
        "training": [{"image": "./imagesTr/pros_01.nii.gz", "label": "./labelsTr/pros_01.nii.gz"}],
        "test": []}))
    ds = open_dataset(tmp_path)
    case = ds.load("pros_01")
    assert ds.class_map.names == {1: "prostate"} and case.meta["channels_dropped"] == 1
    np.testing.assert_allclose(case.image, image4d[..., 0].transpose(2, 1, 0))
    np.testing.assert_array_equal(case.label, label.transpose(2, 1, 0))


def test_plain_nifti_folder_classes_from_values(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, top in (("p1", 1), ("p2", 3)):
        image, label = volume(rng, classes=top)
        label[0, 0, 0] = top
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), np.eye(4)), tmp_path / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), np.eye(4)), tmp_path / "labels" / f"{name}.nii.gz")
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "class1", 2: "class2", 3: "class3"}
    (tmp_path / "classes.json").write_text(json.dumps({"1": "a", "2": "b", "3": "c"}))
    assert open_dataset(tmp_path).class_map.names == {1: "a", 2: "b", 3: "c"}


@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(2, 9), st.integers(2, 9)),
       zooms=st.tuples(*[st.floats(0.25, 5.0)] * 3).map(lambda xyz: (*xyz[:2], max(xyz))),
       seed=st.integers(0, 2**16))
def test_nifti_round_trip(shape, zooms, seed):
    """Volumes whose thickest voxel axis is NIfTI z (the usual storage) read as (z, y, x)."""
    rng = np.random.default_rng(seed)
    image, label = volume(rng, shape)
    with tempfile.TemporaryDirectory() as tmp:
        ds = open_dataset(make_nnunet(Path(tmp), {"v": (image, label)}, zooms=zooms))
        case = ds.load("v")
        np.testing.assert_allclose(case.image, image)
        np.testing.assert_array_equal(case.label, label)
        assert case.spacing == pytest.approx(zooms[::-1], rel=1e-5)


# ---------------------------------------------------------------- Harvard-FairSeg npz (generated)


def test_fairseg_current_keys_lists_and_attributes(tmp_path):
    expected = make_npz(tmp_path / "data_00001.npz", gender=1, race=2, ethnicity=0, language=1,
                        maritalstatus=3, age=71.5, pid="P1")
    make_npz(tmp_path / "data_00002.npz", gender=0, race=0, ethnicity=-1, language=-1,
             maritalstatus=-1, age=40.0)
    (tmp_path / "train.list").write_text("data_00002.npz\n")
    (tmp_path / "test.list").write_text("data_00001.npz\n")
    ds = open_dataset(tmp_path)
    assert ds.layout == "fairseg-npz" and ds.class_map.names == {1: "rim", 2: "cup"}
    assert ds.split("train") == ["data_00002"] and ds.split("test") == ["data_00001"]
    case = ds.load("data_00001")
    np.testing.assert_array_equal(case.label[0], expected)
    assert case.image.shape == (1, 20, 16) and case.format == "npz"
    assert case.attributes == {"gender": "male", "race": "White", "ethnicity": "non-Hispanic",
                               "language": "Spanish", "maritalstatus": "widowed", "age": 71.5,
                               "pid": "P1"}
    other = ds.load("data_00002").attributes
    assert other["ethnicity"] is None and other["language"] is None and other["race"] == "Asian"


@pytest.mark.parametrize("mask_key", ["disc_cup", "disc_cup_borders"])
def test_fairseg_older_files(tmp_path, mask_key):
    expected = make_npz(tmp_path / "Training" / "data_00003.npz", image_key="fundus_slo",
                        mask_key=mask_key, race=7, hispanic=1, marriagestatus=0, age=365 * 70)
    make_npz(tmp_path / "Test" / "data_00004.npz", image_key="fundus_slo", mask_key=mask_key, race=2)
    ds = open_dataset(tmp_path)
    assert ds.split("train") == ["Training/data_00003"] and ds.split("test") == ["Test/data_00004"]
    case = ds.load("Training/data_00003")
    np.testing.assert_array_equal(case.label[0], expected)
    assert case.rel_path == "Training/data_00003.npz"
    assert case.attributes["race"] == "White" and case.attributes["ethnicity"] == "Hispanic"
    assert case.attributes["maritalstatus"] == "married or partnered"
    assert case.attributes["age"] == pytest.approx(70.0)
    assert ds.load("Test/data_00004").attributes["race"] == "Asian"


def test_fairseg_flat_folder_and_bad_files(tmp_path):
    make_npz(tmp_path / "data_1.npz")
    make_npz(tmp_path / "data_2.npz", mask_key=None)
    np.savez(tmp_path / "data_3.npz", something=np.zeros(3))
    np.savez(tmp_path / "data_4.npz", slo_fundus=np.zeros((4, 4)), disc_cup_mask=np.full((4, 4), 3))
    make_npz(tmp_path / "data_5.npz")
    (tmp_path / "data_5.npz").write_bytes((tmp_path / "data_5.npz").read_bytes()[:100])
    ds = open_dataset(tmp_path)
    assert ds.split("train") == ["data_1", "data_2", "data_3", "data_4"] and ds.split("val") == ["data_5"]
    assert ds.load("data_2").label is None
    with pytest.raises(DataError, match="no image key"):
        ds.load("data_3")
    with pytest.raises(DataError, match=r"mask values \[3\]"):
        ds.load("data_4")
    with pytest.raises(DataError, match="data_5.npz"):
        ds.load("data_5")


# ---------------------------------------------------------------- detection errors


def test_missing_root_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no known data layout.*acdc-h5.*nifti.*fairseg-npz.*png"):
        open_dataset(tmp_path)


def test_list_file_outside_the_dataset_and_the_dataset_one_first(tmp_path, monkeypatch):
    from fewsam.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=0)
    ds = open_dataset(root)
    first = ds.split("train")[0]
    outside = tmp_path / "lists" / "mine.list"
    outside.parent.mkdir()
    outside.write_text(f"# held-out patients\n{first}\n  # (one so far)\n")
    assert ds.split(str(outside)) == [first]
    monkeypatch.chdir(tmp_path)
    assert ds.split("lists/mine.list") == [first]
    second = ds.split("train")[1]
    (root / "both.list").write_text(second + "\n")
    (tmp_path / "both.list").write_text(first + "\n")  # a stray file of the same name in the cwd
    assert ds.split("both.list") == [second]
    with pytest.raises(DataError, match="list file nope.list not found in .* or as a path"):
        ds.split("nope.list")


@pytest.mark.parametrize("name, in_dataset", [("pool.list", False), ("lists", False), ("imagesTr", True)],
                         ids=["list-suffix", "own-path", "in-dataset"])
def test_a_split_naming_a_folder_is_said_to_be_a_folder(tmp_path, monkeypatch, name, in_dataset):
    """``--split pool.list`` naming a folder was "not found" (the user then found it on disk); a folder
    without a list suffix was an "unknown split"."""
    from fewsam.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=0)
    monkeypatch.chdir(tmp_path)
    folder = root / name if in_dataset else Path(name)
    folder.mkdir(exist_ok=True)
    ds = open_dataset(root)
    with pytest.raises(DataError) as refused:
        ds.split(name)
    assert str(refused.value) == (f"{folder} is a folder where a list file of cases is expected; give a list "
                                  f"file of case ids (one a line) or a split: {', '.join(ds.split_names())}")


def test_float_labels_with_rounding_noise_are_rounded_and_interpolated_ones_refused(tmp_path):
    rng = np.random.default_rng(3)
    image, label = volume(rng, (3, 8, 6))
    noisy = label.astype(np.float32) + rng.choice([-6e-8, 0.0, 1.2e-7], label.shape).astype(np.float32)
    case = open_dataset(make_nnunet(tmp_path / "noisy", {"v": (image, noisy)})).load("v")
    np.testing.assert_array_equal(case.label, label)
    halves = label.astype(np.float32)
    halves[0, 0, :2] = [0.5, 1.5]
    with pytest.raises(DataError, match=r"non-integer values \(0.5, 1.5\).*nearest neighbour"):
        open_dataset(make_nnunet(tmp_path / "halves", {"v": (image, halves)})).load("v")
