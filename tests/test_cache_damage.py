"""The embedding cache and the Python API under mistakes and damage.

Covers: cache entries that are damaged (zero bytes, truncated) being encoded again and said once;
entries whose checksum holds but whose embedding is of another shape or dtype, not finite, or whose
record lacks or mistypes a field, being taken as damaged rather than served or raised on; a non-finite
embedding not being kept; ``fit`` and ``embed_dataset`` refusing a cache folder inside the data, empty
or a file, as the command line does; ``fit`` refusing options that are not a ``FitOptions`` and a config
class given in place of an instance; the log of a second fit in one process listing that fit's
notices, not an earlier fit's; the student's tuple settings (U-Net channels, scale range), set
from Python only, checked for kind, count and limits when the config is made; and ``predict`` and
``embed_dataset`` naming an argument of the wrong kind (None for a path, a number for a split).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest

from fewsam import progress
from fewsam.cache import EmbeddingCache
from fewsam.errors import CacheError, FewsamError
from tests.conftest import FakeSam


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    monkeypatch.setattr(progress, "_said", {})


def _images(n: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((20, 24)).astype(np.float32) for _ in range(n)]


# --- damaged entries ------------------------------------------------------------------------------

def test_damaged_entries_are_encoded_again_and_said_once(tmp_path, caplog):
    """A zero-byte or truncated entry (a copy cut short, a full disk elsewhere) was re-encoded without
    a word, so a cache damaged throughout looked like a cache that had simply been emptied."""
    images, sam = _images(2), FakeSam()
    cache = EmbeddingCache(tmp_path, sam)
    cache.embed(images)
    first, second = (cache.path_for(cache.key(image)) for image in images)
    first.write_bytes(b"")
    second.write_bytes(second.read_bytes()[:40])
    with caplog.at_level(logging.INFO, logger="fewsam"):
        got = EmbeddingCache(tmp_path, sam).embed(images)
    assert sam.encode_calls == 4 and all(e.array.shape == (4, 8, 8) for e in got)
    said = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(said) == 1 and str(cache.dir) in said[0] and "encoded again" in said[0]


def _write_entry(cache: EmbeddingCache, image: np.ndarray, array: np.ndarray, **meta_changes) -> None:
    """An entry whose checksum matches ``array``, with ``meta_changes`` applied to its record."""
    meta = {"key": cache.key(image), "signature": cache.signature, "original_hw": [20, 24],
            "resized_hw": [20, 24], "image_size": 32, "sha256": hashlib.sha256(array.tobytes()).hexdigest()}
    meta.update(meta_changes)
    meta = {k: v for k, v in meta.items() if v is not ...}
    np.savez(cache.path_for(cache.key(image)), embedding=array,
             meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


GOOD = np.ones((4, 8, 8), np.float16)


@pytest.mark.parametrize("array, meta_changes", [
    (np.ones((4, 64), np.float16), {}),  # another shape over a valid checksum
    (np.ones((4, 8, 8), np.float32), {}),  # another dtype
    (np.full((4, 8, 8), np.nan, np.float16), {}),  # not finite
    (GOOD, {"original_hw": None}),  # a record field of the wrong kind: was a TypeError
    (GOOD, {"resized_hw": [20]}),
    (GOOD, {"signature": ...}),  # a record field missing: was "written by another model"
    (GOOD, {"key": ...}),
], ids=["shape", "dtype", "nan", "hw-null", "hw-short", "no-signature", "no-key"])
def test_an_entry_that_is_not_what_put_writes_is_encoded_again(tmp_path, array, meta_changes):
    image, sam = _images(1)[0], FakeSam()
    cache = EmbeddingCache(tmp_path, sam)
    cache.embed([image])
    expected = cache.get(image).array
    _write_entry(cache, image, array, **meta_changes)
    assert cache.get(image) is None
    got = cache.embed([image])[0]
    assert sam.encode_calls == 2
    np.testing.assert_array_equal(got.array, expected)
    assert got.info.original_hw == (20, 24)


def test_a_non_finite_embedding_is_used_but_not_kept(tmp_path):
    """An encoder whose numbers overflow gives NaN; kept, it would be served to every later fit."""
    image, sam = _images(1)[0], FakeSam()
    cache = EmbeddingCache(tmp_path, sam)
    nan = np.full((4, 8, 8), np.nan, np.float32)
    cache.put(image, nan, sam.preprocess(image)[1])
    assert not cache.path_for(cache.key(image)).exists()


# --- the Python API -------------------------------------------------------------------------------

@pytest.fixture
def phantom(tiny_sam_phantom):
    return tiny_sam_phantom


def _fit(phantom, run, **options):
    from fewsam.api import FitOptions, fit
    from fewsam.methods.fewshot import FewShotConfig

    values = {"labeled_slices": 2, "cache": str(run.parent / "cache"), "show_progress": False,
              "precision": "fp32", **options}
    return fit("fewshot", FitOptions(data=phantom, run=run, **values),
               FewShotConfig(augmented_views=0, steps=2, val_every=2, views=1, batch_size=2))


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("entry", ["fit", "embed"])
def test_the_api_refuses_a_cache_inside_the_data(phantom, tmp_path, entry):
    """``fewsam fit`` and ``fewsam embed`` refuse it; their Python functions filled the dataset with
    cache folders of ``.npz`` entries."""
    from fewsam.api import embed_dataset

    before = _files(phantom)
    cache = str(phantom / "cache")
    with pytest.raises(CacheError, match="inside the data folder"):
        if entry == "fit":
            _fit(phantom, tmp_path / "run", cache=cache)
        else:
            embed_dataset(phantom, cache_root=cache, show_progress=False, precision="fp32")
    assert _files(phantom) == before


@pytest.mark.parametrize("entry", ["fit", "embed"])
def test_the_api_refuses_an_empty_cache_or_one_that_is_a_file(phantom, tmp_path, monkeypatch, entry):
    """An empty cache path filled the working folder; a file was a NotADirectoryError traceback."""
    from fewsam.api import embed_dataset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("mine")

    def run(cache):
        if entry == "fit":
            return _fit(phantom, tmp_path / "run", cache=cache)
        return embed_dataset(phantom, cache_root=cache, show_progress=False, precision="fp32")

    expected = "--cache is empty" if entry == "fit" else "cache_root must be a path, not ''"  # the API's own name
    with pytest.raises(FewsamError, match=expected):
        run("")
    with pytest.raises(CacheError, match="is a file"):
        run(str(tmp_path / "a_file"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "data"]


def test_fit_refuses_options_that_are_no_fit_options_and_a_config_class(tmp_path):
    """A dict of options was an AttributeError from inside fit; a config class was "not a type"."""
    from fewsam.api import FitOptions, fit
    from fewsam.methods.fewshot import FewShotConfig

    with pytest.raises(FewsamError, match="as a FitOptions, not a dict"):
        fit("fewshot", {"data": tmp_path, "run": tmp_path / "run"})
    with pytest.raises(FewsamError, match="as a FitOptions, not a FewShotConfig"):
        fit("fewshot", FewShotConfig(), FitOptions(run=tmp_path / "run"))
    with pytest.raises(FewsamError, match=r"FewShotConfig instance, not the class FewShotConfig: FewShotConfig\(\)"):
        fit("fewshot", FitOptions(run=tmp_path / "run"), FewShotConfig)
    assert not (tmp_path / "run").exists()


def test_a_second_fit_in_one_process_logs_its_own_notices(phantom, tmp_path):
    """Each fit's RUN/fit.log listed every notice the process had said, so a fit's log told of an
    earlier fit's data; what this fit was told but the terminal had already heard stays in it."""
    from fewsam.runs import TEXT_LOG

    overlap = "also labelled for training"
    _fit(phantom, tmp_path / "first", val_split="train")  # its validation cases are its labelled ones
    _fit(phantom, tmp_path / "second")
    first, second = ((tmp_path / run / TEXT_LOG).read_text() for run in ("first", "second"))
    assert overlap in first and overlap not in second
    assert "prompt decoder in fp32" in first and "prompt decoder in fp32" in second


