"""``open_dataset``: look at a folder, recognise its layout, return a lazily loading Dataset.

Only the index (file names, list files, CSVs, dataset.json) is read when a dataset is opened;
images and labels are read by ``Dataset.load`` (a label-named folder given alone has its first files
read, to tell label maps from images: ``refuse_label_folder``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from fewsam.data.attributes import AttributeTable, attribute_columns, read_attribute_table
from fewsam.data.readers import (acdc_h5, case_folders, cine_frames, dicom, fairseg_npz, h5_volumes, mnms2,
                                 nifti, png_folder, sam_arrays)
from fewsam.data.readers.common import IndexedDataset, files_below, is_tool_folder, listed_names, strip_suffixes
from fewsam.data.types import Case, Dataset
from fewsam.errors import DataError
from fewsam.progress import say_once

# name -> (detect, open, what the folder looks like); tried in this order.
LAYOUTS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], IndexedDataset], str]] = {
    "acdc-h5": (acdc_h5.detect, acdc_h5.open_acdc_h5,
                "data/*.h5 + train_slices.list/val.list (SSL4MIS ACDC)"),
    "nifti": (nifti.detect, nifti.open_nifti,
              "imagesTr/ + labelsTr/ + dataset.json (nnU-Net v2 / v1 / MSD), or images/ (+ labels/) with .nii.gz "
              "(or .mha, .mhd, .nrrd, .mgz)"),
    "synapse-npz": (sam_arrays.detect_synapse, sam_arrays.open_synapse,
                    "train_npz/<case>_sliceNNN.npz (keys image, label) and/or test_vol_h5/<case>.npy.h5 "
                    "(TransUNet / SAMed Synapse)"),
    "h5-volumes": (h5_volumes.detect, h5_volumes.open_h5_volumes,
                   "<case>/mri_norm2.h5 or <case>_norm.h5 (keys image, label; x, y, z or z, y, x) + "
                   "train.list/test.list (SSL4MIS, UA-MT LA and Pancreas-CT)"),
    "medsam-npz": (sam_arrays.detect_medsam, sam_arrays.open_medsam,
                   "<case>.npz with keys imgs (+ gts) per case, flat or in modality folders (MedSAM / LiteMedSAM)"),
    "medsam-npy": (sam_arrays.detect_medsam_npy, sam_arrays.open_medsam_npy,
                   "imgs/<case>-NNN.npy + gts/<case>-NNN.npy, the slices of a case (MedSAM's training folders)"),
    "fairseg-npz": (fairseg_npz.detect, fairseg_npz.open_fairseg,
                    "*.npz per subject (Harvard-FairSeg), flat or in Training/ and Test/"),
    "dicom": (dicom.detect, dicom.open_dicom,
              "a folder of DICOM files (.dcm, or scanner-named with the DICM marker) per series "
              "(+ labels/<series>.nii.gz, or a DICOM SEG or RT structure set of the series)"),
    "mnms": (cine_frames.detect, cine_frames.open_cine_frames,
             "M&Ms' OpenDataset: Training/Labeled/<code>/<code>_sa.nii.gz (4D cine) + <code>_sa_gt.nii.gz, "
             "Training/Unlabeled/, Validation/, Testing/ and the table of subjects (External code, ED, ES, Vendor...): "
             "a case per labelled time frame"),
    "mnms2": (mnms2.detect, mnms2.open_mnms2,
              "M&Ms-2: dataset/<id>/<id>_{SA,LA}_{ED,ES}.nii.gz + _gt (the _CINE files not read) and "
              "dataset_information.csv (SUBJECT_CODE, DISEASE, VENDOR...): a case per view and phase"),
    "case-folders": (case_folders.detect, case_folders.open_case_folders,
                     "a folder per case holding its image and label volumes (KiTS case_00000/imaging.nii.gz + "
                     "segmentation.nii.gz; BraTS <case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz; TotalSegmentator "
                     "<case>/ct.nii.gz + segmentations/<structure>.nii.gz), or image and label volumes side by side "
                     "(LiTS volume-0.nii + segmentation-0.nii): labels named with seg, segmentation, label, mask "
                     "or gt; ACDC's release database/{training,testing}/patient001/patient001_frame01.nii.gz + _gt, "
                     "a case per frame"),
    "png": (png_folder.detect, png_folder.open_png_folder,
            "index.csv with image,mask columns, image/ + mask/ folders, or X.png + X_mask.png "
            "(.png .jpg .jpeg .tif .tiff .bmp .gif)"),
}


def open_dataset(root: str | Path, attributes_csv: str | Path | None = None) -> IndexedDataset:
    """Open a data folder in any known layout; ``attributes_csv`` adds group attributes.

    The CSV is keyed by case id, patient/subject id or image file name (see
    ``fewsam.data.attributes``); its columns override attributes found with the data. A folder
    without any label file opens for prediction: "val" then holds every case, a note says so,
    and ``dataset.has_any_label()`` is False.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        refuse_file_as_data(root)
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {root} {what}; give the dataset's root folder")
    refuse_prediction_folder(root)
    refuse_label_folder(root)
    for name, (detect, open_layout, _) in LAYOUTS.items():
        if name == "case-folders":  # it reads any folder of volumes, also one inside an nnU-Net dataset
            refuse_folder_inside(root)
        if name == "fairseg-npz":  # it takes any npz, also a prediction's, which the array layouts did not take
            refuse_prediction_arrays(root)
        if detect(root):
            dataset = open_layout(root)
            break
    else:
        refuse_run_folder(root)
        refuse_empty_folder(root)
        refuse_analyze_pairs(root)
        refuse_folder_inside(root)
        refuse_nnunet_without_json(root)
        refuse_folder_above(root)
        refuse_cases_of_listed_volumes(root)
        case_folders.refuse_labels_only(root)
        known = "; ".join(f"{name}: {desc}" for name, (_, _, desc) in LAYOUTS.items())
        raise DataError(f"no known data layout in {root}; expected one of — {known}")
    if isinstance(dataset, IndexedDataset):
        refuse_predictions_read_as_cases(root, dataset)
        dataset.adopt_list_splits()
    dataset.settle_unlabelled()
    if attributes_csv is not None:
        _join(dataset, attributes_csv)
    return dataset


