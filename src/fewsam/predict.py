"""``fewsam predict``: a run folder + a data folder -> one prediction file per case, in the case's format.

The run folder says which method, model and weights made it; the method registry rebuilds its
predictor, cases are embedded through the cache (unless the method predicts from pixels), and
predictions are written mirroring the cases' relative paths so that ``fewsam evaluate`` (or any
other tool) can pair them up.

Predictions are written into a hidden folder beside ``out`` and moved into place only when
every case succeeded: a prediction that fails on case 7 of 10 leaves no ``out`` behind, so the
corrected re-run is not refused as "not empty", and it keeps the 6 cases it finished, which the
same command again does not predict again (``fewsam.resumable``). Its log, to be followed while it
runs, is written beside ``out`` (``staged_with_log``) and moves in with them. Pixels are checked as cases are read: NaN
or Inf is an error naming the file and slice, a constant image a warning naming the case.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from fewsam.atomic import check_folder_path, check_path_can_be_made, hidden_name, inside_data
from fewsam.cache import EmbeddingCache
from fewsam.config import DEFAULT_CACHE, DEFAULT_PRECISION, checked_arguments
from fewsam.data import open_dataset, write_prediction
from fewsam.data.writers import (dicom_rtstruct_path, dicom_seg_path, holds_a_prediction, prediction_path,
                                 spacing_files, write_dicom_rtstruct, write_dicom_seg)
from fewsam.data.readers.common import check_finite
from fewsam.data.types import Case, ClassMap, Dataset
from fewsam.devices import check_device
from fewsam.embedded import CaseSlices
from fewsam.errors import CacheError, DataError, FewsamError, ModelError, RunError, Stopped
from fewsam.info import DEFAULT_SPLIT, split_cases
from fewsam.models.precision import FP32, EncoderPrecision, check_precision_name, resolve_precision
from fewsam.models.registry import load_model
from fewsam.models.sam import SamModel
from fewsam.probabilities import (PROBABILITIES_ENDING, ProbabilityFile, check_not_a_prediction_name, class_names,
                                  has_probabilities, probabilities_path)
from fewsam.progress import Parts, command_log, record, say_once, tracked_with_parts, with_own_notices
from fewsam.resumable import InputFiles, KeptCases, kept_folder_held, resumable_staging
from fewsam.runs import MASK_CODING, PREDICT_LOG, check_run, holds_a_run, predict_files_sha256, read_config


Refine = Literal["never", "always", "if-better"]
log = logging.getLogger("fewsam")


def load_run_model(config: dict, device: str) -> SamModel:
    """The SAM backbone a run was fitted with; refuses a checkpoint that changed since."""
    model = load_model(config["model"], config.get("checkpoint"), device=device)
    if config.get("weights_sha256") and model.weights_sha256 != config["weights_sha256"]:
        raise ModelError(f"the checkpoint for {config['model']} differs from the one this run was fitted "
                         "with (sha256 mismatch); give the original --checkpoint")
    return model


@checked_arguments
@with_own_notices
def predict(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    split: str | None = None,
    cache_root: str | Path = DEFAULT_CACHE,
    device: str = "cpu",
    overwrite: bool = False,
    show_progress: bool = True,
    refine: Refine = "never",
    precision: str = DEFAULT_PRECISION,
    ray: str | None = None,
    ray_workers: int | None = None,
    save_probabilities: bool = False,
    resume: bool = True,
    rtstruct: bool = False,
) -> list[Path]:
    """Write one prediction per case of ``split`` (default ``DEFAULT_SPLIT``, "val") under ``out``.

    ``out`` must not be (or lie in) the dataset's own folders; a non-empty ``out`` needs
    ``overwrite``, which replaces same-named predictions and leaves every other file alone, and is
    refused for a folder no predict wrote into (``refuse_a_folder_of_other_files``).
    ``refine`` (SAM-Match runs): "always" lets the student's confident regions prompt the run's
    SAM (``methods/samatch/refine.py``; the slices are then embedded through the cache);
    "if-better" refines only if that scores higher on the run's validation cases (decided once,
    RUN/refinement.json). ``precision``: the encoder's numerics (``models.precision``). ``ray``: spread
    the cases over the Ray cluster at that address (``fewsam.distributed.ray_jobs``; ``ray_workers``
    workers, default one per CPU), writing into the same staging folder and cache. ``save_probabilities``:
    each case's class probabilities beside its prediction (``fewsam.probabilities``), refused in one
    line for a method that has none (the oracle-prompted baselines). ``resume``: take up the cases a
    stopped predict of the same settings into ``out`` finished (``fewsam.resumable``); False starts afresh.
    ``rtstruct``: each DICOM series' prediction also as an RT structure set (``write_dicom_rtstruct``),
    refused in one line for data that holds no DICOM series."""
    from fewsam.distributed.ray_jobs import check_workers_have_a_cluster
    from fewsam.methods import get_method

    check_device(device)
    check_workers_have_a_cluster(ray, ray_workers)
    run_dir, out = Path(run_dir), Path(out)
    config = check_run(run_dir)
    method = get_method(config.get("method"))
    pixels_only = method.predicts_from_pixels(run_dir)
    encodes = refine != "never" or not pixels_only
    with stops_say_what_is_cached(encodes):
        dataset = open_for_run(data, config)
        check_rtstruct(rtstruct, dataset)
        case_ids = split_cases(dataset, split, "--split")
        if not case_ids:
            raise DataError(f"split {split or DEFAULT_SPLIT} of {data} is empty")
        check_output_folder(out, dataset, overwrite)
        if refine not in ("never", "always", "if-better"):
            raise RunError(f"refine must be never, always or if-better, not {refine!r}")
        if refine != "never":
            from fewsam.methods.samatch.refine import check_refinable

            check_refinable(run_dir, config)
        _check_class_map(config, dataset.class_map.to_json(), data, dataset.has_any_label())
        if encodes:
            check_cache_folder(cache_root, data)
        encoder = _encoder_precision(precision, device, needs_encoder=encodes)
        refined = refine == "always" or (refine == "if-better" and
                                         _refinement_chosen(run_dir, config, cache_root, encoder, device,
                                                            show_progress))
        names = run_class_names(config, dataset) if save_probabilities else None
        seg_names = run_class_names(config, dataset) if dataset.format == "dicom" else None
        target = Target(out, overwrite, resume, prediction_identity(out, run_dir, data, split, case_ids, refined,
                                                                     encoder, device, names is not None, rtstruct),
                        dataset.input_files)
        if ray is not None:
            if not pixels_only or refined:
                prepare_encoder_for_workers(config, cache_root, encoder, device)
            return _predict_on_ray(ray, ray_workers, run_dir, data, target, case_ids, cache_root, encoder, device,
                                   show_progress, refined, pixels_only and not refined, names, seg_names, rtstruct)
        predictor, cache = case_predictor(run_dir, config, dataset, refined, cache_root, encoder, device)
        if names is not None:
            check_probabilities(predictor, config)
        replaced: list[str] = []  # read only when the staged files move in: filled once every case is written
        with staged_with_log(target, len(case_ids), replaced) as kept:
            if names is not None:
                say_probability_stage(predictor, run_dir)
            left = [case_id for case_id in case_ids if case_id not in kept.finished]
            for case_id, parts in tracked_with_parts(left, "predict", "slice", show_progress):
                rel = predict_case_file(dataset, case_id, predictor, cache, device, kept.files, parts, names,
                                        seg_names, rtstruct)
                kept.finish(case_id, case_files(kept.files, rel, names is not None, seg_names is not None, rtstruct))
            return all_predicted(kept, case_ids, out, replaced, names is not None, seg_names is not None)


@contextmanager
def stops_say_what_is_cached(encodes: bool) -> Iterator[None]:
    """A stop in the block tells its message whether the run encodes slices (``Stopped.encodes``): only the
    embeddings of one that does (a SAM run, a refinement) are in the cache for the same command again; one
    that predicts from pixels alone (a U-Net student) has nothing there to offer."""
    try:
        yield
    except Stopped as stop:
        stop.encodes = encodes
        raise


WITH_PROBABILITIES = f" and their class probabilities (*{PROBABILITIES_ENDING})"


@dataclass(frozen=True)
class Target:
    """Where a predict writes: --out, --overwrite, whether to take up a stopped predict's finished cases
    (not with --no-resume), and what makes its files (``prediction_identity``), which tells them apart."""

    out: Path
    overwrite: bool
    resume: bool
    identity: dict[str, Any]
    input_files: InputFiles | None = None  # a case's input files, to predict again those replaced since kept


def prediction_identity(out: Path, run_dir: Path, data: str | Path, split: str | None, case_ids: Sequence[str],
                        refined: bool, encoder: EncoderPrecision, device: str, probabilities: bool,
                        rtstruct: bool = False) -> dict[str, Any]:
    """What a predict's files are made from: where they go, the run's files and options (by hash: a run
    refitted into the same folder with other options may hold the same files, a prompted run none but its
    config), the data, its split and cases, and every option that changes a prediction. The cases a stopped
    predict kept are taken up only by a predict that agrees on all of it; any other starts afresh rather than
    mix their files."""
    from fewsam import __version__
    from fewsam.distributed.ray_jobs import precision_option

    return {"out": str(out.resolve()), "run": str(run_dir.resolve()), "run_files": predict_files_sha256(run_dir),
            "run_config": _digest(json.dumps(read_config(run_dir), sort_keys=True)),
            "data": str(Path(data).resolve()), "split": split or DEFAULT_SPLIT,
            "cases": _digest("\n".join(case_ids)), "refined": refined,
            "precision": precision_option(encoder), "device": device, "probabilities": probabilities,
            "rtstruct": rtstruct, "fewsam": __version__}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def case_files(staging: Path, prediction: Path, probabilities: bool, dicom_seg: bool,
               rtstruct: bool = False) -> list[Path]:
    """The files of one case's prediction in ``staging`` (its class probabilities, its DICOM SEG and RT
    structure set, a 3D TIFF's spacing file too, where written): the case is finished only once all of them
    are in place. A series whose headers allow no DICOM object gets its prediction alone (``write_dicom_seg``),
    so the objects are named where they were written: a file named but never made would count the case as
    unfinished at every resume. Called by the writer of the files, on the host that wrote them."""
    dicom = [dicom_seg_path(prediction)] if dicom_seg else []
    dicom += [dicom_rtstruct_path(prediction)] if dicom_seg and rtstruct else []
    return ([prediction] + ([probabilities_path(prediction)] if probabilities else [])
            + [path for path in dicom + spacing_files(prediction) if (staging / path).is_file()])


def all_predicted(kept: KeptCases, case_ids: Sequence[str], out: Path, replaced: list[str],
                  probabilities: bool, dicom_seg: bool) -> list[Path]:
    """The predictions of ``case_ids`` (all finished) as they will be in ``out``; ``replaced`` gets the
    files beside them (``companions``), so that an --overwrite removes those an earlier predict left."""
    predictions = [Path(kept.finished[case_id][0]) for case_id in case_ids]
    replaced.extend(name for rel in predictions for name in companions(rel, dicom_seg))
    record(f"done: {len(predictions)} predictions{WITH_PROBABILITIES if probabilities else ''} in {out}")
    return [out / rel for rel in predictions]


@contextmanager
def staged_with_log(target: Target, total: int, replaced: Iterable[str]) -> Iterator[KeptCases]:
    """The staging of the ``total`` predictions (``resumable_staging``, ``replaced`` as its ``replaces``),
    with predict's log: hours of prediction must be followable (``tail -f``) while --out is still hidden,
    so the log is written beside --out (``running_log``, its path said as predict starts) and joins the
    predictions as OUT/predict.log when they move in. A predict that fails or is stopped leaves it
    there, its last line saying how it ended; the next predict into the same --out appends to it. A second
    predict into --out while one is at work is refused before it writes a line to that one's log. All of it is
    keyed on the folder --out names, not on its spelling (a symlink to it, ``out/../out``), so that two spellings
    of one folder share one lock and one set of finished cases rather than fill it at once."""
    out = target.out.resolve()
    log = running_log(out)
    with kept_folder_held(out) as made, command_log(log, "predict", moved_to=out / PREDICT_LOG), \
            resumable_staging(out, made, target.identity, total, target.resume, target.overwrite,
                              replaces=replaced, joining={PREDICT_LOG: log}, input_files=target.input_files) as kept:
        yield kept


def running_log(out: Path) -> Path:
    """Where predict's log is while it runs: hidden beside --out (``.OUT.predict.log``), as its staging
    folder is, so a user's own file of that name beside --out is left alone."""
    return out.parent / hidden_name(out.name, f".{PREDICT_LOG}")


