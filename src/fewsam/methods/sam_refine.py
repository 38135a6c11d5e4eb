"""SAM-Match at test time: the student's confident regions prompt the run's own SAM (beyond the paper).

SAM-Match (METHODS.md, section 2) predicts with the student alone. Its pseudo-label quality
tables show SAM's masks, prompted by the student's boxes and clicks, beating the student's own
on the unlabelled slices (BUSI, ACDC with clicks); ``fewsam predict --refine-with-sam`` applies
the very same labeller to test slices: student probabilities -> prompts -> the SAM decoder the
run ended with -> composed labels. Where the student is confident on no class, or SAM was not
asked about a class the student predicts (IGNORE in the pseudo-label), the student's argmax
stands, so refinement can only change pixels of classes SAM was prompted for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewsam.data.types import Case
from fewsam.embedded import EmbeddedSlice
from fewsam.errors import RunError
from fewsam.inference import stack_volume
from fewsam.methods.samatch import SAM_DIR, PseudoLabeller, SamMatchConfig, load_final_sam
from fewsam.methods.student import IGNORE, StudentPredictor, predict_images
from fewsam.models.sam import SamModel
from fewsam.runs import read_config


def merge_refined(student_argmax: np.ndarray, refined: np.ndarray | None) -> np.ndarray:
    """SAM's composed label where it answered, the student's argmax elsewhere (class indices)."""
    if refined is None:
        return student_argmax
    return np.where(refined == IGNORE, student_argmax, refined)


def check_refinable(run_dir: Path, config: dict) -> None:
    """A clear error, before any model is loaded, for runs that have no SAM of their own."""
    if config.get("method") != "samatch":
        raise RunError(f"--refine-with-sam needs a SAM-Match run; {run_dir} is {config.get('method')!r}")
    if not config.get("samatch", {}).get("use_sam", True):
        raise RunError(f"{run_dir} was fitted with --no-sam: it has no SAM to refine with")


class SamRefinedPredictor:
    """Predicts with a SAM-Match run: the best-validated student, its confident regions refined by SAM."""

    needs_embeddings = True

    def __init__(self, run_dir: Path, model: SamModel, device: str = "cpu") -> None:
        config = read_config(run_dir)
        check_refinable(run_dir, config)
        # runs made before --prompt-clicks existed prompted with boxes only
        self.cfg = SamMatchConfig(**{"prompt_clicks": "none", **config["samatch"]})
        self.student = StudentPredictor(run_dir, device)
        self.sam, self.device = model, device
        load_final_sam(model, Path(run_dir) / SAM_DIR)

    def predict_case(self, case: Case, slices: list[EmbeddedSlice]) -> np.ndarray:
        images = [case.slice_image(z) for z in range(case.num_slices)]
        probs = predict_images(self.student.module, images, self.student.cfg, self.device)
        values = self.student.values
        refined, _ = PseudoLabeller(self.sam, slices, self.cfg, len(values), self.device).refine(probs)
        lut = np.asarray(values, dtype=np.uint8)
        return stack_volume([lut[merge_refined(p.argmax(dim=0).numpy(), r)] for p, r in zip(probs, refined)])
