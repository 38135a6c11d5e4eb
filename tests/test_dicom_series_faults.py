"""DICOM series as scanners and archives hand them over that were misread or refused unclearly: a cine of
bare data sets (no Part 10 header) stacked as a volume, and counted so by ``fewsam info``; slices of several
orientations or sizes in one series; a multi-frame file's frames each with its own rescale, stored out of
slice order, or of several planes (a survey); pixels GDCM cannot decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fewsam.data import open_dataset
from fewsam.errors import DataError

MR = "1.2.840.10008.5.1.4.1.1.4"
AXIAL, CORONAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def mr_slice(number: int, position: tuple[float, float, float], orientation=AXIAL, **tags):  # noqa: ANN201
    """A single-frame MR data set of one series (4 x 5 pixels, 0.5 mm), at ``position`` in ``orientation``,
    with any further ``tags`` (``TriggerTime=40.0``)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MR, f"1.2.3.4.6.{number}", "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = "1.2.3.4", "1.2.3.4.6", number
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 4, 5
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), list(orientation)
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 2
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.random.default_rng(number).integers(0, 1000, (4, 5)).astype("<u2").tobytes()
    return ds


def save_part10(ds, path: Path, syntax: str = "1.2.840.10008.1.2.1") -> None:  # noqa: ANN001 - a pydicom Dataset
    """``ds`` as a Part 10 file: preamble, DICM marker and a file meta group naming ``syntax``."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)


def save_bare(ds, path: Path) -> None:  # noqa: ANN001 - a pydicom Dataset
    """``ds`` as a bare implicit-VR data set, no preamble or file meta group, as older exports write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=True, little_endian=True)


# ---------------------------------------------------------------- a cine of single-frame files


@pytest.mark.parametrize("save", [save_part10, save_bare], ids=["part10", "bare"])
@pytest.mark.parametrize("time_tag", ["TriggerTime", "TemporalPositionIdentifier", "TemporalPositionIndex"])
@pytest.mark.parametrize("slices", [1, 3], ids=["one-slice", "three-slices"])
def test_a_cine_of_single_frame_files_told_apart_by_one_time_tag_is_refused(tmp_path, save, time_tag, slices):
    """Each slice position once per time point, the time points told apart by one tag alone: refused
    naming its time points, whether or not the files carry the Part 10 header (GDCM stacks both)."""
    folder = tmp_path / "cine" / "s"
    files = [(time, z) for time in (1, 2) for z in range(slices)]
    for k, (time, z) in enumerate(files):
        value = 40.0 * (time - 1) if time_tag == "TriggerTime" else time
        save(mr_slice(k + 1, (0.0, 0.0, 2.0 * z), **{time_tag: value}), folder / f"IM{k + 1:04d}.dcm")
    with pytest.raises(DataError, match=fr"its {2 * slices} DICOM files hold 2 time points "
                                        fr"\({2 * slices} frames at {slices} slice positions"):
        open_dataset(tmp_path / "cine").load("s")


def test_a_volume_of_bare_data_sets_still_reads(tmp_path):
    for z in range(4):
        save_bare(mr_slice(z + 1, (0.0, 0.0, 2.0 * z)), tmp_path / "s" / f"IM{z + 1:04d}.dcm")
    case = open_dataset(tmp_path).load("s")
    assert case.image.shape == (4, 4, 5) and case.spacing == pytest.approx((2.0, 0.5, 0.5))


# ---------------------------------------------------------------- slices of several orientations


def test_a_slice_of_another_orientation_in_a_series_is_refused_naming_it(tmp_path):
    for z in range(5):
        orientation = CORONAL if z == 3 else AXIAL
        save_part10(mr_slice(z + 1, (0.0, 0.0, 2.0 * z), orientation), tmp_path / "s" / f"IM{z}.dcm")
    with pytest.raises(DataError, match=r"s: its DICOM slices lie in different orientations \(IM3.dcm 1\\0\\0"
                                        r"\\0\\0\\-1, IM0.dcm 1\\0\\0\\0\\1\\0\): a localizer of several planes"):
        open_dataset(tmp_path).load("s")


