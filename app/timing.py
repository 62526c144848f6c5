"""How fast the page answers: Streamlit's AppTest in this process, and a real browser against a server.

Used by `python -m app.bench` and by the real-browser test. Uses the shipped CIFAR-10 attention
checkpoint when present, else a freshly initialised WRN-16-4 with AD=3 AW=4 (the speed does not
depend on the weights).
"""

from __future__ import annotations

import io
import os
import re
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CAPTION = re.compile(r"tab laid out in ([\d,]+) ms")
OVERLAYS = re.compile(r"Overlays at opacity [\d.]+ \(\w+\) drawn in ([\d,]+) ms")


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _photo(seed: int) -> bytes:
    """A 12-megapixel JPEG (4000x3000), a phone photo's size: decoding one takes a few hundred ms."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = (rng.random((3000, 4000, 3)) * 40 + np.linspace(0, 200, 4000)[None, :, None]).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@contextmanager
def _checkpoint():
    """(label the sidebar shows, path): the shipped checkpoint, or a random one offered as AR_CHECKPOINT."""
    import torch

    import ar_core

    shipped = ar_core.available_checkpoints().get("cifar10-wrn16x4-ad3aw4")
    if shipped is not None:
        yield "cifar10-wrn16x4-ad3aw4 (shipped)", str(shipped)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = ar_core.build_model(ar_core.ModelConfig(attention_depth=3, attention_width=4)).eval()
        path = ar_core.save_checkpoint(model, Path(tmp) / "bench-wrn16x4.safetensors",
                                       {"classes": [f"c{i}" for i in range(10)]})
        os.environ["AR_CHECKPOINT"] = str(path)
        try:
            yield "bench-wrn16x4 (AR_CHECKPOINT)", str(path)
        finally:
            os.environ.pop("AR_CHECKPOINT", None)


def time_app(repeats: int = 10, device: str = "auto", tta: str = "as trained") -> dict:
    """AppTest, in this process: the first image → the default tab's views, then ``repeats`` more;
    after each, opening the attention-maps tab (a page rerun: only the open tab is built) and a
    display-control rerun there (neither may run the model); then a tab opened while three 12-megapixel
    JPEGs are uploaded (one with few ``repeats``), which must not decode them again.

    ``tta``: the sidebar's test-time augmentation ("as trained": the checkpoint's own views).
    Wall time and this process's CPU time (which a busy machine inflates less) are both reported.
    Run it in a fresh process for the first upload to mean what a first visitor sees.
    """
    from streamlit.testing.v1 import AppTest

    from app.pages.inspect_page import TABS
    from app.share import TAB_KEY
    from ar_core import inference

    calls = []  # the augmentation of each model run
    original = inference.inspect

    def counted(model, images, meta, tta=None):
        calls.append(inference.resolve_tta(tta, meta).name)
        return original(model, images, meta, tta)

    inference.inspect = counted
    try:
        with _checkpoint() as (label, _):
            at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300).run()
            at.selectbox(key="model_label").set_value(label)
            at.selectbox(key="device").set_value(device)
            at.selectbox(key="tta").set_value(tta).run()
            calls.clear()  # the model's warm-up at load is not an upload's run
            upload, upload_cpu, control, control_cpu, switch, control_runs = [], [], [], [], [], 0
            for i in range(repeats + 1):
                at.session_state[TAB_KEY] = TABS[0]  # each upload lands on the default tab, as a new visitor's
                at.file_uploader(key="images").set_value([(f"bench{i}.png", _png(i), "image/png")])
                t0, c0 = time.perf_counter(), time.process_time()
                at.run()
                upload.append(time.perf_counter() - t0)
                upload_cpu.append(time.process_time() - c0)
                n = len(calls)
                at.session_state[TAB_KEY] = TABS[1]
                t0 = time.perf_counter()
                at.run()
                switch.append(time.perf_counter() - t0)
                at.slider(key="alpha").set_value(0.3 + 0.05 * (i % 5))
                t0, c0 = time.perf_counter(), time.process_time()
                at.run()
                control.append(time.perf_counter() - t0)
                control_cpu.append(time.process_time() - c0)
                control_runs += len(calls) - n  # must stay 0: neither a tab nor a control re-runs the model
                if at.exception:
                    raise AssertionError(f"the page raised: {at.exception}")
            # a page rerun (a tab opened) while phone photos are uploaded: none may be decoded again
            photos = 1 if repeats < 5 else 3
            at.file_uploader(key="images").set_value([(f"photo{k}.jpg", _photo(k), "image/jpeg")
                                                      for k in range(photos)]).run()
            photo_switch = []
            for i in range(repeats):
                at.session_state[TAB_KEY] = TABS[i % 2]
                t0 = time.perf_counter()
                at.run()
                photo_switch.append(time.perf_counter() - t0)
            if at.exception:
                raise AssertionError(f"the page raised: {at.exception}")
    finally:
        inference.inspect = original

    def ms(v):
        return round(1000 * v, 1)

    return {"checkpoint": label, "device": device, "tta": tta, "first_upload_ms": ms(upload[0]),
            "upload_to_views_ms": ms(statistics.median(upload[1:])),
            "display_control_rerun_ms": ms(statistics.median(control[1:])),
            "open_attention_tab_ms": ms(statistics.median(switch[1:])),
            "photos_uploaded": photos, "open_tab_with_photos_ms": ms(statistics.median(photo_switch)),
            "first_upload_cpu_ms": ms(upload_cpu[0]), "upload_cpu_ms": ms(statistics.median(upload_cpu[1:])),
            "display_control_cpu_ms": ms(statistics.median(control_cpu[1:])),
            "model_runs_on_control_change": control_runs, "model_tta": sorted(set(calls))}


def browser_available() -> bool:
    import importlib.util

    from app.loadtest import CHROMEDRIVER, CHROMIUM

    return importlib.util.find_spec("selenium") is not None and Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _caption_ms(driver, wait, name: str) -> float:
    """The inspector's server-side time, once a fresh page shows image ``name`` and the caption."""
    def ready(d):
        body = _body(d)
        return f"{name}: model input" in body and CAPTION.search(body)

    return float(wait.until(ready).group(1).replace(",", ""))


