"""``fewsam predict --save-probabilities``: each case's class probabilities beside its prediction.

``<prediction name without its ending>.probabilities.npz`` holds ``probabilities`` (C, D, H, W)
float16 in the run's class order (background first), ``values`` (the label value of each class
index) and ``names``. They are the stage the method's label map is made from (``ProbabilityStage``
says which, per predictor); the label map is still the method's own answer, so where SAM refinement
or post-processing changes labels afterwards, their argmax differs there from the prediction.

Memory: predictors hand the probabilities over a slice at a time, and a CT of 300 slices of
512 x 512 with 4 classes is 600 MB in float16. ``np.savez`` needs the whole array in memory, and a
(C, D, H, W) array cannot be written to a stream in slice order (a slice is C planes far apart), so
each slice's C planes are written (``os.pwrite``) at their places in a float16 ``.npy`` on a
temporary file in the staging folder, which is then copied into the ``.npz`` (a zip, read by
``np.load`` as any npz) and removed. Filling 300 x 512 x 512 x 4 so raised the peak resident set by
about 1 MB (1.7 s on a 2-core CPU), where filling a memory map of the ``.npy`` raised it by 600 MB
(3.4 s: its dirty pages count as the process's until written back) and a preallocated float16 array
by 600 MB (3.9 s). The temporary file costs the volume's size on disk once more, for the time of one
copy, in the staging folder that is removed whole on failure.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from numpy.lib.format import open_memmap, write_array

from fewsam.atomic import sync_folder
from fewsam.data.writers import VOLUME_PREDICTION_ENDINGS
from fewsam.errors import RunError

PROBABILITIES_ENDING = ".probabilities.npz"
"""Never a prediction's name: fewsam reads a prediction under its case's own name, and an npz case
whose name would end so is refused while saving (``check_not_a_prediction_name``)."""

PREDICTION_ENDINGS = (*VOLUME_PREDICTION_ENDINGS, ".png", ".npz", ".h5", ".hdf5")


@dataclass(frozen=True)
class ProbabilityStage:
    """What a predictor's saved probabilities are (``made_from``: "the decoder's softmax, mirror-averaged")
    and the steps after them that can change its labels (``after``: "SAM refinement", "largest components")."""

    made_from: str
    after: tuple[str, ...] = ()

    def note(self, run: Path) -> str:
        """The one line said at run time when later steps change the labels, else ""."""
        if not self.after:
            return ""
        return (f"--save-probabilities: {run}'s label maps go through {' and '.join(self.after)} after "
                f"{self.made_from}; the probabilities saved are {self.made_from}, before them, and the label "
                "maps stay the method's answer (their argmax can differ where those steps changed a label)")


def has_probabilities(predictor: Any) -> bool:
    """Whether ``predictor`` can hand over the class probabilities its labels are made from."""
    return all(hasattr(predictor, name) for name in ("case_probabilities", "labels_from", "probability_stage"))


def probabilities_path(prediction: Path) -> Path:
    """``prediction``'s name without its ending (``.nii.gz``, ``.png``, ...) + ``PROBABILITIES_ENDING``."""
    name = prediction.name
    ending = next((e for e in PREDICTION_ENDINGS if name.lower().endswith(e)), Path(name).suffix)
    return prediction.with_name(name[: len(name) - len(ending)] + PROBABILITIES_ENDING)


def check_not_a_prediction_name(case_id: str, prediction: Path) -> None:
    """Refuse a case whose prediction would be named as another case's probabilities (an npz case
    ``x.probabilities``): one file would then be read as both."""
    if prediction.name.lower().endswith(PROBABILITIES_ENDING):
        raise RunError(f"case {case_id}'s prediction {prediction.name} would be named as another case's "
                       f"probabilities ({PROBABILITIES_ENDING}); predict without --save-probabilities, or rename "
                       "the case")


class ProbabilityFile:
    """One case's probabilities file, filled a slice at a time (``recorded``), then ``written``."""

    def __init__(self, path: Path, depth: int, values: list[int], names: list[str]) -> None:
        self.path, self.depth, self.values, self.names = path, depth, values, names
        self.scratch = path.with_name(f".{path.name}.npy.partial")
        self.array: int | None = None  # the open ``.npy``'s file descriptor
        self.offset, self.slice_shape = 0, (0,)
        self.filled = 0

    def recorded(self, probabilities: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """``probabilities`` (each slice's (C, H, W), in z order) passed on unchanged, each kept as it goes."""
        for slice_probabilities in probabilities:
            self._keep(np.asarray(slice_probabilities))
            yield slice_probabilities

    def _keep(self, probabilities: np.ndarray) -> None:
        if self.array is None:
            self._start(probabilities.shape)
        if self.filled >= self.depth or probabilities.shape != self.slice_shape:
            raise RunError(f"{self.path.name}: the predictor gave probabilities of shape {probabilities.shape} for "
                           f"slice {self.filled} of {self.depth}, not {self.slice_shape}")
        plane = probabilities.shape[1] * probabilities.shape[2] * 2
        for index, class_plane in enumerate(probabilities):
            os.pwrite(self.array, np.ascontiguousarray(class_plane, dtype=np.float16).tobytes(),
                      self.offset + (index * self.depth + self.filled) * plane)
        self.filled += 1

    def _start(self, slice_shape: tuple[int, ...]) -> None:
        """The ``.npy``'s header written (its data left to the file system as a hole), the file opened."""
        self.scratch.parent.mkdir(parents=True, exist_ok=True)
        header = open_memmap(self.scratch, mode="w+", dtype=np.float16,
                             shape=(slice_shape[0], self.depth, *slice_shape[1:]))
        self.offset, self.slice_shape = header.offset, tuple(slice_shape)
        del header
        self.array = os.open(self.scratch, os.O_WRONLY)

    def written(self) -> Path:
        """The npz, once every slice was kept; the temporary ``.npy`` removed."""
        if self.array is None or self.filled != self.depth:
            raise RunError(f"{self.path.name}: the predictor gave probabilities for {self.filled} of "
                           f"{self.depth} slices")
        self.close()
        if self.slice_shape[0] != len(self.values):
            raise RunError(f"{self.path.name}: {self.slice_shape[0]} classes of probabilities for the run's "
                           f"{len(self.values)} classes")
        # deflated as np.savez_compressed (nnU-Net's probabilities) stores them, at its fastest level: a
        # CT's 600 MB of float16 shrinks to a fraction (most pixels are sure of their class), streamed
        with zipfile.ZipFile(self.path, "w", zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as npz:
            npz.write(self.scratch, "probabilities.npy")
            npz.writestr("values.npy", _npy_bytes(np.asarray(self.values, dtype=np.int64)))
            npz.writestr("names.npy", _npy_bytes(np.asarray(self.names, dtype=str)))
        os.remove(self.scratch)
        _synced(self.path)
        return self.path

    def close(self) -> None:
        """Let the temporary file go (it stays, in the staging folder, until that is moved or removed)."""
        if self.array is not None:
            os.close(self.array)
            self.array = None


def _synced(path: Path) -> None:
    """``path``'s bytes and name on the disk, as ``atomic_write`` leaves a file: predict's journal, synced
    itself, names the case once its files are written, and a power cut must not keep the name of a case
    whose probabilities were still in memory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    sync_folder(path.parent)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def class_names(values: list[int], names_by_value: dict[int, str]) -> list[str]:
    """Each class index's name: "background" for the first, the run's names for the others."""
    return ["background"] + [names_by_value.get(int(v), str(v)) for v in values[1:]]