def run_class_names(config: dict, dataset: Dataset) -> dict[int, str]:
    """Each foreground label value's class name: the data's, else (unlabelled data that took the
    run's classes) the run's config.json's."""
    names = dict(dataset.class_map.names)
    return names or {int(value): name for value, name in (config.get("class_map") or {}).items()}


def check_probabilities(predictor: Any, config: dict) -> None:
    """Refuse --save-probabilities for a run whose predictor has no class probabilities, in one line."""
    if not has_probabilities(predictor):
        raise RunError(f"--save-probabilities: {config.get('method')} runs have no class probabilities to save "
                       "(SAM answers each prompted class with a mask of its own); predict without it")


def say_probability_stage(predictor: Any, run_dir: Path) -> None:
    """predict.log names the stage saved; the user is told once where later steps change the labels."""
    stage = predictor.probability_stage()
    record(f"saving class probabilities beside each prediction: {stage.made_from}")
    if stage.note(run_dir):
        say_once(stage.note(run_dir), key=f"probability-stage-{run_dir}")


def open_for_run(data: str | Path, config: dict) -> Dataset:
    """The dataset to predict with a run: a 2D folder without masks or a classes.json of its own takes
    the run's classes and mask coding (RUN/config.json), so its predictions are written as the masks
    the run was fitted on (0/1 stays 0/1), not in the layout's guess."""
    dataset = open_dataset(data)
    coding = config.get(MASK_CODING)
    if coding and config.get("class_map") and hasattr(dataset, "adopt_mask_coding"):
        dataset.adopt_mask_coding(ClassMap.from_json(config["class_map"]), coding)
    return dataset


