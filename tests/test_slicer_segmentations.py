"""3D Slicer's segmentation files (<volume>.seg.nrrd) as labels: each segment is a class, named after it.

Slicer stores overlapping segments in several layers (a 4D NRRD, ``kinds: list domain domain
domain``), a segment being the voxels of its layer equal to its ``SegmentN_LabelValue``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from fewsam.data import open_dataset, write_prediction
from fewsam.errors import DataError
from fewsam.info import dataset_info

from test_dicom import write_series

SHAPE = (6, 10, 12)  # (z, y, x)


def reference_volume(path: Path) -> sitk.Image:
    """An image volume on a turned, shifted grid, as a scanner's."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(100, 20, SHAPE).astype(np.float32))
    turn = np.cos(0.3), np.sin(0.3)
    image.SetSpacing((0.9, 0.8, 3.5))
    image.SetOrigin((12.5, -40.0, 7.0))
    image.SetDirection((turn[0], -turn[1], 0, turn[1], turn[0], 0, 0, 0, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def write_segmentation(path: Path, layers: list[np.ndarray], segments: list[tuple[str, int | None, int | None]],
                       reference: sitk.Image, start: tuple[int, int, int] = (0, 0, 0)) -> None:
    """A segmentation as Slicer saves it: ``layers`` (each (z, y, x) from voxel ``start`` (x, y, z) of
    ``reference``), and (name, label value, layer) per segment in the header (None: not written, as
    Slicer wrote files before layers); several layers as a 4D NRRD whose first axis is a list of layers."""
    stacked = np.stack(layers, axis=-1)
    image = sitk.GetImageFromArray(stacked if len(layers) > 1 else stacked[..., 0], isVector=len(layers) > 1)
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    image.SetOrigin(reference.TransformIndexToPhysicalPoint(start))
    for n, (name, value, layer) in enumerate(segments):
        for field, text in (("ID", f"Segment_{n + 1}"), ("Name", name), ("LabelValue", value), ("Layer", layer),
                            ("Color", "0.5 0.5 0.5")):
            if text is not None:
                image.SetMetaData(f"Segment{n}_{field}", str(text))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    path.write_bytes(path.read_bytes().replace(b"kinds: vector domain", b"kinds: list domain", 1))


def blank() -> np.ndarray:
    return np.zeros(SHAPE, dtype=np.uint8)


def liver_with_tumour(path: Path, reference: sitk.Image, tumour_value: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A two-layer segmentation, liver in layer 0 (value 1), a tumour inside it in layer 1: their layers."""
    liver, tumour = blank(), blank()
    liver[1:5, 2:8, 2:6] = 1
    tumour[2:4, 3:6, 3:5] = tumour_value
    write_segmentation(path, [liver, tumour], [("liver", 1, 0), ("tumour", tumour_value, 1)], reference)
    return liver, tumour


def test_every_segment_of_a_multi_layer_segmentation_is_its_class_the_later_winning_where_they_overlap(
        tmp_path, notices):
    """Two layers (a tumour inside the liver), cropped to the segments' extent: the second layer's
    segment was lost or the file taken for a one-hot label."""
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    liver_and_spleen, tumour = blank(), blank()
    liver_and_spleen[1:5, 2:8, 2:6] = 1
    liver_and_spleen[1:3, 2:5, 8:11] = 2
    tumour[2:4, 3:6, 3:5] = 1
    crop = (slice(1, 5), slice(2, 8), slice(2, 11))  # (z, y, x): where the segments are
    write_segmentation(tmp_path / "labels" / "v.seg.nrrd", [liver_and_spleen[crop], tumour[crop]],
                       [("liver", 1, 0), ("spleen", 2, 0), ("tumour", 1, 1)], reference, start=(2, 2, 1))
    ds = open_dataset(tmp_path)
    expected = liver_and_spleen.copy()
    expected[tumour == 1] = 3
    np.testing.assert_array_equal(ds.load("v").label, expected)
    assert ds.class_map.names == {1: "liver", 2: "spleen", 3: "tumour"}
    assert "tumour over liver (12 voxels)" in notices.text


def test_classes_take_the_segments_names_in_their_natural_order_where_no_classes_are_given(tmp_path):
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    label = blank()
    label[1:3, 2:5, 2:5], label[3:5, 6:9, 6:9] = 1, 2
    write_segmentation(tmp_path / "labels" / "v.seg.nrrd", [label], [("Liver", 1, 0), ("Left kidney", 2, 0)],
                       reference)
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "Left kidney", 2: "Liver"}
    np.testing.assert_array_equal(ds.load("v").label, np.choose(label, [0, 2, 1]))


def test_segments_map_to_classes_by_segment_not_by_stored_value(tmp_path):
    """Label values 1 and 7 in one layer; and segments in their own layers, each of value 1, the
    first segment in the second layer: the classes follow the segments."""
    reference = reference_volume(tmp_path / "images" / "a.nrrd")
    reference_volume(tmp_path / "images" / "b.nrrd")
    liver, kidney = blank(), blank()
    liver[1:3, 2:5, 2:5] = 1
    kidney[3:5, 6:9, 6:9] = 1
    write_segmentation(tmp_path / "labels" / "a.seg.nrrd", [liver + 7 * kidney],
                       [("liver", 1, 0), ("kidney", 7, 0)], reference)
    write_segmentation(tmp_path / "labels" / "b.seg.nrrd", [kidney, liver],
                       [("liver", 1, 1), ("kidney", 1, 0)], reference)
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "kidney", 2: "liver"}
    for case in ("a", "b"):
        np.testing.assert_array_equal(ds.load(case).label, 2 * liver + kidney)


def test_a_segmentation_saved_before_layers_is_one_segment_per_layer(tmp_path):
    """Slicer once saved one binary layer per segment, without LabelValue and Layer fields."""
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    liver, kidney = blank(), blank()
    liver[1:3, 2:5, 2:5] = 1
    kidney[3:5, 6:9, 6:9] = 1
    write_segmentation(tmp_path / "labels" / "v.seg.nrrd", [liver, kidney],
                       [("liver", None, None), ("kidney", None, None)], reference)
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "kidney", 2: "liver"}
    np.testing.assert_array_equal(ds.load("v").label, 2 * liver + kidney)


def test_cases_whose_segments_come_in_other_orders_share_classes_by_name(tmp_path):
    reference = reference_volume(tmp_path / "images" / "a.nrrd")
    reference_volume(tmp_path / "images" / "b.nrrd")
    label = blank()
    label[1:3, 2:5, 2:5], label[3:5, 6:9, 6:9] = 1, 2
    write_segmentation(tmp_path / "labels" / "a.seg.nrrd", [label], [("liver", 1, 0), ("kidney", 2, 0)], reference)
    write_segmentation(tmp_path / "labels" / "b.seg.nrrd", [label], [("kidney", 1, 0), ("liver", 2, 0)], reference)
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "kidney", 2: "liver"}
    np.testing.assert_array_equal(ds.load("a").label, np.choose(label, [0, 2, 1]))
    np.testing.assert_array_equal(ds.load("b").label, label)


def test_classes_json_matches_segments_by_name_else_by_their_order(tmp_path, notices):
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    label = blank()
    label[1:3, 2:5, 2:5], label[3:5, 6:9, 6:9] = 1, 2
    write_segmentation(tmp_path / "labels" / "v.seg.nrrd", [label], [("kidney", 1, 0), ("Liver", 2, 0)], reference)
    (tmp_path / "classes.json").write_text(json.dumps({"1": "liver", "2": "kidney"}), encoding="utf-8")
    np.testing.assert_array_equal(open_dataset(tmp_path).load("v").label, np.choose(label, [0, 2, 1]))
    (tmp_path / "classes.json").write_text(json.dumps({"1": "organ", "2": "lesion"}), encoding="utf-8")
    np.testing.assert_array_equal(open_dataset(tmp_path).load("v").label, label)
    assert "segment N is read as class N + 1" in notices.text


def test_a_multi_layer_segmentation_beside_a_dicom_series_is_read_by_segment(tmp_path):
    rng = np.random.default_rng(1)
    series = write_series(tmp_path / "images" / "p1", rng.integers(0, 1000, SHAPE).astype(np.int16))
    liver, tumour = liver_with_tumour(tmp_path / "labels" / "p1.seg.nrrd", series, tumour_value=5)
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "liver", 2: "tumour"}
    np.testing.assert_array_equal(ds.load("p1").label, np.where(tumour > 0, 2, liver))


def test_a_segment_naming_a_layer_the_file_lacks_is_refused(tmp_path):
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    label = blank()
    label[1:3, 2:5, 2:5] = 1
    write_segmentation(tmp_path / "labels" / "v.seg.nrrd", [label, label], [("liver", 1, 0), ("tumour", 1, 2)],
                       reference)
    with pytest.raises(DataError, match="Segment1_Layer is 2, and the file holds 2 layer"):
        open_dataset(tmp_path).load("v")


def test_a_prediction_of_a_case_labelled_in_slicer_is_a_label_map_on_its_volumes_grid(tmp_path):
    """Slicer overlays a label map voxel for voxel on the volume it loaded: same grid, class values."""
    reference = reference_volume(tmp_path / "data" / "images" / "v.nrrd")
    liver, tumour = liver_with_tumour(tmp_path / "data" / "labels" / "v.seg.nrrd", reference)
    case = open_dataset(tmp_path / "data").load("v")
    written = sitk.ReadImage(str(write_prediction(case, case.label, tmp_path / "pred")))
    assert Path(case.rel_path).name == "v.nrrd" and written.GetNumberOfComponentsPerPixel() == 1
    assert written.GetSize() == reference.GetSize()
    for got, want in ((written.GetOrigin(), reference.GetOrigin()), (written.GetSpacing(), reference.GetSpacing()),
                      (written.GetDirection(), reference.GetDirection())):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), np.where(tumour > 0, 2, liver))


def test_info_says_the_classes_are_stored_as_segments(tmp_path):
    """A class's value in the files ("stored as 3") named a value a multi-layer file does not hold for it."""
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    liver_with_tumour(tmp_path / "labels" / "v.seg.nrrd", reference)
    info = dataset_info(tmp_path)
    assert [(c["name"], c["stored_as"]) for c in info["classes"]] == [
        ("background", 0), ("liver", "segment 'liver'"), ("tumour", "segment 'tumour'")]
    assert info["storage"].startswith("3D Slicer segmentations")


def test_a_segmentation_of_empty_segments_saved_as_one_voxel_is_background(tmp_path, notices):
    """Slicer saves a segmentation whose segments are all empty as one voxel, whose geometry means nothing."""
    reference_volume(tmp_path / "nifti" / "images" / "v.nrrd")
    rng = np.random.default_rng(1)
    write_series(tmp_path / "dicom" / "images" / "p1", rng.integers(0, 1000, SHAPE).astype(np.int16))
    one_voxel = sitk.Image(1, 1, 1, sitk.sitkUInt8)
    for data, case in (("nifti", "v"), ("dicom", "p1")):
        write_segmentation(tmp_path / data / "labels" / f"{case}.seg.nrrd", [np.zeros((1, 1, 1), np.uint8)],
                           [("liver", 1, 0)], one_voxel)
        label = open_dataset(tmp_path / data).load(case).label
        assert label.shape == SHAPE and not label.any()
    assert "a Slicer segmentation of one voxel" in notices.text


def _slicer_saved_predictions(tmp_path: Path, segments: list[tuple[str, int, int]]) -> tuple[Path, Path]:
    """A dataset of two cases labelled in Slicer (liver, and a tumour overlapping it, in two layers), and a
    prediction folder of segmentations as Slicer saves them (``<case>.seg.nrrd``, named as the labels): the
    cases' liver and tumour layers under ``segments`` (name, label value, layer)."""
    pred = tmp_path / "pred"
    for case in ("v", "w"):
        reference = reference_volume(tmp_path / "data" / "images" / f"{case}.nrrd")
        liver, tumour = liver_with_tumour(tmp_path / "data" / "labels" / f"{case}.seg.nrrd", reference)
        layers = [blank() for _ in range(1 + max(layer for _, _, layer in segments))]
        masks = {"liver": liver, "tumour": tumour}
        for name, value, layer in segments:
            layers[layer][masks.get(name.lower(), tumour) > 0] = value
        write_segmentation(pred / f"{case}.seg.nrrd", layers, segments, reference)
    (tmp_path / "cases.list").write_text("v\nw\n")
    return tmp_path / "data", pred


@pytest.mark.parametrize("segments", [[("liver", 1, 0), ("tumour", 2, 1)], [("liver", 2, 0), ("tumour", 1, 1)],
                                      [("Liver", 7, 1), ("TUMOUR", 7, 0)]])
def test_a_prediction_slicer_saved_as_a_segmentation_is_scored_by_its_segments_names(tmp_path, segments):
    """Slicer numbers segments in the order they were added and puts overlapping ones in layers: read by its
    voxel values such a prediction scored the liver as the tumour (Dice 0 for a perfect one), or was refused."""
    from fewsam.api import evaluate

    data, pred = _slicer_saved_predictions(tmp_path, segments)
    scores = evaluate(pred, data, split=str(tmp_path / "cases.list"), show_progress=False)
    assert scores["mean"]["dice"] == pytest.approx(1.0)


def test_a_prediction_segment_naming_no_class_is_refused_naming_it(tmp_path):
    from fewsam.api import evaluate

    data, pred = _slicer_saved_predictions(tmp_path, [("liver", 1, 0), ("Segment_2", 2, 1)])
    with pytest.raises(DataError, match=r"segment\(s\) 'Segment_2' name no class of the dataset \(liver, tumour\)"):
        evaluate(pred, data, split=str(tmp_path / "cases.list"), show_progress=False)


def test_a_label_map_slicer_named_volume_dash_label_is_the_label_of_its_volume(tmp_path):
    """Slicer names a label map made for volume ``v`` ``v-label`` (its Export to label map, and the Editor's):
    in ``labels/`` it matched no image, and the case was unlabelled."""
    from fewsam.api import evaluate

    reference = reference_volume(tmp_path / "data" / "images" / "v.nrrd")
    label = blank()
    label[1:4, 2:6, 3:8] = 1
    saved = sitk.GetImageFromArray(label)
    saved.CopyInformation(reference)
    (tmp_path / "data" / "labels").mkdir()
    sitk.WriteImage(saved, str(tmp_path / "data" / "labels" / "v-label.nrrd"))
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(saved, str(tmp_path / "pred" / "v-label.nrrd"))
    dataset = open_dataset(tmp_path / "data")
    np.testing.assert_array_equal(dataset.load("v").label, label)
    (tmp_path / "cases.list").write_text("v\n")
    assert evaluate(tmp_path / "pred", tmp_path / "data", split=str(tmp_path / "cases.list"),
                    show_progress=False)["mean"]["dice"] == pytest.approx(1.0)
