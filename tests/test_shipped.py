"""The shipped checkpoints: each loads, runs, and carries a complete model card in its metadata."""

import json
import re

import pytest
import torch

from ar_core.checkpoint import CHECKPOINT_DIR, SHIPPED, available_checkpoints, load_checkpoint
from conftest import ROOT

PRESENT = sorted(available_checkpoints())
CARD_KEYS = ("classes", "normalization", "image_size", "dataset", "validation_split", "recipe", "epochs_trained",
             "test_time_augmentation", "val_accuracy", "val_net_accuracy", "val_accuracy_single_view",
             "training_time_s", "hardware", "torch", "command")


def test_the_default_checkpoint_is_shipped():
    assert "cifar10-wrn16x4-ad3aw4" in PRESENT
    assert set(PRESENT) <= set(SHIPPED)


@pytest.mark.parametrize("name", PRESENT)
def test_shipped_checkpoint_loads_and_its_card_is_complete(name):
    model, meta = load_checkpoint(name)
    missing = [k for k in CARD_KEYS if meta.get(k) is None]
    assert not missing, f"{name} lacks {missing}"
    dataset, _, kind = name.split("-")
    cfg = meta["config"]
    assert meta["dataset"] == dataset and len(meta["classes"]) == cfg["num_classes"] == {"cifar10": 10,
                                                                                         "cifar100": 100}[dataset]
    assert (cfg["backbone"], cfg["depth"], cfg["width"]) == ("wrn", 16, 4)
    assert (cfg["attention_depth"], cfg["attention_width"]) == ((0, 4) if kind == "baseline" else (3, 4))
    split = meta["validation_split"]
    assert split == {"size": 5000, "seed": 0, "method": "stratified", "train_size": 45000}
    assert meta["recipe"]["epochs"] == meta["epochs_trained"] and meta["recipe"]["split_seed"] == 0
    assert meta["command"].startswith("python -m ar_core.train ") and f"--out checkpoints/{name}" in meta["command"]
    assert 0 < meta["val_accuracy"] <= 1 and meta["training_time_s"] > 0
    # the per-epoch log ships beside it and ends where training ended
    log = [json.loads(line) for line in (CHECKPOINT_DIR / f"{name}.safetensors.log.jsonl").read_text().splitlines()]
    assert log[-1]["epoch"] == meta["epochs_trained"]
    assert log[-1]["val_accuracy"] == pytest.approx(meta["val_accuracy_single_view"], abs=1e-9)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, cfg["num_classes"]) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", PRESENT)
def test_readme_model_card_states_the_recorded_accuracy(name):
    """The README's card and the file agree, so neither can drift from the other."""
    meta = load_checkpoint(name)[1]
    row = next((line for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith("|") and f"`{name}`" in line), None)
    assert row is not None, f"README has no model-card row for {name}"
    assert f"{100 * meta['val_accuracy']:.2f} %" in row, row
    assert re.search(rf"\b{meta['epochs_trained']}\b", row)
