"""Distill: a U-Net student trained on the labelled slices plus a fitted run's predictions on the
unlabelled pool (its pseudo-labels).

A few-shot / FewMatch decoder segments well from a few cases but sees each slice through a frozen
64x64 embedding, and a handful of labelled patients leaves it free to mistake one ventricle for
another on patients unlike them. A student that learns pixels from hundreds of pseudo-labelled
slices of many patients (with the teacher's own post-processing: mirroring, cavity rule, largest
components) sees far more anatomy than the labelled cases show, under geometric and photometric
noise (a "noisy student"), and then predicts from pixels alone: no SAM, no embedding cache.

The teacher is any fitted run of the same data, labelled set and label values (checked, so no
labelled slice of another budget can leak in). Without ``--teacher`` the fit makes its own: few-shot
SAM with its default recipe, fitted first into RUN/teacher_fit/ on the same data, budget, seed,
cache and precision (a run folder of its own, resumed with the rest), so one command goes from a
few labelled slices to the student. Its pseudo-labels are computed once and stored in the run
folder, so a resumed fit does not label the pool again.

The student learns the class layout from many patients; the teacher keeps sharper boundaries (it
sees each slice through SAM's encoder). At the end of a fit the two can be blended: on each slice
where they agree on where the classes are (``class_agreement`` >= ``BLEND_GATE``) their class
probabilities are averaged; where they disagree (the teacher swapping two classes on a patient
unlike its labelled ones) the student's stand. The blend is kept if it scores higher on the
validation cases; the teacher's predictor files are then copied into RUN/teacher/ (the run stays
self-contained) and the run predicts through SAM's encoder and the embedding cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from fewsam.config import ConfigError, UnlabelledPoolConfig, option
from fewsam.data.types import Case, SliceRef
from fewsam.distributed import local_part
from fewsam.embedded import CaseSlices
from fewsam.errors import DataError, RunError
from fewsam.fitting import FitContext, LabelledLoss, say_unused_options
from fewsam.inference import (CAVITY_RULE_HELP, POSTPROCESS, CavityRule, chosen_val_dice, postprocessing_choice,
                              stack_volume)
from fewsam.labels import index_lut, value_lut
from fewsam.losses import dice_ce_loss
from fewsam.methods import Method, get_method
from fewsam.methods.student import (SliceSet, StudentFitConfig, StudentPredictor, build_unet, draw_batch,
                                    load_labelled, load_slices, load_val_cases, streamed_probabilities,
                                    strong_photometric, student_label, student_postprocessing_choice, validate_student,
                                    weak_view)
from fewsam.methods.supervised import student_predictor
from fewsam.models.acceleration import prepare_student
from fewsam.probabilities import ProbabilityStage
from fewsam.progress import say_once
from fewsam.progress import tracked
from fewsam.runs import (BEST, CONFIG, COPIED_RUN, DATA_HASH, LAST, MANIFEST, check_run, data_sha256, read_config,
                         write_json)
from fewsam.train import TrainResult, atomic_torch_save, load_best, load_run_file, train

PSEUDO_FILE = "pseudo_labels.pt"
OWN_TEACHER = "teacher_fit"  # RUN/teacher_fit/: the few-shot run a fit without --teacher makes first
TEACHER_COPY = COPIED_RUN  # RUN/teacher/: the teacher's predictor files, when the blend is kept
# What only the loss on the pseudo-labelled pool reads: idle with --pseudo-weight 0 (the teacher still blends).
PSEUDO_LOSS_ONLY = ("unlabeled_batch", "noisy", "unlabeled_limit", "unlabeled_split")
BLEND_GATE = 0.5  # class agreement below which a slice keeps the student's probabilities alone


@dataclass(frozen=True)
class DistillConfig(StudentFitConfig, UnlabelledPoolConfig):
    """The shared student recipe, plus where its pseudo-labels come from and how much they weigh."""

    teacher: str | None = option(None, "Fitted run folder (e.g. fewmatch) whose predictions on the unlabelled "
                                 "pool become the student's pseudo-labels (default: few-shot SAM with its "
                                 "defaults, fitted first into RUN/teacher_fit).")
    unlabeled_batch: int = option(8, "Pseudo-labelled slices per step.", min=1)
    pseudo_weight: float = option(1.0, "Weight of the Dice + CE loss on the pseudo-labelled slices.", min=0.0)
    noisy: bool = option(True, "Strong photometric noise (brightness, contrast, blur, cutout) on the "
                         "pseudo-labelled slices, as in noisy-student training.", flag="--noisy/--no-noisy")
    cavity_rule: str | None = option(None, CAVITY_RULE_HELP, none_means="none, no rule")
    test_mirroring: bool = option(True, "Average each prediction over the slice's four mirror images (as nnU-Net "
                                  "does) unless validation finds the single view significantly better; "
                                  "4 U-Net passes per slice.",
                                  flag="--test-mirroring/--no-test-mirroring")
    teacher_blend: bool = option(True, "Average the student's and the teacher's class probabilities on slices where "
                                 "the two agree on where the classes are (the student alone elsewhere) if that "
                                 "scores higher on validation; the run then also predicts through SAM.",
                                 flag="--teacher-blend/--no-teacher-blend")


def teacher_config(ctx: FitContext, cfg: DistillConfig) -> tuple[Path, dict]:
    """The teacher's folder and config.json, refused unless its fit finished with its files intact
    (``check_run``: a teacher still fitting, or stopped before its first validation, has weights
    that change or are not there) and it was fitted on the same labelled slices, label values and
    SAM weights as this fit."""
    if not cfg.teacher:  # fit() fits its own teacher first; only a caller that skips it gets here
        raise ConfigError("say which fitted run teaches the student: --teacher RUN")
    folder = Path(cfg.teacher)
    if not folder.exists():
        raise ConfigError(f"--teacher {folder} does not exist (moved or deleted?); give the folder of a finished fit "
                          "(e.g. fewmatch)")
    config = check_run(folder)
    refuse_unfitted_teacher(folder, config)
    refs = [f"{r.case_id}:{r.z}" for r in ctx.labelled]
    if config.get("labelled", {}).get("refs") != refs:
        raise ConfigError(f"the teacher {folder} was fitted on other labelled slices than this fit's budget; "
                          "give the same --labeled-cases / --labeled-slices as the teacher's fit")
    if list(config.get("values", [])) != ctx.values:
        raise ConfigError(f"the teacher {folder} predicts label values {config.get('values')}, this data has "
                          f"{ctx.values}")
    if config.get("weights_sha256") and ctx.model is not None and config["weights_sha256"] != ctx.model.weights_sha256:
        raise ConfigError(f"the teacher {folder} was fitted on other SAM weights; give its --model / --checkpoint")
    refuse_teacher_of_other_data(ctx, folder, config)
    return folder, config


def refuse_teacher_of_other_data(ctx: FitContext, folder: Path, config: dict) -> None:
    """The teacher's data hash (its labelled slices and validation cases) against this data's: case ids
    alone match across datasets that name their cases alike (two exports, a relabelled copy), and a
    teacher fitted on other images or labels would pass its labels off as this data's."""
    stored = config.get(DATA_HASH)
    if not stored:  # a run recorded before fewsam hashed its data
        return
    val_split = config.get("val_split") or "val"
    try:
        val_ids = ctx.dataset.split(val_split)
    except DataError:
        val_ids = None
    if val_ids is None or data_sha256(ctx.dataset, ctx.labelled, val_ids) != stored:
        raise ConfigError(f"the teacher {folder} was fitted on other images or labels than {ctx.dataset.root} holds "
                          f"(its labelled slices or its validation cases, --val-split {val_split}, differ); give a "
                          "teacher fitted on this data")


