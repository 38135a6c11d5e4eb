"""Long volumes (CT: hundreds of 512 x 512 slices) in bounded memory: the mirror views of test-time
mirroring and ``fewsam embed`` hold a few slices' embeddings (2 MiB each, as LiteMedSAM's 256 x 64 x 64
float16), not a volume's; what they compute is unchanged."""

import weakref

import numpy as np
import pytest
import torch

import fewsam.embedded as embedded
from fewsam.api import embed_dataset
from fewsam.cache import EmbeddingCache
from fewsam.data.phantom import write_phantom_dataset
from fewsam.data.types import Case
from fewsam.embedded import FILL_CHUNK, MIRROR_VIEWS, CaseSlices, embed_case, undo_dihedral
from fewsam.methods.fewshot import mirrored_probabilities, slice_probabilities
from fewsam.models.precision import FP32
from test_supervised import one_thread  # noqa: F401 - autouse fixture: small steps on a busy machine

DEPTH = 17  # slices: three decoder batches (8, 8, 1)
BATCH = 8  # the decoder's batch in ``slice_probabilities``


@pytest.fixture
def sam():
    from test_supervised import tiny_sam

    return tiny_sam()


class ChannelDecoder(torch.nn.Module):
    """Class logits = the first embedding channels, upsampled: cheap, and different in every view."""

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(embeddings[:, : tokens.shape[0]] * 50.0, size=(256, 256),
                                               mode="bilinear")


def _volume_case() -> Case:
    image = np.random.default_rng(0).random((DEPTH, 40, 56)).astype(np.float32)
    return Case("ct", image, None, "nifti", "ct.nii.gz", (2.5, 0.8, 0.8), {}, {})


class LiveEmbeddings:
    """Counts the embeddings ``embed_case`` made that are still alive each time it is called again."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref] = []
        self.most = 0

    def wrap(self, embed):
        def counted(case, *args, **kwargs):
            self.most = max(self.most, sum(ref() is not None for ref in self.refs))
            items = embed(case, *args, **kwargs)
            self.refs += [weakref.ref(item) for item in items]
            return items
        return counted


def test_mirror_views_hold_a_batch_of_embeddings_not_the_volume(sam, tmp_path, monkeypatch):
    slices = CaseSlices(_volume_case(), EmbeddingCache(tmp_path / "cache", sam, FP32))
    live = LiveEmbeddings()
    monkeypatch.setattr(embedded, "embed_case", live.wrap(embedded.embed_case))
    probabilities = list(mirrored_probabilities(ChannelDecoder(), torch.zeros(3, 1, 256), slices))
    assert len(probabilities) == DEPTH
    assert live.most <= BATCH  # whole mirror views: 2 x DEPTH alive as the third is embedded


def test_mirrored_probabilities_equal_those_of_whole_embedded_views(sam, tmp_path):
    """Embedding a view's slices a batch at a time changes no number: each turned slice holds the pixels
    it holds in the turned volume (the same cache entry)."""
    case, cache = _volume_case(), EmbeddingCache(tmp_path / "cache", sam, FP32)
    decoder, tokens = ChannelDecoder(), torch.zeros(3, 1, 256)
    streamed = list(mirrored_probabilities(decoder, tokens, CaseSlices(case, cache)))
    whole = []
    for view in MIRROR_VIEWS:
        turned = embedded._view(case, view)
        whole.append([undo_dihedral(p, view) for p in slice_probabilities(decoder, tokens, embed_case(turned, cache))])
    for z, probability in enumerate(streamed):
        assert np.array_equal(probability, np.mean([view[z] for view in whole], axis=0))
    view = CaseSlices(case, cache).view(MIRROR_VIEWS[1])
    assert [s.ref.z for s in view[5:9]] == [5, 6, 7, 8] and view[-1].ref.z == DEPTH - 1
    assert all(s.view == MIRROR_VIEWS[1] for s in view[:2]) and len(list(view)) == DEPTH


def test_embed_keeps_no_case_embeddings_while_filling_the_cache(sam, tmp_path, monkeypatch):
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=DEPTH, seed=1)
    monkeypatch.setattr("fewsam.api.load_model", lambda *args, **kwargs: sam)
    refs: list[weakref.ref] = []
    most = [0]
    encode = EmbeddingCache._encode

    def counted(self, images, device):
        most[0] = max(most[0], sum(ref() is not None for ref in refs))
        out = encode(self, images, device)
        refs.extend(weakref.ref(e.array) for e in out)
        return out

    monkeypatch.setattr(EmbeddingCache, "_encode", counted)
    stats = embed_dataset(data, cache_root=tmp_path / "cache", precision="fp32", show_progress=False)
    assert stats["encoded"] == 2 * DEPTH
    assert most[0] < FILL_CHUNK  # every case's embeddings kept to the end: 2 x DEPTH - 1
