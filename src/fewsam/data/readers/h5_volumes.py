"""3D volumes in h5 files with list files in root, as SSL4MIS and the semi-supervised 3D methods after
UA-MT (MC-Net, BCP...) keep the left atrium (2018 Atrial Segmentation Challenge) and Pancreas-CT:

    root/2018LA_Seg_Training Set/06SR5RBREL16DQ6M8LWS/mri_norm2.h5    a folder per case, or
    root/Pancreas_h5/image0001_norm.h5                                 the cases side by side
        image  (x, y, z) float, z the depth: their 3D code crops (w, h, d) patches
        label  (x, y, z) class indices
    root/train.list  test.list  [val.list]   (or .txt): one case per line

A case is named as the list files name it: its folder where that holds its one h5 file, else the file's name
without the ``_norm`` its preprocessing added (``image0001``). The volumes are cut into slices along their last
axis, and predictions are ``<case>.h5``, key ``pred``, in the image's (x, y, z) order. ``test`` is test.list:
these datasets' labelled held-out cases; ``train`` is train.list and ``val`` val.list, else drawn from
train.list's cases (``adopt_list_splits``), so that no validation case is trained on. The files carry no
spacing: metrics are in pixels. Classes from ``classes.json`` in root, else ``class<v>`` per label value.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fewsam.data.readers.acdc_h5 import h5_image_and_label, h5_image_shape
from fewsam.data.readers.common import (Entry, Read, computed_splits, files_below, list_file_in, natural_sorted,
                                        read_list_lines, to_image_array, to_label_array)
from fewsam.data.readers.sam_arrays import ClassesFromValues
from fewsam.errors import DataError

LISTED_SPLITS = ("train", "val", "test")
NEEDS = "these h5 volumes hold 'image' and 'label', (x, y, z)"
PREPROCESSED = re.compile(r"_norm\d*$", re.IGNORECASE)  # image0001_norm.h5, as the preprocessing scripts save it


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


class H5VolumeDataset(ClassesFromValues):
    layout = "h5-volumes"
    format = "h5"
    reads_whole_tree = True  # h5 files below root are cases: predictions written there would be read as cases
    storage = ("class index per voxel in 'label', (x, y, z), cut into slices along z; predictions: <case>.h5, "
               "key 'pred' (x, y, z)")

    def __init__(self, root: Path) -> None:
        cases = _cases(root)
        entries = [Entry(case_id=case, image=path, label=path, rel_path=f"{case}.h5", subject=case)
                   for case, path in cases.items()]
        super().__init__(root, entries)
        test = list_file_in(root, "test")
        if test is not None:  # labelled, and held out: these datasets' test cases (train.list, val.list: ``adopt_list_splits``)
            self.splits = computed_splits(entries, test=self._read_list_file(test.name))

    def num_slices(self, case_id: str) -> int:
        return int(h5_image_shape(self._entry(case_id).image, NEEDS)[-1])

    def _read(self, entry: Entry) -> Read:
        path = entry.image
        image, label = h5_image_and_label(path, entry.label is not None, NEEDS)
        if image.ndim != 3:
            raise DataError(f"{path}: 'image' must be a volume (x, y, z), got shape {image.shape}")
        image = to_image_array(np.ascontiguousarray(image.transpose(2, 0, 1)), path)
        if label is not None:
            label = to_label_array(np.ascontiguousarray(label.transpose(2, 0, 1)), path)
        return Read(image=image, label=label, meta={"ndim": 3, "depth_last": True})


def open_h5_volumes(root: Path) -> H5VolumeDataset:
    return H5VolumeDataset(root)
