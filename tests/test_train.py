import json

import pytest
import torch
from torch import nn

from fewsam.train import BEST, LAST, LOG, TrainConfig, lr_factor, train


class ToyTask:
    """Linear regression with a known solution: enough to test the loop's bookkeeping."""

    def __init__(self) -> None:
        torch.manual_seed(123)
        self.module = nn.Linear(3, 1)
        gen = torch.Generator().manual_seed(7)
        self.x = torch.randn(64, 3, generator=gen)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3

    def training_loss(self, rng, step):
        idx = torch.from_numpy(rng.choice(64, 8, replace=False))
        noise = torch.randn(8, 1) * 0.01  # uses torch's RNG, which must also resume exactly
        return ((self.module(self.x[idx]) - self.y[idx] - noise) ** 2).mean(), {}

    def validate(self):
        with torch.no_grad():
            return {"score": -float(((self.module(self.x) - self.y) ** 2).mean())}


CFG = TrainConfig(steps=40, lr=0.1, optimizer="sgd", grad_clip=0, val_every=10, warmup_steps=2, seed=3)


def test_loop_learns_and_keeps_best(tmp_path):
    task = ToyTask()
    before = task.validate()["score"]
    result = train(task, CFG, tmp_path, show_progress=False)
    assert result.best_score > before and result.best_score > -0.05
    assert (tmp_path / BEST).exists() and (tmp_path / LAST).exists()
    lines = [json.loads(l) for l in (tmp_path / LOG).read_text().splitlines()]
    assert sum("validation" in l for l in lines) == 4


def test_resume_after_kill_reaches_same_weights(tmp_path):
    straight = ToyTask()
    train(straight, CFG, tmp_path / "a", show_progress=False)

    class Killed(Exception):
        pass

    def kill_at_20(step):
        if step == 20:
            raise Killed

    interrupted = ToyTask()
    with pytest.raises(Killed):
        train(interrupted, CFG, tmp_path / "b", show_progress=False, on_checkpoint=kill_at_20)
    resumed = ToyTask()  # a fresh process: weights re-initialised, then restored from the checkpoint
    train(resumed, CFG, tmp_path / "b", show_progress=False)
    for p, q in zip(straight.module.parameters(), resumed.module.parameters()):
        assert torch.equal(p, q)
    assert (tmp_path / "a" / LOG).read_text() == (tmp_path / "b" / LOG).read_text()


def test_same_seed_same_result(tmp_path):
    a, b = ToyTask(), ToyTask()
    train(a, CFG, tmp_path / "a", show_progress=False)
    train(b, CFG, tmp_path / "b", show_progress=False)
    assert torch.equal(a.module.weight, b.module.weight)


@pytest.mark.parametrize("schedule,step,expected", [
    ("cosine", 0, 0.5), ("cosine", 2, 1.0), ("cosine", 40, 0.0), ("poly", 21, 0.5 ** 0.9), ("constant", 30, 1.0),
])
def test_lr_schedule(schedule, step, expected):
    cfg = TrainConfig(steps=40, lr=1e-4, warmup_steps=2, schedule=schedule)
    assert lr_factor(step, cfg) == pytest.approx(expected)


def test_weight_average_known_values():
    from fewsam.train import WeightAverage

    module = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(0.0)
    average = WeightAverage(module, decay=0.5)
    with torch.no_grad():
        module.weight.fill_(1.0)
    average.update(module)  # warm-up decay min(0.5, 1/10) = 0.1: 0.1 * 0 + 0.9 * 1
    assert average.shadow["weight"].item() == pytest.approx(0.9)
    average.update(module)  # min(0.5, 2/11) = 2/11
    assert average.shadow["weight"].item() == pytest.approx(0.9 * 2 / 11 + 9 / 11)
    live = average.swapped_in(module)
    assert module.weight.item() == pytest.approx(average.shadow["weight"].item()) and live["weight"].item() == 1.0


def test_averaged_fit_saves_the_average_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "ema": 0.9})
    straight = ToyTask()
    train(straight, cfg, tmp_path / "a", show_progress=False)
    best = torch.load(tmp_path / "a" / BEST, weights_only=True)["module"]
    last = torch.load(tmp_path / "a" / LAST, weights_only=False)
    assert not torch.equal(best["weight"], last["module"]["weight"])  # BEST holds the average, not the live weights
    assert last["average"]["updates"] == 40

    _killed_at_20(tmp_path / "b", cfg)
    train(ToyTask(), cfg, tmp_path / "b", show_progress=False)
    assert (tmp_path / "a" / LOG).read_text() == (tmp_path / "b" / LOG).read_text()
    resumed_best = torch.load(tmp_path / "b" / BEST, weights_only=True)["module"]
    assert all(torch.equal(best[k], resumed_best[k]) for k in best)