# Endings of the archives datasets are handed over in (in lower case): given as --data, they are
# no folder, and "is not a folder" would not say that fewsam reads the unpacked files
ARCHIVE_ENDINGS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".7z", ".rar")


def refuse_file_as_data(path: Path) -> None:
    """An archive of a dataset, or one image or volume, given as --data is named as what it is, with
    the folder to give instead: fewsam reads a dataset's folder, and neither unpacks archives nor
    takes one file for a dataset."""
    if not path.is_file():
        return
    name = path.name.lower()
    archive = next((e for e in ARCHIVE_ENDINGS if name.endswith(e)), None)
    if archive is not None:
        command = f"unzip {path}" if archive == ".zip" else f"tar xf {path}" if archive.startswith(".t") else None
        how = f" ({command})" if command else ""
        raise DataError(f"{path} is an archive ({archive}), not a data folder; unpack it{how} and give the "
                        "unpacked dataset's folder as --data")
    if _is_picture(path.name):
        raise DataError(f"{path} is one image file, not a data folder; give the folder that holds it "
                        f"({path.resolve().parent}), or put it in a folder of its own to predict it alone")


def refuse_empty_folder(root: Path) -> None:
    """A folder holding no file to read, or only what tools leave (macOS's ``.DS_Store`` and
    ``__MACOSX/``, hidden files) is named as empty: "no known data layout" and every layout
    fewsam knows would not say that nothing is there (a download not yet unpacked, a wrong path)."""
    if any(not p.name.startswith(".") for p in files_below(root)):
        return
    raise DataError(f"data folder {root} holds no image files{_what_is_there(root)}; give the folder where the "
                    "dataset's images are (was its archive unpacked?)")


