"""Time of opening a DICOM dataset labelled by RT structure sets and of loading its cases.

An RT structure set of a CT holds thousands of contours (an ROI per organ, a contour per slice it is
drawn on), each a few hundred x, y, z values stored as decimal strings (DS). Opening the data folder
reads each structure set's header to pair it with its series and to list its ROIs; loading a case
fills its contours on the series' slices. This measures both on generated data of a planning CT's size.

Usage: .venv/bin/python benchmarks/rtstruct_read.py DIR STAGE [CASES ROIS SLICES]
  STAGE: data (writes DIR/data: CASES series of SLICES 512 x 512 int16 slices, default 3 and 180, each
  with an RT structure set of ROIS ROIs, default 30, drawn on every slice: a pixel-border polygon per
  ROI and slice, written by fewsam's own writer, that of ``predict --rtstruct``), time (opens DIR/data
  and loads each case, printing the wall time of the open, of each load and, within it, of the
  structure set's read alone).
Run the stages in this order, ``time`` in a process of its own for each code to compare.
"""

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid

from fewsam.data import open_dataset
from fewsam.data.readers.dicom import read_series, series_files
from fewsam.data.writers import write_dicom_rtstruct

SIZE = 512
SPACING = (0.8, 0.8, 2.5)  # x, y, z in mm
GRID = (6, 5)  # ROIs placed on a grid of cells across each slice (columns, rows)
DEFAULT_SIZES = (3, 30, 180)  # cases, ROIs, slices


def write_ct_series(folder: Path, depth: int, rng: np.random.Generator) -> None:
    """One file per slice of a (depth, 512, 512) int16 series with its frame of reference (which the
    structure set references), GDCM placing the slices by their positions."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1500, (depth, SIZE, SIZE), dtype=np.int16))
    image.SetSpacing(SPACING)
    uid, study, frame = generate_uid(), generate_uid(), generate_uid()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(depth):
        plane = image[:, :, z]
        tags = {"0020|000e": uid, "0020|000d": study, "0020|0052": frame, "0008|0060": "CT",
                "0020|0013": str(z + 1), "0020|0037": "1\\0\\0\\0\\1\\0", "0018|0050": str(SPACING[2]),
                "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z))))}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z + 1:04d}.dcm"))
        writer.Execute(plane)


def roi_label(depth: int, rois: int) -> np.ndarray:
    """(depth, 512, 512) class values 1..rois: each ROI an ellipse in its own cell of the slice, its radii
    (8 to 40 pixels by ROI) swelling and shrinking along the slices, so each slice's outline differs."""
    label = np.zeros((depth, SIZE, SIZE), dtype=np.uint8)
    cell_x, cell_y = SIZE // GRID[0], SIZE // GRID[1]
    y, x = np.ogrid[:SIZE, :SIZE]
    for k in range(rois):
        cx, cy = (k % GRID[0]) * cell_x + cell_x / 2, (k // GRID[0] % GRID[1]) * cell_y + cell_y / 2
        radius = 8 + 32 * k / max(rois - 1, 1)
        for z in range(depth):
            scale = 0.75 + 0.25 * np.sin(z / 9 + k)
            inside = ((x - cx) / (radius * scale)) ** 2 + ((y - cy) / (0.8 * radius * scale)) ** 2 < 1
            label[z][inside & (label[z] == 0)] = k + 1
    return label


def make_data(root: Path, cases: int, rois: int, depth: int) -> None:
    """The series, then each series' structure set written by ``write_dicom_rtstruct`` and moved into
    root/rt/ (a folder without images: it labels the series it references)."""
    rng = np.random.default_rng(0)
    for n in range(cases):
        write_ct_series(root / f"ct_{n:03d}", depth, rng)
    dataset = open_dataset(root)
    label = roi_label(depth, rois)
    names = {k: f"organ_{k:02d}" for k in range(1, rois + 1)}
    written = root.parent / "written"
    for case_id in dataset.split("all"):
        path = write_dicom_rtstruct(dataset.load(case_id), label, names, written)
        (root / "rt").mkdir(exist_ok=True)
        shutil.move(path, root / "rt" / f"{case_id}.dcm")
    shutil.rmtree(written)
    size = sum(p.stat().st_size for p in (root / "rt").iterdir()) / cases / 2 ** 20
    print(f"{cases} case(s), {rois} ROIs x {depth} slices = {rois * depth} contours each, {size:.1f} MiB a structure set")


def time_open_and_load(root: Path) -> None:
    """The wall time of the open, then of each case's load and of its structure set's read alone."""
    start = time.perf_counter()
    dataset = open_dataset(root)
    print(f"open: {time.perf_counter() - start:.2f} s ({len(dataset.split('all'))} case(s))")
    for case_id in dataset.split("all"):
        start = time.perf_counter()
        case = dataset.load(case_id)
        loaded = time.perf_counter() - start
        folder = dataset.entries[case_id].image
        names = series_files(folder)
        grid = read_series(folder, names)
        start = time.perf_counter()
        structure_set = dataset.label_objects[dataset.entries[case_id].label]
        label = structure_set.read_on(grid, names, dataset.segment_classes)
        read = time.perf_counter() - start
        assert np.array_equal(label, case.label)
        print(f"load {case_id}: {loaded:.2f} s, of which the structure set {read:.2f} s "
              f"({len(np.unique(label)) - 1} classes)")


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] not in ("data", "time"):
        sys.exit(__doc__)
    root = Path(sys.argv[1]) / "data"
    if sys.argv[2] == "data":
        given = [int(value) for value in sys.argv[3:6]]
        make_data(root, *(given + list(DEFAULT_SIZES[len(given):])))
    else:
        time_open_and_load(root)


if __name__ == "__main__":
    main()
