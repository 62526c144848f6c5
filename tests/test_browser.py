"""End to end in a real browser: `streamlit run` on 127.0.0.1, driven by Debian's headless Chromium.

Needs /usr/bin/chromium and /usr/bin/chromedriver (`.ci/run` installs them with apt-get). Without
them the test is skipped locally and fails under CI, where a skip would hide a broken page.
The screenshot is saved to tests/artifacts/ (or $AR_ARTIFACTS) for a person to look at.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ar_core
from conftest import ROOT, randomize_bn

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser_available() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists() and Path(DRIVER).exists()


pytestmark = pytest.mark.skipif(not _browser_available() and not os.environ.get("CI"),
                                reason="needs Debian's chromium and chromium-driver (installed by .ci/run)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    torch.manual_seed(0)
    cfg = ar_core.ModelConfig(num_classes=10, depth=10, width=1, attention_depth=3, attention_width=4)
    ckpt = ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), tmp_path / "browser-test.safetensors",
                                   {"classes": [f"class{i}" for i in range(10)], "dataset": "toy",
                                    "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    port = _free_port()
    env = {**os.environ, "AR_CHECKPOINT": str(ckpt), "AR_CACHE_DIR": str(tmp_path / "cache"),
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not answer on /_stcore/health within 60 s:\n" + (tmp_path / "streamlit.log").read_text())
    yield url, tmp_path
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,2200"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _artifacts() -> Path:
    path = Path(os.environ.get("AR_ARTIFACTS", ROOT / "tests" / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_upload_in_a_real_browser(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, tmp = server
    image = tmp / "upload.png"
    y, x = np.mgrid[0:64, 0:64]
    Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)).save(image)

    browser.get(url)
    wait = WebDriverWait(browser, 60)
    try:
        _drive(browser, wait, image)
    except Exception:
        browser.save_screenshot(str(_artifacts() / "browser-failure.png"))
        raise


def _drive(browser, wait, image):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Attend & Rectify Explorer"))
    wait.until(lambda d: "Upload an image" in d.find_element(By.TAG_NAME, "body").text)
    upload = browser.find_element(By.XPATH, "//*[@data-testid='stFileUploader'][.//*[contains(., 'Images (PNG')]]"
                                            "//input[@type='file']")
    upload.send_keys(str(image))

    wait.until(lambda d: "Prediction (fused)" in d.find_element(By.TAG_NAME, "body").text)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in body
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    for text in ("1 · Prediction", "2 · Attention maps", "3 · Confidence gates", "4 · Global fusion", "views laid out in"):
        assert text in body, text

    browser.find_element(By.XPATH, "//*[@role='tab'][contains(., 'Attention maps')]").click()
    wait.until(lambda d: "head 4:" in d.find_element(By.TAG_NAME, "body").text)

    def rendered_images(d):
        imgs = d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img, [data-testid='stImageContainer'] img")
        return [i for i in imgs if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)]

    wait.until(lambda d: len(rendered_images(d)) >= 1 + 3 * 4)  # the input and 3 layers x 4 heads
    body = browser.find_element(By.TAG_NAME, "body").text
    for layer in ("group1", "group2", "group3"):
        assert layer in body
    assert body.count("g=") >= 12
    time.sleep(1.0)  # let plotly finish drawing before the screenshot
    shot = _artifacts() / "browser-upload.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