def _what_is_there(folder: Path) -> str:
    """What a folder without a file to read holds, to show: nothing, only what tools leave, or empty folders."""
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return ""
    if all(name.startswith(".") or is_tool_folder(name) for name in entries):
        return f" (it holds only {', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}, which tools leave)"
    return " (its folders hold no file)"


def refuse_analyze_pairs(root: Path) -> None:
    """A folder of Analyze 7.5 ``.hdr``/``.img`` pairs (the format before NIfTI, which SPM and older
    scanners still write) is named as such, with the conversion to NIfTI: fewsam reads NIfTI, and "no known
    data layout" would not say that the volumes were seen but not read."""
    headers = [p for p in files_below(root) if p.name.lower().endswith(".hdr") and not p.name.startswith(".")
               and any(p.with_suffix(s).is_file() for s in (".img", ".IMG"))]
    if headers:
        example = headers[0]
        raise DataError(f"{root} holds Analyze .hdr/.img pairs ({example.relative_to(root).as_posix()}, ...), which "
                        "fewsam does not read; convert each pair to NIfTI, e.g. with nibabel: "
                        f"nib.save(nib.load('{example.name}'), '{example.name[:-4]}.nii.gz')")


def refuse_prediction_arrays(root: Path) -> None:
    """A folder of npz predictions given as data (``segs`` as ``fewsam predict`` and the MedSAM challenge
    tools write them, ``pred`` as fewsam writes FairSeg and Synapse predictions) is named as such, with the
    keys found: FairSeg's reader takes any npz, and ended on a missing image key (slo_fundus) that said
    nothing of predictions."""
    first = _first_npz_read(root)
    keys = set() if first is None else sam_arrays.npz_keys(first)
    if first is not None and sam_arrays.is_prediction_npz(keys):
        raise DataError(f"{root} is a folder of predictions ({first.relative_to(root).as_posix()} holds the keys "
                        f"{', '.join(sorted(keys))}, no image), not data; give the data folder as --data and this "
                        f"folder as --pred: `fewsam evaluate --data DATA --pred {root}`")


# What the prediction tools leave beside their predictions, and nothing else writes into a data folder:
# nnU-Net v2's nnUNetv2_predict writes its arguments, plans.json and dataset.json into the output folder
NNUNET_PREDICT_ARGS = "predict_from_raw_data_args.json"
NNUNET_PLANS = "plans.json"
NNUNET_DATASET = "dataset.json"


def refuse_prediction_folder(root: Path) -> None:
    """A folder of predictions given as data (``fewsam info PRED``, ``fewsam evaluate --data PRED``) is named
    as such, with the options to give: every reader of volumes or pictures would take its label maps for
    images to segment, and ``predict`` would segment the predictions again.

    Only what the prediction tools write beside their predictions tells such a folder, never the look of its
    files (a folder of label maps alone is ``refuse_label_folder``'s): ``predict.log`` of ``fewsam predict``,
    nnU-Net's ``predict_from_raw_data_args.json``, or its ``plans.json`` with ``dataset.json`` (an nnU-Net
    raw dataset holds a ``dataset.json`` but no plans: it is data). MONAI's SaveImage leaves no such file,
    and its ``<case>_seg.nii.gz`` files alone are refused as labels without images by the readers.

    Only root is judged here: a ``predict.log`` deeper down marks its own folder, not the data folder (an
    nnU-Net user's ``DATA/imagesTs_pred`` beside ``imagesTr/``, which no reader enters), and is refused
    only if the reader took its files for cases (``refuse_predictions_read_as_cases``)."""
    found = _prediction_marker(root)
    if found is not None:
        raise DataError(f"{root} is a folder of predictions ({found}), not data; give the data folder as --data "
                        f"and this folder as --pred: `fewsam evaluate --data DATA --pred {root}`")


