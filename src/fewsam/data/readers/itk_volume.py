"""MetaImage and NRRD volumes (``.mha``, ``.mhd`` + raw, ``.nrrd``, ``.nhdr``), read beside NIfTI.

Challenge data often comes in ITK's formats (PROMISE12 ``.mhd``, many grand-challenge sets
``.mha``, Slicer's ``.nrrd``), and nnU-Net v2 accepts them as ``file_ending``. SimpleITK reads
them; each becomes an in-memory NIfTI image (same voxels, RAS affine from ITK's LPS geometry), so
the NIfTI reader slices it as any other volume, and ``geometry`` keeps what writing a prediction
back needs: predictions are written by SimpleITK in the same format on the same origin, spacing
and direction (a ``.mhd`` pair as one ``.mha`` file, a ``.nhdr`` pair as one ``.nrrd``); a 2D NRRD
with 3D space directions (a slice saved by 3D Slicer) is read as a one-slice volume. The 2D
images of an nnU-Net dataset whose ``file_ending`` is ``.png``, ``.bmp`` or ``.tif`` go the same
way: one slice each, predictions as PNG (for ``.png`` and ``.bmp``) or TIFF with the class values. A 3D
(multi-page) TIFF takes its voxel spacing from the JSON file nnU-Net's ``Tiff3DIO`` keeps beside it
(``tiff_spacing_file``), as TIFF stores no slice spacing.
"""

from __future__ import annotations

import math
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from fewsam.data.readers.common import read_json_object
from fewsam.errors import DataError
from fewsam.native_output import AGAIN, decoder_reason, native_output_kept

