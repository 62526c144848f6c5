"""Convert a state_dict of the reference implementation (prlz77/attend-and-rectify) to a checkpoint.

    python -m ar_core.convert --reference model.pt7 --out model.safetensors [--depth D --width W
        --classes M --attention-depth AD --attention-width K --class-names names.txt]

Supported: ``WideResNetAttention`` with the softmax gate (3x3 heads, the ``score`` head as the
confidence gate, BatchNorm in the global gate, its WRN block layout). The ``.pt``/``.pt7`` file is
a pickle, so it is read with ``torch.load(weights_only=True)``, which refuses anything that is not
plain tensors and containers. Architecture values are inferred from tensor shapes; flags override
them and are checked against the tensors.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, save_checkpoint
from .model import ModelConfig, build_model

# The reference trains CIFAR only and normalises both sets with these statistics.
REFERENCE_NORMALIZATION = {"mean": [125.3 / 255, 123.0 / 255, 113.9 / 255],
                           "std": [63.0 / 255, 62.1 / 255, 66.7 / 255]}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()


def read_reference(path: str | Path) -> dict[str, torch.Tensor]:
    """The reference model's state_dict from a ``torch.save`` file, never unpickling code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only raises UnpicklingError for anything but tensors
        raise CheckpointError(f"cannot read {path} as a plain state_dict (weights_only=True): {e}") from e
    if isinstance(obj, dict) and "state_dict" in obj:  # the reference's training checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel prefix


def infer_config(sd: dict[str, torch.Tensor], **overrides) -> ModelConfig:
    """What the tensors tell: classes, width, depth, attention depth and width, head kernel."""
    for key in ("conv0.weight", "classifier.weight"):
        if key not in sd:
            raise CheckpointError(f"not a reference WideResNetAttention state_dict: no {key!r}")
    num_classes, last_ch = sd["classifier.weight"].shape
    if last_ch % 64:
        raise CheckpointError(f"final width {last_ch} is not 64 x an integer width; fractional WRN widths "
                              f"are not supported")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"group_0\.block_(\d+)\.", k))}
    att = sorted(int(m.group(1)) for k in sd if (m := re.match(r"att(\d+)\.att_head\.conv\.weight$", k)))
    head = sd[f"att{att[0]}.att_head.conv.weight"] if att else None
    inferred = dict(num_classes=num_classes, width=last_ch // 64, depth=6 * len(blocks) + 4,
                    attention_depth=len(att), attention_width=head.shape[0] if head is not None else 4,
                    kernel_size=head.shape[-1] if head is not None else 3)
    if att and att != list(range(3 - len(att), 3)):
        raise CheckpointError(f"attention modules {att} do not follow the reference placement (deepest first)")
    told = {"num_classes", "width", "depth", "attention_depth"} | ({"attention_width", "kernel_size"} if att else set())
    for k, v in overrides.items():
        if v is None:
            continue
        if k in told and v != inferred[k]:
            raise CheckpointError(f"--{k.replace('_', '-')} {v} contradicts the tensors, which say {inferred[k]}")
        inferred[k] = v
    return ModelConfig(backbone="wrn", reference_layout=True, **inferred)


