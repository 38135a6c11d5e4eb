"""Files as researchers bring them from scanners and their own tools, read on the geometry that
3D Slicer, ITK-SNAP, SimpleITK and nibabel give them, and predictions that overlay them there:
one multi-frame DICOM file holding a whole series, predictions a RAS pipeline saved for a DICOM
series, NIfTI headers whose voxel sizes are in micrometres or metres or negative, 2D labels of
one-slice series, 16-bit colour images, and PNG masks kept beside volumes."""

from __future__ import annotations

import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from fewsam.data import open_dataset
from fewsam.data.writers import read_prediction, write_prediction
from fewsam.errors import DataError
from test_dicom import arrays, write_label, write_series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)


def _geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_a_series_stored_as_one_multi_frame_file_is_read_and_predicted_on_its_geometry(tmp_path):
    """Enhanced MR / CT exports keep a whole series in one file of many frames: it was refused as
    "did not stack into a volume" (ITK's series reader gives one 4D volume of it)."""
    voxels = np.random.default_rng(0).integers(0, 1000, (4, 6, 5)).astype(np.uint16)
    stored = sitk.GetImageFromArray(voxels)
    stored.SetSpacing((0.5, 0.7, 3.0))
    stored.SetOrigin((10.0, 20.0, 30.0))
    stored.SetDirection(CORONAL)
    (tmp_path / "data" / "s").mkdir(parents=True)
    sitk.WriteImage(stored, str(tmp_path / "data" / "s" / "series.dcm"))  # one file of 4 frames
    as_read = sitk.ReadImage(str(tmp_path / "data" / "s" / "series.dcm"))
    dataset = open_dataset(tmp_path / "data")
    assert dataset.num_slices("s") == 4
    case = dataset.load("s")
    np.testing.assert_array_equal(case.image, voxels.astype(np.float32))
    assert case.spacing == pytest.approx((3.0, 0.7, 0.5))
    pred = (voxels > 500).astype(np.uint8)
    written = sitk.ReadImage(str(write_prediction(case, pred, tmp_path / "pred")))
    np.testing.assert_allclose(np.concatenate(_geometry(written)), np.concatenate(_geometry(as_read)), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), pred)


@pytest.mark.parametrize("direction", [AXIAL, CORONAL])
def test_a_prediction_saved_in_ras_for_a_dicom_series_is_scored_on_the_series(tmp_path, direction):
    """MONAI's Orientationd("RAS") or a nibabel script saves the NIfTI of an axial series mirrored in x
    and y against its DICOM (LPS) voxel order, on the same grid: it was scored voxel for voxel, so a
    perfect prediction scored Dice 0.33 without a word (a coronal one stopped on its shape)."""
    image, label = arrays(5)
    reference = write_series(tmp_path / "data" / "c1", image, direction=direction)
    write_label(tmp_path / "data" / "labels" / "c1.nii.gz", label, reference)
    case = open_dataset(tmp_path / "data").load("c1")
    path = write_prediction(case, case.label, tmp_path / "pred")
    canonical = nib.as_closest_canonical(nib.load(path))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    nib.save(canonical, path)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), label)
    nib.save(nib.Nifti1Image(np.asarray(canonical.dataobj), np.eye(4)), path)  # no geometry: no safe reading
    with pytest.raises(DataError, match=r"prediction .*c1.nii.gz is oriented RAS and placed elsewhere"):
        read_prediction(case, tmp_path / "pred")


@pytest.mark.parametrize("unit, scale", [("micron", 1000.0), ("meter", 0.001), ("mm", 1.0)])
def test_voxel_sizes_a_header_gives_in_micrometres_or_metres_are_read_in_mm(tmp_path, unit, scale):
    """A NIfTI of 0.8 x 0.8 x 3 mm voxels saved in micrometres (xyzt_units) is 0.8 mm in ITK, Slicer and
    ITK-SNAP; it was 800 "mm", so HD95 and ASD came out 1000 times too large."""
    affine = np.diag([0.8 * scale, 0.8 * scale, 3.0 * scale, 1.0])
    for folder, array in (("images", np.zeros((6, 5, 4), np.float32)), ("labels", np.zeros((6, 5, 4), np.uint8))):
        nifti = nib.Nifti1Image(array, affine)
        nifti.header.set_xyzt_units(unit)
        (tmp_path / folder).mkdir()
        nib.save(nifti, tmp_path / folder / "c1.nii.gz")
    case = open_dataset(tmp_path).load("c1")
    assert case.spacing == pytest.approx((3.0, 0.8, 0.8))
    assert sitk.ReadImage(str(tmp_path / "images" / "c1.nii.gz")).GetSpacing() == pytest.approx((0.8, 0.8, 3.0))
    written = nib.load(write_prediction(case, np.zeros((4, 5, 6), np.uint8), tmp_path / "pred"))
    np.testing.assert_allclose(written.affine, affine)
    assert written.header.get_xyzt_units()[0] == unit


