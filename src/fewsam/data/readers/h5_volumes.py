"""3D volumes in h5 files with list files in root, as SSL4MIS and the semi-supervised 3D methods after
UA-MT (MC-Net, BCP...) keep the left atrium (2018 Atrial Segmentation Challenge) and Pancreas-CT:

    root/2018LA_Seg_Training Set/06SR5RBREL16DQ6M8LWS/mri_norm2.h5    a folder per case, or
    root/Pancreas_h5/image0001_norm.h5                                 the cases side by side
        image  (x, y, z) float, z the depth: their 3D code crops (w, h, d) patches
        label  (x, y, z) class indices
    root/train.list  test.list  [val.list]   (or .txt): one case per line

A case is named as the list files name it: its folder where that holds its one h5 file, else the file's name
without the ``_norm`` its preprocessing added (``image0001``). The volumes are cut into slices along their depth:
the axis a ``dataset.json`` in root names (``{"depth_axis": "first"}``; ``declared_depth_axis``), else
``depth_axis_of``: the last axis, as LA and Pancreas-CT store it, unless the volumes' shapes show another axis
standing out from two in-plane axes of about one length, as SSL4MIS' ACDC and BraTS volumes and many users' own
files store it first (D, H, W): cut along their last axis, those would give H x D slices. A volume whose own
shape stands out along another axis than the one taken is refused (``_depth_axis_for``), never cut across its
slices. Predictions are
``<case>.h5``, key ``pred``, in the image's own axis order. ``test`` is test.list:
these datasets' labelled held-out cases; ``train`` is train.list and ``val`` val.list, else drawn from
train.list's cases (``adopt_list_splits``), so that no validation case is trained on. The files carry no
spacing: metrics are in pixels. Classes from ``classes.json`` in root, else ``class<v>`` per label value.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np

from fewsam.data.readers.acdc_h5 import H5CaseFiles, h5_image_and_label, h5_image_shape
from fewsam.data.readers.common import (Entry, Read, computed_splits, files_below, list_file_in, natural_sorted,
                                        read_json_object, read_list_lines, to_image_array, to_label_array)
from fewsam.data.readers.sam_arrays import ClassesFromValues
from fewsam.errors import DataError
from fewsam.progress import say_once

LISTED_SPLITS = ("train", "val", "test")
NEEDS = "these h5 volumes hold 'image' and 'label', (x, y, z) or (z, y, x)"
PREPROCESSED = re.compile(r"_norm\d*$", re.IGNORECASE)  # image0001_norm.h5, as the preprocessing scripts save it
LAST = 2
# How many times more an axis must differ from the nearer of the other two than those differ from each other to
# be the depth: LA's 112 x 112 x 80 crops and ACDC's 10 x 256 x 216 volumes stand out, a cube does not
STANDS_OUT = 1.25
AXIS_NAMES = ("first", "middle", "last")
DATASET_JSON = "dataset.json"
DEPTH_AXIS_KEY = "depth_axis"
DEPTH_AXIS_HELP = (f'write {{"{DEPTH_AXIS_KEY}": "first"}} ("first", "middle" or "last") in {DATASET_JSON} beside '
                   "the lists")


def _list_files(root: Path) -> dict[str, Path]:
    return {name: path for name in LISTED_SPLITS if (path := list_file_in(root, name)) is not None}


def _h5_files(root: Path) -> list[Path]:
    """The h5 files below root, at most two folders deep (a case folder inside the folder of cases)."""
    return [p for p in files_below(root) if p.suffix.lower() == ".h5" and len(p.relative_to(root).parts) <= 3]


def case_of(path: Path, root: Path) -> str:
    """A file's case: its folder where that holds its one h5 file (``<case>/mri_norm2.h5``), else its name
    without the preprocessing's ``_norm`` (``image0001_norm.h5`` -> ``image0001``)."""
    folder = path.parent
    if folder != root and sum(1 for p in folder.iterdir() if p.suffix.lower() == ".h5") == 1:
        return folder.name
    return PREPROCESSED.sub("", path.stem)


def _cases(root: Path) -> dict[str, Path]:
    """case -> its h5 file, where root's list files name cases of those files (else {})."""
    lists = _list_files(root)
    if not lists:
        return {}
    files = {}
    for path in natural_sorted(_h5_files(root), key=lambda p: p.relative_to(root).as_posix()):
        files.setdefault(case_of(path, root), path)
    listed = {line.strip() for path in lists.values() for line in read_list_lines(path)}
    return files if listed & set(files) else {}


def detect(root: Path) -> bool:
    return bool(_cases(root))


def odd_axis(shape: tuple[int, ...]) -> int | None:
    """The axis of a 3D shape whose length stands out from the other two (shorter or longer than both by
    ``STANDS_OUT`` times their own ratio): a stack of slices is that deep along its depth, its slices about as
    high as wide. None where no axis does (a cube, three different lengths)."""
    for axis, size in enumerate(shape):
        low, high = sorted(max(s, 1) for i, s in enumerate(shape) if i != axis)
        gap = low / max(size, 1) if size < low else size / high if size > high else 1.0
        if gap >= STANDS_OUT * high / low:
            return axis
    return None