def refuse_unfitted_teacher(folder: Path, config: dict) -> None:
    """A run with nothing fitted (zero-shot ``prompted``) prompts SAM from each case's own labels,
    which the unlabelled pool lacks: it cannot teach, whatever the labelled budget."""
    method = get_method(config.get("method"))
    if method.fit is None:
        raise ConfigError(f"the teacher {folder} is a {method.name} run: nothing was fitted and it prompts SAM from "
                          "each case's own labels, so it cannot label the unlabelled pool; give a fitted run "
                          "(e.g. fewshot or fewmatch) as --teacher")


def refuse_self_teaching(cfg: DistillConfig, run_dir: Path) -> None:
    """--teacher naming this fit's own --out would read the student's unfinished folder as its teacher."""
    if cfg.teacher and Path(cfg.teacher).resolve() == run_dir.resolve():
        raise ConfigError(f"--teacher {cfg.teacher} is this fit's own --out; give the folder of a finished fit "
                          "(e.g. fewmatch) as --teacher and another folder as --out")


def teacher_labels(ctx: FitContext, folder: Path, config: dict, refs: list[SliceRef],
                   keep: Callable[[np.ndarray], torch.Tensor]) -> list[torch.Tensor]:
    """The teacher's predicted label values on each unlabelled slice, each passed through ``keep`` (to the
    student frame) as its case is predicted: a pool of CT slices at their own size (512 x 512 each) would
    hold gigabytes, and a slice kept as a view of its volume would hold the whole volume."""
    method = get_method(config.get("method"))
    predictor = method.predictor(folder, config, ctx.model, ctx.device, ctx.values)
    wanted: dict[str, list[int]] = {}
    for ref in refs:
        wanted.setdefault(ref.case_id, []).append(ref.z)
    by_ref: dict[tuple[str, int], torch.Tensor] = {}
    for case_id in tracked(list(wanted), "pseudo-label", ctx.show_progress):
        case: Case = ctx.dataset.load(case_id, with_label=False)
        slices = [] if method.predicts_from_pixels(folder) else CaseSlices(case, ctx.cache, ctx.device)
        volume = predictor.predict_case(case, slices)
        for z in wanted[case_id]:
            by_ref[(case_id, z)] = keep(np.asarray(volume[z]))
        del case, slices, volume
    return [by_ref[(r.case_id, r.z)] for r in refs]