def _with_negative_x_size(nifti: nib.Nifti1Image) -> bytes:
    """The file's bytes with pixdim[1] negative, as some tools store a flipped x axis;
    nibabel refuses to write it, so it is set in the bytes."""
    data = bytearray(nifti.to_bytes())
    offset = nib.Nifti1Header.template_dtype.fields["pixdim"][1] + 4
    data[offset:offset + 4] = np.float32(-abs(nifti.header["pixdim"][1])).astype("<f4").tobytes()
    return bytes(data)


def _with_x_size(nifti: nib.Nifti1Image, size: float) -> bytes:
    """The file's bytes with pixdim[1] = ``size`` and no qform or sform, as a damaged or hand-made
    header leaves it (nibabel writes no NaN or infinite voxel size itself)."""
    data = bytearray(nifti.to_bytes())
    offset = nib.Nifti1Header.template_dtype.fields["pixdim"][1] + 4
    data[offset:offset + 4] = np.float32(size).astype("<f4").tobytes()
    for code in ("qform_code", "sform_code"):
        offset = nib.Nifti1Header.template_dtype.fields[code][1]
        data[offset:offset + 2] = np.int16(0).astype("<i2").tobytes()
    return bytes(data)


@pytest.mark.parametrize("size", [float("nan"), float("inf")])
def test_a_header_whose_voxel_size_is_not_a_number_is_refused_before_any_prediction(tmp_path, size):
    """NaN failed in a traceback only when the prediction, made at length, was written on that affine;
    an infinite size made x the slice direction: 6 slices of 5 x 4 became 4 of 6 x 5 without a word of
    the damaged header."""
    for folder, array in (("images", np.arange(120, dtype=np.float32).reshape(6, 5, 4)),
                          ("labels", np.zeros((6, 5, 4), np.uint8))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "c1.nii").write_bytes(_with_x_size(nib.Nifti1Image(array, np.eye(4)), size))
    dataset = open_dataset(tmp_path)
    message = rf"images/c1.nii: its header gives voxel sizes of {size} x 1 x 1 mm, not finite positive numbers"
    with pytest.raises(DataError, match=message):
        dataset.num_slices("c1")
    with pytest.raises(DataError, match=message):
        dataset.load("c1")


def test_a_metaimage_whose_spacing_is_not_a_number_is_refused_where_its_slices_are_counted(tmp_path):
    """ITK reads a MetaImage header's NaN spacing as 0 x 0 x 0 without its voxels: `info` and the
    labelled budget counted the 6 x 5 x 4 volume's slices along x (6 of them), not z (4)."""
    for folder, array in (("images", np.arange(120, dtype=np.float32).reshape(4, 5, 6)),
                          ("labels", np.zeros((4, 5, 6), np.uint8))):
        (tmp_path / folder).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / folder / "c1.mha"))
        path = tmp_path / folder / "c1.mha"
        path.write_bytes(path.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = nan 1 1"))
    with pytest.raises(DataError, match=r"images/c1.mha: its header gives voxel sizes of 0 x 0 x 0 mm, not finite"):
        open_dataset(tmp_path).num_slices("c1")


def test_a_prediction_keeps_a_negative_voxel_size_so_itk_viewers_overlay_it(tmp_path):
    """nibabel reads pixdim[1] = -0.8 as 0.8, ITK (3D Slicer, ITK-SNAP) as a flipped x axis: the
    prediction, written with 0.8, lay mirrored over its image there."""
    affine = np.diag([0.8, 0.9, 3.0, 1.0])
    affine[:3, 3] = (-5.0, 7.0, 2.0)
    label = np.zeros((6, 5, 4), np.uint8)
    label[:2, 1:3, 1:3] = 1
    for folder, array in (("images", np.arange(120, dtype=np.float32).reshape(6, 5, 4)), ("labels", label)):
        nifti = nib.Nifti1Image(array, affine)
        nifti.header.set_sform(None, code=0)
        nifti.header.set_qform(affine, code=1)
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "c1.nii").write_bytes(_with_negative_x_size(nifti))
    case = open_dataset(tmp_path).load("c1")
    path = write_prediction(case, case.label, tmp_path / "pred")
    image, written = (sitk.ReadImage(str(p)) for p in (tmp_path / "images" / "c1.nii", path))
    assert image.GetDirection()[0] == pytest.approx(1.0)  # ITK: x runs to the left (RAS x flipped)
    np.testing.assert_allclose(np.concatenate(_geometry(written)), np.concatenate(_geometry(image)), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), label.transpose(2, 1, 0))
    np.testing.assert_allclose(nib.load(path).affine, nib.load(tmp_path / "images" / "c1.nii").affine)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), case.label)


