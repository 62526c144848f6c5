"""Attention over training: the trainer's per-epoch history, its file, its size budget, exact resume,
and the averaged (EMA) weights the trainer can validate and save instead of the raw ones."""

import json

import pytest
import torch
import torch.nn.functional as F

import ar_core
from ar_core import data as D
from ar_core import load_checkpoint
from ar_core import train as T
from ar_core.history import (HistoryRecorder, dequantize_maps, history_path, load_history, mismatch, probe_indices,
                             quantize_maps, traced_other_weights)
from ar_core.model import LayerTrace, ModelConfig, Trace
from test_train import BATCH, CLASSES, STEPS_PER_EPOCH, VAL, _args, _log, cache, folder  # noqa: F401


def test_history_path_sits_next_to_the_checkpoint(tmp_path):
    assert history_path("checkpoints/a-b.safetensors").as_posix() == "checkpoints/a-b.history.safetensors"


def test_probe_indices_are_stratified_and_fixed_by_seed():
    labels = torch.arange(10).repeat_interleave(50)
    p = probe_indices(labels, 32, seed=3)
    assert len(p) == 32 and len(set(p.tolist())) == 32
    counts = torch.bincount(labels[p], minlength=10)
    assert counts.min() == 3 and counts.max() == 4  # 32 over 10 classes: every class 3 or 4 times
    assert torch.equal(p, probe_indices(labels, 32, seed=3))
    assert not torch.equal(p, probe_indices(labels, 32, seed=4))
    many = probe_indices(torch.arange(100).repeat_interleave(5), 32, seed=0)
    assert len(torch.unique(torch.arange(100).repeat_interleave(5)[many])) == 32  # 32 classes of 100


def test_quantised_maps_keep_their_mass_and_shape():
    g = torch.Generator().manual_seed(0)
    maps = F.softmax(torch.randn(2, 4, 32 * 32, generator=g) * 3, -1).view(2, 4, 32, 32)
    q = quantize_maps(maps)
    assert q.dtype == torch.uint8 and q.shape == (2, 4, 16, 16) and (q.amax((-2, -1)) == 255).all()
    back = dequantize_maps(q)
    pooled = F.avg_pool2d(maps.view(-1, 1, 32, 32), 2).view(2, 4, 16, 16) * 4
    peak = pooled.amax((-2, -1), keepdim=True)
    assert ((back - pooled).abs() <= 0.05 * peak).all()  # within a few grey levels of each map's peak
    assert torch.allclose(back.sum((-2, -1)), torch.ones(2, 4))
    small = F.softmax(torch.randn(3, 8 * 8, generator=g), -1).view(3, 8, 8)  # already small: not pooled
    assert quantize_maps(small).shape == (3, 8, 8)


def _fake_trace(p=32, k=4, m=100, sides=(32, 16, 8)):
    g = torch.Generator().manual_seed(0)
    layers = [LayerTrace(f"group{i + 1}", F.softmax(torch.randn(p, k, s * s, generator=g), -1).view(p, k, s, s),
                         torch.randn(p, k, m), F.softmax(torch.randn(p, k), -1), torch.randn(p, m), torch.randn(p, k))
              for i, s in enumerate(sides)]
    gates = F.softmax(torch.randn(p, 4, generator=g), -1)
    return Trace(layers, torch.randn(p, m), gates, torch.randn(p, 4, m), torch.randn(p, m), torch.randn(p, 4),
                 ["group1", "group2", "group3", "network"])


def test_fifty_epochs_of_a_wrn_history_fit_in_four_megabytes(tmp_path):
    """WRN-16-4, AD=3, AW=4, CIFAR-100, 32 probes, 50 epochs: the shipped configuration's worst case."""
    rec = HistoryRecorder(tmp_path / "h.safetensors", ["group1", "group2", "group3", "network"],
                          [str(i) for i in range(100)], torch.arange(32), torch.arange(32))
    trace = _fake_trace()
    for epoch in range(1, 51):
        rec.append(epoch, trace, [0.5] * 5, [0.25] * 4)
    size = (tmp_path / "h.safetensors").stat().st_size
    assert size <= 4 * 10**6, size
    h = load_history(tmp_path / "h.safetensors")
    assert h.epochs == list(range(1, 51)) and h.attention_maps["group1"].shape == (50, 32, 4, 16, 16)


def test_load_history_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training history"):
        load_history(tmp_path / "none.history.safetensors")
    bad = tmp_path / "bad.history.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable training history"):
        load_history(bad)


