"""Predictions lie voxel for voxel on the image they came from, as 3D Slicer, ITK-SNAP, FreeSurfer and
nnU-Net (SimpleITK) read both: a label written through the prediction writer is read back by SimpleITK
on the image's size, spacing, origin and direction, and each labelled voxel sits at the physical point
of the image voxel the case's array held there. Oblique, flipped and axis-swapped NIfTI affines, a
qform and sform that differ, 2D and 4D NIfTI, scaled intensities, MetaImage and NRRD in LPS and RAS
spaces, volumes cut along x or y, and DICOM series listed in reverse order; and a prediction that
SimpleITK saved for an image whose qform and sform differ is scored where ITK placed it."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fewsam.data import open_dataset, read_prediction, write_prediction
from fewsam.data.types import Case
from test_dicom import write_series

ZOOMS = (0.7, 0.9, 3.0)
SHAPE = (7, 6, 5)  # NIfTI (x, y, z)


def _turn(axis: int, angle: float) -> np.ndarray:
    """A rotation about one world axis: oblique planes as scanners acquire them."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    turn = np.eye(3)
    turn[i, i], turn[j, j], turn[i, j], turn[j, i] = c, c, -s, s
    return turn


OBLIQUE = _turn(0, 0.3) @ _turn(2, 0.5)


