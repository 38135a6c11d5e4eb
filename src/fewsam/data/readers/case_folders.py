"""Volumes as many public datasets unpack them: a folder per case, or image and label files side by side.

    a folder per case:   case_00000/imaging.nii.gz + segmentation.nii.gz          (KiTS19, KiTS23)
                         BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz   (BraTS)
                         s0000/ct.nii.gz + segmentations/<structure>.nii.gz       (TotalSegmentator)
    side by side:        volume-0.nii + segmentation-0.nii, in root or in sub-folders     (LiTS)
    patients' frames:    database/training/patient001/patient001_frame01.nii.gz + _gt   (ACDC's own release,
                         ``patient_frames``: a case per frame, testing/ the test split)

No folder names are fixed: a volume file (NIfTI, MetaImage, NRRD) is a label when a word of its name
(split at ``_``, ``-``, ``.`` and spaces) is a label word (``seg``, ``segmentation``, ``label``,
``mask``, ``gt``...), else an image. A label pairs with the image whose name, without its role word
(``volume``, ``imaging``, ``ct``...; ``seg``...), is the label's: ``segmentation-0`` with ``volume-0``,
``segmentation`` with ``imaging``. Root and each of its sub-folders are looked at:

- where every label of a folder pairs with one image, each image is a case (``<folder>/<image>``), with
  its label or without one; its subject is the folder where the images carry the folder's name
  (ACDC's patient folders), else the case itself;
- so are the images of a folder without labels, unless they carry its name (BraTS' validation cases);
- else a sub-folder is one case (its name): one image, or several (modalities, as BraTS stores them),
  of which fewsam segments one, said: the one named as an image (``imaging``, ``ct``...), else the first
  in natural order (BraTS: ``flair``); its label is its one label file (of several, the one named as a
  consensus, KiTS21's ``aggregated_MAJ_seg``, else the first; said), or,
  without one, a sub-folder named as labels holding one binary mask per structure (TotalSegmentator's
  ``segmentations/``), read as one class per structure, named after its file.

A table in root with a row for every case (TotalSegmentator's ``meta.csv``) gives the cases' group
attributes, and its ``split`` column, where it names every labelled case's, their splits.
To segment another modality or label file, list each case's files in a dataset.json's "dataset"
object (nnU-Net v2), which the nifti layout reads. Predictions are ``<case>.nii.gz`` (``.mha``, ``.nrrd``
for those inputs) on the image's grid; splits as computed for every layout (``computed_splits``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fewsam.data.attributes import AttributeTable, read_attribute_table
from fewsam.data.readers import patient_frames
from fewsam.data.readers.common import Entry, Read, classes_json_in, is_tool_folder, natural_sorted, split_name
from fewsam.data.readers.itk_volume import prediction_ending
from fewsam.data.readers.nifti import (Grid, NiftiDataset, _label_array, _nifti_files,
                                       case_name, say_unmatched_labels)
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.labels import check_class_count
from fewsam.progress import say_once

# "laendo": the 2018 Atrial Segmentation Challenge's left atrium cavity, <case>/laendo.nrrd beside lgemri.nrrd
LABEL_WORDS = frozenset({"seg", "segmentation", "segmentations", "label", "labels", "mask", "masks", "gt",
                         "groundtruth", "annotation", "annotations", "labelstr", "labelsts", "laendo"})
IMAGE_WORDS = frozenset({"image", "images", "imaging", "img", "volume", "vol", "ct", "mr", "mri", "scan"})
DATASET_JSON_HINT = ("to segment another, list each case's files in a dataset.json's \"dataset\" object (nnU-Net "
                     'v2: {"<case>": {"images": ["<case>/<file>"], "label": "<case>/<label file>"}})')


def name_words(name: str) -> list[str]:
    """The lower-case words of a file or folder name without its ending: ``BraTS2021_00000_seg.nii.gz``
    -> ``["brats2021", "00000", "seg"]``."""
    return [w for w in re.split(r"[_\-.\s]+", case_name(name).lower()) if w]


def is_label_name(name: str) -> bool:
    return any(w in LABEL_WORDS for w in name_words(name))


ROLE_PREFIX = re.compile(r"^(%s)(?=\d+$)" % "|".join(sorted(LABEL_WORDS | IMAGE_WORDS, key=len, reverse=True)))


def _key(name: str, role_words: frozenset[str]) -> str:
    """What pairs an image with its label: the name's words without its role word, also where the word
    is glued to the case number (BTCV's ``img0001`` + ``label0001``: ``0001``)."""
    return "_".join(ROLE_PREFIX.sub("", w) for w in name_words(name) if w not in role_words)


def _pairs(images: list[Path], labels: list[Path]) -> dict[Path, Path | None] | None:
    """image -> its label (or None) where every label pairs with one image by ``_key``; else None.
    A label's image words go too: MM-WHS names a pair ``ct_train_1001_image`` + ``ct_train_1001_label``,
    whose label keeps the image's modality word."""
    keys = {_key(p.name, IMAGE_WORDS): p for p in images}
    if not labels or len(keys) < len(images):
        return None
    found = {}
    for label in labels:
        image = keys.get(_key(label.name, LABEL_WORDS | IMAGE_WORDS))
        if image is None or image in found:
            return None
        found[image] = label
    return {image: found.get(image) for image in images}


def _volumes(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, labels) among the volume files right in ``folder``."""
    files = _nifti_files(folder)
    return [p for p in files if not is_label_name(p.name)], [p for p in files if is_label_name(p.name)]


def is_image_folder(folder: Path) -> bool:
    """A folder named as images alone (BTCV's ``img/``, ``images/``): a folder of cases, never one case's
    files, even where each image carries its name (``img/img0001.nii.gz``)."""
    words = name_words(folder.name)
    return len(words) == 1 and words[0] in IMAGE_WORDS


def _sibling_labels(folder: Path) -> list[Path]:
    """The label volumes of the label folders beside an image folder (BTCV's ``Training/img/img0001.nii.gz``
    + ``Training/label/label0001.nii.gz``), which ``case_folders`` leaves out as cases."""
    if not is_image_folder(folder):
        return []
    return [f for p in natural_sorted(folder.parent.iterdir(), key=lambda p: p.name)
            if p.is_dir() and is_label_name(p.name) and not is_image_folder(p) for f in _nifti_files(p)]


def case_folders(root: Path) -> list[Path]:
    """Root's sub-folders holding volume files, other than folders of labels (``labels/``)."""
    if not root.is_dir():
        return []
    return natural_sorted((p for p in root.iterdir() if p.is_dir() and not is_tool_folder(p.name)
                           and not is_label_name(p.name) and _nifti_files(p)), key=lambda p: p.name)


NNUNET_FOLDERS = ("imagesTr", "labelsTr", "imagesTs")


def detect(root: Path) -> bool:
    """Volume files in root or in its (non-label) sub-folders; not nnU-Net's folders without their
    dataset.json, which the nifti layout reads once it is there (as cases here, imagesTr's channel
    files would be unlabelled cases of their own)."""
    if any((root / name).is_dir() for name in NNUNET_FOLDERS):
        return False
    return (bool(_nifti_files(root)) or bool(case_folders(root)) or bool(patient_frames.patients_by_split_folder(root))
            or bool(image_folders_by_split(root)))


def image_folders_by_split(root: Path) -> dict[Path, Path]:
    """Image folders in root's sub-folders named as a split -> that split folder (BTCV's ``RawData/``:
    ``Training/img/`` beside ``Training/label/``, and ``Testing/img/``); only those holding volumes. The test
    folder comes last, as ``patients_by_split_folder`` orders ACDC's, so cases are listed from training on."""
    found: dict[Path, Path] = {}
    folders = natural_sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name) if root.is_dir() else []
    for split in sorted(folders, key=lambda p: p.name.lower() in patient_frames.TEST_FOLDERS):
        if split.name.lower() in patient_frames.SPLIT_FOLDERS:
            found.update({p: split for p in natural_sorted(split.iterdir(), key=lambda p: p.name)
                          if p.is_dir() and is_image_folder(p) and _nifti_files(p)})
    return found


class CaseFolderDataset(NiftiDataset):
    layout = "case-folders"
    reads_whole_tree = True  # every sub-folder of volumes is a case folder: predictions there would be read as cases

    def __init__(self, root: Path, entries: list[Entry], test_ids: list[str] | None = None,
                 val_ids: tuple[str, ...] = ()) -> None:
        structures = natural_sorted({case_name(p) for e in entries if e.label is not None and e.label.is_dir()
                                     for p in _nifti_files(e.label)})
        check_class_count(len(structures), f"the structure masks of {root}")
        class_map = classes_json_in(root) or (ClassMap({i + 1: s for i, s in enumerate(structures)})
                                               if structures else self.layout_classes(entries))
        self.structures = structures
        super().__init__(root, class_map, entries, test_ids or [], val_ids=val_ids)

    def layout_classes(self, entries: list[Entry]) -> ClassMap | None:
        """The classes a recognised release names, where no classes.json does (ACDC's frames: RV, Myo, LV);
        None where the label values are the classes found (``class1``, ...)."""
        return patient_frames.CLASS_MAP if any(patient_frames.is_frame_case(e) for e in entries) else None

    @property
    def storage(self) -> str:
        """What ``fewsam info`` says of the files: which file of a case is its image, and its label."""
        first = next(iter(self.entries.values()))
        image = Path(first.image).relative_to(self.root).as_posix()
        others = len(_volumes(first.image.parent)[0]) - 1 if first.image.parent.name == first.case_id else 0
        chosen = f" (one of {others + 1} image files per case; the others are not read)" if others else ""
        labelled = next((e for e in self.entries.values() if e.label is not None), None)
        if labelled is None:
            label = "no label files"
        elif labelled.label.is_dir():
            label = (f"one binary mask per structure ({Path(labelled.label).relative_to(self.root).as_posix()}/"
                     "<structure>.nii.gz) merged into class indices")
        else:
            label = f"class index per voxel ({Path(labelled.label).relative_to(self.root).as_posix()}, ...)"
        return (f"images {image}, ...{chosen}; labels: {label}; predictions: <case>.nii.gz (.mha, .nrrd, .mgz for "
                "those inputs) on the image's grid")

    def table_row(self, table: AttributeTable, case: str) -> dict:
        """The row of ``table`` (keyed by case id) for ``case``."""
        entry = self._entry(case)
        return table.row_for(case, entry.subject, entry.rel_path)

    def new_label_rel_path(self, entry: Entry) -> str:
        """Beside the image, named as it plus ``_seg``: read back as its label (``_pairs``)."""
        rel = Path(entry.image).relative_to(self.root)
        return rel.with_name(f"{case_name(rel)}_seg{prediction_ending(rel.name)}").as_posix()

    def label_rel_path(self, entry: Entry) -> str:
        if entry.label is not None and entry.label.is_dir():
            return self.new_label_rel_path(entry)
        return super().label_rel_path(entry)

    def _read(self, entry: Entry) -> Read:
        if entry.label is None or not entry.label.is_dir():
            return super()._read(entry)
        read = super()._read(replace(entry, label=None))
        grid = Grid(tuple(read.meta["header"].get_data_shape()), read.meta["affine"], read.meta.get("viewer_affine"))
        read.label = self._structure_label(entry.label, read.meta["slice_axis"], grid, read.image.shape[:3])
        return read

    def _structure_label(self, folder: Path, axis: int, grid: Grid, shape: tuple[int, ...]) -> np.ndarray:
        """The binary masks of ``folder``, one per structure, as one label of class indices (class c:
        the c-th structure name); a voxel in several masks takes the last one's class, said."""
        label = np.zeros(shape, dtype=np.uint8)
        overlap = 0
        for path in _nifti_files(folder):
            mask = _label_array(path, axis, grid) > 0
            overlap += int(np.count_nonzero(mask & (label > 0)))
            label[mask] = self.structures.index(case_name(path)) + 1
        if overlap:
            say_once(f"{folder}: {overlap} voxel(s) lie in the masks of several structures; each takes the class "
                     "of the last structure in name order", key=f"structure-overlap-{folder}")
        return label


def _flat_entries(root: Path, folder: Path, pairs: dict[Path, Path | None]) -> list[Entry]:
    """Each image of ``folder`` a case, with its label (``_pairs``)."""
    prefix = "" if folder == root else f"{folder.relative_to(root).as_posix()}/"
    named = folder != root and _named_after(folder, list(pairs))
    views = _view_infos(folder) if named else {}
    entries = []
    for image, label in pairs.items():
        case = prefix + case_name(image)
        entries.append(Entry(case_id=case, image=image, label=label, rel_path=case + prediction_ending(image.name),
                             subject=folder.name if named else case, attributes=_view_attributes(image, views)))
    return entries


INFO_OF_VIEW = re.compile(r"^info_(?P<view>[^.]+)\.cfg$", re.IGNORECASE)


def _view_infos(folder: Path) -> dict[str, dict[str, Any]]:
    """A patient folder's ``Info_<view>.cfg`` files (CAMUS: ``Info_2CH.cfg``, ``Info_4CH.cfg``, each ``Sex: F``,
    ``Age: 55``, ``ImageQuality: Good``, ``EF: 42.5``...) as the group attributes of that view's images, by
    view; their frame numbers left out (``patient_frames.info_attributes``)."""
    found = {}
    for path in natural_sorted(folder.iterdir(), key=lambda p: p.name):
        match = INFO_OF_VIEW.match(path.name)
        if match and path.is_file():
            found[match["view"]] = patient_frames.info_attributes(patient_frames.read_info(path))
    return found


def _view_attributes(image: Path, views: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The attributes of the view an image's name holds as a word (``patient0001_2CH_ED``: 2CH), with the view
    itself (``--group-by view``) and the phase its name says (``ED``, ``ES``, as ACDC's frames have theirs);
    none where it names no view of ``views``."""
    words = name_words(image.name)
    view = next((v for v in views if v.lower() in words), None)
    if view is None:
        return {}
    phase = next((p for p in patient_frames.PHASES if p.lower() in words), None)
    return {**views[view], "view": view, **({"phase": phase} if phase else {})}


def _case_entry(folder: Path, images: list[Path], labels: list[Path]) -> Entry:
    """One case folder: its image (``_chosen_image``) and label (or structure masks)."""
    image = _chosen_image(folder, images)
    label = _chosen_label(folder, labels)
    if label is None:
        label = next((p for p in natural_sorted(folder.iterdir(), key=lambda p: p.name)
                      if p.is_dir() and is_label_name(p.name) and _nifti_files(p)), None)
    return Entry(case_id=folder.name, image=image, label=label,
                 rel_path=folder.name + prediction_ending(image.name), subject=folder.name)


CONSENSUS_WORDS = frozenset({"maj", "majority", "consensus", "staple"})


def _chosen_label(folder: Path, labels: list[Path]) -> Path | None:
    """A case folder's label: its one label file; of several (annotators' and their fusions, as KiTS21's
    aggregated_{AND,MAJ,OR}_seg), the one named as the annotators' consensus (majority vote, STAPLE),
    else the first in natural order; said once."""
    if len(labels) < 2:
        return labels[0] if labels else None
    consensus = [p for p in labels if any(w in CONSENSUS_WORDS for w in name_words(p.name))]
    chosen = consensus[0] if len(consensus) == 1 else labels[0]
    why = "named as the annotators' consensus" if len(consensus) == 1 else "the first by name"
    say_once(f"{folder}: a case holds {len(labels)} label files ({', '.join(p.name for p in labels)}); fewsam reads "
             f"{chosen.name} ({why}; the same in every such case); {DATASET_JSON_HINT}", key="case-labels")
    return chosen


def _chosen_image(folder: Path, images: list[Path]) -> Path:
    """The one image fewsam segments of a case folder holding several (modalities): the one named
    as an image (``imaging``, ``ct``), else the first in natural order; said once."""
    if len(images) == 1:
        return images[0]
    named = [p for p in images if any(w in IMAGE_WORDS for w in name_words(p.name))]
    chosen = named[0] if len(named) == 1 else images[0]
    shown = ", ".join(p.name for p in images)
    say_once(f"{folder}: a case holds {len(images)} image files ({shown}); fewsam segments one image per case, "
             f"{chosen.name} ({'named as the image' if len(named) == 1 else 'the first by name'}; the same in every "
             f"such case), and does not read the others; {DATASET_JSON_HINT}", key="case-images")
    return chosen


def _folder_entries(root: Path, folder: Path) -> list[Entry]:
    images, labels = _volumes(folder)
    if not images:
        return []
    frames = patient_frames.frames_among(images)
    frame_pairs = _pairs(frames, labels) if labels else {p: None for p in frames}
    if frames and frame_pairs is not None:
        return patient_frames.frame_entries(folder, frame_pairs, [p for p in images if p not in frame_pairs])
    if not labels and folder != root and (beside := _sibling_labels(folder)):  # never labels outside root
        labels = beside if _pairs(images, beside) is not None else []
        if not labels:
            _say_unpaired_labels(beside[0].parent, beside)
    pairs = _pairs(images, labels)
    if not labels and len(images) > 1 and not _named_after(folder, images):
        pairs = {p: None for p in images}  # unlabelled cases side by side (LiTS' test volumes), not one case's files
    if is_image_folder(folder) and pairs is None:
        pairs = {p: None for p in images}
    if folder == root or is_image_folder(folder) or (pairs is not None and len(images) > 1):
        if pairs is None:
            pairs = {p: None for p in images}
            _say_unpaired_labels(folder, labels)
        return _flat_entries(root, folder, pairs)
    return [_case_entry(folder, images, labels)]


def _say_unpaired_labels(folder: Path, labels: list[Path]) -> None:
    """The label files of a flat folder that pair with no image are not used: say so, naming them alone.
    Its images are cases, not labels: a folder holding one volume (``a.nrrd``, to predict on) has no
    label to pair, and nothing to say."""
    if labels:
        say_unmatched_labels(folder, [], labels=labels, naming="as its image, with a label word in place of the "
                             "image's (volume-0.nii -> segmentation-0.nii, ct.nii.gz -> ct_seg.nii.gz)")


def label_files_only(root: Path) -> list[Path]:
    """The label volumes of a folder that holds no image volume: those right in it named as labels
    (``a_seg.nrrd``) and those in its label-named sub-folders (``labels/a.nrrd``); empty where it holds
    an image volume, in it or in a case folder."""
    if any(not is_label_name(p.name) for p in _nifti_files(root)) or case_folders(root):
        return []
    folders = [p for p in natural_sorted(root.iterdir(), key=lambda p: p.name) if p.is_dir() and is_label_folder(p)]
    return [*_nifti_files(root), *(f for folder in folders for f in _nifti_files(folder))]


def is_label_folder(folder: Path) -> bool:
    """A folder of label volumes (``labels/``, ``masks/``): named as labels, and holding volumes that only
    its name marks as labels (``labels/a.nrrd``). A dataset whose own name has a label word (Kvasir-SEG, or
    ``lits-seg/`` holding ``volume-0.nii`` + ``segmentation-0.nii``) is none: its labels carry their word."""
    files = _nifti_files(folder)
    return is_label_name(folder.name) and bool(files) and not any(is_label_name(p.name) for p in files)


def refuse_labels_only(root: Path) -> None:
    """A folder of label files without their images is refused, naming them: a label is never read as
    an image to segment, and "no images found" beside volume files would not say why."""
    labels = label_files_only(root)
    if labels:
        shown = ", ".join(p.relative_to(root).as_posix() for p in labels[:3]) + (", ..." if len(labels) > 3 else "")
        raise DataError(f"{root} holds label files only ({shown}: named as labels, or in a labels folder) and no "
                        "image to segment; put each image beside its label (a.nrrd + a_seg.nrrd) or in images/")


def _named_after(folder: Path, images: list[Path]) -> bool:
    """Whether every image's name starts with its folder's (BraTS' ``<case>/<case>_flair.nii.gz``), a
    folder of images named as such aside (BTCV's ``img/img0001.nii.gz``: no patient ``img``)."""
    return not is_image_folder(folder) and all(case_name(p).lower().startswith(folder.name.lower()) for p in images)


def _say_mixed_kinds(entries: list[Entry]) -> None:
    """Case folders whose chosen image differs in kind (one case's t1, the others' flair, where a case
    lacks a file the others have) are named: a model fitted on a mix of modalities is not what was meant."""
    kinds: dict[str, list[str]] = {}
    for e in entries:
        if e.image.parent.name == e.case_id:
            words = [w for w in name_words(e.image.name) if w not in name_words(e.case_id)]
            kinds.setdefault("_".join(words) or case_name(e.image), []).append(e.case_id)
    if len(kinds) > 1:
        shown = "; ".join(f"{kind}: {', '.join(cases[:3])}{' ...' if len(cases) > 3 else ''}"
                          for kind, cases in sorted(kinds.items(), key=lambda item: -len(item[1])))
        say_once(f"the case folders' images differ in kind ({shown}): a case lacks a file the others have, or "
                 f"names it otherwise; {DATASET_JSON_HINT}", key="case-image-kinds")


def open_case_folders(root: Path) -> CaseFolderDataset:
    by_split = patient_frames.patients_by_split_folder(root)
    patients = [p for folders in by_split.values() for p in folders]
    by_split_images = image_folders_by_split(root)
    entries = [e for folder in [root, *case_folders(root), *patients, *by_split_images]
               for e in _folder_entries(root, folder)]
    if not entries:
        refuse_labels_only(root)
        raise DataError(f"no volume images found in {root} or its case folders; expected .nii.gz (or .nii, .mha, "
                        ".nrrd) files")
    _say_mixed_kinds(entries)
    tested = patient_frames.patients_in_test_folders(by_split)
    tested |= {folder for folder, split in by_split_images.items() if split.name.lower() in patient_frames.TEST_FOLDERS}
    dataset = CaseFolderDataset(root, entries, [e.case_id for e in entries if e.image.parent in tested])
    table = cases_table(root, dataset)
    if table is not None:
        dataset.add_attributes(table)
        _adopt_split_column(dataset, table)
    return dataset


def cases_table(root: Path, dataset: CaseFolderDataset) -> AttributeTable | None:
    """A table in root with a row for every case (TotalSegmentator's ``meta.csv``: image_id, age,
    gender, institute, split): its columns are the cases' group attributes, as ``--attributes`` joins
    them, said once; None when root holds no such table."""
    for path in natural_sorted((p for p in root.iterdir() if p.suffix.lower() in (".csv", ".tsv") and p.is_file()
                                and not p.name.startswith(".")), key=lambda p: p.name):
        try:
            table = read_attribute_table(path)
        except DataError:
            continue
        if all(dataset.table_row(table, case) for case in dataset.entries):
            columns = sorted({c for row in table.rows.values() for c in row} - {table.key})
            say_once(f"{path}: a row for every case; its columns ({', '.join(columns)}) are the cases' attributes"
                     f"{' and its split column their splits' if SPLIT_COLUMN in columns else ''}",
                     key=f"cases-table-{path}")
            return table
    return None


SPLIT_COLUMN = "split"


def _adopt_split_column(dataset: CaseFolderDataset, table: AttributeTable) -> None:
    """The table's split column, where it names one for every labelled case, as the splits (the data
    names them, as an index CSV's column does for 2D folders); unlabelled cases stay in "test"."""
    labelled = [case for case, e in dataset.entries.items() if e.label is not None]
    named = {case: dataset.table_row(table, case).get(SPLIT_COLUMN) for case in labelled}
    if not labelled or not all(isinstance(v, str) and v for v in named.values()):
        return
    unlabelled = [case for case in dataset.entries if case not in named]
    splits: dict[str, list[str]] = {}
    for case, split in named.items():
        splits.setdefault(split_name(split), []).append(case)
    splits["test"] = splits.get("test", []) + unlabelled
    dataset.splits = {name: ids for name, ids in splits.items() if ids}
    dataset.computed_splits = ()

