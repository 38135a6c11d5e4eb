"""How the label files of volume datasets become classes: 3D Slicer segments matched by name in every
case (whatever their order in each file, or where a case lacks one), a segmentation without segments,
nnU-Net's region-based and out-of-range labels, and an nnU-Net v2 dataset of FreeSurfer .mgz volumes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fewsam.data import open_dataset, write_prediction
from fewsam.data.phantom import phantom_volume
from fewsam.data.readers.slicer_segmentation import segments_of
from fewsam.errors import DataError
from fewsam.evaluate import evaluate
from fewsam.info import dataset_info
from conftest import assert_one_line_error, run_fewsam
from test_dicom import write_series
from test_slicer_segmentations import SHAPE, blank, reference_volume, write_segmentation


def organs() -> tuple[np.ndarray, np.ndarray]:
    """Where the liver and the tumour are (0/1 each, apart)."""
    liver, tumour = blank(), blank()
    liver[1:5, 2:8, 2:6] = 1
    tumour[1:3, 2:5, 8:11] = 1
    return liver, tumour


def write_cases(root: Path, cases: dict[str, list[str]]) -> None:
    """One volume and one segmentation per case, its segments named and ordered as ``cases`` lists them
    (segment N stored under value N + 1 in one layer)."""
    reference = reference_volume(root / "images" / "ref.nrrd")
    (root / "images" / "ref.nrrd").unlink()
    masks = dict(zip(("liver", "tumour"), organs()))
    for case, names in cases.items():
        reference_volume(root / "images" / f"{case}.nrrd")
        layer = sum((n + 1) * masks[name.casefold()] for n, name in enumerate(names)).astype(np.uint8)
        write_segmentation(root / "labels" / f"{case}.seg.nrrd", [layer], [(name, n + 1, 0) for n, name in
                                                                           enumerate(names)], reference)


# ---------------------------------------------------------------- Slicer segments: one class per name


def test_segments_in_any_order_or_missing_are_one_class_per_name_whichever_cases_are_read(tmp_path):
    """Case b lists its segments in the other order and case c lacks the liver: numbered by first
    appearance, a folder of b and c had "tumour" as class 1, where the folder of all three had "liver",
    and a run fitted on one was refused on the other."""
    cases = {"a": ["liver", "tumour"], "b": ["tumour", "liver"], "c": ["tumour"]}
    write_cases(tmp_path / "all", cases)
    write_cases(tmp_path / "some", {case: cases[case] for case in ("b", "c")})
    liver, tumour = organs()
    for folder in ("all", "some"):
        ds = open_dataset(tmp_path / folder)
        assert ds.class_map.names == {1: "liver", 2: "tumour"}
        assert [c["name"] for c in dataset_info(tmp_path / folder)["classes"]] == ["background", "liver", "tumour"]
        for case in ds.entries:
            expected = tumour * 2 + (liver if "liver" in cases[case] else 0)
            loaded = ds.load(case)
            np.testing.assert_array_equal(loaded.label, expected)
            written = write_prediction(loaded, loaded.label, tmp_path / f"pred-{folder}")
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written))), expected)
            assert [(s.name, s.label_value) for s in segments_of(written)] == [("liver", 1), ("tumour", 2)]


def test_a_prediction_of_a_slicer_labelled_case_names_its_classes_and_reads_back_as_its_label(tmp_path):
    """Written as bare class values, a prediction (or a label the studio exports) read back as a plain
    label map: its classes became "class1", "class2", and info called them values."""
    write_cases(tmp_path / "data", {"a": ["tumour", "liver"]})
    case = open_dataset(tmp_path / "data").load("a")
    written = write_prediction(case, case.label, tmp_path / "pred")
    back = tmp_path / "back"
    shutil.copytree(tmp_path / "data" / "images", back / "images")
    (back / "labels").mkdir()
    shutil.copy(written, back / "labels" / "a.seg.nrrd")
    ds = open_dataset(back)
    assert ds.class_map.names == {1: "liver", 2: "tumour"} and ds.labels_are_segmentations
    np.testing.assert_array_equal(ds.load("a").label, case.label)


def test_classes_json_naming_not_every_segment_reads_them_by_place_only_where_that_is_one_reading(
        tmp_path, notices):
    """A segment named as no class ("tumour" beside the class "tumor") was read by its place in its own
    file: class 2 in case a and class 1 in case b, without a word beyond "read by place"."""
    classes = json.dumps({"1": "liver", "2": "tumor"})
    write_cases(tmp_path / "one_order", {"a": ["liver", "tumour"], "b": ["liver", "tumour"]})
    (tmp_path / "one_order" / "classes.json").write_text(classes, encoding="utf-8")
    liver, tumour = organs()
    ds = open_dataset(tmp_path / "one_order")
    for case in ("a", "b"):
        np.testing.assert_array_equal(ds.load(case).label, liver + 2 * tumour)
    assert "segment(s) 'tumour' name no class (liver, tumor); segment N is read as class N + 1" in notices.text
    assert [(c["name"], c["stored_as"]) for c in dataset_info(tmp_path / "one_order")["classes"]][1:] == [
        ("liver", "segment 'liver'"), ("tumor", "segment 'tumour'")]

    write_cases(tmp_path / "two_orders", {"a": ["liver", "tumour"], "b": ["tumour", "liver"]})
    (tmp_path / "two_orders" / "classes.json").write_text(classes, encoding="utf-8")
    with pytest.raises(DataError, match=r"segment\(s\) 'tumour' name no class \(liver, tumor\), and the "
                                        r"segmentations do not hold their segments in one order"):
        open_dataset(tmp_path / "two_orders").load("b")
    assert_one_line_error(run_fewsam("info", str(tmp_path / "two_orders"), cwd=tmp_path),
                          "segment(s) 'tumour' name no class (liver, tumor)")

    write_cases(tmp_path / "against_names", {"a": ["liver", "tumour"]})
    (tmp_path / "against_names" / "classes.json").write_text(json.dumps({"1": "tumour", "2": "lesion"}),
                                                              encoding="utf-8")
    with pytest.raises(DataError, match=r"segment\(s\) 'liver' name no class \(tumour, lesion\)"):
        open_dataset(tmp_path / "against_names").load("a")  # by place, "tumour" would be class 2


def test_classes_json_naming_every_segment_matches_each_by_name_in_any_order(tmp_path):
    write_cases(tmp_path, {"a": ["liver", "tumour"], "b": ["Tumour", "LIVER"]})
    (tmp_path / "classes.json").write_text(json.dumps({"1": "tumour", "2": "liver"}), encoding="utf-8")
    liver, tumour = organs()
    ds = open_dataset(tmp_path)
    for case in ("a", "b"):
        np.testing.assert_array_equal(ds.load(case).label, 2 * liver + tumour)


# ---------------------------------------------------------------- a segmentation without segments


def write_segmentation_without_segments(path: Path, reference: sitk.Image, voxels: int = 1) -> None:
    """A segmentation whose header names no segment (Slicer's ``Segmentation_`` fields only), of one
    voxel or on ``reference``'s grid."""
    image = sitk.Image(reference.GetSize() if voxels > 1 else (1, 1, 1), sitk.sitkUInt8)
    if voxels > 1:
        image.CopyInformation(reference)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


@pytest.mark.parametrize("voxels", [1, 2], ids=["one-voxel", "full-grid"])
def test_a_segmentation_without_segments_is_background_said_once(tmp_path, notices, voxels):
    """Read as a plain label map, a one-voxel file lay nowhere on its image and was refused, and its
    voxel values were taken for classes; as an all-empty segmentation is, it is background."""
    reference = reference_volume(tmp_path / "nifti" / "images" / "v.nrrd")
    reference_volume(tmp_path / "nifti" / "images" / "w.nrrd")
    write_segmentation_without_segments(tmp_path / "nifti" / "labels" / "v.seg.nrrd", reference, voxels)
    liver, _ = organs()
    write_segmentation(tmp_path / "nifti" / "labels" / "w.seg.nrrd", [liver], [("liver", 1, 0)], reference)
    ds = open_dataset(tmp_path / "nifti")
    label = ds.load("v").label
    assert label.shape == SHAPE and not label.any()
    np.testing.assert_array_equal(ds.load("w").label, liver)
    assert ds.class_map.names == {1: "liver"} and ds.labels_are_segmentations

    rng = np.random.default_rng(1)
    series = write_series(tmp_path / "dicom" / "images" / "p1", rng.integers(0, 1000, SHAPE).astype(np.int16))
    write_segmentation_without_segments(tmp_path / "dicom" / "labels" / "p1.seg.nrrd", series, voxels)
    label = open_dataset(tmp_path / "dicom").load("p1").label
    assert label.shape == SHAPE and not label.any()
    said = [r.getMessage() for r in notices.records if "without segments" in r.getMessage()]
    assert len(said) == 2 and "the case's label is background" in said[0]


def write_plain_beside_segmentations(root: Path) -> Path:
    """Case a: a Slicer segmentation (segments "Tumour" then "Liver", as an annotator added them); case b:
    a plain label map as Slicer exports it, in that order (1 tumour, 2 liver)."""
    write_cases(root, {"a": ["Tumour", "Liver"]})
    reference = reference_volume(root / "images" / "b.nrrd")
    liver, tumour = organs()
    image = sitk.GetImageFromArray((tumour + 2 * liver).astype(np.uint8))
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(root / "labels" / "b.nrrd"))
    return root