def _affine(linear: np.ndarray, origin: tuple[float, float, float] = (12.0, -30.0, 40.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, origin
    return affine


def _voxels(shape: tuple[int, ...]) -> np.ndarray:
    """Every voxel its own value, so a voxel's value says where it came from."""
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def _nifti(affine: np.ndarray, shape: tuple[int, ...] = SHAPE, qform: np.ndarray | None = None,
           sform_code: int = 2, image_class: type = nib.Nifti1Image) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image = image_class(_voxels(shape), affine)
        if qform is not None:
            image.header.set_qform(qform, code=1)
            image.header.set_sform(affine, code=sform_code)
        nib.save(image, path)
    return write


def _scaled(path: Path) -> None:
    image = nib.Nifti1Image(np.arange(210, dtype=np.int16).reshape(SHAPE), _affine(np.diag(ZOOMS)))
    image.header.set_slope_inter(0.5, -3.0)
    nib.save(image, path)


def _negative_x_size_cut_along_x(path: Path) -> None:
    """Sagittal slices along x, stored with pixdim[1] negative (ITK reads x flipped, nibabel not)."""
    affine = _affine(np.diag([4.0, 0.6, 0.5]))
    image = nib.Nifti1Image(_voxels((5, 9, 8)), affine)
    image.header.set_sform(None, code=0)
    image.header.set_qform(affine, code=1)
    data = bytearray(image.to_bytes())
    offset = nib.Nifti1Header.template_dtype.fields["pixdim"][1] + 4
    data[offset:offset + 4] = np.float32(-4.0).astype("<f4").tobytes()
    path.write_bytes(gzip.compress(bytes(data)))


NIFTI_IMAGES = {
    "oblique": _nifti(_affine(OBLIQUE @ np.diag(ZOOMS))),
    "flipped x and y": _nifti(_affine(np.diag([-0.8, -0.8, 2.5]))),
    "axes swapped": _nifti(_affine(np.array([[0, 0, 2.0], [-0.5, 0, 0], [0, -0.6, 0]]))),
    "qform and sform differ, sform aligned": _nifti(_affine(_turn(1, 0.2) @ np.diag(ZOOMS)),
                                                    qform=_affine(np.diag([-0.7, 0.9, 3.0]), (1.0, 2.0, 3.0))),
    "qform and sform differ, sform scanner": _nifti(_affine(_turn(1, 0.2) @ np.diag(ZOOMS)), sform_code=1,
                                                    qform=_affine(np.diag([-0.7, 0.9, 3.0]), (1.0, 2.0, 3.0))),
    "sagittal, cut along x": _nifti(_affine(_turn(2, 0.2) @ np.diag([4.0, 0.5, 0.6])), (5, 9, 8)),
    "coronal, cut along y": _nifti(_affine(np.diag([0.5, 4.0, 0.6])), (9, 5, 8)),
    "negative x size, cut along x": _negative_x_size_cut_along_x,
    "2D": _nifti(_affine(_turn(2, 0.3) @ np.diag([0.7, 0.9, 1.0])), (7, 6)),
    "4D of one volume": _nifti(_affine(np.diag(ZOOMS)), (*SHAPE, 1)),
    "4D of three volumes": _nifti(_affine(np.diag(ZOOMS)), (*SHAPE, 3)),
    "scaled intensities": _scaled,
}


def _itk_image(array: np.ndarray, direction: np.ndarray, spacing: tuple[float, ...] = ZOOMS) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((12.0, -30.0, 40.0))
    image.SetDirection(tuple(direction.ravel()))
    return image


def _itk_file(direction: np.ndarray, shape_zyx: tuple[int, int, int] = SHAPE[::-1],
              spacing: tuple[float, ...] = ZOOMS) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        sitk.WriteImage(_itk_image(np.arange(np.prod(shape_zyx), dtype=np.int16).reshape(shape_zyx),
                                   direction, spacing), str(path))
    return write


def _nrrd_in_ras(path: Path) -> None:
    """An NRRD in right-anterior-superior space, as some converters write it (SimpleITK writes LPS)."""
    directions = (OBLIQUE @ np.diag(ZOOMS)).T
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\nsizes: 7 6 5\n"
              f"space directions: {' '.join('(' + ','.join(repr(float(v)) for v in d) + ')' for d in directions)}\n"
              "kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: (12,-30,40)\n\n")
    path.write_bytes(header.encode() + np.arange(210, dtype="<i2").tobytes())


ITK_IMAGES = {
    "mha oblique": (".mha", _itk_file(OBLIQUE)),
    "mhd flipped oblique": (".mhd", _itk_file(OBLIQUE @ np.diag([1.0, -1.0, -1.0]))),
    "nrrd LPS oblique": (".nrrd", _itk_file(OBLIQUE)),
    "nrrd RAS oblique": (".nrrd", _nrrd_in_ras),
    "nrrd sagittal, cut along x": (".nrrd", _itk_file(_turn(2, 0.2), (9, 8, 5), (4.0, 0.5, 0.6))),
}


def _marked(case: Case) -> np.ndarray:
    """A label of three single voxels at corners and off-centre, none mirrored onto another."""
    label = np.zeros(case.image.shape[:3], np.uint8)
    slices, rows, cols = label.shape
    label[slices // 3, rows // 4, cols - 2], label[0, 0, 0], label[-1, rows - 1, 1] = 2, 1, 3
    return label


def _geometry(image: sitk.Image) -> np.ndarray:
    return np.concatenate([image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()])


def assert_on_the_image(image: sitk.Image, written: sitk.Image, case: Case, label: np.ndarray) -> None:
    """``written`` has ``image``'s geometry as SimpleITK reads both, is uint8, and each labelled voxel lies
    at the physical point of the image voxel holding the value the case's array held there."""
    if image.GetDimension() == 4 and written.GetDimension() == 3:  # a 4D series: one 3D prediction of its grid
        image = image[:, :, :, 0]
    np.testing.assert_allclose(_geometry(written), _geometry(image), atol=1e-4)
    assert written.GetPixelID() == sitk.sitkUInt8
    voxels = sitk.GetArrayFromImage(image)
    for index in np.argwhere(sitk.GetArrayFromImage(written) > 0):
        point = written.TransformIndexToPhysicalPoint(tuple(int(i) for i in index[::-1]))
        at = image.TransformPhysicalPointToIndex(point)[::-1]
        value = sitk.GetArrayFromImage(written)[tuple(index)]
        assert voxels[at] == case.image[label == value][0]


def _write_and_check(image_path: Path, tmp_path: Path) -> tuple[Case, np.ndarray, Path]:
    case = open_dataset(tmp_path / "data").load("c1", with_label=False)
    label = _marked(case)
    path = write_prediction(case, label, tmp_path / "pred")
    assert_on_the_image(sitk.ReadImage(str(image_path)), sitk.ReadImage(str(path)), case, label)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), label)
    return case, label, path