def _encoder_precision(precision: str, device: str, needs_encoder: bool) -> EncoderPrecision:
    """The encoder path for ``--precision``; a run that predicts from pixels alone never encodes,
    so it neither resolves one (no note about an encoder it does not run) nor needs its CPU flags."""
    if needs_encoder:
        return resolve_precision(precision, device)
    check_precision_name(precision)
    return FP32


def case_predictor(run_dir: Path, config: dict, dataset: Dataset, refined: bool, cache_root: str | Path,
                   encoder: EncoderPrecision, device: str) -> tuple[Any, EmbeddingCache | None]:
    """The run's predictor and the cache its cases are embedded through (None for a method that
    predicts from pixels): built once per process, by ``predict`` or by each Ray worker."""
    from fewsam.methods import get_method

    method = get_method(config.get("method"))
    pixels_only = method.predicts_from_pixels(run_dir) and not refined
    model = None if pixels_only else load_run_model(config, device)
    if refined:
        from fewsam.methods.samatch.refine import SamRefinedPredictor

        predictor = SamRefinedPredictor(run_dir, model, device)
    else:
        labels = dataset.class_map.labels or [int(v) for v in config.get("class_map", {})]
        predictor = method.predictor(run_dir, config, model, device, [0] + labels)
    return predictor, None if pixels_only else EmbeddingCache(cache_root, model, encoder)


