"""The shipped checkpoints: each loads, runs, and carries a complete model card in its metadata."""

import json
import re

import pytest
import torch

import ar_core
import ar_core.card

from ar_core.checkpoint import CHECKPOINT_DIR, SHIPPED, available_checkpoints, load_checkpoint
from conftest import ROOT

PRESENT = list(SHIPPED)  # every shipped name: a missing file fails its tests instead of dropping out
CARD_KEYS = ("classes", "normalization", "image_size", "dataset", "validation_split", "recipe", "epochs_trained",
             "test_time_augmentation", "val_accuracy", "val_net_accuracy", "val_accuracy_single_view",
             "training_time_s", "hardware", "torch", "command")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_checkpoint_is_in_the_repository(name):
    assert name in available_checkpoints(), f"checkpoints/{name}.safetensors is missing (git lfs pull?)"
    assert SHIPPED[0] == "cifar10-wrn16x4-ad3aw4"  # the app's default


@pytest.mark.parametrize("name", PRESENT)
def test_shipped_checkpoint_loads_and_its_card_is_complete(name):
    model, meta = load_checkpoint(name)
    missing = [k for k in CARD_KEYS if meta.get(k) is None]
    assert not missing, f"{name} lacks {missing}"
    dataset, _, kind, *seed = name.split("-")  # NAME or NAME-seedN (another seed of the same recipe)
    assert meta["recipe"]["seed"] == (int(seed[0].removeprefix("seed")) if seed else 0), meta["recipe"]["seed"]
    cfg = meta["config"]
    assert meta["dataset"] == dataset and len(meta["classes"]) == cfg["num_classes"] == {"cifar10": 10,
                                                                                         "cifar100": 100}[dataset]
    assert (cfg["backbone"], cfg["depth"], cfg["width"]) == ("wrn", 16, 4)
    assert (cfg["attention_depth"], cfg["attention_width"]) == ((0, 4) if kind == "baseline" else (3, 4))
    split = meta["validation_split"]
    assert {k: split[k] for k in ("size", "seed", "method", "train_size")} == \
        {"size": 5000, "seed": 0, "method": "stratified", "train_size": 45000}
    assert set(split) - {"size", "seed", "method", "train_size"} <= {"train_digest", "index_digest"}
    assert meta["recipe"]["epochs"] == meta["epochs_trained"] and meta["recipe"]["split_seed"] == 0
    assert meta["command"].startswith("python -m ar_core.train ")
    assert re.search(rf"--out (\S+/)?{name}\.safetensors( |$)", meta["command"]), meta["command"]  # trained as this file
    assert 0 < meta["val_accuracy"] <= 1 and meta["training_time_s"] > 0
    # the per-epoch log ships beside it and ends where training ended
    log = [json.loads(line) for line in (CHECKPOINT_DIR / f"{name}.safetensors.log.jsonl").read_text().splitlines()]
    assert log[-1]["epoch"] == meta["epochs_trained"]
    # the single-view figure of the weights the file holds: the moving average's, or the raw weights' when they won
    logged = log[-1]["val_accuracy_raw" if meta.get("saved_weights") == "raw" else "val_accuracy"]
    assert logged == pytest.approx(meta["val_accuracy_single_view"], abs=1e-9)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, cfg["num_classes"]) and torch.isfinite(out).all()


FINISHED_RUNS = sorted(p for p in (ROOT / "runs").glob("*.safetensors")  # finished v2 runs, to land as pairs
                       if not p.name.endswith((".state.safetensors", ".history.safetensors")))


def v2_card_problems(path) -> list[str]:
    """What a retrained (v2) checkpoint's header, log and history get wrong; empty when all agree.

    Every header key is one the trainer writes; the validation split names its images by content; no
    path of the training machine is stored; the single-view figure is the last logged epoch's, of the
    weights the file holds (the moving average, or the raw weights when they won); the history covers
    every epoch."""
    from test_train import TRAINER_META_KEYS, header_meta

    meta, problems = header_meta(path), []
    if set(meta) != TRAINER_META_KEYS:
        problems.append(f"header keys differ from the trainer's: {sorted(set(meta) ^ TRAINER_META_KEYS)}")
    split = meta.get("validation_split") or {}
    if not (len(split.get("train_digest", "")) == len(split.get("index_digest", "")) == 64):
        problems.append(f"the validation split records no content digests: {split}")
    if "/root/" in json.dumps(meta) or "/home/" in json.dumps(meta):
        problems.append("an absolute path of the training machine is stored")
    log = [json.loads(line) for line in path.with_name(path.name + ".log.jsonl").read_text().splitlines()]
    if [r["epoch"] for r in log] != list(range(1, meta["epochs_trained"] + 1)):
        problems.append("the log does not hold each epoch once")
    figure = log[-1].get("val_accuracy_raw" if meta.get("saved_weights") == "raw" else "val_accuracy")
    by_tta = meta.get("val_accuracy_by_tta") or {"none": None}
    if meta["val_accuracy_single_view"] != figure or by_tta["none"] != figure:
        problems.append(f"single view {meta['val_accuracy_single_view']} is not the last epoch's {figure}")
    if by_tta.get(meta["test_time_augmentation"]) != meta["val_accuracy"] or \
            meta["val_accuracy"] != max(v for v in by_tta.values() if v is not None):
        problems.append("the recorded augmentation is not the best measured one")
    if not ar_core.history_path(path).is_file():
        return [*problems, "no history beside it"]
    history = ar_core.load_history(ar_core.history_path(path))
    if history.epochs != list(range(1, meta["epochs_trained"] + 1)):
        problems.append(f"the history holds epochs {history.epochs[:3]}…{history.epochs[-1:]}")
    if ar_core.history_path(path).stat().st_size > 4 * 10**6:
        problems.append("the history exceeds 4 MB")
    if path.stat().st_size + ar_core.history_path(path).stat().st_size > 12 * 2**20:
        problems.append("checkpoint and history exceed 12 MB")
    return problems


