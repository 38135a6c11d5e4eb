"""An unlabelled pool in bounded memory: SAM-Match's labeller reads the pool's embeddings back from the
embedding cache as SAM's prompts need them (2 MiB a slice; ACDC's 1,244 pool slices would hold 2.4 GiB),
as FewMatch's steps read theirs; the pool's labels, which only score the pseudo-labels, are read a slice
at a time as they are scored. Few-shot SAM's labelled slices in their dihedral views and augmented copies are
read back as its steps draw them. The embeddings and labels read back are byte for byte those held before."""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType

import numpy as np
import pytest
import torch

from fewsam.data.phantom import write_phantom_dataset
from fewsam.embedded import CacheEntries, CachedPool, EmbeddedSlice, embed_augmented, embed_refs, mark_padding
from fewsam.labels import IGNORE, value_lut
from fewsam.methods import fewmatch, fewshot, samatch
from fewsam.methods.fewshot import FewShotConfig
from fewsam.methods.samatch import QUALITY, student_samples
from fewsam.methods.student import PoolTruth, load_slices
from fewsam.runs import prepare_run_dir

EMBEDDING_BYTES = 256 * 64 * 64 * 2  # one slice's, float16
# a refresh's cheapest fit: no confident class, so SAM is asked nothing (its answers are held to the recorded
# pseudo-labels by tests/test_determinism.py)
CFG = samatch.SamMatchConfig(unlabeled_batch=2, warmup_steps=1, refresh_every=100, ramp_steps=1, sam_steps=0,
                             threshold=1.1, steps=2, val_every=2, image_size=64,
                             channels=(8, 16, 32, 64), num_res_units=1, batch_size=2)


def held_array_bytes(root: object) -> int:
    """Bytes of every numpy array reachable from ``root`` through its attributes and containers (not
    through classes, modules or functions, whose globals reach everything)."""
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, ModuleType, FunctionType, BuiltinFunctionType, MethodType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            total += obj.nbytes
            continue
        stack.extend(gc.get_referents(obj))
    return total


@pytest.fixture(scope="module")
def pool_data(tmp_path_factory):
    """A phantom whose unlabelled pool (every slice of the cases after the first) is 8 slices."""
    root = tmp_path_factory.mktemp("pool")
    return root, write_phantom_dataset(root / "data", n_train=3, n_val=1, slices=4, seed=1)


def fit_context(pool_data):
    from test_supervised import context

    root, data = pool_data
    return context(data, root, n_cases=1)


def test_samatchs_labeller_holds_none_of_the_pools_embeddings_nor_its_labels(pool_data, monkeypatch, tmp_path):
    kept = {}

    class Labeller(samatch.PseudoLabeller):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            kept["labeller"] = self

    class Refresh(samatch.PseudoLabelRefresh):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            kept["refresh"] = self

    monkeypatch.setattr(samatch, "PseudoLabeller", Labeller)
    monkeypatch.setattr(samatch, "PseudoLabelRefresh", Refresh)
    torch.set_num_threads(1)
    ctx = fit_context(pool_data)
    pool = len(ctx.unlabelled_pool(CFG))
    run, _ = prepare_run_dir(tmp_path / "run", {"method": "samatch", "samatch": {}})
    samatch.fit(ctx, CFG, run)

    assert pool == 8 and len(kept["labeller"].slices) == pool
    assert held_array_bytes(kept["labeller"]) < EMBEDDING_BYTES  # held, the pool's would be 8 of them
    unlabelled = kept["refresh"].unlabelled
    assert unlabelled.labels is None and unlabelled.originals is None  # the student frame's images only
    quality = json.loads((run / QUALITY).read_text(encoding="utf-8"))  # still scored, as read
    assert [r["step"] for r in quality] == [1] and quality[0]["slices"] == pool
    assert 0 <= quality[0]["student_all"]["mean"] <= 1


def test_fewmatchs_pool_holds_none_of_its_embeddings(pool_data):
    ctx = fit_context(pool_data)
    refs = ctx.unlabelled_pool(CFG)
    pool = fewmatch.unlabelled_embeddings(ctx, refs)
    assert len(pool) == len(refs) == 8
    assert held_array_bytes(pool) < EMBEDDING_BYTES  # held, the pool's would be 8 of them
    assert pool[2].embedding.shape == (256, 64, 64)  # what a step draws is read back


