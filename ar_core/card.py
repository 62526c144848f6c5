"""Model cards: what a checkpoint's header says about it, as rows for the app and a table for README.

The README's model-card table is printed by this module from the shipped files themselves, so
every figure in it can be re-read with one command:

    python -m ar_core.card checkpoints/*.safetensors

Only the header is read (no weights are loaded). Headers written by older trainers lack some keys;
their cells stay empty rather than guessed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, read_metadata
from .tta import NAMES as TTA_NAMES


def _pct(value) -> str | None:
    return f"{value * 100:.2f} %" if isinstance(value, (int, float)) else None


def architecture(meta: dict[str, Any]) -> str:
    cfg = meta.get("config", {})
    arch = f"WRN-{cfg.get('depth')}-{cfg.get('width')}" if cfg.get("backbone") == "wrn" else str(cfg.get("backbone"))
    if not cfg.get("attention_depth"):
        return f"{arch}, AD=0"
    return f"{arch}, AD={cfg['attention_depth']}, AW={cfg.get('attention_width')}, " \
           f"{cfg.get('kernel_size')}x{cfg.get('kernel_size')} heads"


def _recipe(meta: dict[str, Any]) -> dict[str, Any]:
    recipe = meta.get("recipe")
    return recipe if isinstance(recipe, dict) else {}


def weights(meta: dict[str, Any]) -> str | None:
    """Which weights the file holds: the raw ones, or their moving average (and its decay)."""
    saved, recipe = meta.get("saved_weights"), _recipe(meta)
    if saved == "moving average":
        return f"moving average (decay {recipe['ema']})" if recipe.get("ema") else saved
    if saved is None and recipe and not recipe.get("ema"):
        return "raw"  # trained before the moving average existed
    return saved


def card(meta: dict[str, Any]) -> dict[str, str]:
    """The model card as ordered label → text rows; rows the header cannot fill are left out."""
    split = meta.get("validation_split") or {}
    tta = meta.get("test_time_augmentation")
    by_tta = meta.get("val_accuracy_by_tta") or {}
    raw = meta.get("val_accuracy_raw_weights")
    rows = {
        "dataset": meta.get("dataset"),
        "classes": len(meta["classes"]) if meta.get("classes") else None,
        "architecture": architecture(meta),
        f"validation accuracy (fused, test-time augmentation {tta})" if tta else "validation accuracy (fused)":
            _pct(meta.get("val_accuracy")),
        "validation accuracy (network alone)": _pct(meta.get("val_net_accuracy")),
        "validation accuracy, single view": _pct(meta.get("val_accuracy_single_view")),
        "validation accuracy by test-time augmentation":
            ", ".join(f"{name} {_pct(by_tta[name])}" for name in TTA_NAMES if name in by_tta) or None,
        "weights": weights(meta),
        # what averaging gave: the raw weights' figure (same augmentation), when the file holds their average;
        # a file of raw weights records only its own figure, already above
        "validation accuracy of the raw weights (not saved)":
            _pct(raw) if meta.get("saved_weights") == "moving average" else None,
        "validation split": f"{split.get('size')} images, {split.get('method', 'stratified')}, seed {split.get('seed')}"
        if split else None,
        "training images (SHA-256 of their content)": (split.get("train_digest") or "")[:16] or None,
        "seed": _recipe(meta).get("seed"),
        "epochs": meta.get("epochs_trained"),
        "training time": f"{meta['training_time_s'] / 60:.0f} min" if meta.get("training_time_s") else None,
        "hardware": meta.get("hardware"),
        "code commit": meta.get("code_commit"),
        # a stretch of epochs trained from an edited tree: no commit holds the code that trained it
        "trained from an edited tree": ", ".join(f"epochs from {c['from_epoch']}" for c in meta.get("code_commits", [])
                                                 if c.get("modified")) or None,
        "source": meta.get("source"),
    }
    return {label: str(value) for label, value in rows.items() if value is not None}


COLUMNS = ("checkpoint", "model", "seed", "epochs", "validation (fused)", "test-time augmentation", "single view",
           "network alone", "weights", "training time")


def row(name: str, meta: dict[str, Any]) -> dict[str, str]:
    """One line of the README's table."""
    cells = {
        "checkpoint": f"`{name}`", "model": architecture(meta), "seed": _recipe(meta).get("seed"),
        "epochs": meta.get("epochs_trained"), "validation (fused)": _pct(meta.get("val_accuracy")),
        "test-time augmentation": meta.get("test_time_augmentation"),
        "single view": _pct(meta.get("val_accuracy_single_view")),
        "network alone": _pct(meta.get("val_net_accuracy")), "weights": weights(meta),
        "training time": f"{meta['training_time_s'] / 60:.0f} min" if meta.get("training_time_s") else None,
    }
    return {k: "" if v is None else str(v) for k, v in cells.items()}


def markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Print the model-card table of checkpoints, read from their "
        "headers (no weights are loaded).", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files (.safetensors), or names of shipped ones")
    parser.add_argument("--json", action="store_true", help="print every checkpoint's full card as JSON instead")
    args = parser.parse_args(argv)
    metas = {}
    for path in args.checkpoints:
        if path.endswith((".history.safetensors", ".state.safetensors")):
            continue  # a training history or resumable state beside a checkpoint, matched by a glob
        try:
            metas[Path(path).name.removesuffix(".safetensors")] = read_metadata(path)
        except (CheckpointError, OSError) as e:
            parser.error(f"{path}: {e}")
    if args.json:
        print(json.dumps({name: card(meta) for name, meta in metas.items()}, indent=2))
    else:
        print(markdown([row(name, meta) for name, meta in metas.items()]))
    return metas


if __name__ == "__main__":
    main()
