"""A cache on read-only storage (a lab's shared cache, filled once): its entries are read, an
embedding it lacks is encoded and used without being stored (said once), and nothing is written
into it. Running as root, read-only is simulated by ``os.access`` saying no for the cache, or by the
write itself being refused."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from fewsam.cache import EmbeddingCache
from fewsam.errors import CacheError

NOTE = "is read-only: the entries it holds are read"


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``os.access`` answers no to writing in ``folder`` or anything below it."""
    real = os.access
    folder = folder.absolute()

    def access(path, mode, *args, **kwargs):
        inside = Path(path).absolute() == folder or folder in Path(path).absolute().parents
        return False if inside and mode & os.W_OK else real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder below ``folder``: its bytes (files) and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if NOTE in r.getMessage()]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A fewshot run of the tiny SAM on the phantom, its writable cache holding every entry predict
    needs, and the predictions made through it; the tiny SAM stays loaded for the module's tests."""
    import torch
    from test_supervised import tiny_sam

    from fewsam.api import FitOptions, fit
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.methods.fewshot import FewShotConfig

    tmp = tmp_path_factory.mktemp("ro")
    monkey = pytest.MonkeyPatch()
    for where in ("fewsam.models.registry.load_model", "fewsam.api.load_model", "fewsam.predict.load_model"):
        monkey.setattr(where, lambda *args, **kwargs: tiny_sam())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = write_phantom_dataset(tmp / "data", n_train=2, n_val=1, slices=2, seed=1)
        fit("fewshot", FitOptions(data=data, run=tmp / "run", labeled_slices=2, cache=str(tmp / "cache"),
                                  show_progress=False, precision="fp32"),
            FewShotConfig(augmented_views=0, steps=2, val_every=2, views=1, batch_size=2))
        yield data, tmp / "run", tmp / "cache", _predict(tmp / "run", data, tmp / "pred", tmp / "cache")
    finally:
        torch.set_num_threads(threads)
        monkey.undo()


def _predict(run: Path, data: Path, out: Path, cache: Path) -> dict[str, bytes]:
    from fewsam.predict import predict

    written = predict(run, data, out, "all", cache, show_progress=False, precision="fp32")
    return {str(p.relative_to(out)): p.read_bytes() for p in written}


def test_a_full_read_only_cache_serves_predict_and_embed_and_is_left_untouched(fitted, tmp_path, monkeypatch,
                                                                               caplog):
    from fewsam.api import embed_dataset

    data, run, cache, writable = fitted
    before = snapshot(cache)
    read_only(monkeypatch, cache)
    with caplog.at_level(logging.INFO, logger="fewsam"):
        served = _predict(run, data, tmp_path / "pred", cache)
        stats = embed_dataset(data, "all", cache_root=str(cache), show_progress=False, precision="fp32")
    assert served == writable and served
    assert stats["encoded"] == 0 and stats["cache_hits"] > 0
    assert snapshot(cache) == before  # no entry, manifest, log or temporary file written
    assert notes(caplog) == []  # nothing was missing: nothing to say


def test_a_read_only_cache_with_misses_encodes_them_says_so_once_and_keeps_none(fitted, tmp_path, monkeypatch,
                                                                               caplog):
    data, run, _, writable = fitted
    shared = tmp_path / "shared"
    shared.mkdir()
    read_only(monkeypatch, shared)
    with caplog.at_level(logging.INFO, logger="fewsam"):
        served = _predict(run, data, tmp_path / "pred", shared)
    assert served == writable
    assert list(shared.iterdir()) == []
    said = notes(caplog)
    assert len(said) == 1 and str(shared) in said[0] and "not kept" in said[0]


def test_embed_into_a_read_only_cache_that_lacks_entries_is_refused_at_the_first(fitted, tmp_path, monkeypatch):
    """embed is there to fill the cache: encoding what a read-only one cannot keep would be an hour of work
    for nothing, so the first miss ends it, saying what to give (predict and fit read it as it is)."""
    from fewsam.api import embed_dataset

    data, _, _, _ = fitted
    shared = tmp_path / "shared"
    shared.mkdir()
    read_only(monkeypatch, shared)
    with pytest.raises(CacheError, match="is read-only, so embed cannot keep the embeddings it lacks"):
        embed_dataset(data, "all", cache_root=str(shared), show_progress=False, precision="fp32")
    assert list(shared.iterdir()) == []
    with pytest.raises(CacheError, match="is read-only, so embed cannot keep"):
        embed_dataset(data, "all", cache_root=str(shared), show_progress=False, precision="fp32", ray="auto")


def test_a_write_the_storage_refuses_makes_the_cache_read_only(tmp_path, fake_sam, monkeypatch, caplog):
    """A read-only mount or root squash that ``os.access`` does not see: refused at the manifest, or
    at the first entry, the cache goes on read-only instead of failing."""
    from fewsam import cache as cache_module
    from fewsam import progress

    monkeypatch.setattr(progress, "_said", {})
    rng = np.random.default_rng(0)
    images = [rng.random((20, 24)).astype(np.float32) for _ in range(3)]
    expected = EmbeddingCache(tmp_path / "roomy", fake_sam).embed(images)

    def refused(path, *args):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(cache_module, "atomic_write", refused)
    for at_open in (True, False):
        if at_open:
            monkeypatch.setattr(cache_module, "atomic_write_bytes", refused)
        else:
            monkeypatch.undo()
            monkeypatch.setattr(progress, "_said", {})
            monkeypatch.setattr(cache_module, "atomic_write", refused)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fewsam"):
            cache = EmbeddingCache(tmp_path / f"ro-{at_open}", fake_sam)
            got = cache.embed(images)
        assert cache.read_only
        assert all(np.array_equal(a.array, b.array) for a, b in zip(expected, got))
        assert len(notes(caplog)) == 1
        assert not list((tmp_path / f"ro-{at_open}").rglob("*.npz"))
        assert not list((tmp_path / f"ro-{at_open}").rglob("*.tmp"))


def test_an_existing_read_only_cache_is_accepted_one_to_be_made_is_refused(tmp_path, monkeypatch):
    from fewsam.predict import check_cache_folder

    shared = tmp_path / "shared"
    shared.mkdir()
    read_only(monkeypatch, shared)
    check_cache_folder(shared)
    with pytest.raises(CacheError, match="read-only"):  # nothing to read there, and nowhere to write
        check_cache_folder(shared / "fewsam")


def test_the_compiled_encoder_is_used_from_memory_when_it_cannot_be_kept(tmp_path, monkeypatch, caplog):
    import torch

    pytest.importorskip("openvino")
    from fewsam import progress
    from fewsam.models.precision import EncoderPrecision, OpenVinoEncoder

    monkeypatch.setattr(progress, "_said", {})
    shared = tmp_path / "shared"
    shared.mkdir()
    read_only(monkeypatch, shared)
    torch.manual_seed(0)
    encoder, images = torch.nn.Conv2d(3, 4, 3, padding=1), torch.rand(1, 3, 8, 8)
    with caplog.at_level(logging.INFO, logger="fewsam"):
        embedded = OpenVinoEncoder(encoder, 8, EncoderPrecision("fp32", "openvino"), shared / "tiny-openvino-ir")(images)
    with torch.no_grad():
        torch.testing.assert_close(embedded, encoder(images), rtol=1e-4, atol=1e-5)
    assert list(shared.iterdir()) == []
    said = [r.getMessage() for r in caplog.records if "compiled encoder cannot be kept" in r.getMessage()]
    assert len(said) == 1 and str(shared) in said[0] and "in memory" in said[0]
