"""Readers' wrong answers on files as users give them: a retinal test folder's field-of-view masks, cine
DICOM's time points, 16-bit mask codings, 2D NRRD headers and ITK-SNAP labels of flipped NIfTI images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewsam.data import open_dataset
from fewsam.errors import DataError

from conftest import write_images_and_masks


def fundus_test_folder(root: Path, n: int = 2) -> Path:
    """DRIVE's ``test/`` alone: photographs dark outside the camera's circular field of view (images/), and
    that field of view as a mask per image (mask/), without the drawn vessels (1st_manual/)."""
    yy, xx = np.mgrid[:16, :18]
    field = (yy - 7.5) ** 2 + (xx - 8.5) ** 2 < 7.5 ** 2
    for d in ("images", "mask"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        photo = (np.random.default_rng(i).random((16, 18, 3)) * 200 + 40).astype(np.uint8) * field[..., None]
        Image.fromarray(photo).save(root / "images" / f"{i:02d}_test.tif")
        Image.fromarray(field.astype(np.uint8) * 255).save(root / "mask" / f"{i:02d}_test_mask.gif")
    return root


def test_a_drive_test_folder_alone_has_no_labels_its_field_of_view_masks_are_not_read(tmp_path, caplog):
    caplog.set_level("INFO", logger="fewsam")
    ds = open_dataset(fundus_test_folder(tmp_path / "test"))
    assert list(ds.entries) == ["images/01_test", "images/02_test"]
    assert not any(map(ds.has_label, ds.entries))
    assert "its masks mark each picture's field of view" in caplog.text
    # a label covering most of a picture that is as bright beside it is no field of view: still read
    lesions = tmp_path / "lesions"
    for d in ("images", "mask"):
        (lesions / d).mkdir(parents=True)
    label = np.zeros((16, 18), np.uint8)
    label[1:15, 1:16] = 255
    for name in ("a", "b"):
        Image.fromarray(np.full((16, 18), 120, np.uint8)).save(lesions / "images" / f"{name}.png")
        Image.fromarray(label).save(lesions / "mask" / f"{name}.png")
    ds = open_dataset(lesions)
    assert all(map(ds.has_label, ds.entries))


# ---------------------------------------------------------------- a cine DICOM file's time points


ENHANCED_MR, MR = "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4"


def _mr_file(sop: str, instance: str, pixels: np.ndarray):  # noqa: ANN202 - a pydicom Dataset
    """The header every MR file of one series shares (one series UID), with ``pixels`` (frames, 4, 5)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop, instance, "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.6"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 4, 5
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def _save_dicom(ds, path: Path) -> None:  # noqa: ANN001 - a pydicom Dataset
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_enhanced_mr(path: Path, positions: list[tuple[float, float, float]], times: list[int],
                      instance: str = "1.2.3.4.5") -> np.ndarray:
    """An enhanced MR file (one file, many frames) whose per-frame functional groups give each frame's
    ImagePositionPatient and, where ``times`` holds one, its TemporalPositionIndex; returns its frames."""
    from pydicom.dataset import Dataset

    pixels = np.random.default_rng(0).integers(0, 1000, (len(positions), 4, 5)).astype("<u2")
    ds = _mr_file(ENHANCED_MR, instance, pixels)
    ds.NumberOfFrames = len(positions)
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.SliceThickness, measures.PixelSpacing = 2, [0.5, 0.5]
    shared = Dataset()
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [_frame(p, t) for p, t in zip(positions, times)]
    _save_dicom(ds, path)
    return pixels


def write_mr_slices(folder: Path, positions: list[tuple[float, float, float]], times: list[int]) -> None:
    """One single-frame MR file per position, of one series: at time point ``times[k]`` (its
    TemporalPositionIdentifier and a TriggerTime 40 ms apart, as a cine series written slice by slice)."""
    for k, (position, time) in enumerate(zip(positions, times)):
        pixels = np.random.default_rng(k).integers(0, 1000, (1, 4, 5))
        ds = _mr_file(MR, f"1.2.3.4.7.{k + 1}", pixels)
        ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [0.5, 0.5], 2, k + 1
        ds.TemporalPositionIdentifier, ds.TriggerTime = time, 40.0 * (time - 1)
        _save_dicom(ds, folder / f"IM{k + 1:04d}.dcm")