def unlabelled_refs(ctx: FitContext, cfg: DistillConfig) -> list[SliceRef]:
    """The unlabelled pool the teacher labels, refused when it is empty (nothing to distil)."""
    refs = ctx.unlabelled_pool(cfg)
    if not refs:
        raise DataError("no unlabelled training slices are left; use fewer labelled cases or `fit supervised`")
    return refs


def pseudo_labelled(ctx: FitContext, cfg: DistillConfig, run_dir: Path) -> SliceSet:
    """The unlabelled pool in the student frame, labelled by the teacher (stored in RUN, reused on resume)."""
    refs = unlabelled_refs(ctx, cfg)
    data = load_slices(ctx.dataset, refs, cfg.image_size, ctx.values, with_label=False)
    names = [f"{r.case_id}:{r.z}" for r in refs]
    saved = stored_pseudo_labels(run_dir / PSEUDO_FILE)
    fitted = teacher_fingerprint(Path(cfg.teacher))
    if saved.get("refs") == names and saved.get("teacher") == str(Path(cfg.teacher).resolve()):
        if saved.get("teacher_fit", fitted) == fitted:
            data.labels = saved["labels"]
            return data
        refuse_refitted_teacher(Path(cfg.teacher), run_dir)
    folder, config = teacher_config(ctx, cfg)
    lut = value_lut(ctx.values)
    data.labels = torch.stack(teacher_labels(ctx, folder, config, refs,
                                             lambda label: student_label(label, cfg.image_size, lut)))
    atomic_torch_save({"refs": names, "teacher": str(folder.resolve()), "teacher_fit": fitted, "labels": data.labels},
                      run_dir / PSEUDO_FILE)
    return data


def teacher_fingerprint(folder: Path) -> str:
    """sha256 of the files listed in the teacher's manifest.json (the sizes and hashes of every file
    its predictions come from): it changes when the teacher is fitted again into the same folder,
    and not when only its config.json names a moved data folder."""
    files = json.loads((folder / MANIFEST).read_text()).get("files", {})
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def refuse_refitted_teacher(folder: Path, run_dir: Path) -> None:
    """The pool was labelled by a teacher since fitted again into the same folder: before the student's
    first checkpoint the new teacher labels it again; after it, a resumed student would mix the old
    teacher's labels with the new teacher's blend and match neither fit, so it is refused."""
    if (run_dir / LAST).exists():
        raise ConfigError(f"the teacher {folder} was fitted again since this fit labelled its pool with it; fit "
                          f"into another --out, or delete {run_dir} to start this fit over with the new teacher")