def _prediction_marker(folder: Path) -> str | None:
    """What in ``folder`` says a prediction tool wrote it, in the words of the error; None if nothing does."""
    from fewsam.runs import PREDICT_LOG

    if (folder / PREDICT_LOG).is_file():
        return f"{PREDICT_LOG} of `fewsam predict`"
    if (folder / NNUNET_PREDICT_ARGS).is_file():
        return f"nnU-Net's {NNUNET_PREDICT_ARGS}"
    if (folder / NNUNET_PLANS).is_file() and (folder / NNUNET_DATASET).is_file():
        return f"nnU-Net's {NNUNET_PLANS} and {NNUNET_DATASET}"
    return None


def refuse_predictions_read_as_cases(root: Path, dataset: IndexedDataset) -> None:
    """A prediction folder below the data folder whose files the reader took for cases (a folder of
    pictures or volumes read whole, with ``fewsam predict``'s output moved into it) is named, with what
    to do: its predictions would be segmented, or trained on, as the dataset's images. One that no reader
    enters (``DATA/imagesTs_pred`` of an nnU-Net dataset) is left alone: the data folder is still data."""
    marked: dict[Path, str | None] = {}
    for entry in dataset.entries.values():
        for folder in _folders_between(root, entry.image):
            if folder not in marked:
                marked[folder] = _prediction_marker(folder)
            if marked[folder] is not None:
                raise DataError(f"{folder} inside the data folder {root} is a folder of predictions "
                                f"({marked[folder]}), and its files were read as cases ({entry.case_id}); move it "
                                "out of the data folder, and give it to `fewsam evaluate --pred`")


def _folders_between(root: Path, file: Path) -> list[Path]:
    """The folders that hold ``file`` below ``root``, root itself left out (``refuse_prediction_folder``
    judged it); none where ``file`` lies outside root (a list file may name images elsewhere)."""
    try:
        parts = Path(file).parent.relative_to(root).parts
    except ValueError:
        return []
    return [root.joinpath(*parts[:depth]) for depth in range(1, len(parts) + 1)]


def _first_npz_read(root: Path) -> Path | None:
    """The npz file a reader of the npz layouts would read first: in root, in Synapse's train_npz/, in
    FairSeg's split folders, else in the modality folders MedSAM keeps."""
    folders = (root, root / sam_arrays.SYNAPSE_TRAIN, *fairseg_npz.split_folders(root))
    found = (sam_arrays.first_npz(folder, 0) for folder in folders)
    first = next((path for path in found if path is not None), None)
    return first or sam_arrays.first_npz(root, sam_arrays.MEDSAM_DEPTH)


def refuse_run_folder(root: Path) -> None:
    """A fewsam run folder given as data (``fewsam info RUN``, or RUN and DATA swapped in ``predict``)
    is named as such: "no known data layout" and the list of every layout would not say what is wrong."""
    from fewsam.runs import CONFIG, TEXT_LOG

    if (root / CONFIG).is_file() and (root / TEXT_LOG).is_file():
        raise DataError(f"{root} is a fewsam run folder ({CONFIG}, {TEXT_LOG}), not a data folder; give the folder of "
                        "images and labels as data, and the run first: `fewsam predict RUN --data DATA`")


def refuse_folder_inside(root: Path) -> None:
    """An image or label folder of a dataset given as data (--data DATASET/imagesTr) names the dataset's root."""
    parent = _layout_above(root)
    if parent is not None:
        raise DataError(f"{root} is a folder inside the dataset {parent} ({SUBFOLDERS[root.name]} layout); "
                        f"give the dataset's root: --data {parent}")


