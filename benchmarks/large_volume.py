"""Memory and time of embed -> predict -> evaluate on one CT-sized volume (512 x 512 x DEPTH slices, int16
HU, 0.8 x 0.8 x 2.5 mm, as KiTS, LiTS and TotalSegmentator store theirs), one stage per process.

The encoder is a cheap stand-in (average pooling and a 1 x 1 convolution) whose embeddings have
LiteMedSAM's size, 256 x 64 x 64 (2 MiB a slice in float16), in front of SAM's real prompt encoder
and mask decoder: what a stage holds per slice is what it holds with LiteMedSAM, only the
encoding is faster. Quality is not measured (the decoder trains for a few steps).

Usage: .venv/bin/python benchmarks/large_volume.py DIR STAGE [DEPTH]
  STAGE: data (writes DIR/data: 3 small cases of 8 slices to fit on, ct_003 of DEPTH slices, default 200),
  fit (DIR/run: few-shot, 10 steps), embed (ct_003 into DIR/cache), predict / predict-mirrored
  (ct_003 into DIR/pred, single view or the four mirror views), evaluate (DIR/pred).
Each stage prints its wall time and peak RSS (``ru_maxrss``); run them in this order.
"""

import json
import resource
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

import fewsam.api
import fewsam.predict
from fewsam.evaluate import evaluate
from fewsam.methods.fewshot import FewShotConfig
from fewsam.models import registry
from fewsam.models.sam import Preprocessing
from fewsam.runs import write_manifest

SPACING = (0.8, 0.8, 2.5)  # x, y, z in mm


def stand_in_sam():
    """SAM with a cheap encoder of LiteMedSAM's embedding size (256 x 64 x 64 from a 256-pixel frame)."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Conv2d(3, 256, 1))
    return registry._assemble("tinysam", encoder, Preprocessing(256, "unit"))


def ct_volume(rng: np.random.Generator, depth: int, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(D, H, W) int16 HU (air, a body ellipse, an organ with a lesion) and its uint8 label (1 organ, 2 lesion)."""
    z, y, x = np.ogrid[:depth, :size, :size]
    body = ((y - size / 2) ** 2 / (0.42 * size) ** 2 + (x - size / 2) ** 2 / (0.35 * size) ** 2) < 1
    noise = rng.standard_normal((depth, size, size), dtype=np.float32)
    image = np.where(body, noise * 15, noise * 30 - 900)
    organ = ((z - depth / 2) ** 2 / (0.35 * depth) ** 2 + (y - 0.45 * size) ** 2 / (0.12 * size) ** 2
             + (x - 0.4 * size) ** 2 / (0.1 * size) ** 2) < 1
    lesion = ((z - depth / 2) ** 2 / (0.12 * depth) ** 2 + (y - 0.47 * size) ** 2 / (0.03 * size) ** 2
              + (x - 0.42 * size) ** 2 / (0.03 * size) ** 2) < 1
    image[organ] += 60
    image[lesion] += 60
    label = organ.astype(np.uint8) + lesion.astype(np.uint8)
    return np.clip(image, -1024, 3000).astype(np.int16), label


def save(array: np.ndarray, path: Path) -> None:
    """(D, H, W) as NIfTI (x, y, z) with ``SPACING``."""
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), np.diag([*SPACING, 1.0]))
    image.set_data_dtype(array.dtype)
    nib.save(image, str(path))


def write_data(root: Path, depth: int) -> None:
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i, slices in enumerate([8, 8, 8, depth]):
        image, label = ct_volume(rng, slices)
        save(image, root / "imagesTr" / f"ct_{i:03d}_0000.nii.gz")
        save(label, root / "labelsTr" / f"ct_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "organ": 1, "lesion": 2},
                                                   "numTraining": 4}))
    (root / "splits_final.json").write_text(json.dumps([{"train": ["ct_000", "ct_001"], "val": ["ct_002"]}]))
    (root.parent / "large.list").write_text("ct_003\n")


def mirrored_run(run: Path, mirror: bool) -> Path:
    """A copy of RUN predicting with or without the four mirror views (``postprocess.json``), no SAM refinement."""
    copy = run.with_name(f"{run.name}-{'mirrored' if mirror else 'single'}")
    if not copy.exists():
        import shutil

        shutil.copytree(run, copy)
        post = copy / "postprocess.json"
        post.write_text(json.dumps({**json.loads(post.read_text()), "mirror": mirror, "sam_refine": False}))
        write_manifest(copy)
    return copy


def main(folder: Path, stage: str, depth: int) -> None:
    torch.set_num_threads(1)
    for module in (registry, fewsam.api, fewsam.predict):
        module.load_model = lambda *args, **kwargs: stand_in_sam()
    data, split, cache = folder / "data", folder / "large.list", folder / "cache"
    start = time.perf_counter()
    if stage == "data":
        write_data(data, depth)
    elif stage == "fit":
        fewsam.api.fit("fewshot", fewsam.api.FitOptions(data=str(data), run=str(folder / "run"), labeled_cases=1,
                                                        cache=str(cache), precision="fp32", show_progress=False),
                       FewShotConfig(steps=10, val_every=10, views=2))
    elif stage == "embed":
        print(fewsam.api.embed_dataset(data, split=str(split), cache_root=cache, precision="fp32",
                                       show_progress=False))
    elif stage in ("predict", "predict-mirrored"):
        run = mirrored_run(folder / "run", stage == "predict-mirrored")
        fewsam.api.predict(run, data, folder / "pred", split=str(split), cache_root=cache, precision="fp32",
                           show_progress=False, overwrite=True)
    elif stage == "evaluate":
        print(json.dumps(evaluate(folder / "pred", data, split=str(split), show_progress=False)["mean"]))
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{stage}: {time.perf_counter() - start:.1f} s, peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 200)