def test_a_cached_pool_reads_back_the_embeddings_held_before(pool_data):
    ctx = fit_context(pool_data)
    refs = ctx.unlabelled_pool(CFG)
    held = embed_refs(ctx.dataset, refs, ctx.cache, show_progress=False, with_label=False)
    cached = CachedPool(ctx.dataset, refs, ctx.cache, show_progress=False)
    assert not cached.entries.held and len(cached) == len(held)
    for want, got in zip(held, cached):
        assert got.ref == want.ref and got.info == want.info and got.label is None
        assert got.embedding.dtype == np.float16 and got.embedding.tobytes() == want.embedding.tobytes()
    ctx.cache.path_for(cached.entries.keys[3]).unlink()  # an entry lost meanwhile is encoded again
    assert cached[3].embedding.tobytes() == held[3].embedding.tobytes()
    label = np.ones((144, 176), np.uint8)
    labelled, plain = cached[5].labelled(label), held[5].labelled(label)
    assert labelled.embedding.tobytes() == held[5].embedding.tobytes() and labelled.label is label
    assert labelled.label_frame.tobytes() == plain.label_frame.tobytes() and cached[5].label_frame is None


def test_the_students_labels_of_the_pool_hold_no_frame_nor_embedding(pool_data):
    """SAM trains on the student's labels of the pool's confident slices, a batch of boxes a step: each
    keeps its label at the slice's size, and its embedding and model-frame label are made when read."""
    ctx = fit_context(pool_data)
    pool = CachedPool(ctx.dataset, ctx.unlabelled_pool(CFG), ctx.cache, show_progress=False)
    confident = torch.tensor([0.02, 0.02, 0.02, 0.94]).view(4, 1, 1).expand(4, 144, 176)
    samples = student_samples((confident for _ in range(len(pool))), pool, ctx.values, 0.9)
    assert len(samples) == len(pool) and all(int(s.label.min()) == ctx.values[3] for s in samples)
    assert held_array_bytes(samples) == sum(s.label.nbytes for s in samples)  # 144 x 176 bytes each
    assert samples[0].label_frame.shape == (256, 256) and int(samples[0].label_frame.max()) == 255  # padding


def test_a_cached_pool_holds_what_the_cache_cannot_keep(pool_data):
    ctx = fit_context(pool_data)
    refs = ctx.unlabelled_pool(CFG)[:3]
    ctx.cache.keeping = False  # a full disk
    for ref in refs:
        image = ctx.dataset.load(ref.case_id, with_label=False).slice_image(ref.z)
        ctx.cache.path_for(ctx.cache.key(image)).unlink(missing_ok=True)
    cached = CachedPool(ctx.dataset, refs, ctx.cache, show_progress=False)
    assert sorted(cached.entries.held) == [0, 1, 2]
    assert cached[1].embedding is cached.entries.held[1]


def test_the_pools_labels_read_a_slice_at_a_time_are_those_held_before(pool_data):
    ctx = fit_context(pool_data)
    refs = ctx.unlabelled_pool(CFG)
    originals = load_slices(ctx.dataset, refs, 64, ctx.values, keep_originals=True).originals
    truth = PoolTruth(ctx.dataset, refs, ctx.values)
    order = [0, 5, 1, 7, 4, 2, 6, 3]  # out of order across the pool's two cases
    for i in order:
        assert truth[i].dtype == np.uint8 and np.array_equal(truth[i], originals[i])
    assert len(truth._labels) <= PoolTruth.CASES_KEPT