def companions(rel: Path, dicom_seg: bool) -> list[str]:
    """The files a prediction ``rel`` may have beside it (its probabilities, a DICOM series' SEG and RT
    structure set, a 3D TIFF's spacing file), which a new set of predictions replaces as a whole
    (``staged_folder``'s ``replaces``)."""
    dicom = [dicom_seg_path(rel).as_posix(), dicom_rtstruct_path(rel).as_posix()] if dicom_seg else []
    return [probabilities_path(rel).as_posix()] + dicom + [path.as_posix() for path in spacing_files(rel)]


def check_rtstruct(rtstruct: bool, dataset: Dataset) -> None:
    """Refuse --rtstruct for data that holds no DICOM series, in one line: a structure set places its
    contours on the series' instances, which other formats lack."""
    if rtstruct and dataset.format != "dicom":
        raise DataError(f"--rtstruct: {dataset.root} holds {dataset.format} files, not DICOM series; an RT "
                        "structure set references the series it was drawn on; predict without it")


def predict_case_file(dataset: Dataset, case_id: str, predictor: Any, cache: EmbeddingCache | None, device: str,
                      staging: Path, parts: Parts | None = None, names: dict[int, str] | None = None,
                      seg_names: dict[int, str] | None = None, rtstruct: bool = False) -> Path:
    """Read, check, predict and write one case into ``staging``; its path relative to ``staging``.
    The case's slices are embedded as the predictor reads them (``CaseSlices`` streamed), so a long
    CT volume holds a batch of embeddings, not its own; ``parts`` counts the slices reached. With
    ``names`` (the classes' names by label value), its class probabilities are saved beside it,
    written as the predictor streams them to the labels (``save_case_probabilities``). With
    ``seg_names`` (a DICOM dataset's classes), a DICOM SEG of the prediction is written beside its NIfTI
    (``write_dicom_seg``), so it opens on its series in OHIF, a PACS or 3D Slicer, and with ``rtstruct`` an
    RT structure set (``write_dicom_rtstruct``) for radiotherapy planning systems."""
    case = dataset.load(case_id, with_label=getattr(predictor, "reads_labels", False))
    check_pixels(case, _source_file(dataset, case_id))
    slices: Sequence = []
    if cache is not None:
        on_progress = None if parts is None else parts.counter(case.num_slices)
        slices = CaseSlices(case, cache, device, streamed=True, on_progress=on_progress)
    if names is None:
        pred = predictor.predict_case(case, slices)
    else:
        pred = save_case_probabilities(case, slices, predictor, staging, names)
    written = write_prediction(case, pred, staging)
    if seg_names is not None:
        write_dicom_seg(case, pred, seg_names, staging)
        if rtstruct:
            write_dicom_rtstruct(case, pred, seg_names, staging)
    return written.relative_to(staging)