def stored_pseudo_labels(path: Path) -> dict[str, Any]:
    """RUN/pseudo_labels.pt as an earlier start of this fit stored it; {} when it is absent or damaged
    (the teacher labels the pool again, to the same labels: they are a function of teacher and data)."""
    if not path.exists():
        return {}
    try:
        saved = load_run_file(path)
    except RunError:
        return {}
    return saved if isinstance(saved, dict) and "labels" in saved else {}


class DistillTask:
    """Each step: augmented labelled slices (their loss, fair scaling included) + augmented, noised
    pseudo-labelled slices (Dice + CE against the teacher), through one forward pass."""

    loss_weights = ("pseudo_weight",)

    def __init__(self, module: torch.nn.Module, labelled: SliceSet, pseudo: SliceSet, cfg: DistillConfig,
                 loss_fn: LabelledLoss, val_cases: list[Case], values: list[int], device: str = "cpu") -> None:
        self.module, self.labelled, self.pseudo, self.cfg = module, labelled, pseudo, cfg
        self.loss_fn, self.val_cases, self.values, self.device = loss_fn, val_cases, values, device

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        idx_l, idx_u = draw_batch(rng, self.labelled, cfg.batch_size), draw_batch(rng, self.pseudo, cfg.unlabeled_batch)
        x_l, y_l = weak_view(self.labelled, idx_l, rng, cfg)
        x_u, y_u = weak_view(self.pseudo, idx_u, rng, cfg)
        if cfg.noisy:
            x_u = strong_photometric(x_u, rng)
        part_l, part_u = local_part(len(idx_l)), local_part(len(idx_u))  # torchrun: this rank's share
        idx_l, x_l, y_l, x_u, y_u = idx_l[part_l], x_l[part_l], y_l[part_l], x_u[part_u], y_u[part_u]
        logits = self.module(torch.cat([x_l, x_u]).to(self.device))
        loss_x = self.loss_fn(logits[: len(x_l)], y_l.to(self.device), [self.labelled.refs[i] for i in idx_l])
        loss_u = dice_ce_loss(logits[len(x_l):], y_u.to(self.device))
        return loss_x + cfg.pseudo_weight * loss_u, {"loss_x": float(loss_x.detach()),
                                                      "loss_u": float(loss_u.detach())}

    def validate(self) -> dict[str, float]:
        return validate_student(self.module, self.val_cases, self.cfg, self.values, self.device)


def fit(ctx: FitContext, cfg: DistillConfig, run_dir: Path) -> TrainResult:
    """Label the pool with the teacher (once), train the student on both sets, then choose its
    post-processing (cavity rule, largest components, mirroring) on the validation cases."""
    refuse_self_teaching(cfg, run_dir)
    if cfg.pseudo_weight == 0:
        say_unused_options(cfg, PSEUDO_LOSS_ONLY, "--pseudo-weight 0 turns the loss on the teacher's pseudo-labels "
                                                  "off, so the student learns from the labelled slices alone")
    if cfg.teacher:  # a named teacher is read first: its checks are quick
        teacher_config(ctx, cfg)
    # what the student itself refuses is refused next: a fit without --teacher then fits its
    # teacher, which can take longer than the student's whole fit
    rule = None if cfg.cavity_rule is None else CavityRule.parse(cfg.cavity_rule, ctx.class_map)
    labelled = load_labelled(ctx, cfg)
    val_cases = load_val_cases(ctx)
    unlabelled_refs(ctx, cfg)
    if not cfg.teacher:
        cfg = with_own_teacher(ctx, cfg, run_dir)
        teacher_config(ctx, cfg)
    pseudo = pseudo_labelled(ctx, cfg, run_dir)
    torch.manual_seed(ctx.seed)
    module = prepare_student(build_unet(cfg, len(ctx.values)).to(ctx.device), ctx.acceleration)
    task = DistillTask(module, labelled, pseudo, cfg, ctx.labelled_loss(None), val_cases, ctx.values, ctx.device)
    result = train(task, cfg.train_config(ctx.seed), run_dir, ctx.show_progress)
    module.load_state_dict(load_best(run_dir)[0])
    choice = student_postprocessing_choice(module, val_cases, cfg, ctx.values, rule, cfg.test_mirroring, ctx.device,
                                           ctx.show_progress, [ctx.dataset.subject_of(c.case_id) for c in val_cases])
    if cfg.teacher_blend:
        choice = teacher_blend_choice(ctx, cfg, run_dir, module, val_cases, choice)
    write_json(run_dir / POSTPROCESS, choice)
    return result


