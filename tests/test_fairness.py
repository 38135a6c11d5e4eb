"""Fair error-bound scaling wired into training: group ids per case, the loss_fn factory, the API."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fewsam import api
from fewsam.data.types import Case, ClassMap, SliceRef
from fewsam.embedded import EmbeddedSlice
from fewsam.labels import IGNORE
from fewsam.errors import FewsamError
from fewsam.fairness import (FairLoss, case_groups, fair_groups_for, group_indices, per_class_equity,
                             resolve_bins)
from fewsam.losses import DiceCELoss, dice_ce_loss
from fewsam.methods import fewshot
from fewsam.models.sam import PreprocessInfo


class TableDataset:
    """Attributes by case id, as an index CSV or patient_info.csv would give them."""

    format = "h5"
    root = Path("table")

    def __init__(self, attributes: dict[str, dict]) -> None:
        self.attributes = attributes
        self.class_map = ClassMap({1: "fg", 2: "other"})

    def attributes_of(self, case_id: str) -> dict:
        return self.attributes[case_id]

    def split(self, name: str) -> list[str]:
        return ["a1"]

    def has_label(self, case_id: str) -> bool:
        return True

    def load(self, case_id: str) -> Case:
        image = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
        return Case(case_id=case_id, image=image, label=np.zeros((1, 4, 4), np.uint8), format="h5",
                    rel_path=f"{case_id}.h5", attributes=self.attributes[case_id])


DATA = TableDataset({
    "a1": {"group": "DCM", "bmi": 22.0},
    "a2": {"group": "DCM", "bmi": 31.5},
    "b1": {"group": "NOR", "bmi": 27.0},
    "u1": {"group": None, "bmi": None},
})


def test_case_groups_bins_and_unknown_ids():
    groups = case_groups(DATA, ["a1", "a2", "b1", "u1"], "bmi", "bmi:25,30")
    assert groups == {"a1": "<25", "a2": ">=30", "b1": "25-30", "u1": None}
    ids, names = group_indices(case_groups(DATA, ["a1", "a2", "b1", "u1"], "group"))
    assert names == ["DCM", "NOR"]
    assert ids == {"a1": 0, "a2": 0, "b1": 1, "u1": -1}


def test_unknown_column_and_mismatched_bins_are_one_line_errors():
    with pytest.raises(FewsamError, match="available attributes: bmi, group"):
        case_groups(DATA, ["a1", "b1"], "site")
    with pytest.raises(FewsamError, match="--bins names column 'age'"):
        resolve_bins("bmi", "age:60")


def _logits(fg: list[list[float]]) -> torch.Tensor:
    """(B, 2, 1, W) logits whose softmax gives foreground probability fg."""
    p = torch.tensor(fg, dtype=torch.float64)[:, None, None, :]
    return torch.cat([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def test_gamma_zero_through_the_wiring_is_the_unscaled_loss_exactly():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 6, 6)
    target = torch.randint(0, 3, (4, 6, 6))
    target[:, :, 4:] = IGNORE
    batch = [SliceRef(c, 0) for c in ("a1", "b1", "u1", "a2")]
    loss = fair_groups_for("group", 0.0, None, DATA, batch).loss(IGNORE)
    assert torch.equal(loss(logits, target, batch), dice_ce_loss(logits, target, ignore_index=IGNORE))


def test_higher_loss_group_gets_its_predictions_scaled_down_by_hand():
    # Group DCM (a1): foreground p = 0.5 on both pixels -> soft Dice 2*1/(1+2) = 2/3, loss 1/3.
    # Group NOR (b1): p = 0.75 -> Dice 2*1.5/(1.5+2) = 6/7, loss 1/7 (the best group).
    # gamma = 1: w_DCM = tanh((1/7)/(1/3)) / tanh(1) = tanh(3/7)/tanh(1); w_NOR = 1.
    # DCM's probabilities become p' = 0.5w per pixel: overlap 2p', sum p 2p', sum t 2
    # -> Dice 4p'/(2p'+2) = 2p'/(p'+1). CE is unscaled: mean of -log p = (ln 2 + ln 4/3) / 2.
    logits, target = _logits([[0.5, 0.5], [0.75, 0.75]]), torch.ones(2, 1, 2, dtype=torch.long)
    batch = [SliceRef("a1", 0), SliceRef("b1", 0)]
    loss = fair_groups_for("group", 1.0, None, DATA, batch).loss(IGNORE)
    w = math.tanh(3 / 7) / math.tanh(1.0)
    p = 0.5 * w
    dice = (2 * p / (p + 1) + 6 / 7) / 2
    ce = (math.log(2) + math.log(4 / 3)) / 2
    expected = 0.5 * ce + 0.5 * (1 - dice)
    got = loss(logits, target, batch).item()
    assert got == pytest.approx(expected, abs=1e-5)
    assert got > dice_ce_loss(logits, target).item()  # the worse group's loss grew


def test_unknown_cases_get_weight_one():
    loss = FairLoss({"a1": 0}, gamma=3.0)
    assert loss.group_tensor([SliceRef("a1", 0), SliceRef("zz", 0), "a1"]).tolist() == [0, -1, 0]


class LinearHead(nn.Module):
    """Stands in for the prototype decoder: a 1x1 conv from the embedding to class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 1)

    def forward(self, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.conv(emb)


def _samples() -> list[EmbeddedSlice]:
    rng = np.random.default_rng(1)
    out = []
    for cid in ("a1", "a2", "b1", "u1"):
        label = rng.integers(0, 3, (8, 8)).astype(np.uint8)
        label[6:] = IGNORE
        emb = rng.normal(size=(4, 8, 8)).astype(np.float16)
        out.append(EmbeddedSlice(SliceRef(cid, 0), emb, PreprocessInfo((6, 8), (6, 8), 8), label, None))
    return out


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_fewshot_task_uses_the_fair_loss(gamma):
    samples = _samples()
    shots = [np.ones((2, 4), np.float32)] * 3
    cfg = fewshot.FewShotConfig(batch_size=4)
    torch.manual_seed(0)
    head = LinearHead()
    fair_loss = fair_groups_for("group", gamma, None, DATA, samples).loss(IGNORE)
    plain = fewshot.FewShotTask(head, samples, shots, cfg, DiceCELoss(IGNORE), None, [], [0, 1, 2])
    fair = fewshot.FewShotTask(head, samples, shots, cfg, fair_loss, None, [], [0, 1, 2])
    a, _ = plain.training_loss(np.random.default_rng(5), 0)
    b, _ = fair.training_loss(np.random.default_rng(5), 0)
    assert torch.equal(a, b) if gamma == 0 else b.item() > a.item()


def test_fit_passes_the_fair_loss_and_records_groups(tmp_path, monkeypatch):
    from dataclasses import replace

    from fewsam import fitting, methods
    from fewsam.train import TrainResult
    from fewsam.models import registry

    labelled = [SliceRef(c, 0) for c in ("a1", "a2", "b1", "u1")]
    monkeypatch.setattr(fitting, "open_dataset", lambda data, attributes=None: DATA)
    monkeypatch.setattr(fitting, "select_labelled", lambda dataset, n_cases=None, n_slices=None, **options: labelled)
    monkeypatch.setattr(registry, "load_model", lambda *args, **kwargs: SimpleNamespace(
        weights_sha256="0", preprocess_signature=lambda: "p"))
    monkeypatch.setattr(fitting, "EmbeddingCache", lambda root, model, precision: None)
    seen = {}
    def spy_fit(ctx, cfg, run_dir):
        seen["loss"] = ctx.labelled_loss(IGNORE)
        return TrainResult(best_score=0.0, best_step=0, steps_run=0, seconds=0.0)

    spy = replace(methods.get_method("fewshot"), fit=spy_fit)
    monkeypatch.setitem(methods._loaded, "fewshot", spy)
    (tmp_path / "data").mkdir()
    opts = api.FitOptions(data=tmp_path / "data", run=tmp_path / "run", labeled_slices=4, fair_attribute="bmi",
                          fair_gamma=0.5, fair_bins="bmi:25,30")
    api.fit("fewshot", opts)
    assert isinstance(seen["loss"], FairLoss) and seen["loss"].loss.gamma == 0.5
    record = json.loads((tmp_path / "run" / "fair_groups.json").read_text())
    assert record["labelled_cases_per_group"] == {"25-30": 1, "<25": 1, ">=30": 1}
    assert record["labelled_cases_without_group"] == 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["fair"] == {"attribute": "bmi", "gamma": 0.5, "bins": "bmi:25,30", "attributes": None}
    with pytest.raises(FewsamError, match="available attributes"):
        api.fit("fewshot", api.FitOptions(data=tmp_path / "data", run=tmp_path / "run2", labeled_slices=4,
                                          fair_attribute="race"))
    assert not (tmp_path / "run2").exists()  # refused before the run folder is made


def test_per_class_equity_by_hand():
    result = {"per_class": {"cup": {"dice": 0.6, "iou": 0.5}},
              "groups": {"x": {"per_class": {"cup": {"dice": 0.5, "iou": 0.4}}},
                         "y": {"per_class": {"cup": {"dice": 0.8, "iou": 0.6}}}}}
    got = per_class_equity(result)["cup"]
    assert got["es_dice"] == pytest.approx(0.6 / (1 + 0.1 + 0.2))
    assert got["es_iou"] == pytest.approx(0.5 / (1 + 0.1 + 0.1))
    assert got["worst_group_gap"] == pytest.approx(0.3)


def _slice_set(ids: list[str], seed: int):
    from fewsam.methods.student import SliceSet

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(len(ids), 1, 16, 16, generator=g)
    labels = torch.randint(0, 3, (len(ids), 16, 16), generator=g)
    return SliceSet([SliceRef(c, 0) for c in ids], images, labels, [(16, 16)] * len(ids))


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_supervised_and_samatch_tasks_use_the_fair_loss(gamma):
    from fewsam.methods.samatch import SamMatchConfig, SamMatchTask
    from fewsam.methods.supervised import SupervisedConfig, SupervisedTask

    cfg = SupervisedConfig(image_size=16, batch_size=4)
    labelled, unlabelled = _slice_set(["a1", "a2", "b1", "u1"], 0), _slice_set(["x", "y"], 1)
    fair = fair_groups_for("group", gamma, None, DATA, labelled.refs).loss(None)
    plain = DiceCELoss(None)
    torch.manual_seed(0)
    module = nn.Conv2d(1, 3, 1)
    sm_cfg = SamMatchConfig(use_sam=False, unlabeled_batch=2, image_size=16, batch_size=4)
    pairs = [(SupervisedTask(module, labelled, cfg, plain, [], [0, 1, 2]),
              SupervisedTask(module, labelled, cfg, fair, [], [0, 1, 2])),
             (SamMatchTask(module, labelled, unlabelled, sm_cfg, plain, [], [0, 1, 2]),
              SamMatchTask(module, labelled, unlabelled, sm_cfg, fair, [], [0, 1, 2]))]
    for plain_task, scaled in pairs:
        a, _ = plain_task.training_loss(np.random.default_rng(3), 0)
        b, _ = scaled.training_loss(np.random.default_rng(3), 0)
        assert torch.equal(a, b) if gamma == 0 else b.item() > a.item()
