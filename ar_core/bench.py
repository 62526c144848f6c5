"""Benchmarks, measured side by side in one run: `python -m ar_core.bench [--quick] [--device D] [--out bench.json]`.

1. attention cost: parameters and FLOPs (torch.utils.flop_counter) of WRN-16-4 with AD=3 AW=4
   against the same WRN without attention, for 10/100 classes and 1x1/3x3 heads;
2. inference: one-image ``model.trace`` latency against the plain network's forward, the 18-view
   trace (flip-shift2) in channels_last against NCHW, and batch evaluation throughput (the
   evaluator's path);
3. training: images/s of the project's training step (channels_last, bf16 autocast where the CPU
   has native bf16) against a plain fp32, contiguous, eager step of the same model, and the same
   step under ``torch.compile`` (the trainer's ``--compile``; compile time reported apart);
4. faithfulness: images/s of the analysis's deletion/insertion curves (all five maps, attributions
   included), the batched path the data-set analysis runs;
5. all of it on CUDA as well when a GPU is present (``--device`` picks one).
Timings are medians of repeated runs; the machine and versions are recorded. The app's timings
are `python -m app.bench`.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .model import ModelConfig, build_model
from .precision import autocast_for, device_arg, native_bf16, pick_device


def _interleaved_medians(fns: dict, rounds: int, warmup: int = 5, sync=lambda: None) -> dict:
    """Median time of each function, run in turn round after round.

    Millisecond timings drift with the machine's state; taking turns exposes every function to the
    same drift, so their ratio stays fair.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _median_time(fn, repeats: int, warmup: int = 2, sync=lambda: None) -> float:
    return _interleaved_medians({"fn": fn}, repeats, warmup, sync)["fn"]


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass (multiply-adds count 2), by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def attention_cost() -> list[dict]:
    rows = []
    x = torch.randn(1, 3, 32, 32)
    for classes in (10, 100):
        base = build_model(ModelConfig(num_classes=classes, attention_depth=0)).eval()
        base_params = sum(p.numel() for p in base.parameters())
        base_flops = count_flops(base, x)
        for k in (1, 3):
            att = build_model(ModelConfig(num_classes=classes, attention_depth=3, attention_width=4, kernel_size=k)).eval()
            params = sum(p.numel() for p in att.parameters())
            flops = count_flops(att, x)
            rows.append({"classes": classes, "kernel": k, "params_baseline": base_params, "params_attention": params,
                         "extra_params_pct": round(100 * (params / base_params - 1), 2),
                         "gflops_baseline": round(base_flops / 1e9, 4), "gflops_attention": round(flops / 1e9, 4),
                         "extra_flops_pct": round(100 * (flops / base_flops - 1), 2)})
    return rows


