"""`utkface app` in a real browser: a tiny registered champion, the app on a free localhost port,
driven by Playwright in headless Debian Chromium. Screenshots go to test-artifacts/."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
import requests
from model_fixtures import (
    MAX_IMAGE_BYTES,
    MODEL_NAME,
    image_bytes,
    log_tiny_serving_model,
    register_version,
    use_tmp_store,
)
from playwright.sync_api import Browser, Page, expect, sync_playwright
from tiny import free_port

from utkface.data.synthetic import draw_face
from utkface.mlops import registry

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LABEL = re.compile(r"age ≈ \d+ \(\d+-\d+\), (female|male) p=[01]\.\d\d")
SLOW = 120_000  # ms: the first page run imports TensorFlow and loads the model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` (as .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A throwaway store whose `champion` is a tiny real model; the app runs in this folder."""
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("app")
        use_tmp_store(patch, root)
        version = register_version(log_tiny_serving_model(root))
        registry.registry_client().set_registered_model_alias(
            MODEL_NAME, registry.CHAMPION, version.version
        )
        yield root


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def app_server(cwd: Path, *args: str) -> Iterator[str]:
    """`utkface app` on a free port, until the block ends; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = cwd / f"app-{port}.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "utkface"), "app", "--port", str(port), *args],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # streamlit runs as a child: stop the whole group
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"utkface app exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer: {log_path.read_text()[-3000:]}"
            try:
                if requests.get(f"{url}/_stcore/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        yield url
    except AssertionError:
        print(log_path.read_text()[-5000:])
        raise
    finally:
        with suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def app(store: Path) -> Iterator[str]:
    with app_server(store) as url:
        yield url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    yield page
    page.close()


def face_jpeg(path: Path) -> Path:
    """A generated face the detector finds (small enough for the tiny model's byte limit)."""
    buffer = io.BytesIO()
    draw_face(34, 1, 0, np.random.default_rng(3)).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return path


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name, full_page=True)


def test_upload_shows_age_and_gender_and_refuses_a_text_file(
    app: str, page: Page, tmp_path: Path
) -> None:
    page.goto(app)
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text(f"{MODEL_NAME} version 1")).to_be_visible(timeout=SLOW)
    for shown in ("data version data-v1", "test age MAE", "8.00 y", "gender accuracy", "0.800"):
        expect(sidebar).to_contain_text(shown)
    expect(sidebar.get_by_text("Intended use: research")).to_be_visible()

    page.locator("input[type=file]").set_input_files(face_jpeg(tmp_path / "face.jpg"))
    expect(page.get_by_text(LABEL)).to_be_visible(timeout=SLOW)
    expect(page.get_by_text("face 1", exact=False)).to_be_visible()
    expect(page.get_by_test_id("stImage")).to_be_visible()
    screenshot(page, "app.png")

    limit = f"at most {MAX_IMAGE_BYTES:,} bytes"  # the model's limit, said before any upload
    expect(page.get_by_text(limit, exact=False)).to_be_visible()
    text = tmp_path / "notes.jpg"
    text.write_text("this is a text file, not a photo\n")
    page.locator("input[type=file]").set_input_files(text)
    error = page.get_by_test_id("stAlert").filter(has_text="not an image")
    expect(error).to_be_visible(timeout=SLOW)
    expect(error).to_contain_text("Cannot use notes.jpg: not an image (unrecognised format)")
    expect(page.get_by_text(LABEL)).to_have_count(0)
    expect(page.get_by_text("Traceback")).to_have_count(0)
    screenshot(page, "app-error.png")


def test_no_face_offers_the_whole_image(app: str, page: Page, tmp_path: Path) -> None:
    page.goto(app)
    noise = tmp_path / "noise.png"
    noise.write_bytes(image_bytes(1))
    page.locator("input[type=file]").set_input_files(noise)
    expect(page.get_by_text("No face found")).to_be_visible(timeout=SLOW)
    expect(page.get_by_text(LABEL)).to_have_count(0)
    page.get_by_text("Predict on the whole image").click()
    expect(page.get_by_text(LABEL)).to_be_visible(timeout=SLOW)
    expect(page.get_by_text("whole image", exact=False).last).to_be_visible()


def test_without_a_champion_the_page_says_how_to_get_one(store: Path, page: Page) -> None:
    with app_server(store, "--model", "models:/never-registered@champion") as url:
        page.goto(url)
        error = page.get_by_test_id("stAlert")
        expect(error).to_contain_text("dvc repro", timeout=SLOW)
        expect(error).to_contain_text("utkface promote")
        expect(page.get_by_text("Traceback")).to_have_count(0)
