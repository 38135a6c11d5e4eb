"""SAM-Match at test time: the student's confident regions prompt the run's own SAM (beyond the paper).

SAM-Match as published predicts with the student alone. Its pseudo-label quality
tables show SAM's masks, prompted by the student's boxes and clicks, beating the student's own
on the unlabelled slices (BUSI, ACDC with clicks); ``fewsam predict --refine-with-sam`` applies
the very same labeller to test slices: student probabilities -> prompts -> the SAM decoder the
run ended with -> composed labels. Where the student is confident on no class, or SAM was not
asked about a class the student predicts (IGNORE in the pseudo-label), the student's argmax
stands, so refinement can only change pixels of classes SAM was prompted for.

Refinement helps where the run's SAM beats its student and hurts where it does not (box-only
prompts on nested anatomy), so ``fewsam predict --refine-if-better`` decides per run, the way
nnU-Net chooses its post-processing: both ways on the run's own validation cases, the higher
mean Dice wins, the decision is kept in RUN/refinement.json and reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from fewsam.cache import EmbeddingCache
from fewsam.data import load_labelled_case, open_dataset
from fewsam.data.types import Case
from fewsam.embedded import CaseSlices, EmbeddedSlice
from fewsam.errors import DataError, RunError
from fewsam.inference import stack_volume
from fewsam.labels import index_lut
from fewsam.methods.samatch import SAM_DIR, PseudoLabeller, SamMatchConfig, load_final_sam
from fewsam.methods.student import StudentPredictor, streamed_probabilities
from fewsam.metrics import volume_score
from fewsam.models.sam import SamModel
from fewsam.probabilities import ProbabilityStage
from fewsam.progress import say_once, tracked
from fewsam.runs import read_config, write_json
from fewsam.self_prompting import merge_refined

REFINEMENT = "refinement.json"


def check_refinable(run_dir: Path, config: dict) -> None:
    """A clear error, before any model is loaded, for runs that have no SAM of their own."""
    if config.get("method") != "samatch":
        raise RunError(f"--refine-with-sam needs a SAM-Match run; {run_dir} is {config.get('method')!r}")
    if not config.get("samatch", {}).get("use_sam", True):
        raise RunError(f"{run_dir} was fitted with --no-sam: it has no SAM to refine with")


class SamRefinedPredictor:
    """Predicts with a SAM-Match run: the best-validated student, its confident regions refined by SAM."""

    def __init__(self, run_dir: Path, model: SamModel, device: str = "cpu") -> None:
        config = read_config(run_dir)
        check_refinable(run_dir, config)
        # a run whose config names no prompt_clicks was fitted (and its SAM tuned) on boxes alone
        self.cfg = SamMatchConfig.from_json({"prompt_clicks": "none", **config["samatch"]})
        self.student = StudentPredictor(run_dir, device)
        self.values = self.student.values
        self.sam, self.device = model, device
        load_final_sam(model, Path(run_dir) / SAM_DIR)

    def predict_both(self, case: Case, slices: Sequence[EmbeddedSlice],
                     probabilities: Iterable[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(student alone, refined by SAM) label volumes from one pass of the student (``probabilities``:
        that pass's, as ``case_probabilities`` streams them). The student's probabilities are made and
        refined a batch of slices at a time: a volume's at once would be 1.2 GB for 300 CT slices of
        512 x 512 and 4 classes (float32), beside its embeddings."""
        if probabilities is None:
            probabilities = self.case_probabilities(case, slices)
        labeller = PseudoLabeller(self.sam, slices, self.cfg, len(self.student.values), self.device)
        lut = index_lut(self.student.values)
        student: dict[int, np.ndarray] = {}
        refined: dict[int, np.ndarray] = {}
        for done in labeller.refine_each(map(torch.from_numpy, probabilities)):
            student[done.index] = lut[done.argmax]
            refined[done.index] = lut[merge_refined(done.argmax, done.label)]
        in_order = range(case.num_slices)
        return stack_volume([student[z] for z in in_order]), stack_volume([refined[z] for z in in_order])

    def predict_case(self, case: Case, slices: list[EmbeddedSlice]) -> np.ndarray:
        return self.predict_both(case, slices)[1]

    def case_probabilities(self, case: Case, slices: Sequence[EmbeddedSlice]) -> Iterator[np.ndarray]:
        """The student's probabilities that SAM refines (without test-time mirroring, as refinement
        prompts from the student's single view), a batch of slices made at a time."""
        return streamed_probabilities(self.student.module, case, self.student.cfg, self.device)

    def labels_from(self, case: Case, slices: Sequence[EmbeddedSlice],
                    probabilities: Iterable[np.ndarray]) -> np.ndarray:
        """``predict_case``'s answer made from ``probabilities`` (``case_probabilities``, as they stream)."""
        return self.predict_both(case, slices, probabilities)[1]

    def probability_stage(self) -> ProbabilityStage:
        """The student's softmax, single view; SAM refinement comes after."""
        return ProbabilityStage("the U-Net student's softmax (one view, no mirroring)", ("SAM refinement",))