def test_a_history_reads_alike_from_its_bytes_and_says_what_is_wrong_with_them(tmp_path):
    rec = HistoryRecorder(tmp_path / "h.safetensors", ["group1", "group2", "group3", "network"],
                          [str(i) for i in range(100)], torch.arange(32), torch.arange(32), {"probe_seed": 0})
    rec.append(1, _fake_trace(), [0.5] * 5, [0.25] * 4)
    a, b = load_history(tmp_path / "h.safetensors"), load_history((tmp_path / "h.safetensors").read_bytes())
    assert a.epochs == b.epochs and a.info == b.info and a.classes == b.classes
    assert all(torch.equal(a.attention_maps[l], b.attention_maps[l]) for l in a.layers)
    assert torch.equal(a.predictions, b.predictions) and torch.equal(a.global_gates, b.global_gates)
    with pytest.raises(ValueError, match="up.history.safetensors is not a readable training history"):
        load_history(b"\x10\x00\x00\x00\x00\x00\x00\x00{}", "up.history.safetensors")
    ckpt = tmp_path / "m.safetensors"  # a checkpoint is a safetensors file, but not a history
    ar_core.save_checkpoint(ar_core.build_model(ModelConfig(num_classes=3, depth=10, width=1)), ckpt)
    with pytest.raises(ValueError, match="m.safetensors is not a readable training history"):
        load_history(ckpt.read_bytes(), ckpt.name)
    # a history's header with fields missing or of the wrong kind, or a tensor missing: named, never a traceback
    from safetensors import safe_open
    from safetensors.torch import load, save

    with safe_open(str(tmp_path / "h.safetensors"), "pt") as f:
        header = json.loads(f.metadata()["history"])
    tensors = load((tmp_path / "h.safetensors").read_bytes())
    for bad_header, bad_tensors in (("[1]", tensors), (json.dumps({"format": header["format"]}), tensors),
                                    (json.dumps({**header, "sources": 7}), tensors),
                                    (json.dumps(header), {k: v for k, v in tensors.items() if k != "global_gates"})):
        data = save(bad_tensors, metadata={"history": bad_header})
        with pytest.raises(ValueError, match="bad.history.safetensors"):
            load_history(data, "bad.history.safetensors")


def test_mismatch_names_what_keeps_a_history_from_a_checkpoint(tmp_path):
    """A history names no checkpoint; it is paired with one by what both record."""
    split = {"size": 6, "seed": 0, "train_digest": "a" * 64, "index_digest": "b" * 64}
    classes = [str(i) for i in range(100)]
    rec = HistoryRecorder(tmp_path / "h.safetensors", ["group1", "group2", "group3", "network"], classes,
                          torch.arange(32), torch.arange(32), {"validation_split": split})
    for epoch in (1, 2):
        rec.append(epoch, _fake_trace(), [0.5] * 5, [0.25] * 4)
    h = load_history(tmp_path / "h.safetensors")
    attention = ModelConfig(num_classes=100, depth=16, width=4, attention_depth=3, attention_width=4).to_dict()
    meta = {"classes": classes, "config": attention, "validation_split": split, "epochs_trained": 2}
    assert mismatch(h, meta) is None
    assert mismatch(h, {}) is None  # a converted checkpoint records nothing to tell it by
    assert mismatch(h, {**meta, "classes": classes[::-1]}) == "its classes differ from the checkpoint's"
    baseline = {**attention, "attention_depth": 0}
    assert mismatch(h, {**meta, "config": baseline}) == ("it traced the sources group1, group2, group3, network; "
                                                         "the checkpoint has network")
    assert "another training set or validation split" in mismatch(h, {**meta, "validation_split": {
        **split, "index_digest": "c" * 64}})
    assert mismatch(h, {**meta, "epochs_trained": 1}) == "it records epoch 2; the checkpoint was trained for 1"


def test_the_trainer_records_what_the_model_computed_each_epoch(folder, tmp_path):
    out = tmp_path / "run" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "2"))
    h = ar_core.load_history(ar_core.history_path(out))  # the library's top level, as README shows it
    log = _log(out)
    assert h.epochs == [1, 2] and h.sources == ["group1", "group2", "group3", "network"]
    assert h.outputs[-1] == "fused" and h.classes == sorted(CLASSES)
    # the probes are the validation images the recorded seed picks
    full = D.load_image_folder(folder)
    _, val_idx = D.stratified_split(full.labels, VAL, 0)
    val = full.subset(val_idx)
    assert h.probe_index == probe_indices(val.labels, seed=0).tolist()
    assert h.probe_labels == val.labels[h.probe_index].tolist()
    # per-epoch figures are the log's
    for e, rec in enumerate(log):
        assert h.val_accuracy[e].tolist() == pytest.approx(rec["val_source_accuracy"])
        assert h.val_accuracy[e, -1].item() == pytest.approx(rec["val_accuracy"])
        assert h.mean_global_gates[e].tolist() == pytest.approx(rec["val_mean_global_gates"])
    # the last epoch's probe record is the final model's trace of those images
    model, meta = load_checkpoint(out)
    x = D.normalize(val.images[h.probe_index], meta["normalization"]["mean"], meta["normalization"]["std"])
    with torch.no_grad():
        t = model.trace(x)
    assert torch.equal(h.predictions[-1, :, -1], t.output.argmax(1))
    assert torch.equal(h.predictions[-1, :, -2], t.net_output.argmax(1))
    assert torch.allclose(h.global_gates[-1], t.global_gates, atol=1e-3)
    assert torch.allclose(h.confidence_gates["group2"][-1], t.layers[1].confidence_gates, atol=1e-3)
    labels = torch.tensor(h.probe_labels)
    assert torch.allclose(h.true_class_prob[-1, :, -1], t.output.softmax(1)[torch.arange(len(labels)), labels],
                          atol=1e-3)
    peak = t.layers[2].attention_maps.amax((-2, -1), keepdim=True)
    assert ((h.attention_maps["group3"][-1] - t.layers[2].attention_maps).abs() <= 0.05 * peak).all()