def test_plain_label_maps_beside_slicer_segmentations_need_their_classes_named(tmp_path):
    """Segments are numbered by name (Liver 1, Tumour 2), the exported map by the order they were added
    (Tumour 1): the liver of case b was read as class "Liver" of case a's tumour."""
    data = write_plain_beside_segmentations(tmp_path / "data")
    refused = run_fewsam("info", str(data), cwd=tmp_path)
    assert_one_line_error(refused, "error: ")
    assert refused.stderr.strip() == (
        f"error: the labels of {data} mix 3D Slicer segmentations (segments 'Liver', 'Tumour') with plain label maps "
        "(values 1, 2), and no file says which value is which segment: name the classes by value in "
        f'{data / "classes.json"} ({{"1": "Liver", "2": "Tumour", ...}}), or give every case one kind of label file')
    (data / "classes.json").write_text('{"1": "Tumour", "2": "Liver"}', encoding="utf-8")
    dataset = open_dataset(data)
    a, b = dataset.load("a").label, dataset.load("b").label
    np.testing.assert_array_equal(a, b)  # the same organs, the same classes, by name and by value


# ---------------------------------------------------------------- nnU-Net dataset.json labels


def nnunet_folder(root: Path, labels: dict, ending: str = ".nii.gz", shape: tuple[int, int] = (16, 20)) -> Path:
    """Two phantom cases as nnU-Net v2 stores them (``imagesTr/<case>_0000``, ``labelsTr/<case>``), MGH
    files for ``.mgz``, on a turned affine as FreeSurfer's are."""
    rng = np.random.default_rng(0)
    affine = np.array([[-1.0, 0, 0, 10], [0, 0, 1.5, -20], [0, -1.2, 0, 30], [0, 0, 0, 1]])
    kind = nib.MGHImage if ending == ".mgz" else nib.Nifti1Image
    for case in ("c1", "c2"):
        image, label = phantom_volume(rng, slices=2, shape=shape)
        for folder, name, array in (("imagesTr", f"{case}_0000", image * 1000), ("labelsTr", case, label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            data = array.transpose(2, 1, 0).astype(np.float32 if folder == "imagesTr" else np.uint8)
            nib.save(kind(data, affine), str(root / folder / f"{name}{ending}"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": labels,
                                                   "numTraining": 2, "file_ending": ending}), encoding="utf-8")
    return root


@pytest.mark.parametrize("labels, message", [
    ({"background": 0, "whole tumour": [1, 2, 70000]}, "labels entry 'whole tumour' has value 70000; label values are 0"),
    ({"background": 0, "tumour": -1}, "labels entry 'tumour' has value -1"),
    ({"background": 0, "whole tumour": [], "core": [2]}, "bad labels entry 'whole tumour': []; a region lists one or"),
    ({"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "ignore": 3},
     "the 'ignore' label's value 3 is also the class"),
    ({"background": 1, "tumour": 2}, "labels entry 'background': 1 gives the background the value 1"),
], ids=["region-beyond-16-bits", "negative", "empty-region", "ignore-on-a-region-value", "background-not-0"])
def test_dataset_json_labels_fewsam_cannot_hold_are_refused(tmp_path, labels, message):
    """Values beyond 0-65535 and empty regions became classes (class 70000, class -1) that no label file can
    store; an ignore label on a region's value would make that region's voxels unannotated; a background
    numbered 1 became a class named "background", scored as one, and every 0 voxel no class at all."""
    with pytest.raises(DataError, match=re.escape(message)):
        open_dataset(nnunet_folder(tmp_path, labels))


def test_a_refused_dataset_json_label_is_one_error_line_of_info(tmp_path):
    nnunet_folder(tmp_path / "data", {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3],
                                      "ignore": 0})
    assert_one_line_error(run_fewsam("info", str(tmp_path / "data"), cwd=tmp_path),
                          "dataset.json: the 'ignore' label cannot be 0, the background")


def test_brats_regions_name_each_value_as_its_voxels_are(tmp_path):
    """Value 1 was named "whole tumour" (nnU-Net's regions_class_order writes it so), and its voxels are
    the whole tumour less its core: scores of that class read as the whole tumour's."""
    nnunet_folder(tmp_path, {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3],
                             "enhancing tumour": 3})
    assert open_dataset(tmp_path).class_map.names == {1: "whole tumour without tumour core",
                                                      2: "tumour core without enhancing tumour",
                                                      3: "enhancing tumour"}


