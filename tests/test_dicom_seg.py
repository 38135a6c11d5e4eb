"""DICOM SEG objects as the labels of the series they reference, and predictions written as DICOM SEG
beside their NIfTI, read back by highdicom and by ``fewsam evaluate``'s reader."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from fewsam.data import open_dataset, read_prediction
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from test_dicom import arrays, series_image, write_label, write_series
from test_dicom_series_faults import save_bare

FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.2.1125.9"


def ct_series(folder: Path, image: np.ndarray, uid: str) -> list[pydicom.Dataset]:
    """A series of ``image`` in ``folder`` (with the frame of reference a SEG needs) and its headers in
    slice order."""
    write_series(folder, image, uid=uid, extra_tags={"0020|0052": FRAME_OF_REFERENCE})
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]
    return sorted(headers, key=lambda h: int(h.InstanceNumber))


def description(number: int, label: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)


def save_seg(path: Path, sources: list[pydicom.Dataset], masks: np.ndarray, labels: list[str],
             kind: str = "BINARY") -> None:
    """A SEG of ``sources`` holding ``masks`` (D, H, W, segments) as segments 1.. named ``labels``."""
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=masks, segmentation_type=kind,
        segment_descriptions=[description(n, label) for n, label in enumerate(labels, start=1)],
        series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
        max_fractional_value=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


def resave_bare(path: Path) -> None:
    """The DICOM file at ``path`` again as a bare data set: no preamble, DICM marker or file meta group."""
    ds = pydicom.dcmread(path)
    ds.preamble = None
    del ds.file_meta
    save_bare(ds, path)


def one_hot(label: np.ndarray, values: list[int]) -> np.ndarray:
    return np.stack([label == v for v in values], axis=-1).astype(np.uint8)


def test_a_seg_beside_its_series_is_the_series_label_with_its_segment_labels_as_classes(tmp_path, notices):
    """As TCIA downloads keep them: each series in a folder of its own under patient/study/, the SEG too.
    The second patient's SEG numbers its segments the other way round: matched by SegmentLabel."""
    image, label = arrays(0)
    study = tmp_path / "P1" / "study"
    sources = ct_series(study / "1-CT", image, "1.2.826.0.1.3680043.2.1125.71")
    save_seg(study / "300-Segmentation" / "1-1.dcm", sources, one_hot(label, [1, 2]), ["Liver", "Spleen"])
    other, other_label = arrays(1)
    sources = ct_series(tmp_path / "P2" / "study" / "1-CT", other, "1.2.826.0.1.3680043.2.1125.72")
    save_seg(tmp_path / "P2" / "study" / "seg" / "1-1.dcm", sources, one_hot(other_label, [2, 1]), ["spleen", "liver"])
    dataset = open_dataset(tmp_path)
    assert list(dataset.entries) == ["P1/study/1-CT", "P2/study/1-CT"]
    assert dataset.class_map.names == {1: "Liver", 2: "Spleen"}
    assert np.array_equal(dataset.load("P1/study/1-CT").label, label)
    assert np.array_equal(dataset.load("P2/study/1-CT").label, other_label)
    assert "segment numbers differ between the segmentations" in notices.text


def test_a_fractional_seg_is_read_at_half(tmp_path):
    image, label = arrays(2)
    sources = ct_series(tmp_path / "s1", image, "1.2.826.0.1.3680043.2.1125.73")
    occupancy = np.where(label == 1, 0.7, np.where(label == 2, 0.4, 0.0)).astype(np.float32)[..., None]
    save_seg(tmp_path / "seg" / "a.dcm", sources, occupancy, ["tumour"], kind="FRACTIONAL")
    dataset = open_dataset(tmp_path)
    assert np.array_equal(dataset.load("s1").label, (label == 1).astype(np.uint8))