def _frame(position: tuple[float, float, float], time: int):  # noqa: ANN202 - a pydicom Dataset
    """One frame's functional groups: its position, and its time point where ``time`` is not 0."""
    from pydicom.dataset import Dataset

    content, plane, frame = Dataset(), Dataset(), Dataset()
    if time:
        content.TemporalPositionIndex = time
    plane.ImagePositionPatient = list(position)
    frame.FrameContentSequence, frame.PlanePositionSequence = [content], [plane]
    return frame


SLICES = [(0.0, 0.0, 2.0 * k) for k in range(3)]


@pytest.mark.parametrize("times", [[1, 1, 1, 2, 2, 2], [0] * 6], ids=["temporal-index", "repeated-positions"])
def test_a_cine_multi_frame_file_is_refused_naming_its_time_points(tmp_path, times):
    frames = write_enhanced_mr(tmp_path / "one" / "s" / "volume.dcm", SLICES, times[:3])
    np.testing.assert_array_equal(open_dataset(tmp_path / "one").load("s").image, frames.astype(np.float32))
    write_enhanced_mr(tmp_path / "cine" / "s" / "cine.dcm", SLICES * 2, times)
    with pytest.raises(DataError, match=r"cine.dcm: this multi-frame DICOM file holds 2 time points "
                                        r"\(6 frames at 3 slice positions"):
        open_dataset(tmp_path / "cine").load("s")


def test_a_series_whose_later_file_is_a_cine_multi_frame_file_is_refused_naming_it(tmp_path):
    """Every file of a series is looked at, not only its first: here the second of two files is the cine."""
    write_enhanced_mr(tmp_path / "cine" / "s" / "a.dcm", SLICES, [0] * 3, instance="1.2.3.4.5.1")
    later = [(0.0, 0.0, 6.0 + 2.0 * k) for k in range(3)] * 2
    write_enhanced_mr(tmp_path / "cine" / "s" / "b.dcm", later, [1, 1, 1, 2, 2, 2], instance="1.2.3.4.5.2")
    with pytest.raises(DataError, match=r"b.dcm: this multi-frame DICOM file holds 2 time points "
                                        r"\(6 frames at 3 slice positions"):
        open_dataset(tmp_path / "cine").load("s")


@pytest.mark.parametrize("slices", [SLICES, SLICES[:1]], ids=["three-slices", "one-slice"])
def test_a_cine_written_as_single_frame_files_is_refused_naming_its_time_points(tmp_path, slices):
    """A cine stored a file per slice position and time point (one series UID): as many time points at each
    position, whatever order the files sort in; one slice position at two time points too."""
    write_mr_slices(tmp_path / "one" / "s", slices, [1] * len(slices))
    assert open_dataset(tmp_path / "one").load("s").image.shape == (len(slices), 4, 5)
    write_mr_slices(tmp_path / "cine" / "s", slices * 2, [1] * len(slices) + [2] * len(slices))
    folder = tmp_path / "cine" / "s"
    with pytest.raises(DataError, match=fr"{folder}: its {2 * len(slices)} DICOM files hold 2 time points "
                                        fr"\({2 * len(slices)} frames at {len(slices)} slice positions"):
        open_dataset(tmp_path / "cine").load("s")


def test_multi_frame_files_one_per_time_point_are_refused_as_one_series(tmp_path):
    """An enhanced MR file per time point, each one volume of the same slices, in one series."""
    for time in (1, 2):
        write_enhanced_mr(tmp_path / "cine" / "s" / f"t{time}.dcm", SLICES, [time] * 3, instance=f"1.2.3.4.5.{time}")
    with pytest.raises(DataError, match=r"its 2 DICOM files hold 2 time points \(6 frames at 3 slice positions"):
        open_dataset(tmp_path / "cine").load("s")


