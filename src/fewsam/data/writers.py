"""Predictions on disk, in the case's own format family, at ``PRED/<case.rel_path>``.

- h5 (ACDC): an HDF5 file with key ``pred`` (uint8 class indices); (H, W) for a 2D slice file,
  (D, H, W) for a volume, mirroring the input's ``label``.
- nifti: ``<case>.nii.gz``, uint8 class indices, with the input image's affine and header
  (same voxel grid and orientation, so it overlays in ITK-SNAP / 3D Slicer); ``<case>.mgz`` on the
  header of a FreeSurfer ``.mgz`` / ``.mgh`` input.
- png: an 8-bit greyscale PNG at the image's relative path, class indices mapped back to the
  dataset's own mask coding (BUSI 0/255; prostate 0 = prostate, 255 = background; fundus cup 0,
  rim 128, background 255); an RGB PNG in the class colours for colour-coded masks (classes.json
  "colour"); a folder of new images without masks, in the coding of the masks the run was fitted on
  (``predict.open_for_run``).
  JPEG, TIFF and BMP inputs get a PNG too, named ``.png`` (``images/x.jpg`` -> ``images/x.png``).
- npz (FairSeg): an npz with key ``pred``, (H, W) uint8 class indices 0/1/2 (not the -1/-2
  coding of the input masks); MedSAM npz: key ``segs`` in the shape of the input's ``gts``; Synapse
  slices assembled into a case: key ``pred``, (D, H, W).
- dicom: ``<series folder>.nii.gz``, uint8 class indices on the series' origin, spacing and
  direction, written by SimpleITK (which turns DICOM's LPS coordinates into NIfTI's RAS); and, by
  ``fewsam predict``, ``<series folder>.seg.dcm`` beside it (``write_dicom_seg``): a BINARY DICOM SEG
  of the series' instances, one segment per class, which OHIF, a PACS or 3D Slicer opens on the series;
  with ``--rtstruct``, ``<series folder>.rtstruct.dcm`` too (``write_dicom_rtstruct``): an RT structure
  set, an ROI of contours per class, which radiotherapy planning systems import.

Writes are atomic (a temporary file in the same folder, then ``os.replace``). ``read_prediction``
is the inverse for any folder laid out this way, whoever wrote it (NIfTI as ``.nii`` or ``.nii.gz``), and
finds the names other tools give predictions (``_as_found``): in one flat folder, as the labels or MONAI
name them, an h5 / npz case's ``<case>_pred.nii.gz`` from TransUNet's, SAMed's and SSL4MIS's test scripts
(saved through SimpleITK or nibabel), or a 2D image's as NIfTI (MONAI's ``SaveImage``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import tempfile
import time
import weakref
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import nibabel as nib
import numpy as np
from nibabel.freesurfer.mghformat import MGHHeader
import SimpleITK as sitk
from PIL import Image

from fewsam.atomic import atomic_write_bytes
from fewsam.data.readers.acdc_h5 import H5_ERRORS
from fewsam.data.readers.common import (LABEL_INSIDE_IMAGE, check_label_values, first_line, one_hot_to_indices,
                                        read_json_object, to_label_array)
from fewsam.data.readers import itk_volume
from fewsam.data.readers.itk_volume import itk_message, quiet_itk, spacing_file_of
from fewsam.data.readers.fairseg_npz import MASK_KEYS, _decode_mask
from fewsam.data.readers.nifti import (NIFTI_ERRORS, Grid, from_slices, on_image_grid, repairs_said_once,
                                      segments_as_label, to_slices, without_time_axis)
from fewsam.data.readers.dicom_labels import label_object
from fewsam.data.readers.dicom_rtstruct import RTSTRUCT_SOP_CLASS, SeriesGeometry
from fewsam.data.dicom_text import set_character_set, unique_dicom_labels
from fewsam.data.readers.dicom_seg import SEG_SOP_CLASS
from fewsam.data.readers.slicer_segmentation import SegmentClasses, name_key, segments_of
from fewsam.data.rtstruct_writer import EMPTY_IF_MISSING, check_one_frame_of_reference, encode_rtstruct
from fewsam.data.readers.png_folder import MASK_STEM_SUFFIXES, mask_to_classes, read_colour_mask, read_mask_pixels
from fewsam.data.types import Case, ClassMap
from fewsam.errors import DataError
from fewsam.progress import say_once


def prediction_path(case: Case, root: Path) -> Path:
    """``root/<case.rel_path>``, with the suffix of the format predictions are written in (PNG
    bytes always under a .png name, a DICOM case's NIfTI under .nii.gz)."""
    return _path_under(root, case.case_id, case.rel_path, case.format)


def _path_under(root: Path, case_id: str, rel_path: str, fmt: str) -> Path:
    rel = PurePosixPath(rel_path.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(f"case {case_id}'s path {rel_path!r} would put its prediction "
                        f"outside {root}; give image paths relative to the data folder")
    return Path(root) / rel.with_name(_file_name(rel.name, fmt))


def missing_predictions(dataset: Any, case_ids: list[str], root: Path) -> list[tuple[str, Path]]:
    """(case id, expected path) of each case with no prediction under ``root``, found from the
    file names alone: evaluate says so before scoring anything, rather than after scoring every
    case up to the first gap, and names how many are missing. Datasets that do not index their
    files (``entries``) are checked case by case as they load."""
    entries = getattr(dataset, "entries", None)
    if not isinstance(entries, dict):
        return []
    missing = []
    for case_id in case_ids:
        if case_id not in entries:
            continue
        path = _own_prediction_path(dataset, case_id, root)
        if not _found_prediction(path, case_id, other_names(dataset, case_id, root), dataset.format).is_file():
            missing.append((case_id, path))
    return missing


def holds_a_prediction(dataset: Any, root: Path) -> bool:
    """Whether ``root`` holds a file where ``fewsam predict`` writes the prediction of one of ``dataset``'s
    cases (of any split): the mark of a folder of its predictions, which ``--overwrite`` may write into."""
    entries = getattr(dataset, "entries", None)
    return isinstance(entries, dict) and any(_own_prediction_path(dataset, case_id, root).is_file()
                                             for case_id in entries)


def _own_prediction_path(dataset: Any, case_id: str, root: Path) -> Path:
    """Where ``fewsam predict`` writes the prediction of the indexed case ``case_id`` under ``root``."""
    return _path_under(root, case_id, dataset.prediction_rel_path(dataset.entries[case_id]), dataset.format)


def _found_prediction(path: Path, case_id: str, others: OtherNames, fmt: str) -> Path:
    """The prediction file of a case expected at ``path`` (``_as_found``); for a DICOM series with no
    NIfTI there, the DICOM SEG ``<case>.seg.dcm``, else the RT structure set ``<case>.rtstruct.dcm``,
    that another tool (a planning system's export) or ``fewsam predict`` wrote."""
    found = _as_found(path, case_id, others)
    return next((p for p in (found, *read_instead(found, fmt)) if p.is_file()), found)


def read_instead(path: Path, fmt: str) -> list[Path]:
    """The files read as a case's prediction where its file ``path`` is missing, the first found: a DICOM
    series' ``<case>.seg.dcm``, else its ``<case>.rtstruct.dcm`` (another tool's, a planning system's export,
    or fewsam's own without its NIfTI); none for the other formats, whose predictions have no second form."""
    return [dicom_seg_path(path), dicom_rtstruct_path(path)] if fmt == "dicom" else []


def _file_name(name: str, fmt: str) -> str:
    """PNG predictions replace the input's suffix (x.jpg -> x.png); DICOM ones add .nii.gz to the
    series folder's name, which may itself hold dots (1.2.840.113619)."""
    if fmt == "png" and not name.lower().endswith(".png"):
        return name[: len(name) - len(PurePosixPath(name).suffix)] + ".png"
    if fmt == "dicom" and not name.lower().endswith(".nii.gz"):
        return name + ".nii.gz"
    return name


def write_prediction(case: Case, pred: np.ndarray, out_root: Path) -> Path:
    """Write ``pred`` (D, H, W) class indices for ``case`` under ``out_root``; returns the path."""
    pred = np.asarray(pred)
    if pred.shape != tuple(case.image.shape[:3]):
        raise DataError(f"prediction for {case.case_id} has shape {pred.shape}, "
                        f"expected {tuple(case.image.shape[:3])} (D, H, W)")
    pred = to_label_array(pred, Path(case.rel_path), "prediction")
    path = prediction_path(case, out_root)
    atomic_write_bytes(path, ENCODERS[case.format](case, pred))
    _write_spacing_file(case, path)
    return path


def _write_spacing_file(case: Case, prediction: Path) -> None:
    """A 3D TIFF prediction's ``<case>.json`` (``{"spacing": [z, y, x]}``) where its image has one, as nnU-Net
    writes it: TIFF keeps no slice spacing, so without it the prediction read back (by fewsam or nnU-Net) lies
    on other voxel sizes than its image."""
    spacing = (case.meta.get("itk") or {}).get("tiff_spacing")
    if spacing is not None:
        atomic_write_bytes(spacing_file_of(prediction), json.dumps({"spacing": list(spacing)}).encode())


def spacing_files(prediction: Path) -> list[Path]:
    """The spacing file a prediction may have beside it (a 3D TIFF's, ``_write_spacing_file``); none for
    the other formats."""
    return [spacing_file_of(prediction)] if itk_volume.itk_ending(prediction.name) in itk_volume.TIFF_ENDINGS else []


DICOM_SEG_ENDING = ".seg.dcm"
DICOM_RTSTRUCT_ENDING = ".rtstruct.dcm"


def dicom_seg_path(prediction: Path) -> Path:
    """Where a DICOM case's SEG prediction lies: beside its NIfTI, ``<case>.seg.dcm``."""
    return _beside_nifti(prediction, DICOM_SEG_ENDING)


def dicom_rtstruct_path(prediction: Path) -> Path:
    """Where a DICOM case's RT structure set prediction lies: beside its NIfTI, ``<case>.rtstruct.dcm``."""
    return _beside_nifti(prediction, DICOM_RTSTRUCT_ENDING)


def _beside_nifti(prediction: Path, ending: str) -> Path:
    name = prediction.name
    return prediction.with_name((name[:-len(".nii.gz")] if name.lower().endswith(".nii.gz") else name) + ending)


def write_dicom_seg(case: Case, pred: np.ndarray, names: dict[int, str], out_root: Path) -> Path | None:
    """``pred`` (D, H, W class values) of a case read from a DICOM series as a BINARY DICOM SEG beside its
    NIfTI (``dicom_seg_path``), so the prediction opens on its series in OHIF, a PACS or 3D Slicer: one
    segment per class of ``names`` (segment n the n-th class value, labelled with its name; a class
    predicted nowhere is a segment without frames, which highdicom writes), made by fewsam's algorithm
    (AUTOMATIC), referencing the series' instances, whose headers are read here, pixels left unread.
    A series whose headers lack what a SEG must copy from them (a frame of reference: files written
    by scripts rather than scanners) gets its NIfTI only, said once; None then."""
    return _write_dicom_object(case, dicom_seg_path(prediction_path(case, out_root)), "DICOM SEG",
                               lambda sources: _encode_dicom_seg(sources, pred, names, _slice_gap(case)))


def write_dicom_rtstruct(case: Case, pred: np.ndarray, names: dict[int, str], out_root: Path) -> Path | None:
    """``pred`` (D, H, W class values) of a case read from a DICOM series as an RT structure set beside its
    NIfTI (``dicom_rtstruct_path``), the form radiotherapy planning systems import contours in: an ROI per
    class of ``names``, each slice's pixels outlined in patient coordinates (``rtstruct_writer``), read
    back by fewsam's RT structure set reader as ``pred``. A series whose headers lack what it copies from
    them gets its NIfTI only, said once, as for the SEG; None then."""
    from fewsam import __version__

    def encoded(sources: list[Any]) -> bytes:
        geometry = SeriesGeometry.of(case.meta["origin"], case.meta["spacing"], case.meta["direction"])
        uids = (prediction_uid(sources, pred, names, "rtstruct series"),
                prediction_uid(sources, pred, names, "rtstruct instance"))
        return encode_rtstruct(sources, pred, names, geometry, uids, __version__)

    return _write_dicom_object(case, dicom_rtstruct_path(prediction_path(case, out_root)), "RT structure set",
                               encoded)


def _slice_gap(case: Case) -> float:
    """The series' slice spacing (mm), read only once the case is known to have DICOM sources: a case
    without them never gets a DICOM object, whatever its other headers hold."""
    return float(case.meta["spacing"][2])


def _write_dicom_object(case: Case, path: Path, kind: str, encode: Callable[[list[Any]], bytes]) -> Path | None:
    """The DICOM object ``encode`` makes from the headers of the case's series (pixels left unread) written at
    ``path``; a series whose headers do not allow one (unreadable, or without what the object copies from
    them) gets its NIfTI only, said once for each ``kind``; None then."""
    from fewsam.data.readers.dicom_frames import dicom_header

    sources = [dicom_header(name) for name in case.meta.get("source_files", [])]
    if not sources or any(header is None for header in sources):
        return None
    try:
        data = encode(sources)
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        say_once(f"the {kind} of a prediction is not written where its series' headers do not allow one "
                 f"({case.case_id}: {first_line(err)}); its NIfTI is", key=f"dicom-object-not-written-{kind}")
        return None
    atomic_write_bytes(path, data)
    return path


def _encode_dicom_seg(sources: list[Any], pred: np.ndarray, names: dict[int, str], slice_gap: float) -> bytes:
    """The SEG's bytes: class values renumbered 1.. as the segments' numbers (the standard numbers
    segments from 1 without gaps), every frame with content (all frames where nothing was predicted:
    a SEG holds at least one), ``slice_gap`` (mm) the thickness of slices whose files give none."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from fewsam import __version__

    values = sorted(names)
    renumbered = np.zeros(256, dtype=np.uint8)
    renumbered[values] = np.arange(1, len(values) + 1)
    algorithm = hd.AlgorithmIdentificationSequence(name="fewsam", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    labels = unique_dicom_labels([names[value] for value in values])
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=label, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for number, label in enumerate(labels, start=1)]
    pixels = renumbered[pred]
    check_one_frame_of_reference(sources)
    _fill_slice_thickness(sources, slice_gap)
    _fill_empty_type_2(sources)
    series_uid, instance_uid = (prediction_uid(sources, pixels, names, role) for role in ("series", "instance"))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=series_uid, series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=instance_uid, instance_number=1, manufacturer="fewsam", manufacturer_model_name="fewsam",
        software_versions=__version__, device_serial_number="none", series_description="fewsam prediction",
        omit_empty_frames=bool(pixels.any()))
    set_character_set(seg, names.values(), sources[0].get("SpecificCharacterSet"))
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def _fill_slice_thickness(sources: list[Any], slice_gap: float) -> None:
    """SliceThickness set to ``slice_gap`` in the headers of single-frame slices that leave it out or empty
    (the image's attribute is type 2, so scanners and converters may): highdicom copies it into the SEG's
    Pixel Measures, where a value is required, and refuses the series without one."""
    for source in sources:
        if "NumberOfFrames" not in source and source.get("SliceThickness") in (None, ""):
            source.SliceThickness = f"{slice_gap:.10g}"


def _fill_empty_type_2(sources: list[Any]) -> None:
    """The type 2 Patient, General Study and Frame of Reference attributes a file leaves out (files written by
    scripts rather than scanners) set empty, as the standard allows them: highdicom copies them into the SEG
    and refuses a series without them."""
    for source in sources:
        for keyword in EMPTY_IF_MISSING:
            if keyword not in source:
                setattr(source, keyword, "")


def prediction_uid(sources: list[Any], pixels: np.ndarray, names: dict[int, str], role: str) -> str:
    """A UID for a prediction object's series or instance (``role``: which object, and which of its UIDs)
    drawn from what it holds (its series, the predicted pixels and the class names): the same prediction of
    the same series gets the same UIDs when predicted again, so a PACS or planning system receiving it twice
    keeps one object, and a changed prediction gets new ones."""
    from pydicom.uid import generate_uid

    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes())
    digest.update(json.dumps(sorted(names.items())).encode())
    return str(generate_uid(entropy_srcs=[str(sources[0].SeriesInstanceUID), digest.hexdigest(), role]))


SEG_SERIES_NUMBER = 9001  # a number of its own, so a viewer lists the prediction apart from the scanner's series


def write_label(case: Case, label: np.ndarray, out_root: Path, rel_path: str, source: Path) -> Path:
    """``label`` (D, H, W) class indices of ``case`` at ``out_root/rel_path`` as the dataset stores labels (the
    studio's export): a label file in the case's format, or, where one file holds a case's image and its label
    (``LABEL_INSIDE_IMAGE``), a copy of the case's file ``source`` with its label replaced in the dataset's
    own key and coding. Copied into the dataset, either reads back as the case's label."""
    as_label = replace(case, rel_path=rel_path)
    if case.format not in LABEL_INSIDE_IMAGE:
        return write_prediction(as_label, label, out_root)
    if label.shape != tuple(case.image.shape[:3]):
        raise DataError(f"label for {case.case_id} has shape {label.shape}, expected "
                        f"{tuple(case.image.shape[:3])} (D, H, W)")
    path = out_root / rel_path
    label = _as_stored(case, to_label_array(np.asarray(label), Path(rel_path), "label"))
    data = _h5_with_label(source, label) if case.format == "h5" else _npz_with_label(case, source, label)
    atomic_write_bytes(path, data)
    return path


def write_slice_label(source: Path, z: int, label: np.ndarray, out_root: Path, rel_path: str) -> Path:
    """Slice ``z`` of the volume in the h5 file ``source`` as a slice file of its own at ``out_root/rel_path``:
    its ``image`` (H, W) as stored and ``label`` (H, W) the class indices, as SSL4MIS keeps its training
    slices. A layout whose classes are fixed cannot mark a volume's unlabelled slices, so a volume labelled
    on some slices is written as its labelled slices alone, each read back as a labelled case."""
    path = out_root / rel_path
    buf = io.BytesIO()
    try:
        with h5py.File(source, "r") as old:
            image = old["image"][z]
    except H5_ERRORS as err:
        raise DataError(f"cannot read {source} (truncated or not HDF5?): {err}") from None
    with h5py.File(buf, "w") as new:
        new.create_dataset("image", data=image, compression="gzip")
        new.create_dataset("label", data=to_label_array(np.asarray(label), Path(rel_path), "label"),
                           compression="gzip")
    atomic_write_bytes(path, buf.getvalue())
    return path


def ignore_declaration(root: Path, file_name: str, class_map: ClassMap, ignore: int) -> bytes:
    """The dataset's ``file_name`` (nnU-Net's dataset.json, a classes.json) with ``ignore`` as the label value of
    unannotated pixels, so that labels holding it are read as unannotated, not as a class: by fewsam, and by
    nnU-Net v2, whose "ignore" label is the highest label value. Its other entries are kept as they are; a
    dataset without the file gets one naming ``class_map``'s classes."""
    source = root / file_name
    if source.is_file():
        spec = read_json_object(source)
    else:
        spec = {"classes": class_map.to_json()}
    if isinstance(spec.get("labels"), dict):  # dataset.json: "ignore" is one of its labels
        spec = {**spec, "labels": {**spec["labels"], "ignore": ignore}}
    else:
        spec = {**spec, "ignore": ignore}
    return (json.dumps(spec, indent=1) + "\n").encode()


def _h5_with_label(source: Path, label: np.ndarray) -> bytes:
    """``source`` (an SSL4MIS h5 case) with its ``label`` dataset replaced; its other datasets and attributes
    copied as they are."""
    buf = io.BytesIO()
    with h5py.File(source, "r") as old, h5py.File(buf, "w") as new:
        new.attrs.update(dict(old.attrs))
        for key in old:
            if key != "label":
                old.copy(old[key], new, name=key)
        dtype = old["label"].dtype if isinstance(old.get("label"), h5py.Dataset) else np.uint8
        new.create_dataset("label", data=label.astype(dtype), compression="gzip")
    return buf.getvalue()


def _npz_with_label(case: Case, source: Path, label: np.ndarray) -> bytes:
    """``source`` with its label replaced, its other arrays copied as they are: class indices under the case's
    label key (``meta["label_key"]``, MedSAM's ``gts``), else a FairSeg mask in FairSeg's coding (-1 rim, -2 cup;
    255 / 254 where the file stores them as uint8, 1 / 2 where it stores class indices)."""
    with np.load(source, allow_pickle=False) as old:
        arrays = {key: old[key] for key in old.files}
    if case.meta.get("label_key"):
        buf = io.BytesIO()
        np.savez_compressed(buf, **{**arrays, case.meta["label_key"]: label})
        return buf.getvalue()
    key = next((k for k in MASK_KEYS if k in arrays), MASK_KEYS[0])
    stored = arrays.get(key, np.zeros(0, np.int8))
    if stored.dtype.kind == "u":
        rim, cup = (1, 2) if stored.size and stored.max() <= 2 else (255, 254)
    else:
        rim, cup = -1, -2
    coded = np.zeros(label.shape, stored.dtype if stored.dtype.kind in "iu" else np.int8)
    coded[label == 1], coded[label == 2] = rim, cup
    buf = io.BytesIO()
    np.savez_compressed(buf, **{**arrays, key: coded})
    return buf.getvalue()


def read_prediction(case: Case, pred_root: Path, class_map: ClassMap | None = None,
                    dataset: Any = None) -> np.ndarray:
    """Read the prediction for ``case`` from ``pred_root`` as (D, H, W) uint8 class indices.

    With ``class_map``, values outside it are a DataError naming them and the file. With the case's
    ``dataset``, a prediction named as another tool names it after the case's files is found too
    (``other_names``).
    """
    others = other_names(dataset, case.case_id, pred_root) if dataset is not None else OtherNames()
    path = _found_prediction(prediction_path(case, pred_root), case.case_id, others, case.format)
    if not path.is_file():
        raise DataError(f"prediction {sought_as(path, others, case.format)} for case {case.case_id} not found; "
                        "predict this split into that folder first")
    if path.name.endswith(DICOM_SEG_ENDING):
        pred = _decode_dicom_label_object(case, path, prediction_segments(class_map, dataset), SEG_SOP_CLASS)
    elif path.name.endswith(DICOM_RTSTRUCT_ENDING):
        pred = _decode_dicom_label_object(case, path, prediction_segments(class_map, dataset), RTSTRUCT_SOP_CLASS)
    elif case.format in ("nifti", "dicom"):
        pred = _decode_nifti(case, path, prediction_segments(class_map, dataset))
    elif case.format in LABEL_INSIDE_IMAGE and _stem_and_ending(path.name)[1] in TEST_SCRIPT_ENDINGS:
        pred = _decode_test_script_volume(case, path)
    elif case.format == "png" and _stem_and_ending(path.name)[1] in NIFTI_ENDINGS:
        pred = _decode_plane_nifti(case, path)
    else:
        pred = DECODERS[case.format](case, path)
    expected = tuple(case.image.shape[:3])
    if pred.shape != expected:
        raise DataError(f"prediction {path} has shape {pred.shape}, the case has {expected} (D, H, W); "
                        "was it written for another dataset or resized?")
    if class_map is not None:
        check_label_values(pred, class_map, path, "was it predicted by a run fitted on other classes? "
                                                  "predict this split with a run fitted on this dataset", "prediction")
    return pred


VOLUME_PREDICTION_ENDINGS = (".nii.gz", ".nii", ".mgz", ".mgh", ".mha", ".mhd", ".nrrd")
NIFTI_ENDINGS = (".nii.gz", ".nii")
# A 2D prediction's: fewsam's PNG, and the BMP nnU-Net writes for a set whose file_ending is .bmp
PICTURE_PREDICTION_ENDINGS = (".png", ".bmp")
# ... and the NIfTI a volume pipeline (MONAI's SaveImage) writes for a 2D image, read onto its rows and columns
PLANE_PREDICTION_ENDINGS = (*PICTURE_PREDICTION_ENDINGS, *NIFTI_ENDINGS)


# What the test scripts of TransUNet, SAMed and SSL4MIS name a case's prediction (``test_single_volume``):
# ``<case>_pred.nii.gz``, beside ``<case>_img`` and ``<case>_gt``, for the cases of their h5 and npz layouts
TEST_SCRIPT_SUFFIX = "_pred"
TEST_SCRIPT_ENDINGS = NIFTI_ENDINGS
MONAI_POSTFIXES = ("trans", "seg")  # MONAI SaveImage's output_postfix: "trans" by default, "seg" in its tutorials
NNUNET_CHANNEL = "_0000"  # MONAI names an output after its input image: nnU-Net's case_0000.nii.gz


@dataclass(frozen=True)
class OtherNames:
    """What other tools name a case's prediction after, besides its relative path: its label file
    (``label_stem``: tools that write predictions as the labels are named, ``x_mask.png`` for the image
    ``x.png``, ``<case>_gt.nii.gz``), its image's folder (``image_folder``, under the prediction root:
    MONAI's ``SaveImage`` with ``data_root_dir`` keeps the input's sub-folders), the prediction root itself
    where fewsam's name lies deeper in it (``flat_folder``: most tools write every prediction into one folder,
    ``preds/x.png`` for ``images/x.png``), the other cases whose predictions have the same name there
    (``flat_namesakes``: a flat file of that name could be any of theirs), and the case's name in a test
    script's output (``test_script_stem``: ``<case>_pred``, for an h5 or npz layout's case)."""

    label_stem: str = ""
    image_folder: Path | None = None
    flat_folder: Path | None = None
    flat_namesakes: tuple[str, ...] = ()
    test_script_stem: str = ""


def other_names(dataset: Any, case_id: str, pred_root: Path) -> OtherNames:
    """The ``OtherNames`` of a case of ``dataset`` whose predictions lie under ``pred_root``; none for a
    dataset that does not index its files, or a label that is the image file itself (h5, npz)."""
    entries = getattr(dataset, "entries", None)
    entry = entries.get(case_id) if isinstance(entries, dict) else None
    if entry is None:
        return OtherNames()
    label = Path(entry.label) if entry.label is not None and Path(entry.label) != Path(entry.image) else None
    label_stem = _stem_and_ending(label.name)[0] if label is not None else ""
    try:
        folder = Path(entry.image).parent.relative_to(dataset.root)
    except (AttributeError, ValueError):
        folder = None
    image_folder = Path(pred_root) / folder if folder is not None and folder.parts else None
    deeper = len(PurePosixPath(dataset.prediction_rel_path(entry).replace("\\", "/")).parts) > 1
    namesakes = cases_by_flat_name(dataset).get(_flat_name(dataset, entry), ()) if deeper else ()
    test_script_stem = case_id + TEST_SCRIPT_SUFFIX if dataset.format in LABEL_INSIDE_IMAGE else ""
    return OtherNames(label_stem, image_folder, Path(pred_root) if deeper else None,
                      tuple(other for other in namesakes if other != case_id), test_script_stem)


_FLAT_NAMES: weakref.WeakKeyDictionary[Any, dict[str, list[str]]] = weakref.WeakKeyDictionary()


def cases_by_flat_name(dataset: Any) -> dict[str, list[str]]:
    """The cases of ``dataset`` by the name of their prediction file (lower case, without its ending),
    whatever folder it lies in: a file of one of these names in a flat folder is a case's prediction only
    where one case has that name (BUSI's ``benign/x.png`` and ``malignant/x.png`` would share ``x.png``).
    Made once per dataset, as evaluate asks it for every case."""
    known = _FLAT_NAMES.get(dataset)
    if known is None:
        known = {}
        for case_id, entry in dataset.entries.items():
            known.setdefault(_flat_name(dataset, entry), []).append(case_id)
        _FLAT_NAMES[dataset] = known
    return known


def _flat_name(dataset: Any, entry: Any) -> str:
    name = PurePosixPath(dataset.prediction_rel_path(entry).replace("\\", "/")).name
    return _stem_and_ending(_file_name(name, dataset.format))[0].lower()


def sought_as(path: Path, others: OtherNames, fmt: str) -> str:
    """fewsam's name of a case's prediction, with the other names it is looked for under that a user of
    another tool would write: the flat folder's (``PRED/x.png``), a test script's (``<case>_pred.nii.gz``),
    a DICOM series' SEG and RT structure set (``read_instead``, ``fmt`` the dataset's format)."""
    alternatives = []
    if others.flat_folder is not None:
        alternatives.append(str(others.flat_folder / path.name))
    if others.test_script_stem:
        folder = others.flat_folder or path.parent
        alternatives.append(str(folder / (others.test_script_stem + TEST_SCRIPT_ENDINGS[0])))
    alternatives.extend(str(other) for other in read_instead(path, fmt))
    return f"{path} (or {' or '.join(alternatives)})" if alternatives else str(path)


def prediction_format(name: str) -> str:
    """The format a prediction file named ``name`` is read as, in words: the volume formats are one (each is read
    onto its case's grid, ``_as_found``), the others their suffix (``.h5``, ``.npz``, ``.png``)."""
    if _stem_and_ending(name)[1] in VOLUME_PREDICTION_ENDINGS:
        return "NIfTI, MetaImage or NRRD"
    return PurePosixPath(name).suffix.lower() or name


def _stem_and_ending(name: str) -> tuple[str, str | None]:
    """``name`` without its prediction ending (a volume format's, or .png), and that ending."""
    ending = next((e for e in (*VOLUME_PREDICTION_ENDINGS, *PICTURE_PREDICTION_ENDINGS) if name.lower().endswith(e)),
                  None)
    return (name[: -len(ending)] if ending else name), ending


def _as_found(path: Path, case_id: str = "", others: OtherNames = OtherNames()) -> Path:
    """A prediction as another tool may have named it: a volume's in any of the volume formats fewsam
    reads (``<case>.nii`` for ``<case>.nii.gz``, as nnU-Net writes a ``.nii`` dataset's; ``<case>.mha``
    or ``.nrrd``, as SimpleITK scripts and grand-challenge containers write them, read onto the
    case's grid like any NIfTI), a 2D one's as PNG or BMP (nnU-Net's, of a ``.bmp`` set) or NIfTI (a volume
    pipeline's, ``_decode_plane_nifti``), and its ending
    in any letter case (``<case>.NII.GZ``, ``<case>.PNG`` from Windows tools); named as the case's label
    (``others``); MONAI's ``SaveImage`` names (``monai_names``), in the prediction's folder or in its
    image's (``others``); ``path`` itself when
    none of these exists. Two of one kind for one case, or a label name and a MONAI name, are refused
    naming both: scoring either would be a guess. A file named as fewsam names it is scored before one
    named otherwise, and the other is said: ``x_seg.nii.gz`` may be the prediction of a case ``x_seg`` of
    its own. A prediction found under another tool's name is said once per folder, naming the convention."""
    stem, ending = _stem_and_ending(path.name)
    endings = (PLANE_PREDICTION_ENDINGS if ending in PICTURE_PREDICTION_ENDINGS else VOLUME_PREDICTION_ENDINGS
               ) if ending else ()
    own_names = [path.name] + [stem + e for e in endings]
    own = _files_named(path.parent, own_names)
    foreign = {"the dataset's labels": _label_named(path, stem, endings, others),
               "MONAI's SaveImage output": _monai_named(path, stem, endings, others),
               FLAT: _flat_named(own_names + _label_names(stem, endings, others), others),
               "a test script's output (TransUNet, SAMed, SSL4MIS)": _test_script_named(path, others)}
    other = list(dict.fromkeys(p for found in foreign.values() for p in found))
    for found in (own, [] if own else other):
        if len(found) > 1:
            folder = _message_folder(path, found[:2], others)
            shown = " and ".join(_shown(p, folder) for p in found[:2])
            raise DataError(f"{folder} holds two predictions for case {case_id or stem}: {shown}; "
                            "remove or move one of them, so that the one to score is certain")
    if own and other:
        say_once(f"{path.parent}: case {case_id or stem} is scored on {own[0].name}, not on "
                 f"{_shown(other[0], path.parent)} beside it (named as {_convention(foreign, other[0])}); "
                 "move the one not meant", key=f"other-beside-{own[0]}")
    if not own and other:
        convention = _convention(foreign, other[0])
        if convention == FLAT:
            _refuse_namesakes(other[0], path, case_id or stem, others)
        folder = _message_folder(path, other[:1], others)
        say_once(f"{folder}: predictions named as {convention} are scored (case {case_id or stem}: "
                 f"{_shown(other[0], folder)})", key=f"named-as-{convention}-{folder}")
    return (own or other or [path])[0]


FLAT = "their images or labels, all in one folder"


def _message_folder(path: Path, files: list[Path], others: OtherNames) -> Path:
    """The folder a message names ``files`` relative to: the flat folder where they all lie in it (which is
    where the user put them), else the folder of fewsam's name."""
    flat = others.flat_folder
    return flat if flat is not None and all(found.parent == flat for found in files) else path.parent


def _refuse_namesakes(found: Path, path: Path, case_id: str, others: OtherNames) -> None:
    """A flat folder's file that two cases' predictions would be named as (images in two sub-folders with one
    name) is neither's: scoring it for both would score one case against the other's prediction."""
    if others.flat_namesakes:
        folder = others.flat_folder or path.parent
        raise DataError(f"{found} could be the prediction of case {case_id} or of case {others.flat_namesakes[0]}, "
                        f"whose images have one name; put each prediction at its image's relative path in {folder}, "
                        f"as `fewsam predict` writes them ({_shown(path, folder)})")


def _label_named(path: Path, stem: str, endings: tuple[str, ...], others: OtherNames) -> list[Path]:
    """The prediction named as the case's label file, in the folder its own name would be in."""
    return _files_named(path.parent, _label_names(stem, endings, others))


def _label_names(stem: str, endings: tuple[str, ...], others: OtherNames) -> list[str]:
    """The names of a prediction named as the case's label: its label file's stem, and a 2D image's as the masks
    of a mask folder are named (``x_mask.png`` for ``x.png``, ``png_folder.MASK_STEM_SUFFIXES``)."""
    stems = [others.label_stem] if others.label_stem and others.label_stem.lower() != stem.lower() else []
    if endings == PLANE_PREDICTION_ENDINGS:
        stems += [stem + suffix for suffix in MASK_STEM_SUFFIXES if suffix and stem + suffix not in stems]
    return [s + e for s in stems for e in endings or ("",)]


def _flat_named(names: list[str], others: OtherNames) -> list[Path]:
    """The prediction in the prediction root, where fewsam's name lies deeper in it, under ``names`` (as fewsam
    names it, ``x.png`` for ``images/x.png``, or as the case's label)."""
    return [] if others.flat_folder is None else _files_named(others.flat_folder, names)


def _test_script_named(path: Path, others: OtherNames) -> list[Path]:
    """``<case>_pred.nii.gz``, as the test scripts of TransUNet, SAMed and SSL4MIS save an h5 or npz case's
    prediction into one folder: in the folder of fewsam's name, or in the prediction root."""
    if not others.test_script_stem:
        return []
    names = [others.test_script_stem + e for e in TEST_SCRIPT_ENDINGS]
    found = _files_named(path.parent, names)
    if others.flat_folder is not None:
        found += [p for p in _files_named(others.flat_folder, names) if p not in found]
    return found


def _monai_named(path: Path, stem: str, endings: tuple[str, ...], others: OtherNames) -> list[Path]:
    """MONAI's names of the case's output in the prediction's folder, and in its image's sub-folder."""
    names = monai_names(stem, endings)
    found = _files_named(path.parent, names)
    folder = others.image_folder
    if folder is not None and folder != path.parent:
        found += [p for p in _files_named(folder, names) if p not in found]
    return found


def _convention(foreign: dict[str, list[Path]], found: Path) -> str:
    return next(name for name, paths in foreign.items() if found in paths)


def _shown(found: Path, folder: Path) -> str:
    """``found`` relative to ``folder`` where it lies below it, else its path."""
    try:
        return found.relative_to(folder).as_posix()
    except ValueError:
        return found.as_posix()


def monai_names(stem: str, endings: tuple[str, ...]) -> list[str]:
    """The names MONAI's ``SaveImage`` gives a case's output, relative to its output folder: with its
    default ``separate_folder=True`` ``<case>/<case>_<postfix><ending>``, else ``<case>_<postfix><ending>``
    (postfix "trans" by default, "seg" as MONAI's tutorials set it); the case as its image was named
    for MONAI, nnU-Net's first channel ``<case>_0000`` included."""
    names = []
    for subject in (stem, stem + NNUNET_CHANNEL):
        for postfix in MONAI_POSTFIXES:
            names += [f"{subject}/{subject}_{postfix}{e}" for e in endings]
            names += [f"{subject}_{postfix}{e}" for e in endings]
    return names


def _files_named(folder: Path, names: list[str]) -> list[Path]:
    """The files of ``folder`` named as one of ``names`` (relative posix paths, one folder deep at most,
    matched in any letter case), in the order of ``names``, each once."""
    found: list[Path] = []
    for name in names:
        *sub, leaf = name.lower().split("/")
        place = folder
        if sub:
            place = next((p for p, is_dir in _listing(folder).get(sub[0], ()) if is_dir), None)
            if place is None:
                continue
        found += [p for p, is_dir in _listing(place).get(leaf, ()) if not is_dir and p not in found]
    return found


def _listing(folder: Path) -> dict[str, tuple[tuple[Path, bool], ...]]:
    """``folder``'s entries by lower-case name, as (path, is a folder); read once while the folder is
    unchanged (its modification time), so finding each of thousands of predictions in one folder
    does not list the folder thousands of times. A folder changed in the last seconds is listed
    afresh: file systems keep modification times in steps of milliseconds or more, so a file added
    within the same step would otherwise be missed. {} for a folder that cannot be listed."""
    try:
        changed = folder.stat().st_mtime_ns
        if time.time_ns() - changed < SETTLED_NS:
            return _listed.__wrapped__(str(folder), changed)
        return _listed(str(folder), changed)
    except OSError:
        return {}


SETTLED_NS = 2_000_000_000  # a folder unchanged this long (2 s) has its listing kept


@functools.lru_cache(maxsize=256)
def _listed(folder: str, mtime_ns: int) -> dict[str, tuple[tuple[Path, bool], ...]]:
    entries: dict[str, tuple[tuple[Path, bool], ...]] = {}
    with os.scandir(folder) as scan:
        for entry in scan:
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            entries[entry.name.lower()] = (*entries.get(entry.name.lower(), ()), (Path(entry.path), is_dir))
    return entries


def _as_stored(case: Case, pred: np.ndarray) -> np.ndarray:
    """2D inputs (slice h5, PNG, npz) get (H, W) back; volumes keep (D, H, W), also of one slice where the
    reader says the input is a volume (``meta["ndim"]`` 3: a MedSAM or Synapse npz), with the depth moved back
    to the axis the input stores it on (``meta["depth_axis"]``: the 3D h5 volumes, LA and Pancreas-CT's last)."""
    if case.meta.get("depth_axis") is not None:
        return np.ascontiguousarray(np.moveaxis(pred, 0, case.meta["depth_axis"]))
    ndim = case.meta.get("ndim")
    two_d = ndim == 2 if ndim is not None else case.format in ("png", "npz")
    return pred[0] if two_d and pred.shape[0] == 1 else pred


def _encode_h5(case: Case, pred: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("pred", data=_as_stored(case, pred), compression="gzip")
    return buf.getvalue()


def _encode_nifti(case: Case, pred: np.ndarray) -> bytes:
    if case.meta.get("itk"):  # a MetaImage / NRRD input: the same format on its ITK geometry
        return itk_volume.encode(from_slices(pred, case.meta.get("slice_axis", 2)), case.meta["itk"])
    affine = case.meta.get("affine")
    header = case.meta.get("header")
    if affine is None:
        z, y, x = case.spacing or (1.0, 1.0, 1.0)
        affine = np.diag([x, y, z, 1.0])
    array = from_slices(pred, case.meta.get("slice_axis", 2))
    array = _in_image_dims(array, header)
    if isinstance(header, MGHHeader):
        return _encode_mgz(array, affine, header)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = image_class(array, affine, header.copy() if header is not None else None)
    img.set_data_dtype(array.dtype)  # uint8, or uint16 for label values above 255 (``to_label_array``)
    img.header.set_intent("none")  # a vector image's intent would call the class indices vector components
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    data = _with_stored_pixdim(img.to_bytes(), img.header, case.meta.get("stored_pixdim"))
    if case.rel_path.lower().endswith(".nii"):  # a set of .nii files (nnU-Net's file_ending): stored uncompressed
        return data
    return gzip.compress(data, compresslevel=6, mtime=0)


def _encode_mgz(array: np.ndarray, affine: np.ndarray, header: MGHHeader) -> bytes:
    """A FreeSurfer input's prediction as ``.mgz`` on its image's header, so ``freeview`` and FreeSurfer's
    tools overlay it as they do ``aseg.mgz``: uint8 class values, or int32 as ``aseg.mgz`` stores values
    above 255 (MGH has no 16-bit unsigned type)."""
    dtype = np.uint8 if array.dtype == np.uint8 else np.int32
    img = nib.MGHImage(array.astype(dtype), affine, header.copy())
    img.set_data_dtype(dtype)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _with_stored_pixdim(data: bytes, header: Any, pixdim: tuple[float, ...] | None) -> bytes:
    """The NIfTI bytes ``data`` with the voxel sizes its image stores where one is negative
    (``negative_pixdim``): nibabel writes their absolute values, which ITK's viewers read as the
    image mirrored. Set in the bytes, as nibabel refuses to write such a header."""
    if not pixdim:
        return data
    field, offset = type(header).template_dtype.fields["pixdim"][:2]
    values = np.asarray(pixdim, dtype=field.base.newbyteorder(header.endianness))
    start = offset + field.base.itemsize  # pixdim[1]
    return data[:start] + values.tobytes() + data[start + values.nbytes:]


def _in_image_dims(array: np.ndarray, header: Any) -> np.ndarray:
    """The prediction with its image's number of axes, so viewers and tools that compare shapes
    overlay it: a 2D image gets (x, y), not (x, y, 1); a one-volume 4D image (x, y, z, 1) gets
    (x, y, z, 1). A 4D image of several volumes keeps a 3D prediction of the volume segmented."""
    shape = tuple(header.get_data_shape()) if header is not None else ()
    if len(shape) == 2:
        return array[:, :, 0]
    if len(shape) == 4 and shape[3] == 1:
        return array[..., None]
    return array


def _to_pixel(case: Case) -> dict[int, int]:
    coding = case.meta.get("png_to_pixel") or {0: 0, 1: 255}
    return {int(k): int(v) for k, v in coding.items()}


def _to_class(case: Case) -> dict[int, int]:
    coding = case.meta.get("png_to_class") or {0: 0, 1: 1, 255: 1}
    return {int(k): int(v) for k, v in coding.items()}


def _colours(case: Case) -> dict[int, tuple[int, int, int]]:
    """class -> (r, g, b) of a dataset whose masks are colour-coded; empty for the other codings."""
    return {int(c): (int(r), int(g), int(b)) for c, (r, g, b) in (case.meta.get("png_colours") or {}).items()}


def _encode_png(case: Case, pred: np.ndarray) -> bytes:
    to_pixel = _to_pixel(case)
    bad = sorted(int(v) for v in np.unique(pred) if int(v) not in to_pixel)
    if bad:
        raise DataError(f"prediction for {case.case_id} holds classes {bad} that this dataset's "
                        f"PNG coding {to_pixel} (class -> pixel) cannot store")
    wide = max(to_pixel.values()) > 255  # 16-bit masks (0/65535): predictions in their values
    colours = _colours(case)  # colour-coded masks: RGB in their colours, to open beside them in the user's tools
    lut = np.zeros((256, 3) if colours else 256, dtype=np.uint16 if wide else np.uint8)
    for cls, pixel in to_pixel.items():
        lut[cls] = colours[cls] if colours else pixel
    image = Image.fromarray(lut[_as_stored(case, pred)])
    if case.meta.get("png_palette") and not colours:
        image.putpalette(list(case.meta["png_palette"]))  # shown in the dataset's own colours
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _encode_dicom(case: Case, pred: np.ndarray) -> bytes:
    """NIfTI on the series' geometry; SimpleITK writes to a file, so via a temporary folder."""
    image = sitk.GetImageFromArray(pred)
    z, y, x = case.spacing or (1.0, 1.0, 1.0)
    try:
        image.SetSpacing(case.meta.get("spacing", (x, y, z)))
        image.SetOrigin(case.meta.get("origin", (0.0, 0.0, 0.0)))
        image.SetDirection(case.meta.get("direction", (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "pred.nii.gz"
            with quiet_itk(f"the prediction of {case.case_id}"):
                sitk.WriteImage(image, str(path), useCompression=True)
            return path.read_bytes()
    except RuntimeError as err:
        raise DataError(f"cannot write the prediction of {case.case_id} as NIfTI on its DICOM "
                        f"geometry: {itk_message(err)}") from None


def _decode_dicom_label_object(case: Case, path: Path, segments: PredictionSegments, sop_class: str) -> np.ndarray:
    """A DICOM SEG or RT structure set prediction (``sop_class``: another tool's, or fewsam's own found where
    no NIfTI is) read as the dataset's DICOM labels of that kind are (``dicom_labels.KINDS``): each segment
    or ROI the class of its name, on the case's series."""
    grid = sitk.Image([int(n) for n in case.image.shape[:3][::-1]], sitk.sitkUInt8)
    grid.SetOrigin(case.meta["origin"])
    grid.SetSpacing(case.meta["spacing"])
    grid.SetDirection(case.meta["direction"])
    header = label_object(path, sop_class)
    classes = _as_dicom_spells_them(segments.classes)
    unknown = [s.name for s in header.segments if name_key(s.name) not in classes]
    if unknown:
        raise DataError(_unknown_segments_message(path, unknown, segments, header.kind.one, header.kind.part))
    return header.read_on(grid, case.meta["source_files"], classes)


def _as_dicom_spells_them(classes: SegmentClasses) -> SegmentClasses:
    """``classes`` named also as fewsam's DICOM objects spell a class's name (``unique_dicom_labels``: a
    backslash as a slash, cut to 64 bytes, numbered apart where two then coincide, in class order), so a
    prediction fewsam wrote reads back whatever its classes are named."""
    in_class_order = sorted(classes, key=lambda key: (classes[key], key))
    labels = unique_dicom_labels(in_class_order)
    return {**{name_key(label): classes[key] for key, label in zip(in_class_order, labels, strict=True)}, **classes}


def _encode_npz(case: Case, pred: np.ndarray) -> bytes:
    """Class indices under the key the case's tools read (``meta["prediction_key"]``: MedSAM's challenge
    evaluation reads ``segs``), else ``pred``."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{case.meta.get("prediction_key", "pred"): _as_stored(case, pred)})
    return buf.getvalue()


def _with_depth(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else array


def _decode_h5(case: Case, path: Path) -> np.ndarray:
    try:
        with h5py.File(path, "r") as f:
            if "pred" not in f or not isinstance(f["pred"], h5py.Dataset):
                raise DataError(f"{path} has no 'pred' dataset (keys: {list(f.keys())})")
            data = np.asarray(f["pred"][()])
    except H5_ERRORS as err:
        raise DataError(f"cannot read prediction {path} (truncated or not HDF5?): {err}") from None
    return _from_stored(case, to_label_array(data, path, "prediction"))


def _from_stored(case: Case, data: np.ndarray) -> np.ndarray:
    """The inverse of ``_as_stored``: an array as the case's file stores it, as (D, H, W)."""
    if case.meta.get("depth_axis") is not None and data.ndim == 3:  # the depth where its image stores it
        data = np.moveaxis(data, case.meta["depth_axis"], 0)
    return _with_depth(data)


def _decode_test_script_volume(case: Case, path: Path) -> np.ndarray:
    """A NIfTI prediction of an h5 or npz case as a test script saves the array it predicted, in the axes of
    the case's file ((D, H, W) for Synapse, (x, y, z) for LA): TransUNet's, SAMed's and SSL4MIS's 2D
    ``test_single_volume`` through SimpleITK's ``GetImageFromArray``, read back in SimpleITK's array order;
    SSL4MIS's 3D ``test_all_case`` and other nibabel users as ``Nifti1Image(prediction, np.eye(4))``, read
    back in the order it was stored, SimpleITK's reversed. The reading whose shape is the case file's is
    taken (``_reading_that_fits``), the header's writer deciding between two that both fit (a cube): read in
    the other order, it would be refused for its shape or, for a cube, scored transposed without a word. Its
    spacing and direction are not the case's, which keeps none, and are left aside."""
    itk_order = to_label_array(itk_volume.read_array(path), path, "prediction")
    readings = {ITK_ORDER: itk_order, STORED_ORDER: itk_order.transpose()}
    return _from_stored(case, _reading_that_fits(readings, _stored_shape(case), path, _test_script_order))


ITK_ORDER = "SimpleITK's array order (TransUNet's, SAMed's and SSL4MIS's 2D test scripts)"
STORED_ORDER = "the order nibabel stored it in (SSL4MIS's 3D test script)"
X_FIRST = "x first, as NIfTI stores an image (MONAI's SaveImage, SimpleITK)"
ROWS_FIRST = "rows first, as a picture's array is held"
ITK_UNITS = 10  # NIfTI's xyzt_units of mm and seconds, which ITK writes into every header it saves


def _stored_shape(case: Case) -> tuple[int, ...]:
    """The shape of the case's array as its file stores it (``_as_stored``), made without its voxels."""
    return _as_stored(case, np.broadcast_to(np.uint8(0), tuple(case.image.shape[:3]))).shape


def _nifti_writer(path: Path) -> str | None:
    """Which library wrote a NIfTI file, as its header shows it: "SimpleITK" (ITK sets the units to mm and
    seconds and a qform code), "nibabel" (an array saved with an affine alone, as nibabel and MONAI's
    NibabelWriter save it, leaves the units unset), None for other writers or an unreadable header."""
    try:
        with repairs_said_once(path):
            header = nib.load(str(path)).header
        units, qform = int(header["xyzt_units"]), int(header["qform_code"])
    except (*NIFTI_ERRORS, KeyError):
        return None
    if units == ITK_UNITS and qform > 0:
        return "SimpleITK"
    return "nibabel" if units == 0 else None


def _test_script_order(path: Path) -> str | None:
    """The axis order a test script's NIfTI was saved in, by the library its header shows wrote it."""
    return {"SimpleITK": ITK_ORDER, "nibabel": STORED_ORDER}.get(_nifti_writer(path) or "")


def _plane_order(path: Path) -> str | None:
    """A 2D NIfTI's axis order where its header shows it: x first from SimpleITK; nibabel's holds whichever
    array it was given (MONAI's x first, a numpy mask's rows first)."""
    return X_FIRST if _nifti_writer(path) == "SimpleITK" else None


def _reading_that_fits(readings: dict[str, np.ndarray], shape: tuple[int, ...], path: Path,
                       writers_order: Callable[[Path], str | None]) -> np.ndarray:
    """Of the readings of another tool's prediction (by the axis order each takes), the one of the case's
    ``shape``; where several fit (a cube, or equal sizes), the one its writer stores (``writers_order``), else
    the first, said once: the shape alone cannot tell them apart. None fitting, the first, which
    ``read_prediction`` refuses naming its shape."""
    fitting = [order for order, array in readings.items() if array.shape == shape]
    if len(fitting) < 2:
        return readings[fitting[0]] if fitting else next(iter(readings.values()))
    written_in = writers_order(path)
    if written_in in fitting:
        return readings[written_in]
    say_once(f"{path}: the shape {shape} reads in {' or in '.join(fitting)}, and its header does not settle "
             f"which; read in {fitting[0]}: a file saved otherwise scores transposed",
             key=f"axis-order-{path.parent}")
    return readings[fitting[0]]


def _decode_plane_nifti(case: Case, path: Path) -> np.ndarray:
    """A 2D image's prediction saved as NIfTI by a volume pipeline (MONAI's SaveImage: (x, y) or (x, y, 1))
    or from a numpy mask ((rows, columns)), read onto the image's rows and columns. NIfTI stores a 2D image
    x first, as fewsam reads a 2D NIfTI image (``to_slices``); a (rows, columns) array is taken where only it
    has the image's shape, and a square image's is read x first, said once (``_reading_that_fits``)."""
    try:
        with repairs_said_once(path):
            data = np.asarray(nib.load(str(path)).dataobj)
    except NIFTI_ERRORS as err:
        raise DataError(f"cannot read prediction {path} (truncated or not NIfTI?): {first_line(err)}") from None
    plane = to_label_array(_one_plane(data, path), path, "prediction")
    readings = {X_FIRST: to_slices(plane), ROWS_FIRST: plane[None]}
    return _reading_that_fits(readings, tuple(case.image.shape[:3]), path, _plane_order)


def _one_plane(data: np.ndarray, path: Path) -> np.ndarray:
    """A 2D prediction without the axes of one that volume writers add ((x, y, 1), MONAI's (x, y, 1, 1))."""
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise DataError(f"prediction {path} of a 2D image must hold one plane, got shape {data.shape}; save "
                        "one label map of class values per image")
    return data


@dataclass(frozen=True)
class PredictionSegments:
    """How a prediction saved as a 3D Slicer segmentation is read: each segment as the class of its name
    (``classes``: the dataset's class names, and the names its own segmentations give each class), as the
    dataset's labels are. ``labels_are_segmentations``: whether the dataset's labels are such files, so a
    segment naming no class cannot be read by its stored value instead."""

    classes: SegmentClasses
    labels_are_segmentations: bool = False


def prediction_segments(class_map: ClassMap | None, dataset: Any = None) -> PredictionSegments:
    """The ``PredictionSegments`` of a dataset of ``class_map`` (and, given, the ``dataset`` whose labels may
    be Slicer segmentations, matched to classes by name or by place, ``segment_classes``)."""
    classes = {name_key(name): value for value, name in (class_map.names if class_map else {}).items()}
    segmentations = bool(getattr(dataset, "segmentations", None))
    if segmentations:
        classes.update(dataset.segment_classes)
    return PredictionSegments(classes, segmentations)


def _decode_nifti(case: Case, path: Path, segments: PredictionSegments = PredictionSegments({})) -> np.ndarray:
    try:
        with repairs_said_once(path):  # nibabel's header repairs said once, not printed for each prediction
            image, geometry = (itk_volume.read_as_nifti(path) if itk_volume.itk_ending(path.name)
                               else (nib.load(str(path)), None))
            image = _segments_read(image, geometry, path, segments, case)
            data = np.asarray(_on_case_grid(case, image, path).dataobj)
    except NIFTI_ERRORS as err:
        raise DataError(f"cannot read prediction {path} (truncated or not NIfTI?): {first_line(err)}") from None
    data = without_time_axis(data)
    if data.ndim == 4:  # one volume, or one 0/1 volume per class (MONAI's AsDiscrete(to_onehot)), as a label's
        data = data[..., 0] if data.shape[3] == 1 else one_hot_to_indices(data, path, "prediction")
    if data.ndim not in (2, 3):
        raise DataError(f"prediction {path} must be 2D or 3D, got shape {data.shape}")
    return to_slices(to_label_array(data, path, "prediction"), case.meta.get("slice_axis", 2))


def _segments_read(image: Any, geometry: dict[str, Any] | None, path: Path, segments: PredictionSegments,
                   case: Case) -> Any:
    """A prediction that 3D Slicer saved as a segmentation (``<case>.seg.nrrd``, named as the dataset's labels)
    as one label of class values: each segment the class of its name, in whichever layer and under whichever
    value Slicer stored it. Read by its voxel values, a segmentation whose segments Slicer numbered in another
    order than the classes scored each class against another, and one of overlapping segments (several layers)
    was refused. A segment naming no class is refused, except in a one-layer file beside labels that are plain
    label maps, whose segments all name none: its values are then read as the classes they store."""
    found = segments_of(path)
    if found is None:
        return image
    unknown = [s.name.strip() for s in found if name_key(s.name) not in segments.classes]
    layers = geometry.get("components", 1) if geometry else 1
    if unknown and len(unknown) == len(found) and layers == 1 and not segments.labels_are_segmentations:
        return image
    if unknown:
        raise DataError(_unknown_segments_message(path, unknown, segments))
    return segments_as_label(image, geometry, found, segments.classes, path, _case_grid(case))


def _unknown_segments_message(path: Path, unknown: list[str], segments: PredictionSegments,
                              kind: str = "a 3D Slicer segmentation", part: str = "segment") -> str:
    shown = ", ".join(map(repr, unknown[:4])) + (", ..." if len(unknown) > 4 else "")
    names = ", ".join(dict.fromkeys(segments.classes)) or "none"
    return (f"prediction {path} is {kind} whose {part}(s) {shown} name no class of the dataset "
            f"({names}); name each {part} as its class, or save the prediction as a label map of class "
            "values")


def _on_case_grid(case: Case, image: Any, path: Path) -> Any:
    """A prediction another tool saved in another orientation (RAS, say) than its image, turned onto
    the image's voxel grid as a label is (``on_image_grid``): read voxel for voxel, it was scored
    mirrored or transposed without a word. A DICOM series' grid is its origin, spacing and direction
    (a NIfTI of an axial series that a RAS pipeline saved is mirrored in x and y against it)."""
    grid = _case_grid(case)
    return image if grid is None else on_image_grid(image, grid, path, "prediction")


def _case_grid(case: Case) -> Grid | None:
    """The voxel grid of ``case``'s image in NIfTI terms (shape along x, y, z and affine), None where
    the case keeps no geometry."""
    meta = case.meta
    if meta.get("affine") is not None and meta.get("header") is not None:
        return Grid(tuple(meta["header"].get_data_shape()), meta["affine"], meta.get("viewer_affine"))
    if case.format == "dicom" and all(meta.get(k) is not None for k in ("origin", "spacing", "direction")):
        depth, height, width = case.image.shape[:3]
        return Grid((width, height, depth), itk_volume.ras_affine(meta["origin"], meta["spacing"], meta["direction"]))
    return None


PNG_PREDICTION_ADVICE = ("a PNG prediction holds the dataset's own mask coding, as `fewsam predict` writes it: "
                         "was it written in another coding or for other classes? predict this split with a run "
                         "fitted on this dataset")


def _decode_png(case: Case, path: Path) -> np.ndarray:
    """A PNG prediction in the dataset's mask coding; other pixel values are refused with advice about
    the prediction, not the dataset's advice for its own masks (adding a classes.json). A palette-coded
    dataset's prediction is read as its palette indices, whatever colour its classes have; a colour-coded
    one's by its colours."""
    if colours := _colours(case):
        return read_colour_mask(path, colours, "prediction", PNG_PREDICTION_ADVICE)[0][None]
    pixels = read_mask_pixels(path, palette_indices=bool(case.meta.get("png_palette")))
    return mask_to_classes(pixels, _to_class(case), path, "prediction", PNG_PREDICTION_ADVICE)[None]


def _decode_npz(case: Case, path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            for own in dict.fromkeys((case.meta.get("prediction_key", "pred"), "pred")):
                if own in data.files:
                    return _with_depth(to_label_array(np.asarray(data[own]), path, "prediction"))
            key = next((k for k in MASK_KEYS if k in data.files), None)
            if key is None:
                raise DataError(f"{path} has no {case.meta.get('prediction_key', 'pred')!r} key (keys: {data.files})")
            return _with_depth(_decode_mask(np.asarray(data[key]), path))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read prediction {path} (truncated or not an npz?): {err}") from None


ENCODERS: dict[str, Any] = {"h5": _encode_h5, "nifti": _encode_nifti, "png": _encode_png,
                            "npz": _encode_npz, "dicom": _encode_dicom}
DECODERS: dict[str, Any] = {"h5": _decode_h5, "nifti": _decode_nifti, "png": _decode_png,
                            "npz": _decode_npz, "dicom": _decode_nifti}
