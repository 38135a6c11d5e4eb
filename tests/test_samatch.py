"""SAM-Match: prompts from confident predictions, pseudo-label composition, the student with and
without SAM on the phantom, resume to identical weights, and `fewsam predict` on the run."""

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from fewsam.data import select_labelled, select_unlabelled, unlabelled_pool
from fewsam.methods import samatch
from fewsam.data.types import SliceRef
from fewsam.embedded import EmbeddedSlice
from fewsam.labels import IGNORE
from fewsam.methods.samatch import (QUALITY, SamMatchConfig, compose_pseudo_label, confident_boxes,
                                    ignore_unprompted, pooled_dice, student_samples)
from fewsam.train import ramp
from fewsam.methods.samatch.sam_decoder import box_batch
from fewsam.models.sam import PreprocessInfo
from fewsam.predict import predict
from fewsam.prompts import box_from_mask
from fewsam.runs import prepare_run_dir
from fewsam.runs import LAST, LOG, write_manifest
from test_supervised import TINY_STUDENT, context, one_thread, phantom  # noqa: F401 - fixtures

INFO = PreprocessInfo((40, 40), (40, 40), 40)  # original frame == SAM frame: boxes in pixels


def probs_with(regions: dict[int, tuple[slice, slice, float]], n_out: int = 4, size: int = 40) -> torch.Tensor:
    """(Q, size, size) probabilities: background 1 except where a class region sets its probability."""
    p = torch.zeros(n_out, size, size)
    p[0] = 1.0
    for k, (ys, xs, prob) in regions.items():
        p[:, ys, xs] = (1 - prob) / (n_out - 1)
        p[k, ys, xs] = prob
    return p


def test_confident_boxes_largest_component_margin_and_skips():
    p = probs_with({1: (slice(5, 15), slice(5, 20), 0.99), 3: (slice(30, 35), slice(30, 35), 0.6)})
    p[:, 25:27, 2:4] = 0.0
    p[1, 25:27, 2:4] = 0.99  # a small second component of class 1: not the prompt
    boxes = confident_boxes(p, INFO, threshold=0.95, margin=2)
    assert [k for k, _ in boxes] == [1]  # class 3 is not confident, class 2 absent: no prompts
    np.testing.assert_allclose(boxes[0][1], [3, 3, 22, 17])  # x0-2, y0-2, x1+2, y1+2 (x1, y1 exclusive)


def test_confident_boxes_argmax_region_covers_the_whole_structure():
    """A ring confident along one arc only: the argmax region's box spans the whole ring."""
    p = probs_with({2: (slice(10, 30), slice(10, 30), 0.9)})  # the ring's class, not confident...
    p[:, 10:13, 10:30] = 0.0
    p[2, 10:13, 10:30] = 0.99  # ...except along its top arc
    (_, arc), = confident_boxes(p, INFO, threshold=0.95, margin=0)
    (_, ring), = confident_boxes(p, INFO, threshold=0.95, margin=0, region="argmax")
    np.testing.assert_allclose(arc, [10, 10, 30, 13])
    np.testing.assert_allclose(ring, [10, 10, 30, 30])
    p[2, 10:13, 10:30] = 0.9  # no confident pixel left: no prompt from either region
    assert confident_boxes(p, INFO, 0.95, 0, region="argmax") == []
    with pytest.raises(ValueError):
        confident_boxes(p, INFO, 0.95, 0, region="everything")


def test_confident_boxes_scale_to_model_frame():
    info = PreprocessInfo((40, 80), (128, 256), 256)
    p = torch.zeros(4, 40, 80)
    p[0] = 1
    p[:, 10:20, 40:60] = 0
    p[2, 10:20, 40:60] = 1
    (k, box), = confident_boxes(p, info, 0.95, 0)
    mask = np.zeros((40, 80), bool)
    mask[10:20, 40:60] = True
    assert k == 2 and np.allclose(box, box_from_mask(mask, info)) and np.allclose(box, [128, 32, 192, 64])


def test_compose_pseudo_label_known_values():
    big = 20.0
    lv = torch.full((2, 3), -big)
    lv[0, 0] = big  # LV confident at (0, 0)
    rv = torch.full((2, 3), -big)
    rv[0, 1] = big
    rv[1, 2] = 0.0  # sigmoid 0.5: with 3 classes background is 1 - 0.5/3 > 0.5 -> background
    label = compose_pseudo_label({3: lv, 1: rv}, n_outputs=4)
    np.testing.assert_array_equal(label, [[3, 1, 0], [0, 0, 0]])
    # "max" background: 1 - 0.5 = 0.5 ties with RV's 0.5, argmax keeps background (first index)
    label_max = compose_pseudo_label({1: torch.tensor([[0.1]])}, n_outputs=2, background="max")
    assert label_max[0, 0] == 1  # binary: sigmoid(0.1) > 1 - sigmoid(0.1)
    with pytest.raises(ValueError):
        compose_pseudo_label({}, 4)