def _killed_at_20(run_dir, cfg=CFG):
    class Killed(Exception):
        pass

    def kill_at_20(step):
        if step == 20:
            raise Killed

    with pytest.raises(Killed):
        train(ToyTask(), cfg, run_dir, show_progress=False, on_checkpoint=kill_at_20)


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"not a checkpoint"])
def test_a_damaged_resume_checkpoint_names_the_file_and_the_way_out(tmp_path, damage):
    from fewsam.errors import RunError

    straight = ToyTask()
    train(straight, CFG, tmp_path / "a", show_progress=False)
    _killed_at_20(tmp_path / "b")
    last = tmp_path / "b" / LAST
    last.write_bytes(damage(last.read_bytes()))
    with pytest.raises(RunError) as err:
        train(ToyTask(), CFG, tmp_path / "b", show_progress=False)
    message = str(err.value)
    assert str(last) in message and "delete it to restart this fit from its first step" in message
    assert "\n" not in message
    last.unlink()  # the way out: the fit starts again and ends where an uninterrupted one does
    restarted = ToyTask()
    train(restarted, CFG, tmp_path / "b", show_progress=False)
    assert all(torch.equal(p, q) for p, q in zip(straight.module.parameters(), restarted.module.parameters()))
    assert (tmp_path / "a" / LOG).read_text() == (tmp_path / "b" / LOG).read_text()


def test_a_resume_checkpoint_whose_best_is_gone_is_refused(tmp_path):
    from fewsam.errors import RunError

    _killed_at_20(tmp_path)
    (tmp_path / BEST).unlink()
    with pytest.raises(RunError, match=f"{BEST} is missing although .*{LAST} refers to it; delete it"):
        train(ToyTask(), CFG, tmp_path, show_progress=False)


def test_a_half_written_log_line_is_dropped_on_resume(tmp_path):
    straight = ToyTask()
    train(straight, CFG, tmp_path / "a", show_progress=False)
    _killed_at_20(tmp_path / "b")
    with open(tmp_path / "b" / LOG, "a") as fh:
        fh.write('{"step": 21, "lo')  # killed while appending the next step's record
    resumed = ToyTask()
    train(resumed, CFG, tmp_path / "b", show_progress=False)
    assert all(torch.equal(p, q) for p, q in zip(straight.module.parameters(), resumed.module.parameters()))
    assert (tmp_path / "a" / LOG).read_text() == (tmp_path / "b" / LOG).read_text()


class PeakedTask(ToyTask):
    """Validation scores that peak at the third validation, then fall: a fit that stopped improving."""

    SCORES = [0.1, 0.3, 0.5, 0.4, 0.45, 0.2, 0.9, 0.95]

    def __init__(self) -> None:
        super().__init__()
        self.validations = 0

    def validate(self):
        self.validations += 1
        return {"score": self.SCORES[self.validations - 1]}


def test_patience_stops_a_plateaued_fit_keeps_its_best_and_stays_stopped(tmp_path):
    from dataclasses import replace

    from fewsam.progress import log_to

    cfg = replace(CFG, steps=80, patience=3)
    task = PeakedTask()
    with log_to(tmp_path / "fit.log"):
        result = train(task, cfg, tmp_path, show_progress=False)
    assert (tmp_path / "fit.log").read_text().splitlines()[-1].endswith(
        "no better validation score in 3 validations: stopped at step 60 of 80 (--patience); the best, step 30, "
        "is kept")
    assert (result.best_step, result.best_score, result.steps_run) == (30, 0.5, 60)
    assert task.validations == 6  # steps 40, 50, 60 did not beat step 30: no step after 60 ran
    assert torch.load(tmp_path / BEST, weights_only=False)["step"] == 30
    again = PeakedTask()
    assert train(again, cfg, tmp_path, show_progress=False).steps_run == 60 and again.validations == 0
    full = PeakedTask()
    assert train(full, replace(cfg, patience=0), tmp_path / "full", show_progress=False).best_step == 80
    late = PeakedTask()  # the same scores, judged only from step 50 on (a warm-up): the peak at 30 counts as 50
    assert train(late, replace(cfg, patience_after=50), tmp_path / "late", show_progress=False).steps_run == 80


def test_semi_supervised_fits_judge_plateaus_after_their_warm_up_and_ramp():
    from fewsam.methods.fewmatch import FewMatchConfig
    from fewsam.methods.samatch.config import SamMatchConfig

    assert FewMatchConfig(patience=3).train_config(0).patience_after == 50 + 100
    assert SamMatchConfig(patience=3, warmup_steps=100, ramp_steps=300).train_config(0).patience_after == 400