def test_distills_pseudo_labels_hold_no_volume_of_the_teacher(pool_data, monkeypatch):
    """Each pool slice's label was kept at its own size as a view of the teacher's volume prediction, so
    every predicted volume of the pool stayed in memory until the student frames were made."""
    import weakref
    from types import SimpleNamespace

    from fewsam.methods import distill
    from fewsam.methods.student import student_label
    from fewsam.labels import value_lut

    ctx = fit_context(pool_data)
    volumes: list[weakref.ref] = []

    class Teacher:
        def predict_case(self, case, slices):
            volume = np.ones((case.num_slices, 512, 512), np.uint8)
            volumes.append(weakref.ref(volume))
            return volume

    method = SimpleNamespace(predictor=lambda *args: Teacher(), predicts_from_pixels=lambda folder: True)
    monkeypatch.setattr(distill, "get_method", lambda name: method)
    refs = ctx.unlabelled_pool(CFG)
    lut = value_lut(ctx.values)
    labels = distill.teacher_labels(ctx, pool_data[0], {}, refs, lambda label: student_label(label, 64, lut))
    gc.collect()
    assert len(labels) == len(refs) == 8 and all(tuple(label.shape) == (64, 64) for label in labels)
    assert volumes and not any(ref() is not None for ref in volumes)


COPIES = FewShotConfig(views=2, augmented_views=2)


def entries_made(monkeypatch) -> list[CacheEntries]:
    """The ``CacheEntries`` few-shot's prompt bank makes, as it makes them."""
    made: list[CacheEntries] = []

    class Entries(CacheEntries):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(fewshot, "CacheEntries", Entries)
    return made


def held_samples(ctx) -> list[EmbeddedSlice]:
    """The labelled slices in few-shot's views and copies, held, their frames' labels mapped to query indices
    frame by frame, as the fit mapped them when it held its samples."""
    held = embed_refs(ctx.dataset, ctx.labelled, ctx.cache, show_progress=False, views=COPIES.views) + \
        embed_augmented(ctx.dataset, ctx.labelled, ctx.cache, COPIES.augmented_views, ctx.seed, show_progress=False)
    lut = value_lut(ctx.values, ctx.class_map.ignore)
    return [replace(s, label_frame=mark_padding(lut[s.label_frame], s.info, IGNORE).astype(np.uint8)) for s in held]


def test_few_shots_views_and_copies_are_read_back_from_the_cache(pool_data, tmp_path, monkeypatch):
    """The labelled slices in 8 views and 8 augmented copies (ACDC's 3 labelled patients: 1,088 embeddings,
    2.2 GiB) are read back as a step draws them, with the embeddings, label frames and prototypes held before;
    an entry lost meanwhile is made and encoded again (a copy's augmentation drawn from its place)."""
    ctx = fit_context(pool_data)
    made = entries_made(monkeypatch)
    samples, shots, _ = fewshot.build_prompt_bank(ctx, COPIES, tmp_path)
    held = held_samples(ctx)
    assert len(samples) == len(held) == len(ctx.labelled) * 4 == 16
    assert held_array_bytes(samples) < EMBEDDING_BYTES and not made[0].held  # held, they would be 16 embeddings
    names = [str(v) for v in ctx.values]
    want_shots = fewshot.shot_prototypes(held[:len(ctx.labelled) * COPIES.views], list(range(len(ctx.values))), names)
    assert all(np.array_equal(a, b) for a, b in zip(shots, want_shots, strict=True))
    for key in made[0].keys:
        ctx.cache.path_for(key).unlink(missing_ok=True)
    for want, got in zip(held, samples, strict=True):
        assert (got.ref, got.view, got.info) == (want.ref, want.view, want.info)
        assert got.embedding.tobytes() == want.embedding.tobytes()
        assert got.label_frame.tobytes() == want.label_frame.tobytes()


def test_few_shots_views_and_copies_the_cache_cannot_keep_are_held(pool_data, tmp_path, monkeypatch):
    ctx = fit_context(pool_data)
    made = entries_made(monkeypatch)
    fewshot.build_prompt_bank(ctx, COPIES, tmp_path)
    for key in made[0].keys:
        ctx.cache.path_for(key).unlink(missing_ok=True)
    ctx.cache.keeping = False  # a full disk
    samples, _, _ = fewshot.build_prompt_bank(ctx, COPIES, tmp_path)
    assert len(made[1].held) == len(samples) == 16
    for want, got in zip(held_samples(ctx), samples, strict=True):
        assert got.embedding.tobytes() == want.embedding.tobytes()