def test_a_three_plane_localizer_of_its_own_is_refused(tmp_path):
    """A localizer of three slices in each of three planes, one series UID, alone in its folder."""
    planes = {AXIAL: lambda at: (-10.0, -10.0, at), CORONAL: lambda at: (-10.0, at, 10.0),
              SAGITTAL: lambda at: (at, -10.0, 10.0)}
    for k, (orientation, place) in enumerate((o, p) for o, p in planes.items() for _ in range(3)):
        save_part10(mr_slice(k + 1, place(5.0 * (k % 3)), orientation), tmp_path / "loc" / f"IM{k}.dcm")
    with pytest.raises(DataError, match="its DICOM slices lie in different orientations"):
        open_dataset(tmp_path).load("loc")


@pytest.mark.parametrize("orientation, shown", [((0.0, 0.0, 0.0, 0.0, 0.0, 0.0), r"0\\0\\0\\0\\0\\0"),
                                                ((1.0, 0.0, 0.0, 0.3, 1.0, 0.0), r"1\\0\\0\\0.3\\1\\0")])
def test_an_orientation_that_gives_no_plane_is_refused_naming_the_file_and_tag(tmp_path, orientation, shown):
    """ITK took the identity for it and stacked the slices across their positions: the series was refused as
    unevenly spaced, "gap of 0 mm ... typical 0 mm", naming neither the file nor the tag."""
    for z in range(4):
        save_part10(mr_slice(z + 1, (0.0, 2.0 * z, 0.0), orientation), tmp_path / "s" / f"IM{z}.dcm")
    with pytest.raises(DataError, match=rf"s: IM0.dcm gives an orientation \(ImageOrientationPatient\) of {shown}, "
                                        r"not a row and a column direction at right angles"):
        open_dataset(tmp_path).load("s")


def test_an_orientation_of_directions_longer_than_1_reads_as_itk_scales_them(tmp_path):
    for z in range(4):
        save_part10(mr_slice(z + 1, (0.0, 0.0, 2.0 * z), (2.0, 0.0, 0.0, 0.0, 2.0, 0.0)), tmp_path / "s" / f"IM{z}.dcm")
    case = open_dataset(tmp_path).load("s")
    assert case.spacing == pytest.approx((2.0, 0.5, 0.5))
    np.testing.assert_allclose(case.meta["direction"], np.eye(3).ravel(), atol=1e-6)


def test_orientations_a_millionth_apart_are_one_plane(tmp_path):
    """Scanners write each file's cosines to their own last decimal: a millionth apart is one plane."""
    for z in range(4):
        orientation = (1.0, 1e-6 * z, 0.0, 0.0, 1.0, -1e-6 * z)
        save_part10(mr_slice(z + 1, (0.0, 0.0, 2.0 * z), orientation), tmp_path / "s" / f"IM{z}.dcm")
    assert open_dataset(tmp_path).load("s").image.shape == (4, 4, 5)


def test_a_slice_of_another_pixel_size_in_a_series_is_refused_naming_it(tmp_path):
    """ITK stacked it on the first slice's pixel size: a slice of another field of view, at another scale, became
    a slice of the volume, and its prediction was written there, without a word."""
    for z in range(4):
        ds = mr_slice(z + 1, (0.0, 0.0, 2.0 * z))
        ds.PixelSpacing = [0.8, 0.8] if z == 2 else [0.5, 0.5]
        save_part10(ds, tmp_path / "s" / f"IM{z}.dcm")
    with pytest.raises(DataError, match=r"s: its DICOM slices have different pixel sizes \(IM2.dcm 0.8\\0.8 mm, "
                                        r"IM0.dcm 0.5\\0.5 mm\): .*put the slices of each pixel size in their own"):
        open_dataset(tmp_path).load("s")


@pytest.mark.parametrize("keyword, tag", [("ImageOrientationPatient", "orientation"),
                                          ("PixelSpacing", "pixel size")])
