"""The studio's HTTP endpoints as a script or a browser can misuse them: bodies that are not a JSON object,
misspelt settings, bodies FastAPI cannot parse, path-like case ids, slices out of range, a label of the wrong
shape, size or classes. Each is a 4xx JSON answer that says what is wrong, and nothing is written.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_studio_api import CASE, H, SLEEPER, W, data, make_client, painted, put, python  # noqa: F401  (data: fixture)

JSON = {"Content-Type": "application/json"}
ASK_FOR_AN_OBJECT = "; send a JSON object ({...}) with Content-Type: application/json"


@pytest.fixture
def studio(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        yield client


def project_files(studio) -> set[str]:
    """The files in the studio's project folder, but its log (which records refusals too)."""
    folder = studio.app.state.project.folder
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "studio.log"}


@pytest.mark.parametrize("path", ["/api/fit", "/api/predict"])
@pytest.mark.parametrize("body, headers, said", [
    (b"", JSON, "the request body is empty"),
    (b"null", JSON, "the request body is null, not a JSON object"),
    (b"[]", JSON, "the request body is an array, not a JSON object"),
    (b"80", JSON, "the request body is a number, not a JSON object"),
    (b'{"steps": 4}', {"Content-Type": "text/plain"}, "the request body was not sent as JSON"),
])
def test_a_body_that_is_not_a_json_object_says_what_it_is_instead(studio, path, body, headers, said):
    """An empty body read "request: Field required", which named nothing the user could change."""
    response = studio.post(path, content=body, headers=headers)
    assert response.status_code == 422 and response.json()["detail"] == said + ASK_FOR_AN_OBJECT, response.json()
    assert studio.get("/api/job").json() == {"state": "idle"}


@pytest.mark.parametrize("path, body", [("/api/fit", {"step": 5}), ("/api/fit", {"steps": 4, "view": 1}),
                                        ("/api/predict", {"case": [CASE]})])
def test_a_misspelt_setting_is_refused_before_anything_starts(studio, path, body):
    """``{"step": 5}`` started a fit of the default 80 steps, the misspelt field silently ignored."""
    assert put(studio, painted()).status_code == 200
    before = project_files(studio)
    response = studio.post(path, json=body)
    wrong = next(iter(set(body) - {"steps"}))
    assert response.status_code == 422, response.json()
    assert response.json()["detail"] == f"{wrong}: not a setting of this request (misspelt?)"
    assert studio.get("/api/job").json() == {"state": "idle"} and project_files(studio) == before


@pytest.mark.parametrize("body, said", [
    (b"[" * 100_000 + b"]" * 100_000, "the request body's JSON is nested too deeply to read"),
    ('{"cases": ["é"]}'.encode("latin-1"), "the request body is not UTF-8 text; send JSON encoded as UTF-8"),
    (b'{"steps": ' + b"9" * 5000 + b"}", "the request body is not valid JSON (Exceeds the limit (4300 digits) "
                                         "for integer string conversion: value has 5000 digits)"),
])
def test_a_body_fastapi_cannot_parse_says_why(studio, body, said):
    """FastAPI answers these "There was an error parsing the body", whatever was wrong."""
    response = studio.post("/api/fit", content=body, headers=JSON)
    assert response.status_code == 422 and response.json()["detail"] == said, response.json()
    assert studio.get("/api/job").json() == {"state": "idle"}


def test_the_bodys_own_size_cap_still_answers_as_before(data, tmp_path):
    with make_client(data, tmp_path / "project", max_upload=1000) as client:
        response = client.post("/api/fit", content=b"[" * 3000, headers=JSON)
    assert response.status_code == 413 and "cap of 1000 bytes" in response.json()["detail"]