def convert_state_dict(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename and reorder the reference tensors into this project's layout."""
    out: dict[str, torch.Tensor] = {}

    def bn(src: str, dst: str):
        for p in ("weight", "bias", "running_mean", "running_var"):
            out[f"{dst}.{p}"] = sd[f"{src}.{p}"]
        out[f"{dst}.num_batches_tracked"] = sd.get(f"{src}.num_batches_tracked", torch.tensor(0))

    out["backbone.stem.weight"] = sd["conv0.weight"]
    bn("bn0", "backbone.stem_bn")
    n = (config.depth - 4) // 6
    for g in range(3):
        for i in range(n):
            src, dst = f"group_{g}.block_{i}", f"backbone.groups.{g}.{i}"
            bn(f"{src}.bn0", f"{dst}.bn1")
            out[f"{dst}.conv1.weight"] = sd[f"{src}.conv0.weight"]
            bn(f"{src}.bn1", f"{dst}.bn2")
            out[f"{dst}.conv2.weight"] = sd[f"{src}.conv1.weight"]
            if f"{src}.conv_reduce.weight" in sd:
                out[f"{dst}.shortcut.weight"] = sd[f"{src}.conv_reduce.weight"]
    bn("bn_g2", "backbone.bn")
    out["backbone.fc.weight"] = sd["classifier.weight"]
    out["backbone.fc.bias"] = sd["classifier.bias"]
    if config.attention_depth == 0:
        return out  # a single source: its global gate is 1 whatever the gate tensors say
    # Reference att{i} reads group i (0-based); its sources run deepest first, then the network.
    reference_order = [2 - j for j in range(config.attention_depth)]
    for i in reference_order:
        dst = f"attention.group{i + 1}"
        out[f"{dst}.attention_head.weight"] = sd[f"att{i}.att_head.conv.weight"]
        out[f"{dst}.output_head.weight"] = sd[f"att{i}.out_head.conv.weight"]
        out[f"{dst}.confidence_gate.weight"] = sd[f"att{i}.score.conv.weight"]
    # Our sources run shallow to deep, then the network: permute the global gate's rows.
    rows = [reference_order.index(i) for i in sorted(reference_order)] + [config.attention_depth]
    out["global_gate.linear.weight"] = sd["output_gate.gates.weight"][rows]
    for p in ("weight", "bias", "running_mean", "running_var"):
        out[f"global_gate.bn.{p}"] = sd[f"output_gate.bn.{p}"][rows]
    out["global_gate.bn.num_batches_tracked"] = sd.get("output_gate.bn.num_batches_tracked", torch.tensor(0))
    return out


def convert(reference: str | Path, out: str | Path, class_names: list[str] | None = None, **overrides) -> Path:
    sd = read_reference(reference)
    config = infer_config(sd, **overrides)
    model = build_model(config)
    try:
        tensors = convert_state_dict(sd, config)
    except KeyError as e:
        raise CheckpointError(f"{reference} lacks tensor {e} expected for {config}") from e
    own = model.state_dict()
    wrong = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if wrong or set(own) != set(tensors):
        raise CheckpointError(f"{reference} does not fit {config}: wrong shapes {wrong[:3]}, "
                              f"missing {sorted(set(own) - set(tensors))[:3]}")
    model.load_state_dict(tensors)
    if class_names is None:
        class_names = {10: CIFAR10_CLASSES, 100: CIFAR100_CLASSES}.get(
            config.num_classes, [f"class {i}" for i in range(config.num_classes)])
    if len(class_names) != config.num_classes:
        raise CheckpointError(f"{len(class_names)} class names for {config.num_classes} classes")
    meta = {"classes": class_names, "normalization": REFERENCE_NORMALIZATION, "image_size": 32,
            "dataset": {10: "cifar10", 100: "cifar100"}.get(config.num_classes, "unknown"),
            "source": f"converted from the reference implementation: {Path(reference).name}"}
    return save_checkpoint(model, out, meta)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="state_dict .pt/.pt7 saved by the reference code")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--depth", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--classes", type=int, dest="num_classes")
    p.add_argument("--attention-depth", type=int)
    p.add_argument("--attention-width", type=int)
    p.add_argument("--class-names", help="text file, one class name per line, in label order")
    a = p.parse_args(argv)
    try:
        # one name per line, spaces kept ("pickup truck"); blank lines (a trailing newline) are not names
        names = [n.strip() for n in Path(a.class_names).read_text().splitlines() if n.strip()] \
            if a.class_names else None
    except OSError as e:
        sys.exit(f"error: cannot read --class-names: {e}")
    try:
        path = convert(a.reference, a.out, names, depth=a.depth, width=a.width, num_classes=a.num_classes,
                       attention_depth=a.attention_depth, attention_width=a.attention_width)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
