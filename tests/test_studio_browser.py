"""fewsam studio end to end in a real browser: headless Chromium (Debian's, driven by Selenium through
Debian's chromedriver; nothing is downloaded) against ``fewsam studio`` started as a user starts it.

On a generated phantom: open a case, scroll, window/level, zoom, label every class on two slices
with the mouse (outline, fill), save, draw a closed contour and fill it, undo and redo, fit (2 steps,
1 view; a second fit is refused), see the prediction drawn on an unlabelled slice, follow "suggest
next" to it, accept it, export, and check the exported NIfTI's geometry and labels with nibabel. Screenshots go to $FEWSAM_ARTEFACTS (else the test's tmp folder);
FEWSAM_UPDATE_DOCS=1 also copies two of them into docs/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import contourpy
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fewsam.data.phantom import write_phantom_dataset

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parents[1] / "docs"
STEPS = os.environ.get("FEWSAM_STUDIO_E2E_STEPS", "2")  # more for the docs' screenshots
VIEWS = os.environ.get("FEWSAM_STUDIO_E2E_VIEWS", "1")
FIT_TIMEOUT_S = 300 + 20 * int(STEPS) * int(VIEWS)  # a loaded 2-core machine: ~5 s per step, ~10 s per encoding

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("FEWSAM_ARTEFACTS") or tmp_path / "artefacts") / "studio"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def studio_server(tmp_path: Path):
    """``fewsam studio`` on a 2-case, 3-slice phantom, on a free port; stopped with Ctrl+C (SIGINT)."""
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=3, seed=0)
    project, port = tmp_path / "project", free_port()
    env = dict(os.environ, FEWSAM_NO_REEXEC="1")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "fewsam", "studio", "--data", str(data), "--project",
                               str(project), "--port", str(port), "--cache", str(tmp_path / "cache")],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        try:
            return urllib.request.urlopen(url + "api/info", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_until(up, 60, "the studio server")
        yield {"url": url, "data": data, "project": project, "log": tmp_path / "server.log"}
    finally:
        stop_studio(server)
        log.close()


def stop_studio(server: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops the studio; killed if it does not end within 20 s."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is not installed (scripts/setup.sh installs Debian's "
                    "chromium and chromium-driver with apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    # With --disable-dev-shm-usage chromium keeps its shared memory as files in TMPDIR: pytest's
    # folder removes them, where /tmp would collect one folder per test.
    scratch = tmp_path_factory.mktemp("chromium")
    options.add_argument(f"--user-data-dir={scratch / 'profile'}")
    service = Service(str(CHROMEDRIVER), env={**os.environ, "TMPDIR": str(scratch)})
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The studio page as a user works it: keys, clicks and mouse strokes on the canvas."""

    def __init__(self, driver, url: str) -> None:
        self.d = driver
        driver.get(url)
        wait_until(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"), 30, "the page")

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def key(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.d).send_keys(*keys).perform()

    def ctrl(self, key: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ActionChains(self.d).key_down(Keys.CONTROL).send_keys(key).key_up(Keys.CONTROL).perform()

    def arrow_down(self) -> None:
        from selenium.webdriver.common.keys import Keys

        self.key(Keys.ARROW_DOWN)

    def click(self, element_id: str) -> None:
        self.d.find_element("id", element_id).click()

    def open_slice(self, z: int) -> None:
        self.d.find_element("css selector", f"#slice-strip button[data-z='{z}']").click()
        wait_until(lambda: self.js("return studio.state.slice && studio.state.slice.z") == z, 10, f"slice {z}")

    def to_client(self):
        """Image pixel (x, y) -> viewport coordinates of its centre, for the canvas as now shown."""
        left, top, sx, sy = self.js(
            "const r = document.getElementById('view').getBoundingClientRect();"
            "return [r.left, r.top, r.width / studio.state.slice.w, r.height / studio.state.slice.h];")
        return lambda x, y: (int(left + (x + 0.5) * sx), int(top + (y + 0.5) * sy))

    def stroke(self, points: list[tuple[int, int]]) -> None:
        """Press the left button at the first image pixel, move through the others, release."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        to_client = self.to_client()
        actions = ActionBuilder(self.d, duration=0)  # no 250 ms glide per pointer move
        actions.pointer_action.move_to_location(*to_client(*points[0])).pointer_down()
        for point in points[1:]:
            actions.pointer_action.move_to_location(*to_client(*point))
        actions.pointer_action.pointer_up()
        actions.perform()

    def drag_right(self, start: tuple[int, int], end: tuple[int, int]) -> None:
        """A right-button drag between two image pixels (window/level)."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        from selenium.webdriver.common.actions.mouse_button import MouseButton

        to_client = self.to_client()
        actions = ActionBuilder(self.d, duration=0)  # no 250 ms glide per pointer move
        actions.pointer_action.move_to_location(*to_client(*start)).pointer_down(MouseButton.RIGHT)
        actions.pointer_action.move_to_location(*to_client(*end)).pointer_up(MouseButton.RIGHT)
        actions.perform()

    def draft(self) -> np.ndarray:
        s = self.js("const s = studio.state.slice; return [s.h, s.w, Array.from(studio.draft().label)];")
        return np.asarray(s[2], np.uint8).reshape(s[0], s[1])

    def prediction_drawn(self) -> list[int]:
        """[predicted pixels of the open slice, those of them drawn tinted (not grey) on the canvas]."""
        return self.js("""
            const s = studio.state.slice, ctx = document.getElementById('view').getContext('2d');
            const shown = ctx.getImageData(0, 0, s.w, s.h).data;
            let predicted = 0, tinted = 0;
            for (let i = 0; i < s.w * s.h; i++) {
              if (!s.pred[i]) continue;
              predicted++;
              if (shown[4 * i] !== shown[4 * i + 1] || shown[4 * i + 1] !== shown[4 * i + 2]) tinted++;
            }
            return [predicted, tinted];""")

    def message(self) -> str:
        return self.js("return document.getElementById('message').textContent")


def interior_points(mask: np.ndarray, count: int) -> list[tuple[int, int]]:
    """(x, y) pixels deep inside ``mask``, spread over it (the deepest first)."""
    depth = ndimage.distance_transform_edt(mask)
    ys, xs = np.nonzero(depth >= 2.5)
    if not len(ys):
        ys, xs = np.nonzero(depth == depth.max())
    order = np.argsort(-depth[ys, xs], kind="stable")
    picked = order[np.linspace(0, len(order) - 1, min(count, len(order))).astype(int)]
    return [(int(xs[i]), int(ys[i])) for i in picked]


def outline_and_fill(page: Page, truth: np.ndarray) -> None:
    """Each class of a slice the way a user labels it: key 1-3 picks the class, a brush stroke along the
    structure's outer edge closes a contour, the fill tool (F) fills it from a click inside. Outer before
    inner: the Myo disc is filled whole, then the LV outlined and filled inside it; B: the brush again."""
    for value in (2, 3, 1):
        mask = truth == value if value != 2 else ndimage.binary_fill_holes(truth == 2)
        outline = max(contourpy.contour_generator(z=mask.astype(float)).lines(0.5), key=len)
        page.key(str(value), "b")
        page.stroke([inside_pixel(mask, x, y) for x, y in outline])
        page.key("f")
        page.stroke([interior_points(mask & (page.draft() != value), 1)[0]])  # a click not yet this class
    page.key("b")


def inside_pixel(mask: np.ndarray, x: float, y: float) -> tuple[int, int]:
    """The pixel of ``mask`` nearest to a point of its (sub-pixel) outline: the brush runs along the
    structure's own edge pixels."""
    candidates = [(int(cx), int(cy)) for cx in (np.floor(x), np.ceil(x)) for cy in (np.floor(y), np.ceil(y))]
    inside = [(cx, cy) for cx, cy in candidates if mask[cy, cx]]
    return min(inside or candidates, key=lambda p: (p[0] - x) ** 2 + (p[1] - y) ** 2)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_label_fit_predict_accept_export_in_a_browser(studio_server, browser, artefacts):
    page = Page(browser, studio_server["url"])
    truth = np.asarray(nib.load(studio_server["data"] / "labelsTr" / "phantom_000.nii.gz").dataobj).transpose(2, 1, 0)
    for case in ("phantom_001", "phantom_000"):  # open a case from the list
        browser.find_element("css selector", f"#cases li[data-case='{case}']").click()
        wait_until(lambda: page.js("return studio.state.slice.case") == case, 10, case)
    page.arrow_down()  # slices scroll with the arrow keys (and the wheel)
    wait_until(lambda: page.js("return studio.state.z") == 2, 10, "the next slice")

    # Window/level: a right-button drag changes it, R resets it; + zooms.
    default = page.js("return studio.state.window.slice()")
    page.drag_right((40, 40), (120, 10))
    assert page.js("return studio.state.window") != default
    page.key("r")
    assert page.js("return studio.state.window") == default
    width = page.js("return document.getElementById('view').getBoundingClientRect().width")
    page.key("+")
    assert page.js("return document.getElementById('view').getBoundingClientRect().width") > width
    page.key("-")

    # Label every class on slices 0 and 2 as a user does: outline it with a 2-pixel brush, fill the inside.
    page.key("[", "[", "[", "[")
    assert page.js("return studio.state.brush") == 2
    painted = {}
    for z in (0, 2):
        page.open_slice(z)
        outline_and_fill(page, truth[z])
        painted[z] = page.draft()
        assert set(np.unique(painted[z])) == {0, 1, 2, 3}
        for value in (1, 2, 3):  # the labels follow the structures the user outlined
            assert dice(painted[z] == value, truth[z] == value) > 0.7, (z, value)
        if z == 2:
            page.key("g")  # the dataset's own labels as outlines, for the screenshot
            page.js("studio.draw()")
            browser.save_screenshot(str(artefacts / "studio-labelling.png"))
            page.key("g")
        page.key("s")
        wait_until(lambda: f"saved phantom_000 slice {z}" in page.message(), 10, "the save")
    assert page.js("return studio.state.info.cases[0].labelled") == [0, 2]

    # A closed contour filled with the Fill tool stays inside the contour; undo takes both back.
    page.open_slice(1)
    page.key("2")
    square = [(20, 20), (60, 20), (60, 60), (20, 60), (20, 20)]
    page.stroke(square)
    page.key("f")
    page.stroke([(40, 40)])
    filled = page.draft()
    assert filled[40, 40] == 2 and filled[30:50, 30:50].min() == 2 and filled[10, 10] == 0 and filled[70, 70] == 0
    page.key("b")
    page.ctrl("z")
    assert page.draft()[40, 40] == 0 and page.draft()[20, 40] == 2  # fill undone, contour kept
    page.ctrl("z")
    assert not page.draft().any()
    page.ctrl("y")
    assert page.draft()[20, 40] == 2  # redo brings the contour back
    page.ctrl("z")

    # Fit on the two labelled slices; the page polls the job until it ends.
    for element_id, value in (("fit-steps", STEPS), ("fit-views", VIEWS)):
        field = browser.find_element("id", element_id)
        field.clear()
        field.send_keys(value)
    page.click("fit")
    page.click("fit")  # a second fit while one runs is refused, and the page says so
    wait_until(lambda: "already running" in page.message(), 10, "the refusal of a second fit")
    status = lambda: browser.find_element("id", "job-status").text  # noqa: E731
    wait_until(lambda: ": done" in status() or ": failed" in status(), FIT_TIMEOUT_S, "the fit", interval=1)
    assert ": done" in status(), status()
    assert f"step {STEPS}/{STEPS}" in status()

    # "Suggest next" leads to the one predicted slice not labelled: slice 1; its prediction is drawn.
    page.click("suggest")
    wait_until(lambda: "phantom_000 slice 1" in browser.find_element("id", "suggest-status").text, 10, "a suggestion")
    wait_until(lambda: page.js("return studio.state.slice.z === 1 && studio.state.slice.pred !== null"), 10,
               "the prediction")
    # Every predicted pixel is drawn in its class colour (the frame after the slice arrived).
    wait_until(lambda: (lambda n: n[0] > 50 and n[1] == n[0])(page.prediction_drawn()), 10, "the prediction drawn")
    browser.save_screenshot(str(artefacts / "studio-prediction.png"))
    prediction = np.asarray(page.js("return Array.from(studio.state.slice.pred)"), np.uint8).reshape(truth.shape[1:])

    # Accept it: slice 1 joins the labelled set with the predicted labels.
    page.key("a")
    wait_until(lambda: page.js("return studio.state.slice.labelled"), 10, "the accepted slice")
    assert page.js("return studio.state.info.cases[0].labelled") == [0, 1, 2]

    page.click("export")
    wait_until(lambda: "exported" in page.message(), 20, "the export")
    browser.save_screenshot(str(artefacts / "studio-export.png"))

    exported = nib.load(studio_server["project"] / "export" / "labelsTr" / "phantom_000.nii.gz")
    source = nib.load(studio_server["data"] / "imagesTr" / "phantom_000_0000.nii.gz")
    np.testing.assert_allclose(exported.affine, source.affine)
    assert exported.header.get_zooms()[:3] == source.header.get_zooms()[:3]
    labels = np.asarray(exported.dataobj).transpose(2, 1, 0)
    assert labels.shape == truth.shape
    np.testing.assert_array_equal(labels[0], painted[0])
    np.testing.assert_array_equal(labels[2], painted[2])
    np.testing.assert_array_equal(labels[1], prediction)
    manifest = json.loads((studio_server["project"] / "export" / "labelled_slices.json").read_text())
    assert manifest["cases"]["phantom_000"]["slices"] == [0, 1, 2]
    assert not (studio_server["data"] / "labels").exists()  # nothing written into the dataset

    if os.environ.get("FEWSAM_UPDATE_DOCS") == "1":
        for name in ("studio-labelling.png", "studio-prediction.png"):
            shutil.copyfile(artefacts / name, DOCS / name)
