"""Many users at once against one process: `python -m app.loadtest [--seconds 60] [--workers 8]`.

Two loads, each bounded in time and count:
- ``trace``: N threads call ``model.trace`` on one shared model, each on its own images;
- ``browsers``: N headless Chromium browsers against one `streamlit run` server on 127.0.0.1, each
  opening sessions and uploading images (the cached model is shared by all of them).
Every result is compared with the sequential one; errors, p50/p95 latency and resident memory
(after the first 100 runs and at the end) are reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Resident memory of this process now (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _pct(values, q):
    return round(1000 * float(np.percentile(values, q)), 2) if values else None


def _run_pool(workers: int, seconds: float, max_runs: int, job) -> dict:
    """Run ``job(worker, i)`` in ``workers`` threads until the time or the run budget is spent."""
    latencies, errors = [], []
    lock = threading.Lock()
    count = [0]
    mem = {}
    deadline = time.monotonic() + seconds

    def worker(w):
        i = 0
        while time.monotonic() < deadline:
            with lock:
                if count[0] >= max_runs:
                    return
                count[0] += 1
                n = count[0]
            t0 = time.perf_counter()
            try:
                job(w, i)
            except Exception as e:  # a load test counts failures instead of stopping at the first
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if n in (100, 500):
                    mem[n] = rss_mb()
            i += 1

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"workers": workers, "runs": len(latencies), "seconds": round(time.monotonic() - start, 1),
            "errors": len(errors), "first_errors": errors[:3], "p50_ms": _pct(latencies, 50),
            "p95_ms": _pct(latencies, 95), "rss_after_100_mb": round(mem[100], 1) if 100 in mem else None,
            "rss_after_500_mb": round(mem[500], 1) if 500 in mem else None, "rss_end_mb": round(rss_mb(), 1)}


def trace_load(model, workers: int = 8, seconds: float = 60, max_runs: int = 1_000_000, flip: bool = False) -> dict:
    """N threads tracing on one shared model; every result must equal the sequential one.

    ``flip``: flip test-time augmentation, as the app runs the checkpoint.
    """
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(workers * 4)]
    with torch.inference_mode():
        expected = [model.trace(x, flip=flip) for x in images]

    def job(w, i):
        k = (w * 4 + i) % len(images)
        with torch.inference_mode():
            t = model.trace(images[k], flip=flip)
        e = expected[k]
        same = torch.equal(t.output, e.output) and torch.equal(t.global_gates, e.global_gates) and all(
            torch.equal(a.attention_maps, b.attention_maps) and torch.equal(a.confidence_gates, b.confidence_gates)
            for a, b in zip(t.layers, e.layers))
        if not same:
            raise AssertionError(f"image {k}: concurrent trace differs from the sequential one")

    return _run_pool(workers, seconds, max_runs, job)


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,2200")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict, log_path: Path, timeout: float = 60):
    """`streamlit run streamlit_app.py` on 127.0.0.1 and a free port → (process, url), once healthy."""
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port)],
                            cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"streamlit did not answer within {timeout} s:\n{Path(log_path).read_text()}")


def stop_server(proc):
    import subprocess

    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def make_driver():
    """Debian's headless Chromium through its chromedriver (no browser is ever downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    return driver


def upload_and_read(driver, url: str, image: Path, timeout: float = 60) -> str:
    """Open a fresh session, upload ``image`` and return the predicted class the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    box = wait.until(lambda d: d.find_elements(
        By.XPATH, "//*[@data-testid='stFileUploader'][.//*[contains(., 'Images (PNG')]]//input[@type='file']"))
    box[0].send_keys(str(image))
    wait.until(lambda d: f"{image.name}: model input" in d.find_element(By.TAG_NAME, "body").text)
    value = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stMetricValue']"))
    return value[0].text.strip()


def _server_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def browser_load(checkpoint: str, workers: int = 8, seconds: float = 60, max_runs: int = 500,
                 n_images: int = 40) -> dict:
    """N headless browsers against one `streamlit run` server, each opening sessions and uploading.

    Every page's prediction must equal the sequential one; the server's memory is sampled after
    100 runs and at the end.
    """
    import ar_core
    from ar_core.inference import fit_image, inspect, load_image, to_uint8

    model, meta = ar_core.load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        images = []
        for k in range(n_images):
            path = Path(tmp) / f"load{k}.png"
            path.write_bytes(_png(k))
            images.append(path)
        expected = [meta["classes"][int(inspect(model, to_uint8(fit_image(load_image(p.read_bytes()), 32))
                                                .unsqueeze(0), meta).trace.output.argmax())] for p in images]
        proc, url = start_server({"AR_CHECKPOINT": str(checkpoint), "AR_CACHE_DIR": str(Path(tmp) / "cache")},
                                 Path(tmp) / "server.log")
        drivers = []
        try:
            drivers = [make_driver() for _ in range(workers)]
            mem = {}

            def job(w, i):
                k = (w * 7 + i) % n_images
                got = upload_and_read(drivers[w], url, images[k])
                if i == 0:  # the server after every browser's first session: the baseline for growth
                    mem["first_round"] = max(mem.get("first_round", 0.0), _server_rss_mb(proc.pid))
                if got != expected[k]:
                    raise AssertionError(f"browser {w}, image {k}: page says {got!r}, sequential run says {expected[k]!r}")

            result = _run_pool(workers, seconds, max_runs, job)
            result["server_rss_after_first_round_mb"] = round(mem.get("first_round", 0.0), 1)
            result["server_rss_end_mb"] = round(_server_rss_mb(proc.pid), 1)
        finally:
            for d in drivers:
                d.quit()
            stop_server(proc)
    return result


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def main(argv=None) -> dict:
    import ar_core
    from ar_core.inference import flip_tta

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--max-runs", type=int, default=1_000_000, help="a bound on runs per load, besides --seconds")
    p.add_argument("--checkpoint", help="default: the shipped CIFAR-10 attention checkpoint, else a fresh WRN-16-4")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = a.checkpoint or ar_core.available_checkpoints().get("cifar10-wrn16x4-ad3aw4")
        if ckpt is None:
            torch.manual_seed(0)
            ckpt = ar_core.save_checkpoint(ar_core.build_model(ar_core.ModelConfig()).eval(),
                                           Path(tmp) / "load-wrn16x4.safetensors", {"classes": [str(i) for i in range(10)]})
        model, meta = ar_core.load_checkpoint(ckpt)
        result = {"trace": trace_load(model, a.workers, a.seconds, a.max_runs, flip=flip_tta(meta)),
                  "browsers": browser_load(str(ckpt), a.workers, a.seconds, a.max_runs)}
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