def with_own_teacher(ctx: FitContext, cfg: DistillConfig, run_dir: Path) -> DistillConfig:
    """``cfg`` as given when it names a teacher; else few-shot SAM, default recipe, fitted (or
    resumed, or read back when finished) into RUN/teacher_fit/ with this fit's data, budget, seed,
    cache, precision and fair scaling, and ``cfg`` pointing at it."""
    if cfg.teacher:
        return cfg
    if ctx.options is None:
        raise ConfigError("say which fitted run teaches the student: --teacher RUN")
    from fewsam.api import fit as fit_method  # the API runs every method's fit; imported here, where it is used

    folder = run_dir / OWN_TEACHER
    say_once(f"no --teacher given: few-shot SAM (its default recipe) is fitted first into {folder}, then its "
             "predictions on the unlabelled pool teach the student")
    fit_method("fewshot", replace(ctx.options, run=folder), own_teacher_config())
    return replace(cfg, teacher=str(folder))


def own_teacher_config() -> Any:
    """The recipe of the teacher a fit without --teacher makes: few-shot SAM's defaults."""
    from fewsam.methods.fewshot import FewShotConfig  # a method module of its own, registered beside this one

    return FewShotConfig()


def class_agreement(a: np.ndarray, b: np.ndarray, n_classes: int) -> float:
    """Mean Dice between two (H, W) class-index maps over the foreground classes either shows (1 when
    neither shows one): low where the two put the classes in different places, whatever their boundaries."""
    scores = [2.0 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c))
              for c in range(1, n_classes) if np.any(a == c) or np.any(b == c)]
    return float(np.mean(scores)) if scores else 1.0


def blended_probabilities(student: list[np.ndarray], teacher: list[np.ndarray]) -> list[np.ndarray]:
    """Per slice, the mean of the two (Q, H, W) probability maps where their argmax maps agree on the
    class layout (``class_agreement`` >= ``BLEND_GATE``), else the student's alone."""
    return list(blend_each(student, teacher))