def inference(device: torch.device, repeats: int, batch: int) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    att = build_model(ModelConfig(attention_depth=3, attention_width=4)).to(device).eval()
    plain = build_model(ModelConfig(attention_depth=0)).to(device).eval()
    x1 = torch.randn(1, 3, 32, 32, device=device)
    with torch.inference_mode():
        t = _interleaved_medians({"trace": lambda: att.trace(x1), "plain": lambda: plain(x1),
                                  "flip": lambda: att.trace(x1, flip=True),  # what the app runs
                                  "backbone": lambda: plain.backbone(x1)}, rounds=10 * repeats, sync=sync)
        t_trace, t_plain, t_flip, t_plain_backbone = t["trace"], t["plain"], t["flip"], t["backbone"]
        # flip-shift2, the v2 attention checkpoint's own 18 views: in the layout load_checkpoint gives
        # (channels_last) against plain NCHW, interleaved
        att_views = copy.deepcopy(att).to(memory_format=torch.channels_last)
        x1_cl = x1.contiguous(memory_format=torch.channels_last)
        t18 = _interleaved_medians({"cl": lambda: att_views.trace(x1_cl, flip=True, shift=2),
                                    "nchw": lambda: att.trace(x1, flip=True, shift=2)},
                                   rounds=max(3, repeats), sync=sync)
        xb = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        att_cl = att.to(memory_format=torch.channels_last)
        ac = autocast_for(device, "auto")[0]

        def batch_eval():
            with ac():
                att_cl.trace(xb)

        t_batch = _median_time(batch_eval, max(3, repeats // 10), warmup=1, sync=sync)
    return {"trace_1img_ms": round(t_trace * 1000, 2), "plain_forward_1img_ms": round(t_plain * 1000, 2),
            "plain_backbone_1img_ms": round(t_plain_backbone * 1000, 2),
            "trace_over_plain": round(t_trace / t_plain, 3), "trace_flip_1img_ms": round(t_flip * 1000, 2),
            "trace_18views_1img_ms": round(t18["cl"] * 1000, 2), "trace_18views_nchw_1img_ms": round(t18["nchw"] * 1000, 2),
            "batch": batch,
            "batch_images_per_s": round(batch / t_batch, 1)}


def training(device: torch.device, steps: int, batch: int, compiled: bool = True) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    y = torch.randint(0, 10, (batch,), device=device)

    def make(fast: bool, compile_it: bool = False):
        torch.manual_seed(0)
        model = build_model(ModelConfig(attention_depth=3, attention_width=4)).to(device).train()
        x = torch.randn(batch, 3, 32, 32, device=device)
        if fast:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        net = torch.compile(model) if compile_it else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        ac = autocast_for(device, "auto" if fast else "off")[0]
        scaler = torch.amp.GradScaler("cuda") if fast and device.type == "cuda" else None

        def step():
            with ac():
                out, reg = net(x)
                loss = F.nll_loss(out.float(), y) + reg
            opt.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        return step

    t_fast = _median_time(make(True), steps, warmup=2, sync=sync)
    t_plain = _median_time(make(False), steps, warmup=2, sync=sync)
    row = {"batch": batch, "project_images_per_s": round(batch / t_fast, 1),
           "plain_fp32_images_per_s": round(batch / t_plain, 1), "speedup": round(t_plain / t_fast, 2)}
    if compiled:
        step = make(True, compile_it=True)
        t0 = time.perf_counter()
        try:
            step()  # compiles
        except Exception as e:  # e.g. no C++ compiler or Triton on this machine: say so, keep the rest
            row["compiled"] = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            return row
        sync()
        row["compile_s"] = round(time.perf_counter() - t0, 1)
        t_comp = _median_time(step, steps, warmup=1, sync=sync)
        row.update({"compiled_images_per_s": round(batch / t_comp, 1), "compiled_speedup": round(t_plain / t_comp, 2)})
    return row


def faithfulness_speed(device: torch.device, images: int) -> dict:
    """Images/s of ``analyze.faithfulness`` with its default maps, steps and batch, untrained weights."""
    from .analyze import FAITHFULNESS_METHODS, faithfulness

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build_model(ModelConfig(attention_depth=3, attention_width=4)).to(device).eval()
    data = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8)
    meta = {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    faithfulness(model, data, meta, range(2), FAITHFULNESS_METHODS)  # warm-up
    sync()
    t0 = time.perf_counter()
    faithfulness(model, data, meta, range(images), FAITHFULNESS_METHODS)
    sync()
    seconds = time.perf_counter() - t0
    return {"images": images, "maps": len(FAITHFULNESS_METHODS), "steps": 16, "seconds": round(seconds, 2),
            "images_per_s": round(images / seconds, 2)}


def machine() -> dict:
    from .train import hardware

    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": hardware(torch.device("cpu")),
            "native_bf16": native_bf16()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _table(title: str, rows: list[dict]) -> str:
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    lines = [title, "  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)) for r in rows]
    return "\n".join(lines)


def devices(choice: str) -> list[torch.device]:
    """``--device``: cpu, cuda, or all (the CPU, and CUDA when present)."""
    if choice == "all":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [pick_device(choice)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Attend & Rectify benchmarks (prints a table, writes JSON)")
    p.add_argument("--out", default="bench.json")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    p.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                   type=lambda name: name if name == "all" else device_arg(name),
                   help="all: the CPU, and CUDA when present")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-faithfulness", action="store_true")
    p.add_argument("--skip-compile", action="store_true",
                   help="no torch.compile training row (compiling takes about 34 s once on a 2-core CPU)")
    a = p.parse_args(argv)
    devs = devices(a.device)
    repeats = 5 if a.quick else 30
    result = {"machine": machine(), "attention_cost": attention_cost()}
    print(_table("1. attention cost (WRN-16-4, AD=3, AW=4 vs AD=0)", result["attention_cost"]), flush=True)
    for dev in devs:
        inf = inference(dev, repeats, batch=100 if a.quick else 500)
        result[f"inference_{dev.type}"] = inf
        print(_table(f"2. inference on {dev.type}", [inf]), flush=True)
        if not a.skip_training:
            tr = training(dev, steps=3 if a.quick else 10, batch=32 if a.quick else 128,
                          compiled=not (a.quick or a.skip_compile))
            result[f"training_{dev.type}"] = tr
            print(_table(f"3. training step on {dev.type}", [tr]), flush=True)
        if not a.skip_faithfulness:
            fa = faithfulness_speed(dev, images=4 if a.quick else (100 if dev.type == "cuda" else 25))
            result[f"faithfulness_{dev.type}"] = fa
            print(_table(f"4. faithfulness curves on {dev.type}", [fa]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
