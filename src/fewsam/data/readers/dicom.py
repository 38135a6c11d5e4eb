"""DICOM series: one case per folder of ``.dcm`` files, read with SimpleITK's ImageSeriesReader.

    root/<series>/*.dcm              series folders may nest (root/<patient>/<study>/<series>/),
    root/images/<series>/*.dcm       or sit under images/; .dcm files right in root are one case;
                                     .dicom, .ima and unsuffixed files with the DICM marker count too
                                     (the suffixed ones also as bare data sets, without the Part 10
                                     header: images, DICOM SEG and RT structure sets alike);
                                     a series may be one multi-frame file (enhanced MR / CT);
                                     one holding several time points (a cine, in one file or
                                     across its files) is refused, as is one of slices in several
                                     orientations (a three-plane localizer)
    root/labels/<case>.nii.gz        optional label of a case (NIfTI, on the series' voxel grid;
                                     also <case>_seg.nii.gz, _gt, _label, _mask, _segmentation,
                                     3D Slicer's <case>.seg.nrrd, its segments as classes)
    root/**/<seg folder>/*.dcm       or a DICOM SEG referencing the series, in a folder of its own
                                     anywhere below root (readers/dicom_seg.py: each segment a class
                                     of its SegmentLabel), or an RT structure set (RTSTRUCT,
                                     readers/dicom_rtstruct.py: each ROI a class of its ROIName, its
                                     closed contours filled on the series' slices); a labels/ file of
                                     the same series is read instead (said): the file a user made or
                                     corrected for fewsam
    root/classes.json                optional class names ({"1": "liver"}); else "class1", ...
                                     from the label values found, or the segments' and ROIs' names
                                     (it also chooses which ROIs of RT structure sets are classes)

case_id = the series folder relative to root (or images/), subject = its first folder (the
patient in root/<patient>/<series>/); folders of objects without an image (RT structure sets,
segmentations, reports) are no cases (said): a DICOM SEG or RT structure set among them labels the
series it references (without references: the one series of its FrameOfReferenceUID;
readers/dicom_labels.py), one whose series is not in the dataset is said and read by none, several of
one series (two SEGs, or a SEG and a structure set) are refused. A
folder holding files of several series is refused when loaded, unless all but one are localizers
(1 to 3 slices each, frames counted) or objects without an image (a SEG saved beside its slices):
those are left out, said. Arrays are
(D, H, W) as SimpleITK gives them (GDCM sorts the slices by position), or (D, H, W, 3) for colour
series; spacing is (z, y, x) in mm (a single slice's z: its SliceThickness, else SpacingBetweenSlices, else
1 mm, said). ``meta`` keeps the series' origin, spacing and direction, and its files in slice order
(``source_files``): predictions are written as NIfTI ``<case_id>.nii.gz`` on that geometry
(``fewsam.data.writers``), so they overlay the series in 3D Slicer or ITK-SNAP, and ``fewsam predict``
writes ``<case_id>.seg.dcm`` beside it, a DICOM SEG of the series' instances (their headers read
again then, not kept in memory) for OHIF, a PACS or 3D Slicer. A label on the series' grid is taken
as is (a 2D one of a one-slice series' size too); one holding the same voxels in another axis order or orientation, or a block
of them (a label cropped to its structures), is resampled onto the series (nearest neighbour); one
placed elsewhere is refused. Pixels are read as float32, each file (each frame of a multi-frame file)
with its own rescale slope and intercept; a series whose slices are not evenly spaced (a missing
file), lie in several orientations or differ in size is refused, as is one only some of whose files give
their place (a position or an instance number).
Splits: labelled patients (``subject``) naturally sorted, every 5th to "val" with all its series (at
least one of two or more); unlabelled cases in "test" (the unlabelled pool of a semi-supervised
fit with ``--unlabeled-split test``); without any label, "val" holds every case.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import SimpleITK as sitk

from fewsam.data.readers.common import (CLASSES_JSON, Entry, IndexedDataset, Read, classes_json_in, computed_splits,
                                        files_below, natural_sorted, one_hot_to_indices, to_label_array)
from fewsam.data.readers.dicom_frames import POSITION_DECIMALS, FrameHeader, dicom_header, frame_header
from fewsam.data.readers.dicom_labels import KINDS, LabelObject, label_objects_by_case, series_identity
from fewsam.data.readers.dicom_rtstruct import SeriesGeometry
from fewsam.data.readers.itk_volume import itk_message, itk_reader, quiet_itk
from fewsam.data.readers.nifti import ClassesFromLabelFiles, ClassSource, label_in_folder, say_unmatched_labels
from fewsam.data.readers.png_folder import is_image_name
from fewsam.data.readers.slicer_segmentation import (Segment, SegmentationKind, itk_segments_as_classes,
                                                     say_without_segments, segments_of)
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.native_output import AGAIN, decoder_reason
from fewsam.progress import say_once

if TYPE_CHECKING:
    from pydicom.uid import UID

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
DICOM_MAGIC_AT = 128  # Part 10 files: a 128-byte preamble, then b"DICM"


def is_dicom_name(name: str) -> bool:
    return name.lower().endswith(DICOM_SUFFIXES) and not name.startswith(".")


def is_dicom_file(path: Path) -> bool:
    """A DICOM file by its name, or, for the names scanners and PACS exports give (``IM0001``,
    ``1.2.840.113619.2.55.3.604688119``: no suffix or a numeric one), by its ``DICM`` marker.
    The DICOMDIR index is no image."""
    name = path.name
    if name.startswith(".") or name.upper() == "DICOMDIR" or not path.is_file():
        return False
    if is_dicom_name(name):
        return True
    suffix = path.suffix[1:]
    if suffix and not suffix.isdigit():
        return False
    return has_dicm_marker(path)


def has_dicm_marker(path: Path) -> bool:
    """Whether ``path`` is a Part 10 file: the ``DICM`` marker after its 128-byte preamble."""
    try:
        with path.open("rb") as f:
            f.seek(DICOM_MAGIC_AT)
            return f.read(4) == b"DICM"
    except OSError:
        return False


# What every DICOM image's header names: a bare data set (no preamble or DICM marker) naming none of them
# is no DICOM, whatever its file is called
IMAGE_HEADER_TAGS = ["SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns"]


def holds_dicom(path: Path) -> bool:
    """Whether a file named as DICOM holds DICOM, told from its first bytes (no pixels read): the Part 10
    marker, else the header of a bare data set, as older exporters write them. An empty file, a damaged one
    or another format renamed ``.dcm`` holds neither."""
    if has_dicm_marker(path):
        return True
    header = dicom_header(path, IMAGE_HEADER_TAGS)
    return header is not None and len(header) > 0


def detect(root: Path) -> bool:
    """DICOM files anywhere below root (an index.csv makes it a 2D image folder instead)."""
    return not (root / "index.csv").is_file() and any(is_dicom_file(p) for p in files_below(root))


class DicomDataset(ClassesFromLabelFiles, IndexedDataset):
    layout = "dicom"
    format = "dicom"
    ignore_file = CLASSES_JSON

    def __init__(self, root: Path, class_map: ClassMap | None, entries: list[Entry],
                 label_objects: dict[Path, LabelObject] | None = None) -> None:
        self._class_map = class_map
        self.label_objects = label_objects or {}  # the DICOM SEG objects and RT structure sets read as labels
        super().__init__(root, class_map, entries)  # type: ignore[arg-type]
        self.check_label_values = class_map is not None
        self.splits = computed_splits(entries)
        self.computed_splits = ("train", "val")

    def prediction_rel_path(self, entry: Entry) -> str:
        """DICOM predictions are NIfTI: ``<case_id>.nii.gz``."""
        return f"{entry.rel_path}.nii.gz"

    def new_label_rel_path(self, entry: Entry) -> str:
        """A series' label as the reader looks for it: ``labels/<patient>/<series>.nii.gz``."""
        return f"labels/{entry.rel_path}.nii.gz"

    def num_slices(self, case_id: str) -> int:
        """Slices of the series from its file headers (pixels are not read). A series of several time
        points is refused here as when loaded, so ``fewsam info`` and a fit's slice count do not count its
        time points as slices of one volume."""
        folder = self._entry(case_id).image
        names = series_files(folder)
        check_one_time_point(names, folder)
        return expected_slices(names)

    @property
    def segmentations(self) -> dict[Path, tuple[Segment, ...]]:
        """The segments of each label that is a segmentation: 3D Slicer's, the DICOM SEG objects' and the ROIs
        of the RT structure sets that are classes."""
        return {**super().segmentations, **{path: header.segments for path, header in self.label_objects.items()}}

    def segmentation_kind(self, path: Path) -> SegmentationKind:
        """A DICOM SEG's or RT structure set's kind; a labels/ file's, a 3D Slicer segmentation."""
        header = self.label_objects.get(path)
        return super().segmentation_kind(path) if header is None else header.kind

    def _first_label_object(self) -> LabelObject | None:
        first = next((e.label for e in self.entries.values() if e.label is not None), None)
        return None if first is None else self.label_objects.get(first)

    @property
    def storage(self) -> str | None:
        """What ``fewsam info`` says of labels that are DICOM SEG objects or RT structure sets."""
        first = self._first_label_object()
        return super().storage if first is None else first.kind.storage

    @property
    def segment_part(self) -> str:
        """What ``fewsam info`` calls the part of a label file that is a class: an RT structure set's ROI."""
        first = self._first_label_object()
        return "segment" if first is None else first.kind.part

    def _read(self, entry: Entry) -> Read:
        names = series_files(entry.image)
        image = read_series(entry.image, names)
        array = _image_array(image, entry.image)
        label = None if entry.label is None else self._label_on(image, names, entry.label)
        spacing = image.GetSpacing()
        meta = {"origin": image.GetOrigin(), "spacing": spacing, "direction": image.GetDirection(),
                "source_files": names}
        return Read(image=array, label=label, spacing=(spacing[2], spacing[1], spacing[0]), meta=meta)

    def _label_on(self, image: sitk.Image, names: list[str], path: Path) -> np.ndarray:
        """A case's label on its series: a DICOM SEG's segments or an RT structure set's ROIs as their classes,
        or a label file."""
        if path in self.label_objects:
            return self.label_objects[path].read_on(image, names, self.segment_classes)
        return read_label_on(image, path, lambda: self.segment_classes)