def test_overlapping_segments_are_refused_in_one_line(tmp_path):
    image, label = arrays(3)
    sources = ct_series(tmp_path / "s1", image, "1.2.826.0.1.3680043.2.1125.74")
    masks = one_hot(label, [1, 2])
    masks[0, 0, 0] = 1  # one voxel in both segments
    save_seg(tmp_path / "seg" / "a.dcm", sources, masks, ["a", "b"])
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path).load("s1")
    assert "segments 'a' and 'b' overlap (1 voxels, e.g. (z, y, x) (0, 0, 0))" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_seg_of_a_series_not_in_the_dataset_is_said_and_no_case(tmp_path, notices):
    image, label = arrays(4)
    sources = ct_series(tmp_path / "elsewhere" / "s9", image, "1.2.826.0.1.3680043.2.1125.79")
    save_seg(tmp_path / "data" / "seg" / "a.dcm", sources, one_hot(label, [1]), ["a"])
    ct_series(tmp_path / "data" / "s1", image, "1.2.826.0.1.3680043.2.1125.75")
    dataset = open_dataset(tmp_path / "data")
    assert list(dataset.entries) == ["s1"] and not dataset.has_any_label()
    assert "1 DICOM SEG object(s) reference no series of the dataset (seg/a.dcm)" in notices.text


def test_a_label_file_is_read_before_a_seg_of_the_same_series(tmp_path, notices):
    image, label = arrays(5)
    sources = ct_series(tmp_path / "s1", image, "1.2.826.0.1.3680043.2.1125.76")
    save_seg(tmp_path / "seg" / "a.dcm", sources, one_hot(label, [1, 2]), ["a", "b"])
    write_label(tmp_path / "labels" / "s1.nii.gz", (label == 2).astype(np.uint8), series_image(image))
    dataset = open_dataset(tmp_path)
    assert np.array_equal(dataset.load("s1").label, (label == 2).astype(np.uint8))
    assert "1 series have both a labels/ file and a DICOM SEG (s1); the labels/ file is read" in notices.text


def test_the_prediction_seg_reads_back_as_the_nifti_prediction(tmp_path):
    """What ``fewsam predict`` writes beside the NIfTI: a BINARY SEG of the series' instances, a segment
    per class (empty ones too), named as the classes, made by fewsam; read back by highdicom and by the
    reader ``fewsam evaluate`` uses for a SEG prediction of another tool."""
    from fewsam.data.writers import dicom_seg_path, write_dicom_seg

    image, label = arrays(6)
    sources = ct_series(tmp_path / "data" / "s1", image, "1.2.826.0.1.3680043.2.1125.77")
    case = open_dataset(tmp_path / "data").load("s1")
    pred = np.where(label == 2, 3, label).astype(np.uint8)  # classes 1 and 3; class 2 predicted nowhere
    names = {1: "liver", 2: "kidney", 3: "spleen"}
    written = write_dicom_seg(case, pred, names, tmp_path / "pred")
    assert written == tmp_path / "pred" / "s1.seg.dcm" == dicom_seg_path(tmp_path / "pred" / "s1.nii.gz")
    seg = hd.seg.segread(written)
    assert seg.SegmentationType == "BINARY"
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == list(names.items())
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"AUTOMATIC"}
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "fewsam"
    stored = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources], combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    assert np.array_equal(stored, pred)
    assert np.array_equal(read_prediction(case, tmp_path / "pred", ClassMap(names)), pred)


def test_a_prediction_predicted_again_keeps_its_seg_uids_and_a_changed_one_gets_new_ones(tmp_path):
    """A PACS keeps one object per SOP instance UID: the same prediction sent twice must not arrive as two
    segmentations, and a changed one must not replace the first under its UID."""
    from fewsam.data.writers import write_dicom_seg

    image, label = arrays(6)
    ct_series(tmp_path / "data" / "s1", image, "1.2.826.0.1.3680043.2.1125.78")
    case = open_dataset(tmp_path / "data").load("s1")
    assert_uids_follow_the_prediction(write_dicom_seg, case, label, {1: "liver", 2: "kidney"}, tmp_path)