def blend_each(student: Iterable[np.ndarray], teacher: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """``blended_probabilities`` of two streams, slice by slice as they come: a long volume's two sets
    of probabilities are never all held."""
    for s, t in zip(student, teacher, strict=True):
        t = np.asarray(t, dtype=np.float32)
        agree = class_agreement(s.argmax(axis=0), t.argmax(axis=0), s.shape[0]) >= BLEND_GATE
        yield 0.5 * (s + t) if agree else s


def blended_volume(student: Iterable[np.ndarray], teacher: Iterable[np.ndarray], values: list[int]) -> np.ndarray:
    """(D, H, W) label values of the blend of one case's student and teacher probabilities (lists, or
    streams read as they come)."""
    lut = index_lut(values)
    # map, not a list comprehension, whose loop variable would hold a slice while the next is made
    return stack_volume(list(map(lambda p: lut[p.argmax(axis=0)], blend_each(student, teacher))))


def teacher_blend_choice(ctx: FitContext, cfg: DistillConfig, run_dir: Path, module: torch.nn.Module,
                         val_cases: list[Case], chosen: dict[str, Any]) -> dict[str, Any]:
    """``chosen`` (the student's post-processing record) with the teacher blend kept if it scores
    strictly higher on validation (after its own post-processing choice); both scores. Keeping it
    copies the teacher's predictor files into RUN/teacher/."""
    folder, config = teacher_config(ctx, cfg)
    teacher = get_method(config.get("method")).predictor(folder, config, ctx.model, ctx.device, ctx.values)
    if ctx.model is None or not hasattr(teacher, "probabilities") or isinstance(teacher, StudentPredictor):
        say_once(f"teacher blend skipped: a {config.get('method')} teacher gives no SAM-based probabilities to blend")
        return {**chosen, "teacher_blend": False}
    module.eval()
    mirror = bool(chosen.get("mirror"))
    blended = []
    for case in tracked(val_cases, "blend val", ctx.show_progress):
        slices = CaseSlices(case, ctx.cache, ctx.device)
        student = streamed_probabilities(module, case, cfg, ctx.device, mirror)
        blended.append((case, blended_volume(student, teacher.probabilities(slices), ctx.values)))
    rule = None if cfg.cavity_rule is None else CavityRule.parse(cfg.cavity_rule, ctx.class_map)
    record = postprocessing_choice(blended, ctx.values, rule)
    scores = {"val_dice_student": chosen_val_dice(chosen), "val_dice_teacher_blend": chosen_val_dice(record)}
    keep = scores["val_dice_teacher_blend"] > scores["val_dice_student"]
    if keep:
        copy_teacher(folder, run_dir / TEACHER_COPY)
    return {**chosen, **(record if keep else {}), "teacher_blend": keep, **scores}


def copy_teacher(folder: Path, target: Path) -> None:
    """The files the teacher's predictor reads (config, best weights, prompt bank, post-processing),
    copied through a temporary folder so that a kill leaves no half copy. A teacher that is itself
    a distill run with its blend kept predicts through its own copied teacher: that copy comes along
    (RUN/teacher/teacher/), so a second round of distillation predicts as its fit validated."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    _copy_predictor_files(folder, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _copy_predictor_files(folder: Path, target: Path) -> None:
    for path in folder.iterdir():
        if path.is_file() and (path.name in (CONFIG, BEST, POSTPROCESS) or path.suffix == ".pt" and
                               path.name not in ("checkpoint_last.pt", PSEUDO_FILE)):
            shutil.copy2(path, target / path.name)
    if (folder / TEACHER_COPY).is_dir() and blend_kept(folder):
        (target / TEACHER_COPY).mkdir()
        _copy_predictor_files(folder / TEACHER_COPY, target / TEACHER_COPY)


def blend_kept(run_dir: Path) -> bool:
    """Whether the distill run in ``run_dir`` predicts with the teacher blend."""
    post = Path(run_dir) / POSTPROCESS
    return post.exists() and bool(json.loads(post.read_text()).get("teacher_blend", False))


class BlendedPredictor:
    """A distill run that kept the teacher blend: the student's and the copied teacher's probabilities
    blended slice by slice (``blended_probabilities``), then the run's post-processing."""

    def __init__(self, run_dir: Path, model: Any, device: str = "cpu") -> None:
        self.student = StudentPredictor(run_dir, device)
        self.values = self.student.values
        teacher_dir = Path(run_dir) / TEACHER_COPY
        config = read_config(teacher_dir)
        self.teacher = get_method(config.get("method")).predictor(teacher_dir, config, model, device,
                                                                  self.student.values)

    def probabilities(self, slices: CaseSlices) -> Iterator[np.ndarray]:
        """Each slice's blended (Q, H, W) class probabilities, as they come: what a distill run
        taught by this one blends with its own student (a teacher that reads SAM's embeddings, as the blend asks)."""
        return blend_each(self.student.probabilities(slices.case), self.teacher.probabilities(slices))

    def case_probabilities(self, case: Case, slices: CaseSlices) -> Iterator[np.ndarray]:
        """The blend ``predict_case`` takes its labels from, as ``fewsam predict --save-probabilities`` asks for it."""
        return blend_each(self.student.probabilities(case), self.teacher.probabilities(slices))

    def labels_from(self, case: Case, slices: CaseSlices, probabilities: Iterable[np.ndarray]) -> np.ndarray:
        """``predict_case``'s answer made from ``probabilities`` (``case_probabilities``, as they stream)."""
        return self.student.labels_from(case, slices, probabilities)

    def probability_stage(self) -> ProbabilityStage:
        """The blend of the student's and the teacher's probabilities (each mirror-averaged where its run
        chose so), before the student's post-processing."""
        return self.student.probability_stage("the blend of the U-Net's and the teacher's probabilities")

    def predict_case(self, case: Case, slices: list) -> np.ndarray:
        """Both models' probabilities streamed and blended slice by slice (``blend_each``)."""
        return self.student.postprocess(blended_volume(self.student.probabilities(case),
                                                       self.teacher.probabilities(slices), self.student.values))


def _predictor(run_dir: Path, config: dict, model: Any, device: str, values: list[int]) -> Any:
    if blend_kept(run_dir):
        return BlendedPredictor(run_dir, model, device)
    return student_predictor(run_dir, config, model, device, values)


METHOD = Method("distill", DistillConfig, fit, _predictor, pixels_only=lambda run_dir: not blend_kept(run_dir))
