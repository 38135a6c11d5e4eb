"""Shared fixtures: real data paths (../shared/data) and tiny stand-ins with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewsam.models.sam import PreprocessInfo

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


class FakeSam:
    """Duck-typed stand-in for SamModel's cache-facing surface: a deterministic 'encoder'."""

    def __init__(self, name: str = "fake", weights: str = "0" * 64) -> None:
        self.name = name
        self.weights_sha256 = weights
        self.image_size = 32
        self.encode_calls = 0

    def preprocess_signature(self) -> str:
        return "fake-minmax-32"

    def preprocess(self, image: np.ndarray):
        h, w = image.shape[:2]
        t = torch.zeros(3, 32, 32)
        t[:, :h, :w] = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
        return t, PreprocessInfo((h, w), (h, w), 32)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encode_calls += images.shape[0]
        return images.mean(dim=1, keepdim=True).repeat(1, 4, 1, 1)[:, :, :8, :8] + 1.0


@pytest.fixture
def fake_sam() -> FakeSam:
    return FakeSam()
