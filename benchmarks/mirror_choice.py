"""Choose test-time mirroring for a fitted few-shot or FewMatch run, on its own validation cases,
exactly as `fewsam fit` does in its last step (for runs fitted before that step existed).

Writes OUT: a copy of RUN whose postprocess.json holds the choice (mirror or not, then the
largest-component choice, after the run's cavity rule) and both validation scores, and whose
manifest records it; RUN is left as it is. Predict with OUT as with any run.
Usage: .venv/bin/python benchmarks/mirror_choice.py RUN OUT [CACHE]
"""

import json
import shutil
import sys
from pathlib import Path

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.embedded import embed_cases
from fewsam.inference import CavityRule
from fewsam.methods.fewshot import (POSTPROCESS, FewShotPredictor, mirroring_choice, postprocessing_choice,
                                    predict_mirrored, predict_volumes)
from fewsam.models.acceleration import acceleration_of_run
from fewsam.models.precision import resolve_precision
from fewsam.predict import load_run_model
from fewsam.runs import check_run, write_json, write_manifest


def main(run: Path, out: Path, cache_root: str | None) -> None:
    if out.exists():
        sys.exit(f"error: {out} exists; give a new folder")
    config = check_run(run)
    shutil.copytree(run, out)
    dataset = open_dataset(config["data"])
    model = load_run_model(config, "cpu")
    predictor = FewShotPredictor(out, model, "cpu", acceleration_of_run(config, "cpu"))
    cache = EmbeddingCache(cache_root or config["cache"], model, resolve_precision("auto", "cpu"))
    val_cases = embed_cases(dataset, dataset.split(config["val_split"]), cache, "cpu")
    recorded = json.loads((run / POSTPROCESS).read_text()).get("cavity_rule")
    rule = None if recorded is None else CavityRule(*recorded)
    values = predictor.values
    single = predict_volumes(predictor.decoder, predictor.tokens, val_cases, values)
    mirrored = [(case, predict_mirrored(predictor.decoder, predictor.tokens, slices, values))
                for case, slices in val_cases]
    choice = mirroring_choice(postprocessing_choice(single, values, rule), postprocessing_choice(mirrored, values, rule))
    write_json(out / POSTPROCESS, choice)
    write_manifest(out)  # the copy's record of what predict reads, with its new postprocess.json
    print(json.dumps(choice, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