def refuse_label_folder(root: Path) -> None:
    """A dataset's label folder given as data (``--data DATASET/labelsTr``, ``DATASET/masks``) names the
    dataset's folder: every reader would take its labels for images to segment, and predict them or count
    them as unlabelled cases. Where the images lie beside it, the parent folder is named; where none do, a
    folder named as nothing but labels (``_is_label_folder_name``) is refused if the files it holds look like
    label maps (``label_map_values``): a folder named masks/ may hold a user's images, and those are read."""
    if not _named_as_labels(root) or _pairs_within(root):
        return
    refuse_folder_inside(root)  # a recognised dataset above is named with its layout
    images = _images_beside(root)
    if images is not None:
        parent = root.resolve().parent
        raise DataError(f"{root} is the label folder of the dataset {parent} (its images are in {images.name}/); "
                        f"given as data, its labels would be read as images to segment; give the parent folder: "
                        f"--data {parent}")
    values = label_map_values(root) if _is_label_folder_name(root.name) else None
    if values is not None:
        shown = ", ".join(f"{v:g}" for v in values)
        image_folder = _image_folder_name(root.name)
        raise DataError(f"{root} holds label maps, not images (a label folder's name, and its files hold only the "
                        f"values {shown}); given as data, its labels would be read as images to segment; give the "
                        f"folder holding the images and this one beside them ({image_folder}/ + {root.name}/) as "
                        "--data, or the images' own folder to predict")


def _is_label_folder_name(name: str) -> bool:
    """Whether a folder's whole name is a label word of the readers (masks/, labelsTr/, gt/, ground_truth/):
    a name that only holds one (kidney_seg_project/, Kvasir-SEG/) may well be a folder of images."""
    return re.sub(r"[_\-.\s]+", "", name.lower()) in (case_folders.LABEL_WORDS | png_folder.MASK_WORDS
                                                         | png_folder.MASK_FOLDER_NAMES)


def _image_folder_name(label_folder: str) -> str:
    """The image folder a dataset keeps beside a label folder so named: imagesTr/ beside labelsTr/, else images/."""
    if "labels" not in label_folder.lower():
        return "images"
    return re.sub("labels", lambda m: "Images" if m[0][0].isupper() else "images", label_folder, flags=re.IGNORECASE)


LABEL_MAP_VALUES = 16  # at most so many distinct values: a label map's classes (or a 0/255 mask), no image's greys
LABEL_MAP_FILES_LOOKED_AT = 2  # files read to tell label maps from images: the first ones, a cheap look
LABEL_MAP_VOXELS_LOOKED_AT = 1_000_000  # of a large volume, every n-th voxel up to about this many


def label_map_values(folder: Path) -> list[float] | None:
    """The values of the first files of ``folder`` (``LABEL_MAP_FILES_LOOKED_AT``) where each holds only a
    few whole numbers (``LABEL_MAP_VALUES``), as label maps do; None where one holds more (an image's
    intensities), where one cannot be read (its reader then says why), or where the folder holds none."""
    files = [p for p in files_below(folder) if _is_picture(p.name)][:LABEL_MAP_FILES_LOOKED_AT]
    values: set[float] = set()
    for path in files:
        found = _few_whole_values(path)
        if found is None:
            return None
        values |= found
    return sorted(values) if files else None