def test_compose_pseudo_label_smaller_mask_wins_nested_anatomy():
    """SAM's myocardium mask is the whole disk; the LV mask inside it must stay LV."""
    disk = torch.full((7, 7), -10.0)
    disk[1:6, 1:6] = 10.0  # Myo (2): the disk
    cavity = torch.full((7, 7), -10.0)
    cavity[2:5, 2:5] = 10.0  # LV (3): inside the disk
    label = compose_pseudo_label({2: disk, 3: cavity}, n_outputs=4, overlap="smaller")
    expected = np.zeros((7, 7), np.uint8)
    expected[1:6, 1:6] = 2
    expected[2:5, 2:5] = 3
    np.testing.assert_array_equal(label, expected)
    tied = compose_pseudo_label({2: disk, 3: cavity}, n_outputs=4)  # argmax: saturated tie, Myo swallows LV
    assert (tied[2:5, 2:5] == 2).all()
    with pytest.raises(ValueError):
        compose_pseudo_label({2: disk}, 4, overlap="union")


def test_pooled_dice_and_ramp():
    pred = [np.array([[1, 1, 0]]), np.array([[2, 0, 0]])]
    gt = [np.array([[1, 0, 0]]), np.array([[2, 2, 0]])]
    d = pooled_dice(pred, gt, 3)
    assert d["1"] == pytest.approx(2 / 3) and d["2"] == pytest.approx(2 / 3) and d["mean"] == pytest.approx(2 / 3)
    assert ramp(0, 10) == pytest.approx(np.exp(-5)) and ramp(10, 10) == 1.0 and ramp(-3, 10) == pytest.approx(np.exp(-5))


def test_unlabelled_subset_is_seeded_and_ordered(phantom):  # noqa: F811
    from fewsam.data import open_dataset

    ds = open_dataset(phantom)
    labelled = select_labelled(ds, n_cases=1)
    pool = unlabelled_pool(ds, labelled)
    a, b = select_unlabelled(ds, labelled, 5, 0), select_unlabelled(ds, labelled, 5, 0)
    assert a == b and len(a) == 5 and set(a) <= set(pool) and a == [r for r in pool if r in set(a)]
    assert select_unlabelled(ds, labelled, None, 0) == pool


def fit_run(data, tmp_path, run, cfg: SamMatchConfig, steps=12, kill_at=None):
    """Fit SAM-Match with the tiny SAM and student (a fresh context: SAM's decoder starts from its
    checkpoint again, as in a new process); ``kill_at`` interrupts the student's loop at that step."""
    ctx = context(data, tmp_path, n_cases=1)
    cfg = replace(cfg, steps=steps, lr=0.05, val_every=4, optimizer="sgd", **TINY_STUDENT)
    config = {"method": "samatch", "model": "tinysam", "class_map": ctx.class_map.to_json(),
              "values": ctx.values, "samatch": asdict(cfg), **cfg.derived_record(0)}
    run_dir, _ = prepare_run_dir(run, config)
    module_holder = {}
    original = samatch.train

    def train_spy(task, tcfg, rdir, show_progress=True, on_checkpoint=None, before_step=None):
        module_holder["module"] = task.module

        def kill(step):
            if kill_at is not None and step == kill_at:
                raise KeyboardInterrupt
        return original(task, tcfg, rdir, show_progress, kill, before_step)

    samatch.train = train_spy
    try:
        samatch.fit(ctx, cfg, run_dir)
    finally:
        samatch.train = original
    write_manifest(run_dir)  # what api.fit does when a fit ends
    return run_dir, module_holder["module"], ctx


SAM_CFG = SamMatchConfig(unlabeled_batch=4, unlabeled_limit=4, warmup_steps=4, refresh_every=4, ramp_steps=4,
                         sam_steps=2, sam_batch=2, sam_val_slices=4, sam_round_steps=2,
                         threshold=0.0)  # an untrained student is never confident: prompt on its argmax