def series_files(folder: Path) -> list[str]:
    """The files of the one DICOM series in ``folder`` (beside any localizers, ``_main_series``), in
    GDCM's slice order."""
    if not folder.is_dir():
        raise DataError(f"DICOM folder {folder} not found; restore it")
    try:
        with quiet_itk(folder):
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
            series = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}
    except RuntimeError as err:
        raise _undecodable_header(folder) or DataError(
            f"cannot read the DICOM files in {folder}: {itk_message(err)}") from None
    series = _image_series(folder, series) if len(series) > 1 else series
    names = _main_series(folder, series) if len(series) > 1 else next(iter(series.values()), [])
    if not names:
        raise DataError(f"no readable DICOM series in {folder} (damaged, or not DICOM images?)")
    return names if _has_slice_order(names) else natural_sorted(names)


def _undecodable_header(folder: Path) -> DataError | None:
    """Why GDCM could not list a folder's series, where one file's header alone does not read: GDCM decodes
    a JPEG's own header to learn its size, so a damaged one ended the listing of the whole folder in "An
    invalid logic behavior occurred0", naming neither the file nor the damage. None where every header reads."""
    for path in natural_sorted((p for p in folder.iterdir() if is_dicom_file(p)), key=lambda p: p.name):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            with quiet_itk(path) as said:
                reader.ReadImageInformation()
        except RuntimeError as err:
            return _undecoded_file(str(path), transfer_syntax(path), decoder_reason(said), err)
    return None


POSITION, INSTANCE_NUMBER = "0020|0032", "0020|0013"


def _has_slice_order(names: list[str]) -> bool:
    """Whether any file of the series tells GDCM its place (a position or an instance number). Without,
    GDCM orders the files by name as plain text, slice10.dcm before slice2.dcm, and the volume was
    stacked out of order: such a series is read in the names' natural order. The first file is looked
    at alone unless it lacks both, so a series that has them costs one header more."""
    for name in names:
        reader = _file_info(name)
        if any(_header_text(reader, tag) for tag in (POSITION, INSTANCE_NUMBER)):
            return True
    return False


def _image_series(folder: Path, series: dict[str, list[str]]) -> dict[str, list[str]]:
    """The series of ``folder`` that are images: a DICOM SEG or RT structure set saved into its series'
    folder (``is_no_image``) made the folder one of two series, refused. Left out, said; a SEG or RT
    structure set is read as its series' label from a folder of its own."""
    images = {uid: names for uid, names in series.items() if not is_no_image(Path(names[0]))}
    if len(images) < len(series) and images:
        others = [Path(names[0]).name for uid, names in series.items() if uid not in images]
        say_once(f"{folder}: DICOM objects without an image beside its series ({', '.join(others[:3])}: a DICOM SEG, "
                 "an RT structure set) are left out; a DICOM SEG or RT structure set is read as its series' label "
                 "from a folder of its own", key=f"dicom-no-image-in-series-{folder}")
        return images
    return series


SCOUT_SLICES = 3  # a localizer (scout) series: up to three slices, as scanners take them


def _main_series(folder: Path, series: dict[str, list[str]]) -> list[str]:
    """The one series of ``folder`` that is no localizer: a scanner export puts its scout images (one
    to three slices of a series of their own) beside the series itself, and the folder was refused as
    holding two series. Read, and the localizers said once; several full series are still refused.
    Slices are counted as frames, not files: an enhanced multi-frame volume is one file."""
    slices = {uid: expected_slices(names) for uid, names in series.items()}
    main = [uid for uid in series if slices[uid] > SCOUT_SLICES]
    if len(main) != 1:
        named = "; ".join(_series_summary(uid, names) for uid, names in series.items())
        raise DataError(f"{folder} holds {len(series)} DICOM series; put each series in its own folder "
                        f"({folder.name}/<series>/, each then read as a case of its own) rather than stack "
                        f"slices of several series into one volume. Its series: {named}")
    names = series[main[0]]
    scouts = sum(len(files) for files in series.values()) - len(names)
    say_once(f"{folder}: {len(series) - 1} localizer series ({scouts} file(s) of at most {SCOUT_SLICES} slices) beside "
             f"its series of {slices[main[0]]} slices in {len(names)} file(s) are left out; the series is read",
             key="dicom-localizer")
    return names