def assert_uids_follow_the_prediction(write, case, label: np.ndarray, names: dict[int, str], tmp_path: Path) -> None:
    """The object ``write`` makes of ``label`` keeps its series and instance UIDs when written again, and
    gets new ones when the prediction changes (class 2 made 1); its series and instance UIDs differ."""
    uids = []
    for out, pred in (("a", label), ("b", label), ("c", np.where(label == 2, 1, label))):
        written = pydicom.dcmread(write(case, pred.astype(np.uint8), names, tmp_path / out))
        uids.append((written.SeriesInstanceUID, written.SOPInstanceUID))
    assert uids[0] == uids[1]
    assert uids[2][0] != uids[0][0] and uids[2][1] != uids[0][1]
    assert uids[0][0] != uids[0][1]


def test_segment_numbers_that_agree_across_cases_are_the_class_values(tmp_path):
    """A PACS shows segment 1 "Spleen", segment 2 "Liver": the classes keep those numbers, not the
    natural order of the names."""
    for k, uid in enumerate(("1.2.826.0.1.3680043.2.1125.81", "1.2.826.0.1.3680043.2.1125.82")):
        image, label = arrays(10 + k)
        sources = ct_series(tmp_path / f"s{k}", image, uid)
        save_seg(tmp_path / "segs" / f"{k}.dcm", sources, one_hot(label, [1, 2]), ["Spleen", "Liver"])
    dataset = open_dataset(tmp_path)
    assert dataset.class_map.names == {1: "Spleen", 2: "Liver"}
    assert np.array_equal(dataset.load("s1").label, label)


def test_a_seg_without_references_is_placed_by_its_frame_of_reference_and_plane_positions(tmp_path):
    image, label = arrays(7)
    sources = ct_series(tmp_path / "s1", image, "1.2.826.0.1.3680043.2.1125.78")
    path = tmp_path / "seg" / "a.dcm"
    save_seg(path, sources, one_hot(label, [1, 2]), ["a", "b"])
    seg = pydicom.dcmread(path)
    del seg.ReferencedSeriesSequence
    for frame in seg.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    seg.save_as(path)
    dataset = open_dataset(tmp_path)
    assert np.array_equal(dataset.load("s1").label, label)


def test_a_seg_saved_into_its_series_folder_is_left_out_of_the_series(tmp_path, notices):
    """The folder read as two series was refused; the series is read, the SEG left out, said."""
    image, label = arrays(8)
    sources = ct_series(tmp_path / "s1", image, "1.2.826.0.1.3680043.2.1125.80")
    save_seg(tmp_path / "s1" / "seg.dcm", sources, one_hot(label, [1]), ["a"])
    assert open_dataset(tmp_path).load("s1").image.shape == image.shape
    assert "DICOM objects without an image beside its series (seg.dcm" in notices.text


def test_class_values_above_255_from_classes_json_are_kept_in_16_bits(tmp_path):
    image, label = arrays(9)
    sources = ct_series(tmp_path / "s1", image, "1.2.826.0.1.3680043.2.1125.83")
    save_seg(tmp_path / "seg" / "a.dcm", sources, one_hot(label, [1, 2]), ["liver", "spleen"])
    (tmp_path / "classes.json").write_text('{"1": "liver", "300": "spleen"}')
    read = open_dataset(tmp_path).load("s1").label
    assert read.dtype == np.uint16
    assert np.array_equal(read, np.where(label == 2, 300, label.astype(np.uint16)))


def two_labelled_series(data: Path) -> None:
    """Series s1 and s2, each with a labels/ file."""
    for k, uid in enumerate(("1.2.826.0.1.3680043.2.1125.84", "1.2.826.0.1.3680043.2.1125.85"), start=1):
        image, label = arrays(20 + k)
        write_series(data / f"s{k}", image, uid=uid)
        write_label(data / "labels" / f"s{k}.nii.gz", label, series_image(image))