def test_no_sam_runs_and_predicts(phantom, tmp_path):  # noqa: F811
    run_dir, _, ctx = fit_run(phantom, tmp_path, tmp_path / "run", SamMatchConfig(use_sam=False, unlabeled_batch=4, unlabeled_limit=8),
                         steps=8)
    log = [json.loads(line) for line in (run_dir / LOG).read_text().splitlines()]
    assert all("loss_u" in r for r in log if "loss" in r) and not any("loss_sam" in r for r in log)
    assert not (run_dir / "sam").exists() and ctx.cache.misses == 0  # FixMatch never touches SAM
    written = predict(run_dir, phantom, tmp_path / "pred", show_progress=False)
    assert len(written) == 2


def test_samatch_refreshes_reports_and_resumes_identically(phantom, tmp_path):  # noqa: F811
    straight_dir, straight, _ = fit_run(phantom, tmp_path, tmp_path / "a", SAM_CFG)
    log = [json.loads(line) for line in (straight_dir / LOG).read_text().splitlines()]
    assert any("loss_sam" in r for r in log)  # the student fitted SAM's pseudo-labels
    quality = json.loads((straight_dir / QUALITY).read_text())
    assert [r["step"] for r in quality] == [4, 8]
    assert {"student_all", "student_refined", "sam_refined"} <= set(quality[0])
    assert (straight_dir / "sam" / LAST).exists() and sorted(p.name for p in (straight_dir / "pseudo_labels").iterdir())
    rounds = sorted(p.name for p in (straight_dir / "sam").glob("round_*"))
    assert rounds == ["round_0000004", "round_0000008"]  # SAM learnt from the student before each refresh
    round_log = [json.loads(line) for line in (straight_dir / "sam" / rounds[0] / LOG).read_text().splitlines()]
    assert all("loss_student" in r for r in round_log if "loss" in r)

    with pytest.raises(KeyboardInterrupt):
        fit_run(phantom, tmp_path, tmp_path / "b", SAM_CFG, kill_at=8)
    resumed_dir, resumed, _ = fit_run(phantom, tmp_path, tmp_path / "b", SAM_CFG)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert (straight_dir / LOG).read_text() == (resumed_dir / LOG).read_text()

    written = predict(resumed_dir, phantom, tmp_path / "pred", show_progress=False)
    assert len(written) == 2
    for name in rounds:  # the resumed run's SAM rounds started from the same weights: same results
        a = torch.load(straight_dir / "sam" / name / "checkpoint_best.pt", weights_only=True)["module"]
        b = torch.load(resumed_dir / "sam" / name / "checkpoint_best.pt", weights_only=True)["module"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_student_samples_keep_only_confident_classes():
    info = PreprocessInfo((40, 40), (40, 40), 40)
    slices = [EmbeddedSlice(SliceRef("c", 0), np.zeros((1, 1, 1), np.float16), info, None, None)] * 2
    confident = probs_with({1: (slice(5, 15), slice(5, 20), 0.99), 3: (slice(30, 35), slice(30, 35), 0.6)})
    unsure = probs_with({2: (slice(5, 15), slice(5, 20), 0.7)})
    out = student_samples([confident, unsure], slices, [0, 10, 20, 30], threshold=0.95)
    assert len(out) == 1  # no confident class at all: the slice teaches SAM nothing
    assert set(np.unique(out[0].label)) == {0, 10}  # label values; unconfident class 3 -> background
    assert out[0].label[5:15, 5:20].all() and out[0].label_frame.shape == (40, 40)


def _save_best(folder, weight: float, score: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"module": {"w": torch.tensor([weight])}, "metrics": {"score": score}}, folder / "checkpoint_best.pt")


def test_sam_rounds_keep_a_round_only_if_validation_does_not_drop(tmp_path):
    class Task:
        module = torch.nn.Module()
    Task.module.register_buffer("w", torch.tensor([0.0]))
    _save_best(tmp_path, 0.0, 0.5)  # stage 1
    _save_best(tmp_path / "round_0000004", 4.0, 0.6)  # better: kept
    _save_best(tmp_path / "round_0000008", 8.0, 0.55)  # worse than round 4: dropped
    _save_best(tmp_path / "round_0000012", 12.0, 0.6)  # ties round 4: kept
    rounds = samatch.SamRounds(Task(), tmp_path, seed=0)
    assert rounds._kept_before(4)[0]["w"].item() == 0.0
    assert rounds._kept_before(8)[0]["w"].item() == 4.0
    assert rounds._kept_before(12)[0]["w"].item() == 4.0
    assert rounds._kept_before(13)[0]["w"].item() == 12.0


def test_ignore_unprompted_keeps_sams_answers_and_hides_unasked_classes():
    label = np.array([[0, 0, 2, 3]], np.uint8)  # SAM, prompted for 2 and 3
    student = np.array([[0, 1, 1, 1]])  # the student's argmax: 1 (RV) was never confident -> unprompted
    out = ignore_unprompted(label, student, prompted=[2, 3])
    np.testing.assert_array_equal(out, [[0, IGNORE, 2, 3]])  # SAM's own masks win; true background stays
    np.testing.assert_array_equal(ignore_unprompted(label, student, prompted=[1, 2, 3]), label)


