"""Choose self-prompted SAM refinement for a fitted few-shot or FewMatch run, on its own validation
cases, exactly as `fewsam fit` does in its last step (for runs fitted before that step existed).

Writes OUT: a copy of RUN whose postprocess.json adds the choice (``sam_refine`` and both
validation scores, on top of the run's recorded mirroring and cavity rule) and whose manifest
records it; RUN is left as it is. Predict with OUT as with any run.
Usage: .venv/bin/python benchmarks/sam_refinement_choice.py RUN OUT [CACHE]
"""

import copy
import json
import shutil
import sys
from pathlib import Path

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.embedded import embed_cases
from fewsam.inference import POSTPROCESS, CavityRule
from fewsam.methods.fewshot import FewShotPredictor, sam_refinement_choice
from fewsam.models.acceleration import acceleration_of_run
from fewsam.models.precision import resolve_precision
from fewsam.predict import load_run_model
from fewsam.runs import check_run, write_json, write_manifest


def main(run: Path, out: Path, cache_root: str | None) -> None:
    if out.exists():
        sys.exit(f"error: {out} exists; give a new folder")
    config = check_run(run)
    recorded = json.loads((run / POSTPROCESS).read_text())
    dataset = open_dataset(config["data"])
    model = load_run_model(config, "cpu")
    sam = copy.deepcopy(model).eval()  # SAM's own decoder, before the run's weights load into the shared one
    predictor = FewShotPredictor(run, model, "cpu", acceleration_of_run(config, "cpu"))
    cache = EmbeddingCache(cache_root or config["cache"], model, resolve_precision("auto", "cpu"))
    val_cases = embed_cases(dataset, dataset.split(config["val_split"]), cache, "cpu")
    rule = None if recorded.get("cavity_rule") is None else CavityRule(*recorded["cavity_rule"])
    choice = sam_refinement_choice(predictor.decoder, predictor.tokens, sam, val_cases, predictor.values, rule,
                                   recorded, "cpu", show_progress=True)
    shutil.copytree(run, out)
    write_json(out / POSTPROCESS, choice)
    write_manifest(out)  # the copy's record of what predict reads, with its new postprocess.json
    print(json.dumps(choice, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