SERIES_NUMBER, SERIES_DESCRIPTION = "0020|0011", "0008|103e"


def _series_summary(uid: str, names: list[str]) -> str:
    """How a user finds one series of a mixed folder in a DICOM viewer or PACS: its number and
    description (``series 3 'T1 MPRAGE'``), its file count with an example file, and its UID."""
    reader = _file_info(names[0])
    number, description = (_header_text(reader, tag) for tag in (SERIES_NUMBER, SERIES_DESCRIPTION))
    name = " ".join(filter(None, ["series", number, repr(description) if description else ""]))
    return f"{name} of {len(names)} file(s) such as {Path(names[0]).name}, UID {uid}"


def _header_text(reader: sitk.ImageFileReader, tag: str) -> str:
    """A tag of a read DICOM header as text, "" if absent."""
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def expected_slices(names: list[str]) -> int:
    """Files times the frames of the first (a multi-frame file holds a whole series)."""
    size = _file_info(names[0]).GetSize()
    return len(names) * (int(size[2]) if len(size) > 2 else 1)


def _file_info(name: str) -> sitk.ImageFileReader:
    """A reader that has read one DICOM file's header (size, components), not its pixels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    try:
        with quiet_itk(name):
            reader.ReadImageInformation()
    except RuntimeError as err:
        raise DataError(f"cannot read DICOM {name}: {itk_message(err)}") from None
    return reader


def read_series(folder: Path, names: list[str] | None = None) -> sitk.Image:
    """The folder's series (its files ``names``, as ``series_files`` lists them) as one SimpleITK float32
    image (3D; a single slice has depth 1).

    Read as float32 because each file may carry its own rescale slope and intercept (PET, some
    MR): ITK would otherwise store every slice in the first file's integer type and truncate
    the others' rescaled values. Slices must be evenly spaced (``check_slice_spacing``)."""
    names = names or series_files(folder)
    headers = check_one_time_point(names, folder)
    header = headers.get(names[0]) if len(names) == 1 else None  # a multi-frame file's, for its frames
    if header is not None:
        check_frame_order(header, Path(names[0]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    vector = _file_info(names[0]).GetNumberOfComponents() > 1
    reader.SetOutputPixelType(sitk.sitkVectorFloat32 if vector else sitk.sitkFloat32)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with quiet_itk(folder, pixels=True):
            image = reader.Execute()
    except RuntimeError as err:
        raise _unreadable_file(names) or _other_size(names, folder) or DataError(
            f"cannot read the DICOM series in {folder}: {itk_message(err)}") from None
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    image = _one_multi_frame_volume(image)
    if image.GetDimension() != 3 or image.GetDepth() != expected_slices(names):
        raise DataError(f"{folder}: its {len(names)} DICOM files did not stack into a volume "
                        f"(got size {image.GetSize()}); are their rows, columns and frames alike?")
    if header is not None and header.rescales:
        image = each_frame_rescaled(image, header.rescales, Path(names[0]))
    check_one_orientation([_tag_numbers(reader, i, ORIENTATION) for i in range(len(names))], names, folder)
    check_one_pixel_spacing([_tag_numbers(reader, i, PIXEL_SPACING) for i in range(len(names))], names, folder)
    positions = [_tag_numbers(reader, i, POSITION) for i in range(len(names))]
    check_slice_order_known(positions, [_tag_numbers(reader, i, INSTANCE_NUMBER) for i in range(len(names))],
                            names, folder)
    check_slice_spacing(positions, image.GetDirection(), folder)
    say_if_tilted(positions, image, folder)
    if image.GetDepth() == 1:
        x, y, _ = image.GetSpacing()
        image.SetSpacing((x, y, single_slice_thickness(reader, folder)))
    return image


def check_slice_order_known(positions: list[list[float] | None], numbers: list[list[float] | None],
                            names: list[str], folder: Path) -> None:
    """Refuse a series where some files give their place and others do not. Where some give a position,
    GDCM sorts the files by it, those without taken at the origin (by instance number where two of them then
    coincide), and ITK places the volume by its first files' positions, a missing one at the origin: whatever
    their instance numbers, the slices came out of order or the volume's origin and slice spacing were made
    up, and nothing said. Where none gives a position, GDCM orders by instance number where every file gives
    one, else by name as plain text; so every file giving a position, or none giving one and every file or
    none an instance number (natural name order, ``series_files``), is an order and a placement that are
    known."""
    if any(p is not None for p in positions):
        refuse_partly_given(positions, names, "slice position (ImagePositionPatient)", "their place among the slices",
                            folder)
    else:
        refuse_partly_given(numbers, names, "instance number (InstanceNumber)", "their place among the slices", folder)


def refuse_partly_given(values: list[list[float] | None], names: list[str], tag: str, unknown: str,
                        folder: Path) -> None:
    """Refuse a series where some files give ``tag`` (``values``, one per file of ``names``) and others do not,
    naming those: ITK takes what the first files give for all, so a file without it was placed, oriented or
    scaled as they are, or they as it is, without a word. ``unknown`` says what the tag would have told."""
    lacking = [Path(name).name for name, value in zip(names, values) if value is None]
    if not lacking or len(lacking) == len(names):
        return
    shown = ", ".join(lacking[:3]) + (", ..." if len(lacking) > 3 else "")
    raise DataError(f"{folder}: {len(lacking)} of its {len(names)} DICOM files give no {tag} though the others "
                    f"do ({shown}), so {unknown} is unknown; give them the tag, or move them out of the series "
                    "folder")


def check_one_time_point(names: list[str], folder: Path) -> dict[str, FrameHeader]:
    """Refuse a series holding several time points (a cine or dynamic series), in one multi-frame file
    or across its files (a multi-frame file per time point, or single-frame files repeating each slice
    position): ITK stacks them all into one volume, time points interleaved as slices, and nothing said
    so. Every file's header is read (pixels left unread), since any file of a series may be the cine; the
    headers read are returned by file, for the checks of a multi-frame file's frames that follow."""
    read = [(name, header) for name in names if (header := frame_header(Path(name))) is not None]
    for name, header in read:
        found = header.time_points() if header.frames > 1 else None
        if found:
            raise DataError(f"{name}: this multi-frame DICOM file holds {found[0]} time points ({header.frames} frames "
                            f"at {found[1]} slice positions: {TIME_POINTS_ARE}), not one volume; {ONE_TIME_POINT}")
    series = FrameHeader.joined(header for _, header in read)
    found = series.time_points() if len(read) > 1 else None
    if found:
        raise DataError(f"{folder}: its {len(names)} DICOM files hold {found[0]} time points ({series.frames} frames "
                        f"at {found[1]} slice positions: {TIME_POINTS_ARE}, or a slice saved twice), not one volume; "
                        f"{ONE_TIME_POINT}")
    return dict(read)


def check_frame_order(header: FrameHeader, path: Path) -> None:
    """Refuse a multi-frame file whose frames, in their stored order, are not evenly spaced slices
    running one way (frames stored interleaved, or one missing): GDCM stacks the frames as stored and,
    finding no one spacing, drops the file's geometry for 1 mm voxels, so slices came out of order on a
    made-up grid, and nothing said so. The frames' own positions (``header``, the file's) tell; frames in
    several orientations (a survey of three planes in one enhanced file) are refused as such first."""
    check_frames_one_orientation(header.orientations, path)
    if header.frames < 3 or len(header.positions) != header.frames:
        return
    positions = np.asarray(header.positions, dtype=np.float64) / 10 ** POSITION_DECIMALS
    run = positions[-1] - positions[0]
    if not np.linalg.norm(run):
        return  # every frame at one place: time points, which check_one_time_point refuses
    along = (positions - positions[0]) @ (run / np.linalg.norm(run))
    gaps = np.diff(along)
    typical = float(np.median(gaps))
    uneven = np.abs(gaps - typical) > SPACING_TOLERANCE * abs(typical)
    if typical <= 0 or uneven.any():
        at = int(np.flatnonzero(uneven)[0]) if uneven.any() else 0
        raise DataError(f"{path}: its {header.frames} frames are not stored as evenly spaced slices in order "
                        f"(frame {at + 2} lies {gaps[at]:.4g} mm from frame {at + 1}, typically {typical:.4g} mm): "
                        "stored interleaved, or a frame is missing, which fewsam would stack out of order on a "
                        "made-up grid; convert it to NIfTI with dcm2niix (which sorts the frames by position) "
                        "and read that")


def check_frames_one_orientation(orientations: list[tuple[float, ...]], path: Path) -> None:
    """Refuse a multi-frame file whose frames lie in different orientations (``check_one_orientation``
    for the frames of one file): GDCM stacks them all on the first frame's plane."""
    for k, orientation in enumerate(orientations[1:], start=2):
        if not np.allclose(orientation, orientations[0], atol=ORIENTATION_TOLERANCE):
            raise DataError(f"{path}: its frames lie in different orientations (frame {k} "
                            f"{_values_text(orientation)}, frame 1 {_values_text(orientations[0])}): a localizer "
                            "(survey) of several planes, not one volume; convert it with dcm2niix, which writes the "
                            "frames of each plane as a NIfTI volume of its own, and read those")


def each_frame_rescaled(image: sitk.Image, rescales: list[tuple[float, float]], path: Path) -> sitk.Image:
    """A multi-frame file's volume with each frame's own rescale slope and intercept (its ``rescales``).
    GDCM applies the first frame's to every frame, so the other frames of an enhanced MR export that
    scales each frame on its own came out in other units, and nothing said so. Undone from the first
    frame's and redone with each frame's own."""
    if (len(set(rescales)) == 1 or len(rescales) != image.GetDepth()
            or image.GetNumberOfComponentsPerPixel() != 1):  # colour pixels are never rescaled
        return image
    (first_slope, first_intercept), (slopes, intercepts) = rescales[0], np.array(rescales).T
    if first_slope == 0:
        raise DataError(f"{path}: its first frame's RescaleSlope is 0, so its stored pixel values are lost; "
                        "export the series again")
    stored = (sitk.GetArrayFromImage(image).astype(np.float64) - first_intercept) / first_slope
    rescaled = sitk.GetImageFromArray((stored * slopes[:, None, None] + intercepts[:, None, None]).astype(np.float32))
    rescaled.CopyInformation(image)
    return rescaled


def _unreadable_file(names: list[str]) -> DataError | None:
    """Why the series reader failed, where one file alone cannot be read: its pixels compressed in a way
    GDCM does not decode (video, JPEG XL) or damaged, named with its transfer syntax, and with the
    decoder's reason where it gave one fewsam knows (``decoder_reason``). ITK says only
    "Failed to change to Implicit Transfer Syntax" of the folder, naming neither the file nor a way out.
    None where every file reads alone (the files do not stack: ITK's own message says why)."""
    for name in names:
        try:
            with quiet_itk(name, pixels=True) as said:
                sitk.ReadImage(name)
        except RuntimeError as err:
            return _undecoded_file(name, transfer_syntax(Path(name)), decoder_reason(said), err)
    return None


# The compressions GDCM, the decoder SimpleITK carries, decodes (its gdcm::TransferSyntax codecs): JPEG
# Baseline and Extended, JPEG Lossless (Process 14 and its first-order prediction), JPEG-LS, JPEG 2000 (and
# its multi-component Part 2), RLE. A file of these that does not decode holds damaged data, whatever the
# decoder printed (a JPEG cut short prints nothing).
GDCM_DECODES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.5",
})


