"""The one training loop of fewsam. Methods say what a batch contributes; the loop does the rest.

A method hands over a ``TrainTask`` (its trainable module, how to sample a batch and compute its
loss, how to score the validation list). The loop owns the optimiser, the learning-rate
schedule, seeding, validation-based model selection, checkpoints and resume, the progress bar
and the fit log. A run killed at any point resumes from its last checkpoint to the same result,
because the checkpoint carries the random generators' states along with the weights. Under
``torchrun`` the same loop runs data-parallel (``fewsam.distributed.ddp``): every rank draws the
same batch and computes its share of it, the gradients are averaged, rank 0 validates and writes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from fewsam.atomic import atomic_write, atomic_write_bytes
from fewsam.config import ConfigError, listed, raised_loss_weights
from fewsam.distributed import ddp
from fewsam.errors import RunError
from fewsam.progress import progress_bar, record, tell
from fewsam.runs import BEST, LAST, LOG


@dataclass(frozen=True)
class TrainConfig:
    """What the loop needs to optimise. Each method derives it from its own config
    (``FewShotConfig.train_config``...), so steps and learning rate have no default here: the
    method's config is the one source of a recipe. The rest are the loop's mechanics."""

    steps: int
    lr: float
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # "adamw" | "sgd"
    momentum: float = 0.9
    schedule: str = "cosine"  # "cosine" | "poly" | "constant"
    warmup_steps: int = 10
    val_every: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); validated and kept
    patience: int = 0  # stop after this many validations in a row without a better score (0: never)
    patience_after: int = 0  # plateaus count only after this step (a semi-supervised fit's warm-up and ramp)


class WeightAverage:
    """Exponential moving average of a module's floating-point state, with the usual warm-up
    (decay min(ema, (1 + n) / (10 + n))), so early updates are not dominated by random weights.

    Small-data fits are noisy step to step; the average is what gets validated and saved, which
    makes model selection depend less on where the last batch happened to land.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    def update(self, module: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        with torch.no_grad():
            for k, v in module.state_dict().items():
                if k in self.shadow:
                    self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)

    def swapped_in(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Load the average into ``module``; returns the live weights to put back."""
        live = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict({**live, **self.shadow})
        return live

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy a saved average into this one's tensors: they stay on the module's device, while a
        resume checkpoint is read onto the CPU (a GPU fit would otherwise fail at its first step
        after resuming, adding GPU weights to a CPU average)."""
        with torch.no_grad():
            for name, saved in state["shadow"].items():
                self.shadow[name].copy_(saved)
        self.updates = state["updates"]


class TrainTask(Protocol):
    """What a method gives the loop. A task whose loss adds terms weighted by options of its config may name
    those fields in ``loss_weights`` (and keep the config as ``cfg``): a non-finite loss then names the ones
    set above their default."""

    module: nn.Module

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Sample a batch with ``rng`` and return (loss, scalars to log)."""
        ...

    def validate(self) -> dict[str, float]:
        """Metrics on the validation list; must include "score" (higher is better)."""
        ...


@dataclass
class TrainResult:
    """What ``fewsam.api.fit`` returns: the best validation score (the mean Dice over the validation volumes
    that selected the kept weights; NaN for a method that trains nothing) and its step, the steps the run has
    completed, the seconds this call spent in the training loop, and whether the run had finished before."""

    best_score: float
    best_step: int
    steps_run: int
    seconds: float
    already_finished: bool = False  # the run had finished before this call: nothing was trained or written


def finished_result(run_dir: Path) -> TrainResult:
    """The outcome of a fit that had finished before, read back from its folder (nothing is trained):
    the best checkpoint's score and step, and the steps run from the resume state where it is readable."""
    best = torch.load(Path(run_dir) / BEST, map_location="cpu", weights_only=True)
    score, best_step = float(best["metrics"]["score"]), int(best["step"])
    try:
        steps_run = int(_read_resume_state(Path(run_dir) / LAST)["state"]["step"])
    except (RunError, KeyError, TypeError, ValueError):  # the resume state is not needed by a finished run
        steps_run = best_step
    return TrainResult(score, best_step, steps_run, 0.0, already_finished=True)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch and return the numpy generator the loop passes to the task (no global numpy RNG)."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine / poly(0.9) decay / constant, as a multiple of cfg.lr."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "poly":
        return (1 - progress) ** 0.9
    return 1.0


def ramp(step: int, length: int) -> float:
    """Sigmoid ramp-up exp(-5 (1 - t)^2), t = step / length clipped to [0, 1]: how semi-supervised
    losses phase in, so early, poor pseudo-labels weigh little."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(np.exp(-5.0 * (1.0 - t) ** 2))


StepHook = Callable[[int], None]


def train(
    task: TrainTask,
    cfg: TrainConfig,
    run_dir: Path,
    show_progress: bool = True,
    on_checkpoint: StepHook | None = None,
    before_step: StepHook | None = None,
    name: str = "fit",
) -> TrainResult:
    """Run (or resume) training; leaves RUN/checkpoint_best.pt with the best-validated weights.

    ``before_step(step)`` runs before each step's batch is drawn: the place for work on a schedule
    that changes what later batches see (SAM-Match's pseudo-label refresh). ``on_checkpoint(step)``
    runs after each validation checkpoint. Both must be deterministic functions of the step and
    of files in the run folder, so that a resumed run repeats them exactly. ``name`` labels the
    progress bar and, unless it is "fit", the text log's lines: a fit run inside another fit (SAM's
    decoder stage and rounds in SAM-Match) is then told apart from the main one in RUN/fit.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = seed_everything(cfg.seed)
    params = [p for p in task.module.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    average = WeightAverage(task.module, cfg.ema) if cfg.ema > 0 else None
    state = _resume(run_dir, task, optimizer, rng, average)
    ddp.broadcast_state(task.module)  # under torchrun: every rank starts from rank 0's model
    start = time.perf_counter()
    whose = "" if name == "fit" else f"{name}: "  # a fit inside the fit (SAM-Match's SAM stage) says so in the log
    if state["step"] and not plateaued(state, cfg):
        tell(f"{whose}resumed at step {state['step']} of {cfg.steps}")
    with progress_bar(show_progress and ddp.is_main()) as bar:
        job = bar.add_task(name, total=cfg.steps, completed=state["step"])
        for step in range(state["step"], cfg.steps):
            if plateaued(state, cfg):
                break
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg)
            if before_step is not None:
                before_step(step)
            task.module.train()
            loss, scalars = task.training_loss(rng, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value = ddp.average_gradients(task.module, params, loss)  # torchrun: mean over ranks
            refuse_non_finite_loss(loss_value, step, whose, raised_loss_weights(getattr(task, "cfg", None),
                                                                             getattr(task, "loss_weights", ())))
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if average is not None:
                average.update(task.module)
            _log(run_dir, {"step": step + 1, "loss": loss_value, **scalars})
            bar.update(job, advance=1, description=f"{name} loss {loss_value:.3f}")
            if (step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps:
                state = _validate_and_checkpoint(task, optimizer, rng, run_dir, state, step + 1, average, whose)
                if on_checkpoint:
                    on_checkpoint(step + 1)
                if plateaued(state, cfg) and step + 1 < cfg.steps:
                    validations = f"{cfg.patience} validation" + ("s" if cfg.patience != 1 else "")
                    tell(f"{whose}no better validation score in {validations}: stopped at step "
                         f"{step + 1} of {cfg.steps} (--patience); the best, step {state['best_step']}, is kept")
    return TrainResult(state["best_score"], state["best_step"], state["step"], time.perf_counter() - start)


def refuse_non_finite_loss(loss_value: float, step: int, whose: str = "", raised_weights: Sequence[str] = ()) -> None:
    """Stop before a NaN or infinite loss reaches the weights: one such step makes every weight NaN,
    and the fit would go on to validate, select and save a model that predicts nothing, with no
    word said. Checked after the mean over ranks, so every torchrun rank stops at the same step.
    ``raised_weights``: loss weights set above their default (``raised_loss_weights``), the first suspects."""
    if math.isfinite(loss_value):
        return
    advice = "Check the data for extreme intensities, or lower --lr"
    if raised_weights:
        them, weigh = ("them", "weigh terms") if len(raised_weights) > 1 else ("it", "weighs a term")
        advice = (f"{listed(list(raised_weights))} {weigh} of the loss above the default: lower {them}; else check the "
                  "data for extreme intensities, or lower --lr")
    raise RunError(f"{whose}the training loss is {loss_value} at step {step + 1}; nothing of this step was applied. "
                   f"{advice}")


def plateaued(state: dict, cfg: TrainConfig) -> bool:
    """Whether the last ``cfg.patience`` validations after ``cfg.patience_after`` all failed to beat
    the best score: a semi-supervised fit is not judged before its unlabelled loss has ramped up.
    A function of the checkpointed state alone, so a resumed fit that had stopped stays stopped."""
    since = max(state["best_step"], cfg.patience_after)
    return cfg.patience > 0 and state["step"] - since >= cfg.patience * cfg.val_every


def earliest_patience_stop(patience: int, val_every: int, patience_after: int = 0) -> int:
    """The first step at which ``plateaued`` can stop a fit: the first validation (step ``val_every``)
    is the best so far, and ``patience`` more validations after it (and after ``patience_after``)
    must fail to beat it."""
    since = max(val_every, patience_after)
    return (math.ceil(since / val_every) + patience) * val_every


def refuse_idle_patience(cfg: TrainConfig) -> None:
    """--patience that cannot stop the fit before its last step (too few validations: --val-every near
    --steps, or a long warm-up) would run every step, while the user believes a plateau ends it."""
    if cfg.patience == 0 or earliest_patience_stop(cfg.patience, cfg.val_every, cfg.patience_after) < cfg.steps:
        return
    usable = next((v for v in range(cfg.val_every - 1, 0, -1)
                   if earliest_patience_stop(cfg.patience, v, cfg.patience_after) < cfg.steps), None)
    after = f" after step {cfg.patience_after} (--warmup-steps + --ramp-steps)" if cfg.patience_after else ""
    validations = f"{cfg.patience} validation" + ("s" if cfg.patience != 1 else "")
    way = f"lower --val-every to {usable} or less" if usable else "give more --steps"
    raise ConfigError(f"--patience {cfg.patience} can never stop this fit early: it stops once {validations} in a "
                      f"row{after} score no better than the best, and with --steps {cfg.steps} and --val-every "
                      f"{cfg.val_every} the fit reaches its last step first; {way}, or leave --patience out")


def _validate_and_checkpoint(task, optimizer, rng, run_dir: Path, state: dict, step: int,
                             average: WeightAverage | None = None, whose: str = "") -> dict:
    """Validate (the weight average when there is one), keep the best, write the resume checkpoint."""
    live = average.swapped_in(task.module) if average is not None else None
    task.module.eval()
    with torch.no_grad():
        metrics = ddp.from_main(task.validate)  # torchrun: rank 0 validates, every rank gets its metrics
    _log(run_dir, {"step": step, "validation": metrics})
    state = dict(state, step=step)
    improved = metrics["score"] > state["best_score"]
    record(f"{whose}validation at step {step}: score {metrics['score']:.4f}" + (" (best so far)" if improved else ""))
    if improved:
        state.update(best_score=metrics["score"], best_step=step)
        atomic_torch_save({"module": task.module.state_dict(), "step": step, "metrics": metrics}, run_dir / BEST)
    if live is not None:
        task.module.load_state_dict(live)
    checkpoint = {
        "average": None if average is None else average.state_dict(),
        "module": task.module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "state": state,
    }
    atomic_torch_save(checkpoint, run_dir / LAST)
    ddp.barrier()  # torchrun: no rank reads the checkpoints before rank 0 has written them
    return state


def _resume(run_dir: Path, task: TrainTask, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
            average: WeightAverage | None = None) -> dict:
    """Restore the last checkpoint if there is one; the log is truncated to that step."""
    path = run_dir / LAST
    if not path.exists():
        if ddp.is_main():
            (run_dir / LOG).unlink(missing_ok=True)
        return {"step": 0, "best_score": -math.inf, "best_step": 0}
    ckpt = _read_resume_state(path)
    task.module.load_state_dict(ckpt["module"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if average is not None:
        average.load_state_dict(ckpt["average"])
    rng.bit_generator.state = ckpt["rng"]
    torch.set_rng_state(ckpt["torch_rng"])
    _truncate_log(run_dir / LOG, ckpt["state"]["step"])
    return ckpt["state"]


RESUME_KEYS = ("average", "module", "optimizer", "rng", "torch_rng", "state")


def _read_resume_state(path: Path) -> dict:
    """The checkpoint at ``path``, or a RunError that names it and the way out: without it the
    fit restarts from its first step (the run's configuration and data are unchanged, so the
    restarted fit ends where the interrupted one would have)."""
    way_out = "delete it to restart this fit from its first step"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch reports a damaged file by many exception types
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunError(f"{path} is damaged ({reason}); {way_out}") from err
    if not (isinstance(ckpt, dict) and all(key in ckpt for key in RESUME_KEYS) and isinstance(ckpt["state"], dict)):
        raise RunError(f"{path} is not a fewsam resume checkpoint; {way_out}")
    best = path.parent / BEST
    if ckpt["state"].get("best_step", 0) > 0 and not best.exists():
        raise RunError(f"{best} is missing although {path} refers to it; {way_out}")
    if ckpt["state"].get("best_step", 0) > 0:  # damaged, it would be blessed by the manifest the fit ends with
        try:
            load_best(path.parent)
        except RunError as err:
            raise RunError(f"{best} is damaged ({_reason(err)}); delete {path} to restart this fit from its "
                           "first step") from err
    return ckpt


def _reason(err: RunError) -> str:
    """The parenthesised reason of a ``load_run_file`` / ``load_best`` error."""
    text = str(err)
    return text[text.find("(") + 1:text.rfind(")")] if "(" in text else text


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log's records up to ``step``; a line a kill left half-written is dropped."""
    if not path.exists() or not ddp.is_main():
        return
    lines = path.read_text(errors="replace").splitlines()
    keep = [line for line in lines if (logged := _logged_step(line)) is not None and logged <= step]
    atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())


def _logged_step(line: str) -> int | None:
    """The step of one log line; None for a line that is not a whole record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def _log(run_dir: Path, record: dict[str, Any]) -> None:
    """One record appended to the fit log (by rank 0 alone under torchrun)."""
    if not ddp.is_main():
        return
    with open(run_dir / LOG, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def load_best(folder: Path) -> tuple[dict[str, torch.Tensor], float]:
    """(weights, validation score) of the best checkpoint the loop kept in ``folder``."""
    path = Path(folder) / BEST
    best = load_run_file(path)
    try:
        return best["module"], float(best["metrics"]["score"])
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{path} is not a fewsam checkpoint (no {err}); delete the run folder and fit again") from err


def load_run_file(path: Path) -> Any:
    """A file a fit wrote into its run folder (tensors only), or a RunError naming it: a file that a
    copy cut short or a failing disk emptied otherwise ends in torch's EOFError, which the command
    line can only report as a bare "Aborted!"."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise RunError(f"{path} is missing from the run; delete the run folder and fit again") from err
    except Exception as err:  # torch reports a damaged file by many exception types
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunError(f"{path} is damaged ({reason}); delete the run folder and fit again") from err


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file: a kill never leaves a half-written checkpoint. Under
    torchrun rank 0 alone writes: every rank holds the same object, and one writer per file keeps
    the run folder rank 0's."""
    if not ddp.is_main():
        return
    atomic_write(path, lambda fh: torch.save(obj, fh))