def depth_axis_of(shapes: Iterable[tuple[int, ...]]) -> tuple[int, Counter[int | None]]:
    """The axis the volumes of ``shapes`` are cut along, and how many volumes show each axis (``odd_axis``; None:
    none stands out): the axis most volumes show, a volume showing none counting for the last axis, where LA and
    Pancreas-CT store their depth; ties go to the last axis. One axis for the whole dataset, so that no volume of
    unusual proportions is cut across the others' slices."""
    shown = Counter(odd_axis(shape) for shape in shapes if len(shape) == 3)
    votes = Counter({axis: count for axis, count in shown.items() if axis is not None})
    votes[LAST] += shown[None]
    best = max(votes.values(), default=0)
    return (LAST if votes[LAST] == best else max(votes, key=votes.__getitem__)), shown


def declared_depth_axis(root: Path) -> int | None:
    """The axis root's dataset.json names as the volumes' depth (``"depth_axis"``: "first", "middle", "last"),
    None where there is no such key: volumes whose proportions show no depth (cubes) or a set whose files
    disagree are cut as their owner says, the same way by every command."""
    path = root / DATASET_JSON
    if not path.is_file():
        return None
    spec = read_json_object(path)
    if DEPTH_AXIS_KEY not in spec:
        return None
    value = spec[DEPTH_AXIS_KEY]
    if value not in AXIS_NAMES:
        raise DataError(f"{path}: {DEPTH_AXIS_KEY!r} is {value!r}; name the axis the volumes are cut along: "
                        f"{DEPTH_AXIS_HELP}")
    return AXIS_NAMES.index(value)


def _say_depth_axis(root: Path, taken: int, shown: Counter[int | None]) -> None:
    """The axis taken, said once unless every volume shows its last axis as the depth (as LA's and Pancreas-CT's
    do): a user whose volumes are cut across their slices reads here which axis was taken, and why."""
    if set(shown) <= {LAST}:
        return
    standing = [f"the {name} in {shown[axis]}" for axis, name in enumerate(AXIS_NAMES) if shown[axis]]
    none = [f"none in {shown[None]} (counted for the last)"] if shown[None] else []
    say_once(f"{root}: the h5 volumes are cut into slices along their {AXIS_NAMES[taken]} axis, taken as their depth: "
             f"of {sum(shown.values())} volumes, the axis standing out in length from two in-plane axes is "
             f"{', '.join(standing + none)}", key=f"h5-depth-axis-{root}")


class H5VolumeDataset(H5CaseFiles, ClassesFromValues):
    layout = "h5-volumes"
    format = "h5"
    reads_whole_tree = True  # h5 files below root are cases: predictions written there would be read as cases
    storage = ("class index per voxel in 'label', (x, y, z) or (z, y, x), cut into slices along the depth (the axis "
               "standing out, else the last); predictions: <case>.h5, key 'pred' in the image's axis order")

    def __init__(self, root: Path) -> None:
        self.declared_axis = declared_depth_axis(root)
        cases = _cases(root)
        entries = [Entry(case_id=case, image=path, label=path, rel_path=f"{case}.h5", subject=case)
                   for case, path in cases.items()]
        super().__init__(root, entries)
        if list_file_in(root, "train") is None:  # train and val computed here, of the labelled files alone
            self.find_unlabelled()
        test = list_file_in(root, "test")
        # test.list: labelled, and held out: these datasets' test cases (train.list, val.list: ``adopt_list_splits``)
        self.splits = computed_splits(entries, test=self._read_list_file(test.name) if test is not None else ())

    @cached_property
    def depth_axis(self) -> int:
        """The axis every volume is cut along: the one dataset.json declares, else ``depth_axis_of`` the volumes'
        shapes as their headers say."""
        if self.declared_axis is not None:
            return self.declared_axis
        axis, shown = depth_axis_of(h5_image_shape(entry.image, NEEDS) for entry in self.entries.values())
        _say_depth_axis(self.root, axis, shown)
        return axis

    def _depth_axis_for(self, path: Path, shape: tuple[int, ...]) -> int:
        """The dataset's depth axis, for one volume of ``shape`` whose own proportions do not contradict it: one
        standing out along another axis (``odd_axis``) is stored otherwise than the rest, and cut along the
        dataset's axis its slices would be cuts across its real ones, trained on and scored as if right."""
        axis = self.depth_axis
        own = odd_axis(shape)
        if own is not None and own != axis:
            why = (f"as {self.root / DATASET_JSON} declares" if self.declared_axis is not None
                   else "as most of its volumes show")
            raise DataError(f"{path}: its volume of shape {tuple(shape)} stands out along its {AXIS_NAMES[own]} axis, "
                            f"but the dataset's volumes are cut into slices along their {AXIS_NAMES[axis]} ({why}); "
                            f"store its depth on the {AXIS_NAMES[axis]} axis as the others do, or name the axis all "
                            f"share: {DEPTH_AXIS_HELP}")
        return axis

    def num_slices(self, case_id: str) -> int:
        path = self._entry(case_id).image
        shape = h5_image_shape(path, NEEDS)
        return int(shape[self._depth_axis_for(path, shape)]) if len(shape) == 3 else 1

    def _read(self, entry: Entry) -> Read:
        path = entry.image
        image, label = h5_image_and_label(path, entry.label is not None, NEEDS)
        if image.ndim != 3:
            raise DataError(f"{path}: 'image' must be a volume (x, y, z) or (z, y, x), got shape {image.shape}")
        axis = self._depth_axis_for(path, image.shape)
        image = to_image_array(np.ascontiguousarray(np.moveaxis(image, axis, 0)), path)
        if label is not None:
            label = to_label_array(np.ascontiguousarray(np.moveaxis(label, axis, 0)), path)
        return Read(image=image, label=label, meta={"ndim": 3, "depth_axis": axis})


def open_h5_volumes(root: Path) -> H5VolumeDataset:
    return H5VolumeDataset(root)