def _undecoded_file(name: str, syntax: UID | None, reason: str | None, err: RuntimeError) -> DataError:
    """The error for one file that does not read alone: damaged data where the decoder said so or GDCM
    decodes its compression (to copy again), an unsupported compression otherwise (to save uncompressed)."""
    if syntax is None or not syntax.is_compressed:
        return DataError(f"cannot read DICOM {name}: {itk_message(err)}")
    compressed = f"compressed as {syntax.name} ({syntax})"
    if reason:
        return DataError(f"cannot decode DICOM {name}: its pixels, {compressed}, hold {reason}; {AGAIN}")
    if str(syntax) in GDCM_DECODES:
        return DataError(f"cannot decode DICOM {name}: its pixels, {compressed}, which GDCM (fewsam's DICOM "
                         f"decoder) reads, are damaged (cut short or overwritten); {AGAIN}")
    return DataError(f"cannot decode DICOM {name}: its pixels are {compressed}, a compression GDCM (fewsam's "
                     f"DICOM decoder) does not read, or their data are damaged; {DECOMPRESS}")


def _other_size(names: list[str], folder: Path) -> DataError | None:
    """The first file whose rows and columns differ from the first file's (a reformat, a localizer or a
    derived image sharing the series UID), which ITK refuses as a "Size mismatch!" naming no way
    out; None where every file has the first one's size."""
    first = _file_info(names[0]).GetSize()[:2]
    for name in names[1:]:
        size = _file_info(name).GetSize()[:2]
        if size != first:
            return DataError(f"{folder}: its DICOM slices differ in size ({Path(name).name} {size[0]} x {size[1]} "
                             f"pixels, {Path(names[0]).name} {first[0]} x {first[1]}): images of another series "
                             "(a localizer, a reformat) share its series UID; put the slices of each size in their "
                             "own folder (each then read as a case of its own)")
    return None


DECOMPRESS = ("save the series uncompressed (e.g. pydicom's Dataset.decompress() with the plugin for that "
              "compression installed, or the scanner's or PACS's export without compression) and read that copy")


def transfer_syntax(path: Path):  # noqa: ANN201 - a pydicom UID, imported where needed
    """The Transfer Syntax UID of a file's meta group (how its pixels are encoded), None without one."""
    header = dicom_header(path)
    meta = header.get("file_meta") if header is not None else None
    return meta.get("TransferSyntaxUID") if meta is not None else None


