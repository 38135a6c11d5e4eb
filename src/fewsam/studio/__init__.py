"""fewsam studio: label the few shots in a browser, fit, see predictions, correct, repeat.

``fewsam studio --data DATA`` serves a page (plain HTML, JavaScript and canvas from ``static/``:
no build step, nothing fetched from the internet) and an HTTP API (``app.py``) over one dataset,
read through fewsam's own readers, and one project folder (``project.py``) that receives every
label, fit, prediction and export. Fits run ``fewsam.api.fit`` in a worker process (``worker.py``,
started by ``jobs.py``) on the labelled slices written as a dataset fewsam reads (``fitdata.py``).
Who may connect is decided in ``security.py``.
"""

from fewsam.studio.app import StudioSettings, create_app
from fewsam.studio.server import run_studio

__all__ = ["StudioSettings", "create_app", "run_studio"]
