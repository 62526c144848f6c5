"""The app's speed: `python -m app.bench [--quick] [--device auto|cpu|cuda] [--out app-bench.json]`.

1. AppTest (this process): the first image → all default views, the median of later images, and a
   display-control rerun (which must not run the model);
2. a real browser (headless Chromium against `streamlit run`, when Debian's chromium and
   chromium-driver are installed): the server time of the first upload after the start and the
   median of 20 later ones, from the inspector's own caption, and a display-control change until
   the browser shows it.
The model and library benchmarks are `python -m ar_core.bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.timing import browser_available, time_app, time_browser
from ar_core.precision import device_arg
from ar_core.tta import NAMES

TTA_CHOICES = ("as-trained", *NAMES)

TARGETS = {"first_upload_server_ms": 300, "later_uploads_server_ms_median": 300, "display_control_ms": 100}


def _table(title: str, row: dict) -> str:
    keys = [k for k in row if not isinstance(row[k], list)]
    widths = [max(len(k), len(str(row[k]))) for k in keys]
    return "\n".join([title, "  ".join(k.ljust(w) for k, w in zip(keys, widths)),
                      "  ".join(str(row[k]).ljust(w) for k, w in zip(keys, widths))])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Attend & Rectify app benchmarks (prints a table, writes JSON)")
    p.add_argument("--out", default="app-bench.json")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="the sidebar's device for the AppTest run (auto, cpu, cuda)")
    p.add_argument("--skip-browser", action="store_true")
    p.add_argument("--tta", default="as-trained", choices=TTA_CHOICES,
                   help="the sidebar's test-time augmentation (as-trained: the checkpoint's own views)")
    a = p.parse_args(argv)
    tta = "as trained" if a.tta == "as-trained" else a.tta
    result = {"targets_ms": TARGETS}
    result["apptest"] = time_app(repeats=3 if a.quick else 10, device=a.device, tta=tta)
    print(_table(f"1. app, AppTest (device {a.device})", result["apptest"]), flush=True)
    if a.skip_browser:
        pass
    elif browser_available():
        result["browser"] = time_browser(uploads=5 if a.quick else 20, controls=3 if a.quick else 10, tta=tta)
        print(_table("2. app, headless Chromium against `streamlit run`", result["browser"]), flush=True)
    else:
        print("2. browser: skipped (needs Debian's chromium and chromium-driver)", file=sys.stderr)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