@pytest.mark.parametrize("kind", NIFTI_IMAGES)
def test_a_nifti_prediction_lies_on_its_image_as_itk_and_nibabel_read_them(tmp_path, kind):
    image_path = tmp_path / "data" / "images" / "c1.nii.gz"
    image_path.parent.mkdir(parents=True)
    NIFTI_IMAGES[kind](image_path)
    _, _, path = _write_and_check(image_path, tmp_path)
    image, written = nib.load(image_path), nib.load(path)
    np.testing.assert_allclose(written.affine, image.affine, atol=1e-5)
    for field in ("qform_code", "sform_code"):
        assert written.header[field] == image.header[field]
    np.testing.assert_allclose(written.header.get_qform(), image.header.get_qform(), atol=1e-5)
    assert written.get_data_dtype() == np.uint8 and written.header.get_slope_inter() in ((1.0, 0.0), (None, None))
    assert len(written.shape) == (2 if len(image.shape) == 2 else 4 if image.shape[3:] == (1,) else 3)


def test_a_nifti_2_prediction_stays_nifti_2_on_its_affine(tmp_path):
    image_path = tmp_path / "data" / "images" / "c1.nii.gz"
    image_path.parent.mkdir(parents=True)
    _nifti(_affine(OBLIQUE @ np.diag(ZOOMS)), image_class=nib.Nifti2Image)(image_path)
    case = open_dataset(tmp_path / "data").load("c1", with_label=False)
    written = nib.load(write_prediction(case, _marked(case), tmp_path / "pred"))
    assert isinstance(written, nib.Nifti2Image) and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, nib.load(image_path).affine, atol=1e-5)


@pytest.mark.parametrize("kind", ITK_IMAGES)
def test_a_metaimage_or_nrrd_prediction_lies_on_its_image(tmp_path, kind):
    ending, write = ITK_IMAGES[kind]
    image_path = tmp_path / "data" / "images" / f"c1{ending}"
    image_path.parent.mkdir(parents=True)
    write(image_path)
    _write_and_check(image_path, tmp_path)


@pytest.mark.parametrize("direction", [OBLIQUE, np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]])])
def test_a_dicom_prediction_lies_on_its_series_listed_in_reverse(tmp_path, direction):
    """Files named and numbered from the last slice to the first: the series as ImageSeriesReader stacks it."""
    folder = tmp_path / "data" / "s1"
    write_series(folder, np.arange(210, dtype=np.int16).reshape(7, 6, 5), spacing=(0.7, 0.8, 2.5),
                 origin=(-20.0, 15.0, 33.0), direction=tuple(direction.ravel()))
    for i, path in enumerate(sorted(folder.iterdir(), key=lambda p: int(p.stem[5:]))):
        path.rename(folder / f"IM{7 - i:04d}.dcm")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    case = open_dataset(tmp_path / "data").load("s1", with_label=False)
    label = _marked(case)
    written = sitk.ReadImage(str(write_prediction(case, label, tmp_path / "pred")))
    assert_on_the_image(series, written, case, label)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), label)