def _few_whole_values(path: Path) -> set[float] | None:
    """The distinct values of one 2D image or volume file where they are few whole numbers, else None."""
    try:
        array = png_folder.read_image(path, None) if png_folder.is_image_name(path.name) else nifti.stored_values(path)
        array = np.asarray(array)
        if array.dtype.kind not in "biuf":
            return None
        flat = array.reshape(-1)
        values = np.unique(flat[:: max(1, flat.size // LABEL_MAP_VOXELS_LOOKED_AT)])
    except DataError:
        return None
    if values.size > LABEL_MAP_VALUES or not np.all(np.isfinite(values)) or np.any(values != np.rint(values)):
        return None
    return {float(v) for v in values}


# Names of a dataset's image folder beside its label folder (imagesTr/ beside labelsTr/), in any letter case
IMAGE_FOLDER_NAMES = frozenset({"image", "images", "imagestr", "imagests"})


def _named_as_labels(folder: Path) -> bool:
    """Named as a label folder by the volume readers (labels/, labelsTr/, seg/) or by the 2D reader
    (masks/, *_Annotations/)."""
    return (case_folders.is_label_name(folder.name)
            or png_folder.names_masks(folder.name))


def _pairs_within(folder: Path) -> bool:
    """Whether a label-named folder holds a dataset itself (Kvasir-SEG/images/, a study_labels/ holding
    ..._Input/ and ..._Annotations/, lits-seg/volume-0.nii beside segmentation-0.nii, BUSI's X.png beside
    X_mask.png): such a folder is data, not a dataset's label folder."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(p.is_dir() and (p.name.lower() in IMAGE_FOLDER_NAMES or _named_as_labels(p)) for p in entries):
        return True
    files = [p for p in entries if p.is_file()]
    return any(case_folders.is_label_name(p.name) for p in files) and any(
        not case_folders.is_label_name(p.name) for p in files)


def _images_beside(folder: Path) -> Path | None:
    """The image folder beside a label folder: one named as images (images/, imagesTr/) that holds files, else
    one that holds the image of one of its labels (``Training_Input/x.jpg`` beside
    ``Training_Annotations/x_segmentation.png``); None when there is none. Only labels directly in the folder are
    matched by name: the same file names below two copies of one dataset would match anywhere."""
    siblings = sorted(p for p in folder.resolve().parent.iterdir() if p.is_dir() and p.name != folder.name
                      and not p.name.startswith(".") and not _named_as_labels(p))
    counterpart = folder.name.lower().replace("labels", "images")  # labelsTs/ -> imagesTs/ before imagesTr/
    named = sorted((p for p in siblings if p.name.lower() in IMAGE_FOLDER_NAMES and next(files_below(p), None)),
                   key=lambda p: p.name.lower() != counterpart)
    if named:
        return named[0]
    label = next((p for p in sorted(folder.iterdir()) if p.is_file() and _is_picture(p.name)), None)
    if label is None:
        return None
    stem = _image_stem(label.name)
    return next((p for p in siblings if any(f.is_file() and _is_picture(f.name)
                                            and strip_suffixes(f.name).lower() in (stem, stem + "_0000")
                                            for f in p.iterdir())), None)


def _is_picture(name: str) -> bool:
    """A 2D image or a volume file, as the readers read them (not a list, table or note)."""
    return png_folder.is_image_name(name) or bool(nifti.volume_ending(name))


def _image_stem(label_name: str) -> str:
    """The lower-case name (no ending) of the image a label file belongs to: ``x_mask.png`` -> ``x``."""
    stem = strip_suffixes(label_name).lower()
    for suffix in png_folder.MASK_STEM_SUFFIXES[1:]:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


# Layouts that a folder holding a dataset one level down is not already taken for (the others look at
# every file below their root, and found none there)
LOOKED_AT_FROM_ABOVE = ("acdc-h5", "nifti", "synapse-npz", "medsam-npz", "medsam-npy", "fairseg-npz", "mnms", "mnms2", "case-folders")


def refuse_nnunet_without_json(root: Path) -> None:
    """nnU-Net's imagesTr/ without the dataset.json that says its classes and file ending, as nnU-Net
    needs it too: named, with what to write, rather than every layout fewsam knows."""
    if (root / "imagesTr").is_dir() and not (root / "dataset.json").is_file():
        raise DataError(f"{root} holds nnU-Net's imagesTr/ but no dataset.json; write one as nnU-Net needs it, e.g. "
                        '{"labels": {"background": 0, "organ": 1}, "channel_names": {"0": "CT"}, '
                        '"file_ending": ".nii.gz"}')


def refuse_folder_above(root: Path) -> None:
    """A folder above the dataset (an archive's ``BraTS2021_Training_Data/`` unpacked into ``downloads/``)
    names the sub-folder(s) that hold one, rather than every layout fewsam knows. A folder of labels
    (``labels/a.nrrd``, ``case_folders.is_label_folder``) is none: given as data, its labels would be read as
    images to segment."""
    below = [sub for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                                   and not case_folders.is_label_folder(p))
             if any(LAYOUTS[name][0](sub) for name in LOOKED_AT_FROM_ABOVE)]
    if below:
        shown = ", ".join(str(p) for p in below[:3]) + (", ..." if len(below) > 3 else "")
        raise DataError(f"no known data layout in {root}, but its sub-folder{'s' if len(below) > 1 else ''} {shown} "
                        f"hold{'' if len(below) > 1 else 's'} a dataset; give that folder: --data {below[0]}")


def refuse_cases_of_listed_volumes(root: Path) -> None:
    """The folder of a 3D h5 dataset's cases (``Pancreas_h5/``, ``2018LA_Seg_Training Set/``) given as data,
    whose list files lie in the folder above: that folder is named, as it holds what says the cases and splits."""
    parent = root.resolve().parent
    if parent != root.resolve() and h5_volumes.detect(parent):
        raise DataError(f"{root} holds the cases of the dataset {parent}, whose list files (train.list, test.list) "
                        f"lie there; give that folder: --data {parent}")


# Folders of a layout that users give as --data by mistake, with the layouts that name them. Only
# these layouts are tried on the parent: their checks look at a few names (the others scan a tree).
SUBFOLDERS = {"imagesTr": "nifti", "labelsTr": "nifti", "imagesTs": "nifti", "images": "nifti",
              "labels": "nifti", "data": "acdc-h5"}


def _layout_above(folder: Path) -> Path | None:
    """The dataset whose image or label folder ``folder`` is (--data DATASET/imagesTr, an nnU-Net
    user's habit): its parent, when that is recognised as such a dataset; else None."""
    layout = SUBFOLDERS.get(folder.name)
    parent = folder.resolve().parent
    return parent if layout is not None and LAYOUTS[layout][0](parent) else None


def _join(dataset: IndexedDataset, attributes_csv: str | Path) -> None:
    """Join a user's table. Its id column is the one its name says (``read_attribute_table``); where that
    matches no case, or repeats an id, the column that matches the most: a table whose first column numbers
    its rows ("Image ID" 1, 2, ...) or names the patient of each image, and names the images in another
    ("Bild"), was refused as matching nothing, or as holding a patient twice."""
    try:
        first: AttributeTable | None = read_attribute_table(attributes_csv)
    except DataError as err:  # an id column named as such, holding an id twice
        first, refusal = None, err
    table = first
    if first is None or not _matches(dataset, first):
        others = _other_keyings(attributes_csv, first.key if first else None)
        table = max(others, key=lambda other: _matches(dataset, other), default=first)
    if table is None or (first is None and not _matches(dataset, table)):
        raise refusal
    if not _matches(dataset, table):
        key = (first or table).key
        raise DataError(f"no row of {attributes_csv} matches a case of {dataset.root}, by its {key!r} column or "
                        "another; one column must hold case ids, patient ids or image file names")
    if first is None or table.key != first.key:
        say_once(f"{attributes_csv}: cases matched by its column {table.key!r}", key=f"key-{attributes_csv}")
    dataset.add_attributes(table)


def _matches(dataset: IndexedDataset, table: AttributeTable) -> int:
    """How many cases of ``dataset`` have a row in ``table``."""
    return sum(table.row_key(e.case_id, e.subject, e.rel_path, listed_names(dataset.root, e)) is not None
               for e in dataset.entries.values())


def _other_keyings(path: str | Path, key: str | None) -> list[AttributeTable]:
    """``path`` keyed by each of its columns but ``key`` whose ids are unique."""
    others = []
    for column in attribute_columns(path):
        try:
            if column != key:
                others.append(read_attribute_table(path, key=column))
        except DataError:  # a column with an id twice keys no table
            continue
    return others


def load_labelled_case(dataset: Dataset, case_id: str, purpose: str) -> Case:
    """``dataset.load`` for work that needs the ground truth; a clear error naming ``purpose`` if absent."""
    case = dataset.load(case_id)
    if case.label is None:
        raise DataError(f"{case_id} of {dataset.root} has no label to {purpose}")
    return case