ORIENTATION = "0020|0037"  # ImageOrientationPatient: the directions of a slice's rows and columns
ORIENTATION_TOLERANCE = 1e-3  # direction cosines closer than this (about 0.06 degrees) are one orientation


def check_one_orientation(orientations: list[list[float] | None], names: list[str], folder: Path) -> None:
    """Refuse a series whose slices lie in different orientations (a three-plane localizer, or scans of
    several planes sharing one series UID): ITK stacks every slice on the first one's grid, so a slice
    of another plane became a slice of the volume, and nothing said so. Files without an orientation
    (secondary captures) are left as they are; where the others give one, refused, naming them: ITK took the
    first file's, or none (the identity) where that file gave none, which placed every slice in another plane."""
    refuse_partly_given(orientations, names, "orientation (ImageOrientationPatient)", "the plane they lie in", folder)
    refuse_no_plane(orientations, names, folder)
    refuse_apart(_first_apart(orientations, names, 6, lambda a, b: np.allclose(a, b, atol=ORIENTATION_TOLERANCE)),
                 folder, "lie in different orientations", "", "a localizer of several planes, or series of several "
                 "planes under one series UID", "orientation")


def refuse_no_plane(orientations: list[list[float] | None], names: list[str], folder: Path) -> None:
    """Refuse a file whose ImageOrientationPatient gives no plane (all zeros, a row and a column direction not
    at right angles, or not six numbers: a damaged or hand-made header): ITK drops such an orientation for the
    identity, which stacked the slices along a direction their positions do not run along, and the series was
    refused as unevenly spaced, "0 mm apart", naming neither the file nor the tag. Directions of another length
    than 1 are scaled to it, as ITK does."""
    for name, orientation in zip(names, orientations):
        if orientation is not None and not _is_plane(orientation):
            raise DataError(f"{folder}: {Path(name).name} gives an orientation (ImageOrientationPatient) of "
                            f"{_values_text(orientation)}, not a row and a column direction at right angles, so the "
                            "plane its slices lie in is unknown (a damaged or hand-made header); correct the tag in "
                            "its files")


def _is_plane(orientation: list[float]) -> bool:
    """Whether six direction cosines are a row and a column direction (of any length but 0) at right angles."""
    if len(orientation) != 6 or not np.all(np.isfinite(orientation)):
        return False
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    lengths = np.linalg.norm(row) * np.linalg.norm(column)
    return bool(lengths > 0 and abs(row @ column) / lengths < ORIENTATION_TOLERANCE)


PIXEL_SPACING = "0028|0030"  # PixelSpacing: the gap between the centres of rows, then of columns, in mm
PIXEL_SPACING_TOLERANCE = 1e-3  # as a fraction: decimal strings of one spacing rounded apart are one spacing


def check_one_pixel_spacing(spacings: list[list[float] | None], names: list[str], folder: Path) -> None:
    """Refuse a series whose slices have different pixel sizes (reconstructions of several fields of view
    under one series UID): ITK stacks every slice on the first one's pixel size, so a slice of another field
    of view became a slice of the volume at another scale, its prediction written there, and nothing said.
    Files without a PixelSpacing (secondary captures) are left as they are; where the others give one, refused,
    naming them: ITK took the first file's, or 1 mm where that file gave none, for every slice."""
    refuse_partly_given(spacings, names, "pixel size (PixelSpacing)", "their pixel size", folder)
    refuse_pixel_size_not_above_0(spacings, names, folder)
    say_if_no_pixel_size(spacings, folder)
    alike = lambda a, b: np.allclose(a, b, rtol=PIXEL_SPACING_TOLERANCE, atol=0)  # noqa: E731 - tiny predicate
    refuse_apart(_first_apart(spacings, names, 2, alike), folder, "have different pixel sizes", " mm",
                 "reconstructions of several fields of view under one series UID", "pixel size")


def say_if_no_pixel_size(spacings: list[list[float] | None], folder: Path) -> None:
    """Say where no file gives a PixelSpacing (secondary captures, screenshots, some exports): ITK then reads
    1 mm pixels (or the detector's ImagerPixelSpacing, where a file gives it), so HD95 and ASD, said in mm,
    are in that size, which the user should know before reading them as millimetres."""
    if spacings and all(spacing is None for spacing in spacings):
        say_once(f"{folder}: no file of its DICOM series gives a pixel size (PixelSpacing), so its pixels are read "
                 "as 1 mm (or the ImagerPixelSpacing a file gives); HD95 and ASD are in that size, not the patient's "
                 "millimetres", key=f"dicom-no-pixel-size-{folder}")


def refuse_pixel_size_not_above_0(spacings: list[list[float] | None], names: list[str], folder: Path) -> None:
    """Refuse a file whose PixelSpacing holds a size of 0 or below (or one that is no number: a damaged or
    hand-made header): ITK reads negative sizes as the slices mirrored, so the prediction would be written on that
    mirrored grid, and zeros as 1 mm pixels, so HD95 and ASD would be given in mm of a size no file says."""
    for name, spacing in zip(names, spacings):
        if spacing is not None and not (np.all(np.isfinite(spacing)) and min(spacing, default=1) > 0):
            below = "a size of 0" if min(spacing, default=1) == 0 else "below 0"
            raise DataError(f"{folder}: {Path(name).name} gives a pixel size (PixelSpacing) of {_values_text(spacing)} "
                            f"mm, {below}, so where its pixels lie is unknown (a damaged or hand-made header); correct "
                            "the tag in its files")


def _first_apart(values: list[list[float] | None], names: list[str], count: int,
                 alike: Callable[[list[float], list[float]], bool]
                 ) -> tuple[tuple[str, list[float]], tuple[str, list[float]]] | None:
    """The first file whose tag of ``count`` numbers (``values``, one per file of ``names``) is not ``alike``
    the first file's, with that first file; None where they all are. Files without the tag are left out."""
    given = [(name, v) for name, v in zip(names, values) if v is not None and len(v) == count]
    return next(((item, given[0]) for item in given[1:] if not alike(item[1], given[0][1])), None)


def refuse_apart(apart: tuple[tuple[str, list[float]], tuple[str, list[float]]] | None, folder: Path, differ: str,
                 unit: str, likely: str, kind: str) -> None:
    """Refuse a series two of whose files (``apart``, from ``_first_apart``) give a tag apart: ITK stacks every
    slice on the first one's, so the other file's slice joined the volume on a grid it does not lie on. The
    message names both files and their values, says what the series ``likely`` is, and asks for a folder per
    ``kind``."""
    if apart is None:
        return
    (name, value), (first_name, first) = apart
    raise DataError(f"{folder}: its DICOM slices {differ} ({Path(name).name} {_values_text(value)}{unit}, "
                    f"{Path(first_name).name} {_values_text(first)}{unit}): {likely}; put the slices of each {kind} "
                    "in their own folder (each then read as a case of its own)")


def _values_text(values: Sequence[float]) -> str:
    """A multi-valued number tag (an ImageOrientationPatient, a PixelSpacing) as the text a DICOM viewer shows
    (``1\\0\\0\\0\\1\\0``)."""
    return "\\".join(f"{v:.4g}" for v in values)


