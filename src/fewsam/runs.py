"""Run directories: everything needed to predict again, and nothing silently overwritten.

RUN/config.json records the method, model, checkpoint, class map, labelled set and every
hyper-parameter. Fitting into a folder that already holds a run resumes it when the
configuration is identical and refuses otherwise.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from fewsam import __version__
from fewsam.atomic import atomic_write_bytes
from fewsam.errors import RunError

CONFIG = "config.json"
LAST = "checkpoint_last.pt"  # the resume state of the training loop
BEST = "checkpoint_best.pt"  # the best-validated weights: what predict uses
LOG = "fit_log.jsonl"


def prepare_run_dir(run_dir: str | Path, config: dict[str, Any]) -> tuple[Path, bool]:
    """Create RUN (or accept it for resuming). Returns (path, resuming)."""
    path = Path(run_dir)
    config = {**config, "fewsam_version": __version__}
    existing = path / CONFIG
    if existing.exists():
        stored = read_config(path)
        if _comparable(stored) != _comparable(json.loads(json.dumps(config))):
            raise RunError(f"{path} already holds a run with a different configuration; "
                           "choose another --out (nothing was overwritten)")
        return path, True
    if path.exists() and any(path.iterdir()):
        raise RunError(f"{path} exists and is not a fewsam run folder; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    write_json(existing, config)
    return path, False


@contextmanager
def run_folder(run_dir: str | Path, config: dict[str, Any]) -> Iterator[Path]:
    """prepare_run_dir, and remove a new run folder again if the fit fails before its first checkpoint."""
    path, resuming = prepare_run_dir(run_dir, config)
    try:
        yield path
    except BaseException:
        if not resuming and not (path / LAST).exists():
            shutil.rmtree(path, ignore_errors=True)
        raise


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Fields that may differ between a run and its resumption (display-only settings)."""
    return {k: v for k, v in config.items() if k not in {"device", "cache", "progress"}}


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise RunError(f"{run_dir} is not a fewsam run folder (no {CONFIG}); run `fewsam fit ...` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is corrupt ({err}); refit the run") from err


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write_bytes(path, text.encode())
