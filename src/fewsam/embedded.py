"""Slices with their cached embeddings: what every SAM-side method trains and predicts on.

Cases are read once, cut into 2D slices, and the slices' embeddings come from the
EmbeddingCache (encoded only on a miss). Labels are carried into the padded model frame, with
the padding marked IGNORE so that no method learns "background" from zero padding.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Iterable, Iterator, Sequence, overload

import numpy as np
import torch

from fewsam.augment import augmented_case
from fewsam.cache import Embedding, EmbeddingCache
from fewsam.data.types import Case, Dataset, SliceRef
from fewsam.labels import IGNORE
from fewsam.models.sam import PreprocessInfo
from fewsam.progress import progress_bar, tracked, tracked_with_parts
from fewsam.prompts import to_model_frame


@dataclass
class EmbeddedSlice:
    """One slice: embedding (256, 64, 64) float16, label in the model frame (S, S) or None."""

    ref: SliceRef
    embedding: np.ndarray
    info: PreprocessInfo
    label_frame: np.ndarray | None
    label: np.ndarray | None  # original-resolution (H, W) label, for prompts and metrics
    view: int = 0  # dihedral view of the slice (0 = as stored), see ``dihedral``

    def embedding_tensor(self, device: str = "cpu") -> torch.Tensor:
        return torch.from_numpy(self.embedding).to(device=device, dtype=torch.float32)

    def labelled(self, label: np.ndarray) -> EmbeddedSlice:
        """This slice with another (H, W) label (a pseudo-label), on the same embedding."""
        return replace(self, label_frame=frame_label(label, self.info), label=label)


class CachedSlice(EmbeddedSlice):
    """An ``EmbeddedSlice`` whose embedding stays in the cache and is read back each time it is asked
    for: the slices of an unlabelled pool, of which a step or a batch of prompts reads a few (2 MiB
    each in float16; ACDC's 1,244 pool slices would hold 2.4 GiB). Its label in the model frame is made
    from its label when asked for: SAM's training on the student's labels of the pool reads a batch of
    them, and each is 1 MiB at SAM's 1024-pixel frame."""

    def __init__(self, ref: SliceRef, read: Callable[[], np.ndarray], info: PreprocessInfo,
                 label: np.ndarray | None = None, view: int = 0) -> None:
        self.ref, self.info, self.label, self.view = ref, info, label, view
        self._read = read

    @property
    def embedding(self) -> np.ndarray:  # type: ignore[override]
        return self._read()

    @property
    def label_frame(self) -> np.ndarray | None:  # type: ignore[override]
        return None if self.label is None else frame_label(self.label, self.info)

    def labelled(self, label: np.ndarray) -> CachedSlice:
        return CachedSlice(self.ref, self._read, self.info, label, self.view)


def frame_label(label: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """Label in the padded model frame, padding set to IGNORE. IGNORE is also a label value where a class
    is stored as 255 (a 0/255 mask), so readers of a framed label tell the padding by its place
    (``mark_padding``, ``frame_region``), never by its value."""
    return mark_padding(to_model_frame(label, info), info, IGNORE)


def mark_padding(framed: np.ndarray, info: PreprocessInfo, value: object) -> np.ndarray:
    """``framed`` with the padding of the model frame (below and right of the resized image) set to ``value``."""
    framed[info.resized_hw[0]:, :] = value
    framed[:, info.resized_hw[1]:] = value
    return framed


def frame_region(label_frame: np.ndarray, info: PreprocessInfo, value: int) -> np.ndarray:
    """(S, S) bool: where a framed label holds ``value``, the padding excluded whatever it holds."""
    return mark_padding(label_frame == value, info, False)


def embed_case(case: Case, cache: EmbeddingCache, device: str = "cpu", on_progress=None) -> list[EmbeddedSlice]:
    """All slices of one case, in z order."""
    images = [case.slice_image(z) for z in range(case.num_slices)]
    embeddings = cache.embed(images, device=device, on_progress=on_progress)
    return [held_slice(SliceRef(case.case_id, z), emb, case.slice_label(z)) for z, emb in enumerate(embeddings)]


def held_slice(ref: SliceRef, emb: Embedding, label: np.ndarray | None, view: int = 0) -> EmbeddedSlice:
    """A slice holding its embedding and its label in the model frame."""
    framed = None if label is None else frame_label(label, emb.info)
    return EmbeddedSlice(ref, emb.array, emb.info, framed, label, view)


def dihedral(array: np.ndarray, view: int) -> np.ndarray:
    """View ``view`` (0-7) of the dihedral group on the in-plane axes (1, 2) of a (D, H, W[, C]) array.

    0-3 rotate by view * 90 degrees; 4-7 transpose first. Real views are encoded by the frozen
    encoder (it is not rotation-equivariant), so few labelled slices teach every orientation
    in which scanners store anatomy.
    """
    if view >= 4:
        array = np.swapaxes(array, 1, 2)
    return _plain_strides(np.rot90(array, view % 4, axes=(1, 2)))


def undo_dihedral(array: np.ndarray, view: int) -> np.ndarray:
    """The inverse of ``dihedral``: a (C, H', W') map computed on view ``view`` back to the stored orientation."""
    out = np.rot90(array, -(view % 4), axes=(1, 2))
    if view >= 4:
        out = np.swapaxes(out, 1, 2)
    return _plain_strides(out)


def _plain_strides(array: np.ndarray) -> np.ndarray:
    """``array`` C-contiguous with no negative stride. ``np.ascontiguousarray`` keeps a turned view
    whose axis of length 1 steps backwards (a 1-pixel strip rotated by ``np.rot90``), which
    ``torch.from_numpy`` refuses; such a view is copied."""
    array = np.ascontiguousarray(array)
    return array if min(array.strides, default=0) >= 0 else array.copy()


MIRROR_VIEWS = (0, 7, 5, 2)
"""The four mirror images of a slice as dihedral views: as stored, left-right, up-down and both
(test-time mirroring over the two in-plane axes, as nnU-Net does). Mirrors keep the anatomy's
layout up to reflection, unlike 90-degree rotations, to which a decoder fitted on few patients
is less robust."""


class IndexedSlices(Sequence[EmbeddedSlice]):
    """Embedded slices read by index, one (``_at``) or a run of them (``_many``, one by one unless a
    subclass reads a run at once): the indexing every slice sequence of this module shares."""

    @overload
    def __getitem__(self, index: int) -> EmbeddedSlice: ...

    @overload
    def __getitem__(self, index: slice) -> list[EmbeddedSlice]: ...

    def __getitem__(self, index: int | slice) -> EmbeddedSlice | list[EmbeddedSlice]:
        if isinstance(index, slice):
            return self._many(index)
        return self._at(range(len(self))[index])  # an IndexError past the end ends iteration

    def _at(self, index: int) -> EmbeddedSlice:
        raise NotImplementedError

    def _many(self, index: slice) -> list[EmbeddedSlice]:
        return [self._at(i) for i in range(len(self))[index]]


class CaseSlices(IndexedSlices):
    """A case's embedded slices as stored (the sequence every predictor reads), which can also embed
    the case's other dihedral views through the same cache when a predictor asks (test-time mirroring).

    Held (the default): every slice embedded now and kept, for work that reads them again and again
    (validation during a fit). ``streamed``: embedded a batch at a time as they are read and not
    kept, as the mirror views are: ``fewsam predict`` on a long CT volume then holds a few slices'
    embeddings (2 MiB each in float16) instead of the volume's. ``on_progress(n)`` is told how many
    slices of the case were reached for the first time (embedded when held; read in any view when
    streamed), so that progress can advance inside one long volume."""

    def __init__(self, case: Case, cache: EmbeddingCache, device: str = "cpu", streamed: bool = False,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.case, self.cache, self.device = case, cache, device
        self._reached = SlicesReached(on_progress if streamed else None)
        self._stored: Sequence[EmbeddedSlice] = ViewSlices(case, cache, device, 0, self._reached) if streamed \
            else embed_case(case, cache, device, on_progress)

    def __len__(self) -> int:
        return len(self._stored)

    def _at(self, index: int) -> EmbeddedSlice:
        return self._stored[index]

    def _many(self, index: slice) -> list[EmbeddedSlice]:
        return list(self._stored[index])

    def __iter__(self) -> Iterator[EmbeddedSlice]:
        return iter(self._stored)

    def view(self, view: int) -> Sequence[EmbeddedSlice]:
        """The slices of dihedral view ``view`` (0: these); another view's are embedded as they are read
        (``ViewSlices``), encoded on a cache miss."""
        if view == 0:
            return self._stored
        return ViewSlices(self.case, self.cache, self.device, view, self._reached)


class SlicesReached:
    """Which slices of a case some view has read, telling ``on_progress`` how many are new: the mirror
    views read the same slices in step, so a slice counts once whichever view reads it first."""

    def __init__(self, on_progress: Callable[[int], None] | None = None) -> None:
        self.on_progress = on_progress
        self.seen: set[int] = set()

    def read(self, zs: Iterable[int]) -> None:
        if self.on_progress is None:
            return
        new = set(zs) - self.seen
        if new:
            self.seen |= new
            self.on_progress(len(new))


READ_BATCH = 8
"""Slices a streamed view embeds together when iterated (the decoder's batch): the most it holds."""


class ViewSlices(IndexedSlices):
    """A case's slices in dihedral view ``view``, embedded when read and not kept: test-time mirroring
    reads three mirror views beside the stored one a batch at a time, and holding each view's whole
    volume of embeddings (2 MiB a slice in float16) would multiply a long CT volume's memory by four.
    The slice read last by index is kept until another is, so a reader asking for one slice's
    embedding and then its geometry (SAM refinement's prompts) does not embed it twice."""

    def __init__(self, case: Case, cache: EmbeddingCache, device: str, view: int,
                 reached: SlicesReached | None = None) -> None:
        self.case, self.cache, self.device, self.view = case, cache, device, view
        self.reached = reached or SlicesReached()
        self._last: tuple[int, EmbeddedSlice] | None = None

    def __len__(self) -> int:
        return self.case.num_slices

    def _many(self, index: slice) -> list[EmbeddedSlice]:
        return self._embedded(list(range(len(self)))[index])

    def _at(self, z: int) -> EmbeddedSlice:
        if self._last is None or self._last[0] != z:
            self._last = None  # let the previous slice go before this one is embedded
            self._last = (z, self._embedded([z])[0])
        return self._last[1]

    def __iter__(self) -> Iterator[EmbeddedSlice]:
        for start in range(0, len(self), READ_BATCH):
            yield from self[start:start + READ_BATCH]

    def _embedded(self, zs: list[int]) -> list[EmbeddedSlice]:
        """Slices ``zs`` turned and embedded; a slice turned alone holds the pixels it holds in the
        turned volume, so its cache entry is the same."""
        if not zs:
            return []
        items = embed_case(_view(_subcase(self.case, zs), self.view), self.cache, self.device)
        for z, item in zip(zs, items):
            item.ref, item.view = SliceRef(self.case.case_id, z), self.view
        self.reached.read(zs)
        return items


def slices_by_case(refs: Iterable[SliceRef]) -> dict[str, list[int]]:
    """The slice numbers of each case, in the order given: each case is then read once."""
    by_case: dict[str, list[int]] = defaultdict(list)
    for ref in refs:
        by_case[ref.case_id].append(ref.z)
    return by_case


def embed_refs(
    dataset: Dataset,
    refs: Sequence[SliceRef],
    cache: EmbeddingCache,
    device: str = "cpu",
    show_progress: bool = True,
    description: str = "embed",
    views: int = 1,
    with_label: bool = True,
    entries: CacheEntries | None = None,
) -> list[EmbeddedSlice]:
    """The given slices (any order, any cases), each case read once; ``views`` dihedral views per
    slice; ``with_label=False`` reads images only (an unlabelled pool). With ``entries`` the slices are
    ``CachedSlice``s whose embeddings ``entries`` reads back from the cache, none held."""
    found = _embed_variants(dataset, refs, cache, views, _as_view, device, show_progress, description, with_label,
                            entries)
    return [found[(ref, view)] for ref in refs for view in range(views)]


def embed_augmented(dataset: Dataset, refs: Sequence[SliceRef], cache: EmbeddingCache, copies: int, seed: int,
                    device: str = "cpu", show_progress: bool = True, description: str = "embed augmented",
                    entries: CacheEntries | None = None) -> list[EmbeddedSlice]:
    """``copies`` augmented copies of each labelled slice (``fewsam.augment``), copy k starting from
    dihedral view k mod 8; each is a new image, encoded and cached like any slice. In the order they
    were made: by case, then copy, then slice. ``entries``: as ``embed_refs``."""
    return list(_embed_variants(dataset, refs, cache, copies, partial(_augmented_copy, seed), device, show_progress,
                                description, True, entries).values())


def _as_view(case: Case, view: int) -> tuple[Case, int]:
    return _view(case, view), view


def _augmented_copy(seed: int, case: Case, copy: int) -> tuple[Case, int]:
    return augmented_case(_view(case, copy % 8), seed, copy), copy % 8


Variant = Callable[[Case, int], tuple[Case, int]]
"""``variant(case, k)``: the case's variant k (a dihedral view, an augmented copy) and the dihedral view it is in."""


def _embed_variants(dataset: Dataset, refs: Sequence[SliceRef], cache: EmbeddingCache, count: int, variant: Variant,
                    device: str, show_progress: bool, description: str, with_label: bool = True,
                    entries: CacheEntries | None = None) -> dict[tuple[SliceRef, int], EmbeddedSlice]:
    """Variants 0..count-1 of the given slices embedded, each case read once, ``FILL_CHUNK`` slices at a
    time: ``variant`` is applied to the case of the requested slices only. Keyed by (slice, k), in the
    order made (by case, then variant, then slice); held, or read back through ``entries``."""
    found: dict[tuple[SliceRef, int], EmbeddedSlice] = {}
    with progress_bar(show_progress) as bar:
        job = bar.add_task(description, total=len(refs) * count)
        advance = lambda n: bar.update(job, advance=n)  # noqa: E731 - tiny callback
        for case_id, zs in slices_by_case(refs).items():
            sub = _subcase(dataset.load(case_id, with_label=with_label), zs)
            for k in range(count):
                case, view = variant(sub, k)
                remake = partial(_variant_image, dataset, case_id, zs, variant, with_label, k)
                for i, image, emb in _embedded_chunks(case, cache, device, advance):
                    ref, label = SliceRef(case_id, zs[i]), case.slice_label(i)
                    found[(ref, k)] = held_slice(ref, emb, label, view) if entries is None else \
                        entries.slice(ref, image, emb, label, view, partial(remake, i))
    return found


def _embedded_chunks(case: Case, cache: EmbeddingCache, device: str, on_progress: Callable[[int], None] | None
                     ) -> Iterator[tuple[int, np.ndarray, Embedding]]:
    """Each slice of ``case`` with its image and embedding, ``FILL_CHUNK`` embedded at a time: a reader that keeps
    neither (a fill, a pool read back from the cache) holds a chunk's embeddings, not a long volume's."""
    for start in range(0, case.num_slices, FILL_CHUNK):
        at = range(start, min(start + FILL_CHUNK, case.num_slices))
        images = [case.slice_image(z) for z in at]
        yield from zip(at, images, cache.embed(images, device=device, on_progress=on_progress))


def _variant_image(dataset: Dataset, case_id: str, zs: list[int], variant: Variant, with_label: bool, k: int,
                   i: int) -> np.ndarray:
    """Image ``i`` of variant ``k`` of slices ``zs`` of a case, made again as ``_embed_variants`` made it (an
    augmented copy draws from its place among ``zs``)."""
    return variant(_subcase(dataset.load(case_id, with_label=with_label), zs), k)[0].slice_image(i)


class CacheEntries:
    """Embeddings kept as keys of the cache and read back from it when asked (``CachedSlice``): 2 MiB a
    slice in float16, a pool of hundreds of slices or a few patients' labelled slices in 8 views and 8
    augmented copies would hold gigabytes. Only what the cache could not store (a full disk, a read-only
    cache that lacks it, a non-finite embedding) is held; an entry lost from the cache meanwhile is
    encoded again from its image, made again."""

    def __init__(self, cache: EmbeddingCache, device: str = "cpu") -> None:
        self.cache, self.device = cache, device
        self.keys: list[str] = []
        self.held: dict[int, np.ndarray] = {}
        self._images: list[Callable[[], np.ndarray]] = []

    def slice(self, ref: SliceRef, image: np.ndarray, emb: Embedding, label: np.ndarray | None, view: int,
              remake: Callable[[], np.ndarray]) -> CachedSlice:
        """Slice ``ref`` (``image``, just embedded as ``emb``) read back from here; ``remake()`` makes its
        image again if its entry is lost."""
        index = len(self.keys)
        self.keys.append(self.cache.key(image))
        self._images.append(remake)
        if not self.cache.path_for(self.keys[index]).exists():
            self.held[index] = emb.array
        return CachedSlice(ref, partial(self.embedding, index), emb.info, label, view)

    def embedding(self, index: int) -> np.ndarray:
        """Entry ``index``'s embedding, read from the cache (or encoded again when its entry is gone)."""
        if index in self.held:
            return self.held[index]
        found = self.cache.stored(self.keys[index])
        if found is not None:
            return found.array
        return self.cache.embed([self._images[index]()], self.device)[0].array


class CachedPool(IndexedSlices):
    """Slices of any cases (an unlabelled pool), embedded once through the cache and then read back from
    it by key as they are used, unlabelled (``CachedSlice``, ``CacheEntries``): a pool's embeddings are
    never all held, nor its labels read."""

    def __init__(self, dataset: Dataset, refs: Sequence[SliceRef], cache: EmbeddingCache, device: str = "cpu",
                 show_progress: bool = True, description: str = "embed") -> None:
        self.entries = CacheEntries(cache, device)
        self.slices = embed_refs(dataset, refs, cache, device, show_progress, description, with_label=False,
                                 entries=self.entries)

    def __len__(self) -> int:
        return len(self.slices)

    def _at(self, index: int) -> EmbeddedSlice:
        return self.slices[index]


def embed_cases(
    dataset: Dataset,
    case_ids: Iterable[str],
    cache: EmbeddingCache,
    device: str = "cpu",
    show_progress: bool = True,
    description: str = "embed",
    with_label: bool = True,
) -> list[tuple[Case, CaseSlices]]:
    """Whole cases (volumes) with all their slices embedded, for validation and prediction
    (``with_label=False``: images only). Filling the cache alone is ``fill_cache``, which keeps nothing."""
    out = []
    for case_id in tracked(list(case_ids), description, show_progress):
        case = dataset.load(case_id, with_label=with_label)
        out.append((case, CaseSlices(case, cache, device)))
    return out


FILL_CHUNK = 16
"""Slices embedded together where their embeddings are not kept (filling the cache, slices read back from it):
the most embeddings ``fill_cache`` or the making of a ``CacheEntries`` holds."""


def fill_cache(dataset: Dataset, case_ids: Iterable[str], cache: EmbeddingCache, device: str = "cpu",
               show_progress: bool = True, description: str = "embed") -> None:
    """Every slice of the cases in ``cache``, nothing kept: ``fewsam embed`` over a set of CT volumes holds one
    case's image and ``FILL_CHUNK`` slices' embeddings (2 MiB a slice in float16), not those of every case.
    Progress counts cases and, within each, its slices."""
    for case_id, parts in tracked_with_parts(list(case_ids), description, "slice", show_progress):
        case = dataset.load(case_id, with_label=False)
        fill_case(case, cache, device, parts.counter(case.num_slices))


def fill_case(case: Case, cache: EmbeddingCache, device: str = "cpu",
              on_progress: Callable[[int], None] | None = None) -> None:
    """Every slice of ``case`` in ``cache``, ``FILL_CHUNK`` at a time, nothing kept; ``on_progress(n)``
    as ``n`` more slices are found or encoded."""
    for _ in _embedded_chunks(case, cache, device, on_progress):
        pass


def _view(case: Case, view: int) -> Case:
    if view == 0:
        return case
    label = None if case.label is None else dihedral(case.label, view)
    return Case(case.case_id, dihedral(case.image, view), label, case.format, case.rel_path, case.spacing,
                case.attributes, case.meta, case.ignore)


def _subcase(case: Case, zs: list[int]) -> Case:
    """A view of the case holding only the requested slices (so only those are encoded)."""
    label = None if case.label is None else case.label[zs]
    return Case(case.case_id, case.image[zs], label, case.format, case.rel_path, case.spacing,
                case.attributes, case.meta, case.ignore)