TIME_POINTS_ARE = "a cine, dynamic or multi-echo series"
ONE_TIME_POINT = "save one time point as its own series (fewsam reads one 3D volume per case)"


def _one_multi_frame_volume(image: sitk.Image) -> sitk.Image:
    """A series of one multi-frame file (an enhanced MR or CT export, a legacy multi-frame file) as
    its volume: ITK's series reader stacks the file's 3D volume into a 4D image of one volume, which
    was refused as not stacking, although the file holds the whole series with its geometry."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        return image[:, :, :, 0]
    return image


SINGLE_SLICE_TAGS = (("0018|0050", "SliceThickness"), ("0018|0088", "SpacingBetweenSlices"))
DEFAULT_THICKNESS_MM = 1.0


def single_slice_thickness(reader: sitk.ImageSeriesReader, folder: Path) -> float:
    """The z-spacing of a one-slice series, which no second slice's position gives: its SliceThickness,
    else its SpacingBetweenSlices, else 1 mm, said once. ITK stacks one slice at 1 mm whatever its file
    says, so the prediction written on that geometry (``meta``) took another thickness than its image."""
    for tag, _ in SINGLE_SLICE_TAGS:
        value = _tag_numbers(reader, 0, tag)
        if value and len(value) == 1 and np.isfinite(value[0]) and value[0] > 0:
            return value[0]
    say_once(f"{folder}: a single DICOM slice without {' or '.join(name for _, name in SINGLE_SLICE_TAGS)}; its "
             f"thickness is taken as {DEFAULT_THICKNESS_MM:g} mm (its prediction's z-spacing), as no file says it",
             key="dicom-single-slice-default-thickness")
    return DEFAULT_THICKNESS_MM


def _tag_numbers(reader: sitk.ImageSeriesReader, index: int, tag: str) -> list[float] | None:
    """A numeric multi-valued tag (``x\\y\\z``) of the series' ``index``-th file, None if absent."""
    if not reader.HasMetaDataKey(index, tag):
        return None
    try:
        return [float(v) for v in reader.GetMetaData(index, tag).split("\\")]
    except ValueError:
        return None


SPACING_TOLERANCE = 0.1  # how far (as a fraction) one slice gap may differ from the typical gap


def check_slice_spacing(positions: list[list[float] | None], direction: tuple[float, ...],
                        folder: Path) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal.

    ITK stacks such a series at its average spacing, so every slice after a gap (a file lost
    in a copy) sits in the wrong place and a prediction written on that geometry does not
    overlay the series; two files at one position (several echoes or time points sharing a
    series UID) would interleave two volumes. Series without positions (secondary captures)
    or with fewer than three slices are left as they are."""
    if len(positions) < 3 or any(p is None or len(p) != 3 for p in positions):
        return
    normal = np.asarray(direction, dtype=np.float64).reshape(3, 3)[:, 2]
    along = np.asarray(positions, dtype=np.float64) @ normal
    gaps = np.diff(along)
    typical = float(np.median(np.abs(gaps)))
    uneven = np.abs(np.abs(gaps) - typical) > SPACING_TOLERANCE * typical
    if typical == 0 or uneven.any():
        first = int(np.flatnonzero(uneven)[0]) if uneven.any() else 0
        raise DataError(f"{folder}: its DICOM slices are not evenly spaced (gap of {abs(gaps[first]):.4g} mm "
                        f"after slice {first + 1} of {len(positions)}, typical {typical:.4g} mm): a slice "
                        "file is missing, or two share a position (echoes or time points in one series); "
                        "restore the missing files or put each volume in its own folder")


def say_if_tilted(positions: list[list[float] | None], image: sitk.Image, folder: Path) -> None:
    """Tell the user where a series' slices shift across their plane from one to the next (a gantry-tilted
    CT, ``SeriesGeometry.slices_off_grid``): ITK stacks them along their normal, so the NIfTI prediction,
    written on that grid, lies off the slices by the shear, growing slice by slice. Each slice's
    segmentation is its own and right; the DICOM SEG beside it places each frame by its file's position.
    The image is not resampled: that would change the pixels the model segments."""
    if len(positions) < 2 or any(p is None or len(p) != 3 for p in positions):
        return
    geometry = SeriesGeometry.of_grid(image)
    off = geometry.slices_off_grid(np.asarray(positions, dtype=np.float64))
    if off is None:
        return
    say_once(f"{folder}: its DICOM slices are tilted {geometry.tilt_degrees(np.asarray(positions)):.3g} degrees "
             f"(a gantry tilt); its NIfTI prediction is placed on the untilted stack of its slices, its last slice "
             f"{off[-1]:.3g} mm from where its file places it; the DICOM SEG beside it places each slice by its "
             "file's own position and is exact")


def _image_array(image: sitk.Image, folder: Path) -> np.ndarray:
    channels = image.GetNumberOfComponentsPerPixel()
    if channels not in (1, 3, 4) or image.GetDimension() != 3:
        raise DataError(f"{folder}: expected a greyscale or RGB series, got {channels} channels "
                        f"in {image.GetDimension()}D")
    array = sitk.GetArrayFromImage(image)
    if channels == 4:
        array = array[..., :3]
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise DataError(f"{folder}: pixel type {image.GetPixelIDTypeAsString()} is not an image")
    return array.astype(np.float32)


def read_label_on(image: sitk.Image, path: Path, classes: ClassSource | None = None) -> np.ndarray:
    """A label file as (D, H, W) uint8 on ``image``'s voxel grid (see module docstring); a 3D Slicer
    segmentation's segments as the ``classes`` of their names (``itk_segments_as_classes``), one without
    segments as background.

    A 2D label of a one-slice series' size (the mask of an X-ray or of a single MR slice, as a
    script saves a 2D array) is read pixel for pixel, as a 2D label of a 2D NIfTI image is: it holds
    no position along the slice's normal, so placed at its own (z = 0, 1 mm) it missed the slice and
    was refused, and its spacing of 1 (no geometry saved) made it a magnified copy."""
    try:
        with quiet_itk(path, pixels=True):
            label = itk_reader(path).Execute()
    except RuntimeError as err:
        raise DataError(f"cannot read label {path} (truncated or not NIfTI?): {itk_message(err)}") from None
    segments = segments_of(path)
    if segments == ():
        say_without_segments(path)
        return np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    if segments:
        label = itk_segments_as_classes(label, segments, classes() if classes else None, path)
    if label.GetNumberOfComponentsPerPixel() > 1 or label.GetDimension() == 4:
        label = _one_hot_as_indices(label, path)
    if label.GetDimension() not in (2, 3):
        raise DataError(f"label {path} must be a 2D or 3D single-channel image")
    if label.GetDimension() == 2:
        if image.GetDepth() == 1 and label.GetSize() == image.GetSize()[:2]:
            return to_label_array(sitk.GetArrayFromImage(label)[None], path)
        label = sitk.JoinSeries(label)
    if not _same_grid(label, image):
        if np.prod(label.GetSize()) > np.prod(image.GetSize()):
            raise DataError(f"label {path} has size {label.GetSize()}, its series {image.GetSize()} "
                            "(x, y, z); export the label on the series' grid")
        reference = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        reference.CopyInformation(image)
        stored = sitk.GetArrayFromImage(label)
        label = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              label.GetPixelID())
        check_same_voxels(stored, sitk.GetArrayFromImage(label), path)
    return to_label_array(sitk.GetArrayFromImage(label), path)


def _one_hot_as_indices(label: sitk.Image, path: Path) -> sitk.Image:
    """A one-hot label (a 4D file of one volume per class, or a 3D image of one component per class)
    as a 3D image of class indices on its grid (``one_hot_to_indices``)."""
    components, dimension = label.GetNumberOfComponentsPerPixel(), label.GetDimension()
    if (components > 1) == (dimension == 4) or dimension not in (3, 4):
        raise DataError(f"label {path} must be a 2D or 3D single-channel image (or a one-hot 4D one), got "
                        f"{dimension}D of {components} component(s)")
    channels = sitk.GetArrayFromImage(label)  # (z, y, x, components), or (volumes, z, y, x)
    grid = label[:, :, :, 0] if dimension == 4 else label
    if dimension == 4:
        channels = np.moveaxis(channels, 0, -1)
    indices = sitk.GetImageFromArray(one_hot_to_indices(channels, path))
    indices.SetOrigin(grid.GetOrigin())
    indices.SetSpacing(grid.GetSpacing())
    indices.SetDirection(grid.GetDirection())
    return indices


def check_same_voxels(stored: np.ndarray, resampled: np.ndarray, path: Path) -> None:
    """A label in another axis order or orientation holds the series' voxels rearranged, and one
    cropped to its structures (3D Slicer's and ITK-SNAP's exports can be) holds a block of them, so
    resampling it onto the series keeps every labelled value's count (the background grows around
    a crop). One placed elsewhere (a label written without the series' origin and direction, e.g.
    from a bare array) would come out partly or wholly empty: refuse it rather than train on, or
    score against, that."""
    before = np.unique(stored[stored != 0], return_counts=True)
    after = np.unique(resampled[resampled != 0], return_counts=True)
    if not (np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])):
        raise DataError(f"label {path} does not lie on its DICOM series (its origin, spacing or direction "
                        "place it elsewhere); write the label with the series' geometry (e.g. SimpleITK's "
                        "CopyInformation from the series)")


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Same voxels in the same place, up to the float32 rounding of NIfTI headers."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def _series_folders(base: Path) -> list[Path]:
    """Folders that directly hold DICOM images, in natural order of their relative paths."""
    return list(_dicom_folders(base).series)


Folders = dict[Path, list[Path]]  # a folder's DICOM files


class DicomFolders(NamedTuple):
    """The folders below a dataset's root that hold files named as DICOM, by what those files are."""

    series: Folders  # DICOM images, in natural order of the folders' relative paths
    no_image: Folders  # DICOM objects alone that are no image to segment (``is_no_image``)
    not_dicom: list[Path]  # files named as DICOM, none of which is (``holds_dicom``)


