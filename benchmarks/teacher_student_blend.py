"""Blend a distilled student with its teacher: class probabilities averaged, per weight.

A distill run (``fewsam fit distill --teacher RUN``) learns the class layout from the teacher's
pseudo-labels on the unlabelled pool, while the teacher (a few-shot SAM / FewMatch run, on frozen
SAM embeddings) keeps sharper boundaries. This scores, on the cases of LIST, the per-slice blend
``w * teacher + (1 - w) * student`` of the two runs' probabilities (each as the run predicts: its
own mirroring choice) for several weights ``w``, each followed by the student run's post-processing
(cavity rule, largest components), as mean volume Dice over the foreground classes. Gated rows
blend only the slices where the two runs agree on where the classes are (``agreement`` at least
the gate) and keep the student alone elsewhere: a teacher that swaps two classes on a patient
unlike its labelled ones then cannot pull the student's layout with it.

ACDC's training slices are cases of their own; volumes are regrouped by name
(``patientXXX_frameYY``), as ``volume_dice.py`` does. Choose a weight on ``val.list`` only.
Usage: .venv/bin/python benchmarks/teacher_student_blend.py STUDENT_RUN DATA LIST [CACHE]
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from fewsam.cache import EmbeddingCache
from fewsam.data import load_labelled_case, open_dataset
from fewsam.embedded import CaseSlices
from fewsam.inference import postprocess_volume, stack_volume
from fewsam.labels import index_lut
from fewsam.methods.fewshot import FewShotPredictor
from fewsam.methods.student import StudentPredictor, mirrored_probabilities, predict_images
from fewsam.metrics import dice_per_class
from fewsam.models.acceleration import acceleration_of_run
from fewsam.models.precision import resolve_precision
from fewsam.predict import load_run_model
from fewsam.runs import read_config

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
GATES = (0.5, 0.7)  # agreement below which a slice keeps the student alone (rows "w, gate g")


def agreement(a: np.ndarray, b: np.ndarray, classes: int) -> float:
    """Mean Dice between two (H, W) class-index maps over the foreground classes either shows: low
    where the two put the classes in different places (a swapped ventricle), whatever their boundaries."""
    scores = [2 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c))
              for c in range(1, classes) if np.any(a == c) or np.any(b == c)]
    return float(np.mean(scores)) if scores else 1.0


def student_probabilities(student: StudentPredictor, images: list[np.ndarray]) -> list[np.ndarray]:
    if student.mirror:
        return mirrored_probabilities(student.module, images, student.cfg, student.device)
    return [p.numpy() for p in predict_images(student.module, images, student.cfg, student.device)]


def main(student_run: Path, data: Path, split: str, cache_root: str = "~/.cache/fewsam") -> None:
    config = read_config(student_run)
    teacher_run = Path(config["distill"]["teacher"])
    teacher_run = teacher_run if teacher_run.is_absolute() else student_run.parent / teacher_run
    teacher_config = read_config(teacher_run)
    model = load_run_model(teacher_config, "cpu")
    cache = EmbeddingCache(cache_root, model, resolve_precision("auto", "cpu"))
    teacher = FewShotPredictor(teacher_run, model, "cpu", acceleration_of_run(teacher_config, "cpu"))
    student = StudentPredictor(student_run, "cpu")
    values = student.values
    dataset = open_dataset(data)
    rows = list(WEIGHTS) + [(w, g) for w in (0.5, 0.75) for g in GATES]
    pairs: dict = {row: defaultdict(lambda: ([], [])) for row in rows}
    for case_id in dataset.split(split):
        case = load_labelled_case(dataset, case_id, "score")
        images = [case.slice_image(z) for z in range(case.num_slices)]
        t_probs = [np.asarray(p) for p in teacher.probabilities(CaseSlices(case, cache, "cpu"))]
        s_probs = student_probabilities(student, images)
        key = re.sub(r"_slice_\d+$", "", case_id)
        agree = [agreement(t.argmax(axis=0), s.argmax(axis=0), len(values)) for t, s in zip(t_probs, s_probs)]
        for row in rows:
            w, gate = (row, None) if isinstance(row, float) else row
            blended = [s if gate is not None and a < gate else w * t + (1 - w) * s
                       for t, s, a in zip(t_probs, s_probs, agree)]
            volume = stack_volume([index_lut(values)[torch.from_numpy(b).argmax(dim=0).numpy()] for b in blended])
            volume = postprocess_volume(volume, student.cavity_rule, student.largest_component, values)
            pairs[row][key][0].append(volume.ravel())
            pairs[row][key][1].append(np.asarray(case.label).ravel())
    for row in rows:
        scores = [[dice_per_class(np.concatenate(p), np.concatenate(y), values[1:])[v] for v in values[1:]]
                  for p, y in pairs[row].values()]
        table = np.array(scores)
        low = int((table[:, -1] < 0.3).sum())
        name = f"{row:.2f}" if isinstance(row, float) else f"{row[0]:.2f}, gate {row[1]}"
        print(f"teacher weight {name}: volumes {len(table)} mean {table.mean():.4f} per class "
              f"{table.mean(axis=0).round(4).tolist()} last class below 0.3: {low}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