@pytest.mark.parametrize("change, says", [
    ({"channels": (8, "16")}, "channels must be a tuple of items, each a whole number, not (8, '16')"),
    ({"channels": (8, 16.5)}, "channels must be a tuple of items, each a whole number"),
    ({"channels": (8, 0)}, "channels must be at least 1, not 0"),
    ({"channels": (8,)}, "channels must list at least two levels"),
    ({"scale_range": 0.9}, "scale_range must be a tuple of 2 items, each a number, not 0.9"),
    ({"scale_range": (0.9,)}, "scale_range must be a tuple of 2 items"),
    ({"scale_range": (-1.0, 1.0)}, "scale_range must be greater than 0.0, not -1.0"),
    ({"scale_range": (1.1, 0.9)}, "scale_range must run from low to high, not (1.1, 0.9); e.g. (0.9, 1.1)"),
], ids=["text-channel", "float-channel", "zero-channel", "one-level", "number-range", "short-range",
        "negative-scale", "reversed-range"])
def test_a_student_config_tuple_of_the_wrong_kind_is_refused_when_made(change, says):
    """The U-Net's channels and the weak view's scale range, set only from Python, were taken as
    given: the fit then ended in a TypeError, IndexError or ValueError from the network or the
    augmentation, after its run folder was made."""
    from fewsam.config import ConfigError
    from fewsam.methods.supervised import SupervisedConfig

    with pytest.raises(ConfigError) as raised:
        SupervisedConfig(**change)
    assert says in str(raised.value)


def test_a_student_config_tuple_may_be_a_list_as_config_json_holds_it():
    from fewsam.methods.supervised import SupervisedConfig

    assert SupervisedConfig(channels=[8, 16], scale_range=[0.8, 1.2], image_size=32).channels == [8, 16]


def test_predict_and_embed_dataset_name_an_argument_of_the_wrong_kind(phantom, tmp_path):
    """None for a path or a number for a split was a TypeError from pathlib or an AttributeError
    (``'int' object has no attribute 'endswith'``) from the split reader."""
    from fewsam.api import embed_dataset, predict
    from fewsam.config import ConfigError

    run, cache = tmp_path / "run", tmp_path / "cache"
    _fit(phantom, run)
    calls = {
        "predict: out must be a path, not None": lambda: predict(run, phantom, None, cache_root=cache),
        "predict: cache_root must be a path, not None": lambda: predict(run, phantom, tmp_path / "p", cache_root=None),
        "predict: split must be text or None, not 3": lambda: predict(run, phantom, tmp_path / "p", split=3,
                                                                     cache_root=cache),
        "embed_dataset: split must be text or None, not 3": lambda: embed_dataset(phantom, split=3, cache_root=cache),
        "embed_dataset: data must be a path, not None": lambda: embed_dataset(None, cache_root=cache),
    }
    for says, call in calls.items():
        with pytest.raises(ConfigError) as raised:
            call()
        assert str(raised.value) == says
    assert not (tmp_path / "p").exists()
