"""EmbeddingCache: the frozen encoder runs once per distinct slice, ever.

Entries are content-addressed: the key hashes the slice's pixels together with the model name,
the checkpoint's hash, the preprocessing signature and the encoder's numerics (fp32 reference,
or OpenVINO bf16, in a folder of its own), so a changed image, model, preprocessing or precision
can never be served a stale embedding. Each entry is a float16 ``.npz`` written
atomically (tmp file + rename), so a killed fill leaves only complete entries and simply resumes.
Reads are verified against a checksum stored in the entry; a corrupt entry is discarded and
recomputed, an entry or folder written by another model is refused loudly.
A cache on read-only storage (one shared by a lab, filled once) is read: its entries are served and
an embedding it lacks is encoded and used without being stored, said once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from fewsam.atomic import (atomic_write, atomic_write_bytes, can_write_in, refused_write,
                           remove_abandoned_temporaries)
from fewsam.errors import CacheError, is_disk_full
from fewsam.models.precision import FP32, EncoderPrecision, OpenVinoEncoder, for_encoder
from fewsam.models.sam import PreprocessInfo, SamModel
from fewsam.progress import say_once

MANIFEST = "manifest.json"
EMBED_LOG = "embed.log"  # what `fewsam embed` did in this folder: each command, its progress and counts, appended


@dataclass
class Embedding:
    """A cached image embedding (256, 64, 64) float16 and the geometry needed to map masks back."""

    array: np.ndarray
    info: PreprocessInfo


def model_signature(model: SamModel, precision: EncoderPrecision = FP32) -> dict[str, str]:
    """What makes two embeddings of the same pixels comparable: model, weights, preprocessing, and
    the encoder's numerics when they are not the fp32 reference."""
    signature = {
        "model": model.name,
        "weights_sha256": model.weights_sha256,
        "preprocess": model.preprocess_signature(),
    }
    if precision.signature is not None:
        signature["encoder"] = precision.signature
    return signature