# ---------------------------------------------------------------- 16-bit masks coded 0/65535


def sixteen_bit_folder(root: Path, suffix: str) -> Path:
    """images/ + masks/ whose masks are 16-bit files coded 0/65535."""
    mask = np.zeros((16, 18), np.uint16)
    mask[4:10, 5:12] = 65535
    return write_images_and_masks(root, ["a", "b"], mask, suffix)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_predictions_of_masks_coded_0_65535_are_written_in_0_65535_and_score(tmp_path, suffix):
    from fewsam.api import evaluate
    from fewsam.data.writers import write_prediction
    from fewsam.studio.fitdata import _mask_coding

    data = sixteen_bit_folder(tmp_path / "data", suffix)
    ds = open_dataset(data)
    for case in map(ds.load, ds.split("all")):
        written = np.asarray(Image.open(write_prediction(case, case.label, tmp_path / "pred")))
        assert written.dtype == np.uint16 and set(np.unique(written)) == {0, 65535}
    scores = evaluate(tmp_path / "pred", data, split="all", show_progress=False)
    assert scores["mean"]["dice"] == pytest.approx(1.0)
    assert _mask_coding([(case, 0, case.label)], ds.class_map) == {0: 0, 1: 1}  # studio's masks are 8-bit


def test_a_run_fitted_on_0_65535_masks_predicts_new_images_in_0_65535(tmp_path):
    """A folder of new images has no masks to show their coding: the run's is taken (``mask_coding``)."""
    from fewsam.data.writers import read_prediction, write_prediction

    fitted = open_dataset(sixteen_bit_folder(tmp_path / "data", ".png"))
    (tmp_path / "new").mkdir()
    Image.fromarray(np.zeros((16, 18), np.uint8)).save(tmp_path / "new" / "c.png")
    new = open_dataset(tmp_path / "new")
    assert new.adopt_mask_coding(fitted.class_map, fitted.mask_coding())
    case = new.load("c")
    pred = np.zeros((1, 16, 18), np.uint8)
    pred[0, 2:5, 2:5] = 1
    written = np.asarray(Image.open(write_prediction(case, pred, tmp_path / "pred")))
    assert set(np.unique(written)) == {0, 65535}
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), pred)


# ---------------------------------------------------------------- a 2D NRRD placed in 3D space