class RecordingSam:
    """Stands in for SAM in the labeller: records the prompts, answers empty masks."""

    def __init__(self) -> None:
        self.calls: list[dict[str, torch.Tensor]] = []

    def predict_prompted(self, emb, **prompts):
        self.calls.append(prompts)
        return torch.full((emb.shape[0], 1, 10, 10), -1.0)


def nested_probs() -> torch.Tensor:
    """A disk (class 3, LV) inside a ring (class 2, Myo), both confident."""
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    pred = np.where(r <= 6, 3, np.where(r <= 10, 2, 0))
    return torch.from_numpy(np.eye(4)[pred].transpose(2, 0, 1) * 0.97 + 0.01).float()


@pytest.mark.parametrize("clicks", ["none", "positive", "contrast"])
def test_labeller_prompts_box_and_clicks(clicks):
    sam = RecordingSam()
    slices = [EmbeddedSlice(SliceRef("c", 0), np.zeros((1, 1, 1), np.float16), INFO, None, None)]
    cfg = SamMatchConfig(prompt_clicks=clicks, box_margin=2)
    labels, n_prompts = samatch.PseudoLabeller(sam, slices, cfg, n_outputs=4).refine([nested_probs()])
    assert n_prompts == [2] and labels[0] is not None
    prompts, = sam.calls
    np.testing.assert_allclose(prompts["boxes"].numpy(), [[8, 8, 33, 33], [12, 12, 29, 29]])  # Myo, LV + 2 px
    if clicks == "none":
        assert "points" not in prompts
        return
    points, labels = prompts["points"].numpy(), prompts["point_labels"].numpy()
    myo_point, lv_point = points[:, 0]
    np.testing.assert_allclose(lv_point, [20.5, 20.5])  # the disk's centre
    assert 6 < np.hypot(*(myo_point - 20.5)) <= 11  # on the ring, not in the cavity it surrounds
    if clicks == "positive":
        np.testing.assert_array_equal(labels, [[1], [1]])
        return
    np.testing.assert_array_equal(labels, [[1, 0], [1, 0]])  # each structure's click is the other's negative
    np.testing.assert_allclose(points[0, 1], lv_point)
    np.testing.assert_allclose(points[1, 1], myo_point)


def test_box_batch_clicks_sit_inside_each_class_and_pad():
    label = np.zeros((40, 40), np.uint8)
    label[10:15, 4:9] = 10  # odd squares: one deepest pixel each
    label[25:36, 22:33] = 20
    sample = EmbeddedSlice(SliceRef("c", 0), np.zeros((256, 64, 64), np.float16), INFO, label, label)
    only_10 = EmbeddedSlice(SliceRef("c", 1), sample.embedding, INFO, label * (label == 10), label * (label == 10))
    _, prompts, target = box_batch([sample, only_10], [(0, 10), (0, 20), (1, 10)], np.zeros(3), "cpu",
                                           clicks="contrast")
    np.testing.assert_allclose(prompts["boxes"].numpy(), [[4, 10, 9, 15], [22, 25, 33, 36], [4, 10, 9, 15]])
    first, second = [6.5, 12.5], [27.5, 30.5]  # the deepest pixels of value 10 and value 20
    np.testing.assert_allclose(prompts["points"].numpy()[:2], [[first, second], [second, first]])
    np.testing.assert_array_equal(prompts["point_labels"].numpy(), [[1, 0], [1, 0], [1, -1]])  # -1: SAM's padding
    assert target.shape == (3, 1, 40, 40) and target[1, 0, 30, 27] == 1
    _, box_only, _ = box_batch([sample], [(0, 10)], np.zeros(1), "cpu")
    assert set(box_only) == {"boxes"}


@pytest.mark.parametrize("clicks", ["none", "contrast"])  # the default "positive" runs in the tests above
def test_samatch_with_other_prompt_kinds_runs_end_to_end(phantom, tmp_path, clicks):  # noqa: F811
    run_dir, _, _ = fit_run(phantom, tmp_path, tmp_path / clicks, replace(SAM_CFG, prompt_clicks=clicks), steps=8)
    quality = json.loads((run_dir / QUALITY).read_text())
    assert [r["step"] for r in quality] == [4] and quality[0]["refined_slices"] > 0
    assert json.loads((run_dir / "config.json").read_text())["samatch"]["prompt_clicks"] == clicks
