"""The method registry: each method's name, the module that implements it, and its one-line summary.

A method is one module (or package) that defines ``METHOD = Method(...)``: its ``Config``
dataclass, ``fit(ctx, cfg, run_dir)`` and how to build its predictor. Registering it is one line
in ``REGISTRY``. ``fewsam fit NAME`` (options generated from the config's fields),
``fewsam.api.fit``, ``fewsam predict`` and the run folder's config.json all go through here.
Modules are imported on first use, so the command line starts without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from fewsam.config import Config, FitOptions
from fewsam.errors import FewsamError

if TYPE_CHECKING:
    import numpy as np

    from fewsam.data.types import Case
    from fewsam.embedded import EmbeddedSlice
    from fewsam.fitting import FitContext
    from fewsam.models.sam import SamModel
    from fewsam.train import TrainResult

REGISTRY: dict[str, tuple[str, str]] = {  # name -> (module defining METHOD, summary)
    "fewshot": ("fewsam.methods.fewshot",
                "Few-shot SAM: prototype prompts from the labelled slices; only the mask decoder is trained."),
    "samatch": ("fewsam.methods.samatch",
                "SAM-Match: FixMatch student + SAM-refined pseudo-labels from its confident predictions."),
    "fewmatch": ("fewsam.methods.fewmatch",
                 "FewMatch: few-shot SAM whose decoder also learns from the unlabelled pool (weak-to-strong "
                 "consistency on cached embeddings)."),
    "distill": ("fewsam.methods.distill",
                "Distill: a U-Net student on the labelled slices plus a fitted run's predictions on the unlabelled "
                "pool (pixels only at prediction)."),
    "supervised": ("fewsam.methods.supervised",
                   "A 2D U-Net on the labelled slices only: the lower bound for SAM-Match."),
    "prompted": ("fewsam.methods.prompted",
                 "Zero-shot SAM with oracle point or box prompts (the papers' comparison baselines)."),
}


class Predictor(Protocol):
    """A fitted run's predictions. One that sets ``reads_labels = True`` (the oracle-prompted baselines,
    whose prompts come from the labels) is given each case with its label; the others get images only,
    so that a missing or damaged label file does not stop a prediction."""

    def predict_case(self, case: "Case", slices: "list[EmbeddedSlice]") -> "np.ndarray":
        """(D, H, W) uint8 label values for the case (``slices``: its embedded slices, or [])."""
        ...


PredictorFactory = Callable[[Path, dict[str, Any], "SamModel | None", str, list[int]], Predictor]
ALL_FIT_OPTIONS = tuple(f.name for f in fields(FitOptions))
SAM_FIT_OPTIONS = ("model", "checkpoint", "cache")  # read only by a fit that loads SAM (the cache holds its embeddings)
NO_SAM_FIT_OPTIONS = tuple(name for name in ALL_FIT_OPTIONS if name not in SAM_FIT_OPTIONS)


def _always(cfg: Any) -> bool:
    return True


@dataclass(frozen=True)
class Method:
    """What fewsam needs to know of a method.

    ``fit`` None: nothing is trained (the run folder records the config; prediction does the work).
    ``predictor(run_dir, run_config, model, device, label_values)`` rebuilds it from a run folder.
    ``needs_sam(cfg)``: whether fitting loads SAM and its embedding cache.
    ``pixels_only``: predicts from pixels alone (no SAM, no cache at predict time); a callable
    decides per run folder (a distill run that kept the teacher blend needs SAM).
    ``fit_options``: the ``FitOptions`` fields ``fewsam fit NAME`` offers: those its fit reads, so that one it
    would ignore is refused by name (a method that never loads SAM takes none of ``SAM_FIT_OPTIONS``).
    """

    name: str
    config: type[Config]
    fit: "Callable[[FitContext, Any, Path], TrainResult] | None"
    predictor: PredictorFactory
    needs_sam: Callable[[Any], bool] = _always
    pixels_only: bool | Callable[[Path], bool] = False
    fit_options: tuple[str, ...] = field(default=ALL_FIT_OPTIONS)

    def predicts_from_pixels(self, run_dir: Path) -> bool:
        """Whether predicting with the run in ``run_dir`` needs neither SAM nor the embedding cache."""
        return bool(self.pixels_only(Path(run_dir)) if callable(self.pixels_only) else self.pixels_only)

    @property
    def summary(self) -> str:
        return REGISTRY[self.name][1]


_loaded: dict[str, Method] = {}


def get_method(name: str | None) -> Method:
    """The registered method ``name`` (its module imported on first use); a clear error otherwise."""
    if isinstance(name, str) and name in _loaded:
        return _loaded[name]
    if not isinstance(name, str) or name not in REGISTRY:
        raise FewsamError(f"unknown method {name!r}; fewsam knows {', '.join(REGISTRY)}")
    method = import_module(REGISTRY[name][0]).METHOD
    _loaded[name] = method
    return method


def all_methods() -> dict[str, Method]:
    """Every registered method, by name."""
    return {name: get_method(name) for name in REGISTRY}