def test_history_is_recorded_under_bf16_autocast(folder, tmp_path):
    """The shipped recipe (bf16 autocast, averaged weights, cutout) end to end; the probe trace is bf16
    there, the stored record is not."""
    out = tmp_path / "bf16" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "1", "--max-steps", str(STEPS_PER_EPOCH), "--ema", "0.9", "--cutout", "8",
                 "--ema-bn-images", "16") + ["--amp", "on"])
    h = load_history(history_path(out))
    assert h.epochs == [1] and h.global_gates.dtype == torch.float32
    assert torch.allclose(h.global_gates.sum(-1), torch.ones(h.global_gates.shape[1]), atol=1e-2)


@pytest.mark.parametrize("stop", ["after epoch 2", "inside epoch 3"])
def test_a_resumed_history_equals_an_uninterrupted_one(folder, tmp_path, capsys, stop):
    """With the averaged weights on, so the averaged model's state is resumed too; stopped at an epoch's
    end, or inside an epoch from a state saved after its first batch (--save-every)."""
    whole = tmp_path / "whole" / "m.safetensors"
    T.main(_args(folder, whole, "--epochs", "3", "--ema", "0.9", "--ema-bn-images", "16"))
    split = tmp_path / "split" / "m.safetensors"
    inside = stop == "inside epoch 3"
    T.main(_args(folder, split, "--epochs", "3", "--ema", "0.9", "--ema-bn-images", "16",
                 "--save-every", "1e-9" if inside else "0", "--max-steps", str(2 * STEPS_PER_EPOCH + inside)))
    # --max-steps ends like a smoke test: a partial epoch 3 is validated and recorded, and the resume replaces it
    assert load_history(history_path(split)).epochs == ([1, 2, 3] if inside else [1, 2])
    capsys.readouterr()
    T.main(_args(folder, split, "--epochs", "3", "--ema", "0.9", "--ema-bn-images", "16", "--resume"))
    err = capsys.readouterr().err
    assert ("inside epoch 3 of 3, after its batch 1" in err) == inside and "lacks" not in err
    a, b = load_history(history_path(whole)), load_history(history_path(split))
    assert a.epochs == b.epochs == [1, 2, 3]
    for name in ("global_gates", "predictions", "true_class_prob", "val_accuracy", "mean_global_gates"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for layer in a.layers:
        assert torch.equal(a.attention_maps[layer], b.attention_maps[layer]), layer
        assert torch.equal(a.confidence_gates[layer], b.confidence_gates[layer]), layer
    for (name, ta), (_, tb) in zip(load_checkpoint(whole)[0].state_dict().items(),
                                   load_checkpoint(split)[0].state_dict().items()):
        assert torch.equal(ta, tb), name


def test_the_averaged_weights_are_resumed_from_their_own_file_or_an_older_single_one(folder, tmp_path):
    """The state keeps the moving average in OUT.ema.state.safetensors (no file near three times the
    weights); a state from before the split, with everything in one file, still resumes exactly, and
    two files of different epochs are refused."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    whole = tmp_path / "whole" / "m.safetensors"
    T.main(_args(folder, whole, "--epochs", "2", "--ema", "0.9", "--ema-bn-images", "16"))
    out = tmp_path / "old" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "2", "--ema", "0.9", "--ema-bn-images", "16",
                 "--max-steps", str(STEPS_PER_EPOCH)))
    main = out.with_name(out.name + ".state.safetensors")
    side = T.averaged_state_path(main)
    assert side.name == "m.safetensors.ema.state.safetensors"
    tensors, averaged = load_file(str(main)), load_file(str(side))
    assert averaged and all(k.startswith("ema.") for k in averaged) and not any(k.startswith("ema.") for k in tensors)
    with safe_open(str(main), framework="pt") as f:
        metadata = f.metadata()
    with safe_open(str(side), framework="pt") as f:
        assert json.loads(f.metadata()["at"]) == {"epoch": 1, "step": STEPS_PER_EPOCH}

    save_file({**averaged, **tensors}, str(main), metadata=metadata)  # the single file of older trainers
    side.unlink()
    T.main(_args(folder, out, "--epochs", "2", "--ema", "0.9", "--ema-bn-images", "16", "--resume"))
    for (name, ta), (_, tb) in zip(load_checkpoint(whole)[0].state_dict().items(),
                                   load_checkpoint(out)[0].state_dict().items()):
        assert torch.equal(ta, tb), name

    at = {"epoch": 1, "step": STEPS_PER_EPOCH}  # an average one epoch behind the state (now of epoch 2)
    save_file(averaged, str(side), metadata={"at": json.dumps(at)})
    with pytest.raises(SystemExit, match=rf"no moving average beside .* matches its epoch 2, step "
                                         rf"{2 * STEPS_PER_EPOCH}: found m.safetensors.ema.state.safetensors "
                                         rf"\(epoch 1, step {STEPS_PER_EPOCH}\)"):
        T.main(_args(folder, out, "--epochs", "2", "--ema", "0.9", "--ema-bn-images", "16", "--resume"))


def test_ema_saves_the_averaged_weights_with_their_own_batchnorm_statistics(folder, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ema" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "2", "--ema", "0.5", "--ema-bn-images", "24"))
    model, meta = load_checkpoint(out)
    main = out.with_name(out.name + ".state.safetensors")
    state = {**load_file(str(main)), **load_file(str(T.averaged_state_path(main)))}  # the average has its own file
    saved = model.state_dict()
    conv = "backbone.conv1.weight" if "backbone.conv1.weight" in saved else next(k for k in saved if "conv" in k)
    assert torch.equal(saved[conv], state[f"ema.module.{conv}"])  # the averaged weights, not the raw ones
    assert not torch.equal(saved[conv], state[f"model.{conv}"])
    bn = next(k for k in saved if k.endswith("running_mean"))
    assert torch.equal(saved[bn], state[f"ema.module.{bn}"])  # the average's own statistics (next test)
    assert meta["val_accuracy_raw_weights"] is not None and meta["recipe"]["ema"] == 0.5
    assert json.dumps(meta)  # a JSON object throughout
    assert "val_accuracy_raw" in _log(out)[-1]


def test_batchnorm_statistics_for_the_average_are_a_plain_mean_over_the_drawn_images():
    """A cumulative mean over the drawn images, not a running estimate that keeps what other weights left:
    on images of one colour each (a reflect-padded crop or flip leaves them as they are), a BatchNorm on
    the input ends with the mean normalised colour of all of them, whatever it held before."""
    import contextlib

    colours = torch.randint(0, 256, (12, 3, 1, 1), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images = colours.expand(12, 3, 8, 8).contiguous()
    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.fill_(100.0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    T.recompute_bn_statistics(torch.nn.Sequential(bn), images, mean, std, torch.device("cpu"), contextlib.nullcontext,
                              seed=0, n=12, batch_size=4)  # three equal batches: their mean is the images' mean
    torch.testing.assert_close(bn.running_mean, D.normalize(colours, mean, std).mean(dim=(0, 2, 3)))
    assert bn.momentum == 0.1  # the usual running estimate is back for whoever trains it next


def test_a_history_of_the_average_says_so_when_the_file_holds_the_raw_weights(folder, tmp_path):
    out = tmp_path / "note" / "model.safetensors"
    T.main(_args(folder, out, "--epochs", "1", "--ema", "0.5", "--ema-bn-images", "16"))
    h, meta = load_history(history_path(out)), load_checkpoint(out)[1]
    assert h.info["model"] == "ema"
    assert traced_other_weights(h, {**meta, "saved_weights": "moving average"}) is None
    assert "raw weights" in traced_other_weights(h, {**meta, "saved_weights": "raw"})
    plain = tmp_path / "plain" / "model.safetensors"
    T.main(_args(folder, plain, "--epochs", "1"))
    assert traced_other_weights(load_history(history_path(plain)), {"saved_weights": "raw"}) is None


def test_a_resumed_run_whose_history_was_lost_says_which_epochs_it_lacks(folder, tmp_path, capsys):
    """The epochs a lost history held cannot be recorded again without retraining: the resume says so, and
    the history goes on from where training does, its epochs showing the gap."""
    out = tmp_path / "run" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "3", "--max-steps", str(2 * STEPS_PER_EPOCH)))
    history_path(out).unlink()
    capsys.readouterr()
    T.main(_args(folder, out, "--epochs", "3", "--resume"))
    assert f"{history_path(out)} lacks epochs 1, 2 of the 2 trained" in capsys.readouterr().err
    assert load_history(history_path(out)).epochs == [3]
