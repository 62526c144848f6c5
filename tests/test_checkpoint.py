"""Safetensors checkpoints: bit-exact round trip and one clear error per kind of bad file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from ar_core import CheckpointError, ModelConfig, build_model, load_checkpoint, save_checkpoint
from ar_core.checkpoint import read_checkpoint

META = {"classes": ["a", "b", "c", "d", "e"], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "dataset": "toy"}


@pytest.fixture
def saved(tmp_path, tiny_model):
    return save_checkpoint(tiny_model, tmp_path / "m.safetensors", META), tiny_model


def test_round_trip_is_bit_exact(saved):
    path, model = saved
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert meta["classes"] == META["classes"] and meta["config"] == model.config.to_dict()
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_half_precision_storage_is_smaller_and_close(tmp_path, tiny_model):
    full = save_checkpoint(tiny_model, tmp_path / "f.safetensors", META)
    half = save_checkpoint(tiny_model, tmp_path / "h.safetensors", META, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), tiny_model(x), rtol=2e-2, atol=2e-2)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file(saved, tmp_path):
    path, _ = saved
    cut = tmp_path / "cut.safetensors"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)


def test_garbage_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(bad)


def test_flipped_weight_byte_is_caught(saved, tmp_path):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor data, after the header
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: its weights do not match"):
        load_checkpoint(bad)


def test_wrong_shapes_for_config(tmp_path, tiny_model):
    """Weights of one architecture under the config of another."""
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    other = ModelConfig(**{**tiny_model.config.to_dict(), "width": 2})
    header = {"format": "attend-rectify/1", "config": json.dumps(other.to_dict()), "meta": json.dumps(META)}
    bad = tmp_path / "mismatch.safetensors"
    save_file(tensors, str(bad), metadata=header)
    with pytest.raises(CheckpointError, match="does not match the model its config describes.*wrong shapes"):
        load_checkpoint(bad)


def test_foreign_safetensors(tmp_path):
    bad = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(CheckpointError, match="not an Attend & Rectify checkpoint"):
        load_checkpoint(bad)


def test_pickle_is_refused_not_loaded(tmp_path, tiny_model):
    pt = tmp_path / "model.pt"
    torch.save(tiny_model.state_dict(), pt)
    with pytest.raises(CheckpointError, match="PyTorch pickle.*ar_core.convert"):
        load_checkpoint(pt)


def test_damaged_config_header(tmp_path, tiny_model):
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    bad = tmp_path / "cfg.safetensors"
    save_file(tensors, str(bad), metadata={"format": "attend-rectify/1", "config": "{not json", "meta": "{}"})
    with pytest.raises(CheckpointError, match="damaged config"):
        read_checkpoint(bad)


def test_class_count_must_match(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="class names"):
        save_checkpoint(tiny_model, tmp_path / "x.safetensors", {"classes": ["a"]})


def test_resnet18_checkpoint_round_trip(tmp_path):
    model = build_model(ModelConfig(backbone="resnet18", num_classes=3, attention_depth=2)).eval()
    path = save_checkpoint(model, tmp_path / "r.safetensors", {"classes": ["x", "y", "z"]})
    loaded, _ = load_checkpoint(path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), loaded(x))