def test_a_2d_label_of_a_one_slice_series_is_read_pixel_for_pixel(tmp_path):
    """The mask of an X-ray or of one MR slice, saved by a script as a 2D array: placed at its own z
    (0) and spacing (1 mm), it missed the slice and was refused, as a 2D label of a 2D NIfTI is not."""
    image, label = arrays(4, (1, 5, 7))
    write_series(tmp_path / "mr1", image)  # one coronal slice at y = 5 mm, 0.7 x 0.8 mm pixels
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(label[0]), str(tmp_path / "labels" / "mr1.nii.gz"))
    nib.save(nib.Nifti1Image(label[0].T.copy(), np.eye(4)), tmp_path / "labels" / "mr2.nii.gz")
    write_series(tmp_path / "mr2", image, uid="1.2.826.0.1.3680043.2.1125.8")
    dataset = open_dataset(tmp_path)
    for case_id in ("mr1", "mr2"):
        np.testing.assert_array_equal(dataset.load(case_id).label, label)
    sitk.WriteImage(sitk.GetImageFromArray(label[0, :4]), str(tmp_path / "labels" / "mr1.nii.gz"))
    with pytest.raises(DataError, match="does not lie on its DICOM series"):
        dataset.load("mr1")


@pytest.mark.parametrize("ending, compress", [(".png", False), (".tif", True)])
def test_a_16_bit_colour_image_keeps_its_16_bit_values(tmp_path, ending, compress):
    """Pillow decodes 48-bit RGB to 8 bits per channel: a 12-bit X-ray kept in a 16-bit RGB file read as
    16 grey levels (values >> 8), and a 16-bit colour micrograph lost its low byte."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 4096, (9, 8)).astype(np.uint16)  # 12-bit values
    colour = rng.integers(0, 65536, (9, 8, 3)).astype(np.uint16)
    mask = np.zeros((9, 8), np.uint8)
    mask[2:6, 3:7] = 255
    for name, pixels in (("xray", np.stack([grey] * 3, axis=-1)), ("cells", colour)):
        for folder in ("images", "masks"):
            (tmp_path / folder).mkdir(exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(pixels, isVector=True), str(tmp_path / "images" / f"{name}{ending}"),
                        useCompression=compress)
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "masks" / f"{name}.png"))
    dataset = open_dataset(tmp_path)
    xray, cells = (dataset.load(case_id) for case_id in ("images/xray", "images/cells"))
    np.testing.assert_array_equal(xray.image[0], grey.astype(np.float32))
    np.testing.assert_array_equal(cells.image[0], colour.astype(np.float32))
    assert np.array_equal(cells.label[0], mask // 255)


def test_png_masks_beside_volumes_or_a_dicom_series_are_said_not_to_be_read(tmp_path, notices):
    """A 2D NIfTI image's or an X-ray's mask kept as labels/<case>.png: the case was unlabelled and
    "no labels found" did not say that PNG labels are not read."""
    image, label = arrays(4, (1, 5, 7))
    write_series(tmp_path / "dicom" / "xray", image)
    (tmp_path / "nifti" / "images").mkdir(parents=True)
    nib.save(nib.Nifti1Image(image[0].T.astype(np.float32), np.eye(4)), tmp_path / "nifti" / "images" / "a.nii.gz")
    for data in ("dicom", "nifti"):
        (tmp_path / data / "labels").mkdir()
        Image.fromarray(label[0] * 100).save(tmp_path / data / "labels" / ("xray.png" if data == "dicom" else "a.png"))
        assert not open_dataset(tmp_path / data).has_any_label()
        assert f"{tmp_path / data / 'labels'}: 1 2D image file(s) (" in notices.text
        assert "are not read as labels" in notices.text


def _meta_element(element: int, value: bytes) -> bytes:
    """One file meta element (group 2, explicit VR little endian) holding a UID."""
    value += b"\0" * (len(value) % 2)
    return struct.pack("<HH2sH", 2, element, b"UI", len(value)) + value


def write_object_without_image(path: Path, sop_class: str) -> None:
    """A Part 10 file of an RT structure set, a segmentation or a report: its file meta group names
    the SOP class; no pixels."""
    meta = _meta_element(2, sop_class.encode()) + _meta_element(3, b"1.2.826.0.1.3680043.2.1125.99.1")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(meta)) + meta)


def test_rt_structures_and_segmentations_beside_a_series_are_no_cases(tmp_path, notices):
    """A TCIA download keeps each patient's CT beside its RT structure set and DICOM SEG, each in a series
    folder of its own: those became cases, and predict stopped at the first ("no readable DICOM series")."""
    image, _ = arrays(0)
    study = tmp_path / "LUNG1-001" / "09-18-2008-StudyID-69331"
    write_series(study / "0.000000-CT-82163", image)
    write_object_without_image(study / "3.000000-RTSTRUCT-1-82163" / "1-1.dcm", "1.2.840.10008.5.1.4.1.1.481.3")
    write_object_without_image(study / "300.000000-Segmentation-91284" / "1-1.dcm", "1.2.840.10008.5.1.4.1.1.66.4")
    dataset = open_dataset(tmp_path)
    assert list(dataset.entries) == ["LUNG1-001/09-18-2008-StudyID-69331/0.000000-CT-82163"]
    assert "2 folder(s) hold DICOM objects that are no image" in notices.text
    assert dataset.load(dataset.split("all")[0]).image.shape == image.shape