# The shipped files retrained with the v2 recipe (a pair lands when both its runs are done); a file left
# out would still be v1 (no split digests, no history).
RETRAINED: list[str] = ["cifar10-wrn16x4-ad3aw4", "cifar10-wrn16x4-baseline",
                        "cifar100-wrn16x4-ad3aw4", "cifar100-wrn16x4-baseline",
                        "cifar10-wrn16x4-ad3aw4-seed1", "cifar10-wrn16x4-baseline-seed1"]


@pytest.mark.parametrize("path", [*(CHECKPOINT_DIR / f"{n}.safetensors" for n in RETRAINED), *FINISHED_RUNS],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_v2_checkpoints_carry_complete_consistent_cards(path):
    assert not v2_card_problems(path)
    _, meta = load_checkpoint(path)  # and it loads
    assert meta["recipe"]["epochs"] == meta["epochs_trained"] == 45 and meta["recipe"]["ema"] == 0.999


@pytest.mark.parametrize("name", SHIPPED)
def test_retrained_list_matches_the_shipped_files(name):
    """RETRAINED names exactly the shipped v2 files, so a landed pair cannot skip the v2 checks."""
    from test_train import header_meta

    is_v2 = "train_digest" in (header_meta(CHECKPOINT_DIR / f"{name}.safetensors").get("validation_split") or {})
    assert is_v2 == (name in RETRAINED), f"{name}: v2 header {is_v2}, but RETRAINED says {name in RETRAINED}"


def _paragraph(starting: str) -> str:
    """The README paragraph that starts with ``starting``, on one line (prose wraps anywhere)."""
    paragraphs = [" ".join(p.split()) for p in (ROOT / "README.md").read_text().split("\n\n")]
    found = [p for p in paragraphs if p.startswith(starting)]
    assert len(found) == 1, f"README has {len(found)} paragraphs starting {starting!r}"
    return found[0].replace("−", "-")


@pytest.mark.parametrize("name", PRESENT)
def test_readme_model_card_states_the_recorded_accuracy(name):
    """The README's card row and paragraph state what the file records, so neither can drift."""
    meta = load_checkpoint(name)[1]
    table = ar_core.card.markdown([ar_core.card.row(name, meta)]).splitlines()[-1]  # what `ar_core.card` prints
    assert table in (ROOT / "README.md").read_text().splitlines(), f"README's model-card row for {name} is not {table}"
    cells = [c.strip() for c in table.strip("|").split("|")]
    assert cells[3:5] == [str(meta["epochs_trained"]), f"{100 * meta['val_accuracy']:.2f} %"], cells
    card = _paragraph(f"**{name}** —")
    assert f"{round(meta['training_time_s']):,} s of training" in card, card
    single = re.findall(r"(\d+\.\d+) % single view|single view (\d+\.\d+) %|Without flip TTA: fused (\d+\.\d+) %", card)
    assert single, card
    assert {float("".join(m)) for m in single} == {round(100 * meta["val_accuracy_single_view"], 2)}, card


# Each shipped attention model and the baseline trained beside it (same data set, recipe and seed).
PAIRS = [(name, name.replace("-ad3aw4", "-baseline")) for name in SHIPPED if "-ad3aw4" in name]


@pytest.mark.parametrize("att_name, base_name", PAIRS)
def test_readme_comparison_states_the_recorded_accuracies(att_name, base_name):
    """'Attention against its baseline, DATASET, seed N': both pairs of recorded accuracies and their
    differences."""
    att, base = (load_checkpoint(n)[1] for n in (att_name, base_name))
    assert att["recipe"]["seed"] == base["recipe"]["seed"] and att["dataset"] == base["dataset"], (att_name, base_name)
    dataset = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[att["dataset"]]
    para = _paragraph(f"**Attention against its baseline, {dataset}, seed {att['recipe']['seed']}")
    for key in ("val_accuracy", "val_accuracy_single_view"):
        a, b = 100 * att[key], 100 * base[key]
        assert f"{a:.2f} %" in para and f"{b:.2f} %" in para, (key, para)
        assert f"({a - b:+.2f} points" in para or f"({a - b:.2f} points" in para, (key, para)
    # what flip TTA added, single view → flip, for the attention model and then the baseline
    steps = [tuple(map(float, m)) for m in re.findall(r"(\d+\.\d+) → (\d+\.\d+) %", para)]
    recorded = [(round(100 * m["val_accuracy_single_view"], 2), round(100 * m["val_accuracy"], 2)) for m in (att, base)]
    assert steps in ([], recorded), para
