"""Choose test-time mirroring for a fitted few-shot or FewMatch run, on its own validation cases,
exactly as `fewsam fit` does in its last step (for runs fitted before that step existed).

Writes OUT: a copy of RUN whose postprocess.json holds the choice (mirror or not, then the
largest-component choice, after the run's cavity rule) and both validation scores, and whose
manifest records it; RUN is left as it is. Predict with OUT as with any run. With ``--single``
OUT keeps the single view whatever validation says, with ``--mirrored`` the mirrored one (its own
largest-component choice, both scores recorded): to measure what each view does on patients
outside the validation list.
The encoder runs at the precision the run was fitted with (``fp32`` for a ``--precision fp32`` run),
so that validation reads the embeddings the fit itself read.
Usage: .venv/bin/python benchmarks/mirror_choice.py RUN OUT [CACHE] [--single | --mirrored]
"""

import json
import shutil
import sys
from pathlib import Path

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.embedded import embed_cases
from fewsam.inference import POSTPROCESS, CavityRule, mirroring_choice, postprocessing_choice
from fewsam.methods.fewshot import FewShotPredictor, predict_mirrored, predict_volumes
from fewsam.models.acceleration import acceleration_of_run
from fewsam.models.precision import resolve_precision
from fewsam.predict import load_run_model
from fewsam.runs import check_run, write_json, write_manifest



def main(run: Path, out: Path, cache_root: str | None, forced: str | None = None) -> None:
    if out.exists():
        sys.exit(f"error: {out} exists; give a new folder")
    config = check_run(run)
    shutil.copytree(run, out)
    dataset = open_dataset(config["data"])
    model = load_run_model(config, "cpu")
    predictor = FewShotPredictor(out, model, "cpu", acceleration_of_run(config, "cpu"))
    cache = EmbeddingCache(cache_root or config["cache"], model, resolve_precision(run_precision(config), "cpu"))
    val_cases = embed_cases(dataset, dataset.split(config["val_split"]), cache, "cpu")
    recorded = json.loads((run / POSTPROCESS).read_text()).get("cavity_rule")
    rule = None if recorded is None else CavityRule(*recorded)
    values = predictor.values
    single = predict_volumes(predictor.decoder, predictor.tokens, val_cases, values)
    mirrored = [(case, predict_mirrored(predictor.decoder, predictor.tokens, slices, values))
                for case, slices in val_cases]
    subjects = [dataset.subject_of(case.case_id) for case, _ in val_cases]
    choice = mirroring_choice(postprocessing_choice(single, values, rule), postprocessing_choice(mirrored, values, rule),
                              subjects)
    if forced is not None:
        view = choice["views"][forced]
        choice = {**choice, **view, "mirror": forced == "mirrored"}
    write_json(out / POSTPROCESS, choice)
    write_manifest(out)  # the copy's record of what predict reads, with its new postprocess.json
    print(json.dumps(choice, indent=1))


def run_precision(config: dict) -> str:
    """The ``--precision`` that gives the fit's own encoder: the reference for an fp32 fit, else ``auto``."""
    return "fp32" if config.get("encoder_precision") == "fp32" else "auto"


if __name__ == "__main__":
    flags = {"--single": "single", "--mirrored": "mirrored"}
    args = [a for a in sys.argv[1:] if a not in flags]
    view = next((flags[a] for a in sys.argv[1:] if a in flags), None)
    main(Path(args[0]), Path(args[1]), args[2] if len(args) > 2 else None, view)
