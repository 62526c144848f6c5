"""Model cards read from checkpoint headers: the app's rows and the README's table."""

import pytest

from ar_core import card as C
from ar_core import save_checkpoint

META = {
    "classes": ["a", "b", "c", "d", "e"], "dataset": "toy",
    "validation_split": {"size": 500, "seed": 0, "method": "stratified", "train_digest": "0123456789abcdef" * 4},
    "recipe": {"seed": 1, "ema": 0.999, "epochs": 45}, "epochs_trained": 45, "test_time_augmentation": "flip-shift1",
    "val_accuracy_by_tta": {"flip-shift2": 0.9531, "none": 0.9402, "flip": 0.9487, "flip-shift1": 0.9534},
    "val_accuracy": 0.9534, "val_net_accuracy": 0.9466, "val_accuracy_single_view": 0.9402,
    "val_accuracy_raw_weights": 0.9511, "saved_weights": "moving average", "training_time_s": 14123.4,
    "hardware": "some CPU, 2 threads", "code_commit": "abc",
}


def test_card_of_a_moving_average_names_its_decay_and_the_raw_weights_figure():
    rows = C.card(META)
    assert rows["validation accuracy (fused, test-time augmentation flip-shift1)"] == "95.34 %"
    assert rows["weights"] == "moving average (decay 0.999)"
    assert rows["validation accuracy of the raw weights (not saved)"] == "95.11 %"
    # every augmentation's figure, cheapest first, whatever order the header stored them in
    assert rows["validation accuracy by test-time augmentation"] == \
        "none 94.02 %, flip 94.87 %, flip-shift1 95.34 %, flip-shift2 95.31 %"
    assert rows["training images (SHA-256 of their content)"] == "0123456789abcdef"
    assert rows["seed"] == "1" and rows["training time"] == "235 min"


def test_card_names_the_epochs_trained_from_an_edited_tree():
    stretches = [{"from_epoch": 1, "commit": "abc"}, {"from_epoch": 12, "commit": "abc", "modified": True},
                 {"from_epoch": 30, "commit": "def"}]
    assert C.card({**META, "code_commits": stretches})["trained from an edited tree"] == "epochs from 12"
    assert "trained from an edited tree" not in C.card({**META, "code_commits": stretches[:1]})


def test_card_of_raw_weights_shows_no_figure_of_other_weights():
    """The trainer records the raw weights' figure whatever it saves: when it saved them, that figure is
    the file's own (the moving average's is only in the per-epoch log), so no "not saved" row."""
    rows = C.card({**META, "saved_weights": "raw", "val_accuracy_raw_weights": 0.9534})
    assert rows["weights"] == "raw"
    assert not any("not saved" in label for label in rows)


def test_card_of_an_old_header_leaves_out_what_it_does_not_record():
    old = {"dataset": "cifar10", "recipe": {"seed": 0, "epochs": 30}, "val_accuracy": 0.9442,
           "test_time_augmentation": "flip", "config": {"backbone": "wrn", "depth": 16, "width": 4,
                                                        "attention_depth": 0}}
    rows = C.card(old)
    assert rows["weights"] == "raw"  # trained before the moving average existed
    assert rows["architecture"] == "WRN-16-4, AD=0"
    assert "validation accuracy by test-time augmentation" not in rows and "hardware" not in rows
    assert C.card({"recipe": "{'seed': 0}"})["architecture"]  # a printed-dict recipe (older still) does not break it


def test_the_table_is_read_from_the_files(tmp_path, tiny_model, capsys):
    path = save_checkpoint(tiny_model, tmp_path / "toy-ad.safetensors", META)
    (tmp_path / "toy-ad.history.safetensors").write_bytes(b"not a checkpoint")  # globbed beside it: skipped
    C.main([str(path), str(tmp_path / "toy-ad.history.safetensors")])
    header, rule, line = capsys.readouterr().out.strip().splitlines()
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in line.strip("|").split("|")]))
    cfg = tiny_model.config
    assert cells == {
        "checkpoint": "`toy-ad`",
        "model": f"WRN-{cfg.depth}-{cfg.width}, AD={cfg.attention_depth}, AW={cfg.attention_width}, "
                 f"{cfg.kernel_size}x{cfg.kernel_size} heads",
        "seed": "1", "epochs": "45", "validation (fused)": "95.34 %", "test-time augmentation": "flip-shift1",
        "single view": "94.02 %", "network alone": "94.66 %", "weights": "moving average (decay 0.999)",
        "training time": "235 min"}
    assert rule.count("---") == len(C.COLUMNS)


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(SystemExit):
        C.main([str(bad)])
    assert "bad.safetensors" in capsys.readouterr().err


def test_shipped_checkpoints_are_found_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    """As evaluate, analyze and the rest take ``--checkpoint cifar10-wrn16x4-ad3aw4``, so does the card."""
    from ar_core.checkpoint import CHECKPOINT_DIR, SHIPPED, read_metadata

    name = SHIPPED[0]
    by_path = read_metadata(CHECKPOINT_DIR / f"{name}.safetensors")
    monkeypatch.chdir(tmp_path)  # no file of that name here
    assert read_metadata(name) == by_path
    assert C.main([name]) == {name: by_path}
    assert f"| `{name}` |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        C.main(["cifar10-wrn99"])  # neither a file nor a shipped name
    assert "no checkpoint file at cifar10-wrn99" in capsys.readouterr().err
