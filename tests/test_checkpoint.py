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
    assert torch.equal(model.to(memory_format=torch.channels_last)(x), loaded(x))  # the layout load_checkpoint gives


def test_loaded_model_is_channels_last_computes_the_same_and_saves_the_same_weights(saved, tmp_path):
    """load_checkpoint hands out the channels_last layout (faster batched convolutions on a CPU); the
    numbers are the NCHW model's, and saving the loaded model again writes identical weights."""
    from ar_core.inference import inspect, preprocess

    path, model = saved
    loaded, _ = load_checkpoint(path)
    convs = [m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last)
                         and not c.weight.is_contiguous() for c in convs)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model.trace(preprocess(images, META), flip=True, shift=1)
    got = inspect(loaded, images, META, tta="flip-shift1").trace
    assert torch.allclose(got.output, reference.output, atol=1e-5)
    assert torch.allclose(got.layers[-1].attention_maps, reference.layers[-1].attention_maps, atol=1e-6)
    again = save_checkpoint(loaded, tmp_path / "again.safetensors", META)
    assert read_checkpoint(again)[1]["weights_sha256"] == read_checkpoint(path)[1]["weights_sha256"]


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
    assert torch.equal(model.to(memory_format=torch.channels_last)(x), loaded(x))