ITK_ENDINGS = (".mha", ".mhd", ".nrrd", ".nhdr")
# 2D images as nnU-Net v2 reads them (its natural-image reader: ``"file_ending": ".png"``); listed
# only in a dataset.json that names them, never found by folder scans (image/mask folders are
# png_folder's)
IMAGE_2D_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
_ONE_FILE = {".mha": ".mha", ".mhd": ".mha", ".nrrd": ".nrrd", ".nhdr": ".nrrd",
             ".png": ".png", ".bmp": ".png", ".tif": ".tif", ".tiff": ".tif"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@contextmanager
def quiet_itk(source: object, pixels: bool = False) -> Iterator[list[str]]:
    """An ITK call on ``source`` (a file or folder) whose own lines stay off the terminal: ITK's
    warnings (a folder without a DICOM series, metadata it drops) and what GDCM's decoders and MetaIO
    print go to the command's log (``native_output_kept``), and fewsam raises or says what matters
    itself. Yields those lines, for the error a failed read raises (``decoder_reason``); a read of
    ``pixels`` that a decoder complained of is said once."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(True)  # shown to the capture: kept in the log, not lost
    try:
        with native_output_kept(source, pixels) as lines:
            yield lines
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def itk_message(err: Exception) -> str:
    """SimpleITK's errors span many lines of C++ context; the last non-empty line says what."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def itk_ending(name: str) -> str | None:
    """The ending of a file name (any letter case) that SimpleITK reads for fewsam (ITK volumes,
    nnU-Net's 2D images), or None."""
    lower = name.lower()
    return next((e for e in ITK_ENDINGS + IMAGE_2D_ENDINGS if lower.endswith(e)), None)


# ITK picks a reader by the file name's ending in lower case only (``IMG.MHA`` is "Unable to
# determine ImageIO reader"): fewsam names the reader itself, for any letter case.
IMAGE_IOS = {".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
             ".png": "PNGImageIO", ".bmp": "BMPImageIO", ".tif": "TIFFImageIO", ".tiff": "TIFFImageIO"}


def itk_reader(path: Path) -> sitk.ImageFileReader:
    """A reader of ``path`` with ITK's image IO for its ending, whatever the ending's letter case."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    io = IMAGE_IOS.get(itk_ending(path.name) or "")
    if io:
        reader.SetImageIO(io)
    return reader


def prediction_ending(name: str) -> str:
    """The suffix a prediction for this image file gets: its own format, as a single file (FreeSurfer's
    ``.mgh`` compressed, as ``.mgz``)."""
    if name.lower().endswith((".mgz", ".mgh")):
        return ".mgz"
    ending = itk_ending(name)
    return _ONE_FILE[ending] if ending else ".nii.gz"


# Header-only formats: the header's key naming the file that holds the voxels, and its separator
DATA_FILE_KEYS = {".mhd": (("elementdatafile",), "="), ".nhdr": (("data file", "datafile"), ":")}


def check_data_file(path: Path) -> None:
    """A ``.mhd`` or ``.nhdr`` header whose voxel file (``x.raw``) is missing, as happens when only
    the headers were copied, is refused naming that file; ITK would print a line of its own and
    then fail without naming it. Inline voxels, file lists and numbered-file patterns are left to ITK."""
    keys, separator = DATA_FILE_KEYS.get(itk_ending(path.name) or "", ((), ""))
    if not keys:
        return
    try:
        with path.open("rb") as f:
            header = f.read(65536).decode("utf-8", errors="surrogateescape")  # a path as the file system spells it
    except OSError:
        return  # ITK's read names the problem
    for line in header.splitlines():
        key, found, value = line.partition(separator)
        value = value.strip()
        if not found or key.strip().lower() not in keys:
            continue
        inline = value.upper() in ("LOCAL", "") or value.upper().startswith("LIST") or "%" in value
        if not inline and not (path.parent / value).is_file():
            raise DataError(f"{path}: its voxel file {path.parent / value} is missing; copy it beside the "
                            "header (a .mhd or .nhdr file holds no voxels)")
        return


def read_as_nifti(path: Path) -> tuple[Any, dict[str, Any]]:
    """(an in-memory NIfTI image of the file's voxels, the ITK geometry to write predictions with)."""
    check_data_file(path)
    image, tiff_spacing_zyx = _with_tiff_spacing(_grey_palette_as_grey(_read_itk(path), path), path)
    dims = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if dims not in (2, 3, 4) or (dims == 4 and components > 1):
        raise DataError(f"{path}: expected a 2D, 3D or 4D (time series) image, got {dims}D"
                        + (f" of {components}-component voxels" if components > 1 else ""))
    array = sitk.GetArrayFromImage(image)  # (t,) (z,) y, x (, channels)
    xyz = array.transpose(*tuple(range(dims))[::-1], *range(dims, array.ndim))  # x, y (, z, t) (, channels)
    if dims == 2 and components > 1:  # a 2D colour image: one slice, its channels on the 4th axis
        xyz = xyz[:, :, None, :]
    # A 4D file (a cine or perfusion series) has its volumes on the 4th axis, as a 4D NIfTI has: read
    # the same way (the first volume, said once) and predicted on its 3D geometry, instead of refused
    space = min(dims, 3)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dims, dims)[:space, :space]
    spacing, origin_xyz = image.GetSpacing()[:space], image.GetOrigin()[:space]
    affine = ras_affine(origin_xyz, spacing, direction.ravel())
    geometry = {"origin": origin_xyz, "spacing": spacing, "direction": tuple(direction.ravel().tolist()),
                "dimension": space, "components": components,
                "ending": _ONE_FILE[itk_ending(path.name) or ".mha"]}
    if tiff_spacing_zyx is not None:  # written beside its prediction (``spacing_file_of``), as nnU-Net does
        geometry["tiff_spacing"] = tiff_spacing_zyx
    if dims == 4 and image.GetSize()[3] == 1:  # one volume: its prediction keeps the 4th axis, as NIfTI's does
        geometry["series"] = {"origin": image.GetOrigin(), "spacing": image.GetSpacing(),
                              "direction": image.GetDirection()}
    # the file's own voxel type, 64-bit integers included (numpy's default, so pynrrd's and many scripts'
    # NRRDs): nibabel refuses those unless the type is named
    return nib.Nifti1Image(np.ascontiguousarray(xyz), affine, dtype=xyz.dtype), geometry


TIFF_ENDINGS = (".tif", ".tiff")
TIFF_SPACING_HELP = ('nnU-Net\'s spacing file of a 3D TIFF holds {"spacing": [z, y, x]}, three voxel sizes in mm '
                     "in the order of the TIFF's pages, rows and columns")


def tiff_spacing_file(path: Path) -> Path | None:
    """The JSON file beside a TIFF that gives its voxel spacing, where nnU-Net's ``Tiff3DIO`` looks for it:
    ``<case>.json`` beside a label ``<case>.tif`` and beside an image's channel files ``<case>_0000.tif``.
    None for other files, or where there is none."""
    ending = itk_ending(path.name)
    if ending not in TIFF_ENDINGS:
        return None
    stem = path.name[: -len(ending)]
    names = [stem + ".json"] + ([stem[:-5] + ".json"] if re.fullmatch(r".+_\d{4}", stem) else [])
    return next((path.parent / name for name in names if (path.parent / name).is_file()), None)


def spacing_file_of(prediction: Path) -> Path:
    """Where a TIFF prediction's spacing file goes: ``<case>.json`` beside ``<case>.tif``, as nnU-Net writes it."""
    return prediction.with_name(prediction.name[: -len(itk_ending(prediction.name) or "")] + ".json")


def tiff_spacing(spacing_file: Path) -> tuple[float, float, float]:
    """The (z, y, x) voxel sizes a TIFF's spacing file gives; a file that gives none is refused, naming it."""
    spacing = read_json_object(spacing_file).get("spacing")
    if not (isinstance(spacing, list) and len(spacing) == 3 and all(map(_voxel_size, spacing))):
        raise DataError(f"{spacing_file}: 'spacing' must be three voxel sizes above 0 (got {spacing!r}); "
                        f"{TIFF_SPACING_HELP}")
    z, y, x = (float(v) for v in spacing)
    return z, y, x


def _voxel_size(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def itk_spacing(path: Path, spacing: tuple[float, ...]) -> tuple[float, ...]:
    """The voxel sizes (x, y(, z)) of ``path``, whose header gives ``spacing``: a 3D TIFF's from its nnU-Net
    spacing file (``tiff_spacing_file``). TIFF keeps no slice spacing: without it, distances (HD95, ASD) and the
    choice of the slice axis took every voxel for a 1 mm cube, where nnU-Net, which wrote or reads the file,
    used the spacing it gives."""
    spacing_file = tiff_spacing_file(path) if len(spacing) == 3 else None
    return spacing if spacing_file is None else tiff_spacing(spacing_file)[::-1]


def _with_tiff_spacing(image: sitk.Image, path: Path) -> tuple[sitk.Image, tuple[float, float, float] | None]:
    """``image`` on the voxel sizes of its spacing file where it is a 3D TIFF with one (``itk_spacing``), and
    those (z, y, x) sizes, for its prediction's spacing file; None without one."""
    spacing_file = tiff_spacing_file(path) if image.GetDimension() == 3 else None
    if spacing_file is None:
        return image, None
    z, y, x = tiff_spacing(spacing_file)
    image.SetSpacing((x, y, z))
    return image, (z, y, x)


def read_array(path: Path) -> np.ndarray:
    """The file's voxels in SimpleITK's array order ((z,) y, x): the array a script handed to
    ``GetImageFromArray`` before writing it."""
    check_data_file(path)
    return sitk.GetArrayFromImage(_read_itk(path))


def _grey_palette_as_grey(image: sitk.Image, path: Path) -> sitk.Image:
    """A 2D image of a grey palette (every 8-bit BMP, as PIL and paint programs save a grey one; a PNG of
    one), which ITK expands to three equal colour channels, as its one grey channel on the same geometry,
    as nnU-Net's natural-image reader reads it: a label so stored was taken for three overlapping one-hot
    channels and refused, and its prediction for a colour image."""
    if (image.GetDimension() != 2 or image.GetNumberOfComponentsPerPixel() not in (3, 4)
            or itk_ending(path.name) not in IMAGE_2D_ENDINGS):
        return image
    pixels = sitk.GetArrayViewFromImage(image)
    if not ((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()):
        return image
    if pixels.shape[-1] == 4 and not (pixels[..., 3] == pixels[..., 3].flat[0]).all():
        return image  # transparency of its own: not a palette's grey
    return sitk.VectorIndexSelectionCast(image, 0)


def _read_itk(path: Path) -> sitk.Image:
    """The file as ITK reads it; a 2D NRRD placed in 3D space as a one-slice volume (``nrrd_as_one_slice``)."""
    lifted = nrrd_as_one_slice(path)
    try:
        with quiet_itk(path, pixels=True) as said:
            if lifted is None:
                return itk_reader(path).Execute()
            with tempfile.TemporaryDirectory() as tmp:
                one_slice = Path(tmp) / f"one_slice{itk_ending(path.name)}"
                one_slice.write_bytes(lifted)
                return itk_reader(one_slice).Execute()
    except RuntimeError as err:
        reason = decoder_reason(said)
        raise DataError(f"cannot read {path}: {reason}; {AGAIN}" if reason else
                        f"cannot read {path} (truncated, or its data file missing?): {itk_message(err)}") from None


# NRRD fields with one entry per axis, and what a third (the added slice axis) takes
NRRD_AXIS_FIELDS = {"sizes": "1", "kinds": "domain", "centerings": "cell", "labels": '""', "units": '""',
                    "thicknesses": "nan", "axis mins": "nan", "axis maxs": "nan"}


def nrrd_as_one_slice(path: Path) -> bytes | None:
    """A 2D NRRD whose header places it in 3D space (``space: left-posterior-superior`` with 3D space
    directions, as 3D Slicer saves a single slice) rewritten as a 3D NRRD of one slice, its normal the
    cross product of its two directions; None for any other file. ITK refuses the 2D file ("number of
    domain axes ... doesn't match dimension of space"), which was reported as a truncated file."""
    if itk_ending(path.name) not in (".nrrd", ".nhdr"):
        return None
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or end < 0:
        return None
    lines = raw[:end].decode("latin-1").split("\n")
    fields = {k.strip().lower(): v.strip() for k, sep, v in (line.partition(":") for line in lines[1:]) if sep}
    directions = _space_directions(fields.get("space directions", ""))
    if fields.get("dimension") != "2" or directions is None or directions.shape != (2, 3):
        return None
    normal = np.cross(directions[0], directions[1])
    if not np.linalg.norm(normal):
        return None
    normal /= np.linalg.norm(normal)
    return ("\n".join([lines[0], *(_one_slice_line(line, normal, path) for line in lines[1:])]).encode("latin-1")
            + raw[end:])


def _space_directions(text: str) -> np.ndarray | None:
    """An NRRD ``space directions`` value, ``(1,0,0) (0,1,0)``, as one row per axis; None if unreadable."""
    try:
        return np.array([[float(v) for v in group.split(",")] for group in text.replace(" ", "")[1:-1].split(")(")])
    except ValueError:
        return None


def _one_slice_line(line: str, normal: np.ndarray, path: Path) -> str:
    """A header line of a 2D NRRD as the 3D one-slice NRRD has it."""
    key, sep, value = line.partition(":")
    name = key.strip().lower()
    if not sep or line.startswith("#"):
        return line
    if name == "dimension":
        return f"{key}: 3"
    if name in NRRD_AXIS_FIELDS:
        return f"{key}: {value.strip()} {NRRD_AXIS_FIELDS[name]}"
    if name == "space directions":
        return f"{key}: {value.strip()} ({','.join(repr(float(v)) for v in normal)})"
    if name in ("data file", "datafile") and value.strip().upper() != "LOCAL" and "%" not in value \
            and not value.strip().upper().startswith("LIST"):
        return f"{key}: {(path.parent / value.strip()).resolve()}"  # beside the header, wherever it is read
    return line


def ras_affine(origin: Any, spacing: Any, direction: Any) -> np.ndarray:
    """The NIfTI affine (RAS) of an ITK geometry (LPS) of 2 or 3 axes: the voxel grid that a
    MetaImage, NRRD or DICOM series has in nibabel's terms (a 2D grid as one slice)."""
    space = len(spacing)
    linear = np.eye(3)
    linear[:space, :space] = np.asarray(direction, dtype=np.float64).reshape(space, space) @ np.diag(spacing)
    offset = np.zeros(3)
    offset[:space] = origin[:space]
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = LPS_TO_RAS @ linear, LPS_TO_RAS @ offset
    return affine


def encode(pred_xyz: np.ndarray, geometry: dict[str, Any]) -> bytes:
    """A prediction (uint8, or uint16 for label values above 255) in NIfTI (x, y, z) order as the bytes of
    an ITK file on ``geometry``, with its header ``fields`` where it has some."""
    zyx = pred_xyz.transpose(2, 1, 0) if geometry["dimension"] == 3 else pred_xyz[:, :, 0].T
    image = sitk.GetImageFromArray(np.ascontiguousarray(zyx, dtype=np.uint16 if pred_xyz.dtype == np.uint16
                                                        else np.uint8))
    series = geometry.get("series")
    if series:  # a one-volume 4D input gets a one-volume 4D prediction, which viewers overlay on it
        image = sitk.JoinSeries(image)
    place = series or geometry
    image.SetOrigin(place["origin"])
    image.SetSpacing(place["spacing"])
    image.SetDirection(place["direction"])
    for key, value in geometry.get("fields", {}).items():  # header fields the reader asks for (segment names)
        image.SetMetaData(key, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"pred{geometry['ending']}"
        with quiet_itk(f"a prediction written as {geometry['ending']}"):
            sitk.WriteImage(image, str(path), useCompression=True)
        return path.read_bytes()