@pytest.mark.parametrize("unplaced", [0, 2])
def test_a_series_whose_files_only_partly_give_their_orientation_or_pixel_size_is_refused_naming_them(
        tmp_path, keyword, tag, unplaced):
    """ITK took the first file's for every slice: a first file without PixelSpacing read the whole series at 1 mm
    pixels, one without ImageOrientationPatient placed it in another plane (refused as unevenly spaced, 0 mm
    apart), without naming the file that lacked it."""
    for z in range(4):
        ds = mr_slice(z + 1, (0.0, 0.0, 2.0 * z))
        if z == unplaced:
            delattr(ds, keyword)
        save_part10(ds, tmp_path / "s" / f"IM{z}.dcm")
    with pytest.raises(DataError, match=rf"s: 1 of its 4 DICOM files give no {tag} \({keyword}\) though the "
                                        rf"others do \(IM{unplaced}.dcm\)"):
        open_dataset(tmp_path).load("s")


def test_a_negative_pixel_size_is_refused_naming_the_file(tmp_path):
    """ITK read negative sizes as the slices mirrored in x and y (the prediction written mirrored), unsaid."""
    for z in range(4):
        ds = mr_slice(z + 1, (0.0, 0.0, 2.0 * z))
        ds.PixelSpacing = [-0.5, -0.5]
        save_part10(ds, tmp_path / "s" / f"IM{z}.dcm")
    with pytest.raises(DataError, match=r"s: IM0.dcm gives a pixel size \(PixelSpacing\) of -0.5\\-0.5 mm, below 0"):
        open_dataset(tmp_path).load("s")


def test_a_pixel_size_of_0_is_refused_naming_the_file(tmp_path):
    """ITK read a PixelSpacing of 0\\0 as 1 mm pixels: HD95 and ASD were given in mm of a size no file says."""
    for z in range(4):
        ds = mr_slice(z + 1, (0.0, 0.0, 2.0 * z))
        ds.PixelSpacing = [0, 0]
        save_part10(ds, tmp_path / "s" / f"IM{z}.dcm")
    with pytest.raises(DataError, match=r"s: IM0.dcm gives a pixel size \(PixelSpacing\) of 0\\0 mm, a size of 0, "
                                        r"so where its pixels lie is unknown"):
        open_dataset(tmp_path).load("s")


def test_a_series_giving_no_pixel_size_is_said_to_be_read_in_1_mm_pixels(tmp_path, notices):
    """Secondary captures carry no PixelSpacing; ITK reads them as 1 mm pixels, so HD95 "in mm" is in pixels."""
    for z in range(3):
        ds = mr_slice(z + 1, (0.0, 0.0, 2.0 * z))
        del ds.PixelSpacing
        save_part10(ds, tmp_path / "s" / f"IM{z}.dcm")
    case = open_dataset(tmp_path).load("s")
    assert case.spacing[1:] == (1.0, 1.0)
    assert "no file of its DICOM series gives a pixel size (PixelSpacing)" in notices.text


def test_a_series_giving_its_pixel_size_says_nothing_of_1_mm_pixels(tmp_path, notices):
    for z in range(3):
        save_part10(mr_slice(z + 1, (0.0, 0.0, 2.0 * z)), tmp_path / "s" / f"IM{z}.dcm")
    assert open_dataset(tmp_path).load("s").spacing[1:] == (0.5, 0.5)
    assert "PixelSpacing" not in notices.text


def test_pixel_sizes_written_to_different_decimals_are_one_size(tmp_path):
    """Scanners and converters round a PixelSpacing's decimal string each their own way."""
    for z in range(4):
        ds = mr_slice(z + 1, (0.0, 0.0, 2.0 * z))
        ds.PixelSpacing = ["0.703125", "0.703125"] if z % 2 else ["0.7031249762", "0.7031249762"]
        save_part10(ds, tmp_path / "s" / f"IM{z}.dcm")
    assert open_dataset(tmp_path).load("s").spacing == pytest.approx((2.0, 0.703125, 0.703125))