def recorded_refinement(run_dir: Path) -> dict | None:
    """RUN/refinement.json's decision, or None where there is none to reuse: absent, or damaged (cut
    off, edited by hand), which is then decided again, as the first time, instead of ending predict
    in a traceback (after its predictions were written, for a file that parsed but lacked a score)."""
    path = Path(run_dir) / REFINEMENT
    if not path.exists():
        return None
    try:
        choice = json.loads(path.read_text())
    except ValueError:
        choice = None
    scores = ("val_dice_student", "val_dice_refined", "cases")
    if isinstance(choice, dict) and isinstance(choice.get("refine"), bool) and \
            all(isinstance(choice.get(key), (int, float)) and not isinstance(choice.get(key), bool) for key in scores):
        return choice
    say_once(f"{path} is damaged: deciding --refine-if-better again on the run's validation cases")
    return None


def choose_refinement(run_dir: Path, predictor: SamRefinedPredictor, cache: EmbeddingCache, device: str = "cpu",
                      show_progress: bool = True) -> dict:
    """Refine or not, decided once per run on its own validation cases (RUN/refinement.json).

    Both ways are scored by the selection score of training (mean over volumes of the mean
    per-class Dice); refinement is chosen only if it scores strictly higher.
    """
    path = Path(run_dir) / REFINEMENT
    recorded = recorded_refinement(run_dir)
    if recorded is not None:
        return recorded
    config = read_config(run_dir)
    data = Path(config["data"])
    if not data.exists():
        raise RunError(f"--refine-if-better decides on the run's validation cases, but its data folder {data} "
                       "is gone; restore it, or choose yourself with --refine-with-sam (or neither)")
    dataset = open_dataset(data)
    case_ids = dataset.split(config.get("val_split", "val"))
    if not case_ids:
        raise DataError(f"the validation split of {data} is empty: nothing to decide --refine-if-better on")
    scores: dict[str, list[float]] = {"student": [], "refined": []}
    foreground = predictor.student.values[1:]
    for case_id in tracked(case_ids, "refine or not (val)", show_progress):
        case = load_labelled_case(dataset, case_id, "decide --refine-if-better on")
        both = predictor.predict_both(case, CaseSlices(case, cache, device, streamed=True))
        for name, pred in zip(("student", "refined"), both):
            scores[name].append(volume_score(pred, case.label, foreground, case.ignore))
    student, refined = float(np.mean(scores["student"])), float(np.mean(scores["refined"]))
    choice = {"refine": refined > student, "val_dice_student": student, "val_dice_refined": refined,
              "val_split": config.get("val_split", "val"), "cases": len(case_ids)}
    write_json(path, choice)
    return choice