def test_a_missing_prediction_of_a_series_is_named_as_its_nifti_seg_and_rtstruct(tmp_path, monkeypatch, capsys):
    """evaluate reads a series' prediction from <case>.nii.gz, else <case>.seg.dcm, else <case>.rtstruct.dcm:
    the one error line names each, so a user holding another tool's SEG or structure set knows what to name it."""
    from fewsam.data import write_prediction
    from test_output_path_limits import run_main

    two_labelled_series(tmp_path / "data")
    case = open_dataset(tmp_path / "data").load("s1")
    write_prediction(case, case.label, tmp_path / "pred")
    code, lines = run_main(monkeypatch, capsys, "evaluate", "--pred", str(tmp_path / "pred"), "--data",
                           str(tmp_path / "data"), "--split", "all", "--quiet")
    assert code == 2 and len(lines) == 1, lines
    pred = tmp_path / "pred"
    assert lines[0] == (f"error: prediction {pred / 's2.nii.gz'} (or {pred / 's2.seg.dcm'} or {pred / 's2.rtstruct.dcm'}) "
                        "for case s2 not found; predict this split into that folder first")


def test_an_empty_prediction_folder_names_the_nifti_seg_and_rtstruct_of_the_first_series(tmp_path, monkeypatch, capsys):
    from test_output_path_limits import run_main

    two_labelled_series(tmp_path / "data")
    (tmp_path / "pred").mkdir()
    code, lines = run_main(monkeypatch, capsys, "evaluate", "--pred", str(tmp_path / "pred"), "--data",
                           str(tmp_path / "data"), "--split", "all", "--quiet")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (f"error: prediction folder {tmp_path / 'pred'} is empty; predict this split into it first "
                        "(the first case's prediction: s1.nii.gz or s1.seg.dcm or s1.rtstruct.dcm)")


def test_a_folder_of_another_tools_seg_files_is_told_to_rename_them_as_the_seg_is_read(tmp_path):
    """SEG files named otherwise than <case>.seg.dcm are read once renamed: no conversion to NIfTI is needed."""
    from fewsam.evaluate import evaluate

    two_labelled_series(tmp_path / "data")
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "s1_seg.dcm").write_bytes(b"")
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "pred", tmp_path / "data", split="all", show_progress=False)
    assert "(the first: s1.nii.gz or s1.seg.dcm or s1.rtstruct.dcm), but files such as s1_seg.dcm" in str(err.value)
    assert "rename them to that pattern" in str(err.value)


def test_a_label_file_beside_a_seg_of_another_series_needs_the_classes_named_as_a_mix_of_those_kinds(tmp_path):
    """Segments are classes by name, a label file's values are numbers: the refusal names the kinds mixed."""
    image, label = arrays(30)
    write_series(tmp_path / "s1", image, uid="1.2.826.0.1.3680043.2.1125.86")
    write_label(tmp_path / "labels" / "s1.nii.gz", label, series_image(image))
    other, other_label = arrays(31)
    sources = ct_series(tmp_path / "s2", other, "1.2.826.0.1.3680043.2.1125.87")
    save_seg(tmp_path / "seg" / "a.dcm", sources, one_hot(other_label, [1, 2]), ["Spleen", "Liver"])
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path).class_map
    assert str(err.value) == (
        f"the labels of {tmp_path} mix DICOM SEG objects (segments 'Liver', 'Spleen') with plain label maps (values 1, "
        "2), and no file says which value is which segment: name the classes by value in "
        f'{tmp_path / "classes.json"} ({{"1": "Liver", "2": "Spleen", ...}}), or give every case one kind of '
        "label file")


def test_a_seg_without_the_part_10_header_is_its_series_label(tmp_path):
    """A bare data set (no preamble, DICM marker or file meta group), as older exporters write: its series
    is labelled by it, its folder no case."""
    image, label = arrays(32)
    sources = ct_series(tmp_path / "s1", image, "1.2.826.0.1.3680043.2.1125.88")
    save_seg(tmp_path / "seg" / "a.dcm", sources, one_hot(label, [1, 2]), ["Liver", "Spleen"])
    resave_bare(tmp_path / "seg" / "a.dcm")
    assert (tmp_path / "seg" / "a.dcm").read_bytes()[128:132] != b"DICM"
    dataset = open_dataset(tmp_path)
    assert list(dataset.entries) == ["s1"]
    assert np.array_equal(dataset.load("s1").label, label)