def test_a_slice_of_another_size_in_a_series_is_refused_naming_it_and_what_to_do(tmp_path):
    """ITK's own refusal ("ITK ERROR: ImageSeriesReader(0x...): Size mismatch!") said no way out."""
    for z in range(4):
        ds = mr_slice(z + 1, (0.0, 0.0, 2.0 * z))
        if z == 2:
            ds.Rows, ds.PixelData = 6, bytes(6 * 5 * 2)
        save_part10(ds, tmp_path / "s" / f"IM{z}.dcm")
    with pytest.raises(DataError, match=r"s: its DICOM slices differ in size \(IM2.dcm 5 x 6 pixels, IM0.dcm 5 x 4\): "
                                        r".*put the slices of each size in their own folder"):
        open_dataset(tmp_path).load("s")


# ---------------------------------------------------------------- each frame's own rescale


Place = tuple[tuple[float, ...], tuple[float, ...]]  # a frame's ImagePositionPatient and ImageOrientationPatient


def enhanced_mr(path: Path, stored: np.ndarray, rescales: list[tuple[float, float]],
                heights: list[float] | None = None, places: list[Place] | None = None) -> None:
    """An enhanced MR file of ``stored`` frames (z, 4, 5), axial 2 mm apart (or at ``heights``, or each at its own
    (position, orientation) of ``places``), each frame with its own rescale slope and intercept in its functional
    groups, as enhanced MR exports scale each frame."""
    from pydicom.dataset import Dataset

    ds = mr_slice(1, (0.0, 0.0, 0.0))
    ds.SOPClassUID, ds.NumberOfFrames, ds.PixelData = "1.2.840.10008.5.1.4.1.1.4.1", len(stored), stored.tobytes()
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing, ds.SliceThickness
    plane, measures, shared = Dataset(), Dataset(), Dataset()
    plane.ImageOrientationPatient, measures.PixelSpacing, measures.SliceThickness = list(AXIAL), [0.5, 0.5], 2
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [plane], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    heights = heights or [2.0 * z for z in range(len(stored))]
    places = places or [((0.0, 0.0, z), ()) for z in heights]
    ds.PerFrameFunctionalGroupsSequence = [_frame_groups(*place, r) for place, r in zip(places, rescales)]
    if places[0][1]:
        del shared.PlaneOrientationSequence
    save_part10(ds, path)


def _frame_groups(position: tuple[float, ...], orientation: tuple[float, ...],  # noqa: ANN202
                  rescale: tuple[float, float]):
    """One frame's functional groups (a pydicom Dataset): its position, its orientation where given, and
    its rescale."""
    from pydicom.dataset import Dataset

    place, value, frame, plane = Dataset(), Dataset(), Dataset(), Dataset()
    place.ImagePositionPatient = list(position)
    value.RescaleSlope, value.RescaleIntercept, value.RescaleType = *rescale, "US"
    frame.PlanePositionSequence, frame.PixelValueTransformationSequence = [place], [value]
    if orientation:
        plane.ImageOrientationPatient = list(orientation)
        frame.PlaneOrientationSequence = [plane]
    return frame


def test_each_frame_of_a_multi_frame_file_takes_its_own_rescale(tmp_path):
    """GDCM scaled every frame by the first frame's slope and intercept: frames 2 and 3 came out in
    other units, unsaid."""
    stored = np.random.default_rng(3).integers(0, 1000, (3, 4, 5)).astype("<u2")
    rescales = [(3.0, 7.0), (2.0, 10.0), (0.5, -5.0)]
    enhanced_mr(tmp_path / "s" / "enhanced.dcm", stored, rescales)
    slopes, intercepts = np.array(rescales).T
    np.testing.assert_allclose(open_dataset(tmp_path).load("s").image,
                               stored * slopes[:, None, None] + intercepts[:, None, None], rtol=1e-6)


@pytest.mark.parametrize("heights", [[0.0, 4.0, 2.0, 6.0], [0.0, 2.0, 6.0, 8.0], [6.0, 2.0, 4.0, 0.0]],
                         ids=["interleaved", "a-frame-missing", "descending-interleaved"])