def save_case_probabilities(case: Case, slices: Sequence, predictor: Any, staging: Path,
                            names: dict[int, str]) -> np.ndarray:
    """The case's label map, made by the predictor from the probabilities it streams, each slice's
    kept on its way in the case's probabilities file (one pass: nothing is predicted twice)."""
    prediction = prediction_path(case, staging)
    check_not_a_prediction_name(case.case_id, prediction)
    values = [int(v) for v in predictor.values]
    saved = ProbabilityFile(probabilities_path(prediction), case.num_slices, values, class_names(values, names))
    try:
        pred = predictor.labels_from(case, slices, saved.recorded(predictor.case_probabilities(case, slices)))
        saved.written()
    finally:
        saved.close()
    return pred


def prepare_encoder_for_workers(config: dict, cache_root: str | Path, encoder: EncoderPrecision,
                                device: str) -> None:
    """Convert an OpenVINO encoder once, on the driver, before the Ray workers start: they then read
    the IR it leaves beside the cache, as ``embed --ray``'s do, instead of each converting it at the
    same time into the same folder. The PyTorch encoder needs nothing, so its model is not loaded here."""
    if encoder.backend != "torch":
        EmbeddingCache(cache_root, load_run_model(config, device), encoder).prepare_encoder()


def _predict_on_ray(address: str, workers: int | None, run_dir: Path, data: str | Path, target: Target,
                    case_ids: list[str], cache_root: str | Path, encoder: EncoderPrecision, device: str,
                    show_progress: bool, refined: bool, pixels_only: bool,
                    names: dict[int, str] | None = None, seg_names: dict[int, str] | None = None,
                    rtstruct: bool = False) -> list[Path]:
    """``predict``'s loop on a Ray cluster: the workers write into the same staging folder, which
    moves into --out only when every case succeeded, as it does locally; the driver journals each case
    as its worker answers, so a stopped job resumes as a local predict does."""
    from fewsam.distributed.ray_jobs import CPUS_PER_WORKER, PredictJob, absolute, precision_option, predict_on_ray

    job = PredictJob(run=absolute(run_dir), data=absolute(data),
                     cache_root="" if pixels_only else absolute(cache_root), precision=precision_option(encoder),
                     device=device, threads=CPUS_PER_WORKER, refined=refined,
                     class_names=tuple((int(v), n) for v, n in (names or seg_names or {}).items()),
                     probabilities=names is not None, rtstruct=rtstruct)
    replaced: list[str] = []  # read only when the staged files move in: filled once every case is written
    with staged_with_log(target, len(case_ids), replaced) as kept:
        if names is not None:
            record("saving class probabilities beside each prediction (the stage each worker's predictor bases "
                   "its labels on)")
        left = [case_id for case_id in case_ids if case_id not in kept.finished]

        if left:  # a stopped job that had finished them all (its move into --out failed) starts no workers
            predict_on_ray(address, job, left, kept.files.absolute(), workers, show_progress=show_progress,
                           on_case=kept.finish)
        return all_predicted(kept, case_ids, target.out, replaced, names is not None, seg_names is not None)


