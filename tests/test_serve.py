"""serve: every endpoint, every limit as a 4xx JSON error (never a 5xx), and a real browser."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import images  # noqa: E402
from conftest import SHARED  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from imgcls.infer.serve import ServeLimits, create_app  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    data = images.two_class_tree(base / "data", 10, 40)
    return images.train_tiny(data, base / "run", "--epochs", "1")


@pytest.fixture(scope="module")
def client(run):
    app = create_app(run, ServeLimits(max_upload_bytes=200_000, max_files=3, max_pixels=4_000_000))
    return TestClient(app)


def post(client, *files):
    return client.post("/predict", files=[("file", f) for f in files])


def test_pages_and_info(client):
    r = client.get("/")
    assert r.status_code == 200 and "<title>imgcls</title>" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no external asset
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["classes"] == ["cat", "dog"] and info["input_size"] == [32, 32]


def test_predict_one_and_several(client):
    r = post(client, ("a.jpg", images.jpeg_bytes(50, 40, seed=1), "image/jpeg"))
    assert r.status_code == 200
    p = r.json()["predictions"][0]
    assert p["filename"] == "a.jpg" and abs(sum(p["probabilities"].values()) - 1) < 1e-6
    r = post(client, ("a.jpg", images.jpeg_bytes(seed=2), "image/jpeg"),
             ("b.txt", b"not an image", "text/plain"))
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert "probabilities" in preds[0] and "error" in preds[1]


def bomb_bytes():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return images.png_header_only(Path(d) / "b.png", 10000, 10000).read_bytes()


@pytest.mark.parametrize("files, status, words", [
    ([("x.jpg", b"\x00garbage" * 10, "image/jpeg")], 415, "not a usable image"),
    ([("big.jpg", b"\xff" * 300_000, "image/jpeg")], 413, "over the upload limit"),
    ([("bomb.png", "BOMB", "image/png")], 413, "too many pixels"),
    ([("e.jpg", b"", "image/jpeg")], 400, "empty file"),
    ([(f"{i}.jpg", b"x", "image/jpeg") for i in range(5)], 400, "too many"),
])
def test_every_limit_is_a_4xx_json_error(client, files, status, words):
    files = [(n, bomb_bytes() if d == "BOMB" else d, t) for n, d, t in files]
    r = post(client, *files)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_malformed_requests_are_4xx(client):
    assert client.post("/predict").status_code == 400
    assert client.post("/predict", content=b"hello", headers={"content-type": "text/plain"}).status_code == 400
    r = client.post("/predict", content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xx"})
    assert 400 <= r.status_code < 500
    r = client.post("/predict", files={"note": (None, "no file")})  # a field, not a file
    assert r.status_code == 400 and "no file" in r.json()["error"]
    assert client.get("/nope").status_code == 404
    big = client.post("/predict", content=b"x" * 10, headers={
        "content-type": "multipart/form-data; boundary=x", "content-length": str(10**9)})
    assert big.status_code in (400, 413)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# The README's screenshots: rewritten only when asked (IMGCLS_UPDATE_FIGURES=1), so that a test
# run leaves the checkout as it found it.
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def _box_overlap(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"] or
                a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def test_real_browser_uploads_a_cat_and_sees_probabilities(run, tmp_path):
    """The page at a phone width and a desktop width: the sentence and the bars are visible
    and clear of the drop zone; an error leaves no broken image; no request 404s."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    cats = sorted((SHARED / "val" / "cats").glob("*.jpg")) if SHARED.is_dir() else []
    photo = cats[0] if cats else images.jpeg(tmp_path / "cat.jpg", 200, 150, seed=4)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            for name, width, height in (("phone", 390, 844), ("desktop", 1280, 800)):
                page = browser.new_page(viewport={"width": width, "height": height})
                failed = []
                page.on("response", lambda r: failed.append(r.url)
                        if r.status >= 400 and r.request.method == "GET" else None)
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("document.getElementById('classes').textContent.includes('cat')")
                page.set_input_files("#file", str(broken))
                page.wait_for_function("document.getElementById('error').textContent.length > 0")
                assert not page.is_visible("#preview")  # no broken-image placeholder
                page.set_input_files("#file", str(photo))
                page.wait_for_function(
                    "document.getElementById('sentence').textContent.startsWith('This image is')",
                    timeout=30000)
                text = page.inner_text("body")
                assert "This image is" in text and "% cat and" in text and "% dog." in text
                drop = page.locator("#drop").bounding_box()
                for sel in ("#classes", "#sentence", "#rows"):
                    assert page.is_visible(sel), (name, sel)
                    box = page.locator(sel).bounding_box()
                    assert box["height"] > 0 and not _box_overlap(box, drop), (name, sel, box, drop)
                    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (name, sel, box)
                fill = page.locator(".top .fill").bounding_box()
                assert fill["width"] > 0 and not _box_overlap(fill, drop)
                shot = (FIGURES if os.environ.get("IMGCLS_UPDATE_FIGURES") == "1"
                        else tmp_path) / f"serve_{name}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                assert not failed, failed  # favicon included
                page.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_only_the_documented_field_names_carry_photos(client):
    photo = ("a.jpg", images.jpeg_bytes(40, 30), "image/jpeg")
    r = client.post("/predict", files=[("photo", photo)])
    assert r.status_code == 400 and "'photo'" in r.json()["error"] and "'file'" in r.json()["error"]
    r = client.post("/predict", files=[("files", photo)])
    assert r.status_code == 200


def test_a_bad_port_is_one_line_before_any_serving(run):
    from imgcls.data.preprocess import DEFAULT_MAX_PIXELS

    assert ServeLimits().max_pixels == DEFAULT_MAX_PIXELS  # the same guard as predict/train
    res = subprocess.run([sys.executable, "-m", "imgcls", "serve", str(run), "--port", "99999"],
                         capture_output=True, text=True, timeout=120)
    errs = images.error_lines(res.stderr)
    assert res.returncode == 2 and len(errs) == 1 and "65535" in errs[0]
    assert "serving" not in res.stdout
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "imgcls", "serve", str(run), "--port",
                              str(port)], capture_output=True, text=True, timeout=120)
    errs = images.error_lines(res.stderr)
    assert res.returncode == 2 and len(errs) == 1 and str(port) in errs[0]
    assert "serving" not in res.stdout


def test_head_requests_and_a_cut_short_upload(client):
    """Old main: HEAD / was 405, and a body without its closing boundary was answered
    'no file in the upload (use the field name 'file')'."""
    assert client.head("/").status_code == 200 and client.head("/health").status_code == 200
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + \
        images.jpeg_bytes(seed=3)[:200]  # cut short: no closing boundary
    r = client.post("/predict", content=body,
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 400 and "no closing boundary" in r.json()["error"], r.json()


def test_the_schema_has_one_operation_per_route_and_no_warning(run):
    """Old main: GET and HEAD on one route shared an operation id, and FastAPI warned
    'Duplicate Operation ID' at every start."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = TestClient(create_app(run))
        schema = client.get("/openapi.json").json()
    ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)) and {"/", "/health", "/info", "/predict"} <= set(
        schema["paths"])
    assert client.head("/").status_code == 200


def test_serve_limits_are_checked_before_it_starts(run):
    from imgcls.errors import UserError

    for bad in ({"max_upload_bytes": -1}, {"max_files": 0}, {"max_pixels": -5}):
        with pytest.raises(UserError, match="must be a whole number"):
            ServeLimits(**bad)