@pytest.mark.parametrize("sform_code", [2, 4])
@pytest.mark.parametrize("qform", [np.diag([-0.7, 0.9, 3.0]), np.array([[0, 0.9, 0], [0.7, 0, 0], [0, 0, 3.0]])])
def test_a_prediction_simpleitk_saved_for_an_image_whose_qform_and_sform_differ_is_scored_there(
        tmp_path, sform_code, qform):
    """ITK (nnU-Net's SimpleITK reader, ITK-SNAP, 3D Slicer) places an image by its qform unless its
    sform_code is "scanner", nibabel by its sform: a registered image (sform aligned or MNI, qform the
    scanner's) predicted by nnU-Net came back on ITK's grid and was refused as "placed elsewhere"."""
    image_path = tmp_path / "data" / "images" / "c1.nii.gz"
    image_path.parent.mkdir(parents=True)
    _nifti(_affine(_turn(1, 0.2) @ np.diag(ZOOMS)), qform=_affine(qform, (1.0, 2.0, 3.0)),
           sform_code=sform_code)(image_path)
    case = open_dataset(tmp_path / "data").load("c1", with_label=False)
    label = _marked(case)
    saved = sitk.GetImageFromArray(label)
    saved.CopyInformation(sitk.ReadImage(str(image_path)))
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(saved, str(tmp_path / "pred" / "c1.nii.gz"))
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), label)


def _without_forms(path: Path) -> None:
    """A NIfTI of neither qform nor sform (both codes 0), as an array saved without an affine is."""
    image = nib.Nifti1Image(_voxels(SHAPE), None)
    image.header.set_zooms(ZOOMS)
    nib.save(image, path)


def test_a_prediction_simpleitk_saved_for_an_image_without_qform_or_sform_is_scored_there(tmp_path):
    """nibabel centres an image of neither form on the world's origin with x mirrored, ITK puts its first voxel
    at the origin in LPS: nnU-Net's prediction of such an image (on ITK's grid) was refused as "placed
    elsewhere", and fewsam's own still lies on the image as ITK reads both."""
    image_path = tmp_path / "data" / "images" / "c1.nii.gz"
    image_path.parent.mkdir(parents=True)
    _without_forms(image_path)
    case, label, _ = _write_and_check(image_path, tmp_path)
    saved = sitk.GetImageFromArray(label)
    saved.CopyInformation(sitk.ReadImage(str(image_path)))
    (tmp_path / "nnunet").mkdir()
    sitk.WriteImage(saved, str(tmp_path / "nnunet" / "c1.nii.gz"))
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "nnunet"), label)


def _mirrored_to_ras(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """``array`` on ``affine`` (x and y pointing left and back) as a RAS pipeline saves it: flipped in x and
    y, on the affine that places each voxel where it was."""
    turned = affine.copy()
    for axis in (0, 1):
        turned[:3, axis] = -affine[:3, axis]
        turned[:3, 3] += affine[:3, axis] * (array.shape[axis] - 1)
    return nib.Nifti1Image(np.ascontiguousarray(array[::-1, ::-1]), turned)


@pytest.mark.parametrize("what", ["prediction", "label"])
def test_a_2d_label_or_prediction_saved_mirrored_in_ras_is_read_onto_its_2d_image(tmp_path, what):
    """A 2D NIfTI (x, y) was matched to its image voxel for voxel whatever its affine: a prediction MONAI's
    Orientation("RAS") saved, or a label so converted, was scored or learnt mirrored without a word."""
    affine = _affine(np.diag([-0.8, -0.7, 1.0]), (50.0, 40.0, 0.0))
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    nib.save(nib.Nifti1Image(_voxels((9, 8)), affine), root / "images" / "c1.nii.gz")
    stored = np.zeros((9, 8), np.uint8)
    stored[0, 0], stored[6, 2] = 1, 2
    folder = root / "labels" if what == "label" else tmp_path / "pred"
    folder.mkdir()
    nib.save(_mirrored_to_ras(stored, affine), folder / "c1.nii.gz")
    case = open_dataset(root).load("c1", with_label=what == "label")
    read = case.label if what == "label" else read_prediction(case, folder)
    np.testing.assert_array_equal(read, stored.T[None])