def _dicom_folders(base: Path) -> DicomFolders:
    """The folders below ``base`` that directly hold DICOM images, those holding only DICOM objects that
    are no image to segment (RT structure sets, reports, and the DICOM SEG objects read as their series'
    labels), and those whose files are named as DICOM but none is: a folder of such files became a case
    that failed only when loaded, mid-fit or mid-predict. A folder's files are looked at until one holds
    DICOM, so a series costs a peek at its first file; one of DICOM and other files is a series, whose
    DICOM files GDCM reads."""
    files: Folders = {}
    for path in files_below(base):
        if is_dicom_file(path):
            files.setdefault(path.parent, []).append(path)
    other = {f for f, paths in files.items() if all(is_no_image(p) for p in paths)}
    not_dicom = {f for f, paths in files.items() if f not in other and not any(holds_dicom(p) for p in paths)}
    series = natural_sorted((f for f in files if f not in other | not_dicom),
                            key=lambda p: p.relative_to(base).as_posix())
    return DicomFolders({f: files[f] for f in series}, {f: files[f] for f in natural_sorted(other, key=str)},
                        natural_sorted(not_dicom, key=str))


def _shown_folders(root: Path, folders: Iterable[Path]) -> str:
    """Up to three of ``folders``, relative to ``root`` (``root`` itself by its path), for one line."""
    names = [f.relative_to(root).as_posix() if f != root else str(root) for f in folders]
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _say_no_image_folders(root: Path, other: Folders) -> None:
    """Folders of DICOM objects without an image are no cases: said once, with what becomes of them."""
    if other:
        shown = _shown_folders(root, other)
        say_once(f"{root}: {len(other)} folder(s) hold DICOM objects that are no image ({shown}: RT structure sets, "
                 "segmentations, reports, as archives such as TCIA store them beside each series) and are not "
                 "cases; DICOM SEG objects and RT structure sets among them are read as the labels of the series "
                 "they reference", key=f"dicom-no-image-{root}")


NOT_DICOM = ("named as DICOM files, but none of them is (no DICM marker, no DICOM header: empty, damaged, or files "
             "of another format renamed)")


def _check_not_dicom_folders(root: Path, not_dicom: list[Path], any_series: bool) -> None:
    """Folders of files named as DICOM, none of which is, are no cases: said once, naming them, as the
    dataset opens, so that the other series are fitted and predicted on. Refused, naming them, where no
    series is left."""
    if not not_dicom:
        return
    shown = _shown_folders(root, not_dicom)
    if not any_series:
        raise DataError(f"no DICOM series found in {root}: the files in {shown} are {NOT_DICOM}; put the series' "
                        "DICOM files there")
    say_once(f"{root}: {len(not_dicom)} folder(s) are not cases ({shown}): their files are {NOT_DICOM}; put the "
             "series' DICOM files there to read them", key=f"dicom-not-dicom-{root}")


# SOP classes of DICOM objects that hold no image to segment: RT structure sets, plans and records;
# structured reports and key-object selections (88.x); presentation states (11.x); raw data,
# registrations, fiducials and segmentations (66.x); encapsulated documents (104.x); waveforms (9.x)
NO_IMAGE_SOP_CLASSES = {f"1.2.840.10008.5.1.4.1.1.481.{n}" for n in range(3, 10)}
NO_IMAGE_SOP_FAMILIES = tuple(f"1.2.840.10008.5.1.4.1.1.{n}" for n in ("88.", "11.", "66", "104.", "9."))


def is_no_image(path: Path) -> bool:
    """Whether a DICOM file is an object with no image to segment (``NO_IMAGE_SOP_CLASSES``), by its SOP
    class (``sop_class``); a file without one is taken for an image."""
    sop = sop_class(path)
    return sop is not None and (sop in NO_IMAGE_SOP_CLASSES or sop.startswith(NO_IMAGE_SOP_FAMILIES))


LONG_LENGTH_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