@pytest.mark.parametrize("case, z, status, said", [
    ("../phantom_000", 0, 404, "no case '../phantom_000'"), ("/etc/passwd", 0, 404, "no case '/etc/passwd'"),
    ("", 0, 404, "no case ''"), (CASE, -1, 404, "there is no slice -1"), (CASE, 3, 404, "there is no slice 3"),
    (CASE, 10**30, 404, f"there is no slice {10**30}"),
])
def test_a_case_or_slice_the_dataset_lacks_is_refused_by_every_endpoint_and_writes_nothing(studio, case, z, status,
                                                                                          said):
    before = project_files(studio)
    label = painted()
    for response in (studio.get("/api/slice", params={"case": case, "z": z}),
                     studio.put("/api/label", params={"case": case, "z": z, "h": H, "w": W}, content=label.tobytes()),
                     studio.delete("/api/label", params={"case": case, "z": z}),
                     studio.post("/api/accept", params={"case": case, "z": z})):
        assert response.status_code == status and said in response.json()["detail"], response.json()
    assert project_files(studio) == before


@pytest.mark.parametrize("content, h, w, said", [
    (painted().tobytes(), H - 1, W, "the label is 143x176 but slice 0 of phantom_000 is 144x176"),
    (painted().tobytes()[:-1], H, W, "the label holds 25343 bytes; a 144x176 slice needs 25344"),
    (painted().astype(np.int16).tobytes(), H, W, "the label holds 50688 bytes; a 144x176 slice needs 25344"),
    (painted((1, 2, 9)).tobytes(), H, W, "label values [9] are not classes of this dataset"),
])
def test_a_label_of_the_wrong_shape_size_or_classes_is_refused_and_nothing_is_written(studio, content, h, w, said):
    response = studio.put("/api/label", params={"case": CASE, "z": 0, "h": h, "w": w}, content=content)
    assert response.status_code == 422 and said in response.json()["detail"], response.json()
    assert project_files(studio) == set()


def test_an_empty_base_revision_is_refused_as_such(studio):
    """``&base=`` (a script that lost the revision it read) was answered "saved in another tab or window
    after this one loaded it", which no tab had done."""
    response = studio.put("/api/label", params={"case": CASE, "z": 0, "h": H, "w": W, "base": ""},
                          content=painted().tobytes())
    assert response.status_code == 422 and response.json()["detail"].startswith("base: "), response.json()
    assert project_files(studio) == set()


@pytest.mark.parametrize("token_query", [[("token", "wrong"), ("token", "s3cret")],
                                         [("token", "s3cret"), ("token", "wrong")]], ids=["wrong-first", "right-first"])
def test_a_token_given_twice_once_wrong_is_refused_whichever_comes_last(data, tmp_path, token_query):
    """A server reading another of several values than the guard does would let a wrong token in."""
    with make_client(data, tmp_path / "project", host="0.0.0.0", token="s3cret") as client:
        assert client.get("/api/info", params=token_query).status_code == 401
        assert client.get("/api/info", params=[("token", "s3cret")] * 2).status_code == 200
        mixed = client.get("/api/info", params={"token": "s3cret"}, headers={"X-Fewsam-Token": "wrong"})
        assert mixed.status_code == 401


@pytest.mark.parametrize("headers", [{"Origin": "https://127.0.0.1:8765"}, {"Origin": "http://127.0.0.1:9999"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}],
                         ids=["https-origin", "other-port", "cross-site-no-origin", "same-site-no-origin"])
def test_a_change_from_another_origin_is_refused_by_scheme_port_or_sec_fetch_site(studio, headers):
    """An https page is another origin than the http studio on the same host and port; a request without an
    Origin still tells a browser's page of another site by its Sec-Fetch-Site."""
    before = project_files(studio)
    response = put(studio, painted(), **headers)
    assert response.status_code == 403 and "another site" in response.json()["detail"]
    assert project_files(studio) == before
    assert studio.get("/api/info", headers=headers).status_code == 200  # reading is no change


@pytest.mark.parametrize("headers", [{"Origin": "http://127.0.0.1:8765"}, {"Sec-Fetch-Site": "same-origin"},
                                     {"Sec-Fetch-Site": "none"}, {}])
def test_a_change_from_the_studios_own_page_or_a_script_passes(studio, headers):
    assert put(studio, painted(), **headers).status_code == 200