def test_an_nnunet_dataset_of_mgz_volumes_is_read_predicted_as_mgz_and_evaluated(tmp_path):
    """FreeSurfer volumes in nnU-Net v2's layout ("file_ending": ".mgz"): ``fewsam info`` names their
    classes, and each prediction is an MGH file on its image's affine that evaluate reads back."""
    data = nnunet_folder(tmp_path / "data", {"background": 0, "RV": 1, "Myo": 2, "LV": 3}, ".mgz")
    shown = run_fewsam("info", str(data), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "classes  0 background (stored as 0), 1 RV (stored as 1), 2 Myo (stored as 2), 3 LV" in shown.stdout
    assert "all            2 cases, 4 slices, 2 labelled" in shown.stdout
    ds = open_dataset(data)
    for case_id in ds.entries:
        case = ds.load(case_id)
        wrong = np.where(case.label == 3, 1, case.label) if case_id == "c2" else case.label  # LV called RV
        path = write_prediction(case, wrong, tmp_path / "pred")
        back, image = nib.load(str(path)), nib.load(str(data / "imagesTr" / f"{case_id}_0000.mgz"))
        assert path.name == f"{case_id}.mgz" and isinstance(back, nib.MGHImage) and back.shape == image.shape
        np.testing.assert_allclose(back.affine, image.affine, atol=1e-4)
        stored = nib.load(str(data / "labelsTr" / f"{case_id}.mgz")).dataobj
        assert (np.asarray(back.dataobj) == np.asarray(stored)).all() == (case_id == "c1")
    scores = evaluate(tmp_path / "pred", data, "all", show_progress=False)
    dice = {c["case"]: {k: v["dice"] for k, v in c["per_class"].items()} for c in scores["cases"]}
    assert dice["c1"] == {"RV": 1.0, "Myo": 1.0, "LV": 1.0}
    assert dice["c2"]["Myo"] == 1.0 and dice["c2"]["LV"] == 0.0 and dice["c2"]["RV"] < 1.0


def two_class_masks(root: Path, classes: dict[str, str]) -> Path:
    """Three 2D images whose masks hold class 1 and class 2 apart, with ``classes`` as classes.json."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    mask = np.zeros((24, 24), np.uint8)
    mask[2:8, 2:8], mask[14:20, 14:20] = 1, 2
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    (root / "classes.json").write_text(json.dumps(classes), encoding="utf-8")
    return root


@pytest.mark.parametrize("classes, message", [
    ({"1": "tumour", "2": "tumour"}, "classes 1 and 2 are both named 'tumour'"),
    ({"1": "Tumour", "2": {"name": " tumour"}}, "classes 1 and 2 are both named 'tumour'"),
    ({"1": "", "2": "tumour"}, "class 1 has a blank name"),
], ids=["same-name", "same-name-in-another-case", "blank"])
def test_classes_json_naming_two_classes_alike_is_refused(tmp_path, classes, message):
    """Scores are kept by class name: two classes named alike were evaluated as one, the later class's
    scores silently replacing the earlier's (a Dice of 1 for class 1 lost), and a blank name showed as
    no class in the tables."""
    data = two_class_masks(tmp_path / "data", classes)
    assert_one_line_error(run_fewsam("info", str(data), cwd=tmp_path), message)


@pytest.mark.parametrize("labels", [{"0": "background", "1": "liver", "2": "liver"},
                                    {"background": 0, "": 1, "liver": 2}], ids=["msd-same-name", "v2-blank"])
def test_dataset_json_naming_two_classes_alike_is_refused(tmp_path, labels):
    """An MSD dataset.json lists classes by value, so two values may carry one name (and a v2 one may
    give a blank name); each would be scored under a name that is not the class's own."""
    with pytest.raises(DataError, match="both named 'liver'|class 1 has a blank name"):
        open_dataset(nnunet_folder(tmp_path, labels))