def sop_class(path: Path) -> str | None:
    """A DICOM file's SOP class: the one its Part 10 file meta group names (``media_sop_class``), else the
    data set's own SOPClassUID (0008,0016). A bare data set, without the 128-byte preamble, DICM marker
    and file meta group (older exporters write them, and GDCM reads them as images), has no file meta
    group: judged by that alone, a DICOM SEG or RT structure set written so would be taken for an image,
    its folder for a series that cannot be read, and its series left unlabelled."""
    found = media_sop_class(path)
    if found is not None:
        return found
    header = dicom_header(path, ["SOPClassUID"])
    value = header.get("SOPClassUID") if header is not None else None
    return str(value) if value else None


def media_sop_class(path: Path) -> str | None:
    """The Media Storage SOP Class UID (0002,0002) of a Part 10 file, read from its file meta group
    (always explicit VR little endian) without parsing the rest; None where the file has none."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    at = DICOM_MAGIC_AT + 4
    if head[DICOM_MAGIC_AT:at] != b"DICM":
        return None
    while at + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, at)
        if group != 2:
            return None
        vr = head[at + 4:at + 6]
        long_length = vr in LONG_LENGTH_VRS
        length = struct.unpack_from("<I" if long_length else "<H", head, at + (8 if long_length else 6))[0]
        start = at + (12 if long_length else 8)
        if element == 2:
            return head[start:start + length].rstrip(b"\0 ").decode("ascii", errors="replace")
        at = start + length
    return None


def _entries(root: Path, named: ClassMap | None) -> tuple[list[Entry], dict[Path, LabelObject]]:
    """The dataset's series as cases, with their labels: a labels/ file, else the DICOM SEG or RT structure
    set that references the series (``dicom_labels.label_objects_by_case``; ``named``: classes.json's
    classes, which choose an RT structure set's ROIs); and the objects so read, by path."""
    base = root / "images" if (root / "images").is_dir() and _series_folders(root / "images") else root
    labels = root / "labels"
    series, other, not_dicom = _dicom_folders(base)
    if base != root:
        other.update(_dicom_folders(root).no_image)  # SEG folders beside images/
    _check_not_dicom_folders(root, not_dicom, any_series=bool(series))
    _check_each_series_in_one_folder(root, series)
    _say_no_image_folders(root, other)
    entries = []
    for folder, files in series.items():
        if labels in folder.parents or folder == labels:
            continue
        case_id = folder.relative_to(base).as_posix() if folder != base else (root.name or "series")
        entries.append(Entry(case_id=case_id, image=folder, label=series_label(labels, case_id),
                             rel_path=case_id, subject=PurePosixPath(case_id).parts[0]))
    if labels.is_dir():
        say_unmatched_labels(labels, entries)
    _say_slice_masks(root, labels)
    objects = [(p, sop) for files in other.values() for p in files if (sop := sop_class(p) or "") in KINDS]
    chosen = label_objects_by_case(root, objects, entries, series, named)
    return ([replace(e, label=chosen[e.case_id].path) if e.case_id in chosen else e for e in entries],
            {header.path: header for header in chosen.values()})


def _check_each_series_in_one_folder(root: Path, series: Folders) -> None:
    """Refuse a series whose files lie in several folders as parts of one volume (an export that splits a long
    series into folders of a few hundred files) or as copies: each folder was a case of part of the volume (or
    a second case of the same one, which a split could put in both training and validation), and nothing said
    so. Folders whose first files share a SeriesInstanceUID are compared by their main series (``series_files``),
    so that copies of one localizer beside different series are no such series."""
    for folders in _folders_by_series(series).values():
        if len(folders) < 2:
            continue
        main = _folders_by_series({folder: [Path(series_files(folder)[0])] for folder in folders})
        for uid, shared in main.items():
            if len(shared) > 1 and _parts_or_copies([series_files(folder) for folder in shared]):
                raise DataError(f"{root}: {len(shared)} folders hold parts or copies of one DICOM series "
                                f"({_shown_folders(root, shared)}: SeriesInstanceUID {uid}), each read as a case of "
                                "part of it or a copy of it; put the series' files in one folder, and remove any copy")


def _parts_or_copies(folders: list[list[str]]) -> bool:
    """Whether the files of folders of one series (``folders``: each one's file names) are parts of one volume
    (no slice position in two folders) or copies (an instance, SOPInstanceUID, in two). Volumes at the same
    positions by other instances are the series' echoes or time points, each put in a folder of its own as
    ``check_one_time_point`` asks: cases of their own."""
    headers = [[dicom_header(name, ["SOPInstanceUID", "ImagePositionPatient"]) for name in names] for names in folders]
    instances = [{str(h.SOPInstanceUID) for h in folder if h is not None and h.get("SOPInstanceUID")}
                 for folder in headers]
    positions = [{tuple(round(float(v), POSITION_DECIMALS) for v in h.ImagePositionPatient)
                  for h in folder if h is not None and h.get("ImagePositionPatient")} for folder in headers]
    copied = len(set().union(*instances)) < sum(map(len, instances))
    parts = all(positions) and len(set().union(*positions)) == sum(map(len, positions))
    return copied or parts


def _folders_by_series(series: Folders) -> dict[str, list[Path]]:
    """The folders of ``series`` by the SeriesInstanceUID of their first file (by name); those whose first
    file gives none left out."""
    by_uid: dict[str, list[Path]] = {}
    for folder, files in series.items():
        uid = series_identity(files)[0]
        if uid is not None:
            by_uid.setdefault(uid, []).append(folder)
    return by_uid


def _say_slice_masks(root: Path, labels: Path) -> None:
    """2D masks below the series (CHAOS's ``Ground/`` folders, one PNG per slice) are not read: a
    series' label is one volume on its grid, and the order and orientation in which a folder of slice
    images stacks onto the series is not written in them. Left unsaid, the series read as unlabelled."""
    masks = [p for p in files_below(root) if is_image_name(p.name) and labels not in p.parents]
    if masks:
        folders = natural_sorted({p.parent.relative_to(root).as_posix() for p in masks})
        shown = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
        say_once(f"{root}: {len(masks)} 2D image file(s) in {len(folders)} folder(s) beside the DICOM series ({shown}) "
                 "are not read: a DICOM series' label is one volume, labels/<case>.nii.gz (<case> as `fewsam info` "
                 "lists the series), on the series' voxel grid; stack each series' slice masks into such a file "
                 "(in the series' slice order, checked in a viewer) to fit or evaluate on them",
                 key="dicom-slice-masks")


def series_label(labels: Path, case_id: str) -> Path | None:
    """The label of a series: ``labels/<patient>/<series>.nii.gz``, mirroring the series' folders, or
    the flat ``labels/<patient>_<series>.nii.gz`` many export scripts write; the flat name matched
    nothing, so a labelled series read as unlabelled without a word."""
    nested = label_in_folder(labels, case_id)
    if nested is not None or "/" not in case_id:
        return nested
    return label_in_folder(labels, case_id.replace("/", "_"))


def open_dicom(root: Path) -> DicomDataset:
    named = classes_json_in(root)
    entries, label_objects = _entries(root, named)
    if not entries:
        raise DataError(f"no DICOM series found in {root}; expected folders of .dcm files")
    return DicomDataset(root, named, entries, label_objects)