def pixel_key(image: np.ndarray, signature: dict[str, str]) -> str:
    """sha256 over pixels (bytes, shape, dtype) and the model signature."""
    h = hashlib.sha256()
    h.update(json.dumps(signature, sort_keys=True).encode())
    arr = np.ascontiguousarray(image)
    h.update(str(arr.shape).encode() + str(arr.dtype).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def model_folder(model: SamModel) -> str:
    """``<model>-<weights>``: names what depends only on the weights (the compiled encoder)."""
    return f"{model.name}-{model.weights_sha256[:12]}"


def cache_folder(model: SamModel, precision: EncoderPrecision = FP32) -> str:
    """``<model>-<weights>-p<preprocessing>[-<numerics>]``: embeddings made with another
    preprocessing or encoder numerics go to a folder of their own, so a changed default starts a
    fresh folder instead of refusing the old one."""
    tag = hashlib.sha256(model.preprocess_signature().encode()).hexdigest()[:6]
    folder = f"{model_folder(model)}-p{tag}"
    return folder if precision.signature is None else f"{folder}-{precision.signature}"


class EmbeddingCache:
    """On-disk cache of image embeddings for one model, under ``root/<cache_folder>``."""

    def __init__(self, root: str | Path, model: SamModel, precision: EncoderPrecision = FP32) -> None:
        if precision.backend != "torch":
            precision = for_encoder(precision, model.image_encoder)
        self.model, self.precision = model, precision
        self.signature = model_signature(model, precision)
        self.dir = Path(root).expanduser() / cache_folder(model, precision)
        self.read_only = not can_write_in(self.dir)  # served from, never written to
        self.filling = False  # `fewsam embed`: a miss it cannot keep is an error, not work done for nothing
        self._encoder = model.encode if precision.backend == "torch" else OpenVinoEncoder(
            model.image_encoder, model.image_size, precision,
            Path(root).expanduser() / f"{model_folder(model)}-openvino-ir")
        self._check_manifest()
        self.hits = 0
        self.misses = 0
        self.keeping = True  # False once the disk is full: embeddings are then used, not stored

    def _check_manifest(self) -> None:
        manifest = self.dir / MANIFEST
        if manifest.exists():
            try:
                stored = json.loads(manifest.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CacheError(f"unreadable cache manifest {manifest}: {err}; delete that folder") from err
            if not isinstance(stored, dict):  # valid JSON, but no signature (overwritten by something else)
                raise CacheError(f"unreadable cache manifest {manifest}: it holds a JSON {type(stored).__name__}, "
                                 "not the cache's model signature; delete that folder")
            if stored != self.signature:
                raise CacheError(
                    f"cache folder {self.dir} was written by model {stored.get('model')} "
                    f"(weights {str(stored.get('weights_sha256'))[:12]}, preprocessing "
                    f"{stored.get('preprocess')}); it cannot serve {self.signature['model']}. "
                    "Use another --cache folder."
                )
            return
        if self.dir.exists() and not self.dir.is_dir():
            raise CacheError(f"cache folder {self.dir} is a file, not a folder; remove it or use another --cache")
        if self.read_only:  # every entry it holds is still checked against the signature when read
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(manifest, json.dumps(self.signature, indent=2).encode())
        except OSError as err:
            if not refused_write(err):
                raise
            self.read_only = True

    def prepare_encoder(self) -> None:
        """Compile the encoder now if its backend needs it (OpenVINO converts it once per cache root and
        keeps the IR beside the cache), so that workers started afterwards read the IR instead of each
        converting it at the same time."""
        if self.precision.backend != "torch":
            size = self.model.image_size
            self._encoder(torch.zeros(1, 3, size, size))

    def path_for(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npz"

    def key(self, image: np.ndarray) -> str:
        return pixel_key(image, self.signature)

    def get(self, image: np.ndarray) -> Embedding | None:
        """The cached embedding of ``image``, or None when absent or corrupt (then it is removed)."""
        return self.stored(self.key(image))

    def stored(self, key: str) -> Embedding | None:
        """``get`` by the pixels' key: a pool kept as keys reads its embeddings back without its pixels."""
        path = self.path_for(key)
        if not path.exists():
            return None
        entry = _read_entry(path)
        if entry is None:
            say_once(f"an entry of the embedding cache {self.dir} could not be read (truncated, damaged or not "
                     f"readable: {path}); such entries are encoded again", key=f"cache-damaged-{self.dir}")
            if not self.read_only:
                _discard(path)
            return None
        meta, array = entry
        if meta.get("signature") != self.signature or meta.get("key") != key:
            raise CacheError(f"cache entry {path} was written by another model or for other pixels; "
                             "delete it or use another --cache folder")
        info = PreprocessInfo(tuple(meta["original_hw"]), tuple(meta["resized_hw"]), int(meta["image_size"]))
        return Embedding(array, info)

    def put(self, image: np.ndarray, embedding: np.ndarray, info: PreprocessInfo) -> None:
        key = self.key(image)
        array = np.asarray(embedding, dtype=np.float16)
        meta = {
            "key": key,
            "signature": self.signature,
            "original_hw": list(info.original_hw),
            "resized_hw": list(info.resized_hw),
            "image_size": info.image_size,
            "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
        }
        if not self.keeping or not np.isfinite(array).all():  # an overflowing encoder's NaN is not kept for later
            return
        if self.read_only:
            self._say_read_only()
            return
        path = self.path_for(key)
        meta_bytes = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_abandoned_temporaries(path)  # a killed fill's half-written entry of these pixels
            atomic_write(path, lambda fh: np.savez(fh, embedding=array, meta=meta_bytes))
        except OSError as err:
            self._not_stored(path, err)

    def _not_stored(self, path: Path, err: OSError) -> None:
        """Go on without the entry ``path`` that could not be written, and say why once: the storage
        is read-only (no entry will be kept), the disk is full (none kept from now on), or something
        is in the way of this entry alone. Any other error is raised."""
        if err.errno == errno.EROFS:
            self.read_only = True
            self._say_read_only()
        elif isinstance(err, ENTRY_BLOCKED):  # a folder or an unwritable shard where the entry goes
            say_once(f"cannot store the embedding cache entry {path} ({err.strerror}); such "
                     "embeddings are used but not kept; remove what is in the way or give another --cache",
                     key=f"cache-blocked-{self.dir}")
        elif is_disk_full(err):
            self.keeping = False
            say_once(f"the embedding cache {self.dir} is full ({err.strerror}): embeddings made from now on "
                     "are used but not kept; free space or give another --cache to keep them",
                     key=f"cache-full-{self.dir}")
        else:
            raise err

    def _say_read_only(self) -> None:
        if self.filling:
            raise CacheError(f"the embedding cache {self.dir} is read-only, so embed cannot keep the embeddings it "
                             "lacks; give a writable --cache (predict and fit read a read-only cache as it is)")
        say_once(f"the embedding cache {self.dir} is read-only: the entries it holds are read, and embeddings it "
                 "lacks are encoded for this command but not kept", key=f"cache-read-only-{self.dir}")

    def embed(
        self,
        images: Sequence[np.ndarray],
        device: str = "cpu",
        batch_size: int = 1,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Embedding]:
        """Embeddings of ``images`` in order: cache hits are read, misses encoded once and stored."""
        results: list[Embedding | None] = [self.get(img) for img in images]
        missing = [i for i, r in enumerate(results) if r is None]
        self.hits += len(images) - len(missing)
        self.misses += len(missing)
        if on_progress and len(images) > len(missing):
            on_progress(len(images) - len(missing))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            for i, emb in zip(chunk, self._encode([images[i] for i in chunk], device)):
                self.put(images[i], emb.array, emb.info)
                results[i] = emb
            if on_progress:
                on_progress(len(chunk))
        return [r for r in results if r is not None]

    def _encode(self, images: Iterable[np.ndarray], device: str) -> list[Embedding]:
        tensors, infos = zip(*(self.model.preprocess(img) for img in images))
        batch = torch.stack(list(tensors)).to(device)
        with torch.inference_mode():
            out = self._encoder(batch).float().cpu().numpy().astype(np.float16)
        return [Embedding(out[i], infos[i]) for i in range(len(infos))]


# What stops one entry from being written while the cache as a whole works: a folder where the entry
# or its shard folder goes (IsADirectory, FileExists, NotADirectory), or a shard another user owns.
ENTRY_BLOCKED = (IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError)


def _discard(path: Path) -> None:
    """Remove an unreadable entry so it is recomputed; what cannot be removed (a folder in its place,
    a shard folder not ours to change) is left, and ``put`` then says it cannot be replaced."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _read_entry(path: Path) -> tuple[dict, np.ndarray] | None:
    """(meta, embedding) of a verified entry, or None when the file is truncated or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            array = data["embedding"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        return None  # OSError: also a folder in the entry's place, or a file we may not read
    if not isinstance(meta, dict) or not _well_formed(meta) or not _usable_embedding(array):
        return None
    if hashlib.sha256(array.tobytes()).hexdigest() != meta.get("sha256"):
        return None
    return meta, array


def _well_formed(meta: dict) -> bool:
    """The entry's record holds every field ``get`` reads, of the kind ``put`` writes: a damaged one
    would otherwise end in a TypeError, or be taken for an entry of another model."""
    def sizes(value: object) -> bool:
        return isinstance(value, list) and len(value) == 2 and all(type(v) is int and v > 0 for v in value)

    return (isinstance(meta.get("key"), str) and isinstance(meta.get("signature"), dict)
            and sizes(meta.get("original_hw")) and sizes(meta.get("resized_hw"))
            and type(meta.get("image_size")) is int and isinstance(meta.get("sha256"), str))


def _usable_embedding(array: np.ndarray) -> bool:
    """What ``put`` stores: a finite float16 (C, H, W) map. The checksum covers the bytes alone, so an
    array of another shape or dtype over the same bytes would pass it and reach the decoder."""
    return array.dtype == np.float16 and array.ndim == 3 and bool(np.isfinite(array).all())