def time_browser(uploads: int = 20, controls: int = 10, checkpoint: str | None = None,
                 tta: str = "as trained") -> dict:
    """A fresh `streamlit run` server and headless Chromium: upload → all default views.

    Server time of the first upload after the start and the median of ``uploads`` later ones (each
    from a new page, as a new visitor sends it), read
    from the inspector's own caption (model run and layout, measured on the server), and the median
    time from a display-control change (the overlay opacity) until the browser shows the new
    overlays (the server's fragment rerun plus the browser's round trip) beside the server's part
    (the overlay fragment's own caption), and the time from a click on the attention-maps tab until its overlays show.
    ``tta`` reaches the page as a link's ``tta=`` parameter.
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from app.loadtest import make_driver, start_server, stop_server

    with tempfile.TemporaryDirectory() as tmp, _checkpoint() as (label, path):
        tmp = Path(tmp)
        env = {"AR_CACHE_DIR": str(tmp / "cache")}
        if checkpoint is not None:
            env["AR_CHECKPOINT"], label = checkpoint, f"{Path(checkpoint).stem} (AR_CHECKPOINT)"
        elif "AR_CHECKPOINT" in os.environ:
            env["AR_CHECKPOINT"] = os.environ["AR_CHECKPOINT"]
        proc, url = start_server(env, tmp / "streamlit.log")
        if tta != "as trained":
            url = f"{url}?tta={tta}"
        driver = make_driver()
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(url)
            wait.until(lambda d: "Upload an image" in _body(d))
            server_ms = []
            for i in range(uploads + 1):
                image = tmp / f"upload{i}.png"
                image.write_bytes(_png(1000 + i))
                if i:  # a new visitor's page: the server is warm, the session new
                    driver.get(url)
                box = wait.until(lambda d: d.find_elements(By.XPATH, "//*[@data-testid='stFileUploader'][.//*[contains("
                                                                     "., 'Images (PNG')]]//input[@type='file']"))
                box[0].send_keys(str(image))
                server_ms.append(_caption_ms(driver, wait, image.name))

            def overlay(d):
                imgs = d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img, "
                                                        "[data-testid='stImageContainer'] img")
                return imgs[1].get_attribute("src") if len(imgs) > 1 else None

            t0 = time.perf_counter()  # only the open tab is built: opening another one reruns the page
            driver.find_element(By.XPATH, "//*[@role='tab'][contains(., 'Attention maps')]").click()
            slider = wait.until(lambda d: d.find_elements(
                By.XPATH, "//*[@data-testid='stSlider']//input[@type='range'][@aria-label='Overlay opacity']"))[0]
            wait.until(overlay)
            tab_ms = 1000 * (time.perf_counter() - t0)

            control_ms, control_server_ms = [], []
            for j in range(controls):
                before, caption = overlay(driver), OVERLAYS.search(_body(driver)).group(0)
                t0 = time.perf_counter()
                driver.execute_script("arguments[0].focus()", slider)
                ActionChains(driver).send_keys(Keys.ARROW_LEFT if j % 2 else Keys.ARROW_RIGHT).perform()
                wait.until(lambda d: (src := overlay(d)) is not None and src != before)
                control_ms.append(1000 * (time.perf_counter() - t0))
                # the fragment's own caption names the new opacity and its server time
                new = wait.until(lambda d: (m := OVERLAYS.search(_body(d))) and m.group(0) != caption and m)
                control_server_ms.append(float(new.group(1).replace(",", "")))
            if "Traceback" in _body(driver):
                raise AssertionError("the page shows a traceback")
        finally:
            driver.quit()
            stop_server(proc)
    return {"checkpoint": label, "tta": tta, "uploads": len(server_ms), "first_upload_server_ms": server_ms[0],
            "later_uploads_server_ms_median": statistics.median(server_ms[1:]),
            "display_control_server_ms_median": statistics.median(control_server_ms),
            "display_control_browser_ms_median": round(statistics.median(control_ms), 1),
            "open_attention_tab_browser_ms": round(tab_ms, 1),
            "all_upload_server_ms": server_ms}