def check_output_folder(out: Path, dataset: Dataset, overwrite: bool) -> None:
    """Refuse an --out that is a file, cannot be created, lies in the dataset's own folders (even
    with --overwrite: predictions would mix with or replace its files), or is not empty, or, with
    --overwrite, is a folder no predict wrote into (``refuse_a_folder_of_other_files``)."""
    check_folder_path(out, "--out")
    inside = dataset_folder_holding(out, dataset)
    if inside is not None:
        harm = ("every image below it is read as a case, so its predictions would become cases of the dataset"
                if getattr(dataset, "reads_whole_tree", False) else "predictions would mix with its files")
        raise RunError(f"--out {out} lies in the dataset's own folder {inside}; {harm}: write them outside "
                       f"{dataset.root}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunError(f"{out} is not empty; choose another --out or pass --overwrite")
        refuse_a_folder_of_other_files(out, dataset)


def refuse_a_folder_of_other_files(out: Path, dataset: Dataset) -> None:
    """--overwrite replaces an earlier predict's files and leaves the others beside them (a user's notes
    kept with the predictions). A folder no predict wrote into (the filesystem root, the home folder, a
    run, a project) would get predictions strewn among files that are not predictions, any of them named
    as one replaced: refused, even with --overwrite. A prediction folder is known by its predict.log or
    by a file where predict writes a case's prediction (one that predict.log was removed from)."""
    target = out.resolve()
    if target.parent == target or target == Path.home().resolve():
        where = "the filesystem root" if target.parent == target else "your home folder"
        raise RunError(f"--out {out} is {where}; --overwrite writes only into a folder of predictions: "
                       "give a folder of its own")
    if holds_a_run(out):
        raise RunError(f"--out {out} is a fewsam run folder; predictions would mix with its files: give "
                       "another --out")
    if not (out / PREDICT_LOG).is_file() and not holds_a_prediction(dataset, out):
        raise RunError(f"--out {out} holds files that fewsam predict did not write (no {PREDICT_LOG}, no "
                       f"prediction of a case of {dataset.root}); --overwrite writes only into a folder of "
                       "predictions: choose another --out or empty it")


def check_cache_folder(root: str | Path, data: str | Path | None = None) -> None:
    """Refuse a --cache that is a file, one that cannot be read, or one still to be made where fewsam
    cannot write, before any model is loaded, or one that lies in the data folder ``data``: fewsam
    writes nothing into a user's data, and the cache's ``.npz`` entries there would be read as cases of
    a FairSeg-style folder the next time it is opened. An existing folder fewsam may only read (a
    cache shared on read-only storage) is served from, its misses encoded but not kept
    (``EmbeddingCache.read_only``). An empty --cache (``--cache "$CACHE"`` with the variable unset) is
    refused: as a path it is the working folder, which would fill with cache folders unasked."""
    if not str(root).strip():
        raise CacheError(f"--cache is empty ({str(root)!r}); give the cache folder, or leave --cache out for "
                         f"{DEFAULT_CACHE}")
    cache = Path(root).expanduser()
    check_path_can_be_made(cache, "--cache", CacheError, "folder")
    if not cache.is_dir():
        check_folder_path(cache, "--cache", CacheError)
    elif not os.access(cache, os.R_OK | os.X_OK):
        raise CacheError(f"--cache {root} cannot be read (permissions); give a cache folder fewsam can read")
    if inside_data(cache, data):
        raise CacheError(f"--cache {root} is inside the data folder {data}; fewsam writes nothing into your "
                         "data: give a cache folder outside it (the default is ~/.cache/fewsam)")


def check_run_outside_data(run: str | Path, data: str | Path | None) -> None:
    """Refuse a fit's run folder in its data folder: fewsam writes nothing into a user's data, and
    checkpoints there (hundreds of MB) would travel with every copy of the dataset."""
    if inside_data(Path(run).expanduser(), data):
        raise RunError(f"--out {run} is inside the data folder {data}; fewsam writes nothing into your data: "
                       "give a run folder outside it")


def dataset_folder_holding(out: Path, dataset: Dataset) -> Path | None:
    """The dataset folder (its root, a folder holding its images or labels, or a DICOM series folder)
    that ``out`` is or lies in; None when ``out`` is outside them. A new sibling of the images under
    root is fine where the layout reads fixed folders (nnU-Net's imagesTr/, an index.csv), but not
    where it reads every image below root (``reads_whole_tree``): PNG predictions there would be
    read back as unlabelled images, changing the dataset's cases and its computed splits."""
    target = out.resolve()
    root = Path(dataset.root).resolve()
    if target == root or (getattr(dataset, "reads_whole_tree", False) and root in target.parents):
        return root
    by_parent: dict[Path, set[str]] = {}
    for entry in getattr(dataset, "entries", {}).values():
        for path in (Path(p) for p in (entry.image, entry.label) if p is not None):
            by_parent.setdefault(path.parent, set()).add(path.name)
    folders = set()
    for parent, names in by_parent.items():  # resolve the few parents, not every file
        real = parent.resolve()
        folders |= {real, *(real / name for name in names)}
    return next((p for p in (target, *target.parents) if p in folders), None)


def check_pixels(case: Case, source: Path | str) -> None:
    """NaN or Inf: an error naming the file and slice (datasets that are not file readers are
    checked here too). A constant image has nothing to segment: a warning naming the case, and it
    is predicted."""
    image = case.image
    check_finite(image, source, case.case_id)
    if image.size and image.min() == image.max():
        log.warning("warning: case %s (%s) is a constant image (every pixel %g): nothing to segment, "
                    "its prediction is meaningless; check the file", case.case_id, source, float(image.flat[0]))


def _source_file(dataset: Dataset, case_id: str) -> Path | str:
    """The image file a case was read from, for messages (the case id if the dataset does not say)."""
    entry = getattr(dataset, "entries", {}).get(case_id)
    return entry.image if entry is not None else case_id


def _refinement_chosen(run_dir: Path, config: dict, cache_root: str | Path, encoder: EncoderPrecision, device: str,
                       show_progress: bool) -> bool:
    """Whether SAM refinement beat the student on the run's validation cases (decided once)."""
    from fewsam.methods.samatch.refine import SamRefinedPredictor, choose_refinement

    model = load_run_model(config, device)
    predictor = SamRefinedPredictor(run_dir, model, device)
    cache = EmbeddingCache(cache_root, model, encoder)
    return bool(choose_refinement(run_dir, predictor, cache, device, show_progress)["refine"])


def _unnamed_one_class(config: dict, class_map: dict[str, str], data: str | Path, labelled: bool) -> bool:
    """Whether unlabelled data with no classes.json of its own has one class, as the run has: the
    layout named it, not the user, so it is the run's class."""
    run_classes = config.get("class_map") or {}
    return (not labelled and len(class_map) == 1 and list(run_classes) == list(class_map)
            and not (Path(data) / "classes.json").is_file())


def _check_class_map(config: dict, class_map: dict[str, str], data: str | Path, labelled: bool = True) -> None:
    """Refuse data whose classes differ from the run's; unlabelled data without a class list of its
    own (no labels, no classes.json) takes the run's classes. Unlabelled 2D images still get the
    layout's one-class coding (a mask pixel per class is what their predictions are written in), so
    for a run of more classes the message says how to name them: a classes.json. A one-class run
    needs no such file: the layout's one class ("foreground") is the run's under another name, and a
    folder of new images for a lesion model was refused until the user wrote one."""
    if not class_map or _unnamed_one_class(config, class_map, data, labelled):
        return
    if config.get("class_map") and config["class_map"] != class_map:
        hint = "" if labelled else (f"; {data} has no labels to name its classes: add a classes.json naming the "
                                    f"run's, {json.dumps(config['class_map'])}")
        raise DataError(f"{data} has classes {class_map} but the run was fitted on {config['class_map']}{hint}")