def test_a_multi_frame_file_of_frames_out_of_slice_order_is_refused(tmp_path, heights):
    """GDCM stacked such frames as stored, on 1 mm voxels in place of the file's geometry."""
    stored = np.random.default_rng(4).integers(0, 1000, (4, 4, 5)).astype("<u2")
    enhanced_mr(tmp_path / "s" / "enhanced.dcm", stored, [(1.0, 0.0)] * 4, heights)
    with pytest.raises(DataError, match=r"enhanced.dcm: its 4 frames are not stored as evenly spaced slices in "
                                        r"order \(frame \d lies .* convert it to NIfTI with dcm2niix"):
        open_dataset(tmp_path).load("s")


def test_a_multi_frame_file_of_frames_stored_top_down_reads_on_its_geometry(tmp_path):
    stored = np.random.default_rng(4).integers(0, 1000, (4, 4, 5)).astype("<u2")
    enhanced_mr(tmp_path / "s" / "enhanced.dcm", stored, [(1.0, 0.0)] * 4, [6.0, 4.0, 2.0, 0.0])
    case = open_dataset(tmp_path).load("s")
    np.testing.assert_array_equal(case.image, stored.astype(np.float32))
    assert case.spacing == pytest.approx((2.0, 0.5, 0.5)) and case.meta["origin"][2] == pytest.approx(6.0)


@pytest.mark.parametrize("per_plane", [1, 3])
def test_a_survey_of_three_planes_in_one_multi_frame_file_is_refused(tmp_path, per_plane):
    """An enhanced MR survey: frames of three planes in one file, each frame with its own orientation. One
    frame a plane stacked as a three-slice volume unsaid; three a plane were refused as frames out of order."""
    at = [5.0 * k for k in range(per_plane)]
    places = ([((-10.0, -10.0, z), AXIAL) for z in at] + [((-10.0, y, 10.0), CORONAL) for y in at]
              + [((x, -10.0, 10.0), SAGITTAL) for x in at])
    enhanced_mr(tmp_path / "s" / "survey.dcm", np.zeros((len(places), 4, 5), "<u2"), [(1.0, 0.0)] * len(places),
                places=places)
    with pytest.raises(DataError, match=fr"survey.dcm: its frames lie in different orientations \(frame "
                                        fr"{per_plane + 1} 1\\0\\0\\0\\0\\-1, frame 1 1\\0\\0\\0\\1\\0\): "
                                        r"a localizer \(survey\) of several planes"):
        open_dataset(tmp_path).load("s")


# ---------------------------------------------------------------- pixels GDCM cannot decode


def test_pixels_in_a_compression_gdcm_does_not_read_name_the_file_and_what_to_do(tmp_path):
    """A video transfer syntax (MPEG-4), which GDCM, the decoder SimpleITK carries, does not read: ITK says
    only "Failed to change to Implicit Transfer Syntax" of the folder."""
    from pydicom.encaps import encapsulate

    for z in range(3):
        ds = mr_slice(z + 1, (0.0, 0.0, 2.0 * z))
        ds.PixelData = encapsulate([b"\0\0\0\1" + bytes(60)])
        ds["PixelData"].VR = "OB"
        save_part10(ds, tmp_path / "s" / f"IM{z}.dcm", syntax="1.2.840.10008.1.2.4.102")
    with pytest.raises(DataError) as refusal:
        open_dataset(tmp_path).load("s")
    message = str(refusal.value)
    assert "\n" not in message and "ITK ERROR" not in message, message
    for expected in (f"cannot decode DICOM {tmp_path / 's' / 'IM0.dcm'}: its pixels are compressed as MPEG-4",
                     "(1.2.840.10008.1.2.4.102)", "save the series uncompressed"):
        assert expected in message, message


def test_fewsam_info_says_a_cine_is_unusable_rather_than_count_its_time_points_as_slices(tmp_path):
    """``fewsam info`` counts slices from the headers alone: three slices at four time points were
    listed as a case of 12 slices, although loading it is refused."""
    from fewsam.info import dataset_info

    for k in range(12):
        save_part10(mr_slice(k + 1, (0.0, 0.0, 2.0 * (k % 3)), TriggerTime=40.0 * (k // 3)),
                    tmp_path / "p1" / "cine" / f"IM{k:04d}.dcm")
    split = dataset_info(tmp_path, None)["splits"]["all"]
    assert "cases" not in split and "its 12 DICOM files hold 4 time points" in split["error"], split
