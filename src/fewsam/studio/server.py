"""``fewsam studio``: choose the data and project folder, open the app, print where to find it, serve.

Kept free of torch: the server answers the page; fitting and predicting happen in a worker
process (``worker.py``), so the studio starts in seconds and a failed fit cannot stop it.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Callable

from fewsam.config import DEFAULT_CACHE
from fewsam.studio.app import StudioSettings, create_app
from fewsam.studio.errors import StudioError
from fewsam.studio.project import LOG, check_writable_folder, default_project, one_studio
from fewsam.studio.security import is_loopback, new_token

DEMO_PROJECT = Path("fewsam_studio_demo")
DEMO_DATA = "phantom"


def resolve_paths(data: Path | None, project: Path | None, demo: bool) -> tuple[Path, Path]:
    """(data, project). ``--demo`` writes the generated phantom into PROJECT/phantom (once: it is kept,
    with the labels, for the next start); otherwise PROJECT defaults to ``<data>-studio``."""
    if demo and data is not None:
        raise StudioError("give --data DIR or --demo (a generated phantom), not both")
    if not demo:
        if data is None:
            raise StudioError("say which data to label: --data DIR (or --demo for a generated phantom)")
        return data, project if project is not None else default_project(data)
    project = project if project is not None else DEMO_PROJECT
    check_writable_folder(project, "--project")
    data = project / DEMO_DATA
    if not (data / "dataset.json").is_file():
        from fewsam.data.phantom import write_phantom_dataset

        if data.exists() and (not data.is_dir() or any(data.iterdir())):
            raise StudioError(f"{data} is in the way of the demo's phantom (it is not one fewsam wrote); "
                              "give another --project")

        write_phantom_dataset(data)
    return data, project


def check_port(host: str, port: int) -> None:
    """Refuse a port another program (or another studio) holds, with one line instead of a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except socket.gaierror as err:  # not a name or address this machine can resolve
            raise StudioError(f"--host {host}: not an address of this machine ({err.strerror or err}); use "
                              "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                raise StudioError(f"--host {host}: no interface of this machine has that address; use 127.0.0.1 "
                                  "(this machine only) or 0.0.0.0 (every interface)") from None
            if err.errno == errno.EACCES:  # not "is a studio already running there?": nothing may be running
                raise StudioError(f"cannot listen on {host}:{port}: this user may not open port {port} (ports "
                                  "below 1024 need administrator rights); pass --port 1024 or higher, e.g. "
                                  "the default 8765") from None
            raise StudioError(f"cannot listen on {host}:{port} ({err.strerror or err}); is a studio already "
                              "running there? pass another --port") from None


def studio_url(host: str, port: int, token: str | None) -> str:
    """The address to open; a wildcard binding is shown with this machine's name."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _echo(line: str) -> None:
    print(line, flush=True)  # flushed: a user piping the output (or a test) sees the address at once


def run_studio(data: Path | None, project: Path | None = None, host: str = "127.0.0.1", port: int = 8765,
               demo: bool = False, device: str = "cpu", cache: str = DEFAULT_CACHE,
               echo: Callable[[str], None] | None = None) -> None:
    """Open the studio on ``data`` and serve it until interrupted (Ctrl+C)."""
    import uvicorn

    echo = echo or _echo
    if not 1 <= port <= 65535:
        raise StudioError(f"--port must be 1 to 65535, not {port}")
    check_port(host, port)  # first: a refused start must not leave a project folder (or the demo's phantom)
    check_writable_folder(Path(cache), "--cache")
    data, project = resolve_paths(data, project, demo)
    token = None if is_loopback(host) else new_token()
    settings = StudioSettings(data=Path(data), project=Path(project), host=host, port=port, token=token,
                              device=device, cache=cache)
    app = create_app(settings)
    project_dir = app.state.project.folder
    with one_studio(project_dir, studio_url(host, port, None), echo):
        echo(f"fewsam studio: labelling {app.state.project.data}")
        if app.state.project.moved_from is not None:
            echo(f"the project's labels were made for {app.state.project.moved_from}, which is gone: they are "
                 "taken as this dataset's (it holds every labelled case)")
        echo(f"labels, fits and exports go to {project_dir} (log: {project_dir / LOG})")
        echo(f"open {studio_url(host, port, token)}")
        if token:
            echo(f"bound to {host}: every request needs the token {token} (in the address above, or the "
                 "X-Fewsam-Token header)")
        echo("press Ctrl+C to stop")
        uvicorn.run(app, host=host, port=port, log_level="warning")
