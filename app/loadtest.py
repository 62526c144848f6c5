"""Many users at once against one process: `python -m app.loadtest [--seconds 60] [--workers 8]`.

Two loads, each bounded in time and count:
- ``trace``: N threads call ``model.trace`` on one shared model, each on its own images;
- ``browsers``: N headless Chromium browsers against one `streamlit run` server on 127.0.0.1, each
  opening sessions and uploading images (the cached model is shared by all of them).
Every result is compared with the sequential one; errors, p50/p95 latency and resident memory
(every ``--every`` runs, and at the end) are reported.

Streamlit keeps a closed browser tab's session for ``server.disconnectedSessionTTL`` seconds (120
by default, at most 128 sessions) so that a reconnecting tab finds its results. Those sessions are
held, not leaked; ``--settle`` waits them out after the browsers close and samples the server again.
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

from ar_core.tta import TTA, TTALike

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Resident memory of this process now (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _pct(values, q):
    return round(1000 * float(np.percentile(values, q)), 2) if values else None


def _run_pool(workers: int, seconds: float, max_runs: int, job, memory=rss_mb, every: int = 50) -> dict:
    """Run ``job(worker, i)`` in ``workers`` threads until the time or the run budget is spent.

    ``memory()`` (MB) is sampled whenever the number of finished runs reaches a multiple of ``every``.
    """
    latencies, errors = [], []
    lock = threading.Lock()
    count, done = [0], [0]
    mem = {}
    deadline = time.monotonic() + seconds

    def worker(w):
        i = 0
        while time.monotonic() < deadline:
            with lock:
                if count[0] >= max_runs:
                    return
                count[0] += 1
            t0 = time.perf_counter()
            try:
                job(w, i)
            except Exception as e:  # a load test counts failures instead of stopping at the first
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                done[0] += 1
                if done[0] % every == 0:
                    mem[done[0]] = round(memory(), 1)
            i += 1

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"workers": workers, "runs": len(latencies), "seconds": round(time.monotonic() - start, 1),
            "errors": len(errors), "first_errors": errors[:3], "p50_ms": _pct(latencies, 50),
            "p95_ms": _pct(latencies, 95), "memory_mb_by_runs": mem, "memory_end_mb": round(memory(), 1)}


def growth_mb(result: dict) -> float | None:
    """Memory growth over the second half of the samples (MB): ~0 when memory has levelled off."""
    series = [v for _, v in sorted(result["memory_mb_by_runs"].items())]
    if len(series) < 2:
        return None
    return round(series[-1] - series[len(series) // 2], 1)


def trace_load(model, workers: int = 8, seconds: float = 60, max_runs: int = 1_000_000, tta: TTALike = "none",
               every: int = 50) -> dict:
    """N threads tracing on one shared model; every result must equal the sequential one.

    ``tta``: the test-time augmentation, as the app runs the checkpoint.
    """
    aug = TTA.parse(tta)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(workers * 4)]
    with torch.inference_mode():
        expected = [model.trace(x, flip=aug.flip, shift=aug.shift) for x in images]

    def job(w, i):
        k = (w * 4 + i) % len(images)
        with torch.inference_mode():
            t = model.trace(images[k], flip=aug.flip, shift=aug.shift)
        e = expected[k]
        same = torch.equal(t.output, e.output) and torch.equal(t.global_gates, e.global_gates) and all(
            torch.equal(a.attention_maps, b.attention_maps) and torch.equal(a.confidence_gates, b.confidence_gates)
            for a, b in zip(t.layers, e.layers))
        if not same:
            raise AssertionError(f"image {k}: concurrent trace differs from the sequential one")

    return _run_pool(workers, seconds, max_runs, job, every=every)


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


def make_driver(page_load_timeout: float = 60):
    """Debian's headless Chromium through its chromedriver (no browser is ever downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(page_load_timeout)
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
                 n_images: int = 40, every: int = 50, settle: float = 0, timeout: float = 60) -> dict:
    """N headless browsers against one `streamlit run` server, each opening sessions and uploading.

    Every page's prediction must equal the sequential one. The server's memory is sampled after
    every browser's first session, every ``every`` sessions and at the end; with ``settle`` > 0 the
    browsers then close, the server idles that long (longer than its disconnected-session TTL to
    let it drop the sessions it keeps for reconnection), one more session runs, and memory is
    sampled again. ``timeout``: the longest wait for any step of a page (eight browsers on two
    cores take tens of seconds per session, all of it Chromium's and the server's CPU).
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
            drivers = [make_driver(page_load_timeout=timeout) for _ in range(workers)]  # loading a page is a step too
            # One session first: the server's cold start (imports, loading the checkpoint) is not what
            # the load measures, and on a busy CPU it can outlast a page wait when eight arrive at once.
            upload_and_read(drivers[0], url, images[0], timeout)
            first_round = [0.0]

            def job(w, i):
                k = (w * 7 + i) % n_images
                got = upload_and_read(drivers[w], url, images[k], timeout)
                if i == 0:  # the server after every browser's first session: the baseline for growth
                    first_round[0] = max(first_round[0], _server_rss_mb(proc.pid))
                if got != expected[k]:
                    raise AssertionError(f"browser {w}, image {k}: page says {got!r}, sequential run says {expected[k]!r}")

            result = _run_pool(workers, seconds, max_runs, job, memory=lambda: _server_rss_mb(proc.pid), every=every)
            result["memory_after_first_round_mb"] = round(first_round[0], 1)
            if settle > 0:
                for d in drivers[1:]:
                    d.quit()
                drivers = drivers[:1]
                drivers[0].get("about:blank")  # closes the last session too
                time.sleep(settle)
                got = upload_and_read(drivers[0], url, images[0], timeout)  # storing one more session expires the old ones
                drivers[0].get("about:blank")
                time.sleep(2)
                result["settled_s"] = settle
                result["memory_after_settling_mb"] = round(_server_rss_mb(proc.pid), 1)
                if got != expected[0]:
                    result["errors"] += 1
                    result["first_errors"].append(f"after settling: page says {got!r}, expected {expected[0]!r}")
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
    from ar_core.tta import of_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--max-runs", type=int, default=1_000_000, help="a bound on runs per load, besides --seconds")
    p.add_argument("--every", type=int, default=50, help="sample memory every this many runs")
    p.add_argument("--settle", type=float, default=0,
                   help="after the browsers: idle this many seconds (over the server's disconnected-session "
                        "TTL, 120 s by default) and sample the server's memory again")
    p.add_argument("--timeout", type=float, default=60, help="longest wait for any step of a browser's page")
    p.add_argument("--skip-trace", action="store_true")
    p.add_argument("--skip-browsers", action="store_true")
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
        result = {}
        if not a.skip_trace:
            result["trace"] = trace_load(model, a.workers, a.seconds, a.max_runs, tta=of_checkpoint(meta), every=a.every)
            result["trace"]["growth_second_half_mb"] = growth_mb(result["trace"])
        if not a.skip_browsers:
            result["browsers"] = browser_load(str(ckpt), a.workers, a.seconds, a.max_runs, every=a.every,
                                              settle=a.settle, timeout=a.timeout)
            result["browsers"]["growth_second_half_mb"] = growth_mb(result["browsers"])
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
