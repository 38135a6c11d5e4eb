import numpy as np
import pytest

from fewsam.cache import EmbeddingCache
from fewsam.errors import CacheError
from tests.conftest import FakeSam


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((20, 24)).astype(np.float32) for _ in range(n)]


def test_encodes_once_then_serves_hits(tmp_path, fake_sam):
    images = _images()
    first = EmbeddingCache(tmp_path, fake_sam).embed(images)
    assert fake_sam.encode_calls == 3
    cache = EmbeddingCache(tmp_path, fake_sam)
    second = cache.embed(images)
    assert fake_sam.encode_calls == 3 and cache.hits == 3
    for a, b in zip(first, second):
        assert a.array.dtype == np.float16
        np.testing.assert_array_equal(a.array, b.array)
        assert b.info.original_hw == (20, 24)


def test_key_depends_on_pixels_and_model(tmp_path, fake_sam):
    img = _images(1)[0]
    cache = EmbeddingCache(tmp_path, fake_sam)
    changed = img.copy()
    changed[0, 0] += 1e-3
    assert cache.key(img) != cache.key(changed)
    other = EmbeddingCache(tmp_path, FakeSam(weights="1" * 64))
    assert other.key(img) != cache.key(img)


def test_corrupt_entry_is_recomputed(tmp_path, fake_sam):
    img = _images(1)[0]
    cache = EmbeddingCache(tmp_path, fake_sam)
    cache.embed([img])
    path = cache.path_for(cache.key(img))
    path.write_bytes(path.read_bytes()[:50])  # truncated by a kill mid-write elsewhere
    out = cache.embed([img])
    assert fake_sam.encode_calls == 2 and out[0].array.shape == (4, 8, 8)
    assert cache.get(img) is not None


def test_tampered_payload_fails_checksum(tmp_path, fake_sam):
    img = _images(1)[0]
    cache = EmbeddingCache(tmp_path, fake_sam)
    emb = cache.embed([img])[0]
    meta_entry = cache.path_for(cache.key(img))
    with np.load(meta_entry) as data:
        meta = data["meta"]
    np.savez(meta_entry, embedding=emb.array + np.float16(1), meta=meta)
    assert cache.get(img) is None


def test_folder_of_another_model_is_refused(tmp_path, fake_sam):
    cache = EmbeddingCache(tmp_path, fake_sam)
    (cache.dir / "manifest.json").write_text('{"model": "sam_vit_h", "weights_sha256": "x", "preprocess": "y"}')
    with pytest.raises(CacheError, match="written by model sam_vit_h"):
        EmbeddingCache(tmp_path, fake_sam)


@pytest.mark.parametrize("content, says", [(b"[]", "it holds a JSON list"), (b'"fake"', "it holds a JSON str"),
                                           (b"\xff\xfe{}", "can't decode byte 0xff")])
def test_a_manifest_that_is_no_signature_is_named(tmp_path, fake_sam, content, says):
    cache = EmbeddingCache(tmp_path, fake_sam)
    (cache.dir / "manifest.json").write_bytes(content)
    with pytest.raises(CacheError, match=f"unreadable cache manifest .*{says}.*; delete that folder"):
        EmbeddingCache(tmp_path, fake_sam)


def test_no_partial_files_left(tmp_path, fake_sam):
    EmbeddingCache(tmp_path, fake_sam).embed(_images(4))
    assert not list(tmp_path.rglob("*.tmp"))



def test_a_full_disk_keeps_the_embeddings_in_memory_and_says_so_once(tmp_path, fake_sam, monkeypatch, caplog):
    import errno
    import logging

    from fewsam import cache as cache_module
    from fewsam import progress

    monkeypatch.setattr(progress, "_said", {})
    images = _images(3)
    expected = EmbeddingCache(tmp_path / "roomy", fake_sam).embed(images)
    writes = []

    def full(path, write):
        writes.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "atomic_write", full)
    cache = EmbeddingCache(tmp_path / "full", fake_sam)
    with caplog.at_level(logging.INFO, logger="fewsam"):
        got = cache.embed(images)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a.array, b.array)
    assert len(writes) == 1 and not cache.keeping  # one failed write, then no more tries
    assert [r.getMessage() for r in caplog.records if "is full" in r.getMessage()] == [
        f"the embedding cache {cache.dir} is full (No space left on device): embeddings made from now on are "
        "used but not kept; free space or give another --cache to keep them"]
    assert all(cache.get(img) is None for img in images)


def test_other_write_errors_are_not_taken_for_a_full_disk(tmp_path, fake_sam, monkeypatch):
    import errno

    from fewsam import cache as cache_module

    def broken(path, write):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cache_module, "atomic_write", broken)
    with pytest.raises(OSError, match="Input/output"):
        EmbeddingCache(tmp_path, fake_sam).embed(_images(1))