def write_slice_nrrd(folder: Path, name: str, detached: bool = False) -> np.ndarray:
    """A 2D NRRD as 3D Slicer saves one slice: two axes, each with a 3D space direction."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.arange(20, dtype=np.uint8).reshape(4, 5)
    header = ("NRRD0004\ntype: uint8\ndimension: 2\nspace: left-posterior-superior\nsizes: 5 4\n"
              "space directions: (0.5,0,0) (0,0.7,0)\nkinds: domain domain\nspace origin: (10,20,30)\n"
              "encoding: raw\n")
    if detached:
        (folder / f"{name}.raw").write_bytes(pixels.tobytes())
        (folder / f"{name}.nhdr").write_text(header + f"data file: {name}.raw\n\n", encoding="utf-8")
    else:
        (folder / f"{name}.nrrd").write_bytes(header.encode() + b"\n" + pixels.tobytes())
    return pixels


@pytest.mark.parametrize("detached", [False, True], ids=["nrrd", "nhdr"])
def test_a_2d_nrrd_with_3d_space_directions_reads_as_one_slice_and_predicts_on_it(tmp_path, detached):
    import SimpleITK as sitk

    from fewsam.data.writers import write_prediction

    pixels = write_slice_nrrd(tmp_path / "data", "slice", detached)
    case = open_dataset(tmp_path / "data").load("slice")
    np.testing.assert_array_equal(case.image[0], pixels.astype(np.float32))
    assert case.spacing == pytest.approx((1.0, 0.7, 0.5))
    written = sitk.ReadImage(str(write_prediction(case, (case.image > 5).astype(np.uint8), tmp_path / "pred")))
    assert written.GetOrigin() == pytest.approx((10.0, 20.0, 30.0))
    assert written.GetSpacing()[:2] == pytest.approx((0.5, 0.7))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written)[0], (pixels > 5).astype(np.uint8))


# ---------------------------------------------------------------- an ITK-SNAP label of a NIfTI with a negative pixdim


def write_negative_x_image_and_itk_label(root: Path, sform: bool) -> np.ndarray:
    """An image whose pixdim[1] is negative (nibabel reads x as positive, ITK as flipped), and a label
    saved as ITK-SNAP saves one: on the image's geometry as ITK reads it. Returns the label's (x, y, z)."""
    import nibabel as nib
    import SimpleITK as sitk

    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    nifti = nib.Nifti1Image(np.arange(120, dtype=np.float32).reshape(6, 5, 4), affine)
    if not sform:
        nifti.header.set_sform(None, code=0)
        nifti.header.set_qform(affine, code=1)
    data = bytearray(nifti.to_bytes())  # nibabel refuses to write a negative size: set in the bytes
    offset = nib.Nifti1Header.template_dtype.fields["pixdim"][1] + 4
    data[offset:offset + 4] = np.float32(-2.0).astype("<f4").tobytes()
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    (root / "images" / "c.nii").write_bytes(bytes(data))
    image = sitk.ReadImage(str(root / "images" / "c.nii"))
    label = np.zeros((4, 5, 6), np.uint8)  # ITK's (z, y, x)
    label[1:3, 1:4, :2] = 1
    drawn = sitk.GetImageFromArray(label)
    drawn.CopyInformation(image)
    sitk.WriteImage(drawn, str(root / "labels" / "c.nii.gz"))
    return label.transpose(2, 1, 0)


@pytest.mark.parametrize("sform", [False, True], ids=["qform", "sform"])
def test_an_itk_snap_label_of_an_image_with_a_negative_voxel_size_is_read_voxel_for_voxel(tmp_path, sform):
    from fewsam.data.readers.nifti import to_slices
    from fewsam.data.writers import read_prediction

    label_xyz = write_negative_x_image_and_itk_label(tmp_path / "data", sform)
    ds = open_dataset(tmp_path / "data")
    case = ds.load("c")
    np.testing.assert_array_equal(case.label, to_slices(label_xyz))
    (tmp_path / "pred").mkdir()  # ITK-SNAP's own output, scored as a prediction: on the same grid
    (tmp_path / "pred" / "c.nii.gz").write_bytes((tmp_path / "data" / "labels" / "c.nii.gz").read_bytes())
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), case.label)


def test_itk_snap_structure_masks_of_an_image_with_a_negative_voxel_size_are_read_voxel_for_voxel(tmp_path):
    """A TotalSegmentator-style case folder (ct + segmentations/, a mask per structure) drawn in ITK-SNAP."""
    from fewsam.data.readers.nifti import to_slices

    label_xyz = write_negative_x_image_and_itk_label(tmp_path / "drawn", sform=False)
    case = tmp_path / "data" / "s0000"
    (case / "segmentations").mkdir(parents=True)
    (case / "ct.nii").write_bytes((tmp_path / "drawn" / "images" / "c.nii").read_bytes())
    for structure in ("liver", "spleen"):
        (case / "segmentations" / f"{structure}.nii.gz").write_bytes(
            (tmp_path / "drawn" / "labels" / "c.nii.gz").read_bytes())
    ds = open_dataset(tmp_path / "data")
    assert ds.load("s0000").label.any() and set(np.unique(ds.load("s0000").label)) <= {0, 1, 2}
    np.testing.assert_array_equal(ds.load("s0000").label > 0, to_slices(label_xyz) > 0)
